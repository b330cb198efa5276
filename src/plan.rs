//! Step 5, diff: the plan model. One structured plan feeds both renderers
//! (human and JSON) and is what `plan --out` saves and `apply FILE` runs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The version of the plan document's layout.
pub const PLAN_FORMAT: u32 = 1;

/// What apply will do to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The resource does not exist yet.
    Create,
    /// The resource exists and will be changed in place.
    Update,
    /// The resource will be removed and made again.
    Replace,
    /// A run (benchmark, training) will happen.
    Run,
    /// In state but no longer in the spec: dropped from state, its files kept.
    Forget,
    /// In state but no longer in the spec, created by plasma, under
    /// `--prune`: its files (the change's `path` attributes) are deleted and
    /// it is dropped from state.
    Delete,
    /// Already matches the spec.
    NoOp,
}

impl Action {
    pub fn is_change(self) -> bool {
        self != Action::NoOp
    }

    /// Terraform-style symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Run => ">",
            Action::Forget | Action::Delete => "-",
            Action::NoOp => " ",
        }
    }

    /// "will be created", for `# file.x will be created`.
    pub fn phrase(self) -> &'static str {
        match self {
            Action::Create => "will be created",
            Action::Update => "will be updated in place",
            Action::Replace => "must be replaced",
            Action::Run => "will run",
            Action::Forget => "will be forgotten",
            Action::Delete => "will be deleted",
            Action::NoOp => "is up to date",
        }
    }

    pub fn legend(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update in place",
            Action::Replace => "destroy and then create replacement",
            Action::Run => "run",
            Action::Forget => "forget (remove from state; files are kept)",
            Action::Delete => "delete (its files are deleted and it is removed from state)",
            Action::NoOp => "no-op",
        }
    }
}

/// One attribute that differs: `name: old -> new`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttributeChange {
    pub name: String,
    /// What the machine has now; absent when there is nothing yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    /// What the spec wants; absent when it will be removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

impl AttributeChange {
    pub fn new(name: &str, old: Option<String>, new: Option<String>) -> Self {
        AttributeChange {
            name: name.to_string(),
            old,
            new,
        }
    }
}

/// A kind's verdict on one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Diff {
    pub action: Action,
    /// Why, in words a user reads at a glance.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AttributeChange>,
    /// A unified diff of a file's contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_diff: Option<String>,
    /// Things the user should know before applying (destructive steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Diff {
    pub fn no_op() -> Self {
        Diff::new(Action::NoOp, "matches the spec")
    }

    pub fn new(action: Action, reason: impl Into<String>) -> Self {
        Diff {
            action,
            reason: reason.into(),
            attributes: Vec::new(),
            content_diff: None,
            warnings: Vec::new(),
        }
    }

    pub fn attribute(mut self, name: &str, old: Option<String>, new: Option<String>) -> Self {
        self.attributes.push(AttributeChange::new(name, old, new));
        self
    }
}

/// One resource's entry in the plan.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PlannedChange {
    /// `kind.name`.
    pub address: String,
    pub kind: String,
    #[serde(flatten)]
    pub diff: Diff,
    /// Digest of what was observed; `apply FILE` refuses when it differs.
    pub fingerprint: String,
    /// Addresses this resource waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// A resource whose observation failed; the plan cannot be applied while any exist.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PlanError {
    pub address: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// A lint finding carried in the plan.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PlanWarning {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Counts by action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub run: usize,
    pub forget: usize,
    #[serde(default)]
    pub delete: usize,
    pub no_op: usize,
}

/// What the plan was made against: a saved plan is refused when these change.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PlanBasis {
    /// The spec file's path.
    pub spec: String,
    /// BLAKE3 of the spec's text.
    pub spec_digest: String,
    /// The state's lineage and serial when the plan was made (absent: no state yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_lineage: Option<String>,
    pub state_serial: u64,
}

/// A whole plan, as printed by `plan --json` and saved by `plan --out`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    pub format_version: u32,
    pub plasma_version: String,
    pub basis: PlanBasis,
    /// Every resource in the spec's order, including the ones with no change,
    /// then the ones in state but gone from the spec (forget or delete).
    pub changes: Vec<PlannedChange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<PlanError>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<PlanWarning>,
    pub summary: Summary,
    /// What apply changes in `plasma.lock`, one line per entry or package.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lock: Vec<crate::lock::LockChange>,
}

impl Plan {
    pub fn summarise(changes: &[PlannedChange]) -> Summary {
        let mut s = Summary::default();
        for c in changes {
            match c.diff.action {
                Action::Create => s.create += 1,
                Action::Update => s.update += 1,
                Action::Replace => s.replace += 1,
                Action::Run => s.run += 1,
                Action::Forget => s.forget += 1,
                Action::Delete => s.delete += 1,
                Action::NoOp => s.no_op += 1,
            }
        }
        s
    }

    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.diff.action.is_change())
    }

    pub fn get(&self, address: &str) -> Option<&PlannedChange> {
        self.changes.iter().find(|c| c.address == address)
    }
}
