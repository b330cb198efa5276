//! The one trait every resource kind implements, and the registry of kinds.
//!
//! A kind implements [`Kind`] with its own typed observation; the engine sees
//! every kind through the object-safe [`Resource`], which the blanket impl
//! below provides by boxing the observation.

use std::any::Any;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::hashcache::HashCache;
use crate::lint::{Lint, LintContext};
use crate::plan::Diff;
use crate::spec::reader::NodeReader;
use crate::spec::{Address, Spec};
use crate::state::ResourceState;

pub mod benchmark;
pub mod custom_node;
pub mod file;
pub mod link;
pub mod lora;
pub mod model;
pub mod repo;
pub mod service;
pub mod structured;
pub mod venv;

/// Values a resource publishes into state after apply (commits, digests, results).
pub type Outputs = Map<String, Value>;

/// An error from observing or applying one resource, worded for the user.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ResourceError {
    pub message: String,
    /// A line telling the user what to do about it.
    pub help: Option<String>,
    /// Outputs to keep in state although the apply failed: what a failed
    /// run measured (a benchmark over budget). The state entry is marked
    /// `failed`, so the next plan still plans the resource.
    pub record: Option<Outputs>,
}

impl ResourceError {
    pub fn new(message: impl Into<String>) -> Self {
        ResourceError {
            message: message.into(),
            help: None,
            record: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Asks apply to record `outputs` in state with the failure.
    pub fn record(mut self, outputs: Outputs) -> Self {
        self.record = Some(outputs);
        self
    }

    /// An I/O failure on a path, phrased as what plasma was doing.
    pub fn io(doing: &str, path: &Path, err: std::io::Error) -> Self {
        ResourceError::new(format!("{doing} {}: {err}", path.display()))
    }
}

/// What observation may consult: the spec, the previous apply's record, the
/// hash cache and the flags of the run.
pub struct ObserveContext<'a> {
    pub spec: &'a Spec,
    pub address: &'a Address,
    pub prior: Option<&'a ResourceState>,
    pub hashes: &'a HashCache,
    /// `--refresh`: observation may use the network to look for upstream changes.
    pub refresh: bool,
    /// `--verify`: re-check content that is otherwise trusted from a cache.
    pub verify: bool,
}

impl ObserveContext<'_> {
    /// Another resource of the spec, for kinds that build on one (a custom
    /// node on its ComfyUI repo and venv): downcast with `as_any`.
    pub fn resource(&self, address: &Address) -> Option<&dyn Resource> {
        self.spec.get(address).map(|d| d.resource.as_ref())
    }
}

/// What apply may use besides the observation.
pub struct ApplyContext<'a> {
    pub spec: &'a Spec,
    pub address: &'a Address,
    pub prior: Option<&'a ResourceState>,
    pub hashes: &'a HashCache,
    /// Where subprocess output goes (`.plasma/logs/`).
    pub log_dir: &'a Path,
    /// Progress bars for long work (downloads, installs); drawn on a terminal only.
    pub bars: &'a indicatif::MultiProgress,
}

impl ApplyContext<'_> {
    /// This resource's log file, `.plasma/logs/<address>.log`.
    pub fn log_file(&self) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.address))
    }

    pub fn resource(&self, address: &Address) -> Option<&dyn Resource> {
        self.spec.get(address).map(|d| d.resource.as_ref())
    }
}

/// A resource kind with a typed observation.
#[async_trait]
pub trait Kind: Send + Sync + 'static {
    /// What observation found; serialised for `show`, plans and fingerprints.
    type Observed: Serialize + Send + Sync + 'static;

    /// The kind's name as written in `plasma.kdl` (`file`, `repo`, …).
    const KIND: &'static str;

    /// The desired attributes, recorded in state as what was applied.
    /// Must never contain a secret.
    fn desired(&self) -> Value;

    /// Paths this resource owns on the machine.
    fn owned_paths(&self) -> Vec<PathBuf>;

    /// Reads the live machine. Read-only, and cheap when the machine is converged.
    async fn observe(&self, cx: &ObserveContext<'_>) -> Result<Self::Observed, ResourceError>;

    /// Desired against observed, attribute by attribute, with a reason.
    fn diff(&self, observed: &Self::Observed, prior: Option<&ResourceState>) -> Diff;

    /// Makes the machine match. Idempotent; never leaves a half-written result.
    async fn apply(
        &self,
        observed: &Self::Observed,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError>;

    /// Outputs of a converged resource, from its observation.
    fn outputs(&self, observed: &Self::Observed) -> Outputs;

    /// Domain rules for this resource.
    fn lint(&self, _cx: &LintContext<'_>) -> Vec<Lint> {
        Vec::new()
    }

    /// The kind's own view of itself under `plasma show`, printed after what
    /// was observed and desired: a LoRA's loss table and chart, a
    /// benchmark's history. `recorded` is what the last apply recorded
    /// (`None` before any). `Some` takes the place of the generic dump of
    /// the recorded outputs; `None` (the default) keeps that dump.
    fn show(&self, _recorded: Option<&Outputs>) -> Option<String> {
        None
    }

    /// Called once after the whole spec is loaded, for kinds that take
    /// something from the resources they reference (a custom node's folder
    /// lies inside its ComfyUI repo).
    fn resolve(&mut self, _others: &Others<'_>) {}

    /// Resources this one depends on without naming them, found at
    /// `resolve` (a ComfyUI service on the custom nodes of its clone).
    fn implied_dependencies(&self) -> Vec<Address> {
        Vec::new()
    }

    /// The plan's say on a resource whose dependencies (direct or not)
    /// `changed` in this plan: a kind that must react (a service restarts to
    /// load them) returns its diff adjusted. Addresses are `kind.name`.
    fn dependencies_changed(&self, diff: Diff, _changed: &[String]) -> Diff {
        diff
    }
}

/// The other resources of a spec, as seen from one being resolved.
pub struct Others<'a> {
    pub resources: Vec<(&'a Address, &'a dyn Resource)>,
}

impl Others<'_> {
    /// The resource at `address`, as its concrete kind.
    pub fn get<K: 'static>(&self, address: &Address) -> Option<&K> {
        self.resources
            .iter()
            .find(|(a, _)| *a == address)
            .and_then(|(_, r)| r.as_any().downcast_ref::<K>())
    }
}

/// An observation with its type erased, plus what the engine needs of it.
pub struct Observation {
    value: Box<dyn Any + Send + Sync>,
    pub json: Value,
    /// A digest of the observation: a saved plan is stale when it changes.
    pub fingerprint: String,
}

impl Observation {
    /// The kind's own observation (`K::Observed`), when it is a `T`.
    pub fn value<T: 'static>(&self) -> Option<&T> {
        self.value.downcast_ref::<T>()
    }
}

/// The object-safe face of every kind.
#[async_trait]
pub trait Resource: Send + Sync {
    fn kind(&self) -> &'static str;
    fn desired(&self) -> Value;
    fn owned_paths(&self) -> Vec<PathBuf>;
    async fn observe(&self, cx: &ObserveContext<'_>) -> Result<Observation, ResourceError>;
    fn diff(&self, observed: &Observation, prior: Option<&ResourceState>) -> Diff;
    async fn apply(
        &self,
        observed: &Observation,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError>;
    fn outputs(&self, observed: &Observation) -> Outputs;
    fn lint(&self, cx: &LintContext<'_>) -> Vec<Lint>;
    fn resolve(&mut self, others: &Others<'_>);
    fn implied_dependencies(&self) -> Vec<Address>;
    fn dependencies_changed(&self, diff: Diff, changed: &[String]) -> Diff;
    fn show(&self, recorded: Option<&Outputs>) -> Option<String>;
    fn as_any(&self) -> &dyn Any;
    /// For the lock, which gives each kind its entry at load.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

#[async_trait]
impl<K: Kind> Resource for K {
    fn kind(&self) -> &'static str {
        K::KIND
    }

    fn desired(&self) -> Value {
        Kind::desired(self)
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        Kind::owned_paths(self)
    }

    async fn observe(&self, cx: &ObserveContext<'_>) -> Result<Observation, ResourceError> {
        let observed = Kind::observe(self, cx).await?;
        let json = serde_json::to_value(&observed)
            .map_err(|e| ResourceError::new(format!("cannot record the observation: {e}")))?;
        let fingerprint = blake3::hash(json.to_string().as_bytes())
            .to_hex()
            .to_string();
        Ok(Observation {
            value: Box::new(observed),
            json,
            fingerprint,
        })
    }

    fn diff(&self, observed: &Observation, prior: Option<&ResourceState>) -> Diff {
        Kind::diff(self, typed::<K>(observed), prior)
    }

    async fn apply(
        &self,
        observed: &Observation,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        Kind::apply(self, typed::<K>(observed), cx).await
    }

    fn outputs(&self, observed: &Observation) -> Outputs {
        Kind::outputs(self, typed::<K>(observed))
    }

    fn lint(&self, cx: &LintContext<'_>) -> Vec<Lint> {
        Kind::lint(self, cx)
    }

    fn resolve(&mut self, others: &Others<'_>) {
        Kind::resolve(self, others)
    }

    fn implied_dependencies(&self) -> Vec<Address> {
        Kind::implied_dependencies(self)
    }

    fn dependencies_changed(&self, diff: Diff, changed: &[String]) -> Diff {
        Kind::dependencies_changed(self, diff, changed)
    }

    fn show(&self, recorded: Option<&Outputs>) -> Option<String> {
        Kind::show(self, recorded)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn typed<K: Kind>(observation: &Observation) -> &K::Observed {
    observation
        .value
        .downcast_ref::<K::Observed>()
        .expect("an observation is only ever passed back to the resource that made it")
}

/// The names of every kind, for "did you mean".
pub const KINDS: &[&str] = &[
    file::File::KIND,
    link::Link::KIND,
    repo::Repo::KIND,
    model::Model::KIND,
    venv::Venv::KIND,
    custom_node::CustomNode::KIND,
    service::Service::KIND,
    benchmark::Benchmark::KIND,
    lora::Lora::KIND,
];

/// What [`prune_forgotten`] would do for this resource, for the plan
/// (`stop the service plasma started`); `None` when it does nothing.
pub fn prune_work(entry: &ResourceState) -> Option<&'static str> {
    match entry.kind.as_str() {
        service::Service::KIND if entry.outputs.contains_key("record") => {
            Some("stop the service plasma started and remove its unit")
        }
        _ => None,
    }
}

/// Work a kind does when `apply --prune` drops one of its resources, before
/// its files are deleted (a service is stopped and unloaded).
pub async fn prune_forgotten(entry: &ResourceState) -> Result<(), ResourceError> {
    match entry.kind.as_str() {
        service::Service::KIND => service::prune(entry).await,
        _ => Ok(()),
    }
}

/// Parses a resource node of the given kind; `None` when its fields had errors
/// (already reported through the reader) or the kind is unknown.
pub fn parse(kind: &str, reader: &NodeReader<'_, '_>) -> Option<Box<dyn Resource>> {
    match kind {
        file::File::KIND => file::File::parse(reader).map(|r| Box::new(r) as Box<dyn Resource>),
        link::Link::KIND => link::Link::parse(reader).map(|r| Box::new(r) as Box<dyn Resource>),
        venv::Venv::KIND => venv::Venv::parse(reader).map(|r| Box::new(r) as Box<dyn Resource>),
        repo::Repo::KIND => repo::Repo::parse(reader).map(|r| Box::new(r) as Box<dyn Resource>),
        model::Model::KIND => model::Model::parse(reader).map(|r| Box::new(r) as Box<dyn Resource>),
        custom_node::CustomNode::KIND => {
            custom_node::CustomNode::parse(reader).map(|r| Box::new(r) as Box<dyn Resource>)
        }
        service::Service::KIND => {
            service::Service::parse(reader).map(|r| Box::new(r) as Box<dyn Resource>)
        }
        benchmark::Benchmark::KIND => {
            benchmark::Benchmark::parse(reader).map(|r| Box::new(r) as Box<dyn Resource>)
        }
        lora::Lora::KIND => lora::Lora::parse(reader).map(|r| Box::new(r) as Box<dyn Resource>),
        _ => None,
    }
}
