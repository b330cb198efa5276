//! `service`: a long-running process (ComfyUI) with its command line,
//! environment and a health check, kept running by the operating system's own
//! service manager, as `brew services` does: a LaunchAgent on macOS, a systemd
//! user unit on Linux where a user systemd runs, else a detached process that
//! plasma starts in its own session and recognises again by pid and start
//! time (see `crate::service`).
//!
//! Desired state: running, healthy, with exactly this command line and
//! environment. The environment is compared through a digest recorded at
//! start, so its values (which may be secrets) never reach a plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use miette::SourceSpan;
use reqwest::Url;

use super::repo::Repo;
use super::venv::Venv;
use super::{Kind, Others};
use crate::diagnostic::Problem;
use crate::spec::reader::NodeReader;
use crate::spec::{Reference, Spanned};

/// ComfyUI's port when `--port` is not given (its `cli_args.py` default).
pub const COMFYUI_DEFAULT_PORT: u16 = 8188;
/// ComfyUI's health route: answers once the server is up (contract §6, last section).
pub const COMFYUI_HEALTH_PATH: &str = "/system_stats";
/// How long apply waits for health when the spec does not say.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

/// Which service manager runs the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManagerChoice {
    /// launchd on macOS, a user systemd on Linux when one runs, else `process`.
    Auto,
    Systemd,
    Launchd,
    Process,
}

impl ManagerChoice {
    pub const WORDS: &'static [&'static str] = &["auto", "systemd", "launchd", "process"];

    fn from_word(word: &str) -> ManagerChoice {
        match word {
            "systemd" => ManagerChoice::Systemd,
            "launchd" => ManagerChoice::Launchd,
            "process" => ManagerChoice::Process,
            _ => ManagerChoice::Auto,
        }
    }
}

/// What runs: a command line as written, or ComfyUI from a clone and a venv.
#[derive(Debug, Clone)]
pub enum Launch {
    /// `command PROGRAM ARG…`.
    Command(Vec<Spanned<String>>),
    /// `comfyui repo.X` + `venv venv.Y` + `args …`: `<venv>/bin/python main.py ARG…`
    /// in the clone.
    ComfyUi {
        comfyui: Reference,
        venv: Reference,
        args: Vec<Spanned<String>>,
        /// The clone's folder, known once the repo is resolved.
        clone: Option<PathBuf>,
        /// The venv's folder, known once the venv is resolved.
        venv_path: Option<PathBuf>,
    },
}

/// A declared `service`.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub span: SourceSpan,
    pub launch: Launch,
    /// The working folder; for ComfyUI the clone, else the spec's folder unless given.
    pub cwd: Option<PathBuf>,
    /// Extra environment variables, by name (values may be secrets: never printed).
    pub env: BTreeMap<String, String>,
    /// Where the service's stdout and stderr go.
    pub log: PathBuf,
    /// `health { url … }` as written, when given.
    pub health: Option<Spanned<Url>>,
    /// How long apply waits for the service to become healthy.
    pub timeout: Duration,
    pub manager: ManagerChoice,
    /// The folder plasma keeps this service's own records in
    /// (`<spec dir>/.plasma/services/NAME/`).
    pub run_dir: PathBuf,
}

impl Service {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let name = r
            .node
            .entries()
            .iter()
            .find(|e| e.name().is_none())
            .and_then(|e| e.value().as_string())
            .unwrap_or_default()
            .to_string();
        let command = r.child("command");
        let comfyui_node = r.child("comfyui");
        let launch = match (command, comfyui_node) {
            (Some(c), None) => {
                let argv: Vec<Spanned<String>> = c
                    .entries()
                    .iter()
                    .filter(|e| e.name().is_none())
                    .filter_map(|e| r.entry_string(e))
                    .collect();
                if argv.is_empty() {
                    r.fail(
                        Problem::error("spec::missing-value", "`command` needs a program")
                            .label(c.name().span(), "expected a program and its arguments")
                            .help("write `command \"/usr/bin/python3\" \"server.py\"`"),
                    );
                    return None;
                }
                Launch::Command(argv)
            }
            (None, Some(_)) => {
                let comfyui = r.reference("comfyui", Repo::KIND);
                let venv = r.reference("venv", Venv::KIND);
                let args = r.string_list("args");
                Launch::ComfyUi {
                    comfyui: comfyui?,
                    venv: venv?,
                    args,
                    clone: None,
                    venv_path: None,
                }
            }
            (Some(c), Some(_)) => {
                r.fail(
                    Problem::error(
                        "spec::conflicting-fields",
                        "a service has either `command` or `comfyui`, not both",
                    )
                    .label(c.name().span(), "remove this or `comfyui`"),
                );
                return None;
            }
            (None, None) => {
                r.fail(
                    Problem::error(
                        "spec::missing-field",
                        format!("service `{name}` needs `command` or `comfyui`"),
                    )
                    .label(r.name_span(), "says nothing about what to run")
                    .help(
                        "add `command \"PROGRAM\" \"ARG\"…`, or `comfyui repo.X` with \
                         `venv venv.Y` and `args …`",
                    ),
                );
                return None;
            }
        };
        if matches!(launch, Launch::Command(_)) {
            // `args` and `venv` belong to the ComfyUI form; say so rather than "unknown field".
            for field in ["args", "venv"] {
                if let Some(node) = r.mark_used(field).first() {
                    r.fail(
                        Problem::error(
                            "spec::conflicting-fields",
                            format!("`{field}` goes with `comfyui`, not with `command`"),
                        )
                        .label(node.name().span(), "put the arguments into `command`"),
                    );
                }
            }
        }
        let cwd = r.opt_path("cwd").map(|p| p.value);
        let env = parse_env(r);
        let run_dir = r.cx.spec_dir.join(".plasma").join("services").join(&name);
        let log = r
            .opt_path("log")
            .map(|p| p.value)
            .unwrap_or_else(|| run_dir.join("service.log"));
        let (health, timeout) = parse_health(r);
        let manager = r
            .opt_choice("manager", ManagerChoice::WORDS)
            .map_or(ManagerChoice::Auto, |c| ManagerChoice::from_word(c.value));
        if r.failed() {
            return None;
        }
        Some(Service {
            name,
            span: r.name_span(),
            launch,
            cwd,
            env,
            log,
            health,
            timeout: timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
            manager,
            run_dir,
        })
    }

    /// `scheme://host:port` of the service: from `health { url … }` when
    /// given, else for ComfyUI from its `--listen`/`--port` arguments
    /// (default `http://127.0.0.1:8188`; an all-addresses listen is reached
    /// on loopback). `None` for a `command` service without a health url.
    pub fn base_url(&self) -> Option<String> {
        if let Some(url) = &self.health {
            return Some(origin(&url.value));
        }
        match &self.launch {
            Launch::ComfyUi { args, .. } => {
                let args: Vec<&str> = args.iter().map(|a| a.value.as_str()).collect();
                let listen = comfyui_listen(&args);
                let host = match listen {
                    Listen::Default => "127.0.0.1".to_string(),
                    Listen::Hosts(hosts) => connect_host(&hosts),
                };
                let port = comfyui_port(&args).unwrap_or(COMFYUI_DEFAULT_PORT);
                Some(format!("http://{host}:{port}"))
            }
            Launch::Command(_) => None,
        }
    }

    /// The URL whose answer means healthy: `health { url … }`, else for
    /// ComfyUI `<base_url>/system_stats`. `None`: only the process is checked.
    pub fn health_url(&self) -> Option<String> {
        if let Some(url) = &self.health {
            return Some(url.value.to_string());
        }
        match &self.launch {
            Launch::ComfyUi { .. } => self.base_url().map(|b| format!("{b}{COMFYUI_HEALTH_PATH}")),
            Launch::Command(_) => None,
        }
    }

    /// The command line that runs: the program first.
    pub fn argv(&self) -> Vec<String> {
        match &self.launch {
            Launch::Command(argv) => argv.iter().map(|a| a.value.clone()).collect(),
            Launch::ComfyUi {
                args, venv_path, ..
            } => {
                let python = venv_path
                    .as_deref()
                    .map(crate::python::venv_python)
                    .unwrap_or_else(|| PathBuf::from("python"));
                let mut argv = vec![python.display().to_string(), "main.py".to_string()];
                argv.extend(args.iter().map(|a| a.value.clone()));
                argv
            }
        }
    }

    /// The folder the service runs in.
    pub fn working_dir(&self) -> PathBuf {
        if let Some(cwd) = &self.cwd {
            return cwd.clone();
        }
        match &self.launch {
            Launch::ComfyUi {
                clone: Some(clone), ..
            } => clone.clone(),
            _ => self
                .run_dir
                .ancestors()
                .nth(3)
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        }
    }

    /// The ComfyUI arguments, when this is a ComfyUI service.
    pub fn comfyui_args(&self) -> Option<Vec<&Spanned<String>>> {
        match &self.launch {
            Launch::ComfyUi { args, .. } => Some(args.iter().collect()),
            Launch::Command(_) => None,
        }
    }
}

fn parse_env(r: &NodeReader<'_, '_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(block) = r.child("env") else {
        return env;
    };
    for var in block.children().map(|d| d.nodes()).unwrap_or_default() {
        let key = var.name().value().to_string();
        let args: Vec<_> = var
            .entries()
            .iter()
            .filter(|e| e.name().is_none())
            .collect();
        let value = match args.as_slice() {
            [one] => r.entry_string(one),
            _ => {
                r.fail(
                    Problem::error(
                        "spec::malformed-env",
                        format!("`{key}` takes one string value"),
                    )
                    .label(var.name().span(), "here")
                    .help(format!("write `{key} \"value\"`")),
                );
                None
            }
        };
        if key.is_empty() || key.contains('=') {
            r.fail(
                Problem::error(
                    "spec::malformed-env",
                    format!("`{key}` is not an environment variable name"),
                )
                .label(var.name().span(), "here"),
            );
            continue;
        }
        if let Some(value) = value {
            env.insert(key, value.value);
        }
    }
    env
}

fn parse_health(r: &NodeReader<'_, '_>) -> (Option<Spanned<Url>>, Option<Duration>) {
    let Some(block) = r.child("health") else {
        return (None, None);
    };
    let inner = NodeReader::new(block, r.cx);
    let url = inner
        .opt_string("url")
        .and_then(|u| match Url::parse(&u.value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(Spanned::new(url, u.span))
            }
            _ => {
                inner.fail(
                    Problem::error(
                        "spec::malformed-url",
                        format!("`{}` is not an http(s) URL", u.value),
                    )
                    .label(u.span, "expected http://HOST:PORT/PATH")
                    .help("write a URL such as \"http://127.0.0.1:8188/system_stats\""),
                );
                None
            }
        });
    let timeout = inner.opt_duration("timeout").map(|d| d.value);
    // Problems inside the block are reported through the shared context.
    inner.finish();
    (url, timeout)
}

/// `scheme://host:port` of a URL, with the scheme's default port written out.
fn origin(url: &Url) -> String {
    // `host_str` writes an IPv6 address in brackets, as a URL needs.
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    format!("{}://{host}:{port}", url.scheme())
}

/// What ComfyUI's `--listen` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// No `--listen`: 127.0.0.1.
    Default,
    /// The addresses it binds (bare `--listen` is `0.0.0.0` and `::`).
    Hosts(Vec<String>),
}

/// Reads `--listen [IP[,IP…]]` from ComfyUI's arguments (the last one wins,
/// as with argparse). Its value is optional: a following `--flag` is not it.
pub fn comfyui_listen(args: &[&str]) -> Listen {
    let mut listen = Listen::Default;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        if let Some(value) = arg.strip_prefix("--listen=") {
            listen = Listen::Hosts(split_hosts(value));
        } else if arg == "--listen" {
            match args.get(i + 1) {
                Some(next) if !next.starts_with('-') => {
                    listen = Listen::Hosts(split_hosts(next));
                    i += 1;
                }
                _ => listen = Listen::Hosts(vec!["0.0.0.0".into(), "::".into()]),
            }
        }
        i += 1;
    }
    listen
}

fn split_hosts(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads `--port N` / `--port=N` from ComfyUI's arguments.
pub fn comfyui_port(args: &[&str]) -> Option<u16> {
    let mut port = None;
    for (i, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix("--port=") {
            port = value.parse().ok();
        } else if *arg == "--port" {
            port = args.get(i + 1).and_then(|v| v.parse().ok());
        }
    }
    port
}

/// True for an address that is not loopback (reachable from other machines).
pub fn is_beyond_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return false;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => true,
    }
}

/// The host to connect to for a listen list: a loopback one when listed,
/// else loopback for an all-addresses bind, else the first.
fn connect_host(hosts: &[String]) -> String {
    if let Some(h) = hosts.iter().find(|h| !is_beyond_loopback(h)) {
        return bracket(h);
    }
    if hosts.iter().any(|h| h == "0.0.0.0") {
        return "127.0.0.1".into();
    }
    if hosts.iter().any(|h| h == "::") {
        return "[::1]".into();
    }
    hosts
        .first()
        .map_or_else(|| "127.0.0.1".to_string(), |h| bracket(h))
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl Service {
    /// Takes the clone and venv folders from the resources it names.
    fn resolve_from(&mut self, others: &Others<'_>) {
        if let Launch::ComfyUi {
            comfyui,
            venv,
            clone,
            venv_path,
            ..
        } = &mut self.launch
        {
            *clone = others
                .get::<Repo>(&comfyui.address)
                .map(|r| r.checkout.path.clone());
            *venv_path = others
                .get::<Venv>(&venv.address)
                .map(|v| v.path().to_path_buf());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(comfyui_listen(&["--cpu"]), Listen::Default);
        assert_eq!(
            comfyui_listen(&["--listen", "--port", "1"]),
            Listen::Hosts(vec!["0.0.0.0".into(), "::".into()])
        );
        assert_eq!(
            comfyui_listen(&["--listen", "127.0.0.1,::1"]),
            Listen::Hosts(vec!["127.0.0.1".into(), "::1".into()])
        );
        assert_eq!(
            comfyui_listen(&["--listen=0.0.0.0"]),
            Listen::Hosts(vec!["0.0.0.0".into()])
        );
        assert_eq!(comfyui_port(&["--port", "9000"]), Some(9000));
        assert_eq!(comfyui_port(&["--port=9001"]), Some(9001));
        assert_eq!(comfyui_port(&[]), None);
    }

    #[test]
    fn loopback() {
        assert!(!is_beyond_loopback("127.0.0.1"));
        assert!(!is_beyond_loopback("::1"));
        assert!(!is_beyond_loopback("localhost"));
        assert!(is_beyond_loopback("0.0.0.0"));
        assert!(is_beyond_loopback("::"));
        assert!(is_beyond_loopback("192.168.1.4"));
        assert_eq!(connect_host(&["0.0.0.0".into(), "::".into()]), "127.0.0.1");
        assert_eq!(connect_host(&["::".into()]), "[::1]");
    }
}

/// What observation found (first version: the health answer only).
#[derive(Debug, serde::Serialize)]
pub struct ServiceObserved {
    /// The health URL's answer: `None` when there is no URL to ask.
    pub healthy: Option<bool>,
}

#[async_trait::async_trait]
impl Kind for Service {
    type Observed = ServiceObserved;
    const KIND: &'static str = "service";

    fn desired(&self) -> serde_json::Value {
        serde_json::json!({
            "command": self.argv(),
            "cwd": self.working_dir(),
            "env": self.env.keys().collect::<Vec<_>>(),
            "log": self.log,
            "health": self.health_url(),
            "timeout_seconds": self.timeout.as_secs_f64(),
            "manager": self.manager,
        })
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        vec![self.run_dir.clone()]
    }

    fn resolve(&mut self, others: &Others<'_>) {
        self.resolve_from(others);
    }

    async fn observe(
        &self,
        _cx: &super::ObserveContext<'_>,
    ) -> Result<ServiceObserved, super::ResourceError> {
        let healthy = match self.health_url() {
            None => None,
            Some(url) => Some(
                reqwest::Client::new()
                    .get(url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
            ),
        };
        Ok(ServiceObserved { healthy })
    }

    fn diff(
        &self,
        observed: &ServiceObserved,
        _prior: Option<&crate::state::ResourceState>,
    ) -> crate::plan::Diff {
        match observed.healthy {
            Some(true) => crate::plan::Diff::no_op(),
            _ => crate::plan::Diff::new(crate::plan::Action::Create, "not running"),
        }
    }

    async fn apply(
        &self,
        _observed: &ServiceObserved,
        _cx: &super::ApplyContext<'_>,
    ) -> Result<super::Outputs, super::ResourceError> {
        Err(super::ResourceError::new(
            "starting services is not implemented in this build yet",
        ))
    }

    fn outputs(&self, _observed: &ServiceObserved) -> super::Outputs {
        let mut out = super::Outputs::new();
        if let Some(url) = self.base_url() {
            out.insert("base_url".into(), url.into());
        }
        out
    }
}
