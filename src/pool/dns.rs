//! DNS refresh: a pool's server names are resolved again every `dns_refresh`.
//!
//! Lookups go through the system resolver, as at load (so `/etc/hosts` is read
//! again each time), on the blocking pool: `getaddrinfo` may take seconds and
//! must not hold a runtime thread. New addresses join the pool; addresses that
//! left DNS take no new connections and are listed as leaving while their open
//! connections finish. A failed lookup keeps the name's last good addresses.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::spec::Host;
use super::{Members, Pool};

/// Refreshes `pool`'s names until aborted (by the next reload).
pub async fn run(pool: Arc<Pool>) {
    let every = pool.spec.dns_refresh;
    // Last good addresses per server entry; entries given as addresses never change.
    let mut known: Vec<Vec<SocketAddr>> = pool
        .spec
        .servers
        .iter()
        .map(|s| {
            let mut addrs = s.addrs.clone();
            addrs.sort_unstable();
            addrs
        })
        .collect();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut changed = false;
        for (entry, addrs) in pool.spec.servers.iter().zip(known.iter_mut()) {
            let Host::Name { name, port } = &entry.host else {
                continue;
            };
            match lookup(Arc::clone(name), *port).await {
                Ok(mut found) => {
                    found.sort_unstable();
                    found.dedup();
                    if found != *addrs {
                        tracing::info!(
                            pool = %pool.name,
                            server = %format_args!("{name}:{port}"),
                            was = ?addrs,
                            now = ?found,
                            "server name resolves to other addresses; new ones join, gone ones drain"
                        );
                        *addrs = found;
                        changed = true;
                    }
                }
                Err(e) => {
                    pool.dns_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        pool = %pool.name,
                        server = %format_args!("{name}:{port}"),
                        kept = ?addrs,
                        "DNS lookup failed, keeping the last good addresses: {e}"
                    );
                }
            }
        }
        let old = pool.members();
        // Leaving servers whose last connection ended are dropped from the list.
        if changed || old.leaving.iter().any(|s| s.active() == 0) {
            let addrs: Vec<&[SocketAddr]> = known.iter().map(Vec::as_slice).collect();
            pool.members
                .store(Arc::new(Members::build(&pool.spec, &addrs, Some(&old))));
        }
    }
}

/// The addresses of `name:port`, or why there are none.
async fn lookup(name: Arc<str>, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let found = tokio::task::spawn_blocking(move || {
        (&*name, port)
            .to_socket_addrs()
            .map(|addrs| addrs.collect::<Vec<_>>())
    })
    .await
    .map_err(std::io::Error::other)??;
    if found.is_empty() {
        return Err(std::io::Error::other("the name has no address"));
    }
    Ok(found)
}
