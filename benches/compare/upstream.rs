//! The servers behind the proxies, run in the bench process: a TLS server that
//! answers one small HTTP request per connection (or, asked for [`BULK_PATH`],
//! 1 MiB bodies on a kept-alive connection), a "replay" server that speaks a
//! tiny framed protocol after a captured ClientHello so the load generator can
//! drive the proxies without paying for TLS, and two probe servers that only
//! say who they are (the route-table case's reload probe).
//!
//! Each server listens on two addresses (127.0.0.2 and 127.0.0.3, own ports),
//! which every proxy lists as the two servers of a least_conn pool. The TLS
//! server serves the TLS-bound bulk case too, so no proxy needs a route of its
//! own for it: every proxy runs the config it has in every other case.
//!
//! Replay protocol, after the client's hello (whose length the server knows):
//! the server sends [`FLIGHT`] bytes (about a TLS 1.3 server flight with a
//! certificate), then reads 8-byte big-endian requests: 0 asks for
//! [`RESPONSE`] bytes and a close (a short exchange, like one request on a new
//! connection); n > 0 asks for n bytes, and the connection stays open for the
//! next request (kept-alive bulk and latency). EOF from the client ends it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes the replay server sends right after the hello.
pub const FLIGHT: usize = 2_500;
/// Bytes of the final answer to a `0` request.
pub const RESPONSE: usize = 1_000;
/// The answer of the TLS server to any request head.
pub const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

/// The request line that asks the TLS server for a kept-alive bulk response:
/// `GET /bulk HTTP/1.1`.
pub const BULK_PATH: &str = "/bulk";
/// Bytes of the body of each bulk response.
pub const BULK_BODY: usize = 1 << 20;

/// The head of a bulk response: kept alive, [`BULK_BODY`] bytes follow.
pub fn bulk_head() -> &'static [u8] {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HEAD.get_or_init(|| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {BULK_BODY}\r\n\r\n").into_bytes()
    })
}

/// One upstream service on two loopback addresses.
pub struct Upstream {
    pub addrs: [SocketAddr; 2],
}

async fn bind_pair() -> ([TcpListener; 2], [SocketAddr; 2]) {
    let a = TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2 (Linux routes all of 127/8 to loopback)");
    let b = TcpListener::bind("127.0.0.3:0")
        .await
        .expect("bind 127.0.0.3");
    let addrs = [
        a.local_addr().expect("local addr"),
        b.local_addr().expect("local addr"),
    ];
    ([a, b], addrs)
}

fn serve_forever<F, Fut, const N: usize>(listeners: [TcpListener; N], handle: F)
where
    F: Fn(TcpStream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    for listener in listeners {
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(handle(stream));
                    }
                    // EMFILE and friends: back off instead of spinning.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                }
            }
        });
    }
}

/// The TLS server: full handshake (no resumption), then request heads in
/// turn. `GET /bulk` is answered with [`bulk_head`] and [`BULK_BODY`] bytes and
/// the connection stays open for the next request; anything else with
/// [`HTTP_RESPONSE`], close_notify and a close.
pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Upstream {
    let (listeners, addrs) = bind_pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    serve_forever(listeners, move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let bulk_line = format!("GET {BULK_PATH} ");
            let mut head = Vec::with_capacity(256);
            let mut buf = [0u8; 1024];
            loop {
                let end = loop {
                    if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    if head.len() >= 16_384 {
                        break head.len();
                    }
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                };
                let bulk = head.starts_with(bulk_line.as_bytes());
                head.drain(..end);
                if !bulk {
                    if tls.write_all(HTTP_RESPONSE).await.is_ok() {
                        let _ = tls.shutdown().await;
                    }
                    return;
                }
                if tls.write_all(bulk_head()).await.is_err() {
                    return;
                }
                let mut left = BULK_BODY;
                while left > 0 {
                    let n = left.min(ZEROS.len());
                    if tls.write_all(&ZEROS[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                // rustls may still hold the last records: the client waits for
                // the whole body before it asks again.
                if tls.flush().await.is_err() {
                    return;
                }
            }
        }
    });
    Upstream { addrs }
}

/// The replay server for clients that send a `hello_len`-byte hello.
pub async fn start_replay(hello_len: usize) -> Upstream {
    let (listeners, addrs) = bind_pair().await;
    serve_forever(listeners, move |stream| async move {
        let _ = replay(stream, hello_len).await;
    });
    Upstream { addrs }
}

/// The two probe servers of the route-table case's reload probe, one address
/// each (127.0.0.2 says `A`, 127.0.0.3 says `B`): each reads a `hello_len`-byte
/// hello, answers its letter and closes, so a client learns in one round trip
/// which pool its name was routed to.
pub async fn start_probes(hello_len: usize) -> Upstream {
    let (listeners, addrs) = bind_pair().await;
    for (listener, letter) in listeners.into_iter().zip([b'A', b'B']) {
        serve_forever([listener], move |stream| async move {
            let _ = probe(stream, hello_len, letter).await;
        });
    }
    Upstream { addrs }
}

async fn probe(mut stream: TcpStream, hello_len: usize, letter: u8) -> std::io::Result<()> {
    // The whole hello first: closing with unread bytes would send a reset,
    // which could overtake the letter.
    let mut hello = vec![0u8; hello_len];
    stream.read_exact(&mut hello).await?;
    stream.write_all(&[letter]).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 64];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

pub static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];

async fn replay(mut stream: TcpStream, hello_len: usize) -> std::io::Result<()> {
    let mut hello = vec![0u8; hello_len];
    stream.read_exact(&mut hello).await?;
    stream.write_all(&ZEROS[..FLIGHT]).await?;
    let mut request = [0u8; 8];
    loop {
        match stream.read_exact(&mut request).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut n = u64::from_be_bytes(request);
        if n == 0 {
            stream.write_all(&ZEROS[..RESPONSE]).await?;
            stream.shutdown().await?;
            // Drain to the client's EOF so our close is not a reset.
            let mut sink = [0u8; 64];
            while stream.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        while n > 0 {
            let chunk = n.min(ZEROS.len() as u64) as usize;
            stream.write_all(&ZEROS[..chunk]).await?;
            n -= chunk as u64;
        }
    }
}
