//! A reader over one resource node that records every problem it meets, so
//! that the loader can report all of a file's mistakes in one run.
//!
//! Each resource kind parses its own fields through this reader; fields it
//! never asked for are reported as unknown (with a "did you mean") when the
//! reader is finished.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::vars::{InterpolateError, MAX_EXPANDED_BYTES, Vars};
use super::{Address, Reference, Spanned};
use crate::diagnostic::{Problem, did_you_mean};
use crate::size::{self, ExpectedSize, SizeError};

/// What every reader shares: the variables, the spec's folder and the problem list.
pub struct LoadContext<'a> {
    pub vars: &'a Vars,
    pub spec_dir: &'a std::path::Path,
    pub source_text: &'a str,
    pub problems: RefCell<Vec<Problem>>,
}

impl LoadContext<'_> {
    pub fn report(&self, problem: Problem) {
        self.problems.borrow_mut().push(problem);
    }

    /// Interpolates `{var}` references in a string value, reporting unknown
    /// names and expansions past the spec's budget.
    pub fn interpolate(&self, text: &str, span: SourceSpan) -> Option<String> {
        match self.vars.interpolate(text) {
            Ok(s) => Some(s),
            Err(InterpolateError::Unknown(unknown)) => {
                let label_span = locate(self.source_text, span, &format!("{{{unknown}}}"));
                let mut problem = Problem::error(
                    "spec::unknown-variable",
                    format!("unknown variable `{unknown}`"),
                )
                .label(label_span, "not defined in `vars`");
                let names: Vec<&str> = self.vars.names().collect();
                problem = match did_you_mean(&unknown, names.iter().copied()) {
                    Some(s) => problem.help(format!("did you mean `{s}`?")),
                    None => problem.help("define it in the `vars { … }` block"),
                };
                self.report(problem);
                None
            }
            Err(InterpolateError::TooLarge) => {
                self.report(too_large_expansion(span));
                None
            }
        }
    }

    /// Expands `~` and resolves a relative path against the spec's folder.
    pub fn resolve_path(&self, text: &str) -> PathBuf {
        let expanded = if text == "~" {
            home_dir()
        } else if let Some(rest) = text.strip_prefix("~/") {
            home_dir().join(rest)
        } else {
            PathBuf::from(text)
        };
        if expanded.is_absolute() {
            expanded
        } else {
            self.spec_dir.join(expanded)
        }
    }
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The error for an interpolation past [`MAX_EXPANDED_BYTES`].
pub fn too_large_expansion(span: SourceSpan) -> Problem {
    Problem::error(
        "spec::expansion-too-large",
        format!(
            "variables expand to more than {} MiB",
            MAX_EXPANDED_BYTES >> 20
        ),
    )
    .label(span, "expanding this passes the limit")
    .help("a variable that uses another several times grows with each use; write the value out instead")
}

/// Narrows a span to the first occurrence of `needle` inside it, when present.
fn locate(source: &str, span: SourceSpan, needle: &str) -> SourceSpan {
    let start = span.offset();
    let end = (start + span.len()).min(source.len());
    source
        .get(start..end)
        .and_then(|s| s.find(needle))
        .map(|i| SourceSpan::new((start + i).into(), needle.len()))
        .unwrap_or(span)
}

/// Reads the children and properties of one node.
pub struct NodeReader<'a, 'c> {
    pub node: &'a KdlNode,
    pub cx: &'c LoadContext<'c>,
    used_children: RefCell<HashSet<usize>>,
    used_props: RefCell<HashSet<String>>,
    known_children: RefCell<Vec<&'static str>>,
    known_props: RefCell<Vec<&'static str>>,
    /// Set when a required field failed, so the kind can give up quietly.
    failed: RefCell<bool>,
    /// References to other resources met in the fields, for the graph.
    references: RefCell<Vec<Reference>>,
    /// Required fields that were missing, reported at `finish` unless a
    /// misspelt field explains them.
    missing: RefCell<Vec<(&'static str, Problem)>>,
}

impl<'a, 'c> NodeReader<'a, 'c> {
    pub fn new(node: &'a KdlNode, cx: &'c LoadContext<'c>) -> Self {
        NodeReader {
            node,
            cx,
            used_children: RefCell::default(),
            used_props: RefCell::default(),
            known_children: RefCell::default(),
            known_props: RefCell::default(),
            failed: RefCell::new(false),
            references: RefCell::default(),
            missing: RefCell::default(),
        }
    }

    pub fn name_span(&self) -> SourceSpan {
        self.node.name().span()
    }

    /// True when any field of this node was reported as wrong.
    pub fn failed(&self) -> bool {
        *self.failed.borrow()
    }

    pub fn fail(&self, problem: Problem) {
        *self.failed.borrow_mut() = true;
        self.cx.report(problem);
    }

    fn children(&self) -> impl Iterator<Item = (usize, &'a KdlNode)> {
        self.node
            .children()
            .map(|d| d.nodes())
            .unwrap_or_default()
            .iter()
            .enumerate()
    }

    /// Every child node called `name`, marking them as used.
    pub fn all(&self, name: &'static str) -> Vec<&'a KdlNode> {
        self.known_children.borrow_mut().push(name);
        let mut found = Vec::new();
        for (i, child) in self.children() {
            if child.name().value() == name {
                self.used_children.borrow_mut().insert(i);
                found.push(child);
            }
        }
        found
    }

    /// The single child node called `name`; a repeat is an error.
    pub fn child(&self, name: &'static str) -> Option<&'a KdlNode> {
        let all = self.all(name);
        if let [first, second, ..] = all.as_slice() {
            self.fail(
                Problem::error(
                    "spec::duplicate-field",
                    format!("`{name}` is given more than once"),
                )
                .label(second.name().span(), "repeated here")
                .label(first.name().span(), "first given here")
                .help("keep one of them"),
            );
        }
        all.first().copied()
    }

    /// A child's single argument, without interpretation.
    fn single_arg(&self, child: &'a KdlNode, what: &str) -> Option<&'a KdlEntry> {
        let args: Vec<&KdlEntry> = child
            .entries()
            .iter()
            .filter(|e| e.name().is_none())
            .collect();
        match args.as_slice() {
            [one] => Some(one),
            [] => {
                self.fail(
                    Problem::error(
                        "spec::missing-value",
                        format!("`{}` needs a value", child.name().value()),
                    )
                    .label(child.name().span(), format!("expected {what} here")),
                );
                None
            }
            [_, extra, ..] => {
                self.fail(
                    Problem::error(
                        "spec::too-many-values",
                        format!("`{}` takes one value", child.name().value()),
                    )
                    .label(extra.span(), "unexpected extra value"),
                );
                None
            }
        }
    }

    fn require(&self, name: &'static str, what: &str) -> Option<&'a KdlNode> {
        let child = self.child(name);
        if child.is_none() {
            *self.failed.borrow_mut() = true;
            let problem = Problem::error(
                "spec::missing-field",
                format!(
                    "{} `{}` is missing `{name}`",
                    self.node.name().value(),
                    self.resource_name().unwrap_or_default()
                ),
            )
            .label(self.name_span(), format!("this needs `{name}`"))
            .help(format!("add `{name} {what}` inside the block"));
            self.missing.borrow_mut().push((name, problem));
        }
        child
    }

    /// The resource's name: the node's first value (`venv comfyui { … }`).
    pub fn resource_name(&self) -> Option<String> {
        self.node
            .entries()
            .iter()
            .find(|e| e.name().is_none())
            .and_then(|e| e.value().as_string())
            .map(str::to_string)
    }

    pub fn wrong_type(&self, entry: &KdlEntry, expected: &str) {
        self.fail(
            Problem::error(
                "spec::wrong-type",
                format!("expected {expected}, found {}", describe(entry.value())),
            )
            .label(entry.span(), format!("this should be {expected}")),
        );
    }

    /// Interprets an entry as a string, interpolating variables.
    pub fn entry_string(&self, entry: &KdlEntry) -> Option<Spanned<String>> {
        match entry.value() {
            KdlValue::String(s) => self
                .cx
                .interpolate(s, entry.span())
                .map(|v| Spanned::new(v, entry.span())),
            _ => {
                self.wrong_type(entry, "a string");
                None
            }
        }
    }

    pub fn string(&self, name: &'static str) -> Option<Spanned<String>> {
        let child = self.require(name, "\"…\"")?;
        let entry = self.single_arg(child, "a string")?;
        self.entry_string(entry)
    }

    pub fn opt_string(&self, name: &'static str) -> Option<Spanned<String>> {
        let child = self.child(name)?;
        let entry = self.single_arg(child, "a string")?;
        self.entry_string(entry)
    }

    pub fn path(&self, name: &'static str) -> Option<Spanned<PathBuf>> {
        self.string(name)
            .map(|s| Spanned::new(self.cx.resolve_path(&s.value), s.span))
    }

    pub fn opt_path(&self, name: &'static str) -> Option<Spanned<PathBuf>> {
        self.opt_string(name)
            .map(|s| Spanned::new(self.cx.resolve_path(&s.value), s.span))
    }

    pub fn opt_bool(&self, name: &'static str) -> Option<Spanned<bool>> {
        let child = self.child(name)?;
        let entry = self.single_arg(child, "#true or #false")?;
        match entry.value() {
            KdlValue::Bool(b) => Some(Spanned::new(*b, entry.span())),
            KdlValue::String(word) if yaml_bool(word).is_some() => {
                // YAML's and KDL 1's booleans read as strings in KDL 2.
                let fix = if yaml_bool(word) == Some(true) {
                    "#true"
                } else {
                    "#false"
                };
                self.fail(
                    Problem::error(
                        "spec::wrong-type",
                        format!("expected #true or #false, found the string \"{word}\""),
                    )
                    .label(entry.span(), format!("KDL 2 writes this `{fix}`"))
                    .help(format!("write `{} {fix}`", child.name().value())),
                );
                None
            }
            _ => {
                self.wrong_type(entry, "#true or #false");
                None
            }
        }
    }

    pub fn opt_integer(&self, name: &'static str) -> Option<Spanned<i128>> {
        let child = self.child(name)?;
        let entry = self.single_arg(child, "a number")?;
        match entry.value() {
            KdlValue::Integer(i) => Some(Spanned::new(*i, entry.span())),
            _ => {
                self.wrong_type(entry, "a whole number");
                None
            }
        }
    }

    /// One of a fixed set of words.
    pub fn opt_choice(
        &self,
        name: &'static str,
        choices: &[&'static str],
    ) -> Option<Spanned<&'static str>> {
        let value = self.opt_string(name)?;
        match choices.iter().find(|c| **c == value.value) {
            Some(c) => Some(Spanned::new(*c, value.span)),
            None => {
                let mut problem = Problem::error(
                    "spec::invalid-choice",
                    format!("`{}` is not a valid `{name}`", value.value),
                )
                .label(
                    value.span,
                    format!("expected one of: {}", choices.join(", ")),
                );
                if let Some(s) = did_you_mean(&value.value, choices.iter().copied()) {
                    problem = problem.help(format!("did you mean `{s}`?"));
                }
                self.fail(problem);
                None
            }
        }
    }

    pub fn opt_duration(&self, name: &'static str) -> Option<Spanned<Duration>> {
        let value = self.opt_string(name)?;
        match humantime::parse_duration(&value.value) {
            Ok(d) => Some(Spanned::new(d, value.span)),
            Err(e) => {
                self.fail(
                    Problem::error(
                        "spec::malformed-duration",
                        format!("`{}` is not a duration", value.value),
                    )
                    .label(value.span, e.to_string())
                    .help("write a duration such as \"90s\", \"15m\" or \"2h 30m\""),
                );
                None
            }
        }
    }

    /// A size: a whole number of bytes, or a string with a unit checked at
    /// the precision it was written in (see [`crate::size`]). Negative,
    /// fractional and too large sizes are errors at their span.
    pub fn opt_size(&self, name: &'static str) -> Option<Spanned<ExpectedSize>> {
        let child = self.child(name)?;
        let entry = self.single_arg(child, "a size")?;
        let parsed = match entry.value() {
            KdlValue::Integer(i) => match u64::try_from(*i) {
                Ok(v) => Ok(ExpectedSize::exact(v)),
                Err(_) if *i < 0 => Err(None),
                Err(_) => Err(Some(SizeError::TooLarge)),
            },
            KdlValue::Float(_) => Err(Some(SizeError::Fraction)),
            _ => {
                let text = self.entry_string(entry)?;
                size::parse(&text.value).map_err(Some)
            }
        };
        let error = match parsed {
            Ok(size) => return Some(Spanned::new(size, entry.span())),
            Err(error) => error,
        };
        let shown = entry
            .value()
            .as_string()
            .map_or_else(|| entry.value().to_string(), str::to_string);
        let problem = match error {
            Some(SizeError::TooLarge) => Problem::error(
                "spec::size-too-large",
                format!("`{shown}` is more bytes than a file can have"),
            )
            .label(entry.span(), "too large")
            .help(format!(
                "a size is at most {} bytes (16 EiB); check the unit",
                u64::MAX
            )),
            Some(SizeError::Fraction) => Problem::error(
                "spec::fractional-size",
                format!("`{shown}` is a fraction of a byte"),
            )
            .label(entry.span(), "not a whole number of bytes")
            .help(
                "write a whole byte count such as 2132626102, or a size with a unit such as \
                 \"2.1GB\" (matched within half its last digit, here 0.05 GB)",
            ),
            Some(SizeError::Malformed) | None => {
                Problem::error("spec::malformed-size", format!("`{shown}` is not a size"))
                    .label(entry.span(), "not a size")
                    .help("write a byte count such as 2132626102, or \"2.1GB\", \"512MiB\"")
            }
        };
        self.fail(problem);
        None
    }

    /// The string arguments of every child called `name` (`forbid a b c`).
    pub fn string_list(&self, name: &'static str) -> Vec<Spanned<String>> {
        let mut out = Vec::new();
        for child in self.all(name) {
            for entry in child.entries().iter().filter(|e| e.name().is_none()) {
                if let Some(s) = self.entry_string(entry) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// A reference to another resource, such as `repo.comfyui`.
    pub fn reference(&self, name: &'static str, kind: &'static str) -> Option<Reference> {
        let value = self.string(name)?;
        let reference = self.parse_reference(&value, Some(kind))?;
        self.references.borrow_mut().push(reference.clone());
        Some(reference)
    }

    /// Records a reference read from a nested block (by another reader) as
    /// one of this node's, so it becomes an edge of the graph.
    pub fn add_reference(&self, reference: Reference) {
        self.references.borrow_mut().push(reference);
    }

    /// The references the fields made, which become edges of the graph.
    pub fn references(&self) -> Vec<Reference> {
        self.references.borrow().clone()
    }

    pub fn parse_reference(
        &self,
        value: &Spanned<String>,
        kind: Option<&'static str>,
    ) -> Option<Reference> {
        match Address::parse(&value.value) {
            Some(address) if kind.is_none_or(|k| address.kind == k) => Some(Reference {
                address,
                span: value.span,
            }),
            _ => {
                let expected = kind.map_or("kind.name".to_string(), |k| format!("{k}.NAME"));
                self.fail(
                    Problem::error(
                        "spec::malformed-reference",
                        format!(
                            "`{}` is not a reference to a {}",
                            value.value,
                            kind.unwrap_or("resource")
                        ),
                    )
                    .label(value.span, format!("expected `{expected}`")),
                );
                None
            }
        }
    }

    /// A property (`key=value`) of a child node, marked as known.
    pub fn prop<'n>(&self, child: &'n KdlNode, key: &'static str) -> Option<&'n KdlEntry> {
        self.known_props.borrow_mut().push(key);
        let entry = child
            .entries()
            .iter()
            .find(|e| e.name().is_some_and(|n| n.value() == key));
        if entry.is_some() {
            self.used_props
                .borrow_mut()
                .insert(format!("{:p}:{key}", child));
        }
        entry
    }

    pub fn prop_string(&self, child: &KdlNode, key: &'static str) -> Option<Spanned<String>> {
        let entry = self.prop(child, key)?;
        self.entry_string(entry)
    }

    /// Marks children the caller reads by hand as used.
    pub fn mark_used(&self, name: &'static str) -> Vec<&'a KdlNode> {
        self.all(name)
    }

    /// Reports children and properties that no field asked for.
    pub fn finish(self) {
        // A field may be asked for more than once (`content` by two readers).
        let mut known_children = self.known_children.borrow().clone();
        let mut seen = HashSet::new();
        known_children.retain(|name| seen.insert(*name));
        let used = self.used_children.borrow();
        let mut missing = self.missing.take();
        for (i, child) in self.children() {
            if used.contains(&i) {
                check_props(
                    &self,
                    child,
                    &self.known_props.borrow(),
                    &self.used_props.borrow(),
                );
                continue;
            }
            let name = child.name().value();
            let mut problem = Problem::error(
                "spec::unknown-field",
                format!("unknown field `{name}` in {}", self.node.name().value()),
            )
            .label(child.name().span(), "not a field of this kind");
            problem = match did_you_mean(name, known_children.iter().copied()) {
                Some(s) => {
                    // The misspelling explains the missing field: one problem, not two.
                    let before = missing.len();
                    missing.retain(|(m, _)| *m != s);
                    let required = if missing.len() < before {
                        ", which is required"
                    } else {
                        ""
                    };
                    problem.help(format!("did you mean `{s}`{required}?"))
                }
                None => problem.help(format!(
                    "the fields of {} are: {}",
                    self.node.name().value(),
                    known_children.join(", ")
                )),
            };
            self.cx.report(problem);
        }
        for (_, problem) in missing {
            self.cx.report(problem);
        }
    }
}

fn check_props(
    reader: &NodeReader<'_, '_>,
    child: &KdlNode,
    known: &[&'static str],
    used: &HashSet<String>,
) {
    for entry in child.entries() {
        let Some(key) = entry.name() else { continue };
        if used.contains(&format!("{:p}:{}", child, key.value())) {
            continue;
        }
        let mut problem = Problem::error(
            "spec::unknown-property",
            format!(
                "unknown property `{}` on `{}`",
                key.value(),
                child.name().value()
            ),
        )
        .label(key.span(), "not a property of this field");
        if let Some(s) = did_you_mean(key.value(), known.iter().copied()) {
            problem = problem.help(format!("did you mean `{s}`?"));
        }
        reader.cx.report(problem);
    }
}

/// The boolean a YAML or KDL 1 user means by `word`, if it is one.
fn yaml_bool(word: &str) -> Option<bool> {
    match word.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "y" => Some(true),
        "false" | "no" | "off" | "n" => Some(false),
        _ => None,
    }
}

pub fn describe(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "a whole number",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the first node of `text` with `read`, returning what was read
    /// and the codes and messages of the problems reported.
    fn read_with<T>(
        text: &str,
        read: impl FnOnce(&NodeReader<'_, '_>) -> Option<T>,
    ) -> (Option<T>, Vec<String>) {
        let doc = kdl::KdlDocument::parse_v2(text).unwrap();
        let vars = Vars::default();
        let cx = LoadContext {
            vars: &vars,
            spec_dir: std::path::Path::new("/spec"),
            source_text: text,
            problems: RefCell::default(),
        };
        let value = {
            let reader = NodeReader::new(&doc.nodes()[0], &cx);
            let value = read(&reader);
            reader.finish();
            value
        };
        let problems = cx
            .problems
            .into_inner()
            .into_iter()
            .map(|p| format!("{}: {}", p.code, p.message))
            .collect();
        (value, problems)
    }

    #[test]
    fn durations_parse_and_malformed_ones_are_reported() {
        let (d, problems) = read_with("b { budget \"2m 30s\" }", |r| r.opt_duration("budget"));
        assert_eq!(d.unwrap().value, Duration::from_secs(150));
        assert!(problems.is_empty());
        let (d, problems) = read_with("b { budget \"two minutes\" }", |r| r.opt_duration("budget"));
        assert!(d.is_none());
        assert_eq!(
            problems,
            ["spec::malformed-duration: `two minutes` is not a duration"]
        );
    }

    #[test]
    fn sizes_read_as_numbers_or_text_and_malformed_ones_are_reported() {
        let (s, _) = read_with("m { size 2132626102 }", |r| r.opt_size("size"));
        assert_eq!(s.unwrap().value, ExpectedSize::exact(2_132_626_102));
        let (s, _) = read_with("m { size \"2GiB\" }", |r| r.opt_size("size"));
        assert_eq!(s.unwrap().value.bytes, 2 << 30);
        for (text, code) in [
            ("\"big\"", "spec::malformed-size: `big` is not a size"),
            ("-1", "spec::malformed-size: `-1` is not a size"),
            (
                "\"20000000000GB\"",
                "spec::size-too-large: `20000000000GB` is more bytes than a file can have",
            ),
            (
                "99999999999999999999999",
                "spec::size-too-large: `99999999999999999999999` is more bytes than a file can have",
            ),
            (
                "\"1.5\"",
                "spec::fractional-size: `1.5` is a fraction of a byte",
            ),
            (
                "1.5",
                "spec::fractional-size: `1.5` is a fraction of a byte",
            ),
        ] {
            let (s, problems) = read_with(&format!("m {{ size {text} }}"), |r| r.opt_size("size"));
            assert!(s.is_none(), "{text}");
            assert_eq!(problems, [code], "{text}");
        }
    }

    #[test]
    fn paths_expand_home_and_resolve_against_the_spec() {
        let (p, _) = read_with("f { path \"rel/x\" }", |r| r.path("path"));
        assert_eq!(p.unwrap().value, PathBuf::from("/spec/rel/x"));
        let (p, _) = read_with("f { path \"~/x\" }", |r| r.path("path"));
        assert_eq!(p.unwrap().value, home_dir().join("x"));
    }

    #[test]
    fn choices_suggest_the_closest() {
        let (c, problems) = read_with("r { on-dirty rest }", |r| {
            r.opt_choice("on-dirty", &["fail", "keep", "reset"])
        });
        assert!(c.is_none());
        assert_eq!(
            problems,
            ["spec::invalid-choice: `rest` is not a valid `on-dirty`"]
        );
    }
}
