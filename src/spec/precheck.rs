//! Checks on a spec's text before the KDL parser sees it: its size, its
//! encoding, how deeply it nests, and the habits of KDL v1 and YAML that
//! KDL 2 rejects or misreads.
//!
//! The KDL parser descends once per nested block (and per nested `/* */`
//! comment) on the stack: at about 1,300 levels a debug build overflows it
//! and the process aborts. Spec files never nest more than a few levels, so
//! a light scan of the text refuses deep nesting with an error first.

use std::ops::Range;

use miette::SourceSpan;

use crate::diagnostic::Problem;

/// The largest spec file read, in bytes (a large spec is a few tens of KiB).
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// The deepest nesting of blocks and block comments a spec may have.
pub const MAX_DEPTH: usize = 64;

/// A KDL v1 or YAML habit found in the text, with its fix.
#[derive(Debug, Clone)]
pub struct Habit {
    /// The bytes of the mistaken token.
    pub span: Range<usize>,
    /// What the token should be written as.
    pub fix: String,
    pub problem: Problem,
}

impl Habit {
    /// A stand-in for the token with the same length that KDL 2 parses (a
    /// quoted string), so the rest of the spec is checked with its spans
    /// unchanged and without a cascade of errors caused by this one.
    fn stand_in(&self) -> String {
        format!("\"{}\"", "_".repeat(self.span.len().saturating_sub(2)))
    }
}

/// What a scan of the text found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Where the nesting first passes [`MAX_DEPTH`], as an error.
    pub too_deep: Option<Problem>,
    pub habits: Vec<Habit>,
}

impl Scan {
    /// The text with every habit replaced by a same-length stand-in.
    pub fn repaired(&self, text: &str) -> String {
        let mut out = text.to_string();
        for habit in &self.habits {
            out.replace_range(habit.span.clone(), &habit.stand_in());
        }
        out
    }

    /// Whether `span` overlaps a habit: problems there are caused by it.
    pub fn explains(&self, span: SourceSpan) -> bool {
        let (start, end) = (span.offset(), span.offset() + span.len().max(1));
        self.habits
            .iter()
            .any(|h| start < h.span.end && h.span.start < end)
    }
}

/// The error for a spec file past [`MAX_SPEC_BYTES`].
pub fn too_large(len: u64) -> Problem {
    Problem::error(
        "spec::too-large",
        format!(
            "the spec is {len} bytes; plasma reads specs up to {} MiB",
            MAX_SPEC_BYTES >> 20
        ),
    )
    .help("a spec declares resources, not their contents: point `file` at a `source` instead of inlining large text")
}

/// The error for bytes that are not UTF-8, located at the first bad byte of
/// the text with invalid bytes replaced (which the label points into).
pub fn not_utf8(valid_up_to: usize) -> Problem {
    Problem::error(
        "spec::not-utf8",
        format!("the spec is not UTF-8 text (byte {valid_up_to} is invalid)"),
    )
    .label(
        // The bad bytes read as one U+FFFD in the text the label points into.
        SourceSpan::new(valid_up_to.into(), char::REPLACEMENT_CHARACTER.len_utf8()),
        "this byte is not UTF-8",
    )
    .help("save the file as UTF-8")
}

/// Scans KDL text for nesting depth and habits. Strings and comments are
/// skipped the way KDL 2 reads them (quoted, multi-line and raw strings,
/// nested block comments); the scan only needs to be close, since the
/// parser itself judges the syntax.
pub fn scan(text: &str) -> Scan {
    let bytes = text.as_bytes();
    let mut scan = Scan::default();
    let mut depth = 0usize;
    // True where the next bare word is a node's name, not a value.
    let mut node_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        match bytes[i] {
            b'\n' => {
                node_start = true;
                i += 1;
            }
            b';' => {
                node_start = true;
                i += 1;
            }
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    scan.too_deep = Some(too_deep(i));
                    return scan;
                }
                node_start = true;
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                node_start = true;
                i += 1;
            }
            b'"' => {
                i = skip_string(bytes, i, 0);
                node_start = false;
            }
            b'#' if raw_hashes(rest).is_some() => {
                i = skip_string(bytes, i, raw_hashes(rest).unwrap_or(0));
                node_start = false;
            }
            b'r' if rest.get(1) == Some(&b'#') && raw_hashes(&rest[1..]).is_some() => {
                i = skip_string(bytes, i + 1, raw_hashes(&rest[1..]).unwrap_or(0));
                node_start = false;
            }
            b'/' if rest.starts_with(b"//") => {
                i += rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            }
            b'/' if rest.starts_with(b"/*") => match skip_block_comment(bytes, i, depth) {
                Ok(end) => i = end,
                Err(at) => {
                    scan.too_deep = Some(too_deep(at));
                    return scan;
                }
            },
            b'/' if rest.starts_with(b"/-") => i += 2,
            b'\\' => {
                // A line continuation: the next line goes on with this node.
                let line_end = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |p| p + 1);
                i += line_end;
            }
            b if b.is_ascii_whitespace() || matches!(b, b'=' | b'(' | b')') => i += 1,
            _ => {
                // Every delimiter is handled above, so the word is not empty.
                let end = word_end(bytes, i).max(i + 1);
                if let Some(habit) = habit(text, i..end, node_start) {
                    let url_end = habit.span.end;
                    scan.habits.push(habit);
                    i = url_end;
                } else {
                    i = end;
                }
                node_start = false;
            }
        }
    }
    scan
}

fn too_deep(at: usize) -> Problem {
    Problem::error(
        "spec::too-deep",
        format!("the spec nests blocks more than {MAX_DEPTH} deep"),
    )
    .label(SourceSpan::new(at.into(), 1), "too deep here")
    .help("resources nest a few levels at most: look for a missing `}` or a runaway block")
}

/// The number of `#` before a `"` when `rest` opens a raw string.
fn raw_hashes(rest: &[u8]) -> Option<usize> {
    let hashes = rest.iter().take_while(|&&b| b == b'#').count();
    (hashes > 0 && rest.get(hashes) == Some(&b'"')).then_some(hashes)
}

/// The end of the string opening at `start` (after `hashes` `#` for a raw one).
fn skip_string(bytes: &[u8], start: usize, hashes: usize) -> usize {
    let open = start + hashes;
    let multi_line = bytes[open..].starts_with(b"\"\"\"");
    let quotes = if multi_line { 3 } else { 1 };
    let mut i = open + quotes;
    while i < bytes.len() {
        if hashes == 0 && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i..].starts_with(&b"\"\"\""[..quotes])
            && bytes[i + quotes..]
                .iter()
                .take(hashes)
                .filter(|&&b| b == b'#')
                .count()
                == hashes
        {
            return i + quotes + hashes;
        }
        i += 1;
    }
    bytes.len()
}

/// The end of the (possibly nested) block comment at `start`, or where it
/// nests past [`MAX_DEPTH`] together with the blocks around it.
fn skip_block_comment(bytes: &[u8], start: usize, depth: usize) -> Result<usize, usize> {
    let mut nested = 0usize;
    let mut i = start;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"/*") {
            nested += 1;
            if depth + nested > MAX_DEPTH {
                return Err(i);
            }
            i += 2;
        } else if bytes[i..].starts_with(b"*/") {
            nested -= 1;
            i += 2;
            if nested == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Ok(bytes.len())
}

/// The end of a bare word: white space, a KDL delimiter or a comment ends it.
fn word_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace()
            || matches!(b, b'{' | b'}' | b'(' | b')' | b';' | b'=' | b'"' | b'\\')
            || (b == b'/' && matches!(bytes.get(i + 1), Some(b'/' | b'*')))
        {
            break;
        }
        i += 1;
    }
    i
}

/// The end of an unquoted URL: it runs to white space, `;`, `}` or a quote.
fn url_end(bytes: &[u8], start: usize) -> usize {
    start
        + bytes[start..]
            .iter()
            .position(|&b| b.is_ascii_whitespace() || matches!(b, b';' | b'}' | b'"'))
            .unwrap_or(bytes.len() - start)
}

/// A habit at the bare word `span` (or an unquoted URL starting there).
fn habit(text: &str, span: Range<usize>, node_start: bool) -> Option<Habit> {
    let word = &text[span.clone()];
    let end = url_end(text.as_bytes(), span.start);
    let url = &text[span.start..end];
    if let Some(scheme_len) = url_scheme(url) {
        let fix = format!("\"{}\"", url.replace('\\', "\\\\").replace('"', "\\\""));
        let shown = crate::diagnostic::clip(url, 60);
        let problem = Problem::error(
            "spec::unquoted-url",
            format!("the URL `{shown}` is not quoted"),
        )
        .label(
            SourceSpan::new((span.start + scheme_len).into(), 2),
            "`//` starts a comment here, so the rest of the line is not read",
        )
        .help(fix_help(text, span.start..end, &fix, "quote it"));
        return Some(Habit {
            span: span.start..end,
            fix,
            problem,
        });
    }
    if node_start {
        return None;
    }
    let (fix, why) = match word {
        "true" | "false" | "null" => (format!("#{word}"), "KDL 2 writes"),
        "inf" | "-inf" | "nan" => (format!("#{word}"), "KDL 2 writes"),
        _ => return None,
    };
    let problem = Problem::error(
        "spec::bare-keyword",
        format!("`{word}` needs a `#` in KDL 2: `{fix}`"),
    )
    .label(
        SourceSpan::new(span.start.into(), span.len()),
        format!("{why} `{fix}` (a bare `{word}` is KDL 1 or YAML)"),
    )
    .help(fix_help(text, span.clone(), &fix, "write"));
    Some(Habit { span, fix, problem })
}

/// The length of `scheme:` when `word` starts `scheme://`.
fn url_scheme(word: &str) -> Option<usize> {
    let colon = word.find("://")?;
    let scheme = &word[..colon];
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(colon + 1)
}

/// "write `    use_cpu #true`": the line with the token fixed.
fn fix_help(text: &str, span: Range<usize>, fix: &str, verb: &str) -> String {
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[span.end..]
        .find('\n')
        .map_or(text.len(), |i| span.end + i);
    let line = format!(
        "{}{fix}{}",
        &text[line_start..span.start],
        &text[span.end..line_end]
    );
    let line = line.trim();
    if line.chars().count() <= 120 {
        format!("{verb}: `{line}`")
    } else {
        format!("{verb}: `{fix}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn habits(text: &str) -> Vec<(String, String)> {
        scan(text)
            .habits
            .iter()
            .map(|h| (text[h.span.clone()].to_string(), h.fix.clone()))
            .collect()
    }

    #[test]
    fn bare_keywords_in_value_position_are_habits() {
        assert_eq!(
            habits("f {\n    use_cpu true\n    x a=null\n}\ntrue\n"),
            [
                ("true".to_string(), "#true".to_string()),
                ("null".to_string(), "#null".to_string())
            ]
        );
    }

    #[test]
    fn strings_and_comments_are_not_scanned() {
        assert!(
            habits(
                "f \"true\" r#\"a true\"# #\"\"\"\nx true\n\"\"\"# // true\n/* g true */ h \"https://x\""
            )
            .is_empty()
        );
    }

    #[test]
    fn unquoted_urls_are_habits_with_the_line_fixed() {
        let text = "model m {\n    url https://h.example/a?b=c; path \"/x\" }\n";
        let scan = scan(text);
        assert_eq!(scan.habits.len(), 1);
        let habit = &scan.habits[0];
        assert_eq!(&text[habit.span.clone()], "https://h.example/a?b=c");
        assert_eq!(
            habit.problem.help.as_deref(),
            Some("quote it: `url \"https://h.example/a?b=c\"; path \"/x\" }`")
        );
        let repaired = scan.repaired(text);
        assert_eq!(repaired.len(), text.len());
        assert!(kdl::KdlDocument::parse_v2(&repaired).is_ok(), "{repaired}");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = "a {".repeat(MAX_DEPTH + 1);
        assert!(scan(&deep).too_deep.is_some());
        let ok = format!("{}{}", "a {".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(scan(&ok).too_deep.is_none());
        let comments = "/*".repeat(MAX_DEPTH + 1);
        assert!(scan(&comments).too_deep.is_some());
        // Braces inside strings do not count.
        let quoted = format!("a \"{}\"", "{".repeat(MAX_DEPTH * 2));
        assert!(scan(&quoted).too_deep.is_none());
    }
}
