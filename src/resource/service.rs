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

use async_trait::async_trait;
use miette::SourceSpan;
use reqwest::Url;
use serde::Serialize;
use serde_json::{Value, json};

use super::custom_node::CustomNode;
use super::repo::Repo;
use super::venv::Venv;
use super::{ApplyContext, Kind, ObserveContext, Others, Outputs, ResourceError};
use crate::diagnostic::Problem;
use crate::lint::{Lint, LintContext};
use crate::plan::{Action, Diff};
use crate::service::{
    self, Launch as ServiceLaunch, Manager, Record, Running, health, launchd, systemd,
};
use crate::spec::reader::NodeReader;
use crate::spec::{Address, Reference, Spanned};
use crate::state::ResourceState;

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

/// A declared `service`. Its `Debug` shows the environment's names only.
#[derive(Clone)]
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
    /// The spec's folder: a `command` service's default working folder.
    pub spec_dir: PathBuf,
    /// The custom nodes of this ComfyUI (found at `resolve`): the service
    /// starts after them and restarts when one changes.
    pub custom_nodes: Vec<Address>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("launch", &self.launch)
            .field("cwd", &self.cwd)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("log", &self.log)
            .field("health", &self.health_url())
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

impl Service {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let name = r.resource_name().unwrap_or_default();
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
            spec_dir: r.cx.spec_dir.to_path_buf(),
            custom_nodes: Vec::new(),
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
            _ => self.spec_dir.clone(),
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
            self.custom_nodes = others
                .resources
                .iter()
                .filter(|(_, r)| {
                    r.as_any()
                        .downcast_ref::<CustomNode>()
                        .is_some_and(|n| n.comfyui.address == comfyui.address)
                })
                .map(|(a, _)| (*a).clone())
                .collect();
        }
    }
}

/// The unit file or plist as found, against what the spec makes of it.
#[derive(Debug, Serialize)]
pub struct UnitObserved {
    pub path: PathBuf,
    /// The file's text equals the desired text.
    pub matches: bool,
    /// A unified diff with environment values masked; `None` when it matches.
    #[serde(skip)]
    pub masked_diff: Option<String>,
}

/// What observation found: the record of the last start, whether that
/// process runs, its health answer, and the unit file or plist.
#[derive(Debug, Serialize)]
pub struct ServiceObserved {
    /// The manager this spec asks for on this machine (`auto` resolved).
    pub manager: Manager,
    /// What plasma started last (no environment values).
    pub record: Option<Record>,
    pub running: Running,
    /// `None`: not asked (plasma's process is not running, or no URL).
    /// With no record, an answer means a server plasma did not start.
    /// `Some(Err)`: what went wrong.
    pub health: Option<Result<(), String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitObserved>,
}

impl Service {
    /// The manager for this machine: the spec's, or `auto` resolved.
    pub fn manager(&self) -> Manager {
        match self.manager {
            ManagerChoice::Auto => Manager::detect(),
            ManagerChoice::Systemd => Manager::Systemd,
            ManagerChoice::Launchd => Manager::Launchd,
            ManagerChoice::Process => Manager::Process,
        }
    }

    /// What to start: command line, folder, environment, log.
    pub fn launch(&self) -> ServiceLaunch {
        ServiceLaunch {
            name: self.name.clone(),
            argv: self.argv(),
            cwd: self.working_dir(),
            env: self.env.clone(),
            log: self.log.clone(),
            run_dir: self.run_dir.clone(),
        }
    }

    fn record_path(&self) -> PathBuf {
        self.run_dir.join(service::RECORD_FILE)
    }

    /// The unit file or plist this spec makes, and its path (`process`: none).
    fn unit(
        &self,
        manager: Manager,
        mask: bool,
    ) -> Result<Option<(PathBuf, String)>, ResourceError> {
        let launch = self.launch();
        Ok(match manager {
            Manager::Process => None,
            Manager::Systemd => Some((
                systemd::unit_path(&self.name),
                systemd::unit_text(&launch, mask),
            )),
            Manager::Launchd => Some((
                launchd::plist_path(&self.name),
                launchd::plist_text(&launch, mask)?,
            )),
        })
    }

    fn observe_unit(&self, manager: Manager) -> Result<Option<UnitObserved>, ResourceError> {
        let Some((path, desired)) = self.unit(manager, false)? else {
            return Ok(None);
        };
        let found = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if crate::fsutil::is_absent(&e) => None,
            Err(e) => return Err(ResourceError::io("cannot read", &path, e)),
        };
        let matches = found.as_deref() == Some(desired.as_str());
        let masked_diff = if matches {
            None
        } else {
            let masked_desired = self
                .unit(manager, true)?
                .map(|(_, t)| t)
                .unwrap_or_default();
            let masked_found = found
                .as_deref()
                .map(|t| mask_unit(manager, t))
                .unwrap_or_default();
            Some(
                similar::TextDiff::from_lines(&masked_found, &masked_desired)
                    .unified_diff()
                    .header(&path.display().to_string(), &path.display().to_string())
                    .to_string(),
            )
        };
        Ok(Some(UnitObserved {
            path,
            matches,
            masked_diff,
        }))
    }

    /// Fails early, with what to do, when what the service runs is not there.
    /// ComfyUI v0.3.27 dies at start without a `custom_nodes/` folder, which
    /// its own tree does not carry (it is in its .gitignore): it is made here.
    fn prepare(&self, launch: &ServiceLaunch) -> Result<(), ResourceError> {
        if !launch.cwd.is_dir() {
            return Err(ResourceError::new(format!(
                "the service's folder {} does not exist",
                launch.cwd.display()
            ))
            .help("apply the resources it runs from first, or fix `cwd`"));
        }
        if let Launch::ComfyUi { comfyui, venv, .. } = &self.launch {
            if !launch.cwd.join("main.py").is_file() {
                return Err(ResourceError::new(format!(
                    "{} has no main.py: it is not a ComfyUI clone",
                    launch.cwd.display()
                ))
                .help(format!("check {} (its url and rev)", comfyui.address)));
            }
            let python = Path::new(&launch.argv[0]);
            if !python.exists() {
                return Err(
                    ResourceError::new(format!("{} does not exist", python.display()))
                        .help(format!("apply {} first", venv.address)),
                );
            }
            let nodes = launch.cwd.join("custom_nodes");
            std::fs::create_dir_all(&nodes)
                .map_err(|e| ResourceError::io("cannot create", &nodes, e))?;
        }
        Ok(())
    }
}

/// Replaces environment values in a unit file or plist found on disk, for plans.
fn mask_unit(manager: Manager, text: &str) -> String {
    match manager {
        Manager::Systemd => text
            .lines()
            .map(|line| match line.strip_prefix("Environment=") {
                Some(rest) => {
                    let key = rest.trim_start_matches('"').split('=').next().unwrap_or("");
                    format!("Environment=\"{key}={}\"\n", systemd::MASK)
                }
                None => format!("{line}\n"),
            })
            .collect(),
        Manager::Launchd => {
            let Ok(mut value) = plist::Value::from_reader_xml(text.as_bytes()) else {
                return "(not a readable plist)\n".to_string();
            };
            if let Some(env) = value
                .as_dictionary_mut()
                .and_then(|d| d.get_mut("EnvironmentVariables"))
                .and_then(plist::Value::as_dictionary_mut)
            {
                for (_, v) in env.iter_mut() {
                    *v = plist::Value::String(launchd::MASK.to_string());
                }
            }
            let mut bytes = Vec::new();
            let _ = value.to_writer_xml(&mut bytes);
            bytes.push(b'\n');
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Manager::Process => String::new(),
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

#[async_trait]
impl Kind for Service {
    type Observed = ServiceObserved;
    const KIND: &'static str = "service";

    fn desired(&self) -> Value {
        json!({
            "command": self.argv(),
            "cwd": self.working_dir(),
            "env": self.env.keys().collect::<Vec<_>>(),
            "env_digest": service::env_digest(&self.env),
            "log": self.log,
            "health": self.health_url(),
            "timeout_seconds": self.timeout.as_secs_f64(),
            "manager": self.manager,
        })
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.run_dir.clone()];
        match self.manager() {
            Manager::Systemd => paths.push(systemd::unit_path(&self.name)),
            Manager::Launchd => paths.push(launchd::plist_path(&self.name)),
            Manager::Process => {}
        }
        paths
    }

    fn resolve(&mut self, others: &Others<'_>) {
        self.resolve_from(others);
    }

    fn implied_dependencies(&self) -> Vec<Address> {
        self.custom_nodes.clone()
    }

    async fn observe(&self, _cx: &ObserveContext<'_>) -> Result<ServiceObserved, ResourceError> {
        let manager = self.manager();
        let record = Record::read(&self.record_path())?;
        let running = record.as_ref().map_or(Running::No, service::status);
        // Asked while plasma's own process runs, or when plasma started none:
        // then an answer means something else already serves there.
        let ask = running.is_running() || record.is_none();
        let health = match self.health_url().filter(|_| ask) {
            Some(url) => Some(health::probe(&health::client(), &url).await),
            None => None,
        };
        Ok(ServiceObserved {
            manager,
            unit: self.observe_unit(manager)?,
            record,
            running,
            health,
        })
    }

    fn diff(&self, observed: &ServiceObserved, _prior: Option<&ResourceState>) -> Diff {
        let launch = self.launch();
        let command = service::shell_words(&launch.argv);
        let Some(record) = &observed.record else {
            if let (Some(Ok(())), Some(url)) = (&observed.health, self.health_url()) {
                // Not started by plasma (by hand, or by another tool): starting
                // a second one would only fail to bind. It is left alone.
                let mut diff = Diff::new(
                    Action::NoOp,
                    format!("{url} already answers; not started by plasma, left alone"),
                );
                diff.warnings.push(format!(
                    "a server plasma did not start answers on {url}; stop it and apply \
                     to have plasma run {command}"
                ));
                return diff;
            }
            let mut diff = Diff::new(
                Action::Create,
                format!("start under {}", observed.manager.name()),
            )
            .attribute("command", None, Some(command));
            if let Some(url) = self.health_url() {
                diff = diff.attribute("health", None, Some(url));
            }
            if let Some(unit) = &observed.unit {
                diff.content_diff = unit.masked_diff.clone();
            }
            return diff;
        };
        let mut reasons = Vec::new();
        let mut diff = Diff::no_op();
        match &observed.running {
            Running::Yes { .. } => {}
            Running::No => {
                reasons.push("not running".to_string());
                diff = diff.attribute("running", Some("no".into()), Some("yes".into()));
            }
            Running::PidReused { pid } => {
                reasons.push(format!("not running (pid {pid} is now another process)"));
                diff = diff.attribute("running", Some("no".into()), Some("yes".into()));
            }
        }
        let running = observed.running.is_running();
        let mut changed = Vec::new();
        if record.manager != observed.manager {
            changed.push("manager");
            diff = diff.attribute(
                "manager",
                Some(record.manager.name().into()),
                Some(observed.manager.name().into()),
            );
        }
        if record.argv != launch.argv {
            changed.push("command");
            diff = diff.attribute(
                "command",
                Some(service::shell_words(&record.argv)),
                Some(command),
            );
        }
        if record.cwd != launch.cwd {
            changed.push("working folder");
            diff = diff.attribute(
                "cwd",
                Some(record.cwd.display().to_string()),
                Some(launch.cwd.display().to_string()),
            );
        }
        if record.env_digest != launch.env_digest() {
            changed.push("environment");
            let keys: Vec<String> = launch.env.keys().cloned().collect();
            let (old, new) = if record.env_keys == keys {
                (
                    "(values not shown)".to_string(),
                    "(changed values)".to_string(),
                )
            } else {
                (list_or_none(&record.env_keys), list_or_none(&keys))
            };
            diff = diff.attribute("env", Some(old), Some(new));
        }
        if record.log != launch.log {
            changed.push("log");
            diff = diff.attribute(
                "log",
                Some(record.log.display().to_string()),
                Some(launch.log.display().to_string()),
            );
        }
        if let Some(unit) = observed.unit.as_ref().filter(|u| !u.matches) {
            if changed.is_empty() {
                changed.push(match observed.manager {
                    Manager::Launchd => "plist",
                    _ => "unit file",
                });
            }
            diff.content_diff = unit.masked_diff.clone();
        }
        if !changed.is_empty() {
            let what = format!("{} changed", changed.join(", "));
            reasons.push(if running {
                format!("restart: {what}")
            } else {
                what
            });
        }
        if let Some(Err(why)) = &observed.health {
            reasons.push(format!("restart: unhealthy ({why})"));
            diff = diff.attribute("health", Some(why.clone()), Some("healthy".into()));
        }
        if reasons.is_empty() {
            return diff;
        }
        if !running {
            reasons[0] = format!("start: {}", reasons[0]);
        }
        diff.action = Action::Update;
        diff.reason = reasons.join("; ");
        diff
    }

    fn dependencies_changed(&self, mut diff: Diff, changed: &[String]) -> Diff {
        // A service not yet started, or starting anyway, loads everything afresh.
        if changed.is_empty() || diff.action == Action::Create {
            return diff;
        }
        let reason = format!("restart: {} changed", changed.join(", "));
        if diff.action.is_change() {
            diff.reason = format!("{}; {reason}", diff.reason);
        } else {
            diff.action = Action::Update;
            diff.reason = reason;
        }
        diff
    }

    async fn apply(
        &self,
        observed: &ServiceObserved,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        let launch = self.launch();
        self.prepare(&launch)?;
        // Whatever runs from the last start goes first (under its own manager).
        if let Some(record) = Record::read(&self.record_path())?.or(observed.record.clone()) {
            service::stop(&record).await?;
        }
        let mut started = service::start(&launch, observed.manager).await?;
        let url = self.health_url();
        if let Err(e) = health::wait(url.as_deref(), self.timeout, &mut started).await {
            let tail = service::log_tail(&self.log, 20);
            let message = if tail.is_empty() {
                format!("{}\n(the log {} is empty)", e.message, self.log.display())
            } else {
                format!(
                    "{}\nlast lines of {}:\n{tail}",
                    e.message,
                    self.log.display()
                )
            };
            return Err(ResourceError::new(message).help(format!(
                "the whole log is {}; fix the cause and apply again",
                self.log.display()
            )));
        }
        let _ = cx;
        Ok(self.record_outputs(&started.record))
    }

    fn outputs(&self, observed: &ServiceObserved) -> Outputs {
        match &observed.record {
            Some(record) => self.record_outputs(record),
            None => Outputs::new(),
        }
    }

    fn lint(&self, _cx: &LintContext<'_>) -> Vec<Lint> {
        self.exposed_lint().into_iter().collect()
    }
}

impl Service {
    /// What state keeps: enough to find and stop the service once it has
    /// left the spec (`apply --prune`).
    fn record_outputs(&self, record: &Record) -> Outputs {
        let mut out = Outputs::new();
        out.insert("manager".into(), json!(record.manager));
        out.insert("record".into(), json!(self.record_path()));
        out.insert("log".into(), json!(record.log));
        if let Some(pid) = record.pid {
            out.insert("pid".into(), json!(pid));
        }
        if let Some(unit) = &record.unit {
            out.insert("unit".into(), json!(unit));
        }
        if let Some(url) = self.base_url() {
            out.insert("base_url".into(), json!(url));
        }
        out
    }

    /// `service-exposed`: ComfyUI has no authentication; listening beyond
    /// loopback lets anyone on the network run code on this machine.
    fn exposed_lint(&self) -> Option<Lint> {
        let args = self.comfyui_args()?;
        let words: Vec<&str> = args.iter().map(|a| a.value.as_str()).collect();
        let Listen::Hosts(hosts) = comfyui_listen(&words) else {
            return None;
        };
        let exposed: Vec<&String> = hosts.iter().filter(|h| is_beyond_loopback(h)).collect();
        if exposed.is_empty() {
            return None;
        }
        let span = args
            .iter()
            .rev()
            .find(|a| a.value.starts_with("--listen"))
            .map_or(self.span, |a| a.span);
        let hosts: Vec<&str> = exposed.iter().map(|h| h.as_str()).collect();
        Some(crate::lint::SERVICE_EXPOSED.at(
            span,
            format!(
                "ComfyUI would listen on {} (beyond this machine), without authentication",
                hosts.join(", ")
            ),
            "listens beyond loopback",
            "write `--listen 127.0.0.1` (and reach it remotely through an SSH tunnel), \
             or `allow service-exposed` on a trusted network",
        ))
    }
}

/// Stops a service that has left the spec and deletes what plasma created for
/// it, from what its state entry recorded (`apply --prune`): the record
/// proves plasma started it, whether or not state marks it as created.
pub async fn prune(entry: &ResourceState) -> Result<(), ResourceError> {
    let Some(path) = entry.outputs.get("record").and_then(Value::as_str) else {
        return Ok(());
    };
    let path = PathBuf::from(path);
    if let Some(record) = Record::read(&path)? {
        service::remove(&record, &path).await?;
    }
    // plasma's own folder for the service (`.plasma/services/NAME/`).
    if let Some(run_dir) = path
        .parent()
        .filter(|d| d.parent().and_then(Path::file_name) == Some("services".as_ref()))
    {
        match std::fs::remove_dir_all(run_dir) {
            Ok(()) => {}
            Err(e) if crate::fsutil::is_absent(&e) => {}
            Err(e) => return Err(ResourceError::io("cannot delete", run_dir, e)),
        }
    }
    Ok(())
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
