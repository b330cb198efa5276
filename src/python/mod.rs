//! The Python layer of the `venv` kind: finding interpreters, observing a
//! venv without spawning anything, creating venvs, and installing, pinning
//! and removing packages with pip or uv.
//!
//! Everything here is synchronous (plain files and `std::process`); the
//! engine runs it on a blocking thread. Observed state (`VenvObservation`,
//! `Interpreter`) is plain serde data; errors are [`PyError`], whose messages
//! never contain credentials from index URLs.
//!
//! Typical apply sequence for one venv:
//! ```no_run
//! # use plasma::python::*;
//! # fn demo() -> Result<(), PyError> {
//! let venv = std::path::Path::new("/home/me/tools/ComfyUI/venv");
//! let spec = PackageSpec {
//!     pins: vec![Pin::new("torch", "2.5.1").with_index(IndexUrl::new("https://download.pytorch.org/whl/cpu"))],
//!     forbid: vec!["xformers".into()],
//!     ..PackageSpec::default()
//! };
//! if let VenvObservation::Missing = observe_venv(venv)? {
//!     let interpreter = find_interpreter("3.11")?;
//!     let installer = Installer::detect(InstallerChoice::Auto)?;
//!     installer.create_venv(&interpreter, venv)?;
//! }
//! let installer = Installer::detect(InstallerChoice::Auto)?;
//! installer.install_pins(venv, &spec)?;
//! installer.install_requirements(venv, &spec, &["/home/me/tools/ComfyUI/requirements.txt".into()])?;
//! # Ok(()) }
//! ```

mod check;
mod conflict;
mod create;
mod error;
mod forbid;
mod installer;
mod interpreter;
mod locked;
mod metadata;
mod names;
mod process;
mod requirements;

pub use check::Broken;
pub use error::PyError;
pub use installer::{IndexUrl, InstallLog, Installer, InstallerChoice, PackageSpec, Pin};
pub use interpreter::{Interpreter, InterpreterSearch, PythonVersion, find_interpreter};
pub use locked::{ExactRequirement, ResolveTarget, ResolvedPackage, parse_pylock, resolve_with_uv};
pub use metadata::{ObservedVenv, VenvObservation, direct_urls, observe_venv, venv_python};
pub use names::{normalize_name, redact_credentials, version_matches_pin};
pub use requirements::{
    OverriddenRequirement, Requested, absolute as absolute_path, named_requirements, unmet,
};
