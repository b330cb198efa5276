//! Steps 1 to 5 glued together: load, resolve, lint, observe, diff.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use futures_util::stream;

use crate::diagnostic::{Problem, SpecErrors};
use crate::graph::Graph;
use crate::hashcache::HashCache;
use crate::lint;
use crate::lock::Lock;
use crate::plan::{
    Action, Diff, PLAN_FORMAT, Plan, PlanBasis, PlanError, PlanWarning, PlannedChange,
};
use crate::resource::{Observation, ObserveContext, ResourceError};
use crate::spec::{self, Spec};
use crate::state::{State, StateFile};

/// How many resources are observed at once.
const OBSERVE_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Load(#[from] spec::LoadError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("{0}")]
    Other(String),
}

impl From<SpecErrors> for EngineError {
    fn from(e: SpecErrors) -> Self {
        EngineError::Load(spec::LoadError::Spec(e))
    }
}

/// A spec that loaded, resolved and passed its lints (warnings kept).
pub struct Loaded {
    pub spec: Spec,
    pub graph: Graph,
    pub warnings: Vec<Problem>,
    pub state_file: StateFile,
    /// File digests by file identity (`.plasma/hash-cache.json`).
    pub hashes: HashCache,
    /// `plasma.lock` beside the spec.
    pub lock_path: PathBuf,
    /// Its content; `None` when there is none yet.
    pub lock: Option<Lock>,
}

/// Load, resolve and lint. Lint errors fail like load errors; warnings are returned.
pub fn load(spec_path: &Path, state_path: Option<&Path>) -> Result<Loaded, EngineError> {
    let spec = spec::load_file(spec_path)?;
    let graph = Graph::build(&spec).map_err(|cycle| {
        // A cycle does not hide the lints: every mistake shows in one run.
        let mut problems = vec![cycle];
        problems.extend(lint::run(&spec));
        SpecErrors { problems }
    })?;
    let findings = lint::run(&spec);
    let (errors, warnings): (Vec<Problem>, Vec<Problem>) =
        findings.into_iter().partition(Problem::is_error);
    if !errors.is_empty() {
        let mut problems = errors;
        problems.extend(warnings);
        return Err(SpecErrors { problems }.into());
    }
    let state_file = match state_path {
        Some(p) => StateFile {
            path: std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
        },
        None => StateFile::beside(&spec.dir),
    };
    let hashes = HashCache::load(&state_file.dir().join("hash-cache.json"));
    let lock_path = crate::lock::path_beside(&spec.dir);
    let lock = Lock::read(&lock_path)?;
    let mut spec = spec;
    crate::lockfile::hold(
        &mut spec,
        lock.as_ref().unwrap_or(&Lock::default()),
        &[],
        false,
    );
    Ok(Loaded {
        spec,
        graph,
        warnings,
        state_file,
        hashes,
        lock_path,
        lock,
    })
}

/// Flags that change how observation behaves.
#[derive(Debug, Clone, Default)]
pub struct ObserveOptions {
    /// Addresses allowed to use the network to look upstream (`--refresh`).
    pub refresh: Vec<String>,
    pub refresh_all: bool,
    pub verify: bool,
}

/// Observes the selected resources concurrently; `None` for the ones not selected.
pub async fn observe(
    loaded: &Loaded,
    state: Option<&State>,
    options: &ObserveOptions,
    selected: &[bool],
) -> Vec<Option<Result<Observation, ResourceError>>> {
    let spec = &loaded.spec;
    let tasks = spec.resources.iter().enumerate().map(|(i, declared)| {
        let address = declared.address.to_string();
        let prior = state.and_then(|s| s.resources.get(&address));
        let refresh = options.refresh_all || options.refresh.contains(&address);
        let verify = options.verify;
        async move {
            if !selected[i] {
                return None;
            }
            let cx = ObserveContext {
                spec,
                address: &declared.address,
                prior,
                hashes: &loaded.hashes,
                refresh,
                verify,
            };
            Some(declared.resource.observe(&cx).await)
        }
    });
    let observations = stream::iter(tasks)
        .buffered(OBSERVE_CONCURRENCY)
        .collect()
        .await;
    // Digests learnt while observing are kept, so they are computed once.
    loaded.hashes.save();
    observations
}

/// Selection of resources: everything, or `--target`s with what they depend on.
pub fn select(loaded: &Loaded, targets: &[String]) -> Result<Vec<bool>, EngineError> {
    if targets.is_empty() {
        return Ok(vec![true; loaded.spec.resources.len()]);
    }
    let mut indices = Vec::new();
    for target in targets {
        let found = loaded
            .spec
            .resources
            .iter()
            .position(|r| r.address.to_string() == *target);
        match found {
            Some(i) => indices.push(i),
            None => {
                let known: Vec<String> = loaded
                    .spec
                    .resources
                    .iter()
                    .map(|r| r.address.to_string())
                    .collect();
                let hint =
                    crate::diagnostic::suggest_address(target, known.iter().map(String::as_str))
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                return Err(EngineError::Other(format!(
                    "no resource `{target}` in the spec{hint}"
                )));
            }
        }
    }
    Ok(loaded.graph.with_dependencies(&indices))
}

/// Desired against observed for every selected resource, in the spec's
/// order, plus "forget" for resources left in state but gone from the spec
/// ("delete", with the paths, when `prune` will delete their files).
pub fn make_plan(
    loaded: &Loaded,
    observations: &[Option<Result<Observation, ResourceError>>],
    state: Option<&State>,
    prune: bool,
) -> Plan {
    let spec = &loaded.spec;
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    // Resources this plan changes, for kinds that react to a changed
    // dependency: so diffs are made in graph order (dependencies first), and
    // listed in the spec's order below.
    let mut changing = vec![false; spec.resources.len()];
    for &i in &loaded.graph.order {
        let declared = &spec.resources[i];
        let address = declared.address.to_string();
        let Some(result) = &observations[i] else {
            continue;
        };
        match result {
            Ok(observation) => {
                let prior = state.and_then(|s| s.resources.get(&address));
                let mut diff = declared.resource.diff(observation, prior);
                if prior.is_some_and(|p| p.failed) && !diff.action.is_change() {
                    // A failure recorded in state is never converged.
                    diff = Diff::new(Action::Update, "its last apply failed");
                }
                if changing.contains(&true) {
                    let changed: Vec<String> = loaded
                        .graph
                        .with_dependencies(&[i])
                        .iter()
                        .enumerate()
                        .filter(|&(d, &dep)| dep && d != i && changing[d])
                        .map(|(d, _)| spec.resources[d].address.to_string())
                        .collect();
                    diff = declared.resource.dependencies_changed(diff, &changed);
                }
                changing[i] = diff.action.is_change();
                changes.push(PlannedChange {
                    address,
                    kind: declared.address.kind.clone(),
                    diff,
                    fingerprint: observation.fingerprint.clone(),
                    depends_on: loaded
                        .graph
                        .dependencies(i)
                        .into_iter()
                        .map(|d| spec.resources[d].address.to_string())
                        .collect(),
                });
            }
            Err(e) => errors.push(PlanError {
                address,
                message: e.message.clone(),
                help: e.help.clone(),
            }),
        }
    }
    let spec_index: std::collections::HashMap<String, usize> = spec
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| (r.address.to_string(), i))
        .collect();
    changes.sort_by_key(|c: &PlannedChange| spec_index.get(&c.address).copied());
    let all_selected = observations.iter().all(Option::is_some);
    if let Some(state) = state.filter(|_| all_selected) {
        let declared: std::collections::HashSet<String> = spec
            .resources
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        for (address, entry) in &state.resources {
            let in_spec = declared.contains(address);
            if !in_spec {
                let mut diff = Diff::new(Action::Forget, "no longer in the spec");
                // What `--prune` would delete: the owned paths still there,
                // and the staging files a killed write left beside them.
                let present: Vec<String> = entry
                    .owned_paths
                    .iter()
                    .flat_map(|p| [p.clone(), crate::fsutil::staging_path(p)])
                    .filter(|p| std::fs::symlink_metadata(p).is_ok())
                    .map(|p| p.display().to_string())
                    .collect();
                let work = crate::resource::prune_work(entry);
                if prune && let Some(work) = work {
                    diff = Diff::new(
                        Action::Delete,
                        "no longer in the spec; --prune undoes what plasma made",
                    )
                    .attribute("prune", Some(work.to_string()), None);
                    if entry.created {
                        for path in &present {
                            diff = diff.attribute("path", Some(path.clone()), None);
                        }
                    }
                } else if !entry.created || present.is_empty() {
                    if prune && !present.is_empty() {
                        diff.warnings.push(format!(
                            "plasma did not create it, so --prune keeps {}",
                            present.join(", ")
                        ));
                    }
                } else if prune {
                    diff = Diff::new(
                        Action::Delete,
                        "no longer in the spec; plasma created it and --prune deletes it",
                    );
                    for path in present {
                        diff = diff.attribute("path", Some(path), None);
                    }
                } else {
                    diff.warnings.push(format!(
                        "its files are kept; `apply --prune` would delete {}",
                        present.join(", ")
                    ));
                }
                changes.push(PlannedChange {
                    address: address.clone(),
                    kind: entry.kind.clone(),
                    diff,
                    fingerprint: entry.desired_digest.clone(),
                    depends_on: Vec::new(),
                });
            }
        }
    }
    let warnings = loaded
        .warnings
        .iter()
        .map(|w| PlanWarning {
            code: w.code.clone(),
            message: w.message.clone(),
            address: None,
        })
        .collect();
    Plan {
        format_version: PLAN_FORMAT,
        plasma_version: env!("CARGO_PKG_VERSION").to_string(),
        basis: PlanBasis {
            spec: spec.path.display().to_string(),
            spec_digest: spec.digest(),
            state_lineage: state.map(|s| s.lineage.clone()),
            state_serial: state.map_or(0, |s| s.serial),
        },
        summary: Plan::summarise(&changes),
        lock: Vec::new(),
        changes,
        errors,
        warnings,
    }
    .with_lock(loaded, observations)
}

impl Plan {
    /// Adds the lock section: what apply changes in `plasma.lock`.
    fn with_lock(
        mut self,
        loaded: &Loaded,
        observations: &[Option<Result<Observation, ResourceError>>],
    ) -> Plan {
        let observed: Vec<Option<&Observation>> = observations
            .iter()
            .map(|o| o.as_ref().and_then(|r| r.as_ref().ok()))
            .collect();
        let old = loaded.lock.clone().unwrap_or_default();
        self.lock = crate::lockfile::planned(&loaded.spec, &self, &observed, &old);
        self
    }
}

/// Kinds whose apply is a run (`apply --rerun` may force one).
pub const RUN_KINDS: &[&str] = &["benchmark", "lora"];

/// `apply --rerun ADDRESS`: plans a run of `address` even when nothing it
/// depends on changed. Only run kinds can be forced.
pub fn force_run(loaded: &Loaded, plan: &mut Plan, address: &str) -> Result<(), EngineError> {
    select(loaded, &[address.to_string()])?;
    let change = plan
        .changes
        .iter_mut()
        .find(|c| c.address == address)
        .ok_or_else(|| EngineError::Other(format!("`{address}` could not be observed")))?;
    if !RUN_KINDS.contains(&change.kind.as_str()) {
        return Err(EngineError::Other(format!(
            "--rerun runs a benchmark or a training run; `{address}` is a {} (to make plasma redo it, change it or remove it from the state with `plasma state rm`)",
            change.kind
        )));
    }
    if change.diff.action == Action::NoOp {
        change.diff = Diff::new(Action::Run, "forced by --rerun");
    }
    plan.summary = Plan::summarise(&plan.changes);
    Ok(())
}

/// Where the spec is: `-f PATH`, else `plasma.kdl` here or in a folder above.
pub fn locate_spec(explicit: Option<&Path>) -> Result<PathBuf, EngineError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| EngineError::Other(format!("cannot read the current folder: {e}")))?;
    spec::find(&cwd).ok_or_else(|| {
        EngineError::Other(format!(
            "no {} in {} or any folder above it (run `plasma init` to write one, or pass -f PATH)",
            spec::SPEC_FILE,
            cwd.display()
        ))
    })
}
