//! Reading requirements files as pip reads them, and preparing private
//! copies in which the venv's pins win.
//!
//! pip's rules (its `req_file.py`, which uv follows), applied here:
//! - the bytes are decoded from a BOM (UTF-8, UTF-16, UTF-32), else from a
//!   PEP 263 `# -*- coding: … -*-` line among the first two, else as UTF-8;
//! - a line ending in `\` continues on the next one (a comment line never
//!   continues); a `#` at the start or after whitespace starts a comment;
//! - `-r`/`--requirement` and `-c`/`--constraint` paths are relative to the
//!   folder of the file that names them;
//! - `-e`/`--editable` paths and plain path requirements (`./sd-scripts`,
//!   `../pkg.whl`) are relative to the folder pip runs in, which for a
//!   user's file is the folder they run it from: the file's own folder
//!   (`cd kohya_ss && pip install -r requirements.txt`);
//! - `-f`/`--find-links` is relative to the file's folder when that path
//!   exists, else to the folder pip runs in.
//!
//! The copies keep every line at its line number (a continued line is
//! written whole on its first line, its other lines left empty) and make
//! every relative path absolute, so a copy means the same wherever the
//! installer runs, and the installer's messages about a copy's line N are
//! about the user's line N ([`Prepared::translate`] puts the user's path back).
//!
//! Pins: every pin is passed to the installer as a constraint, which stops
//! any requirement *moving* a pinned package. A line that names a pinned
//! package and agrees with the pin (`diffusers[torch]`, `six==1.17.0`
//! under the same pin) is passed on untouched, extras and all. A line that
//! disagrees (`torch>=2.6` against `torch==2.5.1`) would make the whole
//! install fail; the user's pin is the statement of intent, so only its
//! version part is replaced by the pin (`torch[extra]==2.5.1 ; marker`,
//! extras, marker and options kept) and it is reported as overridden. A
//! package that *depends* on another version of a pin still fails the
//! install: installing it would break it, and that is for the user to decide.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use pep508_rs::pep440_rs::Version;
use pep508_rs::{MarkerEnvironment, Requirement, VersionOrUrl};
use serde::{Deserialize, Serialize};

use super::PyError;
use super::names::normalize_name;

/// A requirements-file line whose version part a pin replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverriddenRequirement {
    /// The user's file (never plasma's copy).
    pub file: PathBuf,
    /// 1-based line number in `file` (the first line of a continued line).
    pub line: usize,
    /// The requirement as written, e.g. `torch>=2.6`.
    pub requirement: String,
    /// The pin that holds instead, e.g. `torch==2.5.1`.
    pub pinned: String,
}

impl std::fmt::Display for OverriddenRequirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pin {} holds over `{}` in {} (line {})",
            self.pinned,
            self.requirement,
            self.file.display(),
            self.line
        )
    }
}

/// A package a requirements file asks for by name (its marker true for
/// this interpreter), and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    /// Normalised name.
    pub name: String,
    /// The requirement as written.
    pub requirement: String,
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: usize,
}

impl std::fmt::Display for Requested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` in {} (line {})",
            self.requirement,
            self.file.display(),
            self.line
        )
    }
}

/// Requirements files made ready for the installer.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// The copies of the top-level files, in order, to pass with `-r`.
    pub copies: Vec<PathBuf>,
    /// Every file read (includes and constraint files too): path -> BLAKE3.
    pub read: BTreeMap<PathBuf, String>,
    pub overridden: Vec<OverriddenRequirement>,
    pub requested: Vec<Requested>,
    /// (copy, user's file), to put the user's paths back into messages.
    renames: Vec<(PathBuf, PathBuf)>,
}

impl Prepared {
    /// `text` with every copy's path replaced by the user's file it was made from.
    pub fn translate(&self, text: &str) -> String {
        let mut out = text.to_string();
        // Longest first: `requirements-12.txt` before `requirements-1.txt`.
        let mut renames: Vec<&(PathBuf, PathBuf)> = self.renames.iter().collect();
        renames.sort_by_key(|(copy, _)| std::cmp::Reverse(copy.as_os_str().len()));
        for (copy, original) in renames {
            out = out.replace(&copy.display().to_string(), &original.display().to_string());
        }
        out
    }
}

/// Reads `files` (and everything they include) and writes their copies
/// into `out_dir`. `pins` maps normalised name -> pinned version; markers
/// are evaluated for `env` (the venv's interpreter); a line whose marker
/// is false is left as it is (the installer skips it too).
pub(crate) fn prepare(
    files: &[PathBuf],
    pins: &BTreeMap<String, String>,
    env: &MarkerEnvironment,
    out_dir: &Path,
) -> Result<Prepared, PyError> {
    let mut reader = Reader {
        pins,
        env,
        out_dir,
        visiting: HashSet::new(),
        prepared: Prepared::default(),
    };
    for file in files {
        let file = absolute(file);
        let working_dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let copy = reader.copy_file(&file, &working_dir)?;
        reader.prepared.copies.push(copy);
    }
    Ok(reader.prepared)
}

/// `path` made absolute, with `.` and `..` folded away lexically (as
/// Python's `os.path.normpath`), so a file has one name in messages and
/// in the fingerprint.
pub fn absolute(path: &Path) -> PathBuf {
    use std::path::Component;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

struct Reader<'a> {
    pins: &'a BTreeMap<String, String>,
    env: &'a MarkerEnvironment,
    out_dir: &'a Path,
    visiting: HashSet<PathBuf>,
    prepared: Prepared,
}

impl Reader<'_> {
    /// Writes the copy of `file`, whose relative `-e` and path
    /// requirements mean `working_dir`; returns the copy's path.
    fn copy_file(&mut self, file: &Path, working_dir: &Path) -> Result<PathBuf, PyError> {
        let bad = |detail: String| PyError::BadRequirements {
            path: file.to_path_buf(),
            detail,
        };
        let bytes = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
        if !self.visiting.insert(file.to_path_buf()) {
            return Err(bad("it includes itself (through `-r` or `-c`)".into()));
        }
        let text = decode(&bytes).map_err(bad)?;
        self.prepared.read.insert(
            file.to_path_buf(),
            blake3::hash(&bytes).to_hex().to_string(),
        );
        let folder = file.parent().unwrap_or(Path::new("/")).to_path_buf();

        let physical = text.lines().count().max(1);
        let mut out = vec![String::new(); physical];
        for (number, line) in logical_lines(&text) {
            let content = strip_comment(&line).trim();
            if content.is_empty() {
                continue;
            }
            let written = self.rewrite_line(content, file, number, &folder, working_dir)?;
            out[number - 1] = written;
        }
        self.visiting.remove(file);

        let copy = self.out_dir.join(format!(
            "requirements-{}.txt",
            self.prepared.renames.len() + 1
        ));
        self.prepared
            .renames
            .push((copy.clone(), file.to_path_buf()));
        let mut text = out.join("\n");
        text.push('\n');
        std::fs::write(&copy, text).map_err(|e| PyError::io("write", &copy, e))?;
        Ok(copy)
    }

    /// One logical line (comment removed) as the copy holds it.
    fn rewrite_line(
        &mut self,
        content: &str,
        file: &Path,
        number: usize,
        folder: &Path,
        working_dir: &Path,
    ) -> Result<String, PyError> {
        let (args, options) = break_args_options(content);
        if args.is_empty() {
            return self.rewrite_option(&options, folder, working_dir);
        }
        let expanded = expand_env(&args);
        if let Some(path) = local_path(&expanded) {
            let rest = &expanded[path.len()..];
            let path = absolute(&working_dir.join(path));
            return Ok(join_line(&format!("{}{rest}", path.display()), &options));
        }
        let Ok(requirement) = Requirement::<pep508_rs::VerbatimUrl>::from_str(&expanded) else {
            // The installer reports what it cannot read, at this line.
            return Ok(content.to_string());
        };
        if !requirement.marker.evaluate(self.env, &[]) {
            return Ok(content.to_string());
        }
        let name = normalize_name(requirement.name.as_ref());
        self.prepared.requested.push(Requested {
            name: name.clone(),
            requirement: args.clone(),
            file: file.to_path_buf(),
            line: number,
        });
        let Some(pinned) = self.pins.get(&name) else {
            return Ok(content.to_string());
        };
        if agrees_with_pin(&requirement, pinned) {
            return Ok(content.to_string());
        }
        if options.contains("--hash") {
            return Err(PyError::BadRequirements {
                path: file.to_path_buf(),
                detail: format!(
                    "line {number} `{args}` has hashes for another version than the pin {name}=={pinned}; \
                     remove the line or its hashes, or change the pin"
                ),
            });
        }
        self.prepared.overridden.push(OverriddenRequirement {
            file: file.to_path_buf(),
            line: number,
            requirement: args.clone(),
            pinned: format!("{name}=={pinned}"),
        });
        // The name as the user wrote it.
        let written_name = expanded
            .trim_start()
            .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .next()
            .unwrap_or_default();
        let mut replaced = written_name.to_string();
        if !requirement.extras.is_empty() {
            let extras: Vec<String> = requirement.extras.iter().map(|e| e.to_string()).collect();
            replaced.push_str(&format!("[{}]", extras.join(",")));
        }
        replaced.push_str(&format!("=={pinned}"));
        if requirement.marker.contents().is_some() {
            // The marker as the user wrote it.
            let separator = if is_url(&expanded) { "; " } else { ";" };
            if let Some((_, marker)) = expanded.split_once(separator) {
                replaced.push_str(&format!(" ; {}", marker.trim()));
            }
        }
        Ok(join_line(&replaced, &options))
    }

    /// An option line: includes are copied too, and paths made absolute.
    fn rewrite_option(
        &mut self,
        options: &str,
        folder: &Path,
        working_dir: &Path,
    ) -> Result<String, PyError> {
        let Some((flag, value, rest)) = split_option(options) else {
            return Ok(options.to_string());
        };
        let value = expand_env(value);
        let rewritten = match flag {
            "-r" | "-c" if !is_url(&value) => {
                let included = absolute(&folder.join(&value));
                let copy = self.copy_file(&included, working_dir)?;
                format!("{flag} {}", copy.display())
            }
            "-e" if !is_url(&value) && !value.starts_with("git+") => {
                let (path, extras) = split_extras(&value);
                format!("-e {}{extras}", absolute(&working_dir.join(path)).display())
            }
            "-f" if !is_url(&value) => {
                let beside = folder.join(&value);
                let path = if beside.exists() {
                    beside
                } else {
                    working_dir.join(&value)
                };
                format!("--find-links {}", absolute(&path).display())
            }
            _ => return Ok(options.to_string()),
        };
        Ok(join_line(&rewritten, rest))
    }
}

fn join_line(first: &str, rest: &str) -> String {
    if rest.trim().is_empty() {
        first.to_string()
    } else {
        format!("{first} {}", rest.trim())
    }
}

/// Whether the pinned version satisfies the line: no version (or a
/// specifier the pin is inside) keeps the line as written.
fn agrees_with_pin(requirement: &Requirement<pep508_rs::VerbatimUrl>, pinned: &str) -> bool {
    match &requirement.version_or_url {
        None => true,
        Some(VersionOrUrl::VersionSpecifier(specifiers)) => Version::from_str(pinned)
            .map(|v| specifiers.contains(&v))
            .unwrap_or(false),
        Some(VersionOrUrl::Url(_)) => false,
    }
}

/// Decodes a requirements file as pip's `auto_decode` does.
fn decode(bytes: &[u8]) -> Result<String, String> {
    let utf16 = |rest: &[u8], big: bool| {
        let units = rest.chunks_exact(2).map(|c| {
            if big {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_le_bytes([c[0], c[1]])
            }
        });
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .map_err(|e| format!("it is not valid UTF-16: {e}"))
    };
    let utf32 = |rest: &[u8], big: bool| {
        rest.chunks_exact(4)
            .map(|c| {
                let n = if big {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                } else {
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]])
                };
                char::from_u32(n).ok_or_else(|| "it is not valid UTF-32".to_string())
            })
            .collect::<Result<String, _>>()
    };
    let utf8 = |rest: &[u8]| {
        String::from_utf8(rest.to_vec()).map_err(|e| {
            format!("it is not UTF-8 (byte {}) and declares no other encoding; save it as UTF-8 or add `# -*- coding: latin-1 -*-` as its first line", e.utf8_error().valid_up_to())
        })
    };
    // Longest BOMs first: the UTF-32 LE BOM starts with the UTF-16 LE one.
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE, 0, 0]) {
        return utf32(rest, false);
    }
    if let Some(rest) = bytes.strip_prefix(&[0, 0, 0xFE, 0xFF]) {
        return utf32(rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return utf8(rest);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, false);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, true);
    }
    for line in bytes.split(|b| *b == b'\n').take(2) {
        if !line.starts_with(b"#") {
            continue;
        }
        let line = String::from_utf8_lossy(line);
        let Some(at) = line.find("coding").map(|i| i + "coding".len()) else {
            continue;
        };
        let Some(declared) = line[at..].strip_prefix([':', '=']) else {
            continue;
        };
        let name: String = declared
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        return match name.to_lowercase().replace('_', "-").as_str() {
            "utf-8" | "utf8" | "ascii" | "us-ascii" => utf8(bytes),
            "latin-1" | "latin1" | "iso-8859-1" | "iso8859-1" | "l1" => {
                Ok(bytes.iter().map(|&b| b as char).collect())
            }
            other => Err(format!(
                "it declares the encoding `{other}`, which plasma does not read; save it as UTF-8"
            )),
        };
    }
    utf8(bytes)
}

/// Joins `\`-continued lines as pip's `join_lines` does; yields (number of
/// the first physical line, logical line).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let comment = is_comment_line(raw);
        match raw.strip_suffix('\\').filter(|_| !comment) {
            Some(continued) => {
                current
                    .get_or_insert_with(|| (number, String::new()))
                    .1
                    .push_str(continued);
            }
            None => {
                // A comment line ends a continuation without adding to it.
                let raw = if comment { "" } else { raw };
                match current.take() {
                    Some((first, mut joined)) => {
                        joined.push_str(raw);
                        lines.push((first, joined));
                    }
                    None => lines.push((number, raw.to_string())),
                }
            }
        }
    }
    if let Some(last) = current {
        lines.push(last);
    }
    lines
}

/// pip's `COMMENT_RE` matched at the start: `#` after optional whitespace.
fn is_comment_line(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// A comment starts at `#` at the start of the line or after whitespace
/// (a `#` inside a URL fragment is not a comment).
fn strip_comment(line: &str) -> &str {
    if is_comment_line(line) {
        return "";
    }
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

/// pip's `break_args_options`: the words before the first `-word` are the
/// requirement, the rest its options.
fn break_args_options(line: &str) -> (String, String) {
    let tokens: Vec<&str> = line.split(' ').collect();
    let first_option = tokens
        .iter()
        .position(|t| t.starts_with('-'))
        .unwrap_or(tokens.len());
    (
        tokens[..first_option].join(" ").trim().to_string(),
        tokens[first_option..].join(" ").trim().to_string(),
    )
}

/// The first option of an option line, when it is one whose path plasma
/// resolves: (`-r`, `-c`, `-e` or `-f`, its value, the rest of the line).
fn split_option(options: &str) -> Option<(&'static str, &str, &str)> {
    const FLAGS: [(&str, &str, &str); 4] = [
        ("-r", "--requirement", "-r"),
        ("-c", "--constraint", "-c"),
        ("-e", "--editable", "-e"),
        ("-f", "--find-links", "-f"),
    ];
    let (word, after) = match options.split_once(char::is_whitespace) {
        Some((w, a)) => (w, a.trim_start()),
        None => (options, ""),
    };
    for (short, long, canonical) in FLAGS {
        let attached = if let Some(v) = word.strip_prefix(&format!("{long}=")) {
            Some(v)
        } else if word == short || word == long {
            None
        } else if let Some(v) = word.strip_prefix(short).filter(|_| !word.starts_with("--")) {
            Some(v.strip_prefix('=').unwrap_or(v))
        } else {
            continue;
        };
        return match attached {
            Some(value) if !value.is_empty() => Some((canonical, unquote(value), after)),
            _ => {
                let (value, rest) = match after.split_once(char::is_whitespace) {
                    Some((v, r)) => (v, r),
                    None => (after, ""),
                };
                (!value.is_empty()).then(|| (canonical, unquote(value), rest))
            }
        };
    }
    None
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
}

fn is_url(value: &str) -> bool {
    value.contains("://") || value.starts_with("file:")
}

/// `./pkg[extra]` -> (`./pkg`, `[extra]`).
fn split_extras(value: &str) -> (&str, &str) {
    match value.find('[').filter(|_| value.ends_with(']')) {
        Some(at) => (&value[..at], &value[at..]),
        None => (value, ""),
    }
}

/// The path at the start of a requirement that pip reads as a local path
/// (it contains `/` or starts with `.`, as pip's `_looks_like_path`), or
/// `None` for names, `name @ url` and URLs.
fn local_path(requirement: &str) -> Option<&str> {
    if is_url(requirement) || requirement.contains(" @") || requirement.contains("@ ") {
        return None;
    }
    let end = requirement
        .find(|c: char| c == '[' || c == ';' || c.is_whitespace())
        .unwrap_or(requirement.len());
    let path = &requirement[..end];
    let looks_like_path = path.contains('/') || path.starts_with('.');
    (looks_like_path && !Path::new(path).is_absolute()).then_some(path)
}

/// pip expands `${NAME}` (upper case, digits, `_`) from the environment.
fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end)
                if end > 0
                    && after[..end]
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') =>
            {
                match std::env::var(&after[..end]) {
                    Ok(value) => out.push_str(&value),
                    Err(_) => out.push_str(&rest[start..start + 3 + end]),
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `installed` meets what a requirements line asks for; `Some`
/// with what is installed instead when not. Pinned packages are the pin's
/// business and not checked here.
pub fn unmet(requested: &Requested, installed: &BTreeMap<String, String>) -> Option<String> {
    let requirement =
        Requirement::<pep508_rs::VerbatimUrl>::from_str(&expand_env(&requested.requirement))
            .ok()?;
    let Some(VersionOrUrl::VersionSpecifier(specifiers)) = &requirement.version_or_url else {
        return match installed.get(&requested.name) {
            Some(_) => None,
            None => Some(format!("{} is not installed", requested.name)),
        };
    };
    match installed.get(&requested.name) {
        None => Some(format!("{} is not installed", requested.name)),
        Some(version) => match Version::from_str(version) {
            Ok(v) if specifiers.contains(&v) => None,
            _ => Some(format!("{} {version} is installed", requested.name)),
        },
    }
}

/// The requirement lines of a requirements file's text that name a
/// package, as (1-based line number, name as written, the requirement),
/// skipping comments, options, paths and URLs. `-r` includes are not
/// followed. Used by lints, which only look, never install.
pub fn named_requirements(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for (number, line) in logical_lines(text) {
        let (args, _) = break_args_options(strip_comment(&line).trim());
        if args.is_empty() || local_path(&args).is_some() {
            continue;
        }
        if let Ok(requirement) = Requirement::<pep508_rs::VerbatimUrl>::from_str(&args) {
            out.push((number, requirement.name.to_string(), args));
        }
    }
    out
}

/// The marker environment of an interpreter (PEP 508's variables), as
/// `packaging.markers.default_environment()` computes them.
pub(crate) fn marker_environment(python: &Path) -> Result<MarkerEnvironment, PyError> {
    const SCRIPT: &str = r#"
import json, os, platform, sys
def version(info):
    v = "{0.major}.{0.minor}.{0.micro}".format(info)
    if info.releaselevel != "final":
        v += info.releaselevel[0] + str(info.serial)
    return v
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": version(sys.implementation.version),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}))
"#;
    let mut cmd = std::process::Command::new(python);
    cmd.args(["-I", "-c", SCRIPT]);
    let done = super::process::run(&mut cmd, &super::process::Scrubber::default())?;
    serde_json::from_str(&done.stdout).map_err(|e| PyError::InterpreterUnusable {
        path: python.to_path_buf(),
        detail: format!("its marker environment did not read: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> MarkerEnvironment {
        serde_json::from_str(
            r#"{"implementation_name": "cpython", "implementation_version": "3.11.7",
                "os_name": "posix", "platform_machine": "x86_64",
                "platform_python_implementation": "CPython", "platform_release": "6.1",
                "platform_system": "Linux", "platform_version": "1",
                "python_full_version": "3.11.7", "python_version": "3.11",
                "sys_platform": "linux"}"#,
        )
        .unwrap()
    }

    fn pins() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("torch".to_string(), "2.5.1".to_string()),
            ("diffusers".to_string(), "0.32.2".to_string()),
            ("opencv-python".to_string(), "4.10.0.84".to_string()),
        ])
    }

    #[test]
    fn only_lines_that_disagree_with_a_pin_are_rewritten_keeping_extras_and_markers() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("kohya");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(
            src.join("requirements.txt"),
            "# a comment\n\
             Torch[cpu]>=2.6 ; python_version > \"3\"  # wants new torch\n\
             diffusers[torch]==0.32.2\n\
             opencv-python==4.10.0.84\n\
             torch<2 ; sys_platform == \"win32\"\n\
             -r sub/more.txt\n\
             numpy \\\n  >=1.0\n\
             -e ./sd-scripts\n",
        )
        .unwrap();
        std::fs::write(src.join("sub/more.txt"), "diffusers>=0.33\n-c ../c.txt\n").unwrap();
        std::fs::write(src.join("c.txt"), "rich<14\n").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();

        let prepared = prepare(&[src.join("requirements.txt")], &pins(), &env(), &out).unwrap();

        let overridden: Vec<(String, usize, &str)> = prepared
            .overridden
            .iter()
            .map(|o| {
                (
                    o.file.file_name().unwrap().to_string_lossy().into_owned(),
                    o.line,
                    o.requirement.as_str(),
                )
            })
            .collect();
        assert_eq!(
            overridden,
            [
                (
                    "requirements.txt".into(),
                    2,
                    "Torch[cpu]>=2.6 ; python_version > \"3\""
                ),
                ("more.txt".into(), 1, "diffusers>=0.33"),
            ]
        );
        let top = std::fs::read_to_string(&prepared.copies[0]).unwrap();
        let lines: Vec<&str> = top.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(lines[1], "Torch[cpu]==2.5.1 ; python_version > \"3\"");
        assert_eq!(lines[2], "diffusers[torch]==0.32.2");
        assert_eq!(lines[3], "opencv-python==4.10.0.84");
        assert_eq!(lines[4], "torch<2 ; sys_platform == \"win32\"");
        assert_eq!(lines[6], "numpy   >=1.0");
        assert_eq!(lines[7], "");
        assert_eq!(lines[8], format!("-e {}", src.join("sd-scripts").display()));
        let included = lines[5].strip_prefix("-r ").expect("include kept");
        let more = std::fs::read_to_string(included).unwrap();
        assert!(more.starts_with("diffusers==0.32.2\n-c "), "{more}");
        // Every file read is fingerprinted, includes too.
        let read: Vec<String> = prepared
            .read
            .keys()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(read, ["c.txt", "requirements.txt", "more.txt"]);
        assert_eq!(
            prepared.translate(&format!("-r {included} (line 1)")),
            format!("-r {} (line 1)", src.join("sub/more.txt").display())
        );
    }

    #[test]
    fn a_line_with_hashes_for_another_version_than_the_pin_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.txt");
        std::fs::write(&file, "torch==2.6.0 --hash=sha256:00\n").unwrap();
        let err = prepare(&[file], &pins(), &env(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1 `torch==2.6.0` has hashes"), "{err}");
    }

    #[test]
    fn self_inclusion_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loop.txt");
        std::fs::write(&file, "-r loop.txt\n").unwrap();
        let err = prepare(&[file], &BTreeMap::new(), &env(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("includes itself"), "{err}");
    }

    #[test]
    fn encodings_pip_accepts() {
        let mut utf16 = vec![0xFF, 0xFE];
        for unit in "torch\n".encode_utf16() {
            utf16.extend(unit.to_le_bytes());
        }
        assert_eq!(decode(&utf16).unwrap(), "torch\n");
        assert_eq!(decode(b"\xEF\xBB\xBFtorch\n").unwrap(), "torch\n");
        assert_eq!(
            decode(b"# -*- coding: latin-1 -*-\ncaf\xE9\n").unwrap(),
            "# -*- coding: latin-1 -*-\ncaf\u{e9}\n"
        );
        assert!(decode(b"caf\xE9\n").unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn options_and_paths() {
        assert_eq!(split_option("-r a.txt"), Some(("-r", "a.txt", "")));
        assert_eq!(
            split_option("--requirement=a.txt"),
            Some(("-r", "a.txt", ""))
        );
        assert_eq!(split_option("-ra.txt"), Some(("-r", "a.txt", "")));
        assert_eq!(split_option("--find-links ./w"), Some(("-f", "./w", "")));
        assert_eq!(split_option("--extra-index-url https://x"), None);
        assert_eq!(local_path("./sd-scripts"), Some("./sd-scripts"));
        assert_eq!(local_path("pkg/sub[x]"), Some("pkg/sub"));
        assert_eq!(local_path("torch @ https://x/t.whl"), None);
        assert_eq!(local_path("torch>=2"), None);
        assert_eq!(
            named_requirements("a>=1\n-e .\n./x\ntorch @ https://h/t.whl\n# c\n")
                .into_iter()
                .map(|(l, n, _)| (l, n))
                .collect::<Vec<_>>(),
            [(1, "a".to_string()), (4, "torch".to_string())]
        );
    }
}
