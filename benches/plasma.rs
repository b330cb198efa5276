//! `cargo bench --bench plasma`: prints timings of the paths users wait on.
//! Numbers, not pass/fail: performance targets are read here, never asserted
//! in tests. Each section says what it measures and the target it aims at.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn plasma(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_plasma"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir.join("home"))
        .env("NO_COLOR", "1")
        .output()
        .expect("plasma runs");
    assert!(
        out.status.code().is_some_and(|c| c == 0 || c == 2),
        "plasma {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `f` `runs` times and returns the sorted durations.
fn sample(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(what: &str, times: &[Duration]) {
    println!(
        "{what}: median {:.1} ms (min {:.1}, max {:.1}) over {} runs",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
        times.len()
    );
}

fn converged_files(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = String::new();
    for i in 0..count {
        spec.push_str(&format!(
            "file f{i} {{\n    path \"out/{}/f{i}.yaml\"\n    yaml {{\n        index {i}\n        mixed_precision \"no\"\n        use_cpu #false\n    }}\n}}\n",
            i % 50
        ));
    }
    std::fs::write(dir.path().join("plasma.kdl"), spec).unwrap();
    let start = Instant::now();
    plasma(dir.path(), &["apply", "--yes"]);
    println!(
        "apply, {count} file resources from nothing: {:.1} ms",
        ms(start.elapsed())
    );
    let times = sample(10, || {
        let out = plasma(dir.path(), &["plan", "--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(0), "the machine is converged");
    });
    report(
        &format!("converged plan, {count} file resources (target: well under 200 ms)"),
        &times,
    );
    let times = sample(10, || {
        plasma(dir.path(), &["drift"]);
    });
    report(&format!("converged drift, {count} file resources"), &times);
    let times = sample(10, || {
        plasma(dir.path(), &["validate"]);
    });
    report(
        &format!("validate (load, resolve, lint only), {count} file resources"),
        &times,
    );
}

fn main() {
    // `cargo bench` passes harness flags such as `--bench`; there is nothing to filter.
    println!(
        "plasma benchmarks ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    converged_files(1000);
}
