//! QUIC listeners end to end: a real QUIC client (quinn, over rustls) talks
//! HTTP/3-style request/response on bidirectional streams through the real
//! binary to real QUIC servers on 127.0.0.x, each with a certificate of its
//! own, and every answer names the server that gave it.

mod common;

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;

/// The flood takes both cores for a few seconds: it runs alone, the other
/// tests (whose handshakes have timeouts) side by side.
static FLOOD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The names the test servers hold certificates for.
const NAMES: [&str; 3] = ["a.example.com", "b.example.com", "c.example.com"];

struct Pki {
    cert: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(NAMES.map(str::to_owned).to_vec()).unwrap();
        Pki {
            cert: ck.cert.der().clone(),
            key: ck.key_pair.serialize_der(),
        }
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A free UDP port on `ip` that is free for TCP too.
fn free_udp(ip: &str) -> SocketAddr {
    loop {
        let addr = free_addr(ip);
        if StdUdp::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// A QUIC server on `ip` that answers each stream with `NAME: ` and what it
/// read; it counts the connections it accepted.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    _endpoint: quinn::Endpoint,
}

impl Server {
    fn start(ip: &str, name: &'static str) -> Server {
        Self::start_with(ip, name, false)
    }

    /// With `retry`, every new client first gets a Retry (address
    /// validation): its next Initial goes to the connection ID the Retry chose.
    fn start_with(ip: &str, name: &'static str, retry: bool) -> Server {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki().key.clone().into());
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki().cert.clone()], key)
            .unwrap();
        crypto.alpn_protocols = vec![b"test".to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, free_udp(ip)).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (server, count) = (endpoint.clone(), Arc::clone(&accepted));
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                if retry && !incoming.remote_address_validated() {
                    let _ = incoming.retry();
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let Ok(request) = recv.read_to_end(1 << 20).await else {
                                return;
                            };
                            let mut answer = format!("{name}: ").into_bytes();
                            answer.extend_from_slice(&request);
                            let _ = send.write_all(&answer).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        });
                    }
                });
            }
        });
        Server {
            addr: endpoint.local_addr().unwrap(),
            accepted,
            _endpoint: endpoint,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A client endpoint on 127.0.0.1 that trusts the test certificate, with
/// `alpn` offered (long lists make a large ClientHello) and an idle timeout
/// of `idle`.
fn client(alpn: Vec<Vec<u8>>, idle: Duration) -> quinn::Endpoint {
    client_with(alpn, idle, None)
}

/// [`client`], with quinn's initial RTT estimate set: three times it is how
/// long the client waits before it retransmits a lost Initial.
fn client_with(
    alpn: Vec<Vec<u8>>,
    idle: Duration,
    initial_rtt: Option<Duration>,
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().cert.clone()).unwrap();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = alpn;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle.try_into().unwrap()));
    if let Some(rtt) = initial_rtt {
        transport.initial_rtt(rtt);
    }
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

fn test_alpn() -> Vec<Vec<u8>> {
    vec![b"test".to_vec()]
}

/// One request on a new stream of `conn`: the answer.
async fn ask(conn: &quinn::Connection, request: &[u8]) -> Result<String, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(request).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let answer = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
    String::from_utf8(answer).map_err(|e| e.to_string())
}

/// Connects through `proxy` from a port of its own, as browsers do, asking
/// for `name`, and makes one request: the answer.
async fn request(proxy: SocketAddr, name: &str) -> Result<String, String> {
    request_from(&client(test_alpn(), Duration::from_secs(2)), proxy, name).await
}

async fn request_from(
    endpoint: &quinn::Endpoint,
    proxy: SocketAddr,
    name: &str,
) -> Result<String, String> {
    let connecting = endpoint.connect(proxy, name).map_err(|e| e.to_string())?;
    let conn = connecting.await.map_err(|e| e.to_string())?;
    let answer = ask(&conn, b"hello").await;
    conn.close(0u32.into(), b"done");
    answer
}

/// A config with a QUIC listener on `listen` routing a and b (and `extra`
/// lines in the listener), metrics on `metrics`.
fn config(
    listen: SocketAddr,
    metrics: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
    extra: &str,
) -> String {
    format!(
        "[timeouts]\nudp_idle = \"30s\"\n\
         [metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"quic\"\n{extra}\n\
         [listeners.routes]\n\"a.example.com\" = \"a\"\n\"b.example.com\" = \"b\"\n\
         [upstreams.a]\nservers = [\"{a}\"]\n\
         [upstreams.b]\nservers = [\"{b}\"]\n"
    )
}

fn dropped(metrics: SocketAddr, listen: SocketAddr, reason: &str) -> f64 {
    let label = format!("{listen}/udp");
    metric(
        &get_metrics(metrics),
        "sniroute_quic_dropped_total",
        &[("listener", &label), ("reason", reason)],
    )
    .unwrap_or_else(|| panic!("no sniroute_quic_dropped_total for {reason}"))
}

fn open_flows(metrics: SocketAddr, listen: SocketAddr) -> f64 {
    let label = format!("{listen}/udp");
    metric(
        &get_metrics(metrics),
        "sniroute_quic_flows",
        &[("listener", &label)],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_reaches_its_server_and_unrouted_names_get_nothing() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start("127.0.0.2", "A");
    let b = Server::start("127.0.0.3", "B");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&config(listen, metrics, a.addr, b.addr, ""));
    // The datagrams that route a flow reach the server themselves: with a
    // retransmission 15 s away, the handshake is done long before one.
    let patient = client_with(
        test_alpn(),
        Duration::from_secs(30),
        Some(Duration::from_secs(5)),
    );
    let started = Instant::now();
    assert_eq!(
        request_from(&patient, listen, "a.example.com")
            .await
            .unwrap(),
        "A: hello"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}: the first Initials were lost",
        started.elapsed()
    );
    assert_eq!(request(listen, "b.example.com").await.unwrap(), "B: hello");
    assert_eq!(request(listen, "a.example.com").await.unwrap(), "A: hello");
    assert_eq!((a.accepted(), b.accepted()), (2, 1));

    let started = Instant::now();
    let unrouted = request(listen, "c.example.com").await;
    assert!(unrouted.is_err(), "{unrouted:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        (a.accepted(), b.accepted()),
        (2, 1),
        "no server saw c.example.com"
    );
    assert!(dropped(metrics, listen, "no_route") >= 1.0);
    assert_eq!(dropped(metrics, listen, "decrypt"), 0.0);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_over_two_initial_packets_routes() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start("127.0.0.2", "A");
    let b = Server::start("127.0.0.3", "B");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let _proxy = Sniroute::start(&config(listen, metrics, a.addr, b.addr, ""));
    // 40 ALPN names of 40 bytes: a ClientHello of about 1.9 KB, as large as
    // a post-quantum one, cannot fit a client's first datagrams (1200 bytes
    // until the path is validated), so its CRYPTO data spans two Initial
    // packets in two datagrams.
    let endpoint = client(big_alpn(), Duration::from_secs(2));
    assert_eq!(
        request_from(&endpoint, listen, "b.example.com")
            .await
            .unwrap(),
        "B: hello"
    );
    assert_eq!((a.accepted(), b.accepted()), (0, 1));
    // Both datagrams of the hello went through, no retransmission needed.
    let patient = client_with(
        big_alpn(),
        Duration::from_secs(30),
        Some(Duration::from_secs(5)),
    );
    let started = Instant::now();
    assert_eq!(
        request_from(&patient, listen, "a.example.com")
            .await
            .unwrap(),
        "A: hello"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// 40 ALPN names of 40 bytes, then `test`.
fn big_alpn() -> Vec<Vec<u8>> {
    let mut alpn: Vec<Vec<u8>> = (0..40).map(|i| format!("{i:0>40}").into_bytes()).collect();
    alpn.push(b"test".to_vec());
    alpn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_and_a_tls_listener_share_a_port() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start("127.0.0.2", "A");
    let tls_up = Upstream::start("127.0.0.3", "tls-up", Mode::Tls).await;
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let text = format!(
        "[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"quic\"\ndefault = \"a\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"t\"\n\
         [upstreams.a]\nservers = [\"{}\"]\n\
         [upstreams.t]\nservers = [\"{}\"]\n",
        a.addr, tls_up.addr
    );
    let _proxy = Sniroute::start(&text);
    assert_eq!(request(listen, "a.example.com").await.unwrap(), "A: hello");
    let answer = tls_request(listen, "a.example.com").await.unwrap();
    assert!(answer.contains("tls-up"), "{answer}");
}

/// A tiny deterministic generator for the garbage.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Sends `count` garbage datagrams to `to` from four sockets, as fast as it
/// can: random bytes, short headers, and long-header Initials of version 1
/// and 2 with random connection IDs and payloads (the costly kind: each must
/// be decrypted to be refused).
fn flood(to: SocketAddr, count: usize) {
    let sockets: Vec<StdUdp> = (0..4)
        .map(|_| StdUdp::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let mut buf = vec![0u8; 1500];
    for i in 0..count {
        let len = match i % 4 {
            0 => 1 + (rng.next() % 1500) as usize,
            _ => 1200 + (rng.next() % 250) as usize,
        };
        let datagram = &mut buf[..len];
        rng.fill(datagram);
        match i % 4 {
            1 | 2 => {
                datagram[0] = 0xc0 | (datagram[0] & 0x0f);
                let version: u32 = if i % 4 == 1 { 1 } else { 0x6b33_43cf };
                datagram[1..5].copy_from_slice(&version.to_be_bytes());
                datagram[5] = 8;
            }
            3 => datagram[0] = 0x40 | (datagram[0] & 0x3f),
            _ => {}
        }
        // A full socket buffer loses some: the count is what was tried.
        let _ = sockets[i % 4].send_to(datagram, to);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_datagrams_changes_nothing_for_real_flows() {
    let _alone = FLOOD.write().await;
    let a = Server::start("127.0.0.2", "A");
    let b = Server::start("127.0.0.3", "B");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&config(listen, metrics, a.addr, b.addr, ""));
    let flooding = std::thread::spawn(move || flood(listen, 100_000));
    let started = Instant::now();
    let mut completed = 0;
    let mut during_flood = 0;
    while !flooding.is_finished() || completed < 20 {
        let flood_on = !flooding.is_finished();
        let batch: Vec<_> = (0..5)
            .map(|i| {
                let name = if i % 2 == 0 {
                    "a.example.com"
                } else {
                    "b.example.com"
                };
                // Datagrams the flood crowds out of a full socket buffer are
                // lost, real Initials among them: QUIC retransmits, within
                // a handshake timeout of browser length.
                let endpoint = client(test_alpn(), Duration::from_secs(10));
                tokio::spawn(async move { (name, request_from(&endpoint, listen, name).await) })
            })
            .collect();
        for task in batch {
            let (name, answer) = task.await.unwrap();
            let want = if name == "a.example.com" {
                "A: hello"
            } else {
                "B: hello"
            };
            assert_eq!(answer.as_deref(), Ok(want), "log:\n{}", proxy.log());
            completed += 1;
            during_flood += usize::from(flood_on);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the test took too long"
        );
    }
    flooding.join().unwrap();
    assert!(during_flood > 0, "no real flow ran while the flood did");
    let text = get_metrics(metrics);
    let label = format!("{listen}/udp");
    let reasons = ["not_initial", "version", "decrypt", "malformed", "short"];
    let garbage: f64 = reasons
        .iter()
        .map(|r| {
            metric(
                &text,
                "sniroute_quic_dropped_total",
                &[("listener", &label), ("reason", r)],
            )
            .unwrap()
        })
        .sum();
    eprintln!("{completed} real flows ({during_flood} during the flood); {garbage} garbage datagrams dropped");
    assert!(garbage > 10_000.0 && garbage <= 100_000.0, "{garbage}");
    assert!(dropped(metrics, listen, "decrypt") > 0.0);
    assert_eq!(dropped(metrics, listen, "no_route"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flow_is_forgotten_after_udp_idle_and_logged() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start("127.0.0.2", "A");
    let b = Server::start("127.0.0.3", "B");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let text = config(listen, metrics, a.addr, b.addr, "")
        .replace("udp_idle = \"30s\"", "udp_idle = \"1s\"");
    let proxy = Sniroute::start(&text);
    let endpoint = client(test_alpn(), Duration::from_secs(3));
    let conn = endpoint
        .connect(listen, "a.example.com")
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ask(&conn, b"first").await.unwrap(), "A: first");
    let quiet = Instant::now();
    assert_eq!(open_flows(metrics, listen), 1.0);
    let gone = poll(DEADLINE, || {
        (open_flows(metrics, listen) == 0.0).then_some(())
    });
    assert!(
        gone.is_some(),
        "the flow is still open; log:\n{}",
        proxy.log()
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "forgotten after {:?}",
        quiet.elapsed()
    );
    let line = proxy.wait_access(1).remove(0);
    for field in [
        format!("listener={listen}/udp"),
        "host=a.example.com".to_owned(),
        "route=a.example.com".to_owned(),
        format!("server={}", a.addr),
        "outcome=idle_timeout".to_owned(),
    ] {
        assert!(line.contains(&field), "{field} not in {line}");
    }
    let closed = metric(
        &get_metrics(metrics),
        "sniroute_quic_flows_closed_total",
        &[
            ("listener", &format!("{listen}/udp")),
            ("outcome", "idle_timeout"),
        ],
    );
    assert_eq!(closed, Some(1.0));
    // The client's next packets have short headers: to this process they are
    // no flow's, and dropped, as documented.
    let before = dropped(metrics, listen, "not_initial");
    assert!(ask(&conn, b"second").await.is_err());
    assert!(dropped(metrics, listen, "not_initial") > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_marked_down_and_the_retried_initial_reaches_a_live_one() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start("127.0.0.2", "A");
    let dead = free_udp("127.0.0.4");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let text = format!(
        "[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"quic\"\ndefault = \"a\"\n\
         [upstreams.a]\nservers = [\"{dead}\", {{ addr = \"{}\", backup = true }}]\n\
         max_fails = 1\nfail_timeout = \"30s\"\n",
        a.addr
    );
    let proxy = Sniroute::start(&text);
    let endpoint = client(test_alpn(), Duration::from_secs(10));
    // The first flow goes to the primary, which answers with ICMP port
    // unreachable: the flow ends, the server is marked down, and the
    // client's retransmitted Initial opens a flow to the backup.
    assert_eq!(
        request_from(&endpoint, listen, "a.example.com")
            .await
            .unwrap(),
        "A: hello"
    );
    let lines = proxy.wait_access(1);
    let failed = lines
        .iter()
        .find(|l| l.contains(&format!("server={dead}")))
        .unwrap_or_else(|| panic!("no line for the dead server:\n{}", proxy.log()));
    assert!(failed.contains("outcome=upstream_error"), "{failed}");
    assert!(failed.contains("refused"), "{failed}");
    let up = metric(
        &get_metrics(metrics),
        "sniroute_server_up",
        &[("server", &dead.to_string())],
    );
    assert_eq!(up, Some(0.0));
    // The next client goes straight to the live one.
    assert_eq!(request(listen, "a.example.com").await.unwrap(), "A: hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_ends_the_old_process_flows_and_the_new_one_routes_new_ones() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start("127.0.0.2", "A");
    let b = Server::start("127.0.0.3", "B");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("sniroute");
    std::fs::copy(env!("CARGO_BIN_EXE_sniroute"), &exe).unwrap();
    let path = write_config(dir.path(), &config(listen, metrics, a.addr, b.addr, ""));
    let mut proxy = Sniroute::launch(
        dir,
        &path,
        Opts {
            exe: Some(exe),
            ..Opts::default()
        },
    );
    let endpoint = client(test_alpn(), Duration::from_secs(3));
    let conn = endpoint
        .connect(listen, "a.example.com")
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ask(&conn, b"before").await.unwrap(), "A: before");

    proxy.signal("USR2");
    let new = successor(&proxy);
    let _new = KillOnDrop(new);
    // The old process does not wait out udp_idle (30 s) or the shutdown
    // drain (30 s) for its flow: the flow ends with the hand-over.
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let ended = proxy.access_lines();
    assert!(
        ended
            .iter()
            .any(|l| l.contains("host=a.example.com") && l.contains("outcome=shutdown")),
        "{ended:?}"
    );
    // New flows reach the new process, routed as before.
    assert_eq!(request(listen, "b.example.com").await.unwrap(), "B: hello");
    assert_eq!(request(listen, "a.example.com").await.unwrap(), "A: hello");
    assert!(alive(new));
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_routes_of_new_flows() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start("127.0.0.2", "A");
    let b = Server::start("127.0.0.3", "B");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let before =
        config(listen, metrics, a.addr, b.addr, "").replace("\"b.example.com\" = \"b\"\n", "");
    let proxy = Sniroute::start(&before);
    assert!(request(listen, "b.example.com").await.is_err());
    std::fs::write(proxy.path(), config(listen, metrics, a.addr, b.addr, "")).unwrap();
    proxy.signal("HUP");
    proxy.wait_log("config reloaded");
    assert_eq!(request(listen, "b.example.com").await.unwrap(), "B: hello");
    assert_eq!(b.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_from_a_reused_port_is_routed_by_its_own_hello() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start("127.0.0.2", "A");
    let b = Server::start("127.0.0.3", "B");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&config(listen, metrics, a.addr, b.addr, ""));
    // One client port (a NAT's mapping, a reused ephemeral port): the flow
    // to A is still open (udp_idle is 30 s) when the next connection, with
    // a new source connection ID, asks for b.
    let endpoint = client(test_alpn(), Duration::from_secs(5));
    assert_eq!(
        request_from(&endpoint, listen, "a.example.com")
            .await
            .unwrap(),
        "A: hello"
    );
    assert_eq!(
        request_from(&endpoint, listen, "b.example.com")
            .await
            .unwrap(),
        "B: hello"
    );
    assert_eq!((a.accepted(), b.accepted()), (1, 1));
    let line = proxy.wait_access(1).remove(0);
    assert!(
        line.contains("host=a.example.com") && line.contains("outcome=closed"),
        "{line}"
    );
    assert!(line.contains("a new QUIC connection"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_keeps_the_flow() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start_with("127.0.0.2", "A", true);
    let b = Server::start("127.0.0.3", "B");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let text = config(listen, metrics, a.addr, b.addr, "")
        .replace("udp_idle = \"30s\"", "udp_idle = \"1s\"");
    let proxy = Sniroute::start(&text);
    // The Initial after the Retry goes to the Retry's connection ID: the
    // same connection, so the same flow, not a new one.
    assert_eq!(request(listen, "a.example.com").await.unwrap(), "A: hello");
    assert_eq!(a.accepted(), 1);
    let lines = proxy.wait_access(1);
    std::thread::sleep(Duration::from_millis(300));
    let lines = if lines.len() == 1 {
        proxy.access_lines()
    } else {
        lines
    };
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("outcome=idle_timeout"), "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_and_the_flow_cap_drop_initials_and_count_them() {
    let _side_by_side = FLOOD.read().await;
    let a = Server::start("127.0.0.2", "A");
    let b = Server::start("127.0.0.3", "B");
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    // b.example.com only for 10.0.0.0/8; one flow at a time, all listeners.
    let text = config(listen, metrics, a.addr, b.addr, "")
        .replace(
            "\"b.example.com\" = \"b\"",
            "\"b.example.com\" = { pool = \"b\", allow = [\"10.0.0.0/8\"] }",
        )
        .replace("[metrics]", "[limits]\nmax_quic_flows = 1\n[metrics]");
    let _proxy = Sniroute::start(&text);
    assert!(request(listen, "b.example.com").await.is_err());
    assert!(dropped(metrics, listen, "denied") >= 1.0);
    assert_eq!(b.accepted(), 0);
    // The first client's flow stays open (udp_idle 30 s) and takes the one
    // place: the next client is dropped.
    let first = client(test_alpn(), Duration::from_secs(10));
    let conn = first
        .connect(listen, "a.example.com")
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ask(&conn, b"one").await.unwrap(), "A: one");
    assert!(request(listen, "a.example.com").await.is_err());
    assert!(dropped(metrics, listen, "flows_full") >= 1.0);
    assert_eq!(a.accepted(), 1);

    // The listener's deny: nothing from 127.0.0.1 is even read.
    let (listen, metrics) = (free_udp("127.0.0.1"), free_addr("127.0.0.1"));
    let text = config(listen, metrics, a.addr, b.addr, "deny = [\"127.0.0.1\"]");
    let _proxy = Sniroute::start(&text);
    assert!(request(listen, "a.example.com").await.is_err());
    assert!(dropped(metrics, listen, "denied") >= 1.0);
    assert_eq!(dropped(metrics, listen, "no_route"), 0.0);
    assert_eq!(a.accepted(), 1);
}
