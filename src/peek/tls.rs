//! ClientHello → SNI.
//!
//! tls-parser decodes; this module only assembles handshake records until the
//! ClientHello message is complete. tls-parser's own `parse_tls_plaintext` rejects
//! a hello split across records even when every byte is there, so we loop over raw
//! records, join their payloads and parse the joined message once it is whole.
//! Extensions are framed here (type, length) and only the `server_name` body is
//! handed to tls-parser, so an extension tls-parser does not know, or decodes
//! stricter than the peer, cannot hide the SNI.

use tls_parser::{
    parse_tls_extension_sni_content, parse_tls_message_handshake, parse_tls_raw_record, Err,
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, TlsRecordType,
};

use super::{Parse, PeekError};
use crate::name::HostName;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXTENSION_SERVER_NAME: u16 = 0x0000;
/// RFC 8446 5.1: a plaintext record carries at most 2^14 bytes.
const MAX_PLAINTEXT: usize = 1 << 14;

/// The fatal `unrecognized_name` alert (RFC 6066) sent when no route matches.
pub const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// The fatal `access_denied` alert (RFC 8446 6.2) sent when a route's
/// allow/deny refuses the client.
pub const ACCESS_DENIED_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

/// Parses `buf` from scratch: [`Hello::parse`] on a fresh state.
pub fn parse(buf: &[u8]) -> Result<Parse, PeekError> {
    Hello::default().parse(buf)
}

/// A ClientHello being read, as nginx's `ssl_preread` reads one: each call
/// walks only the records completed since the last, so a hello that arrives in
/// many pieces is not re-walked and re-joined from its start on every read.
#[derive(Debug, Default)]
pub struct Hello {
    /// Bytes at the start of the buffer that are whole records, walked already.
    walked: usize,
    /// Their handshake payloads, joined: empty until a hello spans records.
    joined: Vec<u8>,
}

impl Hello {
    /// Parses the bytes read so far from a TLS client: `buf` is everything read,
    /// and grows between calls (what was passed before is its unchanged start).
    ///
    /// `Complete(None)` means a valid ClientHello without a usable host name (no
    /// SNI extension, an empty one, or one that is not a hostname, such as raw
    /// bytes).
    pub fn parse(&mut self, buf: &[u8]) -> Result<Parse, PeekError> {
        // Decide "not TLS" from the first bytes, before waiting for a whole record.
        match buf {
            [] => return Ok(Parse::Incomplete),
            [first, ..] if *first != RECORD_HANDSHAKE => {
                return Err(PeekError::NotTls(
                    "first byte is not a TLS handshake record",
                ))
            }
            [_, major, ..] if *major != 0x03 => {
                return Err(PeekError::NotTls("record version is not TLS 1.x"))
            }
            _ => {}
        }
        let mut rest = buf.get(self.walked..).unwrap_or_default();
        while !rest.is_empty() {
            if let [_, _, _, hi, lo, ..] = *rest {
                if usize::from(u16::from_be_bytes([hi, lo])) > MAX_PLAINTEXT {
                    return Err(PeekError::Malformed("TLS record longer than 2^14 bytes"));
                }
            }
            let record = match parse_tls_raw_record(rest) {
                Ok((after, record)) => {
                    self.walked += rest.len() - after.len();
                    rest = after;
                    record
                }
                Err(Err::Incomplete(_)) => return Ok(Parse::Incomplete),
                Err(_) => return Err(PeekError::Malformed("TLS record header")),
            };
            if record.hdr.record_type != TlsRecordType::Handshake {
                return Err(PeekError::Malformed(
                    "ClientHello interleaved with a non-handshake record",
                ));
            }
            // The common case, a hello in one record, parses straight from the buffer.
            let message = if self.joined.is_empty() {
                record.data
            } else {
                self.joined.extend_from_slice(record.data);
                &self.joined
            };
            if let complete @ Parse::Complete(_) = handshake(message)? {
                return Ok(complete);
            }
            if self.joined.is_empty() {
                self.joined.extend_from_slice(record.data);
            }
        }
        Ok(Parse::Incomplete)
    }
}

/// Reads a bare handshake stream, without the record layer: what QUIC's CRYPTO
/// stream carries (RFC 9001 §4). `Incomplete` until the first message, which
/// must be a ClientHello, is whole; then its name, as [`Hello::parse`] reads it
/// from records.
pub fn handshake(stream: &[u8]) -> Result<Parse, PeekError> {
    match complete_message_len(stream)? {
        Some(len) => client_hello_name(&stream[..len]).map(Parse::Complete),
        None => Ok(Parse::Incomplete),
    }
}

/// `Some(total length)` once `message` holds a whole handshake message.
fn complete_message_len(message: &[u8]) -> Result<Option<usize>, PeekError> {
    let [kind, a, b, c, ..] = *message else {
        return Ok(None);
    };
    if kind != HANDSHAKE_CLIENT_HELLO {
        return Err(PeekError::NotTls(
            "first handshake message is not a ClientHello",
        ));
    }
    let len = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
    Ok((message.len() >= len).then_some(len))
}

fn client_hello_name(message: &[u8]) -> Result<Option<HostName>, PeekError> {
    let hello = match parse_tls_message_handshake(message) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) => hello,
        _ => return Err(PeekError::Malformed("ClientHello")),
    };
    let Some(mut extensions) = hello.ext else {
        return Ok(None);
    };
    while !extensions.is_empty() {
        let [t0, t1, l0, l1, ref body @ ..] = *extensions else {
            return Err(PeekError::Malformed("ClientHello extension header"));
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let Some((data, after)) = body.split_at_checked(len) else {
            return Err(PeekError::Malformed("ClientHello extension length"));
        };
        if u16::from_be_bytes([t0, t1]) == EXTENSION_SERVER_NAME {
            return server_name(data);
        }
        extensions = after;
    }
    Ok(None)
}

/// The first `host_name` entry of a server_name extension. RFC 6066 allows one name
/// per type; should a client send several, the first wins, as in OpenSSL.
fn server_name(data: &[u8]) -> Result<Option<HostName>, PeekError> {
    match parse_tls_extension_sni_content(data) {
        Ok((_, TlsExtension::SNI(names))) => Ok(names
            .iter()
            .find(|(kind, _)| *kind == SNIType::HostName)
            .and_then(|(_, name)| HostName::parse(name))),
        _ => Err(PeekError::Malformed("server_name extension")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const CURL: &[u8] = include_bytes!("../../tests/fixtures/hello/curl.bin");
    const OPENSSL: &[u8] = include_bytes!("../../tests/fixtures/hello/openssl_s_client.bin");
    const RUSTLS: &[u8] = include_bytes!("../../tests/fixtures/hello/rustls.bin");
    const NO_SNI: &[u8] = include_bytes!("../../tests/fixtures/hello/no_sni.bin");

    fn name_of(buf: &[u8]) -> Option<String> {
        match parse(buf).unwrap() {
            Parse::Complete(name) => name.map(|n| n.to_string()),
            other => panic!("{other:?}"),
        }
    }

    /// Builds a minimal ClientHello handshake message with the given server_name
    /// entries (type, bytes) and an unrelated extension before it.
    pub(crate) fn hello_message(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        let mut ext = Vec::new();
        // An extension type nothing knows, which must be skipped.
        ext.extend_from_slice(&[0xfe, 0xed, 0x00, 0x03, 1, 2, 3]);
        if !names.is_empty() {
            let mut list = Vec::new();
            for (kind, name) in names {
                list.push(*kind);
                list.extend_from_slice(&(name.len() as u16).to_be_bytes());
                list.extend_from_slice(name);
            }
            let mut sni = (list.len() as u16).to_be_bytes().to_vec();
            sni.extend_from_slice(&list);
            ext.extend_from_slice(&[0x00, 0x00]);
            ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
            ext.extend_from_slice(&sni);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Wraps a handshake message into TLS records cut at the given payload sizes
    /// (the last record takes what is left).
    pub(crate) fn records(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = message;
        for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let (chunk, after) = rest.split_at(cut.min(rest.len()));
            out.extend_from_slice(&[RECORD_HANDSHAKE, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
            rest = after;
            if rest.is_empty() {
                break;
            }
        }
        out
    }

    #[test]
    fn real_hellos_from_curl_openssl_and_rustls() {
        assert_eq!(name_of(CURL).as_deref(), Some("curl.example.com"));
        assert_eq!(name_of(OPENSSL).as_deref(), Some("openssl.example.com"));
        assert_eq!(name_of(RUSTLS).as_deref(), Some("rustls.example.com"));
        assert_eq!(name_of(NO_SNI), None);
    }

    #[test]
    fn bare_handshake_stream_needs_the_whole_message() {
        let message = &CURL[5..];
        for end in 0..message.len() {
            assert_eq!(handshake(&message[..end]).unwrap(), Parse::Incomplete);
        }
        let mut stream = message.to_vec();
        assert_eq!(
            handshake(&stream).unwrap(),
            Parse::Complete(HostName::parse(b"curl.example.com"))
        );
        // What follows the hello in the stream is not read.
        stream.extend_from_slice(&[0xff; 9]);
        assert_eq!(
            handshake(&stream).unwrap(),
            Parse::Complete(HostName::parse(b"curl.example.com"))
        );
        assert_eq!(
            handshake(&[0x02, 0, 0, 0]).unwrap_err().reason().as_str(),
            "not_tls"
        );
    }

    #[test]
    fn every_proper_prefix_of_a_real_hello_needs_more() {
        for fixture in [CURL, OPENSSL, RUSTLS, NO_SNI] {
            for end in 0..fixture.len() {
                assert_eq!(
                    parse(&fixture[..end]).unwrap(),
                    Parse::Incomplete,
                    "prefix {end}"
                );
            }
        }
    }

    #[test]
    fn hello_split_over_three_records() {
        let msg = hello_message(&[(0, b"three.example.com")]);
        let buf = records(&msg, &[3, 40]);
        assert_eq!(buf.len(), msg.len() + 15);
        assert_eq!(name_of(&buf).as_deref(), Some("three.example.com"));
        for end in 0..buf.len() {
            assert_eq!(parse(&buf[..end]).unwrap(), Parse::Incomplete);
        }
    }

    #[test]
    fn one_state_fed_byte_by_byte_walks_each_record_once() {
        let msg = hello_message(&[(0, b"three.example.com")]);
        let buf = records(&msg, &[3, 40]);
        let mut hello = Hello::default();
        for end in 0..buf.len() {
            assert_eq!(hello.parse(&buf[..end]).unwrap(), Parse::Incomplete);
        }
        // The first two records (3 + 40 bytes of payload) were walked and
        // joined before the last one completed.
        assert_eq!(hello.walked, 5 + 3 + 5 + 40);
        assert_eq!(hello.joined.len(), 43);
        assert_eq!(
            hello.parse(&buf).unwrap(),
            Parse::Complete(HostName::parse(b"three.example.com"))
        );
        // A real hello in one record is never copied.
        let mut hello = Hello::default();
        for end in 0..CURL.len() {
            assert_eq!(hello.parse(&CURL[..end]).unwrap(), Parse::Incomplete);
        }
        assert_eq!(hello.walked, 0);
        assert!(hello.joined.is_empty());
        assert_eq!(
            hello.parse(CURL).unwrap(),
            Parse::Complete(HostName::parse(b"curl.example.com"))
        );
    }

    #[test]
    fn real_hello_resplit_into_records_at_every_offset() {
        let msg = &CURL[5..];
        for cut in 1..msg.len() {
            assert_eq!(
                name_of(&records(msg, &[cut])).as_deref(),
                Some("curl.example.com")
            );
        }
    }

    #[test]
    fn several_server_names_first_host_name_wins() {
        let msg = hello_message(&[
            (7, b"other-type"),
            (0, b"first.example.com"),
            (0, b"second.example.com"),
        ]);
        assert_eq!(
            name_of(&records(&msg, &[])).as_deref(),
            Some("first.example.com")
        );
    }

    #[test]
    fn empty_or_invalid_sni_is_an_absent_name() {
        assert_eq!(name_of(&records(&hello_message(&[(0, b"")]), &[])), None);
        assert_eq!(
            name_of(&records(&hello_message(&[(0, b"a\0b.example.com")]), &[])),
            None
        );
        assert_eq!(name_of(&records(&hello_message(&[]), &[])), None);
    }

    #[test]
    fn sni_is_lowercased_and_trailing_dot_dropped() {
        let msg = hello_message(&[(0, b"MiXeD.Example.COM.")]);
        assert_eq!(
            name_of(&records(&msg, &[])).as_deref(),
            Some("mixed.example.com")
        );
    }

    #[test]
    fn not_tls_is_decided_on_the_first_bytes() {
        assert_eq!(parse(b"G").unwrap_err().reason().as_str(), "not_tls");
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n").unwrap_err().reason().as_str(),
            "not_tls"
        );
        assert_eq!(
            parse(&[0x16, 0x02]).unwrap_err().reason().as_str(),
            "not_tls"
        );
        // A handshake record that is not a ClientHello (a ServerHello).
        assert_eq!(
            parse(&[0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0, 0, 0])
                .unwrap_err()
                .reason()
                .as_str(),
            "not_tls"
        );
    }

    #[test]
    fn malformed_hellos_are_rejected_cleanly() {
        // Record longer than TLS allows (2^14 + 1).
        assert_eq!(
            parse(&[0x16, 0x03, 0x01, 0x40, 0x01, 0x01])
                .unwrap_err()
                .reason()
                .as_str(),
            "malformed"
        );
        // An alert record between two hello fragments.
        let msg = hello_message(&[(0, b"x.example.com")]);
        let mut buf = records(&msg[..10], &[]);
        buf.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
        assert_eq!(parse(&buf).unwrap_err().reason().as_str(), "malformed");
        // Complete message whose body is garbage.
        let buf = records(&[0x01, 0x00, 0x00, 0x03, 0xff, 0xff, 0xff], &[]);
        assert_eq!(parse(&buf).unwrap_err().reason().as_str(), "malformed");
        // A server_name list claiming more bytes than its extension holds.
        let mut msg = hello_message(&[(0, b"x.example.com")]);
        let at = msg
            .windows(6)
            .position(|w| w == [0x00, 0x00, 0x00, 0x12, 0x00, 0x10])
            .unwrap();
        msg[at + 5] = 0x11;
        assert_eq!(
            parse(&records(&msg, &[])).unwrap_err().reason().as_str(),
            "malformed"
        );
        // An extension header cut short at the end of the block.
        let mut msg = hello_message(&[]);
        msg.extend_from_slice(&[0x00]);
        let n = msg.len();
        let len = (n - 4) as u32;
        msg[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
        let ext_len_at = n - 1 - 7 - 2;
        msg[ext_len_at + 1] += 1;
        assert_eq!(
            parse(&records(&msg, &[])).unwrap_err().reason().as_str(),
            "malformed"
        );
    }

    #[test]
    fn unrecognized_name_alert_is_fatal_112() {
        assert_eq!(UNRECOGNIZED_NAME_ALERT[5], 2);
        assert_eq!(UNRECOGNIZED_NAME_ALERT[6], 112);
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// Lowercase DNS names: 1 to 5 labels of 1 to 20 characters.
        fn hostname() -> impl Strategy<Value = String> {
            "[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?){0,4}"
        }

        proptest! {
            /// For any name and any way of cutting the hello into TLS records and
            /// the bytes into TCP segments: every segment boundary before the end
            /// needs more, and the whole yields exactly the name built in.
            #[test]
            fn any_sni_any_record_and_segment_cuts(
                name in hostname(),
                record_cuts in vec(1usize..80, 0..8),
                segment_cuts in vec(1usize..200, 0..12),
            ) {
                let msg = hello_message(&[(0, name.as_bytes())]);
                let buf = records(&msg, &record_cuts);
                // One state fed the growing buffer, as a connection reads it.
                let mut hello = Hello::default();
                let mut end = 0;
                for cut in segment_cuts {
                    end += cut;
                    if end >= buf.len() {
                        break;
                    }
                    prop_assert_eq!(parse(&buf[..end]).unwrap(), Parse::Incomplete);
                    prop_assert_eq!(hello.parse(&buf[..end]).unwrap(), Parse::Incomplete);
                }
                let want = HostName::parse(name.as_bytes()).unwrap();
                prop_assert_eq!(parse(&buf).unwrap(), Parse::Complete(Some(want.clone())));
                prop_assert_eq!(hello.parse(&buf).unwrap(), Parse::Complete(Some(want)));
            }

            /// Real hellos cut into records anywhere keep their SNI.
            #[test]
            fn real_hellos_split_anywhere(cuts in vec(1usize..600, 0..6), which in 0usize..3) {
                let (hello, name) = [(CURL, "curl.example.com"), (OPENSSL, "openssl.example.com"), (RUSTLS, "rustls.example.com")][which];
                let buf = records(&hello[5..], &cuts);
                prop_assert_eq!(parse(&buf).unwrap(), Parse::Complete(HostName::parse(name.as_bytes())));
            }

            /// Any bytes get an answer, never a panic; a name returned is valid.
            #[test]
            fn any_bytes_get_an_answer(bytes in vec(any::<u8>(), 0..2048)) {
                if let Ok(Parse::Complete(Some(name))) = parse(&bytes) {
                    prop_assert_eq!(HostName::parse(name.as_str().as_bytes()), Some(name));
                }
            }

            /// Same, for bytes that start like a TLS handshake record.
            #[test]
            fn any_bytes_after_a_handshake_header(len in any::<u16>(), body in vec(any::<u8>(), 0..2048)) {
                let mut bytes = vec![0x16, 0x03, 0x01];
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(&body);
                let _ = parse(&bytes);
            }
        }
    }
}
