//! Platform facts: what plasma knows of the machine it runs on, faked with
//! `PLASMA_PLATFORM` so that macOS/MPS rules run on Linux CI too.

use crate::support::sandbox::{Run, Sandbox};

const MAC: &str = "os=macos arch=aarch64 accelerator=mps memory=16GiB";
const LINUX: &str = "os=linux arch=x86_64 accelerator=cpu memory=24GiB";

fn run(sb: &Sandbox, facts: &str, args: &[&str]) -> Run {
    sb.run_on(facts, args)
}

const MAC_SPEC: &str = r#"
platform os=macos arch=aarch64 accelerator=mps

file notes {
    path "out/notes.txt"
    content "hello\n"
}
"#;

#[test]
fn a_spec_for_another_machine_is_planned_under_a_warning_and_never_applied() {
    let sb = Sandbox::new();
    sb.spec(MAC_SPEC);

    let plan = run(&sb, LINUX, &["plan"]);
    plan.code(0);
    assert!(plan.stdout.contains("1 to create"), "{}", plan.stdout);
    assert!(plan.stderr.contains("platform-mismatch"), "{}", plan.stderr);
    assert!(
        plan.stderr
            .contains("os: macos (spec) vs linux (this machine)"),
        "{}",
        plan.stderr
    );
    run(&sb, LINUX, &["validate"]).code(0);
    run(&sb, LINUX, &["drift"]).code(2);

    let apply = run(&sb, LINUX, &["apply", "--yes"]);
    apply.code(1);
    assert!(
        apply.stderr.contains("is for another machine")
            && apply
                .stderr
                .contains("arch: aarch64 (spec) vs x86_64 (this machine)")
            && apply.stderr.contains("--ignore-platform"),
        "{}",
        apply.stderr
    );
    assert!(!sb.path("out/notes.txt").exists(), "nothing was written");

    // A saved plan is refused the same way.
    run(&sb, LINUX, &["plan", "--out", "p.plan"]).code(0);
    let saved = run(&sb, LINUX, &["apply", "p.plan", "--yes"]);
    saved.code(1);
    assert!(
        saved.stderr.contains("is for another machine"),
        "{}",
        saved.stderr
    );

    // Knowingly: applied, with a warning.
    let forced = run(&sb, LINUX, &["apply", "--yes", "--ignore-platform"]);
    forced.code(0);
    assert!(
        forced.stderr.contains("another machine"),
        "{}",
        forced.stderr
    );
    assert_eq!(sb.read("out/notes.txt"), "hello\n");

    // On the machine it is for, no warning and no refusal.
    let sb = Sandbox::new();
    sb.spec(MAC_SPEC);
    let apply = run(&sb, MAC, &["apply", "--yes"]);
    apply.code(0);
    assert!(
        !apply.stderr.contains("platform-mismatch"),
        "{}",
        apply.stderr
    );
}

#[test]
fn unknown_platform_values_are_spec_errors_with_the_accepted_spelling() {
    let sb = Sandbox::new();
    sb.spec("platform os=Linux arch=x64 accelerator=metal\n");
    let out = run(&sb, LINUX, &["validate"]);
    out.code(1);
    for expected in [
        "unknown os `Linux`",
        "did you mean `linux`?",
        "unknown arch `x64`",
        "did you mean `x86_64`?",
        "unknown accelerator `metal`",
        "did you mean `mps`?",
    ] {
        assert!(out.stderr.contains(expected), "{expected}: {}", out.stderr);
    }
    sb.spec("platform os=beos\n");
    let out = run(&sb, LINUX, &["validate"]);
    out.code(1);
    assert!(
        out.stderr
            .contains("the os values are: macos, linux, windows"),
        "{}",
        out.stderr
    );
}

const NEEDS_96: &str = r#"
file big {
    path "out/big.txt"
    content "x"
    requires memory="96GiB" accelerator="mps"
}
"#;

#[test]
fn requires_is_checked_against_the_machine_and_the_declared_platform() {
    let sb = Sandbox::new();
    sb.spec(NEEDS_96);
    let small = run(&sb, MAC, &["validate"]);
    small.code(1);
    assert!(
        small.stderr.contains("requirement-unmet"),
        "{}",
        small.stderr
    );
    assert!(
        small
            .stderr
            .contains("needs 96.0 GiB of memory; this machine has 16.0 GiB"),
        "{}",
        small.stderr
    );

    let big_mac = "os=macos arch=aarch64 accelerator=mps memory=128GiB";
    run(&sb, big_mac, &["validate"]).code(0);

    let big_linux = "os=linux arch=x86_64 accelerator=cuda memory=128GiB";
    let wrong = run(&sb, big_linux, &["validate"]);
    wrong.code(1);
    assert!(
        wrong
            .stderr
            .contains("needs accelerator mps; this machine has cuda"),
        "{}",
        wrong.stderr
    );

    // A big machine still fails when the spec says it is for a small one.
    sb.spec(&format!(
        "platform os=macos arch=aarch64 accelerator=mps memory-gb=16\n{NEEDS_96}"
    ));
    let declared = run(&sb, big_mac, &["validate"]);
    declared.code(1);
    assert!(
        declared.stderr.contains("the spec's platform has 16.0 GiB"),
        "{}",
        declared.stderr
    );

    // `allow` silences it, like every lint.
    sb.spec(&NEEDS_96.replace(
        "content \"x\"",
        "content \"x\"\n    allow requirement-unmet",
    ));
    run(&sb, MAC, &["validate"]).code(0);

    sb.spec(&NEEDS_96.replace("96GiB", "lots"));
    let bad = run(&sb, big_mac, &["validate"]);
    bad.code(1);
    assert!(bad.stderr.contains("must be a size"), "{}", bad.stderr);
}

#[test]
fn init_writes_a_starter_for_the_machine_it_runs_on() {
    for (facts, platform, mixed, use_cpu) in [
        (
            LINUX,
            "platform os=linux arch=x86_64 accelerator=cpu memory-gb=24",
            "mixed_precision \"no\"",
            "use_cpu #true",
        ),
        (
            MAC,
            "platform os=macos arch=aarch64 accelerator=mps memory-gb=16",
            "mixed_precision \"no\"",
            "use_cpu #false",
        ),
        (
            "os=linux arch=x86_64 accelerator=cuda memory=64GiB",
            "platform os=linux arch=x86_64 accelerator=cuda memory-gb=64",
            "mixed_precision \"fp16\"",
            "use_cpu #false",
        ),
    ] {
        let sb = Sandbox::new();
        let init = run(&sb, facts, &["init"]);
        init.code(0);
        assert!(
            init.stdout.contains(&platform["platform ".len()..]),
            "init says what it detected: {}",
            init.stdout
        );
        let spec = sb.read("plasma.kdl");
        for expected in [platform, mixed, use_cpu] {
            assert!(spec.contains(expected), "{expected}:\n{spec}");
        }
        // The starter is valid on that machine, and applying it writes only
        // beside the spec, never the user's real accelerate config.
        run(&sb, facts, &["validate"]).code(0);
        run(&sb, facts, &["apply", "--yes"]).code(0);
        assert!(sb.path("accelerate/default_config.yaml").is_file());
        assert!(!sb.home().join(".cache").exists());
    }
}

#[test]
fn show_platform_prints_the_facts_in_text_and_json() {
    let sb = Sandbox::new();
    let text = run(&sb, MAC, &["show", "platform"]);
    text.code(0);
    for expected in [
        "os           macos (from PLASMA_PLATFORM)",
        "accelerator  mps (from PLASMA_PLATFORM)",
        "memory       16.0 GiB (17179869184 bytes) (from PLASMA_PLATFORM)",
        "platform os=macos arch=aarch64 accelerator=mps memory-gb=16",
    ] {
        assert!(
            text.stdout.contains(expected),
            "{expected}: {}",
            text.stdout
        );
    }

    // Unfaked: this machine's own facts, with the Pythons on PATH (the
    // tests need python3, so at least one is found).
    let real = sb.run(&["show", "platform", "--json"]);
    real.code(0);
    let json: serde_json::Value = serde_json::from_str(&real.stdout).unwrap();
    assert_eq!(json["facts"]["os"], std::env::consts::OS);
    assert_eq!(json["facts"]["arch"], std::env::consts::ARCH);
    assert!(json["facts"]["memory_bytes"].as_u64().unwrap() > 0);
    let pythons = json["pythons"].as_array().unwrap();
    assert!(
        pythons
            .iter()
            .any(|p| p["version"].as_str().unwrap().starts_with("3.")),
        "{pythons:?}"
    );
}
