//! Running out of file descriptors, through the real binary under a low
//! `RLIMIT_NOFILE`: what fails is the client that met the shortage, never the
//! health of the servers, the relay engine of other connections, or the
//! metrics endpoint. And the limit itself: raised to the hard one at start,
//! and checked against `max_connections`.
//!
//! The descriptors are used up exactly: clients that connect and send nothing
//! sit in the peek (`timeouts.peek = "1h"`) holding one descriptor each, and
//! the test opens them one at a time, watching the process's descriptor count
//! in `/proc/PID/fd`, until the count it wants is reached.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The limit the proxy runs under in the exhaustion tests.
const NOFILE: usize = 64;

/// Descriptors the process has open now below [`NOFILE`]: the limit is on
/// descriptor numbers, and one inherited above it (a build tool's jobserver
/// pipe, say) takes no room.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
        .filter(|fd| *fd < NOFILE)
        .count()
}

/// Opens clients to `listen` that send nothing, one at a time, each waited for
/// until the proxy has accepted it, until the proxy holds `target` descriptors.
async fn fill(pid: u32, listen: SocketAddr, target: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..NOFILE {
        let now = fd_count(pid);
        if now >= target {
            assert_eq!(now, target, "overshot");
            return held;
        }
        held.push(TcpStream::connect(listen).await.unwrap());
        poll(DEADLINE, || (fd_count(pid) > now).then_some(()))
            .unwrap_or_else(|| panic!("the proxy did not accept client {}", held.len()));
    }
    panic!("{target} descriptors never reached");
}

/// `GET /metrics` on a fresh connection; `None` if no complete answer came
/// within `within`.
async fn try_scrape(metrics: SocketAddr, within: Duration) -> Option<(String, String)> {
    let exchange = async {
        let mut c = TcpStream::connect(metrics).await.ok()?;
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
        let mut text = Vec::new();
        c.read_to_end(&mut text).await.ok()?;
        let text = String::from_utf8(text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_owned(), body.to_owned()))
    };
    tokio::time::timeout(within, exchange).await.ok().flatten()
}

/// A scrape's body, retried until one succeeds within `DEADLINE`.
async fn scrape(metrics: SocketAddr) -> String {
    let start = Instant::now();
    loop {
        if let Some((status, body)) = try_scrape(metrics, Duration::from_secs(2)).await {
            assert_eq!(status, "HTTP/1.1 200 OK");
            return body;
        }
        assert!(start.elapsed() < DEADLINE, "no scrape answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `name` with exactly the labels `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    };
    body.lines()
        .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn config(tls: SocketAddr, metrics: SocketAddr, servers: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[timeouts]\npeek = \"1h\"\n[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{tls}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [{}]\n{extra}",
        servers.join(", ")
    )
}

fn start(config: &str) -> Sniroute {
    Sniroute::start_with(
        config,
        Opts {
            nofile: Some(NOFILE as u32),
            args: vec!["--no-watch".into()],
            ..Opts::default()
        },
    )
}

/// A client whose upstream `socket()` fails with EMFILE fails alone: no server
/// is blamed (none marked down, no connect failure counted), the other server
/// is not tried, and the shortage is logged and counted as what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_on_connect_fails_the_client_not_the_servers() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Hold).await;
    let b = Upstream::start("127.0.0.3", "b", Mode::Hold).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = start(&config(listen, metrics, &[a.addr, b.addr], ""));
    let pid = proxy.child.id();

    // One descriptor left: enough to accept a client, none to connect for it.
    let held = fill(pid, listen, NOFILE - 1).await;
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    assert_eq!(read_all(&mut c).await, b"", "closed without an answer");
    let line = poll(DEADLINE, || {
        proxy
            .access_lines()
            .into_iter()
            .find(|l| l.contains("outcome=connect_failed"))
    })
    .unwrap_or_else(|| panic!("no connect_failed line:\n{}", proxy.log()));
    assert!(line.contains("Too many open files"), "{line}");
    assert_eq!((a.accepted(), b.accepted()), (0, 0));

    // The failed client's descriptor is free again: the metrics endpoint can
    // answer even without a reserve.
    let body = scrape(metrics).await;
    for server in [a.addr, b.addr] {
        let labels = [("pool", "p"), ("server", &*server.to_string())];
        assert_eq!(
            sample(&body, "sniroute_server_up", &labels),
            Some(1.0),
            "{server}:\n{}",
            proxy.log()
        );
        assert_eq!(
            sample(&body, "sniroute_server_connect_failures_total", &labels),
            Some(0.0),
            "{server}"
        );
        assert_eq!(
            sample(&body, "sniroute_server_connect_attempts_total", &labels),
            Some(0.0),
            "{server}: a connect that could not start is no attempt at it"
        );
    }
    assert_eq!(
        sample(
            &body,
            "sniroute_local_resource_errors_total",
            &[
                ("operation", "upstream_connect"),
                ("resource", "file_descriptors")
            ]
        ),
        Some(1.0)
    );
    let log = proxy.log();
    assert!(!log.contains("marked down"), "{log}");
    assert!(!log.contains("trying the next server"), "{log}");
    assert!(!log.contains("no server reachable"), "{log}");
    assert!(
        log.contains("out of file descriptors") && log.contains("LimitNOFILE"),
        "{log}"
    );
    drop(held);
}

/// Pipes the process holds below [`NOFILE`] (each end counts).
fn pipe_ends(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: usize = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (fd < NOFILE && target.to_str()?.starts_with("pipe:")).then_some(())
        })
        .count()
}

/// Sends `len` bytes through `c` to an echo server and checks that the same
/// bytes come back.
async fn echo_bulk(c: &mut TcpStream, len: usize) {
    let sent: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let (mut r, mut w) = c.split();
    let mut back = vec![0; len];
    let (wrote, read) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(w.write_all(&sent), r.read_exact(&mut back))
    })
    .await
    .expect("echo timed out");
    wrote.unwrap();
    read.unwrap();
    assert!(back == sent, "the echo differs");
}

/// A pipe that cannot be had for lack of descriptors makes that connection
/// copy instead of splice; it neither switches the whole process to copying
/// nor claims that the kernel refused splice. Once descriptors are back, new
/// connections splice (they make pipes) again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pipe_for_splice_copies_that_connection_only() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Hold).await;
    let echo = Upstream::start("127.0.0.3", "echo", Mode::Echo).await;
    let (listen, metrics, tcp) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let extra = format!(
        "[[listeners]]\nbind = \"{tcp}\"\nprotocol = \"tcp\"\ndefault = \"e\"\n\
         [upstreams.e]\nservers = [\"{}\"]\n",
        echo.addr
    );
    let proxy = start(&config(listen, metrics, &[a.addr], &extra));
    proxy.wait_log("relay=splice");
    let pid = proxy.child.id();
    let pipes_at_start = pipe_ends(pid);

    let mut c = TcpStream::connect(tcp).await.unwrap();
    echo_bulk(&mut c, 2).await;
    let held = fill(pid, listen, NOFILE).await;
    // Bulk both ways: each direction moves from copy to splice and needs a pipe.
    echo_bulk(&mut c, 256 * 1024).await;
    let log = proxy.log();
    assert!(!log.contains("refused by the kernel"), "{log}");
    proxy.wait_log("no pipe for splice(2)");

    drop(held);
    poll(DEADLINE, || (fd_count(pid) < NOFILE / 2).then_some(()))
        .expect("the held clients' descriptors were never closed");
    let mut d = TcpStream::connect(tcp).await.unwrap();
    echo_bulk(&mut d, 256 * 1024).await;
    assert!(
        pipe_ends(pid) > pipes_at_start,
        "no pipe was made for a new connection: it copied"
    );
    let failed = sample(
        &scrape(metrics).await,
        "sniroute_local_resource_errors_total",
        &[
            ("operation", "splice_pipe"),
            ("resource", "file_descriptors"),
        ],
    );
    // Once per direction at most: a direction that met the shortage copies to its end.
    assert!(
        matches!(failed, Some(n) if (1.0..=2.0).contains(&n)),
        "{failed:?}"
    );
}

/// The soft and hard `Max open files` of a running process.
fn nofile_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    (fields[0], fields[1])
}

/// A soft limit below the hard one is raised to it at start, and said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one_at_start() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Hold).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start_with(
        &config(listen, metrics, &[a.addr], ""),
        Opts {
            nofile: Some(1024),
            nofile_soft: Some(256),
            args: vec!["--no-watch".into()],
            ..Opts::default()
        },
    );
    assert_eq!(nofile_limits(proxy.child.id()), (1024, 1024));
    let log = proxy.log();
    assert!(
        log.contains("file descriptor limit (RLIMIT_NOFILE) raised from 256 to 1024"),
        "{log}"
    );
}

/// `max_connections` that the descriptor limit cannot hold is warned about at
/// start and whenever a reload changes it, with the numbers; a value that fits
/// is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_beyond_the_descriptor_limit_is_warned_at_start_and_reload() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Hold).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let with_limit = |n: u32| {
        config(
            listen,
            metrics,
            &[a.addr],
            &format!("[limits]\nmax_connections = {n}\n"),
        )
    };
    let proxy = Sniroute::start_with(
        &with_limit(20000),
        Opts {
            nofile: Some(256),
            args: vec!["--no-watch".into()],
            ..Opts::default()
        },
    );
    proxy.wait_log("relay=splice");
    let warning = |n: u32, needed: u32, fits: u32| {
        format!(
            "limits.max_connections = {n} needs up to {needed} file descriptors \
             (4 per connection, plus 64), but RLIMIT_NOFILE is 256: past about {fits} \
             connections new ones will fail; raise LimitNOFILE (ulimit -n) or lower \
             limits.max_connections"
        )
    };
    proxy.wait_log(&warning(20000, 80064, 48));

    std::fs::write(proxy.path(), with_limit(30000)).unwrap();
    proxy.signal("HUP");
    proxy.wait_log(&warning(30000, 120064, 48));

    // 40 connections need 4 × 40 + 64 = 224 descriptors: they fit.
    std::fs::write(proxy.path(), with_limit(40)).unwrap();
    proxy.signal("HUP");
    poll(DEADLINE, || {
        (proxy.log().matches("config reloaded").count() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("second reload:\n{}", proxy.log()));
    let log = proxy.log();
    assert_eq!(log.matches("needs up to").count(), 2, "{log}");
}

/// With every descriptor taken by clients, and one more client waiting in the
/// listen queue, `GET /metrics` still answers, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_while_every_descriptor_is_taken() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Hold).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = start(&config(listen, metrics, &[a.addr], ""));
    let pid = proxy.child.id();

    let held = fill(pid, listen, NOFILE).await;
    let waiting = TcpStream::connect(listen).await.unwrap();
    proxy.wait_log("accept failed");
    for scrape in 1..=3 {
        let (status, body) = try_scrape(metrics, DEADLINE)
            .await
            .unwrap_or_else(|| panic!("scrape {scrape}: no answer:\n{}", proxy.log()));
        assert_eq!(status, "HTTP/1.1 200 OK");
        // The waiting client is accepted only if the proxy's accept loop, which
        // retries, happens to take a descriptor the endpoint freed for a moment.
        let open = sample(&body, "sniroute_connections_open", &[]).unwrap();
        let held = held.len() as f64;
        assert!(
            open == held || open == held + 1.0,
            "{open} open, {held} held"
        );
    }
    assert_eq!(fd_count(pid), NOFILE, "still out of descriptors");
    drop((held, waiting));
}

/// Health checks that cannot get a descriptor are skipped, not failed: three
/// in a row counted as failures would take their server down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_skips_health_checks_without_failing_servers() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Hold).await;
    let b = Upstream::start("127.0.0.3", "b", Mode::Hold).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = start(&config(
        listen,
        metrics,
        &[a.addr, b.addr],
        "[upstreams.p.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 3\nrise = 1\n",
    ));
    let pid = proxy.child.id();
    // Probes hold a descriptor for a moment each, so the count wobbles: keep
    // clients coming until one waits unaccepted. From then on the accept
    // loop takes any descriptor a probe gives back.
    let mut held = Vec::new();
    let mut waiting = false;
    for _ in 0..NOFILE * 2 {
        let now = fd_count(pid);
        held.push(TcpStream::connect(listen).await.unwrap());
        if poll(Duration::from_millis(500), || {
            (fd_count(pid) > now).then_some(())
        })
        .is_none()
            && fd_count(pid) >= NOFILE
        {
            waiting = true;
            break;
        }
    }
    assert!(waiting, "descriptors never ran out");
    let skipped = |body: &str| {
        sample(
            body,
            "sniroute_local_resource_errors_total",
            &[
                ("operation", "health_check"),
                ("resource", "file_descriptors"),
            ],
        )
        .unwrap_or(0.0)
    };
    let start = Instant::now();
    let body = loop {
        let body = scrape(metrics).await;
        if skipped(&body) >= 6.0 {
            break body;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no skipped health check:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for server in [a.addr, b.addr] {
        let labels = [("pool", "p"), ("server", &*server.to_string())];
        assert_eq!(
            sample(&body, "sniroute_server_up", &labels),
            Some(1.0),
            "{server}"
        );
        let fail = [
            ("pool", "p"),
            ("server", &*server.to_string()),
            ("result", "fail"),
        ];
        assert_eq!(
            sample(&body, "sniroute_health_checks_total", &fail),
            Some(0.0),
            "{server}"
        );
    }
    let log = proxy.log();
    assert!(
        log.contains("health check skipped: out of file descriptors"),
        "{log}"
    );
    assert!(!log.contains("marked down"), "{log}");
    drop(held);
}
