//! Prometheus metrics, read from live state at scrape time.
//!
//! Nothing on the data path touches a metrics library: connections bump plain
//! atomics that already exist for other reasons (server active counts and
//! traffic in [`ServerState`](crate::pool::ServerState), per-route counters in
//! [`Target`](crate::config::Target), per-listener counters in [`ListenerStats`]).
//! A scrape walks the current config and encodes what it finds, so every label
//! value comes from the config (bind addresses, route keys, pool names, server
//! addresses) or from a fixed list (outcomes, reasons), never from client input.
//! Series of servers and routes that a reload removed disappear with them.

pub mod endpoint;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::{Acme, Config};
use crate::connections::Connections;
use crate::outcome::Outcome;
use crate::peek::{Reason, Transport};
use crate::quic::Dropped;
use crate::resources::{self, Operation, Resource};
use crate::throttle::Throttle;

/// Counters of one bind address; they live as long as the process, across reloads.
#[derive(Debug, Default)]
pub struct ListenerStats {
    accepted: AtomicU64,
    closed: [AtomicU64; Outcome::ALL.len()],
    peek_failures: [AtomicU64; Reason::ALL.len()],
    no_route: AtomicU64,
    /// The warning that clients hit `max_connections_per_ip`.
    pub client_limit_warning: Throttle,
    /// The warning that the listener's allow/deny refused clients.
    pub denied_warning: Throttle,
}

impl ListenerStats {
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self, outcome: Outcome) {
        self.closed[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn peek_failed(&self, reason: Reason) {
        self.peek_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn no_route(&self) {
        self.no_route.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one QUIC (UDP) bind address; they live as long as the process.
#[derive(Debug, Default)]
pub struct QuicStats {
    /// Flows routed and open now.
    pub open: AtomicU64,
    closed: [AtomicU64; Outcome::ALL.len()],
    dropped: [AtomicU64; Dropped::ALL.len()],
    /// Datagrams of routed flows a full socket buffer refused: up, down.
    lost: [AtomicU64; 2],
}

/// Which way a datagram of a routed flow went.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

impl QuicStats {
    pub fn lost(&self, direction: Direction, datagrams: u64) {
        self.lost[direction as usize].fetch_add(datagrams, Ordering::Relaxed);
    }

    pub fn closed(&self, outcome: Outcome) {
        self.closed[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, why: Dropped) {
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// How a QUIC listener is labelled wherever a TCP listener on the same
/// address could be too.
pub fn udp_label(bind: SocketAddr) -> String {
    format!("{bind}/udp")
}

/// Everything `GET /metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    config: Arc<ArcSwap<Config>>,
    connections: Arc<Connections>,
    listeners: Mutex<BTreeMap<SocketAddr, Arc<ListenerStats>>>,
    quic: Mutex<BTreeMap<SocketAddr, Arc<QuicStats>>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Unix time of the last config that was loaded, at start or by a reload.
    last_good_config: AtomicU64,
}

impl Metrics {
    pub fn new(config: Arc<ArcSwap<Config>>, connections: Arc<Connections>) -> Arc<Metrics> {
        Arc::new(Metrics {
            config,
            connections,
            listeners: Mutex::default(),
            quic: Mutex::default(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_good_config: AtomicU64::new(unix_now()),
        })
    }

    /// The counters of `bind`, created on first use and kept for good.
    pub fn listener(&self, bind: SocketAddr) -> Arc<ListenerStats> {
        let mut map = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(bind).or_default())
    }

    /// The counters of UDP bind `bind`, created on first use and kept for good.
    pub fn quic(&self, bind: SocketAddr) -> Arc<QuicStats> {
        let mut map = self.quic.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(bind).or_default())
    }

    pub fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
            self.last_good_config.store(unix_now(), Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes one metric family: a descriptor, then one sample per label set.
fn family<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, Sample<'a>)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, sample) in samples {
        sample.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One value of a family.
enum Sample<'a> {
    Counter(u64),
    Gauge(i64),
    Histogram(&'a crate::histogram::Durations),
}

impl Sample<'_> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Sample::Counter(v) => ConstCounter::new(*v).encode(encoder),
            Sample::Gauge(v) => ConstGauge::new(*v).encode(encoder),
            Sample::Histogram(h) => h.encode(encoder),
        }
    }
}

type Labels = Vec<(&'static str, String)>;

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let config = self.config.load_full();
        let listeners: Vec<(SocketAddr, Arc<ListenerStats>)> = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(bind, stats)| (*bind, Arc::clone(stats)))
            .collect();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let one = |k: &'static str, v: String| -> Labels { vec![(k, v)] };

        family(
            &mut enc,
            "sniroute_build_info",
            "Version of the running sniroute; always 1.",
            MetricType::Gauge,
            [(
                one("version", env!("CARGO_PKG_VERSION").to_owned()),
                Sample::Gauge(1),
            )],
        )?;
        family(
            &mut enc,
            "sniroute_connections_accepted",
            "Client connections accepted, by listener bind address.",
            MetricType::Counter,
            listeners.iter().map(|(b, s)| {
                (
                    one("listener", b.to_string()),
                    Sample::Counter(load(&s.accepted)),
                )
            }),
        )?;
        family(
            &mut enc,
            "sniroute_connections_closed",
            "Client connections closed, by listener and outcome (as in the access log).",
            MetricType::Counter,
            listeners.iter().flat_map(|(b, s)| {
                Outcome::ALL.iter().map(move |o| {
                    let labels: Labels = vec![
                        ("listener", b.to_string()),
                        ("outcome", o.as_str().to_owned()),
                    ];
                    (labels, Sample::Counter(load(&s.closed[*o as usize])))
                })
            }),
        )?;
        family(
            &mut enc,
            "sniroute_connections_open",
            "Client connections open now, all listeners together.",
            MetricType::Gauge,
            [(Labels::new(), Sample::Gauge(self.connections.open() as i64))],
        )?;
        family(
            &mut enc,
            "sniroute_connections_max",
            "limits.max_connections of the running config: past it, new connections are closed at once.",
            MetricType::Gauge,
            [(
                Labels::new(),
                Sample::Gauge(config.limits.max_connections as i64),
            )],
        )?;
        family(
            &mut enc,
            "sniroute_peek_failures",
            "Connections closed before routing, by listener and reason; no_route: no route and no default.",
            MetricType::Counter,
            listeners.iter().flat_map(|(b, s)| {
                let reasons = Reason::ALL.iter().map(|r| (r.as_str(), load(&s.peek_failures[*r as usize])));
                reasons.chain([("no_route", load(&s.no_route))]).map(move |(reason, v)| {
                    let labels: Labels = vec![("listener", b.to_string()), ("reason", reason.to_owned())];
                    (labels, Sample::Counter(v))
                })
            }),
        )?;
        let quic: Vec<(SocketAddr, Arc<QuicStats>)> = self
            .quic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(bind, stats)| (*bind, Arc::clone(stats)))
            .collect();
        family(
            &mut enc,
            "sniroute_quic_flows",
            "QUIC flows routed and open now, by listener.",
            MetricType::Gauge,
            quic.iter().map(|(b, s)| {
                (
                    one("listener", udp_label(*b)),
                    Sample::Gauge(load(&s.open) as i64),
                )
            }),
        )?;
        family(
            &mut enc,
            "sniroute_quic_flows_closed",
            "QUIC flows ended, by listener and outcome (as in the access log).",
            MetricType::Counter,
            quic.iter().flat_map(|(b, s)| {
                Outcome::ALL.iter().map(move |o| {
                    let labels: Labels = vec![
                        ("listener", udp_label(*b)),
                        ("outcome", o.as_str().to_owned()),
                    ];
                    (labels, Sample::Counter(load(&s.closed[*o as usize])))
                })
            }),
        )?;
        family(
            &mut enc,
            "sniroute_quic_dropped",
            "QUIC client Initials dropped before their flow was routed, by listener and reason: per datagram, but for denied, no_route, no_server, flows_full and timeout, which count ClientHellos.",
            MetricType::Counter,
            quic.iter().flat_map(|(b, s)| {
                Dropped::ALL.iter().map(move |d| {
                    let labels: Labels = vec![
                        ("listener", udp_label(*b)),
                        ("reason", d.as_str().to_owned()),
                    ];
                    (labels, Sample::Counter(load(&s.dropped[*d as usize])))
                })
            }),
        )?;
        family(
            &mut enc,
            "sniroute_quic_datagrams_lost",
            "Datagrams of routed QUIC flows not sent because the socket's buffer was full, by listener and direction (up: to the server).",
            MetricType::Counter,
            quic.iter().flat_map(|(b, s)| {
                [("up", &s.lost[0]), ("down", &s.lost[1])].map(|(direction, n)| {
                    let labels: Labels = vec![
                        ("listener", udp_label(*b)),
                        ("direction", direction.to_owned()),
                    ];
                    (labels, Sample::Counter(load(n)))
                })
            }),
        )?;
        family(
            &mut enc,
            "sniroute_routed_connections",
            "Connections routed, by listener (its bind addresses), route key as written in the config, and pool.",
            MetricType::Counter,
            config.listeners.iter().flat_map(|l| {
                let label = |b: &SocketAddr| match l.protocol.transport() {
                    Transport::Tcp => b.to_string(),
                    Transport::Udp => udp_label(*b),
                };
                let listener = l.binds.iter().map(label).collect::<Vec<_>>().join(",");
                // An `acme_pool` is a route too (named `acme_pool`), taken before the others.
                let acme = match &l.acme {
                    Some(Acme::Pool(route)) => Some(route),
                    _ => None,
                };
                l.router.routes_and_default().into_iter().chain(acme).map(move |r| {
                    let labels: Labels = vec![
                        ("listener", listener.clone()),
                        ("route", r.pattern.to_string()),
                        ("pool", r.target.pool.name.to_string()),
                    ];
                    (labels, Sample::Counter(load(&r.target.routed)))
                })
            }),
        )?;

        let now = Instant::now();
        // Servers leaving the pool (gone from DNS or the config, connections
        // still open) are listed until those end.
        let servers: Vec<(Labels, Arc<crate::pool::Server>)> = config
            .pools
            .values()
            .flat_map(|p| {
                let members = p.members();
                members
                    .servers
                    .iter()
                    .chain(members.leaving())
                    .map(|s| {
                        (
                            vec![("pool", p.name.to_string()), ("server", s.addr.to_string())],
                            Arc::clone(s),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let per_server =
            |enc: &mut DescriptorEncoder,
             name,
             help,
             kind,
             value: &dyn Fn(&crate::pool::Server) -> Sample<'static>| {
                family(
                    enc,
                    name,
                    help,
                    kind,
                    servers.iter().map(|(l, s)| (l.clone(), value(s))),
                )
            };
        per_server(
            &mut enc,
            "sniroute_server_up",
            "1 if the server is up, 0 while max_fails or health checks have it down.",
            MetricType::Gauge,
            &|s| Sample::Gauge(i64::from(s.is_up(now))),
        )?;
        per_server(
            &mut enc,
            "sniroute_server_active_connections",
            "Connections open to the server now.",
            MetricType::Gauge,
            &|s| Sample::Gauge(s.live().counters().active as i64),
        )?;
        per_server(
            &mut enc,
            "sniroute_server_connect_attempts",
            "Connects started to the server.",
            MetricType::Counter,
            &|s| Sample::Counter(s.live().counters().connect_attempts),
        )?;
        per_server(
            &mut enc,
            "sniroute_server_connect_failures",
            "Connects to the server that failed (refused, unreachable, timed out).",
            MetricType::Counter,
            &|s| Sample::Counter(s.live().counters().connect_failures),
        )?;
        family(
            &mut enc,
            "sniroute_server_bytes",
            "Bytes passed through, by server and direction (up: client to server, including the replayed hello or head; down: server to client).",
            MetricType::Counter,
            servers.iter().flat_map(|(l, s)| {
                let c = s.live().counters();
                [("up", c.bytes_up), ("down", c.bytes_down)].map(|(direction, v)| {
                    let mut labels = l.clone();
                    labels.push(("direction", direction.to_owned()));
                    (labels, Sample::Counter(v))
                })
            }),
        )?;
        family(
            &mut enc,
            "sniroute_health_checks",
            "Active health checks of the server, by result (ok, fail).",
            MetricType::Counter,
            servers.iter().flat_map(|(l, s)| {
                let c = s.live().counters();
                [("ok", c.checks_ok), ("fail", c.checks_failed)].map(|(result, v)| {
                    let mut labels = l.clone();
                    labels.push(("result", result.to_owned()));
                    (labels, Sample::Counter(v))
                })
            }),
        )?;
        family(
            &mut enc,
            "sniroute_server_certificate_not_after_seconds",
            "When the server's TLS certificate expires (Unix time), as its last TLS health check saw it.",
            MetricType::Gauge,
            servers
                .iter()
                .filter_map(|(l, s)| Some((l.clone(), Sample::Gauge(s.live().cert_not_after()?)))),
        )?;
        family(
            &mut enc,
            "sniroute_dns_lookup_failures",
            "Lookups of the pool's server names that failed (the last good addresses stayed).",
            MetricType::Counter,
            config.pools.values().map(|p| {
                (
                    one("pool", p.name.to_string()),
                    Sample::Counter(p.dns_failures.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut enc,
            "sniroute_connection_duration_seconds",
            "How long connections that reached a pool lasted, from accept to close.",
            MetricType::Histogram,
            config.pools.values().map(|p| {
                (
                    one("pool", p.name.to_string()),
                    Sample::Histogram(&p.durations),
                )
            }),
        )?;
        family(
            &mut enc,
            "sniroute_config_reloads",
            "Config reloads, by result.",
            MetricType::Counter,
            [
                ("success", &self.reloads_ok),
                ("failure", &self.reloads_failed),
            ]
            .map(|(result, v)| (one("result", result.to_owned()), Sample::Counter(load(v)))),
        )?;
        family(
            &mut enc,
            "sniroute_config_last_reload_success_timestamp_seconds",
            "Unix time when the running config was loaded (at start or by the last good reload).",
            MetricType::Gauge,
            [(
                Labels::new(),
                Sample::Gauge(load(&self.last_good_config) as i64),
            )],
        )?;
        family(
            &mut enc,
            "sniroute_local_resource_errors",
            "Operations that failed for lack of a local resource, not because of a peer, by operation (accept, upstream_connect, splice_pipe) and resource (file_descriptors, memory, local_ports).",
            MetricType::Counter,
            Operation::ALL.iter().flat_map(|o| {
                Resource::ALL.iter().map(move |r| {
                    let labels: Labels = vec![
                        ("operation", o.as_str().to_owned()),
                        ("resource", r.as_str().to_owned()),
                    ];
                    (labels, Sample::Counter(resources::count(*o, *r)))
                })
            }),
        )?;
        family(
            &mut enc,
            "sniroute_log_lines_dropped",
            "Log lines (access log included) dropped because stderr could not keep up.",
            MetricType::Counter,
            [(
                Labels::new(),
                Sample::Counter(crate::logging::writer::dropped()),
            )],
        )?;
        Ok(())
    }
}
