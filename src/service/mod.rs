//! Running a long-lived process the way the operating system runs services,
//! as `brew services` does: a LaunchAgent under `~/Library/LaunchAgents` with
//! `launchctl` on macOS ([`launchd`]), a systemd user unit with
//! `systemctl --user` on Linux where a user systemd runs ([`systemd`]), else a
//! detached process in its own session that plasma recognises again by pid
//! and start time ([`process`]).
//!
//! Whatever the manager, plasma writes a [`Record`] beside the service's log
//! when it starts it: the command line, the working folder and a digest of
//! the environment, so a later plan can say "running with another command"
//! without ever keeping an environment value.

pub mod health;
pub mod launchd;
pub mod process;
pub mod systemd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::resource::ResourceError;

/// The record's file name inside the service's run folder.
pub const RECORD_FILE: &str = "record.json";

/// Variables passed from plasma's own environment to a `process` service;
/// everything else comes from the spec, so the service's environment does
/// not depend on the shell that ran `plasma apply`. (launchd and systemd
/// give a service their own small environment likewise.)
pub const PASSED_THROUGH: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "TMPDIR"];

/// A service manager that plasma drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manager {
    Systemd,
    Launchd,
    Process,
}

impl Manager {
    pub fn name(self) -> &'static str {
        match self {
            Manager::Systemd => "systemd",
            Manager::Launchd => "launchd",
            Manager::Process => "process",
        }
    }

    /// What `manager "auto"` means on this machine: launchd on macOS, systemd
    /// when a user systemd answers on its socket, else a detached process.
    pub fn detect() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else if systemd::user_manager_runs() {
            Manager::Systemd
        } else {
            Manager::Process
        }
    }
}

/// What the service is to run: the desired command line and environment.
/// Its `Debug` shows the environment's names only.
#[derive(Clone)]
pub struct Launch {
    /// Names the unit / LaunchAgent (`plasma-NAME`, `dev.plasma.NAME`).
    pub name: String,
    /// Program first.
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// The spec's variables (values may be secrets).
    pub env: BTreeMap<String, String>,
    pub log: PathBuf,
    /// plasma's own folder for this service (record, default log).
    pub run_dir: PathBuf,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("name", &self.name)
            .field("argv", &self.argv)
            .field("cwd", &self.cwd)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl Launch {
    /// The digest recorded for the environment (BLAKE3 in a plasma-only
    /// derivation, over `KEY=VALUE` lines in key order).
    pub fn env_digest(&self) -> String {
        env_digest(&self.env)
    }

    pub fn record_path(&self) -> PathBuf {
        self.run_dir.join(RECORD_FILE)
    }
}

/// The digest of an environment, as recorded at start.
pub fn env_digest(env: &BTreeMap<String, String>) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("plasma service environment v1");
    for (k, v) in env {
        hasher.update(k.as_bytes());
        hasher.update(b"=");
        hasher.update(v.as_bytes());
        hasher.update(b"\0");
    }
    hasher.finalize().to_hex().to_string()
}

/// What plasma wrote when it last started the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub manager: Manager,
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// The environment's names (values are never recorded).
    pub env_keys: Vec<String>,
    pub env_digest: String,
    pub log: PathBuf,
    /// `process`: the pid and its start time as the OS reports it (clock
    /// ticks since boot from `/proc/<pid>/stat` on Linux, `ps -o lstart` on
    /// macOS), so a recycled pid is never taken for the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// `systemd`/`launchd`: the unit file or plist plasma owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<PathBuf>,
    /// `systemd`: the unit name; `launchd`: the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Record {
    pub fn read(path: &Path) -> Result<Option<Record>, ResourceError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ResourceError::new(format!("cannot read {}: {e}", path.display())).help(
                    "the file is plasma's record of the running service; \
                     delete it and apply again to start afresh",
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ResourceError::io("cannot read", path, e)),
        }
    }

    pub fn write(&self, path: &Path) -> Result<(), ResourceError> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| ResourceError::new(format!("cannot record the service: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ResourceError::io("cannot create", dir, e))?;
        }
        crate::fsutil::write_atomic(path, &bytes, Some(0o600))
            .map_err(|e| ResourceError::io("cannot write", path, e))
    }
}

/// Whether the recorded service runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum Running {
    /// Running, with its main pid when the manager says.
    Yes {
        pid: Option<u32>,
    },
    No,
    /// The recorded pid now belongs to another process.
    PidReused {
        pid: u32,
    },
}

impl Running {
    pub fn is_running(&self) -> bool {
        matches!(self, Running::Yes { .. })
    }
}

/// Asks the record's manager whether the service runs.
pub fn status(record: &Record) -> Running {
    match record.manager {
        Manager::Process => process::status(record),
        Manager::Systemd => systemd::status(record),
        Manager::Launchd => launchd::status(record),
    }
}

/// Stops the recorded service and waits until it is gone.
pub async fn stop(record: &Record) -> Result<(), ResourceError> {
    match record.manager {
        Manager::Process => process::stop(record).await,
        Manager::Systemd => systemd::stop(record).await,
        Manager::Launchd => launchd::stop(record).await,
    }
}

/// Stops the service and deletes what plasma created for it (unit file or
/// plist, and the record), for `apply --prune`.
pub async fn remove(record: &Record, record_path: &Path) -> Result<(), ResourceError> {
    stop(record).await?;
    if let Some(unit) = &record.unit {
        match record.manager {
            Manager::Systemd => systemd::remove(record, unit).await?,
            Manager::Launchd | Manager::Process => remove_file(unit)?,
        }
    }
    remove_file(record_path)
}

fn remove_file(path: &Path) -> Result<(), ResourceError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ResourceError::io("cannot delete", path, e)),
    }
}

/// A started service: its record, and for `process` the child, to notice an
/// early exit while waiting for health.
pub struct Started {
    pub record: Record,
    pub child: Option<std::process::Child>,
}

impl Started {
    /// `Some(reason)` when the service has already stopped.
    pub fn exited(&mut self) -> Option<String> {
        if let Some(child) = &mut self.child {
            return match child.try_wait() {
                Ok(Some(status)) => Some(format!("it exited ({status})")),
                _ => None,
            };
        }
        match status(&self.record) {
            Running::Yes { .. } => None,
            _ => Some("its manager reports it is not running".to_string()),
        }
    }
}

/// Starts the service under `manager`, writing the unit file or plist first
/// where there is one, and records what was started.
pub async fn start(launch: &Launch, manager: Manager) -> Result<Started, ResourceError> {
    if let Some(dir) = launch.log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ResourceError::io("cannot create", dir, e))?;
    }
    std::fs::create_dir_all(&launch.run_dir)
        .map_err(|e| ResourceError::io("cannot create", &launch.run_dir, e))?;
    let started = match manager {
        Manager::Process => process::start(launch)?,
        Manager::Systemd => systemd::start(launch).await?,
        Manager::Launchd => launchd::start(launch).await?,
    };
    started.record.write(&launch.record_path())?;
    Ok(started)
}

/// The record a start under `manager` writes, before the manager adds its part.
pub fn base_record(launch: &Launch, manager: Manager) -> Record {
    Record {
        manager,
        argv: launch.argv.clone(),
        cwd: launch.cwd.clone(),
        env_keys: launch.env.keys().cloned().collect(),
        env_digest: launch.env_digest(),
        log: launch.log.clone(),
        pid: None,
        start_time: None,
        unit: None,
        label: None,
    }
}

/// The last `lines` lines of a log file (empty when there is none).
pub fn log_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let size = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::new();
    if file
        .seek(SeekFrom::Start(size.saturating_sub(WINDOW)))
        .is_err()
        || file.read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A command line as a user would type it (arguments with spaces quoted).
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains([' ', '"', '\'', '$', '\\']) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a manager's command line tool and returns its stdout; a failure
/// quotes its stderr.
pub async fn run_tool(program: &str, args: &[&str]) -> Result<String, ResourceError> {
    let output = crate::child::output_async(
        tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null()),
    )
    .await
    .map_err(|e| ResourceError::new(format!("cannot run {program}: {e}")))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(ResourceError::new(format!(
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}
