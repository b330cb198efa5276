//! A fixture of real git repositories, built with the `git` CLI in a temporary
//! directory, for tests of anything that clones: an upstream with tags, a branch,
//! a submodule and a nested submodule, like ComfyUI / kohya_ss and its `sd-scripts`.
//!
//! ```text
//! nested    N1
//! sub       S1 (train_network.py, submodule libs/nested at N1)  S2 (edits it)
//! upstream  C1 main.py                      tag v0.3.26 (annotated)
//!           C2 + submodule sd-scripts at S1 tag v0.3.27 (lightweight)
//!           C3 sd-scripts moved to S2        branch main
//!           D1 (on C3)                       branch develop
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Runs the real git in `dir` with a fixed identity and no user or system config,
/// panicking with git's message on failure; returns trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Fixture")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.invalid")
        .env("GIT_COMMITTER_NAME", "Fixture")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.invalid")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .expect("git must be installed to run these tests");
    assert!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Writes `content` to `repo/file` and commits it; returns the new commit.
pub fn commit_file(repo: &Path, file: &str, content: &str, message: &str) -> String {
    let target = repo.join(file);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&target, content).unwrap();
    git(repo, &["add", "--", file]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// A new repository at `dir` on branch `main`.
pub fn init_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
}

/// The fixture: three upstream repositories and a scratch area for clones.
pub struct GitFixture {
    root: TempDir,
    /// The ComfyUI / kohya_ss stand-in.
    pub upstream: PathBuf,
    /// The `sd-scripts` stand-in, a submodule of `upstream`.
    #[allow(dead_code)] // for tests that move the submodule upstream
    pub sub: PathBuf,
    /// A submodule of `sub`, at `libs/nested`.
    pub nested: PathBuf,
    pub c1: String,
    pub c2: String,
    pub c3: String,
    pub d1: String,
    pub s1: String,
    pub s2: String,
    pub n1: String,
}

impl GitFixture {
    pub fn new() -> GitFixture {
        let root = tempfile::tempdir().unwrap();
        let nested = root.path().join("upstreams/nested");
        let sub = root.path().join("upstreams/sd-scripts");
        let upstream = root.path().join("upstreams/kohya_ss");

        init_repo(&nested);
        let n1 = commit_file(&nested, "nested.txt", "nested v1\n", "nested: first");

        init_repo(&sub);
        std::fs::write(sub.join("train_network.py"), "print('training')\n").unwrap();
        git(&sub, &["add", "train_network.py"]);
        git(
            &sub,
            &[
                "submodule",
                "add",
                "-q",
                nested.to_str().unwrap(),
                "libs/nested",
            ],
        );
        git(
            &sub,
            &["commit", "-q", "-m", "sub: first, with nested submodule"],
        );
        let s1 = git(&sub, &["rev-parse", "HEAD"]);
        let s2 = commit_file(
            &sub,
            "train_network.py",
            "print('training v2')\n",
            "sub: second",
        );

        init_repo(&upstream);
        let c1 = commit_file(&upstream, "main.py", "print('v0.3.26')\n", "first release");
        git(
            &upstream,
            &["tag", "-a", "v0.3.26", "-m", "release v0.3.26"],
        );
        git(
            &upstream,
            &[
                "submodule",
                "add",
                "-q",
                sub.to_str().unwrap(),
                "sd-scripts",
            ],
        );
        git(&upstream.join("sd-scripts"), &["checkout", "-q", &s1]);
        git(&upstream, &["add", "sd-scripts"]);
        commit_file(
            &upstream,
            "main.py",
            "print('v0.3.27')\n",
            "second release, with sd-scripts",
        );
        let c2 = git(&upstream, &["rev-parse", "HEAD"]);
        git(&upstream, &["tag", "v0.3.27"]);
        git(&upstream.join("sd-scripts"), &["checkout", "-q", &s2]);
        git(&upstream, &["add", "sd-scripts"]);
        git(&upstream, &["commit", "-q", "-m", "move sd-scripts"]);
        let c3 = git(&upstream, &["rev-parse", "HEAD"]);
        git(&upstream, &["checkout", "-q", "-b", "develop"]);
        let d1 = commit_file(&upstream, "dev.py", "print('dev')\n", "develop work");
        git(&upstream, &["checkout", "-q", "main"]);

        GitFixture {
            root,
            upstream,
            sub,
            nested,
            c1,
            c2,
            c3,
            d1,
            s1,
            s2,
            n1,
        }
    }

    /// `file://` URL of the upstream.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.upstream.display())
    }

    /// Plain-path URL of the upstream.
    pub fn path_url(&self) -> String {
        self.upstream.display().to_string()
    }

    /// A path under the fixture's scratch area (not created).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.root.path().join("machine").join(name)
    }

    /// The fixture's temporary root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Adds a commit to the upstream `develop` branch; returns it.
    pub fn advance_develop(&self, content: &str) -> String {
        git(&self.upstream, &["checkout", "-q", "develop"]);
        let commit = commit_file(&self.upstream, "dev.py", content, "more develop work");
        git(&self.upstream, &["checkout", "-q", "main"]);
        commit
    }
}

/// Installs a `git` in `bin_dir` that appends each call's arguments to `log`
/// and then runs the real git; returns a PATH with it first.
pub fn logging_git(bin_dir: &Path, log: &Path) -> String {
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .expect("sh runs")
            .stdout,
    )
    .unwrap();
    std::fs::create_dir_all(bin_dir).unwrap();
    let script = bin_dir.join("git");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.trim()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap())
}
