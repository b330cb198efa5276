//! Observing a venv by reading files only: `pyvenv.cfg` and the header of
//! each `*.dist-info/METADATA`. This is the converged path of `plan` and
//! `drift`, so it spawns nothing and reads a few hundred bytes per package.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::names::normalize_name;
use super::{PyError, PythonVersion};

/// What is at a venv's path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum VenvObservation {
    /// Nothing at the path: the venv is to be created.
    Missing,
    /// A venv (a folder with `pyvenv.cfg`).
    Present(ObservedVenv),
}

/// A venv as found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedVenv {
    /// The interpreter version from `pyvenv.cfg` (`version` or `version_info`);
    /// `None` when the file does not say.
    pub python_version: Option<PythonVersion>,
    /// The base interpreter's folder (`home` in `pyvenv.cfg`).
    pub home: Option<PathBuf>,
    /// Installed distributions: normalised name -> version, sorted.
    pub packages: BTreeMap<String, String>,
    /// Metadata folders that could not be read as a package (no METADATA,
    /// no Name/Version, or a second copy of an installed name): each one
    /// means a damaged install, which the plan should show.
    pub damaged: Vec<String>,
}

/// The venv's own interpreter, `<venv>/bin/python`.
pub fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// Reads a venv without running anything. A missing path is
/// [`VenvObservation::Missing`]; a path holding something that is not a
/// venv is [`PyError::NotAVenv`], because replacing it would destroy data.
pub fn observe_venv(path: &Path) -> Result<VenvObservation, PyError> {
    let cfg_path = path.join("pyvenv.cfg");
    let cfg = match std::fs::read_to_string(&cfg_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match std::fs::symlink_metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(VenvObservation::Missing),
                Err(e) => Err(PyError::io("inspect", path, e)),
                Ok(_) => Err(PyError::NotAVenv {
                    path: path.to_path_buf(),
                }),
            };
        }
        Err(e) => return Err(PyError::io("read", cfg_path, e)),
    };

    let mut python_version = None;
    let mut home = None;
    for line in cfg.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            // `python -m venv` writes `version`, uv and virtualenv `version_info`.
            "version" | "version_info" => {
                python_version = python_version.or(PythonVersion::parse(value))
            }
            "home" => home = Some(PathBuf::from(value)),
            _ => {}
        }
    }

    let mut packages = BTreeMap::new();
    let mut damaged = Vec::new();
    for site_packages in site_packages_dirs(path)? {
        read_installed(&site_packages, &mut packages, &mut damaged)?;
    }
    damaged.sort();
    Ok(VenvObservation::Present(ObservedVenv {
        python_version,
        home,
        packages,
        damaged,
    }))
}

/// `lib/python3.X/site-packages` (one per interpreter version that ever used
/// this venv; normally exactly one).
fn site_packages_dirs(venv: &Path) -> Result<Vec<PathBuf>, PyError> {
    let lib = venv.join("lib");
    let entries = match std::fs::read_dir(&lib) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PyError::io("list", lib, e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| PyError::io("list", &lib, e))?;
        let site = entry.path().join("site-packages");
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("python") || name.starts_with("pypy")) && site.is_dir() {
            dirs.push(site);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Where each distribution installed from a path, an archive URL or a VCS
/// came from, as its `direct_url.json` says (PEP 610): normalised name ->
/// `git+URL@commit`, the URL, or `file://path` (`-e file://path` for an
/// editable install, as a requirements file writes it). Index installs have no such
/// file and are absent. Files only; URLs as written (redact before showing).
pub fn direct_urls(venv: &Path) -> Result<BTreeMap<String, String>, PyError> {
    let mut out = BTreeMap::new();
    for site_packages in site_packages_dirs(venv)? {
        let entries = std::fs::read_dir(&site_packages)
            .map_err(|e| PyError::io("list", &site_packages, e))?;
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if !file_name.ends_with(".dist-info") || file_name.starts_with('~') {
                continue;
            }
            let Ok(text) = std::fs::read(entry.path().join("direct_url.json")) else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&text) else {
                continue;
            };
            let Some(url) = doc.get("url").and_then(serde_json::Value::as_str) else {
                continue;
            };
            let direct = match doc.get("vcs_info") {
                Some(vcs) => format!(
                    "{}+{url}@{}",
                    vcs.get("vcs")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("git"),
                    vcs.get("commit_id")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                ),
                None if doc
                    .pointer("/dir_info/editable")
                    .and_then(serde_json::Value::as_bool)
                    == Some(true) =>
                {
                    format!("-e {url}")
                }
                None => url.to_string(),
            };
            if let Some((name, _)) = read_name_and_version(&entry.path().join("METADATA")) {
                out.insert(normalize_name(&name), direct);
            }
        }
    }
    Ok(out)
}

fn read_installed(
    site_packages: &Path,
    packages: &mut BTreeMap<String, String>,
    damaged: &mut Vec<String>,
) -> Result<(), PyError> {
    let entries =
        std::fs::read_dir(site_packages).map_err(|e| PyError::io("list", site_packages, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| PyError::io("list", site_packages, e))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        // pip renames what it is replacing to `~name...` and deletes it after;
        // a leftover is not an installed package (pip ignores it too).
        if file_name.starts_with('~') {
            continue;
        }
        let metadata_file = if file_name.ends_with(".dist-info") {
            entry.path().join("METADATA")
        } else if file_name.ends_with(".egg-info") {
            // Legacy installs: a folder with PKG-INFO, or PKG-INFO content in a file.
            if entry.path().is_dir() {
                entry.path().join("PKG-INFO")
            } else {
                entry.path()
            }
        } else {
            continue;
        };
        match read_name_and_version(&metadata_file) {
            Some((name, version)) => {
                let key = normalize_name(&name);
                if let Some(previous) = packages.insert(key.clone(), version.clone()) {
                    damaged.push(format!(
                        "{file_name} ({key} is installed twice: {previous} and {version})"
                    ));
                }
            }
            None => damaged.push(file_name.to_string()),
        }
    }
    Ok(())
}

/// Reads only the header block of a core-metadata file, stopping as soon as
/// `Name` and `Version` are both known (they are the first lines in every
/// file pip, uv and setuptools write).
fn read_name_and_version(path: &Path) -> Option<(String, String)> {
    let file = File::open(path).ok()?;
    let mut reader = BufReader::with_capacity(1024, file);
    let mut line = String::new();
    let (mut name, mut version) = (None, None);
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            break;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break; // end of headers; the description follows
        }
        if let Some(value) = trimmed.strip_prefix("Name:") {
            name.get_or_insert_with(|| value.trim().to_string());
        } else if let Some(value) = trimmed.strip_prefix("Version:") {
            version.get_or_insert_with(|| value.trim().to_string());
        }
        if name.is_some() && version.is_some() {
            break;
        }
    }
    Some((
        name.filter(|n| !n.is_empty())?,
        version.filter(|v| !v.is_empty())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn missing_path_is_a_state() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            observe_venv(&dir.path().join("venv")).unwrap(),
            VenvObservation::Missing
        );
    }

    #[test]
    fn folder_without_pyvenv_cfg_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let message = observe_venv(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("is not a Python venv (it has no pyvenv.cfg)"),
            "{message}"
        );
        assert!(message.contains("plasma will not delete it"), "{message}");
    }

    #[test]
    fn reads_cfg_and_metadata_headers() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path();
        write(
            &venv.join("pyvenv.cfg"),
            "home = /opt/py/bin\ninclude-system-site-packages = false\nversion_info = 3.11.7.final.0\n",
        );
        let site = venv.join("lib/python3.11/site-packages");
        write(
            &site.join("Foo_Bar-1.0.dist-info/METADATA"),
            "Metadata-Version: 2.1\nName: Foo_Bar\nVersion: 1.0\n\nName: not-a-header\n",
        );
        write(
            &site.join("torch-2.5.1.dist-info/METADATA"),
            "Metadata-Version: 2.1\nVersion: 2.5.1+cpu\nName: torch\n",
        );
        write(
            &site.join("legacy.egg-info/PKG-INFO"),
            "Metadata-Version: 1.0\nName: legacy\nVersion: 0.3\n",
        );
        write(&site.join("nometa-1.0.dist-info/RECORD"), "");
        write(
            &site.join("noversion-1.0.dist-info/METADATA"),
            "Name: noversion\n\nVersion: 1.0\n",
        );
        write(
            &site.join("~orch-2.6.0.dist-info/METADATA"),
            "Name: torch\nVersion: 2.6.0\n",
        );
        let VenvObservation::Present(observed) = observe_venv(venv).unwrap() else {
            panic!("venv expected")
        };
        assert_eq!(observed.python_version, PythonVersion::parse("3.11.7"));
        assert_eq!(observed.home, Some(PathBuf::from("/opt/py/bin")));
        let packages: Vec<(&str, &str)> = observed
            .packages
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            packages,
            [
                ("foo-bar", "1.0"),
                ("legacy", "0.3"),
                ("torch", "2.5.1+cpu")
            ]
        );
        assert_eq!(
            observed.damaged,
            ["nometa-1.0.dist-info", "noversion-1.0.dist-info"]
        );
    }

    #[test]
    fn package_installed_twice_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path();
        write(&venv.join("pyvenv.cfg"), "version = 3.11.7\n");
        let site = venv.join("lib/python3.11/site-packages");
        write(
            &site.join("helper-1.0.dist-info/METADATA"),
            "Name: helper\nVersion: 1.0\n",
        );
        write(
            &site.join("helper-1.1.dist-info/METADATA"),
            "Name: helper\nVersion: 1.1\n",
        );
        let VenvObservation::Present(observed) = observe_venv(venv).unwrap() else {
            panic!("venv expected")
        };
        assert_eq!(observed.damaged.len(), 1);
        assert!(
            observed.damaged[0].contains("helper is installed twice"),
            "{:?}",
            observed.damaged
        );
    }
}
