//! Spec errors: every problem of a file in one run, each a miette
//! diagnostic labelled at the right place (snapshots of the rendered output).

use crate::support::sandbox;

use sandbox::Sandbox;

/// Validates `spec` on a machine faked as the one the lint tests declare
/// (Linux with an MPS accelerator), so the output is the same everywhere.
fn validate(spec: &str) -> sandbox::Run {
    let sb = Sandbox::new();
    sb.spec(spec);
    let run = sb.run_on("os=linux accelerator=mps", &["validate"]);
    run.code(1);
    assert!(run.stdout.is_empty(), "nothing on stdout: {}", run.stdout);
    run
}

#[test]
fn five_mistakes_give_five_diagnostics_in_one_run() {
    let run = validate(
        r#"vars {
    tools "~/tools"
}

file accelerate {
    pth "{tools}/default_config.yaml"
    content "x"
}

file accelerate {
    path "{tool}/other.yaml"
    content "y"
}

link models {
    path "{tools}/models"
    depends-on file.acelerate
}
"#,
    );
    // A typo, an unknown variable, a repeated address, a missing field and
    // an unknown reference.
    assert_eq!(run.stderr.matches("\n  × ").count(), 5, "{}", run.stderr);
    assert!(
        run.stderr
            .ends_with("Error: the spec has 5 problems (nothing was changed)\n")
    );
    insta::assert_snapshot!(run.stderr);
}

#[test]
fn unknown_kinds_properties_and_values_are_named() {
    let run = validate(
        r#"platform os=macos acelerator=mps
fiel notes {
    path "/tmp/notes"
}
file notes {
    path "/tmp/notes" extra=1
    mode "rw-r--r--"
    content #true
    allow fp16-on-mpss
}
file
"#,
    );
    insta::assert_snapshot!(run.stderr);
}

#[test]
fn kdl_syntax_errors_are_reported_together() {
    let run = validate("file a {\n    path \"/tmp/a\n}\nfile b { path 1.; }\n");
    assert!(run.stderr.contains("spec::syntax"), "{}", run.stderr);
    insta::assert_snapshot!(run.stderr);
}

#[test]
fn a_cycle_is_one_diagnostic_naming_every_member() {
    let run = validate(
        r#"link a {
    path "/tmp/a"
    target "/tmp/b"
    depends-on link.c
}
link b {
    path "/tmp/b"
    target "/tmp/c"
    depends-on link.a
}
link c {
    path "/tmp/c"
    target "/tmp/a"
    depends-on link.b
}
link outside {
    path "/tmp/d"
    target "/tmp/a"
    depends-on link.a
}
"#,
    );
    assert_eq!(
        run.stderr.matches("graph::cycle").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("dependency cycle between link.a, link.b, link.c\n"),
        "{}",
        run.stderr
    );
    insta::assert_snapshot!(run.stderr);
}

#[test]
fn domain_lints_point_at_the_setting_and_can_be_allowed() {
    let spec = r#"platform os=linux accelerator=mps
file accelerate {
    path "/tmp/plasma-lint-test.yaml"
    yaml {
        mixed_precision fp16
        use_cpu #true
    }
}
file copy {
    path "/tmp/plasma-lint-test.yaml"
    content "x"
}
"#;
    let run = validate(spec);
    insta::assert_snapshot!(run.stderr);

    // `allow` silences exactly the named lints.
    let sb = Sandbox::new();
    sb.spec(&spec.replace(
        "    yaml {",
        "    allow fp16-on-mps cpu-with-accelerator path-owned-twice\n    yaml {",
    ));
    let allowed = sb.run_on("os=linux accelerator=mps", &["validate"]);
    allowed.code(0);
}

#[test]
fn validate_json_locates_each_problem() {
    let sb = Sandbox::new();
    sb.spec("file a {\n    path \"/tmp/a\"\n    content \"x\"\n    colour \"red\"\n}\n");
    let run = sb.run(&["validate", "--json"]);
    run.code(1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["problems"][0]["code"], "spec::unknown-field");
    assert_eq!(report["problems"][0]["line"], 4);
    assert_eq!(report["problems"][0]["column"], 5);
}

#[test]
fn diagnostics_quote_the_spec_with_url_credentials_masked() {
    let run = validate(
        r#"repo comfyui {
    url "https://alice:t0ps3cret@git.example.invalid/ComfyUI.git" mirror=1
    rev "v1"
    path "/tmp/comfy"
}
"#,
    );
    assert!(!run.stderr.contains("t0ps3cret"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("https://***************@git.example.invalid/ComfyUI.git"),
        "{}",
        run.stderr
    );
}
