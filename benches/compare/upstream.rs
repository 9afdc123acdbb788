//! The servers behind the proxies, run in the bench process: a TLS server that
//! answers one small HTTP request per connection, and a "replay" server that
//! speaks a tiny framed protocol after a captured ClientHello so the load
//! generator can drive the proxies without paying for TLS.
//!
//! Each server listens on two addresses (127.0.0.2 and 127.0.0.3, own ports),
//! which every proxy lists as the two servers of a least_conn pool.
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

fn serve_forever<F, Fut>(listeners: [TcpListener; 2], handle: F)
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

/// The TLS server: full handshake (no resumption), read one request head,
/// answer [`HTTP_RESPONSE`], close_notify, close.
pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Upstream {
    let (listeners, addrs) = bind_pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    serve_forever(listeners, move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let mut head = Vec::with_capacity(256);
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16_384 {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            if tls.write_all(HTTP_RESPONSE).await.is_ok() {
                let _ = tls.shutdown().await;
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

static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];

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
