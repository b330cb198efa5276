//! Running pip, uv and python non-interactively, capturing their output, and
//! scrubbing credentials from everything that comes back.

use std::process::{Command, Stdio};

use super::PyError;
use super::names::{redact_credentials, url_userinfo};

/// How many trailing output lines an error message carries (the full output
/// is in the returned log, which the engine writes to `.plasma/logs/`).
const ERROR_TAIL_LINES: usize = 25;

/// Removes secrets from text: every `user:pass@` in a URL, plus the literal
/// credential strings of the URLs in play (an installer may print them in
/// another shape, e.g. percent-decoded, outside a URL).
#[derive(Default, Clone)]
pub(crate) struct Scrubber {
    literals: Vec<String>,
}

impl Scrubber {
    pub(crate) fn for_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> Self {
        let mut literals = Vec::new();
        for userinfo in urls.into_iter().filter_map(url_userinfo) {
            let parts =
                std::iter::once(userinfo).chain(userinfo.split_once(':').map(|(_, pass)| pass));
            for part in parts {
                for form in [part.to_string(), crate::redact::decode_userinfo(part)] {
                    // Very short literals would scrub ordinary words; the
                    // URL-shaped redaction still covers them inside URLs.
                    if form.len() >= 4 && !literals.contains(&form) {
                        literals.push(form);
                    }
                }
            }
        }
        // Longest first, so a password is not half-replaced inside `user:password`.
        literals.sort_by_key(|l| std::cmp::Reverse(l.len()));
        Scrubber { literals }
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = redact_credentials(text);
        for literal in &self.literals {
            if out.contains(literal.as_str()) {
                out = out.replace(literal.as_str(), "***");
            }
        }
        out
    }
}

/// A finished subprocess: its (scrubbed) command line and output.
pub(crate) struct Finished {
    pub command: String,
    pub output: String,
    pub stdout: String,
}

/// Environment every installer subprocess gets: never prompt (a prompt would
/// hang `plasma apply` under cron), never phone home for a version check.
pub(crate) fn non_interactive(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .env("PIP_NO_INPUT", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_COLOR", "1")
        // A `git+https://` requirement must fail, not wait for a password.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("UV_NO_PROGRESS", "1")
        .env("NO_COLOR", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
}

/// The command line as shown in logs and errors (scrubbed).
pub(crate) fn describe(cmd: &Command, scrubber: &Scrubber) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    scrubber.scrub(&words.join(" "))
}

/// Runs `cmd` to completion with its output captured; a non-zero exit is a
/// [`PyError::CommandFailed`] carrying the tail of the output.
pub(crate) fn run(cmd: &mut Command, scrubber: &Scrubber) -> Result<Finished, PyError> {
    let command = describe(cmd, scrubber);
    let output = crate::child::output(non_interactive(cmd)).map_err(|e| PyError::SpawnFailed {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    let stdout = scrubber.scrub(&String::from_utf8_lossy(&output.stdout));
    let stderr = scrubber.scrub(&String::from_utf8_lossy(&output.stderr));
    let mut combined = stdout.clone();
    if !stderr.is_empty() {
        if !combined.is_empty() && !combined.ends_with('\n') {
            combined.push('\n');
        }
        combined.push_str(&stderr);
    }
    if !output.status.success() {
        return Err(PyError::CommandFailed {
            command,
            status: output.status.to_string(),
            output_tail: tail(&combined, ERROR_TAIL_LINES),
        });
    }
    Ok(Finished {
        command,
        output: combined,
        stdout,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_decoded_and_bare_credentials() {
        let scrubber = Scrubber::for_urls(["https://alice:p%40ssw0rd@example.com/simple"]);
        let text = "User for example.com: alice:p@ssw0rd\nurl http://alice:p%40ssw0rd@example.com/simple\npassword p@ssw0rd";
        let scrubbed = scrubber.scrub(text);
        assert!(!scrubbed.contains("ssw0rd"), "{scrubbed}");
        assert!(
            scrubbed.contains("http://***@example.com/simple"),
            "{scrubbed}"
        );
    }

    #[test]
    fn failed_command_error_carries_tail_of_output() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo first; echo 'https://u:secretpw@h/x' >&2; exit 3",
        ]);
        let err = run(&mut cmd, &Scrubber::default())
            .err()
            .expect("exit 3 must fail");
        let message = err.to_string();
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains("https://***@h/x"), "{message}");
        assert!(!message.contains("secretpw"), "{message}");
    }
}
