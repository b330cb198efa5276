//! Step 7, apply: walk the DAG, up to `--parallelism` resources at once. A
//! failure skips its dependents and lets independent branches finish; every
//! changed resource is observed again to prove it converged; state is written
//! as resources finish, so an interrupted apply keeps what it did.

use std::collections::HashSet;
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
    /// Delete the files of forgotten resources that plasma created.
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
            // Skipped: a dependency failed, or Ctrl-C stopped new work.
            let skip = blocked[i].clone().or_else(|| {
                (has_work && INTERRUPTED.load(Ordering::SeqCst))
                    .then(|| "apply was interrupted".to_string())
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
            let prior = state.resources.get(&address).cloned();
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
            Err(e) => {
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
        progress.finished(&address, &outcome);
        outcomes.push((address, outcome));
        if dirty && last_write.elapsed() >= STATE_WRITE_INTERVAL {
            loaded.state_file.save(state)?;
            last_write = Instant::now();
            dirty = false;
        }
    }

    // Resources in state but no longer in the spec.
    let mut forgotten = HashSet::new();
    for change in plan
        .changes
        .iter()
        .filter(|c| c.diff.action == Action::Forget)
    {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        let Some(entry) = state.resources.get(&change.address).cloned() else {
            continue;
        };
        progress.started(&change.address, Action::Forget);
        let outcome = match prune(&entry, options.prune) {
            Ok(()) => {
                state.resources.remove(&change.address);
                forgotten.insert(change.address.clone());
                dirty = true;
                Outcome::Applied {
                    action: Action::Forget,
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
    if dirty {
        loaded.state_file.save(state)?;
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
        if prior.is_some_and(|p| p.desired_digest == digest) {
            continue;
        }
        let entry = ResourceState {
            kind: declared.address.kind.clone(),
            desired_digest: digest,
            desired,
            outputs: declared.resource.outputs(observation),
            owned_paths: declared.resource.owned_paths(),
            created: prior.is_some_and(|p| p.created),
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

/// `--prune` deletes what plasma created; without it nothing is touched.
fn prune(entry: &ResourceState, prune: bool) -> Result<(), ResourceError> {
    if !prune || !entry.created {
        return Ok(());
    }
    for path in &entry.owned_paths {
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
