//! The cases and how one is measured: start the proxy fresh, warm up, run the
//! load for the case's time while reading CPU clocks from /proc, record the
//! numbers, stop the proxy. A measurement disturbed by other work on the
//! machine is taken again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peers::{self, Peer, Plan};
use crate::report::Results;
use crate::{load, procfs, Settings};

/// One kind of load; see the crate docs for what each does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Tls,
    Replay,
    Bulk,
    TlsLatency,
    KeepaliveLatency,
    Idle,
}

impl Case {
    pub const ALL: [Case; 6] = [
        Case::Tls,
        Case::Replay,
        Case::Bulk,
        Case::TlsLatency,
        Case::KeepaliveLatency,
        Case::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Tls => "tls",
            Case::Replay => "replay",
            Case::Bulk => "bulk",
            Case::TlsLatency => "tls_latency",
            Case::KeepaliveLatency => "keepalive_latency",
            Case::Idle => "idle",
        }
    }
}

/// What every measurement needs.
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub plan: &'a Plan,
    pub tls: &'a load::TlsClient,
    pub hello: Arc<[u8]>,
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
    let running = match peer {
        Peer::Direct => None,
        p => Some(peers::start(p, ctx.plan).await),
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
            results.add("bulk", peer, bytes as f64 / 1e6 / s.run.as_secs_f64());
            results.add("loadgen_busy_bulk", peer, used.own_busy);
            results.add("other_busy_bulk", peer, used.other_busy);
            if bytes > 0 {
                results.add(
                    "machine_cpu_per_gb",
                    peer,
                    used.machine * 1e3 / (bytes as f64 / 1e9),
                );
            }
            if has_proxy && bytes > 0 {
                results.add("cpu_per_gb", peer, used.proxy * 1e3 / (bytes as f64 / 1e9));
                results.add("proxy_busy_bulk", peer, used.proxy_busy);
            }
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
