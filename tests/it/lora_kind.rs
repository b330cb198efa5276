//! The `lora` kind end to end, with a STAND-IN `train_network.py` and a
//! stand-in `accelerate` launcher (`support/kohya_standin/`, Python, not
//! kohya's code) that honour the trainer's contract as observed on sd-scripts
//! 3e6935a, log quirks included, in a real venv. The real trainer is driven
//! by `lora_real` when `PLASMA_REAL_STACK` names the real stack.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::sandbox::{Run, Sandbox};

const STANDIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/support/kohya_standin"
);

/// A kohya_ss folder with the stand-in trainer under sd-scripts/, a venv
/// holding the stand-in `accelerate`, a base model, and a dataset of two
/// captioned train images and three reg images.
fn fixture(sb: &Sandbox, train_dir: &str) {
    let sd = sb.path("kohya_ss/sd-scripts");
    std::fs::create_dir_all(sd.join("networks")).unwrap();
    for file in [
        "train_network.py",
        "networks/__init__.py",
        "networks/lora.py",
    ] {
        std::fs::copy(Path::new(STANDIN).join(file), sd.join(file)).unwrap();
    }
    let venv = sb.path("venv");
    let status = std::process::Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(status.success());
    let launcher = std::fs::read_to_string(Path::new(STANDIN).join("accelerate")).unwrap();
    let script = format!("#!{}\n{launcher}", venv.join("bin/python").display());
    let accelerate = venv.join("bin/accelerate");
    std::fs::write(&accelerate, script).unwrap();
    std::fs::set_permissions(
        &accelerate,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    sb.write("models/base.safetensors", "not really a model");
    for name in ["a", "b"] {
        sb.write(&format!("{train_dir}/{name}.png"), &format!("image {name}"));
        sb.write(&format!("{train_dir}/{name}.txt"), "spyke, 1boy, red hair");
    }
    for name in ["p", "q", "r"] {
        sb.write(
            &format!("dataset/reg/{name}.png"),
            &format!("person {name}"),
        );
        sb.write(&format!("dataset/reg/{name}.txt"), "person");
    }
}

fn spec(train_dir: &str, extra: &str) -> String {
    format!(
        r#"
lora spyke {{
    trainer "kohya_ss"
    venv "venv"
    base-model "models/base.safetensors"
    dataset {{
        resolution 64
        batch-size 1
        subset {{
            image-dir "{train_dir}"
            repeats 5
            caption-extension ".txt"
            keep-tokens 1
            shuffle-caption #true
        }}
        subset {{
            image-dir "dataset/reg"
            caption-extension ".txt"
            is-reg #true
        }}
    }}
    network-dim 4
    network-alpha 2
    optimizer "AdamW"
    learning-rate 1e-4
    epochs 2
    save-every-n-steps 10
    mixed-precision "no"
    seed 42
    output "out" name="spyke_test"
    select "min-loss"
    install-to "comfy/models/loras/spyke.safetensors"
    {extra}
}}
"#
    )
}

fn run_with(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = sb.command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("plasma runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn installed(sb: &Sandbox) -> PathBuf {
    sb.path("comfy/models/loras/spyke.safetensors")
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive: look at /proc's state letter.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

#[test]
fn a_clean_run_installs_the_min_loss_checkpoint_and_a_second_apply_does_nothing() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    sb.spec(&spec("dataset/train/spyke", ""));

    // The plan tells the step arithmetic before anything runs.
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains(
            "train 2 images × 5 repeats = 10; reg 3 images balanced to 10; 20 per epoch / batch 1 × 2 epochs = 40 steps"
        ),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("never trained"), "{}", plan.stdout);

    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);

    // The stand-in said 40 total optimization steps, as the plan did.
    let log = sb.read(".plasma/logs/lora.spyke.log");
    assert!(
        log.contains("total optimization steps / 学習ステップ数: 40"),
        "{log}"
    );
    // Step 20 has the lowest loss; it is installed, byte for byte.
    let chosen = sb.path("out/spyke_test-step00000020.safetensors");
    assert_eq!(
        std::fs::read(installed(&sb)).unwrap(),
        std::fs::read(&chosen).unwrap()
    );
    assert!(sb.path("out/spyke_test.safetensors").exists());
    assert!(
        sb.read("out/spyke_test-loss.svg")
            .contains("selected: step 20")
    );
    let toml = sb.read(".plasma/lora/spyke/dataset.toml");
    assert!(
        toml.contains("num_repeats = 5") && toml.contains("is_reg = true"),
        "{toml}"
    );

    let state = sb.state();
    let run = &state["resources"]["lora.spyke"]["outputs"]["run"];
    assert_eq!(run["total_steps"], 40);
    let steps: Vec<u64> = run["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [10, 20, 30, 40, 40]);
    assert_eq!(run["selected"]["step"], 20);
    assert_eq!(run["selected"]["loss"], 0.1);
    assert_eq!(run["checkpoints"][0]["loss"], 0.11);
    assert_eq!(run["installed"]["sha256"], run["selected"]["sha256"]);
    assert_eq!(run["selected"]["sha256"].as_str().unwrap().len(), 64);

    // Converged: the plan is empty, a second apply runs nothing.
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(0);
    let again = sb.run(&["apply", "--yes"]);
    again.code(0);
    assert_eq!(
        sb.read(".plasma/logs/lora.spyke.log")
            .matches("$ cd ")
            .count(),
        1
    );

    // The next plan estimates from the run's seconds per step.
    sb.write("dataset/train/spyke/c.png", "image c");
    sb.write("dataset/train/spyke/c.txt", "spyke, 1boy");
    let plan = sb.run(&["plan"]);
    assert!(plan.stdout.contains("s/step (last run)"), "{}", plan.stdout);
    assert!(
        plan.stdout
            .contains("dataset changed: 1 image added, 1 caption added"),
        "{}",
        plan.stdout
    );

    // show: the loss table with the selection marked, a chart; --command.
    let show = sb.run(&["show", "lora.spyke"]);
    show.code(0);
    let marked: Vec<&str> = show
        .stdout
        .lines()
        .filter(|l| l.starts_with("* "))
        .collect();
    assert_eq!(marked.len(), 2, "{}", show.stdout);
    assert!(marked[0].contains("step00000020"), "{}", show.stdout);
    assert!(show.stdout.contains('•'), "{}", show.stdout);
    let command = sb.run(&["show", "lora.spyke", "--command"]);
    command.code(0);
    assert!(
        command.stdout.contains("/venv/bin/accelerate launch "),
        "{}",
        command.stdout
    );
    assert!(
        command
            .stdout
            .contains("sd-scripts/train_network.py --pretrained_model_name_or_path="),
        "{}",
        command.stdout
    );
    assert!(
        command
            .stdout
            .contains("--max_train_epochs=2 --mixed_precision=no --save_every_n_steps=10"),
        "{}",
        command.stdout
    );
}

#[test]
fn a_caption_edit_reruns_and_a_removed_install_is_only_copied_again() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    sb.spec(&spec("dataset/train/spyke", ""));
    sb.run(&["apply", "--yes"]).code(0);

    std::fs::remove_file(installed(&sb)).unwrap();
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("the installed file is missing"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert!(installed(&sb).exists());
    assert_eq!(
        sb.read(".plasma/logs/lora.spyke.log")
            .matches("$ cd ")
            .count(),
        1,
        "no second run"
    );

    sb.write("dataset/train/spyke/b.txt", "spyke, 1boy, blue hair");
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("dataset changed: 1 caption edited"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(
        sb.read(".plasma/logs/lora.spyke.log")
            .matches("$ cd ")
            .count(),
        2
    );
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_folder_prefix_under_a_dataset_toml_is_linted_with_the_real_repeats() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/10_spyke");
    sb.spec(&spec("dataset/train/10_spyke", ""));
    let validate = sb.run(&["validate"]);
    validate.code(0);
    let text = format!("{}{}", validate.stdout, validate.stderr);
    assert!(text.contains("dataset-prefix-ignored"), "{text}");
    assert!(
        text.contains("the folder prefix `10_` is ignored under a dataset TOML: this subset repeats 5 times per epoch"),
        "{text}"
    );
    // `allow` silences it.
    sb.spec(&spec(
        "dataset/train/10_spyke",
        "allow \"dataset-prefix-ignored\"",
    ));
    let validate = sb.run(&["validate"]);
    assert!(!format!("{}{}", validate.stdout, validate.stderr).contains("dataset-prefix-ignored"));
}

#[test]
fn a_missing_caption_is_shown_by_the_plan_and_stops_apply_before_the_trainer_runs() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    std::fs::remove_file(sb.path("dataset/train/spyke/b.txt")).unwrap();
    sb.write("dataset/train/spyke/c.png", "image c");
    sb.write("dataset/train/spyke/c.txt", "1boy, spyke");
    sb.spec(&spec("dataset/train/spyke", ""));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("1 image without a caption file: b.png"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("1 caption do not start with the trigger token: c.txt"),
        "{}",
        plan.stdout
    );
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let text = format!("{}{}", apply.stdout, apply.stderr);
    assert!(text.contains("the dataset is not ready"), "{text}");
    assert!(text.contains("b.png"), "{text}");
    assert!(!sb.path("out").exists(), "the trainer never ran");
    assert!(!installed(&sb).exists());
}

#[test]
fn a_trainer_killed_with_sigkill_is_explained_leaves_no_install_and_no_orphan() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    sb.spec(&spec("dataset/train/spyke", ""));
    let pids = sb.path("pids");
    let apply = run_with(
        &sb,
        &["apply", "--yes"],
        &[
            ("STANDIN_SIGKILL_AT_STEP", "25"),
            ("STANDIN_PID_FILE", pids.to_str().unwrap()),
        ],
    );
    apply.code(1);
    let text = format!("{}{}", apply.stdout, apply.stderr);
    assert!(
        text.contains(
            "the trainer was killed (SIGKILL), most likely by the system running out of memory"
        ),
        "{text}"
    );
    assert!(text.contains("batch-size 1"), "{text}");
    assert!(!installed(&sb).exists());
    // The trainer's loader worker, orphaned by the kill, was killed with its group.
    let pid_text = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<i32> = pid_text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids {
        assert!(!alive(pid), "process {pid} of the run is still alive");
    }
    // The next apply runs again and converges.
    let plan = sb.run(&["plan"]);
    assert!(plan.stdout.contains("never trained"), "{}", plan.stdout);
    sb.run(&["apply", "--yes"]).code(0);
    assert!(installed(&sb).exists());
}

/// The step numbers of a stand-in checkpoint file (`ss_steps`).
fn steps_in(file: &Path) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header["__metadata__"]["ss_steps"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// With `save-state`, a run killed at step 15 goes on from its state at
/// step 10 (inside the first epoch of 20 steps): the plan says so, the
/// trainer gets `--resume DIR --skip_until_initial_step`, the step count and
/// the final checkpoint are the whole run's, and the checkpoint saved before
/// the kill is still one of the run's.
#[test]
fn a_killed_run_with_saved_state_resumes_from_its_newest_state() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    sb.spec(&spec("dataset/train/spyke", "save-state"));
    run_with(
        &sb,
        &["apply", "--yes"],
        &[("STANDIN_SIGKILL_AT_STEP", "15")],
    )
    .code(1);
    assert!(!installed(&sb).exists());
    let state10 = sb.path("out/spyke_test-step00000010-state");
    assert!(state10.join("train_state.json").exists());

    let plan = sb.run(&["plan"]);
    plan.code(0);
    assert!(
        plan.stdout.contains(&format!(
            "resume: resumes at step 10 of 40 from {}",
            state10.display()
        )),
        "{}",
        plan.stdout
    );
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(0);
    let log = sb.read(".plasma/logs/lora.spyke.log");
    assert!(
        log.contains(&format!(
            "--resume={} --skip_until_initial_step",
            state10.display()
        )),
        "{log}"
    );
    assert!(log.contains("resume training from local state"), "{log}");
    let run = &sb.state()["resources"]["lora.spyke"]["outputs"]["run"];
    assert_eq!(run["total_steps"], 40);
    assert_eq!(run["resumed_from"], 10);
    let steps: Vec<u64> = run["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [10, 20, 30, 40, 40]);
    // The final file counts the whole run, and min-loss (step 20) is installed.
    assert_eq!(steps_in(&sb.path("out/spyke_test.safetensors")), 40);
    assert_eq!(steps_in(&installed(&sb)), 20);
    assert!(!sb.path("out/spyke_test.plasma-run.json").exists());
    let show = sb.run(&["show", "lora.spyke"]);
    assert!(
        show.stdout.contains("resumed at step 10"),
        "{}",
        show.stdout
    );
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

/// A state past the first epoch is not resumed (sd-scripts 3e6935a would
/// count the rest of the run from the wrong step): the plan says so and the
/// run starts over; states of other inputs are never resumed.
#[test]
fn a_saved_state_past_the_first_epoch_or_of_other_inputs_starts_over() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    sb.spec(&spec("dataset/train/spyke", "save-state"));
    run_with(
        &sb,
        &["apply", "--yes"],
        &[("STANDIN_SIGKILL_AT_STEP", "25")],
    )
    .code(1);
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains(
            "resume: starts over: the newest saved state (step 20) is past the first epoch (20 steps), where sd-scripts 3e6935a resumes with a wrong step count (it would number the rest from step 0)"
        ),
        "{}",
        plan.stdout
    );
    // Other inputs (a caption edited): the stopped run's states are not theirs.
    run_with(
        &sb,
        &["apply", "--yes"],
        &[("STANDIN_SIGKILL_AT_STEP", "15")],
    )
    .code(1);
    sb.write("dataset/train/spyke/a.txt", "spyke, 1boy, blue hair");
    let plan = sb.run(&["plan"]);
    assert!(!plan.stdout.contains("resume:"), "{}", plan.stdout);
    sb.run(&["apply", "--yes"]).code(0);
    let log = sb.read(".plasma/logs/lora.spyke.log");
    assert_eq!(log.matches("--resume=").count(), 0, "{log}");
    let run = &sb.state()["resources"]["lora.spyke"]["outputs"]["run"];
    assert_eq!(run["total_steps"], 40);
    assert!(run["resumed_from"].is_null());
    assert_eq!(steps_in(&sb.path("out/spyke_test.safetensors")), 40);
}

/// A benchmark's txt2img takes a `lora` resource where ComfyUI finds it:
/// its `install-to`. Without one, the plan says ComfyUI cannot load it.
#[test]
fn a_benchmark_lora_without_install_to_is_explained() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    let lora = spec("dataset/train/spyke", "").replace(
        "    install-to \"comfy/models/loras/spyke.safetensors\"\n",
        "",
    );
    sb.spec(&format!(
        r#"{lora}
model base {{
    source "models/base.safetensors"
    path "comfy/models/checkpoints/base.safetensors"
}}
service comfy {{
    command "sleep" "600"
    manager "process"
    health {{
        url "http://127.0.0.1:9/system_stats"
    }}
}}
benchmark styled {{
    service service.comfy
    txt2img {{
        checkpoint model.base
        lora lora.spyke strength=0.8
    }}
}}
"#
    ));
    let plan = sb.run(&["plan"]);
    plan.code(1);
    let text = format!("{}{}", plan.stdout, plan.stderr);
    assert!(
        text.contains("lora.spyke has no `install-to`, so ComfyUI cannot load it"),
        "{text}"
    );
    let bad = sb.path("plasma.kdl");
    let fixed = std::fs::read_to_string(&bad).unwrap().replace(
        "lora lora.spyke strength=0.8",
        "lora repo.spyke strength=0.8",
    );
    std::fs::write(&bad, fixed).unwrap();
    let plan = sb.run(&["plan"]);
    plan.code(1);
    let text = format!("{}{}", plan.stdout, plan.stderr);
    assert!(
        text.contains("`repo.spyke` is not a reference to a model"),
        "{text}"
    );
}

#[test]
fn a_missing_python_module_names_the_module_and_the_venv() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    sb.spec(&spec(
        "dataset/train/spyke",
        "network-module \"lycoris.kohya\"",
    ));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let text = format!("{}{}", apply.stdout, apply.stderr);
    assert!(
        text.contains("the trainer needs the Python module `lycoris`"),
        "{text}"
    );
    assert!(
        text.contains("add the package that provides `lycoris`"),
        "{text}"
    );
    assert!(!installed(&sb).exists());
}

#[test]
fn an_empty_sd_scripts_folder_is_the_uninitialised_submodule() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    std::fs::remove_dir_all(sb.path("kohya_ss/sd-scripts")).unwrap();
    std::fs::create_dir_all(sb.path("kohya_ss/sd-scripts")).unwrap();
    sb.spec(&spec("dataset/train/spyke", ""));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("submodule was never initialised"),
        "{}",
        plan.stdout
    );
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let text = format!("{}{}", apply.stdout, apply.stderr);
    assert!(
        text.contains("sd-scripts is empty: kohya_ss's sd-scripts submodule was never initialised"),
        "{text}"
    );
    assert!(text.contains("git submodule update --init"), "{text}");
}

#[test]
fn spec_mistakes_in_a_lora_are_reported_together() {
    let sb = Sandbox::new();
    sb.spec(
        r#"
lora x {
    trainer "k"
    venv "v"
    base-model "m.safetensors"
    dataset {
        resolution 512
        subset { image-dir "d"; repeats 0 }
    }
    select "best"
    mixed-precision "fp32"
    output "out"
    install-to "loras/x"
}
"#,
    );
    let validate = sb.run(&["validate"]);
    validate.code(1);
    let text = format!("{}{}", validate.stdout, validate.stderr);
    assert!(text.contains("`repeats` must be at least 1"), "{text}");
    assert!(text.contains("`best` is not a valid `select`"), "{text}");
    assert!(
        text.contains("`fp32` is not a valid `mixed-precision`"),
        "{text}"
    );
    assert!(
        text.contains("`install-to` must name a .safetensors file"),
        "{text}"
    );
}

#[test]
fn mps_and_memory_lints_name_the_setting() {
    let sb = Sandbox::new();
    sb.spec(
        r#"
platform accelerator=mps memory-gb=16
lora x {
    trainer "k"
    venv "v"
    base-model "m.safetensors"
    dataset {
        resolution 1024
        batch-size 2
        subset { image-dir "d"; flip-aug }
    }
    mixed-precision "bf16"
    optimizer "AdamW8bit"
    cache-latents
    output "out"
    allow "mixed-precision-on-mps" "optimizer-8bit-on-mps"
}
"#,
    );
    let validate = sb.run(&["validate"]);
    validate.code(0);
    let text = format!("{}{}", validate.stdout, validate.stderr);
    for code in ["flip-aug-with-cache-latents", "training-memory"] {
        assert!(text.contains(code), "{code}: {text}");
    }
    assert!(text.contains("batch size 2 on a 16 GB machine"), "{text}");
    assert!(
        text.contains("resolution 1024×1024 on a 16 GB machine"),
        "{text}"
    );
    // Without the allows, MPS precision and 8-bit optimizers are errors.
    let text = sb.read("plasma.kdl").replace(
        "allow \"mixed-precision-on-mps\" \"optimizer-8bit-on-mps\"",
        "",
    );
    sb.spec(&text);
    let validate = sb.run(&["validate"]);
    validate.code(1);
    let text = format!("{}{}", validate.stdout, validate.stderr);
    assert!(
        text.contains("bf16 mixed precision does not train on MPS"),
        "{text}"
    );
    assert!(
        text.contains("the optimizer AdamW8bit needs bitsandbytes"),
        "{text}"
    );
}

/// The root spec's Spyke LoRA plans the user's real run on a machine without
/// its dataset: the counts come from `images`, and the reg balancing doubles
/// every epoch (1840 steps, not the 920 the notes planned).
#[test]
fn the_root_spec_plans_the_spyke_lora_at_1840_steps() {
    let sb = Sandbox::new();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/plasma.kdl");
    let plan = sb.run(&["plan", "-f", root, "--state", "state.json"]);
    plan.code(0);
    assert!(
        plan.stdout.contains(
            "train 23 images × 10 repeats = 230; reg 100 images balanced to 230; 460 per epoch / batch 1 × 4 epochs = 1840 steps (dataset not present"
        ),
        "{}",
        plan.stdout
    );
    let text = format!("{}{}", plan.stdout, plan.stderr);
    assert!(text.contains("the folder prefix `10_` is ignored under a dataset TOML: this subset repeats 10 times per"), "{text}");
    let command = sb.run(&["show", "lora.spyke", "--command", "-f", root]);
    command.code(0);
    assert!(
        command.stdout.contains("accelerate launch --config_file "),
        "{}",
        command.stdout
    );
    assert!(
        command
            .stdout
            .contains("kohya_ss/sd-scripts/train_network.py"),
        "{}",
        command.stdout
    );
    assert!(
        command.stdout.contains("PYTORCH_ENABLE_MPS_FALLBACK=1"),
        "{}",
        command.stdout
    );
}

/// Ctrl-C to plasma reaches the trainer's whole process group (the trainer
/// runs in its own group, so the terminal's SIGINT would not), and nothing
/// of the run is left behind or installed.
#[test]
fn ctrl_c_stops_the_whole_training_group() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    sb.spec(&spec("dataset/train/spyke", ""));
    let pids = sb.path("pids");
    let child = sb
        .command(&["apply", "--yes"])
        .env("STANDIN_STEP_SECONDS", "1")
        .env("STANDIN_PID_FILE", &pids)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !pids.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the trainer never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("training stopped: apply was interrupted"),
        "{text}"
    );
    let pids: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids {
        assert!(!alive(pid), "process {pid} of the run is still alive");
    }
    assert!(!installed(&sb).exists());
}

/// A NaN loss stops the run; fp16 on the CPU and a tokenizer that cannot be
/// fetched offline are explained with what to change.
#[test]
fn nan_loss_fp16_on_cpu_and_an_offline_tokenizer_are_explained() {
    let sb = Sandbox::new();
    fixture(&sb, "dataset/train/spyke");
    sb.spec(&spec("dataset/train/spyke", ""));
    let apply = run_with(
        &sb,
        &["apply", "--yes"],
        &[
            ("STANDIN_NAN_AT_STEP", "5"),
            ("STANDIN_STEP_SECONDS", "0.2"),
        ],
    );
    apply.code(1);
    let text = format!("{}{}", apply.stdout, apply.stderr);
    assert!(
        text.contains("training stopped: the loss became NaN at step 5"),
        "{text}"
    );
    assert!(!installed(&sb).exists());

    let apply = run_with(&sb, &["apply", "--yes"], &[("HF_HUB_OFFLINE", "1")]);
    apply.code(1);
    let text = format!("{}{}", apply.stdout, apply.stderr);
    assert!(text.contains("could not load the CLIP tokenizer"), "{text}");
    assert!(text.contains("tokenizer-cache"), "{text}");

    sb.spec(
        &spec("dataset/train/spyke", "")
            .replace("mixed-precision \"no\"", "mixed-precision \"fp16\""),
    );
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let text = format!("{}{}", apply.stdout, apply.stderr);
    assert!(
        text.contains("fp16 mixed precision failed on the CPU"),
        "{text}"
    );
    assert!(
        text.contains("mixed-precision \\\"no\\\"") || text.contains("mixed-precision \"no\""),
        "{text}"
    );
}
