//! The git layer against real repositories built by `support/gitfix.rs`.

use crate::support::gitfix;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use gitfix::{GitFixture, commit_file, git};
use plasma::git::{
    ChangeKind, CloneRequest, Git, GitError, RepoObservation, RevKind, SubmoduleState, WorkTree,
};

fn tool() -> Git {
    Git::new().allow_local_submodules(true)
}

fn request(rev: &str) -> CloneRequest {
    CloneRequest {
        rev: rev.into(),
        depth: None,
        submodules: true,
    }
}

fn observe_tree(path: &Path) -> WorkTree {
    match tool().observe(path).unwrap() {
        RepoObservation::Repository(tree) => tree,
        other => panic!("expected a repository at {}, got {other:?}", path.display()),
    }
}

fn submodule_states(tree: &WorkTree) -> Vec<(String, SubmoduleState)> {
    tree.submodules
        .iter()
        .map(|s| (s.path.clone(), s.state.clone()))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn clone_at_a_tag_checks_out_detached_with_nested_submodules() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let resolved = tool()
        .clone(&fx.file_url(), &path, &request("v0.3.27"))
        .unwrap();
    assert_eq!(
        (resolved.kind, resolved.commit.as_str()),
        (RevKind::Tag, fx.c2.as_str())
    );

    let tree = observe_tree(&path);
    assert_eq!(tree.head.as_deref(), Some(fx.c2.as_str()));
    assert_eq!(tree.branch, None);
    assert!(tree.origin.as_ref().unwrap().matches(&fx.file_url()));
    assert_eq!(tree.changes.total, 0, "{:?}", tree.changes);
    assert!(!tree.shallow);
    assert_eq!(
        submodule_states(&tree),
        vec![
            (
                "sd-scripts".into(),
                SubmoduleState::AtCommit {
                    commit: fx.s1.clone()
                }
            ),
            (
                "sd-scripts/libs/nested".into(),
                SubmoduleState::AtCommit {
                    commit: fx.n1.clone()
                }
            ),
        ]
    );
    assert!(tree.is_at(&fx.c2));
    // Nothing but the clone is left in the parent folder.
    assert_eq!(entries(path.parent().unwrap()), ["kohya_ss"]);
}

#[test]
fn annotated_tag_resolves_to_its_commit_and_plain_paths_work_as_urls() {
    let fx = GitFixture::new();
    let path = fx.scratch("comfy");
    let resolved = tool()
        .clone(&fx.path_url(), &path, &request("v0.3.26"))
        .unwrap();
    assert_eq!(
        (resolved.kind, resolved.commit.as_str()),
        (RevKind::Tag, fx.c1.as_str())
    );
    let tree = observe_tree(&path);
    assert_eq!(tree.head.as_deref(), Some(fx.c1.as_str()));
    assert!(tree.origin.unwrap().matches(&fx.path_url()));
    assert!(tree.submodules.is_empty(), "v0.3.26 has no submodules");
}

#[test]
fn moving_to_another_tag_reports_then_fixes_submodules() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let git_tool = tool();
    git_tool
        .clone(&fx.file_url(), &path, &request("v0.3.26"))
        .unwrap();

    let target = git_tool.resolve_local(&path, "v0.3.27").unwrap();
    assert_eq!(target.commit, fx.c2);
    git_tool.checkout(&path, &target.commit, false).unwrap();
    let tree = observe_tree(&path);
    assert_eq!(tree.head.as_deref(), Some(fx.c2.as_str()));
    assert_eq!(
        submodule_states(&tree),
        vec![("sd-scripts".into(), SubmoduleState::Uninitialised)]
    );
    assert!(!tree.is_at(&fx.c2));

    git_tool.submodules_update(&path, true).unwrap();
    assert!(observe_tree(&path).is_at(&fx.c2));

    // main records sd-scripts at S2: after checkout alone the submodule is behind.
    git_tool.checkout(&path, &fx.c3, false).unwrap();
    let tree = observe_tree(&path);
    assert_eq!(
        tree.submodules[0].state,
        SubmoduleState::WrongCommit {
            expected: fx.s2.clone(),
            actual: Some(fx.s1.clone())
        }
    );
    assert_eq!(
        tree.changes.total, 0,
        "a submodule at another commit is not a local change"
    );
    git_tool.submodules_update(&path, true).unwrap();
    assert!(observe_tree(&path).is_at(&fx.c3));
}

#[test]
fn a_commit_pin_full_or_abbreviated_resolves_as_a_commit() {
    let fx = GitFixture::new();
    let path = fx.scratch("pinned");
    let resolved = tool()
        .clone(&fx.file_url(), &path, &request(&fx.c1))
        .unwrap();
    assert_eq!(
        (resolved.kind, resolved.commit.as_str()),
        (RevKind::Commit, fx.c1.as_str())
    );
    let short = &fx.c3[..7];
    let resolved = tool().resolve_local(&path, short).unwrap();
    assert_eq!(
        (resolved.kind, resolved.commit.as_str()),
        (RevKind::Commit, fx.c3.as_str())
    );
}

#[test]
fn a_branch_that_moves_upstream_changes_nothing_until_refresh() {
    let fx = GitFixture::new();
    let path = fx.scratch("dev");
    let git_tool = tool();
    let resolved = git_tool
        .clone(&fx.file_url(), &path, &request("develop"))
        .unwrap();
    assert_eq!(
        (resolved.kind, resolved.commit.as_str()),
        (RevKind::Branch, fx.d1.as_str())
    );

    let moved = fx.advance_develop("print('dev 2')\n");
    assert_eq!(observe_tree(&path).head.as_deref(), Some(fx.d1.as_str()));
    assert_eq!(
        git_tool.resolve_local(&path, "develop").unwrap().commit,
        fx.d1
    );
    assert_eq!(
        git_tool
            .resolve_fetching(&path, "develop", None, false)
            .unwrap()
            .commit,
        fx.d1
    );

    let refreshed = git_tool
        .resolve_fetching(&path, "develop", None, true)
        .unwrap();
    assert_eq!(refreshed.commit, moved);
    git_tool.checkout(&path, &moved, false).unwrap();
    assert_eq!(observe_tree(&path).head.as_deref(), Some(moved.as_str()));
}

#[test]
fn a_shallow_clone_has_one_commit_and_resolves_its_tag_locally_afterwards() {
    let fx = GitFixture::new();
    let path = fx.scratch("shallow");
    let git_tool = tool();
    let shallow = CloneRequest {
        rev: "v0.3.26".into(),
        depth: Some(1),
        submodules: true,
    };
    // A plain path, which git would otherwise copy whole ignoring --depth.
    let resolved = git_tool.clone(&fx.path_url(), &path, &shallow).unwrap();
    assert_eq!(resolved.commit, fx.c1);
    let tree = observe_tree(&path);
    assert!(tree.shallow);
    assert_eq!(tree.head.as_deref(), Some(fx.c1.as_str()));
    assert_eq!(git(&path, &["rev-list", "--count", "HEAD"]), "1");
    assert_eq!(
        git_tool.resolve_local(&path, "v0.3.26").unwrap().kind,
        RevKind::Tag
    );

    // Moving a shallow clone to a commit pin fetches just that commit.
    let moved = git_tool
        .resolve_fetching(&path, &fx.c3, Some(1), false)
        .unwrap();
    assert_eq!(moved.kind, RevKind::Commit);
    git_tool.checkout(&path, &moved.commit, false).unwrap();
    git_tool.submodules_update(&path, true).unwrap();
    assert!(observe_tree(&path).is_at(&fx.c3));
    assert!(observe_tree(&path).shallow);
}

#[test]
fn hand_edits_are_listed_and_reset_discards_them() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let git_tool = tool();
    git_tool
        .clone(&fx.file_url(), &path, &request("v0.3.27"))
        .unwrap();
    fs::write(path.join("main.py"), "print('patched by hand')\n").unwrap();
    fs::write(path.join("notes.txt"), "mine\n").unwrap();
    fs::write(
        path.join("sd-scripts/train_network.py"),
        "# edited inside the submodule\n",
    )
    .unwrap();

    let tree = observe_tree(&path);
    let changes: Vec<(&str, ChangeKind)> = tree
        .changes
        .listed
        .iter()
        .map(|c| (c.path.as_str(), c.change))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("main.py", ChangeKind::Modified),
            // Inside a submodule, file by file: what a move would lose.
            ("sd-scripts/train_network.py", ChangeKind::Modified),
            ("notes.txt", ChangeKind::Untracked),
        ]
    );
    let message = tree.require_clean(&path).unwrap_err().to_string();
    assert!(
        message
            .contains("has local changes: M main.py, M sd-scripts/train_network.py, ?? notes.txt"),
        "{message}"
    );
    for choice in [
        "commit or stash",
        "on-dirty \"keep\"",
        "on-dirty \"reset\"",
        "destructive",
    ] {
        assert!(
            message.contains(choice),
            "{message} should mention {choice}"
        );
    }

    git_tool.reset_hard_and_clean(&path).unwrap();
    let tree = observe_tree(&path);
    assert_eq!(tree.changes.total, 0, "{:?}", tree.changes);
    assert!(tree.require_clean(&path).is_ok());
    assert!(tree.is_at(&fx.c2));
}

#[test]
fn many_changes_are_counted_but_only_the_first_are_listed() {
    let fx = GitFixture::new();
    let path = fx.scratch("many");
    tool()
        .clone(&fx.file_url(), &path, &request("v0.3.26"))
        .unwrap();
    for i in 0..25 {
        fs::write(path.join(format!("extra{i:02}.txt")), "x").unwrap();
    }
    let tree = observe_tree(&path);
    assert_eq!(tree.changes.total, 25);
    assert_eq!(tree.changes.listed.len(), plasma::git::MAX_LISTED_CHANGES);
    assert!(
        tree.changes.summary().ends_with("(and 15 more)"),
        "{}",
        tree.changes.summary()
    );
}

#[test]
fn checkout_without_force_refuses_to_overwrite_local_changes() {
    let fx = GitFixture::new();
    let path = fx.scratch("blocked");
    let git_tool = tool();
    git_tool
        .clone(&fx.file_url(), &path, &request("v0.3.26"))
        .unwrap();
    fs::write(path.join("main.py"), "print('hand edit')\n").unwrap();
    let message = git_tool
        .checkout(&path, &fx.c2, false)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("local changes to main.py would be overwritten"),
        "{message}"
    );
    assert_eq!(
        fs::read_to_string(path.join("main.py")).unwrap(),
        "print('hand edit')\n"
    );
    git_tool.checkout(&path, &fx.c2, true).unwrap();
    assert_eq!(
        fs::read_to_string(path.join("main.py")).unwrap(),
        "print('v0.3.27')\n"
    );
}

#[test]
fn a_wrong_remote_url_is_observed_and_can_be_corrected() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let git_tool = tool();
    git_tool
        .clone(&fx.file_url(), &path, &request("v0.3.26"))
        .unwrap();
    git(
        &path,
        &[
            "remote",
            "set-url",
            "origin",
            "https://example.invalid/fork.git",
        ],
    );

    let tree = observe_tree(&path);
    assert_eq!(
        tree.origin.as_ref().unwrap().expose(),
        "https://example.invalid/fork.git"
    );
    let message = tree
        .require_origin(&path, &fx.file_url())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&format!(
            "is a clone of https://example.invalid/fork.git, not of {}",
            fx.file_url()
        )),
        "{message}"
    );

    git_tool.set_remote_url(&path, &fx.file_url()).unwrap();
    assert!(
        observe_tree(&path)
            .require_origin(&path, &fx.file_url())
            .is_ok()
    );
}

#[test]
fn the_seeds_empty_submodule_folder_is_reported_and_fixed() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    // What the user did: a plain clone, which leaves sd-scripts/ empty.
    git(
        path.parent().unwrap(),
        &["clone", "-q", &fx.file_url(), "kohya_ss"],
    );
    assert!(path.join("sd-scripts").is_dir());
    assert_eq!(entries(&path.join("sd-scripts")), Vec::<String>::new());

    let tree = observe_tree(&path);
    assert_eq!(tree.changes.total, 0, "git status calls this tree clean");
    assert_eq!(tree.branch.as_deref(), Some("main"));
    assert_eq!(
        submodule_states(&tree),
        vec![("sd-scripts".into(), SubmoduleState::Uninitialised)]
    );

    tool().submodules_update(&path, true).unwrap();
    let tree = observe_tree(&path);
    assert!(tree.is_at(&fx.c3), "{:?}", tree.submodules);
    assert!(path.join("sd-scripts/train_network.py").is_file());
    assert!(path.join("sd-scripts/libs/nested/nested.txt").is_file());
}

#[test]
fn an_initialised_submodule_whose_folder_was_emptied_is_missing_and_restored() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let git_tool = tool();
    git_tool
        .clone(&fx.file_url(), &path, &request("v0.3.27"))
        .unwrap();
    fs::remove_dir_all(path.join("sd-scripts")).unwrap();
    fs::create_dir(path.join("sd-scripts")).unwrap();

    let tree = observe_tree(&path);
    assert_eq!(
        submodule_states(&tree),
        vec![("sd-scripts".into(), SubmoduleState::Missing)]
    );
    git_tool.submodules_update(&path, true).unwrap();
    assert!(observe_tree(&path).is_at(&fx.c2));
}

#[test]
fn a_submodule_folder_with_files_but_no_checkout_is_reported() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    git(
        path.parent().unwrap(),
        &["clone", "-q", &fx.file_url(), "kohya_ss"],
    );
    fs::write(path.join("sd-scripts/train_network.py"), "copied by hand\n").unwrap();
    let tree = observe_tree(&path);
    assert_eq!(
        tree.submodules[0].state,
        SubmoduleState::NotCheckedOut { entries: 1 }
    );
}

#[test]
fn a_nested_submodule_at_the_wrong_commit_is_reported() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let git_tool = tool();
    git_tool
        .clone(&fx.file_url(), &path, &request("v0.3.27"))
        .unwrap();
    let n2 = commit_file(&fx.nested, "nested.txt", "nested v2\n", "nested: second");
    let nested_checkout = path.join("sd-scripts/libs/nested");
    git(&nested_checkout, &["fetch", "-q", "origin"]);
    git(&nested_checkout, &["checkout", "-q", &n2]);

    let tree = observe_tree(&path);
    assert_eq!(
        submodule_states(&tree),
        vec![
            (
                "sd-scripts".into(),
                SubmoduleState::AtCommit {
                    commit: fx.s1.clone()
                }
            ),
            (
                "sd-scripts/libs/nested".into(),
                SubmoduleState::WrongCommit {
                    expected: fx.n1.clone(),
                    actual: Some(n2)
                }
            ),
        ]
    );
    git_tool.submodules_update(&path, true).unwrap();
    assert!(observe_tree(&path).is_at(&fx.c2));
}

// ---- errors a user can act on ----

#[test]
fn an_unreachable_url_is_an_actionable_error_and_leaves_nothing_behind() {
    let fx = GitFixture::new();
    let path = fx.scratch("nowhere");
    let err = tool()
        .clone("file:///nonexistent/repo.git", &path, &request("v1"))
        .unwrap_err();
    assert!(matches!(err, GitError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("cannot reach the repository file:///nonexistent/repo.git: "),
        "{message}"
    );
    assert!(message.contains("Check that the URL is right"), "{message}");
    assert!(!path.exists());
    assert_eq!(
        entries(path.parent().unwrap()),
        Vec::<String>::new(),
        "no temporary clone left"
    );
}

#[test]
fn a_rev_that_does_not_exist_names_the_nearest_tags() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let err = tool()
        .clone(&fx.file_url(), &path, &request("v0.3.28"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "revision \"v0.3.28\" does not exist in {}; nearest tags: v0.3.27, v0.3.26",
            fx.file_url()
        )
    );
    assert!(!path.exists(), "a failed clone leaves nothing at path");
    assert_eq!(entries(path.parent().unwrap()), Vec::<String>::new());
}

#[test]
fn a_rev_that_is_not_local_is_fetched_at_apply_but_never_at_observation() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let git_tool = tool();
    git_tool
        .clone(&fx.file_url(), &path, &request("v0.3.27"))
        .unwrap();
    git(&fx.upstream, &["tag", "v0.3.28", &fx.c3]);
    let err = git_tool.resolve_local(&path, "v0.3.28").unwrap_err();
    assert!(matches!(err, GitError::RevNotFound { .. }), "{err}");
    let fetched = git_tool
        .resolve_fetching(&path, "v0.3.28", None, false)
        .unwrap();
    assert_eq!(
        (fetched.kind, fetched.commit),
        (RevKind::Tag, fx.c3.clone())
    );
}

#[test]
fn an_expression_is_refused_as_a_rev() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let message = tool()
        .clone(&fx.file_url(), &path, &request("HEAD~1"))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("\"HEAD~1\" is not a usable revision"),
        "{message}"
    );
}

#[test]
fn a_path_that_is_not_a_repository_is_reported_and_never_cloned_over() {
    let fx = GitFixture::new();
    let path = fx.scratch("ComfyUI");
    fs::create_dir_all(&path).unwrap();
    fs::write(path.join("precious.txt"), "keep me").unwrap();

    let observation = tool().observe(&path).unwrap();
    assert_eq!(
        observation,
        RepoObservation::NotARepository {
            found: "a directory with 1 entry and no .git".into()
        }
    );
    let message = observation
        .require_repository(&path)
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        format!(
            "{} exists and is not a git repository (it is a directory with 1 entry and no .git); \
             move it away or point `path` elsewhere",
            path.display()
        )
    );
    let message = tool()
        .resolve_local(&path, "v0.3.27")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("exists and is not a git repository"),
        "{message}"
    );

    let message = tool()
        .clone(&fx.file_url(), &path, &request("v0.3.27"))
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!(
            "cannot clone into {}: it already holds",
            path.display()
        )),
        "{message}"
    );
    assert_eq!(entries(&path), ["precious.txt"]);
}

#[test]
fn a_file_at_the_path_and_an_empty_directory_are_told_apart() {
    let fx = GitFixture::new();
    let file = fx.scratch("file");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, "x").unwrap();
    assert_eq!(
        tool().observe(&file).unwrap(),
        RepoObservation::NotARepository {
            found: "a file".into()
        }
    );
    let empty = fx.scratch("empty");
    fs::create_dir(&empty).unwrap();
    assert_eq!(
        tool().observe(&empty).unwrap(),
        RepoObservation::EmptyDirectory
    );
    assert_eq!(
        tool().observe(&fx.scratch("absent")).unwrap(),
        RepoObservation::Absent
    );
    // An empty directory is a fine clone target.
    tool()
        .clone(&fx.file_url(), &empty, &request("v0.3.26"))
        .unwrap();
    assert_eq!(observe_tree(&empty).head.as_deref(), Some(fx.c1.as_str()));
}

#[test]
fn a_plain_folder_inside_another_repository_is_not_taken_for_it() {
    let fx = GitFixture::new();
    let comfy = fx.scratch("ComfyUI");
    tool()
        .clone(&fx.file_url(), &comfy, &request("v0.3.26"))
        .unwrap();
    let node = comfy.join("custom_nodes/manager");
    fs::create_dir_all(&node).unwrap();
    fs::write(node.join("__init__.py"), "").unwrap();
    assert!(matches!(
        tool().observe(&node).unwrap(),
        RepoObservation::NotARepository { .. }
    ));
}

#[test]
fn git_missing_from_path_is_reported_plainly() {
    let empty_bin = tempfile::tempdir().unwrap();
    let git_tool = Git::new().with_search_path(empty_bin.path());
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    let err = git_tool
        .clone(&fx.file_url(), &path, &request("v0.3.27"))
        .unwrap_err();
    assert!(matches!(err, GitError::GitNotFound), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("git is not installed or not on PATH; install git"),
        "{err}"
    );
}

#[test]
fn credentials_in_urls_never_reach_errors_debug_or_observations() {
    let fx = GitFixture::new();
    let secret_url = "https://user:s3cr3t-token@127.0.0.1:1/org/repo.git";
    let path = fx.scratch("private");
    let err = tool().clone(secret_url, &path, &request("v1")).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(
        shown.contains("https://***@127.0.0.1:1/org/repo.git"),
        "{shown}"
    );

    let clone = fx.scratch("kohya_ss");
    let git_tool = tool();
    git_tool
        .clone(&fx.file_url(), &clone, &request("v0.3.26"))
        .unwrap();
    git_tool.set_remote_url(&clone, secret_url).unwrap();
    let observation = git_tool.observe(&clone).unwrap();
    let tree = observation.require_repository(&clone).unwrap();
    assert_eq!(
        tree.origin.as_ref().unwrap().expose(),
        secret_url,
        "the real URL is kept for git"
    );
    let shown = format!(
        "{observation:?} {}",
        serde_json::to_string(&observation).unwrap()
    );
    assert!(!shown.contains("s3cr3t"), "{shown}");

    let err = tree.require_origin(&clone, &fx.file_url()).unwrap_err();
    assert!(!format!("{err} {err:?}").contains("s3cr3t"));
    let err = git_tool.fetch(&clone, None).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, GitError::Unreachable { .. }), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

// ---- cost and side effects of observation ----

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            all.insert(entry.path(), (meta.len(), meta.modified().unwrap()));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    all
}

#[test]
fn observing_a_converged_repository_writes_nothing() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    tool()
        .clone(&fx.file_url(), &path, &request("v0.3.27"))
        .unwrap();
    // Touch tracked files without changing them: a plain `git status` would now
    // refresh and rewrite .git/index (and the submodule's index).
    let later = SystemTime::now() + std::time::Duration::from_secs(5);
    for file in ["main.py", "sd-scripts/train_network.py"] {
        fs::File::options()
            .write(true)
            .open(path.join(file))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    let before = snapshot(&path);
    for _ in 0..3 {
        let tree = observe_tree(&path);
        assert!(tree.is_at(&fx.c2));
        assert_eq!(tree.changes.total, 0);
        tool().resolve_local(&path, "v0.3.27").unwrap();
    }
    let after = snapshot(&path);
    let changed: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(changed.is_empty(), "observation wrote to {changed:#?}");
}

fn logged_calls(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn observation_spawns_one_status_plus_one_ls_tree_per_repository_with_submodules() {
    let fx = GitFixture::new();
    let with_subs = fx.scratch("kohya_ss");
    let plain = fx.scratch("comfy");
    tool()
        .clone(&fx.file_url(), &with_subs, &request("v0.3.27"))
        .unwrap();
    tool()
        .clone(&fx.file_url(), &plain, &request("v0.3.26"))
        .unwrap();
    let log = fx.root().join("calls.log");
    let (_bin, counting) = counting_git(&log);

    counting.observe(&plain).unwrap();
    let calls = logged_calls(&log);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert!(calls[0].contains(" status "), "{calls:#?}");

    fs::remove_file(&log).unwrap();
    counting.observe(&with_subs).unwrap();
    let calls = logged_calls(&log);
    // status, ls-tree in kohya_ss, ls-tree in sd-scripts (which has a nested submodule).
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(
        calls.iter().filter(|c| c.contains(" ls-tree ")).count(),
        2,
        "{calls:#?}"
    );

    fs::remove_file(&log).unwrap();
    counting.resolve_local(&with_subs, "v0.3.27").unwrap();
    assert_eq!(
        logged_calls(&log).len(),
        1,
        "a tag resolves with one for-each-ref"
    );
}

#[test]
fn observation_and_local_resolution_never_contact_origin() {
    let fx = GitFixture::new();
    let path = fx.scratch("kohya_ss");
    tool()
        .clone(&fx.file_url(), &path, &request("v0.3.27"))
        .unwrap();
    // An origin that would fail (or hang) if contacted.
    git(
        &path,
        &[
            "remote",
            "set-url",
            "origin",
            "https://127.0.0.1:1/unreachable.git",
        ],
    );
    assert!(observe_tree(&path).is_at(&fx.c2));
    assert_eq!(
        tool().resolve_local(&path, "v0.3.27").unwrap().commit,
        fx.c2
    );
    assert_eq!(tool().resolve_local(&path, "main").unwrap().commit, fx.c3);
}

/// A `git` on PATH that logs each invocation's arguments, then runs the real git.
fn counting_git(log: &Path) -> (tempfile::TempDir, Git) {
    let bin = tempfile::tempdir().unwrap();
    let path = gitfix::logging_git(bin.path(), log);
    (bin, Git::new().with_search_path(path))
}
