//! `model`: a model file (checkpoint, ControlNet, VAE, LoRA) downloaded or
//! copied into place and verified by SHA-256.
//!
//! The heavy lifting lives in the layers: [`crate::download`] streams, hashes,
//! resumes and places the file; [`crate::hashing`] hashes files; the engine's
//! [`crate::hashcache::HashCache`] remembers digests by file identity so a
//! converged plan reads no file contents; [`crate::safetensors`] reads the
//! header of `.safetensors` files. This module decides what the spec means and
//! what the plan says.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::logfile::LogFile;
use miette::SourceSpan;
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApplyContext, Kind, ObserveContext, Outputs, ResourceError};
use crate::diagnostic::Problem;
use crate::download::{self, Credential, DownloadError, DownloadRequest, Expected, SecretToken};
use crate::hashing::{self, FileKey, Sha256Digest};
use crate::lint::{self, Lint, LintContext};
use crate::plan::{Action, Diff};
use crate::safetensors::{self, Architecture};
use crate::size::{self, ExpectedSize};
use crate::spec::Spanned;
use crate::spec::reader::NodeReader;
use crate::state::ResourceState;

/// File endings of Python pickles: loading one can run arbitrary code.
const PICKLE_EXTENSIONS: &[&str] = &["ckpt", "pth", "pt", "bin"];

#[derive(Debug)]
pub struct Model {
    /// The `model` node's name, where resource-wide lints point.
    pub span: SourceSpan,
    pub path: Spanned<PathBuf>,
    /// Mirrors, tried in order. Empty when `source` is given.
    pub urls: Vec<Spanned<String>>,
    /// A local file to copy instead of downloading.
    pub source: Option<Spanned<PathBuf>>,
    /// `None`: trust on first use (the digest is recorded at download).
    pub sha256: Option<Spanned<Sha256Digest>>,
    pub size: Option<Spanned<ExpectedSize>>,
    /// The name of the environment variable holding a bearer token, sent to
    /// the host of the first URL only.
    pub token_env: Option<Spanned<String>>,
    /// Per-URL token variables (`url "…" token-env=VAR`), by index into `urls`.
    pub url_token_envs: Vec<Option<Spanned<String>>>,
    /// The whole download must end within this (default
    /// [`download::DEFAULT_DEADLINE`]).
    pub timeout: Option<Spanned<Duration>>,
    /// Bytes per second below which a transfer is given up and retried
    /// (default [`download::DEFAULT_MIN_SPEED`]).
    pub min_speed: Option<Spanned<u64>>,
    pub allow_pickle: Option<Spanned<bool>>,
    pub arch: Option<Spanned<Architecture>>,
    /// The digest `plasma.lock` recorded for a model whose spec has none
    /// (trust on first use, then locked), set at load.
    pub locked_sha256: Option<Sha256Digest>,
}

/// What a `.safetensors` header says, as shown by `plasma show`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderSummary {
    pub tensor_count: usize,
    /// The dtype most tensors have.
    pub dtype: String,
    /// Spec name (`sd15`, `sdxl`, …).
    pub architecture: String,
    /// Human name (`SD 1.5`, `SDXL`, …).
    pub architecture_name: String,
}

impl HeaderSummary {
    fn from_info(info: &safetensors::SafetensorsInfo) -> Self {
        HeaderSummary {
            tensor_count: info.tensor_count,
            dtype: info.main_dtype().unwrap_or("none").to_string(),
            architecture: info.architecture.spec_name().to_string(),
            architecture_name: info.architecture.to_string(),
        }
    }

    /// The summary recorded in a previous apply's outputs.
    fn from_outputs(outputs: &Value) -> Option<Self> {
        let architecture: Architecture = outputs.get("architecture")?.as_str()?.parse().ok()?;
        Some(HeaderSummary {
            tensor_count: usize::try_from(outputs.get("tensor_count")?.as_u64()?).ok()?,
            dtype: outputs.get("dtype")?.as_str()?.to_string(),
            architecture: architecture.spec_name().to_string(),
            architecture_name: architecture.to_string(),
        })
    }

    fn architecture(&self) -> Option<Architecture> {
        self.architecture.parse().ok()
    }
}

/// What is at the model's path now.
#[derive(Debug, Serialize)]
pub struct ModelObserved {
    /// `absent` or `file`.
    pub found: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Digest>,
    /// Bytes of an interrupted download waiting to be resumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_bytes: Option<u64>,
    /// For `.safetensors` files: what the header says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safetensors: Option<HeaderSummary>,
    /// For `.safetensors` files whose header cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_error: Option<String>,
}

impl Model {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let path = r.path("path");
        // `url a b` and repeated `url` lines both list mirrors, in order;
        // `token-env=VAR` on a line gives its URLs their own token.
        let mut urls = Vec::new();
        let mut url_token_envs = Vec::new();
        for child in r.all("url") {
            let env = r.prop_string(child, "token-env");
            if let Some(var) = &env {
                check_env_name(r, var);
            }
            for entry in child.entries().iter().filter(|e| e.name().is_none()) {
                if let Some(url) = r.entry_string(entry) {
                    urls.push(url);
                    url_token_envs.push(env.clone());
                }
            }
        }
        let timeout = r.opt_duration("timeout");
        let min_speed = parse_min_speed(r);
        let source = r.opt_path("source");
        let sha256 = parse_sha256(r);
        let size = r.opt_size("size");
        let token_env = r.opt_string("token-env");
        let allow_pickle = r.opt_bool("allow-pickle");
        let arch = parse_arch(r);

        let url_nodes = r.all("url");
        let source_nodes = r.all("source");
        match (url_nodes.first(), source_nodes.first()) {
            (None, None) => {
                r.fail(
                    Problem::error("spec::model-origin", "a model needs a `url` or a `source`")
                        .label(r.name_span(), "this model")
                        .help(
                            "add `url \"https://…\"` (more URLs are mirrors, tried in order), \
                             or `source \"/path/to/file\"` to copy a local file",
                        ),
                );
            }
            (Some(url), Some(source)) => {
                r.fail(
                    Problem::error(
                        "spec::model-origin",
                        "a model is downloaded from `url` or copied from `source`, not both",
                    )
                    .label(url.name().span(), "a URL")
                    .label(source.name().span(), "a source")
                    .help("keep one of them"),
                );
            }
            _ => {}
        }
        for url in &urls {
            if let Err(reason) = check_url(&url.value) {
                r.fail(
                    Problem::error("spec::malformed-url", "not a download URL")
                        .label(url.span, reason)
                        .help("write a full http:// or https:// URL"),
                );
            }
        }
        if let Some(var) = &token_env {
            check_env_name(r, var);
        }
        if r.failed() {
            return None;
        }
        Some(Model {
            span: r.name_span(),
            path: path?,
            urls,
            source,
            sha256,
            size,
            token_env,
            url_token_envs,
            timeout,
            min_speed,
            allow_pickle,
            arch,
            locked_sha256: None,
        })
    }

    fn is_safetensors(&self) -> bool {
        extension(&self.path.value).as_deref() == Some("safetensors")
    }

    fn expected(&self) -> Expected {
        Expected {
            sha256: self.sha256.as_ref().map(|s| s.value).or(self.locked_sha256),
            size: self.size.as_ref().map(|s| s.value.clone()),
        }
    }

    /// Where the bytes come from, for plans and logs (credentials removed).
    pub fn origin(&self) -> String {
        match (&self.source, self.urls.first()) {
            (Some(source), _) => source.value.display().to_string(),
            (None, Some(url)) => download::redact_url(&url.value),
            (None, None) => "nowhere".to_string(),
        }
    }

    /// The digest the file must have: the spec's, else the one recorded at
    /// the last download (trust on first use).
    fn wanted_digest(&self, prior: Option<&ResourceState>) -> Option<(Sha256Digest, &'static str)> {
        if let Some(sha) = &self.sha256 {
            return Some((sha.value, "the spec"));
        }
        if let Some(sha) = self.locked_sha256 {
            return Some((sha, "plasma.lock"));
        }
        let prior = prior?;
        // A digest recorded for another path says nothing about this one.
        if prior.desired.get("path") != Some(&json!(self.path.value)) {
            return None;
        }
        let recorded = prior.outputs.get("sha256")?.as_str()?;
        Sha256Digest::parse(recorded)
            .ok()
            .map(|d| (d, "the digest recorded at download"))
    }

    /// The spec's `arch` against the header, when both are known.
    fn check_arch(&self, header: Option<&HeaderSummary>) -> Result<(), ResourceError> {
        let (Some(want), Some(header)) = (&self.arch, header) else {
            return Ok(());
        };
        let Some(found) = header.architecture() else {
            return Ok(());
        };
        if found == want.value {
            return Ok(());
        }
        Err(ResourceError::new(format!(
            "{} is a {} model by its safetensors header ({} tensors), but the spec says arch {}",
            self.path.value.display(),
            found,
            header.tensor_count,
            want.value.spec_name()
        ))
        .help(format!(
            "if the file is right, write `arch \"{}\"`; otherwise the URL points at another model",
            found.spec_name()
        )))
    }
}

fn parse_sha256(r: &NodeReader<'_, '_>) -> Option<Spanned<Sha256Digest>> {
    let text = r.opt_string("sha256")?;
    match Sha256Digest::parse(&text.value) {
        Ok(digest) => Some(Spanned::new(digest, text.span)),
        Err(e) => {
            r.fail(
                Problem::error("spec::malformed-sha256", "malformed sha256")
                    .label(text.span, e.to_string())
                    .help("copy the SHA256 from the model's page: 64 hex characters, or sha256-<base64>"),
            );
            None
        }
    }
}

fn parse_arch(r: &NodeReader<'_, '_>) -> Option<Spanned<Architecture>> {
    let text = r.opt_string("arch")?;
    match text.value.parse::<Architecture>() {
        Ok(arch) => Some(Spanned::new(arch, text.span)),
        Err(e) => {
            r.fail(
                Problem::error(
                    "spec::unknown-arch",
                    format!("unknown arch `{}`", text.value),
                )
                .label(text.span, "not an architecture plasma knows")
                .help(e.to_string()),
            );
            None
        }
    }
}

fn check_env_name(r: &NodeReader<'_, '_>, var: &Spanned<String>) {
    if is_env_name(&var.value) {
        return;
    }
    r.fail(
        Problem::error(
            "spec::malformed-token-env",
            "`token-env` names an environment variable, not the token itself",
        )
        .label(var.span, "not a variable name")
        .help(
            "write the variable's name (`token-env CIVITAI_TOKEN`) and export the \
             token in it; a token written in plasma.kdl would end up in git",
        ),
    );
}

/// `min-speed "10KB/s"`: a size per second (the `/s` may be left out).
fn parse_min_speed(r: &NodeReader<'_, '_>) -> Option<Spanned<u64>> {
    let text = r.opt_string("min-speed")?;
    let trimmed = text.value.trim();
    let per_second = trimmed
        .strip_suffix("/s")
        .or_else(|| trimmed.strip_suffix("ps"))
        .unwrap_or(trimmed);
    match size::parse(per_second) {
        Ok(speed) => Some(Spanned::new(speed.bytes, text.span)),
        Err(e) => {
            r.fail(
                Problem::error(
                    "spec::malformed-speed",
                    format!("`{}` is not a speed", text.value),
                )
                .label(text.span, e.to_string())
                .help("write bytes per second with a unit, such as \"10KB/s\" or \"1MB/s\""),
            );
            None
        }
    }
}

fn check_url(text: &str) -> Result<(), String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
        Ok(url) => Err(format!(
            "plasma downloads over http(s), not {}",
            url.scheme()
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn is_env_name(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with(|c: char| c.is_ascii_digit())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Shortens a digest for reasons; attributes carry it whole.
fn short(digest: &Sha256Digest) -> String {
    digest.to_hex()[..12].to_string()
}

#[async_trait]
impl Kind for Model {
    type Observed = ModelObserved;
    const KIND: &'static str = "model";

    fn desired(&self) -> Value {
        json!({
            "path": self.path.value,
            // Redacted: a URL may carry a signature or `?token=`.
            "urls": self.urls.iter().map(|u| download::redact_url(&u.value)).collect::<Vec<_>>(),
            "source": self.source.as_ref().map(|s| &s.value),
            "sha256": self.sha256.as_ref().map(|s| s.value.to_hex()),
            // An exact size as a number, a human one as written.
            "size": self.size.as_ref().map(|s| if s.value.is_exact() {
                json!(s.value.bytes)
            } else {
                json!(s.value.text)
            }),
            "token_env": self.token_env.as_ref().map(|t| &t.value),
            "arch": self.arch.as_ref().map(|a| a.value.spec_name()),
        })
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        vec![self.path.value.clone()]
    }

    async fn observe(&self, cx: &ObserveContext<'_>) -> Result<ModelObserved, ResourceError> {
        let path = &self.path.value;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if crate::fsutil::is_absent(&e) => {
                if let Some((link, target)) = download::dangling_link_above(path) {
                    return Err(dangling_folder_error(&link, &target));
                }
                let partial_bytes = std::fs::metadata(download::part_path(path))
                    .ok()
                    .filter(|m| m.is_file() && m.len() > 0)
                    .map(|m| m.len());
                return Ok(ModelObserved {
                    found: "absent",
                    size: None,
                    sha256: None,
                    partial_bytes,
                    safetensors: None,
                    header_error: None,
                });
            }
            Err(e) => return Err(ResourceError::io("cannot inspect", path, e)),
        };
        if meta.is_dir() {
            return Err(ResourceError::new(format!(
                "{} is a directory; plasma will not replace a directory with a model file",
                path.display()
            ))
            .help("move the directory away, or point `path` at the file inside it"));
        }

        // The digest: from the cache while the file's identity is unchanged,
        // else (or with --verify) by reading the file once, on a blocking
        // thread so several models hash in parallel.
        let key = FileKey::from_metadata(&meta);
        let cached = if cx.verify {
            None
        } else {
            cx.hashes.get(path, &key)
        };
        let sha256 = match cached {
            Some(digest) => digest,
            None => {
                // One file per core at a time: more would only take turns.
                let _core = hashing_slots().acquire().await.expect("never closed");
                let owned = path.clone();
                let digest = tokio::task::spawn_blocking(move || hashing::hash_file(&owned))
                    .await
                    .map_err(|e| ResourceError::new(format!("hashing stopped: {e}")))?
                    .map_err(|e| ResourceError::new(e.to_string()))?;
                cx.hashes.put(path, key, digest);
                digest
            }
        };

        // The header is a function of the bytes: reuse what the last apply
        // recorded for this digest, so a converged plan opens no file.
        let (mut safetensors, mut header_error) = (None, None);
        if self.is_safetensors() {
            let recorded = cx
                .prior
                .filter(|p| p.outputs.get("sha256") == Some(&json!(sha256.to_hex())))
                .and_then(|p| HeaderSummary::from_outputs(&Value::Object(p.outputs.clone())));
            match recorded {
                Some(summary) => safetensors = Some(summary),
                None => {
                    let owned = path.clone();
                    let read =
                        tokio::task::spawn_blocking(move || safetensors::read_header(&owned))
                            .await
                            .map_err(|e| {
                                ResourceError::new(format!("reading the header stopped: {e}"))
                            })?;
                    match read {
                        Ok(info) => safetensors = Some(HeaderSummary::from_info(&info)),
                        Err(e) => header_error = Some(e.to_string()),
                    }
                }
            }
        }

        // Only a file that is staying is held to `arch`; a wrong one is replaced.
        let staying = match self.wanted_digest(cx.prior) {
            Some((want, _)) => want == sha256,
            None => true,
        };
        if staying {
            self.check_arch(safetensors.as_ref())?;
        }

        Ok(ModelObserved {
            found: "file",
            size: Some(meta.len()),
            sha256: Some(sha256),
            partial_bytes: None,
            safetensors,
            header_error,
        })
    }

    fn diff(&self, observed: &ModelObserved, prior: Option<&ResourceState>) -> Diff {
        let path = self.path.value.display().to_string();
        let wanted = self.wanted_digest(prior);
        let Some(have) = observed.sha256 else {
            let reason = match observed.partial_bytes {
                Some(n) => format!(
                    "the file does not exist; {n} bytes of an interrupted download will be resumed"
                ),
                None => "the file does not exist".to_string(),
            };
            let mut diff = Diff::new(Action::Create, reason)
                .attribute("path", None, Some(path))
                .attribute("from", None, Some(self.origin()));
            if let Some(size) = &self.size {
                diff = diff.attribute("size", None, Some(size.value.to_string()));
            }
            diff = diff.attribute(
                "sha256",
                None,
                Some(match &self.sha256 {
                    Some(sha) => sha.value.to_hex(),
                    None => "(recorded at download: trust on first use)".to_string(),
                }),
            );
            return diff;
        };

        let mut reasons = Vec::new();
        let mut diff = Diff::new(Action::Replace, "");
        if let Some((want, whose)) = wanted
            && want != have
        {
            reasons.push(format!(
                "the file's sha256 is {}…, {whose} says {}…",
                short(&have),
                short(&want)
            ));
            diff = diff.attribute("sha256", Some(have.to_hex()), Some(want.to_hex()));
        }
        if let (Some(size), Some(found)) = (&self.size, observed.size)
            && !size.value.matches(found)
        {
            reasons.push(format!(
                "the file has {found} bytes, the spec says {}",
                size.value
            ));
            diff = diff.attribute(
                "size",
                Some(found.to_string()),
                Some(size.value.to_string()),
            );
        }
        if reasons.is_empty() {
            let mut diff = Diff::no_op();
            if let Some(error) = &observed.header_error {
                diff.warnings.push(error.clone());
            }
            return diff;
        }
        diff.reason = reasons.join("; ");
        diff.warnings.push(format!(
            "the file at {path} will be replaced by a fresh copy from {}",
            self.origin()
        ));
        diff
    }

    async fn apply(
        &self,
        _observed: &ModelObserved,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        let dest = self.path.value.clone();
        let log = LogFile::open(&cx.log_file());
        let bar = DownloadBar::new(cx.bars, &cx.address.to_string());
        log.line(&format!(
            "placing {} from {}",
            dest.display(),
            self.origin()
        ));
        let result = match &self.source {
            Some(source) => {
                let (source, dest, expected, bar) = (
                    source.value.clone(),
                    dest.clone(),
                    self.expected(),
                    bar.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    download::copy_from_source(&source, &dest, &expected, &bar)
                })
                .await
                .map_err(|e| ResourceError::new(format!("the copy stopped: {e}")))?
            }
            None => {
                let mut request = DownloadRequest::new(
                    self.urls.iter().map(|u| u.value.clone()).collect(),
                    &dest,
                );
                request.expected = self.expected();
                if let Some(var) = &self.token_env {
                    request.token = SecretToken::from_env(&var.value);
                    request.token_env = Some(var.value.clone());
                }
                request.url_credentials = self
                    .url_token_envs
                    .iter()
                    .map(|env| env.as_ref().map(|var| Credential::from_env(&var.value)))
                    .collect();
                if let Some(timeout) = &self.timeout {
                    request.options.deadline = timeout.value;
                }
                if let Some(speed) = &self.min_speed {
                    request.options.min_speed = speed.value;
                }
                download::download(&request, &bar).await
            }
        };
        bar.finish();
        let digest = match result {
            Ok(digest) => digest,
            Err(error) => {
                let error = resource_error(error);
                log.line(&format!("failed: {}", error.message));
                return Err(error);
            }
        };
        log.line(&format!("placed {} with sha256 {digest}", dest.display()));
        // The bytes were hashed as they arrived: remember the digest, so the
        // check after apply (and every later plan) does not read them again.
        if let Ok(key) = FileKey::of(&dest) {
            cx.hashes.put(&dest, key, digest);
        }
        let mut outputs = Outputs::new();
        outputs.insert("sha256".into(), json!(digest.to_hex()));
        Ok(outputs)
    }

    fn outputs(&self, observed: &ModelObserved) -> Outputs {
        let mut out = Outputs::new();
        if let Some(sha) = &observed.sha256 {
            out.insert("sha256".into(), json!(sha.to_hex()));
        }
        if let Some(size) = observed.size {
            out.insert("size".into(), json!(size));
        }
        if let Some(header) = &observed.safetensors {
            out.insert("tensor_count".into(), json!(header.tensor_count));
            out.insert("dtype".into(), json!(header.dtype));
            out.insert("architecture".into(), json!(header.architecture));
        }
        out
    }

    fn lint(&self, _cx: &LintContext<'_>) -> Vec<Lint> {
        let mut lints = Vec::new();
        let name = self.path.value.display();
        if let Some(ext) = extension(&self.path.value)
            && PICKLE_EXTENSIONS.contains(&ext.as_str())
            && !self.allow_pickle.as_ref().is_some_and(|a| a.value)
        {
            let span = self
                .allow_pickle
                .as_ref()
                .map_or(self.path.span, |a| a.span);
            lints.push(lint::PICKLE_MODEL.at(
                span,
                format!("{name} is a pickle (.{ext}): loading it can run arbitrary code"),
                "a pickle model file",
                "prefer a .safetensors download of the same model; if there is none and you \
                 trust the source, write `allow-pickle #true`",
            ));
        }
        if self.sha256.is_none() {
            lints.push(lint::UNPINNED_MODEL.at(
                self.span,
                format!("{name} has no sha256: whatever the server sends will be trusted"),
                "no sha256",
                "add the sha256 from the model's page, or apply once and run `plasma pin` \
                 to write the digest that was downloaded",
            ));
        }
        lints
    }
}

/// The message for a models folder that is a symbolic link to nothing.
fn dangling_folder_error(link: &Path, target: &Path) -> ResourceError {
    ResourceError::new(
        DownloadError::DanglingFolder {
            link: link.to_path_buf(),
            target: target.to_path_buf(),
        }
        .to_string(),
    )
    .help("mount the disk (or fix the link), then run plasma again")
}

/// A download error as the user sees it: the layer's message (already
/// redacted and actionable), plus what to do where the message cannot say it.
fn resource_error(error: DownloadError) -> ResourceError {
    if let DownloadError::DanglingFolder { link, target } = &error {
        return dangling_folder_error(link, target);
    }
    let resumes = error.kept_bytes() > 0;
    let help = match &error {
        DownloadError::HashMismatch { .. } => Some(
            "if the file legitimately changed upstream, check the model's page and update `sha256`",
        ),
        DownloadError::Network { .. } | DownloadError::AllMirrorsFailed { .. } if resumes => {
            Some("run `plasma apply` again: the download resumes where it stopped")
        }
        DownloadError::Network { .. } => Some("run `plasma apply` again when the server is back"),
        DownloadError::AllMirrorsFailed { .. } => {
            Some("fix or replace the failing URLs above, then run `plasma apply` again")
        }
        DownloadError::Deadline { .. } => Some(
            "run `plasma apply` again to resume, or give the model a longer `timeout` (e.g. `timeout \"12h\"`)",
        ),
        DownloadError::NotWhatItsNameSays { .. } => Some(
            "open the URL in a browser to see what it serves; if it needs a login, name the \
             token's variable with `token-env`",
        ),
        DownloadError::UnsafeRedirect { .. } => {
            Some("download the file by hand and use `source \"PATH\"`, or find an http(s) mirror")
        }
        _ => None,
    };
    let resource_error = ResourceError::new(error.to_string());
    match help {
        Some(help) => resource_error.help(help),
        None => resource_error,
    }
}

/// One download's bar, plus its share of the bar totalling every download
/// running in this process.
#[derive(Clone)]
struct DownloadBar {
    bar: indicatif::ProgressBar,
    /// What this download has added to the total's length and position.
    share: Arc<Mutex<(u64, u64)>>,
}

/// The total across concurrent downloads, made by the first one.
static TOTAL: OnceLock<indicatif::ProgressBar> = OnceLock::new();

impl DownloadBar {
    fn new(bars: &indicatif::MultiProgress, label: &str) -> DownloadBar {
        let style = indicatif::ProgressStyle::with_template(
            "{msg:24!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("the template is valid");
        let total = TOTAL.get_or_init(|| {
            let total = bars.add(indicatif::ProgressBar::new(0));
            total.set_style(style.clone());
            total.set_message("all downloads");
            total
        });
        let bar = bars.insert_before(total, indicatif::ProgressBar::new(0));
        bar.set_style(style);
        bar.set_message(label.to_string());
        DownloadBar {
            bar,
            share: Arc::new(Mutex::new((0, 0))),
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl download::Progress for DownloadBar {
    fn on_start(&self, total: Option<u64>) {
        // A restart: take back this download's part of the total.
        let mut share = self.share.lock().expect("no panics while holding");
        let new_len = total.unwrap_or(0);
        if let Some(all) = TOTAL.get() {
            let length = all.length().unwrap_or(0);
            all.set_length(length.saturating_sub(share.0) + new_len);
            all.set_position(all.position().saturating_sub(share.1));
        }
        *share = (new_len, 0);
        self.bar.set_length(new_len);
        self.bar.set_position(0);
        self.bar.reset_eta();
    }

    fn on_bytes(&self, n: u64) {
        self.share.lock().expect("no panics while holding").1 += n;
        self.bar.inc(n);
        if let Some(all) = TOTAL.get() {
            all.inc(n);
        }
    }
}

/// Slots for hashing model files, one per core.
fn hashing_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}
