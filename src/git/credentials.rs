//! Credentials embedded in an http(s) repository URL
//! (`https://user:token@host/org/repo.git`) reach git through its environment,
//! never its command line (which every user of the machine can read with `ps`)
//! and never `.git/config`: the URL git is given, and stores as the clone's
//! origin, has no user info, and the credentials travel as an
//! `Authorization: Basic` header scoped to that scheme, host and port
//! (`http.<url>.extraHeader`, set with `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/
//! `GIT_CONFIG_VALUE_n`, git ≥ 2.31), so no other host (a redirect, a submodule
//! elsewhere) ever receives them.

use base64::Engine;

/// The credentials of one URL, ready for git's environment.
#[derive(Clone)]
pub(crate) struct UrlCredentials {
    /// The URL without them, as git is given it.
    pub(crate) clean: String,
    /// The URL as written, redacted (`https://***@host/…`), for messages.
    pub(crate) shown: String,
    /// `http.https://host:port/.extraHeader`
    key: String,
    /// `Authorization: Basic …`
    value: String,
}

impl std::fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UrlCredentials({:?}, ***)", self.key)
    }
}

impl UrlCredentials {
    /// The environment variables that hand these credentials to git.
    pub(crate) fn env(&self) -> [(String, String); 3] {
        [
            ("GIT_CONFIG_COUNT".into(), "1".into()),
            ("GIT_CONFIG_KEY_0".into(), self.key.clone()),
            ("GIT_CONFIG_VALUE_0".into(), self.value.clone()),
        ]
    }
}

/// Splits `url` into the URL without credentials and the credentials, for
/// `http` and `https` URLs with user info; any other URL comes back unchanged.
pub(crate) fn split_credentials(url: &str) -> (String, Option<UrlCredentials>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return (url.to_string(), None);
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_string(), None);
    };
    let clean = format!("{scheme}://{host}{path}");
    if userinfo.is_empty() {
        return (clean, None);
    }
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let pair = format!(
        "{}:{}",
        crate::redact::decode_userinfo(user),
        crate::redact::decode_userinfo(password)
    );
    let value = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    let key = format!("http.{scheme}://{host}/.extraHeader");
    let credentials = UrlCredentials {
        clean: clean.clone(),
        shown: super::redact::redact_url(url),
        key,
        value,
    };
    (clean, Some(credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_and_become_a_header_for_that_host_only() {
        let (clean, creds) = split_credentials("https://alice:p%40ss@git.example.com:8443/o/r.git");
        assert_eq!(clean, "https://git.example.com:8443/o/r.git");
        let env = creds.unwrap().env();
        assert_eq!(env[1].1, "http.https://git.example.com:8443/.extraHeader");
        // base64("alice:p@ss")
        assert_eq!(env[2].1, "Authorization: Basic YWxpY2U6cEBzcw==");
    }

    #[test]
    fn urls_without_http_credentials_are_unchanged() {
        for url in [
            "https://github.com/o/r.git",
            "ssh://git@host/o/r",
            "git@host:o/r.git",
            "/srv/git/r",
        ] {
            let (clean, creds) = split_credentials(url);
            assert_eq!(clean, url);
            assert!(creds.is_none());
        }
    }
}
