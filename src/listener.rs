//! Listening sockets, the accept loop, and the connection limit.
//!
//! [`Listeners`] owns one accept task per bind address and can add and remove them
//! while others keep running, which is what a reload needs: an address present
//! before and after is never closed. Each accepted connection reads the current
//! config once ([`Shared::config`]) and keeps that snapshot to its end.
//!
//! [`Connections`] counts open client connections against `max_connections` with
//! a [`Slot`](crate::connections::Slot) held by each connection task and released on drop. Past the limit a
//! new connection is closed at once. A failing `accept()` (typically EMFILE) backs
//! off exponentially, from 5 ms to 1 s, instead of spinning.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::connections::Connections;
use crate::handover::{self, Inherited};
use crate::metrics::{ListenerStats, Metrics};
use crate::outcome::Outcome;
use crate::peek::Protocol;
use crate::proxy::{self, Endpoint};
use crate::resources::{self, Operation, Resource};
use crate::shutdown::{Phase, Shutdown};
use crate::systemd;
use crate::throttle::Throttle;

const BACKLOG: i32 = 4096;
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A bind address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {addr}: {error}{}", hint(.error))]
pub struct BindError {
    pub addr: SocketAddr,
    pub error: io::Error,
}

fn hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
        io::ErrorKind::AddrInUse => " (another process listens there)",
        _ => "",
    }
}

/// Binds `addr` for listening: `SO_REUSEADDR` so a restart does not wait for
/// TIME_WAIT, and `IPV6_V6ONLY` so `[::]:443` and `0.0.0.0:443` can both be bound.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        TcpListener::from_std(socket.into())
    };
    bind().map_err(|error| BindError { addr, error })
}

/// The socket handed over for `addr` (see [`crate::handover`]) if there is
/// one, else a new one from [`bind`].
pub fn adopt_or_bind(
    addr: SocketAddr,
    inherited: &mut Inherited,
) -> Result<TcpListener, BindError> {
    match inherited.take(addr) {
        Some(socket) => {
            let adopt = || {
                socket.set_nonblocking(true)?;
                TcpListener::from_std(socket)
            };
            adopt().map_err(|error| BindError { addr, error })
        }
        None => bind(addr),
    }
}

/// `TCP_DEFER_ACCEPT` on (one second) or off; see [`Listeners::tune`].
fn defer_accept(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let seconds: libc::c_int = on.into();
    // SAFETY: setsockopt reads a c_int of the size passed.
    let done = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&seconds).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What every accept loop shares.
#[derive(Clone)]
pub struct Shared {
    /// The current config; replaced whole by a reload.
    pub config: Arc<ArcSwap<Config>>,
    pub connections: Arc<Connections>,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
}

/// The running accept loops, one per bind address.
pub struct Listeners {
    running: HashMap<SocketAddr, Running>,
    shared: Shared,
}

/// One accept loop and its socket, which is shared so that the socket can be
/// handed on ([`Listeners::sockets`]) while the loop accepts on it.
struct Running {
    task: JoinHandle<()>,
    socket: Arc<TcpListener>,
}

impl Listeners {
    pub fn new(shared: Shared) -> Listeners {
        Listeners {
            running: HashMap::new(),
            shared,
        }
    }

    /// Binds every address of `config` that is not running yet, without starting
    /// anything; a socket in `inherited` is taken instead of binding anew. On
    /// error the sockets bound so far are closed again.
    pub fn bind_missing(
        &self,
        config: &Config,
        inherited: &mut Inherited,
    ) -> Result<Vec<(SocketAddr, TcpListener)>, BindError> {
        config
            .binds()
            .filter(|addr| !self.running.contains_key(addr))
            .map(|addr| adopt_or_bind(addr, inherited).map(|socket| (addr, socket)))
            .collect()
    }

    /// Starts accepting on sockets from [`Listeners::bind_missing`].
    pub fn start(&mut self, bound: Vec<(SocketAddr, TcpListener)>) {
        for (addr, socket) in bound {
            tracing::info!(listener = %addr, "listening");
            let stats = self.shared.metrics.listener(addr);
            let socket = Arc::new(socket);
            let task = tokio::spawn(accept_loop(
                Arc::clone(&socket),
                addr,
                stats,
                self.shared.clone(),
            ));
            self.running.insert(addr, Running { task, socket });
        }
    }

    /// Sets what depends on the listener's protocol on every running socket;
    /// called after each start and reload, as a reload may change it.
    ///
    /// Where the client speaks first (TLS, HTTP), `TCP_DEFER_ACCEPT` makes
    /// the kernel hand over a connection only once its first bytes are in:
    /// the first read finds the hello, which saves a read that would find
    /// nothing and the wake-up it waits for. A client silent for about a
    /// second is handed over anyway, and `timeouts.peek` applies as before.
    /// Plain TCP is left alone: there the server may speak first.
    pub fn tune(&self, config: &Config) {
        for (addr, running) in &self.running {
            let client_first = config
                .listener_for(*addr)
                .is_some_and(|i| config.listeners[i].protocol != Protocol::Tcp);
            if let Err(e) = defer_accept(running.socket.as_fd(), client_first) {
                tracing::debug!(listener = %addr, "cannot set TCP_DEFER_ACCEPT: {e}");
            }
        }
    }

    /// Every listening socket, by address: what an upgrade or systemd's fd
    /// store takes over.
    pub fn sockets(&self) -> impl Iterator<Item = (SocketAddr, BorrowedFd<'_>)> {
        self.running
            .iter()
            .map(|(addr, r)| (*addr, r.socket.as_fd()))
    }

    /// Stops accepting on every address `config` no longer has; connections
    /// already accepted there run on. Returns the addresses closed.
    pub fn stop_removed(&mut self, config: &Config) -> Vec<SocketAddr> {
        let keep: Vec<SocketAddr> = config.binds().collect();
        let removed: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        for addr in &removed {
            if let Some(running) = self.running.remove(addr) {
                // With the task gone, dropping `running` closes the socket.
                running.task.abort();
                // A copy in systemd's fd store would keep it open.
                systemd::forget(&handover::name(*addr));
                tracing::info!(listener = %addr, "stopped listening (removed from the config)");
            }
        }
        removed
    }

    /// Lets go of every socket once the drain has begun: the accept loops drop
    /// theirs as they stop, and then the kernel refuses new connections
    /// (unless another process, a successor or systemd's fd store, holds the
    /// sockets too).
    pub fn close_all(&mut self) {
        self.running.clear();
    }
}

/// Accepts on `listener` until shutdown, spawning one task per connection.
async fn accept_loop(
    listener: Arc<TcpListener>,
    bind: SocketAddr,
    stats: Arc<ListenerStats>,
    mut shared: Shared,
) {
    let mut backoff = FIRST_BACKOFF;
    let refusal_warning = Throttle::default();
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
                if let Some(resource) = Resource::of(&e) {
                    // Logged here on every pause; the pauses bound the rate.
                    let _ = resources::record(Operation::Accept, resource);
                }
                tracing::warn!(listener = %bind, error = %e, "accept failed; pausing accept for {backoff:?}");
                tokio::select! {
                    () = shared.shutdown.reached(Phase::Draining) => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        stats.accepted();
        // One snapshot per connection: it sees one config from start to end.
        let config = shared.config.load_full();
        let Some(listener_index) = config.listener_for(bind) else {
            // Removed by a reload a moment ago; its accept loop is being stopped.
            continue;
        };
        let Some(slot) = shared.connections.try_open(config.limits.max_connections) else {
            drop(stream);
            stats.closed(Outcome::OverLimit);
            if let Some(held_back) = refusal_warning.admit() {
                let refused = held_back + 1;
                tracing::warn!(listener = %bind, refused, "max_connections reached; closing new connections");
            }
            continue;
        };
        let endpoint = Endpoint {
            config,
            listener: listener_index,
            bind,
            stats: Arc::clone(&stats),
            connections: Arc::clone(&shared.connections),
        };
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            proxy::handle(stream, peer, endpoint, shutdown).await;
            drop(slot);
        });
    }
    tracing::info!(listener = %bind, "stopped accepting");
}
