//! `file`: a file's bytes, as literal text or structured `yaml`/`json`/`toml`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use async_trait::async_trait;
use miette::SourceSpan;
use serde::Serialize;
use serde_json::{Value, json};

use super::structured::{Format, Structured};
use super::{ApplyContext, Kind, ObserveContext, Outputs, ResourceError};
use crate::diagnostic::Problem;
use crate::fsutil;
use crate::lint::{self, Lint, LintContext};
use crate::plan::{Action, Diff};
use crate::spec::Spanned;
use crate::spec::reader::NodeReader;
use crate::state::ResourceState;

/// Files larger than this are compared by digest only, with no text diff.
const DIFF_LIMIT: u64 = 1 << 20;

#[derive(Debug)]
pub struct File {
    pub path: Spanned<PathBuf>,
    pub mode: Option<u32>,
    /// The bytes the file must hold.
    pub content: String,
    /// Kept for lints that look inside structured content.
    pub structured: Option<Structured>,
}

/// What is at the path now.
#[derive(Debug, Serialize)]
pub struct FileObserved {
    /// `absent`, `file`, `symlink` or `directory`.
    pub found: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// BLAKE3 of the content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// The content itself when small enough to diff.
    #[serde(skip)]
    pub content: Option<Vec<u8>>,
}

impl File {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let path = r.path("path");
        let mode = parse_mode(r);
        let literal_written = !r.all("content").is_empty();
        let literal = r.opt_string("content");
        let mut bodies: Vec<(SourceSpan, Option<Structured>)> = Vec::new();
        for format in [Format::Yaml, Format::Json, Format::Toml] {
            if let Some(node) = r.child(format.name()) {
                bodies.push((node.name().span(), Structured::parse(format, node, r)));
            }
        }
        // Count what was written, even where it failed to parse (already reported).
        let given = bodies.len() + usize::from(literal_written);
        if given != 1 {
            let mut p = Problem::error(
                "spec::file-content",
                if given == 0 {
                    "a file needs its content"
                } else {
                    "a file takes one kind of content"
                },
            )
            .label(r.name_span(), "this file")
            .help(
                "give exactly one of `content \"…\"`, `yaml { … }`, `json { … }` or `toml { … }`",
            );
            for (span, _) in bodies.iter().skip(usize::from(!literal_written)) {
                p = p.label(*span, "another content");
            }
            r.fail(p);
            return None;
        }
        let (content, structured) = match (literal, bodies.pop()) {
            (Some(text), _) => (text.value, None),
            (None, Some((span, structured))) => {
                let structured = structured?;
                match structured.render() {
                    Ok(text) => (text, Some(structured)),
                    Err(e) => {
                        r.fail(
                            Problem::error(
                                "spec::file-content",
                                format!("cannot write this as {}: {e}", structured.format.name()),
                            )
                            .label(span, "here"),
                        );
                        return None;
                    }
                }
            }
            (None, None) => return None,
        };
        Some(File {
            path: path?,
            mode,
            content,
            structured,
        })
    }
}

/// `mode "0644"` (octal digits in a string) or `mode 0o644` (a KDL octal
/// number). A bare number such as `644` is decimal in KDL (0o1204), so it is
/// refused with the fix rather than read as a mode nobody meant.
fn parse_mode(r: &NodeReader<'_, '_>) -> Option<u32> {
    let child = r.child("mode")?;
    let entry = child.entries().first()?;
    let octal_digits = |text: &str| {
        (!text.is_empty() && text.bytes().all(|b| (b'0'..=b'7').contains(&b)))
            .then(|| u32::from_str_radix(text, 8).ok())
            .flatten()
    };
    let parsed = match entry.value() {
        kdl::KdlValue::Integer(i) => {
            let written = entry
                .format()
                .map(|f| f.value_repr.trim().to_string())
                .unwrap_or_default();
            if !written.starts_with("0o") {
                let fix = if octal_digits(&written).is_some() {
                    format!("write `mode \"{written:0>4}\"` or `mode 0o{written}`")
                } else {
                    "write `mode \"0644\"` or `mode 0o644`".to_string()
                };
                r.fail(
                    Problem::error(
                        "spec::malformed-mode",
                        format!("`mode {written}` is a decimal number, not an octal file mode"),
                    )
                    .label(entry.span(), format!("decimal {i} would be mode {:o}", i))
                    .help(fix),
                );
                return None;
            }
            u32::try_from(*i).ok()
        }
        kdl::KdlValue::String(s) => octal_digits(s.strip_prefix("0o").unwrap_or(s)),
        _ => None,
    };
    match parsed.filter(|m| *m <= 0o7777) {
        Some(mode) => Some(mode),
        None => {
            r.fail(
                Problem::error("spec::malformed-mode", "not a file mode")
                    .label(entry.span(), "expected an octal mode")
                    .help("write `mode \"0644\"` or `mode 0o644`"),
            );
            None
        }
    }
}

fn mode_text(mode: u32) -> String {
    format!("{mode:04o}")
}

#[async_trait]
impl Kind for File {
    type Observed = FileObserved;
    const KIND: &'static str = "file";

    fn desired(&self) -> Value {
        json!({
            "path": self.path.value,
            "mode": self.mode.map(mode_text),
            "blake3": blake3::hash(self.content.as_bytes()).to_hex().to_string(),
        })
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        vec![self.path.value.clone()]
    }

    async fn observe(&self, _cx: &ObserveContext<'_>) -> Result<FileObserved, ResourceError> {
        let path = &self.path.value;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if crate::fsutil::is_absent(&e) => {
                return Ok(FileObserved {
                    found: "absent",
                    size: None,
                    mode: None,
                    blake3: None,
                    content: None,
                });
            }
            Err(e) => return Err(ResourceError::io("cannot inspect", path, e)),
        };
        if meta.is_dir() {
            return Err(ResourceError::new(format!(
                "{} is a directory; plasma will not replace a directory with a file",
                path.display()
            ))
            .help("move the directory away, or point `path` elsewhere"));
        }
        let found = if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let bytes = if found == "file" {
            fsutil::read_limited(path, DIFF_LIMIT)
                .map_err(|e| ResourceError::io("cannot read", path, e))?
        } else {
            None
        };
        let digest = match (&bytes, found) {
            (Some(b), _) => Some(blake3::hash(b).to_hex().to_string()),
            (None, "file") => {
                let mut hasher = blake3::Hasher::new();
                std::fs::File::open(path)
                    .and_then(|f| hasher.update_reader(f).map(|_| ()))
                    .map_err(|e| ResourceError::io("cannot read", path, e))?;
                Some(hasher.finalize().to_hex().to_string())
            }
            _ => None,
        };
        Ok(FileObserved {
            found,
            size: Some(meta.len()),
            mode: Some(mode_text(meta.permissions().mode() & 0o7777)),
            blake3: digest,
            content: bytes,
        })
    }

    fn diff(&self, observed: &FileObserved, _prior: Option<&ResourceState>) -> Diff {
        let desired_digest = blake3::hash(self.content.as_bytes()).to_hex().to_string();
        let path = self.path.value.display().to_string();
        match observed.found {
            "absent" => {
                let mut diff = Diff::new(Action::Create, "the file does not exist").attribute(
                    "path",
                    None,
                    Some(path.clone()),
                );
                if let Some(mode) = self.mode {
                    diff = diff.attribute("mode", None, Some(mode_text(mode)));
                }
                diff.content_diff = Some(unified("", &self.content, &path));
                diff
            }
            "symlink" => {
                let mut diff =
                    Diff::new(Action::Replace, "a symlink stands where the file belongs");
                diff.warnings.push(format!(
                    "the symlink at {path} will be replaced by a regular file"
                ));
                diff.content_diff = Some(unified("", &self.content, &path));
                diff
            }
            _ => {
                let mut diff = Diff::new(Action::Update, "");
                let mut reasons = Vec::new();
                if observed.blake3.as_deref() != Some(desired_digest.as_str()) {
                    reasons.push("content differs");
                    diff.content_diff = Some(match &observed.content {
                        Some(old) => match std::str::from_utf8(old) {
                            Ok(old) => unified(old, &self.content, &path),
                            Err(_) => {
                                format!("binary content ({} bytes) will be replaced", old.len())
                            }
                        },
                        None => format!(
                            "content ({} bytes) differs; too large to show",
                            observed.size.unwrap_or(0)
                        ),
                    });
                }
                if let Some(mode) = self.mode
                    && observed.mode.as_deref() != Some(mode_text(mode).as_str())
                {
                    reasons.push("mode differs");
                    diff = diff.attribute("mode", observed.mode.clone(), Some(mode_text(mode)));
                }
                if reasons.is_empty() {
                    return Diff::no_op();
                }
                diff.reason = reasons.join(", ");
                diff
            }
        }
    }

    async fn apply(
        &self,
        observed: &FileObserved,
        _cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        let path = &self.path.value;
        // Without a declared mode, keep the mode the file already has.
        let mode = self.mode.or_else(|| {
            observed
                .mode
                .as_deref()
                .and_then(|m| u32::from_str_radix(m, 8).ok())
        });
        fsutil::write_atomic(path, self.content.as_bytes(), mode)
            .map_err(|e| ResourceError::io("cannot write", path, e))?;
        Ok(Outputs::new())
    }

    fn outputs(&self, observed: &FileObserved) -> Outputs {
        let mut out = Outputs::new();
        if let Some(d) = &observed.blake3 {
            out.insert("blake3".into(), json!(d));
        }
        if let Some(s) = observed.size {
            out.insert("size".into(), json!(s));
        }
        out
    }

    fn lint(&self, cx: &LintContext<'_>) -> Vec<Lint> {
        let Some(structured) = &self.structured else {
            return Vec::new();
        };
        lint::accelerate_settings(
            |key| Some((structured.get(key)?.clone(), *structured.spans.get(key)?)),
            cx,
        )
    }
}

/// A unified diff of `old` to `new`, headed with the file's path.
fn unified(old: &str, new: &str, path: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(path, path)
        .to_string()
}
