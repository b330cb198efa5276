//! Reading what an install would do (pip's `--dry-run --report`, uv's
//! `--dry-run` and `pip compile` annotations) and finding which requested
//! requirement pulls in a forbidden package.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use super::PyError;
use super::names::normalize_name;

/// One package an install would bring in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub name: String,
    pub version: String,
    /// Asked for directly (a pin or a requirements-file line).
    pub requested: bool,
    /// Normalised names of the packages (in the same install) that depend on it.
    pub required_by: Vec<String>,
}

#[derive(Deserialize)]
struct PipReport {
    install: Vec<PipReportItem>,
}

#[derive(Deserialize)]
struct PipReportItem {
    metadata: PipMetadata,
    #[serde(default)]
    requested: bool,
}

#[derive(Deserialize)]
struct PipMetadata {
    name: String,
    version: String,
    #[serde(default)]
    requires_dist: Vec<String>,
}

/// Parses pip's installation report (`pip install --dry-run --report`),
/// which lists exactly the distributions pip would install.
pub(crate) fn from_pip_report(json: &str) -> Result<Vec<Resolved>, PyError> {
    let report: PipReport = serde_json::from_str(json).map_err(|e| PyError::BadReport {
        detail: e.to_string(),
    })?;
    let mut resolved: Vec<Resolved> = report
        .install
        .iter()
        .map(|item| Resolved {
            name: normalize_name(&item.metadata.name),
            version: item.metadata.version.clone(),
            requested: item.requested,
            required_by: Vec::new(),
        })
        .collect();
    for item in &report.install {
        let parent = normalize_name(&item.metadata.name);
        for requirement in &item.metadata.requires_dist {
            let dependency = normalize_name(super::names::leading_name(requirement));
            if let Some(child) = resolved.iter_mut().find(|r| r.name == dependency) {
                child.required_by.push(parent.clone());
            }
        }
    }
    Ok(resolved)
}

/// The ` + name==version` lines of `uv pip install --dry-run`.
pub(crate) fn from_uv_dry_run(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("+ "))
        .filter_map(|spec| spec.trim().split_once("=="))
        .map(|(name, version)| (normalize_name(name), version.trim().to_string()))
        .collect()
}

/// Combines what uv would install with `uv pip compile`'s `# via` lines to
/// say who requires what.
pub(crate) fn from_uv_compile(compiled: &str, would_install: &[(String, String)]) -> Vec<Resolved> {
    let mut vias: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in compiled.lines() {
        let Some((requirement, via)) = line.split_once("# via") else {
            continue;
        };
        let name = normalize_name(super::names::leading_name(requirement.trim()));
        vias.insert(
            name,
            via.split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect(),
        );
    }
    let mut resolved: Vec<Resolved> = would_install
        .iter()
        .map(|(name, version)| {
            let via = vias.get(name).cloned().unwrap_or_default();
            Resolved {
                name: name.clone(),
                version: version.clone(),
                requested: via.iter().any(|v| v.starts_with("-r")),
                required_by: via
                    .iter()
                    .filter(|v| !v.starts_with('-'))
                    .map(|v| normalize_name(v))
                    .collect(),
            }
        })
        .collect();
    // Parents that are not being installed (already present) still explain
    // the chain; add them so the walk can name them.
    for (name, via) in &vias {
        if !resolved.iter().any(|r| &r.name == name) {
            resolved.push(Resolved {
                name: name.clone(),
                version: String::new(),
                requested: via.iter().any(|v| v.starts_with("-r")),
                required_by: via
                    .iter()
                    .filter(|v| !v.starts_with('-'))
                    .map(|v| normalize_name(v))
                    .collect(),
            });
        }
    }
    resolved
}

/// A forbidden package in a resolution, with the chain that pulls it in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub package: String,
    pub version: String,
    /// e.g. `needs-xformers 1.0 (requested) -> xformerslike 0.1`.
    pub chain: String,
}

pub(crate) fn find_forbidden(resolution: &[Resolved], forbidden: &[String]) -> Option<Found> {
    let target = resolution.iter().find(|r| forbidden.contains(&r.name))?;
    Some(Found {
        package: target.name.clone(),
        version: target.version.clone(),
        chain: chain_to(resolution, target),
    })
}

/// Breadth-first from the forbidden package up its `required_by` edges to
/// the nearest requested package; the chain is then read top-down.
fn chain_to(resolution: &[Resolved], target: &Resolved) -> String {
    let by_name: BTreeMap<&str, &Resolved> =
        resolution.iter().map(|r| (r.name.as_str(), r)).collect();
    let label = |r: &Resolved| {
        if r.version.is_empty() {
            r.name.clone()
        } else {
            format!("{} {}", r.name, r.version)
        }
    };
    if target.requested {
        return format!("a direct request for {}", label(target));
    }
    let mut queue = VecDeque::from([vec![target]]);
    let mut seen = vec![target.name.as_str()];
    let mut longest_unrequested = vec![target];
    while let Some(path) = queue.pop_front() {
        let last = path[path.len() - 1];
        for parent in &last.required_by {
            let Some(&parent) = by_name.get(parent.as_str()) else {
                continue;
            };
            if seen.contains(&parent.name.as_str()) {
                continue;
            }
            seen.push(&parent.name);
            let mut longer = path.clone();
            longer.push(parent);
            if parent.requested {
                let names: Vec<String> = longer.iter().rev().map(|r| label(r)).collect();
                return format!("{} (requested) -> {}", names[0], names[1..].join(" -> "));
            }
            if longer.len() > longest_unrequested.len() {
                longest_unrequested = longer.clone();
            }
            queue.push_back(longer);
        }
    }
    let names: Vec<String> = longest_unrequested.iter().rev().map(|r| label(r)).collect();
    format!(
        "{} (required by a package already in the venv)",
        names.join(" -> ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{"version": "1", "install": [
        {"metadata": {"name": "Needs_XFormers", "version": "1.0", "requires_dist": ["middle (>=1)"]}, "requested": true},
        {"metadata": {"name": "middle", "version": "2.0", "requires_dist": ["XFormersLike>=0.1; sys_platform != 'darwin'"]}, "requested": false},
        {"metadata": {"name": "xformerslike", "version": "0.1"}, "requested": false},
        {"metadata": {"name": "helper", "version": "1.0"}, "requested": true}
    ]}"#;

    #[test]
    fn names_the_requested_package_that_pulls_a_forbidden_one() {
        let resolution = from_pip_report(REPORT).unwrap();
        let found = find_forbidden(&resolution, &["xformerslike".into()]).unwrap();
        assert_eq!(found.version, "0.1");
        assert_eq!(
            found.chain,
            "needs-xformers 1.0 (requested) -> middle 2.0 -> xformerslike 0.1"
        );
        assert_eq!(find_forbidden(&resolution, &["triton".into()]), None);
        let direct = find_forbidden(&resolution, &["helper".into()]).unwrap();
        assert_eq!(direct.chain, "a direct request for helper 1.0");
    }

    #[test]
    fn garbage_report_is_an_error() {
        let message = from_pip_report("not json").unwrap_err().to_string();
        assert!(
            message.contains("could not understand the installer's dry-run report"),
            "{message}"
        );
    }

    #[test]
    fn reads_uv_dry_run_and_compile_annotations() {
        let dry_run = "Resolved 3 packages in 4ms\nWould install 2 packages\n + needs-xformers==1.0\n + xformerslike==0.1\n";
        let would_install = from_uv_dry_run(dry_run);
        assert_eq!(
            would_install,
            [
                ("needs-xformers".to_string(), "1.0".to_string()),
                ("xformerslike".to_string(), "0.1".to_string())
            ]
        );
        let compiled = "needs-xformers==1.0    # via -r /tmp/x/compile-input.txt\nxformerslike==0.1    # via needs-xformers\n";
        let resolution = from_uv_compile(compiled, &would_install);
        let found = find_forbidden(&resolution, &["xformerslike".into()]).unwrap();
        assert_eq!(
            found.chain,
            "needs-xformers 1.0 (requested) -> xformerslike 0.1"
        );
    }
}
