//! A temporary folder with its own HOME, in which tests run the built
//! `plasma` binary and look at files, exit codes and output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

/// What one run of plasma printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing the output when it is wrong.
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code, expected,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Sandbox { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    pub fn spec(&self, text: &str) -> PathBuf {
        self.write("plasma.kdl", text)
    }

    /// A command for the plasma binary, run in the sandbox with its HOME.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_plasma"));
        cmd.args(args)
            .current_dir(self.root())
            .env("HOME", self.home())
            .env("NO_COLOR", "1")
            .env_remove("PLASMA_LOG")
            .env_remove("PLASMA_PLATFORM");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("plasma runs"))
    }

    /// Runs plasma, printing the command, its exit code and its wall time
    /// (for the real-stack suites, whose output is their timing record).
    pub fn run_timed(&self, args: &[&str]) -> Run {
        let started = std::time::Instant::now();
        let run = self.run(args);
        println!(
            "$ plasma {} -> exit {} in {:.1} s",
            args.join(" "),
            run.code,
            started.elapsed().as_secs_f64()
        );
        run
    }

    /// Runs plasma on a machine faked through `PLASMA_PLATFORM`
    /// (`os=macos arch=aarch64 accelerator=mps memory=16GiB`).
    pub fn run_on(&self, facts: &str, args: &[&str]) -> Run {
        let mut cmd = self.command(args);
        cmd.env("PLASMA_PLATFORM", facts);
        Run::from(cmd.output().expect("plasma runs"))
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.read(".plasma/state.json")).expect("state is JSON")
    }
}

/// Kills (SIGKILL, whole process group) every `process` service a
/// sandbox's applies started, however a test ends: the pids recorded in
/// `.plasma/services/*/record.json`.
pub struct StopServices<'a>(pub &'a Sandbox);

impl Drop for StopServices<'_> {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.0.path(".plasma/services")) else {
            return;
        };
        for dir in dirs.flatten() {
            let Ok(text) = std::fs::read_to_string(dir.path().join("record.json")) else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(pid) = value["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Asserts that every image a benchmark's `result` (as state records it)
/// lists is a PNG file under `.plasma/benchmarks/NAME/`.
pub fn assert_benchmark_images(sb: &Sandbox, name: &str, result: &serde_json::Value) {
    let images = result["images"].as_array().expect("a list of images");
    assert!(!images.is_empty(), "no images: {result}");
    for image in images {
        let path = sb.path(&format!(
            ".plasma/benchmarks/{name}/{}",
            image.as_str().unwrap()
        ));
        assert!(
            std::fs::read(&path).unwrap().starts_with(b"\x89PNG"),
            "{path:?}"
        );
    }
}
