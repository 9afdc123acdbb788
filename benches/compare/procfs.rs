//! What the kernel knows about a process: resident memory and CPU time from
//! `/proc`, summed over a process and its children (nginx's master and worker).

use std::time::Duration;

/// Clock ticks per second in `/proc/PID/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// `pid` and its direct children (enough for nginx's master → workers).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if stat_fields(child).and_then(|f| f.get(1).and_then(|p| p.parse().ok())) == Some(pid) {
                pids.push(child);
            }
        }
    }
    pids
}

/// The fields of `/proc/PID/stat` after `(comm)`: index 0 is the state, 1 the
/// parent pid, 11 and 12 utime and stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    Some(after.split(' ').map(str::to_owned).collect())
}

/// User + system CPU time of `pid` alone.
pub fn cpu(pid: u32) -> Duration {
    let ticks = stat_fields(pid)
        .and_then(|f| Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
        .unwrap_or(0);
    Duration::from_millis(ticks * 1000 / TICKS_PER_SEC)
}

/// CPU time of `pid` and its children.
pub fn tree_cpu(pid: u32) -> Duration {
    tree(pid).into_iter().map(cpu).sum()
}

/// VmRSS of `pid` and its children, KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    tree(pid).into_iter().map(rss_kib).sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Thread names of `pid`, for the record of how many workers a peer runs.
pub fn threads(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in entries.flatten() {
            if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
                names.push(comm.trim().to_owned());
            }
        }
    }
    names.sort();
    names
}

/// The soft `RLIMIT_NOFILE` of this process.
pub fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// `model name` of the first CPU, for the report.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The running kernel's release.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Busy time of the whole machine (all CPUs: everything but idle and iowait),
/// from `/proc/stat`.
pub fn machine_busy() -> Duration {
    let ticks = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?.to_owned();
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest is inside user)
            let all: u64 = v.iter().take(8).sum();
            Some(all - v.get(3)? - v.get(4)?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 1000 / TICKS_PER_SEC)
}

/// Whether some process has a UDP socket bound to `addr` (IPv4), from
/// `/proc/net/udp`: its `local_address` column is the address as the kernel
/// holds it (network byte order, printed as a native-endian word) and the
/// port, in hex.
pub fn udp_bound(addr: std::net::SocketAddr) -> bool {
    let std::net::SocketAddr::V4(addr) = addr else {
        return false;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(addr.ip().octets()),
        addr.port()
    );
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|table| {
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
    })
}
