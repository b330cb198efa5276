//! `venv`: a Python venv on a given interpreter, with exact pins (each from
//! its own index), requirements files installed under those pins, and
//! forbidden packages kept out.
//!
//! Observation reads files only (`pyvenv.cfg`, `*.dist-info/METADATA`, the
//! requirements files and the venv's record), so a converged plan spawns
//! nothing. Installs go through the Python layer (`crate::python`) on a
//! blocking thread.
//!
//! **The record.** After every install plasma makes into a venv it writes
//! `<venv>/.plasma-record.json`: the installed set (name -> version) and the
//! digests of the requirements files it installed. Anything installed,
//! removed or changed since then by something other than plasma is drift.
//! The record lives in the venv rather than only in state because other
//! resources install into the same venv through
//! [`Venv::install_requirements_blocking`] (ComfyUI custom nodes): they
//! update the record too, so their packages are not mistaken for drift. The
//! record is also published in this resource's state outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::logfile;
use miette::SourceSpan;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::custom_node::CustomNode;
use super::{ApplyContext, Kind, ObserveContext, Others, Outputs, ResourceError};
use crate::diagnostic::Problem;
use crate::fsutil;
use crate::lint::{self, Lint, LintContext};
use crate::lock::{LockedPackage, LockedVenv};
use crate::plan::{Action, Diff};
use crate::python::{
    ExactRequirement, IndexUrl, InstallLog, Installer, InstallerChoice, InterpreterSearch,
    ObservedVenv, PackageSpec, Pin, PyError, Requested, VenvObservation, absolute_path,
    find_interpreter, normalize_name, observe_venv, unmet, version_matches_pin,
};
use crate::spec::Spanned;
use crate::spec::reader::NodeReader;
use crate::state::ResourceState;

/// The record's file name inside the venv.
pub const RECORD_FILE: &str = ".plasma-record.json";

/// The installer's own packages: never in a lock (as `pip freeze` leaves
/// them out) and never removed for not being in one.
const UNLOCKED: &[&str] = &["pip"];

/// Bootstrap packages a venv may have without the lock listing them
/// (`python -m venv` seeds them; a uv venv has none).
const BOOTSTRAP: &[&str] = &["pip", "setuptools", "wheel"];

/// The index pip and uv use when the spec names none.
const PYPI: &str = "https://pypi.org/simple";

/// What the spec asks of the interpreter.
#[derive(Debug, Clone)]
pub enum PythonRequest {
    /// `"3.11"` (any patch) or `"3.11.9"`.
    Version(String),
    /// An interpreter path, or a command name looked up on PATH.
    Path(PathBuf),
}

impl PythonRequest {
    fn text(&self) -> String {
        match self {
            PythonRequest::Version(v) => v.clone(),
            PythonRequest::Path(p) => p.display().to_string(),
        }
    }
}

/// A pin with where it was written, for lints.
#[derive(Debug, Clone)]
pub struct DeclaredPin {
    pub pin: Pin,
    pub span: SourceSpan,
}

#[derive(Debug, Clone)]
pub struct Venv {
    pub path: Spanned<PathBuf>,
    pub python: Spanned<PythonRequest>,
    pub pins: Vec<DeclaredPin>,
    pub requirements: Vec<Spanned<PathBuf>>,
    /// Normalised names.
    pub forbid: Vec<Spanned<String>>,
    pub index: Option<IndexUrl>,
    pub find_links: Vec<IndexUrl>,
    pub installer: InstallerChoice,
    /// The venv's name (`comfyui` in `venv.comfyui`).
    pub name: String,
    /// Give the venv pip whichever installer made it: `seed-pip #true`, or
    /// a custom node with an install script installs into it.
    pub seed_pip: bool,
    /// This venv's entry in `plasma.lock`, set at load (`crate::lockfile`).
    /// It is held (installed exactly) while its inputs match the spec's.
    pub locked: Option<LockedVenv>,
    /// The platform the spec is for, `os-arch`: part of the lock's inputs.
    pub lock_platform: String,
    /// `--locked`: an entry that does not match fails apply instead of
    /// resolving anew.
    pub require_locked: bool,
}

/// The installer a venv was created with, used again on every install
/// into it (so a venv made with uv is not later handed to a pip it lacks,
/// nor the other way round, when PATH differs, e.g. under cron).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum RecordedInstaller {
    Pip,
    /// uv, at the path it was found at.
    Uv {
        path: PathBuf,
    },
}

/// What one resource that installs into the venv (a custom node, keyed
/// by its address in [`Record::contributions`]) put there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// Every requirements file its install read: path -> BLAKE3.
    #[serde(default)]
    pub requirements: BTreeMap<PathBuf, String>,
    /// What those files ask for by name.
    #[serde(default)]
    pub requested: Vec<Requested>,
    /// What its install script installed or changed: name -> version.
    #[serde(default)]
    pub script_installed: BTreeMap<String, String>,
    /// The commit at which its install script last ran.
    #[serde(default)]
    pub script_commit: Option<String>,
}

/// What plasma last installed into a venv.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Normalised name -> version, after plasma's last install.
    pub installed: BTreeMap<String, String>,
    /// Every requirements file the last install read, the spec's files
    /// and the files they include with `-r`/`-c`: path -> BLAKE3 of the
    /// content that was installed.
    pub requirements: BTreeMap<PathBuf, String>,
    /// What the venv's own requirements files ask for by name.
    #[serde(default)]
    pub requested: Vec<Requested>,
    /// The installer the venv was created with.
    #[serde(default)]
    pub installer: Option<RecordedInstaller>,
    /// What each custom node contributed, by its address.
    #[serde(default)]
    pub contributions: BTreeMap<String, Contribution>,
    /// The consistency check after the last install, worded (empty: the
    /// venv is consistent). Valid while `installed` is what is installed.
    #[serde(default)]
    pub broken: Vec<String>,
}

/// A requirements file as found now.
#[derive(Debug, Clone, Serialize)]
pub struct RequirementsFile {
    pub path: PathBuf,
    /// BLAKE3 of its content; `None` when it does not exist (yet).
    pub blake3: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VenvObserved {
    pub venv: VenvObservation,
    /// Whether the venv's interpreter is the one the spec asks for, and
    /// what it is when not (absent for a missing venv).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_mismatch: Option<String>,
    pub requirements: Vec<RequirementsFile>,
    /// The venv's record; `None` when plasma never installed into it.
    pub record: Option<Record>,
    /// What is broken in the venv: the record's check when the installed
    /// set is the recorded one, else the check run again now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub broken: Vec<String>,
    /// The venv holds to its `plasma.lock` entry (the entry's inputs match
    /// the spec's): the locked set is what it must have.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl VenvObserved {
    fn present(&self) -> Option<&ObservedVenv> {
        match &self.venv {
            VenvObservation::Present(v) => Some(v),
            VenvObservation::Missing => None,
        }
    }
}

// ------------------------------------------------------------------ parsing

impl Venv {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let path = r.path("path");
        let python = r.string("python").map(|s| {
            let request = if looks_like_version(&s.value) {
                PythonRequest::Version(s.value.clone())
            } else if s.value.contains('/') || s.value.starts_with('~') {
                PythonRequest::Path(r.cx.resolve_path(&s.value))
            } else {
                PythonRequest::Path(PathBuf::from(&s.value))
            };
            Spanned::new(request, s.span)
        });
        let pins = parse_pins(r);
        let requirements: Vec<Spanned<PathBuf>> = r
            .string_list("requirements")
            .into_iter()
            .map(|s| Spanned::new(r.cx.resolve_path(&s.value), s.span))
            .collect();
        let forbid: Vec<Spanned<String>> = r
            .string_list("forbid")
            .into_iter()
            .map(|s| Spanned::new(normalize_name(&s.value), s.span))
            .collect();
        let index = r.opt_string("index").map(|s| IndexUrl::new(s.value));
        let find_links: Vec<IndexUrl> = r
            .string_list("find-links")
            .into_iter()
            .map(|s| {
                if s.value.contains("://") {
                    IndexUrl::new(s.value)
                } else {
                    IndexUrl::new(r.cx.resolve_path(&s.value).display().to_string())
                }
            })
            .collect();
        let installer = match r.opt_choice("installer", &["auto", "pip", "uv"]) {
            Some(c) if c.value == "pip" => InstallerChoice::Pip,
            Some(c) if c.value == "uv" => InstallerChoice::Uv,
            _ => InstallerChoice::Auto,
        };
        let seed_pip = r.opt_bool("seed-pip").is_some_and(|b| b.value);
        let name = r.resource_name().unwrap_or_default();

        // A package both pinned and forbidden can never be satisfied.
        for pin in &pins {
            let name = normalize_name(&pin.pin.name);
            if let Some(f) = forbid.iter().find(|f| f.value == name) {
                r.fail(
                    Problem::error(
                        "spec::pinned-and-forbidden",
                        format!("`{name}` is both pinned and forbidden"),
                    )
                    .label(pin.span, "pinned here")
                    .label(f.span, "forbidden here")
                    .help("remove the pin or take it out of `forbid`"),
                );
            }
        }
        Some(Venv {
            path: path?,
            python: python?,
            pins: pins_or_none(r, pins)?,
            requirements,
            forbid,
            index,
            find_links,
            installer,
            name,
            seed_pip,
            locked: None,
            lock_platform: String::new(),
            require_locked: false,
        })
    }

    /// The venv's folder.
    pub fn path(&self) -> &Path {
        &self.path.value
    }

    /// The layer's view of this venv's packages (URLs with credentials
    /// intact: only the installer's environment ever sees them).
    pub fn package_spec(&self) -> PackageSpec {
        PackageSpec {
            pins: self.pins.iter().map(|p| p.pin.clone()).collect(),
            forbid: self.forbid.iter().map(|f| f.value.clone()).collect(),
            index: self.index.clone(),
            find_links: self.find_links.clone(),
        }
    }

    /// The spec's requirements files, absolute and normalised as the
    /// record keys them.
    pub fn requirement_paths(&self) -> Vec<PathBuf> {
        self.requirements
            .iter()
            .map(|r| absolute_path(&r.value))
            .collect()
    }

    /// Installs requirements files into this venv under its pins and
    /// forbids for `owner`, a resource that builds on the venv (a ComfyUI
    /// custom node's `requirements.txt`, by the node's address). Blocking:
    /// call it from `tokio::task::spawn_blocking`.
    ///
    /// Lines disagreeing with a pin take the pin's version and are
    /// reported in the returned log's `overridden`; a requirement that
    /// would pull in a forbidden package fails before anything is
    /// installed. The installers' output (credentials removed) is appended
    /// to `log`. Afterwards the venv's record holds the new installed set
    /// and `owner`'s contribution (files read, packages asked for), and the
    /// consistency check runs: a venv left broken is an error naming the
    /// packages and who asked for them. The venv must exist (apply it
    /// first: make the caller depend on it).
    pub fn install_requirements_blocking(
        &self,
        owner: &str,
        files: &[PathBuf],
        log: &Path,
    ) -> Result<InstallLog, ResourceError> {
        let venv = self.path();
        // Custom nodes of one ComfyUI apply in parallel, into one venv.
        let lock = install_lock(venv);
        let _installing = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.existing_record()?;
        let installer = self.installer_for(Some(&record))?;
        let result = installer.install_requirements(venv, &self.package_spec(), files);
        let install_log = finish_step(result, log)?;
        let contribution = record.contributions.entry(owner.to_string()).or_default();
        contribution.requirements = install_log.read.clone();
        contribution.requested = install_log.requested.clone();
        self.finish_install(&installer, record, log)?;
        Ok(install_log)
    }

    /// Runs `script` (a custom node's install script, with this venv's
    /// Python) for `owner` at `commit`, with pip in the venv first, and
    /// records what it installed or changed as `owner`'s, so it is not
    /// taken for packages installed outside plasma. Then the consistency
    /// check, as after any install. Blocking.
    pub fn run_script_blocking(
        &self,
        owner: &str,
        commit: Option<String>,
        log: &Path,
        script: impl FnOnce() -> Result<(), ResourceError>,
    ) -> Result<(), ResourceError> {
        let venv = self.path();
        let lock = install_lock(venv);
        let _installing = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.existing_record()?;
        let installer = self.installer_for(Some(&record))?;
        finish_step(Installer::ensure_pip(venv), log)?;
        let before = installed_now(venv)?;
        script()?;
        let after = installed_now(venv)?;
        let contribution = record.contributions.entry(owner.to_string()).or_default();
        for (name, version) in &after {
            if before.get(name) != Some(version) {
                contribution
                    .script_installed
                    .insert(name.clone(), version.clone());
            }
        }
        contribution
            .script_installed
            .retain(|name, _| after.contains_key(name));
        contribution.script_commit = commit;
        self.finish_install(&installer, record, log)
    }

    /// Where `owner`'s contribution to this venv stands, read from files
    /// only (for a custom node's observation).
    pub fn standing_of(&self, owner: &str) -> Result<Standing, ResourceError> {
        let venv = match observe_venv(self.path()).map_err(py_error)? {
            VenvObservation::Missing => return Ok(Standing::Missing),
            VenvObservation::Present(v) => v,
        };
        if python_mismatch(&self.python.value, &venv).is_some() {
            return Ok(Standing::Rebuilt);
        }
        Ok(Standing::Present(
            read_record(self.path()).and_then(|mut r| r.contributions.remove(owner)),
        ))
    }

    /// BLAKE3 of everything this venv is resolved from: the requirements
    /// files' contents (not their paths, which differ between machines),
    /// the pins with their indexes, the venv's index and find-links (all
    /// redacted), forbids, the Python request and the platform. `None`
    /// while a requirements file cannot be read (not cloned yet).
    pub fn lock_inputs(&self) -> Option<String> {
        self.lock_inputs_with(&read_digest)
    }

    /// [`Venv::lock_inputs`], with each requirements file's BLAKE3 from
    /// `digest` (`None`: it cannot be read).
    fn lock_inputs_with(&self, digest: &dyn Fn(&Path) -> Option<String>) -> Option<String> {
        let files: Option<Vec<String>> =
            self.requirements.iter().map(|f| digest(&f.value)).collect();
        let mut forbid: Vec<&str> = self.forbid.iter().map(|f| f.value.as_str()).collect();
        forbid.sort();
        let inputs = json!({
            "python": self.python.value.text(),
            "platform": self.lock_platform,
            "pins": self.pins.iter().map(|p| &p.pin).collect::<Vec<_>>(),
            "index": self.index,
            "find_links": self.find_links,
            "forbid": forbid,
            "requirements": files?,
        });
        Some(
            blake3::hash(inputs.to_string().as_bytes())
                .to_hex()
                .to_string(),
        )
    }

    /// The lock's entry while it still matches the spec's inputs, and no
    /// file the last install read through `-r`/`-c` changed since (an
    /// include's path is the machine's, so it is not in the digest).
    pub fn held(&self) -> Option<&LockedVenv> {
        self.held_with(&read_digest, read_record(self.path()).as_ref())
    }

    /// [`Venv::held`], given each file's BLAKE3 (`digest`) and the venv's
    /// record, as observation has them already.
    fn held_with(
        &self,
        digest: &dyn Fn(&Path) -> Option<String>,
        record: Option<&Record>,
    ) -> Option<&LockedVenv> {
        let locked = self.locked.as_ref()?;
        if Some(&locked.inputs) != self.lock_inputs_with(digest).as_ref() {
            return None;
        }
        if let Some(record) = record {
            let own = self.requirement_paths();
            let edited = record
                .requirements
                .iter()
                .filter(|(path, _)| !own.contains(path))
                .any(|(path, recorded)| digest(path).as_ref() != Some(recorded));
            if edited {
                return None;
            }
        }
        Some(locked)
    }

    /// This venv's lock entry as it stands after an apply: the recorded
    /// installed set with where each came from. A distribution the
    /// `previous` entry lists at the same version keeps its source and
    /// hashes; when the set and inputs are unchanged, `previous` is kept
    /// whole (so an entry `plasma lock` resolved keeps its hashes).
    /// Bootstrap packages (`setuptools`, `wheel`: what `python -m venv`
    /// seeded, at the version the machine's Python bundles) are in it only
    /// when the spec or its requirements name them, or `previous` lists
    /// them (uv resolved them as a dependency): another machine's Python
    /// bundles another version, which no index need have. `python` is the
    /// spec's request (`3.11`), not this machine's patch release. `None`
    /// when plasma never installed into the venv.
    pub fn lock_entry(&self, previous: Option<&LockedVenv>) -> Option<LockedVenv> {
        let VenvObservation::Present(venv) = observe_venv(self.path()).ok()? else {
            return None;
        };
        let record = read_record(self.path())?;
        let inputs = self.lock_inputs()?;
        let named = |name: &str| {
            self.is_pinned(name)
                || record.requested.iter().any(|r| r.name == name)
                || previous.is_some_and(|p| p.packages.iter().any(|p| p.name == name))
        };
        let installed: BTreeMap<&String, &String> = venv
            .packages
            .iter()
            .filter(|(name, _)| !UNLOCKED.contains(&name.as_str()))
            .filter(|(name, _)| !BOOTSTRAP.contains(&name.as_str()) || named(name))
            .collect();
        if let Some(previous) = previous {
            let same: BTreeMap<&String, &String> = previous
                .packages
                .iter()
                .map(|p| (&p.name, &p.version))
                .collect();
            if previous.inputs == inputs && same == installed {
                return Some(previous.clone());
            }
        }
        let direct = crate::python::direct_urls(self.path()).unwrap_or_default();
        let packages = installed
            .into_iter()
            .map(|(name, version)| {
                if let Some(p) = previous
                    .and_then(|prev| prev.packages.iter().find(|p| &p.name == name))
                    .filter(|p| &p.version == version)
                {
                    return p.clone();
                }
                let direct = direct.get(name).map(|u| crate::redact::redact_url(u));
                let source = direct
                    .as_deref()
                    .map(|d| d.trim_start_matches("-e ").to_string());
                LockedPackage {
                    name: name.clone(),
                    version: version.clone(),
                    source: source.or_else(|| self.index_of(name)),
                    direct,
                    hashes: Vec::new(),
                }
            })
            .collect();
        let python = match (&self.python.value, venv.python_version) {
            (PythonRequest::Path(_), Some(v)) => format!("{}.{}", v.major, v.minor),
            _ => self.python.value.text(),
        };
        Some(LockedVenv {
            inputs,
            python,
            platform: self.lock_platform.clone(),
            resolver: "apply".into(),
            packages,
        })
    }

    /// The index a package installs from, when the spec says: its pin's own
    /// index, else the venv's (or PyPI's) when no find-links could have
    /// served it instead. Redacted.
    fn index_of(&self, name: &str) -> Option<String> {
        let pin = self
            .pins
            .iter()
            .find(|p| normalize_name(&p.pin.name) == name);
        if let Some(index) = pin.and_then(|p| p.pin.index.as_ref()) {
            return Some(index.to_string());
        }
        if !self.find_links.is_empty() {
            return None;
        }
        Some(
            self.index
                .as_ref()
                .map_or(PYPI.to_string(), ToString::to_string),
        )
    }

    /// The installs that make the venv hold `locked`: every entry, each
    /// from its pin's own index when it has one.
    fn exact_requirements<'a>(
        &self,
        locked: impl Iterator<Item = &'a LockedPackage>,
    ) -> Vec<ExactRequirement> {
        locked
            .map(|p| ExactRequirement {
                name: p.name.clone(),
                version: p.version.clone(),
                direct: p.direct.clone(),
                hashes: p.hashes.clone(),
                index: self
                    .pins
                    .iter()
                    .find(|pin| normalize_name(&pin.pin.name) == p.name)
                    .and_then(|pin| pin.pin.index.clone()),
            })
            .collect()
    }

    /// The record of a venv that must exist.
    fn existing_record(&self) -> Result<Record, ResourceError> {
        let venv = self.path();
        if !matches!(
            observe_venv(venv).map_err(py_error)?,
            VenvObservation::Present(_)
        ) {
            return Err(ResourceError::new(format!(
                "the venv {} does not exist yet",
                venv.display()
            ))
            .help("apply the venv first (depend on it)"));
        }
        Ok(read_record(venv).unwrap_or_default())
    }

    /// The installer for this venv: the one it was created with (when the
    /// spec leaves it to `auto`), else the spec's choice.
    fn installer_for(&self, record: Option<&Record>) -> Result<Installer, ResourceError> {
        let recorded = record.and_then(|r| r.installer.as_ref());
        match (self.installer, recorded) {
            (InstallerChoice::Auto, Some(RecordedInstaller::Pip)) => Ok(Installer::Pip),
            (InstallerChoice::Auto, Some(RecordedInstaller::Uv { path })) => {
                if path.is_file() {
                    return Ok(Installer::Uv { uv: path.clone() });
                }
                Installer::detect(InstallerChoice::Uv).map_err(|_| {
                    ResourceError::new(format!(
                        "{} was created with uv ({}), which is no longer there nor on PATH",
                        self.path().display(),
                        path.display()
                    ))
                    .help("put uv on PATH, or set `installer \"pip\"` on the venv")
                })
            }
            (choice, _) => Installer::detect(choice).map_err(py_error),
        }
    }

    /// After an install: record the installed set, run the consistency
    /// check, record its result, and fail when the venv is broken.
    fn finish_install(
        &self,
        installer: &Installer,
        mut record: Record,
        log: &Path,
    ) -> Result<(), ResourceError> {
        let venv = self.path();
        record.installed = installed_now(venv)?;
        let broken = installer.check(venv).map_err(py_error)?;
        record.broken = explain_broken(&record, &broken, &self.pinned_names());
        write_record(venv, &record)?;
        if record.broken.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = record.broken.iter().map(|b| format!("  - {b}")).collect();
        logfile::append(
            log,
            &format!("broken after install:\n{}\n", lines.join("\n")),
        );
        Err(ResourceError::new(format!(
            "{} is broken after the install:\n{}",
            venv.display(),
            lines.join("\n")
        ))
        .help("change the requirements (or the nodes) that ask for conflicting versions, or pin one version that satisfies them"))
    }

    fn pinned_names(&self) -> Vec<String> {
        self.pins
            .iter()
            .map(|p| normalize_name(&p.pin.name))
            .collect()
    }
}

/// Where a contributor's packages stand in its venv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "contribution", rename_all = "kebab-case")]
pub enum Standing {
    /// The venv does not exist: it is created first, and the contribution
    /// installed again.
    Missing,
    /// The venv is on another interpreter and is rebuilt first.
    Rebuilt,
    /// The venv's record of the contribution (`None`: not recorded).
    Present(Option<Contribution>),
}

/// The consistency check's findings and the requirements lines not met,
/// worded with who asked for each package.
fn explain_broken(
    record: &Record,
    broken: &[crate::python::Broken],
    pinned: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for b in broken {
        let found = match &b.installed {
            Some(v) => format!("{} {v} is installed", b.required),
            None => format!("{} is not installed", b.required),
        };
        let mut who = Vec::new();
        for name in [&b.dependent, &b.required] {
            if let Some(by) = asked_for_by(record, name) {
                who.push(format!("{name} asked for by {by}"));
            }
        }
        let who = if who.is_empty() {
            String::new()
        } else {
            format!(" ({})", who.join("; "))
        };
        out.push(format!(
            "{} {} needs {}, but {found}{who}",
            b.dependent, b.dependent_version, b.requirement
        ));
    }
    let own = record
        .requested
        .iter()
        .map(|r| ("the venv's requirements".to_string(), r));
    let contributed = record
        .contributions
        .iter()
        .flat_map(|(owner, c)| c.requested.iter().map(move |r| (owner.clone(), r)));
    for (owner, requested) in own.chain(contributed) {
        if pinned.contains(&requested.name) {
            continue;
        }
        if let Some(found) = unmet(requested, &record.installed) {
            let mut line = format!("{owner} asks for {requested}, but {found}");
            if let Some(by) = asked_for_by(record, &requested.name)
                .filter(|by| !by.starts_with(&format!("{owner}:")) || by.contains(" and "))
            {
                line.push_str(&format!(" ({} asked for by {by})", requested.name));
            }
            out.push(line);
        }
    }
    out
}

/// Who asked for a package: the venv's files, a custom node's file, or a
/// custom node's install script.
fn asked_for_by(record: &Record, name: &str) -> Option<String> {
    let mut by: Vec<String> = record
        .requested
        .iter()
        .filter(|r| r.name == name)
        .map(|r| format!("the venv's requirements: {r}"))
        .collect();
    for (owner, c) in &record.contributions {
        for r in c.requested.iter().filter(|r| r.name == name) {
            by.push(format!("{owner}: {r}"));
        }
        if c.script_installed.contains_key(name) {
            by.push(format!("{owner}'s install script"));
        }
    }
    (!by.is_empty()).then(|| by.join(" and "))
}

/// One lock per venv: installers are not safe to run twice at once on one
/// environment, and neither is its record.
fn install_lock(venv: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<
        std::sync::Mutex<BTreeMap<PathBuf, std::sync::Arc<std::sync::Mutex<()>>>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks.entry(venv.to_path_buf()).or_default().clone()
}

fn looks_like_version(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `None` when a pin had an error (already reported), so the venv is dropped.
fn pins_or_none(r: &NodeReader<'_, '_>, pins: Vec<DeclaredPin>) -> Option<Vec<DeclaredPin>> {
    (!r.failed()).then_some(pins)
}

/// `package NAME "VERSION" index=URL extra-index=URL`, each an exact pin.
fn parse_pins(r: &NodeReader<'_, '_>) -> Vec<DeclaredPin> {
    let mut pins: Vec<DeclaredPin> = Vec::new();
    for child in r.all("package") {
        let index = r.prop_string(child, "index");
        let extra_index = r.prop_string(child, "extra-index");
        let args: Vec<_> = child
            .entries()
            .iter()
            .filter(|e| e.name().is_none())
            .collect();
        let [name, version] = args.as_slice() else {
            r.fail(
                Problem::error(
                    "spec::malformed-pin",
                    "`package` takes a name and an exact version",
                )
                .label(child.name().span(), "here")
                .help("write `package torch \"2.5.1\"`"),
            );
            continue;
        };
        let (Some(name), Some(version)) = (r.entry_string(name), r.entry_string(version)) else {
            continue;
        };
        let bad_version = version.value.is_empty()
            || version
                .value
                .contains(|c: char| "<>=!~*, ;".contains(c) || c.is_whitespace());
        if bad_version {
            r.fail(
                Problem::error(
                    "spec::malformed-pin",
                    format!(
                        "`{}` is not an exact version for {}",
                        version.value, name.value
                    ),
                )
                .label(version.span, "expected an exact version such as \"2.5.1\"")
                .help("a pin is exact; put ranges in a requirements file"),
            );
            continue;
        }
        let normalized = normalize_name(&name.value);
        if let Some(first) = pins
            .iter()
            .find(|p| normalize_name(&p.pin.name) == normalized)
        {
            r.fail(
                Problem::error(
                    "spec::duplicate-pin",
                    format!("`{normalized}` is pinned twice"),
                )
                .label(name.span, "pinned again here")
                .label(first.span, "first pinned here")
                .help("keep one pin per package"),
            );
            continue;
        }
        let mut pin = Pin::new(name.value, version.value);
        if let Some(index) = index {
            pin = pin.with_index(IndexUrl::new(index.value));
        }
        if let Some(extra) = extra_index {
            pin = pin.with_extra_index(IndexUrl::new(extra.value));
        }
        pins.push(DeclaredPin {
            pin,
            span: name.span,
        });
    }
    pins
}

// -------------------------------------------------------------- observation

/// The installed set as the record keeps it.
fn installed_now(venv: &Path) -> Result<BTreeMap<String, String>, ResourceError> {
    match observe_venv(venv).map_err(py_error)? {
        VenvObservation::Present(v) => Ok(v.packages),
        VenvObservation::Missing => Ok(BTreeMap::new()),
    }
}

fn read_record(venv: &Path) -> Option<Record> {
    let text = std::fs::read(venv.join(RECORD_FILE)).ok()?;
    // A damaged record is no record: the plan then says so and apply rewrites it.
    serde_json::from_slice(&text).ok()
}

fn write_record(venv: &Path, record: &Record) -> Result<(), ResourceError> {
    let path = venv.join(RECORD_FILE);
    let mut text = serde_json::to_vec_pretty(record).expect("a record serialises");
    text.push(b'\n');
    fsutil::write_atomic(&path, &text, None)
        .map_err(|e| ResourceError::io("cannot write", &path, e))
}

/// A file's BLAKE3 (hex), `None` when it cannot be read.
fn read_digest(path: &Path) -> Option<String> {
    hash_file(path).ok().flatten()
}

fn hash_file(path: &Path) -> Result<Option<String>, ResourceError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(blake3::hash(&bytes).to_hex().to_string())),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(ResourceError::io("cannot read", path, e)),
    }
}

/// Whether the venv was built on the requested interpreter; `Some(what it
/// is)` when not. Reads `pyvenv.cfg` only (already parsed), never runs Python.
fn python_mismatch(request: &PythonRequest, venv: &ObservedVenv) -> Option<String> {
    let found = || match (&venv.python_version, &venv.home) {
        (Some(v), Some(h)) => format!("Python {v} from {}", h.display()),
        (Some(v), None) => format!("Python {v}"),
        (None, Some(h)) => format!("Python from {}", h.display()),
        (None, None) => "an unknown Python (pyvenv.cfg does not say)".to_string(),
    };
    match request {
        PythonRequest::Version(wanted) => match &venv.python_version {
            Some(v) if v.satisfies(wanted) => None,
            _ => Some(found()),
        },
        PythonRequest::Path(wanted) => {
            // A command name means the first one on PATH.
            let wanted = if wanted.is_absolute() {
                Some(wanted.clone())
            } else {
                InterpreterSearch::from_env().which(&wanted.display().to_string())
            };
            let (Some(wanted), Some(home)) = (wanted, &venv.home) else {
                return Some(found());
            };
            let canonical = |p: &Path| p.canonicalize().ok();
            let same_folder = wanted
                .parent()
                .is_some_and(|dir| canonical(dir).is_some() && canonical(dir) == canonical(home));
            let same_file = wanted.file_name().is_some_and(|name| {
                canonical(&wanted).is_some() && canonical(&home.join(name)) == canonical(&wanted)
            });
            (!(same_folder || same_file)).then(found)
        }
    }
}

// --------------------------------------------------------------------- diff

/// What differs between a present venv and the spec, package by package.
struct Differences {
    /// Pins to install: (name, found version or None, pinned version).
    pins: Vec<(String, Option<String>, String)>,
    /// Forbidden packages present: (name, version).
    forbidden: Vec<(String, String)>,
    /// Installed outside plasma (not in the record): (name, version).
    extra: Vec<(String, String)>,
    /// In the record but changed or removed since: (name, found, recorded).
    moved: Vec<(String, Option<String>, String)>,
    /// Notes about requirements files, already worded.
    requirements: Vec<String>,
    /// Whether the requirements must be installed.
    install_requirements: bool,
    /// Plasma has no record of this venv.
    unrecorded: bool,
    /// What the consistency check finds broken, worded.
    broken: Vec<String>,
    /// The venv should have pip and has none.
    no_pip: bool,
    /// Held to the lock: entries installed at another version or missing
    /// (name, found, locked).
    locked: Vec<(String, Option<String>, String)>,
    /// Held to the lock: installed but not in it (name, version).
    not_locked: Vec<(String, String)>,
}

impl Differences {
    fn any(&self) -> bool {
        !(self.pins.is_empty()
            && self.forbidden.is_empty()
            && self.extra.is_empty()
            && self.moved.is_empty()
            && !self.install_requirements
            && !self.unrecorded
            && self.broken.is_empty()
            && !self.no_pip
            && self.locked.is_empty()
            && self.not_locked.is_empty())
    }
}

impl Venv {
    fn is_pinned(&self, name: &str) -> bool {
        self.pins
            .iter()
            .any(|p| normalize_name(&p.pin.name) == name)
    }

    fn is_forbidden(&self, name: &str) -> bool {
        self.forbid.iter().any(|f| f.value == name)
    }

    fn differences(&self, venv: &ObservedVenv, observed: &VenvObserved) -> Differences {
        let installed = &venv.packages;
        let pins = self
            .pins
            .iter()
            .filter_map(|p| {
                let name = normalize_name(&p.pin.name);
                let found = installed.get(&name);
                match found {
                    Some(v) if version_matches_pin(v, &p.pin.version) => None,
                    _ => Some((name, found.cloned(), p.pin.version.clone())),
                }
            })
            .collect();
        let forbidden = installed
            .iter()
            .filter(|(name, _)| self.is_forbidden(name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();

        let mut extra = Vec::new();
        let mut moved = Vec::new();
        let mut requirements = Vec::new();
        let mut install_requirements = false;
        let record = observed.record.as_ref();
        let (locked, not_locked) = match self.locked.as_ref().filter(|_| observed.held) {
            Some(entry) => self.against_lock(entry, installed, record),
            None => (Vec::new(), Vec::new()),
        };
        if let Some(record) = record {
            // Pinned and forbidden packages are reported above, not twice.
            let ours = |name: &String| !self.is_pinned(name) && !self.is_forbidden(name);
            for (name, version) in installed.iter().filter(|(n, _)| ours(n)) {
                if !record.installed.contains_key(name) {
                    extra.push((name.clone(), version.clone()));
                }
            }
            for (name, recorded) in record.installed.iter().filter(|(n, _)| ours(n)) {
                match installed.get(name) {
                    Some(found) if found == recorded => {}
                    found => moved.push((name.clone(), found.cloned(), recorded.clone())),
                }
            }
        }
        for file in observed.requirements.iter().filter(|_| !observed.held) {
            let shown = file.path.display();
            let recorded = record.and_then(|r| r.requirements.get(&file.path));
            let included = !self.requirement_paths().contains(&file.path);
            match (&file.blake3, recorded) {
                (None, _) if included => {
                    requirements.push(format!("{shown} (read through -r/-c) is gone"));
                    install_requirements = true;
                }
                (None, _) => {
                    requirements.push(format!("{shown} does not exist yet"));
                    install_requirements = true;
                }
                (Some(now), Some(then)) if now == then => {}
                (Some(_), Some(_)) => {
                    requirements.push(format!("{shown} changed since last apply"));
                    install_requirements = true;
                }
                (Some(_), None) => {
                    requirements.push(format!("{shown} is not installed by plasma yet"));
                    install_requirements = true;
                }
            }
        }
        Differences {
            pins,
            forbidden,
            extra,
            moved,
            requirements,
            install_requirements,
            unrecorded: record.is_none(),
            broken: observed.broken.clone(),
            no_pip: self.seed_pip && !installed.contains_key("pip"),
            locked,
            not_locked,
        }
    }

    /// What the installed set lacks of the lock (entries at another
    /// version, or missing), and, for a venv plasma has no record of, what
    /// it has beyond it (bootstrap packages aside). A package the record
    /// shows changed outside plasma is reported as that, and one plasma
    /// installed since the lock was written (a custom node's) is plasma's:
    /// it joins the lock at the end of the apply. Pinned and forbidden
    /// packages are reported as such, not twice.
    #[allow(clippy::type_complexity)]
    fn against_lock(
        &self,
        entry: &LockedVenv,
        installed: &BTreeMap<String, String>,
        record: Option<&Record>,
    ) -> (Vec<(String, Option<String>, String)>, Vec<(String, String)>) {
        let ours = |name: &String| !self.is_pinned(name) && !self.is_forbidden(name);
        let as_recorded =
            |name: &String| record.is_none_or(|r| r.installed.get(name) == installed.get(name));
        let locked = entry
            .packages
            .iter()
            .filter(|p| ours(&p.name) && as_recorded(&p.name))
            .filter(|p| installed.get(&p.name) != Some(&p.version))
            .map(|p| {
                (
                    p.name.clone(),
                    installed.get(&p.name).cloned(),
                    p.version.clone(),
                )
            })
            .collect();
        let not_locked = installed
            .iter()
            .filter(|_| record.is_none())
            .filter(|(name, _)| ours(name) && !BOOTSTRAP.contains(&name.as_str()))
            .filter(|(name, _)| !entry.packages.iter().any(|p| &&p.name == name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        (locked, not_locked)
    }

    /// The attribute lines a new venv gets in the plan.
    fn creation_attributes(&self, mut diff: Diff) -> Diff {
        diff = diff
            .attribute("path", None, Some(self.path.value.display().to_string()))
            .attribute("python", None, Some(self.python.value.text()));
        for p in &self.pins {
            diff = diff.attribute(&normalize_name(&p.pin.name), None, Some(pin_text(&p.pin)));
        }
        for r in &self.requirements {
            diff = diff.attribute("requirements", None, Some(r.value.display().to_string()));
        }
        if !self.forbid.is_empty() {
            let names: Vec<&str> = self.forbid.iter().map(|f| f.value.as_str()).collect();
            diff = diff.attribute("forbid", None, Some(names.join(" ")));
        }
        diff
    }
}

/// `2.5.1 from https://download.pytorch.org/whl/cpu` (credentials redacted).
fn pin_text(pin: &Pin) -> String {
    match &pin.index {
        Some(index) => format!("{} from {index}", pin.version),
        None => pin.version.clone(),
    }
}

// -------------------------------------------------------------------- apply

/// What one apply does, decided from the observation.
struct Steps {
    /// Make the venv (replacing one on the wrong interpreter).
    create: bool,
    uninstall: Vec<String>,
    /// Install the pins, plus recorded packages put back at their recorded
    /// version (pins, as far as the installer is concerned).
    install_pins: bool,
    restore: Vec<Pin>,
    install_requirements: bool,
}

/// Appends an install's output to the log; on failure also the error,
/// and a help line pointing at the log.
fn finish_step(
    result: Result<InstallLog, PyError>,
    log: &Path,
) -> Result<InstallLog, ResourceError> {
    match result {
        Ok(done) => {
            logfile::append(log, &done.output);
            Ok(done)
        }
        Err(e) => {
            logfile::append(log, &format!("error: {e}\n"));
            Err(py_error(e).help(format!("the installers' output is in {}", log.display())))
        }
    }
}

fn py_error(e: PyError) -> ResourceError {
    ResourceError::new(e.to_string())
}

impl Venv {
    fn steps(&self, observed: &VenvObserved) -> Steps {
        let Some(venv) = observed
            .present()
            .filter(|_| observed.python_mismatch.is_none())
        else {
            return Steps {
                create: true,
                uninstall: Vec::new(),
                install_pins: !self.pins.is_empty(),
                restore: Vec::new(),
                install_requirements: !self.requirements.is_empty(),
            };
        };
        let d = self.differences(venv, observed);
        let mut uninstall: Vec<String> = d.forbidden.iter().map(|(n, _)| n.clone()).collect();
        uninstall.extend(d.extra.iter().map(|(n, _)| n.clone()));
        uninstall.extend(d.not_locked.iter().map(|(n, _)| n.clone()));
        let restore: Vec<Pin> = d
            .moved
            .iter()
            .map(|(name, _, recorded)| {
                let mut pin = Pin::new(name, recorded);
                pin.index = self.index.clone();
                pin
            })
            .collect();
        Steps {
            create: false,
            uninstall,
            install_pins: !d.pins.is_empty() || !restore.is_empty(),
            restore,
            // Without a record, plasma cannot know the files were installed.
            install_requirements: d.install_requirements
                || (d.unrecorded && !self.requirements.is_empty()),
        }
    }

    /// The blocking part of apply: every subprocess runs here.
    fn apply_blocking(&self, steps: Steps, log: &Path) -> Result<Outputs, ResourceError> {
        let venv = self.path();
        let lock = install_lock(venv);
        let _installing = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Decided again now: requirements files may exist only since an
        // earlier resource of this apply cloned them.
        if let Some(entry) = self.held().cloned() {
            return self.apply_locked(&entry, steps.create, log);
        }
        if self.require_locked {
            return Err(ResourceError::new(format!(
                "--locked: plasma.lock {} venv.{} (its requirements, pins, indexes, Python or platform changed)",
                if self.locked.is_some() { "is out of date for" } else { "has no entry for" },
                self.name
            ))
            .help("run `plasma lock` (or apply without --locked) to update the lock"));
        }
        let spec = self.package_spec();
        // A new venv gets the spec's choice; an existing one its own.
        let installer = if steps.create {
            Installer::detect(self.installer).map_err(py_error)?
        } else {
            self.installer_for(read_record(venv).as_ref())?
        };
        logfile::append(
            log,
            &format!("# plasma apply at {}\n", fsutil::now_rfc3339()),
        );
        if steps.install_requirements {
            for file in &self.requirements {
                if !file.value.is_file() {
                    return Err(ResourceError::new(format!(
                        "requirements file {} does not exist",
                        file.value.display()
                    ))
                    .help("check the path, or that the resource providing it is applied first (`depends-on`)"));
                }
            }
        }

        let created_here = steps.create && !venv.exists();
        let outcome = (|| {
            self.make_venv(&installer, steps.create, log)?;
            finish_step(installer.uninstall(venv, &steps.uninstall), log)?;
            if steps.install_pins {
                let mut with_restored = spec.clone();
                with_restored.pins.extend(steps.restore.iter().cloned());
                finish_step(installer.install_pins(venv, &with_restored), log)?;
            }
            if steps.install_requirements {
                // The digests are of the bytes the install read: a file
                // edited during the install shows as changed on the next plan.
                let done = finish_step(
                    installer.install_requirements(venv, &spec, &self.requirement_paths()),
                    log,
                )?;
                return Ok(Some(done));
            }
            Ok(None)
        })();
        let installed_requirements = match outcome {
            Ok(o) => o,
            Err(e) => {
                // A venv this apply made from nothing is not left half-made.
                if created_here {
                    let _ = std::fs::remove_dir_all(venv);
                }
                return Err(e);
            }
        };

        let mut record = read_record(venv).unwrap_or_default();
        let mut overridden = Vec::new();
        if let Some(done) = installed_requirements {
            record.requirements = done.read;
            record.requested = done.requested;
            overridden = done.overridden;
        }
        if steps.create || record.installer.is_none() {
            record.installer = Some(RecordedInstaller::of(&installer));
        }
        self.finish_install(&installer, record, log)?;

        let mut outputs = Outputs::new();
        if !overridden.is_empty() {
            let lines: Vec<String> = overridden.iter().map(ToString::to_string).collect();
            logfile::append(
                log,
                &lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
            );
            outputs.insert("overridden".into(), json!(lines));
        }
        Ok(outputs)
    }
}

impl RecordedInstaller {
    fn of(installer: &Installer) -> RecordedInstaller {
        match installer {
            Installer::Pip => RecordedInstaller::Pip,
            Installer::Uv { uv } => RecordedInstaller::Uv { path: uv.clone() },
        }
    }
}

impl Venv {
    /// Creates the venv (replacing one on another interpreter) when
    /// `create`, then gives it pip when it should have it.
    fn make_venv(
        &self,
        installer: &Installer,
        create: bool,
        log: &Path,
    ) -> Result<(), ResourceError> {
        let venv = self.path();
        if create {
            let interpreter = match &self.python.value {
                PythonRequest::Version(v) => find_interpreter(v),
                PythonRequest::Path(p) => find_interpreter(&p.display().to_string()),
            }
            .map_err(py_error)?;
            finish_step(installer.create_venv(&interpreter, venv), log)?;
        }
        if self.seed_pip {
            finish_step(Installer::ensure_pip(venv), log)?;
        }
        Ok(())
    }

    /// Makes the venv hold exactly `entry`: created when `create`, then
    /// what is not in the lock removed (bootstrap packages kept) and every
    /// entry not installed at its version installed without dependencies.
    /// The record then says the spec's files are installed (their contents
    /// are the lock's inputs).
    fn apply_locked(
        &self,
        entry: &LockedVenv,
        create: bool,
        log: &Path,
    ) -> Result<Outputs, ResourceError> {
        let venv = self.path();
        if let Some(p) = entry.packages.iter().find(|p| self.is_forbidden(&p.name)) {
            return Err(ResourceError::new(format!(
                "plasma.lock lists {} {}, which venv.{} forbids",
                p.name, p.version, self.name
            ))
            .help("run `plasma lock --upgrade venv.NAME` to resolve it again"));
        }
        let installer = if create {
            Installer::detect(self.installer).map_err(py_error)?
        } else {
            self.installer_for(read_record(venv).as_ref())?
        };
        logfile::append(
            log,
            &format!(
                "# plasma apply at {} (held to plasma.lock: {})\n",
                fsutil::now_rfc3339(),
                crate::lock::packages_text(entry.packages.len())
            ),
        );
        let created_here = create && !venv.exists();
        let outcome = (|| {
            self.make_venv(&installer, create, log)?;
            let installed = installed_now(venv)?;
            // What the lock does not list goes, except bootstrap packages
            // and what custom nodes put there (they install it again).
            let record = read_record(venv).unwrap_or_default();
            let contributed = |name: &str| {
                record.contributions.values().any(|c| {
                    c.script_installed.contains_key(name)
                        || c.requested.iter().any(|r| r.name == name)
                })
            };
            let uninstall: Vec<String> = installed
                .keys()
                .filter(|name| !BOOTSTRAP.contains(&name.as_str()) && !contributed(name))
                .filter(|name| !entry.packages.iter().any(|p| &p.name == *name))
                .cloned()
                .collect();
            finish_step(installer.uninstall(venv, &uninstall), log)?;
            let wanted = entry
                .packages
                .iter()
                .filter(|p| installed.get(&p.name) != Some(&p.version));
            let exact = self.exact_requirements(wanted);
            finish_step(
                installer.install_exact(venv, &self.package_spec(), &exact),
                log,
            )?;
            Ok::<_, ResourceError>(())
        })();
        if let Err(e) = outcome {
            if created_here {
                let _ = std::fs::remove_dir_all(venv);
            }
            return Err(e);
        }
        let mut record = read_record(venv).unwrap_or_default();
        for path in self.requirement_paths() {
            if let Some(digest) = hash_file(&path)? {
                record.requirements.insert(path, digest);
            }
        }
        if create || record.installer.is_none() {
            record.installer = Some(RecordedInstaller::of(&installer));
        }
        self.finish_install(&installer, record, log)?;
        Ok(Outputs::new())
    }
}

// --------------------------------------------------------------------- kind

#[async_trait]
impl Kind for Venv {
    type Observed = VenvObserved;
    const KIND: &'static str = "venv";

    fn desired(&self) -> Value {
        // IndexUrl serialises redacted: no credential reaches state.
        json!({
            "path": self.path.value,
            "python": self.python.value.text(),
            "installer": self.installer,
            "packages": self.package_spec(),
            "requirements": self.requirement_paths(),
            // The set plasma.lock holds it to (a digest of `name==version`
            // lines): after `plasma lock --upgrade` the venv differs from
            // what was applied because the lock moved, not by drift.
            "locked": self.locked.as_ref().map(|entry| {
                let set: Vec<String> = entry
                    .packages
                    .iter()
                    .map(|p| format!("{}=={}", p.name, p.version))
                    .collect();
                blake3::hash(set.join("\n").as_bytes()).to_hex().to_string()
            }),
        })
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        vec![self.path.value.clone()]
    }

    async fn observe(&self, _cx: &ObserveContext<'_>) -> Result<VenvObserved, ResourceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.observe_blocking())
            .await
            .map_err(|e| ResourceError::new(format!("observing the venv failed: {e}")))?
    }

    fn diff(&self, observed: &VenvObserved, _prior: Option<&ResourceState>) -> Diff {
        let Some(venv) = observed.present() else {
            let mut diff =
                self.creation_attributes(Diff::new(Action::Create, "the venv does not exist"));
            if let Some(entry) = self.locked.as_ref().filter(|_| observed.held) {
                diff = diff.attribute(
                    "packages",
                    None,
                    Some(format!(
                        "{} exactly as plasma.lock lists them",
                        crate::lock::packages_text(entry.packages.len())
                    )),
                );
            }
            return diff;
        };
        if let Some(found) = &observed.python_mismatch {
            let mut diff = Diff::new(
                Action::Replace,
                format!(
                    "the venv was built on {found}; the spec asks for {}",
                    self.python.value.text()
                ),
            )
            .attribute(
                "python",
                venv.python_version.map(|v| v.to_string()),
                Some(self.python.value.text()),
            );
            diff.warnings.push(format!(
                "{} will be deleted and rebuilt; packages installed in it by hand are lost",
                self.path.value.display()
            ));
            return diff;
        }
        let d = self.differences(venv, observed);
        if !d.any() {
            return Diff::no_op();
        }
        let mut reasons: Vec<String> = Vec::new();
        let mut diff = Diff::new(Action::Update, "");
        for (name, found, pinned) in &d.pins {
            diff = diff.attribute(name, found.clone(), Some(pinned.clone()));
        }
        if !d.pins.is_empty() {
            reasons.push(match d.pins.as_slice() {
                [(name, None, _)] => format!("{name} is not installed"),
                [(name, Some(_), _)] => format!("{name} is off its pin"),
                many => format!("{} pins to install", many.len()),
            });
        }
        for (name, version) in &d.forbidden {
            diff = diff.attribute(&format!("{name} (forbidden)"), Some(version.clone()), None);
        }
        if !d.forbidden.is_empty() {
            let names: Vec<&str> = d.forbidden.iter().map(|(n, _)| n.as_str()).collect();
            reasons.push(format!("forbidden {} installed", names.join(", ")));
        }
        for (name, version) in &d.extra {
            diff = diff.attribute(
                &format!("{name} (installed outside plasma)"),
                Some(version.clone()),
                None,
            );
        }
        let held = self.locked.as_ref().filter(|_| observed.held);
        for (name, found, recorded) in &d.moved {
            if let Some(p) = held.and_then(|e| e.packages.iter().find(|p| &p.name == name)) {
                reasons.push(format!(
                    "{name}: {} -> {} (locked {})",
                    p.version,
                    found.as_deref().unwrap_or("removed"),
                    p.version
                ));
            }
            let label = match found {
                Some(_) => format!("{name} (changed outside plasma)"),
                None => format!("{name} (removed outside plasma)"),
            };
            diff = diff.attribute(&label, found.clone(), Some(recorded.clone()));
        }
        if !d.extra.is_empty() || !d.moved.is_empty() {
            reasons.push(format!(
                "{} package{} changed outside plasma",
                d.extra.len() + d.moved.len(),
                if d.extra.len() + d.moved.len() == 1 {
                    ""
                } else {
                    "s"
                }
            ));
        }
        for (name, found, locked) in &d.locked {
            diff = diff.attribute(name, found.clone(), Some(format!("{locked} (locked)")));
            // Installed as plasma last left it (or by someone else, with no
            // record): the lock is what moved.
            reasons.push(match found {
                Some(found) => format!("{name}: {found} -> {locked} (plasma.lock)"),
                None => format!("{name} (locked {locked}) is not installed"),
            });
        }
        for (name, version) in &d.not_locked {
            diff = diff.attribute(
                &format!("{name} (not in plasma.lock)"),
                Some(version.clone()),
                None,
            );
        }
        if !d.not_locked.is_empty() {
            reasons.push(format!(
                "{} not in plasma.lock",
                crate::lock::packages_text(d.not_locked.len())
            ));
        }
        for note in &d.requirements {
            diff = diff.attribute(note, None, None);
        }
        reasons.extend(d.requirements.iter().cloned());
        if d.no_pip {
            diff = diff.attribute(
                "pip",
                None,
                Some("the interpreter's own (ensurepip)".into()),
            );
            reasons
                .push("pip is not in the venv (install scripts and ComfyUI-Manager run it)".into());
        }
        if !d.broken.is_empty() {
            for broken in &d.broken {
                diff = diff.attribute(&format!("broken: {broken}"), None, None);
            }
            reasons.push(format!(
                "the venv is broken ({} problem{} found by the consistency check)",
                d.broken.len(),
                if d.broken.len() == 1 { "" } else { "s" }
            ));
            diff.warnings.push(
                "apply checks the venv again and fails while it is broken; change the requirements that conflict".into(),
            );
        }
        if d.unrecorded {
            reasons.push("plasma has no record of what is installed in this venv".into());
            diff.warnings.push(
                "the packages already in this venv are kept and recorded as they are after apply"
                    .into(),
            );
        }
        diff.reason = reasons.join("; ");
        diff
    }

    async fn apply(
        &self,
        observed: &VenvObserved,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        let steps = self.steps(observed);
        let log = cx.log_file();
        let this = self.clone();
        let log_path = log.clone();
        let outputs = tokio::task::spawn_blocking(move || this.apply_blocking(steps, &log_path))
            .await
            .map_err(|e| ResourceError::new(format!("installing into the venv failed: {e}")))??;
        // Say on the terminal which requirement lines the pins overrode.
        if let Some(lines) = outputs.get("overridden").and_then(Value::as_array) {
            for line in lines.iter().filter_map(Value::as_str) {
                let text = format!("{}: {line}", cx.address);
                if cx.bars.is_hidden() {
                    println!("{text}");
                } else {
                    let _ = cx.bars.println(text);
                }
            }
        }
        Ok(outputs)
    }

    fn outputs(&self, observed: &VenvObserved) -> Outputs {
        let mut out = Outputs::new();
        if let Some(v) = observed.present().and_then(|venv| venv.python_version) {
            out.insert("python_version".into(), json!(v.to_string()));
        }
        if let Some(record) = &observed.record {
            out.insert("installed".into(), json!(record.installed));
            out.insert("requirements".into(), json!(record.requirements));
        }
        out
    }

    fn resolve(&mut self, others: &Others<'_>) {
        // A custom node with an install script runs pip in this venv.
        let me = format!("{}.{}", Self::KIND, self.name);
        self.seed_pip |= others
            .resources
            .iter()
            .filter_map(|(_, r)| r.as_any().downcast_ref::<CustomNode>())
            .any(|node| node.install_script && node.venv_ref.address.to_string() == me);
    }

    fn lint(&self, cx: &LintContext<'_>) -> Vec<Lint> {
        let pins = self
            .pins
            .iter()
            .map(|p| (normalize_name(&p.pin.name), p.span));
        let files = self
            .requirements
            .iter()
            .map(|r| (r.value.as_path(), r.span));
        lint::cuda_only_packages(pins, files, cx)
    }
}

impl Venv {
    fn observe_blocking(&self) -> Result<VenvObserved, ResourceError> {
        let venv = observe_venv(self.path())
            .map_err(|e| py_error(e).help("move it away or point `path` at another folder"))?;
        let python_mismatch = match &venv {
            VenvObservation::Present(v) => python_mismatch(&self.python.value, v),
            VenvObservation::Missing => None,
        };
        let record = match &venv {
            VenvObservation::Present(_) => read_record(self.path()),
            VenvObservation::Missing => None,
        };
        // The spec's files, then every file the last install read through them.
        let mut paths = self.requirement_paths();
        if let Some(record) = &record {
            for path in record.requirements.keys() {
                if !paths.contains(path) {
                    paths.push(path.clone());
                }
            }
        }
        let requirements: Vec<RequirementsFile> = paths
            .into_iter()
            .map(|path| {
                let blake3 = hash_file(&path)?;
                Ok(RequirementsFile { path, blake3 })
            })
            .collect::<Result<_, ResourceError>>()?;
        let broken = match (&venv, &record) {
            (VenvObservation::Present(v), Some(record)) if python_mismatch.is_none() => {
                if v.packages == record.installed {
                    record.broken.clone()
                } else {
                    // The installed set changed since the last check: run it again.
                    self.installer_for(Some(record))
                        .and_then(|i| i.check(self.path()).map_err(py_error))
                        .map(|b| explain_broken(record, &b, &self.pinned_names()))
                        .unwrap_or_default()
                }
            }
            _ => Vec::new(),
        };
        // Whether the lock holds it, from the digests and record just read.
        let digests: BTreeMap<&Path, &Option<String>> = requirements
            .iter()
            .map(|f| (f.path.as_path(), &f.blake3))
            .collect();
        let held = self
            .held_with(
                &|path| digests.get(path).and_then(|d| (*d).clone()),
                record.as_ref(),
            )
            .is_some();
        Ok(VenvObserved {
            venv,
            python_mismatch,
            requirements,
            record,
            broken,
            held,
        })
    }
}
