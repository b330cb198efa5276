//! Downloading (or copying) one model file so that what lands at its path is
//! exactly the bytes the spec expects, or nothing at all.
//!
//! The file is streamed to `<path>.plasma-part` and hashed as the bytes arrive
//! (no second pass over gigabytes), then fsynced, checked against the
//! expected size and SHA-256, and renamed into place. An interrupted part is
//! resumed with `Range` + `If-Range`, using the ETag or Last-Modified kept in
//! `<path>.plasma-part.meta`; the bytes already on disk are hashed again
//! first, so the digest always covers the whole file.
//!
//! Before it is placed, the file must be what its name says
//! ([`crate::filekind`]), whether or not a SHA-256 was given.
//!
//! The client sends no `Referer` (a `?token=` URL would reach the CDN a
//! redirect points at), follows redirects only to http(s), asks for the bytes
//! as they are (`Accept-Encoding: identity`) and refuses an encoded body, and
//! gives up on a transfer slower than [`DownloadOptions::min_speed`] or
//! longer than [`DownloadOptions::deadline`].
//!
//! Secrets: the bearer token lives in [`SecretToken`], which never prints; it
//! is sent only to the host it belongs to (see [`DownloadRequest`]), and
//! reqwest drops it when a redirect leaves that host. Every URL shown
//! anywhere goes through [`redact_url`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::filekind::{self, FileKind};
use crate::hashing::{HASH_BUFFER_BYTES, Sha256Digest};
use crate::size::ExpectedSize;

/// Suffix of the file a download is written to before it is verified.
pub const PART_SUFFIX: &str = ".plasma-part";
/// Suffix of the sidecar that remembers how to resume a part.
pub const META_SUFFIX: &str = ".plasma-part.meta";

/// `<dest>.plasma-part`
pub fn part_path(dest: &Path) -> PathBuf {
    with_suffix(dest, PART_SUFFIX)
}

/// `<dest>.plasma-part.meta`
pub fn meta_path(dest: &Path) -> PathBuf {
    with_suffix(dest, META_SUFFIX)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A bearer token. Its `Debug` shows `<redacted>`, it has no `Display`, and
/// it is not serializable, so it cannot leak through formatting or state.
#[derive(Clone)]
pub struct SecretToken(String);

impl SecretToken {
    pub fn new(token: impl Into<String>) -> Self {
        SecretToken(token.into())
    }

    /// The token in environment variable `var`, or `None` if it is unset or empty.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .map(|value| SecretToken(value.trim().to_string()))
    }

    /// Replaces the token wherever it appears in `text` (a server may echo it).
    fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.0, crate::redact::MASK)
    }

    fn bearer_header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0)).ok()?;
        // Keeps hyper/h2 from indexing it and reqwest's Debug from showing it.
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

/// What the finished file must be. `None` fields are not checked (trust on
/// first use: the caller records the digest that comes back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub sha256: Option<Sha256Digest>,
    pub size: Option<ExpectedSize>,
}

/// A bearer token for one URL, and the environment variable it comes from.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The variable's name, named in messages.
    pub env: String,
    /// Its value; `None` when the variable is unset or empty.
    pub token: Option<SecretToken>,
}

impl Credential {
    /// The token in environment variable `var`.
    pub fn from_env(var: &str) -> Self {
        Credential {
            env: var.to_string(),
            token: SecretToken::from_env(var),
        }
    }
}

/// Retry and timeout policy.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Attempts per URL (first try included) before moving to the next mirror.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled after each failure.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// No response or no body bytes for this long counts as a transient failure.
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    /// The whole download (every attempt and mirror) ends within this; the
    /// bytes so far are kept for the next run.
    pub deadline: Duration,
    /// Bytes per second below which a transfer counts as stalled, averaged
    /// over `low_speed_window` (like curl's `--speed-limit`/`--speed-time`).
    pub min_speed: u64,
    pub low_speed_window: Duration,
}

/// The default [`DownloadOptions::deadline`]: 6 hours, a 20 GB file at 1 MB/s.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// The default [`DownloadOptions::min_speed`]: 1 KB/s.
pub const DEFAULT_MIN_SPEED: u64 = 1000;
/// The default [`DownloadOptions::low_speed_window`]: 60 s.
pub const DEFAULT_LOW_SPEED_WINDOW: Duration = Duration::from_secs(60);
/// Redirects followed before giving up (reqwest's own default too).
pub const MAX_REDIRECTS: usize = 10;

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            max_attempts: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            deadline: DEFAULT_DEADLINE,
            min_speed: DEFAULT_MIN_SPEED,
            low_speed_window: DEFAULT_LOW_SPEED_WINDOW,
        }
    }
}

/// One file to download.
///
/// Which URL gets which token: `url_credentials[i]`, when given, is sent to
/// `urls[i]` only; otherwise `token` (the model's `token-env`) is sent to
/// `urls[i]` when it is on the same host and port as `urls[0]`, and to no
/// other host. A redirect to another host drops the token (reqwest does).
#[derive(Clone)]
pub struct DownloadRequest {
    /// Mirrors, tried in order.
    pub urls: Vec<String>,
    /// Where the verified file is placed.
    pub dest: PathBuf,
    pub expected: Expected,
    /// Sent as `Authorization: Bearer` to the first URL's host.
    pub token: Option<SecretToken>,
    /// The environment variable the token comes from (the spec's
    /// `token-env`), named in messages. Set it even when the variable is
    /// unset, so a 401 can say so.
    pub token_env: Option<String>,
    /// Per-URL tokens (the spec's `url "…" token-env=VAR`), by index into
    /// `urls`; missing entries fall back to `token` as described above.
    pub url_credentials: Vec<Option<Credential>>,
    pub options: DownloadOptions,
}

impl DownloadRequest {
    pub fn new(urls: Vec<String>, dest: impl Into<PathBuf>) -> Self {
        DownloadRequest {
            urls,
            dest: dest.into(),
            expected: Expected::default(),
            token: None,
            token_env: None,
            url_credentials: Vec::new(),
            options: DownloadOptions::default(),
        }
    }

    /// The token to send to `urls[index]` and how messages should describe it.
    fn auth_for(&self, index: usize, url: &Url, first: &Url) -> UrlAuth {
        if let Some(Some(credential)) = self.url_credentials.get(index) {
            return UrlAuth {
                token: credential.token.clone(),
                usage: match credential.token {
                    Some(_) => TokenUse::Sent(credential.env.clone()),
                    None => TokenUse::Unset(credential.env.clone()),
                },
            };
        }
        let Some(env) = &self.token_env else {
            return UrlAuth {
                token: self.token.clone().filter(|_| same_host(url, first)),
                usage: TokenUse::None,
            };
        };
        if !same_host(url, first) {
            return UrlAuth {
                token: None,
                usage: TokenUse::OtherHost {
                    env: env.clone(),
                    host: first.host_str().unwrap_or("").to_string(),
                },
            };
        }
        match &self.token {
            Some(token) => UrlAuth {
                token: Some(token.clone()),
                usage: TokenUse::Sent(env.clone()),
            },
            None => UrlAuth {
                token: None,
                usage: TokenUse::Unset(env.clone()),
            },
        }
    }
}

/// Whether two URLs name the same host and port (reqwest's rule for keeping
/// `Authorization` across a redirect).
fn same_host(a: &Url, b: &Url) -> bool {
    a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// What is sent to one URL.
#[derive(Clone)]
struct UrlAuth {
    token: Option<SecretToken>,
    usage: TokenUse,
}

/// Whether a token went to a URL, for messages about a login wall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUse {
    /// The model names no token for this URL.
    None,
    /// The token in this variable was sent.
    Sent(String),
    /// This variable should hold the token but is unset.
    Unset(String),
    /// The model's token is for `host`; this URL is elsewhere and got none.
    OtherHost { env: String, host: String },
}

impl fmt::Debug for DownloadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| redact_url(url)).collect();
        f.debug_struct("DownloadRequest")
            .field("urls", &urls)
            .field("dest", &self.dest)
            .field("expected", &self.expected)
            .field("token", &self.token)
            .field("token_env", &self.token_env)
            .field("url_credentials", &self.url_credentials)
            .field("options", &self.options)
            .finish()
    }
}

/// Receives download progress, e.g. to drive an indicatif bar.
///
/// `on_start` is called when a response starts (again after a retry or a
/// mirror switch: reset the bar then); bytes already on disk from an earlier
/// attempt are then reported by one `on_bytes` call.
pub trait Progress: Send + Sync {
    fn on_start(&self, total: Option<u64>);
    fn on_bytes(&self, n: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn on_start(&self, _total: Option<u64>) {}
    fn on_bytes(&self, _n: u64) {}
}

/// One mirror's failure, inside [`DownloadError::AllMirrorsFailed`].
#[derive(Debug)]
pub struct MirrorFailure {
    /// Redacted.
    pub url: String,
    pub error: DownloadError,
}

/// Why a model file could not be placed. Every message says what to do;
/// URLs in it are redacted and the token is never included.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("no URL to download from: give the model at least one `url`")]
    NoUrls,
    #[error("cannot set up HTTP(S) downloads on this machine: {0}")]
    HttpClient(String),
    #[error("{url} is not a usable download URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{url} refused the download ({status}): {}", unauthorized_hint(token))]
    Unauthorized {
        url: String,
        status: u16,
        token: TokenUse,
    },
    #[error("{url} was not found (404): check the URL, the file may have moved")]
    NotFound { url: String },
    #[error(
        "{url} is gone (410): the server says the file was removed on purpose; \
         look for its new address on the model's page"
    )]
    Gone { url: String },
    #[error("{url} answered {status}: the request was refused, retrying will not help")]
    ClientError { url: String, status: u16 },
    #[error(
        "{url} redirected to {target}, which plasma does not follow: downloads go over \
         http and https only (nothing was saved)"
    )]
    UnsafeRedirect { url: String, target: String },
    #[error(
        "{url} sent the file encoded as `{encoding}` though plasma asked for it as is \
         (Accept-Encoding: identity): those bytes are not the file, nothing was saved"
    )]
    EncodedBody { url: String, encoding: String },
    #[error(
        "{url}: the server sent a web page, not the file: {} (nothing was saved)",
        web_page_hint(token)
    )]
    WebPage { url: String, token: TokenUse },
    #[error(
        "{}: what was received is not {what}: {reason}; nothing was placed there \
         ({}starting {head})",
        path.display(),
        content_type.as_deref().map_or(String::new(), |t| format!("received Content-Type {t}, "))
    )]
    NotWhatItsNameSays {
        path: PathBuf,
        /// What the extension promises ("a safetensors file").
        what: &'static str,
        reason: String,
        content_type: Option<String>,
        /// The first bytes, as text when printable (secrets removed).
        head: String,
    },
    #[error(
        "downloading {url} did not finish within {} (the model's `timeout`){}",
        humantime::format_duration(*limit),
        if *kept_bytes > 0 {
            format!(": {kept_bytes} bytes are kept and the next run resumes from there")
        } else {
            String::new()
        }
    )]
    Deadline {
        url: String,
        limit: Duration,
        kept_bytes: u64,
    },
    #[error(
        "{} is a symbolic link to {}, which does not exist (an external disk that is \
         not mounted?): plasma will not create a folder in its place",
        link.display(), target.display()
    )]
    DanglingFolder { link: PathBuf, target: PathBuf },
    #[error(
        "{}: the source file is a web page, not the model (a download that needed a login?)",
        path.display()
    )]
    SourceIsWebPage { path: PathBuf },
    #[error(
        "the file for {} has sha256 {actual}, but the spec expects {expected}: \
         the download was deleted and nothing was placed at {}",
        path.display(), path.display()
    )]
    HashMismatch {
        path: PathBuf,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error(
        "the file for {} is {actual} bytes, but the spec's size says {expected}: \
         nothing was placed at {} (is the URL or the size wrong?)",
        path.display(), path.display()
    )]
    SizeMismatch {
        path: PathBuf,
        expected: ExpectedSize,
        actual: u64,
    },
    #[error(
        "the disk is full while writing {}: free some space and run again \
         (the bytes written so far are kept and the download will resume)",
        path.display()
    )]
    DiskFull { path: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the source file {}: {source}", path.display())]
    SourceUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "downloading {url} failed after {attempts} attempts; the last error: {reason}{}",
        if *kept_bytes > 0 {
            format!(" ({kept_bytes} bytes are kept and the next run resumes from there)")
        } else {
            String::new()
        }
    )]
    Network {
        url: String,
        attempts: u32,
        reason: String,
        /// Bytes left in the part file for the next run to resume.
        kept_bytes: u64,
    },
    #[error("every URL failed:{}", list_failures(failures))]
    AllMirrorsFailed { failures: Vec<MirrorFailure> },
}

fn unauthorized_hint(token: &TokenUse) -> String {
    match token {
        TokenUse::Sent(var) => format!(
            "the token in ${var} was sent and rejected: check that it is valid and allowed to download this file"
        ),
        TokenUse::Unset(var) => format!(
            "the model's token-env is {var}, but ${var} is not set: export it and run again"
        ),
        TokenUse::OtherHost { env, host } => format!(
            "the token in ${env} is only sent to {host}, and this URL is on another host: \
             give it its own with `url \"…\" token-env=VAR`"
        ),
        TokenUse::None => "no token-env is set for this model: if the site needs a login, \
                      create an API token and add `token-env VAR` naming the variable holding it"
            .to_string(),
    }
}

fn web_page_hint(token: &TokenUse) -> String {
    match token {
        TokenUse::None => "a login is probably needed: create an API token on the site, \
                           export it, and name its variable with `token-env`"
            .to_string(),
        TokenUse::Sent(var) => format!(
            "a login is probably needed, and the token in ${var} was sent: check that it \
             is valid and allowed to download this file"
        ),
        other => format!("a login is probably needed: {}", unauthorized_hint(other)),
    }
}

fn list_failures(failures: &[MirrorFailure]) -> String {
    failures
        .iter()
        .map(|failure| format!("\n  - {}", failure.error))
        .collect()
}

impl DownloadError {
    /// Failures of this machine rather than of the URL: another mirror would
    /// not help.
    fn is_local(&self) -> bool {
        matches!(
            self,
            DownloadError::DiskFull { .. }
                | DownloadError::Io { .. }
                | DownloadError::Deadline { .. }
                | DownloadError::DanglingFolder { .. }
        )
    }

    /// Whether a part of the file was kept for the next run to resume.
    pub fn kept_bytes(&self) -> u64 {
        match self {
            DownloadError::Network { kept_bytes, .. }
            | DownloadError::Deadline { kept_bytes, .. } => *kept_bytes,
            DownloadError::AllMirrorsFailed { failures } => failures
                .iter()
                .map(|f| f.error.kept_bytes())
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }
}

/// The program's one URL redaction rule (see [`crate::redact`]).
pub use crate::redact::redact_url;

/// A client suited to downloads: rustls, connect timeout from `options`, no
/// `Referer`, redirects to http(s) only, no transfer encoding asked for. No
/// overall timeout here: the deadline and the low-speed limit are enforced
/// per download.
pub fn build_client(options: &DownloadOptions) -> Result<reqwest::Client, DownloadError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .user_agent(concat!("plasma/", env!("CARGO_PKG_VERSION")))
        .referer(false)
        .redirect(redirect_policy())
        .default_headers(headers)
        .build()
        .map_err(|e| DownloadError::HttpClient(describe_reqwest_error(e)))
}

/// Follows up to [`MAX_REDIRECTS`] redirects, to http and https only.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if !matches!(attempt.url().scheme(), "http" | "https") {
            let target = redact_url(attempt.url().as_str());
            attempt.error(RefusedRedirect { target })
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// A redirect to a scheme plasma does not download from.
#[derive(Debug, thiserror::Error)]
#[error("a redirect to {target}")]
struct RefusedRedirect {
    /// Redacted.
    target: String,
}

/// The refused redirect inside a reqwest error, if that is what it is.
fn refused_redirect(error: &reqwest::Error) -> Option<String> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<RefusedRedirect>() {
            return Some(refused.target.clone());
        }
        source = cause.source();
    }
    None
}

/// Downloads `request` with a fresh client; returns the file's digest.
pub async fn download(
    request: &DownloadRequest,
    progress: &dyn Progress,
) -> Result<Sha256Digest, DownloadError> {
    let client = build_client(&request.options)?;
    download_with_client(&client, request, progress).await
}

/// Downloads `request` with a shared client (its own connect timeout applies).
pub async fn download_with_client(
    client: &reqwest::Client,
    request: &DownloadRequest,
    progress: &dyn Progress,
) -> Result<Sha256Digest, DownloadError> {
    if request.urls.is_empty() {
        return Err(DownloadError::NoUrls);
    }
    let mut urls = Vec::with_capacity(request.urls.len());
    for text in &request.urls {
        let url = Url::parse(text).map_err(|e| DownloadError::InvalidUrl {
            url: redact_url(text),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(DownloadError::InvalidUrl {
                url: redact_url(text),
                reason: format!("plasma downloads over http or https, not {}", url.scheme()),
            });
        }
        urls.push(url);
    }
    create_parent(&request.dest)?;

    let deadline = Instant::now() + request.options.deadline;
    let mut failures = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        let auth = request.auth_for(index, url, &urls[0]);
        match download_from(client, request, url, &auth, deadline, progress).await {
            Ok(digest) => return Ok(digest),
            Err(error) if error.is_local() => return Err(error),
            Err(error) => failures.push(MirrorFailure {
                url: redact_url(url.as_str()),
                error,
            }),
        }
    }
    if failures.len() == 1 {
        return Err(failures.pop().expect("one failure").error);
    }
    Err(DownloadError::AllMirrorsFailed { failures })
}

/// How an attempt at one URL ended, when it did not succeed.
enum AttemptFailure {
    /// Worth retrying (after a backoff), resuming what is on disk.
    Transient(String),
    Fatal(DownloadError),
}

/// What the sidecar remembers about a part, so a later run can resume it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct PartMeta {
    /// blake3 of the URL: identifies it without writing a signed URL to disk.
    url_id: String,
    /// The strong ETag or Last-Modified the part's bytes came with.
    validator: String,
}

fn url_id(url: &Url) -> String {
    blake3::hash(url.as_str().as_bytes()).to_hex().to_string()
}

async fn download_from(
    client: &reqwest::Client,
    request: &DownloadRequest,
    url: &Url,
    auth: &UrlAuth,
    deadline: Instant,
    progress: &dyn Progress,
) -> Result<Sha256Digest, DownloadError> {
    let dest = &request.dest;
    let shown_url = redact_url(url.as_str());
    let (mut part, mut validator) = open_part_for(dest, url).await?;
    let options = &request.options;
    let mut content_type = None;

    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome;
        let mut cx = AttemptContext {
            request,
            url,
            auth,
            deadline,
            validator: &mut validator,
            content_type: &mut content_type,
        };
        (part, outcome) = attempt_once(client, &mut cx, part, progress).await;
        match outcome {
            Ok(()) => break,
            Err(AttemptFailure::Fatal(error)) => {
                if matches!(error, DownloadError::SizeMismatch { .. }) {
                    // The server's file is not the one the spec describes:
                    // none of the part is worth keeping.
                    part.len = 0;
                }
                discard_if_empty(&part, dest);
                return Err(error);
            }
            Err(AttemptFailure::Transient(reason)) => {
                if attempt >= options.max_attempts.max(1) {
                    discard_if_empty(&part, dest);
                    return Err(DownloadError::Network {
                        url: shown_url,
                        attempts: attempt,
                        reason,
                        kept_bytes: part.len,
                    });
                }
                let factor = 2u32.saturating_pow(attempt - 1);
                let wait = options
                    .first_backoff
                    .saturating_mul(factor)
                    .min(options.max_backoff);
                if Instant::now() + wait >= deadline {
                    discard_if_empty(&part, dest);
                    return Err(deadline_error(request, &shown_url, part.len));
                }
                tokio::time::sleep(wait).await;
            }
        }
    }

    let expected = request.expected.clone();
    let dest_owned = dest.clone();
    let token = auth.token.clone();
    let received = tokio::task::spawn_blocking(move || {
        place_verified(part, &dest_owned, &expected, content_type.as_deref())
    })
    .await
    .expect("verification does not panic");
    // A body may echo the token it was sent with.
    received.map_err(|error| match (error, token) {
        (
            DownloadError::NotWhatItsNameSays {
                path,
                what,
                reason,
                content_type,
                head,
            },
            Some(token),
        ) => DownloadError::NotWhatItsNameSays {
            path,
            what,
            reason,
            content_type,
            head: token.scrub(&head),
        },
        (error, _) => error,
    })
}

fn deadline_error(request: &DownloadRequest, shown_url: &str, kept_bytes: u64) -> DownloadError {
    DownloadError::Deadline {
        url: shown_url.to_string(),
        limit: request.options.deadline,
        kept_bytes,
    }
}

/// What one attempt needs besides the client and the part.
struct AttemptContext<'a> {
    request: &'a DownloadRequest,
    url: &'a Url,
    auth: &'a UrlAuth,
    deadline: Instant,
    /// The resume validator, updated by a 200.
    validator: &'a mut Option<String>,
    /// The last response's Content-Type, for messages about what was received.
    content_type: &'a mut Option<String>,
}

/// Leaves no empty part or sidecar behind after a failure (a web page, a
/// 401, a server that kept failing): there is nothing in them worth resuming.
fn discard_if_empty(part: &PartFile, dest: &Path) {
    if part.len == 0 {
        let _ = std::fs::remove_file(&part.path);
        let _ = std::fs::remove_file(meta_path(dest));
    }
}

/// Opens the part for `url`: resumed when the sidecar says it came from the
/// same URL with a validator, otherwise started empty.
async fn open_part_for(
    dest: &Path,
    url: &Url,
) -> Result<(PartFile, Option<String>), DownloadError> {
    let part_path = part_path(dest);
    let meta_path = meta_path(dest);
    let id = url_id(url);
    tokio::task::spawn_blocking(move || {
        // An unreadable or foreign sidecar just means "start over".
        let meta: Option<PartMeta> = std::fs::read(&meta_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|meta: &PartMeta| meta.url_id == id);
        if let Some(meta) = meta
            && part_path.is_file()
        {
            let part =
                PartFile::resume(&part_path).map_err(|e| local_error("resume", &part_path, e))?;
            return Ok((part, Some(meta.validator)));
        }
        remove_if_present(&meta_path).map_err(|e| local_error("remove", &meta_path, e))?;
        let part =
            PartFile::create(&part_path).map_err(|e| local_error("create", &part_path, e))?;
        Ok((part, None))
    })
    .await
    .expect("opening a part does not panic")
}

/// One request and its body. Always hands the part back, with every byte
/// received so far written and hashed.
async fn attempt_once(
    client: &reqwest::Client,
    cx: &mut AttemptContext<'_>,
    mut part: PartFile,
    progress: &dyn Progress,
) -> (PartFile, Result<(), AttemptFailure>) {
    let request = cx.request;
    let url = cx.url;
    let shown_url = redact_url(url.as_str());
    let stall = request.options.stall_timeout;

    let mut builder = client.get(url.clone());
    if let Some(value) = cx.auth.token.as_ref().and_then(SecretToken::bearer_header) {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let resuming_from = part.len;
    if resuming_from > 0 {
        builder = builder.header(header::RANGE, format!("bytes={resuming_from}-"));
        if let Some(validator) = cx.validator.as_deref() {
            builder = builder.header(header::IF_RANGE, validator);
        }
    }
    let wait = stall.min(cx.deadline.saturating_duration_since(Instant::now()));
    let response = match tokio::time::timeout(wait, builder.send()).await {
        Err(_) if Instant::now() >= cx.deadline => {
            let error = deadline_error(request, &shown_url, part.len);
            return (part, Err(AttemptFailure::Fatal(error)));
        }
        Err(_) => {
            return (
                part,
                Err(AttemptFailure::Transient(format!(
                    "no response within {}s",
                    stall.as_secs_f64()
                ))),
            );
        }
        Ok(Err(error)) => {
            let failure = if let Some(target) = refused_redirect(&error) {
                AttemptFailure::Fatal(DownloadError::UnsafeRedirect {
                    url: shown_url,
                    target,
                })
            } else if error.is_builder() || error.is_redirect() {
                AttemptFailure::Fatal(DownloadError::InvalidUrl {
                    url: shown_url,
                    reason: describe_reqwest_error(error),
                })
            } else {
                AttemptFailure::Transient(describe_reqwest_error(error))
            };
            return (part, Err(failure));
        }
        Ok(Ok(response)) => response,
    };

    let status = response.status();
    *cx.content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| crate::redact::redact_text(v.trim()));
    if let Some(failure) = classify_status(&response, cx.auth, &shown_url) {
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            // The part is already as long as the file (a run that stopped
            // between download and rename) or longer: start over.
            if let Err(e) = part.restart() {
                return (part, Err(AttemptFailure::Fatal(e)));
            }
        }
        return (part, Err(failure));
    }
    if is_html(response.headers()) {
        return (
            part,
            Err(AttemptFailure::Fatal(DownloadError::WebPage {
                url: shown_url,
                token: cx.auth.usage.clone(),
            })),
        );
    }
    if let Some(encoding) = content_encoding(response.headers()) {
        return (
            part,
            Err(AttemptFailure::Fatal(DownloadError::EncodedBody {
                url: shown_url,
                encoding,
            })),
        );
    }

    let total = if status == StatusCode::PARTIAL_CONTENT {
        match content_range(response.headers()) {
            Some((start, total)) if start == resuming_from => total,
            _ => {
                // Not the bytes we asked for: drop the part and ask for everything.
                let restarted = part.restart();
                let failure = match restarted {
                    Ok(()) => AttemptFailure::Transient(
                        "the server answered a different range than asked".into(),
                    ),
                    Err(e) => AttemptFailure::Fatal(e),
                };
                return (part, Err(failure));
            }
        }
    } else {
        // 200: the whole file. When we asked for a range this means the
        // server ignores ranges, or the file changed (If-Range): start over.
        if part.len > 0
            && let Err(e) = part.restart()
        {
            return (part, Err(AttemptFailure::Fatal(e)));
        }
        *cx.validator = resume_validator(response.headers());
        if let Err(e) = write_meta(&request.dest, url, cx.validator.as_deref()) {
            return (part, Err(AttemptFailure::Fatal(e)));
        }
        response.content_length()
    };

    if let (Some(expected), Some(total)) = (&request.expected.size, total)
        && !expected.matches(total)
    {
        return (
            part,
            Err(AttemptFailure::Fatal(DownloadError::SizeMismatch {
                path: request.dest.clone(),
                expected: expected.clone(),
                actual: total,
            })),
        );
    }

    progress.on_start(total);
    if part.len > 0 {
        progress.on_bytes(part.len);
    }
    let limits = StreamLimits {
        stall,
        deadline: cx.deadline,
        min_speed: request.options.min_speed,
        window: request.options.low_speed_window,
    };
    let (part, streamed) = stream_body(
        part,
        response,
        &limits,
        &shown_url,
        &cx.auth.usage,
        progress,
    )
    .await;
    let result = match streamed {
        Err(StreamEnd::Failed(failure)) => Err(failure),
        Err(StreamEnd::Deadline) => Err(AttemptFailure::Fatal(deadline_error(
            request, &shown_url, part.len,
        ))),
        Ok(()) => match total {
            Some(total) if part.len < total => Err(AttemptFailure::Transient(format!(
                "the connection closed after {} of {total} bytes",
                part.len
            ))),
            _ => Ok(()),
        },
    };
    (part, result)
}

/// `None` for a status whose body is the file (200, 206).
fn classify_status(
    response: &reqwest::Response,
    auth: &UrlAuth,
    shown_url: &str,
) -> Option<AttemptFailure> {
    let status = response.status();
    let url = shown_url.to_string();
    Some(match status.as_u16() {
        200 | 206 => return None,
        401 | 403 => AttemptFailure::Fatal(DownloadError::Unauthorized {
            url,
            status: status.as_u16(),
            token: auth.usage.clone(),
        }),
        404 => AttemptFailure::Fatal(DownloadError::NotFound { url }),
        410 => AttemptFailure::Fatal(DownloadError::Gone { url }),
        // A redirect reqwest handed back: one it could not follow.
        300..=399 => {
            let target = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "nowhere (no Location)".to_string(), redact_url);
            AttemptFailure::Fatal(DownloadError::UnsafeRedirect { url, target })
        }
        416 => AttemptFailure::Transient("the server could not serve the resumed range".into()),
        // Too many requests and timeouts are worth waiting out.
        408 | 429 => AttemptFailure::Transient(format!("the server answered {status}")),
        code if status.is_server_error() => {
            AttemptFailure::Transient(format!("the server answered {code}"))
        }
        code => AttemptFailure::Fatal(DownloadError::ClientError { url, status: code }),
    })
}

/// A `Content-Encoding` other than `identity`: the body is not the file's
/// bytes (plasma asks for `identity` and decodes nothing).
fn content_encoding(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_ENCODING)?;
    let text = value.to_str().unwrap_or("(unreadable)").trim();
    (!text.is_empty() && !text.eq_ignore_ascii_case("identity"))
        .then(|| crate::redact::redact_text(text))
}

fn is_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().to_ascii_lowercase().starts_with("text/html"))
}

/// Whether bytes at the start of a file look like an HTML page.
fn starts_like_html(head: &[u8]) -> bool {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = head
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(head.len());
    let head = &head[start..];
    [&b"<!doctype"[..], b"<html"].iter().any(|marker| {
        head.len() >= marker.len() && head[..marker.len()].eq_ignore_ascii_case(marker)
    })
}

/// Enough bytes to recognise an HTML start after some whitespace.
const SNIFF_BYTES: usize = 64;

/// `(start, total)` from `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
fn content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    let (span, total) = range.split_once('/')?;
    let start = span.split_once('-')?.0.trim().parse().ok()?;
    let total = total.trim().parse().ok();
    Some((start, total))
}

/// A strong ETag, else Last-Modified: what `If-Range` accepts. Weak ETags
/// (`W/"..."`) may not be used there.
fn resume_validator(headers: &HeaderMap) -> Option<String> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    text(header::ETAG)
        .filter(|etag| !etag.starts_with("W/"))
        .or_else(|| text(header::LAST_MODIFIED))
        .map(str::to_string)
}

fn write_meta(dest: &Path, url: &Url, validator: Option<&str>) -> Result<(), DownloadError> {
    let path = meta_path(dest);
    let Some(validator) = validator else {
        // Without a validator a later run cannot know the bytes still match.
        return remove_if_present(&path).map_err(|e| local_error("remove", &path, e));
    };
    let meta = PartMeta {
        url_id: url_id(url),
        validator: validator.to_string(),
    };
    let json = serde_json::to_vec(&meta).expect("plain struct serializes");
    // Not atomic on purpose: a torn sidecar fails to parse, which only costs
    // a restart from zero.
    std::fs::write(&path, json).map_err(|e| local_error("write", &path, e))
}

/// The time limits on one body.
struct StreamLimits {
    /// Longest wait for the next bytes.
    stall: Duration,
    /// The whole download's end.
    deadline: Instant,
    /// Bytes per second, averaged over `window`, below which the transfer
    /// is given up (and retried).
    min_speed: u64,
    window: Duration,
}

/// How a body ended, when not at its end.
enum StreamEnd {
    Failed(AttemptFailure),
    Deadline,
}

/// Streams the body into the part. Writing and hashing run on a blocking
/// thread fed through a channel, so the network and the disk overlap.
async fn stream_body(
    part: PartFile,
    response: reqwest::Response,
    limits: &StreamLimits,
    shown_url: &str,
    token: &TokenUse,
    progress: &dyn Progress,
) -> (PartFile, Result<(), StreamEnd>) {
    let part_path = part.path.clone();
    let mut sniffing = part.len == 0;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::task::spawn_blocking(move || {
        let mut part = part;
        while let Some(chunk) = receiver.blocking_recv() {
            if let Err(e) = part.append(&chunk) {
                return (part, Err(e));
            }
        }
        (part, Ok(()))
    });
    let web_page = || {
        StreamEnd::Failed(AttemptFailure::Fatal(DownloadError::WebPage {
            url: shown_url.to_string(),
            token: token.clone(),
        }))
    };

    let mut body = response.bytes_stream();
    let mut head = Vec::new();
    let mut outcome = Ok(());
    // The low-speed window: when it started and the bytes received in it.
    let mut window_start = Instant::now();
    let mut window_bytes = 0u64;
    loop {
        let now = Instant::now();
        if now >= limits.deadline {
            outcome = Err(StreamEnd::Deadline);
            break;
        }
        if now.duration_since(window_start) >= limits.window {
            let floor = limits.min_speed as f64 * limits.window.as_secs_f64();
            if (window_bytes as f64) < floor {
                outcome = Err(StreamEnd::Failed(AttemptFailure::Transient(format!(
                    "slower than {} bytes/s for {}s",
                    limits.min_speed,
                    limits.window.as_secs_f64()
                ))));
                break;
            }
            window_start = now;
            window_bytes = 0;
        }
        // Wake up for whichever comes first: a stall, the deadline, the
        // window's end.
        let wait = limits
            .stall
            .min(limits.deadline - now)
            .min((window_start + limits.window).saturating_duration_since(now))
            .max(Duration::from_millis(1));
        let chunk = match tokio::time::timeout(wait, body.next()).await {
            Err(_) if Instant::now().duration_since(now) >= limits.stall => {
                outcome = Err(StreamEnd::Failed(AttemptFailure::Transient(format!(
                    "no data for {}s",
                    limits.stall.as_secs_f64()
                ))));
                break;
            }
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                outcome = Err(StreamEnd::Failed(AttemptFailure::Transient(
                    describe_reqwest_error(error),
                )));
                break;
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        window_bytes += chunk.len() as u64;
        let mut data = chunk.to_vec();
        if sniffing {
            // Hold back the first bytes until we know this is not a web page.
            head.extend_from_slice(&data);
            if head.len() < SNIFF_BYTES {
                continue;
            }
            sniffing = false;
            if starts_like_html(&head) {
                outcome = Err(web_page());
                break;
            }
            data = std::mem::take(&mut head);
        }
        let n = data.len() as u64;
        if sender.send(data).await.is_err() {
            break; // the writer failed; its error is reported below
        }
        progress.on_bytes(n);
    }
    if sniffing && !head.is_empty() && outcome.is_ok() {
        // A body shorter than the sniff window.
        if starts_like_html(&head) {
            outcome = Err(web_page());
        } else {
            let n = head.len() as u64;
            if sender.send(std::mem::take(&mut head)).await.is_ok() {
                progress.on_bytes(n);
            }
        }
    }
    drop(sender);
    let (part, written) = writer.await.expect("the writer does not panic");
    if let Err(e) = written {
        return (
            part,
            Err(StreamEnd::Failed(AttemptFailure::Fatal(local_error(
                "write", &part_path, e,
            )))),
        );
    }
    (part, outcome)
}

/// Copies a local file (the spec's `source PATH`) to `dest` through the same
/// part file, hashing and verification as a download. Blocking: run it on a
/// blocking thread.
pub fn copy_from_source(
    source: &Path,
    dest: &Path,
    expected: &Expected,
    progress: &dyn Progress,
) -> Result<Sha256Digest, DownloadError> {
    let unreadable = |e| DownloadError::SourceUnreadable {
        path: source.to_path_buf(),
        source: e,
    };
    let mut input = File::open(source).map_err(unreadable)?;
    let len = input.metadata().map_err(unreadable)?.len();
    if let Some(expected_size) = &expected.size
        && !expected_size.matches(len)
    {
        return Err(DownloadError::SizeMismatch {
            path: dest.to_path_buf(),
            expected: expected_size.clone(),
            actual: len,
        });
    }
    create_parent(dest)?;
    let part_path = part_path(dest);
    let meta_path = meta_path(dest);
    remove_if_present(&meta_path).map_err(|e| local_error("remove", &meta_path, e))?;
    let mut part =
        PartFile::create(&part_path).map_err(|e| local_error("create", &part_path, e))?;
    progress.on_start(Some(len));

    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    let mut first = true;
    loop {
        let n = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = std::fs::remove_file(&part_path);
                return Err(unreadable(e));
            }
        };
        if first && starts_like_html(&buffer[..n.min(SNIFF_BYTES)]) {
            let _ = std::fs::remove_file(&part_path);
            return Err(DownloadError::SourceIsWebPage {
                path: source.to_path_buf(),
            });
        }
        first = false;
        part.append(&buffer[..n])
            .map_err(|e| local_error("write", &part_path, e))?;
        progress.on_bytes(n as u64);
    }
    place_verified(part, dest, expected, None)
}

/// fsync, check size, digest and content (the file must be what its name
/// says, [`FileKind`]), then rename into place. A part that fails a check is
/// deleted, so nothing wrong is left behind or placed. `content_type` is what
/// the server said it sent, for the message.
fn place_verified(
    part: PartFile,
    dest: &Path,
    expected: &Expected,
    content_type: Option<&str>,
) -> Result<Sha256Digest, DownloadError> {
    let part_path = part.path.clone();
    let meta_path = meta_path(dest);
    let (actual, len) = part
        .finish()
        .map_err(|e| local_error("write", &part_path, e))?;
    let discard = || {
        let _ = std::fs::remove_file(&part_path);
        let _ = std::fs::remove_file(&meta_path);
    };
    if let Some(expected_size) = &expected.size
        && !expected_size.matches(len)
    {
        discard();
        return Err(DownloadError::SizeMismatch {
            path: dest.to_path_buf(),
            expected: expected_size.clone(),
            actual: len,
        });
    }
    if let Some(expected_sha) = expected.sha256
        && expected_sha != actual
    {
        discard();
        return Err(DownloadError::HashMismatch {
            path: dest.to_path_buf(),
            expected: expected_sha,
            actual,
        });
    }
    let kind = FileKind::of(dest);
    if let Err(reason) = kind.check(&part_path) {
        let head = read_head(&part_path, 256).unwrap_or_default();
        discard();
        return Err(DownloadError::NotWhatItsNameSays {
            path: dest.to_path_buf(),
            what: kind.describe(),
            reason: crate::redact::redact_text(&reason),
            content_type: content_type.map(str::to_string),
            head: crate::redact::redact_text(&filekind::show_head(&head)),
        });
    }
    std::fs::rename(&part_path, dest).map_err(|e| local_error("move into place", dest, e))?;
    remove_if_present(&meta_path).map_err(|e| local_error("remove", &meta_path, e))?;
    sync_parent(dest).map_err(|e| local_error("sync the folder of", dest, e))?;
    Ok(actual)
}

/// The part file being written, with the hash of every byte in it so far.
struct PartFile {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
}

impl PartFile {
    /// An empty part (an existing one is truncated).
    fn create(path: &Path) -> io::Result<PartFile> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(PartFile {
            path: path.to_path_buf(),
            file,
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Continues an existing part: its bytes are hashed again from disk so
    /// the final digest covers the whole file.
    fn resume(path: &Path) -> io::Result<PartFile> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
        let mut len = 0u64;
        loop {
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buffer[..n]);
                    len += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        file.seek(SeekFrom::Start(len))?;
        Ok(PartFile {
            path: path.to_path_buf(),
            file,
            hasher,
            len,
        })
    }

    /// Back to empty, for a server that sends the whole file again.
    fn restart(&mut self) -> Result<(), DownloadError> {
        *self = PartFile::create(&self.path).map_err(|e| local_error("truncate", &self.path, e))?;
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Flushes to the disk and returns the digest and length.
    fn finish(self) -> io::Result<(Sha256Digest, u64)> {
        self.file.sync_all()?;
        Ok((
            Sha256Digest::from_bytes(self.hasher.finalize().into()),
            self.len,
        ))
    }
}

fn read_head(path: &Path, n: u64) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    File::open(path)?.take(n).read_to_end(&mut head)?;
    Ok(head)
}

/// The outermost folder above `path` that is a symbolic link to nothing (a
/// shared models folder on an unmounted disk), with where it points.
pub fn dangling_link_above(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let folders: Vec<&Path> = path.ancestors().skip(1).collect();
    folders.into_iter().rev().find_map(|folder| {
        let is_link = std::fs::symlink_metadata(folder).is_ok_and(|m| m.file_type().is_symlink());
        (is_link && std::fs::metadata(folder).is_err()).then(|| {
            (
                folder.to_path_buf(),
                std::fs::read_link(folder).unwrap_or_default(),
            )
        })
    })
}

fn create_parent(dest: &Path) -> Result<(), DownloadError> {
    if let Some((link, target)) = dangling_link_above(dest) {
        return Err(DownloadError::DanglingFolder { link, target });
    }
    match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent).map_err(|e| local_error("create the folder", parent, e))
        }
        _ => Ok(()),
    }
}

/// Makes the rename durable: without it a crash can forget the new name.
fn sync_parent(dest: &Path) -> io::Result<()> {
    match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A local I/O error, with disk full (and quota exceeded) said plainly.
fn local_error(action: &'static str, path: &Path, source: io::Error) -> DownloadError {
    let full = matches!(
        source.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) || source.kind() == io::ErrorKind::StorageFull;
    if full {
        DownloadError::DiskFull {
            path: path.to_path_buf(),
        }
    } else {
        DownloadError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The error and its causes, without the URL reqwest would print.
fn describe_reqwest_error(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_token_debug_hides_it() {
        let token = SecretToken::new("tok-visible-123");
        assert_eq!(format!("{token:?}"), "SecretToken(<redacted>)");
        let mut request = DownloadRequest::new(
            vec!["https://h.example/m?token=tok-visible-123".into()],
            "/tmp/m",
        );
        request.token = Some(token);
        assert!(!format!("{request:?}").contains("tok-visible-123"));
    }

    #[test]
    fn recognises_html_starts() {
        assert!(starts_like_html(b"<!DOCTYPE html><html>"));
        assert!(starts_like_html(b"\xEF\xBB\xBF\n  <html lang=en>"));
        assert!(!starts_like_html(b"\x08\x00\x00\x00\x00\x00\x00\x00{}"));
        assert!(!starts_like_html(b"<ht"));
    }

    #[test]
    fn unauthorized_hint_covers_each_token_situation() {
        let var = || "CIVITAI_TOKEN".to_string();
        assert!(
            unauthorized_hint(&TokenUse::Sent(var()))
                .contains("$CIVITAI_TOKEN was sent and rejected")
        );
        assert!(unauthorized_hint(&TokenUse::Unset(var())).contains("$CIVITAI_TOKEN is not set"));
        assert!(unauthorized_hint(&TokenUse::None).contains("no token-env is set"));
        let elsewhere = unauthorized_hint(&TokenUse::OtherHost {
            env: var(),
            host: "civitai.com".into(),
        });
        assert!(
            elsewhere.contains("only sent to civitai.com") && elsewhere.contains("token-env=VAR"),
            "{elsewhere}"
        );
        assert!(web_page_hint(&TokenUse::Unset(var())).contains("$CIVITAI_TOKEN is not set"));
    }

    #[test]
    fn tokens_go_to_the_first_urls_host_or_their_own_url() {
        let mut request = DownloadRequest::new(
            vec![
                "https://civitai.com/a".into(),
                "https://civitai.com:443/b".into(),
                "https://mirror.example/c".into(),
                "https://other.example/d".into(),
            ],
            "/tmp/m",
        );
        request.token = Some(SecretToken::new("t"));
        request.token_env = Some("CIVITAI_TOKEN".into());
        request.url_credentials = vec![
            None,
            None,
            Some(Credential {
                env: "MIRROR_TOKEN".into(),
                token: Some(SecretToken::new("m")),
            }),
        ];
        let urls: Vec<Url> = request
            .urls
            .iter()
            .map(|u| Url::parse(u).unwrap())
            .collect();
        let usage: Vec<TokenUse> = (0..4)
            .map(|i| request.auth_for(i, &urls[i], &urls[0]).usage)
            .collect();
        assert_eq!(
            usage,
            [
                TokenUse::Sent("CIVITAI_TOKEN".into()),
                TokenUse::Sent("CIVITAI_TOKEN".into()),
                TokenUse::Sent("MIRROR_TOKEN".into()),
                TokenUse::OtherHost {
                    env: "CIVITAI_TOKEN".into(),
                    host: "civitai.com".into()
                },
            ]
        );
        assert!(request.auth_for(3, &urls[3], &urls[0]).token.is_none());
    }

    /// The engine spawns downloads on tokio, which needs a `Send` future.
    #[test]
    fn download_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let request = DownloadRequest::new(vec![], "/tmp/m");
        let future = download(&request, &NoProgress);
        assert_send(&future);
    }

    #[test]
    fn disk_full_is_named() {
        let error = local_error(
            "write",
            Path::new("/m.part"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(
            error
                .to_string()
                .starts_with("the disk is full while writing /m.part")
        );
    }
}
