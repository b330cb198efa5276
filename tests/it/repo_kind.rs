//! The `repo` kind end to end: the built binary against real git repositories
//! the test creates (tags, branches, a submodule with a nested submodule).

use crate::support::gitfix;
use crate::support::sandbox;

use std::fs;
use std::path::{Path, PathBuf};

use gitfix::{GitFixture, git};
use sandbox::{Run, Sandbox};

fn repo_spec(url: &str, rev: &str, extra: &str) -> String {
    format!(
        "repo kohya {{\n    url \"{url}\"\n    rev \"{rev}\"\n    path \"tools/kohya_ss\"\n{extra}}}\n"
    )
}

fn short(commit: &str) -> &str {
    &commit[..7]
}

fn head(path: &Path) -> String {
    git(path, &["rev-parse", "HEAD"])
}

fn outputs(sb: &Sandbox) -> serde_json::Value {
    sb.state()["resources"]["repo.kohya"]["outputs"].clone()
}

/// Everything plasma printed, for checks that a secret appears nowhere.
fn all_output(run: &Run) -> String {
    format!("{}{}", run.stdout, run.stderr)
}

#[test]
fn clone_at_a_tag_with_nested_submodules_records_the_commit_and_shows_it() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    let clone = sb.path("tools/kohya_ss");

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout
            .contains(&format!("+ clone: {} at v0.3.27", fx.file_url())),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("+ submodules: initialised recursively"),
        "{}",
        plan.stdout
    );
    assert!(!clone.exists(), "plan must not clone");

    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c2);
    assert!(clone.join("sd-scripts/train_network.py").is_file());
    assert!(clone.join("sd-scripts/libs/nested/nested.txt").is_file());
    let out = outputs(&sb);
    assert_eq!(out["commit"], fx.c2.as_str());
    assert_eq!(out["rev"], "v0.3.27");
    assert_eq!(out["rev_kind"], "tag");
    assert_eq!(out["submodules"]["sd-scripts"], fx.s1.as_str());
    assert_eq!(out["submodules"]["sd-scripts/libs/nested"], fx.n1.as_str());

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(0);
    assert!(plan.stdout.contains("No changes"), "{}", plan.stdout);
    sb.run(&["drift"]).code(0);

    let show = sb.run(&["show", "repo.kohya"]);
    show.code(0);
    for expected in [
        format!("commit: {}", fx.c2),
        format!("sd-scripts: {}", fx.s1),
        format!("sd-scripts/libs/nested: {}", fx.n1),
        "rev_kind: tag".to_string(),
    ] {
        assert!(
            show.stdout.contains(&expected),
            "{expected}\n{}",
            show.stdout
        );
    }
}

fn run_with_path(sb: &Sandbox, path: &str, args: &[&str]) -> Run {
    let out = sb.command(args).env("PATH", path).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_second_apply_is_a_no_op_and_spawns_nothing_that_writes() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    let (path, log) = logging_git(&sb);

    run_with_path(&sb, &path, &["apply", "--yes"]).code(0);
    let first = fs::read_to_string(&log).unwrap();
    assert!(first.contains("clone"), "the wrapper sees git: {first}");
    fs::remove_file(&log).unwrap();
    let state_before = sb.read(".plasma/state.json");

    let second = run_with_path(&sb, &path, &["apply", "--yes"]);
    second.code(0);
    assert!(second.stdout.contains("No changes"), "{}", second.stdout);
    let calls = fs::read_to_string(&log).unwrap_or_default();
    for writer in [
        "clone",
        "fetch",
        "checkout",
        "submodule",
        "reset",
        "clean",
        "remote",
        "ls-remote",
    ] {
        assert!(
            !calls.split_whitespace().any(|w| w == writer),
            "the second apply ran `git {writer}`:\n{calls}"
        );
    }
    // Observation: one status, one ls-tree per repository with submodules; the
    // tag is not even looked up, since HEAD is the commit state recorded for it.
    assert_eq!(
        calls.lines().filter(|c| c.contains("status")).count(),
        1,
        "{calls}"
    );
    assert_eq!(
        calls.lines().filter(|c| c.contains("ls-tree")).count(),
        2,
        "{calls}"
    );
    assert!(!calls.contains("for-each-ref"), "{calls}");
    assert_eq!(
        sb.read(".plasma/state.json"),
        state_before,
        "state is untouched"
    );
}

#[test]
fn moving_to_another_tag_shows_both_revs_and_updates_submodules() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", ""));
    let clone = sb.path("tools/kohya_ss");
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c1);
    assert!(
        !clone.join("sd-scripts").exists(),
        "v0.3.26 has no submodule"
    );

    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    let expected = format!(
        "~ rev: v0.3.26 ({}) -> v0.3.27 ({})",
        short(&fx.c1),
        short(&fx.c2)
    );
    assert!(plan.stdout.contains(&expected), "{}", plan.stdout);

    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c2);
    assert!(clone.join("sd-scripts/libs/nested/nested.txt").is_file());
    assert_eq!(outputs(&sb)["commit"], fx.c2.as_str());

    // And back: the recorded rev names the old side.
    sb.spec(&repo_spec(&fx.file_url(), "main", ""));
    let plan = sb.run(&["plan"]);
    let expected = format!(
        "~ rev: v0.3.27 ({}) -> main ({})",
        short(&fx.c2),
        short(&fx.c3)
    );
    assert!(plan.stdout.contains(&expected), "{}", plan.stdout);
    assert!(
        plan.stdout
            .contains("+ submodules: updated to the commits main records"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone.join("sd-scripts")), fx.s2);
}

#[test]
fn a_commit_pin_full_or_abbreviated() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), short(&fx.c2), ""));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    assert_eq!(head(&clone), fx.c2);
    assert_eq!(outputs(&sb)["rev_kind"], "commit");
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    sb.spec(&repo_spec(&fx.file_url(), &fx.c3, ""));
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains(&format!(
            "~ rev: {} ({}) -> {} ({})",
            short(&fx.c2),
            short(&fx.c2),
            fx.c3,
            short(&fx.c3)
        )),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c3);
}

#[test]
fn a_branch_that_moves_upstream_changes_nothing_until_refresh() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "develop", ""));
    let clone = sb.path("tools/kohya_ss");
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.d1);
    assert_eq!(outputs(&sb)["rev_kind"], "branch");
    assert_eq!(outputs(&sb)["commit"], fx.d1.as_str());

    let d2 = fx.advance_develop("print('dev 2')\n");
    // No network: the branch stays where the last apply recorded it.
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
    sb.run(&["drift"]).code(0);
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.d1);

    // Without plasma.lock (with it the branch is held at the locked commit,
    // and `plasma lock --upgrade` moves it: tests/it/lock.rs), `plan
    // --refresh` looks upstream, and changes nothing.
    fs::remove_file(sb.path("plasma.lock")).unwrap();
    let plan = sb.run(&["plan", "--refresh", "--detailed-exitcode"]);
    plan.code(2);
    let expected = format!(
        "~ rev: develop ({}) -> develop ({})",
        short(&fx.d1),
        short(&d2)
    );
    assert!(plan.stdout.contains(&expected), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("develop moved upstream"),
        "{}",
        plan.stdout
    );
    assert_eq!(head(&clone), fx.d1);

    sb.run(&["apply", "--yes", "--refresh", "repo.kohya"])
        .code(0);
    assert_eq!(head(&clone), d2);
    assert_eq!(outputs(&sb)["commit"], d2.as_str());
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    // A fetch made by hand does not move the pin either.
    let d3 = fx.advance_develop("print('dev 3')\n");
    git(&clone, &["fetch", "-q", "origin"]);
    assert_eq!(git(&clone, &["rev-parse", "origin/develop"]), d3);
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_shallow_clone_keeps_one_commit_and_moves_shallowly() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", "    depth 1\n"));
    let plan = sb.run(&["plan"]);
    assert!(plan.stdout.contains("+ depth: 1"), "{}", plan.stdout);
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    assert!(clone.join(".git/shallow").exists());
    assert_eq!(git(&clone, &["rev-list", "--count", "HEAD"]), "1");
    assert_eq!(head(&clone), fx.c2);
    assert!(clone.join("sd-scripts/train_network.py").is_file());
    assert_eq!(outputs(&sb)["shallow"], true);
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", "    depth 1\n"));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("-> v0.3.26 (not in the clone yet; apply fetches it)"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c1);
    assert!(clone.join(".git/shallow").exists(), "still shallow");
}

#[test]
fn a_hand_edit_under_on_dirty_fail_is_drift_and_only_that_resource_fails_to_apply() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    let spec = |note: &str| {
        format!(
            "{}file note {{\n    path \"note.txt\"\n    content \"{note}\"\n}}\n",
            repo_spec(&fx.file_url(), "v0.3.27", "")
        )
    };
    sb.spec(&spec("first"));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    fs::write(clone.join("main.py"), "print('hand edit')\n").unwrap();
    fs::write(clone.join("notes.txt"), "mine\n").unwrap();
    fs::write(clone.join("sd-scripts/train_network.py"), "patched\n").unwrap();
    // Another resource changes too: the repo must not hide it.
    sb.spec(&spec("second"));

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    for expected in [
        "local change M main.py",
        "local change ?? notes.txt",
        "local change M sd-scripts/train_network.py",
        "file.note",
    ] {
        assert!(
            plan.stdout.contains(expected),
            "{expected}: {}",
            plan.stdout
        );
    }
    for choice in ["commit or stash", "on-dirty \"keep\"", "\"reset\""] {
        assert!(plan.stdout.contains(choice), "{choice}: {}", plan.stdout);
    }
    // Drift, not an error: cron can tell "someone edited it" from "plasma broke".
    let drift = sb.run(&["drift"]);
    drift.code(2);
    assert!(
        drift.stdout.contains("repo.kohya: drifted")
            && drift.stdout.contains("M sd-scripts/train_network.py"),
        "{}",
        drift.stdout
    );
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    assert!(
        apply.stderr.contains("has local changes"),
        "{}",
        apply.stderr
    );
    // The rest of the plan was applied; the clone was not touched.
    assert_eq!(sb.read("note.txt"), "second");
    assert_eq!(head(&clone), fx.c2);
    assert_eq!(sb.read("tools/kohya_ss/main.py"), "print('hand edit')\n");
    assert_eq!(
        sb.read("tools/kohya_ss/sd-scripts/train_network.py"),
        "patched\n"
    );
}

/// Adds `v0.3.28` to the upstream: v0.3.27 plus an edit of main.py, with
/// sd-scripts at the same commit.
fn tag_v0_3_28(fx: &GitFixture) -> String {
    git(&fx.upstream, &["checkout", "-q", "v0.3.27"]);
    let commit = gitfix::commit_file(&fx.upstream, "main.py", "print('v0.3.28')\n", "fix");
    git(&fx.upstream, &["tag", "v0.3.28"]);
    git(&fx.upstream, &["checkout", "-q", "main"]);
    commit
}

#[test]
fn under_keep_an_edit_inside_a_submodule_survives_a_move_that_keeps_its_commit() {
    let fx = GitFixture::new();
    let v0_3_28 = tag_v0_3_28(&fx);
    let sb = Sandbox::new();
    let keep = "    on-dirty \"keep\"\n";
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", keep));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    fs::write(clone.join("sd-scripts/train_network.py"), "patched lr\n").unwrap();

    sb.spec(&repo_spec(&fx.file_url(), "v0.3.28", keep));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("local changes are kept (M sd-scripts/train_network.py)"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), v0_3_28);
    assert_eq!(
        sb.read("tools/kohya_ss/sd-scripts/train_network.py"),
        "patched lr\n"
    );
}

#[test]
fn a_dropped_submodule_folder_holding_ignored_or_untracked_files_is_kept_and_reported() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    let sub = clone.join("sd-scripts");
    let exclude = sub.join(git(&sub, &["rev-parse", "--git-path", "info/exclude"]));
    fs::create_dir_all(exclude.parent().unwrap()).unwrap();
    fs::write(&exclude, "outputs/\n").unwrap();
    fs::create_dir_all(sub.join("outputs")).unwrap();
    fs::write(sub.join("outputs/lora.safetensors"), "weights").unwrap();
    // Ignored inside the submodule: the clone is clean under `fail`.
    sb.run(&["drift"]).code(0);

    // v0.3.26 has no sd-scripts.
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", ""));
    let plan = sb.run(&["plan"]);
    plan.code(0);
    assert!(
        plan.stdout.contains("their folders are kept, not deleted")
            && plan.stdout.contains("sd-scripts (holds !! outputs/)"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c1);
    assert_eq!(
        fs::read_to_string(sub.join("outputs/lora.safetensors")).unwrap(),
        "weights"
    );
    let log = sb.read(".plasma/logs/repo.kohya.log");
    assert!(log.contains("kept the folders of submodules"), "{log}");
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    // A folder with nothing of the user's in it is still removed.
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    sb.run(&["apply", "--yes"]).code(0);
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", ""));
    sb.run(&["apply", "--yes"]).code(0);
    assert!(!sb.path("tools/kohya_ss/sd-scripts").exists());
}

#[test]
fn a_commit_on_the_detached_head_or_in_a_submodule_is_never_moved_away_silently() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    let mine = gitfix::commit_file(&clone, "mine.py", "x = 1\n", "my experiment");

    sb.spec(&repo_spec(&fx.file_url(), "main", ""));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("commits on no branch would be left behind")
            && plan
                .stdout
                .contains(&format!("{} my experiment", &mine[..7])),
        "{}",
        plan.stdout
    );
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    assert!(apply.stderr.contains("my experiment"), "{}", apply.stderr);
    assert_eq!(head(&clone), mine);

    // Under `keep` too; under `reset` it moves and says what it left.
    sb.spec(&repo_spec(
        &fx.file_url(),
        "main",
        "    on-dirty \"keep\"\n",
    ));
    sb.run(&["apply", "--yes"]).code(1);
    assert_eq!(head(&clone), mine);
    sb.spec(&repo_spec(
        &fx.file_url(),
        "main",
        "    on-dirty \"reset\"\n",
    ));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("leaves these commits on no branch"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c3);
    let log = sb.read(".plasma/logs/repo.kohya.log");
    assert!(log.contains("my experiment"), "{log}");

    // A commit inside a submodule, with the superproject staying put.
    sb.spec(&repo_spec(&fx.file_url(), "main", ""));
    let sub = clone.join("sd-scripts");
    let patched = gitfix::commit_file(&sub, "train_network.py", "patched\n", "my lr fix");
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout
            .contains(&format!("sd-scripts: {} my lr fix", &patched[..7])),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(1);
    assert_eq!(head(&sub), patched);
}

/// git overwrites ignored files without a word when the target commit
/// tracks their path (or a path above them); plasma refuses unless told to
/// reset, and says which files.
#[test]
fn an_ignored_file_the_target_starts_tracking_is_never_overwritten_silently() {
    let fx = GitFixture::new();
    git(&fx.upstream, &["checkout", "-q", "v0.3.27"]);
    gitfix::commit_file(
        &fx.upstream,
        "models/anything-v5.safetensors",
        "upstream\n",
        "models",
    );
    gitfix::commit_file(
        &fx.upstream,
        "extra_model_paths.yaml",
        "upstream\n",
        "paths",
    );
    git(&fx.upstream, &["tag", "v0.3.29"]);
    git(&fx.upstream, &["checkout", "-q", "main"]);

    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    let at_v0_3_27 = head(&clone);
    let exclude = clone.join(git(&clone, &["rev-parse", "--git-path", "info/exclude"]));
    fs::write(&exclude, "models/\nextra_model_paths.yaml\n").unwrap();
    fs::create_dir_all(clone.join("models")).unwrap();
    fs::write(clone.join("models/anything-v5.safetensors"), "mine").unwrap();
    fs::write(clone.join("models/other.safetensors"), "mine too").unwrap();
    fs::write(clone.join("extra_model_paths.yaml"), "my paths").unwrap();
    // Ignored files are not local changes: the clone is converged.
    sb.run(&["drift"]).code(0);

    for on_dirty in ["", "    on-dirty \"keep\"\n"] {
        sb.spec(&repo_spec(&fx.file_url(), "v0.3.29", on_dirty));
        let plan = sb.run(&["plan"]);
        assert!(
            plan.stdout.contains("ignored files would be overwritten")
                && plan.stdout.contains(
                    "overwrite without asking: extra_model_paths.yaml, models/anything-v5.safetensors;"
                ),
            "{}",
            plan.stdout
        );
        let apply = sb.run(&["apply", "--yes"]);
        apply.code(1);
        assert!(
            apply
                .stderr
                .contains("would overwrite files git ignores here")
                && apply.stderr.contains("models/anything-v5.safetensors"),
            "{}",
            apply.stderr
        );
        assert_eq!(head(&clone), at_v0_3_27);
        assert_eq!(
            sb.read("tools/kohya_ss/models/anything-v5.safetensors"),
            "mine"
        );
        assert_eq!(sb.read("tools/kohya_ss/extra_model_paths.yaml"), "my paths");
    }

    sb.spec(&repo_spec(
        &fx.file_url(),
        "v0.3.29",
        "    on-dirty \"reset\"\n",
    ));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("lets the checkout replace these ignored files"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(
        sb.read("tools/kohya_ss/models/anything-v5.safetensors"),
        "upstream\n"
    );
    assert_eq!(
        sb.read("tools/kohya_ss/models/other.safetensors"),
        "mine too"
    );
    let log = sb.read(".plasma/logs/repo.kohya.log");
    assert!(log.contains("replacing ignored files"), "{log}");
}

#[test]
fn a_hand_edit_under_on_dirty_keep_is_left_and_a_conflicting_move_is_refused() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    let keep = "    on-dirty \"keep\"\n";
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", keep));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    fs::write(clone.join("notes.txt"), "mine\n").unwrap();
    sb.run(&["plan", "--detailed-exitcode"]).code(0);

    // A move that does not touch the edited files carries them along.
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", keep));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("local changes are kept (?? notes.txt)"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c2);
    assert_eq!(sb.read("tools/kohya_ss/notes.txt"), "mine\n");

    // One that would overwrite an edit is refused, naming the file.
    fs::write(clone.join("main.py"), "print('hand edit')\n").unwrap();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", keep));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    assert!(
        apply
            .stderr
            .contains("local changes to main.py would be overwritten"),
        "{}",
        apply.stderr
    );
    assert_eq!(head(&clone), fx.c2);
    assert_eq!(sb.read("tools/kohya_ss/main.py"), "print('hand edit')\n");
}

#[test]
fn a_hand_edit_under_on_dirty_reset_is_shown_as_destructive_then_discarded() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    let reset = "    on-dirty \"reset\"\n";
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", reset));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    fs::write(clone.join("main.py"), "print('hand edit')\n").unwrap();
    fs::write(clone.join("notes.txt"), "mine\n").unwrap();
    fs::create_dir_all(clone.join("venv/bin")).unwrap();
    fs::write(clone.join("venv/bin/python"), "").unwrap();
    fs::write(clone.join("sd-scripts/scratch.py"), "x\n").unwrap();

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("local changes will be discarded"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("! on-dirty \"reset\" discards local changes in"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("M main.py"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains(
            "deletes these untracked files and folders: notes.txt, venv/, sd-scripts/scratch.py"
        ),
        "{}",
        plan.stdout
    );
    assert!(
        clone.join("venv/bin/python").exists(),
        "plan deletes nothing"
    );

    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(sb.read("tools/kohya_ss/main.py"), "print('v0.3.27')\n");
    assert!(!clone.join("notes.txt").exists());
    assert!(!clone.join("venv").exists());
    assert!(!clone.join("sd-scripts/scratch.py").exists());
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn the_seeds_empty_submodule_is_reported_by_plan_and_drift_and_fixed_by_apply() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    let clone = sb.path("tools/kohya_ss");
    // What the first user did: a plain clone, which leaves sd-scripts/ empty.
    git(
        sb.root(),
        &["clone", "-q", &fx.file_url(), clone.to_str().unwrap()],
    );
    git(&clone, &["checkout", "-q", "v0.3.27"]);
    assert!(
        fs::read_dir(clone.join("sd-scripts"))
            .unwrap()
            .next()
            .is_none()
    );
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));

    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    let expected = format!(
        "~ submodule sd-scripts: not initialised -> {}",
        short(&fx.s1)
    );
    assert!(plan.stdout.contains(&expected), "{}", plan.stdout);
    assert!(
        !plan.stdout.contains("~ rev"),
        "the clone is at the rev: {}",
        plan.stdout
    );
    let drift = sb.run(&["drift"]);
    drift.code(2);
    assert!(
        drift
            .stdout
            .contains("submodule sd-scripts is not initialised"),
        "{}",
        drift.stdout
    );

    sb.run(&["apply", "--yes"]).code(0);
    assert!(clone.join("sd-scripts/train_network.py").is_file());
    assert!(clone.join("sd-scripts/libs/nested/nested.txt").is_file());
    sb.run(&["drift"]).code(0);
}

#[test]
fn a_wrong_remote_url_is_another_repository_unless_plasma_set_it() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    let clone = sb.path("tools/kohya_ss");
    // Another project at the path.
    git(
        sb.root(),
        &[
            "clone",
            "-q",
            &format!("file://{}", fx.nested.display()),
            clone.to_str().unwrap(),
        ],
    );
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    let plan = sb.run(&["plan"]);
    plan.code(1);
    assert!(
        plan.stdout.contains(&format!(
            "is a clone of file://{}, not of {}",
            fx.nested.display(),
            fx.file_url()
        )),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("remote set-url origin"),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(1);
    fs::remove_dir_all(&clone).unwrap();

    // The spec moves to a mirror of the same project: the URL is updated.
    sb.run(&["apply", "--yes"]).code(0);
    let mirror = fx.root().join("mirror.git");
    git(
        fx.root(),
        &[
            "clone",
            "-q",
            "--mirror",
            &fx.file_url(),
            mirror.to_str().unwrap(),
        ],
    );
    let mirror_url = format!("file://{}", mirror.display());
    sb.spec(&repo_spec(&mirror_url, "v0.3.27", ""));
    let plan = sb.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout
            .contains(&format!("~ url: {} -> {mirror_url}", fx.file_url())),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(0);
    assert_eq!(git(&clone, &["remote", "get-url", "origin"]), mirror_url);
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn an_unreachable_url_is_an_actionable_error_and_leaves_nothing() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    let missing = format!("file://{}/no-such-repo.git", fx.root().display());
    sb.spec(&repo_spec(&missing, "v0.3.27", ""));
    sb.run(&["plan", "--detailed-exitcode"]).code(2);
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    assert!(
        apply
            .stderr
            .contains(&format!("cannot reach the repository {missing}")),
        "{}",
        apply.stderr
    );
    assert!(
        apply.stderr.contains("Check that the URL is right"),
        "{}",
        apply.stderr
    );
    assert!(!sb.path("tools/kohya_ss").exists());
    assert_eq!(
        fs::read_dir(sb.path("tools")).map_or(0, |d| d.count()),
        0,
        "no temporary clone is left behind"
    );

    // `plan --refresh` looks, and says so before anything runs.
    let plan = sb.run(&["plan", "--refresh"]);
    plan.code(1);
    assert!(
        plan.stdout.contains("cannot reach the repository"),
        "{}",
        plan.stdout
    );
}

#[test]
fn a_rev_that_does_not_exist_names_the_nearest_tags() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.28", ""));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let expected = format!(
        "revision \"v0.3.28\" does not exist in {}; nearest tags: v0.3.27, v0.3.26",
        fx.file_url()
    );
    assert!(apply.stderr.contains(&expected), "{}", apply.stderr);
    assert!(apply.stderr.contains("help: set `rev`"), "{}", apply.stderr);
    assert!(!sb.path("tools/kohya_ss").exists());

    let plan = sb.run(&["plan", "--refresh"]);
    plan.code(1);
    assert!(plan.stdout.contains(&expected), "{}", plan.stdout);

    // In an existing clone the plan says it will fetch; apply then says it is missing.
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    sb.run(&["apply", "--yes"]).code(0);
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.28", ""));
    let plan = sb.run(&["plan"]);
    assert!(
        plan.stdout.contains("-> v0.3.28 (not in the clone yet"),
        "{}",
        plan.stdout
    );
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    assert!(apply.stderr.contains(&expected), "{}", apply.stderr);
    assert_eq!(head(&sb.path("tools/kohya_ss")), fx.c2);
}

#[test]
fn a_path_that_holds_something_else_is_never_cloned_over() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.write("tools/kohya_ss/precious.txt", "keep me\n");
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    let plan = sb.run(&["plan"]);
    plan.code(1);
    assert!(
        plan.stdout.contains(
            "kohya_ss exists and is not a git repository (it is a directory with 1 entry and no .git)"
        ),
        "{}",
        plan.stdout
    );
    sb.run(&["apply", "--yes"]).code(1);
    assert_eq!(sb.read("tools/kohya_ss/precious.txt"), "keep me\n");
}

#[test]
fn credentials_in_the_url_never_reach_output_state_or_logs() {
    let sb = Sandbox::new();
    let url = "https://plasma:s3cr3t-token@127.0.0.1:1/kohya_ss.git";
    sb.spec(&repo_spec(url, "v0.3.27", ""));
    let plan = sb.run(&["plan"]);
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let refresh = sb.run(&["plan", "--refresh", "--json"]);
    let validate = sb.run(&["show", "repo.kohya"]);
    for run in [&plan, &apply, &refresh, &validate] {
        let text = all_output(run);
        assert!(!text.contains("s3cr3t"), "{text}");
    }
    assert!(
        apply.stderr.contains("https://***@127.0.0.1:1"),
        "{}",
        apply.stderr
    );
    let log = sb.read(".plasma/logs/repo.kohya.log");
    assert!(log.contains("failed:") && !log.contains("s3cr3t"), "{log}");
}

#[test]
fn spec_mistakes_are_spanned_errors_all_at_once() {
    let sb = Sandbox::new();
    sb.spec(
        "repo a {\n    url \"file:///x\"\n    rev \"HEAD~1\"\n    path \"a\"\n    depth 0\n    on-dirty \"nuke\"\n}\n",
    );
    let run = sb.run(&["validate"]);
    run.code(1);
    for expected in [
        "\"HEAD~1\" is not a usable revision",
        "`depth` must be 1 or more",
        "`nuke` is not a valid `on-dirty`",
        "expected one of: fail, keep, reset",
        "the spec has 3 problems",
    ] {
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.stderr);
    }
    sb.spec("repo a {\n    rev \"main\"\n    path \"a\"\n}\n");
    let run = sb.run(&["validate"]);
    run.code(1);
    assert!(
        run.stderr.contains("repo `a` is missing `url`"),
        "{}",
        run.stderr
    );
}

#[test]
fn submodules_off_is_a_lint_warning_that_can_be_allowed() {
    let sb = Sandbox::new();
    sb.spec(&repo_spec("file:///x", "v1", "    submodules #false\n"));
    let run = sb.run(&["validate"]);
    run.code(0);
    assert!(
        run.stderr.contains("submodules-not-initialised")
            && run.stderr.contains("will be cloned without its submodules"),
        "{}",
        run.stderr
    );
    sb.spec(&repo_spec(
        "file:///x",
        "v1",
        "    submodules #false\n    allow submodules-not-initialised\n",
    ));
    let run = sb.run(&["validate"]);
    run.code(0);
    assert!(
        !run.stderr.contains("submodules-not-initialised"),
        "{}",
        run.stderr
    );
}

#[test]
fn submodules_off_clones_without_them_and_ignores_their_state() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    sb.spec(&repo_spec(
        &fx.file_url(),
        "v0.3.27",
        "    submodules #false\n    allow submodules-not-initialised\n",
    ));
    sb.run(&["apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    assert_eq!(head(&clone), fx.c2);
    assert!(!clone.join("sd-scripts/train_network.py").exists());
    sb.run(&["plan", "--detailed-exitcode"]).code(0);
}

/// A `git` first on PATH that logs its arguments, then runs the real one.
fn logging_git(sb: &Sandbox) -> (String, PathBuf) {
    let log = sb.path("git-calls.log");
    (gitfix::logging_git(&sb.path("bin"), &log), log)
}

/// A git smart-HTTP server on 127.0.0.1 (`git http-backend` behind Python's
/// CGI server) that serves the fixture's repositories only to requests that
/// carry `Authorization: Basic <expected>`, and logs each request's header.
pub(crate) struct GitHttpServer {
    child: std::process::Child,
    pub(crate) port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GitHttpServer {
    pub(crate) fn start(project_root: &Path, expected_basic: &str) -> GitHttpServer {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let backend = dir.path().join("git/backend");
        fs::create_dir_all(backend.parent().unwrap()).unwrap();
        fs::write(&backend, "#!/bin/sh\nexec git http-backend\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&backend, fs::Permissions::from_mode(0o755)).unwrap();
        let log = dir.path().join("requests.log");
        let server = r#"
import http.server, os, sys
expected, log = sys.argv[1], sys.argv[2]
# The CGI handler runs scripts as `nobody` when started as root; stay ourselves.
http.server.nobody_uid = lambda: os.getuid()
class Handler(http.server.CGIHTTPRequestHandler):
    cgi_directories = ["/git"]
    def gate(self):
        got = self.headers.get("Authorization", "")
        with open(log, "a") as f:
            f.write("%s %s\n" % (self.path, got))
        if got != "Basic " + expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        return True
    def do_GET(self):
        if self.gate():
            super().do_GET()
    def do_POST(self):
        if self.gate():
            super().do_POST()
    def log_message(self, *args):
        pass
httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"#;
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(server)
            .arg(expected_basic)
            .arg(&log)
            .current_dir(dir.path())
            .env("GIT_PROJECT_ROOT", project_root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        GitHttpServer {
            port: line.trim().parse().expect("the server prints its port"),
            child,
            log,
            _dir: dir,
        }
    }
}

#[test]
fn credentials_in_an_https_url_reach_git_through_its_environment_never_argv_or_config() {
    use base64::Engine;
    let fx = GitFixture::new();
    let secret = "s3cr3t-t0ken";
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}"));
    let server = GitHttpServer::start(fx.upstream.parent().unwrap(), &basic);
    let clean = format!("http://127.0.0.1:{}/git/backend/kohya_ss", server.port);
    let url = format!(
        "http://alice:{secret}@127.0.0.1:{}/git/backend/kohya_ss",
        server.port
    );
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&url, "v0.3.27", "    submodules #false\n"));
    let (path, calls) = logging_git(&sb);

    let apply = run_with_path(&sb, &path, &["apply", "--yes"]);
    apply.code(0);
    let clone = sb.path("tools/kohya_ss");
    assert_eq!(head(&clone), fx.c2);
    // The server saw the credentials; git's command lines never held them.
    let requests = fs::read_to_string(&server.log).unwrap();
    assert!(requests.contains(&format!("Basic {basic}")), "{requests}");
    let argv = fs::read_to_string(&calls).unwrap();
    assert!(argv.contains(&clean) && !argv.contains(secret), "{argv}");
    // Stored without them: the origin is the clean URL.
    let config = fs::read_to_string(clone.join(".git/config")).unwrap();
    assert!(!config.contains(secret), "{config}");
    assert_eq!(git(&clone, &["config", "remote.origin.url"]), clean);
    // And the clone still converges (and fetches) with them.
    run_with_path(&sb, &path, &["plan", "--detailed-exitcode"]).code(0);
    sb.spec(&repo_spec(&url, "main", "    submodules #false\n"));
    run_with_path(&sb, &path, &["apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c3);
    assert!(!fs::read_to_string(&calls).unwrap().contains(secret));
    assert!(!all_output(&apply).contains(secret));
}

#[test]
fn a_relative_local_url_resolves_against_the_spec_folder_and_converges() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    git(
        sb.root(),
        &[
            "clone",
            "-q",
            "--mirror",
            fx.upstream.to_str().unwrap(),
            "mirrors/kohya_ss",
        ],
    );
    sb.write(
        "cfg/plasma.kdl",
        &repo_spec("../mirrors/kohya_ss", "v0.3.27", "")
            .replace("tools/kohya_ss", "../tools/kohya_ss"),
    );
    // The spec is named by a relative path, as `plasma -f cfg/plasma.kdl` does.
    sb.run(&["-f", "cfg/plasma.kdl", "apply", "--yes"]).code(0);
    let clone = sb.path("tools/kohya_ss");
    assert_eq!(head(&clone), fx.c2);
    let origin = git(&clone, &["config", "remote.origin.url"]);
    assert_eq!(
        Path::new(&origin),
        sb.path("mirrors/kohya_ss").canonicalize().unwrap()
    );
    sb.run(&["-f", "cfg/plasma.kdl", "plan", "--detailed-exitcode"])
        .code(0);
    // The stored origin is one git can fetch from: moving to a rev fetches it.
    sb.write(
        "cfg/plasma.kdl",
        &repo_spec("../mirrors/kohya_ss", "main", "")
            .replace("tools/kohya_ss", "../tools/kohya_ss"),
    );
    sb.run(&["-f", "cfg/plasma.kdl", "apply", "--yes"]).code(0);
    assert_eq!(head(&clone), fx.c3);
}

#[test]
fn a_clone_into_a_folder_plasma_cannot_write_says_so_not_that_the_remote_is_unreachable() {
    let fx = GitFixture::new();
    let sb = Sandbox::new();
    // Not even root can make folders in /proc.
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", "").replace("tools/kohya_ss", "/proc/kohya_ss"));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    assert!(
        apply
            .stderr
            .contains("cannot create /proc/.kohya_ss.plasma-clone"),
        "{}",
        apply.stderr
    );
    assert!(!apply.stderr.contains("cannot reach"), "{}", apply.stderr);
}

#[test]
fn a_rev_that_is_both_a_tag_and_a_branch_is_an_error_naming_both() {
    let fx = GitFixture::new();
    git(&fx.upstream, &["branch", "v0.3.26", &fx.c3]);
    let sb = Sandbox::new();
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", ""));
    let apply = sb.run(&["apply", "--yes"]);
    apply.code(1);
    let expected = format!(
        "is both a tag (at {}) and a branch of origin (at {})",
        &fx.c1[..7],
        &fx.c3[..7]
    );
    assert!(
        all_output(&apply).contains(&expected),
        "{}",
        all_output(&apply)
    );
    assert!(!sb.path("tools/kohya_ss").exists());

    // On an existing clone, plan says it too.
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.27", ""));
    sb.run(&["apply", "--yes"]).code(0);
    sb.spec(&repo_spec(&fx.file_url(), "v0.3.26", ""));
    let plan = sb.run(&["plan"]);
    plan.code(1);
    assert!(
        all_output(&plan).contains(&expected),
        "{}",
        all_output(&plan)
    );
}
