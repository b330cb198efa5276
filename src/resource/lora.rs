//! `lora`: a kohya `train_network.py` run treated as DVC treats a stage:
//! declared inputs (the dataset, the base model, the trainer's commit, the
//! venv's installed set, the parameters), recorded outputs (every
//! checkpoint with its step, sha256 and loss), re-run only when an input
//! changes. The plan shows the trainer's own step arithmetic before hours
//! are spent; apply runs the trainer in its own process group, selects a
//! checkpoint (final, lowest loss, or a step) and installs it.
//!
//! What the trainer does is in `shared/contracts/kohya-train-network.md`;
//! the pieces that know it are in [`crate::kohya`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use kdl::{KdlNode, KdlValue};
use miette::SourceSpan;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use super::file::File;
use super::model::Model;
use super::repo::Repo;
use super::venv::Venv;
use super::{ApplyContext, Kind, ObserveContext, Others, Outputs, ResourceError};
use crate::diagnostic::Problem;
use crate::hashcache::HashCache;
use crate::hashing::{FileKey, Sha256Digest};
use crate::kohya::checkpoints;
use crate::kohya::command::{self, Arg, Invocation, Launcher};
use crate::kohya::dataset::{self, Dataset, Resolution, Subset};
use crate::kohya::log::{self, Event, Failure, LogParser};
use crate::kohya::process;
use crate::kohya::resume::{self, Resume, RunFile};
use crate::kohya::steps::{self, Length, StepPlan, SubsetCount};
use crate::lint::{self, Lint, LintContext};
use crate::plan::{Action, Diff};
use crate::spec::reader::NodeReader;
use crate::spec::{Reference, Spanned};
use crate::state::ResourceState;

/// The script, relative to a kohya_ss clone or an sd-scripts clone.
const SCRIPT_IN_KOHYA_SS: &str = "sd-scripts/train_network.py";
const SCRIPT: &str = "train_network.py";
/// How long a Ctrl-C'd trainer gets to stop before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The type of a training parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamType {
    Int,
    Float,
    Text,
    Flag,
    Path,
}

/// Training parameters: the spec's name, the trainer's argument, the type.
const PARAMS: &[(&str, &str, ParamType)] = &[
    ("network-module", "network_module", ParamType::Text),
    ("network-dim", "network_dim", ParamType::Int),
    ("network-alpha", "network_alpha", ParamType::Float),
    (
        "network-train-unet-only",
        "network_train_unet_only",
        ParamType::Flag,
    ),
    ("optimizer", "optimizer_type", ParamType::Text),
    ("learning-rate", "learning_rate", ParamType::Float),
    ("unet-lr", "unet_lr", ParamType::Float),
    ("text-encoder-lr", "text_encoder_lr", ParamType::Float),
    ("lr-scheduler", "lr_scheduler", ParamType::Text),
    ("lr-warmup-steps", "lr_warmup_steps", ParamType::Int),
    ("epochs", "max_train_epochs", ParamType::Int),
    ("max-steps", "max_train_steps", ParamType::Int),
    ("mixed-precision", "mixed_precision", ParamType::Text),
    ("save-precision", "save_precision", ParamType::Text),
    ("save-every-n-steps", "save_every_n_steps", ParamType::Int),
    ("save-every-n-epochs", "save_every_n_epochs", ParamType::Int),
    ("save-state", "save_state", ParamType::Flag),
    ("clip-skip", "clip_skip", ParamType::Int),
    ("no-half-vae", "no_half_vae", ParamType::Flag),
    (
        "gradient-checkpointing",
        "gradient_checkpointing",
        ParamType::Flag,
    ),
    (
        "gradient-accumulation-steps",
        "gradient_accumulation_steps",
        ParamType::Int,
    ),
    ("cache-latents", "cache_latents", ParamType::Flag),
    ("seed", "seed", ParamType::Int),
    ("tokenizer-cache", "tokenizer_cache_dir", ParamType::Path),
    (
        "max-data-loader-workers",
        "max_data_loader_n_workers",
        ParamType::Int,
    ),
    ("prior-loss-weight", "prior_loss_weight", ParamType::Float),
];

/// A parameter's value as written.
#[derive(Debug, Clone, PartialEq)]
enum ParamValue {
    Int(i64),
    Float(f64),
    Text(String),
    Flag(bool),
}

impl ParamValue {
    fn json(&self) -> Value {
        match self {
            ParamValue::Int(i) => json!(i),
            ParamValue::Float(f) => json!(f),
            ParamValue::Text(t) => json!(t),
            ParamValue::Flag(b) => json!(b),
        }
    }
}

/// Where something comes from: another resource, or a path.
#[derive(Debug, Clone)]
pub enum Source {
    Resource(Reference),
    Path(Spanned<PathBuf>),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Resource(r) => r.address.to_string(),
            Source::Path(p) => p.value.display().to_string(),
        }
    }
}

/// Which checkpoint is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The final file.
    Final,
    /// The checkpoint with the lowest average loss at its step.
    MinLoss,
    /// The checkpoint saved at this step.
    Step(u64),
}

impl Selection {
    fn describe(self) -> String {
        match self {
            Selection::Final => "final".into(),
            Selection::MinLoss => "min-loss".into(),
            Selection::Step(n) => format!("step {n}"),
        }
    }
}

/// A subset with what plasma checks besides what it writes into the TOML.
#[derive(Debug, Clone)]
pub struct SubsetSpec {
    pub subset: Subset,
    pub span: SourceSpan,
    /// `images N`: the count the spec expects, used by plans where the
    /// folder is not present and checked where it is.
    pub declared_images: Option<u64>,
    /// `trigger "token"`: what each caption must start with (default: class-tokens).
    pub trigger: Option<String>,
}

#[derive(Debug)]
pub struct Lora {
    pub name: String,
    pub span: SourceSpan,
    pub trainer: Source,
    pub venv: Source,
    pub base_model: Source,
    pub launcher: Spanned<&'static str>,
    pub accelerate_config: Option<Source>,
    pub resolution: Spanned<Resolution>,
    pub batch_size: Spanned<u32>,
    pub enable_bucket: bool,
    pub subsets: Vec<SubsetSpec>,
    params: Vec<(&'static str, ParamValue, SourceSpan)>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub output_dir: PathBuf,
    pub output_name: String,
    pub select: Spanned<Selection>,
    pub install_to: Option<Spanned<PathBuf>>,
    /// Resolved from the referenced resources (`resolve`).
    trainer_dir: PathBuf,
    venv_dir: PathBuf,
    base_model_path: PathBuf,
    /// The digest the base model's `model` resource pins, when it does.
    base_model_sha256: Option<String>,
    accelerate_config_path: Option<PathBuf>,
}

// ------------------------------------------------------------------ parsing

fn source(r: &NodeReader<'_, '_>, name: &'static str, kind: &'static str) -> Option<Source> {
    let value = r.string(name)?;
    if value.value.starts_with(&format!("{kind}.")) {
        let reference = r.parse_reference(&value, Some(kind))?;
        Some(Source::Resource(reference))
    } else {
        let path = r.cx.resolve_path(&value.value);
        Some(Source::Path(Spanned::new(path, value.span)))
    }
}

fn args_of(child: &KdlNode) -> Vec<&kdl::KdlEntry> {
    child
        .entries()
        .iter()
        .filter(|e| e.name().is_none())
        .collect()
}

/// A flag: `flip-aug` alone means true, or `flip-aug #false`.
fn flag(r: &NodeReader<'_, '_>, name: &'static str) -> Option<Spanned<bool>> {
    let child = r.child(name)?;
    match args_of(child).as_slice() {
        [] => Some(Spanned::new(true, child.name().span())),
        [one] => match one.value() {
            KdlValue::Bool(b) => Some(Spanned::new(*b, one.span())),
            _ => {
                r.wrong_type(one, "#true or #false");
                None
            }
        },
        [_, extra, ..] => {
            r.wrong_type(extra, "one value");
            None
        }
    }
}

fn number(r: &NodeReader<'_, '_>, name: &'static str, whole: bool) -> Option<Spanned<f64>> {
    let child = r.child(name)?;
    let entries = args_of(child);
    let [one] = entries.as_slice() else {
        r.fail(
            Problem::error("spec::missing-value", format!("`{name}` takes one number"))
                .label(child.name().span(), "expected one number here"),
        );
        return None;
    };
    let value = match one.value() {
        KdlValue::Integer(i) => *i as f64,
        KdlValue::Float(f) if !whole => *f,
        _ => {
            r.wrong_type(one, if whole { "a whole number" } else { "a number" });
            return None;
        }
    };
    if value < 0.0 {
        r.wrong_type(one, "a number of at least 0");
        return None;
    }
    Some(Spanned::new(value, one.span()))
}

fn positive(r: &NodeReader<'_, '_>, name: &'static str) -> Option<Spanned<u32>> {
    let n = number(r, name, true)?;
    if n.value < 1.0 || n.value > f64::from(u32::MAX) {
        r.fail(
            Problem::error("spec::out-of-range", format!("`{name}` must be at least 1"))
                .label(n.span, "out of range"),
        );
        return None;
    }
    Some(Spanned::new(n.value as u32, n.span))
}

fn parse_resolution(r: &NodeReader<'_, '_>) -> Option<Spanned<Resolution>> {
    let child = r.child("resolution")?;
    let values: Vec<(i128, SourceSpan)> = args_of(child)
        .iter()
        .filter_map(|e| match e.value() {
            KdlValue::Integer(i) if *i > 0 && *i <= 16384 => Some((*i, e.span())),
            _ => {
                r.wrong_type(e, "a size in pixels");
                None
            }
        })
        .collect();
    match values.as_slice() {
        [(s, span)] => Some(Spanned::new(Resolution::Square(*s as u32), *span)),
        [(w, span), (h, _)] => Some(Spanned::new(
            Resolution::Rect([*w as u32, *h as u32]),
            *span,
        )),
        _ => {
            r.fail(
                Problem::error(
                    "spec::malformed-resolution",
                    "`resolution` takes one size or a width and a height",
                )
                .label(
                    child.name().span(),
                    "write `resolution 512` or `resolution 512 768`",
                ),
            );
            None
        }
    }
}

fn parse_subset(node: &KdlNode, r: &NodeReader<'_, '_>) -> Option<SubsetSpec> {
    let s = NodeReader::new(node, r.cx);
    let image_dir = s.path("image-dir");
    let repeats = positive(&s, "repeats");
    let caption_extension = s.opt_string("caption-extension");
    let keep_tokens = number(&s, "keep-tokens", true);
    let shuffle = flag(&s, "shuffle-caption");
    let flip = flag(&s, "flip-aug");
    let class_tokens = s.opt_string("class-tokens");
    let is_reg = flag(&s, "is-reg");
    let images = number(&s, "images", true);
    let trigger = s.opt_string("trigger");
    let failed = s.failed();
    s.finish();
    let image_dir = image_dir?;
    if failed {
        return None;
    }
    Some(SubsetSpec {
        span: image_dir.span,
        subset: Subset {
            image_dir: image_dir.value,
            num_repeats: repeats.map_or(1, |r| r.value),
            caption_extension: caption_extension.map_or_else(|| ".caption".into(), |c| c.value),
            keep_tokens: keep_tokens.map(|k| k.value as u32),
            shuffle_caption: shuffle.is_some_and(|b| b.value),
            flip_aug: flip.is_some_and(|b| b.value),
            class_tokens: class_tokens.as_ref().map(|c| c.value.clone()),
            is_reg: is_reg.is_some_and(|b| b.value),
        },
        declared_images: images.map(|i| i.value as u64),
        trigger: trigger.map(|t| t.value).or(class_tokens.map(|c| c.value)),
    })
}

fn parse_select(r: &NodeReader<'_, '_>) -> Option<Spanned<Selection>> {
    let Some(value) = r.opt_string("select") else {
        return Some(Spanned::new(Selection::Final, r.name_span()));
    };
    let selection = match value.value.as_str() {
        "final" => Some(Selection::Final),
        "min-loss" => Some(Selection::MinLoss),
        other => other
            .strip_prefix("step ")
            .and_then(|n| n.trim().parse().ok())
            .map(Selection::Step),
    };
    match selection {
        Some(s) => Some(Spanned::new(s, value.span)),
        None => {
            r.fail(
                Problem::error(
                    "spec::invalid-choice",
                    format!("`{}` is not a valid `select`", value.value),
                )
                .label(value.span, "expected \"final\", \"min-loss\" or \"step N\""),
            );
            None
        }
    }
}

impl Lora {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let name = r.resource_name().unwrap_or_default();
        let trainer = source(r, "trainer", Repo::KIND);
        let venv = source(r, "venv", Venv::KIND);
        let base_model = source(r, "base-model", Model::KIND);
        let launcher = r
            .opt_choice("launcher", &["accelerate", "python"])
            .unwrap_or_else(|| Spanned::new("accelerate", r.name_span()));
        let accelerate_config = r
            .child("accelerate-config")
            .is_some()
            .then(|| source(r, "accelerate-config", File::KIND))
            .flatten();

        // The dataset block.
        let mut resolution = None;
        let mut batch_size = None;
        let mut enable_bucket = false;
        let mut subsets = Vec::new();
        let dataset_node = r.child("dataset");
        if let Some(node) = dataset_node {
            let d = NodeReader::new(node, r.cx);
            resolution = parse_resolution(&d);
            batch_size = positive(&d, "batch-size");
            enable_bucket = flag(&d, "enable-bucket").is_some_and(|b| b.value);
            for subset in d.all("subset") {
                if let Some(s) = parse_subset(subset, &d) {
                    subsets.push(s);
                }
            }
            if d.all("subset").is_empty() {
                d.fail(
                    Problem::error("spec::missing-field", "the dataset has no `subset`").label(
                        node.name().span(),
                        "add `subset { image-dir \"…\"; repeats 10 }`",
                    ),
                );
            }
            if resolution.is_none() {
                d.fail(
                    Problem::error("spec::missing-field", "the dataset has no `resolution`")
                        .label(node.name().span(), "add `resolution 512`")
                        .help("the trainer stops with `resolution is required` without it"),
                );
            }
            d.finish();
        } else {
            r.fail(
                Problem::error(
                    "spec::missing-field",
                    format!("lora `{name}` is missing `dataset`"),
                )
                .label(r.name_span(), "this needs `dataset { … }`")
                .help("add `dataset { resolution 512; subset { image-dir \"…\"; repeats 10 } }`"),
            );
        }

        let mut params = Vec::new();
        for (key, _, ty) in PARAMS {
            let value = match ty {
                ParamType::Int => {
                    number(r, key, true).map(|n| (ParamValue::Int(n.value as i64), n.span))
                }
                ParamType::Float => {
                    number(r, key, false).map(|n| (ParamValue::Float(n.value), n.span))
                }
                ParamType::Text => r
                    .opt_string(key)
                    .map(|s| (ParamValue::Text(s.value), s.span)),
                ParamType::Flag => flag(r, key).map(|b| (ParamValue::Flag(b.value), b.span)),
                ParamType::Path => r.opt_string(key).map(|s| {
                    let path = r.cx.resolve_path(&s.value).display().to_string();
                    (ParamValue::Text(path), s.span)
                }),
            };
            if let Some((value, span)) = value {
                params.push((*key, value, span));
            }
        }
        for (key, choices) in [
            ("mixed-precision", &["no", "fp16", "bf16"][..]),
            ("save-precision", &["float", "fp16", "bf16"][..]),
        ] {
            if let Some((_, ParamValue::Text(v), span)) = params.iter().find(|(k, ..)| *k == key)
                && !choices.contains(&v.as_str())
            {
                r.fail(
                    Problem::error(
                        "spec::invalid-choice",
                        format!("`{v}` is not a valid `{key}`"),
                    )
                    .label(*span, format!("expected one of: {}", choices.join(", "))),
                );
            }
        }
        let args = r.string_list("args").into_iter().map(|s| s.value).collect();
        let mut env = Vec::new();
        if let Some(node) = r.child("env") {
            for child in node.children().map(|d| d.nodes()).unwrap_or_default() {
                match args_of(child).as_slice() {
                    [one] if one.value().as_string().is_some() => {
                        if let Some(v) = r.entry_string(one) {
                            env.push((child.name().value().to_string(), v.value));
                        }
                    }
                    _ => r.fail(
                        Problem::error(
                            "spec::wrong-type",
                            format!("`{}` in `env` needs one string", child.name().value()),
                        )
                        .label(child.name().span(), "write `NAME \"value\"`"),
                    ),
                }
            }
        }
        let output = r.child("output");
        let output_name = output
            .and_then(|o| r.prop_string(o, "name"))
            .map_or_else(|| name.clone(), |n| n.value);
        let output_dir = r.path("output");
        let select = parse_select(r);
        let install_to = r.opt_path("install-to");
        if let Some(path) = &install_to
            && path
                .value
                .extension()
                .is_none_or(|e| e != checkpoints::EXTENSION)
        {
            r.fail(
                Problem::error(
                    "spec::missing-extension",
                    format!("`install-to` must name a .{} file", checkpoints::EXTENSION),
                )
                .label(path.span, "no .safetensors extension")
                .help("ComfyUI lists only files with a model extension: write the whole file name, such as \"…/models/loras/spyke_v1.safetensors\""),
            );
        }
        if output_name.is_empty() || output_name.contains('/') {
            r.fail(
                Problem::error(
                    "spec::malformed-name",
                    format!("`{output_name}` is not a file name"),
                )
                .label(r.name_span(), "the output name must be a plain file name"),
            );
        }

        let launcher_value = launcher.value;
        Some(Lora {
            name,
            span: r.name_span(),
            trainer: trainer?,
            venv: venv?,
            base_model: base_model?,
            launcher,
            accelerate_config: accelerate_config.filter(|_| launcher_value == "accelerate"),
            resolution: resolution?,
            batch_size: batch_size.unwrap_or_else(|| Spanned::new(1, r.name_span())),
            enable_bucket,
            subsets,
            params,
            args,
            env,
            output_dir: output_dir?.value,
            output_name,
            select: select?,
            install_to,
            trainer_dir: PathBuf::new(),
            venv_dir: PathBuf::new(),
            base_model_path: PathBuf::new(),
            base_model_sha256: None,
            accelerate_config_path: None,
        })
    }

    fn param(&self, key: &str) -> Option<&ParamValue> {
        self.params
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, v, _)| v)
    }

    fn param_span(&self, key: &str) -> Option<SourceSpan> {
        self.params
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(.., s)| *s)
    }

    fn int_param(&self, key: &str) -> Option<u64> {
        match self.param(key) {
            Some(ParamValue::Int(i)) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    fn text_param(&self, key: &str) -> Option<&str> {
        match self.param(key) {
            Some(ParamValue::Text(t)) => Some(t),
            _ => None,
        }
    }

    fn flag_param(&self, key: &str) -> bool {
        matches!(self.param(key), Some(ParamValue::Flag(true)))
    }

    /// The dataset as written into the TOML.
    pub fn dataset(&self) -> Dataset {
        Dataset {
            resolution: self.resolution.value,
            batch_size: self.batch_size.value,
            enable_bucket: self.enable_bucket,
            subsets: self.subsets.iter().map(|s| s.subset.clone()).collect(),
        }
    }

    fn length(&self) -> Option<Length> {
        self.int_param("epochs")
            .map(Length::Epochs)
            .or_else(|| self.int_param("max-steps").map(Length::Steps))
    }

    /// Where plasma keeps this run's own files (the dataset TOML).
    fn work_dir(&self, plasma_dir: &Path) -> PathBuf {
        plasma_dir.join("lora").join(&self.name)
    }

    /// The script: `sd-scripts/train_network.py` in a kohya_ss clone, or
    /// `train_network.py` in an sd-scripts clone.
    fn find_script(&self) -> ScriptFound {
        let nested = self.trainer_dir.join(SCRIPT_IN_KOHYA_SS);
        if nested.is_file() {
            return ScriptFound::Found(nested);
        }
        let direct = self.trainer_dir.join(SCRIPT);
        if direct.is_file() {
            return ScriptFound::Found(direct);
        }
        let sd_scripts = self.trainer_dir.join("sd-scripts");
        let empty = std::fs::read_dir(&sd_scripts).is_ok_and(|mut d| d.next().is_none());
        if empty {
            ScriptFound::EmptySubmodule(sd_scripts)
        } else if self.trainer_dir.exists() {
            ScriptFound::NotInFolder(self.trainer_dir.clone())
        } else {
            ScriptFound::Absent(self.trainer_dir.clone())
        }
    }

    /// The script a run would use, for the command line (the kohya_ss layout
    /// when neither exists yet).
    fn script_path(&self) -> PathBuf {
        match self.find_script() {
            ScriptFound::Found(p) => p,
            _ if self.trainer_dir.join("sd-scripts").exists()
                || matches!(self.trainer, Source::Resource(_)) =>
            {
                self.trainer_dir.join(SCRIPT_IN_KOHYA_SS)
            }
            _ => self.trainer_dir.join(SCRIPT),
        }
    }

    /// Whether a run now would resume a stopped run of the inputs with
    /// `fingerprint` (only with `save-state`, see `kohya::resume`).
    fn resume(&self, fingerprint: Option<&str>, steps: &StepPlan) -> Resume {
        if !self.flag_param("save-state") {
            return Resume::Fresh;
        }
        let path = RunFile::path(&self.output_dir, &self.output_name);
        let Some(run) =
            RunFile::load(&path).filter(|r| Some(r.fingerprint.as_str()) == fingerprint)
        else {
            return Resume::Fresh;
        };
        let state = resume::newest_state(&self.output_dir, &self.output_name, run.started_at());
        let accumulation = steps.gradient_accumulation.max(1);
        Resume::decide(
            state,
            steps.batches_per_epoch.div_ceil(accumulation),
            steps.steps,
            accumulation,
        )
    }

    /// The trainer's arguments, in a fixed order.
    fn train_args(&self, dataset_toml: &Path) -> Vec<Arg> {
        let mut args = vec![
            Arg::value(
                "pretrained_model_name_or_path",
                self.base_model_path.display(),
            ),
            Arg::value("dataset_config", dataset_toml.display()),
            Arg::value("output_dir", self.output_dir.display()),
            Arg::value("output_name", &self.output_name),
            Arg::value("save_model_as", checkpoints::EXTENSION),
        ];
        if self.param("network-module").is_none() {
            args.push(Arg::value("network_module", "networks.lora"));
        }
        for (key, flag, _) in PARAMS {
            match self.param(key) {
                Some(ParamValue::Flag(true)) => args.push(Arg::flag(flag)),
                Some(ParamValue::Flag(false)) | None => {}
                Some(ParamValue::Int(i)) => args.push(Arg::value(flag, i)),
                Some(ParamValue::Float(f)) => args.push(Arg::value(flag, f)),
                Some(ParamValue::Text(t)) => args.push(Arg::value(flag, t)),
            }
        }
        args
    }

    /// The whole invocation, with the dataset TOML under `plasma_dir`.
    pub fn invocation(&self, plasma_dir: &Path) -> Invocation {
        self.invocation_with(plasma_dir, &[])
    }

    /// The invocation with `extra` trainer arguments (`--resume …`) after
    /// the spec's own.
    fn invocation_with(&self, plasma_dir: &Path, extra: &[Arg]) -> Invocation {
        let launcher = match self.launcher.value {
            "python" => Launcher::Python,
            _ => Launcher::Accelerate {
                config: self.accelerate_config_path.clone(),
            },
        };
        let toml = self.work_dir(plasma_dir).join("dataset.toml");
        command::build(
            &launcher,
            &self.venv_dir,
            &self.script_path(),
            &[self.train_args(&toml), extra.to_vec()].concat(),
            &self.args,
            &self.env,
        )
    }

    /// The parameters that decide what a run produces (not which file is
    /// selected or where it is installed).
    fn run_parameters(&self) -> Value {
        let params: serde_json::Map<String, Value> = self
            .params
            .iter()
            .map(|(k, v, _)| (k.to_string(), v.json()))
            .collect();
        json!({
            "launcher": self.launcher.value,
            "accelerate_config": self.accelerate_config_path,
            "dataset": self.dataset(),
            "parameters": params,
            "args": self.args,
            "env": self.env,
            "output": self.output_dir,
            "name": self.output_name,
        })
    }

    fn selected_file(&self, record: &Record) -> Result<CheckpointRecord, String> {
        select(&record.checkpoints, self.select.value)
    }

    /// What `plasma show lora.NAME --command` prints.
    pub fn command_line(&self, plasma_dir: &Path) -> String {
        self.invocation(plasma_dir).shell_line()
    }
}

/// Where the script was looked for, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "found", content = "path", rename_all = "kebab-case")]
pub enum ScriptFound {
    Found(PathBuf),
    /// kohya_ss's `sd-scripts/` exists and is empty: the submodule was never initialised.
    EmptySubmodule(PathBuf),
    /// The trainer folder exists but holds neither layout.
    NotInFolder(PathBuf),
    /// The trainer folder does not exist (yet).
    Absent(PathBuf),
}

impl ScriptFound {
    fn error(&self) -> Option<ResourceError> {
        match self {
            ScriptFound::Found(_) => None,
            ScriptFound::EmptySubmodule(p) => Some(
                ResourceError::new(format!(
                    "{} is empty: kohya_ss's sd-scripts submodule was never initialised, so there is no train_network.py",
                    p.display()
                ))
                .help(format!(
                    "keep `submodules` on for the kohya repo (the default) and apply it, or run `git submodule update --init --recursive` in {}",
                    p.parent().unwrap_or(p).display()
                )),
            ),
            ScriptFound::NotInFolder(p) => Some(
                ResourceError::new(format!(
                    "neither {SCRIPT_IN_KOHYA_SS} nor {SCRIPT} is in {}",
                    p.display()
                ))
                .help("point `trainer` at a kohya_ss or an sd-scripts clone"),
            ),
            ScriptFound::Absent(p) => Some(
                ResourceError::new(format!("the trainer folder {} does not exist", p.display()))
                    .help("apply the trainer's repo first, or fix the `trainer` path"),
            ),
        }
    }
}

// ------------------------------------------------------------------ records

/// One dataset file as last hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    pub mtime_ns: i64,
    pub blake3: String,
}

/// One checkpoint of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub file: PathBuf,
    pub step: u64,
    pub sha256: String,
    /// The average loss (`avr_loss`) the trainer showed at that step.
    pub loss: Option<f64>,
    /// True for the final file.
    #[serde(default)]
    pub last: bool,
}

/// An installed copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub path: PathBuf,
    pub sha256: String,
}

/// The inputs of a run; their digest is the run's fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// `<folder name>/<file>` → identity and BLAKE3 of every image and caption.
    pub dataset_files: BTreeMap<String, FileRecord>,
    pub base_model_sha256: Option<String>,
    /// `commit <id>`, or the script's BLAKE3 outside git.
    pub trainer: Option<String>,
    /// The venv's installed set, name → version.
    pub venv_packages: BTreeMap<String, String>,
    /// BLAKE3 of the run parameters.
    pub parameters: String,
}

impl Inputs {
    /// BLAKE3 over the inputs (file identities left out: contents only).
    pub fn fingerprint(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for (path, file) in &self.dataset_files {
            hasher.update(format!("file {path}\0{}\n", file.blake3).as_bytes());
        }
        hasher.update(format!("model {:?}\n", self.base_model_sha256).as_bytes());
        hasher.update(format!("trainer {:?}\n", self.trainer).as_bytes());
        for (name, version) in &self.venv_packages {
            hasher.update(format!("package {name}=={version}\n").as_bytes());
        }
        hasher.update(format!("parameters {}\n", self.parameters).as_bytes());
        hasher.finalize().to_hex().to_string()
    }
}

/// What the last successful run recorded (the resource's outputs in state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub fingerprint: String,
    pub inputs: Inputs,
    pub total_steps: u64,
    pub seconds: f64,
    pub seconds_per_step: Option<f64>,
    pub checkpoints: Vec<CheckpointRecord>,
    /// `(step, avr_loss)` at every step that showed one.
    pub losses: Vec<(u64, f64)>,
    pub selection: String,
    pub selected: CheckpointRecord,
    pub installed: Option<Installed>,
    pub chart: Option<PathBuf>,
    /// The step the run resumed at from a saved state, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
}

impl Record {
    fn from_state(prior: Option<&ResourceState>) -> Option<Record> {
        let value = prior?.outputs.get("run")?;
        serde_json::from_value(value.clone()).ok()
    }
}

/// The checkpoint `selection` picks.
fn select(
    checkpoints: &[CheckpointRecord],
    selection: Selection,
) -> Result<CheckpointRecord, String> {
    let found = match selection {
        Selection::Final => checkpoints.iter().find(|c| c.last),
        Selection::MinLoss => checkpoints
            .iter()
            .filter(|c| c.loss.is_some_and(f64::is_finite))
            .min_by(|a, b| {
                a.loss
                    .partial_cmp(&b.loss)
                    .unwrap_or(std::cmp::Ordering::Equal)
            }),
        Selection::Step(n) => checkpoints
            .iter()
            .find(|c| c.step == n && !c.last)
            .or_else(|| checkpoints.iter().find(|c| c.step == n)),
    };
    found.cloned().ok_or_else(|| {
        let steps: Vec<String> = checkpoints.iter().map(|c| c.step.to_string()).collect();
        format!(
            "no checkpoint matches `select \"{}\"` (saved at steps: {})",
            selection.describe(),
            if steps.is_empty() {
                "none".to_string()
            } else {
                steps.join(", ")
            }
        )
    })
}

// ------------------------------------------------------------------ observation

/// A subset's folder as found.
#[derive(Debug, Clone, Serialize)]
pub struct SubsetObserved {
    pub image_dir: PathBuf,
    /// `None`: the folder does not exist.
    pub images: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_images: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_captions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub untriggered: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LoraObserved {
    pub script: ScriptFound,
    pub subsets: Vec<SubsetObserved>,
    /// The arithmetic with the counts found (or declared, where absent).
    pub steps: StepPlan,
    /// Which inputs are not there yet (the run cannot start without them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    pub inputs: Inputs,
    /// `None` while an input is missing.
    pub fingerprint: Option<String>,
    /// sha256 of the selected checkpoint's file as it is now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected_sha256: Option<String>,
    /// sha256 of the installed file as it is now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_sha256: Option<String>,
    /// The last successful run.
    #[serde(skip)]
    pub record: Option<Record>,
    /// Whether a run would resume a stopped one (`save-state`).
    #[serde(skip)]
    pub resume: Resume,
}

/// sha256 of a file through the hash cache; `None` when it is absent.
fn cached_sha256(path: &Path, hashes: &HashCache) -> Result<Option<String>, ResourceError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(None),
        Err(e) if crate::fsutil::is_absent(&e) => return Ok(None),
        Err(e) => return Err(ResourceError::io("cannot inspect", path, e)),
    };
    let key = FileKey::from_metadata(&meta);
    if let Some(d) = hashes.get(path, &key) {
        return Ok(Some(d.to_hex()));
    }
    let digest = crate::hashing::hash_file(path).map_err(|e| {
        ResourceError::new(format!("cannot read {}: {}", e.path.display(), e.source))
    })?;
    hashes.put(path, key, digest);
    Ok(Some(digest.to_hex()))
}

/// Identity and BLAKE3 of every image and caption, reusing `known` digests
/// of files whose size and mtime are unchanged.
fn dataset_files(
    subsets: &[SubsetSpec],
    known: Option<&BTreeMap<String, FileRecord>>,
) -> Result<BTreeMap<String, FileRecord>, ResourceError> {
    let mut files = BTreeMap::new();
    for spec in subsets {
        let dir = &spec.subset.image_dir;
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let caption_ext = spec.subset.caption_extension();
        for entry in entries {
            let entry = entry.map_err(|e| ResourceError::io("cannot list", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(dataset::is_image(&name) || name.ends_with(&caption_ext)) {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path)
                .map_err(|e| ResourceError::io("cannot inspect", &path, e))?;
            if !meta.is_file() {
                continue;
            }
            let key = FileKey::from_metadata(&meta);
            let rel = format!("{folder}/{name}");
            let reuse = known
                .and_then(|k| k.get(&rel))
                .filter(|r| r.size == key.size && r.mtime_ns == key.mtime_ns);
            let record = match reuse {
                Some(r) => r.clone(),
                None => {
                    let bytes = std::fs::read(&path)
                        .map_err(|e| ResourceError::io("cannot read", &path, e))?;
                    FileRecord {
                        size: key.size,
                        mtime_ns: key.mtime_ns,
                        blake3: blake3::hash(&bytes).to_hex().to_string(),
                    }
                }
            };
            files.insert(rel, record);
        }
    }
    Ok(files)
}

/// What changed in the dataset, in words: `2 images added, 1 caption edited`.
fn dataset_changes(
    old: &BTreeMap<String, FileRecord>,
    new: &BTreeMap<String, FileRecord>,
) -> String {
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let kind = |path: &str| {
        if dataset::is_image(path) {
            "image"
        } else {
            "caption"
        }
    };
    for (path, file) in new {
        match old.get(path) {
            None => *counts.entry((kind(path), "added")).or_default() += 1,
            Some(o) if o.blake3 != file.blake3 => {
                *counts.entry((kind(path), "edited")).or_default() += 1
            }
            _ => {}
        }
    }
    for path in old.keys().filter(|p| !new.contains_key(*p)) {
        *counts.entry((kind(path), "removed")).or_default() += 1;
    }
    let mut parts = Vec::new();
    for what in ["image", "caption"] {
        for how in ["added", "edited", "removed"] {
            if let Some(n) = counts.get(&(what, how)) {
                let plural = if *n == 1 { "" } else { "s" };
                parts.push(format!("{n} {what}{plural} {how}"));
            }
        }
    }
    parts.join(", ")
}

fn package_changes(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    for (name, version) in new {
        match old.get(name) {
            None => parts.push(format!("+{name} {version}")),
            Some(o) if o != version => parts.push(format!("{name} {o} -> {version}")),
            _ => {}
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        parts.push(format!("-{name}"));
    }
    let more = parts.len().saturating_sub(5);
    parts.truncate(5);
    if more > 0 {
        parts.push(format!("and {more} more"));
    }
    parts.join(", ")
}

impl Lora {
    /// Reads every input. `known` are the dataset digests of the last run.
    fn inspect(
        &self,
        hashes: &HashCache,
        known: Option<&Record>,
    ) -> Result<LoraObserved, ResourceError> {
        let script = self.find_script();
        let mut missing = Vec::new();
        let mut subsets = Vec::new();
        let mut counts = Vec::new();
        for spec in &self.subsets {
            let scan = dataset::scan(&spec.subset, spec.trigger.as_deref())
                .map_err(|e| ResourceError::io("cannot read", &spec.subset.image_dir, e))?;
            let images = scan.as_ref().map(|s| s.images.len() as u64);
            if images.is_none() {
                missing.push(format!(
                    "dataset folder {}",
                    spec.subset.image_dir.display()
                ));
            }
            counts.push(SubsetCount {
                images: images.or(spec.declared_images).unwrap_or(0),
                repeats: u64::from(spec.subset.num_repeats),
                is_reg: spec.subset.is_reg,
            });
            let scan = scan.unwrap_or_default();
            subsets.push(SubsetObserved {
                image_dir: spec.subset.image_dir.clone(),
                images,
                declared_images: spec.declared_images,
                // Without a caption the trainer uses class-tokens; only then is it fine.
                missing_captions: if spec.subset.class_tokens.is_some() {
                    Vec::new()
                } else {
                    scan.missing_captions
                },
                untriggered: scan.untriggered,
            });
        }
        let steps = steps::compute(
            &counts,
            u64::from(self.batch_size.value),
            self.int_param("gradient-accumulation-steps").unwrap_or(1),
            1,
            self.length(),
        );
        let script_path = match &script {
            ScriptFound::Found(p) => Some(p.clone()),
            _ => {
                missing.push("trainer script".to_string());
                None
            }
        };
        let trainer = match &script_path {
            Some(p) => {
                let dir = p.parent().unwrap_or(p);
                match crate::git::head_commit(dir) {
                    Ok(Some(commit)) => Some(format!("commit {commit}")),
                    _ => std::fs::read(p)
                        .ok()
                        .map(|b| format!("{SCRIPT} blake3 {}", blake3::hash(&b).to_hex())),
                }
            }
            None => None,
        };
        let venv_packages = match crate::python::observe_venv(&self.venv_dir) {
            Ok(crate::python::VenvObservation::Present(v)) => Some(v.packages),
            _ => None,
        };
        if venv_packages.is_none() {
            missing.push(format!("venv {}", self.venv_dir.display()));
        }
        let base_model_sha256 = match cached_sha256(&self.base_model_path, hashes)? {
            Some(actual) => Some(actual),
            None => {
                missing.push(format!("base model {}", self.base_model_path.display()));
                None
            }
        };
        let inputs = Inputs {
            dataset_files: dataset_files(&self.subsets, known.map(|r| &r.inputs.dataset_files))?,
            base_model_sha256,
            trainer,
            venv_packages: venv_packages.unwrap_or_default(),
            parameters: crate::apply::digest_of(&self.run_parameters()),
        };
        let fingerprint = missing.is_empty().then(|| inputs.fingerprint());
        let (selected_sha256, installed_sha256) = match known {
            Some(record) => {
                let selected = self.selected_file(record).ok();
                (
                    match selected {
                        Some(s) => cached_sha256(&s.file, hashes)?,
                        None => None,
                    },
                    match &self.install_to {
                        Some(p) => cached_sha256(&p.value, hashes)?,
                        None => None,
                    },
                )
            }
            None => (None, None),
        };
        Ok(LoraObserved {
            script,
            subsets,
            steps,
            missing,
            inputs,
            fingerprint,
            selected_sha256,
            installed_sha256,
            record: known.cloned(),
            resume: Resume::Fresh,
        })
    }

    /// Problems with the dataset that stop a run before it starts.
    fn dataset_problems(&self, observed: &LoraObserved) -> Vec<String> {
        let mut problems = Vec::new();
        for s in &observed.subsets {
            let dir = s.image_dir.display();
            match s.images {
                None => problems.push(format!("{dir} does not exist")),
                Some(0) => problems.push(format!(
                    "{dir} holds no images ({})",
                    dataset::IMAGE_EXTENSIONS.join(", ")
                )),
                Some(n) => {
                    if let Some(d) = s.declared_images.filter(|d| *d != n) {
                        problems.push(format!(
                            "{dir} holds {n} images, the spec declares `images {d}`"
                        ));
                    }
                }
            }
            if !s.missing_captions.is_empty() {
                problems.push(format!(
                    "{dir}: {} without a caption file: {}",
                    plural(s.missing_captions.len(), "image"),
                    list(&s.missing_captions)
                ));
            }
            if !s.untriggered.is_empty() {
                problems.push(format!(
                    "{dir}: keep-tokens is set but {} do not start with the trigger token: {}",
                    plural(s.untriggered.len(), "caption"),
                    list(&s.untriggered)
                ));
            }
        }
        problems
    }

    /// Why a run is due, from what changed since the last one.
    fn reasons(&self, observed: &LoraObserved, record: &Record) -> Vec<String> {
        let old = &record.inputs;
        let new = &observed.inputs;
        let mut reasons = Vec::new();
        let dataset = dataset_changes(&old.dataset_files, &new.dataset_files);
        if !dataset.is_empty() {
            reasons.push(format!("dataset changed: {dataset}"));
        }
        if old.base_model_sha256 != new.base_model_sha256 {
            reasons.push("base model changed".to_string());
        }
        if old.trainer != new.trainer {
            reasons.push(format!(
                "trainer changed: {} -> {}",
                old.trainer.as_deref().unwrap_or("none"),
                new.trainer.as_deref().unwrap_or("none")
            ));
        }
        if old.venv_packages != new.venv_packages {
            reasons.push(format!(
                "venv changed: {}",
                package_changes(&old.venv_packages, &new.venv_packages)
            ));
        }
        if old.parameters != new.parameters {
            reasons.push("training parameters changed".to_string());
        }
        reasons
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn list(names: &[String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    let more = names.len().saturating_sub(5);
    let extra = format!("and {more} more");
    if more > 0 {
        shown.push(&extra);
    }
    shown.join(", ")
}

fn format_duration(seconds: f64) -> String {
    let secs = seconds.round() as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

// ------------------------------------------------------------------ the kind

#[async_trait]
impl Kind for Lora {
    type Observed = LoraObserved;
    const KIND: &'static str = "lora";

    fn desired(&self) -> Value {
        json!({
            "trainer": self.trainer.describe(),
            "venv": self.venv.describe(),
            "base_model": self.base_model.describe(),
            "run": self.run_parameters(),
            "select": self.select.value.describe(),
            "install_to": self.install_to.as_ref().map(|p| &p.value),
        })
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        self.install_to.iter().map(|p| p.value.clone()).collect()
    }

    fn resolve(&mut self, others: &Others<'_>) {
        self.trainer_dir = match &self.trainer {
            Source::Resource(r) => others
                .get::<Repo>(&r.address)
                .map(|repo| repo.checkout.path.clone())
                .unwrap_or_default(),
            Source::Path(p) => p.value.clone(),
        };
        self.venv_dir = match &self.venv {
            Source::Resource(r) => others
                .get::<Venv>(&r.address)
                .map(|v| v.path().to_path_buf())
                .unwrap_or_default(),
            Source::Path(p) => p.value.clone(),
        };
        match &self.base_model {
            Source::Resource(r) => {
                if let Some(model) = others.get::<Model>(&r.address) {
                    self.base_model_path = model.path.value.clone();
                    self.base_model_sha256 = model.sha256.as_ref().map(|d| d.value.to_hex());
                }
            }
            Source::Path(p) => self.base_model_path = p.value.clone(),
        }
        self.accelerate_config_path = match &self.accelerate_config {
            Some(Source::Resource(r)) => {
                others.get::<File>(&r.address).map(|f| f.path.value.clone())
            }
            Some(Source::Path(p)) => Some(p.value.clone()),
            None => None,
        };
    }

    async fn observe(&self, cx: &ObserveContext<'_>) -> Result<LoraObserved, ResourceError> {
        let record = Record::from_state(cx.prior);
        let mut observed = self.inspect(cx.hashes, record.as_ref())?;
        // A model resource that pins a digest vouches for its file; the
        // digest actually found is used only where nothing is pinned.
        if let (Some(pinned), Some(_)) =
            (&self.base_model_sha256, &observed.inputs.base_model_sha256)
        {
            observed.inputs.base_model_sha256 = Some(pinned.clone());
            observed.fingerprint = observed
                .missing
                .is_empty()
                .then(|| observed.inputs.fingerprint());
        }
        observed.resume = self.resume(observed.fingerprint.as_deref(), &observed.steps);
        Ok(observed)
    }

    fn diff(&self, observed: &LoraObserved, _prior: Option<&ResourceState>) -> Diff {
        let counted_from_spec = observed.subsets.iter().any(|s| s.images.is_none());
        let mut steps = observed.steps.describe();
        if counted_from_spec {
            steps.push_str(" (dataset not present: counts as declared by `images`)");
        }
        let estimate = observed
            .record
            .as_ref()
            .and_then(|r| r.seconds_per_step)
            .map(|s| {
                format!(
                    "about {} at {s:.2} s/step (last run)",
                    format_duration(s * observed.steps.steps as f64)
                )
            });
        let run = |reason: String| {
            let mut diff =
                Diff::new(Action::Run, reason).attribute("steps", None, Some(steps.clone()));
            if let Some(r) = observed.resume.describe(observed.steps.steps) {
                diff = diff.attribute("resume", None, Some(r));
            }
            if let Some(e) = &estimate {
                diff = diff.attribute("estimate", None, Some(e.clone()));
            }
            for s in &observed.subsets {
                let count = match (s.images, s.declared_images) {
                    (Some(n), _) => format!("{n} images"),
                    (None, Some(d)) => format!("not present ({d} images declared)"),
                    (None, None) => "not present".to_string(),
                };
                diff = diff.attribute(
                    "subset",
                    None,
                    Some(format!("{}: {count}", s.image_dir.display())),
                );
            }
            diff = diff.attribute(
                "select",
                None,
                Some(match &self.install_to {
                    Some(p) => format!("{} -> {}", self.select.value.describe(), p.value.display()),
                    None => self.select.value.describe(),
                }),
            );
            if let Some(e) = observed
                .script
                .error()
                .filter(|_| !matches!(observed.script, ScriptFound::Absent(_)))
            {
                diff.warnings.push(e.message);
            }
            let present = !counted_from_spec;
            if present {
                diff.warnings.extend(self.dataset_problems(observed));
            }
            diff
        };
        let Some(record) = &observed.record else {
            return run("never trained".to_string());
        };
        if observed.fingerprint.as_deref() != Some(record.fingerprint.as_str()) {
            let mut reasons = self.reasons(observed, record);
            if !observed.missing.is_empty() {
                reasons.insert(0, format!("missing: {}", observed.missing.join(", ")));
            }
            if reasons.is_empty() {
                reasons.push("inputs changed".into());
            }
            return run(reasons.join("; "));
        }
        let selected = match self.selected_file(record) {
            Ok(s) => s,
            Err(e) => return run(e),
        };
        if observed.selected_sha256.as_deref() != Some(selected.sha256.as_str()) {
            return run(format!(
                "the selected checkpoint {} is missing or changed",
                selected.file.display()
            ));
        }
        let Some(install_to) = &self.install_to else {
            return Diff::no_op();
        };
        let installed_here = record
            .installed
            .as_ref()
            .is_some_and(|i| i.path == install_to.value && i.sha256 == selected.sha256);
        if installed_here && observed.installed_sha256.as_deref() == Some(selected.sha256.as_str())
        {
            return Diff::no_op();
        }
        let reason = if selected.file != record.selected.file {
            format!("selection is now {}", self.select.value.describe())
        } else if observed.installed_sha256.is_none() {
            "the installed file is missing".to_string()
        } else {
            "the installed file differs".to_string()
        };
        Diff::new(Action::Update, reason).attribute(
            "installed",
            record
                .installed
                .as_ref()
                .map(|i| i.path.display().to_string()),
            Some(format!(
                "{} (step {}) -> {}",
                selected.file.display(),
                selected.step,
                install_to.value.display()
            )),
        )
    }

    async fn apply(
        &self,
        observed: &LoraObserved,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        let plasma_dir = cx.log_dir.parent().unwrap_or(cx.log_dir).to_path_buf();
        // Dependencies may have changed the inputs since the plan: read them again.
        let prior = Record::from_state(cx.prior).or_else(|| observed.record.clone());
        let mut now = self.inspect(cx.hashes, prior.as_ref())?;
        if let (Some(pinned), Some(_)) = (&self.base_model_sha256, &now.inputs.base_model_sha256) {
            now.inputs.base_model_sha256 = Some(pinned.clone());
            now.fingerprint = now.missing.is_empty().then(|| now.inputs.fingerprint());
        }
        // Same inputs and the checkpoints still there: only select and install.
        if let Some(record) = prior
            .as_ref()
            .filter(|r| now.fingerprint.as_deref() == Some(r.fingerprint.as_str()))
            && let Ok(selected) = self.selected_file(record)
            && now.selected_sha256.as_deref() == Some(selected.sha256.as_str())
        {
            let mut record = record.clone();
            record.selection = self.select.value.describe();
            record.selected = selected;
            record.installed = self.install(&record.selected, cx)?;
            return Ok(outputs_of(&record));
        }
        if let Some(e) = now.script.error() {
            return Err(e);
        }
        if !self.venv_dir.join("bin").join("python").exists() {
            return Err(ResourceError::new(format!(
                "the venv {} has no bin/python",
                self.venv_dir.display()
            ))
            .help("apply the venv first, or fix the `venv` path"));
        }
        if now.inputs.base_model_sha256.is_none() {
            return Err(ResourceError::new(format!(
                "the base model {} does not exist",
                self.base_model_path.display()
            ))
            .help("apply the model first, or fix the `base-model` path"));
        }
        let problems = self.dataset_problems(&now);
        if !problems.is_empty() {
            return Err(ResourceError::new(format!(
                "the dataset is not ready:\n  {}",
                problems.join("\n  ")
            ))
            .help("fix the dataset (every image needs a caption file starting with the trigger token), then apply again"));
        }
        let fingerprint = now.fingerprint.clone().expect("every input is present");

        let toml = self.work_dir(&plasma_dir).join("dataset.toml");
        crate::fsutil::write_atomic(&toml, self.dataset().to_toml().as_bytes(), None)
            .map_err(|e| ResourceError::io("cannot write", &toml, e))?;
        // A stopped run of these very inputs goes on from its newest saved
        // state where the trainer resumes correctly (kohya::resume).
        let resume = self.resume(Some(&fingerprint), &now.steps);
        let run_path = RunFile::path(&self.output_dir, &self.output_name);
        let run_file = match (&resume, RunFile::load(&run_path)) {
            (Resume::From(state), Some(old)) => RunFile {
                losses: old
                    .losses
                    .into_iter()
                    .filter(|(s, _)| *s <= state.step)
                    .collect(),
                ..old
            },
            _ => RunFile {
                fingerprint: fingerprint.clone(),
                started: resume::unix_seconds(SystemTime::now()),
                losses: Vec::new(),
            },
        };
        std::fs::create_dir_all(&self.output_dir)
            .and_then(|()| run_file.save(&run_path))
            .map_err(|e| ResourceError::io("cannot write", &run_path, e))?;
        let invocation = self.invocation_with(&plasma_dir, &resume.args());
        let log = crate::logfile::LogFile::open(&cx.log_file());
        if let Some(words) = resume.describe(now.steps.steps) {
            log.line(&format!("plasma: {words}"));
        }
        let run = self
            .train(&invocation, now.steps.steps, resume.offset(), run_file, cx)
            .await?;
        let _ = std::fs::remove_file(&run_path);

        // Checkpoints written by this run.
        let found = checkpoints::discover(&self.output_dir, &self.output_name)
            .map_err(|e| ResourceError::io("cannot list", &self.output_dir, e))?;
        let since = run.started - Duration::from_secs(2);
        let resumed_from = Some(resume.offset()).filter(|s| *s > 0);
        let mut records = Vec::new();
        let last_step = run.last_step.unwrap_or(now.steps.steps);
        for f in found.into_iter().filter(|f| f.modified >= since) {
            let path = f.path.clone();
            let digest = tokio::task::spawn_blocking(move || crate::hashing::hash_file(&path))
                .await
                .map_err(|e| ResourceError::new(format!("hashing stopped: {e}")))?
                .map_err(|e| {
                    ResourceError::new(format!("cannot read {}: {}", e.path.display(), e.source))
                })?;
            if let Ok(key) = FileKey::of(&f.path) {
                cx.hashes.put(&f.path, key, digest);
            }
            let step = f.step.unwrap_or(last_step);
            records.push(CheckpointRecord {
                loss: loss_at(&run.losses, step),
                file: f.path,
                step,
                sha256: digest.to_hex(),
                last: f.step.is_none(),
            });
        }
        if records.is_empty() {
            return Err(ResourceError::new(format!(
                "the trainer finished but wrote no {} into {}",
                checkpoints::final_file_name(&self.output_name),
                self.output_dir.display()
            ))
            .help(format!("its output is in {}", cx.log_file().display())));
        }
        let selected = select(&records, self.select.value).map_err(ResourceError::new)?;
        let chart_path = self
            .output_dir
            .join(format!("{}-loss.svg", self.output_name));
        let svg = crate::kohya::chart::svg(
            &format!("{} loss", self.output_name),
            &run.losses,
            Some(selected.step),
        );
        let chart = crate::fsutil::write_atomic(&chart_path, svg.as_bytes(), None)
            .ok()
            .map(|_| chart_path);
        let installed = self.install(&selected, cx)?;
        let record = Record {
            fingerprint,
            inputs: now.inputs,
            total_steps: run.total.unwrap_or(now.steps.steps),
            seconds: run.seconds,
            seconds_per_step: run.seconds_per_step,
            checkpoints: records,
            losses: run.losses,
            selection: self.select.value.describe(),
            selected,
            installed,
            chart,
            resumed_from,
        };
        Ok(outputs_of(&record))
    }

    fn outputs(&self, observed: &LoraObserved) -> Outputs {
        observed.record.as_ref().map(outputs_of).unwrap_or_default()
    }

    fn lint(&self, cx: &LintContext<'_>) -> Vec<Lint> {
        self.lints(cx)
    }

    /// The last run's loss table (selection marked) and chart.
    fn show(&self, recorded: Option<&Outputs>) -> Option<String> {
        report(recorded?)
    }
}

fn outputs_of(record: &Record) -> Outputs {
    let mut out = Outputs::new();
    out.insert(
        "run".into(),
        serde_json::to_value(record).unwrap_or(Value::Null),
    );
    out
}

/// The average loss shown at `step`, or the last one shown before it.
fn loss_at(losses: &[(u64, f64)], step: u64) -> Option<f64> {
    losses
        .iter()
        .rev()
        .find(|(s, _)| *s <= step)
        .map(|(_, l)| *l)
        .filter(|l| l.is_finite())
}

/// What one run of the trainer gave.
struct RunResult {
    started: SystemTime,
    seconds: f64,
    seconds_per_step: Option<f64>,
    total: Option<u64>,
    last_step: Option<u64>,
    losses: Vec<(u64, f64)>,
}

/// Events from both output streams, and the end of the run.
enum Message {
    Output(Vec<Event>),
}

impl Lora {
    /// Copies the selected checkpoint to `install-to`, atomically.
    fn install(
        &self,
        selected: &CheckpointRecord,
        cx: &ApplyContext<'_>,
    ) -> Result<Option<Installed>, ResourceError> {
        let Some(target) = &self.install_to else {
            return Ok(None);
        };
        let target = &target.value;
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ResourceError::io("cannot create", dir, e))?;
        }
        let staging = crate::fsutil::staging_path(target);
        let copy = (|| {
            std::fs::copy(&selected.file, &staging)?;
            std::fs::File::open(&staging)?.sync_all()?;
            std::fs::rename(&staging, target)?;
            crate::fsutil::sync_parent(target)
        })();
        if let Err(e) = copy {
            let _ = std::fs::remove_file(&staging);
            return Err(ResourceError::io("cannot install to", target, e));
        }
        if let (Ok(key), Ok(digest)) = (FileKey::of(target), Sha256Digest::parse(&selected.sha256))
        {
            cx.hashes.put(target, key, digest);
        }
        Ok(Some(Installed {
            path: target.clone(),
            sha256: selected.sha256.clone(),
        }))
    }

    /// Runs the trainer in its own process group, output to the log, a bar
    /// with the current loss; stops it on Ctrl-C or a NaN loss. `offset` is
    /// the step a resumed run goes on from (its bar counts from there);
    /// `run_file` (its losses so far) is kept at each checkpoint save.
    async fn train(
        &self,
        invocation: &Invocation,
        planned: u64,
        offset: u64,
        mut run_file: RunFile,
        cx: &ApplyContext<'_>,
    ) -> Result<RunResult, ResourceError> {
        let run_path = RunFile::path(&self.output_dir, &self.output_name);
        let log_path = cx.log_file();
        let log = crate::logfile::LogFile::open(&log_path);
        log.line(&format!("$ {}", invocation.shell_line()));
        let mut command = tokio::process::Command::new(&invocation.program);
        command
            .args(&invocation.args)
            .current_dir(&invocation.cwd)
            .envs(invocation.env.iter().cloned())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let started = run_file.started_at();
        let clock = Instant::now();
        // In its own process group, registered so that a second Ctrl-C and
        // the next apply after a killed plasma find it.
        let mut running = crate::child::spawn_async(&mut command).map_err(|e| {
            ResourceError::new(format!(
                "cannot start {}: {e}",
                invocation.program.display()
            ))
            .help("the venv must have the launcher (`accelerate`, or `python`) in its bin/")
        })?;
        let child = &mut running.child;
        let pgid = child.id().unwrap_or(0);
        let _group = GroupGuard(pgid);

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let readers = [
            spawn_reader(stdout, tx.clone(), tail.clone(), log_path.clone()),
            spawn_reader(stderr, tx, tail.clone(), log_path.clone()),
        ];

        let bar = cx.bars.add(indicatif::ProgressBar::new(planned));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(cx.address.to_string());

        let mut losses: Vec<(u64, f64)> = std::mem::take(&mut run_file.losses);
        let mut total = None;
        let mut last_step = None;
        let mut first_step_at: Option<(u64, Instant)> = None;
        let mut last_step_at: Option<(u64, Instant)> = None;
        let mut stopped: Option<String> = None;
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                Some(Message::Output(events)) = rx.recv() => {
                    for event in events {
                        match event {
                            Event::TotalSteps(n) => {
                                total = Some(n);
                                bar.set_length(n);
                            }
                            Event::Step { step, total: bar_total, loss } => {
                                let step = offset + step;
                                last_step = Some(step);
                                let now = Instant::now();
                                if first_step_at.is_none() {
                                    first_step_at = Some((step, now));
                                }
                                last_step_at = Some((step, now));
                                if total.is_none() {
                                    bar.set_length(offset + bar_total);
                                }
                                bar.set_position(step);
                                if let Some(loss) = loss {
                                    if loss.is_nan() && stopped.is_none() {
                                        stopped = Some(format!("the loss became NaN at step {step}"));
                                        process::signal_group(pgid, libc::SIGKILL);
                                    }
                                    bar.set_message(format!("loss {loss:.4}"));
                                    match losses.last_mut() {
                                        Some((s, l)) if *s == step => *l = loss,
                                        _ => losses.push((step, loss)),
                                    }
                                }
                            }
                            Event::Saving(path) => {
                                log.line(&format!("plasma: checkpoint {path}"));
                                run_file.losses.clone_from(&losses);
                                let _ = run_file.save(&run_path);
                            }
                        }
                    }
                }
                _ = ticker.tick() => {
                    if crate::apply::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) && stopped.is_none() {
                        stopped = Some("apply was interrupted".into());
                        stop_group(pgid).await;
                    }
                }
                Some(_) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {
                    stopped = Some("plasma was terminated".into());
                    stop_group(pgid).await;
                }
            }
        };
        // Whatever is left of the group (a launcher's trainer, loader workers) goes too.
        process::signal_group(pgid, libc::SIGKILL);
        for reader in readers {
            let _ = reader.await;
        }
        while let Ok(Message::Output(events)) = rx.try_recv() {
            for event in events {
                match event {
                    Event::TotalSteps(n) => total = Some(n),
                    Event::Step { step, loss, .. } => {
                        let step = offset + step;
                        last_step = Some(step);
                        if let Some(loss) = loss {
                            match losses.last_mut() {
                                Some((s, l)) if *s == step => *l = loss,
                                _ => losses.push((step, loss)),
                            }
                        }
                    }
                    Event::Saving(_) => {}
                }
            }
        }
        bar.finish_and_clear();
        cx.bars.remove(&bar);
        let status = status.map_err(|e| ResourceError::new(format!("lost the trainer: {e}")))?;
        let seconds = clock.elapsed().as_secs_f64();
        log.line(&format!(
            "plasma: trainer exited ({status}) after {}",
            format_duration(seconds)
        ));
        let tail_text = tail.lock().map(|t| t.clone()).unwrap_or_default();
        if let Some(reason) = stopped {
            return Err(
                ResourceError::new(format!("training stopped: {reason}")).help(format!(
                    "nothing was installed; its output is in {}",
                    log_path.display()
                )),
            );
        }
        if !status.success() {
            use std::os::unix::process::ExitStatusExt;
            return Err(self.explain_failure(&tail_text, status.signal(), &log_path));
        }
        let seconds_per_step = match (first_step_at, last_step_at) {
            (Some((a, t0)), Some((b, t1))) if b > a => {
                Some((t1 - t0).as_secs_f64() / (b - a) as f64)
            }
            _ => None,
        };
        Ok(RunResult {
            started,
            seconds,
            seconds_per_step,
            total,
            last_step,
            losses,
        })
    }

    /// A failed run in words, with what to do.
    fn explain_failure(&self, output: &str, signal: Option<i32>, log: &Path) -> ResourceError {
        let tail: Vec<&str> = output
            .lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(8)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let see = format!("the whole output is in {}", log.display());
        let error = match log::diagnose(output, signal) {
            Failure::Killed => {
                let mut drivers = vec![
                    format!("batch-size {}", self.batch_size.value),
                    format!("resolution {:?}", self.resolution.value.size()),
                ];
                if let Some(d) = self.int_param("network-dim") {
                    drivers.push(format!("network-dim {d}"));
                }
                if !self.flag_param("gradient-checkpointing") {
                    drivers.push("no gradient-checkpointing".into());
                }
                if !self.flag_param("cache-latents") {
                    drivers.push("no cache-latents".into());
                }
                return ResourceError::new(format!(
                    "the trainer was killed (SIGKILL), most likely by the system running out of memory; nothing was installed. Memory is driven by: {}",
                    drivers.join(", ")
                ))
                .help(format!("lower batch-size or resolution, add `gradient-checkpointing` or `cache-latents`, close other GPU users (ComfyUI), then apply again; {see}"));
            }
            Failure::Fp16NeedsGpu(line) => ResourceError::new(format!("the trainer refused mixed precision: {line}"))
                .help("write `mixed-precision \"no\"` (and mixed_precision: \"no\" in accelerate's config): fp16 needs CUDA"),
            Failure::Fp16OnCpu => ResourceError::new("fp16 mixed precision failed on the CPU (`expected m1 and m2 to have the same dtype`)")
                .help("write `mixed-precision \"no\"`: fp16 needs a GPU"),
            Failure::MissingModule(m) => {
                let venv = self.venv.describe();
                ResourceError::new(format!("the trainer needs the Python module `{m}`, which {venv} does not have"))
                    .help(format!("add the package that provides `{m}` to {venv} (a `package` pin or its requirements file) and apply again"))
            }
            Failure::TokenizerOffline => ResourceError::new(
                "the trainer could not load the CLIP tokenizer (openai/clip-vit-large-patch14): it is fetched from the Hugging Face Hub, and this machine is offline",
            )
            .help("set `tokenizer-cache \"DIR\"` to a folder holding openai_clip-vit-large-patch14/ (ComfyUI ships the files in comfy/sd1_tokenizer/), or run once online"),
            Failure::Other => {
                return ResourceError::new(format!("the trainer failed:\n{}", tail.join("\n"))).help(see);
            }
        };
        ResourceError::new(format!("{}\n{}", error.message, tail.join("\n")))
            .help(format!("{}; {see}", error.help.unwrap_or_default()))
    }
}

/// Kills the group when the run is left for any reason (an error, a drop).
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        process::signal_group(self.0, libc::SIGKILL);
    }
}

/// SIGINT to the group, then SIGKILL after the grace period.
async fn stop_group(pgid: u32) {
    process::signal_group(pgid, libc::SIGINT);
    let deadline = Instant::now() + STOP_GRACE;
    while process::group_alive(pgid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    process::signal_group(pgid, libc::SIGKILL);
}

/// Reads one output stream into the log, the tail and the parser.
fn spawn_reader(
    mut stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    tx: tokio::sync::mpsc::UnboundedSender<Message>,
    tail: std::sync::Arc<std::sync::Mutex<String>>,
    log_path: PathBuf,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let log = crate::logfile::LogFile::open(&log_path);
        let mut parser = LogParser::default();
        let mut buf = vec![0u8; 16 * 1024];
        let mut carry = Vec::new();
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            carry.extend_from_slice(&buf[..n]);
            // Keep an incomplete UTF-8 sequence for the next read.
            let valid = match std::str::from_utf8(&carry) {
                Ok(_) => carry.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => carry.len(),
            };
            let text = String::from_utf8_lossy(&carry[..valid]).into_owned();
            carry.drain(..valid);
            log.write(&text);
            if let Ok(mut t) = tail.lock() {
                t.push_str(&text);
                let excess = t.len().saturating_sub(64 * 1024);
                if excess > 0 {
                    let cut = (excess..t.len())
                        .find(|i| t.is_char_boundary(*i))
                        .unwrap_or(t.len());
                    t.drain(..cut);
                }
            }
            let events = parser.feed(&text);
            if !events.is_empty() && tx.send(Message::Output(events)).is_err() {
                break;
            }
        }
        let events = parser.finish();
        if !events.is_empty() {
            let _ = tx.send(Message::Output(events));
        }
    })
}

// ------------------------------------------------------------------ lints

impl Lora {
    fn lints(&self, cx: &LintContext<'_>) -> Vec<Lint> {
        let mut lints = Vec::new();
        for s in &self.subsets {
            if let Some(prefix) = dataset::ignored_prefix(&s.subset.image_dir) {
                lints.push(lint::DATASET_PREFIX_IGNORED.at(
                    s.span,
                    format!(
                        "the folder prefix `{prefix}_` is ignored under a dataset TOML: this subset repeats {} time{} per epoch",
                        s.subset.num_repeats,
                        if s.subset.num_repeats == 1 { "" } else { "s" }
                    ),
                    &format!("`{prefix}_` here is only part of the path"),
                    "the trainer parses `N_` prefixes only without --dataset_config; set `repeats` on the subset (and rename the folder if the number misleads)",
                ));
            }
        }
        let mps = cx.accelerator() == Some("mps");
        if mps
            && let Some(mp) = self
                .text_param("mixed-precision")
                .filter(|m| *m == "fp16" || *m == "bf16")
        {
            let span = self.param_span("mixed-precision").unwrap_or(self.span);
            lints.push(lint::MIXED_PRECISION_ON_MPS.at(
                span,
                format!("{mp} mixed precision does not train on MPS"),
                "on a platform with accelerator=mps",
                "write `mixed-precision \"no\"` and train in fp32 on Apple Silicon",
            ));
        }
        if mps
            && let Some(opt) = self
                .text_param("optimizer")
                .filter(|o| o.to_ascii_lowercase().contains("8bit"))
        {
            let span = self.param_span("optimizer").unwrap_or(self.span);
            lints.push(lint::EIGHT_BIT_OPTIMIZER_ON_MPS.at(
                span,
                format!("the optimizer {opt} needs bitsandbytes, which needs CUDA"),
                "8-bit optimizer on a platform with accelerator=mps",
                "write `optimizer \"AdamW\"`",
            ));
        }
        if self.flag_param("cache-latents")
            && let Some(s) = self.subsets.iter().find(|s| s.subset.flip_aug)
        {
            lints.push(lint::FLIP_AUG_WITH_CACHE_LATENTS.at(
                s.span,
                "flip-aug with cache-latents caches every latent twice (flipped and not)",
                "this subset flips",
                "drop `flip-aug` (pre-flip the images that may be flipped) or `cache-latents`",
            ));
        }
        if let Some(memory) = cx.platform.memory_gb.as_ref().filter(|m| m.value <= 16) {
            let (w, h) = self.resolution.value.size();
            if self.batch_size.value > 1 {
                lints.push(lint::TRAINING_MEMORY.at(
                    self.batch_size.span,
                    format!("batch size {} on a {} GB machine", self.batch_size.value, memory.value),
                    "more than one image per step",
                    "use `batch-size 1` (and `gradient-accumulation-steps` for a larger effective batch)",
                ));
            }
            if u64::from(w) * u64::from(h) > 512 * 768 {
                lints.push(lint::TRAINING_MEMORY.at(
                    self.resolution.span,
                    format!("resolution {w}×{h} on a {} GB machine", memory.value),
                    "above 512×768",
                    "train at 512 (or 512×768) on a machine with 16 GB or less",
                ));
            }
        }
        lints
    }
}

// ------------------------------------------------------------------ show

/// The loss table (selection marked) and the loss chart of the last run,
/// from the resource's recorded outputs; `None` before any run.
fn report(outputs: &Outputs) -> Option<String> {
    let record: Record = serde_json::from_value(outputs.get("run")?.clone()).ok()?;
    let mut out = String::new();
    out.push_str(&format!(
        "last run: {} steps in {}{}{}\n",
        record.total_steps,
        format_duration(record.seconds),
        record
            .seconds_per_step
            .map(|s| format!(" ({s:.2} s/step)"))
            .unwrap_or_default(),
        record
            .resumed_from
            .map(|s| format!(", resumed at step {s} from a saved state"))
            .unwrap_or_default()
    ));
    out.push_str("  step      loss  sha256        file\n");
    for c in &record.checkpoints {
        let mark = if c.file == record.selected.file {
            "*"
        } else {
            " "
        };
        let loss = c
            .loss
            .map_or_else(|| "-".to_string(), |l| format!("{l:.4}"));
        out.push_str(&format!(
            "{mark} {:>6} {loss:>9}  {}  {}\n",
            c.step,
            &c.sha256[..c.sha256.len().min(12)],
            c.file.display()
        ));
    }
    out.push_str(&format!("* selected ({})", record.selection));
    match &record.installed {
        Some(i) => out.push_str(&format!(", installed at {}\n", i.path.display())),
        None => out.push('\n'),
    }
    out.push_str(&crate::kohya::chart::terminal(&record.losses, 60, 10));
    if let Some(chart) = &record.chart {
        out.push_str(&format!("chart: {}\n", chart.display()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(step: u64, loss: Option<f64>, last: bool) -> CheckpointRecord {
        CheckpointRecord {
            file: PathBuf::from(format!("/o/x-{step}{last}")),
            step,
            sha256: "0".repeat(64),
            loss,
            last,
        }
    }

    #[test]
    fn selection_picks_final_min_loss_or_a_step() {
        let cps = [
            cp(200, Some(0.3), false),
            cp(400, Some(0.1), false),
            cp(600, Some(0.2), false),
            cp(600, Some(0.2), true),
        ];
        assert_eq!(select(&cps, Selection::Final).unwrap(), cps[3]);
        assert_eq!(select(&cps, Selection::MinLoss).unwrap(), cps[1]);
        assert_eq!(select(&cps, Selection::Step(600)).unwrap(), cps[2]);
        let err = select(&cps, Selection::Step(500)).unwrap_err();
        assert!(err.contains("200, 400, 600"), "{err}");
    }

    #[test]
    fn dataset_changes_are_counted_in_words() {
        let rec = |b: &str| FileRecord {
            size: 1,
            mtime_ns: 0,
            blake3: b.into(),
        };
        let old: BTreeMap<String, FileRecord> =
            [("t/a.png", "1"), ("t/a.txt", "2"), ("t/b.png", "3")]
                .iter()
                .map(|(k, v)| (k.to_string(), rec(v)))
                .collect();
        let mut new = old.clone();
        new.insert("t/c.png".into(), rec("4"));
        new.insert("t/d.png".into(), rec("5"));
        new.insert("t/a.txt".into(), rec("changed"));
        assert_eq!(
            dataset_changes(&old, &new),
            "2 images added, 1 caption edited"
        );
        new.remove("t/b.png");
        assert_eq!(
            dataset_changes(&old, &new),
            "2 images added, 1 image removed, 1 caption edited"
        );
    }

    #[test]
    fn loss_at_a_step_is_the_last_shown_up_to_it() {
        let losses = [(1, 0.5), (2, 0.4), (4, 0.3)];
        assert_eq!(loss_at(&losses, 3), Some(0.4));
        assert_eq!(loss_at(&losses, 4), Some(0.3));
        assert_eq!(loss_at(&losses, 0), None);
    }
}
