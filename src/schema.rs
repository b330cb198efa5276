//! The JSON documents plasma prints, and their JSON Schemas (generated from
//! the types, committed under `schema/`, and checked by the tests).

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::diagnostic::Problem;
use crate::drift::DriftReport;
use crate::plan::Plan;
use crate::state::{ResourceState, State};

/// `plasma validate --json`; also what any `--json` command prints when it
/// fails before its own document is made (the spec does not load, a file
/// cannot be read).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ValidateReport {
    pub valid: bool,
    /// The first [`MAX_JSON_PROBLEMS`] problems.
    pub problems: Vec<ProblemReport>,
    /// How many more problems there were, not listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
}

/// The most problems a JSON document lists.
pub const MAX_JSON_PROBLEMS: usize = 1000;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One diagnostic, located in the spec.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProblemReport {
    pub code: String,
    /// `error`, `warning` or `advice`.
    pub severity: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl ValidateReport {
    pub fn new(valid: bool, problems: &[Problem]) -> Self {
        ValidateReport {
            valid,
            omitted: problems.len().saturating_sub(MAX_JSON_PROBLEMS),
            problems: problems
                .iter()
                .take(MAX_JSON_PROBLEMS)
                .map(|p| {
                    let location = p.location();
                    ProblemReport {
                        code: p.code.clone(),
                        severity: match p.severity {
                            miette::Severity::Error => "error",
                            miette::Severity::Warning => "warning",
                            miette::Severity::Advice => "advice",
                        }
                        .to_string(),
                        message: p.message.clone(),
                        line: location.map(|l| l.0),
                        column: location.map(|l| l.1),
                        help: p.help.clone(),
                    }
                })
                .collect(),
        }
    }

    /// A failure that is not about a place in the spec, as one problem.
    pub fn failure(message: &str) -> Self {
        ValidateReport {
            valid: false,
            omitted: 0,
            problems: vec![ProblemReport {
                code: "plasma::error".to_string(),
                severity: "error".to_string(),
                message: message.to_string(),
                line: None,
                column: None,
                help: None,
            }],
        }
    }
}

/// `plasma show ADDR --json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ShowReport {
    pub address: String,
    /// What observation found now (kind-specific).
    pub observed: Value,
    /// What the spec declares (kind-specific).
    pub desired: Value,
    /// The state entry from the last apply, if any.
    pub state: Option<ResourceState>,
}

/// The names `plasma schema NAME` and the files under `schema/` use.
pub const NAMES: &[&str] = &["plan", "drift", "state", "validate", "show"];

/// The JSON Schema of one document, pretty-printed.
pub fn by_name(name: &str) -> Option<String> {
    let schema = match name {
        "plan" => schemars::schema_for!(Plan),
        "drift" => schemars::schema_for!(DriftReport),
        "state" => schemars::schema_for!(State),
        "validate" => schemars::schema_for!(ValidateReport),
        "show" => schemars::schema_for!(ShowReport),
        _ => return None,
    };
    Some(serde_json::to_string_pretty(&schema).expect("schemas serialise"))
}
