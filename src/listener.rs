//! Listening sockets, the accept loop, and the connection limit.
//!
//! [`Listeners`] owns one task per bind address (an accept loop, or for a UDP
//! bind the datagram loop of [`crate::quic`]) and can add and remove them
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
use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::connections::Connections;
use crate::handover::{self, Inherited};
use crate::metrics::{ListenerStats, Metrics};
use crate::outcome::Outcome;
use crate::peek::{Protocol, Transport};
use crate::proxy::{self, Endpoint};
use crate::quic::{self, Budget};
use crate::resources::{self, Operation, Resource};
use crate::shutdown::{Phase, Shutdown};
use crate::systemd;
use crate::throttle::Throttle;

const BACKLOG: i32 = 4096;
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A bind address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {}{addr}: {error}{}", udp_prefix(*.transport), hint(.error))]
pub struct BindError {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub error: io::Error,
}

fn udp_prefix(transport: Transport) -> &'static str {
    match transport {
        Transport::Tcp => "",
        Transport::Udp => "UDP ",
    }
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
    bind().map_err(|error| BindError {
        transport: Transport::Tcp,
        addr,
        error,
    })
}

/// What a QUIC listener's socket asks for as receive buffer: a burst of
/// Initials (a flood, or many clients at once) waits there while they are
/// decrypted. The kernel caps it at `net.core.rmem_max` (twice that).
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// A QUIC listener's socket: no `SO_REUSEADDR`, which for UDP would let a
/// second process bind the same port and take half its datagrams.
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, BindError> {
    let bind = || -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if let Err(e) = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
            tracing::debug!(listener = %addr, "cannot set SO_RCVBUF: {e}");
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        UdpSocket::from_std(socket.into())
    };
    bind().map_err(|error| BindError {
        transport: Transport::Udp,
        addr,
        error,
    })
}

/// The socket handed over for `addr` (see [`crate::handover`]) if there is
/// one, else a new one from [`bind`].
pub fn adopt_or_bind(
    addr: SocketAddr,
    inherited: &mut Inherited,
) -> Result<TcpListener, BindError> {
    match inherited.take_tcp(addr) {
        Some(socket) => adopt(socket, Transport::Tcp, addr, TcpListener::from_std),
        None => bind(addr),
    }
}

/// [`adopt_or_bind`] for a UDP bind.
fn adopt_or_bind_udp(addr: SocketAddr, inherited: &mut Inherited) -> Result<UdpSocket, BindError> {
    match inherited.take_udp(addr) {
        Some(socket) => adopt(socket, Transport::Udp, addr, UdpSocket::from_std),
        None => bind_udp(addr),
    }
}

/// A handed-over socket, made non-blocking and given to tokio.
fn adopt<S: AsFd, T>(
    socket: S,
    transport: Transport,
    addr: SocketAddr,
    into_tokio: impl FnOnce(S) -> io::Result<T>,
) -> Result<T, BindError> {
    let adopt = || {
        SockRef::from(&socket).set_nonblocking(true)?;
        into_tokio(socket)
    };
    adopt().map_err(|error| BindError {
        transport,
        addr,
        error,
    })
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
    /// What QUIC flows may hold, all UDP listeners together.
    pub quic: Arc<Budget>,
}

/// A listening socket, bound and not yet served, or served.
pub enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// The running loops, one per bind address and transport.
pub struct Listeners {
    running: HashMap<(Transport, SocketAddr), Running>,
    shared: Shared,
}

/// One loop and its socket, which is shared so that the socket can be
/// handed on ([`Listeners::sockets`]) while the loop serves it.
struct Running {
    task: JoinHandle<()>,
    socket: Serving,
}

enum Serving {
    Tcp(Arc<TcpListener>),
    Udp(Arc<UdpSocket>),
}

impl Serving {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Serving::Tcp(socket) => socket.as_fd(),
            Serving::Udp(socket) => socket.as_fd(),
        }
    }
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
    ) -> Result<Vec<(SocketAddr, Bound)>, BindError> {
        config
            .binds()
            .filter(|key| !self.running.contains_key(key))
            .map(|(transport, addr)| {
                let socket = match transport {
                    Transport::Tcp => Bound::Tcp(adopt_or_bind(addr, inherited)?),
                    Transport::Udp => Bound::Udp(adopt_or_bind_udp(addr, inherited)?),
                };
                Ok((addr, socket))
            })
            .collect()
    }

    /// Starts serving sockets from [`Listeners::bind_missing`].
    pub fn start(&mut self, bound: Vec<(SocketAddr, Bound)>) {
        for (addr, socket) in bound {
            let shared = self.shared.clone();
            let (key, running) = match socket {
                Bound::Tcp(socket) => {
                    tracing::info!(listener = %addr, "listening");
                    let stats = self.shared.metrics.listener(addr);
                    let socket = Arc::new(socket);
                    let task = tokio::spawn(accept_loop(Arc::clone(&socket), addr, stats, shared));
                    let socket = Serving::Tcp(socket);
                    ((Transport::Tcp, addr), Running { task, socket })
                }
                Bound::Udp(socket) => {
                    tracing::info!(listener = %addr, "listening on UDP (QUIC)");
                    let socket = Arc::new(socket);
                    let task = tokio::spawn(quic::serve(Arc::clone(&socket), addr, shared));
                    let socket = Serving::Udp(socket);
                    ((Transport::Udp, addr), Running { task, socket })
                }
            };
            self.running.insert(key, running);
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
        for ((transport, addr), running) in &self.running {
            if *transport != Transport::Tcp {
                continue;
            }
            let client_first = config
                .listener_for(Transport::Tcp, *addr)
                .is_some_and(|i| config.listeners[i].protocol != Protocol::Tcp);
            if let Err(e) = defer_accept(running.socket.as_fd(), client_first) {
                tracing::debug!(listener = %addr, "cannot set TCP_DEFER_ACCEPT: {e}");
            }
        }
    }

    /// Every listening socket, by transport and address: what an upgrade or
    /// systemd's fd store takes over.
    pub fn sockets(&self) -> impl Iterator<Item = (Transport, SocketAddr, BorrowedFd<'_>)> {
        self.running
            .iter()
            .map(|((transport, addr), r)| (*transport, *addr, r.socket.as_fd()))
    }

    /// Stops serving every address `config` no longer has; TCP connections
    /// already accepted there run on, QUIC flows there end.
    pub fn stop_removed(&mut self, config: &Config) {
        let keep: Vec<_> = config.binds().collect();
        let removed: Vec<_> = self
            .running
            .keys()
            .filter(|key| !keep.contains(key))
            .copied()
            .collect();
        for key @ (transport, addr) in removed {
            if let Some(running) = self.running.remove(&key) {
                // With the task gone, dropping `running` closes the socket.
                running.task.abort();
                // A copy in systemd's fd store would keep it open.
                systemd::forget(&handover::name(transport, addr));
                tracing::info!(listener = %addr, transport = transport.as_str(), "stopped listening (removed from the config)");
            }
        }
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
        let Some(listener_index) = config.listener_for(Transport::Tcp, bind) else {
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
            // Boxed, so that spawning moves a few hundred bytes instead of the
            // whole connection state (2.4 KB), which tokio would copy three
            // times: 7% of the user-space instructions per connection.
            Box::pin(proxy::handle(stream, peer, endpoint, shutdown)).await;
            drop(slot);
        });
    }
    tracing::info!(listener = %bind, "stopped accepting");
}
