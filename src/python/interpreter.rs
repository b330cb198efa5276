//! Finding a Python interpreter for a spec's `python "3.11"` (or a path).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::PyError;
use super::process::{Scrubber, run};

/// A Python version `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PythonVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl PythonVersion {
    /// Parses `3.11.7`, also accepting the longer forms venv tools write
    /// (`3.11.7.final.0`) and a missing patch (`3.11` reads as `3.11.0`).
    pub fn parse(text: &str) -> Option<PythonVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        Some(PythonVersion {
            major,
            minor,
            patch,
        })
    }

    /// Whether this version satisfies a request `3.11` (any patch) or `3.11.9` (exactly).
    pub fn satisfies(&self, request: &str) -> bool {
        match VersionRequest::parse(request) {
            Some(req) => req.matches(*self),
            None => false,
        }
    }
}

impl fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A version as written in a spec: `3.11` or `3.11.9`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VersionRequest {
    major: u32,
    minor: u32,
    patch: Option<u32>,
}

impl VersionRequest {
    fn parse(text: &str) -> Option<VersionRequest> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        if !(2..=3).contains(&parts.len())
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        Some(VersionRequest {
            major: parts[0].parse().ok()?,
            minor: parts[1].parse().ok()?,
            patch: parts.get(2).map(|p| p.parse()).transpose().ok()?,
        })
    }

    fn matches(&self, v: PythonVersion) -> bool {
        v.major == self.major && v.minor == self.minor && self.patch.is_none_or(|p| p == v.patch)
    }

    fn short(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

/// A found interpreter: its real executable (pyenv shims resolved) and exact version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    pub path: PathBuf,
    pub version: PythonVersion,
}

/// Where [`find_interpreter`] looks. [`InterpreterSearch::from_env`] reads
/// `PATH`, `PYENV_ROOT` and `HOME`; tests build one by hand.
#[derive(Debug, Clone, Default)]
pub struct InterpreterSearch {
    /// Directories of `PATH`, in order.
    pub path_dirs: Vec<PathBuf>,
    /// pyenv's root (`$PYENV_ROOT`, else `~/.pyenv`); its `versions/` folder is searched.
    pub pyenv_root: Option<PathBuf>,
}

impl InterpreterSearch {
    pub fn from_env() -> InterpreterSearch {
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let pyenv_root = std::env::var_os("PYENV_ROOT")
            .filter(|r| !r.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
        InterpreterSearch {
            path_dirs,
            pyenv_root,
        }
    }

    /// The first executable file called `name` in `path_dirs`.
    pub fn which(&self, name: &str) -> Option<PathBuf> {
        self.path_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    }

    /// Finds an interpreter for `spec`: a version (`3.11`, `3.11.9`), an
    /// interpreter path, or a command name on PATH. Looks, in order, at
    /// `python3.X` and `python3` on PATH, pyenv's versions folder, and
    /// `uv python find`. Runs at most one subprocess per candidate on PATH
    /// (pyenv versions are recognised by their folder name).
    pub fn find(&self, spec: &str) -> Result<Interpreter, PyError> {
        let Some(request) = VersionRequest::parse(spec) else {
            return self.find_by_path(spec);
        };
        let mut looked = Vec::new();

        // 1. PATH.
        let names = [format!("python{}", request.short()), "python3".to_string()];
        for name in &names {
            match self.which(name) {
                None => looked.push(format!("{name} on PATH: not found")),
                Some(candidate) => match query_interpreter(&candidate) {
                    Ok(found) if request.matches(found.version) => return Ok(found),
                    Ok(found) => looked.push(format!(
                        "{name} on PATH: {} is Python {}",
                        candidate.display(),
                        found.version
                    )),
                    Err(e) => looked.push(format!(
                        "{name} on PATH: {} does not run ({})",
                        candidate.display(),
                        first_line(&e.to_string())
                    )),
                },
            }
        }

        // 2. pyenv's versions folder; the highest matching patch wins.
        match &self.pyenv_root {
            None => looked.push("pyenv versions folder: neither PYENV_ROOT nor HOME is set".into()),
            Some(root) => {
                let versions_dir = root.join("versions");
                match pyenv_versions(&versions_dir) {
                    Err(_) => looked.push(format!(
                        "pyenv versions folder {}: does not exist",
                        versions_dir.display()
                    )),
                    Ok(installed) => {
                        if let Some((version, python)) =
                            installed.iter().rev().find(|(v, _)| request.matches(*v))
                        {
                            return Ok(Interpreter {
                                path: python.clone(),
                                version: *version,
                            });
                        }
                        let list: Vec<String> =
                            installed.iter().map(|(v, _)| v.to_string()).collect();
                        looked.push(format!(
                            "pyenv versions folder {}: {}",
                            versions_dir.display(),
                            if list.is_empty() {
                                "no versions".to_string()
                            } else {
                                format!("has {}", list.join(", "))
                            }
                        ));
                    }
                }
            }
        }

        // 3. uv's own interpreter discovery (which also knows uv-managed Pythons).
        match self.which("uv") {
            None => looked.push("`uv python find`: uv is not on PATH".into()),
            Some(uv) => match uv_python_find(&uv, spec) {
                Ok(found) if request.matches(found.version) => return Ok(found),
                Ok(found) => looked.push(format!(
                    "`uv python find {spec}`: found only Python {} at {}",
                    found.version,
                    found.path.display()
                )),
                Err(_) => looked.push(format!("`uv python find {spec}`: no match")),
            },
        }

        Err(PyError::InterpreterNotFound {
            spec: spec.to_string(),
            looked,
        })
    }

    fn find_by_path(&self, spec: &str) -> Result<Interpreter, PyError> {
        let is_path = spec.contains('/') || spec.contains(std::path::MAIN_SEPARATOR);
        let candidate = if is_path {
            Some(PathBuf::from(spec))
        } else {
            self.which(spec)
        };
        match candidate {
            Some(path) if path.exists() => query_interpreter(&path),
            Some(path) => Err(PyError::InterpreterNotFound {
                spec: spec.to_string(),
                looked: vec![format!("{}: no such file", path.display())],
            }),
            None => Err(PyError::InterpreterNotFound {
                spec: spec.to_string(),
                looked: vec![format!(
                    "{spec} on PATH: not found (and it is not a version like 3.11 or 3.11.9)"
                )],
            }),
        }
    }
}

/// Finds an interpreter using the process environment; see [`InterpreterSearch::find`].
pub fn find_interpreter(spec: &str) -> Result<Interpreter, PyError> {
    InterpreterSearch::from_env().find(spec)
}

/// `(version, bin/python3)` for each version-named folder under `versions/`, sorted.
fn pyenv_versions(versions_dir: &Path) -> std::io::Result<Vec<(PythonVersion, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(versions_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // Only plain `X.Y.Z` folders: pyenv-virtualenv envs and `3.13.0t`
        // builds have other names and are not what `python "3.13"` means.
        let Some(version) = name
            .to_str()
            .and_then(VersionRequest::parse)
            .filter(|r| r.patch.is_some())
        else {
            continue;
        };
        let python = entry.path().join("bin").join("python3");
        if is_executable(&python) {
            found.push((
                PythonVersion {
                    major: version.major,
                    minor: version.minor,
                    patch: version.patch.unwrap_or(0),
                },
                python,
            ));
        }
    }
    found.sort();
    Ok(found)
}

/// Asks an interpreter for its real executable and version. Isolated mode
/// (`-I`) so a user's PYTHONPATH or site customisations cannot interfere.
fn query_interpreter(path: &Path) -> Result<Interpreter, PyError> {
    let mut cmd = Command::new(path);
    cmd.args([
        "-I",
        "-c",
        "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])",
    ]);
    let finished =
        run(&mut cmd, &Scrubber::default()).map_err(|e| PyError::InterpreterUnusable {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    let mut lines = finished.stdout.lines();
    let executable = lines.next().map(str::trim).filter(|l| !l.is_empty());
    let version = lines.next().and_then(PythonVersion::parse);
    match (executable, version) {
        (Some(executable), Some(version)) => Ok(Interpreter {
            path: PathBuf::from(executable),
            version,
        }),
        _ => Err(PyError::InterpreterUnusable {
            path: path.to_path_buf(),
            detail: format!(
                "unexpected answer to a version query: {:?}",
                finished.stdout
            ),
        }),
    }
}

fn uv_python_find(uv: &Path, spec: &str) -> Result<Interpreter, PyError> {
    let mut cmd = Command::new(uv);
    // Only interpreters already on the machine: never download one while looking.
    cmd.args(["python", "find", "--no-python-downloads", spec]);
    let finished = run(&mut cmd, &Scrubber::default())?;
    let path = finished.stdout.lines().next().unwrap_or_default().trim();
    query_interpreter(Path::new(path))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_requests() {
        let v = PythonVersion::parse("3.11.7").unwrap();
        assert!(v.satisfies("3.11"));
        assert!(v.satisfies("3.11.7"));
        assert!(!v.satisfies("3.11.9"));
        assert!(!v.satisfies("3.12"));
        assert!(!v.satisfies("/usr/bin/python3"));
        assert_eq!(PythonVersion::parse("3.11.7.final.0"), Some(v));
        assert_eq!(VersionRequest::parse("3"), None);
        assert_eq!(VersionRequest::parse("python3.11"), None);
    }
}
