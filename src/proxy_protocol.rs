//! The PROXY protocol (v1 text, v2 binary): telling a server who the client is.
//!
//! Writing: a pool with `proxy_protocol = "v1" | "v2"` gets a header before the
//! replayed ClientHello or request head, carrying the client's address and the
//! address it connected to (v2 optionally with the SNI as an `AUTHORITY` TLV).
//! Reading: a listener with `accept_proxy_protocol` sits behind another L4
//! balancer and takes the client's address from the header that balancer sends.
//! The `ppp` crate encodes and decodes; this module maps addresses and bounds.

use std::net::{IpAddr, SocketAddr};

use ppp::v2::{Builder, Command, Protocol, Type, Version};
use ppp::{v1, v2, HeaderResult, PartialResult};

/// Which header a pool sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    V1,
    /// `authority`: add the client's SNI or Host as a `PP2_TYPE_AUTHORITY` TLV.
    V2 {
        authority: bool,
    },
}

/// The addresses a connection really has: the client, and the address it
/// connected to (what a server would see without any proxy in between).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub client: SocketAddr,
    pub local: SocketAddr,
}

impl Addresses {
    /// Both addresses in one family, as both header versions require: IPv4 when
    /// both can be, else IPv6 (an IPv4 address becomes `::ffff:a.b.c.d`).
    fn same_family(self) -> (SocketAddr, SocketAddr) {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (client, local) = (canonical(self.client), canonical(self.local));
        if client.is_ipv4() == local.is_ipv4() {
            return (client, local);
        }
        let v6 = |a: SocketAddr| match a.ip() {
            IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        (v6(client), v6(local))
    }
}

/// The header to send before the client's bytes.
pub fn header(send: Send, addresses: Addresses, authority: Option<&str>) -> Vec<u8> {
    let pair = addresses.same_family();
    match send {
        Send::V1 => v1::Addresses::from(pair).to_string().into_bytes(),
        Send::V2 {
            authority: with_authority,
        } => {
            let builder =
                Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, pair);
            let builder = match authority.filter(|_| with_authority) {
                // Writing into a Vec cannot fail; a name is at most 253 bytes.
                Some(name) => builder
                    .write_tlv(Type::Authority, name.as_bytes())
                    .unwrap_or_else(|_| {
                        Builder::with_addresses(
                            Version::Two | Command::Proxy,
                            Protocol::Stream,
                            pair,
                        )
                    }),
                None => builder,
            };
            builder.build().unwrap_or_default()
        }
    }
}

/// A PROXY header that cannot be read; says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(pub &'static str);

/// What [`parse`] made of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes. `None`: it names no client (v1 `UNKNOWN`,
    /// v2 `LOCAL`, such as the balancer's own health checks).
    Complete {
        addresses: Option<Addresses>,
        len: usize,
    },
    Incomplete,
}

/// Parses a PROXY header (either version) at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    const BAD: HeaderError = HeaderError("not a valid PROXY protocol v1 or v2 header");
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    // ppp cannot tell a v1 line cut mid-address from a bad one, so wait for the
    // whole line: at most 107 bytes with its CRLF (the spec's limit).
    const V1_MAX: usize = 107;
    if b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        match buf.iter().take(V1_MAX).position(|&b| b == b'\n') {
            Some(_) => {}
            None if buf.len() < V1_MAX => return Ok(Parsed::Incomplete),
            None => return Err(HeaderError("PROXY v1 line longer than 107 bytes")),
        }
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Ok(Parsed::Incomplete);
    }
    let pair = |client: SocketAddr, local: SocketAddr| Some(Addresses { client, local });
    match result {
        HeaderResult::V1(Ok(h)) => {
            let addresses = match h.addresses {
                v1::Addresses::Tcp4(a) => pair(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                v1::Addresses::Tcp6(a) => pair(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Complete {
                addresses,
                len: h.header.len(),
            })
        }
        HeaderResult::V2(Ok(h)) => {
            let addresses = match (h.command, h.addresses) {
                (Command::Local, _) => None,
                (Command::Proxy, v2::Addresses::IPv4(a)) => pair(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                (Command::Proxy, v2::Addresses::IPv6(a)) => pair(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                (Command::Proxy, _) => {
                    return Err(HeaderError("PROXY v2 header without TCP/IP addresses"))
                }
            };
            Ok(Parsed::Complete {
                addresses,
                len: h.len(),
            })
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(BAD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(client: &str, local: &str) -> Addresses {
        Addresses {
            client: client.parse().unwrap(),
            local: local.parse().unwrap(),
        }
    }

    #[test]
    fn v1_text_for_ipv4_ipv6_and_mixed() {
        let h = |a| String::from_utf8(header(Send::V1, a, None)).unwrap();
        assert_eq!(
            h(addrs("203.0.113.9:56324", "198.51.100.1:443")),
            "PROXY TCP4 203.0.113.9 198.51.100.1 56324 443\r\n"
        );
        assert_eq!(
            h(addrs("[2001:db8::9]:56324", "[2001:db8::1]:443")),
            "PROXY TCP6 2001:db8::9 2001:db8::1 56324 443\r\n"
        );
        // An IPv4 client seen through a dual-stack socket is an IPv4 client.
        assert_eq!(
            h(addrs("[::ffff:203.0.113.9]:5", "[::ffff:198.51.100.1]:443")),
            "PROXY TCP4 203.0.113.9 198.51.100.1 5 443\r\n"
        );
        // Mixed families become IPv6, the v4 side mapped.
        assert_eq!(
            h(addrs("203.0.113.9:5", "[2001:db8::1]:443")),
            "PROXY TCP6 ::ffff:203.0.113.9 2001:db8::1 5 443\r\n"
        );
    }

    #[test]
    fn v2_round_trips_with_and_without_authority() {
        let a = addrs("203.0.113.9:56324", "198.51.100.1:443");
        for (authority, with) in [(false, None), (true, Some("app.example.com"))] {
            let bytes = header(Send::V2 { authority }, a, Some("app.example.com"));
            assert_eq!(&bytes[..12], b"\r\n\r\n\0\r\nQUIT\n");
            assert_eq!(
                parse(&bytes).unwrap(),
                Parsed::Complete {
                    addresses: Some(a),
                    len: bytes.len()
                }
            );
            let parsed = v2::Header::try_from(bytes.as_slice()).unwrap();
            let tlv = parsed
                .tlvs()
                .filter_map(Result::ok)
                .find(|t| t.kind == Type::Authority as u8);
            assert_eq!(
                tlv.map(|t| t.value.to_vec()),
                with.map(|s| s.as_bytes().to_vec())
            );
        }
        let v6 = addrs("[2001:db8::9]:1", "[2001:db8::1]:443");
        let bytes = header(Send::V2 { authority: false }, v6, None);
        assert_eq!(
            parse(&bytes).unwrap(),
            Parsed::Complete {
                addresses: Some(v6),
                len: bytes.len()
            }
        );
    }

    #[test]
    fn parsing_reports_the_header_length_and_waits_for_more() {
        let mut buf = b"PROXY TCP4 203.0.113.9 198.51.100.1 56324 443\r\n".to_vec();
        let len = buf.len();
        buf.extend_from_slice(b"\x16\x03\x01");
        let want = Parsed::Complete {
            addresses: Some(addrs("203.0.113.9:56324", "198.51.100.1:443")),
            len,
        };
        assert_eq!(parse(&buf).unwrap(), want);
        for end in 0..len {
            assert_eq!(
                parse(&buf[..end]).unwrap(),
                Parsed::Incomplete,
                "prefix {end}"
            );
        }
        let v2 = header(
            Send::V2 { authority: false },
            addrs("203.0.113.9:1", "198.51.100.1:2"),
            None,
        );
        for end in 0..v2.len() {
            assert_eq!(
                parse(&v2[..end]).unwrap(),
                Parsed::Incomplete,
                "v2 prefix {end}"
            );
        }
    }

    #[test]
    fn an_endless_v1_line_is_cut_at_107_bytes() {
        let mut line = b"PROXY TCP4 ".to_vec();
        line.resize(106, b'1');
        assert_eq!(parse(&line).unwrap(), Parsed::Incomplete);
        line.push(b'1');
        assert_eq!(
            parse(&line),
            Err(HeaderError("PROXY v1 line longer than 107 bytes"))
        );
    }

    #[test]
    fn unknown_and_local_name_no_client() {
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Parsed::Complete {
                addresses: None,
                len: 15
            }
        );
        let local = Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&local).unwrap(),
            Parsed::Complete {
                addresses: None,
                len: 16
            }
        );
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x00\x05hello",
            b"PROXY TCP4 999.0.0.1 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n",
            b"PROXY SCTP 1.2.3.4 1.2.3.4 1 2\r\n",
            &[b'P'; 200],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
