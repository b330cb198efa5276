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

/// Runs git quietly in `dir` with a fixed identity; panics on failure.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Converged observation of 20 `repo` resources, one of them a clone of about
/// 20,000 files: what `plan` and the hourly `drift` cost on a real machine
/// (ComfyUI plus custom nodes). Target: close to one `git status` of the big
/// repository plus process start-up, with no network and no writes.
fn converged_repos(count: usize, big_files: usize) {
    let dir = tempfile::tempdir().unwrap();
    let upstreams = dir.path().join("upstreams");
    let small = upstreams.join("small");
    let big = upstreams.join("big");
    for (repo, files) in [(&small, 20), (&big, big_files)] {
        std::fs::create_dir_all(repo).unwrap();
        git(repo, &["init", "-q"]);
        for i in 0..files {
            let sub = repo.join(format!("d{}", i % 200));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(format!("f{i}.py")), format!("x = {i}\n")).unwrap();
        }
        git(repo, &["add", "."]);
        git(repo, &["commit", "-q", "-m", "release"]);
        git(repo, &["tag", "v1.0.0"]);
    }
    let mut spec = String::new();
    for i in 0..count {
        let upstream = if i == 0 { &big } else { &small };
        spec.push_str(&format!(
            "repo r{i} {{\n    url \"file://{}\"\n    rev \"v1.0.0\"\n    path \"clones/r{i}\"\n}}\n",
            upstream.display()
        ));
    }
    std::fs::write(dir.path().join("plasma.kdl"), spec).unwrap();
    let start = Instant::now();
    plasma(dir.path(), &["apply", "--yes"]);
    println!(
        "apply, {count} repo resources (one of {big_files} files) from nothing: {:.1} ms",
        ms(start.elapsed())
    );
    let times = sample(10, || {
        let out = plasma(dir.path(), &["plan", "--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(0), "the machine is converged");
    });
    report(
        &format!("converged plan, {count} repo resources, one of {big_files} files"),
        &times,
    );
    let big_clone = dir.path().join("clones/r0");
    let times = sample(10, || git(&big_clone, &["status", "--porcelain"]));
    report(
        &format!("for scale: git status --porcelain on the {big_files}-file clone"),
        &times,
    );
    let times = sample(10, || git(&big_clone, &["rev-parse", "HEAD"]));
    report("for scale: git rev-parse HEAD", &times);
}

fn main() {
    // `cargo bench` passes harness flags such as `--bench`; there is nothing to filter.
    println!(
        "plasma benchmarks ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    converged_files(1000);
    converged_repos(20, 20_000);
}
