//! Abuse, through the real binary on loopback: slowloris, dying and hanging
//! upstreams, resetting clients, per-client limits, open-proxy attempts, and a
//! soak. Every loop is bounded; the long versions run when SNIROUTE_LONG=1.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn long() -> bool {
    std::env::var_os("SNIROUTE_LONG").is_some()
}

fn one_pool(listen: SocketAddr, servers: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "{extra}\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [{}]\n",
        servers.join(", ")
    )
}

/// Open socket descriptors of a process. Pipes are left out: the splice
/// engine keeps a bounded pool of empty pipes for reuse (see [`pipes`]).
fn fds(pid: u32) -> usize {
    fd_targets(pid).filter(|t| t.starts_with("socket:")).count()
}

/// Open pipe descriptors of a process.
fn pipes(pid: u32) -> usize {
    fd_targets(pid).filter(|t| t.starts_with("pipe:")).count()
}

fn fd_targets(pid: u32) -> impl Iterator<Item = String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_at_the_peek_timeout_while_others_are_served() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Tls).await;
    let listen = free_addr("127.0.0.1");
    let peek = Duration::from_secs(2);
    let proxy = Sniroute::start(&one_pool(listen, &[up.addr], "[timeouts]\npeek = \"2s\""));
    let n = 2000;
    let opened = Instant::now();
    let mut slow = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(&[0x16]).await.unwrap(); // one byte of a handshake, then silence
        slow.push(c);
    }
    let opening = opened.elapsed();

    // Normal clients, while all of those are held.
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let start = Instant::now();
        let answer = tls_request(listen, &format!("n{i}.example.com"))
            .await
            .unwrap();
        assert_eq!(answer, format!("up sni=n{i}.example.com\n"));
        worst = worst.max(start.elapsed());
    }
    eprintln!("{n} slowloris connections opened in {opening:?}; worst normal request {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "normal clients slowed to {worst:?}"
    );

    // Every slow one is closed by the proxy at the peek timeout, not before.
    let closed = futures_all(slow.iter_mut().map(|c| async move {
        let mut buf = [0u8; 1];
        tokio::time::timeout(DEADLINE, c.read(&mut buf))
            .await
            .ok()
            .map(|r| r.map_or(0, |n| n))
    }))
    .await;
    assert!(
        closed.iter().all(|r| *r == Some(0)),
        "some slow connections were not closed"
    );
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= peek && elapsed < peek + Duration::from_secs(8),
        "{elapsed:?}"
    );
    let timeouts = || {
        proxy
            .log()
            .matches("outcome=peek_failed reason=timeout")
            .count()
    };
    let logged = poll(DEADLINE, || Some(timeouts()).filter(|c| *c == n));
    assert_eq!(logged, Some(n), "{} peek timeouts logged", timeouts());
    assert_eq!(up.accepted(), 20);
}

/// Runs futures concurrently and collects their outputs, in order.
async fn futures_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let futures: Vec<_> = futures.map(Box::pin).collect();
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        out.push(f.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dying_mid_transfer_ends_the_client_promptly() {
    for reset in [false, true] {
        let up = Upstream::start(
            "127.0.0.2",
            "dies",
            Mode::Die {
                bytes: 100_000,
                reset,
            },
        )
        .await;
        let listen = free_addr("127.0.0.1");
        let proxy = Sniroute::start(&one_pool(listen, &[up.addr], ""));
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(CURL_HELLO).await.unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        let result = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
        assert!(result.is_ok(), "client not told (reset={reset})");
        assert!(start.elapsed() < Duration::from_secs(2));
        if !reset {
            // A clean FIN after the data: everything arrives, then EOF. It is a
            // half-close: the connection ends once the client closes its side.
            assert_eq!(got.len(), 100_000);
        }
        drop(c);
        let outcome = if reset {
            "outcome=upstream_error"
        } else {
            "outcome=closed"
        };
        proxy.wait_log(outcome);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_reads_is_cut_at_the_idle_timeout() {
    let up = Upstream::start("127.0.0.2", "stalls", Mode::Stall(Duration::from_secs(3))).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&one_pool(
        listen,
        &[up.addr],
        &format!("[timeouts]\nidle = \"500ms\"\n[metrics]\nbind = \"{metrics}\""),
    ));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    // Push more than the socket buffers hold: the proxy's writes to the hung
    // upstream block, and nothing moves.
    let start = Instant::now();
    let push = async {
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..1000 {
            if c.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), push).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "client not cut: {:?}",
        start.elapsed()
    );
    proxy.wait_log("outcome=idle_timeout");
    // The upstream side was closed too: it sees EOF once it reads again.
    eventually("upstream connection closed", || up.open() == 0).await;
    let scrape = http_get(metrics, "/metrics").await;
    assert!(scrape.contains("sniroute_connections_open 0\n"), "{scrape}");
    assert!(scrape.contains(&format!(
        "sniroute_server_active_connections{{pool=\"p\",server=\"{}\"}} 0\n",
        up.addr
    )));
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    String::from_utf8(read_all(&mut c).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resetting_mid_transfer_leak_nothing() {
    let echo = Upstream::start("127.0.0.2", "echo", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&one_pool(
        listen,
        &[echo.addr],
        &format!("[metrics]\nbind = \"{metrics}\""),
    ));
    let pid = proxy.child.id();
    let fds_before = fds(pid);
    for _ in 0..50 {
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(CURL_HELLO).await.unwrap();
        c.write_all(&[7u8; 100_000]).await.unwrap();
        let mut buf = [0u8; 1000];
        c.read_exact(&mut buf).await.unwrap();
        c.set_zero_linger().unwrap();
        drop(c); // RST with data in flight
    }
    eventually("upstream connections closed", || echo.open() == 0).await;
    let scrape = http_get(metrics, "/metrics").await;
    assert!(scrape.contains("sniroute_connections_open 0\n"), "{scrape}");
    assert!(scrape.contains(&format!(
        "sniroute_server_active_connections{{pool=\"p\",server=\"{}\"}} 0\n",
        echo.addr
    )));
    let fds_after =
        poll(DEADLINE, || Some(fds(pid)).filter(|n| *n <= fds_before)).unwrap_or(fds(pid));
    assert!(fds_after <= fds_before, "fds {fds_before} -> {fds_after}");
    assert_eq!(
        proxy.log().matches("outcome=client_error").count(),
        50,
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_take_every_slot() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&one_pool(
        listen,
        &[up.addr],
        "[limits]\nmax_connections_per_ip = 3",
    ));
    // Clients from 127.0.0.7: three get through, the fourth is closed at once.
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(ip.parse().unwrap(), 0))
            .unwrap();
        socket
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = from("127.0.0.7").connect(listen).await.unwrap();
        c.write_all(CURL_HELLO).await.unwrap();
        held.push(c);
    }
    eventually("three upstream connections", || up.open() == 3).await;
    let mut fourth = from("127.0.0.7").connect(listen).await.unwrap();
    assert_eq!(read_all(&mut fourth).await, b"");
    proxy.wait_log("max_connections_per_ip reached");
    // Another address is not affected.
    let mut other = from("127.0.0.8").connect(listen).await.unwrap();
    other.write_all(CURL_HELLO).await.unwrap();
    eventually("fourth upstream connection", || up.open() == 4).await;
    // Closing one frees a slot for that address.
    drop(held.pop());
    eventually("slot freed", || up.open() == 3).await;
    let start = Instant::now();
    loop {
        let mut c = from("127.0.0.7").connect(listen).await.unwrap();
        c.write_all(CURL_HELLO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if up.accepted() == 5 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "slot never freed");
    }
}

/// No client input reaches anything but the configured servers: names that are
/// addresses, ports, paths, absolute URLs, NULs, over-long labels, several SNI
/// entries. A canary listener that no config names must never see a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_input_makes_sniroute_connect_anywhere_else() {
    let canary = Upstream::start("127.0.0.1", "canary", Mode::Hold).await;
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let (tls, http) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let _proxy = Sniroute::start(&format!(
        "[timeouts]\npeek = \"1s\"\n\
         [[listeners]]\nbind = \"{tls}\"\nprotocol = \"tls\"\n[listeners.routes]\n\"~.*\" = \"p\"\n\
         [[listeners]]\nbind = \"{http}\"\nprotocol = \"http\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [\"{}\"]\n",
        up.addr
    ));
    let c = canary.addr;
    let names: Vec<Vec<u8>> = vec![
        c.to_string().into_bytes(),
        format!("127.0.0.1:{}", c.port()).into_bytes(),
        format!("localhost:{}", c.port()).into_bytes(),
        c.ip().to_string().into_bytes(),
        b"[::1]".to_vec(),
        format!("a.example.com\0{c}").into_bytes(),
        format!("{}.example.com", "a".repeat(64)).into_bytes(),
        "bücher.example".as_bytes().to_vec(),
        b"".to_vec(),
        b"../../etc/passwd".to_vec(),
    ];
    let mut expected = 0;
    for name in &names {
        // TLS: the name as SNI, alone and as the second of several entries.
        for entries in [
            vec![(0u8, name.as_slice())],
            vec![(0u8, b"x.example.com".as_slice()), (0u8, name.as_slice())],
        ] {
            let mut conn = TcpStream::connect(tls).await.unwrap();
            conn.write_all(&hello(&entries)).await.unwrap();
            expected += 1;
            drop(conn);
        }
        // HTTP: as Host, and as the authority of an absolute-form target.
        let text = String::from_utf8_lossy(name);
        for head in [
            format!("GET / HTTP/1.1\r\nHost: {text}\r\n\r\n"),
            format!("GET http://{text}/ HTTP/1.1\r\nHost: {c}\r\n\r\n"),
            format!("CONNECT {c} HTTP/1.1\r\nHost: {c}\r\n\r\n"),
        ] {
            let mut conn = TcpStream::connect(http).await.unwrap();
            conn.write_all(head.as_bytes()).await.unwrap();
            drop(conn);
        }
    }
    // The `~.*` route matches any name, so every TLS client above that had a
    // usable name or none reached `up`: the point is where they went.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eventually("connections to land", || up.accepted() >= expected / 2).await;
    assert_eq!(
        canary.accepted(),
        0,
        "a client steered sniroute to an unconfigured address"
    );
}

/// A ClientHello with the given server_name entries (built like the unit tests do).
fn hello(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut ext = vec![0x00, 0x00];
    ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
    ext.extend_from_slice(&list);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut msg = vec![0x01];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend_from_slice(&msg);
    rec
}

/// Many connections, random data both ways, three upstreams: every byte intact,
/// and no descriptor or memory growth. Two rounds: the first may leave memory
/// with the allocator (freed buffers are kept for reuse); the second must not add
/// to it, which a leak would. CI runs a short version; SNIROUTE_LONG=1 runs
/// 2,000 connections for 60 s per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_every_byte_intact_and_nothing_grows() {
    let (conns, secs) = if long() { (2000, 60) } else { (200, 3) };
    let ups = [
        Upstream::start("127.0.0.2", "a", Mode::Echo).await,
        Upstream::start("127.0.0.3", "b", Mode::Echo).await,
        Upstream::start("127.0.0.4", "c", Mode::Echo).await,
    ];
    let listen = free_addr("127.0.0.1");
    let servers: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let proxy = Sniroute::start(&one_pool(
        listen,
        &servers,
        "[limits]\nmax_connections = 10000",
    ));
    let pid = proxy.child.id();
    // Warm up once so the runtime's threads exist before measuring.
    tls_request_plain(listen).await;
    let (fds_start, rss_start) = (fds(pid), rss_kib(pid));
    let mut after = Vec::new();
    for round in 0..2u64 {
        let moved = soak_round(listen, conns, secs, round).await;
        assert!(
            ups.iter().all(|u| u.accepted() > 0),
            "one upstream got nothing"
        );
        eventually("upstream connections closed", || {
            ups.iter().all(|u| u.open() == 0)
        })
        .await;
        let fds_now =
            poll(DEADLINE, || Some(fds(pid)).filter(|n| *n <= fds_start)).unwrap_or(fds(pid));
        let rss_now = rss_kib(pid);
        eprintln!(
            "soak round {round}: {conns} connections x {secs}s through 3 upstreams, {:.1} MiB moved intact; \
             sockets {fds_start} -> {fds_now}, pipes {}; RSS {rss_start} KiB -> {rss_now} KiB",
            moved as f64 / (1 << 20) as f64,
            pipes(pid)
        );
        assert!(
            fds_now <= fds_start,
            "socket leak: {fds_start} -> {fds_now}"
        );
        // The pool of empty pipes is bounded (64 pipes, two descriptors each).
        assert!(pipes(pid) <= 2 * 64, "{} pipe descriptors open", pipes(pid));
        after.push(rss_now);
    }
    assert!(
        after[1] <= after[0] + 8 * 1024,
        "RSS grew between identical rounds: {after:?} KiB"
    );
}

/// `conns` connections, each streaming random data both ways for `secs` through
/// an echo; checks every byte by sha256. Returns the bytes moved.
async fn soak_round(listen: SocketAddr, conns: usize, secs: u64, round: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = TcpStream::connect(listen).await.unwrap();
                let (mut rd, mut wr) = c.split();
                let mut sent = Sha256::new();
                let mut got = Sha256::new();
                let mut x: u64 = (round * 1_000_003 + i as u64) * 2654435761 + 1;
                let write = async {
                    wr.write_all(CURL_HELLO).await.unwrap();
                    sent.update(CURL_HELLO);
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let len = 512 + (x % 8192) as usize;
                        let chunk: Vec<u8> = (0..len)
                            .map(|_| {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                x as u8
                            })
                            .collect();
                        wr.write_all(&chunk).await.unwrap();
                        sent.update(&chunk);
                        n += chunk.len() as u64;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    wr.shutdown().await.unwrap();
                    n
                };
                let read = async {
                    let mut buf = vec![0u8; 16384];
                    let mut n = 0u64;
                    loop {
                        let k = rd.read(&mut buf).await.unwrap();
                        if k == 0 {
                            break;
                        }
                        got.update(&buf[..k]);
                        n += k as u64;
                    }
                    n
                };
                let (up, down) = tokio::join!(write, read);
                sent.update(b"bye");
                assert_eq!(got.finalize(), sent.finalize(), "connection {i} corrupted");
                up + down
            })
        })
        .collect();
    let mut moved = 0;
    for t in tasks {
        moved += t.await.unwrap();
    }
    moved
}

/// One connection with a hello that goes to an echo server and back.
async fn tls_request_plain(listen: SocketAddr) {
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    c.shutdown().await.unwrap();
    let _ = read_all(&mut c).await;
}
