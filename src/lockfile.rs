//! The lock and the engine: each resource held to its `plasma.lock` entry
//! at load, what `--locked` refuses, the plan's lock section, and the lock
//! as it stands after an apply. The file format is [`crate::lock`].

use crate::lock::{Lock, LockChange, LockedCheckout, LockedModel, LockedSubmodule, changes};
use crate::plan::{Action, Plan};
use crate::resource::custom_node::CustomNode;
use crate::resource::model::Model;
use crate::resource::repo::{Checkout, Repo};
use crate::resource::venv::{Venv, VenvObserved};
use crate::resource::{Observation, Outputs, Resource};
use crate::spec::{Declared, Spec};
use crate::state::State;

/// The platform a spec is for, `os-arch`: its `platform` line where it
/// says, else this machine (`PLASMA_PLATFORM` included).
pub fn platform_key(spec: &Spec) -> String {
    let facts = crate::platform::current();
    let os = spec
        .platform
        .os
        .as_ref()
        .map_or(facts.os.clone(), |o| o.value.clone());
    let arch = spec
        .platform
        .arch
        .as_ref()
        .map_or(facts.arch.clone(), |a| a.value.clone());
    format!("{os}-{arch}")
}

/// uv's `--python-platform` target for an `os-arch` key (uv 0.13's names).
pub fn uv_platform(key: &str) -> Option<&'static str> {
    Some(match key {
        "macos-aarch64" => "aarch64-apple-darwin",
        "macos-x86_64" => "x86_64-apple-darwin",
        "linux-x86_64" => "x86_64-unknown-linux-gnu",
        "linux-aarch64" => "aarch64-unknown-linux-gnu",
        "windows-x86_64" => "x86_64-pc-windows-msvc",
        "windows-aarch64" => "aarch64-pc-windows-msvc",
        _ => return None,
    })
}

/// A checkout's view of a lock entry: held when it names the spec's url
/// (redacted) and rev.
fn checkout_commit(checkout: &Checkout, entry: Option<&LockedCheckout>) -> Option<String> {
    entry
        .filter(|e| e.url == checkout.url.redacted() && e.rev == checkout.rev.value)
        .map(|e| e.commit.clone())
}

/// Gives each resource its entry of `lock`, except those in `except`
/// (addresses `plasma lock --upgrade` resolves anew). `require_locked`
/// (`--locked`) makes a venv whose entry turns out stale at apply fail.
pub fn hold(spec: &mut Spec, lock: &Lock, except: &[String], require_locked: bool) {
    let platform = platform_key(spec);
    for declared in &mut spec.resources {
        let address = declared.address.to_string();
        // `--upgrade` with no address: every entry is resolved anew.
        let skip = except.iter().any(|a| a == &address || a == "*");
        let name = declared.address.name.clone();
        let any = declared.resource.as_any_mut();
        if let Some(venv) = any.downcast_mut::<Venv>() {
            venv.lock_platform = platform.clone();
            venv.require_locked = require_locked;
            venv.locked = lock.venv.get(&name).filter(|_| !skip).cloned();
        } else if let Some(repo) = any.downcast_mut::<Repo>() {
            repo.checkout.locked =
                checkout_commit(&repo.checkout, lock.repo.get(&name)).filter(|_| !skip);
        } else if let Some(node) = any.downcast_mut::<CustomNode>() {
            node.checkout.locked =
                checkout_commit(&node.checkout, lock.custom_node.get(&name)).filter(|_| !skip);
        } else if let Some(model) = any.downcast_mut::<Model>() {
            model.locked_sha256 = lock
                .model
                .get(&name)
                .filter(|_| !skip && model.sha256.is_none())
                .filter(|e| e.url.as_deref() == Some(model.origin().as_str()))
                .and_then(|e| crate::hashing::Sha256Digest::parse(&e.sha256).ok());
        }
    }
}

/// Whether a kind is recorded in the lock.
fn lockable(resource: &dyn Resource) -> bool {
    matches!(resource.kind(), "venv" | "repo" | "custom-node" | "model")
}

/// What keeps `lock` from matching the spec, one line per resource
/// (`venv.comfyui: its requirements, pins, …changed`); empty when every
/// lockable resource has a matching entry. A venv whose requirements files
/// are not there yet (cloned by this apply) is checked again at its apply.
pub fn out_of_date(spec: &Spec, lock: &Lock) -> Vec<String> {
    let mut out = Vec::new();
    for declared in &spec.resources {
        let address = declared.address.to_string();
        let name = &declared.address.name;
        let any = declared.resource.as_any();
        if let Some(venv) = any.downcast_ref::<Venv>() {
            match (lock.venv.get(name), venv.lock_inputs()) {
                (None, _) => out.push(format!("{address}: not in the lock")),
                (Some(e), Some(inputs)) if e.inputs != inputs => out.push(format!(
                    "{address}: its requirements files, pins, indexes, Python or platform changed since it was locked"
                )),
                _ => {}
            }
        } else if let Some(checkout) = checkout_of(declared.resource.as_ref()) {
            let table = match declared.resource.kind() {
                "repo" => &lock.repo,
                _ => &lock.custom_node,
            };
            match table.get(name) {
                None => out.push(format!("{address}: not in the lock")),
                Some(e) if e.rev != checkout.rev.value => out.push(format!(
                    "{address}: rev is {} in the spec, {} in the lock",
                    checkout.rev.value, e.rev
                )),
                Some(e) if e.url != checkout.url.redacted() => {
                    out.push(format!("{address}: url changed since it was locked"))
                }
                _ => {}
            }
        } else if let Some(model) = any.downcast_ref::<Model>() {
            match (lock.model.get(name), &model.sha256) {
                (None, _) => out.push(format!("{address}: not in the lock")),
                (Some(e), Some(sha)) if e.sha256 != sha.value.to_hex() => {
                    out.push(format!("{address}: sha256 changed since it was locked"))
                }
                (Some(e), _) if e.url.as_deref() != Some(model.origin().as_str()) => {
                    out.push(format!("{address}: url changed since it was locked"))
                }
                _ => {}
            }
        }
    }
    out
}

fn checkout_of(resource: &dyn Resource) -> Option<&Checkout> {
    let any = resource.as_any();
    any.downcast_ref::<Repo>()
        .map(|r| &r.checkout)
        .or_else(|| any.downcast_ref::<CustomNode>().map(|n| &n.checkout))
}

/// A checkout's entry from its published outputs (commit, submodules).
fn checkout_entry(checkout: &Checkout, outputs: &Outputs) -> Option<LockedCheckout> {
    let commit = outputs.get("commit")?.as_str()?.to_string();
    let submodules = outputs
        .get("submodules")
        .and_then(|s| s.as_object())
        .map(|subs| {
            subs.iter()
                .filter_map(|(path, at)| {
                    let at = at.as_str()?;
                    (at.len() >= 40 && at.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
                        LockedSubmodule {
                            path: path.clone(),
                            commit: at.to_string(),
                        }
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(LockedCheckout {
        url: checkout.url.redacted(),
        rev: checkout.rev.value.clone(),
        commit,
        submodules,
    })
}

/// Puts one resource's entry, as it stands now, into `lock`. `outputs`
/// are its published outputs (state after apply, or the observation's);
/// a venv reads its own record.
fn record_entry(lock: &mut Lock, old: &Lock, declared: &Declared, outputs: &Outputs) {
    let name = declared.address.name.clone();
    let any = declared.resource.as_any();
    if let Some(venv) = any.downcast_ref::<Venv>() {
        if let Some(entry) = venv.lock_entry(old.venv.get(&name)) {
            lock.venv.insert(name, entry);
        }
    } else if let Some(checkout) = checkout_of(declared.resource.as_ref()) {
        if let Some(entry) = checkout_entry(checkout, outputs) {
            match declared.resource.kind() {
                "repo" => lock.repo.insert(name, entry),
                _ => lock.custom_node.insert(name, entry),
            };
        }
    } else if let Some(model) = any.downcast_ref::<Model>()
        && let Some(sha) = outputs.get("sha256").and_then(|s| s.as_str())
    {
        lock.model.insert(
            name,
            LockedModel {
                url: Some(model.origin()),
                sha256: sha.to_string(),
            },
        );
    }
}

/// Drops entries of resources that left the spec.
fn retain_declared(lock: &mut Lock, spec: &Spec) {
    let has = |kind: &str, name: &String| {
        spec.resources
            .iter()
            .any(|d| d.address.kind == kind && &d.address.name == name)
    };
    lock.venv.retain(|n, _| has("venv", n));
    lock.repo.retain(|n, _| has("repo", n));
    lock.custom_node.retain(|n, _| has("custom-node", n));
    lock.model.retain(|n, _| has("model", n));
}

/// The lock after an apply: every lockable resource that `done` says this
/// run applied or found converged (by address) gets its entry as it stands,
/// from state's outputs; the others (failed, skipped, not targeted) keep
/// theirs.
pub fn after_apply(spec: &Spec, state: &State, old: &Lock, done: &dyn Fn(&str) -> bool) -> Lock {
    let mut lock = old.clone();
    lock.version = crate::lock::LOCK_VERSION;
    for declared in &spec.resources {
        let address = declared.address.to_string();
        if !lockable(declared.resource.as_ref()) || !done(&address) {
            continue;
        }
        let Some(entry) = state.resources.get(&address) else {
            continue;
        };
        let current = crate::apply::digest_of(&declared.resource.desired());
        if entry.pending || entry.desired_digest != current {
            continue;
        }
        record_entry(&mut lock, old, declared, &entry.outputs);
    }
    retain_declared(&mut lock, spec);
    lock
}

/// The plan's lock section: what apply will change in the lock. A
/// resource already converged contributes its entry as observed; one held
/// to its entry changes nothing; one that apply resolves is a line saying
/// so (its set is known only after the install, or after `plasma lock`).
/// Reads files only; a held, converged venv reads nothing more.
pub fn planned(
    spec: &Spec,
    plan: &Plan,
    observations: &[Option<&Observation>],
    old: &Lock,
) -> Vec<LockChange> {
    let mut predicted = old.clone();
    let mut pending = Vec::new();
    for (declared, observation) in spec.resources.iter().zip(observations) {
        let resource = declared.resource.as_ref();
        if !lockable(resource) {
            continue;
        }
        let address = declared.address.to_string();
        let Some(change) = plan.get(&address) else {
            continue;
        };
        let any = resource.as_any();
        let held = match any.downcast_ref::<Venv>() {
            // Observation worked it out from the files it read.
            Some(venv) => match observation.and_then(|o| o.value::<VenvObserved>()) {
                Some(observed) => observed.held,
                None => venv.held().is_some(),
            },
            None => checkout_of(resource).is_some_and(|c| c.locked.is_some()),
        };
        if change.diff.action == Action::NoOp {
            if held {
                continue;
            }
            if let Some(observation) = observation {
                record_entry(
                    &mut predicted,
                    old,
                    declared,
                    &resource.outputs(observation),
                );
            }
        } else if !held {
            let listed = match declared.address.kind.as_str() {
                "venv" => old.venv.contains_key(&declared.address.name),
                "repo" => old.repo.contains_key(&declared.address.name),
                "custom-node" => old.custom_node.contains_key(&declared.address.name),
                _ => old.model.contains_key(&declared.address.name),
            };
            pending.push(LockChange {
                address,
                symbol: if listed { "~" } else { "+" }.into(),
                detail: "resolved by apply".into(),
            });
        }
    }
    retain_declared(&mut predicted, spec);
    let mut lines = changes(old, &predicted);
    lines.extend(pending);
    lines
}

/// What `plasma lock` did for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Its entry still matches the spec and was not asked to move.
    Kept,
    /// Resolved now (uv, `git ls-remote`, the spec's digest).
    Resolved,
    /// Left out, with why (a model with no digest yet).
    Skipped(String),
}

/// Resolves every lockable resource of `spec` into `lock` without
/// applying: venvs with `uv pip compile` for the spec's platform and
/// Python (so a Linux box can lock a Mac's spec), repos and custom nodes
/// with `git ls-remote`, models from the spec's sha256 (or the digest
/// recorded at download). Entries still held (see [`hold`]) are kept.
/// Needs uv on PATH for venvs that must be resolved, and the network (or
/// the indexes and remotes) the spec names. Blocking.
pub fn resolve(
    spec: &Spec,
    state: Option<&State>,
    lock: &mut Lock,
) -> Result<Vec<(String, Resolution)>, String> {
    let mut report = Vec::new();
    for declared in &spec.resources {
        let address = declared.address.to_string();
        let name = declared.address.name.clone();
        let any = declared.resource.as_any();
        let outcome = if let Some(venv) = any.downcast_ref::<Venv>() {
            if venv.held().is_some() {
                Resolution::Kept
            } else {
                let entry = resolve_venv(venv).map_err(|e| format!("{address}: {e}"))?;
                lock.venv.insert(name, entry);
                Resolution::Resolved
            }
        } else if let Some(checkout) = checkout_of(declared.resource.as_ref()) {
            if checkout.locked.is_some() {
                Resolution::Kept
            } else {
                let prior = state.and_then(|s| s.resources.get(&address));
                let entry = resolve_checkout(checkout, prior.map(|p| &p.outputs))
                    .map_err(|e| format!("{address}: {e}"))?;
                match declared.resource.kind() {
                    "repo" => lock.repo.insert(name, entry),
                    _ => lock.custom_node.insert(name, entry),
                };
                Resolution::Resolved
            }
        } else if let Some(model) = any.downcast_ref::<Model>() {
            let recorded = state
                .and_then(|s| s.resources.get(&address))
                .filter(|p| p.desired.get("path") == Some(&serde_json::json!(model.path.value)))
                .and_then(|p| p.outputs.get("sha256"))
                .and_then(|s| s.as_str())
                .map(str::to_string);
            let sha = model
                .sha256
                .as_ref()
                .map(|s| s.value.to_hex())
                .or_else(|| model.locked_sha256.map(|s| s.to_hex()))
                .or(recorded);
            match sha {
                Some(sha256) => {
                    let entry = LockedModel {
                        url: Some(model.origin()),
                        sha256,
                    };
                    let same = lock.model.get(&name) == Some(&entry);
                    lock.model.insert(name, entry);
                    if same {
                        Resolution::Kept
                    } else {
                        Resolution::Resolved
                    }
                }
                None => Resolution::Skipped(
                    "no sha256 in the spec and none recorded yet: apply downloads it and locks its digest".into(),
                ),
            }
        } else {
            continue;
        };
        report.push((address, outcome));
    }
    retain_declared(lock, spec);
    Ok(report)
}

/// A venv's entry resolved by uv for the spec's platform and Python.
fn resolve_venv(venv: &Venv) -> Result<crate::lock::LockedVenv, String> {
    use crate::python::{Installer, InstallerChoice, ResolveTarget, find_interpreter};
    use crate::resource::venv::PythonRequest;
    let uv = match Installer::detect(InstallerChoice::Uv) {
        Ok(Installer::Uv { uv }) => uv,
        _ => {
            return Err(
                "`plasma lock` resolves venvs with uv, which is not on PATH; install uv, \
                        or run `plasma apply`, which locks what it installs"
                    .into(),
            );
        }
    };
    let inputs = venv.lock_inputs().ok_or_else(|| {
        let missing: Vec<String> = venv
            .requirements
            .iter()
            .filter(|f| !f.value.is_file())
            .map(|f| f.value.display().to_string())
            .collect();
        format!(
            "cannot read its requirements file {} yet; apply what provides it first (`plasma apply --target repo.NAME`), then lock",
            missing.join(", ")
        )
    })?;
    let python = match &venv.python.value {
        PythonRequest::Version(v) => v.clone(),
        PythonRequest::Path(p) => {
            let found = find_interpreter(&p.display().to_string()).map_err(|e| e.to_string())?;
            format!("{}.{}", found.version.major, found.version.minor)
        }
    };
    let platform = venv.lock_platform.clone();
    let target = ResolveTarget {
        python_version: python.clone(),
        python_platform: uv_platform(&platform)
            .ok_or_else(|| format!("uv cannot resolve for the platform {platform}"))?
            .to_string(),
    };
    let packages = crate::python::resolve_with_uv(
        &uv,
        &venv.package_spec(),
        &venv.requirement_paths(),
        &[],
        &target,
    )
    .map_err(|e| e.to_string())?;
    Ok(crate::lock::LockedVenv {
        inputs,
        python,
        platform,
        resolver: "uv pip compile".into(),
        packages: packages
            .into_iter()
            .map(|p| crate::lock::LockedPackage {
                name: p.name,
                version: p.version,
                source: p.source,
                direct: p.direct,
                hashes: p.hashes,
            })
            .collect(),
    })
}

/// A checkout's entry: the commit its rev names upstream now (one `git
/// ls-remote`); a commit-hash rev is itself. Submodule commits come from
/// the last apply when it checked out that same commit.
fn resolve_checkout(
    checkout: &Checkout,
    prior: Option<&Outputs>,
) -> Result<LockedCheckout, String> {
    let rev = &checkout.rev.value;
    let resolved = checkout
        .git()
        .resolve_remote(&checkout.git_url(), rev)
        .map_err(|e| crate::resource::repo::git_error(e).message)?;
    let commit = match resolved {
        Some(r) => r.commit,
        None if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) => rev.clone(),
        None => {
            return Err(format!(
                "{rev} is not a tag or branch of {} and not a full commit hash",
                checkout.url.redacted()
            ));
        }
    };
    let submodules = prior
        .and_then(|outputs| checkout_entry(checkout, outputs))
        .filter(|e| e.commit == commit)
        .map(|e| e.submodules)
        .unwrap_or_default();
    Ok(LockedCheckout {
        url: checkout.url.redacted(),
        rev: rev.clone(),
        commit,
        submodules,
    })
}
