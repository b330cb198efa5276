//! End to end: the built binary on temp folders, with `file` and `link`.

use crate::support::sandbox;

use sandbox::Sandbox;

const SPEC: &str = r#"
vars {
    out "out"
    conf "{out}/conf"
}

file accelerate {
    path "{conf}/default_config.yaml"
    yaml {
        compute_environment LOCAL_MACHINE
        distributed_type "NO"
        mixed_precision "no"
        use_cpu #false
        (list)tpu_env
    }
}

file notes {
    path "out/notes.txt"
    mode "0600"
    content "hello\n"
}

link current {
    path "out/current.yaml"
    target "{conf}/default_config.yaml"
    depends-on file.accelerate
}
"#;

fn spec_text() -> String {
    SPEC.to_string()
}

#[test]
fn plan_apply_converge_drift_and_restore() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(plan.stdout.contains("+ create"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("# file.accelerate will be created"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("+mixed_precision: 'no'"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Plan: 3 to create, 0 to change, 0 to replace."),
        "{}",
        plan.stdout
    );
    assert!(!sb.path("out").exists(), "plan must not touch the machine");

    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(
        sb.read("out/conf/default_config.yaml"),
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: 'no'\nuse_cpu: false\ntpu_env: []\n"
    );
    assert_eq!(sb.read("out/notes.txt"), "hello\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sb.path("out/notes.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_link(sb.path("out/current.yaml")).unwrap(),
        sb.path("out/conf/default_config.yaml")
    );

    let again = sb.run(&["plan", "--detailed-exitcode"]);
    again.code(0);
    assert!(
        again
            .stdout
            .contains("No changes. The machine matches plasma.kdl.")
    );
    sb.run(&["drift"]).code(0);

    // A hand edit is drift, shown as a diff, and apply puts it back.
    sb.write(
        "out/conf/default_config.yaml",
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: fp16\nuse_cpu: false\ntpu_env: []\n",
    );
    let drift = sb.run(&["drift"]);
    drift.code(2);
    assert_eq!(
        drift.stdout.trim(),
        "file.accelerate: drifted (changed outside plasma since the last apply): content differs"
    );
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(plan.stdout.contains("~ update in place"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("-mixed_precision: fp16"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("+mixed_precision: 'no'"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Plan: 0 to create, 1 to change, 0 to replace.")
    );

    sb.run(&["apply", "--yes"]).code(0);
    sb.run(&["drift"]).code(0);
    assert!(
        sb.read("out/conf/default_config.yaml")
            .contains("mixed_precision: 'no'")
    );
}

#[test]
fn a_second_apply_changes_nothing() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    sb.run(&["apply", "--yes"]).code(0);
    let serial = sb.state()["serial"].as_u64().unwrap();
    let mtime = std::fs::metadata(sb.path("out/notes.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let second = sb.run(&["apply", "--yes"]);
    second.code(0);
    assert!(second.stdout.contains("No changes."));
    assert_eq!(
        sb.state()["serial"].as_u64().unwrap(),
        serial,
        "state is not rewritten"
    );
    assert_eq!(
        std::fs::metadata(sb.path("out/notes.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
}

#[test]
fn mode_change_is_an_update_of_that_attribute() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    sb.run(&["apply", "--yes"]).code(0);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        sb.path("out/notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("~ mode: 0644 -> 0600"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("(mode differs)"), "{}", plan.stdout);
}

#[test]
fn apply_off_a_terminal_needs_yes() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    let run = sb.run(&["apply"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("apply needs --yes when it is not run from a terminal"),
        "{}",
        run.stderr
    );
    assert!(!sb.path("out").exists());
}

#[test]
fn a_failure_skips_dependents_and_independent_branches_finish() {
    let sb = Sandbox::new();
    // `blocker` is a regular file, so nothing can be created beneath it.
    sb.write("blocker", "not a folder");
    sb.spec(
        r#"
file broken {
    path "blocker/inside.txt"
    content "x"
}
link after-broken {
    path "after.txt"
    target "blocker/inside.txt"
    depends-on file.broken
}
file independent {
    path "independent.txt"
    content "fine"
}
"#,
    );
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    assert!(
        run.stdout.contains("file.broken: failed: cannot write"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("link.after-broken: skipped (file.broken failed)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("1 applied, 1 failed, 1 skipped."),
        "{}",
        run.stdout
    );
    assert_eq!(sb.read("independent.txt"), "fine");
    assert!(!sb.path("after.txt").exists());
    let state = sb.state();
    assert!(state["resources"]["file.independent"].is_object());
    assert!(state["resources"]["file.broken"].is_null());
}

#[test]
fn target_applies_only_the_target_and_its_dependencies() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    sb.run(&["apply", "--yes", "--target", "link.current"])
        .code(0);
    assert!(sb.path("out/current.yaml").exists());
    assert!(sb.path("out/conf/default_config.yaml").exists());
    assert!(!sb.path("out/notes.txt").exists());
    let wrong = sb.run(&["apply", "--yes", "--target", "link.curent"]);
    wrong.code(1);
    assert!(
        wrong
            .stderr
            .contains("no resource `link.curent` in the spec (did you mean `link.current`?)"),
        "{}",
        wrong.stderr
    );
}

#[test]
fn removed_resources_are_forgotten_and_pruned_only_when_asked() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    sb.run(&["apply", "--yes"]).code(0);
    let without_notes = spec_text().replace(
        "file notes {\n    path \"out/notes.txt\"\n    mode \"0600\"\n    content \"hello\\n\"\n}\n",
        "",
    );
    assert_ne!(without_notes, spec_text());
    sb.spec(&without_notes);
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout
            .contains("# file.notes will be forgotten (no longer in the spec)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Plan: 0 to create, 0 to change, 0 to replace, 1 to forget.")
    );
    assert!(
        sb.run(&["drift"])
            .stdout
            .contains("file.notes: removed from the spec")
    );

    // Without --prune the file stays.
    sb.run(&["apply", "--yes"]).code(0);
    assert!(sb.path("out/notes.txt").exists());
    assert!(sb.state()["resources"]["file.notes"].is_null());

    // A file already there that matches is adopted into state, not created.
    sb.spec(&spec_text());
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(sb.state()["resources"]["file.notes"]["created"], false);

    // With --prune, a forgotten file plasma created is deleted.
    std::fs::remove_file(sb.path("out/notes.txt")).unwrap();
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(sb.state()["resources"]["file.notes"]["created"], true);
    sb.spec(&without_notes);
    sb.run(&["apply", "--yes", "--prune"]).code(0);
    assert!(!sb.path("out/notes.txt").exists());
}

#[test]
fn a_file_plasma_did_not_create_is_never_pruned() {
    let sb = Sandbox::new();
    sb.write("mine.txt", "old");
    sb.spec("file mine {\n    path \"mine.txt\"\n    content \"new\"\n}\n");
    sb.run(&["apply", "--yes"]).code(0);
    sb.spec("");
    sb.run(&["apply", "--yes", "--prune"]).code(0);
    assert_eq!(sb.read("mine.txt"), "new");
}

#[test]
fn the_spec_is_found_upward_and_f_overrides() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    std::fs::create_dir_all(sb.path("a/b")).unwrap();
    let out = sb
        .command(&["validate"])
        .current_dir(sb.path("a/b"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "The spec is valid: 3 resources.\n"
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let out = sb
        .command(&["plan"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plasma.kdl in"));

    let other = sb.write(
        "other/spec.kdl",
        "file x {\n    path \"x.txt\"\n    content \"x\"\n}\n",
    );
    let run = sb.run(&["plan", "-f", other.to_str().unwrap()]);
    run.code(0);
    // Relative paths resolve against the spec's folder, not the current one.
    assert!(
        run.stdout
            .contains(&format!("+ path: {}", sb.path("other/x.txt").display())),
        "{}",
        run.stdout
    );
}

#[test]
fn state_can_live_elsewhere() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    sb.run(&["apply", "--yes", "--state", "custom/state.json"])
        .code(0);
    assert!(sb.path("custom/state.json").exists());
    assert!(!sb.path(".plasma/state.json").exists());
    sb.run(&[
        "plan",
        "--detailed-exitcode",
        "--state",
        "custom/state.json",
    ])
    .code(0);
}

#[test]
fn show_graph_and_state_commands() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    let never = sb.run(&["show", "file.notes"]);
    never.code(0);
    assert!(never.stdout.contains("found: absent"), "{}", never.stdout);
    assert!(never.stdout.contains("never applied"));

    sb.run(&["apply", "--yes"]).code(0);
    let show = sb.run(&["show", "file.notes"]);
    show.code(0);
    assert!(show.stdout.contains("# file.notes"));
    assert!(show.stdout.contains("mode: 0600"), "{}", show.stdout);
    assert!(show.stdout.contains("last applied: "), "{}", show.stdout);
    let missing = sb.run(&["show", "file.note"]);
    missing.code(1);
    assert!(
        missing.stderr.contains("did you mean `file.notes`?"),
        "{}",
        missing.stderr
    );

    let graph = sb.run(&["graph"]);
    graph.code(0);
    assert!(graph.stdout.starts_with("digraph plasma {"));
    assert!(
        graph
            .stdout
            .contains("\"file.accelerate\" -> \"link.current\";"),
        "{}",
        graph.stdout
    );

    let list = sb.run(&["state", "list"]);
    assert_eq!(list.stdout.lines().count(), 3, "{}", list.stdout);
    let entry = sb.run(&["state", "show", "link.current"]);
    let entry: serde_json::Value = serde_json::from_str(&entry.stdout).unwrap();
    assert_eq!(entry["kind"], "link");
    sb.run(&["state", "rm", "link.current"]).code(0);
    assert!(sb.state()["resources"]["link.current"].is_null());
    assert!(sb.path("out/current.yaml").exists(), "state rm keeps files");
    sb.run(&["state", "rm", "link.current"]).code(1);
    assert!(sb.path(".plasma/state.json.backup").exists());
}

#[test]
fn init_writes_a_starter_that_validates_and_is_formatted() {
    let sb = Sandbox::new();
    sb.run(&["init"]).code(0);
    assert!(sb.read("plasma.kdl").contains("file accelerate"));
    sb.run(&["validate"]).code(0);
    sb.run(&["fmt", "--check"]).code(0);
    let again = sb.run(&["init"]);
    again.code(1);
    assert!(
        again
            .stderr
            .contains("plasma.kdl already exists (use --force to overwrite it)")
    );
}

#[test]
fn fmt_reindents_and_check_reports() {
    let sb = Sandbox::new();
    sb.spec("file x {\n  path \"x.txt\"   // where\n\n\n        content \"x\"\n}\n");
    let check = sb.run(&["fmt", "--check"]);
    check.code(1);
    assert!(check.stdout.contains("is not formatted"));
    sb.run(&["fmt"]).code(0);
    assert_eq!(
        sb.read("plasma.kdl"),
        "file x {\n    path \"x.txt\"   // where\n\n    content \"x\"\n}\n"
    );
    sb.run(&["fmt", "--check"]).code(0);
}

#[test]
fn a_directory_where_a_file_belongs_is_a_plan_error() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("taken")).unwrap();
    sb.spec("file x {\n    path \"taken\"\n    content \"x\"\n}\n");
    let plan = sb.run(&["plan"]);
    plan.code(1);
    assert!(
        plan.stdout
            .contains("is a directory; plasma will not replace a directory with a file"),
        "{}",
        plan.stdout
    );
    let link_spec = "link l {\n    path \"taken\"\n    target \"elsewhere\"\n}\n";
    sb.spec(link_spec);
    let plan = sb.run(&["plan"]);
    plan.code(1);
    assert!(
        plan.stdout
            .contains("is a directory, not a symlink; plasma will not replace it"),
        "{}",
        plan.stdout
    );
}

#[test]
fn a_link_pointing_elsewhere_is_updated() {
    let sb = Sandbox::new();
    sb.write("a", "a");
    sb.write("b", "b");
    std::os::unix::fs::symlink(sb.path("a"), sb.path("l")).unwrap();
    sb.spec("link l {\n    path \"l\"\n    target \"b\"\n}\n");
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains(&format!(
            "~ target: {} -> {}",
            sb.path("a").display(),
            sb.path("b").display()
        )),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(std::fs::read_link(sb.path("l")).unwrap(), sb.path("b"));
}

#[test]
fn pyyaml_reads_the_accelerate_config_as_written() {
    // accelerate reads its config with PyYAML (YAML 1.1). Skip only where
    // PyYAML is missing; CI installs it.
    let probe = std::process::Command::new("python3")
        .args(["-c", "import yaml"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("PyYAML is not installed; skipping");
        return;
    }
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    sb.run(&["apply", "--yes"]).code(0);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1])), sort_keys=True))",
            sb.path("out/conf/default_config.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"compute_environment": "LOCAL_MACHINE", "distributed_type": "NO", "mixed_precision": "no", "tpu_env": [], "use_cpu": false}"#
    );
}

#[test]
fn the_root_spec_and_every_example_validate_are_formatted_and_plan() {
    let sb = Sandbox::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let mut specs = vec![format!("{root}/plasma.kdl")];
    for entry in std::fs::read_dir(format!("{root}/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "kdl") {
            specs.push(path.display().to_string());
        }
    }
    assert!(specs.len() >= 5, "{specs:?}");
    for spec in &specs {
        // Each spec is checked on the machine it declares: its `platform`
        // line's properties, faked as this machine's facts.
        let text = std::fs::read_to_string(spec).unwrap();
        let facts = text
            .lines()
            .find_map(|l| l.strip_prefix("platform "))
            .unwrap_or("")
            .to_string();
        let run = |args: &[&str]| {
            let mut cmd = sb.command(args);
            cmd.env("PLASMA_PLATFORM", &facts);
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!stderr.contains("platform-mismatch"), "{spec}: {stderr}");
            assert!(!stderr.contains("requirement-unmet"), "{spec}: {stderr}");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr,
            )
        };
        let (code, _, stderr) = run(&["validate", "-f", spec]);
        assert_eq!(code, Some(0), "{spec}: {stderr}");
        let (code, _, stderr) = run(&["fmt", "--check", "-f", spec]);
        assert_eq!(code, Some(0), "{spec}: {stderr}");
        // A plan only reads the machine (here an empty HOME): no network, no
        // installer; everything is to be created.
        let (code, stdout, stderr) = run(&["plan", "-f", spec, "--state", "state.json"]);
        assert_eq!(code, Some(0), "{spec}: {stderr}");
        assert!(stdout.contains("to create"), "{spec}: {stdout}");
    }
    assert!(!sb.path("home/tools").exists(), "plan created nothing");
}
