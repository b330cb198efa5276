//! Step 8, state: `.plasma/state.json` beside the spec.
//!
//! The file is always either the previous state or the new one: it is
//! written to a temporary name, fsynced and renamed over the old one, and the
//! old one is kept as `state.json.backup`. An exclusive lock on
//! `state.json.lock` stops two applies from writing at once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fsutil;

pub const STATE_FORMAT: u32 = 1;

/// What plasma remembers about one resource from its last apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceState {
    pub kind: String,
    /// BLAKE3 of the desired attributes that were applied.
    pub desired_digest: String,
    /// The desired attributes that were applied (never a secret).
    pub desired: Value,
    /// What the resource published: commits, digests, results.
    #[serde(default)]
    pub outputs: Map<String, Value>,
    /// The paths it owns, for `apply --prune` once it leaves the spec.
    #[serde(default)]
    pub owned_paths: Vec<PathBuf>,
    /// Whether plasma created it (only then may `--prune` delete it).
    #[serde(default)]
    pub created: bool,
    /// Seconds since the Unix epoch of the last apply.
    pub applied_at: u64,
}

/// The whole state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct State {
    pub format_version: u32,
    /// Increases by one with every write.
    pub serial: u64,
    /// Random, fixed when the state is first made: tells two histories apart.
    pub lineage: String,
    pub plasma_version: String,
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceState>,
}

impl State {
    pub fn new() -> Self {
        State {
            format_version: STATE_FORMAT,
            serial: 0,
            lineage: fsutil::random_hex(16),
            plasma_version: env!("CARGO_PKG_VERSION").to_string(),
            resources: BTreeMap::new(),
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {} is not valid: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the state file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state is locked by another plasma ({holder})")]
    Locked { holder: String },
}

/// Where the state lives and how to read and write it.
#[derive(Debug, Clone)]
pub struct StateFile {
    pub path: PathBuf,
}

impl StateFile {
    pub fn beside(spec_dir: &Path) -> Self {
        StateFile {
            path: spec_dir.join(".plasma").join("state.json"),
        }
    }

    pub fn backup_path(&self) -> PathBuf {
        fsutil::with_suffix(&self.path, ".backup")
    }

    pub fn lock_path(&self) -> PathBuf {
        fsutil::with_suffix(&self.path, ".lock")
    }

    /// The folder for plasma's own files: logs, locks.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The current state, or `None` when nothing was ever applied.
    pub fn load(&self) -> Result<Option<State>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Parse {
                path: self.path.clone(),
                source,
            })
    }

    /// Writes a new state: serial + 1, previous file kept as the backup.
    pub fn save(&self, state: &mut State) -> Result<(), StateError> {
        state.serial += 1;
        state.plasma_version = env!("CARGO_PKG_VERSION").to_string();
        let mut text = serde_json::to_vec_pretty(state).expect("state always serialises");
        text.push(b'\n');
        let write_err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        // Keep the old state as the backup: a hard link renamed into place, so
        // the backup is also always whole.
        if self.path.exists() {
            let staging = fsutil::with_suffix(&self.path, ".backup-new");
            let _ = std::fs::remove_file(&staging);
            std::fs::hard_link(&self.path, &staging)
                .or_else(|_| std::fs::copy(&self.path, &staging).map(|_| ()))
                .map_err(write_err)?;
            std::fs::rename(&staging, self.backup_path()).map_err(write_err)?;
        }
        fsutil::write_atomic(&self.path, &text, None).map_err(write_err)
    }

    /// Takes the exclusive lock, waiting up to `timeout` for another holder.
    pub fn lock(&self, timeout: Duration, command: &str) -> Result<StateLock, StateError> {
        let path = self.lock_path();
        let write_err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(write_err)?;
        let deadline = Instant::now() + timeout;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        let holder = holder.trim();
                        return Err(StateError::Locked {
                            holder: if holder.is_empty() {
                                "holder unknown".to_string()
                            } else {
                                holder.to_string()
                            },
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(write_err(e)),
            }
        }
        // Say who holds it, for the message a waiting plasma prints.
        let holder = format!(
            "pid {}, `plasma {command}`, since {}",
            std::process::id(),
            fsutil::now_rfc3339()
        );
        file.set_len(0).map_err(write_err)?;
        (&file).write_all(holder.as_bytes()).map_err(write_err)?;
        Ok(StateLock { file })
    }
}

/// Held while an apply may write the state; released on drop.
pub struct StateLock {
    file: File,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}
