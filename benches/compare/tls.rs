//! TLS for the handshake cases: one self-signed certificate, a server config
//! and a client config that both refuse resumption, so that every connection
//! is a full handshake.

use std::sync::Arc;

use crate::{load, peers};

/// The one self-signed certificate of the bench: for the TLS cases' name and
/// the QUIC case's.
pub fn pki() -> &'static (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivatePkcs8KeyDer<'static>,
) {
    static PKI: std::sync::OnceLock<(
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivatePkcs8KeyDer<'static>,
    )> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let names = vec![
            peers::TLS_NAME.to_owned(),
            crate::quic::QUIC_NAME.to_owned(),
        ];
        let ck = rcgen::generate_simple_self_signed(names).expect("a self-signed certificate");
        (
            ck.cert.der().clone(),
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()),
        )
    })
}

/// The TLS server: ECDSA P-256 certificate (rcgen's default), ring, no
/// session tickets and no session cache, so every handshake is a full one.
pub fn server_config() -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = pki();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.clone_key().into())
        .expect("certificate and key match");
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(config)
}

/// The TLS client: verifies the server's certificate, never resumes.
pub fn client() -> load::TlsClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().0.clone()).expect("a valid root");
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    load::TlsClient {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name: rustls::pki_types::ServerName::try_from(peers::TLS_NAME)
            .expect("a valid name")
            .to_owned(),
        request: Arc::from(
            format!(
                "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                peers::TLS_NAME
            )
            .into_bytes(),
        ),
    }
}
