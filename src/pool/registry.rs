//! The live pools, and the state of their servers across config generations.
//!
//! Health is state that outlives a config: the config only describes pools
//! ([`PoolSpec`]); the registry builds the live [`Pool`] for each, handing every
//! server the [`ServerState`] that the same (pool, address) had in the running
//! generation, so active counts, health, probe streaks and certificate facts
//! carry over a reload. It also owns what keeps pools current between reloads:
//! one probe task per pool with a `health_check`, one DNS task per pool with
//! server names. Reload, probes, DNS refresh, metrics and the status page all
//! read the same pools.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use std::net::SocketAddr;

use super::spec::{Host, PoolSpec};
use super::{dns, probe, Members, Pool, Server};
use crate::throttle::Throttle;

/// The running generation's pools and their background tasks.
#[derive(Debug, Default)]
pub struct Registry {
    running: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    pools: BTreeMap<Arc<str>, Arc<Pool>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Registry {
    /// The live pool for `spec`: servers that the running pool of the same name
    /// has keep their state; a server a reload removed that still has open
    /// connections stays listed as leaving until they end.
    pub fn pool(&self, spec: PoolSpec) -> Arc<Pool> {
        let running = self.lock();
        let old = running.pools.get(&spec.name).map(|p| p.members());
        let addrs: Vec<&[SocketAddr]> = spec.servers.iter().map(|s| &s.addrs[..]).collect();
        let members = members(&spec, &addrs, old.as_deref());
        let durations = running
            .pools
            .get(&spec.name)
            .map_or_else(Arc::default, |p| Arc::clone(&p.durations));
        Arc::new(Pool {
            name: Arc::clone(&spec.name),
            spec,
            members: ArcSwap::from_pointee(members),
            durations,
            unreachable: Throttle::default(),
            dns_failures: Default::default(),
        })
    }

    /// Makes `pools` the running generation: stops the tasks of the previous
    /// one and starts probes and DNS refresh for these. Must run on the runtime.
    pub fn commit(&self, pools: &BTreeMap<Arc<str>, Arc<Pool>>) {
        let mut running = self.lock();
        for task in running.tasks.drain(..) {
            task.abort();
        }
        running.pools = pools.clone();
        for pool in pools.values() {
            if let Some(check) = pool.spec.check.clone() {
                running
                    .tasks
                    .push(tokio::spawn(probe::run(Arc::clone(pool), check)));
            }
            if pool
                .spec
                .servers
                .iter()
                .any(|s| matches!(s.host, Host::Name { .. }))
            {
                running.tasks.push(tokio::spawn(dns::run(Arc::clone(pool))));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        // Nothing in it can be left half-changed by a panic: keep using it.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for task in self.lock().tasks.drain(..) {
            task.abort();
        }
    }
}

/// The members for `spec` with `addrs[i]` the addresses of its `i`th server
/// entry: each server keeps the state it has in `old`, if any; servers of
/// `old` left out that still have connections open are listed as leaving
/// until those end.
pub(super) fn members(spec: &PoolSpec, addrs: &[&[SocketAddr]], old: Option<&Members>) -> Members {
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
