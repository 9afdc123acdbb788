//! The route-table case: does sniroute's cost stay flat as its table grows?
//!
//! Two configs, the same pools and default: a big table of 11,100 routes
//! ([`EXACT`] exact names, [`WILDCARDS`] `*.suffix` wildcards, [`REGEXES`]
//! `~regex` routes) and a small one of 3 (one of each kind, so both tables
//! take all three lookup steps and only their size differs). The load is the
//! replay case's, with the captured hello's name changed to
//! [`FALLTHROUGH_SNI`]: it matches no exact name and no wildcard and falls
//! through every regex to the listener's default, the replay pool: the
//! longest path a lookup takes (all three steps, none matching). Every route
//! points elsewhere, so a name that matched anything would fail the replay
//! and be counted as an error.
//!
//! Also timed here, on the big table: `sniroute --check`, and a reload from
//! the moment the file is rewritten (to a watching sniroute; or rewritten and
//! SIGHUP sent, to one that does not watch) to the first new connection that
//! lands where the new file says (see [`reload_ms`]). The probe is the
//! captured hello as it is: its name has an exact route to probe pool A, and
//! the rewrite moves that route to probe pool B (see `upstream::start_probes`).
//!
//! sniroute only: nginx and HAProxy would need their own three kinds of
//! routes (nginx's `map` has them; HAProxy needs three map files) and their
//! own reload mechanics, which is a different comparison.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peers::{self, Plan, Running, SNIROUTE_CONFIG};
use crate::{hellos, load};

pub const EXACT: usize = 10_000;
pub const WILDCARDS: usize = 1_000;
pub const REGEXES: usize = 100;

/// A name no route of either table matches (see [`regex`]), as long as the
/// captured hello's own name so that only its bytes change.
pub const FALLTHROUGH_SNI: &str = "web-42.region7.test";

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Small,
    Big,
}

impl Table {
    pub fn routes(self) -> usize {
        match self {
            Table::Small => 3,
            Table::Big => EXACT + WILDCARDS + REGEXES,
        }
    }
}

/// Which probe server the captured hello's name is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    A,
    B,
}

impl Probe {
    /// What the probe server answers.
    pub fn letter(self) -> u8 {
        match self {
            Probe::A => b'A',
            Probe::B => b'B',
        }
    }

    fn other(self) -> Probe {
        match self {
            Probe::A => Probe::B,
            Probe::B => Probe::A,
        }
    }
}

/// The captured hello with [`FALLTHROUGH_SNI`] for its name.
pub fn fallthrough_hello() -> Arc<[u8]> {
    Arc::from(hellos::with_sni(
        hellos::CHROMIUM,
        hellos::CHROMIUM_SNI,
        FALLTHROUGH_SNI,
    ))
}

/// Regex route `i`: four shapes that real tables have (a team's anything,
/// numbered API hosts in a region, preview builds, shards), each anchored and
/// made distinct by `i`. [`FALLTHROUGH_SNI`] starts like the second shape and
/// fails it only at `region7.`, where none has a 7 and a `.test` after.
fn regex(i: usize) -> String {
    match i % 4 {
        0 => format!(r"^[a-z0-9-]+\.team{i}\.example\.com$"),
        1 => format!(r"^(api|web|grpc)-[0-9]+\.region{i}\.example\.net$"),
        2 => format!(r"^pr-[0-9]+\.preview{i}\.example\.org$"),
        _ => format!(r"^[a-z]+[0-9]*\.shard{i}\.example\.io$"),
    }
}

/// sniroute's config with `table`, the captured hello's name routed to
/// `probe`, and everything else as in the other cases (`peers::sniroute_config`).
pub fn config(plan: &Plan, listen: SocketAddr, table: Table, probe: Probe) -> String {
    let probe_pool = match probe {
        Probe::A => "probe_a",
        Probe::B => "probe_b",
    };
    // TOML literal strings ('...') for the keys: regexes keep their backslashes.
    let mut routes = format!("'{}' = \"{probe_pool}\"\n", hellos::CHROMIUM_SNI);
    let (exact, wildcards, regexes) = match table {
        Table::Small => (1, 1, 1),
        Table::Big => (EXACT, WILDCARDS, REGEXES),
    };
    for i in 1..exact {
        routes.push_str(&format!("'svc{i}.exact.example.com' = \"tls_pool\"\n"));
    }
    for i in 0..wildcards {
        routes.push_str(&format!("'*.tenant{i}.example.org' = \"tls_pool\"\n"));
    }
    for i in 0..regexes {
        routes.push_str(&format!("'~{}' = \"tls_pool\"\n", regex(i)));
    }
    let [t1, t2] = plan.tls_servers;
    let [r1, r2] = plan.replay_servers;
    let [a, b] = plan.probe_servers;
    format!(
        "[timeouts]\nidle = \"1h\"\nshutdown = \"1s\"\n\n\
         [limits]\nmax_connections = {max}\n\n\
         [log]\nlevel = \"warn\"\naccess_log = false\n\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"replay_pool\"\n\
         [listeners.routes]\n{routes}\n\
         [upstreams.tls_pool]\nservers = [\"{t1}\", \"{t2}\"]\nbalance = \"least_conn\"\n\n\
         [upstreams.replay_pool]\nservers = [\"{r1}\", \"{r2}\"]\nbalance = \"least_conn\"\n\n\
         [upstreams.probe_a]\nservers = [\"{a}\"]\n\n\
         [upstreams.probe_b]\nservers = [\"{b}\"]\n",
        max = plan.max_connections,
    )
}

/// Starts sniroute on `table`, the probe name on A.
pub async fn start(plan: &Plan, table: Table, watch: bool) -> Running {
    peers::start_sniroute_with(plan, |listen| config(plan, listen, table, Probe::A), watch).await
}

/// Wall time of `sniroute --config BIG --check` (a new process that reads,
/// parses, validates and summarises the file), `runs` times, in ms. Also
/// checks that the summary counts the whole table and that `--explain` sends
/// [`FALLTHROUGH_SNI`] to the default.
pub fn check_ms(plan: &Plan, runs: usize) -> Result<Vec<f64>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let path = dir.path().join(SNIROUTE_CONFIG);
    let text = config(plan, peers::free_port(), Table::Big, Probe::A);
    std::fs::write(&path, text).map_err(|e| format!("write the config: {e}"))?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let began = Instant::now();
        let out = peers::sniroute_command(plan, &path, false)
            .arg("--check")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run sniroute --check: {e}"))?;
        let took = began.elapsed();
        if !out.status.success() {
            return Err(format!(
                "sniroute --check rejects the big table:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        times.push(took.as_secs_f64() * 1e3);
        // The table is what it says: sniroute counts it in its summary.
        let counts = format!("routes: {EXACT} exact, {WILDCARDS} wildcard, {REGEXES} regex;");
        if !String::from_utf8_lossy(&out.stdout).contains(&counts) {
            return Err(format!(
                "sniroute --check does not report `{counts}`:\n{}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    // And the load's name goes where this case needs it: to the default.
    let out = peers::sniroute_command(plan, &path, false)
        .args(["--explain", FALLTHROUGH_SNI])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run sniroute --explain: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("route:   default") {
        return Err(format!(
            "{FALLTHROUGH_SNI} does not fall through to the default:\n{text}"
        ));
    }
    Ok(times)
}

/// How a reload is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file is replaced (a new file renamed over it, as editors and
    /// configuration tools do); sniroute's watcher notices.
    FileWatch,
    /// The same, then SIGHUP at once, to a sniroute that does not watch.
    Sighup,
}

/// Writes the big table with the probe name on `probe` to a new file in
/// `dir` and renames it over the running config.
fn rewrite(plan: &Plan, listen: SocketAddr, dir: &Path, probe: Probe) -> Result<(), String> {
    let fresh = dir.join("sniroute.toml.new");
    std::fs::write(&fresh, config(plan, listen, Table::Big, probe))
        .and_then(|()| std::fs::rename(&fresh, dir.join(SNIROUTE_CONFIG)))
        .map_err(|e| format!("rewrite the config: {e}"))
}

/// Polls (a new connection every 2 ms) until one lands on `probe`; the time
/// it took from `since`, or an error after 5 s. Failed probes count in
/// `errors` (there should be none: a reload drops no connection).
async fn until_on(
    hello: &[u8],
    listen: SocketAddr,
    probe: Probe,
    since: Instant,
    errors: &mut u64,
) -> Result<Duration, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(1), load::probe_once(hello, listen)).await {
            Ok(Ok(letter)) if letter == probe.letter() => return Ok(since.elapsed()),
            Ok(Ok(_)) => {}
            _ => *errors += 1,
        }
        if since.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "connections did not reach probe {probe:?} within 5 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `times` reloads on the big table, the probe name moving from pool A to B
/// (and back, under SIGHUP); the time from each rewrite until a new
/// connection lands on the new pool, in ms, and the number of failed probes.
///
/// Each watched reload is the first of a fresh sniroute. Once a watching
/// sniroute has reloaded, its own reads of the file are events to its
/// watcher (inotify reports opens), so it reads the file again every 250 ms
/// for as long as it runs, and a rewrite then takes effect at that loop's next
/// turn, anywhere from 0 to 250 ms later: a phase this harness would set, not
/// the reload's own cost. The first reload pays the watcher's whole debounce.
pub async fn reload_ms(
    plan: &Plan,
    trigger: Trigger,
    times: usize,
) -> Result<(Vec<f64>, u64), String> {
    let hello = hellos::CHROMIUM;
    let mut errors = 0;
    let mut took = Vec::with_capacity(times);
    match trigger {
        Trigger::FileWatch => {
            for _ in 0..times {
                let running = start(plan, Table::Big, true).await;
                let result = async {
                    until_on(hello, running.listen, Probe::A, Instant::now(), &mut errors).await?;
                    // It starts watching just after it starts accepting.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    reload_once(plan, &running, Probe::B, false, &mut errors).await
                }
                .await;
                finish(running, result, &mut took).await?;
            }
        }
        Trigger::Sighup => {
            let running = start(plan, Table::Big, false).await;
            let mut on = Probe::A;
            let result = async {
                until_on(hello, running.listen, on, Instant::now(), &mut errors).await?;
                let mut took = Vec::with_capacity(times);
                for _ in 0..times {
                    on = on.other();
                    took.push(reload_once(plan, &running, on, true, &mut errors).await?);
                }
                Ok(took)
            }
            .await;
            match result {
                Ok(t) => {
                    took = t;
                    running.stop().await;
                }
                Err(e) => return Err(fail(running, e).await),
            }
        }
    }
    Ok((took, errors))
}

/// Rewrites the config of `running` with the probe name on `to` (and sends
/// SIGHUP if asked) and waits until a new connection lands there: ms.
async fn reload_once(
    plan: &Plan,
    running: &Running,
    to: Probe,
    sighup: bool,
    errors: &mut u64,
) -> Result<f64, String> {
    rewrite(plan, running.listen, running.dir(), to)?;
    let since = Instant::now();
    if sighup {
        let _ = Command::new("kill")
            .args(["-HUP", &running.pid().to_string()])
            .status();
    }
    let d = until_on(hellos::CHROMIUM, running.listen, to, since, errors).await?;
    Ok(d.as_secs_f64() * 1e3)
}

/// Records one watched reload's time (or its error, with the log) and stops
/// its sniroute.
async fn finish(
    running: Running,
    result: Result<f64, String>,
    took: &mut Vec<f64>,
) -> Result<(), String> {
    match result {
        Ok(ms) => {
            took.push(ms);
            running.stop().await;
            Ok(())
        }
        Err(e) => Err(fail(running, e).await),
    }
}

/// Stops `running` and adds its log to the error.
async fn fail(running: Running, e: String) -> String {
    let log = running.log();
    running.stop().await;
    format!("{e}; sniroute's log:\n{log}")
}
