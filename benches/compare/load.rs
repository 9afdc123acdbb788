//! The load generator: closed-loop connection rates (real TLS handshakes, or a
//! captured ClientHello replayed), kept-alive bulk downloads (replayed, or real
//! TLS), open-loop latency at a fixed rate, idle connections held open, and
//! the one-byte probe of the route-table case. Every loop is bounded by a
//! deadline and every operation by a timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::upstream::{bulk_head, BULK_BODY, BULK_PATH, FLIGHT, HTTP_RESPONSE, RESPONSE};

/// Longest any single operation may take before it counts as an error.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where clients connect: the proxy's listener, or the servers themselves for
/// the direct path (clients alternate between the two).
#[derive(Debug, Clone)]
pub struct Targets {
    pub tls: Vec<SocketAddr>,
    pub replay: Vec<SocketAddr>,
}

/// What a client needs for one real TLS connection.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: tokio_rustls::TlsConnector,
    pub name: rustls::pki_types::ServerName<'static>,
    pub request: Arc<[u8]>,
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One new connection with a full TLS handshake, one request with
/// `Connection: close`, the whole response read.
pub async fn tls_once(client: &TlsClient, addr: SocketAddr) -> io::Result<()> {
    let stream = connect(addr).await?;
    let mut tls = client
        .connector
        .connect(client.name.clone(), stream)
        .await?;
    tls.write_all(&client.request).await?;
    let mut response = Vec::with_capacity(HTTP_RESPONSE.len());
    tls.read_to_end(&mut response).await?;
    if response != HTTP_RESPONSE {
        return Err(io::Error::other("unexpected HTTP response"));
    }
    Ok(())
}

/// A new connection that replays `hello`, reads the server's flight, asks for
/// the short answer and reads it to the server's close.
pub async fn replay_once(hello: &[u8], addr: SocketAddr) -> io::Result<()> {
    let mut stream = open_replay(hello, addr).await?;
    stream.write_all(&0u64.to_be_bytes()).await?;
    let mut sink = [0u8; 2048];
    let mut got = 0;
    loop {
        match stream.read(&mut sink).await? {
            0 => break,
            n => got += n,
        }
    }
    if got != RESPONSE {
        return Err(io::Error::other(format!("short response: {got} bytes")));
    }
    Ok(())
}

/// Connects, replays `hello` and reads the server's flight: from here the
/// connection is proxied end to end.
pub async fn open_replay(hello: &[u8], addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = connect(addr).await?;
    stream.write_all(hello).await?;
    let mut flight = [0u8; FLIGHT];
    stream.read_exact(&mut flight).await?;
    Ok(stream)
}

/// The outcome of a closed-loop run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counted {
    pub done: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

/// `concurrency` workers repeat `op(i)` back to back for `run`; counts the
/// operations that finished in time.
pub async fn closed_loop<F, Fut>(concurrency: usize, run: Duration, op: F) -> Counted
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = io::Result<()>> + Send,
{
    let start = Instant::now();
    let deadline = start + run;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (op, done, errors) = (op.clone(), done.clone(), errors.clone());
            tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < deadline {
                    let result = timeout(OP_TIMEOUT, op(i)).await;
                    if Instant::now() <= deadline {
                        match result {
                            Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                            _ => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    i += concurrency;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    Counted {
        done: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: run,
    }
}

/// Latencies of an open-loop run.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    /// Microseconds, sorted.
    pub micros: Vec<f64>,
    pub errors: u64,
}

impl Latencies {
    pub fn quantile(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let i = ((self.micros.len() as f64 - 1.0) * q).round() as usize;
        self.micros[i]
    }
}

/// Starts `op(i)` at `rate` per second for `run`, whether or not earlier ones
/// have finished (open loop, so a slow proxy cannot slow the schedule and hide
/// its own delay). Each op is a new connection of its own, so nothing queues
/// in front of it: latency runs from the moment the op starts to its end,
/// which leaves out how late the timer woke us (up to a millisecond).
pub async fn open_loop<F, Fut>(rate: f64, run: Duration, op: F) -> Latencies
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    let count = (rate * run.as_secs_f64()).round() as usize;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            match timeout(OP_TIMEOUT, op(i)).await {
                Ok(Ok(())) => Some(began.elapsed()),
                _ => None,
            }
        }));
    }
    collect(tasks).await
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Option<Duration>>>) -> Latencies {
    let mut out = Latencies::default();
    for t in tasks {
        match t.await {
            Ok(Some(d)) => out.micros.push(d.as_secs_f64() * 1e6),
            _ => out.errors += 1,
        }
    }
    out.micros.sort_by(f64::total_cmp);
    out
}

/// Request/response latency on `conns` kept-alive replayed connections: in
/// turn, at `rate` per second overall, each asks for `RESPONSE` bytes and
/// waits for them. Measures what the relay adds to a round trip, without
/// connection setup. Latency runs from the scheduled time when the previous
/// exchange on the connection was still running then (the wait is the
/// proxy's doing), else from the actual send (the timer's lateness is ours).
pub async fn keepalive_latency(
    hello: Arc<[u8]>,
    addrs: &[SocketAddr],
    conns: usize,
    rate: f64,
    run: Duration,
) -> Latencies {
    let count = (rate * run.as_secs_f64()).round() as usize;
    let mut streams = Vec::with_capacity(conns);
    for c in 0..conns {
        match timeout(OP_TIMEOUT, open_replay(&hello, addrs[c % addrs.len()])).await {
            Ok(Ok(s)) => streams.push(s),
            _ => {
                return Latencies {
                    micros: Vec::new(),
                    errors: count as u64,
                }
            }
        }
    }
    let start = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(c, mut stream)| {
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut buf = vec![0u8; RESPONSE];
                let mut previous_end = start;
                for i in (c..count).step_by(conns) {
                    let at = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(at).await;
                    let began = if previous_end > at {
                        at
                    } else {
                        Instant::now()
                    };
                    let exchange = async {
                        stream.write_all(&(RESPONSE as u64).to_be_bytes()).await?;
                        stream.read_exact(&mut buf).await
                    };
                    let result = timeout(OP_TIMEOUT, exchange).await;
                    previous_end = Instant::now();
                    match result {
                        Ok(Ok(_)) => out.push(Some(previous_end - began)),
                        // The stream is unusable after an error: count the rest as errors.
                        _ => {
                            out.extend((i..count).step_by(conns).map(|_| None));
                            break;
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut out = Latencies::default();
    for t in tasks {
        for d in t.await.unwrap_or_default() {
            match d {
                Some(d) => out.micros.push(d.as_secs_f64() * 1e6),
                None => out.errors += 1,
            }
        }
    }
    out.micros.sort_by(f64::total_cmp);
    out
}

/// Bulk downloads on `conns` kept-alive connections: each asks for `chunk`
/// bytes, reads them, asks again, until `run` has passed. Returns the bytes
/// that arrived within `run`, and the number of failed connections.
pub async fn bulk(
    hello: Arc<[u8]>,
    addrs: &[SocketAddr],
    conns: usize,
    chunk: u64,
    run: Duration,
) -> (u64, u64) {
    let total = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::with_capacity(conns);
    for c in 0..conns {
        if let Ok(Ok(s)) = timeout(OP_TIMEOUT, open_replay(&hello, addrs[c % addrs.len()])).await {
            streams.push(s);
        }
    }
    let failed = (conns - streams.len()) as u64;
    let deadline = Instant::now() + run;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let total = total.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                'outer: while Instant::now() < deadline {
                    if stream.write_all(&chunk.to_be_bytes()).await.is_err() {
                        return 1;
                    }
                    let mut left = chunk;
                    while left > 0 {
                        let want = buf.len().min(left as usize);
                        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf[..want]));
                        match read.await {
                            Err(_) => break 'outer,
                            Ok(Ok(0)) | Ok(Err(_)) => return 1,
                            Ok(Ok(n)) => {
                                total.fetch_add(n as u64, Ordering::Relaxed);
                                left -= n as u64;
                            }
                        }
                    }
                }
                0
            })
        })
        .collect();
    let mut errors = failed;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    (total.load(Ordering::Relaxed), errors)
}

/// Opens `n` replayed connections (at most `parallel` being set up at once)
/// and returns them held open, with the number that failed.
pub async fn open_idle(
    hello: Arc<[u8]>,
    addrs: Vec<SocketAddr>,
    n: usize,
    parallel: usize,
) -> (Vec<TcpStream>, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (hello, addrs, next) = (hello.clone(), addrs.clone(), next.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                let mut errors = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        break;
                    }
                    match timeout(OP_TIMEOUT, open_replay(&hello, addrs[i % addrs.len()])).await {
                        Ok(Ok(s)) => held.push(s),
                        _ => errors += 1,
                    }
                }
                (held, errors)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    let mut errors = 0;
    for w in workers {
        if let Ok((held, e)) = w.await {
            all.extend(held);
            errors += e;
        }
    }
    (all, errors)
}

/// A TCP stream that counts the bytes crossing it both ways: under TLS, what
/// went over the wire (records, not plaintext), which is what a proxy relays.
struct Metered {
    inner: TcpStream,
    bytes: Arc<AtomicU64>,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// TLS-bound bulk: `conns` kept-alive TLS connections, each asking for
/// `GET /bulk` and reading the whole 1 MiB answer, then asking again, until
/// `run` has passed (counted from when every handshake is done). Both TLS
/// ends are in this process, on the load generator's core, so they set the
/// rate, not the proxy. Returns the bytes that crossed the wire (both ways,
/// TLS records) within `run`, and the number of failed connections.
pub async fn tls_bulk(
    client: &TlsClient,
    addrs: &[SocketAddr],
    conns: usize,
    run: Duration,
) -> (u64, u64) {
    let wire = Arc::new(AtomicU64::new(0));
    let request: Arc<[u8]> = Arc::from(
        format!(
            "GET {BULK_PATH} HTTP/1.1\r\nHost: {}\r\n\r\n",
            crate::peers::TLS_NAME
        )
        .into_bytes(),
    );
    let mut streams = Vec::with_capacity(conns);
    for c in 0..conns {
        let open = async {
            let inner = connect(addrs[c % addrs.len()]).await?;
            let metered = Metered {
                inner,
                bytes: wire.clone(),
            };
            client.connector.connect(client.name.clone(), metered).await
        };
        if let Ok(Ok(s)) = timeout(OP_TIMEOUT, open).await {
            streams.push(s);
        }
    }
    let failed = (conns - streams.len()) as u64;
    // The handshakes are not part of the window.
    wire.store(0, Ordering::Relaxed);
    let deadline = Instant::now() + run;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut tls| {
            let request = request.clone();
            tokio::spawn(async move {
                let head = bulk_head();
                let mut got_head = vec![0u8; head.len()];
                let mut buf = vec![0u8; 256 * 1024];
                while Instant::now() < deadline {
                    if tls.write_all(&request).await.is_err() || tls.flush().await.is_err() {
                        return 1;
                    }
                    match tokio::time::timeout_at(deadline, tls.read_exact(&mut got_head)).await {
                        Err(_) => return 0,
                        Ok(Err(_)) => return 1,
                        Ok(Ok(_)) if got_head != head => return 1,
                        Ok(Ok(_)) => {}
                    }
                    let mut left = BULK_BODY;
                    while left > 0 {
                        // A timeout polls the read first: with bytes always
                        // ready it would read on past the deadline.
                        if Instant::now() >= deadline {
                            return 0;
                        }
                        let want = buf.len().min(left);
                        match tokio::time::timeout_at(deadline, tls.read(&mut buf[..want])).await {
                            Err(_) => return 0,
                            Ok(Ok(0)) | Ok(Err(_)) => return 1,
                            Ok(Ok(n)) => left -= n,
                        }
                    }
                }
                0
            })
        })
        .collect();
    let mut errors = failed;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    (wire.load(Ordering::Relaxed), errors)
}

/// The route-table case's probe: a new connection that sends `hello` and
/// reads the one byte a probe server answers (`A` or `B`): which pool the
/// proxy chose for the hello's name.
pub async fn probe_once(hello: &[u8], addr: SocketAddr) -> io::Result<u8> {
    let mut stream = connect(addr).await?;
    stream.write_all(hello).await?;
    let mut letter = [0u8; 1];
    stream.read_exact(&mut letter).await?;
    Ok(letter[0])
}
