//! Binding sockets and the accept loop.
//!
//! A [`Semaphore`] bounds open client connections across all listeners: each
//! connection task owns a permit and gives it back on drop. Past the limit a new
//! connection is closed at once. A failing `accept()` (typically EMFILE: out of
//! file descriptors) backs off exponentially, from 5 ms to 1 s, instead of
//! spinning; connections already queued in the backlog wait there meanwhile.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use crate::proxy::{self, Endpoint};
use crate::shutdown::{Phase, Shutdown};

const BACKLOG: i32 = 4096;
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Binds `addr` for listening: `SO_REUSEADDR` so a restart does not wait for
/// TIME_WAIT, and `IPV6_V6ONLY` so `[::]:443` and `0.0.0.0:443` can both be bound.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// What every accept loop shares.
#[derive(Clone)]
pub struct Shared {
    pub limiter: Arc<Semaphore>,
    pub shutdown: Shutdown,
    /// Held by every connection task; the server waits for all clones to drop.
    pub open: mpsc::Sender<()>,
}

/// Accepts on `listener` until shutdown, spawning one task per connection.
pub async fn accept_loop(listener: TcpListener, endpoint: Endpoint, mut shared: Shared) {
    let mut backoff = FIRST_BACKOFF;
    let mut refused = 0u64;
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.reached(Phase::Draining) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = FIRST_BACKOFF;
                conn
            }
            Err(e) => {
                tracing::warn!(listener = %endpoint.bind, error = %e, "accept failed; pausing accept for {backoff:?}");
                tokio::select! {
                    () = shared.shutdown.reached(Phase::Draining) => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&shared.limiter).try_acquire_owned() else {
            drop(stream);
            refused += 1;
            if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                tracing::warn!(listener = %endpoint.bind, refused, "max_connections reached; closing new connections");
                last_refusal_log = Some(Instant::now());
                refused = 0;
            }
            continue;
        };
        let endpoint = endpoint.clone();
        let open = shared.open.clone();
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            proxy::handle(stream, peer, endpoint, shutdown).await;
            drop((permit, open));
        });
    }
    tracing::info!(listener = %endpoint.bind, "stopped accepting");
}
