//! One client connection, top to bottom: peek → route → connect → relay.
//!
//! Every connection ends in exactly one [`Outcome`], counted in the listener's
//! metrics and written as one access-log line. The connection holds one config
//! snapshot from start to end.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::connect::connect;
use crate::connections::{ClientSlot, Connections};
use crate::logging::AccessLog;
use crate::metrics::ListenerStats;
use crate::name::HostName;
use crate::outcome::Outcome;
use crate::peek::PeekError;
use crate::peek::{self, http, tls, Protocol};
use crate::pool::Pool;
use crate::proxy_protocol::{self, Addresses};
use crate::relay::{self, relay, Tally};
use crate::shutdown::{Phase, Shutdown};

/// Which listener a connection came in on, with the config it will use.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub config: Arc<Config>,
    /// Index into `config.listeners`.
    pub listener: usize,
    /// The address this connection was accepted on.
    pub bind: SocketAddr,
    pub stats: Arc<ListenerStats>,
    pub connections: Arc<Connections>,
}

impl From<relay::End> for Outcome {
    fn from(end: relay::End) -> Outcome {
        match end {
            relay::End::Closed => Outcome::Closed,
            relay::End::Idle => Outcome::IdleTimeout,
            relay::End::ClientError => Outcome::ClientError,
            relay::End::UpstreamError => Outcome::UpstreamError,
            relay::End::Shutdown => Outcome::Shutdown,
        }
    }
}

pub async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    endpoint: Endpoint,
    mut shutdown: Shutdown,
) {
    let started = Instant::now();
    let mut log = AccessLog::new(peer, endpoint.bind);
    let mut pool = None;
    let outcome = serve(&mut client, &endpoint, &mut log, &mut pool, &mut shutdown).await;
    let elapsed = started.elapsed();
    endpoint.stats.closed(outcome);
    if let Some(pool) = pool {
        pool.durations.observe(elapsed);
    }
    // Refusals at a limit are counted, not logged one by one: under the flood
    // that causes them, the log would become the bottleneck.
    if outcome != Outcome::OverClientLimit {
        log.emit(outcome, elapsed);
    }
}

async fn serve<'e>(
    client: &mut TcpStream,
    endpoint: &'e Endpoint,
    log: &mut AccessLog<'e>,
    pool: &mut Option<&'e Pool>,
    shutdown: &mut Shutdown,
) -> Outcome {
    let config = &*endpoint.config;
    let listener = &config.listeners[endpoint.listener];
    client.set_nodelay(true).ok();
    // The client's real addresses when a balancer in front told us (PROXY header).
    let mut proxied: Option<Addresses> = None;
    let peek_failed = |log: &mut AccessLog, e: PeekError| {
        let reason = e.reason();
        tracing::debug!(client = %log.client, listener = %endpoint.bind, reason = reason.as_str(), "peek failed: {e}");
        endpoint.stats.peek_failed(reason);
        log.reason = reason.as_str().to_owned();
        Outcome::PeekFailed
    };

    // Held to the end of the connection: its place in the per-client count.
    let mut _client_slot = None;
    match &listener.proxy_from {
        Some(from) => {
            let source = log.client.ip().to_canonical();
            if !from.iter().any(|net| net.contains(&source)) {
                return peek_failed(log, PeekError::ProxySource);
            }
        }
        None => match take_client_slot(endpoint, log.client) {
            Ok(slot) => _client_slot = slot,
            Err(AtClientLimit) => return Outcome::OverClientLimit,
        },
    }

    let mut peeked = match peek::peek(
        client,
        listener.protocol,
        config.limits.max_peek_bytes,
        config.timeouts.peek,
        listener.proxy_from.is_some(),
    )
    .await
    {
        Ok(peeked) => peeked,
        Err(e) => return peek_failed(log, e),
    };
    if let Some(told) = peeked.proxied {
        // From here on the client is the one the balancer in front spoke for.
        proxied = Some(told);
        log.client = told.client;
        match take_client_slot(endpoint, log.client) {
            Ok(slot) => _client_slot = slot,
            Err(AtClientLimit) => return Outcome::OverClientLimit,
        }
    }
    log.host = peeked.name.clone();

    let Some(route) = listener.router.route(peeked.name.as_ref()) else {
        endpoint.stats.no_route();
        log.reason = "no_route".to_owned();
        reject(client, listener.protocol).await;
        return Outcome::NoRoute;
    };
    route.target.routed.fetch_add(1, Ordering::Relaxed);
    let target_pool = &*route.target.pool;
    log.route = Some(&route.pattern);
    log.pool = Some(&target_pool.name);
    *pool = Some(target_pool);

    let mut upstream = match connect(target_pool, config.timeouts.connect).await {
        Ok(connected) => connected,
        Err(e) => {
            if let Some(held_back) = target_pool.unreachable.admit() {
                tracing::error!(client = %log.client, pool = %e.pool, held_back, "no server reachable: {e}");
            }
            log.reason = e.last.to_string();
            return Outcome::ConnectFailed;
        }
    };
    log.server = Some(upstream.server.addr);
    let live = upstream.server.live();

    // The PROXY header (if the pool wants one) and the peeked bytes, in one write.
    let head = peeked.bytes.len() as u64;
    let first = match target_pool.proxy_protocol {
        Some(send) => {
            // Only now, and only for such pools, ask the kernel where the client
            // connected to (a getsockname per connection otherwise).
            let addresses = proxied.unwrap_or_else(|| Addresses {
                client: log.client,
                local: client.local_addr().unwrap_or(endpoint.bind),
            });
            let mut first =
                proxy_protocol::header(send, addresses, peeked.name.as_ref().map(HostName::as_str));
            first.extend_from_slice(&peeked.bytes);
            first
        }
        None => std::mem::take(&mut peeked.bytes),
    };
    if let Err(e) = upstream.stream.write_all(&first).await {
        log.reason = format!("sending the peeked bytes: {e}");
        return Outcome::UpstreamError;
    }
    live.bytes_up.fetch_add(head, Ordering::Relaxed);
    drop((peeked, first));

    let tally = Tally {
        up: &live.bytes_up,
        down: &live.bytes_down,
    };
    let closing = shutdown.reached(Phase::Closing);
    let totals = relay(
        client,
        &upstream.stream,
        config.timeouts.idle,
        tally,
        closing,
    )
    .await;
    log.bytes_up = head + totals.up;
    log.bytes_down = totals.down;
    totals.end.into()
}

/// The client is at `max_connections_per_ip`.
struct AtClientLimit;

/// A place in the per-client count for `client`, if a limit is set (`Ok(None)`
/// if not). At the limit, a warning says so, at most every 5 s per listener.
fn take_client_slot(
    endpoint: &Endpoint,
    client: SocketAddr,
) -> Result<Option<ClientSlot>, AtClientLimit> {
    let Some(max) = endpoint.config.limits.max_connections_per_ip else {
        return Ok(None);
    };
    match endpoint.connections.try_open_client(max, client.ip()) {
        Some(slot) => Ok(Some(slot)),
        None => {
            if let Some(held_back) = endpoint.stats.client_limit_warning.admit() {
                tracing::warn!(listener = %endpoint.bind, client = %client.ip(), held_back, "max_connections_per_ip reached; closing this client's new connections");
            }
            Err(AtClientLimit)
        }
    }
}

/// Tells a client without a route why it is refused: a fatal `unrecognized_name`
/// alert on TLS, `421 Misdirected Request` on HTTP.
async fn reject(client: &mut TcpStream, protocol: Protocol) {
    let message: &[u8] = match protocol {
        Protocol::Tls => &tls::UNRECOGNIZED_NAME_ALERT,
        Protocol::Http => http::MISDIRECTED_RESPONSE,
    };
    if client.write_all(message).await.is_err() || client.shutdown().await.is_err() {
        return;
    }
    // Closing with unread input would reset the connection and could destroy the
    // answer before the client reads it: drain a little, briefly, first.
    let drain = async {
        // On the heap: a stack array here would enlarge every connection's future.
        let mut sink = vec![0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection is one of these futures: a stack buffer creeping into
    /// any step (as a 4 KiB drain buffer once did) multiplies by the connection count.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let text = "[[listeners]]\nbind = \"127.0.0.1:1\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
                    [upstreams.p]\nservers = [\"127.0.0.2:1\"]\n";
        let config = Arc::new(crate::config::parse(text, std::path::Path::new("t.toml")).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bind = listener.local_addr().unwrap();
        let _client = TcpStream::connect(bind).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let endpoint = Endpoint {
            config,
            listener: 0,
            bind,
            stats: Arc::default(),
            connections: Arc::default(),
        };
        let (_phase, shutdown) = crate::shutdown::channel();
        let task = handle(stream, peer, endpoint, shutdown);
        assert!(
            std::mem::size_of_val(&task) <= 3 * 1024,
            "{} bytes",
            std::mem::size_of_val(&task)
        );
    }

    #[test]
    fn outcome_all_is_in_declaration_order() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
        for (i, r) in crate::peek::Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
