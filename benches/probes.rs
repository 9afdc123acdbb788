//! What active health checks cost: 1,000 servers probed every second.
//!
//! Starts 1,000 real TCP servers on loopback (127.0.0.2, ports the kernel
//! picks, accepting and closing) and the release binary twice on the same
//! pool: once with `[upstreams.p.health_check] interval = "1s"` (TCP connect
//! probes) and once without, as the baseline. For each it reads the process's
//! CPU time (utime + stime from /proc) over a measuring window after a
//! warm-up, and its peak resident memory (VmHWM). The probe cost is the
//! difference. Target: at most 2 % of one core and 16 MB.
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
        "{SERVERS} servers, interval 1s, measured over {window:?} after {warmup:?} of warm-up"
    );
    let baseline = measure(&servers, false, warmup, window);
    let probing = measure(&servers, true, warmup, window);
    let cpu = probing.cpu_percent - baseline.cpu_percent;
    let memory = probing.peak_rss_mb - baseline.peak_rss_mb;
    println!(
        "{:<28} {:>10} {:>14}",
        "", "CPU % of a core", "peak RSS (MB)"
    );
    for (name, m) in [
        ("no health checks", &baseline),
        ("TCP probes, 1000 x 1s", &probing),
    ] {
        println!("{name:<28} {:>10.2} {:>14.1}", m.cpu_percent, m.peak_rss_mb);
    }
    println!(
        "probe cost: {cpu:.2} % of one core (target <= 2), {memory:.1} MB (target <= 16); {} probes/s seen by the servers",
        probing.probes_per_second.round()
    );
}

struct Servers {
    addrs: Vec<SocketAddr>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            for l in listeners {
                l.set_nonblocking(true).expect("nonblocking");
                let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
                let count = std::sync::Arc::clone(&count);
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        drop(s);
                    }
                });
            }
            std::future::pending::<()>().await;
        });
    });
    Servers { addrs, accepted }
}

struct Measured {
    cpu_percent: f64,
    peak_rss_mb: f64,
    probes_per_second: f64,
}

fn measure(servers: &Servers, probes: bool, warmup: Duration, window: Duration) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let list: Vec<String> = servers.addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let check = if probes {
        "[upstreams.p.health_check]\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
    } else {
        ""
    };
    let config = format!(
        "[log]\naccess_log = false\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [{}]\n{check}",
        list.join(", ")
    );
    let path = dir.path().join("sniroute.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sniroute"))
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sniroute");
    wait_ready(&mut child);
    std::thread::sleep(warmup);
    let pid = child.id();
    let (cpu0, accepted0, t0) = (
        cpu_time(pid),
        servers.accepted.load(std::sync::atomic::Ordering::Relaxed),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (cpu1, accepted1, elapsed) = (
        cpu_time(pid),
        servers.accepted.load(std::sync::atomic::Ordering::Relaxed),
        t0.elapsed(),
    );
    let peak_rss_mb = status_kb(pid, "VmHWM:") as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    Measured {
        cpu_percent: (cpu1 - cpu0).as_secs_f64() / elapsed.as_secs_f64() * 100.0,
        peak_rss_mb,
        probes_per_second: (accepted1 - accepted0) as f64 / elapsed.as_secs_f64(),
    }
}

fn wait_ready(child: &mut Child) {
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
}

/// utime + stime of `pid`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read status")
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("status field")
}
