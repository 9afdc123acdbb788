//! One routed QUIC flow: its route, its server, its connected UDP socket
//! towards that server, and the task that forwards the server's datagrams
//! back to the client.
//!
//! The client's datagrams reach the server from the listener's task
//! ([`Flow::up`]), the server's reach the client from the flow's task; both
//! sides only ever try a send once, without waiting, and drop the datagram
//! when the socket's buffer is full, as a congested link would (counted in
//! [`QuicStats`]): QUIC retransmits, and a proxy that queued instead would
//! only add delay. Those sends are plain `send(2)` calls on the descriptor:
//! tokio's `try_send` answers "would block" without asking the kernel until
//! its reactor has seen the socket writable, which a flow's new socket is
//! not yet when the datagrams that routed it go out.
//!
//! Passive health as for TCP, in UDP's terms: the connected socket reports
//! the server's ICMP "port unreachable" as a refused connection, which counts
//! as a failed connect (and ends the flow; the client's next Initial opens a
//! new one, on another server once this one is marked down), and the
//! server's first datagram counts as a successful one.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use quinn_udp::EcnCodepoint;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::udp::{Udp, MAX_BATCH};
use super::{initial, Dropped, FlowSlot, BATCH};
use crate::config::Config;
use crate::logging::AccessLog;
use crate::metrics::{Direction, QuicStats};
use crate::name::HostName;
use crate::outcome::Outcome;
use crate::pool::{Lease, Pool};
use crate::shutdown::{Phase, Shutdown};

/// Where a flow goes, decided once from its ClientHello.
pub(super) struct Route {
    pool: Arc<Pool>,
    pattern: Arc<str>,
    host: Option<HostName>,
    idle: Duration,
}

impl Route {
    /// The route of `listener` for `name`, if `client` may take it (counted
    /// as taken).
    pub(super) fn find(
        config: &Config,
        listener: usize,
        client: SocketAddr,
        name: Option<HostName>,
    ) -> Result<Route, Dropped> {
        let route = config.listeners[listener]
            .router
            .route(name.as_ref())
            .ok_or(Dropped::NoRoute)?;
        if let Some(access) = &route.target.access {
            if !access.admits(client.ip()) {
                return Err(Dropped::Denied);
            }
        }
        route.target.routed.fetch_add(1, Ordering::Relaxed);
        Ok(Route {
            pool: Arc::clone(&route.target.pool),
            pattern: Arc::clone(&route.pattern),
            host: name,
            idle: config.timeouts.udp_idle,
        })
    }
}

/// What [`open`] needs.
pub(super) struct Opening {
    pub route: Route,
    pub client: SocketAddr,
    pub bind: SocketAddr,
    pub id: u64,
    /// The listener's socket: the server's datagrams go out from it.
    pub socket: Arc<UdpSocket>,
    pub udp: Arc<Udp>,
    pub stats: Arc<QuicStats>,
    pub shutdown: Shutdown,
    pub ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    pub slot: FlowSlot,
}

/// The listener's handle on a routed flow. Dropping it ends the flow's task.
pub(super) struct Flow {
    id: u64,
    upstream: Arc<UdpSocket>,
    /// The batching state of `upstream`.
    upstream_udp: Arc<Udp>,
    server_addr: SocketAddr,
    traffic: Arc<Traffic>,
    lease_server: Arc<crate::pool::Server>,
    stats: Arc<QuicStats>,
    /// Tells the task why the listener ended the flow; dropped unused, that
    /// the listener stopped.
    stop: Option<oneshot::Sender<Stop>>,
}

/// Why the listener ends a flow.
enum Stop {
    /// The server refused a datagram (ICMP port unreachable).
    Refused(io::Error),
    /// A new connection from the client's address and port takes its place.
    Replaced,
}

/// What both directions of a flow update.
#[derive(Default)]
struct Traffic {
    up: AtomicU64,
    down: AtomicU64,
    /// The last datagram either way, in milliseconds since [`epoch`].
    last: AtomicU64,
    /// The connection IDs this flow's client may send Initials to: the one
    /// it began with, and each the server has given as its own (in an
    /// Initial, a Handshake packet, a Retry). Long headers only come during
    /// a handshake, so this is locked a few times per flow.
    destinations: Mutex<Vec<Box<[u8]>>>,
}

/// Connection IDs a flow keeps at most: a handshake needs two or three.
const MAX_DESTINATIONS: usize = 8;

impl Traffic {
    fn touch(&self) {
        self.last.store(since_epoch(), Ordering::Relaxed);
    }

    fn destinations(&self) -> MutexGuard<'_, Vec<Box<[u8]>>> {
        self.destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes the source connection ID of a server's long-header packet.
    fn server_sent(&self, datagram: &[u8]) {
        let Some(id) = initial::long_header_source_id(datagram) else {
            return;
        };
        let mut known = self.destinations();
        if known.len() < MAX_DESTINATIONS && !known.iter().any(|k| **k == *id) {
            known.push(id.into());
        }
    }
}

impl Flow {
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Whether `datagram` begins a new connection from the flow's client
    /// address and port: an Initial to a connection ID that is neither the
    /// one the flow began with nor one its server gave.
    pub(super) fn is_new_connection(&self, datagram: &[u8]) -> bool {
        initial::initial_destination_id(datagram)
            .is_some_and(|id| !self.traffic.destinations().iter().any(|k| **k == *id))
    }

    /// Ends the flow for a new connection from its client's address and port.
    pub(super) fn replace(mut self) {
        self.end(Stop::Replaced);
    }

    fn end(&mut self, why: Stop) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(why);
        }
    }

    /// Sends client datagrams (of `stride` bytes each) to the server.
    /// `false`: the server refused an earlier one (ICMP port unreachable):
    /// the flow is over, and these were not sent.
    pub(super) fn up(&mut self, data: &[u8], stride: usize, ecn: Option<EcnCodepoint>) -> bool {
        let sent = self
            .upstream_udp
            .send(&self.upstream, self.server_addr, data, stride, ecn);
        match sent {
            Ok(()) => {
                let n = data.len() as u64;
                self.traffic.up.fetch_add(n, Ordering::Relaxed);
                self.lease_server
                    .live()
                    .bytes_up
                    .fetch_add(n, Ordering::Relaxed);
                self.traffic.touch();
                true
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                self.end(Stop::Refused(e));
                false
            }
            // A full buffer: lost, as on a congested link.
            Err(_) => {
                self.stats.lost(Direction::Up, segments(data.len(), stride));
                true
            }
        }
    }
}

/// Picks a server of the route's pool, opens the flow's socket to it and
/// starts the flow's task; `destination` is the connection ID of the
/// client's Initials. `None` if no server of the pool could be used.
pub(super) fn open(o: Opening, destination: Box<[u8]>) -> Option<Flow> {
    let pool = &o.route.pool;
    let mut attempts = pool.attempts();
    let (lease, upstream, upstream_udp) = loop {
        let lease = pool.next_server(&mut attempts, Instant::now())?;
        let connected =
            connect(lease.server().addr).and_then(|socket| Ok((Udp::new(&socket)?, socket)));
        match connected {
            Ok((udp, upstream)) => break (lease, Arc::new(upstream), Arc::new(udp)),
            Err(e) => {
                tracing::warn!(pool = %pool.name, server = %lease.server().label, "QUIC flow: cannot open a UDP socket to the server: {e}");
                pool.record_local_failure(lease.server());
            }
        }
    };
    let traffic = Arc::new(Traffic::default());
    traffic.touch();
    traffic.destinations().push(destination);
    let (stop, stopped) = oneshot::channel();
    let flow = Flow {
        id: o.id,
        upstream: Arc::clone(&upstream),
        upstream_udp: Arc::clone(&upstream_udp),
        server_addr: lease.server().addr,
        traffic: Arc::clone(&traffic),
        lease_server: Arc::clone(lease.server()),
        stats: Arc::clone(&o.stats),
        stop: Some(stop),
    };
    o.stats.open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(run(o, lease, (upstream, upstream_udp), traffic, stopped));
    Some(flow)
}

/// A UDP socket connected to `server`: it receives only that server's
/// datagrams and reports its ICMP errors.
fn connect(server: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(server)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// The flow's task: the server's datagrams to the client until the flow is
/// idle, its server fails, the listener forgets it or the drain begins.
async fn run(
    o: Opening,
    lease: Lease,
    (upstream, upstream_udp): (Arc<UdpSocket>, Arc<Udp>),
    traffic: Arc<Traffic>,
    mut stopped: oneshot::Receiver<Stop>,
) {
    let Opening {
        route,
        client,
        bind,
        id,
        socket,
        udp,
        stats,
        mut shutdown,
        ended,
        slot,
    } = o;
    let started = Instant::now();
    let server = lease.server();
    let mut answered = false;
    let mut deadline = tokio::time::Instant::now() + route.idle;
    let (outcome, reason) = loop {
        tokio::select! {
            biased;
            stop = &mut stopped => match stop {
                Ok(Stop::Refused(refused)) => {
                    route.pool.record_failure(server, &refused, Instant::now());
                    break (Outcome::UpstreamError, format!("server: {refused}"));
                }
                Ok(Stop::Replaced) => break (Outcome::Closed, "a new QUIC connection from the client's address and port took its place".to_owned()),
                Err(_) => break (Outcome::Shutdown, "the listener stopped serving".to_owned()),
            },
            () = shutdown.reached(Phase::Draining) => break (Outcome::Shutdown, String::new()),
            // ERROR too: an ICMP error alone makes a socket neither readable
            // nor writable.
            ready = upstream.ready(Interest::READABLE | Interest::ERROR) => {
                let forwarded = ready.and_then(|ready| {
                    if ready.is_error() {
                        pending_error(&upstream)?;
                    }
                    let down = Down { upstream: &upstream, upstream_udp: &upstream_udp, socket: &socket, udp: &udp, client };
                    down.forward(&traffic, server, &stats)
                });
                match forwarded {
                    Ok(0) => {}
                    Ok(_) => {
                        if !answered {
                            answered = true;
                            route.pool.record_success(server);
                        }
                    }
                    Err(e) => {
                        if e.kind() == io::ErrorKind::ConnectionRefused {
                            route.pool.record_failure(server, &e, Instant::now());
                        }
                        break (Outcome::UpstreamError, format!("server: {e}"));
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let last = Duration::from_millis(traffic.last.load(Ordering::Relaxed));
                let due = epoch() + last + route.idle;
                if Instant::now() >= due {
                    break (Outcome::IdleTimeout, String::new());
                }
                deadline = tokio::time::Instant::from_std(due);
            }
        }
    };
    stats.open.fetch_sub(1, Ordering::Relaxed);
    stats.closed(outcome);
    let elapsed = started.elapsed();
    route.pool.durations.observe(elapsed);
    let mut log = AccessLog::new(client, bind);
    log.udp = true;
    log.host = route.host;
    log.route = Some(&route.pattern);
    log.pool = Some(&route.pool.name);
    log.server = Some(server.addr);
    log.bytes_up = traffic.up.load(Ordering::Relaxed);
    log.bytes_down = traffic.down.load(Ordering::Relaxed);
    log.reason = reason;
    log.emit(outcome, elapsed);
    let _ = ended.send((client, id));
    drop((lease, slot));
}

/// The socket's pending error (`SO_ERROR`: the server's ICMP port
/// unreachable, read as a refused connection), if it still has one; the
/// error readiness is cleared when it has none (a send took it first), so
/// that it does not wake the task again.
fn pending_error(upstream: &UdpSocket) -> io::Result<()> {
    let error = upstream.try_io(Interest::ERROR, || match upstream.take_error()? {
        Some(e) => Ok(e),
        None => Err(io::ErrorKind::WouldBlock.into()),
    });
    match error {
        Ok(e) => Err(e),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

thread_local! {
    /// One receive buffer per worker thread, used between a readiness and the
    /// next await only: a buffer per flow would cost 64 KiB each.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_BATCH].into());
}

/// The way from a flow's server back to its client.
struct Down<'a> {
    upstream: &'a UdpSocket,
    upstream_udp: &'a Udp,
    /// The listener's socket, and its batching state.
    socket: &'a UdpSocket,
    udp: &'a Udp,
    client: SocketAddr,
}

impl Down<'_> {
    /// Forwards what the server sent, up to [`BATCH`] receives; how many.
    fn forward(
        &self,
        traffic: &Traffic,
        server: &crate::pool::Server,
        stats: &QuicStats,
    ) -> io::Result<usize> {
        SCRATCH.with_borrow_mut(|buf| {
            let mut bytes = 0;
            let mut count = 0;
            let result = loop {
                if count == BATCH {
                    break Ok(count);
                }
                let batch = match self.upstream_udp.try_recv(self.upstream, buf) {
                    Ok(batch) => batch,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(count),
                    Err(e) => break Err(e),
                };
                let data = &buf[..batch.len];
                // Before the client can see it, and answer to it.
                for datagram in data.chunks(batch.stride.max(1)) {
                    if datagram.first().is_some_and(|b| b & 0x80 != 0) {
                        traffic.server_sent(datagram);
                    }
                }
                let sent = self
                    .udp
                    .send(self.socket, self.client, data, batch.stride, batch.ecn);
                if sent.is_err() {
                    stats.lost(Direction::Down, segments(batch.len, batch.stride));
                }
                bytes += data.len() as u64;
                count += 1;
            };
            if bytes > 0 {
                traffic.down.fetch_add(bytes, Ordering::Relaxed);
                server.live().bytes_down.fetch_add(bytes, Ordering::Relaxed);
                traffic.touch();
            }
            result
        })
    }
}

/// How many datagrams of `stride` bytes `len` bytes are.
fn segments(len: usize, stride: usize) -> u64 {
    len.div_ceil(stride.max(1)) as u64
}

/// The instant flows' times are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch() -> u64 {
    epoch().elapsed().as_millis() as u64
}
