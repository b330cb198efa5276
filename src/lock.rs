//! `plasma.lock`: what every resource resolved to, beside the spec and meant
//! to be committed with it, so that a second machine (or this one months
//! later) converges to the same environment.
//!
//! The file is TOML, `version = 1` first, then one table per resource in
//! address order (`[venv.comfyui]`, `[repo.comfyui]`, `[custom-node.x]`,
//! `[model.x]`). A venv's distributions are one inline table per line, sorted
//! by name, so a change reads as a one-line diff. Every URL in it is
//! redacted ([`crate::redact::redact_url`]): a lock holds no secret.
//!
//! This module owns the format, reading (with a clear error for a damaged
//! file or one written by a newer plasma), writing (atomically, and only
//! when the text changes) and the comparison of two locks for the plan.
//! What each kind records and how it holds to its entry live in the kind's
//! own file; [`crate::lockfile`] glues them to the engine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The lock's file name, beside the spec.
pub const LOCK_FILE: &str = "plasma.lock";

/// The format this plasma reads and writes.
pub const LOCK_VERSION: u32 = 1;

/// The whole lock. `Lock::default()` is an empty lock of the current version.
/// A table it does not know is an error (a newer format says so by its
/// `version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    #[serde(default)]
    pub venv: BTreeMap<String, LockedVenv>,
    #[serde(default)]
    pub repo: BTreeMap<String, LockedCheckout>,
    #[serde(default, rename = "custom-node")]
    pub custom_node: BTreeMap<String, LockedCheckout>,
    #[serde(default)]
    pub model: BTreeMap<String, LockedModel>,
}

/// A venv's resolved set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedVenv {
    /// BLAKE3 of the spec's inputs for this venv (requirements files'
    /// contents, pins, indexes redacted, find-links, forbids, Python request,
    /// platform): the entry applies while they are unchanged.
    pub inputs: String,
    /// The Python version it was resolved for (`3.11.7` after an apply,
    /// the spec's `3.11` after `plasma lock`).
    pub python: String,
    /// The platform it was resolved for, `os-arch` (`macos-aarch64`).
    pub platform: String,
    /// What resolved it: `apply` (the installed set) or `uv pip compile`.
    #[serde(default)]
    pub resolver: String,
    /// Every distribution, sorted by name.
    #[serde(default)]
    pub packages: Vec<LockedPackage>,
}

/// One distribution in a venv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedPackage {
    /// Normalised name (PEP 503).
    pub name: String,
    pub version: String,
    /// Where it came from: an index URL, `find-links`, a path or VCS URL
    /// (`git+https://…@commit`); redacted. Absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A URL or path to install it from instead of an index (`name @ url`):
    /// set for path, archive and VCS installs; `-e file://path` for an
    /// editable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<String>,
    /// `sha256:<hex>` of every artifact the resolver listed for this
    /// version (wheels for each platform, the sdist); empty when the
    /// installer reported none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hashes: Vec<String>,
}

/// A repo's or custom node's resolved commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedCheckout {
    /// The spec's URL, redacted.
    pub url: String,
    /// The spec's `rev` when it was resolved.
    pub rev: String,
    /// The commit `rev` named then.
    pub commit: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub submodules: Vec<LockedSubmodule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedSubmodule {
    pub path: String,
    pub commit: String,
}

/// A model's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedModel {
    /// The first URL, redacted (or the local `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub sha256: String,
}

/// Reading the lock failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a lock plasma can read: {detail}. Fix it from version control, or delete it and run `plasma lock` to write a new one"
    )]
    Malformed { path: PathBuf, detail: String },
    #[error(
        "{path} has lock format version {found}, newer than this plasma reads (version {LOCK_VERSION}); upgrade plasma, or delete the lock and run `plasma lock`"
    )]
    Newer { path: PathBuf, found: i64 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A full SHA-1 or SHA-256 commit hash, as git prints it.
fn is_full_commit(commit: &str) -> bool {
    matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The lock beside a spec folder.
pub fn path_beside(spec_dir: &Path) -> PathBuf {
    spec_dir.join(LOCK_FILE)
}

impl Default for Lock {
    fn default() -> Lock {
        Lock {
            version: LOCK_VERSION,
            venv: BTreeMap::new(),
            repo: BTreeMap::new(),
            custom_node: BTreeMap::new(),
            model: BTreeMap::new(),
        }
    }
}

impl Lock {
    /// Reads `path`; `Ok(None)` when there is no lock. One file read and a
    /// TOML parse: cheap enough for every plan.
    pub fn read(path: &Path) -> Result<Option<Lock>, LockError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if crate::fsutil::is_absent(&e) => return Ok(None),
            Err(e) => {
                return Err(LockError::Io {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        };
        Lock::parse(path, &text).map(Some)
    }

    /// Parses a lock's bytes (`path` names it in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Lock, LockError> {
        let malformed = |detail: String| LockError::Malformed {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| malformed(format!("not UTF-8 ({e})")))?;
        // The version first: a newer format may not parse as this one.
        let table: toml::Table = toml::from_str(text).map_err(|e| malformed(one_line(&e)))?;
        match table.get("version") {
            Some(toml::Value::Integer(v)) if *v > i64::from(LOCK_VERSION) => {
                return Err(LockError::Newer {
                    path: path.to_path_buf(),
                    found: *v,
                });
            }
            Some(toml::Value::Integer(v)) if *v == i64::from(LOCK_VERSION) => {}
            Some(other) => return Err(malformed(format!("`version = {other}` is not 1"))),
            None => return Err(malformed("it has no `version`".into())),
        }
        let lock: Lock = toml::from_str(text).map_err(|e| malformed(one_line(&e)))?;
        let checkouts = [("repo", &lock.repo), ("custom-node", &lock.custom_node)];
        for (kind, entries) in checkouts {
            for (name, entry) in entries {
                let commits = std::iter::once(&entry.commit)
                    .chain(entry.submodules.iter().map(|s| &s.commit));
                if let Some(bad) = commits.into_iter().find(|c| !is_full_commit(c)) {
                    return Err(malformed(format!(
                        "{kind}.{name} has `{bad}` where a full commit hash (40 or 64 hex digits) belongs"
                    )));
                }
            }
        }
        Ok(lock)
    }

    /// The lock as text: deterministic (sorted, one distribution per line).
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# plasma.lock: what plasma resolved for plasma.kdl. Written by `plasma apply`\n\
             # and `plasma lock`; commit it with the spec. Do not edit by hand.\n",
        );
        let _ = writeln!(out, "version = {}", self.version);
        for (name, venv) in &self.venv {
            let _ = writeln!(out, "\n[venv.{}]", key(name));
            let _ = writeln!(out, "inputs = {}", string(&venv.inputs));
            let _ = writeln!(out, "python = {}", string(&venv.python));
            let _ = writeln!(out, "platform = {}", string(&venv.platform));
            let _ = writeln!(out, "resolver = {}", string(&venv.resolver));
            out.push_str("packages = [\n");
            let mut packages = venv.packages.clone();
            packages.sort_by(|a, b| a.name.cmp(&b.name));
            for p in &packages {
                let _ = writeln!(out, "    {},", inline(p));
            }
            out.push_str("]\n");
        }
        for (kind, table) in [("repo", &self.repo), ("custom-node", &self.custom_node)] {
            for (name, checkout) in table {
                let _ = writeln!(out, "\n[{kind}.{}]", key(name));
                let _ = writeln!(out, "url = {}", string(&checkout.url));
                let _ = writeln!(out, "rev = {}", string(&checkout.rev));
                let _ = writeln!(out, "commit = {}", string(&checkout.commit));
                if !checkout.submodules.is_empty() {
                    out.push_str("submodules = [\n");
                    let mut subs = checkout.submodules.clone();
                    subs.sort_by(|a, b| a.path.cmp(&b.path));
                    for s in &subs {
                        let _ = writeln!(out, "    {},", inline(s));
                    }
                    out.push_str("]\n");
                }
            }
        }
        for (name, model) in &self.model {
            let _ = writeln!(out, "\n[model.{}]", key(name));
            if let Some(url) = &model.url {
                let _ = writeln!(out, "url = {}", string(url));
            }
            let _ = writeln!(out, "sha256 = {}", string(&model.sha256));
        }
        out
    }

    /// Writes the lock atomically when its text differs from what `path`
    /// holds; returns whether it wrote.
    pub fn write(&self, path: &Path) -> Result<bool, LockError> {
        let text = self.render();
        if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(false);
        }
        crate::fsutil::write_atomic(path, text.as_bytes(), None).map_err(|e| LockError::Write {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(true)
    }

    /// How many entries the lock has.
    pub fn len(&self) -> usize {
        self.venv.len() + self.repo.len() + self.custom_node.len() + self.model.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A TOML basic string, quoted and escaped.
fn string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A table key: bare when it can be, quoted otherwise.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare { name.to_string() } else { string(name) }
}

/// A struct as a one-line inline table, fields in declaration order.
fn inline<T: Serialize>(value: &T) -> String {
    let value = toml::Value::try_from(value).expect("lock entries serialise");
    let toml::Value::Table(table) = value else {
        unreachable!("lock entries are tables")
    };
    let fields: Vec<String> = table
        .iter()
        .map(|(k, v)| format!("{} = {}", key(k), v))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

fn one_line(e: &toml::de::Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line of the plan's lock section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockChange {
    /// The resource's address.
    pub address: String,
    /// `+` added, `-` removed, `~` changed.
    pub symbol: String,
    /// What changes, in words (`143 packages`, `numpy 1.26.4 -> 2.1.0`).
    pub detail: String,
}

/// What changes from lock `old` to lock `new`, entry by entry; a venv's
/// changed distributions are one line each.
pub fn changes(old: &Lock, new: &Lock) -> Vec<LockChange> {
    let mut out = Vec::new();
    let line = |address: String, symbol: &str, detail: String| LockChange {
        address,
        symbol: symbol.into(),
        detail,
    };
    for (name, entry) in &new.venv {
        let address = format!("venv.{name}");
        let Some(was) = old.venv.get(name) else {
            out.push(line(address, "+", packages_text(entry.packages.len())));
            continue;
        };
        let before: BTreeMap<&str, &str> = was
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        let after: BTreeMap<&str, &str> = entry
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        for (package, version) in &after {
            match before.get(package) {
                None => out.push(line(address.clone(), "+", format!("{package} {version}"))),
                Some(v) if v != version => out.push(line(
                    address.clone(),
                    "~",
                    format!("{package} {v} -> {version}"),
                )),
                Some(_) => {}
            }
        }
        for (package, version) in &before {
            if !after.contains_key(package) {
                out.push(line(address.clone(), "-", format!("{package} {version}")));
            }
        }
        if was.inputs != entry.inputs && before == after {
            out.push(line(address, "~", "inputs (same packages)".into()));
        }
    }
    for name in old.venv.keys().filter(|n| !new.venv.contains_key(*n)) {
        out.push(line(format!("venv.{name}"), "-", "removed".into()));
    }
    for (kind, new_table, old_table) in [
        ("repo", &new.repo, &old.repo),
        ("custom-node", &new.custom_node, &old.custom_node),
    ] {
        for (name, entry) in new_table {
            let address = format!("{kind}.{name}");
            match old_table.get(name) {
                None => out.push(line(
                    address,
                    "+",
                    format!("{} at {}", entry.rev, short(&entry.commit)),
                )),
                Some(was) if was != entry => out.push(line(
                    address,
                    "~",
                    format!(
                        "{} {} -> {} {}",
                        was.rev,
                        short(&was.commit),
                        entry.rev,
                        short(&entry.commit)
                    ),
                )),
                Some(_) => {}
            }
        }
        for name in old_table.keys().filter(|n| !new_table.contains_key(*n)) {
            out.push(line(format!("{kind}.{name}"), "-", "removed".into()));
        }
    }
    for (name, entry) in &new.model {
        let address = format!("model.{name}");
        match old.model.get(name) {
            None => out.push(line(
                address,
                "+",
                format!("sha256 {}", short(&entry.sha256)),
            )),
            Some(was) if was != entry => out.push(line(
                address,
                "~",
                format!("sha256 {} -> {}", short(&was.sha256), short(&entry.sha256)),
            )),
            Some(_) => {}
        }
    }
    for name in old.model.keys().filter(|n| !new.model.contains_key(*n)) {
        out.push(line(format!("model.{name}"), "-", "removed".into()));
    }
    out
}

/// `143 packages`
pub fn packages_text(n: usize) -> String {
    format!("{n} package{}", if n == 1 { "" } else { "s" })
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lock {
        let mut lock = Lock::default();
        lock.venv.insert(
            "comfy ui".into(),
            LockedVenv {
                inputs: "abc".into(),
                python: "3.11".into(),
                platform: "linux-x86_64".into(),
                resolver: "apply".into(),
                packages: vec![
                    LockedPackage {
                        name: "zeta".into(),
                        version: "1.0".into(),
                        source: Some("https://***@host/simple".into()),
                        direct: None,
                        hashes: vec!["sha256:00".into()],
                    },
                    LockedPackage {
                        name: "alpha".into(),
                        version: "2.0\"x".into(),
                        source: None,
                        direct: None,
                        hashes: Vec::new(),
                    },
                ],
            },
        );
        lock.repo.insert(
            "comfyui".into(),
            LockedCheckout {
                url: "https://example.com/c.git".into(),
                rev: "v1".into(),
                commit: "0123456789abcdef0123456789abcdef01234567".into(),
                submodules: vec![LockedSubmodule {
                    path: "sub".into(),
                    commit: "fedcba9876543210fedcba9876543210fedcba98".into(),
                }],
            },
        );
        lock
    }

    #[test]
    fn renders_sorted_one_package_per_line_and_reads_back() {
        let lock = sample();
        let text = lock.render();
        assert!(text.contains("[venv.\"comfy ui\"]"), "{text}");
        let alpha = text.find("name = \"alpha\"").unwrap();
        let zeta = text.find("name = \"zeta\"").unwrap();
        assert!(alpha < zeta, "{text}");
        assert!(
            text.contains(
                "    { name = \"zeta\", version = \"1.0\", source = \"https://***@host/simple\", hashes = [\"sha256:00\"] },\n"
            ),
            "{text}"
        );
        let back = Lock::parse(Path::new("plasma.lock"), text.as_bytes()).unwrap();
        assert_eq!(back.render(), text);
        assert_eq!(back.repo, lock.repo);
    }

    #[test]
    fn newer_and_malformed_locks_are_clear_errors() {
        let newer = Lock::parse(Path::new("p.lock"), b"version = 2\n").unwrap_err();
        assert!(
            newer.to_string().contains("newer than this plasma"),
            "{newer}"
        );
        let broken = Lock::parse(Path::new("p.lock"), b"version = 1\n[venv.x\n").unwrap_err();
        assert!(
            broken.to_string().contains("not a lock plasma can read"),
            "{broken}"
        );
        let none = Lock::parse(Path::new("p.lock"), b"[repo]\n").unwrap_err();
        assert!(none.to_string().contains("no `version`"), "{none}");
    }

    #[test]
    fn changes_name_each_moved_package() {
        let old = sample();
        let mut new = sample();
        new.venv.get_mut("comfy ui").unwrap().packages[0].version = "1.1".into();
        let lines = changes(&old, &new);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].detail, "zeta 1.0 -> 1.1");
        let lines = changes(&Lock::default(), &new);
        assert!(lines.iter().any(|l| l.detail == "2 packages"), "{lines:?}");
    }
}
