//! Step 1, load: `plasma.kdl` text to a typed, spanned [`Spec`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kdl::{KdlDocument, KdlNode};
use miette::{NamedSource, SourceSpan};

use crate::diagnostic::{Problem, Source, SpecErrors, did_you_mean};
use crate::resource::{self, Resource};

pub mod precheck;
pub mod reader;
pub mod vars;

use reader::{LoadContext, NodeReader};
use vars::{InterpolateError, Vars};

/// The spec's file name, looked for upward from the current folder.
pub const SPEC_FILE: &str = "plasma.kdl";

/// A value with the place in the spec it came from.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    pub value: T,
    pub span: SourceSpan,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: SourceSpan) -> Self {
        Spanned { value, span }
    }
}

/// A resource's address, `kind.name`, as in Terraform.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub kind: String,
    pub name: String,
}

impl Address {
    pub fn parse(text: &str) -> Option<Address> {
        let (kind, name) = text.split_once('.')?;
        (!kind.is_empty() && !name.is_empty()).then(|| Address {
            kind: kind.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.name)
    }
}

/// A reference from one resource to another, with where it was written.
#[derive(Debug, Clone)]
pub struct Reference {
    pub address: Address,
    pub span: SourceSpan,
}

/// What the spec says about the machine it is for.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    pub os: Option<Spanned<String>>,
    pub arch: Option<Spanned<String>>,
    pub accelerator: Option<Spanned<String>>,
    pub memory_gb: Option<Spanned<u64>>,
}

/// One declared resource.
pub struct Declared {
    pub address: Address,
    /// The node's name (`file`), where problems about the whole resource point.
    pub span: SourceSpan,
    /// Explicit `depends-on` and the references its fields make.
    pub depends_on: Vec<Reference>,
    /// Lint codes this resource allows.
    pub allow: Vec<Spanned<String>>,
    /// What the resource needs of the machine (`requires memory="96GiB"`).
    pub requires: Requires,
    pub resource: Box<dyn Resource>,
}

/// `requires memory="96GiB" accelerator="mps"` in a resource: what it needs
/// of the machine, checked by the `requirement-unmet` lint against the
/// machine's facts and the spec's declared `platform`.
#[derive(Debug, Clone, Default)]
pub struct Requires {
    /// Bytes of memory, at least.
    pub memory: Option<Spanned<u64>>,
    /// `mps`, `cuda`, `rocm` or `cpu`.
    pub accelerator: Option<Spanned<String>>,
}

/// A loaded spec.
pub struct Spec {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub text: Arc<String>,
    pub source: Source,
    pub platform: Platform,
    pub platform_span: Option<SourceSpan>,
    pub vars: Vars,
    pub resources: Vec<Declared>,
}

impl Spec {
    pub fn get(&self, address: &Address) -> Option<&Declared> {
        self.resources.iter().find(|r| &r.address == address)
    }

    /// A digest of the spec's text, recorded in saved plans.
    pub fn digest(&self) -> String {
        blake3::hash(self.text.as_bytes()).to_hex().to_string()
    }
}

/// Finds `plasma.kdl` in `start` or the nearest folder above it.
pub fn find(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(SPEC_FILE))
        .find(|candidate| candidate.is_file())
}

/// Reads and loads a spec file. Files past [`precheck::MAX_SPEC_BYTES`] and
/// files that are not UTF-8 are spec errors with a location, like any other.
pub fn load_file(path: &Path) -> Result<Spec, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte past the limit is enough to know the file is too large.
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&file, precheck::MAX_SPEC_BYTES as u64 + 1),
        &mut bytes,
    )
    .map_err(read_error)?;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if bytes.len() > precheck::MAX_SPEC_BYTES {
        let size = file.metadata().map_or(bytes.len() as u64, |m| m.len());
        bytes.truncate(precheck::MAX_SPEC_BYTES);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let end = text.len();
        let problem = precheck::too_large(size)
            .label(SourceSpan::new(end.into(), 0), "the limit is passed here")
            .with_source(&source_for(&absolute, &text));
        return Err(LoadError::Spec(SpecErrors {
            problems: vec![problem],
        }));
    }
    match String::from_utf8(bytes) {
        Ok(text) => load(&absolute, text).map_err(LoadError::Spec),
        Err(e) => {
            // The rest of the file is still checked, with the bad bytes replaced.
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let mut problems =
                vec![precheck::not_utf8(at).with_source(&source_for(&absolute, &text))];
            if let Err(errors) = load(&absolute, text) {
                problems.extend(errors.problems);
            }
            Err(LoadError::Spec(SpecErrors { problems }))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(SpecErrors),
}

/// The spec's text as diagnostics quote it: with URL credentials masked.
fn source_for(path: &Path, text: &str) -> Source {
    let display_name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    // Diagnostics quote the spec with URL secrets masked (crate::redact).
    Arc::new(NamedSource::new(
        display_name,
        Arc::new(crate::redact::mask_in_place(text)),
    ))
}

/// The stack a spec is loaded on, in bytes. The KDL parser recurses once per
/// nested block and, while recovering from errors, once per node it could not
/// close: a mutated 20 KiB spec took it 288 levels deep, past a debug build's
/// 2 MiB test-thread stack. [`precheck::MAX_DEPTH`] and
/// [`precheck::MAX_SPEC_BYTES`] bound the input; this leaves room for it
/// whatever the calling thread's stack.
const LOAD_STACK_BYTES: usize = 64 << 20;

/// Loads spec text. Every problem in the file is reported together: spec
/// errors, and the lints of the resources that did load.
///
/// The load runs on a stack of [`LOAD_STACK_BYTES`] switched to on the
/// calling thread (`stacker`), not on a thread of its own: a new thread's
/// heap arena cost a converged plan of 1000 files about 1,100 page faults and
/// 3,400 `mprotect` calls.
pub fn load(path: &Path, text: String) -> Result<Spec, SpecErrors> {
    stacker::grow(LOAD_STACK_BYTES, || load_here(path, text))
}

fn load_here(path: &Path, text: String) -> Result<Spec, SpecErrors> {
    let text = Arc::new(text);
    let source = source_for(path, &text);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();

    let scan = precheck::scan(&text);
    if let Some(problem) = &scan.too_deep {
        return Err(SpecErrors {
            problems: vec![problem.clone().with_source(&source)],
        });
    }
    // Habits are reported once, at their span; the rest is read with each
    // replaced by a stand-in of the same length, so the errors they would
    // cause downstream do not bury the one that matters.
    let repaired = (!scan.habits.is_empty()).then(|| scan.repaired(&text));
    let parsed_text: &str = repaired.as_deref().unwrap_or(&text);
    let report = |problems: Vec<Problem>| -> SpecErrors {
        let habits = scan.habits.iter().map(|h| h.problem.clone());
        let others = problems.into_iter().filter(|p| {
            p.labels
                .first()
                .is_none_or(|(span, _)| !scan.explains(*span))
        });
        SpecErrors {
            problems: habits
                .chain(others)
                .map(|p| p.with_source(&source))
                .collect(),
        }
    };

    let document = match KdlDocument::parse_v2(parsed_text) {
        Ok(doc) => doc,
        Err(err) => {
            let problems = err
                .diagnostics
                .iter()
                .map(|d| {
                    let message = d
                        .message
                        .clone()
                        .unwrap_or_else(|| "invalid KDL".to_string());
                    let mut p = Problem::error("spec::syntax", message)
                        .label(d.span, d.label.clone().unwrap_or_else(|| "here".into()));
                    if let Some(help) = &d.help {
                        p = p.help(help.clone());
                    }
                    p
                })
                .collect();
            return Err(report(problems));
        }
    };

    let mut vars = Vars::default();
    let mut platform = Platform::default();
    let mut platform_span: Option<SourceSpan> = None;
    let mut problems;
    let mut resources: Vec<Declared>;
    {
        let bootstrap = Vars::default();
        let cx = LoadContext {
            vars: &bootstrap,
            spec_dir: &dir,
            source_text: parsed_text,
            problems: Default::default(),
        };
        // Vars come first so every resource can use them, wherever they are written.
        for node in document
            .nodes()
            .iter()
            .filter(|n| n.name().value() == "vars")
        {
            load_vars(node, &mut vars, &cx);
        }
        problems = cx.problems.into_inner();

        let cx = LoadContext {
            vars: &vars,
            spec_dir: &dir,
            source_text: parsed_text,
            problems: Default::default(),
        };
        let mut seen: HashMap<Address, SourceSpan> = HashMap::new();
        let mut loading = Vec::new();
        for node in document.nodes() {
            match node.name().value() {
                "vars" => {}
                "platform" => {
                    if let Some(first) = platform_span {
                        cx.report(
                            Problem::error("spec::duplicate-platform", "`platform` is given twice")
                                .label(node.name().span(), "given again here")
                                .label(first, "first given here")
                                .help("a spec is for one machine: merge the two into one `platform` line"),
                        );
                        continue;
                    }
                    platform_span = Some(node.name().span());
                    platform = load_platform(node, &cx);
                }
                kind => loading.extend(load_resource(kind, node, &cx, &mut seen)),
            }
        }
        problems.extend(cx.problems.into_inner());
        check_references(&loading, &mut problems);
        resources = loading
            .into_iter()
            .filter_map(|l| {
                Some(Declared {
                    resource: l.resource?,
                    address: l.address,
                    span: l.span,
                    depends_on: l.depends_on,
                    allow: l.allow,
                    requires: l.requires,
                })
            })
            .collect();
        resolve_resources(&mut resources);
    }

    let spec = Spec {
        path: path.to_path_buf(),
        dir,
        text,
        source: source.clone(),
        platform,
        platform_span,
        vars,
        resources,
    };
    if problems.iter().any(Problem::is_error) || !scan.habits.is_empty() {
        // The resources that loaded are linted too: one run shows every mistake.
        problems.extend(crate::lint::run(&spec));
        return Err(report(problems));
    }
    Ok(spec)
}

fn load_vars(node: &KdlNode, vars: &mut Vars, cx: &LoadContext<'_>) {
    for child in node.children().map(|d| d.nodes()).unwrap_or_default() {
        let name = child.name().value().to_string();
        let args: Vec<_> = child
            .entries()
            .iter()
            .filter(|e| e.name().is_none())
            .collect();
        let [entry] = args.as_slice() else {
            cx.report(
                Problem::error(
                    "spec::missing-value",
                    format!("variable `{name}` needs one value"),
                )
                .label(child.name().span(), "write `name \"value\"`"),
            );
            continue;
        };
        let Some(text) = entry.value().as_string() else {
            cx.report(
                Problem::error(
                    "spec::wrong-type",
                    format!("variable `{name}` must be a string"),
                )
                .label(entry.span(), "not a string"),
            );
            continue;
        };
        // Each variable may use the ones declared before it.
        match vars.interpolate(text) {
            Ok(value) => vars.insert(name, value),
            Err(InterpolateError::TooLarge) => {
                cx.report(reader::too_large_expansion(entry.span()));
                // Later variables would only fail the same way.
                return;
            }
            Err(InterpolateError::Unknown(unknown)) => cx.report(
                Problem::error(
                    "spec::unknown-variable",
                    format!("unknown variable `{unknown}`"),
                )
                .label(entry.span(), "used before it is defined")
                .help("a variable may only use variables declared above it"),
            ),
        }
    }
}

fn load_platform(node: &KdlNode, cx: &LoadContext<'_>) -> Platform {
    let mut platform = Platform::default();
    for entry in node.entries() {
        let Some(key) = entry.name() else {
            cx.report(
                Problem::error(
                    "spec::wrong-type",
                    "platform takes properties such as os=macos",
                )
                .label(entry.span(), "expected key=value"),
            );
            continue;
        };
        let string = || {
            entry
                .value()
                .as_string()
                .map(|s| Spanned::new(s.to_string(), entry.span()))
        };
        let checked = |what: &str, table| {
            string().filter(|value| check_platform_value(value, what, table, cx))
        };
        match key.value() {
            "os" => platform.os = checked("os", crate::platform::OSES),
            "arch" => platform.arch = checked("arch", crate::platform::ARCHES),
            "accelerator" => {
                platform.accelerator = checked("accelerator", crate::platform::ACCELERATORS)
            }
            "memory-gb" => {
                platform.memory_gb = entry
                    .value()
                    .as_integer()
                    .and_then(|i| u64::try_from(i).ok())
                    .map(|v| Spanned::new(v, entry.span()))
            }
            other => {
                let known = ["os", "arch", "accelerator", "memory-gb"];
                let mut p = Problem::error(
                    "spec::unknown-property",
                    format!("unknown property `{other}` on platform"),
                )
                .label(key.span(), "not a platform property");
                if let Some(s) = did_you_mean(other, known) {
                    p = p.help(format!("did you mean `{s}`?"));
                }
                cx.report(p);
            }
        }
    }
    platform
}

fn load_resource(
    kind: &str,
    node: &KdlNode,
    cx: &LoadContext<'_>,
    seen: &mut HashMap<Address, SourceSpan>,
) -> Option<Loading> {
    if !resource::KINDS.contains(&kind) {
        let mut known: Vec<&str> = resource::KINDS.to_vec();
        known.extend(["vars", "platform"]);
        let mut p = Problem::error(
            "spec::unknown-kind",
            format!("unknown resource kind `{kind}`"),
        )
        .label(node.name().span(), "not a kind plasma knows");
        p = match did_you_mean(kind, known.iter().copied()) {
            Some(s) => p.help(format!("did you mean `{s}`?")),
            None => p.help(format!("the kinds are: {}", resource::KINDS.join(", "))),
        };
        cx.report(p);
        return None;
    }

    let name_entry = node.entries().iter().find(|e| e.name().is_none());
    let Some(name_entry) = name_entry else {
        cx.report(
            Problem::error("spec::missing-name", format!("this {kind} has no name"))
                .label(node.name().span(), format!("write `{kind} NAME {{ … }}`")),
        );
        return None;
    };
    let Some(name) = name_entry.value().as_string() else {
        cx.report(
            Problem::error(
                "spec::wrong-type",
                format!("a {kind}'s name must be a string"),
            )
            .label(name_entry.span(), "not a name"),
        );
        return None;
    };
    let address = Address {
        kind: kind.to_string(),
        name: name.to_string(),
    };
    // A repeated address is reported, and its body is still read so that
    // its own mistakes show up in the same run.
    let duplicate = match seen.get(&address) {
        Some(first) => {
            cx.report(
                Problem::error(
                    "spec::duplicate-address",
                    format!("`{address}` is declared twice"),
                )
                .label(name_entry.span(), "declared again here")
                .label(*first, "first declared here")
                .help("give each resource of a kind its own name"),
            );
            true
        }
        None => {
            seen.insert(address.clone(), name_entry.span());
            false
        }
    };

    let reader = NodeReader::new(node, cx);
    let depends_on: Vec<Reference> = reader
        .string_list("depends-on")
        .iter()
        .filter_map(|r| reader.parse_reference(r, None))
        .collect();
    let allow = reader.string_list("allow");
    let requires = load_requires(&reader, cx);
    let resource = resource::parse(kind, &reader);
    let mut references = depends_on;
    references.extend(reader.references());
    for code in &allow {
        check_allow(code, cx);
    }
    let failed = reader.failed() || duplicate;
    reader.finish();
    Some(Loading {
        address,
        span: node.name().span(),
        depends_on: references,
        allow,
        requires,
        resource: resource.filter(|_| !failed),
    })
}

fn load_requires(reader: &NodeReader<'_, '_>, cx: &LoadContext<'_>) -> Requires {
    let mut requires = Requires::default();
    let Some(node) = reader.child("requires") else {
        return requires;
    };
    if let Some(entry) = reader.prop(node, "memory") {
        let text = entry
            .value()
            .as_string()
            .map(str::to_string)
            .or_else(|| entry.value().as_integer().map(|i| i.to_string()));
        match text
            .as_deref()
            .and_then(|t| crate::size::parse(t).ok())
            .map(|s| s.bytes)
        {
            Some(bytes) => requires.memory = Some(Spanned::new(bytes, entry.span())),
            None => cx.report(
                Problem::error(
                    "spec::malformed-size",
                    "`memory` must be a size such as \"96GiB\" or \"64GB\"",
                )
                .label(entry.span(), "not a size"),
            ),
        }
    }
    if let Some(value) = reader.prop_string(node, "accelerator")
        && check_platform_value(&value, "accelerator", crate::platform::ACCELERATORS, cx)
    {
        requires.accelerator = Some(value);
    }
    requires
}

/// Reports a `platform`/`requires` value that is not one plasma knows, with
/// the accepted spelling when it is another one (`Linux`, `arm64`).
fn check_platform_value(
    value: &Spanned<String>,
    what: &str,
    table: &[(&'static str, &[&str])],
    cx: &LoadContext<'_>,
) -> bool {
    let fix = match crate::platform::canonical(table, &value.value) {
        Ok(()) => return true,
        Err(fix) => fix,
    };
    let accepted: Vec<&str> = table.iter().map(|(name, _)| *name).collect();
    let p = Problem::error(
        "spec::unknown-value",
        format!("unknown {what} `{}`", value.value),
    )
    .label(value.span, format!("not an {what} plasma knows"));
    cx.report(match fix {
        Some(fix) => p.help(format!("did you mean `{fix}`? (write {what}={fix})")),
        None => p.help(format!("the {what} values are: {}", accepted.join(", "))),
    });
    false
}

/// A resource as read, before it is known whether the whole spec loads.
/// Kept even when its fields had errors, so its references are still checked.
struct Loading {
    address: Address,
    span: SourceSpan,
    depends_on: Vec<Reference>,
    allow: Vec<Spanned<String>>,
    requires: Requires,
    resource: Option<Box<dyn Resource>>,
}

fn check_allow(code: &Spanned<String>, cx: &LoadContext<'_>) {
    let codes = crate::lint::RULES.iter().map(|r| r.code);
    if codes.clone().any(|c| c == code.value) {
        return;
    }
    let mut p = Problem::error(
        "spec::unknown-lint",
        format!("no lint is called `{}`", code.value),
    )
    .label(code.span, "unknown lint");
    p = match did_you_mean(&code.value, codes.clone()) {
        Some(s) => p.help(format!("did you mean `{s}`?")),
        None => p.help(format!(
            "the lints are: {}",
            codes.collect::<Vec<_>>().join(", ")
        )),
    };
    cx.report(p);
}

/// Lets each resource take what it needs from the others.
fn resolve_resources(resources: &mut [Declared]) {
    for i in 0..resources.len() {
        let (before, rest) = resources.split_at_mut(i);
        let (this, after) = rest.split_first_mut().expect("i is in range");
        let others = resource::Others {
            resources: before
                .iter()
                .chain(after.iter())
                .map(|d| (&d.address, d.resource.as_ref()))
                .collect(),
        };
        this.resource.resolve(&others);
    }
    for declared in resources.iter_mut() {
        for address in declared.resource.implied_dependencies() {
            if !declared.depends_on.iter().any(|r| r.address == address) {
                declared.depends_on.push(Reference {
                    address,
                    span: declared.span,
                });
            }
        }
    }
}

/// Every reference must name a declared resource.
fn check_references(resources: &[Loading], problems: &mut Vec<Problem>) {
    let addresses: Vec<String> = resources.iter().map(|r| r.address.to_string()).collect();
    for declared in resources {
        for reference in &declared.depends_on {
            let target = reference.address.to_string();
            if addresses.contains(&target) {
                continue;
            }
            let mut p = Problem::error(
                "spec::unknown-reference",
                format!(
                    "`{}` refers to `{target}`, which is not declared",
                    declared.address
                ),
            )
            .label(reference.span, "no such resource");
            let own = declared.address.to_string();
            let others = addresses.iter().map(String::as_str).filter(|a| *a != own);
            if let Some(s) = did_you_mean(&target, others) {
                p = p.help(format!("did you mean `{s}`?"));
            }
            problems.push(p);
        }
    }
}
