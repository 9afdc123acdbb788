//! Pick a server and connect, moving on to the next one at once on failure.
//!
//! Each server of the pool is tried at most once per client (see
//! [`Pool::next_server`] for the order). A refused, unreachable or timed-out
//! connect counts against the server's passive health; a success clears it.

use std::io;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::pool::{Lease, Pool, Transition};

/// An open upstream connection, with the slot it holds on its server.
pub struct Connected {
    pub stream: TcpStream,
    pub lease: Lease,
}

/// Every server of the pool failed for this client.
#[derive(Debug, thiserror::Error)]
#[error("all {attempts} server(s) of pool `{pool}` failed; last error: {last}")]
pub struct ConnectError {
    pub pool: String,
    pub attempts: usize,
    pub last: io::Error,
}

pub async fn connect(pool: &Pool, timeout: Duration) -> Result<Connected, ConnectError> {
    let mut attempts = pool.attempts();
    let mut tried = 0;
    let mut last = io::Error::other("pool has no servers");
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
                // A server already marked down was only tried because nothing
                // better was left: its failure is expected, and while a whole
                // pool is down, one warning per client would flood the log.
                if pool.record_failure(server, &e, Instant::now()) == Transition::StillDown {
                    tracing::debug!(pool = %pool.name, server = %server.label, error = %e, "connect failed to a server marked down; trying the next server");
                } else {
                    tracing::warn!(pool = %pool.name, server = %server.label, error = %e, "connect failed; trying the next server");
                }
                last = e;
            }
        }
    }
    Err(ConnectError {
        pool: pool.name.to_string(),
        attempts: tried,
        last,
    })
}
