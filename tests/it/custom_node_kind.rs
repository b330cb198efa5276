//! The `custom-node` kind end to end: a ComfyUI stand-in repository (a
//! git repository the test makes, not ComfyUI itself), a custom node
//! repository with a `requirements.txt` and an `install.py`, and a real venv
//! installing wheels the test builds from a simple index on 127.0.0.1.

use crate::support::gitfix;
use crate::support::pyfix;
use crate::support::sandbox;

use gitfix::{commit_file, git, init_repo};
use pyfix::{PyIndex, python_version, venv_packages};
use sandbox::Sandbox;

/// The install.py every fixture node carries: it notes each run in the venv
/// it ran under (`sys.prefix`), which proves it ran with the venv's Python.
const INSTALL_PY: &str =
    "import os, sys\nopen(os.path.join(sys.prefix, 'node-installed.txt'), 'a').write('ran\\n')\n";

/// A ComfyUI stand-in at tag v1 (ignoring custom_nodes/ and venv/ as
/// ComfyUI's own .gitignore does) and a node with requirements and an
/// install script at tags v1.0 and v1.1.
fn upstreams(sb: &Sandbox) {
    let comfy = sb.path("up/comfy");
    init_repo(&comfy);
    commit_file(&comfy, ".gitignore", "/custom_nodes/\n/venv/\n", "ignore");
    commit_file(&comfy, "main.py", "print('comfy')\n", "main");
    git(&comfy, &["tag", "v1"]);

    let node = sb.path("up/node");
    init_repo(&node);
    commit_file(&node, "__init__.py", "NODE_CLASS_MAPPINGS = {}\n", "node");
    commit_file(&node, "install.py", INSTALL_PY, "install script");
    // What custom nodes do: ask for a newer torch than the venv pins.
    commit_file(
        &node,
        "requirements.txt",
        "torchlike>=2.6\nhelper==1.0\n",
        "requirements",
    );
    git(&node, &["tag", "v1.0"]);
    commit_file(
        &node,
        "requirements.txt",
        "torchlike>=2.6\nhelper==1.1\n",
        "newer helper",
    );
    git(&node, &["tag", "v1.1"]);
}

fn spec(sb: &Sandbox, index: &PyIndex, node_rev: &str, extra: &str) -> String {
    format!(
        r#"
repo comfyui {{
    url "{comfy}"
    rev "v1"
    path "ComfyUI"
}}

venv comfyui {{
    path "ComfyUI/venv"
    python "{python}"
    package torchlike "2.5.1"
    forbid xformerslike
    index "{index}"
    installer "pip"
    depends-on repo.comfyui
}}

custom-node manager {{
    comfyui repo.comfyui
    venv venv.comfyui
    url "{node}"
    rev "{node_rev}"
    dir "ComfyUI-Manager"
    install-script #true
{extra}}}
"#,
        comfy = sb.path("up/comfy").display(),
        node = sb.path("up/node").display(),
        python = python_version(),
        index = index.url(),
    )
}

fn install_runs(sb: &Sandbox) -> usize {
    std::fs::read_to_string(sb.path("ComfyUI/venv/node-installed.txt"))
        .map_or(0, |t| t.lines().count())
}

#[test]
fn a_node_is_cloned_its_requirements_held_under_the_pins_and_its_script_run_once() {
    let index = PyIndex::standard();
    let sb = Sandbox::new();
    upstreams(&sb);
    sb.spec(&spec(&sb, &index, "v1.0", ""));

    let plan = sb.run(&["plan"]);
    plan.code(0);
    assert!(
        plan.stdout
            .contains("# custom-node.manager will be created"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("+ requirements: requirements.txt, if the node has one, into venv.comfyui under its pins"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("+ install.py: run with venv.comfyui's Python"),
        "{}",
        plan.stdout
    );

    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    assert!(
        sb.path("ComfyUI/custom_nodes/ComfyUI-Manager/__init__.py")
            .is_file()
    );
    assert!(
        apply
            .stdout
            .contains("custom-node.manager: pin torchlike==2.5.1 holds over `torchlike>=2.6`"),
        "{}",
        apply.stdout
    );
    let installed = venv_packages(&sb.path("ComfyUI/venv"));
    assert_eq!(installed["torchlike"], "2.5.1", "the pin holds");
    assert_eq!(installed["helper"], "1.0");
    assert_eq!(install_runs(&sb), 1);

    // ComfyUI imports the node, and Python leaves its byte-code caches in
    // the node's clone (this node has no .gitignore for them).
    let compiled = std::process::Command::new("python3")
        .args(["-m", "compileall", "-q"])
        .arg(sb.path("ComfyUI/custom_nodes/ComfyUI-Manager"))
        .status()
        .unwrap();
    assert!(compiled.success());
    assert!(
        sb.path("ComfyUI/custom_nodes/ComfyUI-Manager/__pycache__")
            .is_dir()
    );

    // Converged: the venv does not count the node's packages as outside
    // plasma, neither clone is dirty (byte-code caches are not local
    // changes), nothing runs again.
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
    sb.run(&["drift"]).code(0);
    let again = sb.run(&["apply", "--yes"]);
    again.code(0);
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(install_runs(&sb), 1);

    let show = sb.run(&["show", "custom-node.manager"]);
    assert!(
        show.stdout.contains("requirements_blake3: "),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains(&format!(
            "folder: {}",
            sb.path("ComfyUI/custom_nodes/ComfyUI-Manager").display()
        )),
        "{}",
        show.stdout
    );

    // A new release of the node: the rev moves, the requirements are
    // installed again under the pins, and the script runs again.
    sb.spec(&spec(&sb, &index, "v1.1", ""));
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(plan.stdout.contains("~ rev: v1.0 ("), "{}", plan.stdout);
    assert!(plan.stdout.contains("-> v1.1 ("), "{}", plan.stdout);
    sb.run(&["apply", "--yes"]).code(0);
    let installed = venv_packages(&sb.path("ComfyUI/venv"));
    assert_eq!(installed["helper"], "1.1");
    assert_eq!(installed["torchlike"], "2.5.1");
    assert_eq!(install_runs(&sb), 2);
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_node_requirement_pulling_a_forbidden_package_fails_and_runs_nothing() {
    let index = PyIndex::standard();
    let sb = Sandbox::new();
    upstreams(&sb);
    let node = sb.path("up/node");
    commit_file(&node, "requirements.txt", "fancy_node\n", "needs xformers");
    git(&node, &["tag", "v2.0"]);
    sb.spec(&spec(&sb, &index, "v2.0", ""));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let output = format!("{}{}", apply.stdout, apply.stderr);
    assert!(output.contains("xformerslike"), "{output}");
    assert!(output.contains("fancy-node"), "{output}");
    let installed = venv_packages(&sb.path("ComfyUI/venv"));
    assert!(!installed.contains_key("xformerslike"));
    assert!(!installed.contains_key("fancy-node"));
    assert_eq!(
        install_runs(&sb),
        0,
        "install.py does not run after a failed install"
    );
}

#[test]
fn custom_node_spec_errors_point_at_their_fields() {
    let sb = Sandbox::new();
    sb.spec(
        r#"
custom-node broken {
    comfyui venv.comfyui
    venv venv.nothing
    url "https://example.invalid/node.git"
    rev "v1"
    dir "../escape"
}
"#,
    );
    let run = sb.run(&["validate"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("`venv.comfyui` is not a reference to a repo"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("`../escape` is not a folder name"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("`custom-node.broken` refers to `venv.nothing`, which is not declared"),
        "{}",
        run.stderr
    );
}

#[test]
fn two_nodes_install_into_one_venv_in_parallel_and_converge() {
    let index = PyIndex::standard();
    let sb = Sandbox::new();
    upstreams(&sb);
    let other = sb.path("up/other");
    init_repo(&other);
    commit_file(&other, "requirements.txt", "visionlike\n", "requirements");
    git(&other, &["tag", "v0.1"]);
    let second = format!(
        "}}\n\ncustom-node other {{\n    comfyui repo.comfyui\n    venv venv.comfyui\n    url \"{}\"\n    rev \"v0.1\"\n",
        other.display()
    );
    sb.spec(&spec(&sb, &index, "v1.0", &second));
    sb.run(&["apply", "--yes", "--parallelism", "4"]).code(0);
    let installed = venv_packages(&sb.path("ComfyUI/venv"));
    assert_eq!(installed["helper"], "1.0");
    assert_eq!(installed["visionlike"], "0.20.1");
    assert_eq!(installed["torchlike"], "2.5.1");
    // Both nodes' packages are in the venv's record: nothing is drift.
    sb.run(&["drift"]).code(0);
}

// ------------------------------------------ every package accounted for

fn uv_missing(installer: &str) -> bool {
    let missing = installer == "uv"
        && plasma::python::Installer::detect(plasma::python::InstallerChoice::Uv).is_err();
    if missing {
        eprintln!("note: uv test skipped: uv is not on PATH (scripts/test.sh installs it)");
    }
    missing
}

fn accounting_index() -> PyIndex {
    let mut wheels = pyfix::standard_wheels();
    wheels.extend([
        pyfix::Wheel::new("numpy", "1.26.4"),
        pyfix::Wheel::new("numpy", "2.0.0"),
        pyfix::Wheel::new("mediapipe", "0.10.14").requires("numpy<2"),
    ]);
    PyIndex::serve(&wheels)
}

/// A node repository at tag v1 with these files.
fn node_repo(sb: &Sandbox, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let repo = sb.path(&format!("up/{name}"));
    init_repo(&repo);
    commit_file(&repo, "__init__.py", "NODE_CLASS_MAPPINGS = {}\n", "node");
    for (path, text) in files {
        commit_file(&repo, path, text, path);
    }
    git(&repo, &["tag", "v1"]);
    repo
}

/// ComfyUI stand-in, its venv on `installer`, and custom nodes
/// (name, repository, install-script).
fn nodes_spec(
    sb: &Sandbox,
    index: &PyIndex,
    installer: &str,
    nodes: &[(&str, &std::path::Path, bool)],
) -> String {
    let mut text = format!(
        r#"
repo comfyui {{
    url "{comfy}"
    rev "v1"
    path "ComfyUI"
}}

venv comfyui {{
    path "ComfyUI/venv"
    python "{python}"
    package torchlike "2.5.1"
    forbid xformerslike
    index "{index}"
    installer "{installer}"
    depends-on repo.comfyui
}}
"#,
        comfy = sb.path("up/comfy").display(),
        python = python_version(),
        index = index.url(),
    );
    for (name, repo, script) in nodes {
        text.push_str(&format!(
            "\ncustom-node {name} {{\n    comfyui repo.comfyui\n    venv venv.comfyui\n    url \"{}\"\n    rev \"v1\"\n    install-script #{script}\n}}\n",
            repo.display()
        ));
    }
    text
}

/// `install.py` pip-installs a package (as ComfyUI-Impact-Pack's does):
/// the venv has pip even when uv made it, and the package is the node's,
/// not drift, and is not removed by the next apply.
fn an_install_script_that_pip_installs_is_accounted_for(installer: &str) {
    if uv_missing(installer) {
        return;
    }
    let index = accounting_index();
    let sb = Sandbox::new();
    upstreams(&sb);
    let script = format!(
        "import subprocess, sys\nsubprocess.check_call([sys.executable, '-m', 'pip', 'install', '--disable-pip-version-check', '--index-url', '{}', 'visionlike==0.20.1'])\n",
        index.url()
    );
    let impact = node_repo(&sb, "impact", &[("install.py", &script)]);
    sb.spec(&nodes_spec(
        &sb,
        &index,
        installer,
        &[("impact", &impact, true)],
    ));

    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    let venv = sb.path("ComfyUI/venv");
    assert_eq!(venv_packages(&venv)["visionlike"], "0.20.1");
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.stdout);
    sb.run(&["drift"]).code(0);
    let again = sb.run(&["apply", "--yes"]);
    again.code(0);
    assert_eq!(venv_packages(&venv)["visionlike"], "0.20.1", "not removed");
    let record = std::fs::read_to_string(venv.join(".plasma-record.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(
        record["contributions"]["custom-node.impact"]["script_installed"]["visionlike"], "0.20.1",
        "{record}"
    );
    let recorded = record["installer"]["name"].as_str().unwrap();
    assert_eq!(recorded, installer, "{record}");
}

#[test]
fn pip_an_install_script_that_pip_installs_is_accounted_for() {
    an_install_script_that_pip_installs_is_accounted_for("pip");
}

#[test]
fn uv_an_install_script_that_pip_installs_is_accounted_for() {
    an_install_script_that_pip_installs_is_accounted_for("uv");
}

/// A venv deleted by hand: plan shows both nodes' requirements pending,
/// and apply puts every package back.
fn a_venv_deleted_by_hand_gets_every_nodes_packages_back(installer: &str) {
    if uv_missing(installer) {
        return;
    }
    let index = accounting_index();
    let sb = Sandbox::new();
    upstreams(&sb);
    let a = node_repo(&sb, "a", &[("requirements.txt", "helper==1.0\n")]);
    let b = node_repo(&sb, "b", &[("requirements.txt", "visionlike\n")]);
    sb.spec(&nodes_spec(
        &sb,
        &index,
        installer,
        &[("a", &a, false), ("b", &b, false)],
    ));
    sb.run(&["apply", "--yes"]).code(0);
    let venv = sb.path("ComfyUI/venv");
    std::fs::remove_dir_all(&venv).unwrap();

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    for node in ["a", "b"] {
        assert!(
            plan.stdout
                .contains(&format!("# custom-node.{node} will be updated")),
            "{}",
            plan.stdout
        );
    }
    assert!(
        plan.stdout
            .contains("requirements.txt not installed (the venv is created first)"),
        "{}",
        plan.stdout
    );
    sb.run(&["drift"]).code(2);
    sb.run(&["apply", "--yes"]).code(0);
    let installed = venv_packages(&venv);
    assert_eq!(installed["helper"], "1.0");
    assert_eq!(installed["visionlike"], "0.20.1");
    assert_eq!(installed["torchlike"], "2.5.1");
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn pip_a_venv_deleted_by_hand_gets_every_nodes_packages_back() {
    a_venv_deleted_by_hand_gets_every_nodes_packages_back("pip");
}

#[test]
fn uv_a_venv_deleted_by_hand_gets_every_nodes_packages_back() {
    a_venv_deleted_by_hand_gets_every_nodes_packages_back("uv");
}

/// Two nodes that need incompatible numpy ranges: the apply fails naming
/// the packages and the nodes, and plan and drift keep saying so.
fn conflicting_nodes_are_an_error_naming_who_asked(installer: &str) {
    if uv_missing(installer) {
        return;
    }
    let index = accounting_index();
    let sb = Sandbox::new();
    upstreams(&sb);
    let a = node_repo(&sb, "a", &[("requirements.txt", "numpy>=2\n")]);
    let b = node_repo(&sb, "b", &[("requirements.txt", "mediapipe\n")]);
    sb.spec(&nodes_spec(
        &sb,
        &index,
        installer,
        &[("a", &a, false), ("b", &b, false)],
    ));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let out = format!("{}\n{}", apply.stdout, apply.stderr);
    assert!(out.contains("is broken after the install"), "{out}");
    assert!(out.contains("numpy"), "{out}");
    assert!(out.contains("custom-node.a"), "{out}");

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("the venv is broken"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("broken: "), "{}", plan.stdout);
    let drift = sb.run(&["drift"]);
    drift.code(2);
}

#[test]
fn pip_conflicting_nodes_are_an_error_naming_who_asked() {
    conflicting_nodes_are_an_error_naming_who_asked("pip");
}

#[test]
fn uv_conflicting_nodes_are_an_error_naming_who_asked() {
    conflicting_nodes_are_an_error_naming_who_asked("uv");
}
