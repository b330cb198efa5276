//! Changing a clone: clone, fetch, checkout, submodules, reset, remote URL.
//! A fresh clone is built in a hidden sibling folder and renamed into place only
//! once it is checked out, so a failure never leaves a half repository at `path`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::Git;
use super::command::{Finished, failed};
use super::error::GitError;
use super::observe::{GitDirs, RepoObservation};
use super::operation::temp_clone_name;
use super::redact::redact_url;
use super::resolve::{Resolved, validate_rev};

/// What [`Git::clone`] should produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneRequest {
    /// Tag, branch or commit to check out (detached).
    pub rev: String,
    /// `Some(n)` for a shallow clone of depth `n`.
    pub depth: Option<u32>,
    /// Initialise and check out submodules recursively at their recorded commits.
    pub submodules: bool,
}

/// Distinguishes temporary clone folders made by one process.
static CLONE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Removes a temporary clone folder unless the clone succeeded.
struct TempClone {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempClone {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn validate_url(url: &str) -> Result<(), GitError> {
    if url.starts_with('-') || url.is_empty() {
        Err(GitError::InvalidUrl {
            url: redact_url(url),
        })
    } else {
        Ok(())
    }
}

/// Whether a failed transfer means "the remote has no such ref" (as opposed to
/// "the remote cannot be reached").
fn is_missing_remote_ref(stderr: &str) -> bool {
    stderr.contains("couldn't find remote ref")
        || stderr.contains("not our ref")
        || stderr.contains("no such remote ref")
}

impl Git {
    /// Clones `url` at `request.rev` into `path`, which must be absent or an empty
    /// directory. The clone is assembled in `.<name>.plasma-clone-….disabled` next to
    /// `path` (the suffix keeps ComfyUI from loading it as a custom node) and renamed
    /// into place only once checked out with its submodules.
    pub fn clone(
        &self,
        url: &str,
        path: &Path,
        request: &CloneRequest,
    ) -> Result<Resolved, GitError> {
        validate_url(url)?;
        validate_rev(&request.rev)?;
        match self.observe(path)? {
            RepoObservation::Absent | RepoObservation::EmptyDirectory => {}
            RepoObservation::NotARepository { found } => {
                return Err(GitError::TargetOccupied {
                    path: path.to_path_buf(),
                    found,
                });
            }
            RepoObservation::Repository(_) => {
                return Err(GitError::TargetOccupied {
                    path: path.to_path_buf(),
                    found: "a git repository".into(),
                });
            }
        }
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| GitError::io("create", parent, e))?;
        let name = path
            .file_name()
            .map_or("repo".into(), |n| n.to_string_lossy().into_owned());
        let temp = TempClone {
            path: parent.join(temp_clone_name(
                &name,
                CLONE_COUNTER.fetch_add(1, Ordering::Relaxed),
            )),
            keep: false,
        };
        // Made here, so that a folder plasma cannot write is reported as that,
        // not as an unreachable remote.
        fs::create_dir(&temp.path).map_err(|e| GitError::io("create", &temp.path, e))?;

        let mut args: Vec<String> = vec!["clone".into(), "--quiet".into(), "--no-checkout".into()];
        if let Some(depth) = request.depth {
            // A plain local path is cloned by copying objects, which ignores --depth.
            args.extend(["--no-local".into(), "--depth".into(), depth.to_string()]);
        }
        args.extend([
            "--".into(),
            url.into(),
            temp.path.to_string_lossy().into_owned(),
        ]);
        let out = self.run_raw(None, &args)?;
        if !out.success {
            return Err(GitError::Unreachable {
                url: self.shown_url(url),
                reason: out.stderr,
            });
        }

        let resolved = self.resolve_fetching(&temp.path, &request.rev, request.depth, false)?;
        self.checkout(&temp.path, &resolved.commit, true)?;
        if request.submodules {
            self.submodules_update(&temp.path, true)?;
        }
        // rename(2) replaces an empty directory, and is atomic on one file system.
        fs::rename(&temp.path, path).map_err(|e| GitError::io("move the new clone to", path, e))?;
        let mut temp = temp;
        temp.keep = true;
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(resolved)
    }

    /// Fetches every branch of origin and all tags (pruning deleted branches, moving
    /// re-pointed tags). Meant for full clones; `depth` deepens or limits history.
    /// For a shallow clone prefer [`Git::resolve_fetching`], which fetches one rev.
    pub fn fetch(&self, path: &Path, depth: Option<u32>) -> Result<(), GitError> {
        self.require_work_tree(path)?;
        let mut args: Vec<String> = vec![
            "fetch".into(),
            "--quiet".into(),
            "--prune".into(),
            "--force".into(),
            "--tags".into(),
        ];
        if let Some(depth) = depth {
            args.extend(["--depth".into(), depth.to_string()]);
        }
        args.extend([
            "origin".into(),
            "+refs/heads/*:refs/remotes/origin/*".into(),
        ]);
        let out = self.run_raw(Some(path), &args)?;
        if out.success {
            Ok(())
        } else {
            Err(self.unreachable(path, out))
        }
    }

    /// Fetches what is needed to resolve `rev` locally afterwards. A full clone
    /// fetches everything (so later suggestions of nearest tags are complete); a
    /// shallow one fetches only `rev`, as a tag, else a branch, else a commit.
    /// A rev that origin does not have is not an error here: resolving says so.
    pub(crate) fn fetch_rev(
        &self,
        path: &Path,
        rev: &str,
        depth: Option<u32>,
    ) -> Result<(), GitError> {
        validate_rev(rev)?;
        let depth_args: Vec<String> =
            depth.map_or(Vec::new(), |d| vec!["--depth".into(), d.to_string()]);
        let mut attempts: Vec<String> = Vec::new();
        match depth {
            None => self.fetch(path, None)?,
            Some(_) => {
                attempts.push(format!("+refs/tags/{rev}:refs/tags/{rev}"));
                attempts.push(format!("+refs/heads/{rev}:refs/remotes/origin/{rev}"));
            }
        }
        if looks_like_commit_hash(rev) {
            attempts.push(rev.to_string());
        }
        for refspec in attempts {
            if depth.is_none() && self.commit_of(path, rev)?.is_some() {
                return Ok(());
            }
            let mut args: Vec<String> = vec!["fetch".into(), "--quiet".into(), "--no-tags".into()];
            args.extend(depth_args.iter().cloned());
            args.extend(["origin".into(), refspec]);
            let out = self.run_raw(Some(path), &args)?;
            if out.success {
                return Ok(());
            }
            if !is_missing_remote_ref(&out.stderr) {
                return Err(self.unreachable(path, out));
            }
        }
        Ok(())
    }

    /// Checks out `commit` detached. Without `force`, local changes that do not
    /// conflict are carried over and conflicting ones make it fail with
    /// [`GitError::CheckoutBlocked`]; with `force` they are overwritten.
    pub fn checkout(&self, path: &Path, commit: &str, force: bool) -> Result<(), GitError> {
        validate_rev(commit)?;
        self.require_work_tree(path)?;
        let mut args = vec![
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            "--detach",
        ];
        if force {
            args.push("--force");
        }
        args.extend([commit, "--"]);
        let out = self.run_raw(Some(path), &args)?;
        if out.success {
            return Ok(());
        }
        if out.stderr.contains("would be overwritten") {
            let files: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| l.starts_with('\t'))
                .map(str::trim)
                .collect();
            return Err(GitError::CheckoutBlocked {
                path: path.to_path_buf(),
                commit: commit.to_string(),
                files: files.join(", "),
            });
        }
        Err(failed(Some(path), out))
    }

    /// Initialises, syncs URLs of, and checks out every submodule recursively at
    /// the commit its superproject records (`git submodule sync --recursive`, then
    /// `git submodule update --init --recursive`). Without `force`, local changes
    /// inside submodules are carried over (or the update fails, naming them), and
    /// a submodule already at its commit is not touched; `force` discards them.
    pub fn submodules_update(&self, path: &Path, force: bool) -> Result<(), GitError> {
        self.require_work_tree(path)?;
        if !path.join(".gitmodules").exists() {
            return Ok(());
        }
        self.run(Some(path), &["submodule", "--quiet", "sync", "--recursive"])?;
        let mut args = vec!["submodule", "--quiet", "update", "--init", "--recursive"];
        if force {
            args.push("--force");
        }
        let out = self.run_raw(Some(path), &args)?;
        if out.success {
            Ok(())
        } else if out.stderr.contains("Clone of '") || out.stderr.contains("fatal: repository") {
            Err(GitError::Unreachable {
                url: format!("a submodule of {}", path.display()),
                reason: out.stderr,
            })
        } else {
            Err(failed(Some(path), out))
        }
    }

    /// Discards every local change: `git reset --hard`, `git clean -fd` (ignored
    /// files such as models and venvs stay), and the same inside each submodule.
    pub fn reset_hard_and_clean(&self, path: &Path) -> Result<(), GitError> {
        self.require_work_tree(path)?;
        self.run(Some(path), &["reset", "--quiet", "--hard"])?;
        self.run(Some(path), &["clean", "-fdq"])?;
        if path.join(".gitmodules").exists() {
            self.run(
                Some(path),
                &[
                    "submodule",
                    "--quiet",
                    "foreach",
                    "--recursive",
                    "git reset --quiet --hard && git clean -fdq",
                ],
            )?;
        }
        Ok(())
    }

    /// After a checkout to a commit that no longer has some submodules, removes
    /// their leftover working trees (git leaves them behind as untracked folders),
    /// but only those that hold nothing of the user's: a folder whose `.git` is a
    /// file pointing into the superproject's `.git/modules` (so the module
    /// repository, with all its commits, stays), with no local change and no
    /// untracked or ignored file ([`Git::at_risk_in_folder`]). Returns the removed
    /// paths and the kept ones with what they hold.
    pub fn remove_dropped_submodules(
        &self,
        path: &Path,
        before: &[super::SubmoduleObservation],
    ) -> Result<(Vec<String>, Vec<String>), GitError> {
        let now = match self.observe(path)? {
            RepoObservation::Repository(tree) => tree.submodules,
            _ => return Ok((Vec::new(), Vec::new())),
        };
        // Nested submodules go with their parent's folder.
        let top_level = before.iter().filter(|s| {
            !before
                .iter()
                .any(|p| s.path.starts_with(&format!("{}/", p.path)))
        });
        let (mut removed, mut kept) = (Vec::new(), Vec::new());
        for sub in top_level {
            if now.iter().any(|n| n.path == sub.path) {
                continue;
            }
            let dir = path.join(&sub.path);
            let gitfile = fs::symlink_metadata(dir.join(".git")).is_ok_and(|m| m.is_file());
            if !gitfile {
                continue;
            }
            let held = self.at_risk_in_folder(&dir)?;
            if held.is_empty() {
                fs::remove_dir_all(&dir).map_err(|e| GitError::io("remove", &dir, e))?;
                removed.push(sub.path.clone());
            } else {
                kept.push(format!("{} ({})", sub.path, held.join(", ")));
            }
        }
        Ok((removed, kept))
    }

    /// What [`Git::reset_hard_and_clean`] would delete, without deleting anything:
    /// `git clean -nd` in the repository and in each checked-out submodule, as
    /// paths relative to `path` (`notes.txt`, `venv/`, `sd-scripts/scratch.py`).
    /// Ignored files are kept by the clean, so they are not listed.
    pub fn clean_preview(&self, path: &Path) -> Result<Vec<String>, GitError> {
        self.require_work_tree(path)?;
        let mut would_remove = Vec::new();
        let out = self.run(Some(path), &["clean", "-nd"])?;
        would_remove.extend(removals(&out.stdout_text()));
        if path.join(".gitmodules").exists() {
            // `$displaypath` is the submodule's path relative to `path`, nested ones too.
            let out = self.run(
                Some(path),
                &[
                    "submodule",
                    "--quiet",
                    "foreach",
                    "--recursive",
                    "git clean -nd | sed \"s|^Would remove |Would remove $displaypath/|\"",
                ],
            )?;
            would_remove.extend(removals(&out.stdout_text()));
        }
        Ok(would_remove)
    }

    /// Points `origin` at `url`, adding the remote if there is none.
    pub fn set_remote_url(&self, path: &Path, url: &str) -> Result<(), GitError> {
        validate_url(url)?;
        let dirs = self.require_work_tree(path)?;
        let config = dirs
            .config()
            .map_err(|e| GitError::io("read", dirs.common_dir.join("config"), e))?;
        let verb = if config.origin_url().is_some() {
            "set-url"
        } else {
            "add"
        };
        self.run(Some(path), &["remote", verb, "origin", url])?;
        Ok(())
    }

    /// A failed transfer as [`GitError::Unreachable`], naming origin (redacted).
    fn unreachable(&self, path: &Path, out: Finished) -> GitError {
        let url = GitDirs::locate(path)
            .ok()
            .flatten()
            .and_then(|d| d.config().ok())
            .and_then(|c| c.origin_url().map(redact_url))
            .unwrap_or_else(|| "origin".into());
        GitError::Unreachable {
            url,
            reason: out.stderr,
        }
    }
}

/// The paths of `git clean -n` output (`Would remove notes.txt`).
fn removals(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("Would remove "))
        .map(str::to_string)
        .collect()
}

fn looks_like_commit_hash(rev: &str) -> bool {
    (7..=64).contains(&rev.len()) && rev.bytes().all(|b| b.is_ascii_hexdigit())
}
