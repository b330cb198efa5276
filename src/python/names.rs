//! Package names and versions as Python packaging compares them, and
//! redaction of credentials in URLs before anything reaches a message.

/// Normalises a distribution name as PEP 503 / `packaging` does: lowercase,
/// and every run of `-`, `_` and `.` becomes a single `-`.
///
/// `Foo_Bar.baz` -> `foo-bar-baz`. This is the key of every map this module
/// returns, so `Pillow` in a spec and `pillow` on disk are the same package.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_separator_run = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separator_run {
                out.push('-');
            }
            in_separator_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_separator_run = false;
        }
    }
    out
}

/// Whether an installed version satisfies an exact pin `==pin`, following
/// PEP 440's rules for the cases that occur with torch-style indexes:
/// release segments compare with zero padding (`2.5` == `2.5.0`), and a pin
/// without a local label accepts any local label (`2.5.1` accepts
/// `2.5.1+cpu`), while a pin with one must match it exactly.
pub fn version_matches_pin(installed: &str, pin: &str) -> bool {
    let (installed_public, installed_local) = split_local(installed);
    let (pin_public, pin_local) = split_local(pin);
    if let Some(pin_local) = pin_local
        && installed_local.map(str::to_ascii_lowercase) != Some(pin_local.to_ascii_lowercase())
    {
        return false;
    }
    public_versions_equal(installed_public, pin_public)
}

fn split_local(version: &str) -> (&str, Option<&str>) {
    let version = version.trim();
    let version = version.strip_prefix(['v', 'V']).unwrap_or(version);
    match version.split_once('+') {
        Some((public, local)) => (public, Some(local)),
        None => (version, None),
    }
}

/// Compares public versions: the leading numeric release segments with zero
/// padding, then whatever follows (pre/post/dev) case-insensitively.
fn public_versions_equal(a: &str, b: &str) -> bool {
    let (a_release, a_rest) = split_release(a);
    let (b_release, b_rest) = split_release(b);
    let len = a_release.len().max(b_release.len());
    let padded = |r: &[u64], i: usize| r.get(i).copied().unwrap_or(0);
    (0..len).all(|i| padded(&a_release, i) == padded(&b_release, i))
        && a_rest.eq_ignore_ascii_case(b_rest)
}

fn split_release(version: &str) -> (Vec<u64>, &str) {
    let mut release = Vec::new();
    let mut rest = version;
    loop {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            break;
        }
        // Numbers too large for u64 do not occur in real versions; treat as unequal-safe max.
        release.push(rest[..digits].parse().unwrap_or(u64::MAX));
        rest = &rest[digits..];
        match rest.strip_prefix('.') {
            Some(after) if after.starts_with(|c: char| c.is_ascii_digit()) => rest = after,
            _ => break,
        }
    }
    (release, rest)
}

/// The program's one URL redaction rule ([`crate::redact::redact_text`]):
/// used on every string this module produces from installer output, command
/// lines and errors.
pub use crate::redact::redact_text as redact_credentials;

/// The `user:password` part of a URL, if it has one (used to scrub those
/// exact strings from installer output in any form the installer prints).
/// The distribution name a requirement or an installer's message starts
/// with: `alpha` in `alpha>=2`, `xformers` in `xformers[a] (>=0.1) ; …`.
pub(crate) fn leading_name(requirement: &str) -> &str {
    let end = requirement
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(requirement.len());
    &requirement[..end]
}

pub(crate) fn url_userinfo(url: &str) -> Option<&str> {
    let after_scheme = &url[url.find("://")? + 3..];
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..authority_end];
    authority.rfind('@').map(|at| &authority[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_pep_503() {
        assert_eq!(normalize_name("Foo_Bar.baz"), "foo-bar-baz");
        assert_eq!(normalize_name("foo--_.bar"), "foo-bar");
        assert_eq!(normalize_name("Pillow"), "pillow");
        assert_eq!(normalize_name("zope.interface"), "zope-interface");
    }

    #[test]
    fn pins_compare_as_pep_440_does() {
        assert!(version_matches_pin("2.5.1", "2.5.1"));
        assert!(version_matches_pin("2.5.1+cpu", "2.5.1"));
        assert!(version_matches_pin("2.5", "2.5.0"));
        assert!(!version_matches_pin("2.5.1", "2.5.1+cu121"));
        assert!(!version_matches_pin("2.6.0", "2.5.1"));
        assert!(!version_matches_pin("2.5.1rc1", "2.5.1"));
        assert!(version_matches_pin("1.0RC1", "1.0rc1"));
    }

    #[test]
    fn redacts_userinfo_in_every_url() {
        let text = "Looking in https://alice:t0ken@example.com/simple and http://bob@h:8080/x, not https://pypi.org/simple";
        let redacted = redact_credentials(text);
        assert_eq!(
            redacted,
            "Looking in https://***@example.com/simple and http://***@h:8080/x, not https://pypi.org/simple"
        );
        assert_eq!(
            url_userinfo("https://alice:t0ken@example.com/simple"),
            Some("alice:t0ken")
        );
        assert_eq!(url_userinfo("https://example.com/a@b"), None);
    }
}
