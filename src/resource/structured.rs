//! Structured file content written as KDL children: `yaml { … }`,
//! `json { … }`, `toml { … }`.
//!
//! - a node with one argument is a scalar: `use_cpu #false`
//! - a node with several arguments is a list: `gpu_ids 0 1`
//! - a node with a children block is a mapping; a block whose children are
//!   all `-` is a list: `items { - "a"; - "b" }`
//! - a node with neither is null; the type annotation `(list)` forces a list,
//!   so `(list)tpu_env` is `tpu_env: []`.
//!
//! Numbers keep KDL's kinds: `#inf`, `#-inf` and `#nan` are YAML's `.inf`,
//! `-.inf`, `.nan` and TOML's `inf`, `-inf`, `nan`; JSON has none of them, so
//! in `json { … }` they are a spec error at the value.

use std::collections::BTreeMap;

use kdl::{KdlNode, KdlValue};
use miette::SourceSpan;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
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

/// A value of structured content, in the spec's order, with KDL's number
/// kinds kept (a float may be infinite or NaN, which JSON values cannot hold).
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    List(Vec<Data>),
    /// Keys in the order the spec gives them.
    Map(Vec<(String, Data)>),
}

impl Data {
    /// The JSON view, for lints and the recorded desired state (a
    /// non-finite float becomes null there; the file keeps it).
    pub fn to_json(&self) -> Value {
        match self {
            Data::Null => Value::Null,
            Data::Bool(b) => Value::Bool(*b),
            Data::Integer(i) => Value::Number((*i).into()),
            Data::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Data::String(s) => Value::String(s.clone()),
            Data::List(items) => Value::Array(items.iter().map(Data::to_json).collect()),
            Data::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Null => serializer.serialize_unit(),
            Data::Bool(b) => serializer.serialize_bool(*b),
            Data::Integer(i) => serializer.serialize_i64(*i),
            Data::Float(f) => serializer.serialize_f64(*f),
            Data::String(s) => serializer.serialize_str(s),
            Data::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Data::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// A structured document with the spans of its keys (dotted paths), so lints
/// can point at `mixed_precision` in the spec.
#[derive(Debug, Clone)]
pub struct Structured {
    pub format: Format,
    /// The content as written in the spec.
    pub data: Data,
    /// Its JSON view (see [`Data::to_json`]), for lints.
    pub value: Value,
    pub spans: BTreeMap<String, SourceSpan>,
}

impl Structured {
    /// Reads the children of `node` as a mapping.
    pub fn parse(format: Format, node: &KdlNode, reader: &NodeReader<'_, '_>) -> Option<Self> {
        let mut spans = BTreeMap::new();
        let data = block(format, node, "", reader, &mut spans)?;
        if format == Format::Toml && contains_null(&data) {
            reader.fail(
                Problem::error("spec::toml-null", "TOML has no null value")
                    .label(node.name().span(), "a key in this block has no value")
                    .help("give every key a value, or use yaml/json"),
            );
            return None;
        }
        Some(Structured {
            format,
            value: data.to_json(),
            data,
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
            Format::Yaml => Ok(crate::yaml::to_string(&self.data)),
            Format::Json => serde_json::to_string_pretty(&self.data)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string()),
            Format::Toml => toml::to_string(&self.data).map_err(|e| e.to_string()),
        }
    }
}

fn block(
    format: Format,
    node: &KdlNode,
    prefix: &str,
    reader: &NodeReader<'_, '_>,
    spans: &mut BTreeMap<String, SourceSpan>,
) -> Option<Data> {
    let children = node.children().map(|d| d.nodes()).unwrap_or_default();
    let is_list = !children.is_empty() && children.iter().all(|c| c.name().value() == "-");
    if is_list {
        let mut items = Vec::new();
        for (i, child) in children.iter().enumerate() {
            items.push(member(
                format,
                child,
                &format!("{prefix}{i}"),
                reader,
                spans,
            )?);
        }
        return Some(Data::List(items));
    }
    let mut map: Vec<(String, Data)> = Vec::new();
    let mut ok = true;
    for child in children {
        let key = child.name().value().to_string();
        let path = format!("{prefix}{key}");
        if map.iter().any(|(k, _)| *k == key) {
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
        match member(format, child, &path, reader, spans) {
            Some(v) => map.push((key, v)),
            None => ok = false,
        }
    }
    ok.then_some(Data::Map(map))
}

fn member(
    format: Format,
    node: &KdlNode,
    path: &str,
    reader: &NodeReader<'_, '_>,
    spans: &mut BTreeMap<String, SourceSpan>,
) -> Option<Data> {
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
        return block(format, node, &format!("{path}."), reader, spans);
    }
    let mut values = Vec::new();
    for entry in &args {
        let value = match entry.value() {
            KdlValue::String(s) => Data::String(reader.cx.interpolate(s, entry.span())?),
            KdlValue::Integer(i) => match i64::try_from(*i) {
                Ok(i) => Data::Integer(i),
                Err(_) => {
                    reader.wrong_type(entry, "a number that fits in 64 bits");
                    return None;
                }
            },
            KdlValue::Float(f) if !f.is_finite() && format == Format::Json => {
                reader.fail(
                    Problem::error("spec::non-finite", "JSON has no infinity or NaN")
                        .label(entry.span(), "this number cannot be written as JSON")
                        .help(
                            "write it as a string (\"inf\"), or use yaml { … } or toml { … }, which have them",
                        ),
                );
                return None;
            }
            KdlValue::Float(f) => Data::Float(*f),
            KdlValue::Bool(b) => Data::Bool(*b),
            KdlValue::Null => Data::Null,
        };
        values.push(value);
    }
    Some(match (forced_list, values.pop()) {
        (false, None) => Data::Null,
        (false, Some(only)) if values.is_empty() => only,
        (_, last) => {
            values.extend(last);
            Data::List(values)
        }
    })
}

fn contains_null(value: &Data) -> bool {
    match value {
        Data::Null => true,
        Data::List(items) => items.iter().any(contains_null),
        Data::Map(entries) => entries.iter().any(|(_, v)| contains_null(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::Data;

    #[test]
    fn toml_writes_non_finite_floats_and_json_views_them_as_null() {
        let data = Data::Map(vec![
            ("a".to_string(), Data::Float(f64::INFINITY)),
            ("b".to_string(), Data::Float(f64::NEG_INFINITY)),
            ("c".to_string(), Data::Float(1.5)),
        ]);
        assert_eq!(
            toml::to_string(&data).unwrap(),
            "a = inf\nb = -inf\nc = 1.5\n"
        );
        assert_eq!(
            data.to_json(),
            serde_json::json!({"a": null, "b": null, "c": 1.5})
        );
    }
}
