//! System calls of a proxy during a window, counted by the kernel's syscall
//! tracepoints through `perf stat`: how often it woke up (returns from
//! epoll_wait, epoll_pwait, epoll_pwait2), how many splices and reads it made
//! and how many of them moved bytes, and all its system calls.
//!
//! Counting, not tracing: the kernel adds one to a counter per event, with
//! nothing copied out, and `perf stat` attaches to the proxy's running
//! processes (`-p`), starting disabled and switched on and off through its
//! control FIFO so the window is exactly the load's. Still, enabled syscall
//! tracepoints slow every system call a little, so the cases count in a
//! window of their own, after the one their CPU time is read in.
//!
//! perf only counts how many calls returned, not how many bytes: a tracepoint
//! filter (`ret > 0`) counts the calls that moved something, and bytes per
//! call come from the bytes the load generator saw cross the proxy (each byte
//! goes through one splice into a pipe and one out of it, or one read).
//!
//! Needs `perf` (Debian: linux-perf) and the right to trace the proxy (root,
//! or `kernel.perf_event_paranoid` at -1); without them the rows that need it
//! are skipped with the reason printed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What is counted, in this order: (name in the results, tracepoint, filter).
const EVENTS: &[(&str, &str, Option<&str>)] = &[
    ("epoll", "syscalls:sys_exit_epoll_wait", None),
    ("epoll", "syscalls:sys_exit_epoll_pwait", None),
    ("epoll", "syscalls:sys_exit_epoll_pwait2", None),
    ("splice", "syscalls:sys_exit_splice", None),
    ("splice_ok", "syscalls:sys_exit_splice", Some("ret > 0")),
    ("read", "syscalls:sys_exit_read", None),
    ("read_ok", "syscalls:sys_exit_read", Some("ret > 0")),
    ("read", "syscalls:sys_exit_readv", None),
    ("read_ok", "syscalls:sys_exit_readv", Some("ret > 0")),
    ("read", "syscalls:sys_exit_recvfrom", None),
    ("read_ok", "syscalls:sys_exit_recvfrom", Some("ret > 0")),
    ("read", "syscalls:sys_exit_recvmsg", None),
    ("read_ok", "syscalls:sys_exit_recvmsg", Some("ret > 0")),
    ("all", "raw_syscalls:sys_exit", None),
];

/// Counts of one window, summed over the proxy's processes and threads.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Returns from epoll_wait, epoll_pwait and epoll_pwait2: wake-ups.
    pub epoll: u64,
    pub splice: u64,
    /// Splices that moved at least one byte.
    pub splice_ok: u64,
    /// read, readv, recvfrom (what recv is) and recvmsg.
    pub read: u64,
    pub read_ok: u64,
    /// Every system call.
    pub all: u64,
}

/// `perf stat` on this machine, with the events it accepted.
#[derive(Debug, Clone)]
pub struct Perf {
    events: Vec<(&'static str, &'static str, Option<&'static str>)>,
}

fn event_args(events: &[(&str, &str, Option<&str>)]) -> Vec<String> {
    let mut args = Vec::new();
    for (_, event, filter) in events {
        args.push("-e".to_owned());
        args.push((*event).to_owned());
        if let Some(f) = filter {
            args.push("--filter".to_owned());
            args.push((*f).to_owned());
        }
    }
    args
}

impl Perf {
    /// Tries each event once on a short command; the reason when nothing the
    /// wake-up count needs works. Older kernels lack epoll_pwait2: the events
    /// this kernel lacks are left out (the call does not exist there either).
    pub fn probe() -> Result<Perf, String> {
        if !crate::on_path("perf") {
            return Err("perf is not installed (Debian: linux-perf)".to_owned());
        }
        let mut events = Vec::new();
        let mut last_error = String::new();
        for &event in EVENTS {
            let out = Command::new("perf")
                .args(["stat", "-x,"])
                .args(event_args(&[event]))
                .args(["--", "true"])
                .output()
                .map_err(|e| format!("cannot run perf: {e}"))?;
            if out.status.success() {
                events.push(event);
            } else {
                last_error = String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_owned();
            }
        }
        let has = |name: &str| events.iter().any(|e| e.0 == name);
        if !has("epoll") || !has("splice_ok") || !has("read_ok") {
            return Err(format!(
                "perf cannot count the syscall tracepoints here ({last_error}); it needs \
                 root or kernel.perf_event_paranoid=-1, and tracefs"
            ));
        }
        Ok(Perf { events })
    }

    /// Attaches to `pids`, counting nothing until [`Window::enable`].
    pub async fn attach(&self, pids: &[u32]) -> Result<Window, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let (ctl, ack, out) = (
            dir.path().join("ctl"),
            dir.path().join("ack"),
            dir.path().join("counts.csv"),
        );
        for fifo in [&ctl, &ack] {
            let made = Command::new("mkfifo")
                .arg(fifo)
                .status()
                .is_ok_and(|s| s.success());
            if !made {
                return Err("mkfifo failed".to_owned());
            }
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["stat", "-x,", "-D", "-1"])
            .arg("--control")
            .arg(format!("fifo:{},{}", ctl.display(), ack.display()))
            .arg("-o")
            .arg(&out)
            .args(event_args(&self.events))
            .args(["-p", &pids.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run perf: {e}"))?;
        // Read and write on both, so neither open waits for perf's end.
        let open = |p: &PathBuf| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| format!("open {}: {e}", p.display()))
        };
        let mut window = Window {
            child: Some(child),
            ctl: open(&ctl)?,
            ack: Some(open(&ack)?),
            out,
            events: self.events.clone(),
            _dir: dir,
        };
        // An answer to this proves perf is attached and listening.
        window.command("disable").await?;
        Ok(window)
    }
}

/// A `perf stat` attached to a proxy; killed if dropped before [`Window::finish`].
pub struct Window {
    child: Option<Child>,
    ctl: std::fs::File,
    ack: Option<std::fs::File>,
    out: PathBuf,
    events: Vec<(&'static str, &'static str, Option<&'static str>)>,
    _dir: tempfile::TempDir,
}

impl Window {
    /// Sends one control command and waits (at most 5 s) for perf's `ack`.
    async fn command(&mut self, command: &str) -> Result<(), String> {
        self.ctl
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| format!("perf control: {e}"))?;
        let mut ack = self.ack.take().ok_or("perf control: no ack channel")?;
        let waited = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || {
                let mut buf = [0u8; 5];
                let n = ack.read(&mut buf);
                (ack, n.map(|n| buf[..n].to_vec()))
            }),
        )
        .await;
        match waited {
            Ok(Ok((ack, Ok(answer)))) if answer.starts_with(b"ack") => {
                self.ack = Some(ack);
                Ok(())
            }
            _ => Err(format!("perf did not acknowledge `{command}`")),
        }
    }

    pub async fn enable(&mut self) -> Result<(), String> {
        self.command("enable").await
    }

    pub async fn disable(&mut self) -> Result<(), String> {
        self.command("disable").await
    }

    /// Stops perf (SIGINT makes it write its counts) and reads the counts.
    pub async fn finish(mut self) -> Result<Counts, String> {
        let mut child = self.child.take().ok_or("perf already finished")?;
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("perf did not stop on SIGINT".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&self.out).map_err(|e| format!("perf output: {e}"))?;
        parse(&text, &self.events)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `perf stat -x,` output: one `count,unit,event,...` line per event, in the
/// order they were given; `<not counted>` (the proxy never ran while enabled)
/// is zero.
fn parse(text: &str, events: &[(&'static str, &str, Option<&str>)]) -> Result<Counts, String> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.split(',').nth(2).is_some())
        .collect();
    if lines.len() != events.len() {
        return Err(format!(
            "perf printed {} counts for {} events:\n{text}",
            lines.len(),
            events.len()
        ));
    }
    let mut counts = Counts::default();
    for (line, (name, event, _)) in lines.iter().zip(events) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields[2] != *event {
            return Err(format!(
                "perf printed {} where {event} was expected",
                fields[2]
            ));
        }
        let n: u64 = if fields[0].starts_with('<') {
            0
        } else {
            fields[0]
                .parse()
                .map_err(|_| format!("perf printed a count of {:?}", fields[0]))?
        };
        let slot = match *name {
            "epoll" => &mut counts.epoll,
            "splice" => &mut counts.splice,
            "splice_ok" => &mut counts.splice_ok,
            "read" => &mut counts.read,
            "read_ok" => &mut counts.read_ok,
            _ => &mut counts.all,
        };
        *slot += n;
    }
    Ok(counts)
}
