//! Preparing requirements files so that a venv's pins win over them.
//!
//! The pins are passed to the installer as constraints, which stops any
//! requirement *moving* a pinned package. But a line that names a pinned
//! package directly with an incompatible specifier (a custom node's
//! `torch>=2.6` against `torch==2.5.1`) would then make the whole install
//! fail. The user's pin is the statement of intent, so such lines are
//! commented out in a private copy of the file and reported as overridden;
//! the resulting venv keeps the pin and the rest of the file is installed.
//! A package that *depends* on a newer pinned version still fails the
//! install with the installer's conflict message: installing it would break
//! it, and that is for the user to decide.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PyError;
use super::names::normalize_name;

/// A requirements-file line that was not passed to the installer because a
/// pin names the same package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverriddenRequirement {
    pub file: PathBuf,
    /// The requirement as written, e.g. `torch>=2.6`.
    pub requirement: String,
    /// The pin that holds instead, e.g. `torch==2.5.1`.
    pub pinned: String,
}

impl std::fmt::Display for OverriddenRequirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pin {} holds over `{}` in {}",
            self.pinned,
            self.requirement,
            self.file.display()
        )
    }
}

/// Writes filtered copies of `files` (and of the files they include with
/// `-r`) into `out_dir`; returns the copies to pass with `-r`, and the
/// overridden lines. `pins` maps normalised name -> pinned version.
pub(crate) fn prepare(
    files: &[PathBuf],
    pins: &BTreeMap<String, String>,
    out_dir: &Path,
) -> Result<(Vec<PathBuf>, Vec<OverriddenRequirement>), PyError> {
    let mut state = Filter {
        pins,
        out_dir,
        written: 0,
        visited: HashSet::new(),
        overridden: Vec::new(),
    };
    let mut copies = Vec::new();
    for file in files {
        copies.push(state.filter_file(file)?);
    }
    Ok((copies, state.overridden))
}

struct Filter<'a> {
    pins: &'a BTreeMap<String, String>,
    out_dir: &'a Path,
    written: usize,
    visited: HashSet<PathBuf>,
    overridden: Vec<OverriddenRequirement>,
}

impl Filter<'_> {
    fn filter_file(&mut self, file: &Path) -> Result<PathBuf, PyError> {
        let bad = |detail: String| PyError::BadRequirements {
            path: file.to_path_buf(),
            detail,
        };
        let canonical = file.canonicalize().map_err(|e| bad(e.to_string()))?;
        if !self.visited.insert(canonical.clone()) {
            return Err(bad("it includes itself (through `-r`)".into()));
        }
        let text = std::fs::read_to_string(&canonical).map_err(|e| bad(e.to_string()))?;
        let base = canonical.parent().unwrap_or(Path::new("/")).to_path_buf();

        let mut out = String::new();
        for line in logical_lines(&text) {
            let content = strip_comment(&line).trim();
            if content.is_empty() {
                continue;
            }
            if let Some((option, target)) = split_include(content) {
                // Included files are filtered too; constraint files only
                // need their path made absolute (our copy lives elsewhere).
                let target_path = base.join(target);
                let target_path = if option == "-r" {
                    self.filter_file(&target_path)?
                } else {
                    target_path
                };
                out.push_str(&format!("{option} {}\n", target_path.display()));
                continue;
            }
            if let Some(name) = requirement_name(content)
                && let Some(version) = self.pins.get(&normalize_name(name))
            {
                self.overridden.push(OverriddenRequirement {
                    file: file.to_path_buf(),
                    requirement: content.to_string(),
                    pinned: format!("{}=={version}", normalize_name(name)),
                });
                out.push_str(&format!("# pinned by plasma to =={version}: {content}\n"));
                continue;
            }
            out.push_str(content);
            out.push('\n');
        }
        self.visited.remove(&canonical);

        self.written += 1;
        let copy = self
            .out_dir
            .join(format!("requirements-{}.txt", self.written));
        std::fs::write(&copy, out).map_err(|e| PyError::io("write", &copy, e))?;
        Ok(copy)
    }
}

/// Joins `\`-continued lines, as pip does.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        match raw.strip_suffix('\\') {
            Some(continued) => current.push_str(continued),
            None => {
                current.push_str(raw);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// A comment starts at `#` at the start of the line or after whitespace
/// (a `#` inside a URL fragment is not a comment).
fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    match line.find(" #").or_else(|| line.find("\t#")) {
        Some(at) => &line[..at],
        None => line,
    }
}

/// `-r file`, `--requirement=file`, `-c file`, `--constraint file` ->
/// (`-r` or `-c`, file).
fn split_include(content: &str) -> Option<(&'static str, &str)> {
    for (long, short) in [("--requirement", "-r"), ("--constraint", "-c")] {
        for prefix in [long, short] {
            if let Some(rest) = content.strip_prefix(prefix) {
                let rest = rest.strip_prefix('=').unwrap_or(rest);
                if rest.starts_with([' ', '\t'])
                    || content.starts_with(&format!("{prefix}="))
                    || (prefix == short && !rest.is_empty())
                {
                    let target = rest.trim();
                    if !target.is_empty() {
                        return Some((short, target));
                    }
                }
            }
        }
    }
    None
}

/// The requirement lines of a requirements file's text that name a
/// package, as (1-based line number, name as written, the whole line),
/// skipping comments, options, paths and URLs. `-r` includes are not
/// followed. Used by lints, which only look, never install.
pub fn named_requirements(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = strip_comment(line).trim();
        if let Some(name) = requirement_name(content) {
            out.push((i + 1, name.to_string(), content.to_string()));
        }
    }
    out
}

/// The distribution name a requirement line starts with (`torch` in
/// `torch[extra]>=2.6; python_version>"3"`), or `None` for options, paths
/// and URLs.
fn requirement_name(content: &str) -> Option<&str> {
    if content.starts_with('-') || content.contains("://") && !content.contains('@') {
        return None;
    }
    let end = content
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(content.len());
    let name = &content[..end];
    let rest = content[end..].trim_start();
    // `./pkg` or `pkg/sub` are paths, not names.
    let looks_like_name = !name.is_empty() && !name.starts_with('.') && !rest.starts_with('/');
    looks_like_name.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_lines_are_overridden_everywhere_including_included_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(
            src.join("requirements.txt"),
            "# a comment\nTorch>=2.6 ; python_version > \"3\"  # wants new torch\nhelper==1.1\n-r sub/more.txt\n--extra-index-url https://example.com/simple\nnumpy \\\n  >=1.0\n",
        )
        .unwrap();
        std::fs::write(
            src.join("sub/more.txt"),
            "torch_vision[x]\nrich\n-c ../constraints.txt\n",
        )
        .unwrap();
        let pins = BTreeMap::from([
            ("torch".to_string(), "2.5.1".to_string()),
            ("torch-vision".to_string(), "0.20.1".to_string()),
        ]);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();

        let (copies, overridden) = prepare(&[src.join("requirements.txt")], &pins, &out).unwrap();

        let requirements: Vec<&str> = overridden.iter().map(|o| o.requirement.as_str()).collect();
        assert_eq!(
            requirements,
            ["Torch>=2.6 ; python_version > \"3\"", "torch_vision[x]"]
        );
        assert_eq!(overridden[0].pinned, "torch==2.5.1");
        let top = std::fs::read_to_string(&copies[0]).unwrap();
        assert!(
            top.contains("# pinned by plasma to ==2.5.1: Torch>=2.6"),
            "{top}"
        );
        assert!(top.contains("helper==1.1\n"), "{top}");
        assert!(top.contains("numpy   >=1.0\n"), "{top}");
        assert!(
            top.contains("--extra-index-url https://example.com/simple\n"),
            "{top}"
        );
        let included = top
            .lines()
            .find_map(|l| l.strip_prefix("-r "))
            .expect("include kept");
        let more = std::fs::read_to_string(included).unwrap();
        assert!(
            more.contains("# pinned by plasma to ==0.20.1: torch_vision[x]"),
            "{more}"
        );
        assert!(
            more.contains(&format!(
                "-c {}",
                src.join("sub/../constraints.txt").display()
            )),
            "{more}"
        );
    }

    #[test]
    fn self_inclusion_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loop.txt");
        std::fs::write(&file, "-r loop.txt\n").unwrap();
        let err = prepare(&[file], &BTreeMap::new(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("includes itself"), "{err}");
    }

    #[test]
    fn names_of_requirement_lines() {
        assert_eq!(requirement_name("torch>=2.6"), Some("torch"));
        assert_eq!(requirement_name("zope.interface"), Some("zope.interface"));
        assert_eq!(
            requirement_name("torch @ https://x/torch.whl"),
            Some("torch")
        );
        assert_eq!(requirement_name("./local"), None);
        assert_eq!(requirement_name("git+https://github.com/x/y"), None);
        assert_eq!(requirement_name("-e ."), None);
    }
}
