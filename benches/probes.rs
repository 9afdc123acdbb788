//! What active health checks cost: 1,000 servers probed every second.
//!
//! Starts 1,000 real TCP servers on loopback (127.0.0.2, ports the kernel
//! picks, accepting and closing) and the release binary twice on the same
//! pool: once with `[upstreams.p.health_check] interval = "1s"` (TCP connect
//! probes) and once without, as the baseline; then HAProxy with the same
//! 1,000 servers under `check inter 1s` (its TCP connect check), in the same
//! run. For each it reads the process's CPU time (utime and stime from /proc)
//! over a measuring window after a warm-up, and its peak resident memory
//! (VmHWM). Target: at most 2 % of one core and 16 MB for the probes.
//!
//! On loopback the kernel runs both ends of every handshake in the prober's
//! system calls (the server's SYN-ACK, its child socket, its teardown on the
//! reset), so system time here is well above what the same probes cost
//! against real nodes; user time is the prober's own work. Hence the split,
//! and HAProxy as the yardstick for the whole.
//!
//! `cargo bench --bench probes`; `SNIROUTE_BENCH_SMOKE=1` shortens the
//! window to check that it runs.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVERS: usize = 1000;

fn main() {
    let smoke = std::env::var_os("SNIROUTE_BENCH_SMOKE").is_some();
    let (warmup, window) = if smoke {
        (Duration::from_secs(1), Duration::from_secs(2))
    } else {
        (Duration::from_secs(3), Duration::from_secs(20))
    };
    let servers = start_servers();
    println!(
        "{SERVERS} servers, TCP connect checks every 1s, measured over {window:?} after {warmup:?} of warm-up"
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "", "user %", "sys %", "total %", "RSS MB", "checks/s"
    );
    let runs = [
        ("sniroute, no checks", Prober::Sniroute { checks: false }),
        ("sniroute, 1000 x 1s", Prober::Sniroute { checks: true }),
        ("haproxy, 1000 x 1s", Prober::Haproxy),
    ];
    let mut results = Vec::new();
    for (name, prober) in runs {
        if prober == Prober::Haproxy && !on_path("haproxy") {
            println!("{name:<22} (haproxy not installed)");
            continue;
        }
        let m = measure(&servers, prober, warmup, window);
        println!(
            "{name:<22} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>9}",
            m.user,
            m.sys,
            m.total(),
            m.peak_rss_mb,
            m.checks_per_second
                .map_or("-".to_owned(), |c| format!("{c:.0}"))
        );
        results.push(m);
    }
    let [base, probing, rest @ ..] = &results[..] else {
        return;
    };
    println!(
        "probe cost: {:.2} % of one core ({:.2} % user), {:.1} MB (targets: 2 %, 16 MB)",
        probing.total() - base.total(),
        probing.user - base.user,
        probing.peak_rss_mb - base.peak_rss_mb
    );
    if let [haproxy, ..] = rest {
        println!(
            "sniroute / haproxy for the same checks: CPU {:.2}, user CPU {:.2}",
            probing.total() / haproxy.total(),
            probing.user / haproxy.user
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prober {
    Sniroute { checks: bool },
    Haproxy,
}

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

struct Servers {
    addrs: Vec<SocketAddr>,
}

/// 1,000 listeners served by one thread with a small runtime of its own.
fn start_servers() -> Servers {
    let listeners: Vec<TcpListener> = (0..SERVERS)
        .map(|_| TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2"))
        .collect();
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            for l in listeners {
                l.set_nonblocking(true).expect("nonblocking");
                let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        drop(s);
                    }
                });
            }
            std::future::pending::<()>().await;
        });
    });
    Servers { addrs }
}

/// CPU as a percentage of one core.
struct Measured {
    user: f64,
    sys: f64,
    peak_rss_mb: f64,
    /// As sniroute counts them; `None` for HAProxy.
    checks_per_second: Option<f64>,
}

impl Measured {
    fn total(&self) -> f64 {
        self.user + self.sys
    }
}

fn measure(servers: &Servers, prober: Prober, warmup: Duration, window: Duration) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let metrics = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let mut child = match prober {
        Prober::Sniroute { checks } => {
            start_sniroute(dir.path(), listen, metrics, &servers.addrs, checks)
        }
        Prober::Haproxy => start_haproxy(dir.path(), listen, &servers.addrs),
    };
    let checks = || match prober {
        Prober::Sniroute { .. } => Some(health_checks(metrics)),
        Prober::Haproxy => None,
    };
    std::thread::sleep(warmup);
    let pid = child.id();
    let (cpu0, checks0, t0) = (cpu_time(pid), checks(), Instant::now());
    std::thread::sleep(window);
    let (cpu1, checks1, elapsed) = (cpu_time(pid), checks(), t0.elapsed());
    let peak_rss_mb = status_kb(pid, "VmHWM:") as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    let percent = |d: Duration| d.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    Measured {
        user: percent(cpu1.0 - cpu0.0),
        sys: percent(cpu1.1 - cpu0.1),
        peak_rss_mb,
        checks_per_second: checks0
            .zip(checks1)
            .map(|(a, b)| (b - a) / elapsed.as_secs_f64()),
    }
}

fn start_sniroute(
    dir: &std::path::Path,
    listen: SocketAddr,
    metrics: SocketAddr,
    servers: &[SocketAddr],
    checks: bool,
) -> Child {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    let check = if checks {
        "[upstreams.p.health_check]\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
    } else {
        ""
    };
    let config = format!(
        "[log]\naccess_log = false\n[metrics]\nbind = \"{metrics}\"\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [{}]\n{check}",
        list.join(", ")
    );
    let path = dir.join("sniroute.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sniroute"))
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sniroute");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ready") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("sniroute did not report ready");
    child
}

fn start_haproxy(dir: &std::path::Path, listen: SocketAddr, servers: &[SocketAddr]) -> Child {
    let servers: String = servers
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server s{i} {a}\n"))
        .collect();
    let config = format!(
        "global\n    maxconn 4000\n\
         defaults\n    mode tcp\n    timeout connect 500ms\n    timeout check 500ms\n\
         \x20   timeout client 1s\n    timeout server 1s\n\
         frontend f\n    bind {listen}\n    default_backend b\n\
         backend b\n    default-server check inter 1s\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("write config");
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Health checks sniroute has made so far, ok and failed, from `/metrics`.
fn health_checks(metrics: SocketAddr) -> f64 {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(metrics).expect("metrics endpoint");
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("scrape");
    let mut text = String::new();
    c.read_to_string(&mut text).expect("scrape");
    text.lines()
        .filter(|l| l.starts_with("sniroute_health_checks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (utime, stime) of `pid`.
fn cpu_time(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // USER_HZ is 100 on Linux.
    let ticks = |i: usize| Duration::from_millis(fields[i].parse::<u64>().expect("ticks") * 10);
    (ticks(11), ticks(12))
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read status")
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("status field")
}
