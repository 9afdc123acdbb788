//! QUIC for the `quic_bulk` case: a quinn server on 127.0.0.2 (UDP) with a
//! self-signed certificate for [`QUIC_NAME`], and the quinn client that
//! downloads from it, directly or through a proxy's UDP listener.
//!
//! Protocol, one exchange per bidirectional stream: the client sends a short
//! request and finishes its side; the server answers [`BULK_REQUEST`] with
//! [`BULK_BODY`] zero bytes and anything else with [`PONG`], then finishes.
//! A connection runs its streams one after the other. Both QUIC ends keep
//! quinn's defaults (congestion control, flow-control windows, path MTU
//! discovery, GSO and GRO where the kernel has them).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, timeout_at, Instant};

use crate::load::OP_TIMEOUT;
use crate::tls;
use crate::upstream::{BULK_BODY, ZEROS};

/// The SNI of the client's Initial packets, and the certificate's name.
pub const QUIC_NAME: &str = "bench.example";
/// The request that asks for a [`BULK_BODY`]-byte answer.
const BULK_REQUEST: &[u8] = b"bulk";
/// The request of a single check exchange, and its answer.
const PING: &[u8] = b"ping";
const PONG: &[u8] = b"pong";

fn server_config() -> quinn::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = tls::pki();
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.clone_key().into())
        .expect("certificate and key match");
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .expect("a rustls config quinn can use");
    quinn::ServerConfig::with_crypto(Arc::new(crypto))
}

/// The client's config: TLS 1.3 (ring), trusting only the bench certificate.
pub fn client_config() -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls::pki().0.clone()).expect("a valid root");
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .expect("a rustls config quinn can use");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// Starts the QUIC server on a free UDP port of 127.0.0.2; it serves until
/// the process ends.
pub fn start_server() -> SocketAddr {
    let endpoint =
        quinn::Endpoint::server(server_config(), (Ipv4Addr::new(127, 0, 0, 2), 0).into())
            .expect("bind UDP 127.0.0.2 (Linux routes all of 127/8 to loopback)");
    let addr = endpoint.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else {
                    return;
                };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(serve(send, recv));
                }
            });
        }
    });
    addr
}

async fn serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Ok(request) = recv.read_to_end(64).await else {
        return;
    };
    if request == BULK_REQUEST {
        let mut left = BULK_BODY;
        while left > 0 {
            let n = left.min(ZEROS.len());
            if send.write_all(&ZEROS[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
    } else if send.write_all(PONG).await.is_err() {
        return;
    }
    // Dropping a finished stream still delivers what it holds.
    let _ = send.finish();
}

/// A client connection on an endpoint (UDP socket) of its own, so that each
/// connection is a flow of its own (client address and port) for a proxy.
struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl Client {
    async fn connect(config: &quinn::ClientConfig, addr: SocketAddr) -> Result<Client, String> {
        let endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into())
            .map_err(|e| format!("client endpoint: {e}"))?;
        let connecting = endpoint
            .connect_with(config.clone(), addr, QUIC_NAME)
            .map_err(|e| format!("connect: {e}"))?;
        let conn = match timeout(OP_TIMEOUT, connecting).await {
            Err(_) => return Err(format!("no handshake within {OP_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(format!("handshake: {e}")),
            Ok(Ok(conn)) => conn,
        };
        Ok(Client { endpoint, conn })
    }

    /// UDP payload bytes sent and received so far: what a proxy relays.
    fn wire_bytes(&self) -> u64 {
        let stats = self.conn.stats();
        stats.udp_tx.bytes + stats.udp_rx.bytes
    }

    /// One exchange on a new stream; the number of body bytes it read.
    async fn exchange(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(request).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(16).await.map_err(|e| e.to_string())
    }

    /// Bulk bodies one after the other until `deadline`; whether every one
    /// that finished before it was whole.
    async fn download(&self, deadline: Instant) -> Result<(), String> {
        loop {
            let body = async {
                let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(BULK_REQUEST)
                    .await
                    .map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                let mut got = 0;
                // Chunks as quinn holds them: the client copies nothing.
                while let Some(chunk) = recv
                    .read_chunk(usize::MAX, true)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    got += chunk.bytes.len();
                }
                if got == BULK_BODY {
                    Ok(())
                } else {
                    Err(format!("a body of {got} bytes"))
                }
            };
            match timeout_at(deadline, body).await {
                Err(_) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(())) => {}
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// Closes the connection. quinn's drivers (spawned tasks) outlive the
    /// handles: they still send the close to the server, through the proxy.
    fn close(self) {
        self.conn.close(0u32.into(), b"done");
        drop(self.endpoint);
    }
}

/// A new connection to `addr` with one ping exchange on it: does the path
/// carry QUIC (and, through a proxy, route [`QUIC_NAME`] to the server)?
pub async fn once(config: &quinn::ClientConfig, addr: SocketAddr) -> Result<(), String> {
    let client = Client::connect(config, addr).await?;
    let answer = timeout(OP_TIMEOUT, client.exchange(PING))
        .await
        .map_err(|_| format!("no answer within {OP_TIMEOUT:?}"))?;
    client.close();
    match answer? {
        a if a == PONG => Ok(()),
        a => Err(format!("unexpected answer {a:?}")),
    }
}

/// The kept-alive connections of one QUIC bulk window, handshakes done.
pub struct Opened {
    clients: Vec<Client>,
    /// Connections whose handshake failed.
    failed: u64,
    /// How long each handshake that succeeded took, ms.
    pub handshakes_ms: Vec<f64>,
}

/// Opens `conns` QUIC connections to `addr` at once, each on a UDP port of
/// its own.
pub async fn open(config: &quinn::ClientConfig, addr: SocketAddr, conns: usize) -> Opened {
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let client = Client::connect(&config, addr).await;
                (client, started.elapsed())
            })
        })
        .collect();
    let mut opened = Opened {
        clients: Vec::with_capacity(conns),
        failed: 0,
        handshakes_ms: Vec::with_capacity(conns),
    };
    for t in tasks {
        match t.await {
            Ok((Ok(client), took)) => {
                opened.clients.push(client);
                opened.handshakes_ms.push(took.as_secs_f64() * 1e3);
            }
            _ => opened.failed += 1,
        }
    }
    opened
}

/// QUIC bulk on `opened` connections: each asks for [`BULK_BODY`]-byte
/// bodies on one bidirectional stream after another until `run` has passed,
/// then closes. Both QUIC ends are in this process, on the load generator's
/// core, so they set the rate. Returns the UDP payload bytes the client sent
/// and received within `run` (QUIC packets both ways, what a proxy relays),
/// and the number of failed connections (handshake or download).
pub async fn download(opened: Opened, run: Duration) -> (u64, u64) {
    let deadline = Instant::now() + run;
    let tasks: Vec<_> = opened
        .clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let start = client.wire_bytes();
                let outcome = client.download(deadline).await;
                let bytes = client.wire_bytes() - start;
                client.close();
                (bytes, u64::from(outcome.is_err()))
            })
        })
        .collect();
    let mut bytes = 0;
    let mut errors = opened.failed;
    for t in tasks {
        match t.await {
            Ok((b, e)) => {
                bytes += b;
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    (bytes, errors)
}
