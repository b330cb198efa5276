//! Step 8, state: `.plasma/state.json` beside the spec.
//!
//! The file is always either the previous state or the new one: it is
//! written to a temporary name, fsynced and renamed over the old one, and the
//! old one is kept as `state.json.backup`. An exclusive lock on
//! `state.json.lock` stops two applies from writing at once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
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
    /// An intent record: an apply was about to create this and had not
    /// finished when the state was last written (it may have been killed).
    /// `owned_paths` and `created` are known; the rest is filled in by the
    /// next run that finds the resource converged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// The last apply failed and recorded what it had (`outputs`: a failed
    /// benchmark's result). Such an entry never counts as converged: the
    /// next plan changes the resource whatever its kind's diff says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
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
    #[error(
        "the state file {} is missing, but its backup {} is there (serial {serial}, lineage {lineage}): \
         plasma will not start a new state that forgets what it created. \
         Run `plasma state restore` to bring back the backup, \
         or pass --new-state to start a new state knowingly",
        path.display(),
        backup.display()
    )]
    MissingWithBackup {
        path: PathBuf,
        backup: PathBuf,
        serial: u64,
        lineage: String,
    },
    #[error(
        "the state file {} has format version {found}, newer than this plasma {} reads (format version {STATE_FORMAT}); \
         nothing was changed. Upgrade plasma to use this state",
        path.display(),
        env!("CARGO_PKG_VERSION")
    )]
    NewerFormat { path: PathBuf, found: u64 },
    #[error(
        "the state file {} is at serial {}, the largest there is; it cannot be written again. \
         Start a new state: move it away and run with --new-state",
        path.display(),
        u64::MAX
    )]
    SerialExhausted { path: PathBuf },
    #[error(
        "cannot write the state in {}: {source}. Nothing was changed; \
         make the state file and its folder writable (or pass --state PATH)",
        path.display()
    )]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Restore(String),
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
    ///
    /// Errors when the state is missing but its backup is there (a deleted
    /// state would otherwise silently forget what plasma created; see
    /// [`StateFile::load_fresh`]), and when the file has a newer
    /// `format_version` than this plasma reads.
    pub fn load(&self) -> Result<Option<State>, StateError> {
        let state = self.read(&self.path)?;
        if state.is_none()
            && let Some(backup) = self.read(&self.backup_path())?
        {
            return Err(StateError::MissingWithBackup {
                path: self.path.clone(),
                backup: self.backup_path(),
                serial: backup.serial,
                lineage: backup.lineage,
            });
        }
        Ok(state)
    }

    /// Like [`StateFile::load`], but a missing state is a fresh start even
    /// when a backup is there (`--new-state`: the user chose to start over).
    pub fn load_fresh(&self) -> Result<Option<State>, StateError> {
        self.read(&self.path)
    }

    /// Reads one state file: `None` when it does not exist.
    fn read(&self, path: &Path) -> Result<Option<State>, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let parse_err = |source| StateError::Parse {
            path: path.to_path_buf(),
            source,
        };
        // The version first: a newer layout is refused before its fields
        // are read (and later dropped on the next write).
        #[derive(Deserialize)]
        struct Version {
            format_version: u64,
        }
        let version: Version = serde_json::from_slice(&bytes).map_err(parse_err)?;
        if version.format_version > u64::from(STATE_FORMAT) {
            return Err(StateError::NewerFormat {
                path: path.to_path_buf(),
                found: version.format_version,
            });
        }
        serde_json::from_slice(&bytes).map(Some).map_err(parse_err)
    }

    /// Checks, before apply changes anything, that the next [`StateFile::save`]
    /// of `state` can happen: the serial can still grow, the folder takes new
    /// files and the state file (when there is one) can be replaced.
    pub fn check_writable(&self, state: Option<&State>) -> Result<(), StateError> {
        if state.is_some_and(|s| s.serial == u64::MAX) {
            return Err(StateError::SerialExhausted {
                path: self.path.clone(),
            });
        }
        let dir = self.dir();
        let not_writable = |source| StateError::NotWritable {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(not_writable)?;
        let probe = fsutil::with_suffix(&self.path, ".probe");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .and_then(|mut f| f.write_all(b"plasma checks that it can write here\n"))
            .map_err(not_writable)?;
        std::fs::remove_file(&probe).map_err(not_writable)?;
        for existing in [self.path.clone(), self.backup_path()] {
            match OpenOptions::new().append(true).open(&existing) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::NotWritable {
                        path: existing,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// `plasma state restore`: puts the backup back as the state. Without
    /// `force` only a missing state is replaced. The restored state gets a
    /// serial above any the lost state can have had (backup + 2), so a plan
    /// saved against the lost state is refused as stale.
    pub fn restore(&self, force: bool) -> Result<State, StateError> {
        let backup_path = self.backup_path();
        let Some(mut state) = self.read(&backup_path)? else {
            return Err(StateError::Restore(format!(
                "there is no backup to restore ({} does not exist)",
                backup_path.display()
            )));
        };
        if self.path.exists() && !force {
            return Err(StateError::Restore(format!(
                "the state file {} exists; `plasma state restore` only replaces a missing state \
                 (pass --force to replace it with the backup {})",
                self.path.display(),
                backup_path.display()
            )));
        }
        // The lost state was the backup's serial + 1; saving adds one more.
        state.serial = state
            .serial
            .checked_add(1)
            .ok_or_else(|| StateError::SerialExhausted {
                path: backup_path.clone(),
            })?;
        // An unreadable state must not become the backup in place of the
        // good one: it is moved aside, kept for a look.
        if self.path.exists() && self.read(&self.path).is_err() {
            let aside = fsutil::with_suffix(&self.path, ".unreadable");
            std::fs::rename(&self.path, &aside).map_err(|source| StateError::Write {
                path: aside.clone(),
                source,
            })?;
        }
        self.save(&mut state)?;
        Ok(state)
    }

    /// Writes a new state: serial + 1, previous file kept as the backup.
    pub fn save(&self, state: &mut State) -> Result<(), StateError> {
        let serial = state
            .serial
            .checked_add(1)
            .ok_or_else(|| StateError::SerialExhausted {
                path: self.path.clone(),
            })?;
        let previous = std::mem::replace(&mut state.serial, serial);
        state.plasma_version = env!("CARGO_PKG_VERSION").to_string();
        let result = self.write(state);
        if result.is_err() {
            // Not written: the serial on disk did not move.
            state.serial = previous;
        }
        result
    }

    fn write(&self, state: &State) -> Result<(), StateError> {
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
        // A holder line left behind means the last holder ended without
        // releasing the lock cleanly (killed, crashed): say so.
        let mut left = String::new();
        let _ = (&file).read_to_string(&mut left);
        let left = left.trim();
        let taken_over = (!left.is_empty()).then(|| left.to_string());
        // Say who holds it, for the message a waiting plasma prints.
        let holder = format!(
            "pid {}, `plasma {command}`, since {}",
            std::process::id(),
            fsutil::now_rfc3339()
        );
        file.set_len(0).map_err(write_err)?;
        (&file).seek(SeekFrom::Start(0)).map_err(write_err)?;
        (&file).write_all(holder.as_bytes()).map_err(write_err)?;
        Ok(StateLock { file, taken_over })
    }
}

/// Held while an apply may write the state; released on drop.
pub struct StateLock {
    file: File,
    /// The holder line of a plasma that ended without releasing the lock
    /// (killed or crashed), when this lock was taken over from it.
    pub taken_over: Option<String>,
}

impl StateLock {
    /// The warning to print when the lock was taken over from a dead holder.
    pub fn takeover_warning(&self) -> Option<String> {
        self.taken_over.as_ref().map(|holder| {
            format!(
                "took over the state lock from a plasma that ended without releasing it ({holder}); \
                 it was probably killed, so its work may be incomplete: the plan below shows what is left"
            )
        })
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}
