//! The opt-in sockmap relay engine (`SNIROUTE_RELAY=sockmap`), through the
//! real binary. It needs CAP_BPF and CAP_NET_ADMIN, so these tests need root:
//! a plain `cargo test` ignores them, CI runs them as root with `--ignored`.
//! Each one checks `relay=sockmap` in the ready line (or, for the fallback,
//! `relay=splice`), so none can pass on the wrong engine. The byte-exactness
//! and half-close test is with the other engines' in tests/passthrough.rs.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(listen: SocketAddr, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "{extra}\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [\"{upstream}\"]\n"
    )
}

/// Starts sniroute on the sockmap engine and checks it really runs it.
fn start(config: &str) -> Sniroute {
    let opts = Opts {
        env: vec![("SNIROUTE_RELAY".into(), "sockmap".into())],
        ..Opts::default()
    };
    let proxy = Sniroute::start_with(config, opts);
    proxy.wait_log("relay=sockmap");
    proxy
}

/// Deterministic bytes, different for every offset within a 4-byte counter.
fn numbered(len: usize, from: u32) -> Vec<u8> {
    (0..len.div_ceil(4) as u32)
        .flat_map(|i| (from + i).to_be_bytes())
        .take(len)
        .collect()
}

/// The client's first write carries its ClientHello and 256 KiB right behind
/// it: more than the peek reads, so the proxy holds a half-read buffer when
/// the connection is routed. Those bytes must reach the server first, once
/// each and in order, before the bytes the kernel relays after the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn bytes_sent_behind_the_hello_arrive_first_and_in_order() {
    let echo = Upstream::start("127.0.0.2", "echo", Mode::Echo).await;
    let listen = free_addr("127.0.0.1");
    let _proxy = start(&config(listen, echo.addr, ""));

    let mut first = CURL_HELLO.to_vec();
    first.extend_from_slice(&numbered(256 * 1024, 0));
    let later = numbered(256 * 1024, 1 << 20);
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(&first).await.unwrap();
    // Read the echo of the first write back before sending more: by then the
    // connection is routed and relayed, so `later` goes through the kernel.
    let mut got = vec![0; first.len()];
    tokio::time::timeout(DEADLINE, c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == first, "the bytes behind the hello came back changed");
    c.write_all(&later).await.unwrap();
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, c.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.ends_with(b"bye"), "no half-close round trip");
    rest.truncate(rest.len() - 3);
    assert_eq!(rest.len(), later.len());
    assert!(rest == later, "the bytes after the join came back changed");
}

/// A client that sends its request and half-closes at once: the FIN arrives
/// around the join (before it, user space forwards it and the answer goes
/// through the kernel alone; after it, the kernel path forwards it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_client_that_half_closes_right_behind_its_request_gets_the_whole_answer() {
    let echo = Upstream::start("127.0.0.2", "echo", Mode::Echo).await;
    let listen = free_addr("127.0.0.1");
    let proxy = start(&config(listen, echo.addr, ""));
    let mut sent = CURL_HELLO.to_vec();
    sent.extend_from_slice(&numbered(100_000, 7));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(&sent).await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, c.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got.ends_with(b"bye"), "no half-close round trip");
    got.truncate(got.len() - 3);
    assert!(got == sent, "the answer came back changed");
    let lines = proxy.wait_access(1);
    let want = format!("bytes_up={} bytes_down={}", sent.len(), sent.len() + 3);
    assert!(lines[0].contains(&want), "{want}: {}", lines[0]);
    assert!(lines[0].contains("outcome=closed"), "{}", lines[0]);
}

/// No byte either way for `timeouts.idle` closes both sides, while bytes the
/// kernel relays postpone it, as under the other engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn idle_timeout_closes_a_sockmap_connection_and_traffic_postpones_it() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = start(&config(listen, up.addr, "[timeouts]\nidle = \"600ms\""));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    eventually("upstream connection", || up.open() == 1).await;
    // 1.5 s of a byte every 250 ms: longer than the timeout, never idle.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        c.write_all(b"x").await.unwrap();
    }
    assert_eq!(up.open(), 1, "closed while bytes were moving");
    assert_eq!(read_all(&mut c).await, b"");
    eventually("upstream side closed too", || up.open() == 0).await;
    let line = proxy.wait_log("outcome=idle_timeout");
    assert!(
        line.contains(&format!("bytes_up={} bytes_down=0", CURL_HELLO.len() + 6)),
        "{line}"
    );
}

/// The access log and the per-server byte metrics count exactly what went
/// through the kernel, both ways, with the half-close and the server's FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn access_log_and_metrics_count_kernel_relayed_bytes_exactly() {
    let echo = Upstream::start("127.0.0.2", "echo", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = start(&config(
        listen,
        echo.addr,
        &format!("[metrics]\nbind = \"{metrics}\""),
    ));
    let mut total_up = 0;
    for round in 0..3u32 {
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(CURL_HELLO).await.unwrap();
        let mut echoed = vec![0; CURL_HELLO.len()];
        c.read_exact(&mut echoed).await.unwrap();
        // Uneven sizes, after the join, in several writes.
        let body = numbered(100_000 + 77_777 * round as usize, round << 24);
        for chunk in body.chunks(30_000) {
            c.write_all(chunk).await.unwrap();
        }
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, c.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest.len(), body.len() + 3);
        total_up += CURL_HELLO.len() + body.len();
        let lines = proxy.wait_access(round as usize + 1);
        let want = format!(
            "bytes_up={} bytes_down={}",
            CURL_HELLO.len() + body.len(),
            CURL_HELLO.len() + body.len() + 3
        );
        assert!(
            lines[round as usize].contains(&want),
            "{want}: {}",
            lines[round as usize]
        );
        assert!(lines[round as usize].contains("outcome=closed"));
    }
    let server = echo.addr.to_string();
    let text = get_metrics(metrics);
    let bytes = |direction| {
        metric(
            &text,
            "sniroute_server_bytes_total",
            &[("server", server.as_str()), ("direction", direction)],
        )
    };
    assert_eq!(bytes("up"), Some(total_up as f64), "{text}");
    assert_eq!(bytes("down"), Some((total_up + 3 * 3) as f64), "{text}");
}

/// A client reset ends the relay and closes the server side, as under the
/// other engines, with the side that failed in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn client_reset_closes_the_upstream_side_under_sockmap() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let proxy = start(&config(listen, up.addr, ""));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    eventually("upstream connection", || up.open() == 1).await;
    c.write_all(&[7; 10_000]).await.unwrap();
    c.set_zero_linger().unwrap();
    drop(c); // RST
    eventually("upstream connection closed", || up.open() == 0).await;
    let line = proxy.wait_log("outcome=client_error");
    assert!(line.contains("connection reset"), "{line}");
}

/// Without CAP_BPF and CAP_NET_ADMIN the engine cannot be set up: one warning
/// that says why and what to do, and the relay is splice.
#[test]
#[ignore = "needs root"]
fn without_the_capabilities_it_warns_and_splices() {
    let uid = Command::new("id").arg("-u").output().unwrap().stdout;
    assert_eq!(String::from_utf8_lossy(&uid), "0\n", "needs root");
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let listen = free_addr("127.0.0.1");
    let path = write_config(
        dir.path(),
        &config(listen, "127.0.0.2:9".parse().unwrap(), ""),
    );
    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o644)).unwrap();
    // A copy `nobody` can reach, wherever the checkout is.
    let binary = dir.path().join("sniroute");
    std::fs::copy(env!("CARGO_BIN_EXE_sniroute"), &binary).unwrap();
    std::fs::set_permissions(&binary, PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["--no-watch", "--config"])
        .arg(&path)
        .env("SNIROUTE_RELAY", "sockmap")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = capture(child.stderr.take().unwrap());
    let ready = poll(DEADLINE, || {
        let log = log.lock().unwrap();
        log.contains(" ready ").then(|| log.clone())
    });
    let _ = child.kill();
    let _ = child.wait();
    let log = ready.expect("not ready");
    assert!(log.contains("relay=splice"), "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("SNIROUTE_RELAY=sockmap"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains("Operation not permitted")
            && warnings[0].contains("CAP_BPF and CAP_NET_ADMIN")
            && warnings[0].contains("Relaying with splice instead"),
        "{}",
        warnings[0]
    );
}
