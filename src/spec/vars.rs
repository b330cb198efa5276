//! `vars { … }` and `{name}` interpolation.

use std::sync::atomic::{AtomicUsize, Ordering};

use indexmap_like::OrderedVars;

/// The most bytes interpolation may produce over a whole spec. Each `{name}`
/// copies a variable's value, so variables that each use the previous one
/// twice double in size: without a budget a few hundred bytes of spec ask
/// for gigabytes.
pub const MAX_EXPANDED_BYTES: usize = 16 << 20;

/// Variables in the order they were declared; each may use the ones before it.
#[derive(Debug, Default)]
pub struct Vars {
    values: OrderedVars,
    /// Bytes produced by interpolation so far, against [`MAX_EXPANDED_BYTES`].
    expanded: AtomicUsize,
}

impl Clone for Vars {
    fn clone(&self) -> Self {
        Vars {
            values: self.values.clone(),
            expanded: AtomicUsize::new(self.expanded.load(Ordering::Relaxed)),
        }
    }
}

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolateError {
    /// `{name}` names no variable.
    Unknown(String),
    /// The spec's expansions together would pass [`MAX_EXPANDED_BYTES`].
    TooLarge,
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
    /// unknown name on failure, or [`InterpolateError::TooLarge`] once the
    /// spec's expansions pass [`MAX_EXPANDED_BYTES`].
    pub fn interpolate(&self, text: &str) -> Result<String, InterpolateError> {
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
                let value = self
                    .get(name)
                    .ok_or_else(|| InterpolateError::Unknown(name.to_string()))?;
                let spent = self.expanded.load(Ordering::Relaxed) + value.len();
                if spent > MAX_EXPANDED_BYTES {
                    return Err(InterpolateError::TooLarge);
                }
                self.expanded.store(spent, Ordering::Relaxed);
                out.push_str(value);
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
    use super::{InterpolateError, MAX_EXPANDED_BYTES, Vars};

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
        assert_eq!(
            vars().interpolate("{tool}/x").unwrap_err(),
            InterpolateError::Unknown("tool".into())
        );
    }

    #[test]
    fn doubling_variables_stop_at_the_budget() {
        let mut v = Vars::default();
        v.insert("a".into(), "x".repeat(1 << 20));
        let mut failed = false;
        for _ in 0..64 {
            match v.interpolate("{a}{a}") {
                Ok(value) => v.insert("a".into(), value),
                Err(e) => {
                    assert_eq!(e, InterpolateError::TooLarge);
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "the budget was never reached");
        assert!(v.get("a").unwrap().len() <= MAX_EXPANDED_BYTES);
    }

    #[test]
    fn keeps_json_and_escaped_braces() {
        assert_eq!(vars().interpolate(r#"{"a": 1}"#).unwrap(), r#"{"a": 1}"#);
        assert_eq!(vars().interpolate("{{tools}}").unwrap(), "{tools}");
        assert_eq!(vars().interpolate("a } b { c").unwrap(), "a } b { c");
    }
}
