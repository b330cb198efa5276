//! Installer failures translated into the spec's terms: which requirement
//! (file and line) needs what, against which pin or forbid; a pin whose
//! version the index does not have.
//!
//! The facts come from the installers' own messages: pip's "The conflict
//! is caused by:" block (`A 1.0 depends on B>=2`, `The user requested
//! (constraint) B==1.0`) and its "Could not find a version that satisfies
//! the requirement six==99 (from versions: …)"; uv's "Because A==1.0
//! depends on B>=2 and you require …" and "there is no version of six==99".

use std::collections::BTreeMap;
use std::str::FromStr;

use pep508_rs::pep440_rs::Version;

use super::PyError;
use super::installer::{PackageSpec, Pin, Sources};
use super::names::normalize_name;
use super::requirements::Prepared;

/// A failed requirements install, with the user's paths put back and, when
/// the installer explained a conflict, the conflict in the spec's terms.
pub(crate) fn explain_failure(error: PyError, prepared: &Prepared, spec: &PackageSpec) -> PyError {
    let PyError::CommandFailed {
        command,
        status,
        output_tail,
    } = error
    else {
        return error;
    };
    let output_tail = prepared.translate(&output_tail);
    let command = prepared.translate(&command);
    let conflicts = conflicts(&output_tail, prepared, spec);
    if conflicts.is_empty() {
        return PyError::CommandFailed {
            command,
            status,
            output_tail,
        };
    }
    PyError::Unsatisfiable {
        conflicts,
        command,
        output_tail,
    }
}

/// The `A needs B` facts of the installer's message, each worded with who
/// asked for A and which pin or forbid B meets.
fn conflicts(output: &str, prepared: &Prepared, spec: &PackageSpec) -> Vec<String> {
    let pins = spec.pinned_versions();
    let forbidden: Vec<String> = spec.forbid.iter().map(|n| normalize_name(n)).collect();
    let asked_by = |name: &str| -> Option<String> {
        let places: Vec<String> = prepared
            .requested
            .iter()
            .filter(|r| r.name == name)
            .map(ToString::to_string)
            .collect();
        (!places.is_empty()).then(|| places.join(" and "))
    };
    let against = |requirement: &str| -> Option<String> {
        let name = normalize_name(super::names::leading_name(requirement));
        if let Some(version) = pins.get(&name) {
            Some(format!("against the pin {name}=={version}"))
        } else if forbidden.contains(&name) {
            Some(format!("but {name} is forbidden"))
        } else {
            asked_by(&name).map(|places| format!("against {places}"))
        }
    };
    let mut out: Vec<String> = Vec::new();
    for (dependent, version, requirement) in depends_on(output) {
        let who = match asked_by(&normalize_name(&dependent)) {
            Some(places) => format!("{dependent} {version} (asked for by {places})"),
            None => format!("{dependent} {version}"),
        };
        let line = match against(&requirement) {
            Some(against) => format!("{who} needs {requirement}, {against}"),
            None => format!("{who} needs {requirement}"),
        };
        if !out.contains(&line) {
            out.push(line);
        }
    }
    // Only worth saying when something meets a pin, a forbid or a line.
    if out.iter().any(|l| l.contains(", ")) {
        out
    } else {
        Vec::new()
    }
}

/// (dependent, its version, requirement) from `A 1.0 depends on B>=2`
/// (pip) and `A==1.0 depends on B>=2` (uv).
fn depends_on(output: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for line in output.lines() {
        let tokens: Vec<&str> = line
            .split_whitespace()
            .map(|t| t.trim_matches(|c: char| matches!(c, ',' | '.' | '(' | ')')))
            .collect();
        for i in 0..tokens.len() {
            let verb = tokens[i] == "depends" || tokens[i] == "depend";
            if !verb || tokens.get(i + 1) != Some(&"on") || i == 0 {
                continue;
            }
            let Some(requirement) = tokens.get(i + 2) else {
                continue;
            };
            let before = tokens[i - 1];
            // uv: "all versions of needs-alpha depend on alpha>=2"
            if i >= 4 && tokens[i - 4..i - 1] == ["all", "versions", "of"] {
                found.push((
                    before.to_string(),
                    "(every version)".to_string(),
                    requirement.to_string(),
                ));
                continue;
            }
            let (dependent, version) = match before.split_once("==") {
                Some((name, version)) => (name.to_string(), version.to_string()),
                None if i >= 2 && Version::from_str(before).is_ok() => {
                    (tokens[i - 2].to_string(), before.to_string())
                }
                None => continue,
            };
            found.push((dependent, version, requirement.to_string()));
        }
    }
    found
}

/// A failed pin install (or its dry run): when the index has no such
/// version of a pin, says so with the versions it has. The installers do
/// not say it plainly (pip may call it a conflict between the pin and its
/// own constraint), so the index is asked, on this failure path only.
pub(crate) fn explain_pin_failure(error: PyError, sources: &Sources, pins: &[&Pin]) -> PyError {
    if !matches!(error, PyError::CommandFailed { .. }) {
        return error;
    }
    let (index, shown) = match sources.index {
        Some(index) => (index.expose().to_string(), index.to_string()),
        None if sources.find_links.is_empty() => (
            "https://pypi.org/simple".to_string(),
            "the default index (https://pypi.org/simple)".to_string(),
        ),
        None => return error,
    };
    for pin in pins {
        let name = normalize_name(&pin.name);
        let Ok(available) = index_versions(&index, &name) else {
            continue;
        };
        let wanted = Version::from_str(&pin.version).ok();
        let listed = available
            .iter()
            .any(|v| Version::from_str(v).ok() == wanted || *v == pin.version);
        if !listed {
            return PyError::NoSuchVersion {
                name,
                version: pin.version.clone(),
                index: shown,
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available.join(", ")
                },
            };
        }
    }
    error
}

/// The versions a PEP 503 simple index lists for `name`, oldest first
/// (read from its file names), or why they could not be read.
fn index_versions(index: &str, name: &str) -> Result<Vec<String>, String> {
    let url = format!("{}/{name}/", index.trim_end_matches('/'));
    let fetch = async {
        let response = reqwest::Client::new().get(&url).send().await?;
        response.error_for_status()?.text().await
    };
    let page = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(fetch)
        .map_err(|e| e.without_url().to_string())?;
    Ok(versions_in_page(&page, name))
}

/// Versions from the file names linked in a simple-index page.
fn versions_in_page(page: &str, name: &str) -> Vec<String> {
    let mut versions: BTreeMap<Version, String> = BTreeMap::new();
    for anchor in page.split("</a>") {
        let Some(text) = anchor.rsplit('>').next() else {
            continue;
        };
        let file = text.trim();
        let stem = file
            .strip_suffix(".whl")
            .or_else(|| file.strip_suffix(".tar.gz"))
            .or_else(|| file.strip_suffix(".zip"))
            .unwrap_or("");
        // `name-version-…` with the name's separators in any spelling.
        let mut parts = stem.splitn(2, '-');
        let (Some(_), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let file_name = normalize_name(&stem[..stem.len() - rest.len() - 1]);
        let (file_name, rest) = if file_name == name {
            (file_name, rest)
        } else {
            // Names with `-` in an sdist: take as many parts as the name has.
            let words = name.split('-').count();
            let mut parts = stem.splitn(words + 1, '-');
            let head: Vec<&str> = parts.by_ref().take(words).collect();
            (normalize_name(&head.join("-")), parts.next().unwrap_or(""))
        };
        if file_name != name {
            continue;
        }
        let version = rest.split('-').next().unwrap_or_default();
        if let Ok(parsed) = Version::from_str(version) {
            versions.insert(parsed, version.to_string());
        }
    }
    versions.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pip_and_uv_dependency_facts() {
        let pip = "The conflict is caused by:\n    The user requested (constraint) alpha==1.0\n    needs-alpha 1.0 depends on alpha>=2\n";
        assert_eq!(
            depends_on(pip),
            [("needs-alpha".into(), "1.0".into(), "alpha>=2".into())]
        );
        let uv = "  ╰─▶ Because needs-alpha==1.0 depends on alpha>=2 and you require needs-alpha, we can conclude";
        assert_eq!(
            depends_on(uv),
            [("needs-alpha".into(), "1.0".into(), "alpha>=2".into())]
        );
        let uv = "Because all versions of needs-alpha depend on alpha>=2 and alpha==1.0, we can conclude";
        assert_eq!(
            depends_on(uv),
            [(
                "needs-alpha".into(),
                "(every version)".into(),
                "alpha>=2".into()
            )]
        );
    }

    #[test]
    fn versions_from_a_simple_index_page() {
        let page = r#"<a href="x">six-1.17.0-py2.py3-none-any.whl</a><a href="y">six-1.16.0.tar.gz</a><a href="z">sixer-2.0-py3-none-any.whl</a>"#;
        assert_eq!(versions_in_page(page, "six"), ["1.16.0", "1.17.0"]);
        let page = r#"<a>foo_bar-1.0-py3-none-any.whl</a><a>foo-bar-2.0.tar.gz</a>"#;
        assert_eq!(versions_in_page(page, "foo-bar"), ["1.0", "2.0"]);
    }
}
