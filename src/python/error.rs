//! Errors of the Python layer. Every string stored in a variant has already
//! been passed through [`redact_credentials`](super::redact_credentials), so
//! neither `Display` nor `Debug` can leak an index token.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PyError {
    #[error(
        "no Python interpreter matching \"{spec}\" was found; looked in:\n{}\n\
         Install it (for example `pyenv install {spec}` or `uv python install {spec}`) or set `python` to an interpreter path.",
        looked.iter().map(|l| format!("  - {l}")).collect::<Vec<_>>().join("\n")
    )]
    InterpreterNotFound { spec: String, looked: Vec<String> },

    #[error("{path} is not a usable Python interpreter: {detail}")]
    InterpreterUnusable { path: PathBuf, detail: String },

    #[error(
        "{path} exists but is not a Python venv (it has no pyvenv.cfg); \
         move it away or point `path` somewhere else: plasma will not delete it"
    )]
    NotAVenv { path: PathBuf },

    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "installer `uv` was requested but is not on PATH; install it (`pip install uv`) or set `installer` to `pip` or `auto`"
    )]
    UvNotFound,

    #[error("could not start `{command}`: {detail}")]
    SpawnFailed { command: String, detail: String },

    #[error("`{command}` failed ({status}); last lines of its output:\n{output_tail}")]
    CommandFailed {
        command: String,
        status: String,
        output_tail: String,
    },

    #[error(
        "refusing to install: {what} would install forbidden package {package} {version}, pulled in by {pulled_by}; \
         nothing was installed. Remove the requirement that needs it, or remove {package} from `forbid`."
    )]
    ForbiddenPackage {
        what: String,
        package: String,
        version: String,
        /// The chain from the requested requirement down to the forbidden
        /// package, e.g. `needs-xformers 1.0 (requested) -> xformerslike 0.1`.
        pulled_by: String,
    },

    #[error(
        "the requirements cannot be installed together:\n{}\n`{command}` said:\n{output_tail}",
        conflicts.iter().map(|c| format!("  - {c}")).collect::<Vec<_>>().join("\n")
    )]
    Unsatisfiable {
        /// In the spec's terms: who (file and line, or pin) needs what,
        /// against which pin or forbid.
        conflicts: Vec<String>,
        command: String,
        /// The installer's own explanation, about the user's files.
        output_tail: String,
    },

    #[error("no version {version} of {name} on {index} (available: {available})")]
    NoSuchVersion {
        name: String,
        version: String,
        /// The index searched, credentials redacted.
        index: String,
        /// The versions the index has, oldest first, or why they are unknown.
        available: String,
    },

    #[error("could not understand the installer's dry-run report: {detail}")]
    BadReport { detail: String },

    #[error("could not read requirements file {path}: {detail}")]
    BadRequirements { path: PathBuf, detail: String },
}

impl PyError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        PyError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
