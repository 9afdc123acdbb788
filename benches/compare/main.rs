//! Side-by-side load test: sniroute, nginx stream and HAProxy, and the direct
//! path, measured in the same run on loopback.
//!
//! `cargo bench --bench compare` (full run, about 11 minutes on 2 cores), or
//! with `SNIROUTE_BENCH_SMOKE=1` a smoke run of about a minute that only shows
//! the harness works end to end (its numbers mean little). It prints a table of
//! medians and ratios and writes `results.json`, `table.md` and `compare.svg`
//! to `target/bench-compare/`. It installs nothing: a missing nginx, nginx stream
//! module, HAProxy or taskset is named and that part is skipped (or the run
//! fails, with `SNIROUTE_BENCH_REQUIRE_PEERS=1`).
//!
//! Layout: the proxy under test runs alone on CPU 1; this process (load
//! generator and upstream servers, one thread) runs on CPU 0. Each repetition
//! runs every case against every peer, starting each proxy fresh, in a rotated
//! order. Cases:
//!
//! - `tls`: new connections per second, each a full TLS 1.3 handshake (rustls,
//!   no resumption) with a request and `Connection: close`, to a TLS server;
//! - `replay`: new connections per second that replay a captured Chromium
//!   ClientHello and do two short exchanges with a plain server: the proxy's
//!   work without the load generator's TLS cost;
//! - `bulk`: download throughput over 4 kept-alive replayed connections;
//! - `tls_latency`: p50/p99 of whole new TLS connections started at a fixed rate;
//! - `keepalive_latency`: p50/p99 of a 1 KB exchange on kept-alive connections
//!   at a fixed rate;
//! - `idle`: RSS of the proxy holding N idle proxied connections, per connection;
//! - `tls_bulk`: TLS-bound bulk: 8 kept-alive real TLS 1.3 connections each
//!   downloading 1 MiB bodies in turn from the TLS server, so both TLS ends
//!   (on the load generator's core) set the rate and the proxy relays a flow
//!   slower than it could; then a second window in which perf counts the
//!   proxy's wake-ups (epoll returns) and reads or splices per MB (`syscalls`);
//! - `quic_bulk`: QUIC bulk download: 4 kept-alive QUIC connections (quinn,
//!   SNI `bench.example`, each from a UDP port of its own) each downloading
//!   1 MiB bodies on one bidirectional stream after another from a quinn
//!   server on 127.0.0.2, so both QUIC ends (on the load generator's core) set
//!   the rate; the proxy relays UDP datagrams (sniroute: a `quic` listener
//!   routing by the SNI of the Initial packets; nginx: a plain UDP proxy, as
//!   it cannot read that SNI; HAProxy has no UDP proxy and sits it out). MB/s
//!   count the UDP payloads both ways (see `quic`); the handshakes come before
//!   the timed window, and their median time is a row of its own;
//! - `routes` (sniroute only): CPU per connection with 11,100 routes against
//!   3 for a name that falls through all of them, and with the big table the
//!   time of `--check` and of a reload (see `routes`).
//!
//! CPU time of the proxy (all its processes) is read from /proc around each
//! timed case, giving CPU per GB (bulk, tls_bulk, quic_bulk) and per 1,000
//! connections; so is the whole machine's (every core, softirq included,
//! /proc/stat).
//!
//! Settings (environment): `SNIROUTE_BENCH_SMOKE=1`, `SNIROUTE_BENCH_SECS`
//! (seconds per case), `SNIROUTE_BENCH_REPS`, `SNIROUTE_BENCH_IDLE_CONNS`,
//! `SNIROUTE_BENCH_PEERS` (e.g. `sniroute,nginx`), `SNIROUTE_BENCH_CASES`
//! (e.g. `bulk,idle`), `SNIROUTE_BENCH_OUT` (output directory),
//! `SNIROUTE_BENCH_REQUIRE_PEERS=1`.

mod cases;
mod load;
mod peers;
mod procfs;
mod quic;
mod report;
mod routes;
mod syscalls;
mod tls;
mod upstream;

#[path = "../support/hellos.rs"]
mod hellos;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cases::{measure, targets_for, Case, Ctx, ATTEMPTS, NOISE_LIMIT};
use peers::{Job, Peer, Plan};
use report::Results;

/// CPU for this process (load generator and servers) and for the proxy.
const LOADGEN_CPU: &str = "0";
const PROXY_CPU: &str = "1";

struct Settings {
    smoke: bool,
    run: Duration,
    warmup: Duration,
    reps: usize,
    idle_conns: usize,
    /// Clients of the closed-loop connection-rate cases.
    concurrency: usize,
    /// Requests per second of the latency cases.
    rate: f64,
    bulk_conns: usize,
    bulk_chunk: u64,
    /// Kept-alive TLS connections of the TLS-bound bulk case.
    tls_bulk_conns: usize,
    /// Kept-alive QUIC connections of the QUIC bulk case.
    quic_bulk_conns: usize,
    keepalive_conns: usize,
    peers: Vec<Peer>,
    cases: Vec<Case>,
    out: PathBuf,
    require_peers: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    env(name).map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

impl Settings {
    fn from_env() -> Settings {
        let smoke = env("SNIROUTE_BENCH_SMOKE").is_some_and(|v| v != "0");
        // The proxy holds two sockets per proxied connection, and so does this
        // process (client and server side): stay inside RLIMIT_NOFILE.
        let fd_room = (procfs::nofile_limit().saturating_sub(500) / 2) as usize;
        let default_idle = if smoke { 500 } else { 10_000 };
        let idle_conns: usize =
            env_num("SNIROUTE_BENCH_IDLE_CONNS").unwrap_or(default_idle.min(fd_room / 1000 * 1000));
        assert!(
            idle_conns <= fd_room,
            "{idle_conns} idle connections need {} file descriptors; raise `ulimit -n`",
            idle_conns * 2 + 500
        );
        let peers = match env("SNIROUTE_BENCH_PEERS") {
            None => Peer::ALL.to_vec(),
            Some(list) => Peer::ALL
                .iter()
                .copied()
                .filter(|p| list.split(',').any(|n| n.trim() == p.name()))
                .collect(),
        };
        let cases = match env("SNIROUTE_BENCH_CASES") {
            None => Case::ALL.to_vec(),
            Some(list) => Case::ALL
                .iter()
                .copied()
                .filter(|c| list.split(',').any(|n| n.trim() == c.name()))
                .collect(),
        };
        let target_dir = env("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        Settings {
            smoke,
            run: Duration::from_secs_f64(env_num("SNIROUTE_BENCH_SECS").unwrap_or(if smoke {
                1.0
            } else {
                5.0
            })),
            warmup: Duration::from_secs_f64(if smoke { 0.2 } else { 1.0 }),
            reps: env_num("SNIROUTE_BENCH_REPS").unwrap_or(if smoke { 1 } else { 3 }),
            idle_conns,
            concurrency: 64,
            rate: 200.0,
            bulk_conns: 4,
            bulk_chunk: 64 << 20,
            tls_bulk_conns: 8,
            quic_bulk_conns: 4,
            keepalive_conns: 8,
            peers,
            cases,
            out: env("SNIROUTE_BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| target_dir.join("bench-compare")),
            require_peers: env("SNIROUTE_BENCH_REQUIRE_PEERS").is_some_and(|v| v != "0"),
        }
    }
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The commit the bench was built from, `-dirty` with uncommitted changes.
fn git_commit() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("git")
        .args(["-C", dir, "rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dirty = Command::new("git")
        .args(["-C", dir, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// CPUs of the machine, read once before this process pins itself to one.
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Pins every thread of this process to `cpu` (before the runtime starts, so
/// its threads inherit it).
fn pin_self(cpu: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    cpus();
    let mut settings = Settings::from_env();
    let pinned = cpus() >= 2 && on_path("taskset") && pin_self(LOADGEN_CPU);
    if !pinned {
        eprintln!(
            "warning: not pinning processes to CPUs ({} CPU(s); taskset is in Debian's \
             util-linux): the proxy and the load generator will share cores",
            cpus()
        );
    }

    // Name everything missing at once, before spending any time.
    let mut missing = Vec::new();
    if !on_path("nginx") {
        missing.push("nginx (Debian: nginx)");
    }
    if !on_path("haproxy") {
        missing.push("haproxy (Debian: haproxy)");
    }
    if !on_path("taskset") {
        missing.push("taskset (Debian: util-linux)");
    }
    if !missing.is_empty() {
        eprintln!("missing: {}", missing.join(", "));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let results = run(&mut settings, pinned).await;
        let Some((results, header)) = results else {
            std::process::exit(1);
        };
        print!("\n{}", results.table());
        if results.errors.values().any(|&n| n > 0) {
            println!("failed operations (case/peer: count):");
            for (k, n) in results.errors.iter().filter(|(_, &n)| n > 0) {
                println!("  {k}: {n}");
            }
        }
        if !results.noisy.is_empty() {
            println!(
                "kept although the machine was busy with other work (after {ATTEMPTS} tries): {}",
                results.noisy.join(", ")
            );
        }
        std::fs::create_dir_all(&settings.out).expect("create the output directory");
        let json = settings.out.join("results.json");
        let text =
            serde_json::to_string_pretty(&results.json(header.clone())).expect("results serialise");
        std::fs::write(&json, text + "\n").expect("write results.json");
        let md = settings.out.join("table.md");
        std::fs::write(&md, results.markdown()).expect("write table.md");
        let svg = settings.out.join("compare.svg");
        let subtitle = format!(
            "{}; {} x {} s per case; {}; {} ({}), {}, HAProxy {}",
            header["date"].as_str().unwrap_or("?"),
            header["reps"],
            header["seconds_per_case"],
            header["machine"]["summary"].as_str().unwrap_or("?"),
            header["versions"]["sniroute"].as_str().unwrap_or("-"),
            header["versions"]["sniroute_commit"]
                .as_str()
                .unwrap_or("-"),
            header["versions"]["nginx"].as_str().unwrap_or("-"),
            header["versions"]["haproxy"].as_str().unwrap_or("-"),
        );
        if let Err(e) = results.svg(&svg, &subtitle) {
            eprintln!("warning: could not draw the chart: {e}");
        }
        println!(
            "\nwrote {}, {} and {}",
            json.display(),
            md.display(),
            svg.display()
        );
    });
}

async fn run(settings: &mut Settings, pinned: bool) -> Option<(Results, serde_json::Value)> {
    let hello: Arc<[u8]> = Arc::from(hellos::CHROMIUM);
    let tls_up = upstream::start_tls(tls::server_config()).await;
    let replay_up = upstream::start_replay(hello.len()).await;
    let probes = upstream::start_probes(hello.len()).await;
    let quic_server = quic::start_server();
    let plan = Plan {
        tls_servers: tls_up.addrs,
        replay_servers: replay_up.addrs,
        probe_servers: probes.addrs,
        replay_name: hellos::CHROMIUM_SNI.to_owned(),
        max_connections: settings.idle_conns as u64 + 500,
        nofile: procfs::nofile_limit(),
        proxy_cpu: pinned.then(|| PROXY_CPU.to_owned()),
        quic_server,
        nginx_half_close: env("SNIROUTE_BENCH_NGINX_HALF_CLOSE").is_some_and(|v| v != "0"),
    };
    if plan.nginx_half_close {
        println!("nginx forwards half-closes (proxy_half_close on), as sniroute does");
    }

    // Check every proxy's config the way its own tool does; drop (or fail on)
    // the ones that cannot run here.
    let mut unavailable = Vec::new();
    for peer in settings.peers.clone() {
        let program = match peer {
            Peer::Direct | Peer::Sniroute => continue,
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
        };
        let problem = if !on_path(program) {
            Some(format!("{program} is not installed"))
        } else {
            peers::check(peer, &plan, Job::Tcp).err().map(|e| {
                let hint = if peer == Peer::Nginx {
                    " (the stream module is Debian's libnginx-mod-stream)"
                } else {
                    ""
                };
                format!("{program} rejects the bench config{hint}:\n{e}")
            })
        };
        if let Some(p) = problem {
            eprintln!("skipping {}: {p}", peer.name());
            unavailable.push(peer);
        }
    }
    if let Err(e) = peers::check(Peer::Sniroute, &plan, Job::Tcp) {
        eprintln!("sniroute rejects the bench config:\n{e}");
        return None;
    }
    if !unavailable.is_empty() && settings.require_peers {
        eprintln!("SNIROUTE_BENCH_REQUIRE_PEERS is set: stopping");
        return None;
    }
    settings.peers.retain(|p| !unavailable.contains(p));

    let tls_client = tls::client();
    let quic_client = quic::client_config();
    let versions = serde_json::json!({
        "sniroute": peers::version(env!("CARGO_BIN_EXE_sniroute"), "--version"),
        "nginx": peers::version("nginx", "-v").map(|v| v.trim_start_matches("nginx version: ").to_owned()),
        // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://..."
        "haproxy": peers::version("haproxy", "-v")
            .map(|v| v.split_whitespace().nth(2).unwrap_or(&v).to_owned()),
        "sniroute_commit": git_commit(),
        "rustc": peers::version("rustc", "--version"),
    });
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let machine = format!(
        "{} CPUs ({}), Linux {}",
        cpus(),
        procfs::cpu_model(),
        procfs::kernel()
    );
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    println!("date:      {date}");
    // How busy is the machine before we start? (The load average still
    // remembers the build that preceded this run; a 1 s sample does not.)
    let idle_check = procfs::machine_busy();
    let idle_since = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_before = 100.0 * (procfs::machine_busy().saturating_sub(idle_check)).as_secs_f64()
        / idle_since.elapsed().as_secs_f64();
    println!("busy:      {busy_before:.0}% of a core before the run (load average {loadavg})");
    if busy_before > NOISE_LIMIT / 2.0 {
        eprintln!(
            "warning: other work keeps the machine busy ({busy_before:.0}% of a core); it \
             shares the cores with the proxies, so measurements may be repeated or noisy"
        );
    }
    println!("machine:   {machine}");
    println!("versions:  {versions}");
    println!(
        "settings:  {} x {:?} per case (+{:?} warm-up), {} closed-loop clients, {} req/s for latency, \
         {} idle connections, peers: {}{}",
        settings.reps,
        settings.run,
        settings.warmup,
        settings.concurrency,
        settings.rate,
        settings.idle_conns,
        settings.peers.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
        if settings.smoke { " (smoke run: numbers are not meaningful)" } else { "" },
    );
    println!(
        "pinning:   {}",
        if pinned {
            "proxy on CPU 1, load generator + upstream servers on CPU 0"
        } else {
            "none"
        }
    );
    // System calls are counted only where a case needs them (tls_bulk).
    let perf = if settings.cases.contains(&Case::TlsBulk) {
        match syscalls::Perf::probe() {
            Ok(perf) => {
                println!("syscalls:  counted with perf stat (tracepoints) in tls_bulk");
                Some(perf)
            }
            Err(reason) => {
                println!(
                    "syscalls:  not counted, so tls_bulk has no wake-up or splice rows: {reason}"
                );
                None
            }
        }
    } else {
        None
    };
    if settings.cases.contains(&Case::Routes) {
        let others: Vec<&str> = settings
            .peers
            .iter()
            .filter(|&&p| !Case::Routes.runs_on(p))
            .map(|p| p.name())
            .collect();
        if !others.is_empty() {
            println!(
                "routes:    sniroute's big table against its small one; skipped for {} \
                 (their own route syntax and reloads would be another comparison)",
                others.join(", ")
            );
        }
    }

    // One start of each proxy up front: does it route both names, and how many
    // threads does it run?
    let mut threads = serde_json::Map::new();
    for &peer in &settings.peers {
        let running = match peer {
            Peer::Direct => None,
            p => Some(peers::start(p, &plan, Job::Tcp).await),
        };
        let targets = targets_for(peer, running.as_ref().map(|r| r.listen), &plan);
        let tls = load::tls_once(&tls_client, targets.tls[0]).await;
        let replay = load::replay_once(&hello, targets.replay[0]).await;
        if tls.is_err() || replay.is_err() {
            eprintln!(
                "{} does not proxy: tls {tls:?}, replay {replay:?}\n{}",
                peer.name(),
                running.as_ref().map(|r| r.log()).unwrap_or_default()
            );
            return None;
        }
        if let Some(r) = running {
            let names: Vec<String> = procfs::tree(r.pid())
                .into_iter()
                .flat_map(procfs::threads)
                .collect();
            println!(
                "{:<9}  processes/threads: {}",
                peer.name(),
                names.join(", ")
            );
            threads.insert(peer.name().to_owned(), names.into());
            r.stop().await;
        }
    }
    // The same for the QUIC case, with each proxy's QUIC config; a proxy that
    // cannot run it sits this case out.
    let mut skipped: Vec<(Case, Peer)> = Vec::new();
    if settings.cases.contains(&Case::QuicBulk) {
        for &peer in &settings.peers {
            if !Case::QuicBulk.runs_on(peer) {
                println!(
                    "quic_bulk: skipped for {} (its community edition has no UDP proxy)",
                    peer.name()
                );
                continue;
            }
            match quic_ready(peer, &plan, &quic_client).await {
                QuicReady::Yes => {}
                // nginx without UDP proxying is a peer that can be missing;
                // sniroute is the subject: as in the TCP cases, a sniroute
                // that cannot run the case stops the run.
                QuicReady::Unavailable(reason) if peer != Peer::Sniroute => {
                    println!("quic_bulk: skipped for {}: {reason}", peer.name());
                    if settings.require_peers {
                        eprintln!("SNIROUTE_BENCH_REQUIRE_PEERS is set: stopping");
                        return None;
                    }
                    skipped.push((Case::QuicBulk, peer));
                }
                QuicReady::Unavailable(reason) | QuicReady::Broken(reason) => {
                    eprintln!("{} does not carry QUIC: {reason}", peer.name());
                    return None;
                }
            }
        }
    }

    let header = serde_json::json!({
        "date": date,
        "load_average_before": loadavg,
        "machine_busy_before_percent": busy_before,
        "machine": { "cpus": cpus(), "cpu_model": procfs::cpu_model(), "kernel": procfs::kernel(),
                     "summary": machine },
        "versions": versions,
        "smoke": settings.smoke,
        "reps": settings.reps,
        "seconds_per_case": settings.run.as_secs_f64(),
        "warmup_seconds": settings.warmup.as_secs_f64(),
        "closed_loop_clients": settings.concurrency,
        "latency_rate_per_s": settings.rate,
        "bulk_connections": settings.bulk_conns,
        "bulk_request_bytes": settings.bulk_chunk,
        "tls_bulk_connections": settings.tls_bulk_conns,
        "tls_bulk_body_bytes": upstream::BULK_BODY,
        "quic_bulk_connections": settings.quic_bulk_conns,
        "quic_bulk_body_bytes": upstream::BULK_BODY,
        "quic_name": quic::QUIC_NAME,
        "quic_bulk_skipped": skipped.iter().filter(|s| s.0 == Case::QuicBulk)
            .map(|s| s.1.name()).collect::<Vec<_>>(),
        "syscalls_counted": perf.is_some(),
        "route_table": { "big": routes::Table::Big.routes(), "exact": routes::EXACT,
                         "wildcards": routes::WILDCARDS, "regexes": routes::REGEXES,
                         "small": routes::Table::Small.routes(),
                         "fallthrough_name": routes::FALLTHROUGH_SNI },
        "keepalive_connections": settings.keepalive_conns,
        "idle_connections": settings.idle_conns,
        "pinned": pinned,
        "threads": threads,
        "replayed_hello": { "client": "Chromium 156", "bytes": hello.len() },
    });

    let mut results = Results::default();
    let started = Instant::now();
    for rep in 0..settings.reps {
        for &case in &settings.cases {
            let mut order = settings.peers.clone();
            let n = order.len();
            order.rotate_left(rep % n.max(1));
            for peer in order {
                if !case.runs_on(peer) || skipped.contains(&(case, peer)) {
                    continue;
                }
                let ctx = Ctx {
                    settings,
                    plan: &plan,
                    tls: &tls_client,
                    quic: &quic_client,
                    hello: hello.clone(),
                    perf: perf.as_ref(),
                };
                measure(&ctx, case, peer, &mut results).await;
            }
        }
        println!(
            "repetition {}/{} done after {:.0} s",
            rep + 1,
            settings.reps,
            started.elapsed().as_secs_f64()
        );
    }
    Some((results, header))
}

/// Whether a peer can take part in the QUIC case.
enum QuicReady {
    Yes,
    /// Its QUIC config is rejected or it does not start: nginx skips the
    /// case, sniroute stops the run.
    Unavailable(String),
    /// It runs the config but does not carry a QUIC connection: the harness
    /// or the proxy is broken.
    Broken(String),
}

/// Checks `peer`'s QUIC config, starts it, and sends one QUIC connection with
/// one exchange through it (the direct path: to the server).
async fn quic_ready(peer: Peer, plan: &Plan, client: &quinn::ClientConfig) -> QuicReady {
    if peer == Peer::Direct {
        return match quic::once(client, plan.quic_server).await {
            Ok(()) => QuicReady::Yes,
            Err(e) => QuicReady::Broken(format!("the QUIC server does not answer: {e}")),
        };
    }
    if let Err(e) = peers::check(peer, plan, Job::Quic) {
        let hint = match peer {
            Peer::Sniroute
                if e.contains("unknown variant `quic`")
                    || e.contains("unknown field `udp_idle`") =>
            {
                " (this build of sniroute has no QUIC listeners)"
            }
            Peer::Nginx => " (UDP proxying needs nginx's stream module)",
            _ => "",
        };
        return QuicReady::Unavailable(format!(
            "it rejects its QUIC config{hint}:\n{}",
            e.trim_end()
        ));
    }
    let running = match peers::try_start(peer, plan, Job::Quic).await {
        Ok(r) => r,
        Err(e) => return QuicReady::Unavailable(e),
    };
    let outcome = quic::once(client, running.listen).await;
    let log = running.log();
    running.stop().await;
    match outcome {
        Ok(()) => QuicReady::Yes,
        Err(e) => QuicReady::Broken(format!("{e}; its log:\n{}", log.trim_end())),
    }
}
