//! The `venv` kind end to end: the built binary, real `python3 -m venv`, real
//! pip (and uv when it is on PATH), and wheels the test builds, served as a
//! simple index on 127.0.0.1 by the `pyfix` fixture. No network.

use crate::support::pyfix;
use crate::support::sandbox;

use std::path::{Path, PathBuf};
use std::process::Command;

use plasma::python::{Installer, InstallerChoice, venv_python};
use pyfix::{PyIndex, python_version, venv_packages};
use sandbox::{Run, Sandbox};

const SECRET: &str = "s3cretT0ken";

/// A venv on the fixture index (with a credential in its URL, which must
/// never be shown), torchlike pinned, helper-style requirements, and
/// xformerslike forbidden.
fn spec(index: &PyIndex, installer: &str) -> String {
    format!(
        r#"
vars {{
    index "{url}"
}}

venv app {{
    path "venv"
    python "{python}"
    package torchlike "2.5.1" index="{{index}}"
    requirements "requirements.txt"
    forbid xformerslike
    index "{{index}}"
    installer "{installer}"
}}
"#,
        url = index.url_with_credentials("alice", SECRET),
        python = python_version(),
    )
}

fn all_output(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// Nothing plasma wrote or printed contains the index credential.
fn assert_no_secret(sb: &Sandbox, runs: &[&Run]) {
    for run in runs {
        assert!(!all_output(run).contains(SECRET), "{}", all_output(run));
    }
    let state = sb.read(".plasma/state.json");
    assert!(!state.contains(SECRET), "{state}");
    for entry in std::fs::read_dir(sb.path(".plasma/logs")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(SECRET), "{text}");
    }
}

/// `pip install ...` into the venv by hand, as a user (or a custom node) would.
fn pip_by_hand(venv: &Path, index: &PyIndex, args: &[&str]) {
    let out = Command::new(venv_python(venv))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--index-url",
        ])
        .arg(index.url())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn site_packages(venv: &Path) -> PathBuf {
    let lib = venv.join("lib");
    let python = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("python")
        })
        .expect("lib/python3.X");
    python.join("site-packages")
}

/// A venv applied once on pip with the custom-node-style requirements.
fn converged_pip_venv() -> (Sandbox, PyIndex) {
    let index = PyIndex::standard();
    let sb = Sandbox::new();
    sb.spec(&spec(&index, "pip"));
    sb.write("requirements.txt", "torchlike>=2.6\nhelper\n");
    sb.run(&["apply", "--yes"]).code(0);
    (sb, index)
}

#[test]
fn a_requirement_asking_for_a_newer_pin_leaves_the_pin_and_converges() {
    let index = PyIndex::standard();
    let sb = Sandbox::new();
    sb.spec(&spec(&index, "pip"));
    // What a ComfyUI custom node's requirements.txt does to torch.
    sb.write("requirements.txt", "torchlike>=2.6\nhelper\n");

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout
            .contains("# venv.app will be created (the venv does not exist)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("+ torchlike: 2.5.1 from http://***@127.0.0.1"),
        "{}",
        plan.stdout
    );

    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    assert!(
        apply
            .stdout
            .contains("venv.app: pin torchlike==2.5.1 holds over `torchlike>=2.6`"),
        "{}",
        apply.stdout
    );
    let venv = sb.path("venv");
    let installed = venv_packages(&venv);
    assert_eq!(
        installed.get("torchlike").map(String::as_str),
        Some("2.5.1")
    );
    assert_eq!(installed.get("helper").map(String::as_str), Some("1.1"));

    let again = sb.run(&["plan", "--detailed-exitcode"]);
    again.code(0);
    assert!(again.stdout.contains("No changes"), "{}", again.stdout);

    // State records the installed set, the requirements digest and the override.
    let state = sb.state();
    let outputs = &state["resources"]["venv.app"]["outputs"];
    assert_eq!(outputs["installed"]["torchlike"], "2.5.1");
    assert_eq!(outputs["installed"]["helper"], "1.1");
    let requirements = sb.path("requirements.txt").display().to_string();
    assert_eq!(
        outputs["requirements"][&requirements],
        blake3::hash(b"torchlike>=2.6\nhelper\n")
            .to_hex()
            .to_string()
    );
    assert!(
        outputs["overridden"][0]
            .as_str()
            .unwrap()
            .contains("torchlike>=2.6"),
        "{outputs}"
    );
    let log = sb.read(".plasma/logs/venv.app.log");
    assert!(
        log.contains("pin torchlike==2.5.1 holds over `torchlike>=2.6`"),
        "{log}"
    );
    assert_no_secret(&sb, &[&plan, &apply, &again]);
}

#[test]
fn second_apply_is_a_no_op_and_runs_no_installer() {
    let (sb, _index) = converged_pip_venv();
    // Make pip unrunnable, leaving its metadata (what observation reads) in place.
    let site = site_packages(&sb.path("venv"));
    std::fs::rename(site.join("pip"), site.join("pip-disabled")).unwrap();

    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    assert!(apply.stdout.contains("No changes"), "{}", apply.stdout);
    sb.run(&["drift"]).code(0);
}

#[test]
fn a_pin_changed_by_hand_is_drift_and_apply_restores_it() {
    let (sb, index) = converged_pip_venv();
    let venv = sb.path("venv");
    pip_by_hand(&venv, &index, &["torchlike==2.6.0"]);

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("~ torchlike: 2.6.0 -> 2.5.1"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("torchlike is off its pin"),
        "{}",
        plan.stdout
    );
    sb.run(&["drift"]).code(2);

    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    assert_eq!(venv_packages(&venv)["torchlike"], "2.5.1");
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
    assert_no_secret(&sb, &[&plan, &apply]);
}

#[test]
fn forbidden_and_outside_packages_are_drift_and_apply_removes_them() {
    let (sb, index) = converged_pip_venv();
    let venv = sb.path("venv");
    pip_by_hand(&venv, &index, &["xformerslike==0.1", "visionlike==0.20.1"]);
    pip_by_hand(&venv, &index, &["helper==1.0"]);

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    for line in [
        "- xformerslike (forbidden): 0.1",
        "- visionlike (installed outside plasma): 0.20.1",
        "~ helper (changed outside plasma): 1.0 -> 1.1",
    ] {
        assert!(
            plan.stdout.contains(line),
            "missing {line:?} in\n{}",
            plan.stdout
        );
    }

    sb.run(&["apply", "--yes"]).code(0);
    let installed = venv_packages(&venv);
    assert!(!installed.contains_key("xformerslike"), "{installed:?}");
    assert!(!installed.contains_key("visionlike"), "{installed:?}");
    assert_eq!(installed["helper"], "1.1");
    assert_eq!(installed["torchlike"], "2.5.1");
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_requirement_pulling_a_forbidden_package_fails_and_leaves_the_venv_as_it_was() {
    let (sb, _index) = converged_pip_venv();
    let venv = sb.path("venv");
    let before = venv_packages(&venv);
    let record_before = std::fs::read_to_string(venv.join(".plasma-record.json")).unwrap();
    sb.write("requirements.txt", "torchlike>=2.6\nhelper\nfancy_node\n");

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout
            .contains("requirements.txt changed since last apply"),
        "{}",
        plan.stdout
    );

    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let text = all_output(&apply);
    assert!(
        text.contains("would install forbidden package xformerslike 0.1"),
        "{text}"
    );
    assert!(
        text.contains(
            "pulled in by fancy-node 2.0 (requested) -> needs-xformers 1.0 -> xformerslike 0.1"
        ),
        "{text}"
    );
    assert!(text.contains("nothing was installed"), "{text}");
    assert_eq!(venv_packages(&venv), before);
    assert_eq!(
        std::fs::read_to_string(venv.join(".plasma-record.json")).unwrap(),
        record_before
    );
    // Still not converged: the plan still says why.
    sb.run(&["plan", "--detailed-exitcode"]).code(2);
    assert_no_secret(&sb, &[&plan, &apply]);
}

#[test]
fn a_venv_on_another_python_is_replaced() {
    let (sb, _index) = converged_pip_venv();
    let venv = sb.path("venv");
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
    let edited: String = cfg
        .lines()
        .map(|l| {
            if l.starts_with("version") {
                "version = 3.9.18".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(venv.join("pyvenv.cfg"), edited).unwrap();

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("# venv.app must be replaced"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("the venv was built on Python 3.9.18"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains(&format!("~ python: 3.9.18 -> {}", python_version())),
        "{}",
        plan.stdout
    );

    sb.run(&["apply", "--yes"]).code(0);
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
    assert_eq!(venv_packages(&venv)["torchlike"], "2.5.1");
}

#[test]
fn a_missing_interpreter_says_where_plasma_looked() {
    let index = PyIndex::standard();
    let sb = Sandbox::new();
    sb.spec(&spec(&index, "pip").replace(
        &format!("python \"{}\"", python_version()),
        "python \"3.99\"",
    ));
    sb.write("requirements.txt", "helper\n");
    // The plan needs no interpreter: observation reads files only.
    sb.run(&["plan", "--detailed-exitcode"]).code(2);
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let text = all_output(&apply);
    assert!(
        text.contains("no Python interpreter matching \"3.99\" was found; looked in:"),
        "{text}"
    );
    assert!(text.contains("python3.99 on PATH: not found"), "{text}");
    assert!(text.contains("pyenv versions folder"), "{text}");
    assert!(!sb.path("venv").exists());
}

#[test]
fn a_folder_that_is_not_a_venv_is_refused() {
    let index = PyIndex::standard();
    let sb = Sandbox::new();
    sb.spec(&spec(&index, "pip"));
    sb.write("venv/notes.txt", "mine\n");
    let plan = sb.run(&["plan"]);
    plan.code(1);
    assert!(
        all_output(&plan).contains("is not a Python venv (it has no pyvenv.cfg)"),
        "{}",
        all_output(&plan)
    );
    assert_eq!(sb.read("venv/notes.txt"), "mine\n");
}

#[test]
fn spec_mistakes_are_reported_together() {
    let sb = Sandbox::new();
    sb.spec(
        r#"
venv a {
    path "venv"
    python "3.11"
    package torch ">=2.5"
    package helper "1.0"
    package Helper "1.1"
    package xformers "0.0.28"
    forbid xformers
    installer "conda"
}
venv b {
    path "venv-b"
    package torch
}
"#,
    );
    let run = sb.run(&["validate"]);
    run.code(1);
    let text = all_output(&run);
    for expected in [
        "`>=2.5` is not an exact version for torch",
        "`helper` is pinned twice",
        "`xformers` is both pinned and forbidden",
        "`conda` is not a valid `installer`",
        "venv `b` is missing `python`",
        "`package` takes a name and an exact version",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn cuda_only_packages_on_macos_are_a_lint() {
    let sb = Sandbox::new();
    sb.write(
        "reqs.txt",
        "numpy\nbitsandbytes>=0.43\ntriton; sys_platform == \"linux\"\n",
    );
    let body = r#"
venv a {
    path "venv"
    python "3.11"
    package xformers "0.0.28"
    requirements "reqs.txt"
    ALLOW
}
"#;
    sb.spec(&format!("platform os=macos\n{}", body.replace("ALLOW", "")));
    let run = sb.run(&["validate"]);
    run.code(1);
    let text = all_output(&run);
    assert!(text.contains("cuda-only-on-macos"), "{text}");
    assert!(
        text.contains("xformers needs CUDA, and this spec is for macOS"),
        "{text}"
    );
    assert!(text.contains("line 2 asks for bitsandbytes"), "{text}");
    assert!(
        !text.contains("asks for triton"),
        "a marked line is the installer's business: {text}"
    );

    sb.spec(&format!(
        "platform os=macos\n{}",
        body.replace("ALLOW", "allow cuda-only-on-macos")
    ));
    sb.run(&["validate"]).code(0);
    // On a Linux spec the same packages are fine.
    sb.spec(&format!("platform os=linux\n{}", body.replace("ALLOW", "")));
    let linux = sb.run(&["validate"]);
    assert!(
        !all_output(&linux).contains("cuda-only-on-macos"),
        "{}",
        all_output(&linux)
    );
}

// ------------------------------------------------------------------- uv

fn real_uv() -> Option<PathBuf> {
    match Installer::detect(InstallerChoice::Uv) {
        Ok(Installer::Uv { uv }) => Some(uv),
        _ => None,
    }
}

#[test]
fn with_uv_the_pin_holds_and_a_second_apply_spawns_nothing() {
    let Some(uv) = real_uv() else {
        eprintln!(
            "note: uv tests skipped: uv is not on PATH (CI installs it with `pip install uv`)"
        );
        return;
    };
    let index = PyIndex::standard();
    let sb = Sandbox::new();
    // A logging wrapper in front of the real uv.
    let calls = sb.path("uv-calls.log");
    let wrapper = sb.write(
        "bin/uv",
        &format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexec '{}' \"$@\"\n",
            calls.display(),
            uv.display()
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        sb.path("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        let out = sb.command(args).env("PATH", &path).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    sb.spec(&spec(&index, "uv"));
    sb.write("requirements.txt", "torchlike>=2.6\nhelper\n");

    let apply = run(&["apply", "--yes"]);
    apply.code(0);
    assert!(
        apply
            .stdout
            .contains("pin torchlike==2.5.1 holds over `torchlike>=2.6`"),
        "{}",
        apply.stdout
    );
    let venv = sb.path("venv");
    assert_eq!(venv_packages(&venv)["torchlike"], "2.5.1");
    assert_eq!(venv_packages(&venv)["helper"], "1.1");
    let calls_after_first = std::fs::read_to_string(&calls).unwrap();
    assert!(
        calls_after_first.contains("venv"),
        "uv made the venv: {calls_after_first}"
    );

    let again = run(&["apply", "--yes"]);
    again.code(0);
    assert!(again.stdout.contains("No changes"), "{}", again.stdout);
    run(&["plan", "--detailed-exitcode"]).code(0);
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), calls_after_first);
    assert_no_secret(&sb, &[&apply, &again]);
}

// ------------------------------------------------ custom nodes (the lead's API)

#[test]
fn a_custom_node_installs_through_the_venv_under_its_pins() {
    use plasma::resource::venv::Venv;

    let (sb, _index) = converged_pip_venv();
    let spec = plasma::spec::load_file(&sb.path("plasma.kdl")).expect("spec loads");
    let declared = spec
        .resources
        .iter()
        .find(|r| r.address.to_string() == "venv.app")
        .unwrap();
    let venv = declared
        .resource
        .as_any()
        .downcast_ref::<Venv>()
        .expect("a venv resource");
    assert_eq!(venv.path(), sb.path("venv"));
    let log = sb.path(".plasma/logs/custom-node.x.log");

    let node = sb.write("node/requirements.txt", "torchlike>=2.6\nvisionlike\n");
    let done = venv
        .install_requirements_blocking("custom-node.x", std::slice::from_ref(&node), &log)
        .expect("installs");
    assert_eq!(done.overridden.len(), 1, "{done:?}");
    assert_eq!(done.overridden[0].requirement, "torchlike>=2.6");
    let installed = venv_packages(venv.path());
    assert_eq!(installed["torchlike"], "2.5.1");
    assert_eq!(installed["visionlike"], "0.20.1");
    // The node's packages are plasma's, not drift.
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    let bad = sb.write("bad/requirements.txt", "needs-xformers\n");
    let before = venv_packages(venv.path());
    let err = venv
        .install_requirements_blocking("custom-node.x", &[bad], &log)
        .expect_err("needs a forbidden package");
    assert!(
        err.message.contains(
            "forbidden package xformerslike 0.1, pulled in by needs-xformers 1.0 (requested)"
        ),
        "{}",
        err.message
    );
    assert_eq!(venv_packages(venv.path()), before);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(!log_text.contains(SECRET), "{log_text}");
}

// ------------------------------------- requirements files as pip reads them

/// The installers to test with: pip always, uv when it is on PATH.
fn installer_available(installer: &str) -> bool {
    if installer == "uv" && real_uv().is_none() {
        eprintln!("note: uv test skipped: uv is not on PATH (scripts/test.sh installs it)");
        return false;
    }
    true
}

/// The fixture index plus the wheels the kohya-shaped files ask for.
fn kohya_index() -> PyIndex {
    let mut wheels = pyfix::standard_wheels();
    wheels.extend([
        pyfix::Wheel::new("py-cpuinfo", "9.0.0"),
        pyfix::Wheel::new("accelerate", "0.33.0"),
        pyfix::Wheel::new("diffusers", "0.32.2")
            .requires("helper")
            .requires("accelerate>=0.31 ; extra == \"torch\""),
        pyfix::Wheel::new("hf-transfer", "0.1.8"),
        pyfix::Wheel::new("huggingface-hub", "0.29.3")
            .requires("hf-transfer>=0.1.4 ; extra == \"hf_transfer\""),
        pyfix::Wheel::new("opencv-python", "4.10.0.84"),
        pyfix::Wheel::new("six", "1.16.0"),
        pyfix::Wheel::new("six", "1.17.0"),
        pyfix::Wheel::new("alpha", "1.0"),
        pyfix::Wheel::new("alpha", "2.0"),
        pyfix::Wheel::new("needs-alpha", "1.0").requires("alpha>=2"),
    ]);
    PyIndex::serve(&wheels)
}

/// A venv with `requirements` (paths relative to the sandbox), torchlike
/// pinned, xformerslike forbidden, and `extra` lines.
fn reqs_spec(index: &PyIndex, installer: &str, requirements: &[&str], extra: &str) -> String {
    let files: Vec<String> = requirements.iter().map(|r| format!("{r:?}")).collect();
    format!(
        r#"
venv app {{
    path "venv"
    python "{python}"
    package torchlike "2.5.1"
    {extra}
    requirements {files}
    forbid xformerslike
    index "{url}"
    installer "{installer}"
}}
"#,
        python = python_version(),
        files = files.join(" "),
        url = index.url_with_credentials("alice", SECRET),
    )
}

/// kohya_ss's shape: `requirements_linux.txt` is `-r requirements.txt`
/// plus lines, and `requirements.txt` ends with `-e ./sd-scripts`. With a
/// forbid (so the dry run runs), as the second `requirements` entry, then
/// `requirements.txt` edited after apply (v25.2.2 adds `py-cpuinfo`).
fn kohya_editable_and_an_edited_include(installer: &str) {
    if !installer_available(installer) {
        return;
    }
    let index = kohya_index();
    let sb = Sandbox::new();
    sb.write("other/requirements.txt", "helper\n");
    sb.write(
        "kohya/requirements_linux.txt",
        "torchlike==2.5.1  # the CUDA build in the real file\n-r requirements.txt\n",
    );
    sb.write(
        "kohya/requirements.txt",
        "accelerate==0.33.0\nvisionlike\n# for kohya_ss library\n-e ./sd-scripts # no_verify leave this to specify not checking this a verification stage\n",
    );
    pyfix::local_project(
        &sb.path("kohya/sd-scripts"),
        "library",
        "0.0.0",
        &["helper"],
    );
    sb.spec(&reqs_spec(
        &index,
        installer,
        &["other/requirements.txt", "kohya/requirements_linux.txt"],
        "",
    ));

    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    let venv = sb.path("venv");
    let installed = venv_packages(&venv);
    assert_eq!(installed["library"], "0.0.0", "{installed:?}");
    assert_eq!(installed["accelerate"], "0.33.0");
    assert_eq!(installed["torchlike"], "2.5.1");
    // The editable install points at the user's sd-scripts folder.
    let out = Command::new(venv_python(&venv))
        .args(["-c", "import library; print(library.__file__)"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with(&sb.path("kohya/sd-scripts").display().to_string()),
        "{out:?}"
    );
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    // The included file is part of the fingerprint.
    sb.write(
        "kohya/requirements.txt",
        "accelerate==0.33.0\nvisionlike\npy-cpuinfo==9.0.0\n-e ./sd-scripts\n",
    );
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    let included = sb.path("kohya/requirements.txt").display().to_string();
    assert!(
        plan.stdout
            .contains(&format!("{included} changed since last apply")),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(venv_packages(&venv)["py-cpuinfo"], "9.0.0");
    let again = sb.run(&["plan", "--detailed-exitcode"]);
    again.code(0);
    assert_no_secret(&sb, &[&apply, &plan, &again]);
}

#[test]
fn pip_kohya_editable_with_a_forbid_and_an_edited_include() {
    kohya_editable_and_an_edited_include("pip");
}

#[test]
fn uv_kohya_editable_with_a_forbid_and_an_edited_include() {
    kohya_editable_and_an_edited_include("uv");
}

/// `diffusers[torch]==0.32.2` under a diffusers pin keeps its extra; lines
/// that agree with a pin are not "overridden"; one that disagrees is,
/// with the user's file and line.
fn pins_keep_extras_and_report_only_real_overrides(installer: &str) {
    if !installer_available(installer) {
        return;
    }
    let index = kohya_index();
    let sb = Sandbox::new();
    sb.write(
        "requirements.txt",
        "diffusers[torch]==0.32.2\nopencv-python==4.10.0.84\nhuggingface_hub[hf_transfer]>=0.20\nhelper>=1.1\n",
    );
    sb.spec(&reqs_spec(
        &index,
        installer,
        &["requirements.txt"],
        r#"package diffusers "0.32.2"
    package opencv-python "4.10.0.84"
    package huggingface-hub "0.29.3"
    package helper "1.0""#,
    ));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    let installed = venv_packages(&sb.path("venv"));
    assert_eq!(
        installed["accelerate"], "0.33.0",
        "the torch extra: {installed:?}"
    );
    assert_eq!(installed["hf-transfer"], "0.1.8", "the hf_transfer extra");
    assert_eq!(installed["helper"], "1.0");
    let file = sb.path("requirements.txt").display().to_string();
    let overrides: Vec<&str> = apply
        .stdout
        .lines()
        .filter(|l| l.contains("holds over"))
        .collect();
    assert_eq!(
        overrides,
        [
            format!("venv.app: pin helper==1.0 holds over `helper>=1.1` in {file} (line 4)")
                .as_str()
        ],
        "{}",
        apply.stdout
    );
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn pip_pins_keep_extras_and_report_only_real_overrides() {
    pins_keep_extras_and_report_only_real_overrides("pip");
}

#[test]
fn uv_pins_keep_extras_and_report_only_real_overrides() {
    pins_keep_extras_and_report_only_real_overrides("uv");
}

/// A dependency against a pin reads in the spec's terms, about the
/// user's file and line; a pin the index lacks says what it has.
fn failures_in_the_specs_terms(installer: &str) {
    if !installer_available(installer) {
        return;
    }
    let index = kohya_index();
    let sb = Sandbox::new();
    sb.write("requirements.txt", "helper\nneeds-alpha\n");
    sb.spec(&reqs_spec(
        &index,
        installer,
        &["requirements.txt"],
        r#"package alpha "1.0""#,
    ));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let out = all_output(&apply);
    let file = sb.path("requirements.txt").display().to_string();
    let version = if installer == "pip" {
        "1.0"
    } else {
        "(every version)"
    };
    assert!(
        out.contains(&format!(
            "needs-alpha {version} (asked for by `needs-alpha` in {file} (line 2)) needs alpha>=2, against the pin alpha==1.0"
        )),
        "{out}"
    );
    assert!(
        !out.contains("/requirements-1.txt"),
        "no temporary copy: {out}"
    );
    if installer == "pip" {
        assert!(out.contains("The conflict is caused by"), "{out}");
    }

    sb.write("requirements.txt", "helper\n");
    sb.spec(&reqs_spec(
        &index,
        installer,
        &["requirements.txt"],
        r#"package six "99.0.0""#,
    ));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let out = all_output(&apply);
    assert!(
        out.contains(&format!(
            "no version 99.0.0 of six on http://***@127.0.0.1:{}/simple (available: 1.16.0, 1.17.0)",
            index.port
        )),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
}

#[test]
fn pip_failures_in_the_specs_terms() {
    failures_in_the_specs_terms("pip");
}

#[test]
fn uv_failures_in_the_specs_terms() {
    failures_in_the_specs_terms("uv");
}
