//! Locked sets: installing exactly the versions a lock lists, and resolving
//! a venv's inputs into such a set with `uv pip compile` for any platform
//! and Python version (the lock's job, see `crate::lock`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::installer::{Sources, WorkDir};
use super::names::normalize_name;
use super::process::run;
use super::{IndexUrl, InstallLog, Installer, PackageSpec, PyError};
use crate::redact::redact_url;

/// One distribution to install at an exact version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactRequirement {
    pub name: String,
    pub version: String,
    /// Install from this URL (`name @ url`) instead of an index;
    /// `-e file://path` for an editable install.
    pub direct: Option<String>,
    /// `sha256:<hex>` values the artifact must match (any one of them).
    pub hashes: Vec<String>,
    /// The pin's own index, when the spec pins this package to one.
    pub index: Option<IndexUrl>,
}

impl ExactRequirement {
    /// The requirements-file line: `name==version` or `name @ url`, then
    /// `--hash` options when `with_hashes`.
    fn line(&self, with_hashes: bool) -> String {
        let mut line = match &self.direct {
            Some(editable) if editable.starts_with("-e ") => return editable.clone(),
            Some(url) => format!("{} @ {url}", self.name),
            None => format!("{}=={}", self.name, self.version),
        };
        if with_hashes {
            for hash in &self.hashes {
                line.push_str(&format!(" --hash={hash}"));
            }
        }
        line
    }
}

impl Installer {
    /// Installs exactly `requirements`, without resolving dependencies
    /// (`--no-deps`: the lock lists every one). Requirements with their own
    /// index install in one run each that sees only that index; the rest
    /// from the venv's index and find-links. A run's hashes are checked
    /// (pip's hash-checking mode; uv verifies given hashes) when every line
    /// in it has one, as pip requires of hash-checking mode.
    pub fn install_exact(
        &self,
        venv: &Path,
        spec: &PackageSpec,
        requirements: &[ExactRequirement],
    ) -> Result<InstallLog, PyError> {
        let mut log = InstallLog::default();
        if requirements.is_empty() {
            return Ok(log);
        }
        let scrubber = spec.scrubber();
        let work = WorkDir::new()?;
        let mut groups: BTreeMap<Option<&IndexUrl>, Vec<&ExactRequirement>> = BTreeMap::new();
        for r in requirements {
            groups.entry(r.index.as_ref()).or_default().push(r);
        }
        for (i, (index, group)) in groups.iter().enumerate() {
            let sources = Sources {
                index: index.or(spec.index.as_ref()),
                extra_indexes: Vec::new(),
                find_links: if index.is_some() {
                    Vec::new()
                } else {
                    spec.find_links.iter().collect()
                },
            };
            let hashed = group.iter().all(|r| !r.hashes.is_empty());
            let text: String = group.iter().map(|r| r.line(hashed) + "\n").collect();
            let file = work.path().join(format!("locked-{i}.txt"));
            std::fs::write(&file, text).map_err(|e| PyError::io("write", &file, e))?;
            let mut cmd = self.base_command(venv, &sources);
            cmd.args(["--no-deps", "-r"]).arg(&file);
            let done = run(&mut cmd, &scrubber)?;
            log.record(done.command, &done.output);
        }
        Ok(log)
    }
}

/// A distribution as a resolver found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPackage {
    /// Normalised name.
    pub name: String,
    pub version: String,
    /// Index URL, find-links location, path or VCS URL; redacted.
    pub source: Option<String>,
    /// For path, archive and VCS distributions: what to install (redacted).
    pub direct: Option<String>,
    /// `sha256:<hex>` of every artifact listed for this version, sorted.
    pub hashes: Vec<String>,
}

/// What to resolve for: a Python version (`3.11`) and uv's
/// `--python-platform` target (`aarch64-apple-darwin`).
#[derive(Debug, Clone)]
pub struct ResolveTarget {
    pub python_version: String,
    pub python_platform: String,
}

/// Resolves a venv's inputs with `uv pip compile --format pylock.toml`
/// (PEP 751, as uv 0.8 and later write it) for `target`, without a venv
/// and without installing: the requirements `files`, plus `extra` lines
/// (`name==version`), with every pin both required and an override (a pin
/// wins over any requirement, as it does at install). Pins with their own
/// index add it as an index searched before the venv's (uv's default
/// first-index strategy), with the venv's find-links. Needs the network
/// (or the indexes) the spec names.
pub fn resolve_with_uv(
    uv: &Path,
    spec: &PackageSpec,
    files: &[PathBuf],
    extra: &[String],
    target: &ResolveTarget,
) -> Result<Vec<ResolvedPackage>, PyError> {
    let scrubber = spec.scrubber();
    let work = WorkDir::new()?;
    let overrides = work.path().join("overrides.txt");
    let pins: String = spec.pins.iter().map(|p| p.requirement() + "\n").collect();
    std::fs::write(&overrides, &pins).map_err(|e| PyError::io("write", &overrides, e))?;
    let input = work.path().join("input.txt");
    let mut text = pins;
    for file in files {
        text.push_str(&format!("-r {}\n", file.display()));
    }
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&input, text).map_err(|e| PyError::io("write", &input, e))?;
    let output = work.path().join("pylock.toml");

    let mut cmd = Command::new(uv);
    cmd.args([
        "pip",
        "compile",
        "--quiet",
        // What the indexes hold now, not what a cache remembers.
        "--refresh",
        "--no-header",
        "--format",
        "pylock.toml",
        "--python-version",
        &target.python_version,
        "--python-platform",
        &target.python_platform,
        "--override",
    ])
    .arg(&overrides)
    .arg("-o")
    .arg(&output)
    .arg(&input)
    .env_remove("UV_INDEX_URL")
    .env_remove("UV_EXTRA_INDEX_URL");
    // Sources go in the environment, not the arguments (`ps` shows arguments).
    if let Some(index) = &spec.index {
        cmd.env("UV_DEFAULT_INDEX", index.expose());
    }
    let own: Vec<&str> = spec
        .pins
        .iter()
        .flat_map(|p| [&p.index, &p.extra_index])
        .flatten()
        .map(IndexUrl::expose)
        .collect();
    match own.is_empty() {
        true => cmd.env_remove("UV_INDEX"),
        false => cmd.env("UV_INDEX", own.join(" ")),
    };
    match spec.find_links.is_empty() {
        true => cmd.env_remove("UV_FIND_LINKS"),
        false => cmd.env(
            "UV_FIND_LINKS",
            spec.find_links
                .iter()
                .map(IndexUrl::expose)
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    if let Some(dir) = files.first().and_then(|f| f.parent()) {
        cmd.current_dir(dir);
    }
    run(&mut cmd, &scrubber)?;
    let text = std::fs::read_to_string(&output).map_err(|e| PyError::io("read", &output, e))?;
    parse_pylock(&text)
}

/// Reads the packages of a PEP 751 `pylock.toml`.
pub fn parse_pylock(text: &str) -> Result<Vec<ResolvedPackage>, PyError> {
    let bad = |detail: String| PyError::BadReport { detail };
    let doc: toml::Table =
        toml::from_str(text).map_err(|e| bad(format!("uv's pylock.toml does not parse: {e}")))?;
    let packages = doc
        .get("packages")
        .and_then(toml::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for package in packages {
        let str_of = |t: &toml::Value, key: &str| {
            t.get(key).and_then(toml::Value::as_str).map(str::to_string)
        };
        let (Some(name), Some(version)) = (str_of(&package, "name"), str_of(&package, "version"))
        else {
            // A directory or VCS package may have no version: not lockable by version.
            let name = str_of(&package, "name").unwrap_or_default();
            return Err(bad(format!(
                "package `{name}` in uv's resolution has no version"
            )));
        };
        let mut hashes: Vec<String> = Vec::new();
        let mut urls: Vec<String> = Vec::new();
        let wheels = package
            .get("wheels")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let artifacts = wheels
            .iter()
            .chain(package.get("sdist"))
            .chain(package.get("archive"));
        for artifact in artifacts {
            if let Some(sha) = artifact
                .get("hashes")
                .and_then(|h| h.get("sha256"))
                .and_then(toml::Value::as_str)
            {
                hashes.push(format!("sha256:{sha}"));
            }
            if let Some(url) = str_of(artifact, "url") {
                urls.push(url);
            }
        }
        hashes.sort();
        hashes.dedup();
        let vcs = package.get("vcs").map(|v| {
            format!(
                "git+{}@{}",
                str_of(v, "url").unwrap_or_default(),
                str_of(v, "commit-id").unwrap_or_default()
            )
        });
        let directory = package
            .get("directory")
            .and_then(|d| str_of(d, "path"))
            .map(|p| format!("file://{p}"));
        let archive = package.get("archive").and_then(|a| str_of(a, "url"));
        let direct = vcs.or(directory).or(archive).map(|u| redact_url(&u));
        let source = str_of(&package, "index")
            .or_else(|| direct.clone())
            .or_else(|| {
                // From find-links: the folder the wheels were found in.
                urls.first()
                    .and_then(|u| u.rsplit_once('/'))
                    .map(|(dir, _)| dir.to_string())
            })
            .map(|u| redact_url(&u));
        out.push(ResolvedPackage {
            name: normalize_name(&name),
            version,
            source,
            direct,
            hashes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pylock_packages_become_resolved_packages() {
        let text = r#"
lock-version = "1.0"
[[packages]]
name = "Plat_Lib"
version = "2.0"
index = "https://alice:s3cret@example.com/simple"
wheels = [
  { url = "https://example.com/files/plat-2.0-py3-none-macosx_11_0_arm64.whl", hashes = { sha256 = "bb" } },
  { url = "https://example.com/files/plat-2.0-py3-none-any.whl", hashes = { sha256 = "aa" } },
]
[[packages]]
name = "local"
version = "1.0"
wheels = [{ url = "file:///wheels/local-1.0-py3-none-any.whl", hashes = { sha256 = "cc" } }]
"#;
        let packages = parse_pylock(text).unwrap();
        assert_eq!(packages[1].name, "plat-lib");
        assert_eq!(packages[1].hashes, vec!["sha256:aa", "sha256:bb"]);
        assert_eq!(
            packages[1].source.as_deref(),
            Some("https://***@example.com/simple")
        );
        assert_eq!(packages[0].source.as_deref(), Some("file:///wheels"));
        assert_eq!(packages[0].direct, None);
    }

    #[test]
    fn exact_lines_carry_hashes_only_when_asked() {
        let r = ExactRequirement {
            name: "helper".into(),
            version: "1.0".into(),
            direct: None,
            hashes: vec!["sha256:aa".into()],
            index: None,
        };
        assert_eq!(r.line(false), "helper==1.0");
        assert_eq!(r.line(true), "helper==1.0 --hash=sha256:aa");
        let editable = ExactRequirement {
            direct: Some("-e file:///src/library".into()),
            hashes: Vec::new(),
            ..r
        };
        assert_eq!(editable.line(false), "-e file:///src/library");
    }
}
