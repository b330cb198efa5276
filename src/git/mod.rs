//! The git layer behind the `repo` and `custom-node` resource kinds.
//!
//! It drives the real `git` command-line tool, synchronously (the engine calls it
//! from `spawn_blocking`), and never prompts: every command runs with
//! `GIT_TERMINAL_PROMPT=0`, an askpass that answers nothing, `LC_ALL=C` and
//! `GIT_OPTIONAL_LOCKS=0`. Credentials embedded in a URL never reach a message:
//! errors, `Debug` output and serialized observations carry [`redact_url`]ed text.
//!
//! - Observe (no network, no writes): [`Git::observe`], [`Git::resolve_local`].
//! - Apply: [`Git::clone`] (atomic: built aside, renamed into place),
//!   [`Git::resolve_fetching`], [`Git::fetch`], [`Git::checkout`],
//!   [`Git::submodules_update`], [`Git::reset_hard_and_clean`],
//!   [`Git::set_remote_url`].
//! - Safety: what a move would lose ([`Git::local_changes_all`],
//!   [`Git::commits_off_branches`], [`Git::dropped_submodules`],
//!   [`Git::at_risk_in_folder`]), and the record of an operation in progress
//!   that lets the next run finish one a killed plasma left
//!   ([`Operation`], [`Git::finish_interrupted`], [`orphaned_temp_clones`]).
//! - Every git runs through [`crate::child`] (its own process group,
//!   registered), and credentials in an http(s) URL reach it through its
//!   environment ([`Git::with_url_credentials`]), never its argv or `.git/config`.
//!
//! `url` may be https, ssh (including `git@host:org/repo`), `file://` or a local
//! path; a local path should be absolute, as git resolves it against the current
//! directory.

mod apply;
mod command;
mod config_file;
mod credentials;
mod error;
mod observe;
mod operation;
mod redact;
mod resolve;
mod safety;

use std::ffi::OsString;

pub use apply::CloneRequest;
pub use error::GitError;
pub use observe::{
    ChangeKind, ChangedPath, LocalChanges, MAX_LISTED_CHANGES, RemoteUrl, RepoObservation,
    SubmoduleObservation, SubmoduleState, WorkTree, head_commit,
};
pub use operation::{Operation, orphaned_temp_clones};
pub use redact::{redact_text, redact_url};
pub(crate) use resolve::validate_rev;
pub use resolve::{Resolved, RevKind};

/// How to run git. `Git::default()` runs `git` from `PATH`; the other settings
/// exist for tests and unusual machines.
#[derive(Debug, Clone)]
pub struct Git {
    program: OsString,
    search_path: Option<OsString>,
    allow_file_protocol: bool,
    credentials: Option<credentials::UrlCredentials>,
}

impl Default for Git {
    fn default() -> Self {
        Git {
            program: "git".into(),
            search_path: None,
            allow_file_protocol: false,
            credentials: None,
        }
    }
}

impl Git {
    /// Runs `git` found on `PATH`.
    pub fn new() -> Git {
        Git::default()
    }

    /// Looks `git` up on (and gives git) this `PATH` instead of the inherited one.
    pub fn with_search_path(mut self, path: impl Into<OsString>) -> Git {
        self.search_path = Some(path.into());
        self
    }

    /// Takes the credentials out of `url` (`https://user:token@host/…`) and
    /// hands them to every git command through its environment, as a header for
    /// that host only; returns the URL without them, which is what git must be
    /// given (and stores as origin). Any other URL comes back unchanged.
    pub fn with_url_credentials(mut self, url: &str) -> (Git, String) {
        let (clean, credentials) = credentials::split_credentials(url);
        self.credentials = credentials;
        (self, clean)
    }

    /// `url` as messages show it: redacted, and as the user wrote it when it is
    /// the URL whose credentials this runner carries.
    pub(crate) fn shown_url(&self, url: &str) -> String {
        match &self.credentials {
            Some(c) if c.clean == url => c.shown.clone(),
            _ => redact_url(url),
        }
    }

    /// Allows submodules whose URL is a local path or `file://`. Git refuses them
    /// by default (CVE-2022-39253) because a malicious repository could copy local
    /// repositories into its checkout; only enable this for trusted repositories.
    pub fn allow_local_submodules(mut self, allow: bool) -> Git {
        self.allow_file_protocol = allow;
        self
    }
}

/// Whether `dir` is a submodule's working tree: its `.git` is a file pointing
/// into the superproject's `.git/modules`, where its repository lives on when
/// the working tree is removed.
pub fn has_own_git(dir: &std::path::Path) -> bool {
    std::fs::symlink_metadata(dir.join(".git")).is_ok_and(|m| m.is_file())
}

/// `url` without the credentials of an http(s) URL (`https://host/…`): what
/// git is given and stores as a clone's origin.
pub fn without_credentials(url: &str) -> String {
    credentials::split_credentials(url).0
}
