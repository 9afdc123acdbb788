//! Pools under real connections: least_conn with weights, dead servers, backups.
//! Cluster nodes are 127.0.0.2, .3, .4 (.9 for backups).

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A TLS listener whose default pool is `servers` (TOML array body) plus `extra` keys.
fn config(listen: SocketAddr, servers: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [{servers}]\n{extra}\n"
    )
}

/// Opens a client connection through the proxy that stays open: sends a real
/// ClientHello, which the `Hold` upstream swallows.
async fn hold(proxy: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    c
}

/// A port on `ip` where nothing listens: connects are refused.
fn dead(ip: &str) -> SocketAddr {
    free_addr(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_spreads_held_connections_by_weight() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Hold).await;
    let b = Upstream::start("127.0.0.3", "b", Mode::Hold).await;
    let c = Upstream::start("127.0.0.4", "c", Mode::Hold).await;
    let listen = free_addr("127.0.0.1");
    let _proxy = Sniroute::start(&config(
        listen,
        &format!(
            "\"{}\", \"{}\", {{ addr = \"{}\", weight = 2 }}",
            a.addr, b.addr, c.addr
        ),
        "",
    ));
    let mut held = Vec::new();
    for i in 1..=8 {
        held.push(hold(listen).await);
        // One at a time, so each pick sees the previous connections as active.
        eventually("connection to reach an upstream", || {
            a.accepted() + b.accepted() + c.accepted() == i
        })
        .await;
    }
    assert_eq!((a.accepted(), b.accepted(), c.accepted()), (2, 2, 4));
    // Every upstream received the hello byte for byte.
    for up in [&a, &b, &c] {
        eventually("hello to arrive", || {
            up.received.lock().unwrap().iter().all(|r| r == CURL_HELLO)
        })
        .await;
    }
    // Free two connections, wherever they went; least_conn refills exactly those gaps.
    drop(held.drain(..2));
    eventually("two connections to close", || {
        a.open() + b.open() + c.open() == 6
    })
    .await;
    for i in 1..=2 {
        held.push(hold(listen).await);
        eventually("refill", || {
            a.accepted() + b.accepted() + c.accepted() == 8 + i
        })
        .await;
    }
    eventually("refilled evenly", || {
        (a.open(), b.open(), c.open()) == (2, 2, 4)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_server_costs_clients_nothing() {
    let live = Upstream::start("127.0.0.3", "live", Mode::Tls).await;
    let listen = free_addr("127.0.0.1");
    let down = dead("127.0.0.2");
    let proxy = Sniroute::start(&config(
        listen,
        &format!("\"{down}\", \"{}\"", live.addr),
        "max_fails = 3\nfail_timeout = \"30s\"",
    ));
    for i in 0..10 {
        let answer = tls_request(listen, &format!("c{i}.example.com"))
            .await
            .unwrap();
        assert_eq!(answer, format!("live sni=c{i}.example.com\n"));
    }
    assert_eq!(live.accepted(), 10);
    // Three failures within fail_timeout mark the server down, and then it is skipped.
    let log = proxy.wait_log("server marked down");
    assert_eq!(
        log.matches("connect failed; trying the next server")
            .count(),
        3,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_are_still_all_tried_then_the_client_is_closed() {
    let listen = free_addr("127.0.0.1");
    let (d1, d2) = (dead("127.0.0.2"), dead("127.0.0.3"));
    let debug = "[log]\nlevel = \"debug\"";
    let proxy = Sniroute::start(&config(listen, &format!("\"{d1}\", \"{d2}\""), debug));
    for _ in 0..2 {
        let mut c = hold(listen).await;
        assert_eq!(read_all(&mut c).await, b"");
    }
    let lines = proxy.wait_access(2);
    assert!(
        lines.iter().all(|l| l.contains("outcome=connect_failed")),
        "{lines:?}"
    );
    // Both clients tried both servers, although after the first both were marked
    // down. Only the first client's failures are warnings; the second client's
    // were expected (debug), and its "no server reachable" is held back.
    let log = proxy.log();
    let count = |s: &str| log.matches(s).count();
    assert_eq!(count("connect failed; trying the next server"), 2, "{log}");
    assert_eq!(
        count("connect failed to a server marked down; trying the next server"),
        2,
        "{log}"
    );
    assert_eq!(count("no server reachable"), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_only_when_no_primary_is_usable() {
    let primary = Upstream::start("127.0.0.2", "primary", Mode::Tls).await;
    let backup = Upstream::start("127.0.0.9", "backup", Mode::Tls).await;
    let listen = free_addr("127.0.0.1");
    let _proxy = Sniroute::start(&config(
        listen,
        &format!(
            "\"{}\", {{ addr = \"{}\", backup = true }}",
            primary.addr, backup.addr
        ),
        "",
    ));
    for _ in 0..5 {
        assert!(tls_request(listen, "x.example.com")
            .await
            .unwrap()
            .starts_with("primary "));
    }
    assert_eq!((primary.accepted(), backup.accepted()), (5, 0));

    // Same pool shape with a dead primary: the backup serves.
    let listen = free_addr("127.0.0.1");
    let down = dead("127.0.0.3");
    let _proxy2 = Sniroute::start(&config(
        listen,
        &format!(
            "\"{down}\", {{ addr = \"{}\", backup = true }}",
            backup.addr
        ),
        "",
    ));
    for _ in 0..3 {
        assert!(tls_request(listen, "x.example.com")
            .await
            .unwrap()
            .starts_with("backup "));
    }
    assert_eq!(backup.accepted(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_by_weight() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Tls).await;
    let b = Upstream::start("127.0.0.3", "b", Mode::Tls).await;
    let listen = free_addr("127.0.0.1");
    let _proxy = Sniroute::start(&config(
        listen,
        &format!("\"{}\", {{ addr = \"{}\", weight = 3 }}", a.addr, b.addr),
        "balance = \"round_robin\"",
    ));
    for _ in 0..8 {
        tls_request(listen, "x.example.com").await.unwrap();
    }
    assert_eq!((a.accepted(), b.accepted()), (2, 6));
}
