//! Pick a server and connect, moving on to the next one at once on failure.
//!
//! Each server of the pool is tried at most once per client (see
//! [`Pool::next_server`] for the order). A refused, unreachable or timed-out
//! connect counts against the server's passive health; a success clears it.
//! A connect that fails for lack of a local resource (no file descriptor, no
//! memory, no ephemeral port) says nothing about the server: it counts against
//! none, and the client is given up at once, since every other server would
//! need the same resource.

use std::io;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::pool::{Lease, Pool, Transition};
use crate::resources::{self, Operation, Resource};

/// An open upstream connection, with the slot it holds on its server.
pub struct Connected {
    pub stream: TcpStream,
    pub lease: Lease,
}

/// Every server of the pool failed for this client, or a local resource ran out.
#[derive(Debug, thiserror::Error)]
pub struct ConnectError {
    pub pool: String,
    pub attempts: usize,
    pub last: io::Error,
    /// Set when `last` was a local shortage, not a server's failure.
    pub local: Option<Resource>,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (pool, last) = (&self.pool, &self.last);
        match self.local {
            Some(resource) => write!(
                f,
                "cannot connect to a server of pool `{pool}`: {}: {last}",
                resource.advice()
            ),
            None => write!(
                f,
                "all {} server(s) of pool `{pool}` failed; last error: {last}",
                self.attempts
            ),
        }
    }
}

pub async fn connect(pool: &Pool, timeout: Duration) -> Result<Connected, ConnectError> {
    let mut attempts = pool.attempts();
    let mut tried = 0;
    // Made only when needed: an `io::Error` with a message is three allocations.
    let mut last = None;
    while let Some(lease) = pool.next_server(&mut attempts, Instant::now()) {
        let server = lease.server();
        tried += 1;
        let result = match tokio::time::timeout(timeout, TcpStream::connect(server.addr)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            )),
        };
        match result {
            Ok(stream) => {
                pool.record_success(server);
                // Small writes (TLS handshake records) must not wait for Nagle.
                stream.set_nodelay(true).ok();
                return Ok(Connected { stream, lease });
            }
            Err(e) => {
                if let Some(resource) = Resource::of(&e) {
                    pool.record_local_failure(server);
                    if let Some(held_back) = resources::record(Operation::UpstreamConnect, resource)
                    {
                        tracing::error!(pool = %pool.name, held_back, error = %e, "{}; closing the client, no server is blamed", resource.advice());
                    }
                    return Err(ConnectError {
                        pool: pool.name.to_string(),
                        attempts: tried,
                        last: e,
                        local: Some(resource),
                    });
                }
                // A server already marked down was only tried because nothing
                // better was left: its failure is expected, and while a whole
                // pool is down, one warning per client would flood the log.
                if pool.record_failure(server, &e, Instant::now()) == Transition::StillDown {
                    tracing::debug!(pool = %pool.name, server = %server.label, error = %e, "connect failed to a server marked down; trying the next server");
                } else {
                    tracing::warn!(pool = %pool.name, server = %server.label, error = %e, "connect failed; trying the next server");
                }
                last = Some(e);
            }
        }
    }
    Err(ConnectError {
        pool: pool.name.to_string(),
        attempts: tried,
        last: last.unwrap_or_else(|| io::Error::other("pool has no servers")),
        local: None,
    })
}
