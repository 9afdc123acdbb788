//! Captured ClientHellos shared by the benches, and a re-framer that splits one
//! across several TLS records.
//!
//! The fixtures are real captures (see `tests/fixtures/hello/README.md`): the
//! Chromium one is a modern browser hello of 2,023 bytes whose X25519MLKEM768 key
//! share alone is 1,216 bytes; curl's is a classic 517-byte hello.

// Each bench uses a subset of these.
#![allow(dead_code)]

/// Headless Chromium 156: GREASE, ECH GREASE, X25519MLKEM768 + X25519 key shares.
pub const CHROMIUM: &[u8] = include_bytes!("../../tests/fixtures/hello/chromium.bin");
/// The SNI inside [`CHROMIUM`].
pub const CHROMIUM_SNI: &str = "browser.example.com";
/// curl 7.88.1 with OpenSSL 3.0.
pub const CURL: &[u8] = include_bytes!("../../tests/fixtures/hello/curl.bin");
/// The SNI inside [`CURL`].
pub const CURL_SNI: &str = "curl.example.com";

/// Re-frames a single-record hello as `parts` handshake records of about equal
/// size, with the original record header's type and version on each. This is
/// what a client does when its hello outgrows one record, and the case HAProxy's
/// `req_ssl_sni` gets wrong.
pub fn split_into_records(hello: &[u8], parts: usize) -> Vec<u8> {
    let (header, body) = hello.split_at(5);
    let declared = usize::from(u16::from_be_bytes([header[3], header[4]]));
    assert_eq!(declared, body.len(), "expects exactly one complete record");
    let chunk = body.len().div_ceil(parts);
    let mut out = Vec::with_capacity(hello.len() + 5 * parts);
    for piece in body.chunks(chunk) {
        let len = u16::try_from(piece.len()).expect("a piece fits a record");
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

/// `hello` with its SNI `old` replaced by `new`, a name of the same length, so
/// that no length field changes and the rest of the capture stays byte for
/// byte what the client sent. Panics unless `old` occurs exactly once, as a
/// server_name entry (a host_name type byte and a two-byte length before it).
pub fn with_sni(hello: &[u8], old: &str, new: &str) -> Vec<u8> {
    assert_eq!(
        old.len(),
        new.len(),
        "the new name must be as long as the old"
    );
    let found: Vec<usize> = hello
        .windows(old.len())
        .enumerate()
        .filter(|(_, w)| *w == old.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "{old} must occur exactly once in the hello");
    let at = found[0];
    let len = u16::try_from(old.len()).expect("a short name");
    assert_eq!(
        hello[at - 3..at],
        [0, (len >> 8) as u8, len as u8],
        "{old} is not a server_name entry"
    );
    let mut out = hello.to_vec();
    out[at..at + new.len()].copy_from_slice(new.as_bytes());
    out
}
