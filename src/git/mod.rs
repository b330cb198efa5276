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
//!
//! `url` may be https, ssh (including `git@host:org/repo`), `file://` or a local
//! path; a local path should be absolute, as git resolves it against the current
//! directory.

mod apply;
mod command;
mod config_file;
mod error;
mod observe;
mod redact;
mod resolve;

use std::ffi::OsString;

pub use apply::CloneRequest;
pub use error::GitError;
pub use observe::{
    ChangeKind, ChangedPath, LocalChanges, MAX_LISTED_CHANGES, RemoteUrl, RepoObservation,
    SubmoduleObservation, SubmoduleState, WorkTree, head_commit,
};
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
}

impl Default for Git {
    fn default() -> Self {
        Git {
            program: "git".into(),
            search_path: None,
            allow_file_protocol: false,
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

    /// Allows submodules whose URL is a local path or `file://`. Git refuses them
    /// by default (CVE-2022-39253) because a malicious repository could copy local
    /// repositories into its checkout; only enable this for trusted repositories.
    pub fn allow_local_submodules(mut self, allow: bool) -> Git {
        self.allow_file_protocol = allow;
        self
    }
}
