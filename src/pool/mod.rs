//! Upstream pools: servers, their live state, and which one a client gets next.
//!
//! A [`Pool`] is immutable configuration plus, per server, a shared
//! [`ServerState`] (active connections, passive health, traffic counters). The
//! state sits behind an `Arc` of its own so that it can outlive one config
//! generation: a reload hands it to the same server in the new config, and the
//! metrics read it at scrape time. Active counts are only ever changed by a
//! [`Lease`]: taken when a server is picked, given back on drop, so no early
//! return can leak a count.

pub mod balance;
pub mod health;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use balance::Balance;

use crate::histogram::Durations;
use crate::proxy_protocol;
use crate::throttle::Throttle;
pub use health::HealthPolicy;
use health::SharedHealth;
pub use health::Transition;

/// Live, per-server state shared by every connection to it.
#[derive(Debug, Default)]
pub struct ServerState {
    active: AtomicU64,
    health: SharedHealth,
    connect_attempts: AtomicU64,
    connect_failures: AtomicU64,
    /// Client → server bytes, the replayed head included.
    pub bytes_up: AtomicU64,
    /// Server → client bytes.
    pub bytes_down: AtomicU64,
}

/// A snapshot of a server's counters, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub active: u64,
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl ServerState {
    pub fn counters(&self) -> Counters {
        Counters {
            active: self.active.load(Ordering::Relaxed),
            connect_attempts: self.connect_attempts.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }
}

/// One configured server of a pool.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// How the operator wrote it (`node1.lan:443`), for logs.
    pub label: Arc<str>,
    pub weight: u32,
    pub backup: bool,
    state: Arc<ServerState>,
}

impl Server {
    /// `state` is fresh (`Arc::default()`) for a new server, or the state of the
    /// same server in the previous config generation.
    pub fn new(
        addr: SocketAddr,
        label: Arc<str>,
        weight: u32,
        backup: bool,
        state: Arc<ServerState>,
    ) -> Server {
        Server {
            addr,
            label,
            weight,
            backup,
            state,
        }
    }

    /// The live state, shared with every config generation that has this server.
    pub fn state(&self) -> Arc<ServerState> {
        Arc::clone(&self.state)
    }

    pub fn active(&self) -> u64 {
        self.state.active.load(Ordering::Relaxed)
    }

    pub fn is_up(&self, now: Instant) -> bool {
        self.state.health.is_up(now)
    }

    /// The live state (counters, health), shared across config generations.
    pub fn live(&self) -> &ServerState {
        &self.state
    }
}

/// An upstream pool.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub balance: Balance,
    pub health: HealthPolicy,
    pub servers: Vec<Server>,
    /// How long connections through this pool lasted; kept across reloads.
    pub durations: Arc<Durations>,
    /// The PROXY protocol header its servers expect, if any.
    pub proxy_protocol: Option<proxy_protocol::Send>,
    /// Smooth weighted round-robin scores, one per server.
    scores: Box<[AtomicI64]>,
    /// The error that no server of the pool could be reached, one per client.
    pub unreachable: Throttle,
}

/// Holds one active-connection slot on a server; released on drop.
#[derive(Debug)]
pub struct Lease {
    state: Arc<ServerState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The servers one client has already tried, so each is tried at most once.
#[derive(Debug)]
pub struct Attempts {
    tried: Vec<bool>,
}

impl Pool {
    pub fn new(
        name: Arc<str>,
        balance: Balance,
        health: HealthPolicy,
        servers: Vec<Server>,
        durations: Arc<Durations>,
    ) -> Pool {
        let scores = balance::scores(servers.len());
        Pool {
            name,
            balance,
            health,
            servers,
            durations,
            proxy_protocol: None,
            scores,
            unreachable: Throttle::default(),
        }
    }

    pub fn attempts(&self) -> Attempts {
        Attempts {
            tried: vec![false; self.servers.len()],
        }
    }

    /// The next server for a client, or `None` once every server was tried.
    ///
    /// Tiers, first non-empty wins: primaries that are up, backups that are up,
    /// primaries that are down, backups that are down. A server marked down is
    /// still tried when nothing better is left, so a whole pool marked down after
    /// an outage recovers on the first client instead of failing it.
    pub fn next_server(&self, attempts: &mut Attempts, now: Instant) -> Option<(&Server, Lease)> {
        const TIERS: [(bool, bool); 4] =
            [(false, true), (true, true), (false, false), (true, false)];
        let mut candidates = Vec::with_capacity(self.servers.len());
        for (backup, up) in TIERS {
            candidates.clear();
            candidates.extend(
                self.servers
                    .iter()
                    .enumerate()
                    .filter(|(i, s)| {
                        !attempts.tried[*i] && s.backup == backup && s.is_up(now) == up
                    })
                    .map(|(index, s)| balance::Candidate {
                        index,
                        active: s.active(),
                        weight: s.weight,
                    }),
            );
            if candidates.is_empty() {
                continue;
            }
            if let Some(index) = balance::pick(self.balance, &mut candidates, &self.scores) {
                attempts.tried[index] = true;
                let server = &self.servers[index];
                server.state.active.fetch_add(1, Ordering::Relaxed);
                server
                    .state
                    .connect_attempts
                    .fetch_add(1, Ordering::Relaxed);
                return Some((
                    server,
                    Lease {
                        state: Arc::clone(&server.state),
                    },
                ));
            }
        }
        None
    }

    /// Records a failed connect; logs when it marks the server down.
    pub fn record_failure(&self, server: &Server, now: Instant) -> Transition {
        server
            .state
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        let transition = server.state.health.record_failure(self.health, now);
        if transition == Transition::MarkedDown {
            tracing::warn!(
                pool = %self.name,
                server = %server.label,
                fail_timeout = %humantime::format_duration(self.health.fail_timeout),
                "server marked down after {} failed connect(s); retried after fail_timeout",
                self.health.max_fails,
            );
        }
        transition
    }

    pub fn record_success(&self, server: &Server) {
        if server.state.health.record_success() {
            tracing::info!(pool = %self.name, server = %server.label, "server is up again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(servers: &[(&str, u32, bool)], max_fails: u32) -> Pool {
        let servers = servers
            .iter()
            .map(|&(addr, weight, backup)| {
                Server::new(
                    addr.parse().unwrap(),
                    Arc::from(addr),
                    weight,
                    backup,
                    Arc::default(),
                )
            })
            .collect();
        let health = HealthPolicy {
            max_fails,
            fail_timeout: Duration::from_secs(5),
        };
        Pool::new(
            Arc::from("p"),
            Balance::LeastConn,
            health,
            servers,
            Arc::default(),
        )
    }

    fn order(pool: &Pool, now: Instant) -> Vec<SocketAddr> {
        let mut attempts = pool.attempts();
        std::iter::from_fn(|| pool.next_server(&mut attempts, now).map(|(s, _)| s.addr)).collect()
    }

    #[test]
    fn every_server_at_most_once_per_client_backups_last() {
        let p = pool(
            &[
                ("127.0.0.2:1", 1, false),
                ("127.0.0.9:1", 1, true),
                ("127.0.0.3:1", 1, false),
            ],
            1,
        );
        let got = order(&p, Instant::now());
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], "127.0.0.9:1".parse().unwrap());
    }

    #[test]
    fn backup_only_when_no_primary_is_up() {
        let p = pool(&[("127.0.0.2:1", 1, false), ("127.0.0.9:1", 1, true)], 1);
        let now = Instant::now();
        assert_eq!(order(&p, now)[0], "127.0.0.2:1".parse().unwrap());
        p.record_failure(&p.servers[0], now);
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
        let p = pool(&[("127.0.0.2:1", 1, false), ("127.0.0.3:1", 1, false)], 1);
        let now = Instant::now();
        for s in &p.servers {
            p.record_failure(s, now);
        }
        assert_eq!(order(&p, now).len(), 2);
    }

    #[test]
    fn leases_count_active_connections_until_dropped() {
        let p = pool(&[("127.0.0.2:1", 1, false), ("127.0.0.3:1", 1, false)], 1);
        let now = Instant::now();
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut attempts = p.attempts();
            let (_, lease) = p.next_server(&mut attempts, now).unwrap();
            held.push(lease);
        }
        assert_eq!((p.servers[0].active(), p.servers[1].active()), (2, 2));
        held.clear();
        assert_eq!((p.servers[0].active(), p.servers[1].active()), (0, 0));
    }

    #[test]
    fn success_brings_a_down_server_back() {
        let p = pool(&[("127.0.0.2:1", 1, false)], 1);
        let now = Instant::now();
        p.record_failure(&p.servers[0], now);
        assert!(!p.servers[0].is_up(now));
        p.record_success(&p.servers[0]);
        assert!(p.servers[0].is_up(now));
    }
}
