//! Reading the state of a clone without the network and with as few processes as
//! possible: HEAD, the origin URL and the submodule list come from files under
//! `.git`; one `git status` finds local changes; one `git ls-tree` per repository
//! that has submodules finds the commits the superproject records.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Git;
use super::config_file::ConfigFile;
use super::error::GitError;
use super::operation::{Operation, index_lock, read_record, unfinished_in};
use super::redact::redact_url;

/// How many changed paths an observation lists; the rest are only counted.
pub const MAX_LISTED_CHANGES: usize = 10;

/// What is at a repository's path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RepoObservation {
    /// Nothing is there: a clone is needed.
    Absent,
    /// An empty directory: a clone may go there.
    EmptyDirectory,
    /// Something that is not a git working tree (`found` says what, for messages).
    NotARepository { found: String },
    /// A git working tree.
    Repository(WorkTree),
}

/// The observed state of a git working tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkTree {
    /// The commit checked out; `None` in a repository without commits.
    pub head: Option<String>,
    /// The branch checked out, or `None` when HEAD is detached (as plasma leaves it).
    pub branch: Option<String>,
    /// The URL of the `origin` remote.
    pub origin: Option<RemoteUrl>,
    /// Local changes in the working tree and in submodules' contents.
    pub changes: LocalChanges,
    /// Whether the clone is shallow (has a `shallow` file).
    pub shallow: bool,
    /// Every submodule, nested ones included (parents before children).
    pub submodules: Vec<SubmoduleObservation>,
    /// Folders of submodules the checked-out commit no longer has, which a move
    /// left in place because they hold the user's files: kept, and not counted
    /// as local changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leftover_submodules: Vec<String>,
    /// A git operation the user started and did not finish, and where
    /// (`a rebase in sd-scripts`): plasma never moves such a clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<String>,
    /// `index.lock` files of the clone and its submodules: a git is running,
    /// or one died.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index_locks: Vec<PathBuf>,
    /// The operation a plasma run recorded here and has not ended: one running
    /// now, or one that was killed (see [`Operation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Box<Operation>>,
}

/// Local changes: the first [`MAX_LISTED_CHANGES`] and how many there are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalChanges {
    pub total: usize,
    pub listed: Vec<ChangedPath>,
}

/// One changed path, relative to the repository root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedPath {
    pub path: String,
    pub change: ChangeKind,
}

/// How a path differs from the checked-out commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    Modified,
    Added,
    Deleted,
    Renamed,
    TypeChanged,
    Untracked,
    Conflicted,
    /// A submodule whose own files have local changes.
    SubmoduleContent,
}

/// One submodule and how it compares with what the superproject records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmoduleObservation {
    /// The name in `.gitmodules`.
    pub name: String,
    /// The path relative to the top-level repository, `/`-separated
    /// (`sd-scripts`, `sd-scripts/libs/nested`).
    pub path: String,
    /// The commit the superproject's HEAD records for it.
    pub recorded: String,
    pub state: SubmoduleState,
}

/// Whether a submodule is checked out at the recorded commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum SubmoduleState {
    /// Never initialised and its folder absent or empty: what a clone without
    /// `--recurse-submodules` leaves (`git submodule status` shows `-`).
    Uninitialised,
    /// Initialised, but its folder is absent or empty.
    Missing,
    /// Its folder holds files but no git checkout.
    NotCheckedOut { entries: usize },
    /// Checked out at the recorded commit.
    AtCommit { commit: String },
    /// Checked out at another commit (`actual` is `None` when HEAD is unreadable).
    WrongCommit {
        expected: String,
        actual: Option<String>,
    },
}

impl SubmoduleState {
    /// True when the submodule is checked out at the recorded commit.
    pub fn is_converged(&self) -> bool {
        matches!(self, SubmoduleState::AtCommit { .. })
    }
}

/// A remote URL whose `Display`, `Debug` and serialized forms are redacted.
/// [`RemoteUrl::expose`] gives the real value, for comparison and for git.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl(String);

impl RemoteUrl {
    pub fn new(url: impl Into<String>) -> RemoteUrl {
        RemoteUrl(url.into())
    }

    /// The URL with any credentials in it. Never print this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with credentials replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// Whether this is the URL `url`, compared exactly after trimming trailing `/`.
    pub fn matches(&self, url: &str) -> bool {
        self.0.trim_end_matches('/') == url.trim_end_matches('/')
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteUrl({:?})", self.redacted())
    }
}

/// Serialized redacted: observations may be saved in state, secrets may not.
impl Serialize for RemoteUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for RemoteUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(RemoteUrl)
    }
}

impl RepoObservation {
    /// The working tree, or [`GitError::NotARepository`] naming what is there instead.
    pub fn require_repository(&self, path: &Path) -> Result<&WorkTree, GitError> {
        match self {
            RepoObservation::Repository(tree) => Ok(tree),
            RepoObservation::NotARepository { found } => Err(GitError::NotARepository {
                path: path.to_path_buf(),
                found: found.clone(),
            }),
            RepoObservation::Absent => Err(GitError::NotARepository {
                path: path.to_path_buf(),
                found: "absent".into(),
            }),
            RepoObservation::EmptyDirectory => Err(GitError::NotARepository {
                path: path.to_path_buf(),
                found: "an empty directory".into(),
            }),
        }
    }
}

impl WorkTree {
    /// Fails with [`GitError::DifferentOrigin`] unless `origin` is `url`.
    pub fn require_origin(&self, path: &Path, url: &str) -> Result<(), GitError> {
        match &self.origin {
            Some(origin) if origin.matches(url) => Ok(()),
            other => Err(GitError::DifferentOrigin {
                path: path.to_path_buf(),
                expected: redact_url(url),
                actual: other
                    .as_ref()
                    .map_or("no origin remote".to_string(), RemoteUrl::redacted),
            }),
        }
    }

    /// Fails with [`GitError::DirtyTree`], listing the changes, if there are any.
    pub fn require_clean(&self, path: &Path) -> Result<(), GitError> {
        if self.changes.total == 0 {
            Ok(())
        } else {
            Err(GitError::DirtyTree {
                path: path.to_path_buf(),
                changes: self.changes.summary(),
            })
        }
    }

    /// The operation a plasma run that no longer runs left unfinished here.
    pub fn interrupted(&self) -> Option<&Operation> {
        self.operation.as_deref().filter(|o| !o.by.is_running())
    }

    /// True when HEAD is `commit` and every submodule is at its recorded commit.
    pub fn is_at(&self, commit: &str) -> bool {
        self.head.as_deref() == Some(commit)
            && self.submodules.iter().all(|s| s.state.is_converged())
    }
}

impl LocalChanges {
    /// `M main.py, ?? notes.txt (and 3 more)`, in the spirit of `git status --short`.
    pub fn summary(&self) -> String {
        let mut text = self
            .listed
            .iter()
            .map(|c| format!("{} {}", c.change.code(), c.path))
            .collect::<Vec<_>>()
            .join(", ");
        let unlisted = self.total.saturating_sub(self.listed.len());
        if unlisted > 0 {
            text.push_str(&format!(" (and {unlisted} more)"));
        }
        text
    }
}

impl ChangeKind {
    /// The short code `git status --short` would show.
    pub fn code(self) -> &'static str {
        match self {
            ChangeKind::Modified | ChangeKind::SubmoduleContent => "M",
            ChangeKind::Added => "A",
            ChangeKind::Deleted => "D",
            ChangeKind::Renamed => "R",
            ChangeKind::TypeChanged => "T",
            ChangeKind::Untracked => "??",
            ChangeKind::Conflicted => "U",
        }
    }
}

/// Where a working tree keeps its git data.
pub(crate) struct GitDirs {
    /// `.git`, or where a `gitdir:` file points (submodules, worktrees): holds HEAD.
    pub git_dir: PathBuf,
    /// Holds config, refs, packed-refs and `shallow` (differs from `git_dir` in worktrees).
    pub common_dir: PathBuf,
}

impl GitDirs {
    /// The git directories of the working tree at `work_tree`, or `None` when it has
    /// no `.git` entry of its own.
    pub fn locate(work_tree: &Path) -> io::Result<Option<GitDirs>> {
        let dot_git = work_tree.join(".git");
        let git_dir = match fs::metadata(&dot_git) {
            Ok(meta) if meta.is_dir() => dot_git,
            Ok(_) => {
                let text = fs::read_to_string(&dot_git)?;
                let Some(target) = text.trim_end().strip_prefix("gitdir: ") else {
                    return Ok(None);
                };
                work_tree.join(target)
            }
            // Absent, or `work_tree` is itself a file.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let common_dir = match fs::read_to_string(git_dir.join("commondir")) {
            Ok(text) => git_dir.join(text.trim_end()),
            Err(_) => git_dir.clone(),
        };
        Ok(Some(GitDirs {
            git_dir,
            common_dir,
        }))
    }

    pub fn config(&self) -> io::Result<ConfigFile> {
        ConfigFile::read(&self.common_dir.join("config"))
    }
}

/// The commit checked out in `work_tree`, read from files only (a
/// submodule's `.git` file is followed); `None` when it is not a work tree
/// of its own or HEAD is kept in a form only git reads (reftable).
pub fn head_commit(work_tree: &Path) -> io::Result<Option<String>> {
    let Some(dirs) = GitDirs::locate(work_tree)? else {
        return Ok(None);
    };
    Ok(match read_head(&dirs)? {
        HeadFromFiles::Known { commit, .. } => commit,
        HeadFromFiles::Unknown { .. } => None,
    })
}

/// HEAD as read from files.
enum HeadFromFiles {
    Known {
        commit: Option<String>,
        branch: Option<String>,
    },
    /// A format this reader does not handle (reftable, odd refs): ask git.
    Unknown { branch: Option<String> },
}

fn read_head(dirs: &GitDirs) -> io::Result<HeadFromFiles> {
    let head = fs::read_to_string(dirs.git_dir.join("HEAD"))?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref: ") else {
        return Ok(if is_object_id(head) {
            HeadFromFiles::Known {
                commit: Some(head.to_string()),
                branch: None,
            }
        } else {
            HeadFromFiles::Unknown { branch: None }
        });
    };
    let branch = reference.strip_prefix("refs/heads/").map(str::to_string);
    if dirs.common_dir.join("reftable").exists() {
        return Ok(HeadFromFiles::Unknown { branch });
    }
    if let Ok(text) = fs::read_to_string(dirs.common_dir.join(reference)) {
        let text = text.trim();
        return Ok(if is_object_id(text) {
            HeadFromFiles::Known {
                commit: Some(text.to_string()),
                branch,
            }
        } else {
            HeadFromFiles::Unknown { branch }
        });
    }
    let packed = match fs::read_to_string(dirs.common_dir.join("packed-refs")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let commit = packed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(_, name)| *name == reference)
        .map(|(id, _)| id.to_string());
    // No loose and no packed ref: the branch is unborn (a repository without commits).
    Ok(HeadFromFiles::Known { commit, branch })
}

pub(crate) fn is_object_id(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What sits at a path that has no `.git` of its own.
fn describe_non_repository(path: &Path) -> Result<RepoObservation, GitError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RepoObservation::Absent),
        Err(e) => return Err(GitError::io("read", path, e)),
    };
    if !meta.is_dir() {
        return Ok(RepoObservation::NotARepository {
            found: "a file".into(),
        });
    }
    match count_entries(path).map_err(|e| GitError::io("read", path, e))? {
        0 => Ok(RepoObservation::EmptyDirectory),
        n => Ok(RepoObservation::NotARepository {
            found: format!(
                "a directory with {n} entr{} and no .git",
                if n == 1 { "y" } else { "ies" }
            ),
        }),
    }
}

fn count_entries(dir: &Path) -> io::Result<usize> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.count()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

impl Git {
    /// Observes the clone at `path` without touching the network or writing
    /// anything: one `git status`, plus one `git ls-tree` per repository (top-level
    /// or submodule) that has submodules.
    pub fn observe(&self, path: &Path) -> Result<RepoObservation, GitError> {
        let Some(dirs) = GitDirs::locate(path).map_err(|e| GitError::io("read", path, e))? else {
            return describe_non_repository(path);
        };
        let (head, branch) = self.head(path, &dirs)?;
        let config = dirs
            .config()
            .map_err(|e| GitError::io("read", dirs.common_dir.join("config"), e))?;
        // Git fetches from the first URL when a remote has several.
        let origin = config.origin_url().map(RemoteUrl::new);
        let shallow = dirs.common_dir.join("shallow").exists();
        let (all_changes, leftover_submodules) = self.local_changes_all(path)?;
        let changes = LocalChanges {
            total: all_changes.len(),
            listed: all_changes.into_iter().take(MAX_LISTED_CHANGES).collect(),
        };
        let mut submodules = Vec::new();
        if let Some(head) = &head {
            self.observe_submodules(path, "", &config, head, &mut submodules)?;
        }
        // The clone's own git directory, then each checked-out submodule's.
        let mut unfinished = unfinished_in(&dirs.git_dir).map(str::to_string);
        let mut index_locks: Vec<PathBuf> = index_lock(&dirs.git_dir).into_iter().collect();
        for sub in &submodules {
            if let Ok(Some(sub_dirs)) = GitDirs::locate(&path.join(&sub.path)) {
                if unfinished.is_none() {
                    unfinished = unfinished_in(&sub_dirs.git_dir)
                        .map(|what| format!("{what} in {}", sub.path));
                }
                index_locks.extend(index_lock(&sub_dirs.git_dir));
            }
        }
        Ok(RepoObservation::Repository(WorkTree {
            head,
            branch,
            origin,
            changes,
            shallow,
            submodules,
            leftover_submodules,
            unfinished,
            index_locks,
            operation: read_record(&dirs).map(Box::new),
        }))
    }

    /// HEAD's commit and branch, from files when possible, else from `git rev-parse`.
    /// The commit checked out at `path`, read from git's files where it can
    /// be (a `git rev-parse` only for heads the files do not settle);
    /// `None` when `path` is not a clone or has no commits.
    pub fn head_commit(&self, path: &Path) -> Result<Option<String>, GitError> {
        let Some(dirs) = GitDirs::locate(path).map_err(|e| GitError::io("read", path, e))? else {
            return Ok(None);
        };
        Ok(self.head(path, &dirs)?.0)
    }

    fn head(
        &self,
        work_tree: &Path,
        dirs: &GitDirs,
    ) -> Result<(Option<String>, Option<String>), GitError> {
        match read_head(dirs).map_err(|e| GitError::io("read", dirs.git_dir.join("HEAD"), e))? {
            HeadFromFiles::Known { commit, branch } => Ok((commit, branch)),
            HeadFromFiles::Unknown { branch } => {
                let out =
                    self.run_raw(Some(work_tree), &["rev-parse", "--verify", "-q", "HEAD"])?;
                let commit = out.stdout_text().trim().to_string();
                Ok((is_object_id(&commit).then_some(commit), branch))
            }
        }
    }

    /// Every local change of the clone at `path`, file by file, submodules'
    /// contents included (`sd-scripts/train.py`), plus the folders of dropped
    /// submodules a move left behind (not local changes: see
    /// [`WorkTree::leftover_submodules`]). One `git status` per repository with
    /// changes inside.
    pub fn local_changes_all(
        &self,
        path: &Path,
    ) -> Result<(Vec<ChangedPath>, Vec<String>), GitError> {
        let mut changes = Vec::new();
        let mut leftovers = Vec::new();
        self.collect_changes(path, "", &mut changes, &mut leftovers)?;
        Ok((changes, leftovers))
    }

    fn collect_changes(
        &self,
        top: &Path,
        prefix: &str,
        changes: &mut Vec<ChangedPath>,
        leftovers: &mut Vec<String>,
    ) -> Result<(), GitError> {
        for change in self.local_changes(&top.join(prefix))? {
            let full = format!("{prefix}{}", change.path);
            let inner = format!("{full}/");
            match change.change {
                ChangeKind::SubmoduleContent => {
                    let before = changes.len();
                    self.collect_changes(top, &inner, changes, leftovers)?;
                    if changes.len() == before {
                        changes.push(ChangedPath {
                            path: full,
                            change: ChangeKind::SubmoduleContent,
                        });
                    }
                }
                ChangeKind::Untracked
                    if full.ends_with('/')
                        && fs::symlink_metadata(top.join(&full).join(".git"))
                            .is_ok_and(|m| m.is_file()) =>
                {
                    leftovers.push(full.trim_end_matches('/').to_string());
                }
                _ => changes.push(ChangedPath {
                    path: full,
                    change: change.change,
                }),
            }
        }
        Ok(())
    }

    /// Local changes from `git status --porcelain=v2`, which (unlike v1) says whether a
    /// submodule differs only by commit (not a local change: the submodule state
    /// reports it) or has edits inside.
    fn local_changes(&self, path: &Path) -> Result<Vec<ChangedPath>, GitError> {
        let out = self.run(
            Some(path),
            &[
                "--no-optional-locks",
                "status",
                "--porcelain=v2",
                "-z",
                "--ignore-submodules=none",
                "--untracked-files=normal",
            ],
        )?;
        let mut changes = parse_status_v2(&out.stdout);
        changes.retain(|c| !is_bytecode_cache(c));
        Ok(changes)
    }

    /// Appends the submodules of the repository at `repo_dir` (whose paths are
    /// reported under `prefix`), then recursively those of each checked-out one.
    fn observe_submodules(
        &self,
        repo_dir: &Path,
        prefix: &str,
        repo_config: &ConfigFile,
        head: &str,
        out: &mut Vec<SubmoduleObservation>,
    ) -> Result<(), GitError> {
        let gitmodules_path = repo_dir.join(".gitmodules");
        let gitmodules = ConfigFile::read(&gitmodules_path)
            .map_err(|e| GitError::io("read", &gitmodules_path, e))?;
        let declared: Vec<(String, String)> = gitmodules
            .subsections("submodule")
            .into_iter()
            .filter_map(|name| {
                let path = gitmodules.get("submodule", Some(name), "path")?;
                Some((name.to_string(), path.trim_end_matches('/').to_string()))
            })
            .collect();
        if declared.is_empty() {
            return Ok(());
        }
        let recorded =
            self.recorded_gitlinks(repo_dir, head, declared.iter().map(|(_, p)| p.as_str()))?;
        for (name, sub_path) in declared {
            // A .gitmodules entry with no gitlink in the tree is ignored, as git does.
            let Some(expected) = recorded
                .iter()
                .find(|(p, _)| *p == sub_path)
                .map(|(_, c)| c.clone())
            else {
                continue;
            };
            let sub_dir = repo_dir.join(&sub_path);
            let full_path = format!("{prefix}{sub_path}");
            let sub_dirs =
                GitDirs::locate(&sub_dir).map_err(|e| GitError::io("read", &sub_dir, e))?;
            let state = match &sub_dirs {
                Some(dirs) => match self.head(&sub_dir, dirs)?.0 {
                    Some(actual) if actual == expected => {
                        SubmoduleState::AtCommit { commit: actual }
                    }
                    actual => SubmoduleState::WrongCommit {
                        expected: expected.clone(),
                        actual,
                    },
                },
                None => {
                    match count_entries(&sub_dir).map_err(|e| GitError::io("read", &sub_dir, e))? {
                        0 if repo_config.get("submodule", Some(&name), "url").is_some() => {
                            SubmoduleState::Missing
                        }
                        0 => SubmoduleState::Uninitialised,
                        entries => SubmoduleState::NotCheckedOut { entries },
                    }
                }
            };
            let nested_head = match &state {
                SubmoduleState::AtCommit { commit } => Some(commit.clone()),
                SubmoduleState::WrongCommit { actual, .. } => actual.clone(),
                _ => None,
            };
            out.push(SubmoduleObservation {
                name,
                path: full_path.clone(),
                recorded: expected,
                state,
            });
            if let (Some(dirs), Some(nested_head)) = (sub_dirs, nested_head) {
                let sub_config = dirs
                    .config()
                    .map_err(|e| GitError::io("read", dirs.common_dir.join("config"), e))?;
                self.observe_submodules(
                    &sub_dir,
                    &format!("{full_path}/"),
                    &sub_config,
                    &nested_head,
                    out,
                )?;
            }
        }
        Ok(())
    }

    /// The gitlinks (path, commit) that `commit`'s tree records at `paths`.
    pub(crate) fn recorded_gitlinks<'a>(
        &self,
        repo_dir: &Path,
        commit: &'a str,
        paths: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<(String, String)>, GitError> {
        let mut args = vec!["--literal-pathspecs", "ls-tree", "-z", commit, "--"];
        args.extend(paths);
        let out = self.run(Some(repo_dir), &args)?;
        Ok(out
            .stdout
            .split(|b| *b == 0)
            .filter_map(|record| {
                // `<mode> SP <type> SP <object> TAB <path>`
                let record = String::from_utf8_lossy(record);
                let (meta, path) = record.split_once('\t')?;
                let mut fields = meta.split(' ');
                let (mode, _, object) = (fields.next()?, fields.next()?, fields.next()?);
                (mode == "160000").then(|| (path.to_string(), object.to_string()))
            })
            .collect())
    }
}

/// Parses `git status --porcelain=v2 -z` into local changes. A submodule that
/// differs only in its checked-out commit is left out: that is a submodule state.
pub(crate) fn parse_status_v2(output: &[u8]) -> Vec<ChangedPath> {
    let mut changes = Vec::new();
    let mut records = output.split(|b| *b == 0).filter(|r| !r.is_empty());
    while let Some(record) = records.next() {
        let record = String::from_utf8_lossy(record);
        let (kind, rest) = record.split_at(1);
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        let change = match kind {
            "1" | "2" => {
                let fields: Vec<&str> = rest.splitn(if kind == "1" { 8 } else { 9 }, ' ').collect();
                if kind == "2" {
                    records.next(); // the original path of a rename
                }
                let (Some(xy), Some(sub), Some(path)) =
                    (fields.first(), fields.get(1), fields.last())
                else {
                    continue;
                };
                classify(xy, sub).map(|change| (path.to_string(), change))
            }
            "u" => rest
                .splitn(10, ' ')
                .last()
                .map(|path| (path.to_string(), ChangeKind::Conflicted)),
            "?" => Some((rest.to_string(), ChangeKind::Untracked)),
            _ => None, // `!` ignored files, `#` headers
        };
        if let Some((path, change)) = change {
            changes.push(ChangedPath { path, change });
        }
    }
    changes
}

/// An untracked Python byte-code cache (a `__pycache__/` folder, a `.pyc`
/// file): Python writes them beside the code it imports (ComfyUI importing
/// a custom node that has no `.gitignore` for them), so they are not the
/// user's local changes.
fn is_bytecode_cache(change: &ChangedPath) -> bool {
    let path = change.path.trim_end_matches('/');
    change.change == ChangeKind::Untracked
        && (path == "__pycache__" || path.ends_with("/__pycache__") || path.ends_with(".pyc"))
}

fn classify(xy: &str, sub: &str) -> Option<ChangeKind> {
    let mut xy_chars = xy.chars();
    let (x, y) = (xy_chars.next()?, xy_chars.next()?);
    if let Some(flags) = sub.strip_prefix('S') {
        let flags: Vec<char> = flags.chars().collect();
        let edited_inside = flags.get(1) == Some(&'M') || flags.get(2) == Some(&'U');
        if x != '.' {
            return Some(ChangeKind::Modified); // a staged gitlink change is the user's
        }
        // Only the commit differs, or the folder is gone: the submodule state covers it.
        return edited_inside.then_some(ChangeKind::SubmoduleContent);
    }
    let kinds = [x, y];
    Some(if kinds.contains(&'R') || kinds.contains(&'C') {
        ChangeKind::Renamed
    } else if kinds.contains(&'D') {
        ChangeKind::Deleted
    } else if kinds.contains(&'A') {
        ChangeKind::Added
    } else if kinds.contains(&'T') {
        ChangeKind::TypeChanged
    } else {
        ChangeKind::Modified
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_porcelain_v2_record_kind() {
        let output = b"1 .M N... 100644 100644 100644 aaa aaa main.py\0\
                       1 A. N... 000000 100644 100644 000 bbb new file.txt\0\
                       2 R. N... 100644 100644 100644 ccc ccc R100 renamed.py\0old.py\0\
                       u UU N... 100644 100644 100644 100644 d e f conflict.txt\0\
                       ? notes.txt\0\
                       ! ignored.log\0";
        let changes = parse_status_v2(output);
        let got: Vec<(&str, ChangeKind)> = changes
            .iter()
            .map(|c| (c.path.as_str(), c.change))
            .collect();
        assert_eq!(
            got,
            vec![
                ("main.py", ChangeKind::Modified),
                ("new file.txt", ChangeKind::Added),
                ("renamed.py", ChangeKind::Renamed),
                ("conflict.txt", ChangeKind::Conflicted),
                ("notes.txt", ChangeKind::Untracked),
            ]
        );
    }

    #[test]
    fn untracked_bytecode_caches_are_not_local_changes() {
        let output = b"? __pycache__/\0? nodes/__pycache__/\0? old.pyc\0? notes.txt\0\
                       1 .M N... 100644 100644 100644 aaa aaa x.pyc\0";
        let kept: Vec<String> = parse_status_v2(output)
            .into_iter()
            .filter(|c| !is_bytecode_cache(c))
            .map(|c| c.path)
            .collect();
        assert_eq!(kept, ["notes.txt", "x.pyc"]);
    }

    #[test]
    fn submodule_at_another_commit_is_not_a_local_change_but_edits_inside_are() {
        let moved = b"1 .M SC.. 160000 160000 160000 a a sub\0";
        assert!(parse_status_v2(moved).is_empty());
        let edited = b"1 .M S.M. 160000 160000 160000 a a sub\0";
        assert_eq!(
            parse_status_v2(edited)[0].change,
            ChangeKind::SubmoduleContent
        );
        let untracked_inside = b"1 .M S..U 160000 160000 160000 a a sub\0";
        assert_eq!(
            parse_status_v2(untracked_inside)[0].change,
            ChangeKind::SubmoduleContent
        );
    }

    #[test]
    fn summary_lists_codes_and_counts_the_rest() {
        let changes = LocalChanges {
            total: 5,
            listed: vec![
                ChangedPath {
                    path: "a.py".into(),
                    change: ChangeKind::Modified,
                },
                ChangedPath {
                    path: "b.txt".into(),
                    change: ChangeKind::Untracked,
                },
            ],
        };
        assert_eq!(changes.summary(), "M a.py, ?? b.txt (and 3 more)");
    }

    #[test]
    fn remote_url_never_shows_its_secret() {
        let url = RemoteUrl::new("https://user:secret@example.com/r.git");
        assert!(!format!("{url} {url:?}").contains("secret"));
        assert!(!serde_json::to_string(&url).unwrap().contains("secret"));
        assert!(url.matches("https://user:secret@example.com/r.git/"));
    }
}
