//! The `lora` kind against the **real** kohya sd-scripts 3e6935a and the
//! **real** ComfyUI v0.3.27, run when `PLASMA_REAL_STACK=<folder>` names a
//! folder built by `shared/real-stack/setup.sh`; skipped, saying so,
//! otherwise.
//!
//! Everything runs from what plasma builds: the clones (`repo`, from the real
//! stack's bare repositories at their tags) and the venvs (`venv`, from the
//! clones' requirements with torch from the real stack's `wheels/`), built
//! once by support/realstack.rs and kept between runs; each test's own spec
//! declares them again and finds them converged (its state adopts the clone
//! and the venv's record). A test's ComfyUI is a clone of its own, in its
//! sandbox, so the LoRA it installs stays its own.

use std::path::{Path, PathBuf};
use std::sync::MutexGuard;
use std::time::Instant;

use crate::support::realstack::{self, RealStack};
use crate::support::sandbox::{Sandbox, StopServices};

/// The real stack with sd-scripts built, and the real-stack tests' turn;
/// `None` (and a printed reason) when there is no real stack.
fn real_stack() -> Option<(&'static RealStack, MutexGuard<'static, ()>)> {
    let turn = realstack::serial();
    let stack = realstack::get()?.kohya()?;
    Some((stack, turn))
}

/// A tiny LoRA on the real stack's dataset: 4 train images × 10 repeats and
/// 3 reg images, 64×64, `max-steps` steps, a checkpoint every 2.
fn tiny_lora(rs: &Path, max_steps: u32, extra: &str) -> String {
    let rs = rs.display();
    format!(
        r#"
lora tiny {{
    trainer repo.sd-scripts
    venv venv.kohya
    base-model "{rs}/test-sd15.safetensors"
    accelerate-config "accelerate.yaml"
    dataset {{
        resolution 64
        batch-size 1
        subset {{
            image-dir "{rs}/train/dataset/img/10_spyke"
            repeats 10
            caption-extension ".txt"
            keep-tokens 1
            class-tokens spyke
        }}
        subset {{
            image-dir "{rs}/train/dataset/reg/1_person"
            repeats 1
            caption-extension ".txt"
            class-tokens person
            is-reg #true
        }}
    }}
    network-dim 4
    network-alpha 2
    optimizer AdamW
    learning-rate 1e-4
    max-steps {max_steps}
    save-every-n-steps 2
    mixed-precision no
    save-precision float
    seed 42
    tokenizer-cache "{rs}/kohya-cache"
    env {{
        HF_HUB_OFFLINE "1"
    }}
    output "out" name=tiny
    select min-loss
    allow dataset-prefix-ignored
{extra}
}}
"#
    )
}

const ACCELERATE_CPU: &str = "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: 'no'\nnum_machines: 1\nnum_processes: 1\nuse_cpu: true\n";

/// Applies the shared clone and venv of `venv` (building them the first
/// time), printing how long it took.
fn apply_venv(sb: &Sandbox, venv: &str) {
    let run = sb.run_timed(&["apply", "--yes", "--target", venv]);
    if run.code != 0 {
        println!(
            "{}{}\n--- log\n{}",
            run.stdout,
            run.stderr,
            std::fs::read_to_string(sb.path(&format!(".plasma/logs/{venv}.log")))
                .unwrap_or_default()
        );
    }
    run.code(0);
}

/// plasma's `lora` trains with the real sd-scripts in the venv plasma built,
/// the plan's step count is the trainer's, the min-loss checkpoint is
/// installed into ComfyUI's `models/loras/`, and the real ComfyUI (started
/// by plasma's `service`) loads it: a `benchmark` whose built-in txt2img
/// graph names the `lora` resource (`lora lora.tiny strength=0.8`, a
/// `LoraLoader` in the graph).
#[test]
fn real_stack_lora_trains_in_a_plasma_venv_and_comfyui_loads_it() {
    let Some((stack, _turn)) = real_stack() else {
        return;
    };
    let rs = &stack.stack;
    let t0 = Instant::now();
    let sb = Sandbox::new();
    let _stop = StopServices(&sb);
    sb.write("accelerate.yaml", ACCELERATE_CPU);
    let clone = sb.path("ComfyUI");
    let installed = clone.join("models/loras/tiny.safetensors");
    let port = crate::support::free_port();
    // The built-in txt2img graph with the trained LoRA (a LoraLoader
    // between the checkpoint and the sampler), 64×64, 3 steps.
    let spec = format!(
        r#"{}{}{}{}{}{}{}
benchmark with-lora {{
    service service.comfy
    txt2img {{
        checkpoint model.sd15
        lora lora.tiny strength=0.8
        prompt "spyke, a portrait"
        width 64
        height 64
        steps 3
        sampler "euler_ancestral"
    }}
    runs 1
    warmup 0
    budget "600s"
    expect-device "cpu"
    timeout "600s"
    depends-on link.sd15-in-comfyui
}}
"#,
        stack.kohya_kdl(),
        stack.repo_kdl("comfyui", &clone),
        stack.venv_kdl("comfyui", "repo.comfyui"),
        stack.checkpoint_kdl("sd15"),
        stack.checkpoint_link_kdl("sd15-in-comfyui", &clone, "repo.comfyui model.sd15"),
        stack.comfyui_service_kdl("comfy", "comfyui", "comfyui", port),
        tiny_lora(
            rs,
            6,
            &format!(
                "    install-to \"{}\"\n    depends-on repo.comfyui",
                installed.display()
            )
        ),
    );
    sb.spec(&spec);

    // ComfyUI's clone first (adopted, with its venv): the LoRA is installed into it.
    apply_venv(&sb, "venv.comfyui");
    apply_venv(&sb, "venv.kohya");
    let plan = sb.run_timed(&["plan", "--target", "lora.tiny"]);
    plan.code(0);
    println!("{}", plan.stdout);
    assert!(
        plan.stdout
            .contains("reg 3 images balanced to 40; 80 batches per epoch; max-steps 6 = 6 steps"),
        "{}",
        plan.stdout
    );

    let apply = sb.run_timed(&["apply", "--yes", "--target", "lora.tiny"]);
    println!("{}{}", apply.stdout, apply.stderr);
    apply.code(0);
    let log = sb.read(".plasma/logs/lora.tiny.log");
    // The trainer's own numbers equal the plan's.
    assert!(
        log.contains("num batches per epoch / 1epochのバッチ数: 80"),
        "{log}"
    );
    assert!(
        log.contains("total optimization steps / 学習ステップ数: 6"),
        "{log}"
    );
    let state = sb.state();
    let run = &state["resources"]["lora.tiny"]["outputs"]["run"];
    assert_eq!(run["total_steps"], 6);
    let steps: Vec<u64> = run["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_u64().unwrap())
        .collect();
    println!("checkpoints at steps {steps:?}");
    assert!(steps.contains(&2) && steps.contains(&4) && steps.contains(&6));
    let selected = PathBuf::from(run["selected"]["file"].as_str().unwrap());
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&selected).unwrap()
    );
    let show = sb.run(&["show", "lora.tiny"]);
    println!("{}", show.stdout);
    assert!(
        show.stdout.contains("* selected (min-loss)"),
        "{}",
        show.stdout
    );

    let bench = sb.run_timed(&["apply", "--yes", "--target", "benchmark.with-lora"]);
    println!("{}{}", bench.stdout, bench.stderr);
    bench.code(0);
    let result = &sb.state()["resources"]["benchmark.with-lora"]["outputs"]["result"];
    assert_eq!(result["device"], "cpu");
    // ComfyUI names every LoRA key it could not apply; a LoRA trained on this
    // checkpoint applies fully.
    let service_log = sb.read(".plasma/services/comfy/service.log");
    assert!(
        !service_log.contains("lora key not loaded"),
        "{service_log}"
    );
    assert!(service_log.contains("Prompt executed"), "{service_log}");
    for line in service_log
        .lines()
        .filter(|l| l.contains("Prompt executed") || l.to_lowercase().contains("lora"))
    {
        println!("comfyui: {line}");
    }
    let show = sb.run(&["show", "benchmark.with-lora"]);
    println!("{}", show.stdout);
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
    println!("real-stack test took {:.0} s", t0.elapsed().as_secs_f64());
}

/// `ss_steps` of a real checkpoint (its safetensors header's metadata).
fn ss_steps(file: &Path) -> u64 {
    plasma::safetensors::read_header(file).unwrap().metadata["ss_steps"]
        .parse()
        .unwrap()
}

/// A run with `save-state` killed mid-run (SIGKILL to plasma's process group
/// and to the trainer's, as an out-of-memory kill or a power cut would) goes
/// on from its newest complete saved state: the real trainer gets `--resume
/// DIR --skip_until_initial_step`, counts on from that step, and the final
/// checkpoint's `ss_steps` is the whole run's.
#[test]
fn real_stack_a_killed_run_resumes_from_its_saved_state() {
    let Some((stack, _turn)) = real_stack() else {
        return;
    };
    let t0 = Instant::now();
    let sb = Sandbox::new();
    sb.write("accelerate.yaml", ACCELERATE_CPU);
    sb.spec(&format!(
        "{}{}",
        stack.kohya_kdl(),
        tiny_lora(&stack.stack, 8, "    save-state")
    ));
    apply_venv(&sb, "venv.kohya");

    let mut apply = sb.command(&["apply", "--yes", "--target", "lora.tiny"]);
    std::os::unix::process::CommandExt::process_group(&mut apply, 0);
    apply
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let started = Instant::now();
    let mut plasma = apply.spawn().unwrap();
    let complete = sb.path("out/tiny-step00000002-state/random_states_0.pkl");
    while !complete.exists() {
        assert!(
            plasma.try_wait().unwrap().is_none(),
            "apply ended before the first state was saved:\n{}",
            std::fs::read_to_string(sb.path(".plasma/logs/lora.tiny.log")).unwrap_or_default()
        );
        assert!(started.elapsed().as_secs() < 900, "no state after 900 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The trainer runs in a process group of its own (plasma's children
    // record names it): both groups die at once.
    let children: serde_json::Value =
        serde_json::from_str(&sb.read(".plasma/children.json")).unwrap();
    let groups: Vec<i32> = children["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["group"]["pid"].as_i64().unwrap() as i32)
        .chain([plasma.id() as i32])
        .collect();
    for group in &groups {
        // SAFETY: kill(2) of process groups this test started.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    plasma.wait().unwrap();
    println!(
        "killed process groups {groups:?} {:.1} s into the run",
        started.elapsed().as_secs_f64()
    );
    assert!(!sb.path("out/tiny.safetensors").exists());

    let plan = sb.run_timed(&["plan", "--target", "lora.tiny"]);
    println!("{}", plan.stdout);
    plan.code(0);
    assert!(
        plan.stdout.contains("+ resume: resumes at step "),
        "{}",
        plan.stdout
    );
    let apply = sb.run_timed(&["apply", "--yes", "--target", "lora.tiny"]);
    println!("{}{}", apply.stdout, apply.stderr);
    apply.code(0);
    let log = sb.read(".plasma/logs/lora.tiny.log");
    let resumed = log
        .lines()
        .find(|l| l.contains("plasma: resumes at step"))
        .unwrap_or_else(|| panic!("{log}"));
    println!("{resumed}");
    // rich wraps the trainer's log lines at 80 columns.
    assert!(log.contains("resume training from local"), "{log}");

    assert!(
        log.contains("total optimization steps / 学習ステップ数: 8"),
        "{log}"
    );
    let run = &sb.state()["resources"]["lora.tiny"]["outputs"]["run"];
    let from = run["resumed_from"].as_u64().expect("the run resumed");
    assert!((2..8).contains(&from) && from.is_multiple_of(2), "{run}");
    // The trainer skipped the batches of the steps done (its own words).
    assert!(log.contains(&format!("skipping {from} steps")), "{log}");
    assert_eq!(run["total_steps"], 8);
    let steps: Vec<u64> = run["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_u64().unwrap())
        .collect();
    println!("resumed at step {from}; checkpoints at steps {steps:?}");
    assert_eq!(steps, [2, 4, 6, 8, 8]);
    // The trainer counted on from the state: the final file says step 8.
    assert_eq!(ss_steps(&sb.path("out/tiny.safetensors")), 8);
    assert_eq!(ss_steps(&sb.path("out/tiny-step00000008.safetensors")), 8);
    let show = sb.run(&["show", "lora.tiny"]);
    println!("{}", show.stdout);
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
    println!("real-stack test took {:.0} s", t0.elapsed().as_secs_f64());
}
