//! The one rule for hiding secrets in URLs, used by every output path:
//! messages, logs, plans, state, `Debug` output, and the quoted `plasma.kdl`
//! lines of diagnostics.
//!
//! Two kinds of secret travel inside URLs:
//!
//! - **user-info**, `https://user:password@host/` or `https://TOKEN@host/`:
//!   hidden whole, because a token is as often the user name as the
//!   password. For `ssh://` only the password is hidden (`ssh://git@host` is
//!   not a secret).
//! - **query parameters** whose values are credentials. A parameter is
//!   secret when its name, compared without case, contains one of
//!   [`SECRET_PARAM_MARKERS`] or starts with one of [`SECRET_PARAM_PREFIXES`].
//!   The list comes from what real download hosts use:
//!   CivitAI documents `?token=KEY` on its download URLs; S3 presigned URLs
//!   carry `X-Amz-Signature`, `X-Amz-Credential` and `X-Amz-Security-Token`;
//!   Google Cloud Storage signed URLs carry `X-Goog-Signature` and
//!   `X-Goog-Credential` (and `Signature` in the older V2 form); Azure SAS
//!   URLs carry `sig`; CloudFront signed URLs `Signature`, `Policy` and
//!   `Key-Pair-Id`; GitLab and many APIs accept `private_token`,
//!   `access_token`, `api_key`, `apikey` or `key`. Hiding a harmless value
//!   whose name merely contains a marker (`author`) costs nothing; showing a
//!   secret cannot be undone, so the markers are matched generously.
//!
//! Values are replaced by [`MASK`]; [`mask_in_place`] instead replaces them
//! byte for byte with `*`, so spans into the original text still fit.

use std::ops::Range;

/// What a hidden secret is shown as.
pub const MASK: &str = "***";

/// A query parameter whose name contains one of these (without case) carries
/// a secret: `token` (`token`, `access_token`, `private_token`,
/// `X-Amz-Security-Token`), `key` (`key`, `api_key`, `apikey`,
/// `Key-Pair-Id`), `sig` (`sig`, `signature`, `X-Goog-Signature`), and the
/// generic `secret`, `pass`, `auth`, `credential`, `session`, `policy`.
pub const SECRET_PARAM_MARKERS: &[&str] = &[
    "token",
    "key",
    "sig",
    "secret",
    "pass",
    "auth",
    "credential",
    "session",
    "policy",
];

/// A query parameter whose name starts with one of these (without case) is
/// part of a signed cloud-storage URL: every such value is hidden.
pub const SECRET_PARAM_PREFIXES: &[&str] = &["x-amz-", "x-goog-"];

/// `url` with its secrets replaced by [`MASK`]. Text that is not a URL
/// passes through, except that a `?query` in it is still scrubbed, so a
/// mistyped URL (`htps//host/x?token=…`) shown in an error hides its token
/// too. scp-like git addresses (`git@host:org/repo`) carry no secret and pass
/// through unchanged.
pub fn redact_url(url: &str) -> String {
    let mut ranges = secret_ranges(url);
    if !url.contains("://")
        && let Some(question) = url.find('?')
    {
        let end = url[question..]
            .find(ends_url)
            .map_or(url.len(), |i| question + i);
        ranges.extend(query_secret_ranges(url, question + 1, end));
    }
    replace_ranges(url, &ranges, |_| MASK.to_string())
}

/// Every URL inside free text (a git error, an installer's output, a log
/// line) with its secrets replaced by [`MASK`].
pub fn redact_text(text: &str) -> String {
    replace_ranges(text, &secret_ranges(text), |_| MASK.to_string())
}

/// Like [`redact_text`], but each secret byte becomes `*`, so the text keeps
/// its length and every span into the original still points at the same
/// place. Used for the spec text that diagnostics quote.
pub fn mask_in_place(text: &str) -> String {
    replace_ranges(text, &secret_ranges(text), |len| "*".repeat(len))
}

fn replace_ranges(text: &str, ranges: &[Range<usize>], mask: impl Fn(usize) -> String) -> String {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for range in sorted {
        if range.start < at || range.is_empty() {
            continue;
        }
        out.push_str(&text[at..range.start]);
        out.push_str(&mask(range.len()));
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The byte ranges of every secret in every `scheme://` URL in `text`.
fn secret_ranges(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let separator = search + found;
        let scheme = trailing_scheme(&text[..separator]);
        let authority_start = separator + 3;
        let authority_end = text[authority_start..]
            .find(ends_authority)
            .map_or(text.len(), |i| authority_start + i);
        if let Some(at) = text[authority_start..authority_end].rfind('@') {
            let userinfo = authority_start..authority_start + at;
            if keeps_user_name(scheme) {
                if let Some(colon) = text[userinfo.clone()].find(':') {
                    ranges.push(userinfo.start + colon + 1..userinfo.end);
                }
            } else {
                ranges.push(userinfo);
            }
        }
        let url_end = text[authority_end..]
            .find(ends_url)
            .map_or(text.len(), |i| authority_end + i);
        if let Some(question) = text[authority_end..url_end].find('?') {
            ranges.extend(query_secret_ranges(
                text,
                authority_end + question + 1,
                url_end,
            ));
        }
        search = authority_start;
    }
    ranges
}

/// The ranges of secret values among the `name=value` pairs of the query
/// that starts at `start` (after the `?`) and ends at `end` or at a `#`.
fn query_secret_ranges(text: &str, start: usize, end: usize) -> Vec<Range<usize>> {
    let end = text[start..end].find('#').map_or(end, |i| start + i);
    let mut ranges = Vec::new();
    let mut pair_start = start;
    for pair in text[start..end].split(['&', ';']) {
        if let Some((name, value)) = pair.split_once('=')
            && !value.is_empty()
            && is_secret_param(name)
        {
            let value_start = pair_start + name.len() + 1;
            ranges.push(value_start..value_start + value.len());
        }
        pair_start += pair.len() + 1;
    }
    ranges
}

/// Whether a query parameter called `name` carries a secret (see the module
/// documentation for the list and where it comes from). `name` may be
/// percent-encoded.
pub fn is_secret_param(name: &str) -> bool {
    let name = percent_decode(name).to_ascii_lowercase();
    SECRET_PARAM_MARKERS
        .iter()
        .any(|marker| name.contains(marker))
        || SECRET_PARAM_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// User info as a URL writes it, decoded: `%40` → `@` (no `+` rule there).
pub(crate) fn decode_userinfo(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// A query parameter's name as a form encodes it: `+` is a space, `%xx` a
/// byte (percent-encoding's decoder).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) fn trailing_scheme(before: &str) -> &str {
    let start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .map_or(0, |(i, c)| i + c.len_utf8());
    &before[start..]
}

pub(crate) fn ends_authority(c: char) -> bool {
    matches!(c, '/' | '?' | '#') || ends_url(c)
}

/// Where a URL quoted in text (KDL, JSON, a shell line, a log) ends.
fn ends_url(c: char) -> bool {
    matches!(c, '\'' | '"' | '`' | '<' | '>' | '\\' | '(' | ')') || c.is_whitespace()
}

pub(crate) fn keeps_user_name(scheme: &str) -> bool {
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "ssh" | "git+ssh" | "ssh+git"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_userinfo_whole_except_an_ssh_user() {
        assert_eq!(
            redact_url("https://user:secret@example.com/org/repo.git"),
            "https://***@example.com/org/repo.git"
        );
        assert_eq!(
            redact_url("https://ghp_abc123@github.com/o/r"),
            "https://***@github.com/o/r"
        );
        assert_eq!(redact_url("https://u:p@ss@host/x"), "https://***@host/x");
        assert_eq!(redact_url("ssh://git@host/o/r"), "ssh://git@host/o/r");
        assert_eq!(
            redact_url("ssh://git:pw@host/o/r"),
            "ssh://git:***@host/o/r"
        );
    }

    #[test]
    fn hides_secret_query_values_and_keeps_the_rest() {
        assert_eq!(
            redact_url("https://civitai.com/api/download/models/1?type=Model&token=abc123"),
            "https://civitai.com/api/download/models/1?type=Model&token=***"
        );
        let signed = redact_url(
            "https://b.s3.amazonaws.com/f?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&\
             X-Amz-Signature=0a1b2c&response-content-disposition=x#frag",
        );
        assert_eq!(
            signed,
            "https://b.s3.amazonaws.com/f?X-Amz-Algorithm=***&X-Amz-Credential=***&\
             X-Amz-Signature=***&response-content-disposition=x#frag"
        );
        for name in [
            "api_key",
            "apikey",
            "key",
            "access_token",
            "sig",
            "Signature",
            "X-Goog-Signature",
            "private_token",
            "Key-Pair-Id",
            "api%5Fkey",
        ] {
            let url = format!("https://h/x?{name}=s3cr3t&n=1");
            let shown = redact_url(&url);
            assert!(!shown.contains("s3cr3t"), "{name}: {shown}");
            assert!(shown.ends_with("=***&n=1"), "{name}: {shown}");
        }
    }

    #[test]
    fn leaves_urls_without_secrets_alone() {
        for url in [
            "https://github.com/comfyanonymous/ComfyUI.git",
            "git@github.com:org/repo.git",
            "/home/me/src/repo",
            "file:///tmp/x",
            "https://h/x?download=true&type=Model",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn a_query_is_scrubbed_even_where_the_url_does_not_parse() {
        assert_eq!(redact_url("htps//h/x?token=abc"), "htps//h/x?token=***");
    }

    #[test]
    fn redacts_every_url_in_free_text() {
        let text = "fatal: unable to access 'https://u:s3cret@127.0.0.1:9/x/': refused\n\
                    also http://tok@h/y and \"https://c/d?token=t0k\" done";
        let redacted = redact_text(text);
        assert_eq!(
            redacted,
            "fatal: unable to access 'https://***@127.0.0.1:9/x/': refused\n\
             also http://***@h/y and \"https://c/d?token=***\" done"
        );
    }

    #[test]
    fn masking_in_place_keeps_every_byte_offset() {
        let text = "url \"https://alice:t0ken@host/x?a=1&token=abc\" other \"ssh://git:pw@h/r\" \
                    plain \"a@b?token=x\"";
        let masked = mask_in_place(text);
        assert_eq!(masked.len(), text.len());
        assert_eq!(
            masked,
            "url \"https://***********@host/x?a=1&token=***\" other \"ssh://git:**@h/r\" \
             plain \"a@b?token=x\""
        );
    }
}
