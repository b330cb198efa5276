//! What plasma is doing to a clone, recorded in the clone so that a run that
//! was killed half-way can be finished by the next one.
//!
//! Before it moves a clone (checkout, submodule update, reset, fetch) plasma
//! writes `<git dir>/plasma-operation.json`: which plasma process ([`ProcessId`]),
//! where it is taking the clone, and which files of the user's it carries over
//! (`on-dirty "keep"`); those files are first copied to `<git dir>/plasma-kept/`.
//! The record is removed when the operation ends, successfully or not. A record
//! whose process no longer runs means plasma was killed mid-operation: the
//! half checkout and the `*.lock` files under `.git` are plasma's own, and
//! [`Git::finish_interrupted`] completes the operation and puts the user's
//! files back. Temporary clone folders carry their owner in their name
//! (`.NAME.plasma-clone-PID-START-N.disabled`) for the same reason.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Git;
use super::error::GitError;
use super::observe::GitDirs;
use crate::child::ProcessId;

const RECORD: &str = "plasma-operation.json";
const KEPT: &str = "plasma-kept";
/// Files git leaves in a git directory while an operation runs.
const IN_PROGRESS: &[(&str, &str)] = &[
    ("rebase-merge", "a rebase"),
    ("rebase-apply", "a rebase or `git am`"),
    ("MERGE_HEAD", "a merge"),
    ("CHERRY_PICK_HEAD", "a cherry-pick"),
    ("REVERT_HEAD", "a revert"),
    ("BISECT_LOG", "a bisect"),
];

/// One operation plasma started on a clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The plasma process doing it.
    pub by: ProcessId,
    /// What it is, for messages: `checkout 1a2b3c4`, `submodule update`.
    pub what: String,
    /// The commit the clone is being moved to, if it moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Whether submodules are updated as part of it.
    pub submodules: bool,
    /// The user's changed files (relative to the clone) copied aside before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
}

/// Removes the record (and the copies of kept files) when dropped, unless
/// plasma is terminating its children (a second Ctrl-C).
pub(crate) struct Recorded {
    record: PathBuf,
    kept: PathBuf,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // Stopped by a second Ctrl-C: the operation is unfinished, the next run finishes it.
        if crate::child::terminating() {
            return;
        }
        let _ = fs::remove_file(&self.record);
        let _ = fs::remove_dir_all(&self.kept);
    }
}

/// The operation recorded in the clone whose git directory is `dirs`, if any.
pub(crate) fn read_record(dirs: &GitDirs) -> Option<Operation> {
    let bytes = fs::read(dirs.git_dir.join(RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The user's git operation in progress in `git_dir` (`a rebase`), if any.
pub(crate) fn unfinished_in(git_dir: &Path) -> Option<&'static str> {
    IN_PROGRESS
        .iter()
        .find(|(file, _)| git_dir.join(file).exists())
        .map(|(_, what)| *what)
}

/// Every `*.lock` file under `git_dir` (objects excluded: they hold none).
pub(crate) fn locks_in(git_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![git_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if name != "objects" && name != KEPT {
                    pending.push(entry.path());
                }
            } else if name.to_string_lossy().ends_with(".lock") {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// The `index.lock` of `git_dir`, if there is one (what blocks every git command
/// that writes); cheap enough for every observation.
pub(crate) fn index_lock(git_dir: &Path) -> Option<PathBuf> {
    let lock = git_dir.join("index.lock");
    lock.exists().then_some(lock)
}

/// The name of a temporary clone folder for `name`, owned by this process.
pub(crate) fn temp_clone_name(name: &str, serial: u32) -> String {
    let me = ProcessId::current();
    format!(
        ".{name}.plasma-clone-{}-{}-{serial}.disabled",
        me.pid,
        me.started.unwrap_or(0)
    )
}

/// Temporary clone folders for `path` left by plasma processes that no longer
/// run (a killed clone); folders of a running plasma are not listed.
pub fn orphaned_temp_clones(path: &Path) -> Vec<PathBuf> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.plasma-clone-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let owner = file.strip_prefix(&prefix)?.strip_suffix(".disabled")?;
            let mut fields = owner.split('-');
            let pid: u32 = fields.next()?.parse().ok()?;
            let started: u64 = fields.next()?.parse().ok()?;
            let owner = ProcessId {
                pid,
                started: (started != 0).then_some(started),
            };
            (!owner.is_running()).then(|| entry.path())
        })
        .collect();
    found.sort();
    found
}

impl Git {
    /// Records `operation` in the clone at `path` before it starts, copying the
    /// files it keeps aside; the record goes when the returned guard drops.
    pub(crate) fn record_operation(
        &self,
        path: &Path,
        operation: &Operation,
    ) -> Result<Recorded, GitError> {
        let dirs = self.require_work_tree(path)?;
        let kept_dir = dirs.git_dir.join(KEPT);
        let _ = fs::remove_dir_all(&kept_dir);
        for file in &operation.kept {
            let from = path.join(file);
            let to = kept_dir.join(file);
            match fs::symlink_metadata(&from) {
                Ok(meta) if meta.is_file() || meta.is_symlink() => {
                    if let Some(parent) = to.parent() {
                        fs::create_dir_all(parent)
                            .map_err(|e| GitError::io("create", parent, e))?;
                    }
                    copy_entry(&from, &to).map_err(|e| GitError::io("copy aside", &from, e))?;
                }
                _ => {} // deleted by the user, or a folder: git leaves those alone
            }
        }
        let record = dirs.git_dir.join(RECORD);
        let text = serde_json::to_vec_pretty(operation).expect("operations serialise");
        crate::fsutil::write_atomic(&record, &text, Some(0o600))
            .map_err(|e| GitError::io("write", &record, e))?;
        Ok(Recorded {
            record,
            kept: kept_dir,
        })
    }

    /// Finishes `operation`, which a plasma that is no longer running started
    /// in the clone at `path`: removes the `*.lock` files its git left, checks
    /// out the commit it was moving to (with submodules), puts back the user's
    /// files it had copied aside, and removes the record. Returns what it did,
    /// one line per step, for the log.
    pub fn finish_interrupted(
        &self,
        path: &Path,
        operation: &Operation,
    ) -> Result<Vec<String>, GitError> {
        let dirs = self.require_work_tree(path)?;
        let mut done = Vec::new();
        let locks = locks_in(&dirs.common_dir);
        for lock in &locks {
            fs::remove_file(lock).map_err(|e| GitError::io("remove", lock, e))?;
        }
        if !locks.is_empty() {
            done.push(format!(
                "removed {} lock file(s) the interrupted git left: {}",
                locks.len(),
                locks
                    .iter()
                    .map(|l| l.strip_prefix(path).unwrap_or(l).display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(to) = &operation.to {
            self.checkout(path, to, true)?;
            done.push(format!("finished the checkout of {to}"));
        }
        if operation.submodules {
            self.submodules_update(path, true)?;
            done.push("finished the submodule update".into());
        }
        let kept_dir = dirs.git_dir.join(KEPT);
        for file in &operation.kept {
            let saved = kept_dir.join(file);
            let target = path.join(file);
            if fs::symlink_metadata(&saved).is_ok() {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| GitError::io("create", parent, e))?;
                }
                let _ = fs::remove_file(&target);
                copy_entry(&saved, &target).map_err(|e| GitError::io("restore", &target, e))?;
            }
        }
        if !operation.kept.is_empty() {
            done.push(format!(
                "put back the local changes it carried: {}",
                operation.kept.join(", ")
            ));
        }
        let _ = fs::remove_dir_all(&kept_dir);
        let record = dirs.git_dir.join(RECORD);
        fs::remove_file(&record).map_err(|e| GitError::io("remove", &record, e))?;
        Ok(done)
    }
}

/// Copies a file or a symbolic link (as a link).
fn copy_entry(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)
    } else {
        fs::copy(from, to).map(|_| ())
    }
}
