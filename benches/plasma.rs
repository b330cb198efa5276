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

#[path = "../tests/it/support/pyfix.rs"]
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
    report(
        "venv: converged `plasma plan` (whole process, held to plasma.lock)",
        &plan,
    );
    // The lock: reading it (one file, one TOML parse) and the converged plan
    // without it, to show what holding to it costs.
    let lock_path = dir.path().join("plasma.lock");
    let locked = plasma::lock::Lock::read(&lock_path)
        .unwrap()
        .expect("apply wrote plasma.lock");
    let read = sample(50, || {
        plasma::lock::Lock::read(&lock_path).unwrap().unwrap();
    });
    report(
        &format!(
            "lock: read and parse plasma.lock ({} packages, {} bytes)",
            locked.venv["bench"].packages.len(),
            std::fs::metadata(&lock_path).unwrap().len()
        ),
        &read,
    );
    let aside = dir.path().join("plasma.lock.aside");
    std::fs::rename(&lock_path, &aside).unwrap();
    let unlocked = sample(10, || {
        let out = plasma(dir.path(), &["plan", "--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(0), "the venv is converged");
    });
    std::fs::rename(&aside, &lock_path).unwrap();
    report(
        "lock: converged `plasma plan` with no plasma.lock (the plan then lists the lock's new entry)",
        &unlocked,
    );
    // pip needs pip in the venv: a uv-made venv has none, so use the base pip on it.
    let pip_freeze = sample(5, || {
        let out = Command::new("python3")
            .args(["-m", "pip", "--python"])
            .arg(plasma::python::venv_python(&venv))
            .args(["freeze", "--disable-pip-version-check"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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

/// A size from the environment (for a quick run), else the default.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `mib` MiB of bytes no two mebibytes alike, written quickly.
fn write_noise(path: &Path, mib: u64) {
    use std::io::Write;
    let mut block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..mib {
        block[..8].copy_from_slice(&i.to_le_bytes());
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

fn timed(mut command: Command) -> Duration {
    let start = Instant::now();
    let out = command.output().expect("the command runs");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// The `model` kind: download+verify against curl, `--verify` against
/// openssl, and a converged plan over many gigabytes of models.
/// Sizes: PLASMA_BENCH_DOWNLOAD_MIB (1024), PLASMA_BENCH_VERIFY_FILES (4),
/// PLASMA_BENCH_VERIFY_MIB (256 each), PLASMA_BENCH_CONVERGED_GB (10).
fn models() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("home")).unwrap();
    std::fs::create_dir_all(root.join("srv")).unwrap();
    println!(
        "sha256 on CPU instructions: {}",
        plasma::hashing::sha256_hardware_accelerated()
    );

    // Download + verify of one file over loopback, against `curl -o`.
    // Served by python3's http.server (both clients read the same server,
    // so its speed bounds both); plasma also fsyncs, curl does not.
    let mib = env_or("PLASMA_BENCH_DOWNLOAD_MIB", 1024);
    let source = root.join("srv/model.safetensors");
    write_noise(&source, mib);
    // It is placed as `big.bin`: plasma places a .bin only when it starts
    // like a PyTorch checkpoint (here a protocol-2 pickle).
    {
        use std::io::{Seek, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&source)
            .unwrap();
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        file.write_all(b"\x80\x02").unwrap();
    }
    let sha = plasma::hashing::hash_file(&source).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(root.join("srv"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 starts");
    let url = format!("http://127.0.0.1:{port}/model.safetensors");
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(up.elapsed() < Duration::from_secs(10), "the server starts");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(
        root.join("plasma.kdl"),
        format!(
            "model big {{\n    url \"{url}\"\n    sha256 \"{sha}\"\n    path \"models/big.bin\"\n    allow-pickle #true\n}}\n"
        ),
    )
    .unwrap();
    let (mut curl_best, mut plasma_best) = (Duration::MAX, Duration::MAX);
    for _ in 0..2 {
        let _ = std::fs::remove_file(root.join("curl.out"));
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-o", "curl.out", &url]).current_dir(root);
        curl_best = curl_best.min(timed(curl));
        let _ = std::fs::remove_file(root.join("curl.out"));
        let _ = std::fs::remove_dir_all(root.join("models"));
        let _ = std::fs::remove_dir_all(root.join(".plasma"));
        let start = Instant::now();
        plasma(root, &["apply", "--yes"]);
        plasma_best = plasma_best.min(start.elapsed());
        assert!(root.join("models/big.bin").exists());
    }
    let _ = server.kill();
    let _ = server.wait();
    let gb = |bytes: u64, d: Duration| bytes as f64 / 1e9 / d.as_secs_f64();
    let bytes = mib << 20;
    println!(
        "download+verify {mib} MiB over loopback (python3 http.server): plasma apply {:.0} ms ({:.2} GB/s), curl -o {:.0} ms ({:.2} GB/s); plasma/curl time ratio {:.2} (target: <= 1.0)",
        ms(plasma_best),
        gb(bytes, plasma_best),
        ms(curl_best),
        gb(bytes, curl_best),
        plasma_best.as_secs_f64() / curl_best.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(root.join("models"));
    let _ = std::fs::remove_file(&source);

    // --verify of several files against `openssl dgst -sha256` (one thread).
    let files = env_or("PLASMA_BENCH_VERIFY_FILES", 4);
    let each = env_or("PLASMA_BENCH_VERIFY_MIB", 256);
    let verify = root.join("verify");
    std::fs::create_dir_all(verify.join("m")).unwrap();
    std::fs::create_dir_all(verify.join("home")).unwrap();
    let mut spec = String::new();
    let mut paths = Vec::new();
    for i in 0..files {
        let path = verify.join(format!("m/{i}.bin"));
        write_noise(&path, each);
        let sha = plasma::hashing::hash_file(&path).unwrap();
        spec.push_str(&format!(
            "model m{i} {{\n    url \"https://example.invalid/{i}\"\n    sha256 \"{sha}\"\n    path \"m/{i}.bin\"\n    allow-pickle #true\n}}\n"
        ));
        paths.push(path);
    }
    std::fs::write(verify.join("plasma.kdl"), spec).unwrap();
    plasma(&verify, &["apply", "--yes"]);
    let plasma_verify = sample(3, || {
        let out = plasma(&verify, &["plan", "--verify", "--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(0));
    });
    let openssl = sample(3, || {
        let mut cmd = Command::new("openssl");
        cmd.args(["dgst", "-sha256"]).args(&paths);
        timed(cmd);
    });
    let (p, o) = (plasma_verify[1], openssl[1]);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let threads = (files as f64).min(cores);
    let total = files * (each << 20);
    println!(
        "verify {files} x {each} MiB: plasma plan --verify {:.0} ms ({:.2} GB/s on up to {threads} threads), openssl dgst -sha256 {:.0} ms ({:.2} GB/s, 1 thread); openssl/plasma time ratio {:.2}, per core {:.2} (target: >= 1.0 per core)",
        ms(p),
        gb(total, p),
        ms(o),
        gb(total, o),
        o.as_secs_f64() / p.as_secs_f64(),
        o.as_secs_f64() / p.as_secs_f64() / threads
    );
    let _ = std::fs::remove_dir_all(&verify);

    // A converged plan over many gigabytes of models: sparse files with a
    // real safetensors header, hashed once when adopted, never read again.
    let total_gb = env_or("PLASMA_BENCH_CONVERGED_GB", 10);
    let count = 10u64;
    let converged = root.join("converged");
    std::fs::create_dir_all(converged.join("m")).unwrap();
    std::fs::create_dir_all(converged.join("home")).unwrap();
    let header = br#"{"model.diffusion_model.x":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}"#;
    let mut spec = String::new();
    for i in 0..count {
        let path = converged.join(format!("m/{i}.safetensors"));
        let mut file = std::fs::File::create(&path).unwrap();
        use std::io::Write;
        file.write_all(&(header.len() as u64).to_le_bytes())
            .unwrap();
        file.write_all(header).unwrap();
        file.set_len(total_gb * 1_000_000_000 / count).unwrap();
        spec.push_str(&format!(
            "model m{i} {{\n    url \"https://example.invalid/{i}\"\n    path \"m/{i}.safetensors\"\n    allow unpinned-model\n}}\n"
        ));
    }
    std::fs::write(converged.join("plasma.kdl"), spec).unwrap();
    let start = Instant::now();
    plasma(&converged, &["apply", "--yes"]);
    println!(
        "adopting {count} models, {total_gb} GB (hashes each once): {:.0} ms",
        ms(start.elapsed())
    );
    let times = sample(10, || {
        let out = plasma(&converged, &["plan", "--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(0), "the machine is converged");
    });
    report(
        &format!("converged plan, {count} models, {total_gb} GB (target: under 50 ms)"),
        &times,
    );
}

fn main() {
    // `cargo bench` passes harness flags such as `--bench`; they are skipped.
    println!(
        "plasma benchmarks ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // `cargo bench --bench plasma -- venv` runs only the sections named.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |section: &str| only.is_empty() || only.iter().any(|o| section.contains(o));
    if wanted("files") {
        converged_files(1000);
    }
    if wanted("venv") {
        venv_section(200);
    }
    if wanted("repos") {
        converged_repos(20, 20_000);
    }
    if wanted("models") {
        models();
    }
    if wanted("platform") {
        platform_facts();
    }
}

/// The cost of reading this machine's facts (os, arch, accelerator, memory),
/// which every `plan` does once for its lints, against a whole converged plan
/// of one file.
fn platform_facts() {
    let times = sample(1000, || {
        std::hint::black_box(plasma::platform::detect(""));
    });
    println!(
        "platform facts read: median {:.1} us (min {:.1}, max {:.1}) over {} reads",
        times[times.len() / 2].as_secs_f64() * 1e6,
        times[0].as_secs_f64() * 1e6,
        times[times.len() - 1].as_secs_f64() * 1e6,
        times.len()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plasma.kdl"),
        "file a {\n    path \"out/a\"\n    content \"x\"\n}\n",
    )
    .unwrap();
    plasma(dir.path(), &["apply", "--yes"]);
    let times = sample(20, || {
        plasma(dir.path(), &["plan", "--detailed-exitcode"]);
    });
    report("converged plan of one file (facts included)", &times);
}
