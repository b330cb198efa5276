//! `benchmark`: a timed generation through a ComfyUI `service`, with a time
//! budget on the median and an expected device, as a resource: it runs when
//! what it measures changed (the workflow, a model's digest, the ComfyUI
//! commit, the custom nodes' commits, the venv's installed set, the
//! service's command), and otherwise is a no-op.
//!
//! The protocol is [`crate::comfyui`]'s. This module decides what a run is:
//! warm-up runs (the first run after start loads the model), then timed
//! runs, each with its own seed so ComfyUI's cache cannot answer without
//! running; every model name checked before submitting; results, images and
//! a history kept under `.plasma/benchmarks/NAME/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use kdl::{KdlNode, KdlValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::custom_node::CustomNode;
use super::lora::Lora;
use super::model::Model;
use super::repo::Repo;
use super::service::{Launch, Service};
use super::venv::Venv;
use super::{ApplyContext, Kind, ObserveContext, Others, Outputs, ResourceError};
use crate::comfyui::workflow::{self, EXPORT_HELP, ModelUse, Txt2Img};
use crate::comfyui::{Client, ComfyError, StepProgress, SystemStats};
use crate::diagnostic::Problem;
use crate::hashing::FileKey;
use crate::plan::{Action, Diff};
use crate::spec::reader::NodeReader;
use crate::spec::{Address, Reference, Spanned};
use crate::state::ResourceState;

/// Timed runs when the spec does not say.
const DEFAULT_RUNS: u32 = 3;
/// Warm-up runs when the spec does not say: the first run loads the model.
const DEFAULT_WARMUP: u32 = 1;
/// How long one run may take when the spec does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The devices `expect-device` knows (`/system_stats` `devices[0].type`).
const DEVICES: &[&str] = &["mps", "cuda", "cpu"];
/// The history file under the benchmark's folder.
const HISTORY: &str = "history.json";

/// Where the graph comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `workflow PATH`: an API-format JSON file.
    File(Spanned<PathBuf>),
    /// `txt2img { … }`: the standard graph; model names filled in at resolve.
    Txt2Img {
        checkpoint: Reference,
        vae: Option<Reference>,
        lora: Option<(Reference, f64)>,
        settings: Box<Txt2Img>,
    },
}

/// A `set "NODE.inputs.FIELD" VALUE` override.
#[derive(Debug, Clone)]
pub struct Override {
    pub path: Spanned<String>,
    pub value: Value,
}

/// A model resource of the spec, as the benchmark matches names against it.
#[derive(Debug, Clone)]
struct KnownModel {
    address: Address,
    path: PathBuf,
    declared_sha256: Option<String>,
}

/// What the benchmark takes from its service, repo and venv at resolve.
#[derive(Debug, Clone, Default)]
struct Surroundings {
    base_url: Option<String>,
    command: Vec<String>,
    comfyui: Option<PathBuf>,
    venv: Option<PathBuf>,
    /// Custom nodes of the same ComfyUI: folder name → folder.
    custom_nodes: BTreeMap<String, PathBuf>,
    models: Vec<KnownModel>,
}

#[derive(Debug)]
pub struct Benchmark {
    pub name: String,
    pub service: Reference,
    pub source: Source,
    pub overrides: Vec<Override>,
    pub runs: u32,
    pub warmup: u32,
    pub budget: Option<Duration>,
    pub expect_device: Option<&'static str>,
    pub timeout: Duration,
    /// `.plasma/benchmarks/NAME/` beside the spec: images and history.
    pub dir: PathBuf,
    around: Surroundings,
}

/// What a run depends on: the fingerprint, part by part, so that a plan can
/// say which part changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// BLAKE3 of the API-format graph after overrides.
    pub workflow: String,
    /// Model file name (as the graph names it) → `sha256:<hex>`, or why not known.
    pub models: BTreeMap<String, String>,
    /// The ComfyUI clone's commit.
    pub comfyui_commit: Option<String>,
    /// Custom node folder → commit.
    pub custom_nodes: BTreeMap<String, String>,
    /// The service venv's installed set: package → version.
    pub packages: BTreeMap<String, String>,
    /// The service's command line.
    pub command: Vec<String>,
}

impl Inputs {
    fn digest(&self) -> String {
        let text = serde_json::to_string(self).expect("inputs serialise");
        blake3::hash(text.as_bytes()).to_hex().to_string()
    }

    /// What changed from `old` to `self`, in a plan's words.
    fn changes_from(&self, old: &Inputs) -> Vec<(String, Option<String>, Option<String>)> {
        let mut out = Vec::new();
        if self.workflow != old.workflow {
            out.push((
                "workflow".into(),
                Some(short(&old.workflow)),
                Some(short(&self.workflow)),
            ));
        }
        map_changes("model", &old.models, &self.models, &mut out, short);
        if self.comfyui_commit != old.comfyui_commit {
            out.push((
                "ComfyUI".into(),
                old.comfyui_commit.as_deref().map(short),
                self.comfyui_commit.as_deref().map(short),
            ));
        }
        map_changes(
            "custom node",
            &old.custom_nodes,
            &self.custom_nodes,
            &mut out,
            short,
        );
        map_changes("", &old.packages, &self.packages, &mut out, |v| {
            v.to_string()
        });
        if self.command != old.command {
            out.push((
                "service command".into(),
                Some(old.command.join(" ")),
                Some(self.command.join(" ")),
            ));
        }
        out
    }
}

fn map_changes(
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    out: &mut Vec<(String, Option<String>, Option<String>)>,
    show: impl Fn(&str) -> String,
) {
    let label = |k: &str| {
        if what.is_empty() {
            k.to_string()
        } else {
            format!("{what} {k}")
        }
    };
    for (k, v) in new {
        match old.get(k) {
            Some(o) if o == v => {}
            o => out.push((label(k), o.map(|o| show(o)), Some(show(v)))),
        }
    }
    for (k, o) in old {
        if !new.contains_key(k) {
            out.push((label(k), Some(show(o)), None));
        }
    }
}

/// A digest or commit shortened for plans (`sha256:0f4774a6…`).
fn short(text: &str) -> String {
    let (prefix, rest) = text.split_once(':').unwrap_or(("", text));
    let is_hex = rest.len() >= 32 && rest.chars().all(|c| c.is_ascii_hexdigit());
    match (is_hex, prefix.is_empty()) {
        (true, true) => rest[..12].to_string(),
        (true, false) => format!("{prefix}:{}", &rest[..12]),
        _ => text.to_string(),
    }
}

/// One timed run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub it_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
}

/// One apply's result, as kept in the history and in state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Result_ {
    /// RFC 3339, UTC.
    pub date: String,
    pub passed: bool,
    /// Why it failed (over budget, wrong device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub device: String,
    pub device_name: String,
    pub comfyui_version: Option<String>,
    pub pytorch_version: Option<String>,
    pub python_version: Option<String>,
    pub runs: Vec<RunRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_seconds: Option<f64>,
    /// The saved images, relative to the benchmark's folder.
    #[serde(default)]
    pub images: Vec<String>,
    /// The digest of the inputs it ran with.
    pub fingerprint: String,
}

/// `.plasma/benchmarks/NAME/history.json`: every result, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Prompts submitted so far: added to the seed so no prompt repeats the
    /// previous one, even across applies.
    #[serde(default)]
    pub prompts_submitted: u64,
    #[serde(default)]
    pub results: Vec<Result_>,
}

impl History {
    /// Reads the history; missing is empty, unreadable is an error.
    pub fn load(dir: &Path) -> Result<History, ResourceError> {
        let path = dir.join(HISTORY);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ResourceError::new(format!(
                    "{} is not a benchmark history: {e}",
                    path.display()
                ))
                .help("move it aside; the next run starts a new history")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::default()),
            Err(e) => Err(ResourceError::io("cannot read", &path, e)),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), ResourceError> {
        let path = dir.join(HISTORY);
        let mut text = serde_json::to_vec_pretty(self).expect("history serialises");
        text.push(b'\n');
        crate::fsutil::write_atomic(&path, &text, None)
            .map_err(|e| ResourceError::io("cannot write", &path, e))
    }

    /// The history as a table (date, versions, median, device), newest last.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "date".to_string(),
            "ComfyUI".into(),
            "PyTorch".into(),
            "Python".into(),
            "runs".into(),
            "median".into(),
            "it/s".into(),
            "device".into(),
            "result".into(),
        ]];
        for r in &self.results {
            let it_s: Vec<f64> = r.runs.iter().filter_map(|x| x.it_per_s).collect();
            rows.push([
                r.date.clone(),
                r.comfyui_version.clone().unwrap_or_else(|| "?".into()),
                r.pytorch_version.clone().unwrap_or_else(|| "?".into()),
                r.python_version
                    .as_deref()
                    .and_then(|v| v.split_whitespace().next())
                    .unwrap_or("?")
                    .to_string(),
                r.runs.len().to_string(),
                r.median_seconds
                    .map_or_else(|| "-".into(), |m| format!("{m:.2} s")),
                median(&it_s).map_or_else(|| "-".into(), |m| format!("{m:.2}")),
                r.device.clone(),
                match &r.failure {
                    None => "passed".into(),
                    Some(why) => format!("FAILED: {why}"),
                },
            ]);
        }
        let widths: Vec<usize> = (0..9)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// The median of some numbers (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// What observation found: the inputs now, and what the last runs recorded.
#[derive(Debug, Serialize)]
pub struct BenchmarkObserved {
    pub inputs: Inputs,
    pub fingerprint: String,
    /// The inputs of the last passing apply (from state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_inputs: Option<Inputs>,
    /// The newest result in the history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Result_>,
    #[serde(skip)]
    recorded_outputs: Outputs,
}

/// A KDL value as JSON (strings interpolated by the reader).
fn json_value(r: &NodeReader<'_, '_>, entry: &kdl::KdlEntry) -> Option<Value> {
    Some(match entry.value() {
        KdlValue::String(_) => json!(r.entry_string(entry)?.value),
        KdlValue::Integer(i) => match u64::try_from(*i) {
            Ok(u) => json!(u),
            Err(_) => json!(i64::try_from(*i).ok()?),
        },
        KdlValue::Float(f) => json!(f),
        KdlValue::Bool(b) => json!(b),
        KdlValue::Null => Value::Null,
    })
}

fn args(node: &KdlNode) -> Vec<&kdl::KdlEntry> {
    node.entries()
        .iter()
        .filter(|e| e.name().is_none())
        .collect()
}

/// A whole or decimal number from a child such as `cfg 7.5`.
fn number(r: &NodeReader<'_, '_>, name: &'static str) -> Option<f64> {
    let child = r.child(name)?;
    let found = args(child);
    let Some(entry) = found.first() else {
        r.fail(
            Problem::error("spec::missing-value", format!("`{name}` needs a value"))
                .label(child.name().span(), "expected a number here"),
        );
        return None;
    };
    match entry.value() {
        KdlValue::Integer(i) => Some(*i as f64),
        KdlValue::Float(f) => Some(*f),
        _ => {
            r.wrong_type(entry, "a number");
            None
        }
    }
}

fn positive(r: &NodeReader<'_, '_>, name: &'static str) -> Option<u64> {
    let value = r.opt_integer(name)?;
    match u64::try_from(value.value) {
        Ok(v) if v > 0 => Some(v),
        _ => {
            r.fail(
                Problem::error("spec::out-of-range", format!("`{name}` must be at least 1"))
                    .label(value.span, "not a positive whole number"),
            );
            None
        }
    }
}

fn parse_txt2img(r: &NodeReader<'_, '_>, node: &KdlNode) -> Option<Source> {
    let t = NodeReader::new(node, r.cx);
    let checkpoint = t.reference("checkpoint", Model::KIND);
    let vae = t.child("vae").and_then(|_| t.reference("vae", Model::KIND));
    let lora = t.child("lora").and_then(|child| {
        // A `model` resource, or a `lora` resource's installed checkpoint.
        let value = t.string("lora")?;
        let kind = if value.value.starts_with("lora.") {
            Lora::KIND
        } else {
            Model::KIND
        };
        let reference = t.parse_reference(&value, Some(kind))?;
        t.add_reference(reference.clone());
        let strength = match t.prop(child, "strength").map(|e| e.value().clone()) {
            None => 1.0,
            Some(KdlValue::Integer(i)) => i as f64,
            Some(KdlValue::Float(f)) => f,
            Some(_) => {
                t.wrong_type(t.prop(child, "strength")?, "a number");
                return None;
            }
        };
        Some((reference, strength))
    });
    let text = |name| t.opt_string(name).map(|s| s.value);
    let settings = Txt2Img {
        checkpoint: String::new(),
        vae: None,
        lora: None,
        prompt: text("prompt").unwrap_or_else(|| "a photograph of a lighthouse at dusk".into()),
        negative: text("negative").unwrap_or_default(),
        width: positive(&t, "width").unwrap_or(512),
        height: positive(&t, "height").unwrap_or(512),
        steps: positive(&t, "steps").unwrap_or(20),
        sampler: text("sampler").unwrap_or_else(|| "euler".into()),
        scheduler: text("scheduler").unwrap_or_else(|| "normal".into()),
        cfg: number(&t, "cfg").unwrap_or(7.0),
        seed: t
            .opt_integer("seed")
            .and_then(|s| u64::try_from(s.value).ok())
            .unwrap_or(42),
    };
    for reference in t.references() {
        r.add_reference(reference);
    }
    let failed = t.failed();
    t.finish();
    if failed {
        return None;
    }
    Some(Source::Txt2Img {
        checkpoint: checkpoint?,
        vae,
        lora,
        settings: Box::new(settings),
    })
}

impl Benchmark {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let name = r.resource_name().unwrap_or_default();
        let service = r.reference("service", Service::KIND);
        let file = r.opt_path("workflow");
        let txt2img = r.child("txt2img");
        let source = match (file, txt2img) {
            (Some(path), None) => Some(Source::File(path)),
            (None, Some(node)) => parse_txt2img(r, node),
            (Some(path), Some(node)) => {
                r.fail(
                    Problem::error(
                        "spec::conflicting-fields",
                        "a benchmark runs either a `workflow` file or the built-in `txt2img`, not both",
                    )
                    .label(path.span, "a workflow file")
                    .label(node.name().span(), "the built-in graph")
                    .help("keep one of them"),
                );
                None
            }
            (None, None) => {
                r.fail(
                    Problem::error(
                        "spec::missing-field",
                        format!("benchmark `{name}` needs a `workflow` or a `txt2img` block"),
                    )
                    .label(r.name_span(), "says nothing about what to generate")
                    .help(
                        "add `workflow \"bench.json\"` (ComfyUI API format) or \
                         `txt2img { checkpoint model.X; steps 20 }`",
                    ),
                );
                None
            }
        };
        let mut overrides = Vec::new();
        for node in r.all("set") {
            match args(node).as_slice() {
                [path, value] => {
                    let path = r.entry_string(path);
                    let value = json_value(r, value);
                    if let (Some(path), Some(value)) = (path, value) {
                        overrides.push(Override { path, value });
                    }
                }
                _ => r.fail(
                    Problem::error("spec::wrong-arity", "`set` takes an input path and a value")
                        .label(
                            node.name().span(),
                            "expected `set \"NODE.inputs.FIELD\" VALUE`",
                        )
                        .help("for example `set \"3.inputs.steps\" 20`"),
                ),
            }
        }
        let runs = positive(r, "runs");
        let warmup = r.opt_integer("warmup");
        let warmup = match warmup {
            Some(w) => match u32::try_from(w.value) {
                Ok(v) => Some(v),
                Err(_) => {
                    r.fail(
                        Problem::error("spec::out-of-range", "`warmup` is a count of runs")
                            .label(w.span, "expected 0 or more"),
                    );
                    None
                }
            },
            None => None,
        };
        let budget = r.opt_duration("budget").map(|d| d.value);
        let expect_device = r.opt_choice("expect-device", DEVICES).map(|c| c.value);
        let timeout = r.opt_duration("timeout").map(|d| d.value);
        if r.failed() {
            return None;
        }
        Some(Benchmark {
            dir: r.cx.spec_dir.join(".plasma").join("benchmarks").join(&name),
            name,
            service: service?,
            source: source?,
            overrides,
            runs: runs.map_or(DEFAULT_RUNS, |r| u32::try_from(r).unwrap_or(u32::MAX)),
            warmup: warmup.unwrap_or(DEFAULT_WARMUP),
            budget,
            expect_device,
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
            around: Surroundings::default(),
        })
    }

    /// The API-format graph with overrides applied (reads the workflow file).
    fn graph(&self) -> Result<Value, ResourceError> {
        let mut graph = match &self.source {
            Source::File(path) => {
                let path = &path.value;
                let bytes = std::fs::read(path).map_err(|e| {
                    ResourceError::io("cannot read the workflow", path, e)
                        .help("write the path of a ComfyUI API-format workflow (.json)")
                })?;
                let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ResourceError::new(format!("{} is not JSON: {e}", path.display()))
                        .help(EXPORT_HELP)
                })?;
                workflow::check(&value).map_err(|e| {
                    ResourceError::new(format!("{}: {e}", path.display())).help(EXPORT_HELP)
                })?;
                value
            }
            Source::Txt2Img {
                checkpoint,
                vae,
                lora,
                settings,
            } => {
                let name = |r: &Reference, folder| {
                    self.around
                        .models
                        .iter()
                        .find(|m| m.address == r.address)
                        .map(|m| comfy_name(&m.path, folder))
                        .ok_or_else(|| match r.address.kind.as_str() {
                            "lora" => ResourceError::new(format!(
                                "{} has no `install-to`, so ComfyUI cannot load it",
                                r.address
                            ))
                            .help("give the lora `install-to \"{comfy}/models/loras/NAME.safetensors\"`"),
                            _ => ResourceError::new(format!("{} is not a model of this spec", r.address)),
                        })
                };
                let mut settings = Txt2Img::clone(settings);
                settings.checkpoint = name(checkpoint, "checkpoints")?;
                settings.vae = vae.as_ref().map(|v| name(v, "vae")).transpose()?;
                settings.lora = match lora {
                    Some((l, strength)) => Some((name(l, "loras")?, *strength)),
                    None => None,
                };
                settings.graph()
            }
        };
        for o in &self.overrides {
            workflow::set(&mut graph, &o.path.value, o.value.clone()).map_err(|e| {
                ResourceError::new(e.to_string())
                    .help("write the node id and input name as the API-format workflow has them")
            })?;
        }
        workflow::vary_seed(&graph, 0).map_err(|e| {
            ResourceError::new(e.to_string()).help(
                "add a sampler with a `seed` input, or `set` one, so that each timed run differs",
            )
        })?;
        Ok(graph)
    }

    /// The spec's model resource a graph's model name refers to.
    fn known_model(&self, model: &ModelUse) -> Option<&KnownModel> {
        self.around
            .models
            .iter()
            .find(|m| comfy_name(&m.path, model.folder) == model.name)
    }

    /// The fingerprint's parts as the machine has them now. Cheap: reads
    /// the workflow, stats model files (digests from the hash cache), reads
    /// git heads and the venv's metadata folders.
    fn inputs(&self, hashes: &crate::hashcache::HashCache) -> Result<Inputs, ResourceError> {
        let graph = self.graph()?;
        let mut inputs = Inputs {
            workflow: blake3::hash(graph.to_string().as_bytes())
                .to_hex()
                .to_string(),
            command: self.around.command.clone(),
            ..Inputs::default()
        };
        for used in workflow::model_uses(&graph) {
            let digest = match self.known_model(&used) {
                None => "not a model of this spec".to_string(),
                // The declared digest is what the model resource guarantees
                // once applied (so a plan sees a change the same apply makes);
                // without one, the digest the hash cache holds for the file.
                Some(m) => match &m.declared_sha256 {
                    Some(d) => format!("sha256:{d}"),
                    None => FileKey::of(&m.path)
                        .ok()
                        .and_then(|key| hashes.get(&m.path, &key))
                        .map_or_else(
                            || "not hashed yet".to_string(),
                            |d| format!("sha256:{}", d.to_hex()),
                        ),
                },
            };
            inputs.models.insert(used.name, digest);
        }
        let git = crate::git::Git::new();
        if let Some(clone) = &self.around.comfyui {
            inputs.comfyui_commit = git.head_commit(clone).ok().flatten();
        }
        for (dir, folder) in &self.around.custom_nodes {
            let commit = git
                .head_commit(folder)
                .ok()
                .flatten()
                .unwrap_or_else(|| "absent".into());
            inputs.custom_nodes.insert(dir.clone(), commit);
        }
        if let Some(venv) = &self.around.venv
            && let Ok(crate::python::VenvObservation::Present(v)) =
                crate::python::observe_venv(venv)
        {
            inputs.packages = v.packages;
        }
        Ok(inputs)
    }

    fn client(&self) -> Result<Client, ResourceError> {
        let base = self.around.base_url.as_deref().ok_or_else(|| {
            ResourceError::new(format!(
                "{} has no URL to reach ComfyUI at",
                self.service.address
            ))
            .help("give the service `health { url \"http://127.0.0.1:8188/system_stats\" }`")
        })?;
        Client::new(base).map_err(comfy_error)
    }

    /// Every model name the graph uses must be one ComfyUI lists.
    fn check_models(
        &self,
        graph: &Value,
        object_info: &Value,
    ) -> Result<Vec<String>, ResourceError> {
        let mut notes = Vec::new();
        let mut missing = Vec::new();
        for used in workflow::model_uses(graph) {
            let Some(options) = workflow::options(object_info, &used.class_type, &used.input)
            else {
                continue;
            };
            if options.contains(&used.name.as_str()) {
                if self.known_model(&used).is_none() {
                    notes.push(format!(
                        "{} `{}` is not a `model` resource of the spec: its digest is not part of the fingerprint",
                        used.input, used.name
                    ));
                }
                continue;
            }
            let stem = |s: &str| s.rsplit_once('.').map_or(s, |(a, _)| a).to_string();
            let close: Vec<&str> = options
                .iter()
                .copied()
                .filter(|o| stem(o) == used.name || stem(o) == stem(&used.name))
                .collect();
            let mut line = format!(
                "node {} ({}) loads {} `{}`, which ComfyUI does not list in models/{}/",
                used.node_id, used.class_type, used.input, used.name, used.folder
            );
            if let Some(c) = close.first() {
                line.push_str(&format!(" (did you mean `{c}`?)"));
            } else if options.is_empty() {
                line.push_str(" (it lists none)");
            } else {
                let shown: Vec<&str> = options.iter().copied().take(8).collect();
                line.push_str(&format!(" (it lists: {})", shown.join(", ")));
            }
            if let Some(m) = self.known_model(&used) {
                line.push_str(&format!("; {} puts it at {}", m.address, m.path.display()));
            }
            missing.push(line);
        }
        if missing.is_empty() {
            return Ok(notes);
        }
        Err(ResourceError::new(format!(
            "a model the workflow uses is missing:\n  {}",
            missing.join("\n  ")
        ))
        .help(
            "ComfyUI wants the file name with its extension, relative to its models folder \
             (e.g. `anything-v5-PrtRE.safetensors`); a name it does not list is refused \
             with 400 `value_not_in_list`. Declare the file as a `model` under that folder, \
             or fix the name",
        ))
    }

    /// One run of `graph` with the seed moved by `offset`, with a bar.
    async fn run_once(
        &self,
        client: &Client,
        graph: &Value,
        offset: u64,
        label: String,
        cx: &ApplyContext<'_>,
    ) -> Result<crate::comfyui::RunOutcome, ResourceError> {
        let prompt =
            workflow::vary_seed(graph, offset).map_err(|e| ResourceError::new(e.to_string()))?;
        let bar = cx.bars.add(indicatif::ProgressBar::new(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .expect("template is valid")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{} {label}", cx.address));
        let shown = bar.clone();
        let on_progress = move |p: StepProgress| {
            shown.set_length(p.max);
            shown.set_position(p.value);
            if let Some(rate) = p.it_per_s {
                shown.set_message(format!("{rate:.2} it/s"));
            }
        };
        let outcome = client.run(&prompt, self.timeout, &on_progress).await;
        bar.finish_and_clear();
        let outcome = outcome.map_err(comfy_error)?;
        // A sampler answered from the cache measured nothing.
        let samplers: Vec<&String> = prompt
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| {
                n["inputs"].get("seed").is_some() || n["inputs"].get("noise_seed").is_some()
            })
            .map(|(id, _)| id)
            .collect();
        if samplers.iter().any(|id| outcome.cached_nodes.contains(id)) {
            return Err(ResourceError::new(format!(
                "{label}: ComfyUI answered from its cache without sampling"
            ))
            .help("this happens when a prompt repeats the previous one; run again"));
        }
        Ok(outcome)
    }
}

/// The name ComfyUI lists a model file under: its path below
/// `models/<folder>/` (or any `<folder>/`), else its file name.
fn comfy_name(path: &Path, folder: &str) -> String {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.iter().rposition(|p| p == folder) {
        Some(i) if i + 1 < parts.len() => parts[i + 1..].join("/"),
        _ => parts.last().cloned().unwrap_or_default(),
    }
}

fn comfy_error(e: ComfyError) -> ResourceError {
    let help = match &e {
        ComfyError::Unreachable { .. } => Some(
            "is the service running? `plasma plan` shows its state; its log says why it stopped",
        ),
        ComfyError::Rejected { .. } => Some(
            "a `value_not_in_list` error means ComfyUI does not have that file (it wants the name with its extension)",
        ),
        ComfyError::Execution { .. } => Some("the service's log has the traceback"),
        ComfyError::Timeout { .. } => Some("raise `timeout`, or make the workflow smaller"),
        ComfyError::Interrupted { .. } => {
            Some("someone interrupted the run (ComfyUI's interrupt stops whatever runs)")
        }
        ComfyError::Protocol { .. } => None,
    };
    let error = ResourceError::new(e.to_string());
    match help {
        Some(h) => error.help(h),
        None => error,
    }
}

fn say(cx: &ApplyContext<'_>, text: String) {
    let text = format!("{}: {text}", cx.address);
    if cx.bars.is_hidden() {
        println!("{text}");
    } else {
        let _ = cx.bars.println(text);
    }
}

/// What state records of a run, passed or failed: the inputs it ran with,
/// their digest and the result.
fn recorded(inputs: &Inputs, fingerprint: &str, result: &Result_) -> Outputs {
    let mut outputs = Outputs::new();
    outputs.insert("inputs".into(), json!(inputs));
    outputs.insert("fingerprint".into(), json!(fingerprint));
    outputs.insert("result".into(), json!(result));
    outputs
}

fn recorded_inputs(prior: Option<&ResourceState>) -> Option<Inputs> {
    serde_json::from_value(prior?.outputs.get("inputs")?.clone()).ok()
}

#[async_trait]
impl Kind for Benchmark {
    type Observed = BenchmarkObserved;
    const KIND: &'static str = "benchmark";

    fn desired(&self) -> Value {
        let source = match &self.source {
            Source::File(p) => json!({"workflow": p.value}),
            Source::Txt2Img {
                checkpoint,
                vae,
                lora,
                settings,
            } => json!({"txt2img": {
                "checkpoint": checkpoint.address.to_string(),
                "vae": vae.as_ref().map(|v| v.address.to_string()),
                "lora": lora.as_ref().map(|(l, s)| json!({"model": l.address.to_string(), "strength": s})),
                "prompt": settings.prompt, "negative": settings.negative,
                "width": settings.width, "height": settings.height, "steps": settings.steps,
                "sampler": settings.sampler, "scheduler": settings.scheduler,
                "cfg": settings.cfg, "seed": settings.seed}}),
        };
        let overrides: Vec<Value> = self
            .overrides
            .iter()
            .map(|o| json!([o.path.value, o.value]))
            .collect();
        json!({
            "service": self.service.address.to_string(),
            "source": source,
            "set": overrides,
            "runs": self.runs,
            "warmup": self.warmup,
            "budget_seconds": self.budget.map(|b| b.as_secs_f64()),
            "expect_device": self.expect_device,
            "timeout_seconds": self.timeout.as_secs_f64(),
        })
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn resolve(&mut self, others: &Others<'_>) {
        let mut around = Surroundings::default();
        let mut repo_address = None;
        if let Some(service) = others.get::<Service>(&self.service.address) {
            around.base_url = service.base_url();
            around.command = service.argv();
            if let Launch::ComfyUi {
                comfyui,
                venv,
                args,
                ..
            } = &service.launch
            {
                repo_address = Some(comfyui.address.clone());
                around.comfyui = others
                    .get::<Repo>(&comfyui.address)
                    .map(|r| r.checkout.path.clone());
                around.venv = others
                    .get::<Venv>(&venv.address)
                    .map(|v| v.path().to_path_buf());
                // The command as it will run, with the venv's own Python.
                if let Some(venv) = &around.venv {
                    let mut argv = vec![
                        crate::python::venv_python(venv).display().to_string(),
                        "main.py".to_string(),
                    ];
                    argv.extend(args.iter().map(|a| a.value.clone()));
                    around.command = argv;
                }
            }
        }
        for (address, resource) in &others.resources {
            let any = resource.as_any();
            if let Some(model) = any.downcast_ref::<Model>() {
                around.models.push(KnownModel {
                    address: (*address).clone(),
                    path: model.path.value.clone(),
                    declared_sha256: model.sha256.as_ref().map(|s| s.value.to_hex()),
                });
            }
            // A trained LoRA is a model where it is installed; its digest is
            // the one its install put into the hash cache.
            if let Some(install_to) = any
                .downcast_ref::<Lora>()
                .and_then(|l| l.install_to.as_ref())
            {
                around.models.push(KnownModel {
                    address: (*address).clone(),
                    path: install_to.value.clone(),
                    declared_sha256: None,
                });
            }
            if let (Some(node), Some(repo), Some(clone)) = (
                any.downcast_ref::<CustomNode>(),
                &repo_address,
                &around.comfyui,
            ) && node.comfyui.address == *repo
            {
                around.custom_nodes.insert(
                    node.dir.value.clone(),
                    clone.join("custom_nodes").join(&node.dir.value),
                );
            }
        }
        self.around = around;
    }

    /// A dependency that changes in this plan changes what is measured: a
    /// clone moving to another commit, a venv's packages, a custom node, a
    /// model, a file. The plan cannot see those in the fingerprint yet (it
    /// reads the clone's commit and the venv as they are before the apply),
    /// so it says so here. A service that only (re)starts (killed by hand)
    /// is no reason to run: the fingerprint has its command.
    fn dependencies_changed(&self, diff: Diff, changed: &[String]) -> Diff {
        let measured: Vec<&str> = changed
            .iter()
            .map(String::as_str)
            .filter(|address| !address.starts_with("service."))
            .collect();
        if diff.action.is_change() || measured.is_empty() {
            return diff;
        }
        Diff::new(Action::Run, format!("{} changed", measured.join(", ")))
    }

    async fn observe(&self, cx: &ObserveContext<'_>) -> Result<BenchmarkObserved, ResourceError> {
        let inputs = self.inputs(cx.hashes)?;
        let history = History::load(&self.dir)?;
        Ok(BenchmarkObserved {
            fingerprint: inputs.digest(),
            inputs,
            recorded_inputs: recorded_inputs(cx.prior),
            last: history.results.last().cloned(),
            recorded_outputs: cx.prior.map(|p| p.outputs.clone()).unwrap_or_default(),
        })
    }

    fn diff(&self, observed: &BenchmarkObserved, prior: Option<&ResourceState>) -> Diff {
        let settings_changed = prior
            .is_some_and(|p| crate::apply::digest_of(&Kind::desired(self)) != p.desired_digest);
        let changes = observed
            .recorded_inputs
            .as_ref()
            .map(|recorded| observed.inputs.changes_from(recorded))
            .unwrap_or_default();
        if !changes.is_empty() {
            let reason: Vec<String> = changes
                .iter()
                .take(4)
                .map(|(name, old, new)| match (old, new) {
                    (Some(o), Some(n)) => format!("{name} {o} -> {n}"),
                    (None, Some(n)) => format!("{name} {n} added"),
                    (Some(o), None) => format!("{name} {o} removed"),
                    (None, None) => name.clone(),
                })
                .collect();
            let more = changes.len().saturating_sub(4);
            let mut reason = reason.join(", ");
            if more > 0 {
                reason.push_str(&format!(" and {more} more"));
            }
            let mut diff = Diff::new(Action::Run, reason);
            for (name, old, new) in changes {
                diff = diff.attribute(&name, old, new);
            }
            return diff;
        }
        if let Some(last) = observed.last.as_ref().filter(|l| !l.passed) {
            return Diff::new(
                Action::Run,
                format!(
                    "the last run failed ({})",
                    last.failure.as_deref().unwrap_or("unknown")
                ),
            );
        }
        if observed.recorded_inputs.is_none() {
            return Diff::new(Action::Run, "never run");
        }
        if settings_changed {
            return Diff::new(Action::Run, "runs, budget or device expectation changed");
        }
        Diff::no_op()
    }

    async fn apply(
        &self,
        _observed: &BenchmarkObserved,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        // The inputs as they are now that the dependencies were applied.
        let inputs = self.inputs(cx.hashes)?;
        let fingerprint = inputs.digest();
        let graph = self.graph()?;
        let client = self.client()?;
        let stats: SystemStats = client.system_stats().await.map_err(comfy_error)?;
        let mut history = History::load(&self.dir)?;
        let mut result = Result_ {
            date: crate::fsutil::now_rfc3339(),
            passed: false,
            failure: None,
            device: stats.device_type.clone(),
            device_name: stats.device_name.clone(),
            comfyui_version: stats.comfyui_version.clone(),
            pytorch_version: stats.pytorch_version.clone(),
            python_version: stats.python_version.clone(),
            runs: Vec::new(),
            median_seconds: None,
            budget_seconds: self.budget.map(|b| b.as_secs_f64()),
            images: Vec::new(),
            fingerprint: fingerprint.clone(),
        };
        // A wrong device fails before spending minutes measuring the wrong thing.
        if let Some(expected) = self.expect_device
            && stats.device_type != expected
        {
            let why = format!(
                "ComfyUI runs on `{}` ({}), not `{expected}`",
                stats.device_type, stats.device_name
            );
            result.failure = Some(format!("wrong device: {why}"));
            history.results.push(result.clone());
            history.save(&self.dir)?;
            return Err(ResourceError::new(format!("wrong device: {why}"))
                .record(recorded(&inputs, &fingerprint, &result))
                .help(match expected {
                "mps" => "ComfyUI fell back to the CPU: check that its torch has MPS \
                          (`torch.backends.mps.is_available()`) and that `--cpu` is not among its args",
                "cuda" => "ComfyUI fell back to the CPU: check that its torch is a CUDA build \
                           and that `--cpu` is not among its args",
                _ => "remove `expect-device` or change it to the device you mean",
            }));
        }
        let object_info = client.object_info().await.map_err(comfy_error)?;
        for note in self.check_models(&graph, &object_info)? {
            say(cx, note);
        }
        let total = self.warmup + self.runs;
        let mut image_refs = Vec::new();
        let first_offset = history.prompts_submitted;
        for i in 0..total {
            let offset = first_offset + u64::from(i);
            let warm = i < self.warmup;
            let label = if warm {
                format!("warm-up {}/{}", i + 1, self.warmup)
            } else {
                format!("run {}/{}", i - self.warmup + 1, self.runs)
            };
            let outcome = self
                .run_once(&client, &graph, offset, label.clone(), cx)
                .await;
            history.prompts_submitted = offset + 1;
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    // The seed counter moved: keep it so the next prompt differs.
                    let _ = history.save(&self.dir);
                    return Err(e);
                }
            };
            let rate = outcome.steps.and_then(|s| s.it_per_s);
            say(
                cx,
                format!(
                    "{label}: {:.2} s{}{}",
                    outcome.seconds,
                    rate.map(|r| format!(", {r:.2} it/s")).unwrap_or_default(),
                    if outcome.polled {
                        " (socket dropped; end read from /history)"
                    } else {
                        ""
                    }
                ),
            );
            if !warm {
                result.runs.push(RunRecord {
                    seconds: outcome.seconds,
                    it_per_s: rate,
                    steps: outcome.steps.map(|s| s.max),
                });
                image_refs.extend(
                    outcome
                        .images
                        .iter()
                        .cloned()
                        .map(|im| (i - self.warmup + 1, im)),
                );
            }
        }
        // Keep the images where a user can look at them.
        let stamp = result.date.replace(':', "");
        for (run, image) in &image_refs {
            let bytes = client.view(image).await.map_err(comfy_error)?;
            let relative = format!("{stamp}/run{run}-{}", image.filename.replace('/', "_"));
            let path = self.dir.join(&relative);
            crate::fsutil::write_atomic(&path, &bytes, None)
                .map_err(|e| ResourceError::io("cannot save the image", &path, e))?;
            result.images.push(relative);
        }
        let seconds: Vec<f64> = result.runs.iter().map(|r| r.seconds).collect();
        result.median_seconds = median(&seconds);
        let over = match (self.budget, result.median_seconds) {
            (Some(budget), Some(m)) if m > budget.as_secs_f64() => Some(budget),
            _ => None,
        };
        if let Some(budget) = over {
            result.failure = Some(format!(
                "over budget: median {:.2} s > {}",
                result.median_seconds.unwrap_or_default(),
                humantime::format_duration(budget)
            ));
        }
        result.passed = result.failure.is_none();
        history.results.push(result.clone());
        history.save(&self.dir)?;
        let outputs = recorded(&inputs, &fingerprint, &result);
        if let Some(failure) = result.failure {
            return Err(ResourceError::new(failure).record(outputs).help(format!(
                "the runs and images are kept in {}; `plasma show {}` lists the history",
                self.dir.display(),
                cx.address
            )));
        }
        Ok(outputs)
    }

    fn outputs(&self, observed: &BenchmarkObserved) -> Outputs {
        observed.recorded_outputs.clone()
    }

    fn show(&self, _recorded: Option<&Outputs>) -> Option<String> {
        let history = History::load(&self.dir).ok()?;
        if history.results.is_empty() {
            return Some("history: no runs yet\n".into());
        }
        Some(format!(
            "history ({}):\n{}",
            self.dir.join(HISTORY).display(),
            history.table()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn comfy_names_are_relative_to_the_models_folder() {
        let p = Path::new("/c/models/checkpoints/sd/anything-v5.safetensors");
        assert_eq!(comfy_name(p, "checkpoints"), "sd/anything-v5.safetensors");
        assert_eq!(
            comfy_name(Path::new("/x/y.safetensors"), "loras"),
            "y.safetensors"
        );
    }

    #[test]
    fn input_changes_read_as_a_plan_reason() {
        let mut old = Inputs::default();
        old.packages.insert("torch".into(), "2.5.1".into());
        old.packages.insert("gone".into(), "1.0".into());
        let mut new = old.clone();
        new.packages.insert("torch".into(), "2.6.0".into());
        new.packages.remove("gone");
        new.models.insert(
            "a.safetensors".into(),
            format!("sha256:{}", "ab".repeat(32)),
        );
        let changes = new.changes_from(&old);
        assert_eq!(
            changes,
            [
                (
                    "model a.safetensors".to_string(),
                    None,
                    Some("sha256:abababababab".to_string())
                ),
                ("torch".into(), Some("2.5.1".into()), Some("2.6.0".into())),
                ("gone".into(), Some("1.0".into()), None),
            ]
        );
    }

    #[test]
    fn the_history_table_lists_newest_last_with_failures() {
        let result = |date: &str, median: f64, failure: Option<&str>| Result_ {
            date: date.into(),
            passed: failure.is_none(),
            failure: failure.map(str::to_string),
            device: "mps".into(),
            device_name: "mps".into(),
            comfyui_version: Some("0.3.27".into()),
            pytorch_version: Some("2.5.1".into()),
            python_version: Some("3.11.9 (main)".into()),
            runs: vec![RunRecord {
                seconds: median,
                it_per_s: Some(1.5),
                steps: Some(20),
            }],
            median_seconds: Some(median),
            budget_seconds: Some(120.0),
            images: vec![],
            fingerprint: "f".into(),
        };
        let history = History {
            prompts_submitted: 2,
            results: vec![
                result("2026-01-01T00:00:00Z", 15.0, None),
                result("2026-02-01T00:00:00Z", 130.0, Some("over budget")),
            ],
        };
        let table = history.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("date"), "{table}");
        assert!(
            lines[1].contains("15.00 s") && lines[1].contains("passed"),
            "{table}"
        );
        assert!(
            lines[2].contains("130.00 s") && lines[2].contains("FAILED: over budget"),
            "{table}"
        );
        assert!(
            lines[1].contains("0.3.27") && lines[1].contains("3.11.9"),
            "{table}"
        );
    }
}
