//! What a model file's name says it is, and whether its bytes agree.
//!
//! A download is placed only when its bytes are what its extension promises,
//! pinned or not, so an error body, a compressed stream or a login page never
//! lands at `…/x.safetensors`:
//!
//! | extension | what the bytes must be |
//! | --- | --- |
//! | `.safetensors` | a readable safetensors header (8-byte length, JSON object of tensors), and exactly as many bytes after it as its tensors' `data_offsets` say |
//! | `.ckpt .pth .pt .bin` | a zip archive (what `torch.save` writes since PyTorch 1.6) or a pickle stream of protocol 2 to 5 (the older `torch.save` format) |
//! | `.yaml .yml` | a YAML document (UTF-8) |
//! | `.json` | a JSON document |
//!
//! Other extensions are checked only for not being a web page.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::safetensors;

/// Text documents larger than this are not parsed (and refused): model
/// configs are kilobytes.
pub const MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;

/// What a file's extension says about its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Safetensors,
    /// A PyTorch checkpoint: zip archive or pickle stream.
    Pickle,
    Yaml,
    Json,
    /// An extension plasma has no check for.
    Unchecked,
}

impl FileKind {
    /// The kind the extension of `path` names (without case).
    pub fn of(path: &Path) -> FileKind {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("safetensors") => FileKind::Safetensors,
            Some("ckpt" | "pth" | "pt" | "bin") => FileKind::Pickle,
            Some("yaml" | "yml") => FileKind::Yaml,
            Some("json") => FileKind::Json,
            _ => FileKind::Unchecked,
        }
    }

    /// What the file should be, for messages ("is not {what}").
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Safetensors => "a safetensors file",
            FileKind::Pickle => "a PyTorch checkpoint (a zip archive or a pickle stream)",
            FileKind::Yaml => "a YAML document",
            FileKind::Json => "a JSON document",
            FileKind::Unchecked => "a file",
        }
    }

    /// Checks the bytes at `path` (a download's part file) against the kind.
    /// `Err` says in a few words what is wrong with them.
    pub fn check(self, path: &Path) -> Result<(), String> {
        match self {
            FileKind::Unchecked => Ok(()),
            FileKind::Safetensors => {
                let info = safetensors::read_header(path).map_err(|e| e.reason())?;
                let len = std::fs::metadata(path)
                    .map_err(|e| format!("cannot read it: {e}"))?
                    .len();
                // The format's own rule: the tensors' data fills the rest
                // of the file exactly.
                let expected = 8 + info.header_bytes + info.data_bytes;
                match len.cmp(&expected) {
                    std::cmp::Ordering::Equal => Ok(()),
                    std::cmp::Ordering::Less => Err(format!(
                        "it is truncated: its header describes {expected} bytes, it has {len}"
                    )),
                    std::cmp::Ordering::Greater => Err(format!(
                        "it has {} bytes after its last tensor",
                        len - expected
                    )),
                }
            }
            FileKind::Pickle => {
                let head = read_head(path, 4).map_err(|e| format!("cannot read it: {e}"))?;
                if is_zip(&head) || is_pickle(&head) {
                    Ok(())
                } else {
                    Err("it is neither a zip archive nor a pickle stream".into())
                }
            }
            FileKind::Yaml | FileKind::Json => {
                let text = read_document(path)?;
                if self == FileKind::Json {
                    serde_json::from_str::<serde::de::IgnoredAny>(&text)
                        .map(|_| ())
                        .map_err(|e| format!("it does not parse as JSON: {e}"))
                } else {
                    check_yaml(&text)
                }
            }
        }
    }
}

/// `PK\x03\x04`, the start of a zip archive's first local file header.
fn is_zip(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04")
}

/// The PROTO opcode (0x80) and a protocol number from 2 to 5: how every
/// pickle written by Python 3 (and by `torch.save` before zip) starts.
fn is_pickle(head: &[u8]) -> bool {
    matches!(head, [0x80, 2..=5, ..])
}

fn read_head(path: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    File::open(path)?.take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

fn read_document(path: &Path) -> Result<String, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    if len > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "it has {len} bytes, more than a config document ({MAX_DOCUMENT_BYTES} at most)"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())
}

fn check_yaml(text: &str) -> Result<(), String> {
    for event in saphyr_parser::Parser::new_from_str(text) {
        if let Err(e) = event {
            return Err(format!("it does not parse as YAML: {e}"));
        }
    }
    Ok(())
}

/// The first bytes of a refused body, for a message: as text when they are
/// printable (control characters escaped), else in hex.
pub fn show_head(head: &[u8]) -> String {
    const SHOWN: usize = 64;
    let shown = &head[..head.len().min(SHOWN)];
    let more = if head.len() > SHOWN { "…" } else { "" };
    let text = match std::str::from_utf8(shown) {
        Ok(text) => Some(text),
        // A cut through a multi-byte character at the end is still text.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&shown[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    match text {
        Some(text)
            if text
                .chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t')) =>
        {
            format!("{:?}{more}", text)
        }
        _ => {
            let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
            format!("(binary) {}{more}", hex.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, bytes: &[u8]) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        FileKind::of(&path).check(&path)
    }

    #[test]
    fn extensions_name_kinds() {
        assert_eq!(
            FileKind::of(Path::new("a/B.SafeTensors")),
            FileKind::Safetensors
        );
        assert_eq!(FileKind::of(Path::new("x.pth")), FileKind::Pickle);
        assert_eq!(FileKind::of(Path::new("x.yml")), FileKind::Yaml);
        assert_eq!(FileKind::of(Path::new("x.gguf")), FileKind::Unchecked);
    }

    #[test]
    fn checks_each_kind() {
        let header = br#"{"w":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}"#;
        let mut tensors = (header.len() as u64).to_le_bytes().to_vec();
        tensors.extend_from_slice(header);
        tensors.extend_from_slice(&[0, 0]);
        assert_eq!(check("m.safetensors", &tensors), Ok(()));
        let cut = check("m.safetensors", &tensors[..tensors.len() - 1]).unwrap_err();
        assert!(cut.starts_with("it is truncated"), "{cut}");
        let json_error = check("m.safetensors", br#"{"error":"Unauthorized"}"#).unwrap_err();
        assert!(json_error.contains("header"), "{json_error}");

        assert_eq!(check("m.ckpt", b"PK\x03\x04rest"), Ok(()));
        assert_eq!(check("m.pt", b"\x80\x02\x8a\x0al"), Ok(()));
        assert!(check("m.bin", b"\x1f\x8b\x08\x00gzip").is_err());

        assert_eq!(check("c.yaml", b"model:\n  target: x\n"), Ok(()));
        assert!(check("c.yaml", b"a: [1, 2\n").is_err());
        assert_eq!(check("c.json", b"{\"a\": 1}"), Ok(()));
        assert!(check("c.json", b"{\"a\": ").is_err());
        assert!(check("c.json", b"\xff\xfe").is_err());
        assert_eq!(check("m.gguf", b"anything"), Ok(()));
    }

    #[test]
    fn heads_show_as_text_or_hex() {
        assert_eq!(
            show_head(b"{\"error\":\"x\"}\n"),
            r#""{\"error\":\"x\"}\n""#
        );
        assert_eq!(show_head(b"\x1f\x8b\x08"), "(binary) 1f 8b 08");
        assert!(show_head(&[b'a'; 100]).ends_with("…"));
    }
}
