//! Step 7, apply: walk the DAG, up to `--parallelism` resources at once. A
//! failure skips its dependents and lets independent branches finish; every
//! changed resource is observed again to prove it converged.
//!
//! State never loses what plasma created: before anything is created, one
//! state write records an intent for every resource the plan creates (its
//! paths, `created`, `pending`). A kill at any point after that leaves a
//! record the next run completes; a resource that was never started gets its
//! previous record back when apply ends. Finished resources are written as
//! they finish (at most every 250 ms, and always at the end): losing one of
//! those writes loses only outputs, which the next run observes again.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::engine::Loaded;
use crate::fsutil;
use crate::plan::{Action, Plan};
use crate::resource::{ApplyContext, Observation, ObserveContext, ResourceError};
use crate::state::{ResourceState, State, StateError};

/// State is written at most this often while resources finish (and always at the end).
const STATE_WRITE_INTERVAL: Duration = Duration::from_millis(250);

pub struct ApplyOptions {
    pub parallelism: usize,
    /// Plan removed resources that plasma created as deletes (`--prune`).
    /// apply itself follows the plan: it deletes exactly the plan's deletes.
    pub prune: bool,
}

/// How one resource's apply ended.
#[derive(Debug)]
pub enum Outcome {
    Applied {
        action: Action,
        seconds: f64,
    },
    Failed(ResourceError),
    /// Not attempted because a dependency failed (named) or apply was interrupted.
    Skipped(String),
}

pub struct Report {
    pub outcomes: Vec<(String, Outcome)>,
    pub interrupted: bool,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .count()
    }
}

/// Receives progress as the walk goes.
pub trait Progress: Sync {
    fn started(&self, address: &str, action: Action);
    fn finished(&self, address: &str, outcome: &Outcome);
    fn interrupted(&self);
}

/// Set by the first Ctrl-C: finish what runs, start nothing new.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

type Task<'a> =
    Pin<Box<dyn Future<Output = (usize, Result<(ResourceState, f64), ResourceError>)> + Send + 'a>>;

/// Applies `plan` using fresh `observations` (index-aligned with the spec).
pub async fn run(
    loaded: &Loaded,
    plan: &Plan,
    observations: &[Option<Observation>],
    state: &mut State,
    options: &ApplyOptions,
    progress: &dyn Progress,
) -> Result<Report, StateError> {
    let spec = &loaded.spec;
    if let Some(stopped) = crate::child::record_in(&loaded.state_file.dir()) {
        eprintln!("plasma: {stopped}");
    }
    let log_dir = loaded.state_file.dir().join("logs");
    let n = spec.resources.len();
    let action_of = |i: usize| {
        plan.get(&spec.resources[i].address.to_string())
            .map_or(Action::NoOp, |c| c.diff.action)
    };

    let mut remaining_deps: Vec<usize> =
        (0..n).map(|i| loaded.graph.dependencies(i).len()).collect();
    let mut blocked: Vec<Option<String>> = vec![None; n];
    let mut ready: Vec<usize> = Vec::new();
    let mut outcomes = Vec::new();
    let mut last_write = Instant::now();
    let mut dirty = false;

    let finish = |i: usize,
                  ready: &mut Vec<usize>,
                  remaining: &mut Vec<usize>,
                  blocked: &mut Vec<Option<String>>,
                  failed_because: Option<String>| {
        for dependent in loaded.graph.dependents(i) {
            if let Some(reason) = &failed_because {
                blocked[dependent].get_or_insert_with(|| reason.clone());
            }
            remaining[dependent] -= 1;
            if remaining[dependent] == 0 {
                ready.push(dependent);
            }
        }
    };

    for &i in &loaded.graph.order {
        if remaining_deps[i] == 0 {
            ready.push(i);
        }
    }

    // Intent before action: one write before anything is created.
    let mut intents = record_intents(loaded, plan, observations, state);
    if !intents.is_empty() {
        loaded.state_file.save(state)?;
    }
    // A state write that failed while walking: no new work starts after it.
    let mut state_error: Option<StateError> = None;

    let bars = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
    let mut running: FuturesUnordered<Task<'_>> = FuturesUnordered::new();
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    loop {
        // Launch what is ready, up to the parallelism limit.
        while running.len() < options.parallelism.max(1) {
            let Some(i) = ready.pop() else { break };
            let address = spec.resources[i].address.to_string();
            let action = action_of(i);
            let observation = observations[i].as_ref();
            let has_work = action.is_change() && observation.is_some();
            // Skipped: a dependency failed, Ctrl-C stopped new work, or the
            // state could not be written.
            let skip = blocked[i].clone().or_else(|| {
                if !has_work {
                    None
                } else if INTERRUPTED.load(Ordering::SeqCst) {
                    Some("apply was interrupted".to_string())
                } else if state_error.is_some() {
                    Some("the state could not be written".to_string())
                } else {
                    None
                }
            });
            if let Some(reason) = skip {
                let outcome = Outcome::Skipped(reason.clone());
                progress.finished(&address, &outcome);
                outcomes.push((address, outcome));
                finish(
                    i,
                    &mut ready,
                    &mut remaining_deps,
                    &mut blocked,
                    Some(reason),
                );
                continue;
            }
            let Some(observation) = observation.filter(|_| has_work) else {
                // Nothing to do here: it counts as done.
                finish(i, &mut ready, &mut remaining_deps, &mut blocked, None);
                continue;
            };
            progress.started(&address, action);
            // The record from before this apply (not this apply's intent).
            let prior = match intents.get_mut(&i) {
                Some(intent) => {
                    intent.started = true;
                    intent.prior.clone()
                }
                None => state.resources.get(&address).cloned(),
            };
            let log_dir = log_dir.clone();
            let declared = &spec.resources[i];
            let bars = &bars;
            running.push(Box::pin(async move {
                let started = Instant::now();
                let cx = ApplyContext {
                    spec,
                    address: &declared.address,
                    prior: prior.as_ref(),
                    hashes: &loaded.hashes,
                    log_dir: &log_dir,
                    bars,
                };
                let result = apply_one(declared, observation, action, &cx).await;
                (
                    i,
                    result.map(|entry| (entry, started.elapsed().as_secs_f64())),
                )
            }));
        }
        if running.is_empty() {
            break;
        }
        let next = tokio::select! {
            next = running.next() => next,
            _ = &mut ctrl_c, if !INTERRUPTED.load(Ordering::SeqCst) => {
                INTERRUPTED.store(true, Ordering::SeqCst);
                progress.interrupted();
                // A second Ctrl-C exits at once.
                tokio::spawn(async {
                    let _ = tokio::signal::ctrl_c().await;
                    crate::child::terminate_all(crate::child::TERMINATE_GRACE);
                    std::process::exit(130);
                });
                continue;
            }
        };
        let Some((i, result)) = next else { break };
        let declared = &spec.resources[i];
        let address = declared.address.to_string();
        let outcome = match result {
            Ok((entry, seconds)) => {
                let action = action_of(i);
                state.resources.insert(address.clone(), entry);
                dirty = true;
                finish(i, &mut ready, &mut remaining_deps, &mut blocked, None);
                Outcome::Applied { action, seconds }
            }
            Err(mut e) => {
                if let Some(outputs) = e.record.take() {
                    // What the failed apply measured is kept, marked failed.
                    let created = action_of(i) == Action::Create
                        || state.resources.get(&address).is_some_and(|p| p.created);
                    state
                        .resources
                        .insert(address.clone(), failed_entry(declared, outputs, created));
                    dirty = true;
                    if let Some(intent) = intents.get_mut(&i) {
                        intent.started = true;
                    }
                } else if let Some(intent) = intents.get_mut(&i)
                    && !declared
                        .resource
                        .owned_paths()
                        .iter()
                        .any(|p| std::fs::symlink_metadata(p).is_ok())
                {
                    intent.started = false;
                }
                finish(
                    i,
                    &mut ready,
                    &mut remaining_deps,
                    &mut blocked,
                    Some(format!("{address} failed")),
                );
                Outcome::Failed(e)
            }
        };
        if let Some(intent) = intents.remove(&i).filter(|intent| !intent.started) {
            restore_prior(state, &address, intent.prior);
            dirty = true;
        }
        progress.finished(&address, &outcome);
        outcomes.push((address, outcome));
        if dirty && state_error.is_none() && last_write.elapsed() >= STATE_WRITE_INTERVAL {
            match loaded.state_file.save(state) {
                Ok(()) => dirty = false,
                Err(e) => state_error = Some(e),
            }
            last_write = Instant::now();
        }
    }
    // Intents of resources never started: their previous records come back.
    for (i, intent) in intents {
        if !intent.started {
            restore_prior(state, &spec.resources[i].address.to_string(), intent.prior);
            dirty = true;
        }
    }

    // Resources in state but no longer in the spec.
    for change in plan
        .changes
        .iter()
        .filter(|c| matches!(c.diff.action, Action::Forget | Action::Delete))
    {
        if INTERRUPTED.load(Ordering::SeqCst) || state_error.is_some() {
            break;
        }
        let Some(entry) = state.resources.get(&change.address).cloned() else {
            continue;
        };
        let action = change.diff.action;
        progress.started(&change.address, action);
        let deleted = if action == Action::Delete {
            // Kinds with their own record of what they made (a started
            // service) undo it first; then the files the plan lists go.
            match crate::resource::prune_forgotten(&entry).await {
                Ok(()) => delete(&entry, change),
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        let outcome = match deleted {
            Ok(()) => {
                state.resources.remove(&change.address);
                dirty = true;
                Outcome::Applied {
                    action,
                    seconds: 0.0,
                }
            }
            Err(e) => Outcome::Failed(e),
        };
        progress.finished(&change.address, &outcome);
        outcomes.push((change.address.clone(), outcome));
    }

    loaded.hashes.save();
    dirty |= record_converged(loaded, plan, observations, state);
    if dirty || state_error.is_some() {
        // A failed write is tried once more; if it fails again, that is the error.
        loaded.state_file.save(state)?;
    }
    if let Some(e) = state_error {
        return Err(e);
    }
    Ok(Report {
        outcomes,
        interrupted: INTERRUPTED.load(Ordering::SeqCst),
    })
}

/// Records resources that already match the spec but are missing from state
/// or recorded with other desired attributes, so that drift and `--prune`
/// know them. A resource adopted this way was not created by plasma.
/// Returns whether the state changed.
pub fn record_converged(
    loaded: &Loaded,
    plan: &Plan,
    observations: &[Option<Observation>],
    state: &mut State,
) -> bool {
    let mut changed = false;
    for (declared, observation) in loaded.spec.resources.iter().zip(observations) {
        let address = declared.address.to_string();
        let (Some(observation), Some(planned)) = (observation, plan.get(&address)) else {
            continue;
        };
        if planned.diff.action != Action::NoOp {
            continue;
        }
        let desired = declared.resource.desired();
        let digest = digest_of(&desired);
        let prior = state.resources.get(&address);
        if prior.is_some_and(|p| p.desired_digest == digest && !p.pending) {
            continue;
        }
        let entry = ResourceState {
            kind: declared.address.kind.clone(),
            desired_digest: digest,
            desired,
            outputs: declared.resource.outputs(observation),
            owned_paths: declared.resource.owned_paths(),
            created: prior.is_some_and(|p| p.created),
            pending: false,
            failed: false,
            applied_at: fsutil::unix_now(),
        };
        state.resources.insert(address, entry);
        changed = true;
    }
    changed
}

/// Apply one resource, then observe it again, as the next plan will see it
/// (with what this apply records): it must now match the spec. Returns the
/// resource's new state entry.
async fn apply_one(
    declared: &crate::spec::Declared,
    observation: &Observation,
    action: Action,
    cx: &ApplyContext<'_>,
) -> Result<ResourceState, ResourceError> {
    let resource = &declared.resource;
    let outputs = resource.apply(observation, cx).await?;
    let desired = resource.desired();
    let mut entry = ResourceState {
        kind: declared.address.kind.clone(),
        desired_digest: digest_of(&desired),
        desired,
        outputs,
        owned_paths: resource.owned_paths(),
        created: cx.prior.is_some_and(|p| p.created) || action == Action::Create,
        pending: false,
        failed: false,
        applied_at: fsutil::unix_now(),
    };
    let after = resource
        .observe(&ObserveContext {
            spec: cx.spec,
            address: cx.address,
            prior: Some(&entry),
            hashes: cx.hashes,
            refresh: false,
            verify: false,
        })
        .await?;
    let diff = resource.diff(&after, Some(&entry));
    if diff.action.is_change() {
        return Err(ResourceError::new(format!(
            "applied, but it still differs from the spec: {}",
            diff.reason
        )));
    }
    entry.outputs.extend(resource.outputs(&after));
    Ok(entry)
}

/// The state entry of a resource whose apply failed but recorded
/// `outputs`: `failed`, so that no plan takes it for converged.
fn failed_entry(
    declared: &crate::spec::Declared,
    outputs: crate::resource::Outputs,
    created: bool,
) -> ResourceState {
    let desired = declared.resource.desired();
    ResourceState {
        kind: declared.address.kind.clone(),
        desired_digest: digest_of(&desired),
        desired,
        outputs,
        owned_paths: declared.resource.owned_paths(),
        created,
        pending: false,
        failed: true,
        applied_at: fsutil::unix_now(),
    }
}

/// An intent recorded for one resource, and the record it replaced.
struct Intent {
    prior: Option<ResourceState>,
    /// Whether its apply started (and may have created something).
    started: bool,
}

/// Records in `state`, for every resource the plan creates, that plasma is
/// about to create it: its paths, `created` and `pending`. Returns the
/// records they replaced, by resource index.
fn record_intents(
    loaded: &Loaded,
    plan: &Plan,
    observations: &[Option<Observation>],
    state: &mut State,
) -> HashMap<usize, Intent> {
    let created: std::collections::HashSet<&str> = plan
        .changes
        .iter()
        .filter(|c| c.diff.action == Action::Create)
        .map(|c| c.address.as_str())
        .collect();
    let mut intents = HashMap::new();
    if created.is_empty() {
        return intents;
    }
    for (i, declared) in loaded.spec.resources.iter().enumerate() {
        let address = declared.address.to_string();
        if observations[i].is_none() || !created.contains(address.as_str()) {
            continue;
        }
        let prior = state.resources.get(&address).cloned();
        let entry = ResourceState {
            owned_paths: declared.resource.owned_paths(),
            created: true,
            pending: true,
            ..prior.clone().unwrap_or_else(|| ResourceState {
                kind: declared.address.kind.clone(),
                desired_digest: String::new(),
                desired: serde_json::Value::Null,
                outputs: Default::default(),
                owned_paths: Vec::new(),
                created: true,
                pending: true,
                failed: false,
                applied_at: fsutil::unix_now(),
            })
        };
        state.resources.insert(address, entry);
        intents.insert(
            i,
            Intent {
                prior,
                started: false,
            },
        );
    }
    intents
}

/// Puts back the record an intent replaced (or none).
fn restore_prior(state: &mut State, address: &str, prior: Option<ResourceState>) {
    match prior {
        Some(entry) => {
            state.resources.insert(address.to_string(), entry);
        }
        None => {
            state.resources.remove(address);
        }
    }
}

/// A planned delete: the paths the plan lists (owned paths, and staging
/// files a killed write left beside them), if plasma created them.
fn delete(entry: &ResourceState, change: &crate::plan::PlannedChange) -> Result<(), ResourceError> {
    if !entry.created {
        return Ok(());
    }
    let planned = change
        .diff
        .attributes
        .iter()
        .filter(|a| a.name == "path")
        .filter_map(|a| a.old.as_deref());
    for path in planned {
        let path = std::path::Path::new(path);
        let owned = entry
            .owned_paths
            .iter()
            .any(|p| p == path || fsutil::staging_path(p) == path);
        if !owned {
            continue;
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ResourceError::io("cannot inspect", path, e)),
        };
        let result = if meta.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        result.map_err(|e| ResourceError::io("cannot delete", path, e))?;
    }
    Ok(())
}

pub fn digest_of(value: &serde_json::Value) -> String {
    blake3::hash(value.to_string().as_bytes())
        .to_hex()
        .to_string()
}
