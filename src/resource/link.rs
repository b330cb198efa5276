//! `link`: a symlink at `path` pointing at `target` (a shared model folder,
//! an installed LoRA).

use std::path::PathBuf;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApplyContext, Kind, ObserveContext, Others, Outputs, ResourceError};
use crate::fsutil;
use crate::plan::{Action, Diff};
use crate::spec::reader::NodeReader;
use crate::spec::{Address, Spanned};
use crate::state::ResourceState;

#[derive(Debug)]
pub struct Link {
    pub path: Spanned<PathBuf>,
    pub target: Spanned<PathBuf>,
    /// Another resource of the spec that owns the target (or a folder
    /// holding it): a missing target is then made by the same apply.
    pub target_owner: Option<Address>,
}

#[derive(Debug, Serialize)]
pub struct LinkObserved {
    /// `absent`, `symlink`, or what else stands there (`file`, `directory`).
    pub found: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    /// Whether the target exists (a dangling link is allowed but reported).
    pub target_exists: bool,
}

impl Link {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let path = r.path("path");
        let target = r.path("target");
        Some(Link {
            path: path?,
            target: target?,
            target_owner: None,
        })
    }
}

#[async_trait]
impl Kind for Link {
    type Observed = LinkObserved;
    const KIND: &'static str = "link";

    fn desired(&self) -> Value {
        json!({ "path": self.path.value, "target": self.target.value })
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        vec![self.path.value.clone()]
    }

    fn resolve(&mut self, others: &Others<'_>) {
        let target = &self.target.value;
        self.target_owner = others
            .resources
            .iter()
            .find(|(_, r)| r.owned_paths().iter().any(|p| target.starts_with(p)))
            .map(|(address, _)| (*address).clone());
    }

    async fn observe(&self, _cx: &ObserveContext<'_>) -> Result<LinkObserved, ResourceError> {
        let path = &self.path.value;
        let target_exists = self.target.value.exists();
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if crate::fsutil::is_absent(&e) => {
                return Ok(LinkObserved {
                    found: "absent",
                    target: None,
                    target_exists,
                });
            }
            Err(e) => return Err(ResourceError::io("cannot inspect", path, e)),
        };
        if !meta.file_type().is_symlink() {
            let what = if meta.is_dir() { "directory" } else { "file" };
            return Err(ResourceError::new(format!(
                "{} is a {what}, not a symlink; plasma will not replace it",
                path.display()
            ))
            .help("move it away, or point `path` elsewhere"));
        }
        let target =
            std::fs::read_link(path).map_err(|e| ResourceError::io("cannot read link", path, e))?;
        Ok(LinkObserved {
            found: "symlink",
            target: Some(target),
            target_exists,
        })
    }

    fn diff(&self, observed: &LinkObserved, _prior: Option<&ResourceState>) -> Diff {
        let want = self.target.value.display().to_string();
        let mut diff = match &observed.target {
            None => Diff::new(Action::Create, "the link does not exist")
                .attribute("path", None, Some(self.path.value.display().to_string()))
                .attribute("target", None, Some(want)),
            Some(have) if *have == self.target.value => Diff::no_op(),
            Some(have) => Diff::new(Action::Update, "the link points elsewhere").attribute(
                "target",
                Some(have.display().to_string()),
                Some(want),
            ),
        };
        if !observed.target_exists && self.target_owner.is_none() {
            diff.warnings.push(format!(
                "the target {} does not exist (the link will dangle)",
                self.target.value.display()
            ));
        }
        diff
    }

    async fn apply(
        &self,
        _observed: &LinkObserved,
        _cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        let path = &self.path.value;
        let fail = |e| ResourceError::io("cannot create link", path, e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        // Make the new link beside the old one and rename it over, so the
        // path never goes missing.
        let staging = fsutil::staging_path(path);
        let _ = std::fs::remove_file(&staging);
        std::os::unix::fs::symlink(&self.target.value, &staging).map_err(fail)?;
        std::fs::rename(&staging, path).map_err(fail)?;
        fsutil::sync_parent(path).map_err(fail)?;
        Ok(Outputs::new())
    }

    fn outputs(&self, observed: &LinkObserved) -> Outputs {
        let mut out = Outputs::new();
        if let Some(t) = &observed.target {
            out.insert("target".into(), json!(t));
        }
        out
    }
}
