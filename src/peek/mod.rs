//! Learning the hostname of a new connection without terminating anything.
//!
//! The reader accumulates bytes into one bounded buffer and hands the whole buffer
//! to a pure, incremental parser after every read. The parser answers three ways:
//! complete (with the name, or none), need more, or a typed error. Everything read
//! is kept and later replayed to the server byte for byte, so the hello may arrive
//! in any number of TCP segments and TLS records. Bounds: `timeouts.peek` for the
//! whole head, `limits.max_peek_bytes` for its size.

pub mod http;
pub mod tls;

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::name::HostName;
use crate::proxy_protocol::{self, Addresses, Parsed};

/// What a listener reads from a client before routing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Route on the SNI of a TLS ClientHello.
    Tls,
    /// Route on the `Host` header of an HTTP/1.x request head.
    Http,
    /// Read nothing: every connection goes to the default at once, so a server
    /// that speaks first (an SSH banner, an SMTP greeting) is heard at once.
    Tcp,
    /// Route UDP flows on the SNI of the ClientHello in a QUIC client's
    /// Initial packets: read by [`crate::quic`], never by this module.
    Quic,
}

/// What a listener's sockets carry: a TCP and a UDP listener may share an
/// address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::Quic => "quic",
        }
    }

    pub fn transport(self) -> Transport {
        match self {
            Protocol::Quic => Transport::Udp,
            Protocol::Tls | Protocol::Http | Protocol::Tcp => Transport::Tcp,
        }
    }

    /// A parser for one connection's head.
    fn parser(self) -> Parser {
        match self {
            // A QUIC listener has no TCP connections to read: its binds are UDP.
            Protocol::Tls | Protocol::Quic => Parser::Tls(tls::Hello::default()),
            Protocol::Http => Parser::Http,
            Protocol::Tcp => Parser::Tcp,
        }
    }
}

/// One connection's parser: TLS keeps where it stopped between reads; an HTTP
/// head is short, and httparse starts over.
enum Parser {
    Tls(tls::Hello),
    Http,
    Tcp,
}

impl Parser {
    /// Parses everything read so far (for `Tcp`, nothing is needed: complete
    /// before any byte).
    fn parse(&mut self, buf: &[u8]) -> Result<Parse, PeekError> {
        match self {
            Parser::Tls(hello) => hello.parse(buf),
            Parser::Http => http::parse(buf),
            Parser::Tcp => Ok(Parse::Complete(None)),
        }
    }
}

/// What a parser made of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// The hello / request head is complete. `None`: it carries no usable name.
    Complete(Option<HostName>),
    /// An HTTP/2 connection preface (h2c with prior knowledge): a whole, valid
    /// start that names no host, routed like an absent name.
    Http2Preface,
    /// A valid prefix: read more.
    Incomplete,
}

/// A successful peek: the name, and every byte read after any PROXY header, to be
/// replayed upstream.
#[derive(Debug)]
pub struct Peeked {
    pub name: Option<HostName>,
    /// The client opened with the HTTP/2 preface (no name: default or close).
    pub http2: bool,
    pub bytes: Vec<u8>,
}

/// Why a peek failed. The connection is closed and no server is contacted.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    #[error("no complete ClientHello or request head within the peek timeout")]
    Timeout,
    #[error("no complete ClientHello or request head within max_peek_bytes")]
    TooLarge,
    #[error("not a TLS handshake: {0}")]
    NotTls(&'static str),
    #[error("not an HTTP/1.x request: {0}")]
    NotHttp(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("client closed the connection before the hello or request head was complete")]
    ClientClosed,
    #[error("bad PROXY protocol header: {0}")]
    ProxyHeader(#[from] proxy_protocol::HeaderError),
    #[error("source address not in the listener's proxy_protocol_from")]
    ProxySource,
    #[error("read error while peeking: {0}")]
    Io(#[from] io::Error),
}

/// [`PeekError`] without its details: a label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Timeout,
    TooLarge,
    NotTls,
    NotHttp,
    Malformed,
    ClientClosed,
    ReadError,
    ProxyHeader,
    ProxySource,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Timeout,
        Reason::TooLarge,
        Reason::NotTls,
        Reason::NotHttp,
        Reason::Malformed,
        Reason::ClientClosed,
        Reason::ReadError,
        Reason::ProxyHeader,
        Reason::ProxySource,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::TooLarge => "too_large",
            Reason::NotTls => "not_tls",
            Reason::NotHttp => "not_http",
            Reason::Malformed => "malformed",
            Reason::ClientClosed => "client_closed",
            Reason::ReadError => "read_error",
            Reason::ProxyHeader => "proxy_header",
            Reason::ProxySource => "proxy_source",
        }
    }
}

impl PeekError {
    pub fn reason(&self) -> Reason {
        match self {
            PeekError::Timeout => Reason::Timeout,
            PeekError::TooLarge => Reason::TooLarge,
            PeekError::NotTls(_) => Reason::NotTls,
            PeekError::NotHttp(_) => Reason::NotHttp,
            PeekError::Malformed(_) => Reason::Malformed,
            PeekError::ClientClosed => Reason::ClientClosed,
            PeekError::Io(_) => Reason::ReadError,
            PeekError::ProxyHeader(_) => Reason::ProxyHeader,
            PeekError::ProxySource => Reason::ProxySource,
        }
    }
}

/// Reads the PROXY protocol header that must open the stream (at most
/// `max_bytes` of it). Returns the client's real addresses (`None` when the
/// header names none, as a balancer's own health check does) and the bytes that
/// followed it in the same read: the start of the client's own bytes.
pub async fn proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
) -> Result<(Option<Addresses>, Vec<u8>), PeekError> {
    let mut buf = Vec::new();
    let (addresses, len) = fill(
        stream,
        &mut buf,
        max_bytes,
        |b| match proxy_protocol::parse(b)? {
            Parsed::Complete { addresses, len } => Ok(Some((addresses, len))),
            Parsed::Incomplete => Ok(None),
        },
    )
    .await?;
    buf.drain(..len);
    Ok((addresses, buf))
}

/// Reads from `stream` until `protocol`'s parser has a complete head, never
/// taking more than `max_bytes` in all. `buf` holds what was read already (after
/// a PROXY header); for `Tcp` nothing more is read at all. The caller bounds
/// the time.
pub async fn head<S: AsyncRead + Unpin>(
    stream: &mut S,
    protocol: Protocol,
    mut buf: Vec<u8>,
    max_bytes: usize,
) -> Result<Peeked, PeekError> {
    let mut parser = protocol.parser();
    let (name, http2) = fill(stream, &mut buf, max_bytes, |b| match parser.parse(b)? {
        Parse::Complete(name) => Ok(Some((name, false))),
        Parse::Http2Preface => Ok(Some((None, true))),
        Parse::Incomplete => Ok(None),
    })
    .await?;
    Ok(Peeked {
        name,
        http2,
        bytes: buf,
    })
}

/// Most hellos fit in one read of this size; larger ones grow the buffer up to the cap.
const READ_CHUNK: usize = 2048;

/// Reads into `buf` until `parse` (which sees all of `buf` each time) returns a
/// value, never letting `buf` grow past `max_bytes`. `buf` may already hold
/// bytes (what followed a PROXY header in the same read); `parse` sees them,
/// or the empty buffer, before anything is read, so a parser that needs no
/// bytes never waits for one.
async fn fill<S: AsyncRead + Unpin, T>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_bytes: usize,
    mut parse: impl FnMut(&[u8]) -> Result<Option<T>, PeekError>,
) -> Result<T, PeekError> {
    if let Some(done) = parse(buf)? {
        return Ok(done);
    }
    loop {
        // The cap is on the length, never the capacity: we read at most `max_bytes`.
        let room = max_bytes.saturating_sub(buf.len());
        if room == 0 {
            return Err(PeekError::TooLarge);
        }
        let start = buf.len();
        buf.resize(start + room.min(READ_CHUNK), 0);
        let n = stream.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(PeekError::ClientClosed);
        }
        if let Some(done) = parse(buf)? {
            return Ok(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    use std::time::Duration;

    const HELLO: &[u8] = include_bytes!("../../tests/fixtures/hello/curl.bin");

    /// The PROXY header (when `proxied`) then the head, within `timeout`, as a
    /// connection reads them.
    async fn peek<S: AsyncRead + Unpin>(
        stream: &mut S,
        protocol: Protocol,
        max_bytes: usize,
        timeout: Duration,
        proxied: bool,
    ) -> Result<(Peeked, Option<Addresses>), PeekError> {
        let read = async {
            let (addresses, buf) = if proxied {
                proxy_header(stream, max_bytes).await?
            } else {
                (None, Vec::new())
            };
            Ok((head(stream, protocol, buf, max_bytes).await?, addresses))
        };
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or(Err(PeekError::Timeout))
    }

    #[tokio::test]
    async fn hello_in_one_byte_segments_is_assembled_and_kept_whole() {
        let (mut client, mut server) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            for b in HELLO {
                client.write_all(&[*b]).await.unwrap();
            }
            client
        });
        let (peeked, _) = peek(
            &mut server,
            Protocol::Tls,
            16384,
            Duration::from_secs(5),
            false,
        )
        .await
        .unwrap();
        assert_eq!(peeked.name.unwrap().as_str(), "curl.example.com");
        assert_eq!(peeked.bytes, HELLO);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_proxy_header_in_pieces_then_the_hello_in_the_same_read() {
        let header = b"PROXY TCP4 203.0.113.9 198.51.100.1 56324 443\r\n";
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(HELLO);
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(&bytes[..10]).await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&bytes[10..]).await.unwrap();
            client
        });
        let (peeked, proxied) = peek(
            &mut server,
            Protocol::Tls,
            16384,
            Duration::from_secs(5),
            true,
        )
        .await
        .unwrap();
        assert_eq!(
            peeked.bytes, HELLO,
            "the header is not replayed as client bytes"
        );
        assert_eq!(peeked.name.unwrap().as_str(), "curl.example.com");
        let p = proxied.unwrap();
        assert_eq!(
            (p.client.to_string(), p.local.to_string()),
            ("203.0.113.9:56324".into(), "198.51.100.1:443".into())
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_missing_proxy_header_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(HELLO).await.unwrap();
        let err = peek(
            &mut server,
            Protocol::Tls,
            16384,
            Duration::from_secs(5),
            true,
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason().as_str(), "proxy_header");
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let err = peek(
            &mut server,
            Protocol::Tls,
            16384,
            Duration::from_millis(50),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason().as_str(), "timeout");
    }

    #[tokio::test]
    async fn never_reads_past_max_peek_bytes() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        // A valid record header announcing a large hello, then filler.
        let mut big = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfb];
        big.resize(20_000, 0);
        client.write_all(&big).await.unwrap();
        let err = peek(
            &mut server,
            Protocol::Tls,
            1000,
            Duration::from_secs(5),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason().as_str(), "too_large");
        // Exactly max_bytes were consumed from the stream.
        let mut rest = vec![0; 20_000];
        drop(client);
        let mut got = 0;
        loop {
            let n = server.read(&mut rest[got..]).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(got, 19_000);
    }

    #[tokio::test]
    async fn eof_before_complete_is_client_closed() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(&HELLO[..100]).await.unwrap();
        drop(client);
        let err = peek(
            &mut server,
            Protocol::Tls,
            16384,
            Duration::from_secs(5),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason().as_str(), "client_closed");
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// Whatever the bytes and however they are segmented, the reader
            /// never takes more than `max_bytes` from the stream.
            #[test]
            fn never_reads_past_the_cap(
                bytes in vec(any::<u8>(), 0..6000),
                chunk in 1usize..1500,
                max in 512usize..4096,
                tls in any::<bool>(),
            ) {
                let protocol = if tls { Protocol::Tls } else { Protocol::Http };
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let consumed = runtime.block_on(async {
                    let (mut client, mut server) = tokio::io::duplex(chunk);
                    let total = bytes.len();
                    // The writer ends (and closes) once everything is written, so a
                    // reader waiting for more sees EOF instead of a timeout.
                    let writer = tokio::spawn(async move {
                        for piece in bytes.chunks(chunk) {
                            if client.write_all(piece).await.is_err() {
                                break;
                            }
                        }
                    });
                    let result = peek(&mut server, protocol, max, Duration::from_secs(5), false).await;
                    if let Ok((peeked, _)) = &result {
                        assert!(peeked.bytes.len() <= max);
                    }
                    let mut rest = Vec::new();
                    let (written, read) = tokio::join!(writer, server.read_to_end(&mut rest));
                    written.unwrap();
                    read.unwrap();
                    total - rest.len()
                });
                prop_assert!(consumed <= max, "consumed {consumed} > {max}");
            }
        }
    }
}
