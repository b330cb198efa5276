//! Running the `git` program: one place that sets the environment every call
//! needs (no prompts, C locale, no optional locks) and turns failures into
//! redacted [`GitError`]s.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use super::Git;
use super::error::GitError;
use super::redact::{scrub, secrets_in};

/// How many trailing lines of git's standard error an error message keeps.
const STDERR_LINES_KEPT: usize = 6;

/// What a finished git command printed.
pub(crate) struct Finished {
    pub success: bool,
    pub stdout: Vec<u8>,
    /// Standard error, already redacted.
    pub stderr: String,
    /// The arguments, redacted, for messages.
    pub args: String,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Git {
    /// Builds the command with plasma's fixed environment. `dir` is passed as
    /// `git -C dir` so that a missing directory is reported by git, and a spawn
    /// failure with `NotFound` can only mean git itself is missing.
    fn command(&self, dir: Option<&Path>, args: &[OsString]) -> Command {
        let mut command = Command::new(&self.program);
        if let Some(search_path) = &self.search_path {
            command.env("PATH", search_path);
        }
        command
            // Never ask for a user name, password or passphrase: cron has no one to answer.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS", "true")
            .env("SSH_ASKPASS_REQUIRE", "never")
            // Messages we parse must not be translated.
            .env("LC_ALL", "C")
            // Observation must not rewrite .git/index behind the user's back.
            .env("GIT_OPTIONAL_LOCKS", "0")
            // Give up on a stalled transfer instead of hanging an apply forever.
            .env("GIT_HTTP_LOW_SPEED_LIMIT", "1")
            .env("GIT_HTTP_LOW_SPEED_TIME", "60")
            // Variables inherited from a calling git (hooks, `git rebase --exec`) would
            // redirect every command to another repository.
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GIT_OBJECT_DIRECTORY")
            .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
            .env_remove("GIT_COMMON_DIR")
            .env_remove("GIT_PREFIX")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = dir {
            command.arg("-C").arg(dir);
        }
        if self.allow_file_protocol {
            command.args(["-c", "protocol.file.allow=always"]);
        }
        command.args(args);
        command
    }

    /// Runs git and returns what it printed, whether it succeeded or not.
    pub(crate) fn run_raw<S: AsRef<OsStr>>(
        &self,
        dir: Option<&Path>,
        args: &[S],
    ) -> Result<Finished, GitError> {
        let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_os_string()).collect();
        let secrets: Vec<String> = args
            .iter()
            .flat_map(|a| secrets_in(&a.to_string_lossy()))
            .collect();
        let shown_args = scrub(
            &args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            &secrets,
        );
        let output =
            crate::child::output(&mut self.command(dir, &args)).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => GitError::GitNotFound,
                _ => GitError::CannotRunGit(e.to_string()),
            })?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        Ok(Finished {
            success: output.status.success(),
            stdout: output.stdout,
            stderr: scrub(&last_lines(&stderr, STDERR_LINES_KEPT), &secrets),
            args: shown_args,
        })
    }

    /// Runs git and fails with [`GitError::CommandFailed`] unless it exits 0.
    pub(crate) fn run<S: AsRef<OsStr>>(
        &self,
        dir: Option<&Path>,
        args: &[S],
    ) -> Result<Finished, GitError> {
        let finished = self.run_raw(dir, args)?;
        if finished.success {
            Ok(finished)
        } else {
            Err(failed(dir, finished))
        }
    }
}

pub(crate) fn failed(dir: Option<&Path>, finished: Finished) -> GitError {
    GitError::CommandFailed {
        args: finished.args,
        dir: dir.map(Path::to_path_buf),
        stderr: finished.stderr,
    }
}

fn last_lines(text: &str, keep: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(keep)..].join("\n")
}
