//! Active health checks, drain, and the one retry after `fail_timeout`, with
//! real servers on loopback and the real binary.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn server_up(metrics: SocketAddr, server: SocketAddr) -> Option<f64> {
    metric(
        &get_metrics(metrics),
        "sniroute_server_up",
        &[("server", &server.to_string())],
    )
}

/// Polls until `server`'s `sniroute_server_up` is `want`.
fn wait_up(metrics: SocketAddr, server: SocketAddr, want: f64) {
    poll(Duration::from_secs(10), || {
        (server_up(metrics, server) == Some(want)).then_some(())
    })
    .unwrap_or_else(|| panic!("{server} never had sniroute_server_up {want}"));
}

/// A client through the proxy to an echo server, one byte there and back.
async fn echoed(proxy: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).await.unwrap();
    c
}

fn config(listen: SocketAddr, metrics: SocketAddr, upstream: &str) -> String {
    format!(
        "[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"http\"\ndefault = \"p\"\n\
         {upstream}"
    )
}

/// Sends one HTTP request through the proxy; returns the server's answer.
async fn request(proxy: SocketAddr) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    String::from_utf8_lossy(&read_all(&mut c).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_find_a_dead_server_before_any_client_and_bring_it_back() {
    let good = Upstream::start("127.0.0.2", "good", Mode::Http).await;
    let dead = free_addr("127.0.0.3");
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&config(
        listen,
        metrics,
        &format!(
            "[upstreams.p]\nservers = [\"{}\", \"{dead}\"]\nmax_fails = 0\n\
             [upstreams.p.health_check]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\n",
            good.addr
        ),
    ));
    proxy.wait_log("server marked down: 2 health checks in a row failed");
    wait_up(metrics, dead, 0.0);
    assert_eq!(server_up(metrics, good.addr), Some(1.0));
    let text = get_metrics(metrics);
    let fails = metric(
        &text,
        "sniroute_health_checks_total",
        &[("server", &dead.to_string()), ("result", "fail")],
    )
    .unwrap();
    assert!(fails >= 2.0, "{fails}");
    assert!(
        metric(
            &text,
            "sniroute_health_checks_total",
            &[("server", &good.addr.to_string()), ("result", "ok")],
        )
        .unwrap()
            >= 1.0
    );
    // max_fails = 0: only the probes can have found it. No client tried it.
    assert_eq!(
        metric(
            &text,
            "sniroute_server_connect_attempts_total",
            &[("server", &dead.to_string())]
        ),
        Some(0.0)
    );
    for _ in 0..6 {
        assert!(request(listen).await.contains("good"));
    }

    // The server comes back: after `rise` good probes it takes clients again.
    let back = TcpListener::bind(dead).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = back.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nback").await;
            });
        }
    });
    proxy.wait_log("server is up again: 2 health checks in a row passed");
    wait_up(metrics, dead, 1.0);
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(request(listen).await);
    }
    assert!(answers.iter().any(|a| a.contains("back")), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_100_servers_are_spread_over_the_interval() {
    // TLS probes, because a server sees those (it accepts when the
    // ClientHello comes); a TCP probe never gets that far (see the next test).
    const SERVERS: usize = 100;
    let t0 = Instant::now();
    let seen: Arc<Mutex<Vec<(usize, Duration)>>> = Arc::default();
    let mut addrs = Vec::new();
    for i in 0..SERVERS {
        let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
        addrs.push(l.local_addr().unwrap());
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                seen.lock().unwrap().push((i, t0.elapsed()));
                drop(s);
            }
        });
    }
    let servers: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let _proxy = Sniroute::start(&config(
        listen,
        metrics,
        &format!(
            "[upstreams.p]\nservers = [{}]\n[upstreams.p.health_check]\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
             tls_sni = \"spread.example.com\"\n",
            servers.join(", ")
        ),
    ));
    // Three full intervals after the first probe.
    let first = poll(Duration::from_secs(10), || {
        seen.lock().unwrap().first().map(|&(_, at)| at)
    })
    .expect("no probe arrived");
    poll(Duration::from_secs(10), || {
        seen.lock()
            .unwrap()
            .last()
            .filter(|&&(_, at)| at > first + Duration::from_millis(3100))
            .map(|_| ())
    })
    .expect("probes stopped");
    let seen = seen.lock().unwrap().clone();
    // 100 ms slots over the second and third intervals: 10 probes each, give or take.
    let mut slots = BTreeMap::new();
    let mut per_server = vec![0; SERVERS];
    for &(server, at) in &seen {
        let Some(since) = at.checked_sub(first + Duration::from_secs(1)) else {
            continue;
        };
        if since < Duration::from_secs(2) {
            *slots.entry(since.as_millis() / 100).or_insert(0) += 1;
            per_server[server] += 1;
        }
    }
    let busiest = slots.values().copied().max().unwrap_or(0);
    assert!(
        busiest <= 2 * SERVERS / 10,
        "a 100 ms slot got {busiest} probes (share: {}): {slots:?}",
        SERVERS / 10
    );
    let total: usize = slots.values().sum();
    assert!(
        (150..=250).contains(&total),
        "{total} probes in two intervals of 100 servers: {slots:?}"
    );
    // Each server once per interval (a probe at a slot's edge may land either side).
    assert!(
        per_server.iter().all(|&n| (1..=3).contains(&n)),
        "{per_server:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probes_end_before_the_server_has_a_connection() {
    let server = Upstream::start("127.0.0.2", "s", Mode::Hold).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let _proxy = Sniroute::start(&config(
        listen,
        metrics,
        &format!(
            "[upstreams.p]\nservers = [\"{}\"]\n\
             [upstreams.p.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n",
            server.addr
        ),
    ));
    let ok = || {
        metric(
            &get_metrics(metrics),
            "sniroute_health_checks_total",
            &[("result", "ok")],
        )
        .unwrap_or(0.0)
    };
    poll(Duration::from_secs(10), || (ok() >= 10.0).then_some(())).expect("ten good probes");
    // Ten good probes, and the server never accepted one: the reset came
    // before the last ACK of the handshake.
    assert_eq!(server.accepted(), 0);
    // A client does get through, of course.
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    eventually("the client's connection", || server.accepted() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_probe_state_survives_a_reload() {
    let good = Upstream::start("127.0.0.2", "good", Mode::Http).await;
    let dead = free_addr("127.0.0.3");
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let upstream = |interval: &str| {
        format!(
            "[upstreams.p]\nservers = [\"{}\", \"{dead}\"]\nmax_fails = 0\n\
             [upstreams.p.health_check]\ninterval = \"{interval}\"\ntimeout = \"100ms\"\nfall = 1\nrise = 3\n",
            good.addr
        )
    };
    let proxy = Sniroute::start(&config(listen, metrics, &upstream("100ms")));
    wait_up(metrics, dead, 0.0);
    let fails_before = metric(
        &get_metrics(metrics),
        "sniroute_health_checks_total",
        &[("server", &dead.to_string()), ("result", "fail")],
    )
    .unwrap();

    // A long interval now: were the state lost, the server would read up (as
    // servers start) for the whole first interval after the reload.
    std::fs::write(
        proxy.path(),
        config(listen, metrics, &upstream("30s"))
            .replace("timeout = \"100ms\"", "timeout = \"1s\""),
    )
    .unwrap();
    proxy.signal("HUP");
    proxy.wait_log("config reloaded");
    let text = get_metrics(metrics);
    assert_eq!(
        metric(
            &text,
            "sniroute_server_up",
            &[("server", &dead.to_string())]
        ),
        Some(0.0),
        "probe state lost at reload"
    );
    assert!(
        metric(
            &text,
            "sniroute_health_checks_total",
            &[("server", &dead.to_string()), ("result", "fail")],
        )
        .unwrap()
            >= fails_before
    );
    for _ in 0..4 {
        assert!(request(listen).await.contains("good"));
    }
}

/// A TLS server on `ip` whose certificate (for `names`) ends at `not_after`;
/// a handshake without one of `names` as SNI fails.
async fn tls_server(ip: &str, names: &[&str], not_after: SystemTime) -> SocketAddr {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = not_after.into();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut resolver = rustls::server::ResolvesServerCertUsingSni::new();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing);
    for name in names {
        resolver.add(name, certified.clone()).unwrap();
    }
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 64];
                    let _ = tls.read(&mut buf).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_probes_send_the_sni_read_the_certificate_expiry_and_find_a_server_that_is_not_tls() {
    // A short-lived certificate, as Vault PKI issues them: three days, whole seconds.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let not_after = UNIX_EPOCH + Duration::from_secs(now + 3 * 86_400);
    let tls = tls_server("127.0.0.2", &["apps.example.com"], not_after).await;
    let wrong_name = tls_server("127.0.0.3", &["other.example.com"], not_after).await;
    // Accepts and closes at once: a TCP connect check would call it healthy.
    let plain = Upstream::start(
        "127.0.0.4",
        "plain",
        Mode::Die {
            bytes: 0,
            reset: true,
        },
    )
    .await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&format!(
        "[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [\"{tls}\", \"{wrong_name}\", \"{}\"]\n\
         [upstreams.p.health_check]\ninterval = \"500ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1\n\
         tls_sni = \"apps.example.com\"\n",
        plain.addr
    ));
    wait_up(metrics, plain.addr, 0.0);
    wait_up(metrics, wrong_name, 0.0);
    let text = poll(Duration::from_secs(10), || {
        let text = get_metrics(metrics);
        metric(
            &text,
            "sniroute_server_certificate_not_after_seconds",
            &[("server", &tls.to_string())],
        )
        .map(|_| text)
    })
    .expect("no certificate expiry exported");
    assert_eq!(
        metric(
            &text,
            "sniroute_server_certificate_not_after_seconds",
            &[("pool", "p"), ("server", &tls.to_string())],
        ),
        Some((now + 3 * 86_400) as f64)
    );
    assert_eq!(server_up(metrics, tls), Some(1.0));
    for down in [wrong_name, plain.addr] {
        assert_eq!(
            metric(
                &text,
                "sniroute_server_certificate_not_after_seconds",
                &[("server", &down.to_string())],
            ),
            None
        );
    }
    let log = proxy.log();
    assert!(
        log.contains("TLS handshake"),
        "the failed probes say why: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_takes_no_new_connections_and_open_ones_go_on() {
    let a = Upstream::start("127.0.0.2", "a", Mode::Echo).await;
    let b = Upstream::start("127.0.0.3", "b", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let tcp = |drain: bool| {
        format!(
            "[metrics]\nbind = \"{metrics}\"\n\
             [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tcp\"\ndefault = \"p\"\n\
             [upstreams.p]\nservers = [{{ addr = \"{}\", drain = {drain} }}, \"{}\"]\n",
            a.addr, b.addr
        )
    };
    let proxy = Sniroute::start(&tcp(false));
    // Hold one connection on each server.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(echoed(listen).await);
    }
    eventually("one connection on each server", || {
        a.open() == 1 && b.open() == 1
    })
    .await;

    std::fs::write(proxy.path(), tcp(true)).unwrap();
    proxy.signal("HUP");
    proxy.wait_log("config reloaded");
    for _ in 0..6 {
        echoed(listen).await;
    }
    assert_eq!(a.accepted(), 1, "the drained server got a new connection");
    assert_eq!(b.accepted(), 7);
    // The open connections go on, both ways.
    for c in &mut held {
        c.write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
    }
    assert_eq!(server_up(metrics, a.addr), Some(1.0), "drained is not down");
    let (code, out, _) = run_cli(&[
        "--config",
        proxy.path().to_str().unwrap(),
        "--explain",
        "x.test",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("{} weight=1 drain", a.addr)), "{out}");
}

/// A server whose connects hang: its one-slot accept queue is full. Keep the
/// listener and the filler for as long as it should hang.
fn blackhole(ip: &str) -> (SocketAddr, std::net::TcpListener, std::net::TcpStream) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(ip.parse().unwrap(), 0).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    let hangs = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
    assert!(hangs.is_err(), "the accept queue should be full");
    (addr, socket.into(), filler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_fail_timeout_one_client_retries_a_down_server_the_others_do_not_wait() {
    let good = Upstream::start("127.0.0.2", "good", Mode::Echo).await;
    let (hole, _listener, _filler) = blackhole("127.0.0.4");
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&format!(
        "[metrics]\nbind = \"{metrics}\"\n[timeouts]\nconnect = \"1s\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tcp\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [\"{}\", \"{hole}\"]\nmax_fails = 1\nfail_timeout = \"1s\"\n",
        good.addr
    ));
    let attempts = |text: &str| {
        metric(
            text,
            "sniroute_server_connect_attempts_total",
            &[("server", &hole.to_string())],
        )
        .unwrap()
    };
    // Clients until one has tried the hole and timed out: it is down now.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(echoed(listen).await);
    }
    wait_up(metrics, hole, 0.0);
    // More open connections on the good server, so least_conn alone would send
    // every new client to the hole once its fail_timeout is over.
    for _ in 0..2 {
        held.push(echoed(listen).await);
    }
    let before = attempts(&get_metrics(metrics));
    assert_eq!(before, 1.0);
    poll(Duration::from_secs(5), || {
        (server_up(metrics, hole) == Some(1.0)).then_some(())
    })
    .expect("fail_timeout never ended");

    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let t = Instant::now();
                let c = echoed(listen).await;
                (t.elapsed(), c)
            })
        })
        .collect();
    let mut waits = Vec::new();
    for c in clients {
        let (waited, c) = c.await.unwrap();
        waits.push(waited);
        held.push(c);
    }
    assert_eq!(
        attempts(&get_metrics(metrics)) - before,
        1.0,
        "exactly one client retried the server that was down"
    );
    waits.sort();
    // Seven clients went straight to the good server; only the one that drew
    // the retry waited for timeouts.connect.
    assert!(
        waits[6] < Duration::from_millis(900),
        "{waits:?} (all done in {:?})",
        started.elapsed()
    );
    drop(proxy);
}
