//! The command line's own mistakes: a spec given where a flag is expected,
//! unknown targets, and help for every argument.

use clap::CommandFactory;

use crate::support::sandbox::Sandbox;

const SPEC: &str = r#"file accelerate-cfg {
    path "/tmp/plasma-cli-hints.yaml"
    content "x"
}
"#;

#[test]
fn a_spec_given_as_an_argument_gets_a_tip_to_use_f() {
    let sb = Sandbox::new();
    sb.spec(SPEC);
    let run = sb.run(&["plan", "plasma.kdl"]);
    run.code(2);
    assert!(
        run.stderr
            .contains("the spec is given with -f: `plasma plan -f plasma.kdl`"),
        "{}",
        run.stderr
    );
}

#[test]
fn apply_of_a_spec_says_it_is_not_a_saved_plan() {
    let sb = Sandbox::new();
    sb.spec(SPEC);
    sb.write("custom.spec", SPEC);
    for file in ["plasma.kdl", "custom.spec"] {
        let run = sb.run(&["apply", file]);
        run.code(1);
        assert!(
            run.stderr.contains(&format!(
                "{file} is a spec, not a saved plan: `plasma apply FILE` runs a plan saved by `plasma plan --out FILE`; to apply a spec, run `plasma apply -f {file}`"
            )),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn an_unknown_target_suggests_the_address_it_names() {
    let sb = Sandbox::new();
    sb.spec(SPEC);
    let run = sb.run(&["plan", "--target", "cfg"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("no resource `cfg` in the spec (did you mean `file.accelerate-cfg`?)"),
        "{}",
        run.stderr
    );
}

#[test]
fn every_argument_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && !arg.is_hide_set() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() && sub.get_name() != "help" {
                missing.push(format!("{path} {}", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&plasma::cli::Cli::command(), "plasma", &mut missing);
    assert!(missing.is_empty(), "no --help text: {missing:?}");
}

#[test]
fn schema_lists_its_names() {
    let sb = Sandbox::new();
    let run = sb.run(&["schema", "--help"]);
    run.code(0);
    assert!(
        run.stdout
            .contains("[possible values: plan, drift, state, validate, show]"),
        "{}",
        run.stdout
    );
    let run = sb.run(&["schema", "plna"]);
    run.code(2);
    assert!(run.stderr.contains("plan"), "{}", run.stderr);
}

#[test]
fn init_writes_the_file_given_with_f() {
    let sb = Sandbox::new();
    let run = sb.run(&["-f", "custom.kdl", "init"]);
    run.code(0);
    assert!(sb.path("custom.kdl").is_file());
    assert!(!sb.path("plasma.kdl").exists());
    assert!(
        run.stdout.contains("plasma validate -f custom.kdl"),
        "{}",
        run.stdout
    );
    let again = sb.run(&["-f", "custom.kdl", "init"]);
    again.code(1);
    assert!(
        again.stderr.contains("custom.kdl already exists"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_link_to_what_the_spec_creates_does_not_warn_it_will_dangle() {
    let sb = Sandbox::new();
    let made = sb.path("made/model.bin");
    let elsewhere = sb.path("elsewhere/missing.bin");
    sb.spec(&format!(
        r#"file model {{
    path "{made}"
    content "weights"
}}
link made {{
    path "{root}/links/made"
    target "{made}"
    depends-on file.model
}}
link missing {{
    path "{root}/links/missing"
    target "{elsewhere}"
}}
"#,
        made = made.display(),
        elsewhere = elsewhere.display(),
        root = sb.root().display(),
    ));
    let run = sb.run(&["plan"]);
    run.code(0);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(all.matches("will dangle").count(), 1, "{all}");
    assert!(
        all.contains(&format!("{} does not exist", elsewhere.display())),
        "{all}"
    );
}
