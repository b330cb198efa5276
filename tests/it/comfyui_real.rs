//! The `service` and `benchmark` kinds against the **real** ComfyUI v0.3.27:
//! the stand-in scenarios of `service_kind` and `benchmark_kind` again, with
//! ComfyUI cloned by plasma's `repo`, its venv built by plasma's `venv`
//! (support/realstack.rs, once per test run) and the server started by
//! plasma's `service` on a free port. Runs when `PLASMA_REAL_STACK` names
//! the real stack's folder; prints `skipped: …` otherwise (CI skips it).
//!
//! One server serves most scenarios (a start costs 10-40 s on two busy
//! cores); it restarts only where the scenario is a restart. Every scenario
//! prints its wall time (`[timing] …`, see `--nocapture`).
//!
//! The overhead measurement posts the same graph as the benchmark through a
//! minimal client (socket first, `POST /prompt`, wait for `executing` with
//! `node: null`), interleaved with single-run benchmark applies, and prints
//! both series with medians and spread.

use std::path::Path;
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::gitfix;
use crate::support::realstack::{self, RealStack};
use crate::support::sandbox::{Sandbox, StopServices};
use crate::support::{free_port, sha256_hex};

/// Runs `f`, printing its wall time under `name`.
fn scenario<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    println!("[timing] {name}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

/// A valid `.safetensors` LoRA with no tensors (ComfyUI loads it and
/// patches nothing); `tag` in its metadata makes two versions differ.
fn empty_lora(tag: &str) -> Vec<u8> {
    let header = format!(r#"{{"__metadata__":{{"tag":"{tag}"}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes
}

/// A custom node whose one node class reports `version` in `/object_info`.
fn probe_node(version: &str) -> String {
    format!(
        r#"class PlasmaProbe:
    DESCRIPTION = "plasma probe {version}"
    CATEGORY = "plasma"
    RETURN_TYPES = ()
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{}}}}

    def run(self):
        return ()


NODE_CLASS_MAPPINGS = {{"PlasmaProbe": PlasmaProbe}}
"#
    )
}

/// The 64×64, 3-step graph the benchmarks run (with the LoRA), seed `seed`.
fn graph(seed: u64) -> Value {
    plasma::comfyui::workflow::Txt2Img {
        checkpoint: "test-sd15.safetensors".into(),
        vae: None,
        lora: Some(("tiny.safetensors".into(), 1.0)),
        prompt: "a lighthouse".into(),
        negative: "".into(),
        width: 64,
        height: 64,
        steps: 3,
        sampler: "euler_ancestral".into(),
        scheduler: "normal".into(),
        cfg: 7.0,
        seed,
    }
    .graph()
}

/// A `benchmark` of the built-in graph, `extra` lines added.
fn txt2img_benchmark(name: &str, extra: &str) -> String {
    format!(
        r#"
benchmark {name} {{
    service service.comfy
    txt2img {{
        checkpoint model.sd15
        lora model.tiny-lora strength=1.0
        prompt "a lighthouse"
        width 64
        height 64
        steps 3
        sampler "euler_ancestral"
        scheduler "normal"
        cfg 7
        seed 42
    }}
    timeout "600s"
    depends-on link.sd15-in-comfyui
{extra}
}}
"#
    )
}

/// A `benchmark` of an API-format workflow file.
fn workflow_benchmark(name: &str, file: &str) -> String {
    format!(
        "\nbenchmark {name} {{\n    service service.comfy\n    workflow \"{file}\"\n    runs 1\n    warmup 0\n    timeout \"600s\"\n    depends-on link.sd15-in-comfyui\n}}\n"
    )
}

/// What the scenarios share: the sandbox, its spec's parts and the port.
struct Setup<'a> {
    sb: &'a Sandbox,
    stack: &'static RealStack,
    port: u16,
    node_url: String,
    node_rev: String,
    lora_sha: String,
    extra: String,
}

impl Setup<'_> {
    fn spec(&self) -> String {
        let clone = self.sb.path("ComfyUI");
        let mut spec = String::new();
        spec += &self.stack.repo_kdl("comfyui", &clone);
        spec += &self.stack.venv_kdl("comfyui", "");
        spec += &self.stack.checkpoint_kdl("sd15");
        spec +=
            &self
                .stack
                .checkpoint_link_kdl("sd15-in-comfyui", &clone, "repo.comfyui model.sd15");
        spec += &format!(
            r#"
model tiny-lora {{
    source "lora.safetensors"
    sha256 "{lora_sha}"
    path "ComfyUI/models/loras/tiny.safetensors"
    depends-on repo.comfyui
}}

custom-node probe {{
    comfyui repo.comfyui
    venv venv.comfyui
    url "{node_url}"
    rev "{node_rev}"
}}

file after-pass {{
    path "after-pass.txt"
    content "benchmarked\n"
    depends-on benchmark.pass
}}

file after-slow {{
    path "after-slow.txt"
    content "benchmarked\n"
    depends-on benchmark.slow
}}
"#,
            lora_sha = self.lora_sha,
            node_url = self.node_url,
            node_rev = self.node_rev,
        );
        spec += &self
            .stack
            .comfyui_service_kdl("comfy", "comfyui", "comfyui", self.port);
        spec += &txt2img_benchmark(
            "pass",
            "    runs 1\n    warmup 1\n    budget \"600s\"\n    expect-device \"cpu\"",
        );
        spec += &txt2img_benchmark("slow", "    runs 1\n    warmup 0\n    budget \"1s\"");
        spec += &txt2img_benchmark("mps", "    runs 1\n    warmup 0\n    expect-device \"mps\"");
        spec += &txt2img_benchmark("overhead", "    runs 1\n    warmup 0");
        spec += &workflow_benchmark("missing", "missing.json");
        spec += &workflow_benchmark("broken", "broken.json");
        spec += &self.extra;
        spec
    }

    fn write(&self) {
        self.sb.spec(&self.spec());
    }

    fn state_entry(&self, address: &str) -> Value {
        self.sb.state()["resources"][address].clone()
    }

    fn service_pid(&self) -> i32 {
        let text = self.sb.read(".plasma/services/comfy/record.json");
        let record: Value = serde_json::from_str(&text).unwrap();
        record["pid"].as_i64().expect("a pid is recorded") as i32
    }

    /// The description of the probe node ComfyUI loaded at its start.
    fn probe_description(&self) -> String {
        let url = format!("http://127.0.0.1:{}/object_info/PlasmaProbe", self.port);
        let body = get_text(&url);
        let info: Value = serde_json::from_str(&body).unwrap_or_default();
        info["PlasmaProbe"]["description"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn get_text(url: &str) -> String {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        match reqwest::get(url).await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    })
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

fn median(values: &[f64]) -> f64 {
    plasma::resource::benchmark::median(values).unwrap_or(f64::NAN)
}

fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// A minimal client: socket first, POST with its client id, wait for
/// `executing {node: null}` of that prompt. Seconds from POST to that.
async fn minimal_run(base: &str, prompt: &Value) -> f64 {
    let client_id = format!("minimal-{}", plasma::fsutil::random_hex(8));
    let ws_url = format!("{}/ws?clientId={client_id}", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    ws.next().await; // status
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .post(format!("{base}/prompt"))
        .body(json!({"prompt": prompt, "client_id": client_id}).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let id = answer["prompt_id"]
        .as_str()
        .unwrap_or_else(|| panic!("ComfyUI refused the prompt: {answer}"))
        .to_string();
    while let Some(Ok(message)) = ws.next().await {
        if let Ok(text) = message.to_text()
            && let Ok(event) = serde_json::from_str::<Value>(text)
            && event["type"] == "executing"
            && event["data"]["node"].is_null()
            && event["data"]["prompt_id"] == id.as_str()
        {
            break;
        }
    }
    started.elapsed().as_secs_f64()
}

#[test]
fn real_comfyui_service_and_benchmark_scenarios() {
    let _turn = realstack::serial();
    let Some(stack) = realstack::get() else {
        return;
    };
    let t0 = Instant::now();
    let sb = Sandbox::new();
    let _stop = StopServices(&sb);

    // A tiny custom node in a local git repository, at two commits.
    let node_repo = sb.path("probe-src");
    gitfix::init_repo(&node_repo);
    let node_v1 = gitfix::commit_file(&node_repo, "__init__.py", &probe_node("v1"), "v1");
    let node_v2 = gitfix::commit_file(&node_repo, "__init__.py", &probe_node("v2"), "v2");
    std::fs::write(sb.path("lora.safetensors"), empty_lora("a")).unwrap();
    write_json(&sb.path("missing.json"), &{
        let mut g = graph(7);
        g["4"]["inputs"]["ckpt_name"] = json!("test-sd15");
        g
    });
    write_json(&sb.path("broken.json"), &{
        let mut g = graph(7);
        g["10"]["inputs"]["lora_name"] = json!("corrupt.safetensors");
        g
    });
    std::fs::write(
        sb.path("ui.json"),
        r#"{"last_node_id": 9, "last_link_id": 9, "nodes": [], "links": [], "version": 0.4}"#,
    )
    .unwrap();
    let mut setup = Setup {
        sb: &sb,
        stack,
        port: free_port(),
        node_url: format!("file://{}", node_repo.display()),
        node_rev: node_v1,
        lora_sha: sha256_hex(&empty_lora("a")),
        extra: String::new(),
    };
    setup.write();

    // A passing run: plasma adopts the fixture's venv and checkpoint (no
    // install, no copy), clones ComfyUI, starts it, benchmarks.
    scenario("passing run (clone, start, warm-up + 1 run)", || {
        let run = sb.run_timed(&["apply", "--yes", "--target", "file.after-pass"]);
        println!("{}{}", run.stdout, run.stderr);
        run.code(0);
        assert!(
            !run.stdout.contains("venv.comfyui: Creating")
                && !run.stdout.contains("model.sd15: Creating"),
            "the fixture's venv and checkpoint are adopted as they are: {}",
            run.stdout
        );
        let entry = setup.state_entry("benchmark.pass");
        let result = &entry["outputs"]["result"];
        assert_eq!(result["device"], "cpu");
        assert_eq!(result["comfyui_version"], "0.3.27");
        assert!(
            result["pytorch_version"]
                .as_str()
                .unwrap()
                .starts_with("2.5.1"),
            "{result}"
        );
        assert_eq!(result["runs"].as_array().unwrap().len(), 1);
        assert!(result["runs"][0]["it_per_s"].as_f64().unwrap() > 0.0);
        crate::support::sandbox::assert_benchmark_images(&sb, "pass", result);
        assert_eq!(sb.read("after-pass.txt"), "benchmarked\n");
        assert_eq!(setup.probe_description(), "plasma probe v1");
    });

    scenario("no re-run when nothing changed", || {
        let plan = sb.run_timed(&["plan", "--detailed-exitcode", "--target", "file.after-pass"]);
        plan.code(0);
        let before = setup.state_entry("benchmark.pass")["outputs"]["result"]["date"].clone();
        sb.run_timed(&["apply", "--yes", "--target", "file.after-pass"])
            .code(0);
        assert_eq!(
            setup.state_entry("benchmark.pass")["outputs"]["result"]["date"],
            before
        );
    });

    scenario("over budget (fails, dependents skipped, recorded)", || {
        let run = sb.run_timed(&["apply", "--yes", "--target", "file.after-slow"]);
        run.code(1);
        println!("{}", run.stderr);
        assert!(run.stderr.contains("over budget: median"), "{}", run.stderr);
        assert!(
            run.stdout.contains("file.after-slow: skipped"),
            "{}",
            run.stdout
        );
        assert!(!sb.path("after-slow.txt").exists());
        let entry = setup.state_entry("benchmark.slow");
        assert_eq!(entry["failed"], true, "{entry}");
        assert_eq!(entry["outputs"]["result"]["passed"], false);
        assert!(
            entry["outputs"]["result"]["median_seconds"]
                .as_f64()
                .unwrap()
                > 1.0
        );
        let plan = sb.run_timed(&["plan", "--detailed-exitcode", "--target", "benchmark.slow"]);
        plan.code(2);
        assert!(
            plan.stdout.contains("the last run failed (over budget"),
            "{}",
            plan.stdout
        );
    });

    scenario("wrong device (expect-device mps on cpu)", || {
        let run = sb.run_timed(&["apply", "--yes", "--target", "benchmark.mps"]);
        run.code(1);
        println!("{}", run.stderr);
        assert!(
            run.stderr.contains("wrong device: ComfyUI runs on `cpu`"),
            "{}",
            run.stderr
        );
        let entry = setup.state_entry("benchmark.mps");
        assert_eq!(entry["failed"], true, "{entry}");
        assert_eq!(entry["outputs"]["result"]["device"], "cpu");
        assert_eq!(entry["outputs"]["result"]["runs"], json!([]));
    });

    scenario("execution error (a LoRA file that is not one)", || {
        std::fs::write(
            sb.path("ComfyUI/models/loras/corrupt.safetensors"),
            b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a lora",
        )
        .unwrap();
        let run = sb.run_timed(&["apply", "--yes", "--target", "benchmark.broken"]);
        run.code(1);
        println!("{}", run.stderr);
        assert!(
            run.stderr.contains("(LoraLoader) failed: "),
            "{}",
            run.stderr
        );
    });

    scenario("missing model name (no extension)", || {
        let run = sb.run_timed(&["apply", "--yes", "--target", "benchmark.missing"]);
        run.code(1);
        println!("{}", run.stderr);
        assert!(
            run.stderr
                .contains("(did you mean `test-sd15.safetensors`?)"),
            "{}",
            run.stderr
        );
    });

    scenario("UI-format workflow refused", || {
        setup.extra = workflow_benchmark("ui", "ui.json");
        setup.write();
        let plan = sb.run_timed(&["plan", "--target", "benchmark.ui"]);
        plan.code(1);
        let text = format!("{}{}", plan.stdout, plan.stderr);
        println!("{text}");
        assert!(text.contains("UI format"), "{text}");
        assert!(text.contains("API"), "{text}");
        setup.extra.clear();
        setup.write();
    });

    scenario("never healthy (a bad argument)", || {
        let bad_port = free_port();
        setup.extra = format!(
            "\nservice bad {{\n    comfyui repo.comfyui\n    venv venv.comfyui\n    args \"--cpu\" \"--port\" \"{bad_port}\" \"--no-such-flag\"\n    manager \"process\"\n    health {{ timeout \"120s\"; }}\n}}\n"
        );
        setup.write();
        let run = sb.run_timed(&["apply", "--yes", "--target", "service.bad"]);
        run.code(1);
        println!("{}", run.stderr);
        assert!(
            run.stderr
                .contains("unrecognized arguments: --no-such-flag"),
            "the log's tail is quoted: {}",
            run.stderr
        );
        setup.extra.clear();
        setup.write();
    });

    scenario("killed by hand (drift, restarted)", || {
        let pid = setup.service_pid();
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let plan = sb.run_timed(&["plan", "--target", "service.comfy"]);
        println!("{}", plan.stdout);
        assert!(
            plan.stdout.contains("start: not running"),
            "{}",
            plan.stdout
        );
        sb.run_timed(&["apply", "--yes", "--target", "service.comfy"])
            .code(0);
        assert_ne!(setup.service_pid(), pid);
        // The benchmark measures nothing a restart changes: no re-run.
        sb.run_timed(&["plan", "--detailed-exitcode", "--target", "file.after-pass"])
            .code(0);
    });

    scenario("re-run when a model digest changes", || {
        std::fs::write(sb.path("lora.safetensors"), empty_lora("b")).unwrap();
        let old = setup.lora_sha.clone();
        setup.lora_sha = sha256_hex(&empty_lora("b"));
        setup.write();
        let plan = sb.run_timed(&["plan", "--target", "file.after-pass"]);
        println!("{}", plan.stdout);
        let why = format!("tiny.safetensors sha256:{}", &old[..8]);
        assert!(plan.stdout.contains(&why), "{}", plan.stdout);
        assert!(
            plan.stdout.contains("benchmark.pass will run"),
            "{}",
            plan.stdout
        );
        let before = setup.service_pid();
        let run = sb.run_timed(&["apply", "--yes", "--target", "file.after-pass"]);
        run.code(0);
        assert_eq!(
            setup.service_pid(),
            before,
            "a model is no reason to restart"
        );
        let result = &setup.state_entry("benchmark.pass")["outputs"]["result"];
        assert_eq!(result["runs"].as_array().unwrap().len(), 1);
        sb.run_timed(&["plan", "--detailed-exitcode", "--target", "file.after-pass"])
            .code(0);
    });

    scenario("restart when a custom node changes", || {
        setup.node_rev = node_v2.clone();
        setup.write();
        let plan = sb.run_timed(&["plan", "--target", "file.after-pass"]);
        println!("{}", plan.stdout);
        assert!(
            plan.stdout.contains("restart: custom-node.probe changed"),
            "{}",
            plan.stdout
        );
        assert!(
            plan.stdout.contains("benchmark.pass will run"),
            "{}",
            plan.stdout
        );
        let before = setup.service_pid();
        sb.run_timed(&["apply", "--yes", "--target", "file.after-pass"])
            .code(0);
        assert_ne!(setup.service_pid(), before, "restarted");
        assert_eq!(
            setup.probe_description(),
            "plasma probe v2",
            "and loaded the new node"
        );
        sb.run_timed(&["plan", "--detailed-exitcode", "--target", "file.after-pass"])
            .code(0);
    });

    scenario("overhead (interleaved, 6 of each)", || overhead(&setup));

    let show = sb.run_timed(&["show", "benchmark.pass"]);
    println!(
        "{}",
        show.stdout
            .lines()
            .skip_while(|l| !l.starts_with("history"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    scenario("prune (stops ComfyUI)", || {
        sb.spec("");
        sb.run_timed(&["apply", "--yes", "--prune"]).code(0);
        assert!(get_text(&format!("http://127.0.0.1:{}/system_stats", setup.port)).is_empty());
    });
    println!(
        "[timing] fixture apply {:.1} s; scenarios {:.1} s",
        stack.apply_seconds,
        t0.elapsed().as_secs_f64()
    );
}

/// The seconds of every "Prompt executed in X seconds" line in ComfyUI's
/// log (v0.3.27's `prompt_worker` logs it right after it sends `executing`
/// with `node: null`): the server's own time for each prompt, in order.
fn executed_times(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let rest = line.split("Prompt executed in ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// The server's time for the prompt after the first `seen` ones (waits up
/// to 5 s for the log line).
fn server_time(log: &Path, seen: usize) -> f64 {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(t) = executed_times(log).get(seen) {
            return *t;
        }
        assert!(
            Instant::now() < deadline,
            "no `Prompt executed` line in {log:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The benchmark's time per run against a minimal client's for the same
/// graph, on the warm server: pairs in alternating order (plasma first,
/// then the client first), so that a drift in the machine's load falls on
/// both. plasma's run time is what it records (POST to the completion
/// signal); the apply's whole wall time is printed beside it. Each run's
/// time is also split into ComfyUI's own execution time (its log) and the
/// rest, the client side: the rest is what a client can add, and it does
/// not swing with the load the way sampling does.
fn overhead(setup: &Setup<'_>) {
    const PAIRS: usize = 6;
    let base = format!("http://127.0.0.1:{}", setup.port);
    let log = setup.sb.path(".plasma/services/comfy/service.log");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // (wall, client side) per run.
    let (mut plasma_runs, mut applies, mut minimal_runs) = (Vec::new(), Vec::new(), Vec::new());
    let plasma_run = |runs: &mut Vec<(f64, f64)>, applies: &mut Vec<f64>| {
        let seen = executed_times(&log).len();
        let started = Instant::now();
        let run = setup.sb.run(&[
            "apply",
            "--yes",
            "--target",
            "benchmark.overhead",
            "--rerun",
            "benchmark.overhead",
        ]);
        applies.push(started.elapsed().as_secs_f64());
        run.code(0);
        let entry = setup.state_entry("benchmark.overhead");
        let wall = entry["outputs"]["result"]["runs"][0]["seconds"]
            .as_f64()
            .unwrap();
        runs.push((wall, wall - server_time(&log, seen)));
    };
    let minimal_run = |runs: &mut Vec<(f64, f64)>, seed: u64| {
        let seen = executed_times(&log).len();
        let wall = runtime.block_on(minimal_run(&base, &graph(seed)));
        runs.push((wall, wall - server_time(&log, seen)));
    };
    // One untimed run of each first: the LoRA version the graph names may
    // not be loaded yet.
    plasma_run(&mut Vec::new(), &mut Vec::new());
    minimal_run(&mut Vec::new(), 900_000);
    for pair in 0..PAIRS {
        let seed = 900_001 + pair as u64;
        if pair % 2 == 0 {
            plasma_run(&mut plasma_runs, &mut applies);
            minimal_run(&mut minimal_runs, seed);
        } else {
            minimal_run(&mut minimal_runs, seed);
            plasma_run(&mut plasma_runs, &mut applies);
        }
    }
    let show = |name: &str, v: &[f64]| {
        let (lo, hi) = spread(v);
        println!(
            "overhead: {name:<34} median {:7.3}  min {lo:7.3}  max {hi:7.3}  {:?}",
            median(v),
            v.iter()
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
        );
    };
    let walls = |v: &[(f64, f64)]| v.iter().map(|r| r.0).collect::<Vec<_>>();
    let sides = |v: &[(f64, f64)]| v.iter().map(|r| r.1).collect::<Vec<_>>();
    show("plasma run, wall s", &walls(&plasma_runs));
    show("minimal client run, wall s", &walls(&minimal_runs));
    show("plasma apply process, wall s", &applies);
    show("plasma run, client side s", &sides(&plasma_runs));
    show("minimal client run, client side s", &sides(&minimal_runs));
    let pairs: Vec<f64> = walls(&plasma_runs)
        .iter()
        .zip(walls(&minimal_runs))
        .map(|(p, m)| (p / m - 1.0) * 100.0)
        .collect();
    let (lo, hi) = spread(&pairs);
    let wall_median = median(&walls(&minimal_runs));
    let added = median(&sides(&plasma_runs)) - median(&sides(&minimal_runs));
    println!(
        "overhead: wall per run: medians {:+.2}%, per pair median {:+.2}% (range {lo:+.2}% .. {hi:+.2}%)",
        (median(&walls(&plasma_runs)) / wall_median - 1.0) * 100.0,
        median(&pairs),
    );
    let fixed: Vec<f64> = applies
        .iter()
        .zip(walls(&plasma_runs))
        .map(|(apply, run)| apply - run)
        .collect();
    show("plasma apply minus its run, s", &fixed);
    println!(
        "overhead: client side added by plasma {added:+.3} s per run = {:+.2}% of the client's median run ({wall_median:.2} s); whole apply {:+.2}%",
        added / wall_median * 100.0,
        (median(&applies) / wall_median - 1.0) * 100.0,
    );
    assert!(
        plasma_runs
            .iter()
            .chain(&minimal_runs)
            .all(|r| r.0 > 0.0 && r.1 > -0.02),
        "the server's time fits in the client's (log rounding 0.01 s)"
    );
}
