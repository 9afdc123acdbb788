//! Upgrades without refusing a connection, through the real binary: SIGUSR2
//! hands the listening sockets to a new process (which may fail: then the old
//! one serves on), and under systemd SIGTERM hands them to the fd store, from
//! which the next start takes them. Clients keep connecting all along and
//! every byte they get back is checked.

mod common;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A plain TCP listener on `listen` to the echo server `up`, metrics on `metrics`.
fn config(listen: SocketAddr, metrics: SocketAddr, up: SocketAddr) -> String {
    format!(
        "[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tcp\"\ndefault = \"up\"\n\
         [upstreams.up]\nservers = [\"{up}\"]\n"
    )
}

/// A temp dir holding a copy of the binary (which a test may replace, as a
/// package upgrade does) and the config.
fn install(config: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("sniroute");
    std::fs::copy(env!("CARGO_BIN_EXE_sniroute"), &exe).unwrap();
    let path = write_config(dir.path(), config);
    (dir, exe, path)
}

/// Replaces the file at `path` the way package managers do: a new file renamed
/// over it (writing into a running binary is refused with ETXTBSY).
fn replace(path: &Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let new = path.with_extension("new");
    std::fs::write(&new, bytes).unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&new, path).unwrap();
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    attempted: AtomicUsize,
    completed: AtomicUsize,
    refused: AtomicUsize,
    reset: AtomicUsize,
    /// Answers that differ from what was sent, or end early.
    corrupted: AtomicUsize,
    /// Anything else (a timeout); each is described in `failures`.
    other: AtomicUsize,
    bytes_verified: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn failed(&self, counter: &AtomicUsize, what: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(what);
        }
    }

    fn record(&self, n: usize, result: std::io::Result<()>) {
        match result {
            Ok(()) => {
                self.completed.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                let counter = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => &self.refused,
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                        &self.reset
                    }
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                        &self.corrupted
                    }
                    _ => &self.other,
                };
                self.failed(counter, format!("connection {n}: {e}"));
            }
        }
    }

    fn assert_clean(&self, what: &str) {
        let get = |c: &AtomicUsize| c.load(Ordering::SeqCst);
        eprintln!(
            "{what}: {} connections attempted, {} completed, {} refused, {} reset, {} corrupted, {} other; {} bytes verified",
            get(&self.attempted),
            get(&self.completed),
            get(&self.refused),
            get(&self.reset),
            get(&self.corrupted),
            get(&self.other),
            get(&self.bytes_verified),
        );
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "{what}: {failures:#?}");
        assert_eq!(get(&self.attempted), get(&self.completed), "{what}");
    }
}

/// The byte at `offset` of stream `seed`: any lost, doubled or swapped byte
/// shows.
fn pattern(seed: usize, offset: usize) -> u8 {
    (offset.wrapping_mul(31).wrapping_add(seed) % 251) as u8
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// One short exchange: send `size` bytes, half-close, expect them back and
/// the echo server's `bye`.
async fn exchange(
    addr: SocketAddr,
    seed: usize,
    size: usize,
    tally: &Tally,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let sent: Vec<u8> = (0..size).map(|i| pattern(seed, i)).collect();
    stream.write_all(&sent).await?;
    stream.shutdown().await?;
    let mut got = Vec::with_capacity(size + 3);
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    let want = [sent.as_slice(), b"bye"].concat();
    if got != want {
        return Err(invalid(format!(
            "{} bytes back, {} expected, or different",
            got.len(),
            want.len()
        )));
    }
    tally.bytes_verified.fetch_add(size, Ordering::SeqCst);
    Ok(())
}

/// A long transfer: `total` bytes streamed at about 4 MiB/s while the echo
/// comes back, each byte checked; then the half-close and `bye`.
async fn transfer(
    addr: SocketAddr,
    seed: usize,
    total: usize,
    tally: Arc<Tally>,
) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let stream = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut offset = 0;
        while offset < total {
            let n = CHUNK.min(total - offset);
            let chunk: Vec<u8> = (offset..offset + n).map(|i| pattern(seed, i)).collect();
            wr.write_all(&chunk).await?;
            offset += n;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < total {
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("transfer stalled for 10 s"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("transfer ended after {offset} of {total} bytes"),
            ));
        }
        let n = n.min(total - offset);
        if let Some(i) = (0..n).find(|&i| buf[i] != pattern(seed, offset + i)) {
            return Err(invalid(format!(
                "byte {} of the transfer differs",
                offset + i
            )));
        }
        offset += n;
        tally.bytes_verified.fetch_add(n, Ordering::SeqCst);
    }
    let _wr = writer.await.map_err(std::io::Error::other)??;
    let mut tail = Vec::new();
    rd.read_to_end(&mut tail).await?;
    if tail != b"bye" {
        return Err(invalid(format!(
            "the transfer ended with {tail:?}, not bye"
        )));
    }
    Ok(())
}

/// Clients through the proxy until stopped: a new connection every 2 ms from
/// each of two loops, plus `transfers` long transfers started at once.
struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, transfers: usize) -> Load {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..transfers {
            let tally = Arc::clone(&tally);
            tasks.push(tokio::spawn(async move {
                let n = tally.attempted.fetch_add(1, Ordering::SeqCst);
                let result = transfer(addr, 1000 + t, 16 << 20, Arc::clone(&tally)).await;
                tally.record(n, result);
            }));
        }
        for l in 0..2 {
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                // Bounded: 5,000 exchanges (a minute at most) even if never stopped.
                for i in 0..5_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let n = tally.attempted.fetch_add(1, Ordering::SeqCst);
                    let result = exchange(addr, l * 10_000 + i, 2048, &tally).await;
                    tally.record(n, result);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Load { tally, stop, tasks }
    }

    fn completed(&self) -> usize {
        self.tally.completed.load(Ordering::SeqCst)
    }

    /// Waits until `more` further exchanges completed.
    async fn more(&self, more: usize) {
        let target = self.completed() + more;
        eventually(&format!("{more} more completed connections"), || {
            self.completed() >= target
        })
        .await;
    }

    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.tally
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr2_hands_over_to_the_new_binary_refusing_and_resetting_nothing() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let (dir, exe, path) = install(&config(listen, metrics, up.addr));
    let mut proxy = Sniroute::launch(
        dir,
        &path,
        Opts {
            exe: Some(exe),
            ..Opts::default()
        },
    );
    let old = proxy.child.id() as i32;
    let load = Load::start(listen, 4);
    load.more(50).await;

    let started = Instant::now();
    proxy.signal("USR2");
    let new = successor(&proxy);
    let _new = KillOnDrop(new);
    let handover = started.elapsed();
    assert_ne!(new, old);
    load.more(200).await;
    // The old process drains: the long transfers are its, and finish.
    let status = proxy.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "old process: {status}");
    load.more(100).await;
    let tally = load.finish().await;
    tally.assert_clean("upgrade");
    assert!(alive(new), "the new process is gone; log:\n{}", proxy.log());
    eprintln!("upgrade: the new process was ready {handover:?} after SIGUSR2");

    let log = proxy.log();
    assert!(
        log.contains("took over listening sockets from the previous process"),
        "{log}"
    );
    assert!(!log.contains("STOPPING"), "{log}");
    // The new process serves the metrics endpoint too.
    let text = get_metrics(metrics);
    assert!(text.contains("sniroute_connections"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_process_serving() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let text = config(listen, metrics, up.addr);
    let (dir, exe, path) = install(&text);
    let mut proxy = Sniroute::launch(
        dir,
        &path,
        Opts {
            exe: Some(exe.clone()),
            // The bad config below must reach only the new process.
            args: vec!["--no-watch".into()],
            ..Opts::default()
        },
    );
    let good = std::fs::read(&exe).unwrap();
    let load = Load::start(listen, 2);
    load.more(30).await;
    let failures = |p: &Sniroute| p.log().matches("upgrade failed, still serving").count();

    // 1. The binary is gone.
    std::fs::remove_file(&exe).unwrap();
    proxy.signal("USR2");
    eventually("the first failure", || failures(&proxy) == 1).await;
    assert!(proxy.log().contains("cannot start"), "{}", proxy.log());
    load.more(30).await;

    // 2. The binary is garbage (random bytes, executable).
    let garbage: Vec<u8> = (0..4096).map(|i| pattern(7, i * 7919)).collect();
    replace(&exe, &garbage, 0o755);
    proxy.signal("USR2");
    eventually("the second failure", || failures(&proxy) == 2).await;
    load.more(30).await;

    // 3. The binary is good but the config is not.
    replace(&exe, &good, 0o755);
    std::fs::write(&path, "[[listeners]]\nbind = \"not an address\"\n").unwrap();
    proxy.signal("USR2");
    eventually("the third failure", || failures(&proxy) == 3).await;
    let log = proxy.log();
    assert!(
        log.contains("exited with status 1 before it was ready"),
        "{log}"
    );
    assert!(
        log.contains("sniroute: error:") && log.contains("missing field `protocol`"),
        "the new process says why:\n{log}"
    );
    load.more(30).await;

    assert!(proxy.child_alive(), "{}", proxy.log());
    assert_eq!(
        std::process::Command::new("curl")
            .args(["-fsS", &format!("http://{metrics}/healthz")])
            .output()
            .unwrap()
            .stdout,
        b"ok\n"
    );

    // 4. Fixed: the next SIGUSR2 upgrades.
    std::fs::write(&path, &text).unwrap();
    proxy.signal("USR2");
    let _new = KillOnDrop(successor(&proxy));
    proxy.wait_exit(Duration::from_secs(30));
    load.more(50).await;
    load.finish()
        .await
        .assert_clean("failed upgrades, then a good one");
}

/// A stand-in for systemd's notification socket: records every message and
/// the descriptors that come with it.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notify { socket, path }
    }

    fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.path.display().to_string())
    }

    /// The next message and its descriptors, within 10 s.
    fn recv(&self) -> (String, Vec<OwnedFd>) {
        self.socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut data = [0u8; 4096];
        let mut control = [0u8; 256];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr points at live buffers of the stated sizes.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        assert!(
            n >= 0,
            "no notification: {}",
            std::io::Error::last_os_error()
        );
        let mut fds = Vec::new();
        // SAFETY: walking the control messages recvmsg filled in.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<RawFd>();
                    let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(first.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        (
            String::from_utf8_lossy(&data[..n as usize]).into_owned(),
            fds,
        )
    }

    /// Messages until one contains `last` (included).
    fn until(&self, last: &str) -> Vec<(String, Vec<OwnedFd>)> {
        let mut messages = Vec::new();
        loop {
            let message = self.recv();
            let done = message.0.contains(last);
            messages.push(message);
            if done || messages.len() > 50 {
                return messages;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_new_process_becomes_main_and_the_old_one_never_says_stopping() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let (dir, exe, path) = install(&config(listen, metrics, up.addr));
    let notify = Notify::bind(dir.path());
    let mut proxy = Sniroute::launch(
        dir,
        &path,
        Opts {
            exe: Some(exe),
            env: vec![notify.env()],
            ..Opts::default()
        },
    );
    let texts = |m: Vec<(String, Vec<OwnedFd>)>| m.into_iter().map(|(t, _)| t).collect::<Vec<_>>();
    assert_eq!(texts(notify.until("READY=1")), ["READY=1\n"]);

    proxy.signal("USR2");
    let new = successor(&proxy);
    let _new = KillOnDrop(new);
    assert_eq!(
        texts(notify.until("READY=1")),
        [format!("MAINPID={new}\nREADY=1\n")]
    );
    proxy.wait_exit(Duration::from_secs(30));
    // Nothing more from either: the old process left without STOPPING=1.
    notify
        .socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut rest = [0u8; 512];
    let more = notify.socket.recv(&mut rest);
    assert!(
        more.is_err(),
        "unexpected: {:?}",
        more.map(|n| String::from_utf8_lossy(&rest[..n]).into_owned())
    );
    let answer = tokio::time::timeout(DEADLINE, async {
        let tally = Tally::default();
        exchange(listen, 1, 100, &tally).await
    })
    .await
    .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
}

/// Nothing listens on `addr` any more: the kernel refuses.
async fn assert_refused(addr: SocketAddr) {
    let connect = TcpStream::connect(addr).await;
    assert_eq!(
        connect.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "{addr} must be closed"
    );
}

/// Duplicates `fd` to a number above the ones the child gets them at.
fn high(fd: &impl AsRawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    assert!(new >= 0, "{}", std::io::Error::last_os_error());
    unsafe { OwnedFd::from_raw_fd(new) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_sigterm_stores_the_sockets_and_the_next_start_takes_them_back() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    // A QUIC listener on the same port: its UDP socket is stored too.
    let quic =
        format!("[[listeners]]\nbind = \"{listen}\"\nprotocol = \"quic\"\ndefault = \"up\"\n");
    let text = config(listen, metrics, up.addr)
        .replace("[upstreams.up]", &format!("{quic}[upstreams.up]"));
    let (dir, _exe, path) = install(&text);
    let notify = Notify::bind(dir.path());
    let fdstore = ("FDSTORE".to_string(), "16".to_string());
    let mut first = Sniroute::launch(
        dir,
        &path,
        Opts {
            env: vec![notify.env(), fdstore.clone()],
            ..Opts::default()
        },
    );
    notify.until("READY=1");

    first.signal("TERM");
    let messages = notify.until("STOPPING=1");
    first.wait_exit(Duration::from_secs(30));
    let mut stored: Vec<(String, OwnedFd)> = Vec::new();
    for (text, mut fds) in messages {
        if text.contains("FDSTORE=1") {
            assert_eq!(fds.len(), 1, "{text}");
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or_else(|| panic!("no FDNAME in {text:?}"))
                .to_owned();
            stored.push((name, fds.remove(0)));
        }
    }
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    let mut names: Vec<String> = stored.iter().map(|(n, _)| n.clone()).collect();
    let mut want = vec![
        format!("tcp-{listen}").replace(':', "_"),
        format!("tcp-{metrics}").replace(':', "_"),
        format!("udp-{listen}").replace(':', "_"),
    ];
    want.sort();
    assert_eq!(names, want);

    // No process runs now, yet a client connects: it waits in the queue of
    // the socket systemd holds.
    let mut waiting = TcpStream::connect(listen)
        .await
        .expect("queued, not refused");
    waiting.write_all(b"queued").await.unwrap();
    waiting.shutdown().await.unwrap();

    // A socket the next config does not bind: it must be closed and leave the store.
    let stale = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stale_addr = stale.local_addr().unwrap();
    let stale_name = format!("tcp-{stale_addr}").replace(':', "_");
    names.push(stale_name.clone());
    let mut sources: Vec<OwnedFd> = stored.iter().map(|(_, fd)| high(fd)).collect();
    sources.push(high(&stale));
    drop(stale);
    drop(stored);

    // As systemd starts the service: the descriptors at 3, 4, 5, their count
    // and names in LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID set to the
    // service's pid, which `exec` keeps.
    let raw: Vec<RawFd> = sources.iter().map(AsRawFd::as_raw_fd).collect();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_sniroute"))
        .arg("--config")
        .arg(&path)
        .env("LISTEN_FDS", raw.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(notify.env().0, notify.env().1)
        .env(fdstore.0, fdstore.1)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only dup2 between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    drop(sources);
    let second = Sniroute::spawned(child, tempfile::tempdir().unwrap());
    let log = second.wait_log("took over listening sockets");
    assert!(log.contains(&format!("udp/{listen}")), "{log}");
    assert!(
        log.contains(&format!(
            "closing a handed-over socket the config no longer binds listener={stale_addr}"
        )),
        "{log}"
    );

    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, waiting.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"queuedbye");

    let texts: Vec<String> = notify
        .until("READY=1")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(
        texts,
        [
            format!("FDSTOREREMOVE=1\nFDNAME={stale_name}\n"),
            "READY=1\n".to_string()
        ]
    );
    assert_refused(stale_addr).await;
    let tally = Tally::default();
    exchange(listen, 2, 1000, &tally).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_bare_sigterm_closes_the_sockets() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut proxy = Sniroute::start(&config(listen, metrics, up.addr));
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(30));
    assert_refused(listen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fdstore_0_keeps_the_sockets_out_of_the_fd_store() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let (dir, _exe, path) = install(&config(listen, metrics, up.addr));
    let notify = Notify::bind(dir.path());
    let mut proxy = Sniroute::launch(
        dir,
        &path,
        Opts {
            env: vec![notify.env(), ("FDSTORE".into(), "0".into())],
            ..Opts::default()
        },
    );
    notify.until("READY=1");
    proxy.signal("TERM");
    let messages = notify.until("STOPPING=1");
    let texts: Vec<&str> = messages.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, ["STOPPING=1\n"]);
    proxy.wait_exit(Duration::from_secs(30));
    assert_refused(listen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_that_are_not_listening_sockets_are_left_alone() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start_with(
        &config(listen, metrics, up.addr),
        Opts {
            env: vec![("SNIROUTE_LISTEN_FDS".into(), "2,abc,999".into())],
            ..Opts::default()
        },
    );
    let log = proxy.log();
    for warning in [
        "SNIROUTE_LISTEN_FDS: descriptor 2 is not an open socket; ignored",
        "SNIROUTE_LISTEN_FDS: `abc` is not a descriptor number; ignored",
        "SNIROUTE_LISTEN_FDS: descriptor 999 is not an open socket; ignored",
    ] {
        assert!(log.contains(warning), "want {warning:?} in:\n{log}");
    }
    assert!(!log.contains("took over"), "{log}");
    exchange(listen, 3, 100, &Tally::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_upgrade_kills_the_new_process_before_it_serves() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Echo).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let (dir, exe, path) = install(&config(listen, metrics, up.addr));
    let mut proxy = Sniroute::launch(
        dir,
        &path,
        Opts {
            exe: Some(exe.clone()),
            ..Opts::default()
        },
    );
    // A "new binary" that never gets ready (and, being one process, holds the
    // handed-over sockets as sniroute would).
    replace(&exe, b"#!/bin/sh\nexec sleep 20\n", 0o755);
    proxy.signal("USR2");
    let log = proxy.wait_log("upgrade: started the new process");
    let pid: i32 = log
        .split("waiting until it is ready pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in:\n{log}"));
    let _starting = KillOnDrop(pid);
    assert!(alive(pid));
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    assert!(
        poll(DEADLINE, || (!alive(pid)).then_some(())).is_some(),
        "the new process {pid} outlived the one that started it"
    );
    assert_refused(listen).await;
}
