//! A reader for git's config file format (`.git/config`, `.gitmodules`), so that
//! observation can learn the origin URL and the submodule list without spawning
//! `git config`. Includes (`[include]`) are not followed: the values plasma reads
//! (`remote.origin.url`, `submodule.*.path`, `submodule.*.url`) live in the file itself.

use std::io;
use std::path::Path;

/// One `section.subsection.key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Lower-cased, as git compares section names case-insensitively.
    section: String,
    /// Case-sensitive, as in git.
    subsection: Option<String>,
    /// Lower-cased.
    key: String,
    value: String,
}

/// The parsed entries of one config file, in file order.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfigFile {
    entries: Vec<Entry>,
}

impl ConfigFile {
    /// Reads and parses `path`; an absent file is an empty config.
    pub fn read(path: &Path) -> io::Result<ConfigFile> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(ConfigFile::parse(&String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> ConfigFile {
        let mut parser = Parser {
            chars: text.chars().collect(),
            at: 0,
        };
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut subsection = None;
        loop {
            parser.skip_blank();
            match parser.peek() {
                None => break,
                Some('#' | ';') => parser.skip_line(),
                Some('[') => match parser.section_header() {
                    Some((name, sub)) => {
                        section = name;
                        subsection = sub;
                    }
                    None => parser.skip_line(),
                },
                Some(_) => {
                    if let Some((key, value)) = parser.key_value()
                        && !section.is_empty()
                    {
                        entries.push(Entry {
                            section: section.clone(),
                            subsection: subsection.clone(),
                            key,
                            value,
                        });
                    }
                }
            }
        }
        ConfigFile { entries }
    }

    /// Every value of `section.subsection.key`, in file order.
    pub fn get_all(&self, section: &str, subsection: Option<&str>, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| {
                e.section.eq_ignore_ascii_case(section)
                    && e.subsection.as_deref() == subsection
                    && e.key.eq_ignore_ascii_case(key)
            })
            .map(|e| e.value.as_str())
            .collect()
    }

    /// The last value of `section.subsection.key`, as `git config --get` gives.
    pub fn get(&self, section: &str, subsection: Option<&str>, key: &str) -> Option<&str> {
        self.get_all(section, subsection, key).last().copied()
    }

    /// The URL git fetches `origin` from (the first, when there are several).
    pub fn origin_url(&self) -> Option<&str> {
        self.get_all("remote", Some("origin"), "url")
            .first()
            .copied()
    }

    /// The distinct subsections of `section`, in order of first appearance.
    pub fn subsections(&self, section: &str) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for entry in &self.entries {
            if entry.section.eq_ignore_ascii_case(section)
                && let Some(sub) = entry.subsection.as_deref()
                && !seen.contains(&sub)
            {
                seen.push(sub);
            }
        }
        seen
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        self.at += 1;
        c
    }

    fn skip_blank(&mut self) {
        while matches!(self.peek(), Some(c) if c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    /// `[section]`, `[section "sub"]` or the old `[section.sub]`.
    fn section_header(&mut self) -> Option<(String, Option<String>)> {
        self.bump(); // '['
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                name.push(c);
                self.at += 1;
            } else {
                break;
            }
        }
        let mut subsection = None;
        if matches!(self.peek(), Some(' ' | '\t')) {
            self.skip_blank();
            if self.bump() != Some('"') {
                return None;
            }
            let mut sub = String::new();
            loop {
                match self.bump()? {
                    '"' => break,
                    '\\' => sub.push(self.bump()?),
                    '\n' => return None,
                    c => sub.push(c),
                }
            }
            subsection = Some(sub);
        } else if let Some((section, sub)) = name.split_once('.') {
            let (section, sub) = (section.to_string(), sub.to_string());
            name = section;
            subsection = Some(sub);
        }
        if self.bump() != Some(']') {
            return None;
        }
        // Anything after `]` on the same line (a key, or a comment) is parsed next.
        Some((name.to_ascii_lowercase(), subsection))
    }

    /// `key = value` or a bare `key` (boolean true); leaves the cursor on the next line.
    fn key_value(&mut self) -> Option<(String, String)> {
        let mut key = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '-' {
                key.push(c);
                self.at += 1;
            } else {
                break;
            }
        }
        if key.is_empty() {
            self.skip_line();
            return None;
        }
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.at += 1;
        }
        match self.peek() {
            None | Some('\n') | Some('#') | Some(';') | Some('\r') => {
                self.skip_line();
                return Some((key.to_ascii_lowercase(), "true".to_string()));
            }
            Some('=') => self.at += 1,
            Some(_) => {
                self.skip_line();
                return None;
            }
        }
        Some((key.to_ascii_lowercase(), self.value()))
    }

    /// A value: quotes group, `\` escapes, `#`/`;` start a comment outside quotes,
    /// a trailing `\` continues on the next line, unquoted edge whitespace is dropped.
    fn value(&mut self) -> String {
        let mut value = String::new();
        // Length of `value` up to its last character that must be kept
        // (quoted or non-space), so trailing unquoted spaces can be cut.
        let mut kept = 0;
        let mut quoted = false;
        while let Some(c) = self.bump() {
            match c {
                '\n' => break,
                '\r' if self.peek() == Some('\n') => {}
                '"' => {
                    quoted = !quoted;
                    kept = value.len();
                }
                '#' | ';' if !quoted => {
                    self.skip_line();
                    break;
                }
                '\\' => {
                    match self.bump() {
                        Some('\n') => continue,
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some('b') => {
                            value.pop();
                        }
                        Some(other) => value.push(other),
                        None => break,
                    }
                    kept = value.len();
                }
                c if c.is_whitespace() && !quoted => {
                    if !value.is_empty() {
                        value.push(c);
                    }
                }
                c => {
                    value.push(c);
                    kept = value.len();
                }
            }
        }
        value.truncate(kept);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[core]
	repositoryformatversion = 0
	bare = false
[remote "origin"]
	url = https://user:tok@example.com/o/r.git   ; trailing comment
	fetch = +refs/heads/*:refs/remotes/origin/*
[Submodule "sd-scripts"]
	path = sd-scripts
	url = "https://github.com/kohya-ss/sd-scripts.git"
[submodule "with \"quote\""]
	path = "a path/with # hash"
	active
[branch.main]
	remote = origin
"#;

    #[test]
    fn reads_remote_url_without_comment_or_spaces() {
        let config = ConfigFile::parse(SAMPLE);
        assert_eq!(
            config.get("remote", Some("origin"), "url"),
            Some("https://user:tok@example.com/o/r.git")
        );
    }

    #[test]
    fn sections_are_case_insensitive_and_subsections_keep_case() {
        let config = ConfigFile::parse(SAMPLE);
        assert_eq!(
            config.subsections("submodule"),
            vec!["sd-scripts", "with \"quote\""]
        );
        assert_eq!(
            config.get("submodule", Some("sd-scripts"), "URL"),
            Some("https://github.com/kohya-ss/sd-scripts.git")
        );
    }

    #[test]
    fn quoted_values_keep_hash_and_spaces_and_bare_keys_are_true() {
        let config = ConfigFile::parse(SAMPLE);
        assert_eq!(
            config.get("submodule", Some("with \"quote\""), "path"),
            Some("a path/with # hash")
        );
        assert_eq!(
            config.get("submodule", Some("with \"quote\""), "active"),
            Some("true")
        );
    }

    #[test]
    fn old_dotted_subsection_syntax() {
        let config = ConfigFile::parse(SAMPLE);
        assert_eq!(config.get("branch", Some("main"), "remote"), Some("origin"));
    }

    #[test]
    fn continuation_lines_and_escapes() {
        let config = ConfigFile::parse("[a]\n\tk = one \\\n two\\tx\n");
        assert_eq!(config.get("a", None, "k"), Some("one  two\tx"));
    }

    #[test]
    fn last_value_wins_and_all_values_are_listed() {
        let config = ConfigFile::parse("[s]\nk = 1\nk = 2\n");
        assert_eq!(config.get("s", None, "k"), Some("2"));
        assert_eq!(config.get_all("s", None, "k"), ["1", "2"]);
    }
}
