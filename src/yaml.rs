//! A YAML writer for plain data that reads back the same under YAML 1.1
//! (PyYAML, which accelerate uses) and YAML 1.2.
//!
//! Under YAML 1.1 a bare `no` is the boolean false (`mixed_precision: no`
//! silently turns fp32 off), `2024-01-02` is a date, `1:30` is the number 90,
//! `0o17`, `0x1f`, `1_000` and `.inf` are numbers, `=` and `<<` are special
//! keys, and PyYAML refuses a file holding DEL, C1 controls or U+2028 / U+2029
//! unescaped. YAML 1.2 emitters (serde_yaml and its forks) write several of
//! these bare, so plasma writes YAML itself, the other way round: a string
//! is written bare only when it has a shape no YAML 1.1 or 1.2 resolver takes
//! for anything else (an ASCII letter, `_` or `/` first, then letters, digits,
//! `_ - . /` and inner spaces, and not one of the boolean or null words);
//! every other string is quoted, in single quotes as accelerate's own files
//! do (`mixed_precision: 'no'`), or in double quotes with escapes when it
//! holds a character that cannot stand in a YAML stream as itself.
//!
//! The facts used are the implicit resolvers of PyYAML's `resolver.py` (bool,
//! float, int, merge, null, timestamp, value) and its reader's printable set.

use crate::resource::structured::Data;

/// PyYAML refuses a simple key longer than this many characters; longer keys
/// are written as explicit `? key` entries.
const SIMPLE_KEY_LIMIT: usize = 1024;

/// The document for a value, ending in a newline.
pub fn to_string(value: &Data) -> String {
    let mut out = String::new();
    match value {
        Data::Map(map) if !map.is_empty() => write_block(value, 0, &mut out),
        Data::List(items) if !items.is_empty() => write_block(value, 0, &mut out),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_block(value: &Data, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Data::Map(map) => {
            for (key, item) in map {
                let key = scalar_string(key);
                out.push_str(&pad);
                if key.chars().count() > SIMPLE_KEY_LIMIT - 24 {
                    out.push_str("? ");
                    out.push_str(&key);
                    out.push('\n');
                    out.push_str(&pad);
                } else {
                    out.push_str(&key);
                }
                out.push(':');
                write_nested(item, indent, out);
            }
        }
        Data::List(items) => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                write_nested(item, indent, out);
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

/// After `key:` or `-`: a collection on the following lines, a scalar inline.
fn write_nested(item: &Data, indent: usize, out: &mut String) {
    match item {
        Data::Map(m) if !m.is_empty() => {
            out.push('\n');
            write_block(item, indent + 2, out);
        }
        Data::List(a) if !a.is_empty() => {
            out.push('\n');
            write_block(item, indent + 2, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&inline(item));
            out.push('\n');
        }
    }
}

fn inline(value: &Data) -> String {
    match value {
        Data::Null => "null".to_string(),
        Data::Bool(b) => b.to_string(),
        Data::Integer(i) => i.to_string(),
        Data::Float(f) => float(*f),
        Data::String(s) => scalar_string(s),
        Data::List(_) => "[]".to_string(),
        Data::Map(_) => "{}".to_string(),
    }
}

/// A float as YAML 1.1 resolves it: always a `.`, an exponent always signed
/// (`1.0e+300`; PyYAML reads `1e300` as a string), `.inf`, `-.inf`, `.nan`.
/// The digits are Rust's shortest that read back as the same `f64`.
fn float(f: f64) -> String {
    if f.is_nan() {
        return ".nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.to_string();
    }
    let text = format!("{f:?}");
    let (mantissa, exponent) = match text.split_once('e') {
        Some((m, e)) => (m.to_string(), Some(e.to_string())),
        None => (text, None),
    };
    let mut out = mantissa;
    if !out.contains('.') {
        out.push_str(".0");
    }
    if let Some(exponent) = exponent {
        out.push('e');
        if !exponent.starts_with('-') {
            out.push('+');
        }
        out.push_str(&exponent);
    }
    out
}

/// A string: bare when safe, else single-quoted, else double-quoted.
fn scalar_string(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_string()
    } else if s.chars().all(stands_as_itself) {
        format!("'{}'", s.replace('\'', "''"))
    } else {
        double_quoted(s)
    }
}

/// Whether `s` can be written without quotes: its shape matches none of
/// YAML 1.1's implicit types (numbers, dates and `.inf` start with a digit,
/// a sign or a dot; `=`, `<<` and `~` are not letters), and it is not one
/// of the boolean or null words (matched in any case, YAML 1.1's `y`/`n`
/// included, though PyYAML does not resolve those).
fn is_plain_safe(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "yes", "n", "no", "true", "false", "on", "off", "null", "nan", "inf",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_' || first == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ' '))
        && !s.ends_with(' ')
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
}

/// A character that may appear as itself inside a one-line quoted scalar:
/// printable for PyYAML's reader and not a YAML line break.
fn stands_as_itself(c: char) -> bool {
    matches!(c, ' '..='~')
        || (c >= '\u{A0}'
            && !matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{FEFF}' | '\u{FFFE}' | '\u{FFFF}'
            ))
}

/// A double-quoted scalar, escaping every character that cannot stand as
/// itself, with YAML's escapes (`\L`, `\P`, `\N`, `\xXX`, `\uXXXX`, …).
fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{B}' => out.push_str("\\v"),
            '\u{C}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '\u{1B}' => out.push_str("\\e"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if stands_as_itself(c) => out.push(c),
            c if (c as u32) <= 0xFF => out.push_str(&format!("\\x{:02X}", c as u32)),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, Data)]) -> Data {
        Data::Map(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn s(text: &str) -> Data {
        Data::String(text.to_string())
    }

    #[test]
    fn quotes_what_yaml_1_1_would_misread() {
        let doc = map(&[
            ("distributed_type", s("NO")),
            ("mixed_precision", s("no")),
            ("compute_environment", s("LOCAL_MACHINE")),
            ("version", s("1.10")),
            ("time", s("1:30")),
            ("use_cpu", Data::Bool(false)),
            ("num_processes", Data::Integer(1)),
            ("tpu_env", Data::List(Vec::new())),
            ("empty", s("")),
            ("quote", s("it's")),
            ("date", s("2024-01-02")),
            ("merge", s("<<")),
            ("value", s("=")),
            ("On", s("Off")),
        ]);
        assert_eq!(
            to_string(&doc),
            "distributed_type: 'NO'\nmixed_precision: 'no'\ncompute_environment: LOCAL_MACHINE\n\
             version: '1.10'\ntime: '1:30'\nuse_cpu: false\nnum_processes: 1\ntpu_env: []\n\
             empty: ''\nquote: 'it''s'\ndate: '2024-01-02'\nmerge: '<<'\nvalue: '='\n'On': 'Off'\n"
        );
    }

    #[test]
    fn escapes_what_cannot_stand_in_a_yaml_stream() {
        let doc = map(&[
            ("del", s("a\u{7f}b")),
            ("ls", s("\u{2028}\u{2029}\u{85}")),
            ("c1", s("\u{9b}\u{1}")),
            ("multi", s("one\ntwo")),
        ]);
        assert_eq!(
            to_string(&doc),
            "del: \"a\\x7Fb\"\nls: \"\\L\\P\\N\"\nc1: \"\\x9B\\x01\"\nmulti: \"one\\ntwo\"\n"
        );
    }

    #[test]
    fn floats_always_resolve_as_floats() {
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(0.1), "0.1");
        assert_eq!(float(1e300), "1.0e+300");
        assert_eq!(float(-2.5e-7), "-2.5e-7");
        assert_eq!(float(f64::INFINITY), ".inf");
        assert_eq!(float(f64::NEG_INFINITY), "-.inf");
        assert_eq!(float(f64::NAN), ".nan");
    }

    #[test]
    fn nests_mappings_and_lists() {
        let doc = map(&[
            (
                "a",
                map(&[(
                    "b",
                    Data::List(vec![Data::Integer(1), s("x"), map(&[("c", Data::Null)])]),
                )]),
            ),
            ("path", s("/opt/models")),
        ]);
        assert_eq!(
            to_string(&doc),
            "a:\n  b:\n    - 1\n    - x\n    -\n      c: null\npath: /opt/models\n"
        );
    }
}
