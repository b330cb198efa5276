//! The `benchmark` kind against the **real** ComfyUI v0.3.27, run when
//! `PLASMA_REAL_STACK=<folder>` names a folder built by
//! `shared/real-stack/setup.sh` (its `git/ComfyUI.git`, `comfy-venv/` and
//! `test-sd15.safetensors`); skipped, saying so, otherwise. ComfyUI is
//! started by plasma's own `service` kind (a detached process) from a fresh
//! clone, with the test checkpoint linked into its models folder.
//!
//! It also measures the overhead: the benchmark's per-run wall time next to
//! the same prompt posted by a minimal client (socket, POST, wait for the
//! completion signal), printed side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::sandbox::Sandbox;

fn real_stack() -> Option<PathBuf> {
    let Some(folder) = std::env::var_os("PLASMA_REAL_STACK").map(PathBuf::from) else {
        println!(
            "skipped: PLASMA_REAL_STACK is not set (a folder built by shared/real-stack/setup.sh)"
        );
        return None;
    };
    for needed in [
        "git/ComfyUI.git",
        "comfy-venv/bin/python",
        "test-sd15.safetensors",
    ] {
        if !folder.join(needed).exists() {
            println!("skipped: {} has no {needed}", folder.display());
            return None;
        }
    }
    Some(folder)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The standard 64×64, 3-step graph with `extra` nodes merged in.
fn workflow(ckpt: &str, seed: u64) -> Value {
    plasma::comfyui::workflow::Txt2Img {
        checkpoint: ckpt.into(),
        vae: None,
        lora: None,
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

struct StopComfy(PathBuf);

impl Drop for StopComfy {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.0.join(".plasma/state.json")) else {
            return;
        };
        let state: Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(pid) = state["resources"]["service.comfy"]["outputs"]["pid"].as_u64() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// A minimal client: socket first, POST with its client id, wait for
/// `executing {node: null}` of that prompt. Seconds from POST to that.
async fn minimal_run(base: &str, prompt: &Value) -> f64 {
    let client_id = format!("minimal-{}", plasma::fsutil::random_hex(8));
    let ws_url = format!("{}/ws?clientId={client_id}", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    ws.next().await; // status
    let started = Instant::now();
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/prompt"))
        .body(json!({"prompt": prompt, "client_id": client_id}).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let id = answer["prompt_id"].as_str().unwrap().to_string();
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

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

#[test]
fn the_benchmark_against_the_real_comfyui() {
    let Some(stack) = real_stack() else { return };
    let t0 = Instant::now();
    let sb = Sandbox::new();
    let _stop = StopComfy(sb.root().to_path_buf());
    let clone = sb.path("ComfyUI");
    let status = std::process::Command::new("git")
        .args([
            "-c",
            "advice.detachedHead=false",
            "clone",
            "-q",
            "--branch",
            "v0.3.27",
        ])
        .arg(stack.join("git/ComfyUI.git"))
        .arg(&clone)
        .status()
        .unwrap();
    assert!(status.success());
    // Folders git does not keep (empty in the release).
    for folder in ["models/checkpoints", "models/loras", "custom_nodes"] {
        std::fs::create_dir_all(clone.join(folder)).unwrap();
    }
    std::os::unix::fs::symlink(
        stack.join("test-sd15.safetensors"),
        clone.join("models/checkpoints/test-sd15.safetensors"),
    )
    .unwrap();
    // A LoRA that is not one: ComfyUI fails at execution, naming the node.
    std::fs::write(
        clone.join("models/loras/corrupt.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a lora",
    )
    .unwrap();
    write_json(
        &sb.path("bench.json"),
        &workflow("test-sd15.safetensors", 7),
    );
    write_json(&sb.path("missing.json"), &workflow("test-sd15", 7));
    let mut lora = workflow("test-sd15.safetensors", 7);
    lora["10"] = json!({"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
        "lora_name": "corrupt.safetensors", "strength_model": 1.0, "strength_clip": 1.0}});
    lora["3"]["inputs"]["model"] = json!(["10", 0]);
    write_json(&sb.path("lora.json"), &lora);
    std::fs::write(
        sb.path("ui.json"),
        r#"{"last_node_id": 9, "nodes": [], "links": []}"#,
    )
    .unwrap();

    let port = free_port();
    let python = stack.join("comfy-venv/bin/python");
    let bench = |name: &str, file: &str, extra: &str| {
        format!(
            "benchmark {name} {{\n    service service.comfy\n    workflow \"{file}\"\n    runs 2\n    warmup 1\n    timeout \"600s\"\n{extra}\n}}\n"
        )
    };
    let spec = format!(
        "service comfy {{\n    command \"{python}\" \"main.py\" \"--cpu\" \"--listen\" \"127.0.0.1\" \"--port\" \"{port}\" \"--disable-auto-launch\"\n    cwd \"{clone}\"\n    manager \"process\"\n    health {{\n        url \"http://127.0.0.1:{port}/system_stats\"\n        timeout \"300s\"\n    }}\n}}\n{}{}{}{}",
        bench(
            "pass",
            "bench.json",
            "    budget \"600s\"\n    expect-device \"cpu\""
        ),
        bench("mps", "bench.json", "    expect-device \"mps\""),
        bench("missing", "missing.json", ""),
        bench("lora", "lora.json", ""),
        python = python.display(),
        clone = clone.display(),
    );
    sb.spec(&spec);
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let run = sb.run(args);
        println!(
            "$ plasma {} -> exit {} in {:.1} s",
            args.join(" "),
            run.code,
            started.elapsed().as_secs_f64()
        );
        run
    };

    let run = timed(&["apply", "--yes", "--target", "benchmark.pass"]);
    println!("{}{}", run.stdout, run.stderr);
    run.code(0);
    let state = sb.state();
    let result = &state["resources"]["benchmark.pass"]["outputs"]["result"];
    assert_eq!(result["device"], "cpu");
    assert_eq!(result["comfyui_version"], "0.3.27");
    assert_eq!(result["runs"].as_array().unwrap().len(), 2);
    let plasma_runs: Vec<f64> = result["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seconds"].as_f64().unwrap())
        .collect();

    // Nothing changed: no re-run.
    let plan = timed(&["plan", "--detailed-exitcode", "--target", "benchmark.pass"]);
    plan.code(0);

    let run = timed(&["apply", "--yes", "--target", "benchmark.mps"]);
    run.code(1);
    assert!(
        run.stderr.contains("wrong device: ComfyUI runs on `cpu`"),
        "{}",
        run.stderr
    );

    let run = timed(&["apply", "--yes", "--target", "benchmark.missing"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("(did you mean `test-sd15.safetensors`?)"),
        "{}",
        run.stderr
    );

    let run = timed(&["apply", "--yes", "--target", "benchmark.lora"]);
    run.code(1);
    println!("{}", run.stderr);
    assert!(
        run.stderr.contains("(LoraLoader) failed: "),
        "{}",
        run.stderr
    );

    std::fs::write(
        sb.path("plasma.kdl"),
        format!("{spec}{}", bench("ui", "ui.json", "")),
    )
    .unwrap();
    let plan = timed(&["plan", "--target", "benchmark.ui"]);
    plan.code(1);
    assert!(format!("{}{}", plan.stdout, plan.stderr).contains("UI format"));

    // Overhead: the same graph (new seeds) posted by a minimal client.
    let base = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let minimal: Vec<f64> = (0..2)
        .map(|i| {
            runtime.block_on(minimal_run(
                &base,
                &workflow("test-sd15.safetensors", 5000 + i),
            ))
        })
        .collect();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[0] + v[v.len() - 1]) / 2.0
    };
    let (p, m) = (median(&plasma_runs), median(&minimal));
    println!(
        "overhead: plasma runs {plasma_runs:.2?} s (median {p:.2}), minimal client {minimal:.2?} s (median {m:.2}): {:+.1}%",
        (p / m - 1.0) * 100.0
    );
    let show = sb.run(&["show", "benchmark.pass"]);
    println!(
        "{}",
        show.stdout
            .lines()
            .skip_while(|l| !l.starts_with("history"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!("real-stack test took {:.0} s", t0.elapsed().as_secs_f64());
}
