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
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::name::HostName;
use crate::proxy_protocol::{self, Addresses, Parsed};

/// Which parser a listener uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Route on the SNI of a TLS ClientHello.
    Tls,
    /// Route on the `Host` header of an HTTP/1.x request head.
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Http => "http",
        }
    }

    /// Runs this protocol's parser over everything read so far.
    pub fn parse(self, buf: &[u8]) -> Result<Parse, PeekError> {
        match self {
            Protocol::Tls => tls::parse(buf),
            Protocol::Http => http::parse(buf),
        }
    }
}

/// What a parser made of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// The hello / request head is complete. `None`: it carries no usable name.
    Complete(Option<HostName>),
    /// A valid prefix: read more.
    Incomplete,
}

/// A successful peek: the name, and every byte read after any PROXY header, to be
/// replayed upstream.
#[derive(Debug)]
pub struct Peeked {
    pub name: Option<HostName>,
    pub bytes: Vec<u8>,
    /// The client's real addresses, from a PROXY header (when one was expected
    /// and it named a client).
    pub proxied: Option<Addresses>,
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

/// Reads from `stream` until `protocol`'s parser has a complete head, within
/// `timeout` for everything and `max_bytes` for the head (and, separately, for a
/// PROXY header). With `proxy_header`, a PROXY protocol header must come first.
pub async fn peek<S: AsyncRead + Unpin>(
    stream: &mut S,
    protocol: Protocol,
    max_bytes: usize,
    timeout: Duration,
    proxy_header: bool,
) -> Result<Peeked, PeekError> {
    let read = async {
        let mut buf = Vec::new();
        let mut proxied = None;
        if proxy_header {
            let (addresses, len) =
                fill(
                    stream,
                    &mut buf,
                    max_bytes,
                    |b| match proxy_protocol::parse(b)? {
                        Parsed::Complete { addresses, len } => Ok(Some((addresses, len))),
                        Parsed::Incomplete => Ok(None),
                    },
                )
                .await?;
            proxied = addresses;
            buf.drain(..len);
        }
        let name = fill(stream, &mut buf, max_bytes, |b| {
            match protocol.parse(b)? {
                Parse::Complete(name) => Ok(Some(name)),
                Parse::Incomplete => Ok(None),
            }
        })
        .await?;
        Ok(Peeked {
            name,
            bytes: buf,
            proxied,
        })
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(PeekError::Timeout))
}

/// Most hellos fit in one read of this size; larger ones grow the buffer up to the cap.
const READ_CHUNK: usize = 2048;

/// Reads into `buf` until `parse` (which sees all of `buf` each time) returns a
/// value, never letting `buf` grow past `max_bytes`. `buf` may already hold
/// bytes (what followed a PROXY header in the same read).
async fn fill<S: AsyncRead + Unpin, T>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_bytes: usize,
    parse: impl Fn(&[u8]) -> Result<Option<T>, PeekError>,
) -> Result<T, PeekError> {
    if !buf.is_empty() {
        if let Some(done) = parse(buf)? {
            return Ok(done);
        }
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

    const HELLO: &[u8] = include_bytes!("../../tests/fixtures/hello/curl.bin");

    #[tokio::test]
    async fn hello_in_one_byte_segments_is_assembled_and_kept_whole() {
        let (mut client, mut server) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            for b in HELLO {
                client.write_all(&[*b]).await.unwrap();
            }
            client
        });
        let peeked = peek(
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
        let peeked = peek(
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
        let p = peeked.proxied.unwrap();
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
                    if let Ok(peeked) = &result {
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
