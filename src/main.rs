fn main() -> std::process::ExitCode {
    plasma::cli::main()
}
