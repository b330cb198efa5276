//! The real ComfyUI v0.3.27 and kohya sd-scripts 3e6935a **as plasma builds
//! them**, for tests that need the real programs (the benchmark suite, LoRA
//! training, a LoRA tried in ComfyUI).
//!
//! It runs when `PLASMA_REAL_STACK=<folder>` names a folder made by
//! `shared/real-stack/setup.sh` (its `git/ComfyUI.git`, `wheels/` and
//! `test-sd15.safetensors`); [`get`] prints `skipped: …` and returns `None`
//! otherwise.
//!
//! Built once per test run (and kept between runs): plasma's own `apply`, in
//! a work folder of its own, clones ComfyUI (`repo`), builds its venv with
//! `venv` from the clone's `requirements.txt` and the stack's `wheels/` as
//! `find-links` (torch 2.5.1, torchvision 0.20.1, torchaudio 2.5.1), pinned
//! as `setup.sh` pins them (comfyui-frontend-package 1.14.6 because 1.14.5
//! left PyPI, transformers 4.50.3, plus `requests`, which ComfyUI imports and
//! transformers 5 no longer brings), and copies the test checkpoint once
//! (`model` with a `source`). The next run applies the same spec again: a
//! no-op when nothing changed.
//!
//! A test then declares the same `venv` and `model` in its own spec with
//! [`RealStack::venv_kdl`] and [`RealStack::checkpoint_kdl`] (plasma finds
//! them converged and adopts them without installing or copying anything),
//! clones its own ComfyUI with [`RealStack::repo_kdl`] (so that custom nodes
//! and models it adds stay its own), and links the checkpoint into that clone
//! with [`RealStack::checkpoint_link_kdl`]. [`RealStack::kohya_kdl`] does the
//! same for sd-scripts' clone and venv (built on first use, by
//! [`RealStack::kohya`]). Tests take [`serial`] first: they share the built
//! folders and the machine's cores.
//!
//! The work folder is `$PLASMA_REAL_STACK_WORK`, else
//! `<target>/tmp/realstack` (about 8 GB: the venv is 5.7 GB, torch's CUDA
//! libraries coming with its wheels and running on the CPU, and the
//! checkpoint's copy 2.1 GB).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// The built stack.
pub struct RealStack {
    /// The folder `setup.sh` built (`PLASMA_REAL_STACK`).
    pub stack: PathBuf,
    /// The fixture's own folder: `plasma.kdl`, `ComfyUI/`, `venv/`, `models/`.
    pub work: PathBuf,
    /// The Python 3.11 interpreter the venv was made from.
    pub python: PathBuf,
    /// The checkpoint's sha256 (hex), as the fixture's `model` pins it.
    pub checkpoint_sha256: String,
    /// Seconds the fixture's `plasma apply` took in this test run.
    pub apply_seconds: f64,
}

static BUILT: OnceLock<Option<RealStack>> = OnceLock::new();

/// Whether sd-scripts' clone and venv are built (see [`RealStack::kohya`]).
static KOHYA_BUILT: OnceLock<()> = OnceLock::new();

static SERIAL: Mutex<()> = Mutex::new(());

/// Held by a real-stack test while it runs: one at a time, as they share the
/// built clones and venvs and the machine's cores.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The stack, built on first use in this test run; `None` (after printing
/// why) when `PLASMA_REAL_STACK` is unset or incomplete. Panics, with
/// plasma's output, when plasma fails to build it.
pub fn get() -> Option<&'static RealStack> {
    match BUILT.get_or_init(build) {
        Some(stack) => Some(stack),
        None => {
            println!(
                "skipped: PLASMA_REAL_STACK is not set to a folder built by shared/real-stack/setup.sh \
                 (with git/ComfyUI.git, wheels/, test-sd15.safetensors)"
            );
            None
        }
    }
}

/// A file's sha256 (hex), by coreutils' `sha256sum`.
fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn python311() -> Option<PathBuf> {
    let out = Command::new("python3.11")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn build() -> Option<RealStack> {
    let stack = PathBuf::from(std::env::var_os("PLASMA_REAL_STACK")?);
    for needed in ["git/ComfyUI.git", "wheels", "test-sd15.safetensors"] {
        if !stack.join(needed).exists() {
            println!("skipped: {} has no {needed}", stack.display());
            return None;
        }
    }
    let python = python311()?;
    let work = std::env::var_os("PLASMA_REAL_STACK_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("realstack"));
    std::fs::create_dir_all(work.join("home")).unwrap();
    let started = Instant::now();
    let checkpoint_sha256 = sha256_of(&stack.join("test-sd15.safetensors"));
    println!(
        "realstack: hashed the checkpoint in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut built = RealStack {
        stack,
        work,
        python,
        checkpoint_sha256,
        apply_seconds: 0.0,
    };
    std::fs::write(built.work.join("extra-requirements.txt"), "requests\n").unwrap();
    let spec = format!(
        "{}\n{}\n{}",
        built.repo_kdl("comfyui", &built.work.join("ComfyUI")),
        built.venv_kdl("comfyui", "repo.comfyui"),
        built.checkpoint_kdl("sd15"),
    );
    built.apply_seconds = apply_fixture(&built.work, &spec);
    Some(built)
}

/// Writes `spec` to `dir/plasma.kdl` and applies it with plasma; returns the
/// seconds it took. Panics, with plasma's output, when the apply fails.
fn apply_fixture(dir: &Path, spec: &str) -> f64 {
    std::fs::create_dir_all(dir.join("home")).unwrap();
    std::fs::write(dir.join("plasma.kdl"), spec).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_plasma"))
        .args(["apply", "--yes"])
        .current_dir(dir)
        .env("HOME", dir.join("home"))
        .env("NO_COLOR", "1")
        .env_remove("PLASMA_LOG")
        .env_remove("PLASMA_PLATFORM")
        .output()
        .expect("plasma runs");
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "realstack: `plasma apply` of {} took {seconds:.1} s, exit {:?}\n{stdout}",
        dir.display(),
        out.status.code()
    );
    assert!(
        out.status.success(),
        "plasma could not build the real stack:\n{stdout}\n{stderr}"
    );
    seconds
}

impl RealStack {
    /// The fixture's venv (`<work>/venv`).
    pub fn venv(&self) -> PathBuf {
        self.work.join("venv")
    }

    /// The fixture's copy of the test checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.work.join("models/checkpoints/test-sd15.safetensors")
    }

    /// `repo NAME`: a clone of the stack's ComfyUI at v0.3.27 at `path`.
    pub fn repo_kdl(&self, name: &str, path: &Path) -> String {
        format!(
            "repo {name} {{\n    url \"file://{}\"\n    rev \"v0.3.27\"\n    path \"{}\"\n}}\n",
            self.stack.join("git/ComfyUI.git").display(),
            path.display()
        )
    }

    /// `venv NAME`: the fixture's venv, declared exactly as the fixture
    /// built it (its requirements are the fixture clone's), so that a test's
    /// spec finds it converged; applied after `after` (addresses, or "").
    pub fn venv_kdl(&self, name: &str, after: &str) -> String {
        let after = if after.is_empty() {
            String::new()
        } else {
            format!("    depends-on {after}\n")
        };
        format!(
            r#"venv {name} {{
    path "{venv}"
    python "{python}"
    package torch "2.5.1"
    package torchvision "0.20.1"
    package torchaudio "2.5.1"
    // 1.14.5, which v0.3.27 pins, left PyPI; transformers 5 refuses torch < 2.6
    package comfyui-frontend-package "1.14.6"
    package transformers "4.50.3"
    requirements "{work}/ComfyUI/requirements.txt" "{work}/extra-requirements.txt"
    find-links "{wheels}"
{after}}}
"#,
            venv = self.venv().display(),
            python = self.python.display(),
            work = self.work.display(),
            wheels = self.stack.join("wheels").display(),
        )
    }

    /// `service NAME`: the real ComfyUI from `repo.REPO` and `venv.VENV` on
    /// the CPU, listening on 127.0.0.1:`port`, as a detached process.
    pub fn comfyui_service_kdl(&self, name: &str, repo: &str, venv: &str, port: u16) -> String {
        format!(
            r#"
service {name} {{
    comfyui repo.{repo}
    venv venv.{venv}
    args "--cpu" "--listen" "127.0.0.1" "--port" "{port}" "--disable-auto-launch"
    env {{ PYTORCH_ENABLE_MPS_FALLBACK "1"; }}
    manager "process"
    health {{ timeout "300s"; }}
}}
"#
        )
    }

    /// Builds sd-scripts' clone and venv under the work folder the first
    /// time a test asks (about 5 minutes), with plasma's own `apply` of
    /// [`RealStack::kohya_kdl`]; `None` when the stack has no sd-scripts.
    pub fn kohya(&self) -> Option<&Self> {
        for needed in [
            "git/sd-scripts.git",
            "kohya-cache/openai_clip-vit-large-patch14",
            "train/dataset/img/10_spyke",
            "train/dataset/reg/1_person",
        ] {
            if !self.stack.join(needed).exists() {
                println!("skipped: {} has no {needed}", self.stack.display());
                return None;
            }
        }
        KOHYA_BUILT.get_or_init(|| {
            apply_fixture(&self.work.join("kohya-fixture"), &self.kohya_kdl());
        });
        Some(self)
    }

    /// `repo sd-scripts` (the stack's sd-scripts at 3e6935a) and `venv kohya`
    /// (its `requirements.txt`, which ends in `-e .`, with torch 2.5.1 and
    /// torchvision 0.20.1 from the stack's `wheels/`), at the work folder's
    /// `sd-scripts/` and `kohya-venv/`.
    pub fn kohya_kdl(&self) -> String {
        format!(
            r#"
repo sd-scripts {{
    url "file://{stack}/git/sd-scripts.git"
    rev "3e6935a"
    path "{work}/sd-scripts"
}}

venv kohya {{
    path "{work}/kohya-venv"
    python "{python}"
    package torch "2.5.1"
    package torchvision "0.20.1"
    requirements "{work}/sd-scripts/requirements.txt"
    find-links "{stack}/wheels"
    depends-on repo.sd-scripts
}}
"#,
            stack = self.stack.display(),
            work = self.work.display(),
            python = self.python.display(),
        )
    }

    /// `model NAME`: the fixture's copy of the test checkpoint, pinned.
    pub fn checkpoint_kdl(&self, name: &str) -> String {
        format!(
            "model {name} {{\n    source \"{}\"\n    path \"{}\"\n    sha256 \"{}\"\n    arch \"sd15\"\n}}\n",
            self.stack.join("test-sd15.safetensors").display(),
            self.checkpoint().display(),
            self.checkpoint_sha256
        )
    }

    /// `link NAME`: the checkpoint in `clone`'s `models/checkpoints/`,
    /// applied after `after` (addresses such as `repo.comfyui model.sd15`).
    pub fn checkpoint_link_kdl(&self, name: &str, clone: &Path, after: &str) -> String {
        format!(
            "link {name} {{\n    path \"{}/models/checkpoints/test-sd15.safetensors\"\n    target \"{}\"\n    depends-on {after}\n}}\n",
            clone.display(),
            self.checkpoint().display()
        )
    }
}
