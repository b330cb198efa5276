//! `vars { … }` and `{name}` interpolation.

use indexmap_like::OrderedVars;

/// Variables in the order they were declared; each may use the ones before it.
#[derive(Debug, Default, Clone)]
pub struct Vars {
    values: OrderedVars,
}

impl Vars {
    pub fn insert(&mut self, name: String, value: String) {
        self.values.insert(name, value);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.names()
    }

    /// Replaces every `{name}` with its value. `{{` and `}}` stand for literal
    /// braces. Text such as `{"a": 1}` that is not a `{identifier}` is kept, so
    /// JSON or YAML written inline does not need escaping. Returns the first
    /// unknown name on failure.
    pub fn interpolate(&self, text: &str) -> Result<String, String> {
        if !text.contains('{') && !text.contains("}}") {
            return Ok(text.to_string());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("{{") {
                out.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                out.push('}');
                rest = after;
            } else if let Some((name, after)) = variable_at(tail) {
                match self.get(name) {
                    Some(value) => out.push_str(value),
                    None => return Err(name.to_string()),
                }
                rest = after;
            } else {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// `{identifier}` at the start of `text`: the name and what follows it.
fn variable_at(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_prefix('{')?;
    let end = inner.find('}')?;
    let name = &inner[..end];
    let mut chars = name.chars();
    let first = chars.next()?;
    let valid = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    valid.then(|| (name, &inner[end + 1..]))
}

/// A tiny insertion-ordered map; vars are few, so a Vec is the right tool.
mod indexmap_like {
    #[derive(Debug, Default, Clone)]
    pub struct OrderedVars(Vec<(String, String)>);

    impl OrderedVars {
        pub fn insert(&mut self, name: String, value: String) {
            match self.0.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => self.0.push((name, value)),
            }
        }

        pub fn get(&self, name: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        pub fn names(&self) -> impl Iterator<Item = &str> {
            self.0.iter().map(|(n, _)| n.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Vars;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.insert("tools".into(), "~/tools".into());
        v.insert("comfy".into(), "~/tools/ComfyUI".into());
        v
    }

    #[test]
    fn replaces_known_names() {
        assert_eq!(
            vars().interpolate("{comfy}/venv").unwrap(),
            "~/tools/ComfyUI/venv"
        );
        assert_eq!(
            vars().interpolate("{tools}/{comfy}").unwrap(),
            "~/tools/~/tools/ComfyUI"
        );
    }

    #[test]
    fn reports_the_unknown_name() {
        assert_eq!(vars().interpolate("{tool}/x").unwrap_err(), "tool");
    }

    #[test]
    fn keeps_json_and_escaped_braces() {
        assert_eq!(vars().interpolate(r#"{"a": 1}"#).unwrap(), r#"{"a": 1}"#);
        assert_eq!(vars().interpolate("{{tools}}").unwrap(), "{tools}");
        assert_eq!(vars().interpolate("a } b { c").unwrap(), "a } b { c");
    }
}
