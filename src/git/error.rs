//! The errors of the git layer. Every message says what went wrong and what the
//! user can do about it; URLs inside them are always redacted.

use std::path::PathBuf;

/// An error from the git layer. All strings held here are already redacted, so
/// both `Display` and `Debug` are safe to print or log.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The `git` program could not be found.
    #[error(
        "git is not installed or not on PATH; install git (macOS: `xcode-select --install`, \
         Debian/Ubuntu: `apt install git`) and run plasma again"
    )]
    GitNotFound,

    /// The `git` program exists but could not be started.
    #[error("could not run git: {0}")]
    CannotRunGit(String),

    /// The remote could not be contacted, does not exist, or refused us.
    #[error(
        "cannot reach the repository {url}: {reason}\n\
         Check that the URL is right, that the machine is online, and that any \
         credentials it needs are available to git (plasma never prompts)"
    )]
    Unreachable {
        /// The remote, redacted.
        url: String,
        /// What git said, redacted.
        reason: String,
    },

    /// The revision is neither a tag, a branch of `origin`, nor a commit.
    #[error("revision \"{rev}\" does not exist in {url}{}", nearest_hint(.nearest))]
    RevNotFound {
        rev: String,
        /// The remote, redacted.
        url: String,
        /// The existing tags closest to `rev`, best first.
        nearest: Vec<String>,
    },

    /// The revision names both a tag and a branch of origin, at different commits.
    #[error(
        "revision \"{rev}\" is both a tag (at {tag}) and a branch of origin (at {branch}), \
         so it is ambiguous\nSet `rev` to the commit you mean ({tag} or {branch}), or rename \
         the tag or the branch upstream"
    )]
    AmbiguousRev {
        rev: String,
        /// The tag's commit, abbreviated.
        tag: String,
        /// The branch's commit, abbreviated.
        branch: String,
    },

    /// The revision text could be read by git as an expression or an option.
    #[error(
        "\"{rev}\" is not a usable revision: give a tag, a branch name or a commit hash \
         (no spaces, `..`, `^`, `~`, `:` or leading `-`)"
    )]
    InvalidRev { rev: String },

    /// The URL could be read by git as an option.
    #[error("\"{url}\" is not a usable repository URL: it must not start with `-`")]
    InvalidUrl { url: String },

    /// The path exists and is not a git working tree.
    #[error(
        "{} exists and is not a git repository (it is {found}); move it away or point `path` \
         elsewhere",
        path.display()
    )]
    NotARepository { path: PathBuf, found: String },

    /// The path is a clone of some other remote.
    #[error(
        "{} is a clone of {actual}, not of {expected}; if it is the same project, plasma can \
         change the remote URL; otherwise move the folder away or point `path` elsewhere",
        path.display()
    )]
    DifferentOrigin {
        path: PathBuf,
        /// Redacted.
        expected: String,
        /// Redacted.
        actual: String,
    },

    /// A fresh clone was asked for a path that already holds something.
    #[error(
        "cannot clone into {}: it already holds {found}; move it away or point `path` elsewhere",
        path.display()
    )]
    TargetOccupied { path: PathBuf, found: String },

    /// The working tree has local changes and the caller does not allow touching them.
    #[error(
        "{} has local changes: {changes}\nChoose one: commit or stash them by hand, set \
         on-dirty \"keep\" to leave them in place, or set on-dirty \"reset\" to discard them \
         (destructive)",
        path.display()
    )]
    DirtyTree {
        path: PathBuf,
        /// The first changed files, e.g. `M main.py, ?? notes.txt (and 3 more)`.
        changes: String,
    },

    /// `git checkout` refused because local changes would be overwritten.
    #[error(
        "cannot move {} to {commit}: local changes to {files} would be overwritten; \
         commit or stash them, or set on-dirty \"reset\" to discard them (destructive)",
        path.display()
    )]
    CheckoutBlocked {
        path: PathBuf,
        commit: String,
        files: String,
    },

    /// Any other git failure, with what git said.
    #[error("`git {args}` failed{}: {stderr}", dir_hint(.dir))]
    CommandFailed {
        /// The arguments, redacted.
        args: String,
        dir: Option<PathBuf>,
        /// Git's standard error (its last lines), redacted.
        stderr: String,
    },

    /// A file-system operation of plasma itself failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn nearest_hint(nearest: &[String]) -> String {
    if nearest.is_empty() {
        "; the repository has no tags".to_string()
    } else {
        format!("; nearest tags: {}", nearest.join(", "))
    }
}

fn dir_hint(dir: &Option<PathBuf>) -> String {
    dir.as_ref()
        .map(|d| format!(" in {}", d.display()))
        .unwrap_or_default()
}

impl GitError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        GitError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
