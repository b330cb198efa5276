//! Creating (or replacing) a venv so that a failure leaves nothing half-made.
//!
//! Why in place rather than in a temporary sibling renamed into place: a
//! venv does not survive being renamed. `python -m venv` writes its own
//! absolute path into `bin/activate*` (`VIRTUAL_ENV=...`) and into the
//! `#!` line of every script it and pip install (`bin/pip`), so a venv built
//! at `venv.tmp` and renamed to `venv` activates the wrong folder and its
//! scripts fail to start (`tests/python_layer.rs` checks this). So the venv
//! is created at its final path and removed again if creation fails; an
//! existing venv being replaced is moved aside first (a rename of the old
//! one, which is only ever renamed back to where it was) and restored if
//! the new one cannot be made.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::installer::{InstallLog, Installer};
use super::metadata::{VenvObservation, observe_venv, venv_python};
use super::process::{Scrubber, run};
use super::{Interpreter, PyError};

impl Installer {
    /// Creates a venv at `path` on `interpreter`: `uv venv --python` for uv,
    /// `<interpreter> -m venv` for pip (which gives the venv its own pip).
    /// An existing venv at `path` is replaced; anything else at `path` is
    /// refused ([`PyError::NotAVenv`]). On failure, `path` is as it was.
    pub fn create_venv(
        &self,
        interpreter: &Interpreter,
        path: &Path,
    ) -> Result<InstallLog, PyError> {
        let set_aside = match observe_venv(path)? {
            VenvObservation::Missing => None,
            VenvObservation::Present(_) => {
                let aside = sibling(path, "plasma-replaced");
                std::fs::rename(path, &aside)
                    .map_err(|e| PyError::io("move aside the old venv", path, e))?;
                Some(aside)
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| PyError::io("create", parent, e))?;
        }

        match self.run_creation(interpreter, path) {
            Ok(log) => {
                if let Some(old) = set_aside {
                    // The new venv is complete; a failure to delete the old
                    // one only leaves a hidden folder behind.
                    let _ = std::fs::remove_dir_all(old);
                }
                Ok(log)
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(path);
                if let Some(old) = set_aside {
                    std::fs::rename(&old, path)
                        .map_err(|e| PyError::io("restore the old venv from", &old, e))?;
                }
                Err(error)
            }
        }
    }

    fn run_creation(&self, interpreter: &Interpreter, path: &Path) -> Result<InstallLog, PyError> {
        let mut cmd = match self {
            Installer::Pip => {
                let mut cmd = Command::new(&interpreter.path);
                cmd.args(["-m", "venv"]).arg(path);
                cmd
            }
            Installer::Uv { uv } => {
                let mut cmd = Command::new(uv);
                cmd.args(["venv", "--no-project", "--no-python-downloads", "--python"])
                    .arg(&interpreter.path)
                    .arg(path);
                cmd
            }
        };
        let done = run(&mut cmd, &Scrubber::default())?;
        let mut log = InstallLog::default();
        log.record(done.command.clone(), &done.output);
        // A tool that exits 0 without making a usable venv is still a failure.
        if !path.join("pyvenv.cfg").is_file() || !venv_python(path).exists() {
            return Err(PyError::CommandFailed {
                command: done.command,
                status: "exit status: 0".into(),
                output_tail: format!(
                    "it did not leave a venv at {} (no pyvenv.cfg or bin/python)",
                    path.display()
                ),
            });
        }
        Ok(log)
    }
}

/// `.<name>.<tag>-<pid>` next to `path`, hidden and unique to this process.
fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}
