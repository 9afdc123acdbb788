//! Pass-through, limits and lifecycle, through the real binary.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(listen: SocketAddr, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "{extra}\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [\"{upstream}\"]\n"
    )
}

/// Deterministic pseudo-random bytes (xorshift), so a failure is reproducible.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_each_way_byte_exact_and_half_close_forwarded_with_splice() {
    eight_mib_each_way("splice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_each_way_byte_exact_and_half_close_forwarded_with_copy() {
    eight_mib_each_way("copy").await;
}

/// Needs CAP_BPF and CAP_NET_ADMIN; checks `relay=sockmap` in the ready line,
/// so it cannot pass on the splice fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn eight_mib_each_way_byte_exact_and_half_close_forwarded_with_sockmap() {
    eight_mib_each_way("sockmap").await;
}

/// 8 MiB each way through the given relay engine, byte-exact, then a half-close
/// round trip (our FIN reaches the server, which answers and closes).
async fn eight_mib_each_way(engine: &str) {
    let echo = Upstream::start("127.0.0.2", "echo", Mode::Echo).await;
    let listen = free_addr("127.0.0.1");
    let opts = Opts {
        env: vec![("SNIROUTE_RELAY".into(), engine.into())],
        ..Opts::default()
    };
    let proxy = Sniroute::start_with(&config(listen, echo.addr, ""), opts);
    proxy.wait_log(&format!("relay={engine}"));
    let mut sent = CURL_HELLO.to_vec();
    sent.extend_from_slice(&noise(8 << 20, 42));
    let want = Sha256::digest(&sent);

    let client = TcpStream::connect(listen).await.unwrap();
    let (mut rd, mut wr) = client.into_split();
    let payload = sent.clone();
    let writer = tokio::spawn(async move {
        for chunk in payload.chunks(61_440) {
            wr.write_all(chunk).await.unwrap();
        }
        // Half-close: we are done sending but still want the echo and the `bye`.
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::with_capacity(sent.len() + 3);
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let _wr = writer.await.unwrap();
    // The upstream saw our FIN (it only sends `bye` after EOF), and its FIN reached us.
    assert!(got.ends_with(b"bye"), "no half-close round trip");
    got.truncate(got.len() - 3);
    assert_eq!(got.len(), sent.len());
    assert_eq!(Sha256::digest(&got), want);

    let lines = proxy.wait_access(1);
    let total = sent.len();
    assert!(
        lines[0].contains(&format!("bytes_up={total} bytes_down={}", total + 3)),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("outcome=closed"), "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_at_the_peek_timeout_without_upstream() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, up.addr, "[timeouts]\npeek = \"300ms\""));
    let start = Instant::now();
    let mut silent = TcpStream::connect(listen).await.unwrap();
    let mut partial = TcpStream::connect(listen).await.unwrap();
    partial.write_all(&CURL_HELLO[..100]).await.unwrap();
    assert_eq!(read_all(&mut silent).await, b"");
    assert_eq!(read_all(&mut partial).await, b"");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    let lines = proxy.wait_access(2);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("outcome=peek_failed reason=timeout")),
        "{lines:?}"
    );
    assert_eq!(up.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_hello_is_closed_as_too_large() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, up.addr, "[limits]\nmax_peek_bytes = 1024"));
    let mut c = TcpStream::connect(listen).await.unwrap();
    // A record header announcing a 16 KiB hello, then the bytes of it.
    let mut big = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
    big.resize(5 + 0x4000, 0x41);
    let _ = c.write_all(&big).await; // the proxy may close (even reset) before we finish
    assert_eq!(read_all(&mut c).await, b"");
    proxy.wait_log("outcome=peek_failed reason=too_large");
    assert_eq!(up.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_both_ways() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, up.addr, "[timeouts]\nidle = \"500ms\""));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    eventually("upstream connection", || up.open() == 1).await;
    // Activity postpones the idle timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.write_all(b"x").await.unwrap();
    }
    assert_eq!(up.open(), 1);
    assert_eq!(read_all(&mut c).await, b"");
    eventually("upstream side closed too", || up.open() == 0).await;
    let line = proxy.wait_log("outcome=idle_timeout");
    assert!(
        line.contains(&format!("bytes_up={}", CURL_HELLO.len() + 4)),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_closes_the_upstream_side() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, up.addr, ""));
    let c = TcpStream::connect(listen).await.unwrap();
    let mut c = c;
    c.write_all(CURL_HELLO).await.unwrap();
    eventually("upstream connection", || up.open() == 1).await;
    c.set_zero_linger().unwrap();
    drop(c); // RST
    eventually("upstream connection closed", || up.open() == 0).await;
    proxy.wait_log("outcome=client_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_excess_at_once_and_recovers() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, up.addr, "[limits]\nmax_connections = 2"));
    let mut first = TcpStream::connect(listen).await.unwrap();
    first.write_all(CURL_HELLO).await.unwrap();
    let mut second = TcpStream::connect(listen).await.unwrap();
    second.write_all(CURL_HELLO).await.unwrap();
    eventually("two upstream connections", || up.open() == 2).await;

    let mut third = TcpStream::connect(listen).await.unwrap();
    assert_eq!(
        read_all(&mut third).await,
        b"",
        "third connection must be closed"
    );
    proxy.wait_log("max_connections reached");
    assert_eq!(up.accepted(), 2);

    drop(first);
    eventually("slot freed", || up.open() == 1).await;
    // The slot is released when the connection task ends; poll until a new one gets through.
    let start = Instant::now();
    loop {
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(CURL_HELLO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if up.accepted() == 3 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no slot after closing a connection"
        );
    }
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_open_connections() {
    let echo = Upstream::start("127.0.0.2", "echo", Mode::Echo).await;
    let listen = free_addr("127.0.0.1");
    let mut proxy = Sniroute::start(&config(listen, echo.addr, ""));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    let mut buf = vec![0; CURL_HELLO.len()];
    c.read_exact(&mut buf).await.unwrap();

    // SIGHUP reloads (the default action would kill the process).
    proxy.signal("HUP");
    proxy.wait_log("trigger=SIGHUP took_ms=");
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "SIGHUP killed sniroute"
    );

    proxy.signal("TERM");
    proxy.wait_log("stopped accepting");
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "new connections must be refused"
    );
    // The open connection still works both ways.
    c.write_all(b"still here").await.unwrap();
    let mut buf = [0; 10];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "exited before the drain"
    );
    c.shutdown().await.unwrap();
    assert_eq!(read_all(&mut c).await, b"bye");
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(proxy.log().contains("all connections closed; exiting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_at_timeouts_shutdown_and_a_second_signal_exits_at_once() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let mut proxy = Sniroute::start(&config(listen, up.addr, "[timeouts]\nshutdown = \"500ms\""));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    eventually("upstream connection", || up.open() == 1).await;
    proxy.signal("INT");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let log = proxy.log();
    assert!(log.contains("timeouts.shutdown passed"), "{log}");
    // The cut connection still has its access-log line.
    assert!(log.contains("outcome=shutdown"), "{log}");
    assert_eq!(read_all(&mut c).await, b"");

    let listen = free_addr("127.0.0.1");
    let mut proxy = Sniroute::start(&config(listen, up.addr, "[timeouts]\nshutdown = \"1h\""));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    eventually("upstream connection", || up.open() == 1).await;
    proxy.signal("TERM");
    proxy.wait_log("shutting down");
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(proxy.log().contains("second signal; exiting now"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_pauses_accept_without_spinning_then_recovers() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Tls).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start_with(
        &config(listen, up.addr, ""),
        Opts {
            nofile: Some(48),
            ..Opts::default()
        },
    );
    // Each proxied connection costs two descriptors: 40 of them cannot all fit.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(CURL_HELLO).await.unwrap();
        held.push(c);
    }
    proxy.wait_log("accept failed");
    let cpu_before = proxy.cpu_time();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = proxy.cpu_time() - cpu_before;
    assert!(
        spent < Duration::from_millis(300),
        "spinning while out of descriptors: {spent:?} CPU in 1 s"
    );
    assert!(
        proxy.log().contains("Too many open files"),
        "{}",
        proxy.log()
    );

    drop(held);
    // Once descriptors are free again, new clients are served.
    let start = Instant::now();
    loop {
        if let Ok(answer) = tls_request(listen, "after.example.com").await {
            assert_eq!(answer, "up sni=after.example.com\n");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never recovered:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client still sending its hello when the drain ends is closed at once,
/// with its access-log line, like every other cut connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_in_peek_get_their_line_when_the_drain_ends() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let mut proxy = Sniroute::start(&config(
        listen,
        up.addr,
        "[timeouts]\nshutdown = \"300ms\"\npeek = \"1h\"",
    ));
    let mut c = TcpStream::connect(listen).await.unwrap();
    // Half a hello: the proxy waits for the rest.
    c.write_all(&CURL_HELLO[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let log = proxy.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sniroute::access"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("outcome=shutdown"), "{log}");
    assert_eq!(read_all(&mut c).await, b"");
    assert_eq!(up.accepted(), 0);
}
