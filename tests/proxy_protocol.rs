//! PROXY protocol through the real binary: towards a real consumer (nginx
//! `listen ... proxy_protocol`, which echoes the client address it was told),
//! and from a balancer in front (a client that sends the header itself).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A real nginx whose stream server on `listen` expects a PROXY header (v1 or v2)
/// and answers `<client addr> <client port>` from it.
struct Consumer {
    _nginx: nginx::Nginx,
    _dir: tempfile::TempDir,
    listen: SocketAddr,
}

impl Consumer {
    fn start() -> Consumer {
        let dir = tempfile::tempdir().unwrap();
        let listen = free_addr("127.0.0.2");
        let conf = format!(
            "{}\nevents {{ worker_connections 64; }}\n\
             stream {{ server {{ listen {listen} proxy_protocol; \
             return \"$proxy_protocol_addr $proxy_protocol_port\\n\"; }} }}\n",
            nginx::load_stream_module()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = nginx::Nginx::start(dir.path(), &[listen]);
        Consumer {
            _nginx: nginx,
            _dir: dir,
            listen,
        }
    }
}

fn pool_config(
    listen: &[SocketAddr],
    servers: &[SocketAddr],
    version: &str,
    listener_extra: &str,
) -> String {
    let binds: Vec<String> = listen.iter().map(|b| format!("\"{b}\"")).collect();
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[listeners]]\nbind = [{}]\nprotocol = \"tls\"\ndefault = \"p\"\n{listener_extra}\n\
         [upstreams.p]\nservers = [{}]\nproxy_protocol = \"{version}\"\n",
        binds.join(", "),
        servers.join(", ")
    )
}

/// Connects (from `from`, if given), sends `first` and a real ClientHello, returns the answer.
async fn ask(proxy: SocketAddr, from: Option<&str>, first: &[u8]) -> (SocketAddr, String) {
    let mut c = match from {
        Some(ip) => {
            let socket = TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(ip.parse().unwrap(), 0))
                .unwrap();
            socket.connect(proxy).await.unwrap()
        }
        None => TcpStream::connect(proxy).await.unwrap(),
    };
    let local = c.local_addr().unwrap();
    let mut bytes = first.to_vec();
    bytes.extend_from_slice(CURL_HELLO);
    c.write_all(&bytes).await.unwrap();
    (local, String::from_utf8(read_all(&mut c).await).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sees_the_real_client_for_v1_and_v2_over_ipv4_and_ipv6() {
    let nginx = Consumer::start();
    for version in ["v1", "v2"] {
        let (v4, v6) = (free_addr("127.0.0.1"), free_addr("::1"));
        // A dead server first: the header goes with the attempt that connects.
        let dead = free_addr("127.0.0.3");
        let _proxy = Sniroute::start(&pool_config(&[v4, v6], &[dead, nginx.listen], version, ""));
        for listen in [v4, v6] {
            let (client, answer) = ask(listen, None, b"").await;
            assert_eq!(
                answer,
                format!("{} {}\n", client.ip(), client.port()),
                "{version} via {listen}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_carries_the_sni_as_authority_when_asked() {
    let up = Upstream::start("127.0.0.2", "records", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let _proxy = Sniroute::start(&format!(
        "{}proxy_protocol_authority = true\n",
        pool_config(&[listen], &[up.addr], "v2", "")
    ));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    eventually("header and hello at the server", || {
        up.received
            .lock()
            .unwrap()
            .first()
            .is_some_and(|r| r.len() > CURL_HELLO.len())
    })
    .await;
    let got = up.received.lock().unwrap()[0].clone();
    let header = ppp::v2::Header::try_from(got.as_slice()).unwrap();
    let authority = header
        .tlvs()
        .filter_map(Result::ok)
        .find(|t| t.kind == ppp::v2::Type::Authority as u8);
    assert_eq!(authority.unwrap().value.as_ref(), b"curl.example.com");
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            assert_eq!(
                SocketAddr::from((a.source_address, a.source_port)),
                c.local_addr().unwrap()
            );
            assert_eq!(
                SocketAddr::from((a.destination_address, a.destination_port)),
                listen
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        &got[header.len()..],
        CURL_HELLO,
        "the hello follows the header unchanged"
    );
}

const V1_FROM_BALANCER: &[u8] = b"PROXY TCP4 203.0.113.9 198.51.100.1 56324 443\r\n";

fn v2_from_balancer() -> Vec<u8> {
    let client: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
    let local: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, local),
    )
    .build()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_balancer_the_client_comes_from_its_header_and_is_passed_on() {
    let nginx = Consumer::start();
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&pool_config(
        &[listen],
        &[nginx.listen],
        "v1",
        "accept_proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.7/32\", \"10.0.0.0/8\"]",
    ));
    let (_, answer) = ask(listen, Some("127.0.0.7"), V1_FROM_BALANCER).await;
    assert_eq!(answer, "203.0.113.9 56324\n");
    proxy.wait_log("client=203.0.113.9:56324 listener=");
    let (_, answer) = ask(listen, Some("127.0.0.7"), &v2_from_balancer()).await;
    assert_eq!(answer, "2001:db8::9 40000\n");
    proxy.wait_log("client=[2001:db8::9]:40000 listener=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_headers_and_unknown_sources_are_refused() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&format!(
        "[timeouts]\npeek = \"1s\"\n{}",
        pool_config(
            &[listen],
            &[up.addr],
            "off",
            "accept_proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.7\"]"
        )
    ));
    let mut oversized = b"PROXY TCP4 ".to_vec();
    oversized.resize(300, b'1');
    for (from, first) in [
        ("127.0.0.7", &b""[..]), // missing: the hello itself
        ("127.0.0.7", b"PROXY TCP4 203.0.113.9 nonsense 1 2\r\n"), // garbled
        ("127.0.0.7", &oversized), // no end of line
        ("127.0.0.8", V1_FROM_BALANCER), // source not allowed
    ] {
        let (_, answer) = ask(listen, Some(from), first).await;
        assert_eq!(answer, "", "from {from}: {first:?}");
    }
    let lines = proxy.wait_access(4);
    let reasons: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit("reason=").next().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "proxy_header",
            "proxy_header",
            "proxy_header",
            "proxy_source"
        ]
    );
    assert_eq!(up.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_client_limit_counts_the_real_client_behind_the_balancer() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&format!(
        "[limits]\nmax_connections_per_ip = 1\n{}",
        pool_config(
            &[listen],
            &[up.addr],
            "off",
            "accept_proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.7\"]"
        )
    ));
    let open = |header: &'static [u8]| async move {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.7:0".parse().unwrap()).unwrap();
        let mut c = socket.connect(listen).await.unwrap();
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(CURL_HELLO);
        c.write_all(&bytes).await.unwrap();
        c
    };
    // Two clients behind the same balancer: both get through.
    let _a = open(b"PROXY TCP4 203.0.113.1 198.51.100.1 1000 443\r\n").await;
    let _b = open(b"PROXY TCP4 203.0.113.2 198.51.100.1 1000 443\r\n").await;
    eventually("both routed", || up.open() == 2).await;
    // The first client again: over its limit of 1.
    let mut again = open(b"PROXY TCP4 203.0.113.1 198.51.100.1 2000 443\r\n").await;
    assert_eq!(read_all(&mut again).await, b"");
    proxy.wait_log("max_connections_per_ip reached");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.accepted(), 2);
}
