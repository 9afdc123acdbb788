//! Two nodes, one address: the keepalived recipe in `packaging/keepalived`,
//! run for real. Two network namespaces stand for the two nodes, a third for
//! a client; a bridge in the client's namespace joins them. Each node runs the
//! real sniroute (a `tcp` listener to an upstream that answers with the node's
//! name) and keepalived on the shipped config and check script, rendered with
//! the test's addresses. The client connects to the virtual address (VIP) and
//! sees which node answers: node A while it is healthy, node B within 5 s of
//! A's sniroute starting its drain (`/healthz` answering 503), node A again
//! once it is back, and node B within 5 s of A's sniroute being killed.
//!
//! The lab test needs root (network namespaces, keepalived), so a plain
//! `cargo test` ignores it; `.ci/run` runs it as root with
//! `cargo test --tests -- --ignored`. Where namespaces cannot be made or
//! keepalived is missing, it says why and passes, except under `CI=true`,
//! where that is a failure. The other tests here (the check script, the two
//! configs, README's snippet) need neither.

mod common;

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const RECIPE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/keepalived");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// The lab's subnet replaces the documentation subnet of the recipe; the host
/// numbers (.11 node A, .12 node B, .100 the VIP) stay the recipe's.
const RECIPE_SUBNET: &str = "192.0.2.";
const LAB_SUBNET: &str = "10.231.0.";
const CLIENT_IP: &str = "10.231.0.1";
/// The port of each node's sniroute listener, reached through the VIP.
const PORT: u16 = 8443;
/// Each node's upstream, on its own loopback.
const UPSTREAM: &str = "127.0.0.1:7000";
/// The promise: a new connection to the VIP gets an answer from node B within
/// this long of node A's sniroute draining or dying.
const MOVE_WITHIN: Duration = Duration::from_secs(5);
/// Bounds every other wait on keepalived (an election takes about 4 s).
const ELECTION: Duration = Duration::from_secs(20);

fn vip() -> SocketAddr {
    SocketAddr::new(format!("{LAB_SUBNET}100").parse().unwrap(), PORT)
}

fn node_config() -> String {
    format!(
        "[timeouts]\nshutdown = \"60s\"\n\
         [metrics]\nbind = \"127.0.0.1:9100\"\n\
         [[listeners]]\nbind = \"0.0.0.0:{PORT}\"\nprotocol = \"tcp\"\ndefault = \"local\"\n\
         [upstreams.local]\nservers = [\"{UPSTREAM}\"]\n"
    )
}

// ---------------------------------------------------------------------------
// Network namespaces, from threads: a thread that enters a namespace with
// setns(2) takes only itself there, and its sockets stay there.
// ---------------------------------------------------------------------------

fn enter_netns(ns: &str) -> io::Result<()> {
    let file = fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: a valid open descriptor of a network namespace; setns with
    // CLONE_NEWNET changes the calling thread's namespace only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns)?;
            f()
        })
        .join()
        .expect("thread in a namespace panicked")
    })
}

/// One new connection to `addr` from namespace `ns`: the first line the far
/// end sends (the upstream's node name), and the open stream.
fn ask(ns: &str, addr: SocketAddr) -> io::Result<(String, TcpStream)> {
    in_netns(ns, || {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(300))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok((line.trim_end().to_owned(), stream))
    })
}

/// `GET path` on `addr` from namespace `ns`: the status line and the body.
fn http_get(ns: &str, addr: &str, path: &str) -> io::Result<(String, String)> {
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    in_netns(ns, || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or("").to_owned();
        Ok((status, body.to_owned()))
    })
}

/// An upstream in namespace `ns` on [`UPSTREAM`]: greets every connection
/// with `name` and a newline, then holds it until the peer closes (or a
/// minute passes). Runs until `stop` is set.
fn start_upstream(ns: &str, name: &'static str, stop: Arc<AtomicBool>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let listener = enter_netns(&ns)
            .and_then(|()| TcpListener::bind(UPSTREAM))
            .and_then(|l| l.set_nonblocking(true).map(|()| l));
        let listener = match listener {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    std::thread::spawn(move || {
                        stream.set_nonblocking(false)?;
                        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
                        stream.write_all(format!("{name}\n").as_bytes())?;
                        let mut sink = [0u8; 1024];
                        while stream.read(&mut sink)? > 0 {}
                        io::Result::Ok(())
                    });
                }
                // Nothing to accept yet (or a failed accept): look again soon.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    ready_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream thread did not start")
        .expect("the upstream could not listen in its namespace");
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) {
    if let Err(e) = run("ip", args) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------
// The lab: namespaces, processes, and their cleanup.
// ---------------------------------------------------------------------------

struct Node {
    /// What its upstream answers: `node-a`, `node-b`.
    name: &'static str,
    /// `a` or `b`, as in the recipe's file names.
    host: &'static str,
    /// Its own address on `eth0`.
    ip: String,
    ns: String,
    sniroute: Option<Sniroute>,
    keepalived: Option<Child>,
    keepalived_log: Arc<Mutex<String>>,
}

/// Everything the test made. Dropping it (also when a test panics) stops
/// keepalived with SIGTERM, as its service would be, kills what is left in
/// the namespaces, and deletes them.
struct Lab {
    dir: tempfile::TempDir,
    client: String,
    nodes: Vec<Node>,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
}

impl Lab {
    /// Makes the three namespaces, or says why it cannot: the one check of
    /// whether this machine lets the test run at all.
    fn new() -> Result<Lab, String> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need root".into());
        }
        run("keepalived", &["--version"]).map_err(|e| format!("no usable keepalived: {e}"))?;
        run("curl", &["--version"]).map_err(|e| format!("no usable curl: {e}"))?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let prefix = format!("sniroute-failover-{}", std::process::id());
        let mut lab = Lab {
            dir,
            client: format!("{prefix}-client"),
            nodes: Vec::new(),
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        run("ip", &["netns", "add", &lab.client])?;
        lab.namespaces.push(lab.client.clone());
        for (name, host, number) in [("node-a", "a", 11), ("node-b", "b", 12)] {
            let ns = format!("{prefix}-{host}");
            run("ip", &["netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            lab.nodes.push(Node {
                name,
                host,
                ip: format!("{LAB_SUBNET}{number}"),
                ns,
                sniroute: None,
                keepalived: None,
                keepalived_log: Arc::default(),
            });
        }
        Ok(lab)
    }

    /// The bridge, in the client's namespace, with a veth to each node whose
    /// node end is `eth0` (the interface the recipe names).
    fn wire(&self) {
        let c = self.client.as_str();
        ip(&["-n", c, "link", "set", "lo", "up"]);
        ip(&["-n", c, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", c, "link", "set", "br0", "up"]);
        for node in &self.nodes {
            let port = format!("to-{}", node.host);
            ip(&["-n", &node.ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", c, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &node.ns,
            ]);
            ip(&["-n", c, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("{}/24", node.ip);
            ip(&["-n", &node.ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &node.ns, "link", "set", "eth0", "up"]);
        }
    }

    /// The shipped check script, installed as the recipe says: owned by root,
    /// mode 755, in a directory the script user can enter.
    fn install_check_script(&self) -> PathBuf {
        let dir = self.dir.path();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.join("check-sniroute");
        fs::copy(Path::new(RECIPE).join("check-sniroute"), &script).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    fn start_sniroute(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        // The old one (if any) goes first: the new one binds the same ports.
        node.sniroute = None;
        node.sniroute = Some(Sniroute::start_with(
            &node_config(),
            Opts {
                netns: Some(node.ns.clone()),
                ..Opts::default()
            },
        ));
    }

    fn start_keepalived(&mut self, i: usize, script: &Path) {
        let dir = self.dir.path().to_owned();
        let node = &mut self.nodes[i];
        let host = node.host;
        let conf = render(&format!("keepalived-{host}.conf"), script);
        let conf_path = dir.join(format!("keepalived-{host}.conf"));
        fs::write(&conf_path, conf).unwrap();
        let pid = |what: &str| dir.join(format!("{what}-{host}.pid"));
        // One pipe for stdout and stderr: the log in the order keepalived wrote it.
        let (reader, writer) = io::pipe().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns, "keepalived"])
            .args(["--dont-fork", "--log-console", "--no-syslog", "--vrrp"])
            .arg("--use-file")
            .arg(&conf_path)
            .arg("--pid")
            .arg(pid("keepalived"))
            .arg("--vrrp_pid")
            .arg(pid("vrrp"))
            .arg("--checkers_pid")
            .arg(pid("checkers"))
            .stdin(Stdio::null())
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .spawn()
            .expect("keepalived did not start");
        node.keepalived_log = capture(reader);
        node.keepalived = Some(child);
    }

    /// Which nodes hold the VIP on their `eth0` now.
    fn vip_holders(&self) -> Vec<&'static str> {
        let vip = format!("{LAB_SUBNET}100/");
        self.nodes
            .iter()
            .filter(|n| {
                run(
                    "ip",
                    &["-n", &n.ns, "-4", "-o", "addr", "show", "dev", "eth0"],
                )
                .is_ok_and(|out| out.contains(&format!("inet {vip}")))
            })
            .map(|n| n.name)
            .collect()
    }

    /// Everything that tells what happened: for a failure message.
    fn report(&self) -> String {
        let mut out = format!("VIP held by {:?}\n", self.vip_holders());
        for node in &self.nodes {
            let log = node.keepalived_log.lock().unwrap().clone();
            out.push_str(&format!("--- {} keepalived:\n{log}", node.name));
            if let Some(s) = &node.sniroute {
                out.push_str(&format!("--- {} sniroute:\n{}", node.name, s.log()));
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for node in &mut self.nodes {
            if let Some(mut child) = node.keepalived.take() {
                // SIGTERM: keepalived stops its VRRP child and drops the VIP.
                // SIGKILL would leave that child running.
                // SAFETY: kill(2) on the id of a child we have not yet reaped.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let exited = poll(DEADLINE, || child.try_wait().ok().flatten());
                if exited.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            node.sniroute = None; // killed by its own Drop
        }
        // Anything still in a namespace of ours (a keepalived child that
        // outlived its parent, a script) goes too, then the namespaces.
        let me = std::process::id().to_string();
        for ns in &self.namespaces {
            if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
                for pid in pids.split_whitespace().filter(|p| *p != me) {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: kill(2) on a process inside a namespace this
                        // test made.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// A recipe file with the lab's addresses and the installed script's path:
/// each replaced string must be there, so the test follows the recipe and
/// notices when it changes shape.
fn render(file: &str, script: &Path) -> String {
    let text = fs::read_to_string(Path::new(RECIPE).join(file)).unwrap();
    let script = script.to_str().unwrap();
    let mut text = text;
    for (from, to) in [
        ("/etc/keepalived/check-sniroute", script),
        (RECIPE_SUBNET, LAB_SUBNET),
    ] {
        assert!(text.contains(from), "{file} no longer contains {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// Polls new connections from the client to the VIP until one is answered by
/// `want`; how long that took from `since`, and what came before it.
fn wait_for_answer(lab: &Lab, want: &str, since: Instant) -> (Duration, String) {
    let mut before = Vec::new();
    loop {
        match ask(&lab.client, vip()) {
            Ok((who, _)) if who == want => return (since.elapsed(), summarize(&before)),
            Ok((who, _)) => before.push(format!("answer {who:?}")),
            Err(e) => before.push(e.kind().to_string()),
        }
        assert!(
            since.elapsed() < ELECTION,
            "no answer from {want} through the VIP within {ELECTION:?}; before: {}\n{}",
            summarize(&before),
            lab.report()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `["a", "a", "b"]` as `2 × a, b`.
fn summarize(outcomes: &[String]) -> String {
    let mut runs: Vec<(usize, &str)> = Vec::new();
    for o in outcomes {
        match runs.last_mut() {
            Some((n, last)) if *last == o.as_str() => *n += 1,
            _ => runs.push((1, o)),
        }
    }
    let parts: Vec<String> = runs
        .iter()
        .map(|(n, o)| {
            if *n == 1 {
                (*o).to_owned()
            } else {
                format!("{n} × {o}")
            }
        })
        .collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn the_vip_moves_to_node_b_within_5_s_when_node_a_drains_or_dies() {
    let mut lab = match Lab::new() {
        Ok(lab) => lab,
        Err(why) => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI=true and the failover test cannot run: {why}"
            );
            eprintln!("skipped: {why}");
            return;
        }
    };
    lab.wire();
    let script = lab.install_check_script();
    for i in 0..2 {
        let (ns, name) = (lab.nodes[i].ns.clone(), lab.nodes[i].name);
        let own = SocketAddr::new(lab.nodes[i].ip.parse().unwrap(), PORT);
        start_upstream(&ns, name, Arc::clone(&lab.stop));
        lab.start_sniroute(i);
        // Each node answers on its own address, and the check passes there as
        // keepalived will run it: as the recipe's script_user, nobody.
        let (who, _) = ask(&lab.client, own)
            .unwrap_or_else(|e| panic!("{name} not reachable on {own}: {e}\n{}", lab.report()));
        assert_eq!(who, name);
        let check = run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                script.to_str().unwrap(),
                "http://127.0.0.1:9100/healthz",
            ],
        );
        assert!(
            check.is_ok(),
            "the check script fails as nobody on {name} (can nobody enter the temp dir? \
             TMPDIR must be reachable): {check:?}"
        );
    }
    for i in 0..2 {
        lab.start_keepalived(i, &script);
    }

    // Node A (priority 150) wins the election.
    let start = Instant::now();
    poll(ELECTION, || (lab.vip_holders() == ["node-a"]).then_some(()))
        .unwrap_or_else(|| panic!("the VIP did not settle on node A:\n{}", lab.report()));
    let (elected, _) = wait_for_answer(&lab, "node-a", start);
    eprintln!(
        "VIP on node A {} ms after keepalived started",
        elected.as_millis()
    );

    // Node A's sniroute starts its drain: /healthz answers 503 while a
    // connection through the VIP keeps the process alive.
    let (who, held) = ask(&lab.client, vip()).expect("no answer through the VIP");
    assert_eq!(who, "node-a");
    let a = lab.nodes[0].sniroute.as_ref().unwrap();
    a.signal("TERM");
    let since = Instant::now();
    a.wait_log("draining");
    let (moved, before) = wait_for_answer(&lab, "node-b", since);
    eprintln!(
        "VIP moved in {} ms after node A's sniroute began draining (before: {before})",
        moved.as_millis()
    );
    assert!(moved < MOVE_WITHIN, "{moved:?}\n{}", lab.report());
    assert_eq!(lab.vip_holders(), ["node-b"], "{}", lab.report());
    // It was the 503 that moved it: node A's sniroute is still draining.
    let node_a_ns = lab.nodes[0].ns.clone();
    let a = lab.nodes[0].sniroute.as_mut().unwrap();
    assert!(a.child_alive(), "node A's sniroute exited: {}", a.log());
    let (status, body) = http_get(&node_a_ns, "127.0.0.1:9100", "/healthz")
        .expect("node A's /healthz did not answer");
    assert!(status.starts_with("HTTP/1.1 503 "), "{status}");
    assert_eq!(body.trim_end(), "draining");
    // A second SIGTERM ends the drain at once (the held connection's packets
    // go to node B now, so it would not end by itself).
    a.signal("TERM");
    assert!(a.wait_exit(DEADLINE).success());
    drop(held);

    // Node A comes back: two good checks, then it takes the VIP back
    // (preemption, node B keeps serving meanwhile).
    lab.start_sniroute(0);
    let since = Instant::now();
    let (back, before) = wait_for_answer(&lab, "node-a", since);
    eprintln!(
        "VIP back on node A in {} ms after its sniroute restarted (before: {before})",
        back.as_millis()
    );
    poll(DEADLINE, || (lab.vip_holders() == ["node-a"]).then_some(()))
        .unwrap_or_else(|| panic!("node B kept the VIP too:\n{}", lab.report()));

    // Node A's sniroute dies: no /healthz at all.
    lab.nodes[0].sniroute.as_ref().unwrap().signal("KILL");
    let since = Instant::now();
    let (moved, before) = wait_for_answer(&lab, "node-b", since);
    eprintln!(
        "VIP moved in {} ms after node A's sniroute was killed (before: {before})",
        moved.as_millis()
    );
    assert!(moved < MOVE_WITHIN, "{moved:?}\n{}", lab.report());
    assert_eq!(lab.vip_holders(), ["node-b"], "{}", lab.report());
}

// ---------------------------------------------------------------------------
// The recipe's files, without root.
// ---------------------------------------------------------------------------

/// An HTTP server on loopback that gives every request `answer` (nothing at
/// all if it is empty, holding the connection for 5 s).
fn http_server(answer: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                if answer.is_empty() {
                    std::thread::sleep(Duration::from_secs(5));
                } else {
                    let _ = stream.write_all(answer.as_bytes());
                }
            });
        }
    });
    addr
}

/// Runs the shipped check script with `url` as its argument (or none) and
/// `env` as `SNIROUTE_HEALTHZ_URL` (or unset); whether it succeeded.
fn check(url: Option<&str>, env: Option<&str>) -> bool {
    let mut command = Command::new(Path::new(RECIPE).join("check-sniroute"));
    command.args(url).env_remove("SNIROUTE_HEALTHZ_URL");
    if let Some(env) = env {
        command.env("SNIROUTE_HEALTHZ_URL", env);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot run check-sniroute")
        .success()
}

#[test]
fn the_check_script_passes_on_a_200_only() {
    let answer = |status: &str| -> &'static str {
        let body = if status.starts_with("200") {
            "ok"
        } else {
            "draining"
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .leak()
    };
    let ok = format!("http://{}/healthz", http_server(answer("200 OK")));
    assert!(check(Some(&ok), None));
    for status in [
        "503 Service Unavailable",
        "204 No Content",
        "301 Moved Permanently",
        "500 Internal Server Error",
    ] {
        let url = format!("http://{}/healthz", http_server(answer(status)));
        assert!(!check(Some(&url), None), "passed on a {status}");
    }
    // Nothing listening.
    let refused = format!("http://{}/healthz", free_addr("127.0.0.1"));
    assert!(!check(Some(&refused), None));
    // A server that never answers: a failure within curl's one second, so
    // keepalived (interval 1, timeout 2) never has to kill the script.
    let silent = format!("http://{}/healthz", http_server(""));
    let start = Instant::now();
    assert!(!check(Some(&silent), None));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // The URL from the environment, and the argument before it.
    assert!(check(None, Some(&ok)));
    assert!(!check(None, Some(&refused)));
    assert!(check(Some(&ok), Some(&refused)));
    // Without either: the metrics address the configs and README use.
    let script = fs::read_to_string(Path::new(RECIPE).join("check-sniroute")).unwrap();
    assert!(script.contains("${SNIROUTE_HEALTHZ_URL:-http://127.0.0.1:9100/healthz}"));
    assert!(script.starts_with("#!/bin/sh\n"));
}

#[test]
fn the_two_configs_differ_only_in_the_lines_marked_per_node() {
    let a = fs::read_to_string(Path::new(RECIPE).join("keepalived-a.conf")).unwrap();
    let b = fs::read_to_string(Path::new(RECIPE).join("keepalived-b.conf")).unwrap();
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    assert_eq!(a.len(), b.len());
    let mut differ = Vec::new();
    for (i, (la, lb)) in a.iter().zip(&b).enumerate() {
        if la != lb {
            assert!(
                i == 0 || (la.contains("# per node") && lb.contains("# per node")),
                "line {}: {la:?} / {lb:?}",
                i + 1
            );
            differ.push((
                la.split_whitespace().collect::<Vec<_>>(),
                lb.split_whitespace().collect::<Vec<_>>(),
            ));
        }
    }
    let value = |key: &str, side: usize| -> String {
        differ
            .iter()
            .map(|(a, b)| if side == 0 { a } else { b })
            .find(|words| words.first() == Some(&key))
            .map(|words| words[1].to_owned())
            .unwrap_or_else(|| panic!("no per-node {key}"))
    };
    assert_eq!(
        (value("state", 0), value("state", 1)),
        ("MASTER".into(), "BACKUP".into())
    );
    let priority = |side| value("priority", side).parse::<u8>().unwrap();
    assert!(priority(0) > priority(1));
    // Each node's own address is the other's peer (the peer line is the one
    // per-node line that is only an address).
    let peer = |side: usize| -> String {
        differ
            .iter()
            .map(|(a, b)| if side == 0 { a } else { b })
            .find(|words| {
                words
                    .first()
                    .is_some_and(|w| w.parse::<std::net::Ipv4Addr>().is_ok())
            })
            .map(|words| words[0].to_owned())
            .expect("no per-node unicast peer")
    };
    assert_eq!(value("unicast_src_ip", 0), peer(1));
    assert_eq!(value("unicast_src_ip", 1), peer(0));
}

#[test]
fn readme_points_to_the_recipe_and_quotes_its_check() {
    let readme = fs::read_to_string(README).unwrap();
    let section = readme
        .split("\n### Status page and /healthz\n")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("no Status page and /healthz section in README");
    assert!(section.contains("(packaging/keepalived/README.md)"));
    let snippet = section
        .split("vrrp_script chk_sniroute {\n")
        .nth(1)
        .and_then(|s| s.split("\n}").next())
        .expect("no vrrp_script in the section");
    let conf = fs::read_to_string(Path::new(RECIPE).join("keepalived-a.conf")).unwrap();
    let block = conf
        .split("vrrp_script chk_sniroute {\n")
        .nth(1)
        .and_then(|s| s.split("\n}").next())
        .expect("no vrrp_script in keepalived-a.conf");
    let lines = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    };
    assert_eq!(lines(snippet), lines(block));
}
