//! A YAML writer for plain data that reads back the same under YAML 1.1 and
//! 1.2.
//!
//! accelerate reads its config with PyYAML, a YAML 1.1 reader, where a bare
//! `no` is the boolean false: `mixed_precision: no` silently turns fp32 off.
//! YAML 1.2 emitters (serde_yaml and its forks) write `no` bare, so plasma
//! writes YAML itself and quotes every string a 1.1 reader could take for
//! something else, as accelerate's own files do (`mixed_precision: 'no'`).

use serde_json::Value;

/// The document for a value, ending in a newline.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_block(value, 0, &mut out),
        Value::Array(items) if !items.is_empty() => write_block(value, 0, &mut out),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_block(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                out.push_str(&pad);
                out.push_str(&scalar_string(key));
                out.push(':');
                write_nested(item, indent, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                write_nested(item, indent, out);
            }
        }
        _ => unreachable!("write_block is only called with collections"),
    }
}

/// After `key:` or `-`: a collection on the following lines, a scalar inline.
fn write_nested(item: &Value, indent: usize, out: &mut String) {
    match item {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_block(item, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
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

fn inline(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_string(s),
        Value::Array(_) => "[]".to_string(),
        Value::Object(_) => "{}".to_string(),
    }
}

/// A string, bare when no YAML 1.1 or 1.2 reader could misread it.
fn scalar_string(s: &str) -> String {
    if s.chars().any(|c| c.is_control()) {
        // A JSON string is a valid YAML double-quoted scalar.
        return serde_json::to_string(s).expect("strings serialise");
    }
    if needs_quotes(s) {
        format!("'{}'", s.replace('\'', "''"))
    } else {
        s.to_string()
    }
}

fn needs_quotes(s: &str) -> bool {
    const SPECIAL_WORDS: &[&str] = &[
        "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~", "nan", ".nan", ".inf",
        "-.inf", "+.inf", "inf",
    ];
    const INDICATORS: &[char] = &[
        '-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@',
        '`',
    ];
    s.is_empty()
        || SPECIAL_WORDS.contains(&s.to_ascii_lowercase().as_str())
        || s.starts_with(INDICATORS)
        || s.starts_with(' ')
        || s.ends_with(' ')
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || looks_numeric(s)
}

/// Integers, floats, octal, hex, and YAML 1.1's sexagesimal `1:30`.
fn looks_numeric(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let first = body.chars().next();
    first.is_some_and(|c| c.is_ascii_digit() || c == '.')
        && body.chars().all(|c| {
            c.is_ascii_hexdigit()
                || matches!(c, '.' | '_' | ':' | 'x' | 'o' | 'e' | 'E' | '+' | '-')
        })
}

#[cfg(test)]
mod tests {
    use super::to_string;
    use serde_json::json;

    #[test]
    fn quotes_what_yaml_1_1_would_misread() {
        let doc = json!({
            "distributed_type": "NO",
            "mixed_precision": "no",
            "compute_environment": "LOCAL_MACHINE",
            "version": "1.10",
            "time": "1:30",
            "use_cpu": false,
            "num_processes": 1,
            "tpu_env": [],
            "empty": "",
            "quote": "it's",
        });
        assert_eq!(
            to_string(&doc),
            "distributed_type: 'NO'\nmixed_precision: 'no'\ncompute_environment: LOCAL_MACHINE\n\
             version: '1.10'\ntime: '1:30'\nuse_cpu: false\nnum_processes: 1\ntpu_env: []\n\
             empty: ''\nquote: it's\n"
        );
    }

    #[test]
    fn nests_mappings_and_lists() {
        let doc = json!({"a": {"b": [1, "x", {"c": null}]}, "multi": "one\ntwo"});
        assert_eq!(
            to_string(&doc),
            "a:\n  b:\n    - 1\n    - x\n    -\n      c: null\nmulti: \"one\\ntwo\"\n"
        );
    }
}
