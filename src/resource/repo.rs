//! `repo`: a git clone at a pinned revision, with its submodules initialised.
//!
//! The git work lives in [`Checkout`], which the `custom-node` kind embeds (a
//! custom node is a checkout at `<comfyui>/custom_nodes/<dir>`); [`Repo`] is a
//! checkout with a `path` of its own.
//!
//! How a `rev` is pinned without the network:
//! - a tag or a commit resolves from the clone's own refs;
//! - a branch resolves to the commit the last apply recorded in state, and the
//!   clone also counts as converged at `origin/<branch>` as last fetched (which
//!   is where `apply --refresh` leaves it). Only `--refresh` looks upstream
//!   (`git ls-remote`), so `plan` and `drift` never touch the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::logfile::LogFile;
use miette::SourceSpan;
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApplyContext, Kind, ObserveContext, Outputs, ResourceError};
use crate::diagnostic::Problem;
use crate::git::{
    CloneRequest, Git, GitError, Operation, RemoteUrl, RepoObservation, RevKind, SubmoduleState,
    WorkTree, orphaned_temp_clones, redact_url, validate_rev,
};
use crate::lint::{self, Lint, LintContext};
use crate::plan::{Action, Diff};
use crate::spec::Spanned;
use crate::spec::reader::NodeReader;
use crate::state::ResourceState;

/// What to do with local changes in the working tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDirty {
    /// A plan error that lists the changes and names the choices.
    Fail,
    /// Leave them; a checkout that would overwrite them fails.
    Keep,
    /// Discard them (`reset --hard`, `clean -fd`), shown as destructive in the plan.
    Reset,
}

impl OnDirty {
    pub const CHOICES: &[&str] = &["fail", "keep", "reset"];

    fn name(self) -> &'static str {
        match self {
            OnDirty::Fail => "fail",
            OnDirty::Keep => "keep",
            OnDirty::Reset => "reset",
        }
    }
}

/// The git part of a `repo` or a `custom-node`: which repository, at which
/// revision, where, and how to treat submodules and local changes.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// `RemoteUrl` so that `Debug` never shows credentials.
    pub url: RemoteUrl,
    pub url_span: SourceSpan,
    pub rev: Spanned<String>,
    pub path: PathBuf,
    pub submodules: bool,
    /// Where `submodules #false` was written, for the lint.
    pub submodules_span: Option<SourceSpan>,
    pub depth: Option<u32>,
    pub on_dirty: OnDirty,
    /// The commit `plasma.lock` holds this checkout at (its entry names
    /// this url and rev), set at load; `None` without a matching entry.
    pub locked: Option<String>,
}

/// Where the commit that `rev` names came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSource {
    /// A tag, branch or commit in the clone's own refs.
    LocalRefs,
    /// The commit the last apply resolved this branch to (from state).
    Recorded,
    /// The remote, asked with `--refresh`.
    Upstream,
    /// Not known without fetching; apply fetches it.
    NotFetched,
    /// The commit `plasma.lock` holds the rev at (even if the tag or branch
    /// moved since); apply fetches it when the clone lacks it.
    Locked,
}

/// The commit `rev` names, as far as observation could tell.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub rev: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<RevKind>,
    /// The commit apply checks out; absent when it must be fetched first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub source: TargetSource,
}

/// What is at the checkout's path, and what the spec's `rev` names.
#[derive(Debug, Clone, Serialize)]
pub struct CheckoutObserved {
    pub path: PathBuf,
    /// The clone as found: head, origin, local changes, submodules.
    pub found: RepoObservation,
    pub target: Target,
    /// The clone's origin is another URL of the same project: apply points it
    /// at the spec's `url`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub url_changes: bool,
    /// Under `on-dirty reset`: the untracked files and folders the reset would
    /// delete (`git clean -nd`, inside submodules too).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reset_deletes: Vec<String>,
    /// The rev the last apply checked out, when HEAD is still there (for the plan).
    #[serde(skip)]
    pub head_rev: Option<String>,
    /// Temporary clone folders that a killed plasma left beside `path`; apply
    /// removes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<PathBuf>,
    /// Commits that moving the clone would leave on no branch, tag or remote
    /// branch (`1a2b3c4 subject`, `sd-scripts: 5d6e7f8 subject`): made on a
    /// detached HEAD, in the clone or a submodule.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_commits: Vec<String>,
    /// Folders of submodules the target no longer has that hold the user's
    /// files, with what they hold: kept, never deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_folders: Vec<String>,
    /// Ignored files of the user's that the target commit tracks: a checkout
    /// would overwrite them silently ([`Git::ignored_files_target_tracks`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overwritten_ignored: Vec<String>,
}

/// What moving a clone to its target would lose or leave behind.
#[derive(Debug, Default)]
struct MoveLosses {
    /// Commits left on no branch (`1a2b3c4 subject`, `sub: 5d6e7f8 subject`).
    commits: Vec<String>,
    /// Folders of dropped submodules kept because they hold the user's files.
    kept_folders: Vec<String>,
    /// Ignored files the target commit tracks, which a checkout overwrites.
    overwritten_ignored: Vec<String>,
}

/// What the last apply recorded, as observation needs it.
#[derive(Debug, Clone)]
struct Recorded {
    rev: Option<String>,
    kind: Option<RevKind>,
    commit: Option<String>,
    url: Option<String>,
}

impl Recorded {
    fn from_state(prior: Option<&ResourceState>) -> Recorded {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        Recorded {
            rev: text(prior.and_then(|p| p.outputs.get("rev"))),
            kind: prior
                .and_then(|p| p.outputs.get("rev_kind"))
                .and_then(|k| serde_json::from_value(k.clone()).ok()),
            commit: text(prior.and_then(|p| p.outputs.get("commit"))),
            url: text(prior.and_then(|p| p.desired.get("url"))),
        }
    }
}

/// Whether a URL names a repository on this machine (a path or `file://`).
fn is_local_url(url: &str) -> bool {
    url.starts_with("file://") || url.starts_with('/')
}

/// A local repository path as git needs it whatever its working folder:
/// absolute (against the current folder when the spec's own path was
/// relative) and without `.` or `..` (git stores a clone's origin as given, so
/// `a/../mirrors/x` would never compare equal to `mirrors/x`).
fn local_repository_path(path: &std::path::Path) -> String {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut normal = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal.display().to_string()
}

/// Whether two URLs name the same repository: equal once a trailing `/` and
/// `.git` are ignored (`…/ComfyUI` and `…/ComfyUI.git` are one project), and
/// local paths once `.` and `..` are resolved.
fn same_repository(a: &str, b: &str) -> bool {
    let norm = |u: &str| {
        let u = crate::git::without_credentials(u);
        let u = u.trim_end_matches('/');
        let u = u.strip_suffix(".git").unwrap_or(u);
        if u.starts_with('/') {
            local_repository_path(std::path::Path::new(u))
        } else {
            u.to_string()
        }
    };
    norm(a) == norm(b)
}

/// The commit HEAD was at when observed, if the last apply recorded it there.
fn head_commit_recorded(observed: &CheckoutObserved) -> Option<String> {
    match &observed.found {
        RepoObservation::Repository(tree) if observed.head_rev.is_some() => tree.head.clone(),
        _ => None,
    }
}

/// How many paths a message names; the rest are counted.
const PATHS_SHOWN: usize = 10;

/// `paths` for a message: the first [`PATHS_SHOWN`], then `(and N more)`.
fn shown_paths(paths: &[String]) -> String {
    let mut shown: Vec<&str> = paths.iter().take(PATHS_SHOWN).map(String::as_str).collect();
    let more = format!("(and {} more)", paths.len().saturating_sub(PATHS_SHOWN));
    if paths.len() > PATHS_SHOWN {
        shown.push(&more);
    }
    shown.join(", ")
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(7)]
}

/// A git error as a resource error: git's advice (after the first line) becomes the help.
pub fn git_error(e: GitError) -> ResourceError {
    let extra_help = match &e {
        GitError::RevNotFound { .. } => {
            Some("set `rev` to a tag, a branch or a commit of the repository")
        }
        _ => None,
    };
    let text = e.to_string();
    let mut error = match text.split_once('\n') {
        Some((message, help)) => ResourceError::new(message).help(help.replace('\n', " ")),
        None => ResourceError::new(text),
    };
    if let (None, Some(help)) = (&error.help, extra_help) {
        error = error.help(help);
    }
    error
}

/// Adds the removal of temporary folders a killed clone left to `diff`.
fn with_orphans(mut diff: Diff, observed: &CheckoutObserved) -> Diff {
    if observed.orphans.is_empty() {
        return diff;
    }
    let why = format!(
        "remove {} temporary folder(s) an interrupted clone left",
        observed.orphans.len()
    );
    diff.reason = if diff.reason.is_empty() {
        why
    } else {
        format!("{}, {why}", diff.reason)
    };
    for orphan in &observed.orphans {
        diff = diff.attribute(
            "interrupted clone",
            Some(orphan.display().to_string()),
            None,
        );
    }
    diff
}

fn submodule_state_text(state: &SubmoduleState) -> String {
    match state {
        SubmoduleState::Uninitialised => "not initialised".into(),
        SubmoduleState::Missing => "initialised, folder empty".into(),
        SubmoduleState::NotCheckedOut { entries } => {
            format!("{entries} entries, no checkout")
        }
        SubmoduleState::AtCommit { commit } => short(commit).into(),
        SubmoduleState::WrongCommit { actual, .. } => actual
            .as_deref()
            .map_or("unreadable HEAD".into(), |c| short(c).to_string()),
    }
}

impl Checkout {
    /// Reads `url`, `rev`, `submodules`, `depth` and `on-dirty`; the caller
    /// supplies the path (a repo's `path`, a custom node's folder).
    pub fn parse(r: &NodeReader<'_, '_>, path: Option<PathBuf>) -> Option<Checkout> {
        let url = r.string("url");
        let rev = r.string("rev");
        let submodules = r.opt_bool("submodules");
        let depth = r.opt_integer("depth");
        let on_dirty = r.opt_choice("on-dirty", OnDirty::CHOICES);

        let url = url.and_then(|u| {
            if u.value.is_empty() || u.value.starts_with('-') {
                r.fail(
                    Problem::error("spec::malformed-url", "not a repository URL")
                        .label(u.span, "expected a URL or a path")
                        .help("write an https, ssh or file:// URL, or a local path"),
                );
                return None;
            }
            // A relative or `~` path is a local repository: resolve it like any
            // path of the spec, since git would resolve it against its own cwd.
            let local =
                !u.value.contains("://") && (u.value.starts_with('.') || u.value.starts_with('~'));
            let value = if local {
                local_repository_path(&r.cx.resolve_path(&u.value))
            } else {
                u.value
            };
            Some(Spanned::new(value, u.span))
        });
        let rev = rev.and_then(|rev| match validate_rev(&rev.value) {
            Ok(()) => Some(rev),
            Err(e) => {
                r.fail(
                    Problem::error("spec::malformed-rev", e.to_string())
                        .label(rev.span, "not a tag, branch or commit name"),
                );
                None
            }
        });
        let depth = match depth {
            None => Some(None),
            Some(d) => match u32::try_from(d.value) {
                Ok(n) if n >= 1 => Some(Some(n)),
                _ => {
                    r.fail(
                        Problem::error("spec::malformed-depth", "`depth` must be 1 or more")
                            .label(d.span, "not a positive number of commits")
                            .help("write `depth 1` for a shallow clone, or leave `depth` out"),
                    );
                    None
                }
            },
        };
        let on_dirty = match on_dirty.map(|c| c.value) {
            None | Some("fail") => OnDirty::Fail,
            Some("keep") => OnDirty::Keep,
            Some(_) => OnDirty::Reset,
        };
        let url = url?;
        Some(Checkout {
            url: RemoteUrl::new(url.value),
            url_span: url.span,
            rev: rev?,
            path: path?,
            submodules: submodules.as_ref().is_none_or(|s| s.value),
            submodules_span: submodules.filter(|s| !s.value).map(|s| s.span),
            depth: depth?,
            on_dirty,
            locked: None,
        })
    }

    /// The git runner for this checkout. Submodules with local URLs are allowed
    /// only when the repository itself is local: the user already trusts
    /// repositories on this machine, while a remote one could otherwise make git
    /// copy local repositories into its checkout (CVE-2022-39253).
    /// Credentials in the URL go to git through its environment (see
    /// [`Git::with_url_credentials`]); `Checkout::git_url` is the URL to give it.
    pub fn git(&self) -> Git {
        Git::new()
            .allow_local_submodules(is_local_url(self.url.expose()))
            .with_url_credentials(self.url.expose())
            .0
    }

    /// The URL git is given and stores as origin: without credentials.
    pub fn git_url(&self) -> String {
        crate::git::without_credentials(self.url.expose())
    }

    pub fn desired(&self) -> Value {
        json!({
            "url": self.url.redacted(),
            "rev": self.rev.value,
            "path": self.path,
            "submodules": self.submodules,
            "depth": self.depth,
            "on_dirty": self.on_dirty.name(),
        })
    }

    /// Observes without the network (unless `refresh`) and without writing.
    pub async fn observe(
        &self,
        prior: Option<&ResourceState>,
        refresh: bool,
    ) -> Result<CheckoutObserved, ResourceError> {
        let this = self.clone();
        let recorded = Recorded::from_state(prior);
        tokio::task::spawn_blocking(move || this.observe_blocking(&this.git(), &recorded, refresh))
            .await
            .map_err(|e| ResourceError::new(format!("observation stopped: {e}")))?
    }

    fn observe_blocking(
        &self,
        git: &Git,
        recorded: &Recorded,
        refresh: bool,
    ) -> Result<CheckoutObserved, ResourceError> {
        let url = &self.git_url();
        let rev = &self.rev.value;
        let not_fetched = || Target {
            rev: rev.clone(),
            kind: None,
            commit: None,
            source: TargetSource::NotFetched,
        };
        let found = git.observe(&self.path).map_err(git_error)?;
        let held = self.locked.as_ref().map(|commit| Target {
            rev: rev.clone(),
            kind: None,
            commit: Some(commit.clone()),
            source: TargetSource::Locked,
        });
        let tree = match &found {
            RepoObservation::Absent | RepoObservation::EmptyDirectory => {
                let target = match (held, refresh) {
                    (Some(held), _) => held,
                    (None, true) => self.upstream_target(git)?.unwrap_or_else(not_fetched),
                    (None, false) => not_fetched(),
                };
                return Ok(CheckoutObserved {
                    path: self.path.clone(),
                    found,
                    target,
                    url_changes: false,
                    reset_deletes: Vec::new(),
                    head_rev: None,
                    orphans: orphaned_temp_clones(&self.path),
                    lost_commits: Vec::new(),
                    kept_folders: Vec::new(),
                    overwritten_ignored: Vec::new(),
                });
            }
            RepoObservation::NotARepository { .. } => {
                return Err(git_error(found.require_repository(&self.path).unwrap_err()));
            }
            RepoObservation::Repository(tree) => tree,
        };
        self.require_movable(tree)?;
        let url_changes = !tree
            .origin
            .as_ref()
            .is_some_and(|o| same_repository(o.expose(), url))
            // A clone made with credentials in its origin: they are moved out of .git/config.
            || tree
                .origin
                .as_ref()
                .is_some_and(|o| crate::git::without_credentials(o.expose()) != o.expose());
        // What the last apply recorded is about this spec's url and rev.
        let same_pin = recorded.rev.as_deref() == Some(rev.as_str())
            && recorded
                .url
                .as_deref()
                .is_some_and(|r| same_repository(r, &self.url.redacted()));

        // A locked commit is the target, whatever the rev names now.
        let upstream = match (refresh, &held) {
            (true, None) => self.upstream_target(git)?,
            _ => None,
        };
        let target = match (held, upstream) {
            (Some(target), _) | (None, Some(target)) => target,
            (None, None) => self.local_target(git, tree, recorded, same_pin)?,
        };

        if url_changes {
            // Plasma cloned the current origin and the spec's url changed since,
            // or the clone already holds what `rev` names: the same project at
            // another URL. Anything else is some other repository.
            let origin_was_applied = tree.origin.as_ref().is_some_and(|o| {
                recorded
                    .url
                    .as_deref()
                    .is_some_and(|r| same_repository(r, &o.redacted()))
            });
            let shares_history = match target.source {
                TargetSource::LocalRefs | TargetSource::Recorded => true,
                TargetSource::Locked => target
                    .commit
                    .as_deref()
                    .is_some_and(|c| git.commit_of(&self.path, c).ok().flatten().is_some()),
                _ => git.resolve_local(&self.path, rev).is_ok(),
            };
            if !origin_was_applied && !shares_history {
                return Err(
                    git_error(tree.require_origin(&self.path, url).unwrap_err()).help(format!(
                        "if it is the same project (a fork or mirror), run `git -C {} remote \
                         set-url origin {}` and plan again; otherwise move the folder away or \
                         point `path` elsewhere",
                        self.path.display(),
                        self.url.redacted()
                    )),
                );
            }
        }

        let dirty = tree.changes.total > 0 && tree.interrupted().is_none();
        let reset_deletes = if dirty && self.on_dirty == OnDirty::Reset {
            git.clean_preview(&self.path).map_err(git_error)?
        } else {
            Vec::new()
        };
        let losses = match tree.interrupted() {
            // plasma's own half-done work: nothing of the user's moves until it is finished.
            Some(_) => MoveLosses::default(),
            None => self
                .what_a_move_loses(git, tree, &target, recorded)
                .map_err(git_error)?,
        };
        let head_rev = match (&tree.head, &recorded.commit) {
            (Some(head), Some(commit)) if head == commit => recorded.rev.clone(),
            _ => None,
        };
        Ok(CheckoutObserved {
            path: self.path.clone(),
            found: found.clone(),
            target,
            url_changes,
            reset_deletes,
            head_rev,
            orphans: orphaned_temp_clones(&self.path),
            lost_commits: losses.commits,
            kept_folders: losses.kept_folders,
            overwritten_ignored: losses.overwritten_ignored,
        })
    }

    /// Refuses a clone that is in the middle of a git operation plasma did not
    /// start, or of one a running plasma is doing: only an operation of a plasma
    /// that no longer runs is plasma's to finish.
    fn require_movable(&self, tree: &WorkTree) -> Result<(), ResourceError> {
        let path = self.path.display();
        if let Some(what) = &tree.unfinished {
            return Err(ResourceError::new(format!(
                "{path} is in the middle of {what} that plasma did not start"
            ))
            .help(
                "finish it (e.g. `git rebase --continue`) or abort it (`git rebase --abort`), \
                 then plan again; plasma never moves a clone under a git operation of yours",
            ));
        }
        if let Some(operation) = &tree.operation
            && operation.by.is_running()
        {
            return Err(ResourceError::new(format!(
                "plasma (pid {}) is changing {path} right now ({})",
                operation.by.pid, operation.what
            ))
            .help("wait for that apply to finish, then plan again"));
        }
        if tree.interrupted().is_none()
            && let Some(lock) = tree.index_locks.first()
        {
            return Err(ResourceError::new(format!(
                "{} exists: a git is running in this clone, or one that plasma did not start \
                 stopped half-way",
                lock.display()
            ))
            .help(
                "wait for that git to finish; if no git is running, delete the lock file \
                 and check the clone with `git status`",
            ));
        }
        Ok(())
    }

    /// Commits a move to `target` would leave on no branch (in the clone and in
    /// each submodule a submodule update would move), the folders of dropped
    /// submodules that hold the user's files, and the ignored files the
    /// target tracks. Asks git only when something moves, so a converged plan
    /// spawns nothing for it.
    fn what_a_move_loses(
        &self,
        git: &Git,
        tree: &WorkTree,
        target: &Target,
        recorded: &Recorded,
    ) -> Result<MoveLosses, GitError> {
        let mut losses = MoveLosses::default();
        let lost = &mut losses.commits;
        let kept = &mut losses.kept_folders;
        let moves = tree.head.is_none() || target.commit != tree.head;
        if moves && tree.head.is_some() {
            let also: Vec<&str> = [target.commit.as_deref(), recorded.commit.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            lost.extend(git.commits_off_branches(&self.path, &also)?);
            // A commit known only upstream (`--refresh`) is looked at after apply fetches it.
            let local_target = match &target.commit {
                Some(commit) if git.commit_of(&self.path, commit)?.is_some() => Some(commit),
                _ => None,
            };
            if let Some(commit) = local_target {
                losses.overwritten_ignored = git.ignored_files_target_tracks(&self.path, commit)?;
            }
            if self.submodules
                && let Some(commit) = local_target
            {
                for sub in git.dropped_submodules(&self.path, &tree.submodules, commit)? {
                    let dir = self.path.join(&sub);
                    if crate::git::has_own_git(&dir) {
                        let held = git.at_risk_in_folder(&dir)?;
                        if !held.is_empty() {
                            kept.push(format!("{sub} (holds {})", held.join(", ")));
                        }
                    }
                }
            }
        }
        if self.submodules {
            for sub in &tree.submodules {
                if let SubmoduleState::WrongCommit {
                    expected,
                    actual: Some(_),
                } = &sub.state
                {
                    let dir = self.path.join(&sub.path);
                    for commit in git.commits_off_branches(&dir, &[expected.as_str()])? {
                        lost.push(format!("{}: {commit}", sub.path));
                    }
                }
            }
        }
        Ok(losses)
    }

    /// What `rev` names on the remote (one `git ls-remote`, for `--refresh`);
    /// `None` for a commit hash, which only a fetch can find.
    fn upstream_target(&self, git: &Git) -> Result<Option<Target>, ResourceError> {
        let resolved = git
            .resolve_remote(&self.git_url(), &self.rev.value)
            .map_err(git_error)?;
        Ok(Some(match resolved {
            Some(r) => Target {
                rev: r.rev,
                kind: Some(r.kind),
                commit: Some(r.commit),
                source: TargetSource::Upstream,
            },
            None => return Ok(None),
        }))
    }

    /// What `rev` names from the clone's refs and the state alone.
    fn local_target(
        &self,
        git: &Git,
        tree: &WorkTree,
        recorded: &Recorded,
        same_pin: bool,
    ) -> Result<Target, ResourceError> {
        let rev = &self.rev.value;
        let recorded_commit = recorded.commit.as_deref().filter(|_| same_pin);
        // Converged on the rev the last apply resolved: nothing to look up.
        if let (Some(head), Some(commit)) = (&tree.head, recorded_commit)
            && head == commit
        {
            return Ok(Target {
                rev: rev.clone(),
                kind: recorded.kind,
                commit: Some(commit.to_string()),
                source: TargetSource::Recorded,
            });
        }
        match git.resolve_local(&self.path, rev) {
            Ok(resolved) => {
                // A branch stays at the commit recorded at the last apply, unless
                // the clone sits at origin/<branch> as last fetched.
                if resolved.kind == RevKind::Branch
                    && tree.head.as_deref() != Some(resolved.commit.as_str())
                    && let Some(commit) = recorded_commit
                {
                    return Ok(Target {
                        rev: rev.clone(),
                        kind: Some(RevKind::Branch),
                        commit: Some(commit.to_string()),
                        source: TargetSource::Recorded,
                    });
                }
                Ok(Target {
                    rev: rev.clone(),
                    kind: Some(resolved.kind),
                    commit: Some(resolved.commit),
                    source: TargetSource::LocalRefs,
                })
            }
            // Not in the clone yet: apply fetches it (and says so if it does not exist).
            Err(GitError::RevNotFound { .. }) => Ok(Target {
                rev: rev.clone(),
                kind: None,
                commit: None,
                source: TargetSource::NotFetched,
            }),
            Err(e) => Err(git_error(e)),
        }
    }

    /// Desired against observed: clone, url, rev, local changes, submodules.
    pub fn diff(&self, observed: &CheckoutObserved) -> Diff {
        let url = self.url.redacted();
        let rev = &self.rev.value;
        let target_text = |t: &Target| match &t.commit {
            Some(c) if t.source == TargetSource::Locked => {
                format!("{rev} at locked {}", short(c))
            }
            Some(c) => format!("{rev} ({})", short(c)),
            None => format!("{rev} (not in the clone yet; apply fetches it)"),
        };
        let tree = match &observed.found {
            RepoObservation::Absent | RepoObservation::EmptyDirectory => {
                let mut diff = Diff::new(Action::Create, format!("clone {url} at {rev}"))
                    .attribute(
                        "clone",
                        None,
                        Some(match &observed.target.commit {
                            Some(c) if observed.target.source == TargetSource::Locked => {
                                format!("{url} at {rev} held at locked {}", short(c))
                            }
                            Some(c) => format!("{url} at {rev} ({})", short(c)),
                            None => format!("{url} at {rev}"),
                        }),
                    )
                    .attribute("path", None, Some(self.path.display().to_string()));
                if let Some(depth) = self.depth {
                    diff = diff.attribute("depth", None, Some(depth.to_string()));
                }
                if self.submodules {
                    diff =
                        diff.attribute("submodules", None, Some("initialised recursively".into()));
                }
                return with_orphans(diff, observed);
            }
            RepoObservation::Repository(tree) => tree,
            // Observation reports this as an error; a plan never holds it.
            RepoObservation::NotARepository { found } => {
                return Diff::new(Action::Update, format!("the path holds {found}"));
            }
        };

        let mut diff = Diff::new(Action::Update, "");
        let mut reasons: Vec<String> = Vec::new();
        if observed.url_changes {
            reasons.push("the remote URL changes".into());
            diff = diff.attribute(
                "url",
                Some(
                    tree.origin
                        .as_ref()
                        .map_or("no origin".into(), RemoteUrl::redacted),
                ),
                Some(url.clone()),
            );
        }
        let head = tree.head.as_deref();
        let moves = observed.target.commit.as_deref() != head || head.is_none();
        if moves {
            let old = match (head, &observed.head_rev) {
                (Some(h), Some(r)) => format!("{r} ({})", short(h)),
                (Some(h), None) => short(h).to_string(),
                (None, _) => "no commit".into(),
            };
            reasons.push(match observed.target.source {
                TargetSource::Upstream => format!("{rev} moved upstream"),
                TargetSource::Locked => "the clone is not at the commit plasma.lock holds".into(),
                _ => format!("the clone is not at {rev}"),
            });
            diff = diff.attribute("rev", Some(old), Some(target_text(&observed.target)));
        }
        let path = self.path.display();
        if let Some(operation) = tree.interrupted() {
            reasons.push(format!(
                "an interrupted apply left the clone half-way through {}",
                operation.what
            ));
            diff = diff.attribute(
                "repair",
                Some(format!("{} interrupted", operation.what)),
                Some(
                    "finished by apply (the lock files and half checkout are plasma's own)".into(),
                ),
            );
        } else if tree.changes.total > 0 {
            match self.on_dirty {
                OnDirty::Fail => {
                    reasons.push(format!("local changes: {}", tree.changes.summary()));
                    for change in &tree.changes.listed {
                        diff = diff.attribute(
                            &format!("local change {} {}", change.change.code(), change.path),
                            None,
                            None,
                        );
                    }
                    diff.warnings.push(format!(
                        "apply refuses to touch {path} while it has local changes (on-dirty \
                         \"fail\"): commit or stash them, or set on-dirty \"keep\" or \"reset\""
                    ));
                }
                OnDirty::Reset => {
                    reasons.push("local changes will be discarded".into());
                    diff.warnings.push(format!(
                        "on-dirty \"reset\" discards local changes in {path}: {}",
                        tree.changes.summary()
                    ));
                    if !observed.reset_deletes.is_empty() {
                        diff.warnings.push(format!(
                            "and deletes these untracked files and folders: {}",
                            observed.reset_deletes.join(", ")
                        ));
                    }
                }
                OnDirty::Keep if moves => diff.warnings.push(format!(
                    "local changes are kept ({}); the checkout fails if they conflict",
                    tree.changes.summary()
                )),
                OnDirty::Keep => {}
            }
        }
        if !observed.lost_commits.is_empty() {
            let commits = observed.lost_commits.join("; ");
            match self.on_dirty {
                OnDirty::Reset => diff.warnings.push(format!(
                    "on-dirty \"reset\" leaves these commits on no branch (reachable only from \
                     the reflog): {commits}"
                )),
                _ => {
                    reasons.push("commits on no branch would be left behind".into());
                    diff.warnings.push(format!(
                        "apply refuses to move {path}: these commits are on no branch and would \
                         be left behind: {commits}; keep them with `git branch NAME COMMIT` \
                         (in the submodule for `sub: …`), or set on-dirty \"reset\""
                    ));
                }
            }
        }
        if !observed.overwritten_ignored.is_empty() {
            let files = shown_paths(&observed.overwritten_ignored);
            match self.on_dirty {
                OnDirty::Reset => diff.warnings.push(format!(
                    "on-dirty \"reset\" lets the checkout replace these ignored files, which \
                     {rev} tracks: {files}"
                )),
                _ => {
                    reasons.push("ignored files would be overwritten".into());
                    diff.warnings.push(format!(
                        "apply refuses to move {path}: {rev} tracks these files, which git \
                         ignores here and would overwrite without asking: {files}; move them \
                         aside, or set on-dirty \"reset\""
                    ));
                }
            }
        }
        if !observed.kept_folders.is_empty() {
            diff.warnings.push(format!(
                "{rev} no longer has these submodules; their folders are kept, not deleted, \
                 because they hold files git does not have: {}",
                observed.kept_folders.join("; ")
            ));
        }
        if self.submodules {
            if moves {
                if !tree.submodules.is_empty() {
                    diff = diff.attribute(
                        "submodules",
                        None,
                        Some(format!("updated to the commits {rev} records")),
                    );
                }
            } else {
                for sub in tree.submodules.iter().filter(|s| !s.state.is_converged()) {
                    let state = submodule_state_text(&sub.state);
                    reasons.push(format!("submodule {} is {state}", sub.path));
                    diff = diff.attribute(
                        &format!("submodule {}", sub.path),
                        Some(state),
                        Some(short(&sub.recorded).to_string()),
                    );
                }
            }
        }
        if reasons.is_empty() && observed.orphans.is_empty() {
            return Diff::no_op();
        }
        diff.reason = reasons.join(", ");
        with_orphans(diff, observed)
    }

    /// Makes the clone match: clone, or point origin, reset, fetch, check out,
    /// update submodules, each step only when the observation says it is needed.
    /// What was done goes to `log`.
    pub async fn apply(
        &self,
        observed: &CheckoutObserved,
        log: PathBuf,
        bars: &indicatif::MultiProgress,
        label: String,
    ) -> Result<(), ResourceError> {
        let this = self.clone();
        let observed = observed.clone();
        let spinner = bars.add(indicatif::ProgressBar::new_spinner());
        spinner.set_message(format!("{label}: git"));
        spinner.enable_steady_tick(Duration::from_millis(120));
        let result = tokio::task::spawn_blocking(move || {
            let log = LogFile::open(&log);
            let result = this.apply_blocking(&this.git(), &observed, &log);
            if let Err(e) = &result {
                log.line(&format!("failed: {}", e.message));
            }
            result
        })
        .await
        .map_err(|e| ResourceError::new(format!("apply stopped: {e}")))?;
        spinner.finish_and_clear();
        result
    }

    fn apply_blocking(
        &self,
        git: &Git,
        observed: &CheckoutObserved,
        log: &LogFile,
    ) -> Result<(), ResourceError> {
        let url = &self.git_url();
        let rev = &self.rev.value;
        let path = &self.path;
        // Observed again here: the plan may be old, and nothing of the user's
        // may be lost to a stale picture.
        for orphan in orphaned_temp_clones(path) {
            log.line(&format!(
                "removing {}, left by an interrupted clone",
                orphan.display()
            ));
            std::fs::remove_dir_all(&orphan)
                .map_err(|e| ResourceError::io("cannot remove", &orphan, e))?;
        }
        let found = git.observe(path).map_err(git_error)?;
        let mut tree = match &found {
            RepoObservation::Absent | RepoObservation::EmptyDirectory => {
                log.line(&format!(
                    "git clone {} at {rev} into {}",
                    self.url.redacted(),
                    path.display()
                ));
                let request = CloneRequest {
                    rev: rev.clone(),
                    depth: self.depth,
                    submodules: self.submodules,
                };
                let resolved = git.clone(url, path, &request).map_err(git_error)?;
                log.line(&format!("checked out {}", resolved.commit));
                if let Some(locked) = self.locked.as_ref().filter(|c| **c != resolved.commit) {
                    log.line(&format!(
                        "{rev} moved since the lock: checking out locked {locked}"
                    ));
                    self.check_out_locked(git, path, locked)?;
                }
                return Ok(());
            }
            RepoObservation::NotARepository { .. } => {
                return Err(git_error(found.require_repository(path).unwrap_err()));
            }
            RepoObservation::Repository(tree) => tree.clone(),
        };
        self.require_movable(&tree)?;
        if let Some(operation) = tree.interrupted() {
            log.line(&format!(
                "finishing {}, which an interrupted apply (pid {}) left half done",
                operation.what, operation.by.pid
            ));
            for step in git.finish_interrupted(path, operation).map_err(git_error)? {
                log.line(&step);
            }
            tree = git
                .observe(path)
                .map_err(git_error)?
                .require_repository(path)
                .map_err(git_error)?
                .clone();
            self.require_movable(&tree)?;
        }
        if observed.url_changes {
            log.line(&format!(
                "git remote set-url origin {}",
                self.url.redacted()
            ));
            git.set_remote_url(path, url).map_err(git_error)?;
        }
        let dirty = tree.changes.total > 0;
        if dirty && self.on_dirty == OnDirty::Fail {
            return Err(git_error(tree.require_clean(path).unwrap_err()));
        }
        let target = &observed.target;
        let commit = match (&target.commit, target.source) {
            // Looked upstream (--refresh) or a new remote: fetch, then take what it names now.
            (_, TargetSource::Upstream) | (_, TargetSource::NotFetched) => {
                log.line(&format!("git fetch {rev}"));
                let _recorded = git
                    .record_operation(path, &self.operation(format!("fetch {rev}"), None, false))
                    .map_err(git_error)?;
                git.resolve_fetching(path, rev, self.depth, true)
                    .map_err(git_error)?
                    .commit
            }
            (Some(commit), TargetSource::Locked) => {
                if git.commit_of(path, commit).map_err(git_error)?.is_none() {
                    log.line(&format!("git fetch {commit} (locked)"));
                    git.resolve_fetching(path, commit, self.depth, true)
                        .map_err(|e| self.locked_fetch_error(e, commit))?;
                }
                commit.clone()
            }
            (Some(commit), _) => commit.clone(),
            (None, _) => unreachable!("a target without a commit is NotFetched"),
        };
        let moved = tree.head.as_deref() != Some(commit.as_str());
        let submodules_off =
            self.submodules && tree.submodules.iter().any(|s| !s.state.is_converged());
        if moved || submodules_off {
            let resolved = Target {
                commit: Some(commit.clone()),
                ..target.clone()
            };
            let recorded = Recorded {
                rev: None,
                kind: None,
                commit: head_commit_recorded(observed),
                url: None,
            };
            let losses = self
                .what_a_move_loses(git, &tree, &resolved, &recorded)
                .map_err(git_error)?;
            if !losses.overwritten_ignored.is_empty() {
                let files = shown_paths(&losses.overwritten_ignored);
                if self.on_dirty != OnDirty::Reset {
                    return Err(ResourceError::new(format!(
                        "moving {} to {rev} would overwrite files git ignores here but {rev} \
                         tracks: {files}",
                        path.display()
                    ))
                    .help(
                        "move them aside (git would replace them without asking), then apply \
                         again; or set on-dirty \"reset\" to let the checkout replace them",
                    ));
                }
                log.line(&format!(
                    "replacing ignored files that {rev} tracks (on-dirty \"reset\"): {files}"
                ));
            }
            let lost = losses.commits;
            if !lost.is_empty() {
                if self.on_dirty != OnDirty::Reset {
                    return Err(ResourceError::new(format!(
                        "moving {} would leave these commits on no branch: {}",
                        path.display(),
                        lost.join("; ")
                    ))
                    .help(
                        "keep them on a branch (`git branch NAME COMMIT`, inside the submodule \
                         for `sub: …`), then apply again; or set on-dirty \"reset\" to leave \
                         them (reachable only from the reflog)",
                    ));
                }
                log.line(&format!(
                    "leaving these commits on no branch (on-dirty \"reset\"; see `git reflog`): {}",
                    lost.join("; ")
                ));
            }
        }
        if dirty && self.on_dirty == OnDirty::Reset {
            log.line(&format!(
                "discarding local changes: {}",
                tree.changes.summary()
            ));
            let _recorded = git
                .record_operation(path, &self.operation("reset".into(), None, false))
                .map_err(git_error)?;
            git.reset_hard_and_clean(path).map_err(git_error)?;
        }
        // Under `keep`, the user's files are copied aside first, so that a
        // killed checkout can be finished without losing them.
        let kept: Vec<String> = match (self.on_dirty, dirty) {
            (OnDirty::Keep, true) => git
                .local_changes_all(path)
                .map_err(git_error)?
                .0
                .into_iter()
                .filter(|c| !c.path.ends_with('/'))
                .map(|c| c.path)
                .collect(),
            _ => Vec::new(),
        };
        let force = self.on_dirty == OnDirty::Reset;
        if moved {
            log.line(&format!("git checkout {commit}"));
            let mut operation = self.operation(
                format!("checkout {}", short(&commit)),
                Some(&commit),
                self.submodules,
            );
            operation.kept = kept.clone();
            let _recorded = git.record_operation(path, &operation).map_err(git_error)?;
            git.checkout(path, &commit, force).map_err(git_error)?;
            if self.submodules && !tree.submodules.is_empty() {
                let (removed, left) = git
                    .remove_dropped_submodules(path, &tree.submodules)
                    .map_err(git_error)?;
                if !removed.is_empty() {
                    log.line(&format!(
                        "removed the folders of submodules {rev} does not have: {}",
                        removed.join(", ")
                    ));
                }
                if !left.is_empty() {
                    log.line(&format!(
                        "kept the folders of submodules {rev} does not have, as they hold files \
                         git does not have: {}",
                        left.join("; ")
                    ));
                }
            }
            if self.submodules {
                log.line("git submodule update --init --recursive");
                git.submodules_update(path, force).map_err(git_error)?;
            }
        } else if submodules_off {
            log.line("git submodule update --init --recursive");
            let mut operation = self.operation("submodule update".into(), None, true);
            operation.kept = kept;
            let _recorded = git.record_operation(path, &operation).map_err(git_error)?;
            git.submodules_update(path, force).map_err(git_error)?;
        }
        Ok(())
    }

    /// After a fresh clone at a rev that moved since the lock: fetch the
    /// locked commit if the clone lacks it, check it out, update submodules.
    fn check_out_locked(&self, git: &Git, path: &Path, commit: &str) -> Result<(), ResourceError> {
        if git.commit_of(path, commit).map_err(git_error)?.is_none() {
            git.resolve_fetching(path, commit, self.depth, true)
                .map_err(|e| self.locked_fetch_error(e, commit))?;
        }
        let _recorded = git
            .record_operation(
                path,
                &self.operation(
                    format!("checkout {} (locked)", short(commit)),
                    Some(commit),
                    self.submodules,
                ),
            )
            .map_err(git_error)?;
        git.checkout(path, commit, false).map_err(git_error)?;
        if self.submodules {
            git.submodules_update(path, false).map_err(git_error)?;
        }
        Ok(())
    }

    /// A failed fetch of the commit plasma.lock holds this checkout at: when
    /// the remote no longer has it, the lock is what to change, not `rev`.
    fn locked_fetch_error(&self, e: GitError, commit: &str) -> ResourceError {
        match e {
            GitError::RevNotFound { .. } => ResourceError::new(format!(
                "{} no longer has {commit}, the commit plasma.lock holds `{}` at",
                self.url.redacted(),
                self.rev.value
            ))
            .help(
                "the upstream dropped it (a force-push, or a deleted branch or tag); \
                 `plasma lock --upgrade ADDRESS` locks what the rev names now",
            ),
            other => git_error(other),
        }
    }

    /// The record of an operation of this plasma process on the clone.
    fn operation(&self, what: String, to: Option<&str>, submodules: bool) -> Operation {
        Operation {
            by: crate::child::ProcessId::current(),
            what,
            to: to.map(str::to_string),
            submodules,
            kept: Vec::new(),
        }
    }

    /// The resolved commit, the rev and its kind, the origin and each submodule's commit.
    pub fn outputs(&self, observed: &CheckoutObserved) -> Outputs {
        let mut out = Outputs::new();
        let RepoObservation::Repository(tree) = &observed.found else {
            return out;
        };
        if let Some(head) = &tree.head {
            out.insert("commit".into(), json!(head));
        }
        out.insert("rev".into(), json!(self.rev.value));
        if let Some(kind) = observed.target.kind {
            out.insert("rev_kind".into(), json!(kind));
        }
        if let Some(origin) = &tree.origin {
            out.insert("url".into(), json!(origin.redacted()));
        }
        if tree.shallow {
            out.insert("shallow".into(), json!(true));
        }
        if !tree.submodules.is_empty() {
            let subs: serde_json::Map<String, Value> = tree
                .submodules
                .iter()
                .map(|s| {
                    let at = match &s.state {
                        SubmoduleState::AtCommit { commit } => json!(commit),
                        other => json!(submodule_state_text(other)),
                    };
                    (s.path.clone(), at)
                })
                .collect();
            out.insert("submodules".into(), Value::Object(subs));
        }
        out
    }

    /// `submodules #false` leaves submodule folders empty: the first user's
    /// kohya_ss failed at training time because of exactly that.
    pub fn lint(&self, _cx: &LintContext<'_>) -> Vec<Lint> {
        let Some(span) = self.submodules_span else {
            return Vec::new();
        };
        vec![lint::SUBMODULES_NOT_INITIALISED.at(
            span,
            format!(
                "{} will be cloned without its submodules",
                redact_url(self.url.expose())
            ),
            "submodules are not initialised",
            "remove `submodules #false` (kohya_ss needs its sd-scripts submodule), or \
             `allow submodules-not-initialised` if the repository has none you need",
        )]
    }
}

/// `repo NAME`: a checkout at its own `path`.
#[derive(Debug)]
pub struct Repo {
    pub checkout: Checkout,
}

impl Repo {
    pub fn parse(r: &NodeReader<'_, '_>) -> Option<Self> {
        let path = r.path("path").map(|p| p.value);
        Some(Repo {
            checkout: Checkout::parse(r, path)?,
        })
    }
}

#[async_trait]
impl Kind for Repo {
    type Observed = CheckoutObserved;
    const KIND: &'static str = "repo";

    fn desired(&self) -> Value {
        self.checkout.desired()
    }

    fn owned_paths(&self) -> Vec<PathBuf> {
        vec![self.checkout.path.clone()]
    }

    async fn observe(&self, cx: &ObserveContext<'_>) -> Result<CheckoutObserved, ResourceError> {
        self.checkout.observe(cx.prior, cx.refresh).await
    }

    fn diff(&self, observed: &CheckoutObserved, _prior: Option<&ResourceState>) -> Diff {
        self.checkout.diff(observed)
    }

    async fn apply(
        &self,
        observed: &CheckoutObserved,
        cx: &ApplyContext<'_>,
    ) -> Result<Outputs, ResourceError> {
        self.checkout
            .apply(observed, cx.log_file(), cx.bars, cx.address.to_string())
            .await?;
        Ok(Outputs::new())
    }

    fn outputs(&self, observed: &CheckoutObserved) -> Outputs {
        self.checkout.outputs(observed)
    }

    fn lint(&self, cx: &LintContext<'_>) -> Vec<Lint> {
        self.checkout.lint(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_one_repository_compare_equal_without_trailing_slash_or_dot_git() {
        assert!(same_repository(
            "https://github.com/comfyanonymous/ComfyUI",
            "https://github.com/comfyanonymous/ComfyUI.git/"
        ));
        assert!(!same_repository(
            "https://github.com/comfyanonymous/ComfyUI.git",
            "https://github.com/fork/ComfyUI.git"
        ));
    }

    #[test]
    fn relative_local_urls_become_absolute_without_dot_dot() {
        assert_eq!(
            local_repository_path(std::path::Path::new("/srv/specs/../mirrors/./ComfyUI")),
            "/srv/mirrors/ComfyUI"
        );
        assert!(same_repository("/srv/a/../m/x", "/srv/m/x.git"));
        assert!(same_repository(
            "https://u:t@example.com/x.git",
            "https://example.com/x"
        ));
    }

    #[test]
    fn only_paths_and_file_urls_are_local() {
        assert!(is_local_url("file:///srv/git/x.git"));
        assert!(is_local_url("/srv/git/x"));
        assert!(!is_local_url("https://github.com/x/y.git"));
        assert!(!is_local_url("git@github.com:x/y.git"));
    }

    #[test]
    fn git_advice_becomes_the_help_line() {
        let e = git_error(GitError::Unreachable {
            url: "https://example.com/x.git".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(
            e.message,
            "cannot reach the repository https://example.com/x.git: connection refused"
        );
        assert!(e.help.unwrap().starts_with("Check that the URL is right"));
        let e = git_error(GitError::RevNotFound {
            rev: "v9".into(),
            url: "u".into(),
            nearest: vec!["v1".into()],
        });
        assert!(e.help.unwrap().contains("set `rev`"));
    }
}
