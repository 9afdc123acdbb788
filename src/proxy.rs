//! One client connection, top to bottom: peek → route → connect → relay.
//!
//! Every path out of [`handle`] writes exactly one access-log line. The connection
//! holds one config snapshot from start to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::connect::connect;
use crate::logging::AccessLog;
use crate::peek::{self, http, tls, Protocol};
use crate::relay::relay;
use crate::shutdown::{Phase, Shutdown};

/// Which listener a connection came in on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub config: Arc<Config>,
    /// Index into `config.listeners`.
    pub listener: usize,
    /// The address this connection was accepted on.
    pub bind: SocketAddr,
}

pub async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    endpoint: Endpoint,
    mut shutdown: Shutdown,
) {
    let started = Instant::now();
    let config = &*endpoint.config;
    let listener = &config.listeners[endpoint.listener];
    let mut log = AccessLog {
        client: peer,
        listener: endpoint.bind,
        host: None,
        route: None,
        pool: None,
        server: None,
        bytes_up: 0,
        bytes_down: 0,
        outcome: "",
        reason: String::new(),
    };
    client.set_nodelay(true).ok();

    let peeked = match peek::peek(
        &mut client,
        listener.protocol,
        config.limits.max_peek_bytes,
        config.timeouts.peek,
    )
    .await
    {
        Ok(peeked) => peeked,
        Err(e) => {
            tracing::debug!(client = %peer, listener = %endpoint.bind, reason = e.reason(), "peek failed: {e}");
            log.outcome = "peek_failed";
            log.reason = e.reason().to_owned();
            return log.emit(started.elapsed());
        }
    };
    log.host = peeked.name.clone();

    let Some(route) = listener.router.route(peeked.name.as_ref()) else {
        log.outcome = "no_route";
        log.reason = "no_route".to_owned();
        reject(&mut client, listener.protocol).await;
        return log.emit(started.elapsed());
    };
    log.route = Some(&route.pattern);
    log.pool = Some(&route.target.name);

    let mut upstream = match connect(&route.target, config.timeouts.connect).await {
        Ok(connected) => connected,
        Err(e) => {
            tracing::error!(client = %peer, pool = %e.pool, "no server reachable: {e}");
            log.outcome = "connect_failed";
            log.reason = e.last.to_string();
            return log.emit(started.elapsed());
        }
    };
    log.server = Some(upstream.server.addr);

    if let Err(e) = upstream.stream.write_all(&peeked.bytes).await {
        log.outcome = "upstream_error";
        log.reason = format!("replaying the peeked bytes: {e}");
        return log.emit(started.elapsed());
    }
    let closing = shutdown.reached(Phase::Closing);
    let totals = relay(
        &mut client,
        &mut upstream.stream,
        config.timeouts.idle,
        closing,
    )
    .await;
    log.bytes_up = peeked.bytes.len() as u64 + totals.up;
    log.bytes_down = totals.down;
    log.outcome = totals.end.as_str();
    log.emit(started.elapsed());
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
        let mut sink = [0u8; 4096];
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
