//! System calls per connection, counted by strace around the real binary with
//! one worker thread, as the benchmarks run it: a budget, so that a change
//! which adds a system call to every connection shows up in the suite and not
//! only in a benchmark run.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Connections of the short and the long run; the difference is what the
/// extra connections cost, without start-up and shutdown.
const FEW: usize = 10;
const MANY: usize = 50;

fn strace_available() -> bool {
    let found = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        // CI installs strace: there, its absence is a failure.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "strace is not installed"
        );
        eprintln!("skipped: strace is not installed");
    }
    found
}

/// Runs sniroute under `strace -f -c`, makes `n` TLS connections one after
/// another, stops it, and returns the calls per system call name.
async fn count_syscalls(n: usize) -> BTreeMap<String, u64> {
    let upstream = Upstream::start("127.0.0.2", "app", Mode::Tls).await;
    let listen = free_addr("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[log]\naccess_log = false\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n\
             default = \"apps\"\n[upstreams.apps]\nservers = [\"{}\"]\n",
            upstream.addr
        ),
    );
    let counts = dir.path().join("counts");
    let child = Command::new("strace")
        .arg("-f")
        .arg("-c")
        .arg("-o")
        .arg(&counts)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_sniroute"))
        .arg("--config")
        .arg(&config)
        .arg("--no-watch")
        .env("TOKIO_WORKER_THREADS", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut proxy = Sniroute::spawned(child, dir);
    for _ in 0..n {
        let answer = tls_request(listen, "app.example.com").await.unwrap();
        assert_eq!(answer.trim(), "app sni=app.example.com");
    }
    // The child is strace; the signal goes to sniroute itself.
    let log = proxy.log();
    let pid = log
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pid= in the ready line:\n{log}"));
    let status = Command::new("kill").args(["-TERM", pid]).status().unwrap();
    assert!(status.success());
    assert!(proxy.wait_exit(Duration::from_secs(30)).success());
    let text = std::fs::read_to_string(proxy.dir.path().join("counts")).unwrap();
    // `% time  seconds  usecs/call  calls  [errors]  syscall` rows.
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let calls = fields.get(3)?.parse().ok()?;
            let name = fields.last()?;
            (*name != "total").then(|| (name.to_string(), calls))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_costs_no_more_system_calls_than_its_budget() {
    if !strace_available() {
        return;
    }
    let few = count_syscalls(FEW).await;
    let many = count_syscalls(MANY).await;
    let per_connection = |name: &str| {
        let calls = |m: &BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0) as f64;
        (calls(&many) - calls(&few)) / (MANY - FEW) as f64
    };
    let mut names: Vec<&String> = many.keys().chain(few.keys()).collect();
    names.sort();
    names.dedup();
    let report: Vec<String> = names
        .iter()
        .map(|name| format!("{name} {:.2}", per_connection(name)))
        .collect();
    let total: f64 = names.iter().map(|name| per_connection(name)).sum();
    eprintln!(
        "system calls per connection: {total:.1}: {}",
        report.join(", ")
    );
    // tokio writes to its eventfd when a new timer is the earliest one; the
    // timer anchor keeps a connection's connect timeout from being that.
    assert!(
        per_connection("write") < 0.1,
        "a write(2) per connection is back: {report:?}"
    );
    // One accept4 that succeeds and one that finds the queue empty (the
    // listener is edge-triggered), and one socket(2), per connection.
    assert!(per_connection("accept4") <= 2.05, "{report:?}");
    assert!(
        (0.95..=1.05).contains(&per_connection("socket")),
        "{report:?}"
    );
    // About 40 on the machine this was written on, two of them the
    // `fcntl(F_GETFD)` a debug build adds (std checking that a descriptor is
    // open before wrapping it); the release binary makes about 38 for this
    // traffic, nginx about 34. The budget leaves room for scheduling noise,
    // which moves `epoll_wait` and `recvfrom` most.
    assert!(
        total <= 44.0,
        "{total:.1} system calls per connection: {report:?}"
    );
}
