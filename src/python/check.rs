//! The installers' consistency check (`pip check`, `uv pip check`): which
//! installed packages need something the venv does not hold. And making
//! sure a venv has pip, whatever created it.

use std::path::Path;
use std::process::{Command, Stdio};

use super::PyError;
use super::installer::{InstallLog, Installer};
use super::metadata::venv_python;
use super::names::normalize_name;
use super::process::{Scrubber, describe, non_interactive, run};

/// One broken dependency: `dependent` needs `requirement`, and what is
/// installed instead (`None`: nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// Normalised name of the installed package whose dependency is broken.
    pub dependent: String,
    pub dependent_version: String,
    /// The requirement it declares, e.g. `numpy<2`.
    pub requirement: String,
    /// Normalised name of the required package.
    pub required: String,
    /// The version installed, when one is.
    pub installed: Option<String>,
}

impl Installer {
    /// Runs the installer's consistency check on `venv`; returns what it
    /// found broken (empty when consistent). The check's exit status 1
    /// with findings is a result, not an error.
    pub fn check(&self, venv: &Path) -> Result<Vec<Broken>, PyError> {
        let mut cmd = match self {
            Installer::Pip => {
                let mut cmd = Command::new(venv_python(venv));
                cmd.args(["-m", "pip", "check"]);
                cmd
            }
            Installer::Uv { uv } => {
                let mut cmd = Command::new(uv);
                cmd.args(["pip", "check", "--python"])
                    .arg(venv_python(venv));
                cmd
            }
        };
        let command = describe(&cmd, &Scrubber::default());
        // In its own process group (crate::child), so a first Ctrl-C at the
        // terminal does not kill the check.
        let output = crate::child::output(
            non_interactive(&mut cmd)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .map_err(|e| PyError::SpawnFailed {
            command: command.clone(),
            detail: e.to_string(),
        })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let broken = parse_check(&text);
        if !output.status.success() && broken.is_empty() {
            return Err(PyError::CommandFailed {
                command,
                status: output.status.to_string(),
                output_tail: text.trim().to_string(),
            });
        }
        Ok(broken)
    }

    /// Makes sure the venv has pip (a custom node's `install.py`, and
    /// ComfyUI-Manager, run `python -m pip`): a venv made by `uv venv`
    /// has none. Uses the interpreter's own bundled pip (`ensurepip`), so
    /// it needs no index.
    pub fn ensure_pip(venv: &Path) -> Result<InstallLog, PyError> {
        let mut log = InstallLog::default();
        let has_pip = crate::child::output(
            non_interactive(Command::new(venv_python(venv)).args(["-m", "pip", "--version"]))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .is_ok_and(|o| o.status.success());
        if has_pip {
            return Ok(log);
        }
        let mut cmd = Command::new(venv_python(venv));
        cmd.args(["-m", "ensurepip", "--default-pip"]);
        let done = run(&mut cmd, &Scrubber::default())?;
        log.record(done.command, &done.output);
        Ok(log)
    }
}

/// pip: `x 1.0 has requirement numpy>=2, but you have numpy 1.26.4.` and
/// `x 1.0 requires numpy, which is not installed.`; uv: ``The package `x`
/// requires `numpy>=2`, but `1.26.4` is installed`` and ``The package `x`
/// requires `numpy`, but it's not installed``.
fn parse_check(text: &str) -> Vec<Broken> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("The package `") {
            let Some((dependent, rest)) = rest.split_once('`') else {
                continue;
            };
            let Some(rest) = rest.trim_start().strip_prefix("requires `") else {
                continue;
            };
            let Some((requirement, rest)) = rest.split_once('`') else {
                continue;
            };
            let installed = rest
                .split_once("but `")
                .and_then(|(_, v)| v.split_once('`'))
                .map(|(v, _)| v.to_string());
            out.push(Broken {
                dependent: normalize_name(dependent),
                dependent_version: String::new(),
                requirement: requirement.to_string(),
                required: normalize_name(super::names::leading_name(requirement)),
                installed,
            });
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [
                dependent,
                version,
                "has",
                "requirement",
                requirement @ ..,
                "but",
                "you",
                "have",
                _,
                installed,
            ] => {
                let requirement = requirement.join(" ");
                let requirement = requirement.trim_end_matches(',').to_string();
                out.push(Broken {
                    dependent: normalize_name(dependent),
                    dependent_version: version.to_string(),
                    required: normalize_name(super::names::leading_name(&requirement)),
                    requirement,
                    installed: Some(installed.trim_end_matches('.').to_string()),
                });
            }
            [
                dependent,
                version,
                "requires",
                requirement,
                "which",
                "is",
                "not",
                "installed.",
            ] => {
                let requirement = requirement.trim_end_matches(',').to_string();
                out.push(Broken {
                    dependent: normalize_name(dependent),
                    dependent_version: version.to_string(),
                    required: normalize_name(super::names::leading_name(&requirement)),
                    requirement,
                    installed: None,
                });
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pip_and_uv_check_output() {
        let pip = "node-a-lib 1.0 has requirement numpy>=2, but you have numpy 1.26.4.\nmediapipe 0.10 requires protobuf, which is not installed.\n";
        assert_eq!(
            parse_check(pip),
            [
                Broken {
                    dependent: "node-a-lib".into(),
                    dependent_version: "1.0".into(),
                    requirement: "numpy>=2".into(),
                    required: "numpy".into(),
                    installed: Some("1.26.4".into()),
                },
                Broken {
                    dependent: "mediapipe".into(),
                    dependent_version: "0.10".into(),
                    requirement: "protobuf".into(),
                    required: "protobuf".into(),
                    installed: None,
                }
            ]
        );
        let uv = "Checked 5 packages in 1ms\nFound 1 incompatibility\nThe package `node_a_lib` requires `numpy>=2`, but `1.26.4` is installed\n";
        let found = parse_check(uv);
        assert_eq!(found[0].dependent, "node-a-lib");
        assert_eq!(found[0].required, "numpy");
        assert_eq!(found[0].installed.as_deref(), Some("1.26.4"));
    }
}
