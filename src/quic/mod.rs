//! QUIC listeners: UDP flows routed by the SNI of the ClientHello in the
//! client's Initial packets, then forwarded datagram by datagram.
//!
//! One task per UDP bind ([`serve`]) reads every datagram clients send there
//! and keeps the listener's flows, keyed by the client's address and port:
//!
//! - a datagram of a routed flow goes straight to that flow's server, through
//!   the flow's own connected UDP socket ([`flow`]);
//! - a datagram from an unknown client is read as its first Initial
//!   ([`initial`]): a whole ClientHello routes the flow at once; part of one
//!   opens a *pending* flow that holds its datagrams (bounded per flow and in
//!   total, [`Budget`]) until the rest arrives, for at most `timeouts.peek`;
//!   anything else is dropped and counted by reason ([`Dropped`]), never
//!   logged one by one, as a flood of garbage would make the log the
//!   bottleneck.
//!
//! Each routed flow has a task that forwards the server's datagrams back,
//! from the listener's socket, until `timeouts.udp_idle` passes without a
//! datagram either way. Nothing is decrypted after routing: version
//! negotiation, Retry and everything after pass through as they are. A
//! client that moves to a new address (connection migration) is a new,
//! unknown client to this table; its short-header packets are dropped.
//!
//! The flow table belongs to the listener's task alone, so the data path
//! takes no lock. When the task stops (shutdown, upgrade, a reload that
//! removes the bind) its flows end with it: the socket is handed on, and a
//! successor could not take over their state anyway.

pub mod initial;

mod flow;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};

use crate::config::Config;
use crate::listener::Shared;
use crate::metrics::QuicStats;
use crate::name::HostName;
use crate::peek::{Parse, Transport};
use crate::shutdown::Phase;
use crate::throttle::Throttle;
use flow::{Flow, Route};
use initial::{ClientInitials, InitialError};
use udp::{Batch, Udp, MAX_BATCH};

/// Datagrams read per wake-up of a listener's task before it looks at its
/// other work.
const BATCH: usize = 64;

/// How often pending flows are checked against `timeouts.peek`.
const SWEEP: Duration = Duration::from_secs(1);

/// Why a client's datagram was dropped before its flow was routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not a QUIC long-header Initial packet (garbage, or a short-header
    /// packet of a flow this process does not know).
    NotInitial,
    /// A QUIC version other than 1 and 2.
    Version,
    /// The Initial did not decrypt.
    Decrypt,
    /// The packet or its frames are malformed.
    Malformed,
    /// An Initial datagram below the 1200 bytes every client must send.
    Short,
    /// The ClientHello outgrew `limits.max_peek_bytes`.
    TooLarge,
    /// Refused by the listener's or the route's `allow`/`deny`.
    Denied,
    /// No route and no default for the name.
    NoRoute,
    /// No server of the pool could be used.
    NoServer,
    /// `limits.max_quic_flows` flows were open.
    FlowsFull,
    /// `limits.max_quic_pending_bytes` were held by pending flows.
    PendingFull,
    /// The ClientHello did not complete within `timeouts.peek`.
    Timeout,
}

impl Dropped {
    /// Every reason, in declaration order (`ALL[d as usize] == d`).
    pub const ALL: [Dropped; 12] = [
        Dropped::NotInitial,
        Dropped::Version,
        Dropped::Decrypt,
        Dropped::Malformed,
        Dropped::Short,
        Dropped::TooLarge,
        Dropped::Denied,
        Dropped::NoRoute,
        Dropped::NoServer,
        Dropped::FlowsFull,
        Dropped::PendingFull,
        Dropped::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::NotInitial => "not_initial",
            Dropped::Version => "version",
            Dropped::Decrypt => "decrypt",
            Dropped::Malformed => "malformed",
            Dropped::Short => "short",
            Dropped::TooLarge => "too_large",
            Dropped::Denied => "denied",
            Dropped::NoRoute => "no_route",
            Dropped::NoServer => "no_server",
            Dropped::FlowsFull => "flows_full",
            Dropped::PendingFull => "pending_full",
            Dropped::Timeout => "timeout",
        }
    }

    fn of(error: InitialError) -> Dropped {
        match error {
            InitialError::NotInitial => Dropped::NotInitial,
            InitialError::Version(_) => Dropped::Version,
            InitialError::Decrypt => Dropped::Decrypt,
            InitialError::Malformed(_) => Dropped::Malformed,
            InitialError::TooLarge => Dropped::TooLarge,
            InitialError::Short => Dropped::Short,
        }
    }
}

/// What QUIC flows hold, all listeners together, against
/// `limits.max_quic_flows` and `limits.max_quic_pending_bytes`.
#[derive(Debug, Default)]
pub struct Budget {
    flows: AtomicUsize,
    none_open: Notify,
    pending_bytes: AtomicUsize,
}

impl Budget {
    /// Resolves once no flow is left: their tasks have written their
    /// access-log lines.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.none_open.notified();
            if self.flows.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// A flow's place, if fewer than `max` are open.
    fn try_flow(self: &Arc<Self>, max: usize) -> Option<FlowSlot> {
        self.flows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| FlowSlot(Arc::clone(self)))
    }

    /// Takes `bytes` for a pending flow if the total stays within `max`.
    fn try_hold(&self, bytes: usize, max: usize) -> bool {
        self.pending_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + bytes <= max).then_some(n + bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One flow's place in [`Budget`]; given back on drop.
#[derive(Debug)]
struct FlowSlot(Arc<Budget>);

impl Drop for FlowSlot {
    fn drop(&mut self) {
        if self.0.flows.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_open.notify_waiters();
        }
    }
}

/// A flow whose ClientHello is not whole yet: its datagrams wait here, in
/// order, to go to the server once it is routed, by the config it began with.
struct Pending {
    config: Arc<Config>,
    listener: usize,
    initials: ClientInitials,
    datagrams: Vec<Box<[u8]>>,
    held: Held,
    since: Instant,
    slot: FlowSlot,
}

/// Bytes held in [`Budget`] by a pending flow; given back on drop.
struct Held {
    bytes: usize,
    budget: Arc<Budget>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

enum Entry {
    /// Boxed: its Initial keys are large, and routed flows the many.
    Pending(Box<Pending>),
    Routed(Flow),
}

/// One UDP listener's flows and what it needs to open new ones.
struct Table {
    socket: Arc<UdpSocket>,
    udp: Arc<Udp>,
    bind: SocketAddr,
    shared: Shared,
    stats: Arc<QuicStats>,
    flows: HashMap<SocketAddr, Entry>,
    /// Flows whose task ended tell the table here, with their id.
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    next_id: u64,
    /// The warning that a flow cap was reached.
    full_warning: Throttle,
}

/// Serves the QUIC listener on `socket` until the drain begins.
pub async fn serve(socket: Arc<UdpSocket>, bind: SocketAddr, shared: Shared) {
    let udp = match Udp::new(&socket) {
        Ok(udp) => Arc::new(udp),
        Err(e) => {
            tracing::error!(listener = %bind, "cannot set up the UDP socket, not serving QUIC here: {e}");
            return;
        }
    };
    let mut shutdown = shared.shutdown.clone();
    let (ended, mut ended_rx) = mpsc::unbounded_channel();
    let mut table = Table {
        socket: Arc::clone(&socket),
        udp: Arc::clone(&udp),
        bind,
        stats: shared.metrics.quic(bind),
        shared,
        flows: HashMap::new(),
        ended,
        next_id: 0,
        full_warning: Throttle::default(),
    };
    // On the heap: one buffer per listener, as large as a batch can be.
    let mut buf = vec![0u8; MAX_BATCH];
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            biased;
            () = shutdown.reached(Phase::Draining) => break,
            Some((client, id)) = ended_rx.recv() => table.ended(client, id),
            _ = sweep.tick() => table.expire_pending(),
            ready = socket.readable() => {
                if let Err(e) = ready {
                    tracing::warn!(listener = %bind, "UDP socket failed, not serving QUIC here: {e}");
                    break;
                }
                // What is queued goes without a trip through select!, up to
                // a batch, so the other branches still get their turn.
                for _ in 0..BATCH {
                    match udp.try_recv(&socket, &mut buf) {
                        Ok(batch) => table.received(&buf[..batch.len], batch),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // An ICMP error for an earlier send, or a local
                        // shortage: nothing to do for this datagram but go on.
                        Err(e) => tracing::debug!(listener = %bind, "UDP receive: {e}"),
                    }
                }
            }
        }
    }
    tracing::info!(listener = %bind, flows = table.flows.len(), "stopped serving QUIC; its flows end");
}

impl Table {
    /// What one receive brought: a routed flow's datagrams go on as they
    /// came, in one send; others are looked at one by one.
    fn received(&mut self, data: &[u8], batch: Batch) {
        let client = batch.from;
        if let Some(Entry::Routed(flow)) = self.flows.get_mut(&client) {
            if !flow.is_new_connection(data) {
                if flow.up(data, batch.stride, batch.ecn) {
                    return;
                }
                // The server refused the flow: these datagrams start a new one.
                self.flows.remove(&client);
            }
        }
        for datagram in data.chunks(batch.stride.max(1)) {
            self.datagram(datagram, client);
        }
    }

    fn datagram(&mut self, data: &[u8], client: SocketAddr) {
        let pending = match self.flows.get_mut(&client) {
            Some(Entry::Routed(flow)) => {
                if flow.is_new_connection(data) {
                    if let Some(Entry::Routed(flow)) = self.flows.remove(&client) {
                        flow.replace();
                    }
                    return self.first(data, client);
                }
                if flow.up(data, data.len(), None) {
                    return;
                }
                // The server refused the flow: this datagram (a retransmitted
                // Initial, typically) starts a new one.
                self.flows.remove(&client);
                return self.first(data, client);
            }
            Some(Entry::Pending(pending)) => pending,
            None => return self.first(data, client),
        };
        match pending.initials.feed(data) {
            Ok(Parse::Incomplete | Parse::Http2Preface) => {
                let limits = &pending.config.limits;
                let held = &mut pending.held;
                if held.bytes + data.len() > 2 * limits.max_peek_bytes {
                    self.drop_pending(client, Dropped::TooLarge);
                } else if !held
                    .budget
                    .try_hold(data.len(), limits.max_quic_pending_bytes)
                {
                    self.drop_pending(client, Dropped::PendingFull);
                } else {
                    held.bytes += data.len();
                    pending.datagrams.push(data.into());
                }
            }
            Ok(Parse::Complete(name)) => {
                let Some(Entry::Pending(pending)) = self.flows.remove(&client) else {
                    return;
                };
                let Pending {
                    config,
                    listener,
                    mut datagrams,
                    slot,
                    ..
                } = *pending;
                datagrams.push(data.into());
                self.route(&config, listener, client, name, &datagrams, Some(slot));
            }
            Err(e @ InitialError::TooLarge) => self.drop_pending(client, Dropped::of(e)),
            // Someone else's datagram from this address (or a spoofed one):
            // the flow waits on for the real rest.
            Err(e) => self.stats.dropped(Dropped::of(e)),
        }
    }

    /// The first datagram from `client`.
    fn first(&mut self, data: &[u8], client: SocketAddr) {
        let config = self.shared.config.load_full();
        let Some(listener) = config.listener_for(Transport::Udp, self.bind) else {
            return;
        };
        if let Some(access) = &config.listeners[listener].access {
            if !access.admits(client.ip()) {
                return self.stats.dropped(Dropped::Denied);
            }
        }
        let mut initials = ClientInitials::new(config.limits.max_peek_bytes);
        match initials.feed(data) {
            Err(e) => self.stats.dropped(Dropped::of(e)),
            Ok(Parse::Complete(name)) => {
                self.route(&config, listener, client, name, &[data.into()], None);
            }
            Ok(Parse::Incomplete | Parse::Http2Preface) => {
                let limits = &config.limits;
                let budget = &self.shared.quic;
                let Some(slot) = budget.try_flow(limits.max_quic_flows) else {
                    return self.full(client, Dropped::FlowsFull);
                };
                if !budget.try_hold(data.len(), limits.max_quic_pending_bytes) {
                    return self.full(client, Dropped::PendingFull);
                }
                let held = Held {
                    bytes: data.len(),
                    budget: Arc::clone(budget),
                };
                let pending = Pending {
                    config,
                    listener,
                    initials,
                    datagrams: vec![data.into()],
                    held,
                    since: Instant::now(),
                    slot,
                };
                self.flows.insert(client, Entry::Pending(Box::new(pending)));
            }
        }
    }

    /// Routes `client`'s flow by `name`, then sends the server `datagrams`
    /// (all the client sent so far). A pending flow brings its `slot`.
    fn route(
        &mut self,
        config: &Arc<Config>,
        listener: usize,
        client: SocketAddr,
        name: Option<HostName>,
        datagrams: &[Box<[u8]>],
        slot: Option<FlowSlot>,
    ) {
        let host = name.clone();
        let route = match Route::find(config, listener, client, name) {
            Ok(route) => route,
            Err(why) => {
                let host = host.as_ref().map_or("-", HostName::as_str);
                tracing::debug!(listener = %self.bind, %client, host, reason = why.as_str(), "QUIC flow not routed; its Initials are dropped");
                return self.stats.dropped(why);
            }
        };
        let budget = &self.shared.quic;
        let Some(slot) = slot.or_else(|| budget.try_flow(config.limits.max_quic_flows)) else {
            return self.full(client, Dropped::FlowsFull);
        };
        self.next_id += 1;
        let destination = datagrams
            .iter()
            .find_map(|d| initial::initial_destination_id(d))
            .unwrap_or_default();
        let opened = flow::open(
            flow::Opening {
                route,
                client,
                bind: self.bind,
                id: self.next_id,
                socket: Arc::clone(&self.socket),
                udp: Arc::clone(&self.udp),
                stats: Arc::clone(&self.stats),
                shutdown: self.shared.shutdown.clone(),
                ended: self.ended.clone(),
                slot,
            },
            destination.into(),
        );
        match opened {
            Some(mut flow) => {
                for datagram in datagrams {
                    // A refusal comes back later, as an ICMP error.
                    flow.up(datagram, datagram.len(), None);
                }
                self.flows.insert(client, Entry::Routed(flow));
            }
            None => self.stats.dropped(Dropped::NoServer),
        }
    }

    fn full(&self, client: SocketAddr, why: Dropped) {
        self.stats.dropped(why);
        if let Some(held_back) = self.full_warning.admit() {
            tracing::warn!(listener = %self.bind, %client, held_back, reason = why.as_str(), "QUIC flow limit reached; dropping new clients' Initials");
        }
    }

    fn drop_pending(&mut self, client: SocketAddr, why: Dropped) {
        self.flows.remove(&client);
        self.stats.dropped(why);
    }

    /// A flow's task ended: forget it, unless `client` has a newer flow.
    fn ended(&mut self, client: SocketAddr, id: u64) {
        if matches!(self.flows.get(&client), Some(Entry::Routed(flow)) if flow.id() == id) {
            self.flows.remove(&client);
        }
    }

    /// Drops pending flows older than `timeouts.peek`.
    fn expire_pending(&mut self) {
        let peek = self.shared.config.load().timeouts.peek;
        let now = Instant::now();
        let before = self.flows.len();
        self.flows.retain(|_, entry| match entry {
            Entry::Pending(p) => now.duration_since(p.since) < peek,
            Entry::Routed(_) => true,
        });
        for _ in self.flows.len()..before {
            self.stats.dropped(Dropped::Timeout);
        }
    }
}
