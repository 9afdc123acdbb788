//! `GET /metrics` after real traffic through the real binary.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain HTTP/1.0 GET of `path`; returns (status line, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let text = String::from_utf8(read_all(&mut c).await).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Parses the exposition strictly enough: every sample line becomes a sample,
/// and every sample's family has a `# TYPE`.
fn parse(text: &str) -> Scrape {
    let sample_lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let types: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            types.contains(&name) || types.contains(&family),
            "no TYPE for {line}"
        );
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let parsed: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            // A histogram sample holds its buckets; _sum and _count come as samples of their own.
            Value::Histogram(buckets) => buckets.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(parsed, sample_lines, "some lines did not parse:\n{text}");
    scrape
}

/// The value of the sample `name` whose labels include all of `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{name} {labels:?}: {} samples",
        matching.len()
    );
    match &matching[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_traffic_exactly() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Tls).await;
    let dead = free_addr("127.0.0.4");
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = format!(
        "[timeouts]\npeek = \"300ms\"\n[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n[listeners.routes]\n\
         \"a.example.com\" = \"a\"\n\"*.dead.example.com\" = \"d\"\n\
         [upstreams.a]\nservers = [\"{}\"]\n[upstreams.d]\nservers = [\"{dead}\"]\n",
        a.addr
    );
    let mut proxy = Sniroute::start(&config);
    proxy.wait_log("serving GET /metrics");

    for _ in 0..3 {
        tls_request(listen, "a.example.com").await.unwrap();
    }
    assert!(tls_request(listen, "unknown.example.org").await.is_err());
    assert!(tls_request(listen, "x.dead.example.com").await.is_err());
    let mut silent = TcpStream::connect(listen).await.unwrap();
    assert_eq!(read_all(&mut silent).await, b""); // closed at the peek timeout
    let lines = proxy.wait_access(6);

    let (status, body) = get(metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let m = parse(&body);
    let l = listen.to_string();
    let l = l.as_str();
    let a_server = a.addr.to_string();
    let dead_server = dead.to_string();
    assert_eq!(
        value(
            &m,
            "sniroute_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sniroute_connections_accepted_total",
            &[("listener", l)]
        ),
        6.0
    );
    for (outcome, n) in [
        ("closed", 3.0),
        ("no_route", 1.0),
        ("connect_failed", 1.0),
        ("peek_failed", 1.0),
        ("idle_timeout", 0.0),
    ] {
        assert_eq!(
            value(
                &m,
                "sniroute_connections_closed_total",
                &[("listener", l), ("outcome", outcome)]
            ),
            n,
            "{outcome}"
        );
    }
    assert_eq!(
        value(
            &m,
            "sniroute_peek_failures_total",
            &[("listener", l), ("reason", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sniroute_peek_failures_total",
            &[("listener", l), ("reason", "no_route")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sniroute_peek_failures_total",
            &[("listener", l), ("reason", "not_tls")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "sniroute_routed_connections_total",
            &[("route", "a.example.com"), ("pool", "a")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "sniroute_routed_connections_total",
            &[("route", "*.dead.example.com"), ("pool", "d")]
        ),
        1.0
    );
    let a_labels = [("pool", "a"), ("server", a_server.as_str())];
    let d_labels = [("pool", "d"), ("server", dead_server.as_str())];
    assert_eq!(
        value(&m, "sniroute_server_connect_attempts_total", &a_labels),
        3.0
    );
    assert_eq!(
        value(&m, "sniroute_server_connect_failures_total", &a_labels),
        0.0
    );
    assert_eq!(
        value(&m, "sniroute_server_connect_attempts_total", &d_labels),
        1.0
    );
    assert_eq!(
        value(&m, "sniroute_server_connect_failures_total", &d_labels),
        1.0
    );
    assert_eq!(value(&m, "sniroute_server_up", &a_labels), 1.0);
    assert_eq!(value(&m, "sniroute_server_up", &d_labels), 0.0);
    assert_eq!(
        value(&m, "sniroute_server_active_connections", &a_labels),
        0.0
    );
    assert_eq!(value(&m, "sniroute_connections_open", &[]), 0.0);
    assert_eq!(
        value(&m, "sniroute_connection_duration_seconds", &[("pool", "a")]),
        3.0
    );
    assert_eq!(
        value(&m, "sniroute_connection_duration_seconds", &[("pool", "d")]),
        1.0
    );

    // Bytes per server equal the access log's sums.
    let sum = |field: &str| -> f64 {
        lines
            .iter()
            .filter(|l| l.contains(&format!("server={a_server} ")))
            .map(|l| {
                l.split(&format!("{field}="))
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap()
            })
            .sum()
    };
    let up = value(
        &m,
        "sniroute_server_bytes_total",
        &[a_labels[0], a_labels[1], ("direction", "up")],
    );
    let down = value(
        &m,
        "sniroute_server_bytes_total",
        &[a_labels[0], a_labels[1], ("direction", "down")],
    );
    assert!(up > 600.0 && down > 600.0, "{up} {down}");
    assert_eq!((up, down), (sum("bytes_up"), sum("bytes_down")));

    // Reloads, good and bad.
    assert_eq!(
        value(
            &m,
            "sniroute_config_reloads_total",
            &[("result", "success")]
        ),
        0.0
    );
    proxy.signal("HUP");
    proxy.wait_log("config reloaded");
    std::fs::write(proxy.path(), "garbage = [").unwrap();
    proxy.signal("HUP");
    proxy.wait_log("config reload failed");
    let m = parse(&get(metrics, "/metrics").await.1);
    assert_eq!(
        value(
            &m,
            "sniroute_config_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sniroute_config_reloads_total",
            &[("result", "failure")]
        ),
        1.0
    );
    let stamp = value(
        &m,
        "sniroute_config_last_reload_success_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - stamp).abs() < 60.0, "{stamp} vs {now}");
    // Counters survive the reload: same listener, route and server.
    assert_eq!(
        value(
            &m,
            "sniroute_routed_connections_total",
            &[("route", "a.example.com"), ("pool", "a")]
        ),
        3.0
    );
    assert_eq!(
        value(&m, "sniroute_server_connect_attempts_total", &a_labels),
        3.0
    );
    assert!(proxy.child_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_metrics_is_served() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Tls).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let _proxy = Sniroute::start(&format!(
        "[metrics]\nbind = \"{metrics}\"\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"a\"\n\
         [upstreams.a]\nservers = [\"{}\"]\n",
        a.addr
    ));
    assert_eq!(get(metrics, "/").await.0, "HTTP/1.1 404 Not Found");
    assert_eq!(get(metrics, "/metricsx").await.0, "HTTP/1.1 404 Not Found");
    let mut c = TcpStream::connect(metrics).await.unwrap();
    c.write_all(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert!(read_all(&mut c).await.starts_with(b"HTTP/1.1 405 "));
    let mut c = TcpStream::connect(metrics).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    assert!(read_all(&mut c).await.starts_with(b"HTTP/1.1 400 "));
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{content_type}",
            &format!("http://{metrics}/metrics"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 text/plain; version=0.0.4; charset=utf-8"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_garbage_metrics_clients_do_not_slow_the_proxy() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Tls).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let _proxy = Sniroute::start(&format!(
        "[metrics]\nbind = \"{metrics}\"\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"a\"\n\
         [upstreams.a]\nservers = [\"{}\"]\n",
        a.addr
    ));
    // 50 slowloris clients (one byte, then silence) and 50 garbage floods.
    let mut slow = Vec::new();
    for i in 0..100 {
        let Ok(mut c) = TcpStream::connect(metrics).await else {
            continue;
        };
        let bytes: &[u8] = if i % 2 == 0 { b"G" } else { &[0xff; 4096] };
        let _ = c.write_all(bytes).await;
        slow.push(c);
    }
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            tls_request(listen, "a.example.com").await.unwrap(),
            "a sni=a.example.com\n"
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "proxy slowed: {:?}",
        start.elapsed()
    );
    // Once the slow clients time out, scrapes work again.
    drop(slow);
    let start = Instant::now();
    loop {
        let mut c = TcpStream::connect(metrics).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut out)).await;
        if out.starts_with(b"HTTP/1.1 200 ") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "metrics never answered again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// stderr that nobody reads (a stuck journald, a full pipe) must not stall
/// connections: log lines are dropped and counted instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stderr_drops_log_lines_instead_of_stalling_connections() {
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[metrics]\nbind = \"{metrics}\"\n[[listeners]]\nbind = \"{listen}\"\n\
             protocol = \"tls\"\ndefault = \"p\"\n[upstreams.p]\nservers = [\"127.0.0.2:1\"]\n"
        ),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sniroute"))
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        // Piped and never read: once the pipe is full, every write(2) would block.
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _unread = child.stderr.take();
    let up = poll(Duration::from_secs(10), || {
        std::net::TcpStream::connect(metrics).ok()
    });
    assert!(up.is_some(), "metrics endpoint did not come up");

    // Each connection sends a malformed hello: one access line, no upstream.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut dropped = 0.0;
    let mut rounds = 0;
    while dropped == 0.0 && Instant::now() < deadline {
        let clients: Vec<_> = (0..1000)
            .map(|_| {
                tokio::spawn(async move {
                    let mut c = TcpStream::connect(listen).await.unwrap();
                    c.write_all(b"\x16\x03\x01\x00\x05garbage").await.unwrap();
                    read_all(&mut c).await
                })
            })
            .collect();
        let all = async {
            for client in clients {
                assert_eq!(client.await.unwrap(), b"");
            }
        };
        tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("connections stalled behind a full stderr");
        rounds += 1;
        let (_, body) = get(metrics, "/metrics").await;
        dropped = value(&parse(&body), "sniroute_log_lines_dropped_total", &[]);
    }
    assert!(
        dropped > 0.0,
        "no line dropped after {rounds} x 1000 connections"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_max_is_the_running_configs_limit() {
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = |max: u32| {
        format!(
            "[limits]\nmax_connections = {max}\n[metrics]\nbind = \"{metrics}\"\n\
             [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
             [upstreams.p]\nservers = [\"127.0.0.2:9\"]\n"
        )
    };
    let proxy = Sniroute::start(&config(300));
    proxy.wait_log("serving GET /metrics");
    let m = parse(&get(metrics, "/metrics").await.1);
    assert_eq!(value(&m, "sniroute_connections_max", &[]), 300.0);

    std::fs::write(proxy.path(), config(500)).unwrap();
    proxy.signal("HUP");
    proxy.wait_log("config reloaded");
    let m = parse(&get(metrics, "/metrics").await.1);
    assert_eq!(value(&m, "sniroute_connections_max", &[]), 500.0);
}
