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

#[path = "../tests/support/pyfix.rs"]
mod pyfix;

/// A converged venv of about 200 packages (built by the pyfix fixture and
/// installed by `plasma apply` from a local index): plasma's file-only
/// observation against `pip freeze` and `uv pip freeze`; then creating a
/// venv with `python -m venv` against `uv venv`.
fn venv_section(count: usize) {
    let uv = plasma::python::Installer::detect(plasma::python::InstallerChoice::Uv)
        .ok()
        .and_then(|i| match i {
            plasma::python::Installer::Uv { uv } => Some(uv),
            plasma::python::Installer::Pip => None,
        });
    let wheels: Vec<pyfix::Wheel> = (0..count)
        .map(|i| pyfix::Wheel::new(&format!("benchpkg{i:03}"), "1.0"))
        .collect();
    let index = pyfix::PyIndex::serve(&wheels);
    let dir = tempfile::tempdir().unwrap();
    let requirements: String = wheels.iter().map(|w| format!("{}\n", w.name)).collect();
    std::fs::write(dir.path().join("requirements.txt"), requirements).unwrap();
    let python = Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("python3 on PATH");
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    std::fs::write(
        dir.path().join("plasma.kdl"),
        format!(
            "venv bench {{\n    path \"venv\"\n    python \"{python}\"\n    requirements \"requirements.txt\"\n    index \"{}\"\n    installer \"{}\"\n}}\n",
            index.url(),
            if uv.is_some() { "uv" } else { "pip" }
        ),
    )
    .unwrap();
    let start = Instant::now();
    plasma(dir.path(), &["apply", "--yes"]);
    println!(
        "venv: apply, {count} packages from a local index: {:.1} ms",
        ms(start.elapsed())
    );
    let venv = dir.path().join("venv");
    let observed = match plasma::python::observe_venv(&venv).unwrap() {
        plasma::python::VenvObservation::Present(v) => v.packages.len(),
        plasma::python::VenvObservation::Missing => panic!("apply made no venv"),
    };

    let observe = sample(20, || {
        plasma::python::observe_venv(&venv).unwrap();
    });
    report(
        &format!("venv: observe (read pyvenv.cfg + METADATA), {observed} packages"),
        &observe,
    );
    let plan = sample(10, || {
        let out = plasma(dir.path(), &["plan", "--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(0), "the venv is converged");
    });
    report("venv: converged `plasma plan` (whole process)", &plan);
    // pip needs pip in the venv: a uv-made venv has none, so use the base pip on it.
    let pip_freeze = sample(5, || {
        let out = Command::new("python3")
            .args(["-m", "pip", "--python"])
            .arg(plasma::python::venv_python(&venv))
            .args(["freeze", "--disable-pip-version-check"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    });
    report("venv: `pip freeze`", &pip_freeze);
    let median = |t: &[Duration]| t[t.len() / 2].as_secs_f64();
    println!(
        "venv: pip freeze / plasma observe = {:.0}x; pip freeze / plasma plan = {:.1}x",
        median(&pip_freeze) / median(&observe),
        median(&pip_freeze) / median(&plan)
    );
    match &uv {
        Some(uv) => {
            let uv_freeze = sample(10, || {
                let out = Command::new(uv)
                    .args(["pip", "freeze", "--python"])
                    .arg(plasma::python::venv_python(&venv))
                    .output()
                    .unwrap();
                assert!(out.status.success());
            });
            report("venv: `uv pip freeze`", &uv_freeze);
            println!(
                "venv: uv pip freeze / plasma observe = {:.0}x",
                median(&uv_freeze) / median(&observe)
            );
        }
        None => println!("venv: uv is not on PATH; `uv pip freeze` not measured"),
    }

    // Creating a venv: what apply pays once, and why uv is taken when present.
    let made = dir.path().join("made");
    let python_venv = sample(3, || {
        let _ = std::fs::remove_dir_all(&made);
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&made)
            .status()
            .unwrap();
        assert!(ok.success());
    });
    report("venv: create with `python3 -m venv`", &python_venv);
    if let Some(uv) = &uv {
        let uv_venv = sample(5, || {
            let _ = std::fs::remove_dir_all(&made);
            let ok = Command::new(uv)
                .args(["venv", "--quiet", "--no-project", "--python", "python3"])
                .arg(&made)
                .status()
                .unwrap();
            assert!(ok.success());
        });
        report("venv: create with `uv venv`", &uv_venv);
        println!(
            "venv: python -m venv / uv venv = {:.0}x",
            median(&python_venv) / median(&uv_venv)
        );
    }
}

fn main() {
    // `cargo bench` passes harness flags such as `--bench`; there is nothing to filter.
    println!(
        "plasma benchmarks ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    converged_files(1000);
    venv_section(200);
}
