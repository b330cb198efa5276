//! `plasma fmt`: canonical layout that changes only white space.
//!
//! Each line is indented four spaces per open block, trailing white space
//! goes, runs of blank lines collapse to one and blank lines just inside a
//! block's braces go. Everything a person wrote stays as written: comments,
//! how each value is spelled (`"no"` stays quoted), the order of nodes, and
//! the insides of multi-line strings and block comments. (kdl's own
//! autoformat drops comments that trail a value and every blank line, so it
//! is not used here.)

/// The formatted text. The input must already parse as KDL.
pub fn format(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut scanner = Scanner::default();
    for raw in text.lines() {
        if scanner.in_verbatim() {
            // Inside a multi-line string or block comment: keep the line as is.
            out.push(raw.to_string());
            scanner.scan(raw);
            continue;
        }
        let line = raw.trim();
        if line.is_empty() {
            let after_open = out.last().is_some_and(|l| l.trim_end().ends_with('{'));
            let after_blank = out.last().is_some_and(|l| l.is_empty());
            if !out.is_empty() && !after_open && !after_blank {
                out.push(String::new());
            }
            continue;
        }
        let depth_before = scanner.depth;
        scanner.scan(line);
        // A line that opens with `}` belongs to the outer level.
        let depth = if line.starts_with('}') {
            depth_before.saturating_sub(1)
        } else {
            depth_before
        };
        if line.starts_with('}') && out.last().is_some_and(|l| l.is_empty()) {
            out.pop();
        }
        out.push(format!("{}{line}", "    ".repeat(depth)));
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// Tracks block depth through KDL's strings and comments.
#[derive(Default)]
struct Scanner {
    depth: usize,
    /// Open `/* */` comments (they nest in KDL).
    block_comments: usize,
    /// Inside a `"""` string; with the number of `#` of a raw one.
    multiline: Option<usize>,
}

impl Scanner {
    fn in_verbatim(&self) -> bool {
        self.block_comments > 0 || self.multiline.is_some()
    }

    fn scan(&mut self, line: &str) {
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let rest = &line[i..];
            if self.block_comments > 0 {
                if rest.starts_with("*/") {
                    self.block_comments -= 1;
                    i += 2;
                } else if rest.starts_with("/*") {
                    self.block_comments += 1;
                    i += 2;
                } else {
                    i += 1;
                }
                continue;
            }
            if let Some(hashes) = self.multiline {
                let close = format!("\"\"\"{}", "#".repeat(hashes));
                match rest.find(&close) {
                    Some(at) => {
                        self.multiline = None;
                        i += at + close.len();
                    }
                    None => i = bytes.len(),
                }
                continue;
            }
            if rest.starts_with("//") {
                return;
            }
            if rest.starts_with("/*") {
                self.block_comments += 1;
                i += 2;
                continue;
            }
            let hashes = rest.bytes().take_while(|b| *b == b'#').count();
            let after_hashes = &rest[hashes..];
            if after_hashes.starts_with("\"\"\"") {
                self.multiline = Some(hashes);
                i += hashes + 3;
                continue;
            }
            if let Some(body) = after_hashes.strip_prefix('"') {
                i += hashes + 1 + string_length(body, hashes);
                continue;
            }
            match bytes[i] {
                b'{' => self.depth += 1,
                b'}' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
    }
}

/// Length of a one-line string's body and closing quote (and hashes).
fn string_length(body: &str, hashes: usize) -> usize {
    let close = format!("\"{}", "#".repeat(hashes));
    let mut i = 0;
    while i < body.len() {
        if hashes == 0 && body[i..].starts_with('\\') {
            i += 2;
            continue;
        }
        if body[i..].starts_with(&close) {
            return i + close.len();
        }
        i += body[i..].chars().next().map_or(1, char::len_utf8);
    }
    body.len()
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn reindents_and_keeps_comments_and_spelling() {
        let input = "platform os=macos\nvars {\n  a \"x\"   // c\n\n\n      b \"y\"\n\n}\nfile x{\npath \"/tmp/{x}\"\n  content \"}\"\n}\n\n\n";
        let expected = "platform os=macos\nvars {\n    a \"x\"   // c\n\n    b \"y\"\n}\nfile x{\n    path \"/tmp/{x}\"\n    content \"}\"\n}\n";
        assert_eq!(format(input), expected);
        assert_eq!(format(expected), expected, "formatting is idempotent");
    }

    #[test]
    fn leaves_multiline_strings_and_block_comments_alone() {
        let input = "file x {\ncontent \"\"\"\n  keep   \n   this\n  \"\"\"\n/* a {\n   b */\npath \"/x\"\n}\n";
        let expected = "file x {\n    content \"\"\"\n  keep   \n   this\n  \"\"\"\n    /* a {\n   b */\n    path \"/x\"\n}\n";
        assert_eq!(format(input), expected);
    }

    #[test]
    fn raw_strings_with_braces_do_not_change_depth() {
        let input = "a {\nb #\"{\"}\"#\nc \"\\\"{\"\n}\n";
        assert_eq!(format(input), "a {\n    b #\"{\"}\"#\n    c \"\\\"{\"\n}\n");
    }
}
