//! Upstream pools: servers, their live state, and which one a client gets next.
//!
//! A [`Pool`] is built by the [`Registry`] from a [`PoolSpec`]: the config's
//! settings plus its current [`Members`], the servers that may take new
//! connections (and those leaving, which finish what they have). Members sit
//! behind an `ArcSwap` because DNS refresh changes them while the config stays;
//! a client works on the snapshot it started with. Each [`Server`] carries a
//! shared [`ServerState`] (active connections, health, counters, probe results)
//! that outlives config generations: the registry hands it to the same
//! (pool, address) in every new one. Active counts are only ever changed by a
//! [`Lease`]: taken when a server is picked, given back on drop, so no early
//! return can leak a count.

pub mod balance;
mod dns;
pub mod health;
pub mod probe;
pub mod registry;
pub mod spec;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
pub use balance::Balance;

use crate::histogram::Durations;
use crate::proxy_protocol;
use crate::throttle::Throttle;
pub use health::HealthPolicy;
pub use health::Transition;
use health::{ProbeHealth, SharedHealth};
pub use registry::Registry;
pub use spec::PoolSpec;

/// Live, per-server state shared by every connection to it.
#[derive(Debug, Default)]
pub struct ServerState {
    active: AtomicU64,
    health: SharedHealth,
    probe: ProbeHealth,
    connect_attempts: AtomicU64,
    connect_failures: AtomicU64,
    /// Client → server bytes, the replayed head included.
    pub bytes_up: AtomicU64,
    /// Server → client bytes.
    pub bytes_down: AtomicU64,
    checks_ok: AtomicU64,
    checks_failed: AtomicU64,
    /// The leaf certificate's notAfter (Unix seconds) from the last TLS probe; 0: none.
    cert_not_after: AtomicI64,
    last_error: Mutex<Option<LastError>>,
}

/// A snapshot of a server's counters, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub active: u64,
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub checks_ok: u64,
    pub checks_failed: u64,
}

/// The last thing that went wrong with a server, for the status page.
#[derive(Debug, Clone)]
pub struct LastError {
    pub at: SystemTime,
    /// `connect` or `probe`.
    pub during: &'static str,
    pub error: String,
}

/// Why a server takes no new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    /// `max_fails` failed connects; tried again after this instant.
    Failed {
        until: Instant,
    },
    /// `fall` failed probes in a row.
    ProbeDown,
    /// `drain = true`.
    Draining,
}

impl ServerState {
    pub fn counters(&self) -> Counters {
        Counters {
            active: self.active.load(Ordering::Relaxed),
            connect_attempts: self.connect_attempts.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            checks_ok: self.checks_ok.load(Ordering::Relaxed),
            checks_failed: self.checks_failed.load(Ordering::Relaxed),
        }
    }

    /// The certificate's notAfter, as Unix seconds, once a TLS probe saw one.
    pub fn cert_not_after(&self) -> Option<i64> {
        match self.cert_not_after.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_last_error(&self, during: &'static str, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(LastError {
            at: SystemTime::now(),
            during,
            error,
        });
    }
}

/// One server of a pool: one address, with how the config wants it used.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// How the operator wrote it (`node1.lan:443 (10.0.0.1:443)`), for logs.
    pub label: Arc<str>,
    pub weight: u32,
    pub backup: bool,
    pub drain: bool,
    state: Arc<ServerState>,
}

impl Server {
    /// The live state, shared with every config generation that has this server.
    pub fn state(&self) -> Arc<ServerState> {
        Arc::clone(&self.state)
    }

    pub fn active(&self) -> u64 {
        self.state.active.load(Ordering::Relaxed)
    }

    /// Whether neither probes nor `max_fails` have the server down at `now`
    /// (a drained server is up, it just takes nothing new).
    pub fn is_up(&self, now: Instant) -> bool {
        !self.state.probe.is_down() && self.state.health.is_up(now)
    }

    /// Why it takes no new connections, or `Up`.
    pub fn condition(&self, now: Instant) -> State {
        if self.drain {
            State::Draining
        } else if self.state.probe.is_down() {
            State::ProbeDown
        } else {
            match self.state.health.down_until() {
                Some(until) if now < until => State::Failed { until },
                _ => State::Up,
            }
        }
    }

    /// The live state (counters, health), shared across config generations.
    pub fn live(&self) -> &ServerState {
        &self.state
    }
}

/// The servers of a pool at one moment.
#[derive(Debug)]
pub struct Members {
    /// The servers new connections may go to (drained ones included, skipped).
    pub servers: Vec<Arc<Server>>,
    /// Servers that left (DNS or a reload) with connections open then;
    /// see [`leaving`](Self::leaving).
    leaving: Vec<Arc<Server>>,
    /// Smooth weighted round-robin scores, one per server.
    scores: Box<[AtomicI64]>,
}

impl Members {
    fn new(servers: Vec<Arc<Server>>, leaving: Vec<Arc<Server>>) -> Members {
        let scores = balance::scores(servers.len());
        Members {
            servers,
            leaving,
            scores,
        }
    }

    /// The members for `spec` with `addrs[i]` the addresses of its `i`th server
    /// entry: each server keeps the state it has in `old`, if any; servers of
    /// `old` left out that still have connections open are listed as leaving
    /// until those end.
    fn build(spec: &PoolSpec, addrs: &[&[SocketAddr]], old: Option<&Members>) -> Members {
        let mut servers: Vec<Arc<Server>> = Vec::new();
        for (s, addrs) in spec.servers.iter().zip(addrs) {
            for &addr in *addrs {
                if servers.iter().any(|known| known.addr == addr) {
                    continue; // two names for one address: the config check rejects it at load
                }
                let state = old.and_then(|m| m.find(addr)).map(|known| known.state());
                servers.push(Arc::new(Server {
                    addr,
                    label: s.host.label(addr),
                    weight: s.weight,
                    backup: s.backup,
                    drain: s.drain,
                    state: state.unwrap_or_default(),
                }));
            }
        }
        let leaving = old.map_or_else(Vec::new, |old| {
            old.servers
                .iter()
                .chain(&old.leaving)
                .filter(|s| s.active() > 0 && !servers.iter().any(|n| n.addr == s.addr))
                .cloned()
                .collect()
        });
        Members::new(servers, leaving)
    }

    /// Servers that left the pool (gone from DNS, or from the config at a
    /// reload) and still have connections open: listed until those end.
    pub fn leaving(&self) -> impl Iterator<Item = &Arc<Server>> {
        self.leaving.iter().filter(|s| s.active() > 0)
    }

    /// Every server with this address, staying or leaving.
    fn find(&self, addr: SocketAddr) -> Option<&Arc<Server>> {
        self.servers
            .iter()
            .chain(&self.leaving)
            .find(|s| s.addr == addr)
    }
}

/// An upstream pool.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub spec: PoolSpec,
    members: ArcSwap<Members>,
    /// How long connections through this pool lasted; kept across reloads.
    pub durations: Arc<Durations>,
    /// The error that no server of the pool could be reached, one per client.
    pub unreachable: Throttle,
    /// DNS lookups that failed (the last good addresses stayed).
    pub dns_failures: AtomicU64,
}

/// Holds one active-connection slot on a server; released on drop.
#[derive(Debug)]
pub struct Lease {
    server: Arc<Server>,
}

impl Lease {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client's walk through the pool: the members it started with and the
/// servers it has tried, so each is tried at most once.
#[derive(Debug)]
pub struct Attempts {
    members: Arc<Members>,
    tried: Vec<bool>,
}

impl Pool {
    pub fn balance(&self) -> Balance {
        self.spec.balance
    }

    pub fn health(&self) -> HealthPolicy {
        self.spec.health
    }

    pub fn proxy_protocol(&self) -> Option<proxy_protocol::Send> {
        self.spec.proxy_protocol
    }

    /// The servers now.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    pub fn attempts(&self) -> Attempts {
        let members = self.members.load_full();
        let tried = vec![false; members.servers.len()];
        Attempts { members, tried }
    }

    /// The next server for a client, or `None` once every server was tried.
    ///
    /// Tiers, first non-empty wins: primaries that are up, backups that are up,
    /// primaries that are down, backups that are down. A server marked down is
    /// still tried when nothing better is left, so a whole pool marked down after
    /// an outage recovers on the first client instead of failing it. Drained
    /// servers are never picked. A server whose `fail_timeout` is over counts as
    /// up for the one client that claims its retry, as down for the others.
    pub fn next_server(&self, attempts: &mut Attempts, now: Instant) -> Option<Lease> {
        const TIERS: [(bool, bool); 4] =
            [(false, true), (true, true), (false, false), (true, false)];
        let members = Arc::clone(&attempts.members);
        let mut candidates = Vec::with_capacity(members.servers.len());
        // Each lost retry claim makes that server "down", so this ends.
        'pick: loop {
            for (backup, up) in TIERS {
                candidates.clear();
                candidates.extend(
                    members
                        .servers
                        .iter()
                        .enumerate()
                        .filter(|(i, s)| {
                            !attempts.tried[*i]
                                && !s.drain
                                && s.backup == backup
                                && s.is_up(now) == up
                        })
                        .map(|(index, s)| balance::Candidate {
                            index,
                            active: s.active(),
                            weight: s.weight,
                        }),
                );
                let Some(index) = balance::pick(self.balance(), &mut candidates, &members.scores)
                else {
                    continue;
                };
                let server = &members.servers[index];
                if up
                    && server.state.health.retry_due(now)
                    && !server.state.health.claim_retry(self.health(), now)
                {
                    continue 'pick;
                }
                attempts.tried[index] = true;
                server.state.active.fetch_add(1, Ordering::Relaxed);
                server
                    .state
                    .connect_attempts
                    .fetch_add(1, Ordering::Relaxed);
                return Some(Lease {
                    server: Arc::clone(server),
                });
            }
            return None;
        }
    }

    /// Records a failed connect; logs when it marks the server down.
    pub fn record_failure(
        &self,
        server: &Server,
        error: &std::io::Error,
        now: Instant,
    ) -> Transition {
        server
            .state
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        server.state.set_last_error("connect", error.to_string());
        let policy = self.health();
        let transition = server.state.health.record_failure(policy, now);
        if transition == Transition::MarkedDown {
            tracing::warn!(
                pool = %self.name,
                server = %server.label,
                fail_timeout = %humantime::format_duration(policy.fail_timeout),
                "server marked down after {} failed connect(s); retried after fail_timeout",
                policy.max_fails,
            );
        }
        transition
    }

    /// A connect that could not even start for lack of a local resource
    /// (descriptors, memory, ports): not the server's doing, so not counted
    /// as an attempt at it either.
    pub fn record_local_failure(&self, server: &Server) {
        server
            .state
            .connect_attempts
            .fetch_sub(1, Ordering::Relaxed);
    }

    pub fn record_success(&self, server: &Server) {
        if server.state.health.record_success() {
            tracing::info!(pool = %self.name, server = %server.label, "server is up again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::spec::{Host, ServerSpec};
    use super::*;
    use std::time::Duration;

    /// (address, weight, backup, drain)
    fn pool(servers: &[(&str, u32, bool, bool)], max_fails: u32) -> Arc<Pool> {
        let servers = servers
            .iter()
            .map(|&(addr, weight, backup, drain)| {
                let addr: SocketAddr = addr.parse().unwrap();
                ServerSpec {
                    host: Host::Addr(addr),
                    weight,
                    backup,
                    drain,
                    addrs: vec![addr],
                }
            })
            .collect();
        Registry::default().pool(PoolSpec {
            name: Arc::from("p"),
            balance: Balance::LeastConn,
            health: HealthPolicy {
                max_fails,
                fail_timeout: Duration::from_secs(5),
            },
            check: None,
            dns_refresh: spec::DNS_REFRESH,
            proxy_protocol: None,
            servers,
        })
    }

    fn order(pool: &Pool, now: Instant) -> Vec<SocketAddr> {
        let mut attempts = pool.attempts();
        std::iter::from_fn(|| {
            pool.next_server(&mut attempts, now)
                .map(|l| l.server().addr)
        })
        .collect()
    }

    fn fail(pool: &Pool, server: &Server, now: Instant) -> Transition {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        pool.record_failure(server, &refused, now)
    }

    fn server(pool: &Pool, i: usize) -> Arc<Server> {
        Arc::clone(&pool.members().servers[i])
    }

    #[test]
    fn every_server_at_most_once_per_client_backups_last() {
        let p = pool(
            &[
                ("127.0.0.2:1", 1, false, false),
                ("127.0.0.9:1", 1, true, false),
                ("127.0.0.3:1", 1, false, false),
            ],
            1,
        );
        let got = order(&p, Instant::now());
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], "127.0.0.9:1".parse().unwrap());
    }

    #[test]
    fn backup_only_when_no_primary_is_up() {
        let p = pool(
            &[
                ("127.0.0.2:1", 1, false, false),
                ("127.0.0.9:1", 1, true, false),
            ],
            1,
        );
        let now = Instant::now();
        assert_eq!(order(&p, now)[0], "127.0.0.2:1".parse().unwrap());
        fail(&p, &server(&p, 0), now);
        assert_eq!(
            order(&p, now),
            [
                "127.0.0.9:1".parse().unwrap(),
                "127.0.0.2:1".parse().unwrap()
            ]
        );
        // After fail_timeout the primary is first again.
        assert_eq!(
            order(&p, now + Duration::from_secs(5))[0],
            "127.0.0.2:1".parse().unwrap()
        );
    }

    #[test]
    fn down_servers_are_still_tried_when_all_are_down() {
        let p = pool(
            &[
                ("127.0.0.2:1", 1, false, false),
                ("127.0.0.3:1", 1, false, false),
            ],
            1,
        );
        let now = Instant::now();
        for s in &p.members().servers {
            fail(&p, s, now);
        }
        assert_eq!(order(&p, now).len(), 2);
    }

    #[test]
    fn drained_servers_are_never_picked_even_when_nothing_else_is_left() {
        let p = pool(
            &[
                ("127.0.0.2:1", 1, false, true),
                ("127.0.0.3:1", 1, false, false),
            ],
            1,
        );
        let now = Instant::now();
        assert_eq!(order(&p, now), ["127.0.0.3:1".parse().unwrap()]);
        fail(&p, &server(&p, 1), now);
        assert_eq!(order(&p, now), ["127.0.0.3:1".parse().unwrap()]);
        assert_eq!(server(&p, 0).condition(now), State::Draining);
    }

    #[test]
    fn after_fail_timeout_one_client_retries_the_server_the_others_go_elsewhere() {
        let p = pool(
            &[
                ("127.0.0.2:1", 1, false, false),
                ("127.0.0.3:1", 1, false, false),
            ],
            1,
        );
        let t0 = Instant::now();
        let down = server(&p, 0);
        fail(&p, &down, t0);
        // Keep the other server busy, so least_conn alone would pick the one that was down.
        let mut held: Vec<Lease> = (0..3)
            .map(|_| p.next_server(&mut p.attempts(), t0).unwrap())
            .collect();
        assert!(held.iter().all(|l| l.server().addr == server(&p, 1).addr));
        let later = t0 + Duration::from_secs(6);
        let first = p.next_server(&mut p.attempts(), later).unwrap();
        assert_eq!(first.server().addr, down.addr, "one trial");
        for _ in 0..5 {
            let next = p.next_server(&mut p.attempts(), later).unwrap();
            assert_eq!(
                next.server().addr,
                server(&p, 1).addr,
                "the others go to the up server"
            );
            held.push(next);
        }
        // The trial succeeds: the server takes its share again.
        p.record_success(&down);
        assert!(down.is_up(later));
        assert_eq!(server(&p, 0).condition(later), State::Up);
    }

    #[test]
    fn a_server_probes_have_down_is_tried_only_when_nothing_else_is_up() {
        let p = pool(
            &[
                ("127.0.0.2:1", 1, false, false),
                ("127.0.0.3:1", 1, false, false),
            ],
            1,
        );
        let now = Instant::now();
        let s = server(&p, 0);
        for _ in 0..3 {
            s.live().probe.record(false, 2, 3);
        }
        assert_eq!(s.condition(now), State::ProbeDown);
        assert!(!s.is_up(now));
        assert_eq!(
            order(&p, now),
            [
                "127.0.0.3:1".parse().unwrap(),
                "127.0.0.2:1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn leases_count_active_connections_until_dropped() {
        let p = pool(
            &[
                ("127.0.0.2:1", 1, false, false),
                ("127.0.0.3:1", 1, false, false),
            ],
            1,
        );
        let now = Instant::now();
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut attempts = p.attempts();
            held.push(p.next_server(&mut attempts, now).unwrap());
        }
        assert_eq!((server(&p, 0).active(), server(&p, 1).active()), (2, 2));
        held.clear();
        assert_eq!((server(&p, 0).active(), server(&p, 1).active()), (0, 0));
    }

    #[test]
    fn success_brings_a_down_server_back() {
        let p = pool(&[("127.0.0.2:1", 1, false, false)], 1);
        let now = Instant::now();
        let s = server(&p, 0);
        fail(&p, &s, now);
        assert!(!s.is_up(now));
        assert!(matches!(s.condition(now), State::Failed { .. }));
        p.record_success(&s);
        assert!(s.is_up(now));
    }
}
