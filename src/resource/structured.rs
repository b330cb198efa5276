//! Structured file content written as KDL children: `yaml { … }`,
//! `json { … }`, `toml { … }`.
//!
//! - a node with one argument is a scalar: `use_cpu #false`
//! - a node with several arguments is a list: `gpu_ids 0 1`
//! - a node with a children block is a mapping; a block whose children are
//!   all `-` is a list: `items { - "a"; - "b" }`
//! - a node with neither is null; the type annotation `(list)` forces a list,
//!   so `(list)tpu_env` is `tpu_env: []`.

use std::collections::BTreeMap;

use kdl::{KdlNode, KdlValue};
use miette::SourceSpan;
use serde_json::{Map, Number, Value};

use crate::diagnostic::Problem;
use crate::spec::reader::NodeReader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Toml,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Yaml => "yaml",
            Format::Json => "json",
            Format::Toml => "toml",
        }
    }
}

/// A structured document with the spans of its keys (dotted paths), so lints
/// can point at `mixed_precision` in the spec.
#[derive(Debug, Clone)]
pub struct Structured {
    pub format: Format,
    pub value: Value,
    pub spans: BTreeMap<String, SourceSpan>,
}

impl Structured {
    /// Reads the children of `node` as a mapping.
    pub fn parse(format: Format, node: &KdlNode, reader: &NodeReader<'_, '_>) -> Option<Self> {
        let mut spans = BTreeMap::new();
        let value = block(node, "", reader, &mut spans)?;
        if format == Format::Toml && contains_null(&value) {
            reader.fail(
                Problem::error("spec::toml-null", "TOML has no null value")
                    .label(node.name().span(), "a key in this block has no value")
                    .help("give every key a value, or use yaml/json"),
            );
            return None;
        }
        Some(Structured {
            format,
            value,
            spans,
        })
    }

    /// The top-level value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key)
    }

    /// The file's bytes in its format.
    pub fn render(&self) -> Result<String, String> {
        match self.format {
            Format::Yaml => Ok(crate::yaml::to_string(&self.value)),
            Format::Json => serde_json::to_string_pretty(&self.value)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string()),
            Format::Toml => toml::to_string(&self.value).map_err(|e| e.to_string()),
        }
    }
}

fn block(
    node: &KdlNode,
    prefix: &str,
    reader: &NodeReader<'_, '_>,
    spans: &mut BTreeMap<String, SourceSpan>,
) -> Option<Value> {
    let children = node.children().map(|d| d.nodes()).unwrap_or_default();
    let is_list = !children.is_empty() && children.iter().all(|c| c.name().value() == "-");
    if is_list {
        let mut items = Vec::new();
        for (i, child) in children.iter().enumerate() {
            items.push(member(child, &format!("{prefix}{i}"), reader, spans)?);
        }
        return Some(Value::Array(items));
    }
    let mut map = Map::new();
    let mut ok = true;
    for child in children {
        let key = child.name().value().to_string();
        let path = format!("{prefix}{key}");
        if map.contains_key(&key) {
            reader.fail(
                Problem::error(
                    "spec::duplicate-key",
                    format!("key `{path}` is given twice"),
                )
                .label(child.name().span(), "repeated here"),
            );
            ok = false;
            continue;
        }
        spans.insert(path.clone(), child.name().span());
        match member(child, &path, reader, spans) {
            Some(v) => {
                map.insert(key, v);
            }
            None => ok = false,
        }
    }
    ok.then_some(Value::Object(map))
}

fn member(
    node: &KdlNode,
    path: &str,
    reader: &NodeReader<'_, '_>,
    spans: &mut BTreeMap<String, SourceSpan>,
) -> Option<Value> {
    let args: Vec<_> = node
        .entries()
        .iter()
        .filter(|e| e.name().is_none())
        .collect();
    if let Some(prop) = node.entries().iter().find(|e| e.name().is_some()) {
        reader.fail(
            Problem::error(
                "spec::wrong-type",
                "structured content takes no key=value properties",
            )
            .label(prop.span(), "write this as a child node instead"),
        );
        return None;
    }
    let forced_list = node.ty().is_some_and(|t| t.value() == "list");
    if node.children().is_some() {
        if !args.is_empty() {
            reader.fail(
                Problem::error(
                    "spec::wrong-type",
                    "a key has either a value or a block, not both",
                )
                .label(args[0].span(), "value given beside a block"),
            );
            return None;
        }
        return block(node, &format!("{path}."), reader, spans);
    }
    let mut values = Vec::new();
    for entry in &args {
        let value = match entry.value() {
            KdlValue::String(s) => Value::String(reader.cx.interpolate(s, entry.span())?),
            KdlValue::Integer(i) => match i64::try_from(*i) {
                Ok(i) => Value::Number(i.into()),
                Err(_) => {
                    reader.wrong_type(entry, "a number that fits in 64 bits");
                    return None;
                }
            },
            KdlValue::Float(f) => Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            KdlValue::Bool(b) => Value::Bool(*b),
            KdlValue::Null => Value::Null,
        };
        values.push(value);
    }
    Some(match (forced_list, values.len()) {
        (true, _) => Value::Array(values),
        (false, 0) => Value::Null,
        (false, 1) => values.pop().expect("one value"),
        (false, _) => Value::Array(values),
    })
}

fn contains_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().any(contains_null),
        Value::Object(map) => map.values().any(contains_null),
        _ => false,
    }
}
