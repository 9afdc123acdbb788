//! Routing by SNI and by Host, through the real binary to real upstreams, with real
//! clients: rustls, `openssl s_client`, `curl --resolve`.

mod common;

use std::process::Command;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Setup {
    proxy: Sniroute,
    tls: std::net::SocketAddr,
    http: std::net::SocketAddr,
    rancher: Upstream,
    apps: Upstream,
    argo: Upstream,
    web_a: Upstream,
    web_b: Upstream,
}

async fn setup(tls_default: bool) -> Setup {
    let rancher = Upstream::start("127.0.0.2", "rancher", Mode::Tls).await;
    let apps = Upstream::start("127.0.0.3", "apps", Mode::Tls).await;
    let argo = Upstream::start("127.0.0.4", "argo", Mode::Tls).await;
    let web_a = Upstream::start("127.0.0.2", "web-a", Mode::Http).await;
    let web_b = Upstream::start("127.0.0.3", "web-b", Mode::Http).await;
    let (tls, http) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let default = if tls_default {
        "default = \"apps\""
    } else {
        ""
    };
    let proxy = Sniroute::start(&format!(
        r#"
[[listeners]]
bind = ["{tls}"]
protocol = "tls"
{default}
[listeners.routes]
"rancher.example.com" = "rancher"
"*.apps.example.com" = "apps"
"~^argo-[a-z]+\\.example\\.com$" = "argo"

[[listeners]]
bind = "{http}"
protocol = "http"
[listeners.routes]
"a.example.com" = "web_a"
"*.example.com" = "web_b"

[upstreams.rancher]
servers = ["{}"]
[upstreams.apps]
servers = ["{}"]
[upstreams.argo]
servers = ["{}"]
[upstreams.web_a]
servers = ["{}"]
[upstreams.web_b]
servers = ["{}"]
"#,
        rancher.addr, apps.addr, argo.addr, web_a.addr, web_b.addr
    ));
    Setup {
        proxy,
        tls,
        http,
        rancher,
        apps,
        argo,
        web_a,
        web_b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustls_clients_reach_the_pool_of_their_sni() {
    let s = setup(false).await;
    assert_eq!(
        tls_request(s.tls, "rancher.example.com").await.unwrap(),
        "rancher sni=rancher.example.com\n"
    );
    assert_eq!(
        tls_request(s.tls, "web.apps.example.com").await.unwrap(),
        "apps sni=web.apps.example.com\n"
    );
    assert_eq!(
        tls_request(s.tls, "argo-cd.example.com").await.unwrap(),
        "argo sni=argo-cd.example.com\n"
    );
    assert_eq!(
        (s.rancher.accepted(), s.apps.accepted(), s.argo.accepted()),
        (1, 1, 1)
    );
    // The upstream saw the client's application bytes unchanged, after a real handshake.
    assert_eq!(s.rancher.received.lock().unwrap()[0], b"hello\n");

    let lines = s.proxy.wait_access(3);
    let line = lines
        .iter()
        .find(|l| l.contains("host=rancher.example.com"))
        .unwrap();
    for field in [
        &format!("listener={}", s.tls),
        "route=rancher.example.com",
        "pool=rancher",
        &format!("server={}", s.rancher.addr),
        "outcome=closed",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(line.contains("client=127.0.0.1:"), "{line}");
    assert!(line.contains("duration_ms="), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_is_routed_by_sni() {
    let s = setup(false).await;
    let ca = cert_pem_file(s.proxy.dir.path());
    let tls = s.tls;
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &tls.to_string(),
                "-servername",
                "web.apps.example.com",
                "-verify_return_error",
                "-quiet",
            ])
            .arg("-CAfile")
            .arg(&ca)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl must be installed");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "apps sni=web.apps.example.com\n"
    );
    assert_eq!((s.rancher.accepted(), s.apps.accepted()), (0, 1));
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl must be installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http_is_routed_by_host_port_and_case_ignored() {
    let s = setup(false).await;
    let port = s.http.port();
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = curl(&[
            "--resolve",
            &format!("A.Example.com:{port}:127.0.0.1"),
            &format!("http://A.Example.com:{port}/x"),
        ]);
        let b = curl(&[
            "-H",
            "Host: deep.sub.example.com:1234",
            &format!("http://127.0.0.1:{port}/"),
        ]);
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!(a.0, format!("web-a host=A.Example.com:{port}"));
    assert_eq!(b.0, "web-b host=deep.sub.example.com:1234");
    assert_eq!((s.web_a.accepted(), s.web_b.accepted()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_https_is_routed_by_sni() {
    let s = setup(false).await;
    let ca = cert_pem_file(s.proxy.dir.path());
    let port = s.tls.port();
    let (out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("rancher.example.com:{port}:127.0.0.1"),
            &format!("https://rancher.example.com:{port}/"),
            "--http0.9",
        ])
    })
    .await
    .unwrap();
    assert!(
        out.starts_with("rancher sni=rancher.example.com"),
        "stdout {out:?} stderr {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_without_default_gets_unrecognized_name_and_no_upstream_connection() {
    let s = setup(false).await;
    let err = tls_request(s.tls, "unknown.example.org").await.unwrap_err();
    assert!(err.to_string().contains("UnrecognisedName"), "{err}");

    // Byte-exact: the fatal alert record and nothing else.
    let mut raw = TcpStream::connect(s.tls).await.unwrap();
    raw.write_all(CURL_HELLO).await.unwrap(); // SNI curl.example.com: no route
    assert_eq!(
        read_all(&mut raw).await,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]
    );

    assert_eq!(
        s.rancher.accepted() + s.apps.accepted() + s.argo.accepted(),
        0
    );
    let lines = s.proxy.wait_access(2);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("outcome=no_route") && l.contains("pool=-")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_gets_421_and_no_upstream_connection() {
    let s = setup(false).await;
    let mut raw = TcpStream::connect(s.http).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: nothing.example.org\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(read_all(&mut raw).await).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 421 Misdirected Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    // No Host at all (HTTP/1.0) is an absent name: also no route here.
    let mut raw = TcpStream::connect(s.http).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert!(read_all(&mut raw).await.starts_with(b"HTTP/1.1 421 "));
    assert_eq!(s.web_a.accepted() + s.web_b.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_pool_takes_unknown_and_absent_names() {
    let s = setup(true).await;
    assert_eq!(
        tls_request(s.tls, "unknown.example.com").await.unwrap(),
        "apps sni=unknown.example.com\n"
    );
    // A real hello without SNI goes to the default pool too.
    let mut raw = TcpStream::connect(s.tls).await.unwrap();
    raw.write_all(include_bytes!("fixtures/hello/no_sni.bin"))
        .await
        .unwrap();
    eventually("no-SNI hello at the default pool", || {
        s.apps.accepted() == 2
    })
    .await;
    drop(raw); // the access line is written when the connection closes
    s.proxy.wait_log("host=- route=default pool=apps");
    assert_eq!(s.rancher.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_failures_close_without_upstream_even_with_a_default() {
    let s = setup(true).await;
    // Plain HTTP on the TLS port.
    let mut raw = TcpStream::connect(s.tls).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_all(&mut raw).await, b"");
    // A ClientHello whose server_name list is corrupt.
    let mut bad = CURL_HELLO.to_vec();
    let at = bad
        .windows(5)
        .position(|w| w == [0x00, 0x00, 0x00, 0x15, 0x00])
        .expect("sni extension");
    bad[at + 4] = 0xff;
    let mut raw = TcpStream::connect(s.tls).await.unwrap();
    raw.write_all(&bad).await.unwrap();
    assert_eq!(read_all(&mut raw).await, b"");
    // TLS on the HTTP port.
    let mut raw = TcpStream::connect(s.http).await.unwrap();
    raw.write_all(CURL_HELLO).await.unwrap();
    assert_eq!(read_all(&mut raw).await, b"");

    let lines = s.proxy.wait_access(3);
    let reasons: Vec<_> = lines
        .iter()
        .map(|l| l.rsplit("reason=").next().unwrap().to_owned())
        .collect();
    assert!(reasons.contains(&"not_tls".to_owned()), "{lines:?}");
    assert!(reasons.contains(&"malformed".to_owned()), "{lines:?}");
    assert!(reasons.contains(&"not_http".to_owned()), "{lines:?}");
    assert_eq!(
        s.apps.accepted() + s.web_a.accepted() + s.web_b.accepted(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_routes_too() {
    let up = Upstream::start("127.0.0.2", "v6", Mode::Tls).await;
    let bind = free_addr("::1");
    let proxy = Sniroute::start(&format!(
        "[[listeners]]\nbind = [\"{bind}\"]\nprotocol = \"tls\"\ndefault = \"p\"\n[upstreams.p]\nservers = [\"{}\"]\n",
        up.addr
    ));
    assert_eq!(
        tls_request(bind, "v6.example.com").await.unwrap(),
        "v6 sni=v6.example.com\n"
    );
    proxy.wait_log("client=[::1]:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_lines_parse_and_carry_every_field() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Tls).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&format!(
        "[log]\nformat = \"json\"\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n\
         [listeners.routes]\n\"*.example.com\" = \"p\"\n[upstreams.p]\nservers = [\"{}\"]\n",
        up.addr
    ));
    tls_request(listen, "j.example.com").await.unwrap();
    let log = proxy.wait_log("\"target\":\"sniroute::access\"");
    let line = log
        .lines()
        .find(|l| l.contains("sniroute::access"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["host"], "j.example.com");
    assert_eq!(v["route"], "*.example.com");
    assert_eq!(v["pool"], "p");
    assert_eq!(v["server"], up.addr.to_string());
    assert_eq!(v["listener"], listen.to_string());
    assert_eq!(v["outcome"], "closed");
    // Text lines quote an empty value (logfmt); JSON has its own quoting.
    assert_eq!(v["reason"], "");
    assert!(v["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v["bytes_up"].as_u64().unwrap() > 200, "{line}");
    assert!(v["bytes_down"].as_u64().unwrap() > 200, "{line}");
    assert!(v["duration_ms"].is_u64(), "{line}");
    // Every line on stderr is JSON, not just the access log.
    for l in log.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_can_be_turned_off() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Tls).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&format!(
        "[log]\naccess_log = false\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [\"{}\"]\n",
        up.addr
    ));
    tls_request(listen, "j.example.com").await.unwrap();
    // A later event that is logged proves the log is flushed up to here.
    proxy.signal("TERM");
    proxy.wait_log("shutting down");
    assert!(proxy.access_lines().is_empty(), "{}", proxy.log());
}
