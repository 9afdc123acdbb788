//! The cases and how one is measured: start the proxy fresh, warm up, run the
//! load for the case's time while reading CPU clocks from /proc, record the
//! numbers, stop the proxy. A measurement disturbed by other work on the
//! machine is taken again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peers::{self, Job, Peer, Plan};
use crate::report::Results;
use crate::routes::{self, Table};
use crate::syscalls::{self, Perf};
use crate::{load, procfs, quic, Settings};

/// One kind of load; see the crate docs for what each does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Tls,
    Replay,
    Bulk,
    TlsLatency,
    KeepaliveLatency,
    Idle,
    TlsBulk,
    QuicBulk,
    Routes,
}

impl Case {
    pub const ALL: [Case; 9] = [
        Case::Tls,
        Case::Replay,
        Case::Bulk,
        Case::TlsLatency,
        Case::KeepaliveLatency,
        Case::Idle,
        Case::TlsBulk,
        Case::QuicBulk,
        Case::Routes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Tls => "tls",
            Case::Replay => "replay",
            Case::Bulk => "bulk",
            Case::TlsLatency => "tls_latency",
            Case::KeepaliveLatency => "keepalive_latency",
            Case::Idle => "idle",
            Case::TlsBulk => "tls_bulk",
            Case::QuicBulk => "quic_bulk",
            Case::Routes => "routes",
        }
    }

    /// Whether `peer` takes part: idle memory needs a proxy, the route
    /// table is sniroute's against itself (see `routes`), and QUIC needs a
    /// UDP proxy.
    pub fn runs_on(self, peer: Peer) -> bool {
        match self {
            Case::Idle => peer != Peer::Direct,
            Case::Routes => peer == Peer::Sniroute,
            Case::QuicBulk => peer != Peer::Haproxy,
            _ => true,
        }
    }

    /// The config a proxy runs for this case.
    pub fn job(self) -> Job {
        match self {
            Case::QuicBulk => Job::Quic,
            _ => Job::Tcp,
        }
    }
}

/// What every measurement needs.
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub plan: &'a Plan,
    pub tls: &'a load::TlsClient,
    pub quic: &'a quinn::ClientConfig,
    pub hello: Arc<[u8]>,
    /// System-call counting, where perf can do it.
    pub perf: Option<&'a Perf>,
}

pub fn targets_for(peer: Peer, listen: Option<SocketAddr>, plan: &Plan) -> load::Targets {
    match (peer, listen) {
        (Peer::Direct, _) | (_, None) => load::Targets {
            tls: plan.tls_servers.to_vec(),
            replay: plan.replay_servers.to_vec(),
        },
        (_, Some(listen)) => load::Targets {
            tls: vec![listen],
            replay: vec![listen],
        },
    }
}

/// CPU time of the proxy's processes, of this process and of the whole
/// machine, and the wall clock.
struct Clocks {
    proxy: Duration,
    own: Duration,
    machine: Duration,
    wall: Instant,
}

fn clocks(pid: Option<u32>) -> Clocks {
    Clocks {
        proxy: pid.map(procfs::tree_cpu).unwrap_or_default(),
        own: procfs::cpu(std::process::id()),
        machine: procfs::machine_busy(),
        wall: Instant::now(),
    }
}

/// Where the CPU went during a timed case.
struct Usage {
    /// Proxy CPU seconds.
    proxy: f64,
    /// Proxy and load generator, % of one core.
    proxy_busy: f64,
    own_busy: f64,
    /// Everything else the machine did, % of one core: interrupt and softirq
    /// time no process is charged for, and other processes (noise).
    other_busy: f64,
    /// The whole machine's CPU seconds, every core, softirq included: the cost
    /// of the case that nothing can hide from (the load generator and the
    /// upstream, both in this process, count too, the same for every peer).
    machine: f64,
}

fn usage(before: &Clocks, pid: Option<u32>) -> Usage {
    let after = clocks(pid);
    let wall = after.wall.duration_since(before.wall).as_secs_f64();
    let proxy = (after.proxy - before.proxy).as_secs_f64();
    let own = (after.own - before.own).as_secs_f64();
    let machine = after.machine.saturating_sub(before.machine).as_secs_f64();
    Usage {
        proxy,
        proxy_busy: 100.0 * proxy / wall,
        own_busy: 100.0 * own / wall,
        other_busy: (100.0 * (machine - proxy - own) / wall).max(0.0),
        machine,
    }
}

/// Other work on the machine (% of one core) above which a measurement is
/// taken again.
pub const NOISE_LIMIT: f64 = 25.0;
pub const ATTEMPTS: usize = 3;

/// The result keys of a case that moves bytes (bulk, TLS-bound bulk, QUIC
/// bulk): its MB/s, the cores' busy shares, and CPU per GB for the machine and
/// the proxy.
struct BytesKeys {
    rate: &'static str,
    loadgen_busy: &'static str,
    other_busy: &'static str,
    machine_per_gb: &'static str,
    proxy_per_gb: &'static str,
    proxy_busy: &'static str,
}

impl BytesKeys {
    /// Records `bytes` moved in `run` with `used` CPU; per-GB rows only when
    /// bytes moved, proxy rows only when there is a proxy.
    fn add(
        &self,
        results: &mut Results,
        peer: Peer,
        bytes: u64,
        run: Duration,
        used: &Usage,
        has_proxy: bool,
    ) {
        results.add(self.rate, peer, bytes as f64 / 1e6 / run.as_secs_f64());
        results.add(self.loadgen_busy, peer, used.own_busy);
        results.add(self.other_busy, peer, used.other_busy);
        if bytes == 0 {
            return;
        }
        let gb = bytes as f64 / 1e9;
        results.add(self.machine_per_gb, peer, used.machine * 1e3 / gb);
        if has_proxy {
            results.add(self.proxy_per_gb, peer, used.proxy * 1e3 / gb);
            results.add(self.proxy_busy, peer, used.proxy_busy);
        }
    }
}

/// Measures `case` on `peer` into `results`. A measurement during which the
/// rest of the machine (other processes, unattributed interrupt time) used
/// more than [`NOISE_LIMIT`] is repeated after a pause, at most [`ATTEMPTS`]
/// times in all; the last one is kept either way and counted as noisy.
pub async fn measure(ctx: &Ctx<'_>, case: Case, peer: Peer, results: &mut Results) {
    for attempt in 1..=ATTEMPTS {
        let mut scratch = Results::default();
        let noise = measure_once(ctx, case, peer, &mut scratch).await;
        if noise <= NOISE_LIMIT || attempt == ATTEMPTS {
            if noise > NOISE_LIMIT {
                results
                    .noisy
                    .push(format!("{}/{}", case.name(), peer.name()));
            }
            results.merge(scratch);
            return;
        }
        eprintln!(
            "{}/{}: the rest of the machine used {noise:.0}% of a core meanwhile; \
             measuring again in 10 s",
            case.name(),
            peer.name()
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// One measurement; returns how busy the rest of the machine was (% of a core).
async fn measure_once(ctx: &Ctx<'_>, case: Case, peer: Peer, results: &mut Results) -> f64 {
    let s = ctx.settings;
    if case == Case::Routes {
        return measure_routes(ctx, results).await;
    }
    let running = match peer {
        Peer::Direct => None,
        p => Some(peers::start(p, ctx.plan, case.job()).await),
    };
    let pid = running.as_ref().map(|r| r.pid());
    let targets = targets_for(peer, running.as_ref().map(|r| r.listen), ctx.plan);
    let has_proxy = pid.is_some();
    let noise = match case {
        Case::Tls | Case::Replay => {
            let run_once = |d: Duration| {
                let (tls, targets, hello) = (ctx.tls.clone(), targets.clone(), ctx.hello.clone());
                load::closed_loop(s.concurrency, d, move |i| {
                    let (tls, targets, hello) = (tls.clone(), targets.clone(), hello.clone());
                    async move {
                        if case == Case::Tls {
                            load::tls_once(&tls, targets.tls[i % targets.tls.len()]).await
                        } else {
                            load::replay_once(&hello, targets.replay[i % targets.replay.len()])
                                .await
                        }
                    }
                })
            };
            run_once(s.warmup).await;
            let before = clocks(pid);
            let counted = run_once(s.run).await;
            let used = usage(&before, pid);
            let rate = counted.done as f64 / counted.elapsed.as_secs_f64();
            let (rate_key, cpu_key, machine_key, busy_key, own_key, other_key) =
                if case == Case::Tls {
                    (
                        "tls_conn_rate",
                        "cpu_per_1k_tls_conns",
                        "machine_cpu_per_1k_tls_conns",
                        "proxy_busy_tls",
                        "loadgen_busy_tls",
                        "other_busy_tls",
                    )
                } else {
                    (
                        "replay_conn_rate",
                        "cpu_per_1k_conns",
                        "machine_cpu_per_1k_conns",
                        "proxy_busy_replay",
                        "loadgen_busy_replay",
                        "other_busy_replay",
                    )
                };
            results.add(rate_key, peer, rate);
            results.add(own_key, peer, used.own_busy);
            results.add(other_key, peer, used.other_busy);
            if counted.done > 0 {
                results.add(
                    machine_key,
                    peer,
                    used.machine * 1e3 * 1000.0 / counted.done as f64,
                );
            }
            if has_proxy && counted.done > 0 {
                results.add(
                    cpu_key,
                    peer,
                    used.proxy * 1e3 * 1000.0 / counted.done as f64,
                );
                results.add(busy_key, peer, used.proxy_busy);
            }
            results.add_errors(case.name(), peer, counted.errors);
            used.other_busy
        }
        Case::Bulk => {
            load::bulk(
                ctx.hello.clone(),
                &targets.replay,
                s.bulk_conns,
                s.bulk_chunk,
                s.warmup,
            )
            .await;
            let before = clocks(pid);
            let (bytes, errors) = load::bulk(
                ctx.hello.clone(),
                &targets.replay,
                s.bulk_conns,
                s.bulk_chunk,
                s.run,
            )
            .await;
            let used = usage(&before, pid);
            let keys = BytesKeys {
                rate: "bulk",
                loadgen_busy: "loadgen_busy_bulk",
                other_busy: "other_busy_bulk",
                machine_per_gb: "machine_cpu_per_gb",
                proxy_per_gb: "cpu_per_gb",
                proxy_busy: "proxy_busy_bulk",
            };
            keys.add(results, peer, bytes, s.run, &used, has_proxy);
            results.add_errors(case.name(), peer, errors);
            used.other_busy
        }
        Case::TlsLatency => {
            let op = {
                let (tls, targets) = (ctx.tls.clone(), targets.clone());
                move |i: usize| {
                    let (tls, targets) = (tls.clone(), targets.clone());
                    async move { load::tls_once(&tls, targets.tls[i % targets.tls.len()]).await }
                }
            };
            load::open_loop(s.rate, s.warmup, op.clone()).await;
            let before = clocks(pid);
            let lat = load::open_loop(s.rate, s.run, op).await;
            let used = usage(&before, pid);
            results.add("tls_latency_p50", peer, lat.quantile(0.50));
            results.add("tls_latency_p99", peer, lat.quantile(0.99));
            results.add_errors(case.name(), peer, lat.errors);
            used.other_busy
        }
        Case::KeepaliveLatency => {
            let hello = ctx.hello.clone();
            load::keepalive_latency(
                hello.clone(),
                &targets.replay,
                s.keepalive_conns,
                s.rate,
                s.warmup,
            )
            .await;
            let before = clocks(pid);
            let lat =
                load::keepalive_latency(hello, &targets.replay, s.keepalive_conns, s.rate, s.run)
                    .await;
            let used = usage(&before, pid);
            results.add("keepalive_latency_p50", peer, lat.quantile(0.50));
            results.add("keepalive_latency_p99", peer, lat.quantile(0.99));
            results.add_errors(case.name(), peer, lat.errors);
            used.other_busy
        }
        Case::TlsBulk => {
            load::tls_bulk(ctx.tls, &targets.tls, s.tls_bulk_conns, s.warmup).await;
            let before = clocks(pid);
            let (bytes, errors) =
                load::tls_bulk(ctx.tls, &targets.tls, s.tls_bulk_conns, s.run).await;
            let used = usage(&before, pid);
            let keys = BytesKeys {
                rate: "tls_bulk",
                loadgen_busy: "loadgen_busy_tls_bulk",
                other_busy: "other_busy_tls_bulk",
                machine_per_gb: "machine_cpu_per_gb_tls_bulk",
                proxy_per_gb: "cpu_per_gb_tls_bulk",
                proxy_busy: "proxy_busy_tls_bulk",
            };
            keys.add(results, peer, bytes, s.run, &used, has_proxy);
            results.add_errors(case.name(), peer, errors);
            if let (Some(pid), Some(perf)) = (pid, ctx.perf) {
                match count_tls_bulk(ctx, perf, peer, pid, &targets, results).await {
                    Ok((counts, bytes, errors)) => {
                        add_counts(results, peer, counts, bytes);
                        results.add_errors(case.name(), peer, errors);
                    }
                    Err(e) => eprintln!("tls_bulk/{}: no system-call counts: {e}", peer.name()),
                }
            }
            used.other_busy
        }
        Case::QuicBulk => {
            let addr = running.as_ref().map_or(ctx.plan.quic_server, |r| r.listen);
            let warm = quic::open(ctx.quic, addr, s.quic_bulk_conns).await;
            let mut handshakes = warm.handshakes_ms.clone();
            quic::download(warm, s.warmup).await;
            // The window starts with every handshake done (through a proxy
            // they are new flows, and may be slow): it times the relaying.
            let opened = quic::open(ctx.quic, addr, s.quic_bulk_conns).await;
            handshakes.extend(&opened.handshakes_ms);
            let before = clocks(pid);
            let (bytes, errors) = quic::download(opened, s.run).await;
            let used = usage(&before, pid);
            if !handshakes.is_empty() {
                results.add("quic_handshake_ms", peer, median(handshakes));
            }
            let keys = BytesKeys {
                rate: "quic_bulk",
                loadgen_busy: "loadgen_busy_quic_bulk",
                other_busy: "other_busy_quic_bulk",
                machine_per_gb: "machine_cpu_per_gb_quic_bulk",
                proxy_per_gb: "cpu_per_gb_quic_bulk",
                proxy_busy: "proxy_busy_quic_bulk",
            };
            keys.add(results, peer, bytes, s.run, &used, has_proxy);
            results.add_errors(case.name(), peer, errors);
            used.other_busy
        }
        Case::Routes => unreachable!("measured by measure_routes"),
        // Memory does not depend on what else runs: never repeated for noise.
        Case::Idle => match pid {
            None => 0.0,
            Some(pid) => {
                // Warm the proxy up first, so the baseline includes what any
                // proxy allocates once (buffers, lazily built tables).
                for i in 0..100 {
                    let _ = load::replay_once(&ctx.hello, targets.replay[i % targets.replay.len()])
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let before = procfs::tree_rss_kib(pid);
                let (held, errors) =
                    load::open_idle(ctx.hello.clone(), targets.replay.clone(), s.idle_conns, 100)
                        .await;
                // Let every proxy finish its side of the last connections.
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let after = procfs::tree_rss_kib(pid);
                if !held.is_empty() {
                    let per_conn = (after.saturating_sub(before)) as f64 / held.len() as f64;
                    results.add("idle_rss_per_conn", peer, per_conn);
                }
                results.add_errors(case.name(), peer, errors);
                drop(held);
                0.0
            }
        },
    };
    if let Some(r) = running {
        r.stop().await;
    }
    noise
}

/// A second TLS-bound bulk window, with perf counting the proxy's system
/// calls (its own window: enabled tracepoints slow every system call a
/// little, and the CPU numbers come from the first). The counts include the
/// few calls of the 8 handshakes before the timed part; the bytes do not.
async fn count_tls_bulk(
    ctx: &Ctx<'_>,
    perf: &Perf,
    peer: Peer,
    pid: u32,
    targets: &load::Targets,
    results: &mut Results,
) -> Result<(syscalls::Counts, u64, u64), String> {
    let s = ctx.settings;
    let mut window = perf.attach(&procfs::tree(pid)).await?;
    window.enable().await?;
    let (bytes, errors) = load::tls_bulk(ctx.tls, &targets.tls, s.tls_bulk_conns, s.run).await;
    window.disable().await?;
    // For comparison with the first window: how much counting slowed it.
    results.add(
        "syscalls_window_mb_per_s_tls_bulk",
        peer,
        bytes as f64 / 1e6 / s.run.as_secs_f64(),
    );
    let counts = window.finish().await?;
    Ok((counts, bytes, errors))
}

/// The system-call rows of one counted window that moved `bytes` through the
/// proxy. Each byte is spliced twice (socket → pipe → socket) but read once.
fn add_counts(results: &mut Results, peer: Peer, c: syscalls::Counts, bytes: u64) {
    if bytes == 0 {
        return;
    }
    let mb = bytes as f64 / 1e6;
    results.add("tls_bulk_wakeups_per_mb", peer, c.epoll as f64 / mb);
    results.add("syscalls_per_mb_tls_bulk", peer, c.all as f64 / mb);
    results.add("syscalls_reads_per_mb_tls_bulk", peer, c.read as f64 / mb);
    if c.splice > 0 {
        results.add(
            "syscalls_splices_per_mb_tls_bulk",
            peer,
            c.splice as f64 / mb,
        );
    }
    if c.epoll > 0 {
        results.add(
            "syscalls_moves_per_wakeup_tls_bulk",
            peer,
            (c.splice + c.read) as f64 / c.epoll as f64,
        );
    }
    if c.splice_ok > 0 {
        results.add(
            "syscalls_kib_per_splice_tls_bulk",
            peer,
            2.0 * bytes as f64 / c.splice_ok as f64 / 1024.0,
        );
    } else if c.read_ok > 0 {
        results.add(
            "syscalls_kib_per_read_tls_bulk",
            peer,
            bytes as f64 / c.read_ok as f64 / 1024.0,
        );
    }
}

/// The route-table case (sniroute only; see `routes`): CPU per connection
/// with each table (in alternating order from one measurement to the next, so
/// that drift favours neither), their ratio, `--check`, and reloads. Returns
/// how busy the rest of the machine was during the CPU windows.
async fn measure_routes(ctx: &Ctx<'_>, results: &mut Results) -> f64 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ROUND: AtomicUsize = AtomicUsize::new(0);
    let s = ctx.settings;
    let peer = Peer::Sniroute;
    let hello = routes::fallthrough_hello();
    let mut order = [Table::Small, Table::Big];
    if ROUND.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
        order.reverse();
    }
    let mut noise = 0.0f64;
    let mut per_conn = [None, None];
    for table in order {
        let running = routes::start(ctx.plan, table, false).await;
        let pid = Some(running.pid());
        let listen = running.listen;
        let run_once = |d: Duration| {
            let hello = hello.clone();
            load::closed_loop(s.concurrency, d, move |_| {
                let hello = hello.clone();
                async move { load::replay_once(&hello, listen).await }
            })
        };
        run_once(s.warmup).await;
        let before = clocks(pid);
        let counted = run_once(s.run).await;
        let used = usage(&before, pid);
        running.stop().await;
        noise = noise.max(used.other_busy);
        results.add_errors("routes", peer, counted.errors);
        if counted.done == 0 {
            continue;
        }
        let (cpu_key, machine_key) = match table {
            Table::Small => ("routes_cpu_per_1k_small", "routes_machine_cpu_per_1k_small"),
            Table::Big => ("routes_cpu_per_1k_big", "routes_machine_cpu_per_1k_big"),
        };
        let cpu = used.proxy * 1e3 * 1000.0 / counted.done as f64;
        results.add(cpu_key, peer, cpu);
        results.add(
            machine_key,
            peer,
            used.machine * 1e3 * 1000.0 / counted.done as f64,
        );
        per_conn[usize::from(table == Table::Big)] = Some(cpu);
    }
    if let [Some(small), Some(big)] = per_conn {
        if small > 0.0 {
            results.add("routes_cpu_ratio", peer, big / small);
        }
    }

    let runs = if s.smoke { 3 } else { 5 };
    match routes::check_ms(ctx.plan, runs) {
        Ok(times) => results.add("routes_check_ms", peer, median(times)),
        Err(e) => {
            eprintln!("routes: {e}");
            results.add_errors("routes", peer, 1);
        }
    }
    let reloads = if s.smoke { 2 } else { 3 };
    for (trigger, key) in [
        (routes::Trigger::FileWatch, "routes_reload_ms"),
        (routes::Trigger::Sighup, "routes_reload_sighup_ms"),
    ] {
        match routes::reload_ms(ctx.plan, trigger, reloads).await {
            Ok((times, errors)) => {
                results.add(key, peer, median(times));
                results.add_errors("routes", peer, errors);
            }
            Err(e) => {
                eprintln!("routes: reload ({trigger:?}): {e}");
                results.add_errors("routes", peer, 1);
            }
        }
    }
    noise
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
