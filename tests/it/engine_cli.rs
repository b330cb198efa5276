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

#[test]
fn apply_prune_shows_the_deletes_it_will_do() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    sb.run(&["apply", "--yes"]).code(0);
    let without_notes = spec_text().replace(
        "file notes {\n    path \"out/notes.txt\"\n    mode \"0600\"\n    content \"hello\\n\"\n}\n",
        "",
    );
    sb.spec(&without_notes);
    let notes = sb.path("out/notes.txt").display().to_string();

    // What `apply --prune` shows before it asks is what it then does.
    let plan = sb.run(&["plan", "--prune"]);
    plan.code(0);
    for expected in [
        "  - delete (its files are deleted and it is removed from state)",
        "# file.notes will be deleted (no longer in the spec; plasma created it and --prune deletes it)",
        &format!("      - path: {notes}"),
        "Plan: 0 to create, 0 to change, 0 to replace, 1 to delete.",
    ] {
        assert!(
            plan.stdout.contains(expected),
            "{expected}\n{}",
            plan.stdout
        );
    }
    assert!(!plan.stdout.contains("forget"), "{}", plan.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&sb.run(&["plan", "--prune", "--json"]).stdout).unwrap();
    let change = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "file.notes")
        .unwrap();
    assert_eq!(change["action"], "delete");
    assert_eq!(change["attributes"][0]["name"], "path");
    assert_eq!(change["attributes"][0]["old"], notes.as_str());
    assert_eq!(json["summary"]["delete"], 1);

    // Without --prune the plan forgets and keeps the file.
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("# file.notes will be forgotten"),
        "{}",
        plan.stdout
    );

    let apply = sb.run(&["apply", "--yes", "--prune"]);
    apply.code(0);
    assert!(
        apply.stdout.contains("# file.notes will be deleted"),
        "{}",
        apply.stdout
    );
    assert!(
        apply.stdout.contains("file.notes: Deleted"),
        "{}",
        apply.stdout
    );
    assert!(!sb.path("out/notes.txt").exists());
}

#[test]
fn a_saved_prune_plan_deletes_and_apply_prune_of_a_saved_plan_is_refused() {
    let sb = Sandbox::new();
    sb.spec("file a {\n    path \"a.txt\"\n    content \"a\"\n}\n");
    sb.run(&["apply", "--yes"]).code(0);
    sb.spec("");
    sb.run(&["plan", "--out", "keep.plan"]).code(0);
    let refused = sb.run(&["apply", "keep.plan", "--prune"]);
    refused.code(1);
    assert!(
        refused
            .stderr
            .contains("make it with `plasma plan --prune --out keep.plan`"),
        "{}",
        refused.stderr
    );
    sb.run(&["plan", "--prune", "--out", "prune.plan"]).code(0);
    sb.run(&["apply", "prune.plan"]).code(0);
    assert!(!sb.path("a.txt").exists());
}

#[test]
fn plans_list_resources_in_the_spec_order() {
    let sb = Sandbox::new();
    // The first resource depends on the last: the plan still follows the spec.
    sb.spec(
        "link z {\n    path \"z\"\n    target \"m.txt\"\n    depends-on file.m\n}\n\
         file b {\n    path \"b.txt\"\n    content \"b\"\n}\n\
         file m {\n    path \"m.txt\"\n    content \"m\"\n}\n",
    );
    let plan = sb.run(&["plan"]);
    let at = |what: &str| {
        plan.stdout
            .find(what)
            .unwrap_or_else(|| panic!("{what} missing:\n{}", plan.stdout))
    };
    assert!(at("# link.z") < at("# file.b"), "{}", plan.stdout);
    assert!(at("# file.b") < at("# file.m"), "{}", plan.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&sb.run(&["plan", "--json"]).stdout).unwrap();
    let order: Vec<&str> = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["link.z", "file.b", "file.m"]);
}

#[test]
fn a_bare_number_mode_is_a_spec_error_with_the_fix() {
    let sb = Sandbox::new();
    sb.spec("file x {\n    path \"x.txt\"\n    mode 644\n    content \"x\"\n}\n");
    let run = sb.run(&["validate"]);
    run.code(1);
    for expected in [
        "`mode 644` is a decimal number, not an octal file mode",
        "decimal 644 would be mode 1204",
        "write `mode \"0644\"` or `mode 0o644`",
        "mode 644",
    ] {
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.stderr);
    }
    let plan = sb.run(&["plan"]);
    plan.code(1);
    assert!(!sb.path("x.txt").exists());
    for good in ["\"0644\"", "0o644", "\"644\"", "\"0o644\""] {
        sb.spec(&format!(
            "file x {{\n    path \"x.txt\"\n    mode {good}\n    content \"x\"\n}}\n"
        ));
        sb.run(&["apply", "--yes"]).code(0);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(sb.path("x.txt")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o7777, 0o644, "mode {good}");
    }
    for bad in ["\"0944\"", "\"rw-r--r--\"", "\"\"", "0x1a4"] {
        sb.spec(&format!(
            "file x {{\n    path \"x.txt\"\n    mode {bad}\n    content \"x\"\n}}\n"
        ));
        let run = sb.run(&["validate"]);
        run.code(1);
        assert!(
            run.stderr.contains("spec::malformed-mode"),
            "{bad}: {}",
            run.stderr
        );
    }
}

#[test]
fn fmt_and_pin_keep_the_mode_and_write_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let real = sb.write(
        "dotfiles/plasma.kdl",
        "model m {\n  url \"http://127.0.0.1:9/m.safetensors\"\n      path \"m.safetensors\"\n}\n",
    );
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&real, sb.path("plasma.kdl")).unwrap();
    let check = |what: &str| {
        let link = std::fs::symlink_metadata(sb.path("plasma.kdl")).unwrap();
        assert!(link.file_type().is_symlink(), "{what} replaced the symlink");
        let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{what} changed the spec's mode");
    };
    sb.run(&["fmt"]).code(0);
    check("fmt");
    assert!(
        sb.read("dotfiles/plasma.kdl")
            .contains("\n    path \"m.safetensors\"\n")
    );

    // pin writes the digest recorded at download (here: a recorded state).
    let digest = "ab".repeat(32);
    let state = serde_json::json!({
        "format_version": 1, "serial": 1, "lineage": "l", "plasma_version": "0",
        "resources": {"model.m": {
            "kind": "model", "desired_digest": "d",
            "desired": {"path": sb.path("m.safetensors")},
            "outputs": {"sha256": digest}, "applied_at": 0
        }}
    });
    sb.write(".plasma/state.json", &state.to_string());
    let run = sb.run(&["pin"]);
    run.code(0);
    check("pin");
    assert!(
        sb.read("dotfiles/plasma.kdl")
            .contains(&format!("sha256 \"{digest}\""))
    );
}

#[test]
fn drift_quiet_prints_nothing_when_converged() {
    let sb = Sandbox::new();
    sb.spec(&spec_text());
    sb.run(&["apply", "--yes"]).code(0);
    let quiet = sb.run(&["drift", "--quiet"]);
    quiet.code(0);
    assert_eq!(quiet.stdout, "");
    assert_eq!(quiet.stderr, "");
    sb.write("out/notes.txt", "changed\n");
    let drifted = sb.run(&["drift", "--quiet"]);
    drifted.code(2);
    assert!(
        drifted.stdout.contains("file.notes: drifted"),
        "{}",
        drifted.stdout
    );
}

#[test]
fn non_finite_numbers_are_yaml_specials_and_a_json_error() {
    let sb = Sandbox::new();
    sb.spec("file y {\n    path \"y.yaml\"\n    yaml {\n        a #inf\n        b #-inf\n        c #nan\n        d 1.0e300\n    }\n}\n");
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(
        sb.read("y.yaml"),
        "a: .inf\nb: -.inf\nc: .nan\nd: 1.0e+300\n"
    );
    sb.spec("file j {\n    path \"j.json\"\n    json {\n        a 1.5\n        b #inf\n    }\n}\n");
    let run = sb.run(&["validate"]);
    run.code(1);
    for expected in [
        "JSON has no infinity or NaN",
        "this number cannot be written as JSON",
        "b #inf",
    ] {
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.stderr);
    }
}

/// A string as a KDL string literal that plasma reads back as exactly that
/// string: every character but letters and digits escaped, and in values
/// braces doubled (plasma's `{var}` interpolation; keys are not interpolated).
fn kdl_string(s: &str) -> String {
    kdl_literal(&s.replace('{', "{{").replace('}', "}}"))
}

fn kdl_literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out.push('"');
    out
}

#[test]
fn yaml_reads_back_identically_in_pyyaml_for_a_broad_corpus() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import yaml"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("PyYAML is not installed; skipping");
        return;
    }
    let mut strings: Vec<String> = [
        "",
        " ",
        "  ",
        " lead",
        "trail ",
        "=",
        "<<",
        "~",
        "-",
        "--",
        "---",
        "...",
        "?",
        ":",
        "- x",
        "? x",
        "a: b",
        "a:b",
        "a #b",
        "#c",
        "[x]",
        "{x}",
        "{",
        "}",
        "&a",
        "*a",
        "!tag",
        "!!str",
        "|",
        ">",
        "%",
        "@",
        "`",
        "'",
        "\"",
        "it's",
        "\\",
        ",",
        "a,b",
        "null",
        "Null",
        "NULL",
        "nULL",
        "yes",
        "Yes",
        "YES",
        "yEs",
        "no",
        "No",
        "NO",
        "on",
        "On",
        "ON",
        "oN",
        "off",
        "Off",
        "OFF",
        "y",
        "Y",
        "n",
        "N",
        "true",
        "True",
        "TRUE",
        "tRUE",
        "false",
        "False",
        "FALSE",
        ".inf",
        ".Inf",
        ".INF",
        "-.inf",
        "+.inf",
        ".nan",
        ".NaN",
        ".NAN",
        "inf",
        "nan",
        "NaN",
        "Infinity",
        "0",
        "00",
        "007",
        "-0",
        "+12",
        "1_000",
        "1__0",
        "0o17",
        "0O17",
        "0x1F",
        "0X1f",
        "0b1010",
        "0B11",
        "017",
        "09",
        "1e3",
        "1E3",
        "1e+3",
        "1.0e+3",
        "6.8523015e+5",
        "685.230_15e+03",
        "685_230.15",
        "1.",
        ".5",
        "+.5",
        "-.5",
        "1.10",
        "1:30",
        "190:20:30",
        "-1:30",
        "1:30.5",
        "190:20:30.15",
        "60:00",
        "1:60",
        "2001-12-14t21:59:43.10-05:00",
        "2001-12-14 21:59:43.10 -5",
        "2001-12-15T02:59:43.1Z",
        "2002-12-14",
        "2002-1-4",
        "2001-12-14 21:59:43",
        "12:00",
        "LOCAL_MACHINE",
        "bf16",
        "MPS",
        "no_cpu",
        "hello world",
        "a  b",
        "/path/to/x",
        "C:\\x",
        "http://h:8080/x",
        "tab\there",
        "line\nbreak",
        "cr\rlf\r\n",
        "\u{0}",
        "\u{7}",
        "\u{1b}",
        "\u{7f}",
        "a\u{7f}b",
        "\u{80}",
        "\u{85}",
        "\u{9f}",
        "\u{a0}",
        "\u{ad}",
        "\u{2028}",
        "\u{2029}",
        "x\u{2028}y",
        "\u{feff}",
        "\u{feff}x",
        "\u{fffd}",
        "\u{e000}",
        "é",
        "日本語",
        "🙂",
        "e",
        "E",
        "x",
        "_",
        "_1",
        "/",
        "//",
        "a=b",
        "<<a",
        "a<<",
        "~x",
        "x~",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Every C0 control and every C1 control.
    strings.extend(
        (0u32..0x20)
            .chain(0x7f..0xa0)
            .map(|c| format!("c{}", char::from_u32(c).unwrap())),
    );
    strings.push("z".repeat(3000));
    let floats = [
        "0.1",
        "1.0",
        "-1.0",
        "0.0",
        "-0.0",
        "1.0e300",
        "-2.5e-7",
        "123456789.125",
        "4.9e-324",
        "1.7976931348623157e308",
        "1.0e16",
        "1.0e15",
        "0.0001",
        "0.00001",
    ];
    let ints = [
        "0",
        "-1",
        "42",
        "9223372036854775807",
        "-9223372036854775808",
    ];

    let mut body = String::new();
    let mut expected = Vec::new();
    for (i, s) in strings.iter().enumerate() {
        body.push_str(&format!("        s{i} {}\n", kdl_string(s)));
        expected.push(serde_json::json!([format!("s{i}"), "str", s]));
        // The same strings as keys.
        if !s.is_empty() && s != "-" && !s.chars().any(char::is_control) && s.len() < 100 {
            body.push_str(&format!(
                "        {} \"key\"\n",
                kdl_literal(&format!("k{i}{s}"))
            ));
            expected.push(serde_json::json!([format!("k{i}{s}"), "str", "key"]));
        }
    }
    for (i, f) in floats.iter().enumerate() {
        body.push_str(&format!("        f{i} {f}\n"));
        let bits = f.parse::<f64>().unwrap().to_bits();
        expected.push(serde_json::json!([
            format!("f{i}"),
            "float",
            format!("{bits:016x}")
        ]));
    }
    for (name, kdl, value) in [
        ("pinf", "#inf", f64::INFINITY),
        ("ninf", "#-inf", f64::NEG_INFINITY),
    ] {
        body.push_str(&format!("        {name} {kdl}\n"));
        expected.push(serde_json::json!([
            name,
            "float",
            format!("{:016x}", value.to_bits())
        ]));
    }
    body.push_str("        xnan #nan\n");
    expected.push(serde_json::json!(["xnan", "nan", null]));
    for (i, n) in ints.iter().enumerate() {
        body.push_str(&format!("        i{i} {n}\n"));
        expected.push(serde_json::json!([format!("i{i}"), "int", n]));
    }
    body.push_str("        t #true\n        u #false\n        v #null\n");
    expected.push(serde_json::json!(["t", "bool", true]));
    expected.push(serde_json::json!(["u", "bool", false]));
    expected.push(serde_json::json!(["v", "null", null]));

    let sb = Sandbox::new();
    sb.spec(&format!(
        "file corpus {{\n    path \"corpus.yaml\"\n    yaml {{\n{body}    }}\n}}\n"
    ));
    sb.run(&["apply", "--yes"]).code(0);
    sb.write(
        "expected.json",
        &serde_json::Value::Array(expected.clone()).to_string(),
    );
    // PyYAML loads the file; each value is compared by type and value
    // (floats bit for bit).
    let script = r#"
import json, math, struct, sys, yaml
data = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
expected = json.load(open(sys.argv[2], encoding="utf-8"))
problems = []
for key, kind, want in expected:
    if key not in data:
        problems.append(["missing", key])
        continue
    got = data.pop(key)
    if kind == "str":
        ok = type(got) is str and got == want
    elif kind == "int":
        ok = type(got) is int and got == int(want)
    elif kind == "float":
        ok = type(got) is float and struct.pack(">d", got).hex() == want
    elif kind == "nan":
        ok = type(got) is float and math.isnan(got)
    elif kind == "bool":
        ok = type(got) is bool and got == want
    else:
        ok = got is None
    if not ok:
        problems.append([key, kind, repr(want), repr(got)])
for key in data:
    problems.append(["unexpected key", repr(key)])
print(json.dumps(problems, ensure_ascii=True))
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            sb.path("corpus.yaml").to_str().unwrap(),
            sb.path("expected.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyYAML cannot read the file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        problems,
        serde_json::json!([]),
        "{} values compared",
        expected.len()
    );
    // And plasma sees its own file as converged.
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}
