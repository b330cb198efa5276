//! The Python layer against the real thing: `python3 -m venv`, pip (and uv
//! when it is on PATH), and wheels served over HTTP on 127.0.0.1 by the
//! `pyfix` fixture. No network.

use crate::support::pyfix;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use plasma::python::*;
use pyfix::{PyIndex, venv_packages};

/// The interpreter `python3` on PATH is, found through the public API.
fn python3() -> Interpreter {
    let out = Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("python3 on PATH");
    let version = String::from_utf8(out.stdout).unwrap();
    find_interpreter(version.trim()).expect("the running python3 must be found")
}

fn new_venv(installer: &Installer) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    installer
        .create_venv(&python3(), &venv)
        .expect("create venv");
    (dir, venv)
}

/// Reads `FLAVOUR` from an installed fixture module.
fn flavour(venv: &Path, module: &str) -> String {
    let out = Command::new(venv_python(venv))
        .args(["-c", &format!("import {module}; print({module}.FLAVOUR)")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn spec_with_index(index: &PyIndex) -> PackageSpec {
    PackageSpec {
        index: Some(IndexUrl::new(index.url())),
        ..PackageSpec::default()
    }
}

fn uv_or_skip(test: &str) -> Option<Installer> {
    match Installer::detect(InstallerChoice::Uv) {
        Ok(uv) => Some(uv),
        Err(_) => {
            eprintln!(
                "note: {test} skipped: uv is not on PATH (CI installs it with `pip install uv`)"
            );
            None
        }
    }
}

fn write_requirements(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("requirements.txt");
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------- names

#[test]
fn names_normalise_as_pep_503() {
    assert_eq!(normalize_name("Foo_Bar.baz"), "foo-bar-baz");
    assert_eq!(normalize_name("TorchVision"), "torchvision");
    assert_eq!(normalize_name("a__-.b"), "a-b");
}

// ---------------------------------------------------------- interpreters

#[test]
fn interpreter_found_on_path_by_version_and_by_path() {
    let found = python3();
    assert!(found.path.is_absolute());
    // Found by version, then by its own path: the same interpreter.
    let by_path = find_interpreter(found.path.to_str().unwrap()).unwrap();
    assert_eq!(by_path, found);
    let exact = find_interpreter(&found.version.to_string()).unwrap();
    assert_eq!(exact.version, found.version);
}

#[test]
fn interpreter_found_in_pyenv_versions_folder() {
    let dir = tempfile::tempdir().unwrap();
    let real = python3();
    let bin = dir.path().join("pyenv/versions/3.11.99/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&real.path, bin.join("python3")).unwrap();
    let empty_path = dir.path().join("empty");
    std::fs::create_dir(&empty_path).unwrap();
    let search = InterpreterSearch {
        path_dirs: vec![empty_path],
        pyenv_root: Some(dir.path().join("pyenv")),
    };

    let found = search.find("3.11").unwrap();
    assert_eq!(found.path, bin.join("python3"));
    assert_eq!(found.version.to_string(), "3.11.99");
}

#[test]
fn missing_interpreter_error_lists_every_place_looked() {
    let dir = tempfile::tempdir().unwrap();
    // A `python3` on PATH that is the wrong version.
    let path_dir = dir.path().join("bin");
    std::fs::create_dir(&path_dir).unwrap();
    let fake = path_dir.join("python3");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho {}\necho 3.8.10\n", fake.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A pyenv folder with another version.
    let pyenv_python = dir.path().join("pyenv/versions/3.10.1/bin/python3");
    std::fs::create_dir_all(pyenv_python.parent().unwrap()).unwrap();
    std::fs::copy(&fake, &pyenv_python).unwrap();
    let search = InterpreterSearch {
        path_dirs: vec![path_dir],
        pyenv_root: Some(dir.path().join("pyenv")),
    };

    let message = search.find("3.99").unwrap_err().to_string();
    assert!(
        message.starts_with("no Python interpreter matching \"3.99\" was found; looked in:"),
        "{message}"
    );
    assert!(
        message.contains("python3.99 on PATH: not found"),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "python3 on PATH: {} is Python 3.8.10",
            fake.display()
        )),
        "{message}"
    );
    assert!(message.contains("pyenv/versions: has 3.10.1"), "{message}");
    assert!(
        message.contains("`uv python find`: uv is not on PATH"),
        "{message}"
    );

    let broken = dir.path().join("broken-python");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot run' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let unusable = search
        .find(broken.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        unusable.contains("broken-python is not a usable Python interpreter"),
        "{unusable}"
    );
    assert!(unusable.contains("cannot run"), "{unusable}");

    let missing_file = search.find("/no/such/python3").unwrap_err().to_string();
    assert!(
        missing_file.contains("/no/such/python3: no such file"),
        "{missing_file}"
    );
}

#[test]
fn interpreter_found_through_uv_python_find() {
    let Some(Installer::Uv { uv }) = uv_or_skip("interpreter_found_through_uv_python_find") else {
        return;
    };
    // PATH holds only uv, so neither PATH nor pyenv can answer.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&uv, dir.path().join("uv")).unwrap();
    let search = InterpreterSearch {
        path_dirs: vec![dir.path().to_path_buf()],
        pyenv_root: None,
    };
    let wanted = python3().version;
    let found = search
        .find(&format!("{}.{}", wanted.major, wanted.minor))
        .unwrap();
    assert_eq!(
        (found.version.major, found.version.minor),
        (wanted.major, wanted.minor)
    );

    let message = search.find("3.99").unwrap_err().to_string();
    assert!(
        message.contains("`uv python find 3.99`: no match"),
        "{message}"
    );
}

// ------------------------------------------------------ venvs and observation

#[test]
fn observes_a_real_venv_after_pip_installs() {
    let index = PyIndex::standard();
    let (_dir, venv) = new_venv(&Installer::Pip);
    let spec = PackageSpec {
        pins: vec![Pin::new("Helper", "1.0"), Pin::new("torchlike", "2.5.1")],
        ..spec_with_index(&index)
    };
    Installer::Pip.install_pins(&venv, &spec).unwrap();

    let VenvObservation::Present(observed) = observe_venv(&venv).unwrap() else {
        panic!("venv expected")
    };
    assert_eq!(observed.python_version, Some(python3().version));
    assert!(observed.home.is_some());
    assert_eq!(
        observed.packages.get("helper").map(String::as_str),
        Some("1.0")
    );
    assert_eq!(
        observed.packages.get("torchlike").map(String::as_str),
        Some("2.5.1")
    );
    assert!(
        observed.packages.contains_key("pip"),
        "{:?}",
        observed.packages
    );
    assert!(observed.damaged.is_empty());

    // Observation agrees with pip's own view of the venv.
    let freeze = Command::new(venv_python(&venv))
        .args(["-m", "pip", "list", "--format=json"])
        .output()
        .unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&freeze.stdout).unwrap();
    let from_pip: BTreeMap<String, String> = listed
        .iter()
        .map(|p| {
            (
                normalize_name(p["name"].as_str().unwrap()),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(observed.packages, from_pip);
}

#[test]
fn a_venv_does_not_survive_renaming_so_it_is_created_in_place() {
    // The fact behind creating venvs at their final path (see create.rs).
    let dir = tempfile::tempdir().unwrap();
    let built_at = dir.path().join("venv.tmp");
    Installer::Pip.create_venv(&python3(), &built_at).unwrap();
    let activate = std::fs::read_to_string(built_at.join("bin/activate")).unwrap();
    assert!(
        activate.contains(built_at.to_str().unwrap()),
        "activate should embed its absolute path"
    );
    let pip_script = std::fs::read_to_string(built_at.join("bin/pip")).unwrap();
    assert!(
        pip_script.starts_with(&format!("#!{}", built_at.display())),
        "{pip_script}"
    );

    let renamed = dir.path().join("venv");
    std::fs::rename(&built_at, &renamed).unwrap();
    // Its `#!` names the old path: either the kernel cannot start it, or it runs and fails.
    let runs = Command::new(renamed.join("bin/pip"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(!runs, "pip's script should point at the old path and fail");
}

#[test]
fn creating_over_a_venv_that_cannot_be_replaced_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    std::fs::create_dir(&venv).unwrap();
    std::fs::write(venv.join("pyvenv.cfg"), "version = 3.11.7\n").unwrap();
    std::fs::write(venv.join("marker"), "old").unwrap();
    let broken = Interpreter {
        path: dir.path().join("no-such-python"),
        version: python3().version,
    };

    let message = Installer::Pip
        .create_venv(&broken, &venv)
        .unwrap_err()
        .to_string();
    assert!(message.contains("could not start"), "{message}");
    assert_eq!(std::fs::read_to_string(venv.join("marker")).unwrap(), "old");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        ["venv"],
        "nothing half-made or set aside may remain"
    );
}

#[test]
fn creating_a_fresh_venv_that_fails_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    // A "python" that makes a partial folder and then fails.
    let fake = dir.path().join("python-fails");
    std::fs::write(
        &fake,
        "#!/bin/sh\nmkdir -p \"$3/lib\"\necho 'Error: no ensurepip' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let interpreter = Interpreter {
        path: fake,
        version: python3().version,
    };

    let message = Installer::Pip
        .create_venv(&interpreter, &venv)
        .unwrap_err()
        .to_string();
    assert!(message.contains("failed (exit status: 1)"), "{message}");
    assert!(message.contains("Error: no ensurepip"), "{message}");
    assert_eq!(observe_venv(&venv).unwrap(), VenvObservation::Missing);
}

#[test]
fn something_that_is_not_a_venv_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "precious").unwrap();
    let message = Installer::Pip
        .create_venv(&python3(), dir.path())
        .unwrap_err()
        .to_string();
    assert!(message.contains("is not a Python venv"), "{message}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "precious"
    );
}

// ------------------------------------------------------------- installing

fn pins_come_from_their_own_index(installer: Installer) {
    let main = PyIndex::standard();
    let cpu = PyIndex::serve(&[
        pyfix::Wheel::new("torchlike", "2.5.1").flavour("cpu-index"),
        pyfix::Wheel::new("visionlike", "0.20.1")
            .requires("torchlike==2.5.1")
            .flavour("cpu-index"),
    ]);
    let (_dir, venv) = new_venv(&installer);
    let cpu_index = IndexUrl::new(cpu.url());
    let spec = PackageSpec {
        pins: vec![
            Pin::new("helper", "1.1"),
            Pin::new("torchlike", "2.5.1").with_index(cpu_index.clone()),
            Pin::new("visionlike", "0.20.1").with_index(cpu_index),
        ],
        ..spec_with_index(&main)
    };
    let log = installer.install_pins(&venv, &spec).unwrap();

    let installed = venv_packages(&venv);
    assert_eq!(installed["torchlike"], "2.5.1");
    assert_eq!(installed["visionlike"], "0.20.1");
    assert_eq!(installed["helper"], "1.1");
    assert_eq!(flavour(&venv, "torchlike"), "cpu-index");
    assert_eq!(flavour(&venv, "visionlike"), "cpu-index");
    assert_eq!(flavour(&venv, "helper"), "default");
    // One run per index group, own-index group first.
    assert_eq!(log.commands.len(), 2, "{:?}", log.commands);
    assert!(
        log.commands[0].ends_with("torchlike==2.5.1 visionlike==0.20.1"),
        "{:?}",
        log.commands
    );
    assert!(
        log.commands[1].ends_with("helper==1.1"),
        "{:?}",
        log.commands
    );

    // A pin changed by hand is restored by installing the pins again.
    let moved = PackageSpec {
        pins: vec![Pin::new("torchlike", "2.6.0")],
        ..spec_with_index(&main)
    };
    installer.install_pins(&venv, &moved).unwrap();
    assert_eq!(venv_packages(&venv)["torchlike"], "2.6.0");
    installer.install_pins(&venv, &spec).unwrap();
    assert_eq!(venv_packages(&venv)["torchlike"], "2.5.1");
    assert_eq!(flavour(&venv, "torchlike"), "cpu-index");
}

#[test]
fn pip_pins_come_from_their_own_index() {
    pins_come_from_their_own_index(Installer::Pip);
}

#[test]
fn uv_pins_come_from_their_own_index() {
    if let Some(uv) = uv_or_skip("uv_pins_come_from_their_own_index") {
        pins_come_from_their_own_index(uv);
    }
}

/// The custom-node failure: a requirements file asking for a newer pinned
/// package. Decision: the pin wins. The line naming the pinned package is
/// left out and reported as overridden, the rest installs, the pin holds.
/// A package that itself *depends* on the newer version cannot be installed
/// without breaking it, so that fails clearly and changes nothing pinned.
fn requirements_cannot_move_a_pin(installer: Installer) {
    let index = PyIndex::standard();
    let (dir, venv) = new_venv(&installer);
    let spec = PackageSpec {
        pins: vec![Pin::new("torchlike", "2.5.1")],
        ..spec_with_index(&index)
    };
    installer.install_pins(&venv, &spec).unwrap();

    let requirements = write_requirements(
        dir.path(),
        "torchlike>=2.6  # the custom node wants new torch\nhelper\n",
    );
    let log = installer
        .install_requirements(&venv, &spec, std::slice::from_ref(&requirements))
        .unwrap();
    let installed = venv_packages(&venv);
    assert_eq!(installed["torchlike"], "2.5.1");
    assert_eq!(installed["helper"], "1.1");
    assert_eq!(log.overridden.len(), 1);
    assert_eq!(log.overridden[0].requirement, "torchlike>=2.6");
    assert_eq!(log.overridden[0].pinned, "torchlike==2.5.1");
    assert_eq!(log.overridden[0].file, requirements);

    let transitive = write_requirements(dir.path(), "newnode\n");
    let before = venv_packages(&venv);
    let message = installer
        .install_requirements(&venv, &spec, &[transitive])
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("needs torchlike>=2.6, against the pin torchlike==2.5.1"),
        "the conflict must be named in the spec's terms: {message}"
    );
    assert_eq!(venv_packages(&venv), before);
}

#[test]
fn pip_requirements_cannot_move_a_pin() {
    requirements_cannot_move_a_pin(Installer::Pip);
}

#[test]
fn uv_requirements_cannot_move_a_pin() {
    if let Some(uv) = uv_or_skip("uv_requirements_cannot_move_a_pin") {
        requirements_cannot_move_a_pin(uv);
    }
}

fn forbidden_package_pulled_in_fails_and_changes_nothing(installer: Installer) {
    let index = PyIndex::standard();
    let (dir, venv) = new_venv(&installer);
    let spec = PackageSpec {
        pins: vec![Pin::new("torchlike", "2.5.1")],
        forbid: vec!["XFormersLike".into(), "triton".into()],
        ..spec_with_index(&index)
    };
    installer.install_pins(&venv, &spec).unwrap();
    let before = venv_packages(&venv);

    let requirements = write_requirements(dir.path(), "helper==1.0\nfancy-node\n");
    let err = installer
        .install_requirements(&venv, &spec, std::slice::from_ref(&requirements))
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, PyError::ForbiddenPackage { .. }), "{err:?}");
    assert!(
        message.contains(&format!(
            "refusing to install: requirements {} would install forbidden package xformerslike 0.1",
            requirements.display()
        )),
        "{message}"
    );
    assert!(
        message.contains(
            "pulled in by fancy-node 2.0 (requested) -> needs-xformers 1.0 -> xformerslike 0.1"
        ),
        "{message}"
    );
    assert!(message.contains("nothing was installed"), "{message}");
    assert_eq!(venv_packages(&venv), before, "the venv must be as it was");

    // The same for a pin that pulls it.
    let pinned = PackageSpec {
        pins: vec![Pin::new("needs-xformers", "1.0")],
        ..spec.clone()
    };
    let message = installer
        .install_pins(&venv, &pinned)
        .unwrap_err()
        .to_string();
    assert!(
        message
            .contains("pin needs-xformers==1.0 would install forbidden package xformerslike 0.1"),
        "{message}"
    );
    assert!(
        message.contains("pulled in by needs-xformers 1.0 (requested) -> xformerslike 0.1"),
        "{message}"
    );
    assert_eq!(venv_packages(&venv), before);
}

#[test]
fn pip_forbidden_package_pulled_in_fails_and_changes_nothing() {
    forbidden_package_pulled_in_fails_and_changes_nothing(Installer::Pip);
}

#[test]
fn uv_forbidden_package_pulled_in_fails_and_changes_nothing() {
    if let Some(uv) = uv_or_skip("uv_forbidden_package_pulled_in_fails_and_changes_nothing") {
        forbidden_package_pulled_in_fails_and_changes_nothing(uv);
    }
}

fn uninstall_removes_packages(installer: Installer) {
    let index = PyIndex::standard();
    let (_dir, venv) = new_venv(&installer);
    // Installed "by hand", as a forbidden package would be.
    let spec = PackageSpec {
        pins: vec![Pin::new("xformerslike", "0.1"), Pin::new("helper", "1.0")],
        ..spec_with_index(&index)
    };
    installer.install_pins(&venv, &spec).unwrap();
    assert!(venv_packages(&venv).contains_key("xformerslike"));

    installer
        .uninstall(&venv, &["XFormersLike".into()])
        .unwrap();
    let installed = venv_packages(&venv);
    assert!(!installed.contains_key("xformerslike"), "{installed:?}");
    assert_eq!(installed["helper"], "1.0");
}

#[test]
fn pip_uninstall_removes_packages() {
    uninstall_removes_packages(Installer::Pip);
}

#[test]
fn uv_uninstall_removes_packages() {
    if let Some(uv) = uv_or_skip("uv_uninstall_removes_packages") {
        uninstall_removes_packages(uv);
    }
}

#[test]
fn missing_requirements_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("custom_nodes/x/requirements.txt");
    // No venv is needed: the file is read before anything runs.
    let err = Installer::Pip.install_requirements(
        &dir.path().join("venv"),
        &PackageSpec::default(),
        std::slice::from_ref(&missing),
    );
    let message = err.unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "could not read requirements file {}",
            missing.display()
        )),
        "{message}"
    );
}

#[test]
fn find_links_serve_packages_without_an_index() {
    let index = PyIndex::standard();
    let (_dir, venv) = new_venv(&Installer::Pip);
    // No index at all: only the wheel folder.
    let spec = PackageSpec {
        pins: vec![Pin::new("helper", "1.0")],
        index: Some(IndexUrl::new("http://127.0.0.1:9/nothing-here")),
        find_links: vec![IndexUrl::new(index.wheel_dir().display().to_string())],
        ..PackageSpec::default()
    };
    let log = Installer::Pip.install_pins(&venv, &spec).unwrap();
    assert_eq!(venv_packages(&venv)["helper"], "1.0", "{}", log.output);
}

// -------------------------------------------------------------- secrets

fn credentials_never_reach_errors_or_logs(installer: Installer) {
    let index = PyIndex::standard();
    let (_dir, venv) = new_venv(&installer);
    let secret = "s3cr3t-T0ken";
    let with_credentials = IndexUrl::new(index.url_with_credentials("alice", secret));

    // Success: the log has the commands and output, without the token.
    let spec = PackageSpec {
        pins: vec![Pin::new("helper", "1.0")],
        index: Some(with_credentials.clone()),
        ..PackageSpec::default()
    };
    let log = installer.install_pins(&venv, &spec).unwrap();
    assert_eq!(venv_packages(&venv)["helper"], "1.0");
    let log_text = format!("{log:?}");
    assert!(!log_text.contains(secret), "{log_text}");

    // Failure: a pin that does not exist on that index, own index and extra index both credentialed.
    let spec = PackageSpec {
        pins: vec![
            Pin::new("helper", "9.9")
                .with_index(with_credentials.clone())
                .with_extra_index(with_credentials),
        ],
        forbid: vec!["xformerslike".into()],
        ..PackageSpec::default()
    };
    let err = installer.install_pins(&venv, &spec).unwrap_err();
    let (message, debug) = (err.to_string(), format!("{err:?}"));
    assert!(message.contains("helper"), "{message}");
    assert!(
        !message.contains(secret) && !debug.contains(secret),
        "{message}\n{debug}"
    );
    assert!(!format!("{spec:?}").contains(secret));
}

#[test]
fn pip_credentials_never_reach_errors_or_logs() {
    credentials_never_reach_errors_or_logs(Installer::Pip);
}

#[test]
fn uv_credentials_never_reach_errors_or_logs() {
    if let Some(uv) = uv_or_skip("uv_credentials_never_reach_errors_or_logs") {
        credentials_never_reach_errors_or_logs(uv);
    }
}

#[test]
fn uv_creates_venvs_that_pip_layer_can_observe() {
    let Some(uv) = uv_or_skip("uv_creates_venvs_that_pip_layer_can_observe") else {
        return;
    };
    let (_dir, venv) = new_venv(&uv);
    let VenvObservation::Present(observed) = observe_venv(&venv).unwrap() else {
        panic!("venv expected")
    };
    assert_eq!(observed.python_version, Some(python3().version));
    assert!(
        observed.packages.is_empty(),
        "uv venvs start empty: {:?}",
        observed.packages
    );
}
