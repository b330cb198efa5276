//! Step 3, lint: domain rules learnt the hard way, checked before anything
//! runs. Each rule has a code, a severity, an explanation and a fix; a
//! resource silences one with `allow CODE`.

use std::collections::HashMap;
use std::path::PathBuf;

use miette::{Severity, SourceSpan};
use serde_json::Value;

use crate::diagnostic::Problem;
use crate::platform::{self, Facts};
use crate::spec::{Declared, Platform, Spec};

/// A lint finding is a problem whose code is the rule's name.
pub type Lint = Problem;

/// A domain rule.
pub struct Rule {
    pub code: &'static str,
    pub severity: Severity,
    /// Why the rule exists, for `plasma explain`-style help.
    pub summary: &'static str,
}

pub const FP16_ON_MPS: Rule = Rule {
    code: "fp16-on-mps",
    severity: Severity::Error,
    summary: "accelerate's fp16 mixed precision fails on Apple's MPS device \
              (\"fp16 mixed precision requires a GPU (not 'mps')\")",
};

pub const CPU_WITH_ACCELERATOR: Rule = Rule {
    code: "cpu-with-accelerator",
    severity: Severity::Error,
    summary: "`use_cpu: true` makes accelerate ignore the machine's GPU; accelerate's own \
              config writer sets it on a Mac",
};

pub const PATH_OWNED_TWICE: Rule = Rule {
    code: "path-owned-twice",
    severity: Severity::Error,
    summary: "two resources that own one path fight over it on every apply",
};

pub const PLATFORM_MISMATCH: Rule = Rule {
    code: "platform-mismatch",
    severity: Severity::Warning,
    summary: "the spec's `platform` says it is for another kind of machine",
};

pub const REQUIREMENT_UNMET: Rule = Rule {
    code: "requirement-unmet",
    severity: Severity::Error,
    summary: "a resource's `requires` asks for more memory or another accelerator than the \
              machine (or the spec's declared platform) has: it would fail or swap for hours \
              (the LTX-Video MPS fork needs about 90 GB)",
};

pub const CUDA_ONLY_ON_MACOS: Rule = Rule {
    code: "cuda-only-on-macos",
    severity: Severity::Error,
    summary: "bitsandbytes, xformers, triton and similar packages (8-bit optimizers, \
              flash attention, NVIDIA runtime wheels) need CUDA: on macOS they fail to \
              install or silently fall back to slow paths",
};

pub const SUBMODULES_NOT_INITIALISED: Rule = Rule {
    code: "submodules-not-initialised",
    severity: Severity::Warning,
    summary: "a clone whose submodules are not initialised has empty folders where code \
              belongs (kohya_ss's sd-scripts was silently empty)",
};

pub const PICKLE_MODEL: Rule = Rule {
    code: "pickle-model",
    severity: Severity::Error,
    summary: "a .ckpt/.pth/.pt/.bin model is a Python pickle, and loading one can run \
              arbitrary code: it needs `allow-pickle #true`",
};

pub const UNPINNED_MODEL: Rule = Rule {
    code: "unpinned-model",
    severity: Severity::Warning,
    summary: "a model without `sha256` trusts whatever the server sends the first time \
              (the digest is recorded then; `plasma pin` writes it into the spec)",
};

pub const SERVICE_EXPOSED: Rule = Rule {
    code: "service-exposed",
    severity: Severity::Error,
    summary: "ComfyUI has no authentication: listening beyond loopback (bare `--listen`, \
              0.0.0.0, ::) lets anyone on the network queue work and install nodes on this machine",
};

pub const DATASET_PREFIX_IGNORED: Rule = Rule {
    code: "dataset-prefix-ignored",
    severity: Severity::Warning,
    summary: "under a dataset TOML, train_network.py never reads a folder's `N_` prefix: the \
              subset repeats `num_repeats` times (default 1), whatever the folder is called",
};

pub const MIXED_PRECISION_ON_MPS: Rule = Rule {
    code: "mixed-precision-on-mps",
    severity: Severity::Error,
    summary: "a LoRA run with fp16 or bf16 mixed precision on Apple's MPS device fails \
              (\"fp16 mixed precision requires a GPU (not 'mps')\")",
};

pub const EIGHT_BIT_OPTIMIZER_ON_MPS: Rule = Rule {
    code: "optimizer-8bit-on-mps",
    severity: Severity::Error,
    summary: "8-bit optimizers (AdamW8bit, Lion8bit, …) come from bitsandbytes, which needs CUDA",
};

pub const FLIP_AUG_WITH_CACHE_LATENTS: Rule = Rule {
    code: "flip-aug-with-cache-latents",
    severity: Severity::Warning,
    summary: "flip-aug with cache-latents caches every latent twice, and flips every image \
              (including asymmetric ones the dataset did not pre-flip)",
};

pub const TRAINING_MEMORY: Rule = Rule {
    code: "training-memory",
    severity: Severity::Warning,
    summary: "on a machine with 16 GB or less, a LoRA batch above 1 or a resolution above \
              512×768 runs out of memory (the trainer is killed)",
};

/// Every rule, so `allow` can be checked.
pub const RULES: &[&Rule] = &[
    &FP16_ON_MPS,
    &CPU_WITH_ACCELERATOR,
    &PATH_OWNED_TWICE,
    &PLATFORM_MISMATCH,
    &REQUIREMENT_UNMET,
    &CUDA_ONLY_ON_MACOS,
    &SUBMODULES_NOT_INITIALISED,
    &PICKLE_MODEL,
    &UNPINNED_MODEL,
    &SERVICE_EXPOSED,
    &DATASET_PREFIX_IGNORED,
    &MIXED_PRECISION_ON_MPS,
    &EIGHT_BIT_OPTIMIZER_ON_MPS,
    &FLIP_AUG_WITH_CACHE_LATENTS,
    &TRAINING_MEMORY,
];

impl Rule {
    pub fn at(
        &self,
        span: SourceSpan,
        message: impl Into<String>,
        label: &str,
        help: &str,
    ) -> Lint {
        let mut problem = Problem::error(self.code, message)
            .label(span, label)
            .help(help);
        problem.severity = self.severity;
        problem
    }
}

/// What a kind's lint may consult.
pub struct LintContext<'a> {
    pub platform: &'a Platform,
}

impl LintContext<'_> {
    pub fn accelerator(&self) -> Option<&str> {
        self.platform
            .accelerator
            .as_ref()
            .map(|a| a.value.as_str())
            .filter(|a| *a != "none" && *a != "cpu")
    }
}

/// Rules for accelerate's `default_config.yaml`, wherever a file declares one.
pub fn accelerate_settings(
    get: impl Fn(&str) -> Option<(Value, SourceSpan)>,
    cx: &LintContext<'_>,
) -> Vec<Lint> {
    let mut lints = Vec::new();
    let Some(accelerator) = cx.accelerator() else {
        return lints;
    };
    if let Some((value, span)) = get("mixed_precision")
        && accelerator == "mps"
        && value.as_str() == Some("fp16")
    {
        lints.push(FP16_ON_MPS.at(
            span,
            "fp16 mixed precision does not work on MPS",
            "fp16 here, on a platform with accelerator=mps",
            "write `mixed_precision \"no\"`: train in fp32 on Apple Silicon",
        ));
    }
    if let Some((value, span)) = get("use_cpu")
        && value == Value::Bool(true)
    {
        lints.push(CPU_WITH_ACCELERATOR.at(
            span,
            format!("use_cpu is true on a machine with accelerator={accelerator}"),
            "training would run on the CPU",
            "write `use_cpu #false`",
        ));
    }
    lints
}

/// Whether a (normalised) package name needs CUDA to work.
pub fn is_cuda_only(name: &str) -> bool {
    const CUDA_ONLY: &[&str] = &[
        "bitsandbytes",
        "xformers",
        "triton",
        "flash-attn",
        "deepspeed",
        "apex",
    ];
    CUDA_ONLY.contains(&name) || name.starts_with("nvidia-") || name.starts_with("bitsandbytes-")
}

/// CUDA-only packages pinned, or named in a requirements file, on a spec
/// for macOS. Requirement lines with an environment marker (`; sys_platform
/// != "darwin"`) are skipped: the installer already leaves them out there.
pub fn cuda_only_packages<'p>(
    pins: impl IntoIterator<Item = (String, SourceSpan)>,
    requirement_files: impl IntoIterator<Item = (&'p std::path::Path, SourceSpan)>,
    cx: &LintContext<'_>,
) -> Vec<Lint> {
    let mut lints = Vec::new();
    if cx.platform.os.as_ref().is_none_or(|o| o.value != "macos") {
        return lints;
    }
    for (name, span) in pins {
        if is_cuda_only(&name) {
            lints.push(CUDA_ONLY_ON_MACOS.at(
                span,
                format!("{name} needs CUDA, and this spec is for macOS"),
                "pinned here",
                &format!("remove the pin, and add `forbid {name}` to keep it out"),
            ));
        }
    }
    for (file, span) in requirement_files {
        // A file that does not exist yet (cloned by a dependency) is checked once it does.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (line, name, content) in crate::python::named_requirements(&text) {
            let name = crate::python::normalize_name(&name);
            if is_cuda_only(&name) && !content.contains(';') {
                lints.push(CUDA_ONLY_ON_MACOS.at(
                    span,
                    format!(
                        "{} line {line} asks for {name}, which needs CUDA, and this spec is for macOS",
                        file.display()
                    ),
                    "required through this file",
                    &format!(
                        "use a requirements file without `{content}`, or add `forbid {name}` so an install that needs it fails clearly"
                    ),
                ));
            }
        }
    }
    lints
}

/// Runs every rule over a loaded spec and drops what resources allow.
/// Unknown `allow` codes are errors themselves.
pub fn run(spec: &Spec) -> Vec<Problem> {
    let facts = platform::current();
    let cx = LintContext {
        platform: &spec.platform,
    };
    let mut problems = Vec::new();
    // Each path's first owner, and whether that owner allows sharing it.
    let mut owners: HashMap<PathBuf, (String, SourceSpan, bool)> = HashMap::new();
    for declared in &spec.resources {
        let allowed = |code: &str| declared.allow.iter().any(|a| a.value == code);
        let requirements = requirement_unmet(declared, &spec.platform, facts);
        for lint in declared.resource.lint(&cx).into_iter().chain(requirements) {
            if !allowed(&lint.code) {
                problems.push(lint);
            }
        }
        for path in declared.resource.owned_paths() {
            if let Some((other, first, first_allows)) = owners.get(&path) {
                if !allowed(PATH_OWNED_TWICE.code) && !first_allows {
                    problems.push(
                        PATH_OWNED_TWICE
                            .at(
                                declared.span,
                                format!(
                                    "`{}` and `{other}` both own {}",
                                    declared.address,
                                    path.display()
                                ),
                                "second owner",
                                "give each resource its own path",
                            )
                            .label(*first, "first owner"),
                    );
                }
            } else {
                let allows = allowed(PATH_OWNED_TWICE.code);
                owners.insert(path, (declared.address.to_string(), declared.span, allows));
            }
        }
    }
    problems.extend(platform_mismatch(spec, facts));
    problems
        .into_iter()
        .map(|p| p.with_source(&spec.source))
        .collect()
}

/// The spec says what machine it is for; say so when this is not it. A
/// warning here (plan, validate and drift still run); `apply` refuses it
/// unless told `--ignore-platform`.
fn platform_mismatch(spec: &Spec, facts: &Facts) -> Option<Problem> {
    let differences = platform::differences(&spec.platform, facts);
    if differences.is_empty() {
        return None;
    }
    let p = &spec.platform;
    let span = [
        p.os.as_ref().map(|v| v.span),
        p.arch.as_ref().map(|v| v.span),
        p.accelerator.as_ref().map(|v| v.span),
        p.memory_gb.as_ref().map(|v| v.span),
    ]
    .into_iter()
    .flatten()
    .next()
    .or(spec.platform_span)?;
    Some(PLATFORM_MISMATCH.at(
        span,
        format!(
            "this spec is for another machine: {}",
            differences.join("; ")
        ),
        "declared platform",
        &format!(
            "this machine is {}; plans here show what would change on this machine, and \
             `plasma apply` refuses to run without --ignore-platform",
            facts.summary()
        ),
    ))
}

/// `requires memory=… accelerator=…` against the machine's facts and the
/// spec's declared platform: whichever has less (or another accelerator) fails.
fn requirement_unmet(declared: &Declared, platform: &Platform, facts: &Facts) -> Vec<Lint> {
    let mut lints = Vec::new();
    let requires = &declared.requires;
    if let Some(need) = &requires.memory {
        let declared_bytes = platform.memory_gb.as_ref().map(|g| g.value << 30);
        let short = [
            (facts.memory_bytes, "this machine"),
            (declared_bytes, "the spec's platform"),
        ]
        .into_iter()
        .filter_map(|(have, who)| have.filter(|h| *h < need.value).map(|h| (h, who)))
        .next();
        if let Some((have, who)) = short {
            lints.push(REQUIREMENT_UNMET.at(
                need.span,
                format!(
                    "`{}` needs {} of memory; {who} has {}",
                    declared.address,
                    gib(need.value),
                    gib(have)
                ),
                "required here",
                "run it on a machine with enough memory, or remove the resource from this machine's spec",
            ));
        }
    }
    if let Some(need) = &requires.accelerator {
        let declared_acc = platform
            .accelerator
            .as_ref()
            .map(|a| a.value.as_str())
            .map(|a| if a == "none" { "cpu" } else { a });
        let wrong = [
            (Some(facts.accelerator.as_str()), "this machine"),
            (declared_acc, "the spec's platform"),
        ]
        .into_iter()
        .find_map(|(have, who)| have.filter(|h| *h != need.value).map(|h| (h, who)));
        if let Some((have, who)) = wrong {
            lints.push(REQUIREMENT_UNMET.at(
                need.span,
                format!(
                    "`{}` needs accelerator {}; {who} has {have}",
                    declared.address, need.value
                ),
                "required here",
                "run it on a machine with that accelerator, or remove the resource from this machine's spec",
            ));
        }
    }
    lints
}

/// Bytes as GiB with one decimal (`95.5 GiB`).
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
