//! Hiding credentials embedded in URLs (`https://user:token@host/...`) before any
//! text reaches a user, a log, an error or `Debug` output.

use crate::redact::{ends_authority, keeps_user_name, trailing_scheme};
/// The program's one URL redaction rule ([`crate::redact`]), under the names
/// this module has always used.
pub use crate::redact::{redact_text, redact_url};

/// The raw secrets a URL carries (what [`redact_url`] hides), so that text which
/// quotes them without the surrounding URL can be scrubbed too.
pub(crate) fn secrets_in(url: &str) -> Vec<String> {
    let Some(separator) = url.find("://") else {
        return Vec::new();
    };
    let scheme = trailing_scheme(&url[..separator]);
    let after = &url[separator + 3..];
    let authority = &after[..after.find(ends_authority).unwrap_or(after.len())];
    let Some(at) = authority.rfind('@') else {
        return Vec::new();
    };
    let userinfo = &authority[..at];
    let secret = if keeps_user_name(scheme) {
        userinfo.split_once(':').map(|(_, password)| password)
    } else {
        Some(userinfo)
    };
    secret
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut all = vec![s.to_string()];
            // The password half alone may also be quoted by a tool.
            if let Some((_, password)) = s.split_once(':')
                && !password.is_empty()
            {
                all.push(password.to_string());
            }
            all
        })
        .unwrap_or_default()
}

/// Replaces each known secret in `text`, then redacts any URL credentials left.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for secret in secrets {
        text = text.replace(secret.as_str(), "***");
    }
    redact_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_https_user_and_password() {
        assert_eq!(
            redact_url("https://user:secret@example.com/org/repo.git"),
            "https://***@example.com/org/repo.git"
        );
    }

    #[test]
    fn hides_a_token_used_as_user_name() {
        assert_eq!(
            redact_url("https://ghp_abc123@github.com/o/r"),
            "https://***@github.com/o/r"
        );
    }

    #[test]
    fn keeps_ssh_user_but_hides_password() {
        assert_eq!(redact_url("ssh://git@host/o/r"), "ssh://git@host/o/r");
        assert_eq!(
            redact_url("ssh://git:pw@host/o/r"),
            "ssh://git:***@host/o/r"
        );
    }

    #[test]
    fn leaves_urls_without_credentials_alone() {
        for url in [
            "https://github.com/comfyanonymous/ComfyUI.git",
            "git@github.com:org/repo.git",
            "/home/me/src/repo",
            "file:///tmp/x",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn redacts_every_url_in_free_text() {
        let text = "fatal: unable to access 'https://u:s3cret@127.0.0.1:9/x/': refused\n\
                    also http://tok@h/y";
        let redacted = redact_text(text);
        assert!(!redacted.contains("s3cret"), "{redacted}");
        assert!(!redacted.contains("tok@"), "{redacted}");
        assert!(
            redacted.contains("'https://***@127.0.0.1:9/x/'"),
            "{redacted}"
        );
    }

    #[test]
    fn password_with_at_sign_is_hidden_entirely() {
        assert_eq!(redact_url("https://u:p@ss@host/x"), "https://***@host/x");
    }

    #[test]
    fn scrub_removes_bare_secrets_too() {
        let secrets = secrets_in("https://user:hunter2@host/x");
        assert_eq!(
            secrets,
            vec!["user:hunter2".to_string(), "hunter2".to_string()]
        );
        assert_eq!(
            scrub("password hunter2 rejected", &secrets),
            "password *** rejected"
        );
    }
}
