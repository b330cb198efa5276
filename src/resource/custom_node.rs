//! `custom-node`: a ComfyUI custom node. It is a git clone at
//! `<comfyui path>/custom_nodes/<dir>` (the `repo` kind's checkout), plus its
//! `requirements.txt` installed into ComfyUI's venv through the venv's own
//! mechanism, so nothing a node asks for can move a package the venv pins
//! (the commonest way these environments break: a node's requirements
//! replacing torch). Optionally its `install.py` runs with the venv's Python.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};

use super::repo::{Checkout, CheckoutObserved, Repo};
use super::venv::{Standing, Venv};
use super::{ApplyContext, Kind, ObserveContext, Others, Outputs, ResourceError};
use crate::lint::{Lint, LintContext};
use crate::plan::{Action, Diff};
use crate::spec::reader::NodeReader;
use crate::spec::{Reference, Spanned};
use crate::state::ResourceState;

/// The node's requirements file, relative to its folder.
const REQUIREMENTS: &str = "requirements.txt";
/// The node's own installer script, relative to its folder.
const INSTALL_SCRIPT: &str = "install.py";
/// Output keys recording what the last apply installed and ran.
const INSTALLED_REQUIREMENTS: &str = "requirements_blake3";
const SCRIPT_RAN_AT: &str = "install_script_commit";

#[derive(Debug)]
pub struct CustomNode {
    pub comfyui: Reference,
    pub venv_ref: Reference,
    pub dir: Spanned<String>,
    /// The clone; its path is set once the ComfyUI repo is known (`resolve`).
    pub checkout: Checkout,
    /// The venv the requirements go into, taken from the spec at `resolve`.
    pub venv: Option<Venv>,
    pub install_script: bool,
}

#[derive(Debug, Serialize)]
pub struct CustomNodeObserved {
    #[serde(flatten)]
    pub checkout: CheckoutObserved,
    /// BLAKE3 of the node's requirements.txt as it is now, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirements: Option<String>,
    /// BLAKE3 of the requirements.txt the last apply installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_requirements: Option<String>,
    pub has_install_script: bool,
    /// The commit at which the last apply ran install.py.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install_script_ran_at: Option<String>,
    /// The commit checked out now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// What the venv's record says this node contributed (read from the
    /// venv's record file: a venv rebuilt or deleted by hand has lost it).
    pub in_venv: Standing,
}

impl CustomNode {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let comfyui = r.reference("comfyui", Repo::KIND);
        let venv_ref = r.reference("venv", Venv::KIND);
        let dir = r.opt_string("dir");
        let install_script = r.opt_bool("install-script");
        // The folder is known only once the ComfyUI repo is resolved.
        let checkout = Checkout::parse(r, Some(PathBuf::new()));
        let name = r.resource_name().unwrap_or_default();
        let dir = match dir {
            Some(d) if d.value.is_empty() || d.value.contains('/') || d.value.starts_with('.') => {
                r.fail(
                    crate::diagnostic::Problem::error(
                        "spec::malformed-dir",
                        format!("`{}` is not a folder name", d.value),
                    )
                    .label(d.span, "expected one folder name under custom_nodes/")
                    .help("write a plain name such as \"ComfyUI-Manager\""),
                );
                return None;
            }
            Some(d) => d,
            None => Spanned::new(name, r.name_span()),
        };
        Some(CustomNode {
            comfyui: comfyui?,
            venv_ref: venv_ref?,
            dir,
            checkout: checkout?,
            venv: None,
            install_script: install_script.is_some_and(|b| b.value),
        })
    }

    fn folder(&self) -> &Path {
        &self.checkout.path
    }

    fn venv(&self) -> Result<&Venv, ResourceError> {
        self.venv.as_ref().ok_or_else(|| {
            ResourceError::new(format!(
                "{} is not a venv of this spec",
                self.venv_ref.address
            ))
        })
    }
}

impl CustomNode {
    /// Why the node's requirements must be installed into its venv again
    /// (worded), or `None` when the venv's record holds them as they are
    /// now, includes too. Reads files only.
    fn requirements_pending(&self, observed: &CustomNodeObserved) -> Option<String> {
        observed.requirements.as_ref()?;
        let contribution = match &observed.in_venv {
            Standing::Missing => return Some("not installed (the venv is created first)".into()),
            Standing::Rebuilt => return Some("not installed (the venv is rebuilt first)".into()),
            Standing::Present(None) => return Some("not installed".into()),
            Standing::Present(Some(c)) => c,
        };
        let top = crate::python::absolute_path(&self.folder().join(REQUIREMENTS));
        if !contribution.requirements.contains_key(&top) {
            return Some("not installed".into());
        }
        let changed = contribution
            .requirements
            .iter()
            .any(|(path, digest)| file_digest(path).ok().flatten().as_ref() != Some(digest));
        changed.then(|| "changed since last install".into())
    }

    /// Whether the venv's record says the install script ran at the commit checked out now.
    fn script_ran_here(&self, observed: &CustomNodeObserved) -> bool {
        match &observed.in_venv {
            Standing::Present(Some(c)) => {
                c.script_commit.is_some() && c.script_commit == observed.head
            }
            _ => false,
        }
    }
}

fn file_digest(path: &Path) -> Result<Option<String>, ResourceError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(blake3::hash(&bytes).to_hex().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ResourceError::io("cannot read", path, e)),
    }
}

fn recorded(prior: Option<&ResourceState>, key: &str) -> Option<String> {
    prior?.outputs.get(key)?.as_str().map(str::to_string)
}

fn head_of(observed: &CheckoutObserved) -> Option<String> {
    match &observed.found {
        crate::git::RepoObservation::Repository(tree) => tree.head.clone(),
        _ => None,
    }
}

#[async_trait]
impl Kind for CustomNode {
    type Observed = CustomNodeObserved;
    const KIND: &'static str = "custom-node";

    fn desired(&self) -> Value {
        json!({
            "checkout": self.checkout.desired(),
            "comfyui": self.comfyui.address.to_string(),
            "venv": self.venv_ref.address.to_string(),
            "install_script": self.install_script,
        })
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        vec![self.folder().to_path_buf()]
    }

    fn resolve(&mut self, others: &Others<'_>) {
        if let Some(repo) = others.get::<Repo>(&self.comfyui.address) {
            self.checkout.path = repo
                .checkout
                .path
                .join("custom_nodes")
                .join(&self.dir.value);
        }
        self.venv = others.get::<Venv>(&self.venv_ref.address).cloned();
    }

    async fn observe(&self, cx: &ObserveContext<'_>) -> Result<CustomNodeObserved, ResourceError> {
        let checkout = self.checkout.observe(cx.prior, cx.refresh).await?;
        let head = head_of(&checkout);
        let in_venv = self.venv()?.standing_of(&cx.address.to_string())?;
        Ok(CustomNodeObserved {
            in_venv,
            requirements: file_digest(&self.folder().join(REQUIREMENTS))?,
            installed_requirements: recorded(cx.prior, INSTALLED_REQUIREMENTS),
            has_install_script: self.folder().join(INSTALL_SCRIPT).is_file(),
            install_script_ran_at: recorded(cx.prior, SCRIPT_RAN_AT),
            head,
            checkout,
        })
    }

    fn diff(&self, observed: &CustomNodeObserved, _prior: Option<&ResourceState>) -> Diff {
        let mut diff = self.checkout.diff(&observed.checkout);
        let venv = &self.venv_ref.address;
        if diff.action == Action::Create {
            diff = diff.attribute(
                "requirements",
                None,
                Some(format!(
                    "{REQUIREMENTS}, if the node has one, into {venv} under its pins"
                )),
            );
            if self.install_script {
                diff = diff.attribute(
                    "install.py",
                    None,
                    Some(format!("run with {venv}'s Python")),
                );
            }
            return diff;
        }
        let moving = diff.action.is_change();
        let mut reasons = Vec::new();
        let pending = self.requirements_pending(observed);
        if observed.requirements.is_some() && (moving || pending.is_some()) {
            let old = pending.unwrap_or_else(|| "at the old commit".to_string());
            reasons.push(format!("{REQUIREMENTS} {old}"));
            diff = diff.attribute(
                REQUIREMENTS,
                Some(old),
                Some(format!("installed into {venv} under its pins")),
            );
        }
        if self.install_script
            && observed.has_install_script
            && (moving || !self.script_ran_here(observed))
        {
            reasons.push(format!("{INSTALL_SCRIPT} not run at this commit"));
            diff = diff.attribute(
                INSTALL_SCRIPT,
                None,
                Some(format!("run with {venv}'s Python")),
            );
        }
        if !moving && !reasons.is_empty() {
            diff.action = Action::Update;
            diff.reason = reasons.join(", ");
        }
        diff
    }

    async fn apply(
        &self,
        observed: &CustomNodeObserved,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        let moving = self.checkout.diff(&observed.checkout).action.is_change();
        if moving {
            self.checkout
                .apply(
                    &observed.checkout,
                    cx.log_file(),
                    cx.bars,
                    cx.address.to_string(),
                )
                .await?;
        }
        // What this apply leaves installed and run; carried over when not redone.
        let mut outputs = Outputs::new();
        let folder = self.folder().to_path_buf();
        let requirements = folder.join(REQUIREMENTS);
        let owner = cx.address.to_string();
        if let Some(digest) = file_digest(&requirements)? {
            if moving || self.requirements_pending(observed).is_some() {
                let venv = self.venv()?.clone();
                let log = cx.log_file();
                let owner = owner.clone();
                let installed = tokio::task::spawn_blocking(move || {
                    venv.install_requirements_blocking(&owner, &[requirements], &log)
                })
                .await
                .map_err(|e| ResourceError::new(format!("install stopped: {e}")))??;
                for overridden in &installed.overridden {
                    let text = format!("{}: {overridden}", cx.address);
                    if cx.bars.is_hidden() {
                        println!("{text}");
                    } else {
                        let _ = cx.bars.println(text);
                    }
                }
            }
            outputs.insert(INSTALLED_REQUIREMENTS.into(), json!(digest));
        }
        if self.install_script && folder.join(INSTALL_SCRIPT).is_file() {
            let head = head_of(&self.checkout.observe(cx.prior, false).await?);
            if moving || !self.script_ran_here(observed) || observed.head != head {
                let venv = self.venv()?.clone();
                let python = crate::python::venv_python(venv.path());
                let log = cx.log_file();
                let commit = head.clone();
                let handle = tokio::runtime::Handle::current();
                // Under the venv's install lock, with what it installs recorded as this node's.
                tokio::task::spawn_blocking(move || {
                    venv.run_script_blocking(&owner, commit, &log, || {
                        handle.block_on(run_install_script(&python, &folder, &log))
                    })
                })
                .await
                .map_err(|e| ResourceError::new(format!("install script stopped: {e}")))??;
            }
            if let Some(head) = head {
                outputs.insert(SCRIPT_RAN_AT.into(), json!(head));
            }
        }
        Ok(outputs)
    }

    fn outputs(&self, observed: &CustomNodeObserved) -> Outputs {
        let mut out = self.checkout.outputs(&observed.checkout);
        out.insert("folder".into(), json!(self.folder()));
        out
    }

    fn lint(&self, cx: &LintContext<'_>) -> Vec<Lint> {
        self.checkout.lint(cx)
    }
}

/// Runs the node's `install.py` with the venv's Python in the node's folder;
/// its output goes to the log, and a failure quotes the log's tail.
async fn run_install_script(python: &Path, folder: &Path, log: &Path) -> Result<(), ResourceError> {
    let output = crate::child::output_async(
        tokio::process::Command::new(python)
            .arg(INSTALL_SCRIPT)
            .current_dir(folder)
            .env("PIP_NO_INPUT", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(std::process::Stdio::null()),
    )
    .await
    .map_err(|e| ResourceError::new(format!("cannot run {}: {e}", python.display())))?;
    let text = format!(
        "$ {} {INSTALL_SCRIPT}\n{}{}",
        python.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    crate::logfile::append(log, &text);
    if output.status.success() {
        return Ok(());
    }
    let tail: Vec<&str> = text.lines().rev().take(10).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(ResourceError::new(format!(
        "{INSTALL_SCRIPT} failed ({}):\n{}",
        output.status,
        tail.join("\n")
    ))
    .help(format!("the whole output is in {}", log.display())))
}
