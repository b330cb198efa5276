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
        r#"platform acelerator=mps
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

/// The problems' codes in a `validate --json` run, in order.
fn codes(run: &sandbox::Run) -> Vec<String> {
    let report: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout));
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap().to_string())
        .collect()
}

fn validate_json(spec: &str) -> sandbox::Run {
    let sb = Sandbox::new();
    sb.spec(spec);
    let run = sb.run(&["validate", "--json"]);
    run.code(1);
    run
}

mod habits {
    //! KDL 1 and YAML habits: one problem at the span, with the fixed line.

    use super::*;

    #[test]
    fn a_bare_true_gets_a_hash_and_the_fixed_line() {
        let run = validate(
            r#"platform os=linux accelerator=mps
file accelerate {
    path "/tmp/plasma-habit.yaml"
    yaml {
        use_cpu true
        debug false
    }
}
"#,
        );
        assert!(
            run.stderr.contains("help: write: `use_cpu #true`"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("help: write: `debug #false`"));
        assert!(
            run.stderr
                .ends_with("Error: the spec has 2 problems (nothing was changed)\n")
        );
        insta::assert_snapshot!(run.stderr);
    }

    #[test]
    fn a_bare_null_gets_a_hash() {
        let run = validate(
            "file settings {\n    path \"/tmp/plasma-habit.json\"\n    json {\n        seed null\n    }\n}\n",
        );
        assert!(
            run.stderr.contains("help: write: `seed #null`"),
            "{}",
            run.stderr
        );
        insta::assert_snapshot!(run.stderr);
    }

    #[test]
    fn an_unquoted_url_is_one_problem_not_a_cascade() {
        let run = validate(
            r#"model sdxl { url https://example.invalid/sdxl.safetensors; path "/tmp/sdxl.safetensors" }
file notes {
    path "/tmp/plasma-notes"
    content "x"
}
"#,
        );
        assert_eq!(run.stderr.matches("\n  × ").count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.contains(
                "help: quote it: `model sdxl { url \"https://example.invalid/sdxl.safetensors\"; path"
            ),
            "{}",
            run.stderr
        );
        insta::assert_snapshot!(run.stderr);
    }

    #[test]
    fn yes_in_a_boolean_field_is_explained() {
        let run = validate(
            r#"model old {
    url "https://example.invalid/old.ckpt"
    path "/tmp/old.ckpt"
    allow-pickle yes
}
"#,
        );
        assert!(
            run.stderr.contains("help: write `allow-pickle #true`"),
            "{}",
            run.stderr
        );
        insta::assert_snapshot!(run.stderr);
    }
}

mod limits {
    //! Inputs past plasma's limits are errors with a location, never a crash.

    use super::*;

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let depth = 5000;
        let run = validate_json(&format!("{}{}", "a {".repeat(depth), "}".repeat(depth)));
        assert_eq!(codes(&run), ["spec::too-deep"]);
        let run = validate(&"/*".repeat(depth));
        assert!(run.stderr.contains("spec::too-deep"), "{}", run.stderr);
    }

    /// Nesting up to the limit (two levels for `file` and `yaml`, the rest
    /// in the value) loads.
    #[test]
    fn nesting_up_to_the_limit_loads() {
        for levels in [3, 62] {
            let value = format!("{}v 1{}", "a {".repeat(levels), "}".repeat(levels));
            let sb = Sandbox::new();
            sb.spec(&format!(
                "file f {{\n    path \"/tmp/f.yaml\"\n    yaml {{ {value} }}\n}}\n"
            ));
            sb.run(&["validate"]).code(0);
        }
    }

    #[test]
    fn a_label_past_column_65535_renders_with_its_real_column() {
        let long = "x".repeat(100_000);
        let run = validate(&format!(
            "file a {{\n    path \"/tmp/{long}\" bogus=1\n    content \"x\"\n}}\n"
        ));
        assert!(
            run.stderr.contains("[plasma.kdl:2:100018]"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("…"), "{}", run.stderr);
        assert!(run.stderr.len() < 4_000, "{}", run.stderr.len());
    }

    #[test]
    fn doubling_variables_stop_at_the_expansion_limit() {
        let mut spec = String::from("vars {\n    v0 \"0123456789abcdef\"\n");
        for i in 1..40 {
            spec.push_str(&format!("    v{i} \"{{v{0}}}{{v{0}}}\"\n", i - 1));
        }
        spec.push_str("}\nfile a {\n    path \"/tmp/a\"\n    content \"{v39}\"\n}\n");
        let run = validate_json(&spec);
        assert!(
            codes(&run).contains(&"spec::expansion-too-large".to_string()),
            "{}",
            run.stdout
        );
    }

    #[test]
    fn only_the_first_fifty_problems_are_shown() {
        let spec: String = (0..80)
            .map(|i| format!("file f{i} {{\n    colour \"red\"\n}}\n"))
            .collect();
        let total = codes(&validate_json(&spec)).len();
        assert!(total > 100, "{total}");
        let run = validate(&spec);
        assert_eq!(run.stderr.matches("\n  × ").count(), 50);
        let rest = format!(
            "… and {} more problems not shown (fix the ones above first)\n",
            total - 50
        );
        assert!(run.stderr.contains(&rest), "{}", run.stderr);
    }

    #[test]
    fn a_spec_past_one_mebibyte_is_refused() {
        let sb = Sandbox::new();
        sb.spec(&format!("// {}\n", "x".repeat(2 << 20)));
        let run = sb.run(&["validate", "--json"]);
        run.code(1);
        assert_eq!(codes(&run), ["spec::too-large"]);
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(report["problems"][0]["line"], 1);
    }

    #[test]
    fn invalid_utf8_is_located_by_line_and_column() {
        let sb = Sandbox::new();
        std::fs::write(
            sb.path("plasma.kdl"),
            b"file a {\n    path \"/tmp/\xff\"\n    content \"x\"\n}\n",
        )
        .unwrap();
        let run = sb.run(&["validate", "--json"]);
        run.code(1);
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(report["problems"][0]["code"], "spec::not-utf8");
        assert_eq!(report["problems"][0]["line"], 2);
        assert_eq!(report["problems"][0]["column"], 16);
        let run = sb.run(&["validate"]);
        run.code(1);
        assert!(run.stderr.contains("[plasma.kdl:2:16]"), "{}", run.stderr);
    }
}

#[test]
fn every_json_command_prints_json_when_the_spec_fails() {
    let sb = Sandbox::new();
    sb.spec("file a {\n    colour \"red\"\n}\n");
    for args in [
        &["plan", "--json"][..],
        &["drift", "--json"],
        &["show", "file.a", "--json"],
        &["validate", "--json"],
    ] {
        let run = sb.run(args);
        run.code(1);
        let report: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", run.stdout));
        assert_eq!(report["valid"], false, "{args:?}");
        let lines: Vec<_> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["line"].as_u64())
            .collect();
        assert!(lines.contains(&Some(2)), "{args:?}: {lines:?}");
        assert!(lines.iter().all(Option::is_some), "{args:?}: {lines:?}");
    }
    // A failure that is not in the spec is JSON too.
    let run = sb.run(&["-f", "missing.kdl", "plan", "--json"]);
    run.code(1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["problems"][0]["code"], "plasma::error");
}

#[test]
fn spec_errors_do_not_hide_lints() {
    let run = validate_json(
        r#"platform os=linux accelerator=mps
model sdxl {
    url "https://example.invalid/sdxl.safetensors"
    path "/tmp/sdxl.safetensors"
    sha256 "not-a-digest"
}
file accelerate {
    path "/tmp/plasma-lint-test.yaml"
    yaml {
        mixed_precision fp16
    }
}
"#,
    );
    let codes = codes(&run);
    assert!(
        codes.contains(&"spec::malformed-sha256".to_string()),
        "{codes:?}"
    );
    assert!(codes.contains(&"fp16-on-mps".to_string()), "{codes:?}");
}

#[test]
fn a_reference_never_suggests_its_own_resource() {
    let run =
        validate("file b {\n    path \"/tmp/b\"\n    content \"x\"\n    depends-on file.zzz\n}\n");
    assert!(
        run.stderr.contains("spec::unknown-reference"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("did you mean"), "{}", run.stderr);
}

#[test]
fn unknown_field_help_lists_each_field_once() {
    let run = validate("file a {\n    path \"/tmp/a\"\n    colour \"red\"\n}\n");
    let help = run
        .stderr
        .lines()
        .find(|l| l.contains("the fields of file are"))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert_eq!(help.matches("content").count(), 1, "{help}");
}

#[test]
fn two_platforms_are_an_error() {
    let run = validate("platform os=linux\nplatform os=macos\n");
    assert!(
        run.stderr.contains("spec::duplicate-platform"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("first given here"), "{}", run.stderr);
}

#[test]
fn fmt_refuses_deep_nesting_and_bad_bytes_with_a_location() {
    let sb = Sandbox::new();
    sb.spec(&"a {".repeat(5000));
    let run = sb.run(&["fmt"]);
    run.code(1);
    assert!(run.stderr.contains("spec::too-deep"), "{}", run.stderr);
    std::fs::write(sb.path("plasma.kdl"), b"file a {\n    path \"\xff\"\n}\n").unwrap();
    let run = sb.run(&["fmt"]);
    run.code(1);
    assert!(run.stderr.contains("[plasma.kdl:2:11]"), "{}", run.stderr);
}
