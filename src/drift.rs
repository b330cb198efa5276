//! `plasma drift`: does the machine still match the spec, and if not, did the
//! machine change since the last apply or did the spec?

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::apply::digest_of;
use crate::engine::Loaded;
use crate::plan::{Action, Plan, PlanError};
use crate::state::State;

pub const DRIFT_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DriftStatus {
    /// Matches the spec.
    Converged,
    /// Applied before, spec unchanged since, but the machine no longer matches.
    Drifted,
    /// The spec changed since the last apply; apply has not caught up.
    SpecChanged,
    /// Never applied by plasma.
    NotApplied,
    /// In state but gone from the spec.
    RemovedFromSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DriftEntry {
    pub address: String,
    pub status: DriftStatus,
    /// What differs, in words.
    pub reason: String,
}

/// The document `plasma drift --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DriftReport {
    pub format_version: u32,
    /// True when every resource matches and nothing failed.
    pub converged: bool,
    pub resources: Vec<DriftEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<PlanError>,
}

impl DriftReport {
    pub fn from_plan(loaded: &Loaded, plan: &Plan, state: Option<&State>) -> DriftReport {
        let resources: Vec<DriftEntry> = plan
            .changes
            .iter()
            .map(|change| {
                let prior = state.and_then(|s| s.resources.get(&change.address));
                let status = match change.diff.action {
                    Action::NoOp => DriftStatus::Converged,
                    Action::Forget | Action::Delete => DriftStatus::RemovedFromSpec,
                    _ => match prior {
                        // No record, or only the intent of a killed apply.
                        None => DriftStatus::NotApplied,
                        Some(prior) if prior.pending => DriftStatus::NotApplied,
                        Some(prior) => {
                            let desired = loaded
                                .spec
                                .resources
                                .iter()
                                .find(|r| r.address.to_string() == change.address)
                                .map(|r| digest_of(&r.resource.desired()));
                            if desired.as_deref() == Some(prior.desired_digest.as_str()) {
                                DriftStatus::Drifted
                            } else {
                                DriftStatus::SpecChanged
                            }
                        }
                    },
                };
                DriftEntry {
                    address: change.address.clone(),
                    status,
                    reason: change.diff.reason.clone(),
                }
            })
            .collect();
        DriftReport {
            format_version: DRIFT_FORMAT,
            converged: plan.errors.is_empty()
                && resources.iter().all(|r| r.status == DriftStatus::Converged),
            resources,
            errors: plan.errors.clone(),
        }
    }

    /// One line per resource that does not match.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for entry in &self.resources {
            let what = match entry.status {
                DriftStatus::Converged => continue,
                DriftStatus::Drifted => "drifted (changed outside plasma since the last apply)",
                DriftStatus::SpecChanged => {
                    "differs (the spec or plasma.lock changed since the last apply)"
                }
                DriftStatus::NotApplied => "differs (never applied)",
                DriftStatus::RemovedFromSpec => "removed from the spec (still in state)",
            };
            out.push_str(&format!("{}: {what}: {}\n", entry.address, entry.reason));
        }
        for error in &self.errors {
            out.push_str(&format!("{}: error: {}\n", error.address, error.message));
        }
        if self.converged {
            out.push_str("No drift. The machine matches plasma.kdl.\n");
        }
        out
    }
}
