//! Installing into a venv with pip or uv: exact pins (each from its own
//! index), requirements files held under the pins, uninstalls, and the
//! forbidden-package check that runs before anything is installed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::conflict::{explain_failure, explain_pin_failure};
use super::interpreter::InterpreterSearch;
use super::metadata::venv_python;
use super::names::{normalize_name, redact_credentials};
use super::process::{Scrubber, run};
use super::requirements::{self, OverriddenRequirement, Requested};
use super::{PyError, forbid};

/// An index or find-links URL (or path). It may carry credentials
/// (`https://user:token@host/simple`), so `Debug` and `Display` show it
/// redacted; only [`IndexUrl::expose`] gives the real text, and that only
/// goes into the installer's environment.
///
/// It serialises redacted too (for plans and JSON output), and has no
/// `Deserialize`: a URL is only ever built from the spec, never read back
/// from state.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexUrl(String);

impl IndexUrl {
    pub fn new(url: impl Into<String>) -> IndexUrl {
        IndexUrl(url.into())
    }
    /// The URL with its credentials, for handing to the installer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IndexUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IndexUrl({:?})", redact_credentials(&self.0))
    }
}

impl Serialize for IndexUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_credentials(&self.0))
    }
}

impl fmt::Display for IndexUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_credentials(&self.0))
    }
}

/// An exact pin `name==version`, optionally from its own index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pin {
    pub name: String,
    pub version: String,
    /// Replaces the venv's index for this package (torch from the CPU index).
    pub index: Option<IndexUrl>,
    /// Searched in addition to the (pin's or venv's) index.
    pub extra_index: Option<IndexUrl>,
}

impl Pin {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Pin {
        Pin {
            name: name.into(),
            version: version.into(),
            index: None,
            extra_index: None,
        }
    }
    pub fn with_index(mut self, index: IndexUrl) -> Pin {
        self.index = Some(index);
        self
    }
    pub fn with_extra_index(mut self, extra_index: IndexUrl) -> Pin {
        self.extra_index = Some(extra_index);
        self
    }
    /// `name==version`, name normalised.
    pub fn requirement(&self) -> String {
        format!("{}=={}", normalize_name(&self.name), self.version)
    }
}

/// What a venv declares about its packages (everything but requirements files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PackageSpec {
    pub pins: Vec<Pin>,
    /// Names that must never be installed (any spelling; compared normalised).
    pub forbid: Vec<String>,
    /// The venv's index, for requirements and pins without their own
    /// `index`; `None` leaves the installer's default (and user config).
    pub index: Option<IndexUrl>,
    /// The venv's `find-links` locations (URLs or folders).
    pub find_links: Vec<IndexUrl>,
}

impl PackageSpec {
    pub(crate) fn pinned_versions(&self) -> BTreeMap<String, String> {
        self.pins
            .iter()
            .map(|p| (normalize_name(&p.name), p.version.clone()))
            .collect()
    }
    pub(super) fn scrubber(&self) -> Scrubber {
        let urls = self
            .pins
            .iter()
            .flat_map(|p| [&p.index, &p.extra_index])
            .flatten();
        let urls = urls.chain(&self.index).chain(&self.find_links);
        Scrubber::for_urls(urls.map(IndexUrl::expose))
    }
}

/// `installer` in the spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallerChoice {
    /// uv when it is on PATH, else pip.
    #[default]
    Auto,
    Pip,
    Uv,
}

/// The tool that installs packages (and creates venvs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    /// `<venv>/bin/python -m pip`; venvs made with `python -m venv` (so they have pip).
    Pip,
    /// `uv pip ... --python <venv>/bin/python`; venvs made with `uv venv`.
    Uv { uv: PathBuf },
}

/// What an installer run did: the commands (credentials removed), their
/// combined output for the engine's log file, the requirement lines the
/// pins overrode, every requirements file read (includes too) and the
/// packages they ask for by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallLog {
    pub commands: Vec<String>,
    pub output: String,
    pub overridden: Vec<OverriddenRequirement>,
    /// Every requirements file read: path -> BLAKE3 of the bytes read.
    pub read: BTreeMap<PathBuf, String>,
    pub requested: Vec<Requested>,
}

impl InstallLog {
    pub(crate) fn record(&mut self, command: String, output: &str) {
        self.output.push_str(&format!("$ {command}\n{output}"));
        if !self.output.ends_with('\n') {
            self.output.push('\n');
        }
        self.commands.push(command);
    }
}

/// Where one installer invocation looks for packages.
pub(crate) struct Sources<'a> {
    pub(crate) index: Option<&'a IndexUrl>,
    pub(crate) extra_indexes: Vec<&'a IndexUrl>,
    pub(crate) find_links: Vec<&'a IndexUrl>,
}

impl Installer {
    /// Chooses the installer from the process's PATH.
    pub fn detect(choice: InstallerChoice) -> Result<Installer, PyError> {
        Installer::choose(choice, &InterpreterSearch::from_env())
    }

    /// Chooses the installer: `auto` is uv when `uv` is on `search`'s PATH, else pip.
    pub fn choose(
        choice: InstallerChoice,
        search: &InterpreterSearch,
    ) -> Result<Installer, PyError> {
        let uv = search.which("uv");
        match (choice, uv) {
            (InstallerChoice::Pip, _) | (InstallerChoice::Auto, None) => Ok(Installer::Pip),
            (InstallerChoice::Uv | InstallerChoice::Auto, Some(uv)) => Ok(Installer::Uv { uv }),
            (InstallerChoice::Uv, None) => Err(PyError::UvNotFound),
        }
    }

    /// Installs every pin at its exact version. Pins are grouped by their
    /// (index, extra-index); each group is one installer run that sees only
    /// its own index, so torch cannot come from the default index by
    /// accident. Groups with their own index run first, the venv-default
    /// group last, and every run has all pins as constraints, so a group's
    /// dependencies can never move another group's pin.
    ///
    /// Before each run, a dry run lists what it would install; a forbidden
    /// package there fails with [`PyError::ForbiddenPackage`] before that
    /// group installs anything. (Earlier groups may already be installed
    /// then: they are pins the spec asks for, so the venv is nearer the
    /// spec, never off it. Checking all groups before any install would
    /// have to resolve later groups without earlier pins installed, which
    /// resolves torch from the wrong index and mis-reports its CUDA
    /// dependencies.)
    pub fn install_pins(&self, venv: &Path, spec: &PackageSpec) -> Result<InstallLog, PyError> {
        let scrubber = spec.scrubber();
        let work = WorkDir::new()?;
        let constraints = work.write_constraints(spec)?;
        let mut log = InstallLog::default();

        for group in index_groups(&spec.pins) {
            let IndexGroup {
                index,
                extra_index,
                pins,
            } = group;
            let sources = Sources {
                index: index.or(spec.index.as_ref()),
                extra_indexes: extra_index.into_iter().collect(),
                // A pin's own index is the whole story for that pin.
                find_links: if index.is_some() {
                    Vec::new()
                } else {
                    spec.find_links.iter().collect()
                },
            };
            let requirements: Vec<String> = pins.iter().map(|p| p.requirement()).collect();
            let what = format!(
                "pin{} {}",
                if pins.len() > 1 { "s" } else { "" },
                requirements.join(", ")
            );
            let explain = |e: PyError| explain_pin_failure(e, &sources, &pins);
            self.check_forbidden(
                venv,
                spec,
                &sources,
                &constraints,
                &requirements,
                None,
                &what,
                &work,
                &scrubber,
                &mut log,
            )
            .map_err(explain)?;
            let mut cmd = self.install_command(venv, &sources, &constraints, &requirements, None);
            let done = run(&mut cmd, &scrubber).map_err(explain)?;
            log.record(done.command, &done.output);
        }
        Ok(log)
    }

    /// Installs requirements files with every pin as a constraint, from the
    /// venv's index and find-links, read as pip reads them (see
    /// [`requirements`](super::requirements)): lines that disagree with a
    /// pin have their version replaced by the pin (reported in
    /// [`InstallLog::overridden`]); a package that *depends* on a different
    /// version of a pinned package fails with the installer's conflict
    /// message, about the user's files and lines. The forbidden check is
    /// a dry run of exactly the install (same files, options and folder)
    /// and runs first: if it fails, nothing has been installed.
    pub fn install_requirements(
        &self,
        venv: &Path,
        spec: &PackageSpec,
        files: &[PathBuf],
    ) -> Result<InstallLog, PyError> {
        let mut log = InstallLog::default();
        if files.is_empty() {
            return Ok(log);
        }
        // A missing file is the user's to fix, whatever the venv's state.
        for file in files {
            if let Err(e) = std::fs::metadata(file) {
                return Err(PyError::BadRequirements {
                    path: file.clone(),
                    detail: e.to_string(),
                });
            }
        }
        let scrubber = spec.scrubber();
        let work = WorkDir::new()?;
        let constraints = work.write_constraints(spec)?;
        let env = requirements::marker_environment(&venv_python(venv))?;
        let prepared = requirements::prepare(files, &spec.pinned_versions(), &env, work.path())?;
        log.overridden = prepared.overridden.clone();
        log.read = prepared.read.clone();
        log.requested = prepared.requested.clone();

        let sources = Sources {
            index: spec.index.as_ref(),
            extra_indexes: Vec::new(),
            find_links: spec.find_links.iter().collect(),
        };
        let mut args = Vec::new();
        for copy in &prepared.copies {
            args.push("-r".to_string());
            args.push(copy.display().to_string());
        }
        // The folder a user runs pip from: the first file's. Every path in
        // the copies is absolute, so the dry run and the install mean the
        // same whatever the folder.
        let folder = files[0].parent().filter(|p| !p.as_os_str().is_empty());
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let what = format!("requirements {}", names.join(", "));
        let explain = |e: PyError| explain_failure(e, &prepared, spec);
        self.check_forbidden(
            venv,
            spec,
            &sources,
            &constraints,
            &args,
            folder,
            &what,
            &work,
            &scrubber,
            &mut log,
        )
        .map_err(explain)?;
        let mut cmd = self.install_command(venv, &sources, &constraints, &args, folder);
        let done = run(&mut cmd, &scrubber).map_err(explain)?;
        log.record(done.command, &prepared.translate(&done.output));
        Ok(log)
    }

    /// Uninstalls the named packages (not-installed names are skipped by
    /// the installer, not an error).
    pub fn uninstall(&self, venv: &Path, names: &[String]) -> Result<InstallLog, PyError> {
        let mut log = InstallLog::default();
        if names.is_empty() {
            return Ok(log);
        }
        let names: Vec<String> = names.iter().map(|n| normalize_name(n)).collect();
        let mut cmd = match self {
            Installer::Pip => {
                let mut cmd = Command::new(venv_python(venv));
                cmd.args(["-m", "pip", "uninstall", "--yes"]);
                cmd
            }
            Installer::Uv { uv } => {
                let mut cmd = Command::new(uv);
                cmd.args(["pip", "uninstall", "--python"])
                    .arg(venv_python(venv));
                cmd
            }
        };
        cmd.args(&names);
        let done = run(&mut cmd, &Scrubber::default())?;
        log.record(done.command, &done.output);
        Ok(log)
    }

    fn install_command(
        &self,
        venv: &Path,
        sources: &Sources,
        constraints: &Path,
        args: &[String],
        folder: Option<&Path>,
    ) -> Command {
        let mut cmd = self.base_command(venv, sources);
        cmd.arg("-c").arg(constraints).args(args);
        if let Some(folder) = folder {
            cmd.current_dir(folder);
        }
        cmd
    }

    /// `pip install` / `uv pip install` for this venv, with the sources in
    /// the environment (not the arguments: `ps` shows arguments to every
    /// user on the machine, and credentials may be in the URLs).
    pub(super) fn base_command(&self, venv: &Path, sources: &Sources) -> Command {
        let python = venv_python(venv);
        let (mut cmd, index_var, extra_var, links_var, links_separator) = match self {
            Installer::Pip => {
                let mut cmd = Command::new(&python);
                cmd.args(["-m", "pip", "install"]);
                (
                    cmd,
                    "PIP_INDEX_URL",
                    "PIP_EXTRA_INDEX_URL",
                    "PIP_FIND_LINKS",
                    " ",
                )
            }
            Installer::Uv { uv } => {
                let mut cmd = Command::new(uv);
                cmd.args(["pip", "install", "--python"]).arg(&python);
                // The deprecated spellings would override ours if the user has them set.
                cmd.env_remove("UV_INDEX_URL")
                    .env_remove("UV_EXTRA_INDEX_URL");
                (cmd, "UV_DEFAULT_INDEX", "UV_INDEX", "UV_FIND_LINKS", ",")
            }
        };
        if let Some(index) = sources.index {
            cmd.env(index_var, index.expose());
        }
        // Set or cleared: an extra index from the user's shell must not leak
        // into a pin's own-index group.
        let join = |urls: &[&IndexUrl], sep: &str| {
            urls.iter()
                .map(|u| u.expose())
                .collect::<Vec<_>>()
                .join(sep)
        };
        match sources.extra_indexes.is_empty() {
            true => cmd.env_remove(extra_var),
            false => cmd.env(extra_var, join(&sources.extra_indexes, " ")),
        };
        match sources.find_links.is_empty() {
            true => cmd.env_remove(links_var),
            false => cmd.env(links_var, join(&sources.find_links, links_separator)),
        };
        cmd
    }

    /// Dry-runs an install and fails if it would bring in a forbidden package.
    #[allow(clippy::too_many_arguments)]
    fn check_forbidden(
        &self,
        venv: &Path,
        spec: &PackageSpec,
        sources: &Sources,
        constraints: &Path,
        args: &[String],
        folder: Option<&Path>,
        what: &str,
        work: &WorkDir,
        scrubber: &Scrubber,
        log: &mut InstallLog,
    ) -> Result<(), PyError> {
        if spec.forbid.is_empty() {
            return Ok(());
        }
        let forbidden: Vec<String> = spec.forbid.iter().map(|n| normalize_name(n)).collect();
        let mut cmd = self.install_command(venv, sources, constraints, args, folder);
        let resolution = match self {
            Installer::Pip => {
                // Not `--quiet`: it drops pip's "The conflict is caused by" lines.
                let report = work.path().join("report.json");
                cmd.args(["--dry-run", "--report"]).arg(&report);
                let done = run(&mut cmd, scrubber)?;
                log.record(done.command, &done.output);
                let text = std::fs::read_to_string(&report)
                    .map_err(|e| PyError::io("read", &report, e))?;
                forbid::from_pip_report(&text)?
            }
            Installer::Uv { uv } => {
                cmd.arg("--dry-run");
                let done = run(&mut cmd, scrubber)?;
                log.record(done.command, &done.output);
                let would_install = forbid::from_uv_dry_run(&done.output);
                if !would_install
                    .iter()
                    .any(|(name, _)| forbidden.contains(name))
                {
                    return Ok(());
                }
                // Only now (the failure path) ask uv who wants it.
                let mut compile = Command::new(uv);
                compile
                    .args([
                        "pip",
                        "compile",
                        "--no-header",
                        "--annotation-style",
                        "line",
                        "--python",
                    ])
                    .arg(venv_python(venv))
                    .arg("-c")
                    .arg(constraints);
                copy_sources_env(&cmd, &mut compile);
                let inputs = work.path().join("compile-input.txt");
                std::fs::write(&inputs, args_as_requirements(args))
                    .map_err(|e| PyError::io("write", &inputs, e))?;
                compile.arg(&inputs);
                if let Some(folder) = folder {
                    compile.current_dir(folder);
                }
                let done = run(&mut compile, scrubber)?;
                log.record(done.command, &done.output);
                forbid::from_uv_compile(&done.stdout, &would_install)
            }
        };
        match forbid::find_forbidden(&resolution, &forbidden) {
            None => Ok(()),
            Some(found) => Err(PyError::ForbiddenPackage {
                what: scrubber.scrub(what),
                package: found.package,
                version: found.version,
                pulled_by: found.chain,
            }),
        }
    }
}

/// Pins that share an (index, extra-index) and so install in one run.
struct IndexGroup<'a> {
    index: Option<&'a IndexUrl>,
    extra_index: Option<&'a IndexUrl>,
    pins: Vec<&'a Pin>,
}

/// Groups pins by their sources, in spec order, own-index groups first.
fn index_groups(pins: &[Pin]) -> Vec<IndexGroup<'_>> {
    let mut groups: Vec<IndexGroup> = Vec::new();
    for pin in pins {
        let (index, extra_index) = (pin.index.as_ref(), pin.extra_index.as_ref());
        match groups
            .iter_mut()
            .find(|g| g.index == index && g.extra_index == extra_index)
        {
            Some(group) => group.pins.push(pin),
            None => groups.push(IndexGroup {
                index,
                extra_index,
                pins: vec![pin],
            }),
        }
    }
    groups.sort_by_key(|g| g.index.is_none()); // a stable sort keeps spec order
    groups
}

/// Turns installer arguments (`-r file`, `name==1.0`) into a requirements file's text.
fn args_as_requirements(args: &[String]) -> String {
    let mut text = String::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "-r" {
            text.push_str("-r ");
            text.push_str(iter.next().map(String::as_str).unwrap_or_default());
        } else {
            text.push_str(arg);
        }
        text.push('\n');
    }
    text
}

fn copy_sources_env(from: &Command, to: &mut Command) {
    for (key, value) in from.get_envs() {
        match value {
            Some(value) => to.env(key, value),
            None => to.env_remove(key),
        };
    }
}

/// A private temporary folder for constraints, reports and filtered
/// requirement copies; removed when dropped.
pub(super) struct WorkDir(tempfile::TempDir);

impl WorkDir {
    pub(super) fn new() -> Result<WorkDir, PyError> {
        tempfile::Builder::new()
            .prefix("plasma-python-")
            .tempdir()
            .map(WorkDir)
            .map_err(|e| PyError::io("create a temporary folder in", std::env::temp_dir(), e))
    }
    pub(super) fn path(&self) -> &Path {
        self.0.path()
    }
    fn write_constraints(&self, spec: &PackageSpec) -> Result<PathBuf, PyError> {
        let path = self.path().join("pins-constraints.txt");
        let text: String = spec.pins.iter().map(|p| p.requirement() + "\n").collect();
        std::fs::write(&path, text).map_err(|e| PyError::io("write", &path, e))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_urls_never_show_credentials() {
        let url = IndexUrl::new("https://alice:t0ken@example.com/simple");
        let pin = Pin::new("torch", "2.5.1").with_index(url.clone());
        assert_eq!(url.to_string(), "https://***@example.com/simple");
        assert!(!format!("{pin:?}").contains("t0ken"));
        let json = serde_json::to_string(&pin).unwrap();
        assert!(
            json.contains("\"https://***@example.com/simple\""),
            "{json}"
        );
        assert_eq!(url.expose(), "https://alice:t0ken@example.com/simple");
    }

    #[test]
    fn choosing_an_installer() {
        let dir = tempfile::tempdir().unwrap();
        let empty = InterpreterSearch {
            path_dirs: vec![dir.path().to_path_buf()],
            pyenv_root: None,
        };
        assert_eq!(
            Installer::choose(InstallerChoice::Auto, &empty).unwrap(),
            Installer::Pip
        );
        let message = Installer::choose(InstallerChoice::Uv, &empty)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("`uv` was requested but is not on PATH"),
            "{message}"
        );

        let uv = dir.path().join("uv");
        std::fs::write(&uv, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&uv, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(
            Installer::choose(InstallerChoice::Auto, &empty).unwrap(),
            Installer::Uv { uv: uv.clone() }
        );
        assert_eq!(
            Installer::choose(InstallerChoice::Pip, &empty).unwrap(),
            Installer::Pip
        );
    }
}
