//! The Debian package's postinst, run from the source tree (where the marker
//! cargo-deb fills in is an inert comment) with stubs first on `PATH`: a
//! `systemctl` that records its arguments and answers from files this test
//! writes, and `getent`/`adduser`, so the system's users are not touched.
//! `kill`, `dpkg --compare-versions` and `sleep` are the real ones.
//!
//! An upgrade of a running service hands it over to the new binary in place:
//! the postinst sends SIGUSR2 to the real sniroute, and this test plays
//! systemd's part (it owns the notification socket and answers `MainPID` from
//! the `MAINPID=` the new process sends). systemd itself is not involved.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const POSTINST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/debian/postinst");
const POSTRM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/debian/postrm");

// The calls the postinst makes, as the stubs record them.
const USER: &str = "getent passwd sniroute";
const ADDUSER: &str =
    "adduser --system --group --quiet --no-create-home --home /nonexistent sniroute";
const VERSION: &str = "systemctl --version";
const IS_ACTIVE: &str = "systemctl is-active --quiet sniroute";
const DAEMON_RELOAD: &str = "systemctl daemon-reload";
const MAIN_PID: &str = "systemctl show --property=MainPID --value sniroute";
const NEEDS_RELOAD: &str = "systemctl show --property=NeedDaemonReload --value sniroute";
const RESTART: &str = "systemctl restart sniroute";

/// A temp dir with `bin/` (the stubs) and the state files they answer from.
struct Stubs {
    dir: tempfile::TempDir,
}

/// What one run of a maintainer script did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
    calls: Vec<String>,
}

impl Stubs {
    /// By default: the user exists, `systemctl --version` says nothing (so the
    /// postinst leaves the reload drop-in alone), the service is inactive.
    fn new() -> Stubs {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().display().to_string();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let stub = |name: &str, body: &str| {
            let path = bin.join(name);
            let text = format!(
                "#!/bin/sh\nstate='{state}'\necho \"{name} $*\" >> \"$state/calls\"\n{body}"
            );
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        stub(
            "systemctl",
            r#"case "$*" in
    --version) cat "$state/version" ;;
    'is-active --quiet sniroute') exit "$(cat "$state/active")" ;;
    'show --property=MainPID --value sniroute') cat "$state/mainpid" ;;
    'show --property=NeedDaemonReload --value sniroute') cat "$state/need-daemon-reload" ;;
    daemon-reload | 'restart sniroute') ;;
    *) echo "stub systemctl: unexpected: $*" >&2; exit 1 ;;
esac
"#,
        );
        stub(
            "getent",
            r#"[ "$*" = "passwd sniroute" ] && [ -e "$state/user" ] || exit 2
echo 'sniroute:x:999:999::/nonexistent:/usr/sbin/nologin'
"#,
        );
        stub("adduser", "");
        let stubs = Stubs { dir };
        stubs.set("user", "");
        stubs.set("version", "");
        stubs.set("active", "3"); // inactive
        stubs.set("mainpid", "0");
        stubs.set("need-daemon-reload", "no");
        stubs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a state file whole (a rename: the stub never reads half of it).
    fn set(&self, name: &str, value: &str) {
        write_atomically(&self.path(name), value);
    }

    fn run(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let _ = std::fs::remove_file(self.path("calls"));
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let start = Instant::now();
        let out = Command::new("sh")
            .arg(script)
            .args(args)
            .env("PATH", path)
            .env_remove("DPKG_ROOT")
            .env_remove("SNIROUTE_UPGRADE_TIMEOUT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: start.elapsed(),
            calls: std::fs::read_to_string(self.path("calls"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }

    fn postinst(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.run(POSTINST, args, env)
    }
}

fn write_atomically(path: &Path, value: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The polls of MainPID after the SIGUSR2: at least one, and nothing else.
fn assert_polls(calls: &[String]) {
    assert!(!calls.is_empty(), "MainPID was never polled");
    assert!(calls.iter().all(|c| c == MAIN_PID), "{calls:#?}");
}

/// `dpkg --compare-versions` decides between SIGUSR2 and a restart.
fn require_dpkg() {
    let found = Command::new("dpkg")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "this test runs the postinst, which needs dpkg");
}

/// Plays systemd's part for one service: owns `$NOTIFY_SOCKET`, records every
/// message, and makes `MAINPID=` the answer of `systemctl show MainPID` (the
/// stub's `mainpid` file). It does not check who sent it, as systemd does with
/// `NotifyAccess=`.
struct Systemd {
    socket: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Systemd {
    fn start(dir: &Path, mainpid: PathBuf) -> Systemd {
        let socket = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&socket).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, done) = (Arc::clone(&messages), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !done.load(Ordering::Relaxed) {
                let Ok(n) = receiver.recv(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                // Recorded first: once MainPID changes, the message is in the log.
                log.lock().unwrap().push(text.clone());
                if let Some(pid) = text.lines().find_map(|l| l.strip_prefix("MAINPID=")) {
                    write_atomically(&mainpid, pid);
                }
            }
        });
        Systemd {
            socket,
            messages,
            stop,
        }
    }

    fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.socket.display().to_string())
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    fn wait_messages(&self, n: usize) -> Vec<String> {
        poll(DEADLINE, || Some(self.messages()).filter(|m| m.len() >= n))
            .unwrap_or_else(|| panic!("wanted {n} notifications: {:?}", self.messages()))
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An upstream that accepts and closes, counting connections.
fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    (addr, accepted)
}

/// sniroute as the package installs it, but in a temp dir: its own copy of the
/// binary (which the "unpack" replaces), a TCP listener to `up`, started the
/// way systemd starts it (with `$NOTIFY_SOCKET`). The stub answers `is-active`
/// and `MainPID` for it.
fn running_service(
    stubs: &Stubs,
    up: SocketAddr,
    args: &[&str],
) -> (Sniroute, Systemd, PathBuf, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("sniroute");
    std::fs::copy(env!("CARGO_BIN_EXE_sniroute"), &exe).unwrap();
    let listen = free_addr("127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!(
            "[timeouts]\nshutdown = \"5s\"\n\
             [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tcp\"\ndefault = \"up\"\n\
             [upstreams.up]\nservers = [\"{up}\"]\n"
        ),
    );
    let systemd = Systemd::start(dir.path(), stubs.path("mainpid"));
    let proxy = Sniroute::launch(
        dir,
        &config,
        Opts {
            exe: Some(exe.clone()),
            env: vec![systemd.env()],
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Opts::default()
        },
    );
    assert_eq!(systemd.wait_messages(1), ["READY=1\n"]);
    stubs.set("mainpid", &proxy.child.id().to_string());
    stubs.set("active", "0");
    (proxy, systemd, exe, listen)
}

/// Replaces the binary the way dpkg unpacks it: a new file renamed over the
/// old one, which the running process keeps executing.
fn unpack(exe: &Path) {
    let new = exe.with_extension("dpkg-new");
    std::fs::copy(env!("CARGO_BIN_EXE_sniroute"), &new).unwrap();
    std::fs::rename(&new, exe).unwrap();
}

#[test]
fn an_upgrade_hands_the_running_service_over_to_the_new_binary_in_place() {
    require_dpkg();
    let stubs = Stubs::new();
    let (up, accepted) = upstream();
    let (mut proxy, systemd, exe, listen) = running_service(&stubs, up, &[]);
    let old = proxy.child.id();
    unpack(&exe);

    // Clients connect all through the postinst: none may be refused.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut connected, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match TcpStream::connect(listen) {
                    Ok(_) => connected += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (connected, failed)
        })
    };
    let run = stubs.postinst(
        &["configure", "0.2.0-1"],
        &[("SNIROUTE_UPGRADE_TIMEOUT", "30")],
    );
    stop.store(true, Ordering::Relaxed);
    let (connected, failed) = clients.join().unwrap();

    let new: i32 = std::fs::read_to_string(stubs.path("mainpid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _new = KillOnDrop(new);
    assert_eq!(run.code, Some(0), "{run:#?}\n{}", proxy.log());
    assert_eq!(
        run.stdout,
        format!("sniroute: upgraded in place: process {old} handed over to {new}\n"),
        "{run:#?}"
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.calls[..5],
        [USER, VERSION, IS_ACTIVE, DAEMON_RELOAD, MAIN_PID]
    );
    assert_polls(&run.calls[5..]);
    assert!(
        failed.is_empty(),
        "{} of {} connects failed: {:?}",
        failed.len(),
        failed.len() + connected,
        &failed[..failed.len().min(5)]
    );
    assert!(connected > 0);

    // The old process drains and leaves; the new one is the service now and
    // was the one to tell systemd so; the old one said nothing more (a
    // STOPPING=1 would stop the service, as NotifyAccess=all takes it).
    proxy.wait_log(&format!("upgrade: process {new} is ready and serves now"));
    let status = proxy.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", proxy.log());
    assert!(alive(new), "{}", proxy.log());
    // Anything the old process said on its way out would be in by now.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        systemd.messages(),
        ["READY=1\n".to_owned(), format!("MAINPID={new}\nREADY=1\n")]
    );
    let before = accepted.load(Ordering::Relaxed);
    TcpStream::connect(listen).expect("the new process serves the listener");
    poll(DEADLINE, || {
        (accepted.load(Ordering::Relaxed) > before).then_some(())
    })
    .expect("the new process routes to the upstream");
}

#[test]
fn a_failed_upgrade_warns_and_leaves_the_old_process_serving() {
    require_dpkg();
    let stubs = Stubs::new();
    let (up, _) = upstream();
    let (mut proxy, systemd, exe, listen) = running_service(&stubs, up, &["--no-watch"]);
    let old = proxy.child.id();
    unpack(&exe);
    // The new binary cannot start on this config.
    std::fs::write(proxy.path(), "[[listeners]]\nbind = 443\n").unwrap();

    let run = stubs.postinst(
        &["configure", "0.2.0-1"],
        &[("SNIROUTE_UPGRADE_TIMEOUT", "2")],
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        format!(
            "sniroute: warning: process {old} did not hand over to the new binary within 2s \
             and keeps serving with the old code; journalctl -u sniroute says why; \
             once fixed, run: systemctl restart sniroute\n"
        )
    );
    assert!(
        run.took >= Duration::from_secs(2) && run.took < Duration::from_secs(15),
        "{:?}",
        run.took
    );
    assert_eq!(
        run.calls[..5],
        [USER, VERSION, IS_ACTIVE, DAEMON_RELOAD, MAIN_PID]
    );
    assert_polls(&run.calls[5..]);

    proxy.wait_log("upgrade failed, still serving");
    assert!(proxy.child_alive(), "{}", proxy.log());
    TcpStream::connect(listen).expect("the old process still serves");
    assert_eq!(systemd.messages(), ["READY=1\n"]);
    assert_eq!(
        std::fs::read_to_string(stubs.path("mainpid")).unwrap(),
        old.to_string()
    );
}

/// A process that SIGUSR2 would kill, as it killed sniroute before 0.2.0.
fn usr2_kills() -> Child {
    Command::new("sleep").arg("60").spawn().unwrap()
}

#[test]
fn an_upgrade_from_before_0_2_0_restarts_the_service_without_a_signal() {
    require_dpkg();
    let stubs = Stubs::new();
    let mut old = usr2_kills();
    stubs.set("active", "0");
    stubs.set("mainpid", &old.id().to_string());

    let run = stubs.postinst(&["configure", "0.1.0-1"], &[]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        run.stdout,
        "sniroute: restarting: no in-place upgrade from 0.1.0-1\n"
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.calls,
        [USER, VERSION, IS_ACTIVE, DAEMON_RELOAD, MAIN_PID, RESTART]
    );
    assert!(
        old.try_wait().unwrap().is_none(),
        "the old process was signalled"
    );

    // A MainPID that is no process (`kill -USR2 0` would signal the
    // postinst's own process group, apt included): a restart too.
    stubs.set("mainpid", "0");
    let run = stubs.postinst(&["configure", "0.2.0-1"], &[]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        run.stdout,
        "sniroute: restarting: no in-place upgrade from 0.2.0-1\n"
    );
    assert_eq!(
        run.calls,
        [USER, VERSION, IS_ACTIVE, DAEMON_RELOAD, MAIN_PID, RESTART]
    );
    let _ = old.kill();
    let _ = old.wait();
}

#[test]
fn an_upgrade_leaves_a_stopped_service_stopped() {
    let stubs = Stubs::new();
    let run = stubs.postinst(&["configure", "0.2.0-1"], &[]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    assert_eq!(run.calls, [USER, VERSION, IS_ACTIVE, NEEDS_RELOAD]);

    // Stopped but loaded with the old unit: systemd reads the new one, for the
    // next start; nothing starts it.
    stubs.set("need-daemon-reload", "yes");
    let run = stubs.postinst(&["configure", "0.2.0-1"], &[]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        run.calls,
        [USER, VERSION, IS_ACTIVE, NEEDS_RELOAD, DAEMON_RELOAD]
    );
}

#[test]
fn a_fresh_install_creates_the_user_and_starts_nothing() {
    let stubs = Stubs::new();
    std::fs::remove_file(stubs.path("user")).unwrap();
    // Even were something called sniroute running, a first install leaves it.
    stubs.set("active", "0");
    let run = stubs.postinst(&["configure", ""], &[]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    assert_eq!(run.calls, [USER, ADDUSER, VERSION]);
}

#[test]
fn the_reload_drop_in_follows_the_systemd_version_under_dpkg_root() {
    let stubs = Stubs::new();
    let root = tempfile::tempdir().unwrap();
    let dpkg_root = root.path().to_str().unwrap();
    let dir = root.path().join("etc/systemd/system/sniroute.service.d");
    let dropin = dir.join("reload-before-systemd-253.conf");
    // Another root's services are not ours: a running one here is left alone.
    stubs.set("active", "0");
    stubs.set("mainpid", "1");

    stubs.set("version", "systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT\n");
    let run = stubs.postinst(&["configure", "0.2.0-1"], &[("DPKG_ROOT", dpkg_root)]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.calls, [USER, VERSION]);
    assert_eq!(
        std::fs::read_to_string(&dropin).unwrap(),
        "# Written by the sniroute package because systemd 252 predates\n\
         # Type=notify-reload; removed when the package is purged.\n\
         [Service]\n\
         ExecReload=/bin/kill -HUP $MAINPID\n"
    );

    stubs.set("version", "systemd 255 (255.4-1)\n");
    let run = stubs.postinst(&["configure", "0.2.0-1"], &[("DPKG_ROOT", dpkg_root)]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(!dir.exists(), "the drop-in stayed on systemd 255");

    stubs.set("version", "systemd 252 (252.39-1~deb12u2)\n");
    stubs.postinst(&["configure", "0.2.0-1"], &[("DPKG_ROOT", dpkg_root)]);
    assert!(dropin.exists());
    let run = stubs.run(POSTRM, &["purge"], &[("DPKG_ROOT", dpkg_root)]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.calls.is_empty(), "{run:#?}");
    assert!(!dir.exists(), "purge left the drop-in");
}

#[test]
fn each_maintainer_script_names_the_generated_snippets_marker_once() {
    // cargo-deb replaces the marker wherever it appears, comments included.
    for script in [POSTINST, POSTRM] {
        let text = std::fs::read_to_string(script).unwrap();
        assert_eq!(text.matches("#DEBHELPER#").count(), 1, "{script}");
        assert!(text.lines().any(|l| l == "#DEBHELPER#"), "{script}");
    }
}
