//! Live reload through the real binary: real files, real signals, real watchers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One TLS listener routing `a.example.com` to `a`, plus `extra` TOML at the end.
fn config(listen: SocketAddr, a: SocketAddr, extra: &str) -> String {
    format!(
        "[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n[listeners.routes]\n\"a.example.com\" = \"a\"\n\
         {extra}\n[upstreams.a]\nservers = [\"{a}\"]\n"
    )
}

/// The same plus a route for `b.example.com`.
fn config_ab(listen: SocketAddr, a: SocketAddr, b: SocketAddr) -> String {
    config(
        listen,
        a,
        &format!("\"b.example.com\" = \"b\"\n[upstreams.b]\nservers = [\"{b}\"]"),
    )
}

fn reloads(proxy: &Sniroute) -> usize {
    proxy.log().matches("config reloaded").count()
}

/// Polls until `b.example.com` is routed; returns how long that took.
async fn wait_routed(listen: SocketAddr, since: Instant) -> Duration {
    loop {
        if let Ok(answer) = tls_request(listen, "b.example.com").await {
            assert_eq!(answer, "b sni=b.example.com\n");
            return since.elapsed();
        }
        assert!(since.elapsed() < DEADLINE, "new route never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn upstreams() -> (Upstream, Upstream) {
    (
        Upstream::start("127.0.0.2", "a", Mode::Tls).await,
        Upstream::start("127.0.0.3", "b", Mode::Tls).await,
    )
}

/// After a change is live, waits a quiet second and checks it caused exactly one reload.
async fn assert_one_reload(proxy: &Sniroute, before: usize) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reloads(proxy), before + 1, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_applies_a_new_route_with_one_reload() {
    let (a, b) = upstreams().await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, a.addr, ""));
    assert!(
        tls_request(listen, "b.example.com").await.is_err(),
        "no route for b yet"
    );
    let before = reloads(&proxy);

    // What editors and config management do: write a temporary file, rename it over.
    let path = proxy.path();
    let tmp = path.with_extension("toml.tmp");
    let start = Instant::now();
    std::fs::write(&tmp, config_ab(listen, a.addr, b.addr)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let took = wait_routed(listen, start).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_one_reload(&proxy, before).await;
    let log = proxy.log();
    assert!(log.contains("trigger=file_change"), "{log}");
    assert!(log.contains("pools +1 [b]"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_applies_a_new_route_with_one_reload() {
    let (a, b) = upstreams().await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, a.addr, ""));
    let before = reloads(&proxy);
    // Truncate and write in two pieces, like `cat > file` with a slow producer.
    let text = config_ab(listen, a.addr, b.addr);
    let (first, second) = text.split_at(text.len() / 2);
    let start = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(proxy.path()).unwrap();
        f.write_all(first.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        f.write_all(second.as_bytes()).unwrap();
    }
    let took = wait_routed(listen, start).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_one_reload(&proxy, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_style_symlink_swap_applies_a_new_route_with_one_reload() {
    let (a, b) = upstreams().await;
    let listen = free_addr("127.0.0.1");
    // A ConfigMap volume: sniroute.toml -> ..data/sniroute.toml, ..data -> ..v1
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/sniroute.toml"), config(listen, a.addr, "")).unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/sniroute.toml", d.join("sniroute.toml")).unwrap();
    let path = d.join("sniroute.toml");
    let proxy = Sniroute::launch(dir, &path, Opts::default());
    let before = reloads(&proxy);

    // The kubelet's update: a new directory, a new link, renamed over `..data`.
    let d = path.parent().unwrap();
    let start = Instant::now();
    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(
        d.join("..v2/sniroute.toml"),
        config_ab(listen, a.addr, b.addr),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..v1")).unwrap();
    let took = wait_routed(listen, start).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_one_reload(&proxy, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watch_ignores_file_changes_but_sighup_reloads() {
    let (a, b) = upstreams().await;
    let listen = free_addr("127.0.0.1");
    let opts = Opts {
        args: vec!["--no-watch".into()],
        ..Opts::default()
    };
    let proxy = Sniroute::start_with(&config(listen, a.addr, ""), opts);
    std::fs::write(proxy.path(), config_ab(listen, a.addr, b.addr)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tls_request(listen, "b.example.com").await.is_err(),
        "reloaded without being asked"
    );
    proxy.signal("HUP");
    wait_routed(listen, Instant::now()).await;
    assert!(proxy.log().contains("trigger=SIGHUP"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_survive_a_reload_even_on_a_removed_listener() {
    let echo = Upstream::start("127.0.0.2", "echo", Mode::Echo).await;
    let (keep, remove, added) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let listener = |bind: SocketAddr| {
        format!("[[listeners]]\nbind = \"{bind}\"\nprotocol = \"tls\"\ndefault = \"e\"\n")
    };
    let pool = format!("[upstreams.e]\nservers = [\"{}\"]\n", echo.addr);
    let proxy = Sniroute::start(&format!("{}{}{pool}", listener(keep), listener(remove)));

    let mut conns = Vec::new();
    for bind in [keep, remove] {
        let mut c = TcpStream::connect(bind).await.unwrap();
        c.write_all(CURL_HELLO).await.unwrap();
        let mut echoed = vec![0; CURL_HELLO.len()];
        c.read_exact(&mut echoed).await.unwrap();
        conns.push(c);
    }

    std::fs::write(
        proxy.path(),
        format!("{}{}{pool}", listener(keep), listener(added)),
    )
    .unwrap();
    proxy.signal("HUP");
    let log = proxy.wait_log("config reloaded");
    assert!(
        log.contains(&format!("listeners +1 [{added}]; listeners -1 [{remove}]")),
        "{log}"
    );
    proxy.wait_log(&format!(
        "stopped listening (removed from the config) listener={remove}"
    ));

    // Both old connections still carry data both ways.
    for c in &mut conns {
        c.write_all(b"after reload").await.unwrap();
        let mut buf = [0; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after reload");
    }
    assert!(
        TcpStream::connect(remove).await.is_err(),
        "removed listener still accepts"
    );
    let mut c = TcpStream::connect(added).await.unwrap();
    c.write_all(b"\x16\x03").await.unwrap(); // the new listener peeks like any other
    drop(c);
    for mut c in conns {
        c.shutdown().await.unwrap();
        assert_eq!(read_all(&mut c).await, b"bye");
    }
}

/// A broken file is refused as a whole, the old routes keep working, and the
/// fixed file is applied.
async fn assert_refused_then_fixed(broken: &str, error: &str) {
    let (a, b) = upstreams().await;
    let listen = free_addr("127.0.0.1");
    let mut proxy = Sniroute::start(&config(listen, a.addr, ""));
    let broken = broken
        .replace("LISTEN", &listen.to_string())
        .replace("A_ADDR", &a.addr.to_string());
    std::fs::write(proxy.path(), &broken).unwrap();
    proxy.signal("HUP");
    let log = proxy.wait_log("config reload failed, keeping the running config");
    assert!(log.contains(error), "want {error:?} in\n{log}");
    assert_eq!(
        tls_request(listen, "a.example.com").await.unwrap(),
        "a sni=a.example.com\n"
    );
    assert!(proxy.child_alive());

    std::fs::write(proxy.path(), config_ab(listen, a.addr, b.addr)).unwrap();
    proxy.signal("HUP");
    wait_routed(listen, Instant::now()).await;
    assert_eq!(
        tls_request(listen, "a.example.com").await.unwrap(),
        "a sni=a.example.com\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_keeps_the_running_config() {
    assert_refused_then_fixed("[[listeners]\nbind = \"LISTEN\"\n", "sniroute.toml:1:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_pool_keeps_the_running_config() {
    let broken = "[[listeners]]\nbind = \"LISTEN\"\nprotocol = \"tls\"\ndefault = \"nope\"\n\
                  [upstreams.a]\nservers = [\"A_ADDR\"]\n";
    assert_refused_then_fixed(broken, "listener default points to unknown upstream `nope`").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_in_use_keeps_the_running_config() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let broken = format!(
        "[[listeners]]\nbind = \"LISTEN\"\nprotocol = \"tls\"\ndefault = \"a\"\n\
         [[listeners]]\nbind = \"{addr}\"\nprotocol = \"http\"\ndefault = \"a\"\n\
         [upstreams.a]\nservers = [\"A_ADDR\"]\n"
    );
    assert_refused_then_fixed(&broken, &format!("cannot bind {addr}: ")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_a_reload_that_does_not_touch_the_pool() {
    let (a, b) = upstreams().await;
    let listen = free_addr("127.0.0.1");
    let dead = free_addr("127.0.0.4");
    let pool = format!("\"a.example.com\" = \"a\"\n[upstreams.a]\nservers = [\"{dead}\", \"{}\"]\nfail_timeout = \"1h\"\n", a.addr);
    let head =
        format!("[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n[listeners.routes]\n");
    let proxy = Sniroute::start(&format!("{head}{pool}"));
    tls_request(listen, "a.example.com").await.unwrap();
    tls_request(listen, "a.example.com").await.unwrap();
    let failed = || proxy.log().matches("connect failed").count();
    assert_eq!(
        failed(),
        1,
        "the dead server is tried once, then marked down"
    );

    let other = format!("[upstreams.b]\nservers = [\"{}\"]\n", b.addr);
    std::fs::write(
        proxy.path(),
        format!("{head}\"b.example.com\" = \"b\"\n{pool}{other}"),
    )
    .unwrap();
    proxy.signal("HUP");
    proxy.wait_log("config reloaded");
    for _ in 0..3 {
        assert_eq!(
            tls_request(listen, "a.example.com").await.unwrap(),
            "a sni=a.example.com\n"
        );
    }
    assert_eq!(
        failed(),
        1,
        "the reload forgot that the server is down:\n{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notifications_for_start_reload_and_stop() {
    let (a, _) = upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let listen = free_addr("127.0.0.1");
    let opts = Opts {
        env: vec![("NOTIFY_SOCKET".into(), socket_path.display().to_string())],
        ..Opts::default()
    };
    let mut proxy = Sniroute::start_with(&config(listen, a.addr, ""), opts);
    let recv = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("no notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv().trim_end(), "READY=1");
    proxy.signal("HUP");
    let reloading = recv();
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .unwrap()
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert_eq!(recv().trim_end(), "READY=1");
    proxy.signal("TERM");
    // The listening socket goes to the fd store first (no FDSTORE=0 here; see
    // tests/upgrade.rs for the round trip), then the drain starts.
    let name = format!("tcp-{listen}").replace(':', "_");
    assert_eq!(recv().trim_end(), format!("FDSTORE=1\nFDNAME={name}"));
    assert_eq!(recv().trim_end(), "STOPPING=1");
    assert_eq!(proxy.wait_exit(DEADLINE).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stay_intact_through_200_reloads_good_and_bad() {
    let echo1 = Upstream::start("127.0.0.2", "echo1", Mode::Echo).await;
    let echo2 = Upstream::start("127.0.0.3", "echo2", Mode::Echo).await;
    let listen = free_addr("127.0.0.1");
    let valid = |server: SocketAddr, max_fails: u32| {
        format!(
            "[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n[listeners.routes]\n\"*.example.com\" = \"e\"\n\
             [upstreams.e]\nservers = [\"{server}\"]\nmax_fails = {max_fails}\n"
        )
    };
    let configs = [
        valid(echo1.addr, 1),
        valid(echo2.addr, 2),
        "[[listeners]]\nbind = 1\n".to_owned(),
    ];
    let opts = Opts {
        args: vec!["--no-watch".into()],
        ..Opts::default()
    };
    let mut proxy = Sniroute::start_with(&configs[0], opts);

    // Set once the 200 reloads are done: every client runs until then (bounded).
    let done = Arc::new(AtomicBool::new(false));

    // Long streams, in small chunks both ways, running through every reload.
    let streams: Vec<_> = (0..4u64)
        .map(|seed| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut c = TcpStream::connect(listen).await.unwrap();
                let (mut rd, mut wr) = c.split();
                let mut sent = Sha256::new();
                let mut got = Sha256::new();
                let mut total = 0usize;
                let mut sent_len = 0usize;
                let deadline = Instant::now() + Duration::from_secs(60);
                let write = async {
                    wr.write_all(CURL_HELLO).await.unwrap();
                    sent.update(CURL_HELLO);
                    let mut x = seed + 1;
                    for _ in 0..20_000 {
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        let chunk: Vec<u8> = (0..8192)
                            .map(|_| {
                                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                                (x >> 33) as u8
                            })
                            .collect();
                        wr.write_all(&chunk).await.unwrap();
                        sent.update(&chunk);
                        sent_len += chunk.len();
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        assert!(Instant::now() < deadline, "stream too slow");
                    }
                    wr.shutdown().await.unwrap();
                };
                let read = async {
                    let mut buf = vec![0; 65536];
                    loop {
                        let n = rd.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        got.update(&buf[..n]);
                        total += n;
                    }
                };
                tokio::join!(write, read);
                // The echo upstream answers our FIN with `bye`.
                sent.update(b"bye");
                (sent.finalize(), got.finalize(), total, sent_len)
            })
        })
        .collect();

    // Short connections opened all along must be routed by whichever valid config is live.
    let short_done = Arc::clone(&done);
    let short = tokio::spawn(async move {
        let mut count = 0;
        while !short_done.load(Ordering::Relaxed) && count < 20_000 {
            let answer = {
                let mut c = TcpStream::connect(listen).await.unwrap();
                c.write_all(CURL_HELLO).await.unwrap();
                c.shutdown().await.unwrap();
                read_all(&mut c).await
            };
            assert_eq!(answer.len(), CURL_HELLO.len() + 3, "short connection cut");
            count += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        count
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let outcomes = |p: &Sniroute| {
        let log = p.log();
        log.matches("config reloaded").count() + log.matches("config reload failed").count()
    };
    for i in 1..=200 {
        std::fs::write(proxy.path(), &configs[i % 3]).unwrap();
        proxy.signal("HUP");
        poll(DEADLINE, || (outcomes(&proxy) >= i).then_some(())).expect("reload did not finish");
        assert!(Instant::now() < deadline, "200 reloads took too long");
    }
    done.store(true, Ordering::Relaxed);
    let log = proxy.log();
    assert_eq!(
        log.matches("config reload failed").count(),
        67,
        "every third config is broken"
    );

    for s in streams {
        let (want, got, total, sent_len) = s.await.unwrap();
        eprintln!("stream: {sent_len} bytes each way");
        assert!(sent_len > 8192 * 10, "stream ended before the reloads did");
        assert_eq!(total, CURL_HELLO.len() + sent_len + 3, "truncated stream");
        assert_eq!(got, want, "stream corrupted");
    }
    let short = short.await.unwrap();
    eprintln!("{short} short connections routed during the reloads");
    assert!(
        short > 10,
        "only {short} short connections during the reloads"
    );
    assert!(proxy.child_alive());
}

/// A reload that changes only `[timeouts]` or `[limits]` applies them, and its
/// log line says so instead of "no changes".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_summary_names_every_changed_section() {
    let (a, _) = upstreams().await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, a.addr, ""));
    let path = proxy.path();
    for (extra, section) in [
        ("[timeouts]\nidle = \"10m\"\n", "timeouts"),
        ("[timeouts]\nidle = \"10m\"\n[limits]\nmax_connections = 500\n", "limits"),
        (
            "[timeouts]\nidle = \"10m\"\n[limits]\nmax_connections = 500\n[log]\nlevel = \"debug\"\n",
            "log",
        ),
    ] {
        let before = reloads(&proxy);
        // Sections go before the listeners: TOML tables cannot be reopened.
        std::fs::write(&path, format!("{extra}{}", config(listen, a.addr, ""))).unwrap();
        proxy.signal("HUP");
        let log = poll(DEADLINE, || {
            Some(proxy.log()).filter(|l| l.matches("config reloaded").count() > before)
        })
        .unwrap_or_else(|| panic!("no reload:\n{}", proxy.log()));
        let line = log
            .lines()
            .filter(|l| l.contains("config reloaded"))
            .nth(before)
            .unwrap()
            .to_owned();
        assert!(!line.contains("no changes"), "{line}");
        assert!(line.contains(section), "{section} not named: {line}");
    }
}

/// A reload reads the file, and reading it must not look like a change: the
/// watcher used to see its own open of the file and re-read it every 250 ms
/// from the first reload on, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_set_the_watcher_rereading_the_file() {
    let (a, _b) = upstreams().await;
    let listen = free_addr("127.0.0.1");
    let text = format!("[log]\nlevel = \"debug\"\n{}", config(listen, a.addr, ""));
    let proxy = Sniroute::start(&text);
    proxy.signal("HUP");
    proxy.wait_log("config reloaded");
    // Touch the file without changing it: one read, found unchanged.
    std::fs::write(proxy.path(), &text).unwrap();
    proxy.wait_log("touched but unchanged");
    // Six debounce periods of quiet: the bug re-read the file in each.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = proxy.log();
    assert_eq!(log.matches("touched but unchanged").count(), 1, "{log}");
    assert_eq!(reloads(&proxy), 1, "{log}");
}
