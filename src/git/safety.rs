//! What moving a clone would lose, asked before any checkout, submodule update
//! or folder removal: commits that no branch, tag or remote branch holds, and
//! the files of a dropped submodule's folder. Local changes themselves come
//! from [`Git::local_changes_all`].

use std::path::Path;

use super::Git;
use super::error::GitError;
use super::observe::SubmoduleObservation;

/// How many lost commits a message names; the rest are counted.
const COMMITS_SHOWN: usize = 5;

impl Git {
    /// The commits of the repository at `dir` that are reachable from HEAD but
    /// from no branch, tag or remote branch, nor from any of `also_kept`
    /// (commits the caller keeps anyway: the target, the last applied commit):
    /// a commit made on a detached HEAD, which a checkout would leave reachable
    /// only from the reflog. As `1a2b3c4 subject` lines, newest first, the last
    /// one `(and N more)` when there are many. Commits `also_kept` names that
    /// the repository does not have are ignored.
    pub fn commits_off_branches(
        &self,
        dir: &Path,
        also_kept: &[&str],
    ) -> Result<Vec<String>, GitError> {
        let mut args = vec![
            "log",
            "--ignore-missing",
            "--format=%h %s",
            "HEAD",
            "--not",
            "--branches",
            "--tags",
            "--remotes",
        ];
        args.extend(also_kept.iter().filter(|c| !c.starts_with('-')));
        let out = self.run(Some(dir), &args)?;
        let text = out.stdout_text();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut shown: Vec<String> = lines
            .iter()
            .take(COMMITS_SHOWN)
            .map(|l| l.to_string())
            .collect();
        if lines.len() > COMMITS_SHOWN {
            shown.push(format!("(and {} more)", lines.len() - COMMITS_SHOWN));
        }
        Ok(shown)
    }

    /// The top-level submodules of the clone at `path` (among `submodules`, as
    /// observed) that `target` no longer has: their folders would be left over
    /// by a checkout of `target`.
    pub fn dropped_submodules(
        &self,
        path: &Path,
        submodules: &[SubmoduleObservation],
        target: &str,
    ) -> Result<Vec<String>, GitError> {
        let top_level: Vec<&str> = submodules
            .iter()
            .filter(|s| {
                !submodules
                    .iter()
                    .any(|p| s.path.starts_with(&format!("{}/", p.path)))
            })
            .map(|s| s.path.as_str())
            .collect();
        if top_level.is_empty() {
            return Ok(Vec::new());
        }
        let still = self.recorded_gitlinks(path, target, top_level.iter().copied())?;
        Ok(top_level
            .into_iter()
            .filter(|p| !still.iter().any(|(kept, _)| kept == p))
            .map(str::to_string)
            .collect())
    }

    /// The ignored files in the working tree at `dir` that a checkout of
    /// `target` would overwrite without a word: git treats ignored files as
    /// expendable, so a file the user keeps under an ignore rule (a model in
    /// `models/`, an edited config) is replaced when the target commit starts
    /// tracking that path, or a path above it. Paths relative to `dir`.
    pub fn ignored_files_target_tracks(
        &self,
        dir: &Path,
        target: &str,
    ) -> Result<Vec<String>, GitError> {
        let ignored = self.run(
            Some(dir),
            &[
                "ls-files",
                "-z",
                "--others",
                "--ignored",
                "--exclude-standard",
            ],
        )?;
        let ignored = ignored.stdout_text();
        if ignored.is_empty() {
            return Ok(Vec::new());
        }
        let tracked = self.run(
            Some(dir),
            &["ls-tree", "-r", "-z", "--name-only", "--full-tree", target],
        )?;
        let tracked = tracked.stdout_text();
        let tracked: std::collections::HashSet<&str> =
            tracked.split('\0').filter(|p| !p.is_empty()).collect();
        let overwritten = |path: &str| {
            tracked.contains(path)
                || path
                    .match_indices('/')
                    .any(|(at, _)| tracked.contains(&path[..at]))
        };
        Ok(ignored
            .split('\0')
            .filter(|p| !p.is_empty() && overwritten(p))
            .map(str::to_string)
            .collect())
    }

    /// What deleting the working tree at `dir` would lose, `git status --short`
    /// style: local changes (`M train.py`, `?? notes.txt`) and ignored files
    /// (`!! outputs/`), nested submodules included. Empty when every file in it
    /// is tracked and unchanged.
    pub fn at_risk_in_folder(&self, dir: &Path) -> Result<Vec<String>, GitError> {
        let (changes, leftovers) = self.local_changes_all(dir)?;
        let mut held: Vec<String> = changes
            .iter()
            .map(|c| format!("{} {}", c.change.code(), c.path))
            .collect();
        held.extend(leftovers.iter().map(|l| format!("?? {l}/")));
        let out = self.run(
            Some(dir),
            &[
                "ls-files",
                "--others",
                "--ignored",
                "--exclude-standard",
                "--directory",
            ],
        )?;
        held.extend(out.stdout_text().lines().map(|l| format!("!! {l}")));
        Ok(held)
    }
}
