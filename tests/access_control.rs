//! `allow`/`deny` through the real binary, with clients on several loopback
//! addresses standing for client hosts: a listener's lists close refused
//! clients unread; a route's lists answer with a TLS `access_denied` alert or
//! an HTTP 403; behind a balancer, the address checked is the one its PROXY
//! header names. Refusals count as outcome `denied`.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `sniroute_connections_closed_total{outcome="denied"}` summed over listeners.
fn denied(metrics: SocketAddr) -> u64 {
    let mut c = std::net::TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(&mut c, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut c, &mut text).unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("sniroute_connections_closed_total{") && l.contains("outcome=\"denied\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Waits until exactly `n` refusals are counted (a refused client may see its
/// answer a moment before the connection's end is counted).
fn wait_denied(metrics: SocketAddr, n: u64) {
    let counted = poll(DEADLINE, || Some(denied(metrics)).filter(|d| *d >= n));
    assert_eq!(counted, Some(n), "denied refusals counted");
}

/// Sends a ClientHello from `from`; returns what came back and how long the
/// proxy took to answer or close.
async fn hello_from(listen: SocketAddr, from: &str) -> (Vec<u8>, Duration) {
    let mut c = connect_from(listen, Some(from)).await.unwrap();
    let start = Instant::now();
    // A refused client may be reset before it is done writing.
    let _ = c.write_all(CURL_HELLO).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, c.read_to_end(&mut got))
        .await
        .expect("neither answered nor closed");
    (got, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_closes_refused_clients_unread_and_logs_them_throttled() {
    let up = Upstream::start("127.0.0.9", "up", Mode::Hold).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&format!(
        "[timeouts]\npeek = \"30s\"\n[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         allow = [\"127.0.0.0/29\"]\ndeny = [\"127.0.0.3\"]\n\
         [upstreams.p]\nservers = [\"{}\"]\n",
        up.addr
    ));
    // Allowed: 127.0.0.2 is in 127.0.0.0/29.
    let mut ok = connect_from(listen, Some("127.0.0.2")).await.unwrap();
    ok.write_all(CURL_HELLO).await.unwrap();
    eventually("allowed client forwarded", || up.accepted() == 1).await;
    // Denied by `deny` (although in `allow`), and by not being in `allow`.
    for from in ["127.0.0.3", "127.0.0.8", "127.0.0.3"] {
        let (got, took) = hello_from(listen, from).await;
        assert_eq!(got, b"", "{from}: a refused client is told nothing");
        assert!(took < Duration::from_secs(5), "{from}: not closed at once");
    }
    assert_eq!(up.accepted(), 1, "a refused client reached a server");
    wait_denied(metrics, 3);
    // One warning for the burst, no access-log line per refusal.
    let log = proxy.wait_log("refused by the listener's allow/deny");
    assert_eq!(
        log.matches("refused by the listener's allow/deny").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("outcome=denied"), "{log}");
    drop(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_refuses_with_a_tls_access_denied_alert() {
    let admin = Upstream::start("127.0.0.9", "admin", Mode::Tls).await;
    let apps = Upstream::start("127.0.0.9", "apps", Mode::Tls).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&format!(
        "[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n\
         [listeners.routes]\n\
         \"admin.example.com\" = {{ pool = \"admin\", allow = [\"127.0.0.2\"] }}\n\
         \"app.example.com\" = \"apps\"\n\
         [upstreams.admin]\nservers = [\"{}\"]\n[upstreams.apps]\nservers = [\"{}\"]\n",
        admin.addr, apps.addr
    ));
    // The admin's machine gets through; another host gets access_denied from
    // sniroute (the server never sees it) but still reaches the open route.
    let answer = tls_request_from(listen, Some("127.0.0.2"), "admin.example.com").await;
    assert_eq!(answer.unwrap(), "admin sni=admin.example.com\n");
    let err = tls_request_from(listen, Some("127.0.0.3"), "admin.example.com")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let answer = tls_request_from(listen, Some("127.0.0.3"), "app.example.com").await;
    assert_eq!(answer.unwrap(), "apps sni=app.example.com\n");
    assert_eq!((admin.accepted(), apps.accepted()), (1, 1));
    wait_denied(metrics, 1);
    // The refusal has its access-log line, naming the route that refused.
    let lines = proxy.wait_access(3);
    let refused: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("outcome=denied"))
        .collect();
    assert_eq!(refused.len(), 1, "{lines:?}");
    assert!(
        refused[0].contains("host=admin.example.com route=admin.example.com pool=admin server=-"),
        "{}",
        refused[0]
    );
    assert!(refused[0].contains("127.0.0.3:"), "{}", refused[0]);

    // openssl s_client, as an operator would try it, reads the same alert.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &listen.to_string()])
        .args(["-servername", "admin.example.com", "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl must be installed");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("access denied"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_refuses_http_clients_with_403() {
    let web = Upstream::start("127.0.0.9", "web", Mode::Http).await;
    let listen = free_addr("127.0.0.1");
    let _proxy = Sniroute::start(&format!(
        "[[listeners]]\nbind = \"{listen}\"\nprotocol = \"http\"\n\
         [listeners.routes]\n\
         \"admin.example.com\" = {{ pool = \"web\", deny = [\"127.0.0.3\", \"::1\"] }}\n\
         [upstreams.web]\nservers = [\"{}\"]\n",
        web.addr
    ));
    let curl = |from: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--interface", from])
            .args(["-w", "\n%{http_code}", "-D", "-"])
            .arg(format!("http://admin.example.com:{}/", listen.port()))
            .args([
                "--resolve",
                &format!("admin.example.com:{}:127.0.0.1", listen.port()),
            ])
            .output()
            .expect("curl must be installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = curl("127.0.0.3");
    assert!(
        refused.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{refused}"
    );
    assert!(refused.contains("Connection: close\r\n"), "{refused}");
    assert!(
        refused.ends_with("this host is not open to your address\n\n403"),
        "{refused}"
    );
    let served = curl("127.0.0.2");
    let want = format!("web host=admin.example.com:{}\n200", listen.port());
    assert!(served.ends_with(&want), "{served}");
    assert_eq!(web.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_match_ipv6_rules() {
    let up = Upstream::start("127.0.0.9", "up", Mode::Tls).await;
    let listen = free_addr("::1");
    let _proxy = Sniroute::start(&format!(
        "[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n\
         [listeners.routes]\n\
         \"open.example.com\" = {{ pool = \"p\", allow = [\"::1/128\"] }}\n\
         \"closed.example.com\" = {{ pool = \"p\", allow = [\"2001:db8::/32\", \"127.0.0.0/8\"] }}\n\
         [upstreams.p]\nservers = [\"{}\"]\n",
        up.addr
    ));
    assert_eq!(
        tls_request(listen, "open.example.com").await.unwrap(),
        "up sni=open.example.com\n"
    );
    let err = tls_request(listen, "closed.example.com").await.unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
}

/// Behind a balancer, the client is the one its PROXY header names: the
/// balancer's own address (allowed to send headers) is not what is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_balancer_the_real_client_is_checked() {
    let up = Upstream::start("127.0.0.9", "up", Mode::Hold).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let _proxy = Sniroute::start(&format!(
        "[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n\
         accept_proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.0/8\"]\n\
         deny = [\"198.51.100.0/24\"]\n\
         [listeners.routes]\n\
         \"curl.example.com\" = {{ pool = \"p\", allow = [\"203.0.113.0/24\"] }}\n\
         [upstreams.p]\nservers = [\"{}\"]\n",
        up.addr
    ));
    let up = &up;
    let ask = |client: &'static str| async move {
        let forwarded_before = up.accepted();
        let mut c = connect_from(listen, Some("127.0.0.2")).await.unwrap();
        let mut bytes = format!("PROXY TCP4 {client} 127.0.0.1 5555 443\r\n").into_bytes();
        bytes.extend_from_slice(CURL_HELLO);
        let _ = c.write_all(&bytes).await;
        let mut got = vec![0u8; 7];
        // The held upstream never writes: a forwarded client reads nothing,
        // a refused one reads its answer or the close.
        tokio::select! {
            read = c.read(&mut got) => match read {
                Ok(n) => got[..n].to_vec(),
                Err(_) => Vec::new(),
            },
            () = eventually("forwarded", || up.accepted() > forwarded_before) => {
                b"forwarded".to_vec()
            }
        }
    };
    assert_eq!(ask("203.0.113.9").await, b"forwarded");
    // Not in the route's allow: the alert.
    assert_eq!(
        ask("192.0.2.1").await,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31]
    );
    // In the listener's deny: closed, nothing said.
    assert_eq!(ask("198.51.100.7").await, b"");
    assert_eq!(up.accepted(), 1);
    wait_denied(metrics, 2);
}

#[test]
fn bad_allow_and_deny_entries_are_named_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        (
            "[[listeners]]\nbind = \"127.0.0.1:1443\"\nprotocol = \"tls\"\ndefault = \"p\"\nallow = [\"10.0.0.0/33\"]\n[upstreams.p]\nservers = [\"127.0.0.2:443\"]\n",
            "sniroute.toml:5:10: listener: allow: `10.0.0.0/33` is not an address or CIDR block",
        ),
        (
            "[[listeners]]\nbind = \"127.0.0.1:1443\"\nprotocol = \"tls\"\n[listeners.routes]\n\"a.example.com\" = { pool = \"p\", deny = [\"intranet\"] }\n[upstreams.p]\nservers = [\"127.0.0.2:443\"]\n",
            "sniroute.toml:5:41: route `a.example.com`: deny: `intranet` is not an address or CIDR block",
        ),
        (
            "[[listeners]]\nbind = \"127.0.0.1:1443\"\nprotocol = \"tls\"\n[listeners.routes]\n\"a.example.com\" = { pool = \"nope\" }\n[upstreams.p]\nservers = [\"127.0.0.2:443\"]\n",
            "sniroute.toml:5:28: route `a.example.com` points to unknown upstream `nope`",
        ),
        (
            "[[listeners]]\nbind = \"127.0.0.1:1443\"\nprotocol = \"tls\"\n[listeners.routes]\n\"a.example.com\" = { pool = \"p\", alow = [] }\n[upstreams.p]\nservers = [\"127.0.0.2:443\"]\n",
            "unknown field `alow`",
        ),
    ] {
        let path = write_config(dir.path(), text);
        let (code, _, err) = run_cli(&["--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
    }
}
