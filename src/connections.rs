//! Open client connections, counted against `max_connections` (all listeners
//! together) and `max_connections_per_ip`.
//!
//! Each count is held by a guard that the connection task owns and that gives
//! it back on drop ([`Slot`], [`ClientSlot`]), so no early return can leak one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Open client connections, across all listeners, and per client address.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
    none_open: Notify,
    /// Open connections per client address; only kept while a per-client limit
    /// is configured. Locked for a hash-map update at accept and at close.
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place in [`Connections`]; given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Connections>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_open.notify_waiters();
        }
    }
}

/// One connection's place in the per-client count; given back on drop.
#[derive(Debug)]
pub struct ClientSlot {
    connections: Arc<Connections>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut per_client = self.connections.per_client();
        if let Some(n) = per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

impl Connections {
    /// A slot if fewer than `max` connections are open.
    pub fn try_open(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }

    /// A per-client slot if fewer than `max` connections are open from `client`'s
    /// address. Taken once the client's real address is known (after a PROXY
    /// header, where there is one).
    pub fn try_open_client(self: &Arc<Self>, max: usize, client: IpAddr) -> Option<ClientSlot> {
        // An IPv4 client on a dual-stack socket is one client, however it is spelled.
        let client = client.to_canonical();
        let mut per_client = self.per_client();
        let n = per_client.entry(client).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            connections: Arc::clone(self),
            client,
        })
    }

    fn per_client(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.none_open.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_limit_and_release_on_drop() {
        let c = Arc::new(Connections::default());
        let a = c.try_open(2).unwrap();
        let _b = c.try_open(2).unwrap();
        assert!(c.try_open(2).is_none());
        drop(a);
        assert_eq!(c.open(), 1);
        assert!(c.try_open(2).is_some());
    }

    #[test]
    fn per_client_limit_counts_each_address_alone() {
        let c = Arc::new(Connections::default());
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let other: IpAddr = "2001:db8::1".parse().unwrap();
        let a = c.try_open_client(2, one).unwrap();
        let b = c.try_open_client(2, mapped).unwrap();
        assert!(
            c.try_open_client(2, one).is_none(),
            "v4-mapped is the same client"
        );
        let d = c.try_open_client(2, other).unwrap();
        drop(a);
        let e = c.try_open_client(2, one).unwrap();
        drop((b, d, e));
        assert!(c.per_client().is_empty(), "entries are removed at zero");
    }
}
