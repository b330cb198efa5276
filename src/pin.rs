//! `plasma pin`: writes the digests recorded at download (trust on first
//! use) into `plasma.kdl` as `sha256` lines.
//!
//! The spec is the user's file, with their comments and layout, so it is
//! edited as text at the places the KDL parser located: one line is inserted
//! after each unpinned model's `path`, indented like it, and nothing else
//! changes.

use std::collections::BTreeMap;

use kdl::{KdlDocument, KdlNode};

use crate::hashing::Sha256Digest;

/// The result of pinning: the new text and the models that got a digest.
#[derive(Debug, PartialEq)]
pub struct Pinned {
    pub text: String,
    pub pinned: Vec<(String, Sha256Digest)>,
}

/// Inserts `sha256 "<hex>"` into every `model NAME` that has none and whose
/// name is in `digests`. Models that already have a `sha256` are left alone,
/// even when it differs (that is drift for `plan`, not something to paper over).
pub fn pin_text(text: &str, digests: &BTreeMap<String, Sha256Digest>) -> Result<Pinned, String> {
    let document =
        KdlDocument::parse_v2(text).map_err(|e| format!("the spec does not parse: {e}"))?;
    let mut edits: Vec<(usize, String)> = Vec::new();
    let mut pinned = Vec::new();
    for node in document.nodes() {
        if node.name().value() != "model" {
            continue;
        }
        let Some(name) = node
            .entries()
            .iter()
            .find(|e| e.name().is_none())
            .and_then(|e| e.value().as_string())
        else {
            continue;
        };
        let Some(digest) = digests.get(name) else {
            continue;
        };
        let Some(children) = node.children() else {
            continue;
        };
        if children
            .nodes()
            .iter()
            .any(|c| c.name().value() == "sha256")
        {
            continue;
        }
        let anchor = children
            .nodes()
            .iter()
            .find(|c| c.name().value() == "path")
            .or_else(|| children.nodes().last());
        let Some(anchor) = anchor else { continue };
        edits.push(insertion(text, anchor, digest));
        pinned.push((name.to_string(), *digest));
    }
    // From the end backwards, so earlier offsets stay valid.
    edits.sort_by_key(|edit| std::cmp::Reverse(edit.0));
    let mut out = text.to_string();
    for (offset, line) in edits {
        out.insert_str(offset, &line);
    }
    Ok(Pinned { text: out, pinned })
}

/// Where and what to insert to put `sha256` right after `anchor`.
fn insertion(text: &str, anchor: &KdlNode, digest: &Sha256Digest) -> (usize, String) {
    let start = anchor.name().span().offset();
    let end = anchor
        .entries()
        .iter()
        .map(|e| e.span().offset() + e.span().len())
        .max()
        .unwrap_or(start + anchor.name().span().len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let indent = &text[line_start..start];
    let value = format!("sha256 \"{}\"", digest.to_hex());
    if indent.chars().all(char::is_whitespace) {
        // The anchor starts its own line: a new line below it, same indent.
        let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i);
        (line_end, format!("\n{indent}{value}"))
    } else {
        // A one-line block (`model a { path "…"; url "…" }`): stay inline.
        (start, format!("{value}; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> Sha256Digest {
        Sha256Digest::from_bytes([byte; 32])
    }

    #[test]
    fn inserts_after_path_keeping_everything_else() {
        let text = "// my models\nmodel a {\n    url \"https://h/a\" // mirror 1\n    path \"{comfy}/a.safetensors\" // where\n\n    size 3\n}\n\nmodel b {\n  path \"b\"\n  sha256 \"00\"\n}\n";
        let digests = BTreeMap::from([
            ("a".to_string(), digest(0xab)),
            ("b".to_string(), digest(1)),
        ]);
        let pinned = pin_text(text, &digests).unwrap();
        let expected = format!(
            "// my models\nmodel a {{\n    url \"https://h/a\" // mirror 1\n    path \"{{comfy}}/a.safetensors\" // where\n    sha256 \"{}\"\n\n    size 3\n}}\n\nmodel b {{\n  path \"b\"\n  sha256 \"00\"\n}}\n",
            digest(0xab).to_hex()
        );
        assert_eq!(pinned.text, expected);
        assert_eq!(pinned.pinned, vec![("a".to_string(), digest(0xab))]);
    }

    #[test]
    fn one_line_blocks_stay_on_one_line() {
        let text = "model a { url \"https://h/a\"; path \"a.pt\"; allow-pickle #true }";
        let digests = BTreeMap::from([("a".to_string(), digest(2))]);
        let pinned = pin_text(text, &digests).unwrap();
        assert_eq!(
            pinned.text,
            format!(
                "model a {{ url \"https://h/a\"; sha256 \"{}\"; path \"a.pt\"; allow-pickle #true }}",
                digest(2).to_hex()
            )
        );
        KdlDocument::parse_v2(&pinned.text).unwrap();
    }
}
