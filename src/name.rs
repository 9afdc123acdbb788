//! The hostname a client asked for, as a validated domain type.
//!
//! Every name that reaches the router went through [`HostName::parse`]: lowercase,
//! no trailing dot, only the bytes a DNS name or an IP literal can hold. Anything
//! else (NUL, spaces, non-ASCII, over-long names) is not a hostname and is treated
//! by the caller as an absent name, so client input can never smuggle an address or
//! a pattern into routing.

use std::fmt;

/// Longest hostname we accept, as in DNS (RFC 1035: 253 characters in text form).
pub const MAX_LEN: usize = 253;
/// Longest label (RFC 1035: 63 octets).
pub const MAX_LABEL: usize = 63;

/// A lowercase hostname without trailing dot, safe to log and to match on.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(Box<str>);

impl HostName {
    /// Normalises and validates `raw`: a DNS-style name of ASCII letters, digits,
    /// `-`, `_` and `.` (labels of 1 to 63 bytes), or a bracketed IPv6 literal such as
    /// `[2001:db8::1]` (what an HTTP `Host` carries); at most [`MAX_LEN`] bytes. One
    /// trailing dot is dropped (`example.com.` is `example.com`). Returns `None` for
    /// anything else.
    pub fn parse(raw: &[u8]) -> Option<HostName> {
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if raw.is_empty() || raw.len() > MAX_LEN {
            return None;
        }
        let ok = match raw.strip_prefix(b"[").and_then(|r| r.strip_suffix(b"]")) {
            Some(v6) => {
                !v6.is_empty()
                    && v6
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            }
            None => {
                raw.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    && raw
                        .split(|&b| b == b'.')
                        .all(|label| (1..=MAX_LABEL).contains(&label.len()))
            }
        };
        if !ok {
            return None;
        }
        // Validated ASCII above, so this conversion cannot fail.
        let s = std::str::from_utf8(raw).ok()?.to_ascii_lowercase();
        Some(HostName(s.into_boxed_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The proper parent suffixes, longest first: `a.b.example.com` yields
    /// `b.example.com`, `example.com`, `com`. Used for `*.suffix` routes.
    pub fn parent_suffixes(&self) -> impl Iterator<Item = &str> {
        let s = self.as_str();
        s.match_indices('.').map(move |(i, _)| &s[i + 1..])
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Option<String> {
        HostName::parse(s.as_bytes()).map(|h| h.to_string())
    }

    #[test]
    fn lowercases_and_drops_one_trailing_dot() {
        assert_eq!(
            name("Rancher.Example.COM.").as_deref(),
            Some("rancher.example.com")
        );
        assert_eq!(name("a.example.com..").as_deref(), None);
    }

    #[test]
    fn rejects_bytes_no_hostname_can_hold() {
        for bad in [
            "",
            ".",
            "a b",
            "a\0b",
            "exämple.com",
            "a/b",
            ".a",
            "a..b",
            "a%2f",
        ] {
            assert_eq!(name(bad), None, "{bad:?}");
        }
        assert_eq!(
            name(&format!("{}.com", "a".repeat(250))),
            None,
            "over 253 bytes"
        );
        let long = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(long.len(), 253);
        assert!(name(&long).is_some());
        assert_eq!(
            name(&format!("{}.com", "a".repeat(64))),
            None,
            "label over 63 bytes"
        );
        // IDNs arrive as punycode (ASCII) and are fine; raw UTF-8 is not a hostname.
        assert_eq!(
            name("xn--bcher-kva.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(name("bücher.example"), None);
    }

    #[test]
    fn keeps_ip_literals() {
        assert_eq!(name("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(name("192.0.2.7").as_deref(), Some("192.0.2.7"));
    }

    #[test]
    fn parent_suffixes_longest_first() {
        let h = HostName::parse(b"a.b.example.com").unwrap();
        let v: Vec<_> = h.parent_suffixes().collect();
        assert_eq!(v, ["b.example.com", "example.com", "com"]);
    }
}
