//! The live pools, and the state of their servers across config generations.
//!
//! Health is state that outlives a config: the config only describes pools
//! ([`PoolSpec`]); the registry builds the live [`Pool`] for each, handing every
//! server the [`ServerState`](super::ServerState) that the same (pool, address) had in the running
//! generation, so active counts, health, probe streaks and certificate facts
//! carry over a reload. It also owns what keeps pools current between reloads:
//! one probe task per pool with a `health_check`, one DNS task per pool with
//! server names. Reload, probes, DNS refresh, metrics and the status page all
//! read the same pools.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::spec::{Host, PoolSpec};
use super::{dns, probe, Members, Pool};
use crate::throttle::Throttle;

/// The running generation's pools and their background tasks.
#[derive(Debug, Default)]
pub struct Registry {
    running: Mutex<Running>,
    /// Where probes and DNS refresh run, started with the first of them.
    health: OnceLock<Option<Handle>>,
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
        let members = Members::build(&spec, &addrs, old.as_deref());
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
    /// one and starts probes and DNS refresh for these.
    pub fn commit(&self, pools: &BTreeMap<Arc<str>, Arc<Pool>>) {
        let mut running = self.lock();
        for task in running.tasks.drain(..) {
            task.abort();
        }
        running.pools = pools.clone();
        for pool in pools.values() {
            let names = pool
                .spec
                .servers
                .iter()
                .any(|s| matches!(s.host, Host::Name { .. }));
            if pool.spec.check.is_none() && !names {
                continue;
            }
            let Some(health) = self.health.get_or_init(start_health_thread) else {
                continue; // logged once, when the thread could not start
            };
            if let Some(check) = pool.spec.check.clone() {
                running
                    .tasks
                    .push(health.spawn(probe::run(Arc::clone(pool), check)));
            }
            if names {
                running.tasks.push(health.spawn(dns::run(Arc::clone(pool))));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        // Nothing in it can be left half-changed by a panic: keep using it.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A thread with a runtime of its own for probes and DNS refresh: their timers
/// and connects wake only it, never the proxy's workers (waking those, one
/// thread after another, cost more than the probes themselves).
fn start_health_thread() -> Option<Handle> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(
                "cannot start the health-check runtime; no health checks or DNS refresh: {e}"
            );
            return None;
        }
    };
    let handle = runtime.handle().clone();
    let started = std::thread::Builder::new()
        .name("sniroute-health".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()));
    match started {
        Ok(_) => Some(handle),
        Err(e) => {
            tracing::error!(
                "cannot start the health-check thread; no health checks or DNS refresh: {e}"
            );
            None
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for task in self.lock().tasks.drain(..) {
            task.abort();
        }
    }
}
