//! Active health checks: one task per pool probes every server once per
//! `interval`, spread evenly over it.
//!
//! With `n` servers the task gives each probe a slot `interval / n` after the
//! one before, walking the servers in turn, and wakes at most every
//! [`BATCH`] to start those whose slot has come: a pool of 1,000 at 1 s makes
//! ten connects every 10 ms, rather than 1,000 at once or a wake-up per
//! connect, and a reload (which restarts the task) causes no burst either.
//! Probes run as futures inside the task, not as tasks of their own, and the
//! tasks run on a thread of their own (see the registry), so probing never
//! wakes the proxy's workers.
//!
//! A probe is a TCP connect, closed at once with a reset (no TIME_WAIT left
//! behind on either side), or with `tls_sni` a full TLS handshake that also
//! records the notAfter of the server's leaf certificate. Results feed
//! the server's [`ProbeHealth`](super::health::ProbeHealth): `fall` failures in
//! a row take it down, `rise` successes bring it back. The streaks live in the
//! server's shared state, so they survive reloads.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::spec::CheckSpec;
use super::{Pool, Server};
use crate::resources::{self, Operation, Resource};

/// Probes due within this long of each other start together: one wake-up
/// per batch rather than one per probe.
const BATCH: Duration = Duration::from_millis(10);

/// How a probe ended.
enum Probed {
    /// With the certificate's notAfter, for TLS probes.
    Ok(Option<i64>),
    Failed(String),
    /// sniroute itself had no descriptor, memory or port for it: says
    /// nothing about the server, so it counts neither way.
    Skipped(Resource, io::Error),
}

/// Probes `pool`'s servers until aborted (by the next reload).
pub async fn run(pool: Arc<Pool>, check: CheckSpec) {
    let tls = match &check.tls_sni {
        Some(sni) => match tls_probe(sni) {
            Ok(tls) => Some(tls),
            Err(e) => {
                tracing::error!(pool = %pool.name, "cannot set up TLS health checks: {e}");
                return;
            }
        },
        None => None,
    };
    let mut in_flight = FuturesUnordered::new();
    let mut turn = 0usize;
    let mut next = Instant::now();
    let mut wake = next;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {
                let members = pool.members();
                let n = members.servers.len().max(1);
                let step = check.interval / u32::try_from(n).unwrap_or(u32::MAX);
                let now = Instant::now();
                // Far behind (a stalled machine): start afresh rather than catch up.
                if next + check.interval < now {
                    next = now;
                }
                // Every probe whose slot has come, then sleep at least BATCH.
                while next <= now {
                    if let Some(server) = members.servers.get(turn % n) {
                        let server = Arc::clone(server);
                        let probe = probe(server.addr, check.timeout, tls.clone());
                        in_flight.push(async move { (server, probe.await) });
                    }
                    turn = turn.wrapping_add(1);
                    next += step;
                }
                wake = next.max(now + BATCH);
            }
            Some((server, result)) = in_flight.next(), if !in_flight.is_empty() => {
                record(&pool, &check, &server, result);
            }
        }
    }
}

fn record(pool: &Pool, check: &CheckSpec, server: &Server, result: Probed) {
    let state = &server.state;
    if let Probed::Skipped(resource, e) = &result {
        if let Some(held_back) = resources::record(Operation::HealthCheck, *resource) {
            tracing::error!(pool = %pool.name, server = %server.label, held_back, error = %e, "health check skipped: {}", resource.advice());
        }
        return;
    }
    let ok = matches!(result, Probed::Ok(_));
    let changed = state.probe.record(ok, check.rise, check.fall);
    match result {
        Probed::Skipped(..) => {}
        Probed::Ok(cert) => {
            state.checks_ok.fetch_add(1, Ordering::Relaxed);
            if let Some(not_after) = cert {
                state.cert_not_after.store(not_after, Ordering::Relaxed);
            }
            if changed == Some(true) {
                tracing::info!(pool = %pool.name, server = %server.label, "server is up again: {} health checks in a row passed", check.rise);
            }
        }
        Probed::Failed(e) => {
            state.checks_failed.fetch_add(1, Ordering::Relaxed);
            if changed == Some(false) {
                tracing::warn!(pool = %pool.name, server = %server.label, error = %e, "server marked down: {} health checks in a row failed", check.fall);
            } else {
                tracing::debug!(pool = %pool.name, server = %server.label, error = %e, "health check failed");
            }
            state.set_last_error("probe", e);
        }
    }
}

/// One probe of `addr`, within `timeout`.
async fn probe(addr: SocketAddr, timeout: Duration, tls: Option<TlsProbe>) -> Probed {
    let attempt = async {
        let tcp = match connect(addr, tls.is_none()).await {
            Ok(tcp) => tcp,
            Err(e) => {
                return match Resource::of(&e) {
                    Some(resource) => Probed::Skipped(resource, e),
                    None => Probed::Failed(format!("connect: {e}")),
                }
            }
        };
        let Some(tls) = tls else {
            // Close with a reset: nothing to say, no TIME_WAIT, and the
            // server's half-open connection (see `connect`) goes with it.
            socket2::SockRef::from(&tcp)
                .set_linger(Some(Duration::ZERO))
                .ok();
            return Probed::Ok(None);
        };
        match handshake(tcp, tls).await {
            Ok(not_after) => Probed::Ok(Some(not_after)),
            Err(e) => Probed::Failed(e),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Probed::Failed(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// A connection to `addr`. With `half_open`, the last ACK of the handshake
/// is held back (quick ACKs off), so that a reset right after the server's
/// SYN-ACK ends it before the server has a connection at all: the kernel
/// answering for the listening socket is what a TCP check asks, and the
/// server never wakes up for it, nor logs it. HAProxy checks the same way.
async fn connect(addr: SocketAddr, half_open: bool) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if half_open {
        socket2::SockRef::from(&socket).set_tcp_quickack(false)?;
    }
    socket.connect(addr).await
}

/// A TLS handshake on `tcp`; the leaf certificate's notAfter.
async fn handshake(tcp: TcpStream, tls: TlsProbe) -> Result<i64, String> {
    let connector = tokio_rustls::TlsConnector::from(tls.config);
    let mut stream = connector
        .connect(tls.sni, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let not_after = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| "TLS handshake: the server sent no certificate".to_owned())
        .and_then(not_after)?;
    // close_notify, so the server logs a clean close, not a reset.
    let _ = stream.shutdown().await;
    Ok(not_after)
}

/// The notAfter of a DER certificate, as Unix seconds.
fn not_after(der: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot read the server's certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// What every TLS probe of a pool shares.
#[derive(Clone)]
struct TlsProbe {
    config: Arc<ClientConfig>,
    sni: ServerName<'static>,
}

fn tls_probe(sni: &str) -> Result<TlsProbe, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let sni = ServerName::try_from(sni.to_owned()).map_err(|e| format!("tls_sni `{sni}`: {e}"))?;
    Ok(TlsProbe {
        config: Arc::new(config),
        sni,
    })
}

/// Accepts any certificate: a probe asks whether the server completes a
/// handshake and when its certificate ends, not whether we trust it (the
/// clients that matter verify it themselves). Signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
