//! Turning a `rev` (tag, branch or commit) into a commit: from local refs only
//! (observation, plan, drift), or after fetching it (apply).

use std::cmp::Ordering;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Git;
use super::error::GitError;
use super::observe::{GitDirs, is_object_id};
use super::redact::redact_url;

/// How many tag names a "revision does not exist" message suggests.
const NEAREST_TAGS_SHOWN: usize = 3;

/// What kind of name a rev turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevKind {
    /// A tag (`refs/tags/<rev>`), peeled to its commit.
    Tag,
    /// A branch of `origin` (`refs/remotes/origin/<rev>`): it moves upstream.
    Branch,
    /// A full or abbreviated commit hash.
    Commit,
}

/// A rev and the commit it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub rev: String,
    pub kind: RevKind,
    pub commit: String,
}

/// Refuses revs git could read as an option or a revision expression, so that what
/// the user wrote is looked up literally.
pub(crate) fn validate_rev(rev: &str) -> Result<(), GitError> {
    let bad = rev.is_empty()
        || rev.starts_with('-')
        || rev.contains("..")
        || rev.contains("@{")
        || rev.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '^' | '~' | ':' | '?' | '*' | '[' | '\\')
        });
    if bad {
        Err(GitError::InvalidRev {
            rev: rev.to_string(),
        })
    } else {
        Ok(())
    }
}

fn looks_like_commit(rev: &str) -> bool {
    (4..=64).contains(&rev.len()) && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One line of `git for-each-ref`: a tag or an origin branch.
struct LocalRef {
    name: String,
    /// The commit it names, when for-each-ref could peel it in one step.
    commit: Option<String>,
}

impl Git {
    /// Resolves `rev` in the clone at `path` from local refs only, never the network.
    /// Precedence: tag, then origin branch, then commit hash. One `git for-each-ref`,
    /// plus one `git rev-parse` for a commit hash.
    pub fn resolve_local(&self, path: &Path, rev: &str) -> Result<Resolved, GitError> {
        validate_rev(rev)?;
        let dirs = self.require_work_tree(path)?;
        let refs = self.local_refs(path)?;
        let find = |prefix: &str| {
            refs.iter()
                .find(|r| r.name.strip_prefix(prefix) == Some(rev))
        };
        let mut named: Vec<Resolved> = Vec::new();
        for (prefix, kind) in [
            ("refs/tags/", RevKind::Tag),
            ("refs/remotes/origin/", RevKind::Branch),
        ] {
            if let Some(found) = find(prefix) {
                let commit = match &found.commit {
                    Some(commit) => Some(commit.clone()),
                    // A tag of a tag, or of something that is not a commit.
                    None => self.commit_of(path, &found.name)?,
                };
                if let Some(commit) = commit {
                    named.push(Resolved {
                        rev: rev.to_string(),
                        kind,
                        commit,
                    });
                }
            }
        }
        if let [tag, branch] = &named[..]
            && tag.commit != branch.commit
        {
            return Err(GitError::AmbiguousRev {
                rev: rev.to_string(),
                tag: tag.commit[..7].to_string(),
                branch: branch.commit[..7].to_string(),
            });
        }
        if let Some(first) = named.into_iter().next() {
            return Ok(first);
        }
        if looks_like_commit(rev)
            && let Some(commit) = self.commit_of(path, rev)?
        {
            return Ok(Resolved {
                rev: rev.to_string(),
                kind: RevKind::Commit,
                commit,
            });
        }
        let tags: Vec<&str> = refs
            .iter()
            .filter_map(|r| r.name.strip_prefix("refs/tags/"))
            .collect();
        let origin = dirs
            .config()
            .ok()
            .and_then(|c| c.origin_url().map(redact_url))
            .unwrap_or_else(|| path.display().to_string());
        Err(GitError::RevNotFound {
            rev: rev.to_string(),
            url: origin,
            nearest: nearest_names(rev, &tags, NEAREST_TAGS_SHOWN),
        })
    }

    /// Resolves `rev` for apply: from local refs unless `refresh` is set, and after
    /// fetching it from origin when it is not known locally (or `refresh` is set).
    /// `depth` keeps a shallow clone shallow by fetching only that rev.
    pub fn resolve_fetching(
        &self,
        path: &Path,
        rev: &str,
        depth: Option<u32>,
        refresh: bool,
    ) -> Result<Resolved, GitError> {
        if !refresh {
            match self.resolve_local(path, rev) {
                Err(GitError::RevNotFound { .. }) => {}
                other => return other,
            }
        }
        self.fetch_rev(path, rev, depth)?;
        self.resolve_local(path, rev)
    }

    /// Resolves `rev` against the remote `url` itself, with one `git ls-remote`
    /// (network, never writes): what `--refresh` uses to look upstream. A tag or
    /// a branch is found by name; a commit hash cannot be listed by a remote, so
    /// it comes back as `Ok(None)` ("known only after fetching"). A name the
    /// remote does not have is [`GitError::RevNotFound`] with its nearest tags.
    pub fn resolve_remote(&self, url: &str, rev: &str) -> Result<Option<Resolved>, GitError> {
        super::apply::validate_url(url)?;
        validate_rev(rev)?;
        let out = self.run_raw(None, &["ls-remote", "--heads", "--tags", url])?;
        if !out.success {
            return Err(GitError::Unreachable {
                url: self.shown_url(url),
                reason: out.stderr,
            });
        }
        let listing = out.stdout_text();
        let refs: Vec<(&str, &str)> = listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .collect();
        let find = |name: &str| refs.iter().find(|(_, r)| *r == name).map(|(c, _)| *c);
        let tag = format!("refs/tags/{rev}");
        // An annotated tag is listed twice; the `^{}` line is the commit it names.
        let as_tag = find(&format!("{tag}^{{}}")).or_else(|| find(&tag));
        let as_branch = find(&format!("refs/heads/{rev}"));
        if let (Some(tag), Some(branch)) = (as_tag, as_branch)
            && tag != branch
        {
            return Err(GitError::AmbiguousRev {
                rev: rev.to_string(),
                tag: tag[..tag.len().min(7)].to_string(),
                branch: branch[..branch.len().min(7)].to_string(),
            });
        }
        let found = as_tag
            .map(|c| (RevKind::Tag, c))
            .or_else(|| as_branch.map(|c| (RevKind::Branch, c)));
        if let Some((kind, commit)) = found {
            return Ok(Some(Resolved {
                rev: rev.to_string(),
                kind,
                commit: commit.to_string(),
            }));
        }
        if looks_like_commit(rev) {
            return Ok(None);
        }
        let tags: Vec<&str> = refs
            .iter()
            .filter_map(|(_, r)| r.strip_prefix("refs/tags/"))
            .filter(|t| !t.ends_with("^{}"))
            .collect();
        Err(GitError::RevNotFound {
            rev: rev.to_string(),
            url: self.shown_url(url),
            nearest: nearest_names(rev, &tags, NEAREST_TAGS_SHOWN),
        })
    }

    /// Tags and origin branches with their commits, in one process.
    fn local_refs(&self, path: &Path) -> Result<Vec<LocalRef>, GitError> {
        let out = self.run(
            Some(path),
            &[
                "for-each-ref",
                "--format=%(refname)\t%(objecttype)\t%(objectname)\t%(*objecttype)\t%(*objectname)",
                "refs/tags",
                "refs/remotes/origin",
            ],
        )?;
        Ok(out
            .stdout_text()
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                let [name, kind, object, peeled_kind, peeled] = fields[..] else {
                    return None;
                };
                let commit = match (kind, peeled_kind) {
                    ("commit", _) => Some(object.to_string()),
                    ("tag", "commit") => Some(peeled.to_string()),
                    _ => None,
                };
                Some(LocalRef {
                    name: name.to_string(),
                    commit,
                })
            })
            .collect())
    }

    /// The commit `rev` names locally, or `None`.
    pub(crate) fn commit_of(&self, path: &Path, rev: &str) -> Result<Option<String>, GitError> {
        let spec = format!("{rev}^{{commit}}");
        let out = self.run_raw(
            Some(path),
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &spec,
            ],
        )?;
        let commit = out.stdout_text().trim().to_string();
        Ok((out.success && is_object_id(&commit)).then_some(commit))
    }

    pub(crate) fn require_work_tree(&self, path: &Path) -> Result<GitDirs, GitError> {
        match GitDirs::locate(path).map_err(|e| GitError::io("read", path, e))? {
            Some(dirs) => Ok(dirs),
            None => Err(GitError::NotARepository {
                path: path.to_path_buf(),
                found: match self.observe(path)? {
                    super::RepoObservation::NotARepository { found } => found,
                    super::RepoObservation::EmptyDirectory => "an empty directory".into(),
                    _ => "absent".into(),
                },
            }),
        }
    }
}

/// The `count` names closest to `wanted` by edit distance; ties go to the newest
/// version, so `v0.3.28` suggests `v0.3.27` before `v0.3.18`.
pub(crate) fn nearest_names(wanted: &str, names: &[&str], count: usize) -> Vec<String> {
    let wanted_lower = wanted.to_lowercase();
    let mut scored: Vec<(usize, &str)> = names
        .iter()
        .map(|name| {
            (
                strsim::levenshtein(&wanted_lower, &name.to_lowercase()),
                *name,
            )
        })
        .collect();
    scored.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| compare_versions(b.1, a.1)));
    scored
        .into_iter()
        .take(count)
        .map(|(_, name)| name.to_string())
        .collect()
}

/// Orders names made of digit runs and other text the way versions are read:
/// `v0.3.9 < v0.3.27`.
fn compare_versions(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    for (x, y) in chunks(a).into_iter().zip(chunks(b)) {
        let order = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_tags_prefer_close_and_newer() {
        let tags = ["v0.3.18", "v0.3.26", "v0.3.27", "v0.2.0", "latest"];
        assert_eq!(
            nearest_names("v0.3.28", &tags, 3),
            ["v0.3.27", "v0.3.26", "v0.3.18"]
        );
        assert_eq!(nearest_names("0.3.27", &tags, 1), ["v0.3.27"]);
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("v0.3.9", "v0.3.27"), Ordering::Less);
        assert_eq!(compare_versions("v1.10", "v1.9"), Ordering::Greater);
    }

    #[test]
    fn revs_that_git_would_read_as_expressions_are_refused() {
        for rev in ["", "-n", "HEAD~1", "a..b", "main^", "x:y", "a b", "@{-1}"] {
            assert!(
                matches!(validate_rev(rev), Err(GitError::InvalidRev { .. })),
                "{rev:?}"
            );
        }
        for rev in ["v0.3.27", "main", "feature/x", "1a2b3c4", "3.30.4"] {
            assert!(validate_rev(rev).is_ok(), "{rev:?}");
        }
    }
}
