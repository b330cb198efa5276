//! `plasma.lock` end to end: the built binary, real venvs (pip and uv),
//! wheels served by the `pyfix` index with several versions per package,
//! real git repositories (`gitfix`), and two sandboxes standing for two
//! machines applying one spec and one lock.

use crate::support::gitfix::{GitFixture, git};
use crate::support::pyfix::{PyIndex, Wheel, python_version, venv_packages};
use crate::support::sandbox::{Run, Sandbox};

use std::path::Path;
use std::process::Command;

use plasma::python::venv_python;

const SECRET: &str = "l0ckT0ken";

fn wheels() -> Vec<Wheel> {
    vec![
        Wheel::new("torchlike", "2.5.1"),
        Wheel::new("torchlike", "2.6.0"),
        Wheel::new("helper", "1.0"),
        Wheel::new("helper", "1.1"),
        Wheel::new("app", "1.0").requires("helper>=1.0"),
        Wheel::new("extra-dep", "0.1"),
    ]
}

/// A venv whose requirements float (`app`, `helper>=1.0`), on an index URL
/// with a token in it.
fn venv_spec(index: &PyIndex, installer: &str) -> String {
    format!(
        r#"
venv app {{
    path "venv"
    python "{python}"
    package torchlike "2.5.1"
    requirements "requirements.txt"
    index "{url}"
    installer "{installer}"
}}
"#,
        url = index.url_with_credentials("alice", SECRET),
        python = python_version(),
    )
}

fn machine(spec: &str) -> Sandbox {
    let sb = Sandbox::new();
    sb.spec(spec);
    sb.write("requirements.txt", "app\nhelper>=1.0\n");
    sb
}

fn freeze(venv: &Path) -> String {
    let out = Command::new(venv_python(venv))
        .args(["-m", "pip", "freeze", "--disable-pip-version-check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn output(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

fn has_uv() -> bool {
    Command::new("uv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn lock_toml(sb: &Sandbox) -> toml::Table {
    toml::from_str(&sb.read("plasma.lock")).expect("plasma.lock is TOML")
}

fn locked_version(sb: &Sandbox, venv: &str, package: &str) -> Option<String> {
    let lock = lock_toml(sb);
    lock["venv"][venv]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(package))
        .map(|p| p["version"].as_str().unwrap().to_string())
}

#[test]
fn a_second_machine_gets_the_locked_set_and_a_newer_release_waits_for_upgrade() {
    let index = PyIndex::serve(&wheels());
    let spec = venv_spec(&index, "pip");
    let a = machine(&spec);
    let apply = a.run(&["apply", "--yes"]);
    apply.code(0);
    assert!(
        apply.stdout.contains("lock: + venv.app 3 packages"),
        "{}",
        apply.stdout
    );
    let text = a.read("plasma.lock");
    assert!(text.starts_with("# plasma.lock"), "{text}");
    assert!(text.contains("\nversion = 1\n"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        text.contains("{ name = \"helper\", version = \"1.1\", source = \"http://***@127.0.0.1:"),
        "{text}"
    );
    // What `python -m venv` seeded is the machine's, not the lock's: another
    // machine's Python bundles another setuptools, which no index need have.
    assert!(!text.contains("name = \"setuptools\""), "{text}");
    assert!(text.contains("python = \"3.11\"\n"), "{text}");
    // Deterministic: a converged apply leaves the file byte for byte.
    a.run(&["apply", "--yes"]).code(0);
    assert_eq!(a.read("plasma.lock"), text);

    // helper 1.2 is published: nothing moves without --upgrade.
    index.publish(&[Wheel::new("helper", "1.2")]);
    let b = machine(&spec);
    std::fs::write(b.path("plasma.lock"), &text).unwrap();
    let plan = b.run(&["plan"]);
    plan.code(0);
    let apply = b.run(&["apply", "--yes", "--locked"]);
    apply.code(0);
    assert_eq!(freeze(&b.path("venv")), freeze(&a.path("venv")));
    assert_eq!(venv_packages(&b.path("venv"))["helper"], "1.1");
    assert_eq!(
        b.read("plasma.lock"),
        text,
        "applying from the lock rewrote it"
    );
    b.run(&["plan", "--detailed-exitcode"]).code(0);
    let relock = b.run(&["lock"]);
    relock.code(0);
    assert!(
        relock.stdout.contains("venv.app: locked (unchanged)"),
        "{}",
        relock.stdout
    );
    assert_eq!(b.read("plasma.lock"), text);

    if !has_uv() {
        println!("skipped the --upgrade half: uv is not on PATH (scripts/test.sh installs it)");
        return;
    }
    let upgrade = b.run(&["lock", "--upgrade", "venv.app"]);
    upgrade.code(0);
    assert!(
        upgrade
            .stdout
            .contains("lock: ~ venv.app helper 1.1 -> 1.2"),
        "{}",
        output(&upgrade)
    );
    assert!(!b.read("plasma.lock").contains(SECRET));
    let plan = b.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("~ helper: 1.1 -> 1.2 (locked)")
            && plan.stdout.contains("(helper: 1.1 -> 1.2 (plasma.lock))"),
        "{}",
        plan.stdout
    );
    // The lock moved, not the venv: drift says so.
    let drift = b.run(&["drift"]);
    drift.code(2);
    assert!(
        drift
            .stdout
            .contains("differs (the spec or plasma.lock changed since the last apply)"),
        "{}",
        drift.stdout
    );
    let upgraded = b.read("plasma.lock");
    b.run(&["apply", "--yes"]).code(0);
    assert_eq!(venv_packages(&b.path("venv"))["helper"], "1.2");
    b.run(&["plan", "--detailed-exitcode"]).code(0);
    // Applying what uv resolved keeps uv's entry (its hashes) as it is.
    assert_eq!(b.read("plasma.lock"), upgraded, "apply rewrote uv's entry");
}

#[test]
fn locked_fails_naming_what_is_out_of_date() {
    let index = PyIndex::serve(&wheels());
    let sb = machine(&venv_spec(&index, "pip"));
    let none = sb.run(&["plan", "--locked"]);
    none.code(1);
    assert!(
        none.stderr.contains("--locked: there is no"),
        "{}",
        none.stderr
    );
    sb.run(&["apply", "--yes"]).code(0);
    sb.run(&["plan", "--locked", "--detailed-exitcode"]).code(0);
    sb.run(&["lock", "--locked"]).code(0);

    sb.write("requirements.txt", "app\nhelper>=1.0\nextra-dep\n");
    for args in [
        &["plan", "--locked"][..],
        &["apply", "--yes", "--locked"][..],
        &["lock", "--locked"][..],
    ] {
        let run = sb.run(args);
        run.code(1);
        assert!(
            run.stderr.contains("--locked:")
                && run.stderr.contains("plasma.lock is out of date with")
                && run.stderr.contains(
                    "venv.app: its requirements files, pins, indexes, Python or platform changed"
                ),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert!(!venv_packages(&sb.path("venv")).contains_key("extra-dep"));
    // Without --locked, apply resolves the edit and updates the lock.
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    assert!(
        apply.stdout.contains("lock: + venv.app extra-dep 0.1"),
        "{}",
        apply.stdout
    );
    sb.run(&["plan", "--locked"]).code(0);
}

#[test]
fn drift_is_measured_against_the_lock() {
    let index = PyIndex::serve(&wheels());
    let sb = machine(&venv_spec(&index, "pip"));
    sb.run(&["apply", "--yes"]).code(0);
    // A package moves within the spec's range (helper>=1.0), by hand.
    let out = Command::new(venv_python(&sb.path("venv")))
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--index-url",
        ])
        .arg(index.url())
        .arg("helper==1.0")
        .output()
        .unwrap();
    assert!(out.status.success());
    let drift = sb.run(&["drift"]);
    drift.code(2);
    assert!(
        drift.stdout.contains("helper: 1.1 -> 1.0 (locked 1.1)"),
        "{}",
        drift.stdout
    );
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("~ helper (changed outside plasma): 1.0 -> 1.1"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(venv_packages(&sb.path("venv"))["helper"], "1.1");
    sb.run(&["drift"]).code(0);
}

#[test]
fn the_plan_shows_what_apply_changes_in_the_lock() {
    let index = PyIndex::serve(&wheels());
    let sb = machine(&venv_spec(&index, "pip"));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("lock: + venv.app resolved by apply"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    std::fs::remove_file(sb.path("plasma.lock")).unwrap();
    let plan = sb.run(&["plan"]);
    plan.code(0);
    assert!(plan.stdout.contains("No changes"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("lock: + venv.app 3 packages"),
        "{}",
        plan.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&sb.run(&["plan", "--json"]).stdout).unwrap();
    assert_eq!(json["lock"][0]["address"], "venv.app");
    assert_eq!(json["lock"][0]["symbol"], "+");
    assert_eq!(json["lock"][0]["detail"], "3 packages");
    // A converged apply writes it back.
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(locked_version(&sb, "app", "helper").as_deref(), Some("1.1"));
}

fn repo_spec(url: &str) -> String {
    format!(
        r#"
repo tool {{
    url "{url}"
    rev "v0.3.26"
    path "tool"
}}
"#
    )
}

#[test]
fn a_tag_moved_upstream_is_held_at_the_locked_commit_until_upgrade() {
    let fx = GitFixture::new();
    let a = Sandbox::new();
    a.spec(&repo_spec(&fx.file_url()));
    a.run(&["apply", "--yes"]).code(0);
    let lock = lock_toml(&a);
    assert_eq!(
        lock["repo"]["tool"]["commit"].as_str(),
        Some(fx.c1.as_str())
    );
    assert_eq!(lock["repo"]["tool"]["rev"].as_str(), Some("v0.3.26"));

    // Upstream moves the tag to a later commit.
    git(
        &fx.upstream,
        &["tag", "-f", "-a", "v0.3.26", "-m", "moved", &fx.c3],
    );
    let b = Sandbox::new();
    b.spec(&repo_spec(&fx.file_url()));
    std::fs::write(b.path("plasma.lock"), a.read("plasma.lock")).unwrap();
    let plan = b.run(&["plan"]);
    assert!(
        plan.stdout
            .contains(&format!("v0.3.26 held at locked {}", &fx.c1[..7])),
        "{}",
        plan.stdout
    );
    b.run(&["apply", "--yes"]).code(0);
    assert_eq!(git(&b.path("tool"), &["rev-parse", "HEAD"]), fx.c1);
    b.run(&["plan", "--detailed-exitcode"]).code(0);
    // Looking upstream does not move it either.
    b.run(&["plan", "--refresh", "--detailed-exitcode"]).code(0);

    let upgrade = b.run(&["lock", "--upgrade", "repo.tool"]);
    upgrade.code(0);
    assert!(
        upgrade.stdout.contains("lock: ~ repo.tool"),
        "{}",
        upgrade.stdout
    );
    assert_eq!(
        lock_toml(&b)["repo"]["tool"]["commit"].as_str(),
        Some(fx.c3.as_str())
    );
    let plan = b.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("the clone is not at the commit plasma.lock holds")
            && plan
                .stdout
                .contains(&format!("v0.3.26 at locked {}", &fx.c3[..7])),
        "{}",
        plan.stdout
    );
    b.run(&["apply", "--yes"]).code(0);
    assert_eq!(git(&b.path("tool"), &["rev-parse", "HEAD"]), fx.c3);
    let submodules = lock_toml(&b)["repo"]["tool"]["submodules"].clone();
    assert_eq!(submodules[0]["path"].as_str(), Some("sd-scripts"));
    assert_eq!(submodules[0]["commit"].as_str(), Some(fx.s2.as_str()));

    // A locked commit the upstream no longer has (force-pushed away): the
    // lock is what to change, and the error says so.
    let gone = "0123456789abcdef0123456789abcdef01234567";
    let c = Sandbox::new();
    c.spec(&repo_spec(&fx.file_url()));
    c.write("plasma.lock", &b.read("plasma.lock").replace(&fx.c3, gone));
    let apply = c.run(&["apply", "--yes"]);
    apply.code(1);
    assert!(
        apply.stderr.contains(&format!(
            "no longer has {gone}, the commit plasma.lock holds `v0.3.26` at"
        )) && apply.stderr.contains("plasma lock --upgrade"),
        "{}",
        apply.stderr
    );
}

#[test]
fn a_lock_for_a_mac_is_resolved_on_this_machine_with_uv() {
    if !has_uv() {
        println!("skipped: uv is not on PATH (scripts/test.sh installs it)");
        return;
    }
    let index = PyIndex::serve(&[
        Wheel::new("platlike", "1.0"),
        Wheel::new("platlike", "2.0").tag("py3-none-macosx_11_0_arm64"),
        Wheel::new("app", "1.0").requires("platlike"),
    ]);
    let sb = Sandbox::new();
    sb.spec(&format!(
        r#"
platform os=macos arch=aarch64 accelerator=mps

venv app {{
    path "venv"
    python "3.11"
    requirements "requirements.txt"
    index "{url}"
}}
"#,
        url = index.url_with_credentials("alice", SECRET),
    ));
    sb.write("requirements.txt", "app\n");
    let lock = sb.run(&["lock"]);
    lock.code(0);
    let text = sb.read("plasma.lock");
    assert!(!text.contains(SECRET), "{text}");
    let mac_wheel = index
        .wheel_dir()
        .join("platlike-2.0-py3-none-macosx_11_0_arm64.whl");
    let digest = { crate::support::sha256_hex(&std::fs::read(&mac_wheel).unwrap()) };
    let table: toml::Table = toml::from_str(&text).unwrap();
    let entry = &table["venv"]["app"];
    assert_eq!(entry["platform"].as_str(), Some("macos-aarch64"), "{text}");
    assert_eq!(entry["python"].as_str(), Some("3.11"));
    assert_eq!(entry["resolver"].as_str(), Some("uv pip compile"));
    let plat = entry["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("platlike"))
        .expect("platlike locked");
    assert_eq!(plat["version"].as_str(), Some("2.0"), "{text}");
    assert_eq!(
        plat["hashes"][0].as_str(),
        Some(format!("sha256:{digest}").as_str())
    );
    // The same spec on this Linux box would resolve 1.0: the lock is for the Mac.
    sb.run_on(
        "os=macos arch=aarch64 accelerator=mps",
        &["lock", "--locked"],
    )
    .code(0);
}

#[test]
fn a_lock_holds_no_secret_from_index_or_git_urls() {
    use base64::Engine;
    let fx = GitFixture::new();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{SECRET}"));
    let server = crate::repo_kind::GitHttpServer::start(fx.upstream.parent().unwrap(), &basic);
    let url = format!(
        "http://alice:{SECRET}@127.0.0.1:{}/git/backend/kohya_ss",
        server.port
    );
    let index = PyIndex::serve(&wheels());
    let sb = machine(&format!(
        "{}\n{}",
        venv_spec(&index, "pip"),
        repo_spec(&url).replace(
            "    path \"tool\"\n",
            "    path \"tool\"\n    submodules #false\n"
        )
    ));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    assert!(!output(&apply).contains(SECRET));
    let text = sb.read("plasma.lock");
    assert!(!text.contains(SECRET), "{text}");
    let lock = lock_toml(&sb);
    assert_eq!(
        lock["repo"]["tool"]["commit"].as_str(),
        Some(fx.c1.as_str())
    );
    assert!(
        lock["repo"]["tool"]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://***@127.0.0.1:"),
        "{text}"
    );
    let relock = sb.run(&["lock", "--upgrade", "repo.tool"]);
    relock.code(0);
    assert!(!output(&relock).contains(SECRET));
    assert!(!sb.read("plasma.lock").contains(SECRET));
}

#[test]
fn a_damaged_or_newer_lock_is_a_clear_error() {
    let sb = Sandbox::new();
    sb.spec("file a {\n    path \"a.txt\"\n    content \"a\"\n}\n");
    sb.write("plasma.lock", "version = 1\n[venv.app\n");
    let run = sb.run(&["plan"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("plasma.lock is not a lock plasma can read")
            && run.stderr.contains("run `plasma lock`"),
        "{}",
        run.stderr
    );
    sb.write("plasma.lock", "version = 7\n[venv.app]\nwhatever = 1\n");
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("has lock format version 7, newer than this plasma reads (version 1)"),
        "{}",
        run.stderr
    );
    assert!(!sb.path("a.txt").exists());

    // Hand edits plasma would otherwise take at their word.
    for (text, says) in [
        (
            "version = 1\n[repo.tool]\nurl = \"u\"\nrev = \"v1\"\ncommit = \"zzzz\"\n",
            "repo.tool has `zzzz` where a full commit hash (40 or 64 hex digits) belongs",
        ),
        ("version = 1\n[bogus.x]\n", "unknown field `bogus`"),
    ] {
        sb.write("plasma.lock", text);
        let run = sb.run(&["plan"]);
        run.code(1);
        assert!(run.stderr.contains(says), "{}", run.stderr);
    }
}

/// The real ComfyUI v0.3.27 venv (requirements from the real clone's tag,
/// torch from the real stack's wheels as find-links, the pins setup.sh
/// needs today), applied on one machine, then rebuilt from the lock on a
/// second: `pip freeze` byte for byte. Runs only with
/// `PLASMA_REAL_STACK=<folder built by shared/real-stack/setup.sh>`;
/// downloads the rest from PyPI.
#[test]
fn real_comfyui_venv_is_locked_and_rebuilt_from_the_lock() {
    let Some(stack) = std::env::var_os("PLASMA_REAL_STACK").map(std::path::PathBuf::from) else {
        println!(
            "skipped: PLASMA_REAL_STACK is not set (a folder built by shared/real-stack/setup.sh)"
        );
        return;
    };
    if !has_uv() {
        println!("skipped: uv is not on PATH (scripts/test.sh installs it)");
        return;
    }
    let requirements = git(
        &stack.join("git/ComfyUI.git"),
        &["show", "v0.3.27:requirements.txt"],
    ) + "\nrequests\n";
    let spec = format!(
        r#"
venv comfy {{
    path "venv"
    python "3.11"
    package torch "2.5.1"
    package torchvision "0.20.1"
    package torchaudio "2.5.1"
    package comfyui-frontend-package "1.14.6"
    package transformers "4.50.3"
    requirements "requirements.txt"
    find-links "{wheels}"
    installer "uv"
    seed-pip #true
}}
"#,
        wheels = stack.join("wheels").display()
    );
    // The machine's own uv cache, shared by both machines as a CI cache
    // would be: uv hardlinks from it, so the two torch venvs (5.7 GB each
    // when copied) cost little disk.
    let cache = std::env::var_os("UV_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/uv")
        });
    let run = |sb: &Sandbox, args: &[&str]| {
        let started = std::time::Instant::now();
        let out = sb
            .command(args)
            .env("UV_CACHE_DIR", &cache)
            .output()
            .expect("plasma runs");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        println!(
            "plasma {}: {:.1}s",
            args.join(" "),
            started.elapsed().as_secs_f64()
        );
        run
    };
    let a = Sandbox::new();
    a.spec(&spec);
    a.write("requirements.txt", &requirements);
    run(&a, &["apply", "--yes"]).code(0);
    let lock = a.read("plasma.lock");
    let table: toml::Table = toml::from_str(&lock).unwrap();
    let packages = table["venv"]["comfy"]["packages"].as_array().unwrap();
    println!("machine A locked {} packages", packages.len());
    let version = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["version"].as_str())
            .map(str::to_string)
    };
    assert_eq!(version("torch").as_deref(), Some("2.5.1"));
    assert_eq!(version("transformers").as_deref(), Some("4.50.3"));
    assert!(
        version("numpy").is_some() && version("aiohttp").is_some(),
        "{lock}"
    );
    run(&a, &["plan", "--detailed-exitcode", "--locked"]).code(0);

    let b = Sandbox::new();
    b.spec(&spec);
    b.write("requirements.txt", &requirements);
    std::fs::write(b.path("plasma.lock"), &lock).unwrap();
    run(&b, &["apply", "--yes", "--locked"]).code(0);
    let (freeze_a, freeze_b) = (freeze(&a.path("venv")), freeze(&b.path("venv")));
    println!(
        "pip freeze: {} lines on A, {} on B, identical: {}",
        freeze_a.lines().count(),
        freeze_b.lines().count(),
        freeze_a == freeze_b
    );
    assert_eq!(freeze_a, freeze_b);
    assert_eq!(b.read("plasma.lock"), lock);
    run(&b, &["plan", "--detailed-exitcode"]).code(0);

    // Resolving the same spec without applying (uv, with hashes).
    let relock = run(&a, &["lock", "--upgrade", "venv.comfy"]);
    relock.code(0);
    let moved = relock
        .stdout
        .lines()
        .filter(|l| l.starts_with("lock: ~"))
        .count();
    println!("plasma lock --upgrade: {moved} packages moved since the apply");
    let hashed: toml::Table = toml::from_str(&a.read("plasma.lock")).unwrap();
    let torch = hashed["venv"]["comfy"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("torch"))
        .cloned()
        .unwrap();
    assert!(
        torch["hashes"][0].as_str().unwrap().starts_with("sha256:"),
        "{torch}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_trusted_on_first_use_is_locked_to_that_digest() {
    use crate::support::httpfix::{HttpFixture, Route, safetensors_file};
    let first = safetensors_file(4096, 1);
    let server = HttpFixture::new()
        .route("/m.safetensors", Route::new(first.clone()))
        .start()
        .await;
    let spec = format!(
        "model m {{\n    url \"{}\"\n    path \"models/m.safetensors\"\n}}\n",
        server.url("/m.safetensors")
    );
    let a = Sandbox::new();
    a.spec(&spec);
    a.run(&["apply", "--yes"]).code(0);
    let digest = { crate::support::sha256_hex(&first) };
    assert_eq!(
        lock_toml(&a)["model"]["m"]["sha256"].as_str(),
        Some(digest.as_str())
    );

    // The server now sends other bytes: a second machine with the lock refuses them.
    server.replace_route("/m.safetensors", Route::new(safetensors_file(4096, 2)));
    let b = Sandbox::new();
    b.spec(&spec);
    std::fs::write(b.path("plasma.lock"), a.read("plasma.lock")).unwrap();
    let apply = b.run(&["apply", "--yes"]);
    apply.code(1);
    assert!(!b.path("models/m.safetensors").exists());
    assert!(output(&apply).contains(&digest[..12]), "{}", output(&apply));
}

#[test]
fn plasma_lock_says_what_it_cannot_resolve() {
    let index = PyIndex::serve(&wheels());
    let sb = Sandbox::new();
    sb.spec(&venv_spec(&index, "pip"));
    let unknown = sb.run(&["lock", "--upgrade", "venv.nope"]);
    unknown.code(1);
    assert!(
        unknown
            .stderr
            .contains("--upgrade venv.nope: no such resource"),
        "{}",
        unknown.stderr
    );
    // Without uv on PATH, a venv cannot be resolved without applying it.
    let mut cmd = sb.command(&["lock"]);
    cmd.env("PATH", "/usr/bin:/bin");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`plasma lock` resolves venvs with uv, which is not on PATH"),
        "{stderr}"
    );
    assert!(!sb.path("plasma.lock").exists());
    if !has_uv() {
        println!("skipped the missing-file half: uv is not on PATH");
        return;
    }
    // requirements.txt is not there yet (a clone would bring it).
    let missing = sb.run(&["lock"]);
    missing.code(1);
    assert!(
        missing
            .stderr
            .contains("venv.app: cannot read its requirements file")
            && missing.stderr.contains("requirements.txt yet"),
        "{}",
        missing.stderr
    );
}

#[test]
fn an_editable_install_is_locked_and_rebuilt_as_editable() {
    let index = PyIndex::serve(&wheels());
    let sb = machine(&venv_spec(&index, "pip"));
    crate::support::pyfix::local_project(&sb.path("src/library"), "library", "0.0.0", &[]);
    sb.write("requirements.txt", "-e ./src/library\nhelper\n");
    sb.run(&["apply", "--yes"]).code(0);
    let text = sb.read("plasma.lock");
    let project = sb.path("src/library").display().to_string();
    assert!(
        text.contains(&format!("direct = \"-e file://{project}\"")),
        "{text}"
    );
    let before = freeze(&sb.path("venv"));
    // The venv is lost; apply rebuilds it from the lock, editable again.
    std::fs::remove_dir_all(sb.path("venv")).unwrap();
    let apply = sb.run(&["apply", "--yes", "--locked"]);
    apply.code(0);
    assert!(
        apply
            .stdout
            .contains("packages exactly as plasma.lock lists them"),
        "{}",
        apply.stdout
    );
    assert_eq!(freeze(&sb.path("venv")), before);
    let out = Command::new(venv_python(&sb.path("venv")))
        .args(["-c", "import library; print(library.__file__)"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&project),
        "{out:?}"
    );
    assert_eq!(sb.read("plasma.lock"), text);
}
