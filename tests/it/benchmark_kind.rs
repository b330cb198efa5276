//! The `benchmark` kind, end to end through the binary, against the
//! stand-in ComfyUI (support/comfyfix.rs: a stand-in honouring the
//! contract's observed v0.3.27 behaviour; it runs no model).

use std::time::Duration;

use serde_json::Value;

use crate::support::comfyfix::{Config, StandIn};
use crate::support::sandbox::{Sandbox, StopServices};
use crate::support::sha256_hex;

const CHECKPOINT: &str = "test-sd15.safetensors";

/// A minimal valid `.safetensors` file (no tensors) whose metadata carries
/// `tag`, so two versions have different digests.
fn weights(tag: &str) -> Vec<u8> {
    let header = format!(r#"{{"__metadata__":{{"tag":"{tag}"}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes
}

/// The service's command: a long sleep stands in for the ComfyUI process
/// (the stand-in answers its health URL). Stopped when the test ends.
const SERVICE_COMMAND: &str = "command \"sleep\" \"600\"\n    manager \"process\"";

/// A spec with a model, a service the stand-in answers for, a benchmark
/// (`extra` lines added to it) and a file that depends on the benchmark.
fn spec(server: &StandIn, model_bytes: &[u8], extra: &str) -> String {
    format!(
        r#"
model sd15 {{
    source "src/{CHECKPOINT}"
    sha256 "{sha}"
    path "comfy/models/checkpoints/{CHECKPOINT}"
}}

service comfy {{
    {SERVICE_COMMAND}
    health {{ url "{url}/system_stats" }}
}}

benchmark gen {{
    service service.comfy
    txt2img {{
        checkpoint model.sd15
        prompt "a lighthouse"
        width 64
        height 64
        steps 3
        sampler "euler_ancestral"
        cfg 7
        seed 42
    }}
    runs 2
    warmup 1
    timeout "30s"
{extra}
}}

file after {{
    path "after.txt"
    content "benchmarked\n"
    depends-on benchmark.gen
}}
"#,
        sha = sha256_hex(model_bytes),
        url = server.url(),
    )
}

fn sandbox(server: &StandIn, extra: &str) -> Sandbox {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("src")).unwrap();
    std::fs::write(sb.path(&format!("src/{CHECKPOINT}")), weights("v1")).unwrap();
    sb.spec(&spec(server, &weights("v1"), extra));
    sb
}

fn history(sb: &Sandbox) -> Value {
    serde_json::from_str(&sb.read(".plasma/benchmarks/gen/history.json")).unwrap()
}

fn seeds(server: &StandIn) -> Vec<u64> {
    server
        .prompts()
        .iter()
        .map(|p| p["prompt"]["3"]["inputs"]["seed"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_passing_run_is_recorded_and_not_repeated_when_nothing_changed() {
    let server = StandIn::start(Config::default());
    let sb = sandbox(&server, "    budget \"60s\"\n    expect-device \"cpu\"");
    let _stop = StopServices(&sb);
    let run = sb.run(&["apply", "--yes"]);
    run.code(0);
    assert!(
        run.stdout.contains("benchmark.gen will run"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("never run"), "{}", run.stdout);
    // One warm-up and two timed runs, each with its own seed and client id.
    assert_eq!(seeds(&server), [42, 43, 44]);
    let prompts = server.prompts();
    assert_ne!(prompts[1]["client_id"], prompts[2]["client_id"]);
    assert_eq!(
        server.steps_run(),
        9,
        "every run sampled: none came from the cache"
    );
    let state = sb.state();
    let result = &state["resources"]["benchmark.gen"]["outputs"]["result"];
    assert_eq!(result["runs"].as_array().unwrap().len(), 2);
    assert_eq!(result["device"], "cpu");
    assert_eq!(result["comfyui_version"], "0.3.27");
    assert_eq!(result["pytorch_version"], "2.5.1+cpu");
    assert!(result["median_seconds"].as_f64().unwrap() > 0.0);
    assert!(result["runs"][0]["it_per_s"].as_f64().unwrap() > 0.0);
    crate::support::sandbox::assert_benchmark_images(&sb, "gen", result);
    assert_eq!(sb.read("after.txt"), "benchmarked\n");

    // Nothing changed: no-op, and no prompt reaches ComfyUI.
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(server.prompts().len(), 3);

    // The history prints as a table, newest last.
    let show = sb.run(&["show", "benchmark.gen"]);
    show.code(0);
    let table: Vec<&str> = show
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("date"))
        .collect();
    assert!(
        table[0].contains("ComfyUI") && table[0].contains("median"),
        "{}",
        show.stdout
    );
    assert!(
        table[1].contains("0.3.27") && table[1].contains("cpu") && table[1].contains("passed"),
        "{}",
        show.stdout
    );
}

#[test]
fn apply_rerun_forces_a_run_with_new_seeds() {
    let server = StandIn::start(Config::default());
    let sb = sandbox(&server, "");
    let _stop = StopServices(&sb);
    sb.run(&["apply", "--yes"]).code(0);
    let run = sb.run(&["apply", "--yes", "--rerun", "benchmark.gen"]);
    run.code(0);
    assert!(run.stdout.contains("forced by --rerun"), "{}", run.stdout);
    // The seeds go on from where the last apply left them: no prompt repeats.
    assert_eq!(seeds(&server), [42, 43, 44, 45, 46, 47]);
    assert_eq!(history(&sb)["results"].as_array().unwrap().len(), 2);
    let wrong = sb.run(&["apply", "--yes", "--rerun", "file.after"]);
    wrong.code(1);
    assert!(
        wrong.stderr.contains("--rerun runs a benchmark"),
        "{}",
        wrong.stderr
    );
}

#[test]
fn over_budget_fails_skips_dependents_and_is_still_recorded() {
    let server = StandIn::start(Config {
        step_delay: Duration::from_millis(150),
        ..Config::default()
    });
    let sb = sandbox(&server, "    budget \"200ms\"");
    let _stop = StopServices(&sb);
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    assert!(run.stderr.contains("over budget: median"), "{}", run.stderr);
    assert!(run.stdout.contains("file.after: skipped"), "{}", run.stdout);
    assert!(!sb.path("after.txt").exists());
    let h = history(&sb);
    let last = &h["results"][0];
    assert_eq!(last["passed"], false);
    assert_eq!(last["runs"].as_array().unwrap().len(), 2);
    assert!(last["median_seconds"].as_f64().unwrap() > 0.2);
    // State records the failed result too, marked failed.
    let state = sb.state();
    let entry = &state["resources"]["benchmark.gen"];
    assert_eq!(entry["failed"], true, "{entry}");
    assert_eq!(entry["outputs"]["result"]["passed"], false);
    assert_eq!(entry["outputs"]["result"]["runs"], last["runs"]);
    assert!(
        entry["outputs"]["result"]["failure"]
            .as_str()
            .unwrap()
            .starts_with("over budget: median"),
        "{entry}"
    );
    // The next plan runs it again, and says why.
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("the last run failed (over budget"),
        "{}",
        plan.stdout
    );
    // Without the history (deleted by hand) the failure in state alone
    // keeps it from looking converged.
    std::fs::remove_file(sb.path(".plasma/benchmarks/gen/history.json")).unwrap();
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("its last apply failed"),
        "{}",
        plan.stdout
    );
    // A passing run replaces the failed record.
    sb.spec(&spec(&server, &weights("v1"), "    budget \"60s\""));
    sb.run(&["apply", "--yes"]).code(0);
    let state = sb.state();
    let entry = &state["resources"]["benchmark.gen"];
    assert!(entry.get("failed").is_none(), "{entry}");
    assert_eq!(entry["outputs"]["result"]["passed"], true);
    assert_eq!(sb.read("after.txt"), "benchmarked\n");
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn the_wrong_device_fails_before_running_and_is_recorded() {
    let server = StandIn::start(Config::default());
    let sb = sandbox(&server, "    expect-device \"mps\"");
    let _stop = StopServices(&sb);
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("wrong device: ComfyUI runs on `cpu` (cpu), not `mps`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("MPS"),
        "the help names the fix: {}",
        run.stderr
    );
    assert!(server.prompts().is_empty());
    assert!(run.stdout.contains("file.after: skipped"), "{}", run.stdout);
    assert_eq!(history(&sb)["results"][0]["device"], "cpu");
    let state = sb.state();
    let entry = &state["resources"]["benchmark.gen"];
    assert_eq!(entry["failed"], true, "{entry}");
    assert_eq!(entry["outputs"]["result"]["device"], "cpu");
    assert!(
        entry["outputs"]["result"]["failure"]
            .as_str()
            .unwrap()
            .starts_with("wrong device"),
        "{entry}"
    );
    sb.run(&["plan", "--detailed-exitcode"]).code(2);
}

#[test]
fn a_socket_dropped_mid_run_ends_through_the_history() {
    let server = StandIn::start(Config {
        drop_socket_after_steps: Some(2),
        step_delay: Duration::from_millis(30),
        ..Config::default()
    });
    let sb = sandbox(&server, "");
    let _stop = StopServices(&sb);
    let run = sb.run(&["apply", "--yes"]);
    run.code(0);
    assert!(
        run.stdout
            .contains("socket dropped; end read from /history"),
        "{}",
        run.stdout
    );
    assert_eq!(server.steps_run(), 9);
}

#[test]
fn an_execution_error_names_the_node_class_and_exception() {
    let server = StandIn::start(Config {
        fail_class: Some("KSampler".into()),
        ..Config::default()
    });
    let sb = sandbox(&server, "");
    let _stop = StopServices(&sb);
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    assert!(
        run.stderr.contains(
            "node 3 (KSampler) failed: safetensors._safetensors_rust.SafetensorError: Error while deserializing header: header too large"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_model_comfyui_does_not_list_is_explained_before_submitting() {
    let server = StandIn::start(Config {
        checkpoints: vec!["other.safetensors".into()],
        ..Config::default()
    });
    let sb = sandbox(&server, "");
    let _stop = StopServices(&sb);
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    assert!(
        run.stderr.contains(
            "node 4 (CheckpointLoaderSimple) loads ckpt_name `test-sd15.safetensors`, which ComfyUI does not list in models/checkpoints/ (it lists: other.safetensors); model.sd15 puts it at"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("with its extension"), "{}", run.stderr);
    assert!(server.prompts().is_empty(), "nothing was submitted");
}

#[test]
fn a_name_without_its_extension_gets_a_suggestion() {
    let server = StandIn::start(Config::default());
    let sb = Sandbox::new();
    let _stop = StopServices(&sb);
    sb.write(
        "bench.json",
        &serde_json::json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "test-sd15"}},
            "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "model": ["4", 0]}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["3", 0]}}
        })
        .to_string(),
    );
    sb.spec(&format!(
        "service comfy {{\n    {SERVICE_COMMAND}\n    health {{ url \"{}/system_stats\" }}\n}}\n\
         benchmark gen {{\n    service service.comfy\n    workflow \"bench.json\"\n    set \"3.inputs.steps\" 4\n    runs 1\n    warmup 0\n}}\n",
        server.url()
    ));
    let run = sb.run(&["apply", "--yes"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("(did you mean `test-sd15.safetensors`?)"),
        "{}",
        run.stderr
    );
    // Fixed with an override, the same workflow runs with the overridden steps.
    let text = sb.read("plasma.kdl").replace(
        "set \"3.inputs.steps\" 4",
        "set \"3.inputs.steps\" 4\n    set \"4.inputs.ckpt_name\" \"test-sd15.safetensors\"",
    );
    sb.spec(&text);
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(server.steps_run(), 4);
}

#[test]
fn a_ui_format_workflow_is_refused_with_how_to_export_the_api_format() {
    let server = StandIn::start(Config::default());
    let sb = Sandbox::new();
    sb.write(
        "ui.json",
        r#"{"last_node_id": 9, "last_link_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [[1, 4, 0, 3, 0, "MODEL"]], "version": 0.4}"#,
    );
    sb.spec(&format!(
        "service comfy {{\n    {SERVICE_COMMAND}\n    health {{ url \"{}/system_stats\" }}\n}}\n\
         benchmark gen {{\n    service service.comfy\n    workflow \"ui.json\"\n}}\n",
        server.url()
    ));
    let plan = sb.run(&["plan"]);
    plan.code(1);
    let all = format!("{}{}", plan.stdout, plan.stderr);
    assert!(
        all.contains("UI format (top-level `nodes` and `links`)"),
        "{all}"
    );
    assert!(all.contains("Save (API Format)"), "{all}");
    assert!(server.prompts().is_empty());
}

#[test]
fn a_changed_model_digest_reruns_and_the_plan_says_why() {
    let server = StandIn::start(Config::default());
    let sb = sandbox(&server, "");
    let _stop = StopServices(&sb);
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(server.prompts().len(), 3);
    // The model is replaced by other weights, with their digest.
    std::fs::write(sb.path(&format!("src/{CHECKPOINT}")), weights("v2")).unwrap();
    sb.spec(&spec(&server, &weights("v2"), ""));
    let plan = sb.run(&["plan"]);
    let old = &sha256_hex(&weights("v1"))[..12];
    let new = &sha256_hex(&weights("v2"))[..12];
    assert!(
        plan.stdout
            .contains(&format!("model {CHECKPOINT} sha256:{old} -> sha256:{new}")),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(server.prompts().len(), 6);
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_dependency_changed_in_the_same_apply_reruns_it_and_the_plan_says_why() {
    let server = StandIn::start(Config::default());
    let sb = sandbox(&server, "");
    let with_cfg = |content: &str| {
        format!(
            "{}\nfile cfg {{\n    path \"cfg.txt\"\n    content \"{content}\"\n}}\n",
            spec(&server, &weights("v1"), "    depends-on file.cfg")
        )
    };
    sb.spec(&with_cfg("a"));
    let _stop = StopServices(&sb);
    sb.run(&["apply", "--yes"]).code(0);
    let prompts = server.prompts().len();

    // The plan cannot see the change in the fingerprint yet; it says why.
    sb.spec(&with_cfg("b"));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("benchmark.gen will run (file.cfg changed)"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(server.prompts().len(), prompts + 3, "warm-up and two runs");
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}
