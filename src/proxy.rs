//! One client connection, as four steps: admit → detect → route → forward.
//!
//! - **admit**: is this client let in at all? The listener's `allow`/`deny`
//!   and the per-client limit, checked against the real client: on a listener
//!   behind another balancer, only once its PROXY header has said who that is
//!   (the header is read first, from the sources allowed to send one).
//! - **detect**: read the ClientHello or request head, within `timeouts.peek`
//!   and `limits.max_peek_bytes`; a `tcp` listener reads nothing.
//! - **route**: name → route, and the route's own `allow`/`deny`.
//! - **forward**: connect to a server of the pool, replay what was read, relay.
//!
//! Each step either hands the next one what it needs or returns a [`Refusal`],
//! and [`Handler::refuse`] is the one place that turns a refusal into what the
//! client is told (an alert, a 4xx answer, or a plain close), the outcome, the
//! metrics and the log. Every connection ends in exactly one [`Outcome`],
//! counted in the listener's metrics and written as one access-log line (but
//! for refusals at a limit or by the listener's allow/deny, which a flood could
//! repeat for every connection: those are counted, and warned about through a
//! [`Throttle`](crate::throttle::Throttle)). The connection holds one config
//! snapshot from start to end.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Acme, Config, Listener, Target};
use crate::connect::{connect, ConnectError, Connected};
use crate::connections::{ClientSlot, Connections};
use crate::logging::AccessLog;
use crate::metrics::ListenerStats;
use crate::name::HostName;
use crate::outcome::Outcome;
use crate::peek::{self, http, tls, PeekError, Peeked, Protocol};
use crate::pool::Pool;
use crate::proxy_protocol::{self, Addresses};
use crate::relay::{self, relay, Tally};
use crate::route::Route;
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

/// Why a connection is not forwarded (or not to its end).
#[derive(Debug)]
enum Refusal {
    /// `max_connections_per_ip` connections are open from this address.
    OverClientLimit,
    /// The listener's `allow`/`deny` refuses the client: closed unread.
    ListenerDenied,
    /// The route's `allow`/`deny` refuses the client.
    RouteDenied,
    /// No complete, valid head (or PROXY header) arrived.
    Peek(PeekError),
    /// No route and no default for the name.
    NoRoute,
    /// An HTTP/2 preface, which names no host, on a listener without default.
    Http2WithoutDefault,
    /// No server of the pool could be reached.
    Connect(ConnectError),
    /// No route matched on a `redirect_https` listener: this 308 is the answer.
    Redirect(Vec<u8>),
    /// No route matched on a `redirect_https` listener, and the request named
    /// no host to redirect to.
    NoHost,
    /// An ACME challenge sniroute answers itself (`acme_thumbprint`) with this.
    AcmeAnswer(Vec<u8>),
}

/// One client connection's state as it goes through the steps.
struct Handler<'e> {
    client: TcpStream,
    endpoint: &'e Endpoint,
    listener: &'e Listener,
    log: AccessLog<'e>,
    /// What the relay moved; read at the end, also of a relay cut short.
    moved: relay::Moved,
    /// Set once routed: its connection-duration histogram gets this connection.
    pool: Option<&'e Pool>,
    /// The client's addresses from a PROXY header, when one named them.
    proxied: Option<Addresses>,
    /// Held to the end of the connection: its place in the per-client count.
    _client_slot: Option<ClientSlot>,
}

pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    endpoint: Endpoint,
    mut shutdown: Shutdown,
) {
    let started = Instant::now();
    let mut handler = Handler {
        client,
        listener: &endpoint.config.listeners[endpoint.listener],
        endpoint: &endpoint,
        log: AccessLog::new(peer, endpoint.bind),
        moved: relay::Moved::default(),
        pool: None,
        proxied: None,
        _client_slot: None,
    };
    // One watch on the shutdown for the whole connection, whatever step it is
    // in when the drain ends (a watch per step costs a waker registration each).
    let served = tokio::select! {
        biased;
        served = handler.serve() => Some(served),
        () = shutdown.reached(Phase::Closing) => None,
    };
    let (outcome, log_line) = match served {
        Some(Ok(outcome)) => (outcome, true),
        Some(Err(refusal)) => handler.refuse(refusal).await,
        None => {
            if handler.log.server.is_none() {
                handler.log.reason =
                    "the shutdown drain ended before the connection was forwarded".to_owned();
            }
            (Outcome::Shutdown, true)
        }
    };
    handler.log.bytes_up += handler.moved.up.load(Ordering::Relaxed);
    handler.log.bytes_down = handler.moved.down.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    endpoint.stats.closed(outcome);
    if let Some(pool) = handler.pool {
        pool.durations.observe(elapsed);
    }
    if log_line {
        handler.log.emit(outcome, elapsed);
    }
}

impl<'e> Handler<'e> {
    async fn serve(&mut self) -> Result<Outcome, Refusal> {
        self.client.set_nodelay(true).ok();
        let head = self.detect().await?;
        let target = match self.acme(&head)? {
            Some(target) => target,
            None => self.route(&head)?,
        };
        self.forward(target, head).await
    }

    /// Lets `client` in, or says why not: the listener's allow/deny, then the
    /// per-client limit.
    fn admit(&mut self, client: SocketAddr) -> Result<(), Refusal> {
        if let Some(access) = &self.listener.access {
            if !access.admits(client.ip()) {
                return Err(Refusal::ListenerDenied);
            }
        }
        let Some(max) = self.endpoint.config.limits.max_connections_per_ip else {
            return Ok(());
        };
        match self.endpoint.connections.try_open_client(max, client.ip()) {
            Some(slot) => {
                self._client_slot = Some(slot);
                Ok(())
            }
            None => Err(Refusal::OverClientLimit),
        }
    }

    /// Admits the client (after its PROXY header, where the listener takes one)
    /// and reads what it has to say before it is routed.
    async fn detect(&mut self) -> Result<Peeked, Refusal> {
        let config = &*self.endpoint.config;
        let protocol = self.listener.protocol;
        let max_bytes = config.limits.max_peek_bytes;
        let deadline = tokio::time::Instant::now() + config.timeouts.peek;
        let mut read = Vec::new();
        match &self.listener.proxy_from {
            None => self.admit(self.log.client)?,
            Some(from) => {
                let source = self.log.client.ip().to_canonical();
                if !from.iter().any(|net| net.contains(&source)) {
                    return Err(Refusal::Peek(PeekError::ProxySource));
                }
                let header = peek::proxy_header(&mut self.client, max_bytes);
                let (told, rest) = within(deadline, header).await?;
                if let Some(told) = told {
                    // From here on the client is the one the balancer spoke for.
                    self.proxied = Some(told);
                    self.log.client = told.client;
                }
                self.admit(self.log.client)?;
                read = rest;
            }
        }
        if protocol == Protocol::Tcp {
            // Nothing to wait for: a server that speaks first is heard at once.
            return Ok(Peeked {
                name: None,
                http2: false,
                bytes: read,
            });
        }
        let head = peek::head(&mut self.client, protocol, read, max_bytes);
        let head = within(deadline, head).await?;
        self.log.host.clone_from(&head.name);
        Ok(head)
    }

    /// An ACME HTTP-01 challenge, met before routing so that it succeeds
    /// whatever its Host is routed to: answered here (`acme_thumbprint`), or
    /// the `acme_pool` route to take. `None`: not a challenge this listener meets.
    fn acme(&mut self, head: &Peeked) -> Result<Option<&'e Route<Target>>, Refusal> {
        let Some(acme) = &self.listener.acme else {
            return Ok(None);
        };
        if head.http2 {
            return Ok(None);
        }
        let Some((method, target)) = http::request_line(&head.bytes) else {
            return Ok(None);
        };
        match acme {
            Acme::Thumbprint(thumbprint) => match http::acme_token(method, target) {
                Some(token) => Err(Refusal::AcmeAnswer(http::acme_response(
                    method, token, thumbprint,
                ))),
                None => Ok(None),
            },
            Acme::Pool(route) if http::is_acme_path(target) => self.take(route).map(Some),
            Acme::Pool(_) => Ok(None),
        }
    }

    /// The route for what the client sent, if it may take it.
    fn route(&mut self, head: &Peeked) -> Result<&'e Route<Target>, Refusal> {
        let Some(route) = self.listener.router.route(head.name.as_ref()) else {
            if head.http2 {
                return Err(Refusal::Http2WithoutDefault);
            }
            if !self.listener.redirect_https {
                return Err(Refusal::NoRoute);
            }
            // The same host (without its port: https has its own) and target.
            return Err(match (&head.name, http::request_line(&head.bytes)) {
                (Some(host), Some((_, target))) => {
                    Refusal::Redirect(http::redirect_response(host, target))
                }
                _ => Refusal::NoHost,
            });
        };
        self.take(route)
    }

    /// `route`, if the client may take it: logged and counted as taken.
    fn take(&mut self, route: &'e Route<Target>) -> Result<&'e Route<Target>, Refusal> {
        self.log.route = Some(&route.pattern);
        self.log.pool = Some(&route.target.pool.name);
        if let Some(access) = &route.target.access {
            if !access.admits(self.log.client.ip()) {
                return Err(Refusal::RouteDenied);
            }
        }
        route.target.routed.fetch_add(1, Ordering::Relaxed);
        self.pool = Some(&route.target.pool);
        Ok(route)
    }

    /// Connects to a server of the route's pool, replays the head (after a
    /// PROXY header where the pool wants one) and relays until both sides close.
    async fn forward(
        &mut self,
        route: &'e Route<Target>,
        mut head: Peeked,
    ) -> Result<Outcome, Refusal> {
        let config = &*self.endpoint.config;
        let pool = &*route.target.pool;
        let Connected { mut stream, lease } = connect(pool, config.timeouts.connect)
            .await
            .map_err(Refusal::Connect)?;
        let server = lease.server();
        self.log.server = Some(server.addr);
        let live = server.live();

        // The PROXY header (if the pool wants one) and the peeked bytes, in one write.
        let replayed = head.bytes.len() as u64;
        let first = match pool.proxy_protocol() {
            Some(send) => {
                // Only now, and only for such pools, ask the kernel where the client
                // connected to (a getsockname per connection otherwise).
                let addresses = self.proxied.unwrap_or_else(|| Addresses {
                    client: self.log.client,
                    local: self.client.local_addr().unwrap_or(self.endpoint.bind),
                });
                let mut first = proxy_protocol::header(
                    send,
                    addresses,
                    head.name.as_ref().map(HostName::as_str),
                );
                first.extend_from_slice(&head.bytes);
                first
            }
            None => std::mem::take(&mut head.bytes),
        };
        if !first.is_empty() {
            if let Err(e) = stream.write_all(&first).await {
                self.log.reason = format!("sending the peeked bytes to the server: {e}");
                return Ok(Outcome::UpstreamError);
            }
        }
        live.bytes_up.fetch_add(replayed, Ordering::Relaxed);
        self.log.bytes_up = replayed;
        drop((head, first));

        let tally = Tally {
            up: &live.bytes_up,
            down: &live.bytes_down,
        };
        let end = relay(
            &mut self.client,
            &mut stream,
            config.timeouts.idle,
            &self.moved,
            tally,
        )
        .await;
        Ok(match end {
            relay::End::Closed => Outcome::Closed,
            relay::End::Idle => Outcome::IdleTimeout,
            relay::End::Broken(broken) => {
                self.log.reason = broken.to_string();
                match broken.side {
                    relay::Side::Client => Outcome::ClientError,
                    relay::Side::Upstream => Outcome::UpstreamError,
                }
            }
        })
    }

    /// Tells the client (where the protocol has a way), counts and logs a
    /// refusal. Returns the outcome and whether it gets an access-log line.
    async fn refuse(&mut self, refusal: Refusal) -> (Outcome, bool) {
        let stats = &self.endpoint.stats;
        let bind = self.endpoint.bind;
        let protocol = self.listener.protocol;
        let client = self.log.client;
        match refusal {
            // Counted, not logged one by one: under the flood that causes them,
            // the log would become the bottleneck.
            Refusal::OverClientLimit => {
                if let Some(held_back) = stats.client_limit_warning.admit() {
                    tracing::warn!(listener = %bind, client = %client.ip(), held_back, "max_connections_per_ip reached; closing this client's new connections");
                }
                (Outcome::OverClientLimit, false)
            }
            Refusal::ListenerDenied => {
                if let Some(held_back) = stats.denied_warning.admit() {
                    tracing::warn!(listener = %bind, client = %client.ip(), held_back, "client refused by the listener's allow/deny; closed unread");
                }
                (Outcome::Denied, false)
            }
            Refusal::RouteDenied => {
                self.log.reason = "refused by the route's allow/deny".to_owned();
                let answer: &[u8] = match protocol {
                    Protocol::Http => http::FORBIDDEN_RESPONSE,
                    Protocol::Tls | Protocol::Tcp | Protocol::Quic => &tls::ACCESS_DENIED_ALERT,
                };
                answer_and_close(&mut self.client, answer).await;
                (Outcome::Denied, true)
            }
            Refusal::Peek(e) => {
                let reason = e.reason();
                tracing::debug!(%client, listener = %bind, reason = reason.as_str(), "peek failed: {e}");
                stats.peek_failed(reason);
                self.log.reason = reason.as_str().to_owned();
                if protocol == Protocol::Http && matches!(e, PeekError::TooLarge) {
                    answer_and_close(&mut self.client, http::TOO_LARGE_RESPONSE).await;
                }
                (Outcome::PeekFailed, true)
            }
            Refusal::NoRoute => {
                stats.no_route();
                self.log.reason = "no_route".to_owned();
                let answer: &[u8] = match protocol {
                    Protocol::Http => http::MISDIRECTED_RESPONSE,
                    Protocol::Tls | Protocol::Tcp | Protocol::Quic => &tls::UNRECOGNIZED_NAME_ALERT,
                };
                answer_and_close(&mut self.client, answer).await;
                (Outcome::NoRoute, true)
            }
            Refusal::Redirect(answer) => {
                answer_and_close(&mut self.client, &answer).await;
                (Outcome::Redirected, true)
            }
            Refusal::NoHost => {
                stats.no_route();
                self.log.reason = "no Host to redirect to".to_owned();
                answer_and_close(&mut self.client, http::NO_HOST_RESPONSE).await;
                (Outcome::NoRoute, true)
            }
            Refusal::AcmeAnswer(answer) => {
                answer_and_close(&mut self.client, &answer).await;
                (Outcome::AcmeAnswered, true)
            }
            Refusal::Http2WithoutDefault => {
                // An HTTP/2 client cannot read an HTTP/1 answer: just close.
                stats.no_route();
                self.log.reason = "HTTP/2 preface (no Host) and no default".to_owned();
                (Outcome::NoRoute, true)
            }
            Refusal::Connect(e) => {
                // A local shortage was logged, throttled, where it happened: it
                // is not this pool's, and would flood one line per pool here.
                if let (Some(pool), None) = (self.pool, e.local) {
                    if let Some(held_back) = pool.unreachable.admit() {
                        tracing::error!(%client, pool = %e.pool, held_back, "no server reachable: {e}");
                    }
                }
                self.log.reason = e.last.to_string();
                (Outcome::ConnectFailed, true)
            }
        }
    }
}

/// `read` within the peek deadline.
async fn within<T>(
    deadline: tokio::time::Instant,
    read: impl std::future::Future<Output = Result<T, PeekError>>,
) -> Result<T, Refusal> {
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or(Err(PeekError::Timeout))
        .map_err(Refusal::Peek)
}

/// Writes sniroute's own answer (an alert, a 4xx), then closes so that the
/// client can read all of it.
async fn answer_and_close(client: &mut TcpStream, answer: &[u8]) {
    if client.write_all(answer).await.is_err() || client.shutdown().await.is_err() {
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
