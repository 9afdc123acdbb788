//! The contenders: sniroute, nginx (stream, `ssl_preread` + `map` + `upstream
//! least_conn`), HAProxy (`mode tcp`, `req_ssl_sni`, `balance leastconn`), and
//! the direct path (no proxy) as the baseline.
//!
//! Each proxy gets the same job, written in its own config language: one TLS
//! listener on 127.0.0.1, routes by SNI (the two names the load uses, a
//! wildcard and [`FILLER_ROUTES`] more exact names so the table is not
//! trivially small), two least_conn pools of two servers each, no access log,
//! 16 KiB relay buffers (the default of all three), and room for the idle
//! connections. Each runs one worker (sniroute: one tokio worker thread through
//! `TOKIO_WORKER_THREADS`; nginx: `worker_processes 1`; HAProxy: `nbthread 1`)
//! pinned to the proxy core with `taskset`.
//!
//! The QUIC case ([`Job::Quic`]) gives each proxy another config: one UDP
//! listener on 127.0.0.1 in front of the one QUIC server. sniroute routes
//! [`QUIC_NAME`](crate::quic::QUIC_NAME) by the SNI of the Initial packets
//! (`protocol = "quic"`); nginx forwards every datagram to the server
//! (`listen ... udp`: it cannot read the SNI of QUIC), so it shows the cost of
//! forwarding alone. HAProxy's community edition has no UDP proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;

/// SNI of the TLS-handshake cases; its pool is the TLS server.
pub const TLS_NAME: &str = "app.bench.example.com";
/// Exact names added to every route table besides the two that carry load.
pub const FILLER_ROUTES: usize = 100;
/// Where Debian's libnginx-mod-stream puts the stream module.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Direct,
    Sniroute,
    Nginx,
    Haproxy,
}

impl Peer {
    pub const ALL: [Peer; 4] = [Peer::Direct, Peer::Sniroute, Peer::Nginx, Peer::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Sniroute => "sniroute",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
        }
    }
}

/// What every proxy routes to, and how many connections it must hold.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tls_servers: [SocketAddr; 2],
    pub replay_servers: [SocketAddr; 2],
    /// The route-table case's probe servers, A and B (not in the configs of
    /// the other cases).
    pub probe_servers: [SocketAddr; 2],
    /// SNI of the replayed hello.
    pub replay_name: String,
    /// Client connections each proxy must accept at once.
    pub max_connections: u64,
    /// Soft RLIMIT_NOFILE the proxies inherit.
    pub nofile: u64,
    /// `taskset -c` argument for the proxy, if pinning.
    pub proxy_cpu: Option<String>,
    /// The QUIC server (UDP) of the QUIC case.
    pub quic_server: SocketAddr,
    /// nginx forwards half-closes (`proxy_half_close on`) as sniroute and
    /// HAProxy do, instead of closing both sides at the first EOF (its
    /// default). A diagnostic: `SNIROUTE_BENCH_NGINX_HALF_CLOSE=1`.
    pub nginx_half_close: bool,
}

/// Which config a proxy runs: the TCP cases' (a TLS listener routing by SNI)
/// or the QUIC case's (a UDP listener in front of the QUIC server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Tcp,
    Quic,
}

/// A running proxy.
pub struct Running {
    pub peer: Peer,
    pub listen: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory its config is in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The proxy's log so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// SIGTERM (nginx and HAProxy stop their workers on it; SIGKILL would leak
    /// nginx's), then SIGKILL if it is still there after 5 s.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("{} did not exit on SIGTERM; killing it", self.peer.name());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Normally `stop` has reaped it; this covers a panic in between.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            std::thread::sleep(Duration::from_millis(300));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port on 127.0.0.1")
}

fn filler_names() -> impl Iterator<Item = String> {
    (0..FILLER_ROUTES).map(|i| format!("svc{i}.filler.example.com"))
}

pub fn sniroute_config(plan: &Plan, listen: SocketAddr) -> String {
    let mut routes = format!(
        "\"{TLS_NAME}\" = \"tls_pool\"\n\"{}\" = \"replay_pool\"\n\"*.apps.example.com\" = \"tls_pool\"\n",
        plan.replay_name
    );
    for name in filler_names() {
        routes.push_str(&format!("\"{name}\" = \"tls_pool\"\n"));
    }
    let [t1, t2] = plan.tls_servers;
    let [r1, r2] = plan.replay_servers;
    format!(
        "[timeouts]\nidle = \"1h\"\nshutdown = \"1s\"\n\n\
         [limits]\nmax_connections = {max}\n\n\
         [log]\nlevel = \"warn\"\naccess_log = false\n\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n[listeners.routes]\n{routes}\n\
         [upstreams.tls_pool]\nservers = [\"{t1}\", \"{t2}\"]\nbalance = \"least_conn\"\n\n\
         [upstreams.replay_pool]\nservers = [\"{r1}\", \"{r2}\"]\nbalance = \"least_conn\"\n",
        max = plan.max_connections,
    )
}

/// sniroute's QUIC listener: routes as for `tls`, by the SNI of the client's
/// Initial packets.
pub fn sniroute_quic_config(plan: &Plan, listen: SocketAddr) -> String {
    format!(
        "[timeouts]\nudp_idle = \"30s\"\nshutdown = \"1s\"\n\n\
         [log]\nlevel = \"warn\"\naccess_log = false\n\n\
         [[listeners]]\nbind = [\"{listen}\"]\nprotocol = \"quic\"\ndefault = \"quic_pool\"\n\
         [listeners.routes]\n\"{name}\" = \"quic_pool\"\n\n\
         [upstreams.quic_pool]\nservers = [\"{server}\"]\n",
        name = crate::quic::QUIC_NAME,
        server = plan.quic_server,
    )
}

/// `load_module` for the stream module where Debian's libnginx-mod-stream
/// put it (an nginx built with the module needs none).
fn nginx_load_stream() -> String {
    if Path::new(NGINX_STREAM_MODULE).exists() {
        format!("load_module {NGINX_STREAM_MODULE};\n")
    } else {
        String::new()
    }
}

/// nginx's UDP proxy in front of the QUIC server. It cannot route QUIC by
/// name: every datagram goes to the one upstream, each client address:port
/// its own session until `proxy_timeout`.
pub fn nginx_quic_config(plan: &Plan, listen: SocketAddr, dir: &Path) -> String {
    let load = nginx_load_stream();
    let dir = dir.display();
    format!(
        "{load}worker_processes 1;\nworker_rlimit_nofile {nofile};\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{\n    worker_connections 1024;\n}}\n\
         stream {{\n    upstream u {{\n        server {server};\n    }}\n\
         \x20   server {{\n        listen {listen} udp;\n        proxy_pass u;\n        proxy_timeout 30s;\n    }}\n}}\n",
        nofile = plan.nofile,
        server = plan.quic_server,
    )
}

pub fn nginx_config(plan: &Plan, listen: SocketAddr, dir: &Path) -> String {
    let load = nginx_load_stream();
    let mut map = format!(
        "        hostnames;\n        {TLS_NAME} tls_pool;\n        {} replay_pool;\n        *.apps.example.com tls_pool;\n",
        plan.replay_name
    );
    for name in filler_names() {
        map.push_str(&format!("        {name} tls_pool;\n"));
    }
    let [t1, t2] = plan.tls_servers;
    let [r1, r2] = plan.replay_servers;
    let dir = dir.display();
    let half_close = if plan.nginx_half_close {
        "        proxy_half_close on;\n"
    } else {
        ""
    };
    format!(
        "{load}worker_processes 1;\nworker_rlimit_nofile {nofile};\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{\n    worker_connections {wc};\n}}\n\
         stream {{\n    map $ssl_preread_server_name $pool {{\n{map}    }}\n\
         \x20   upstream tls_pool {{\n        least_conn;\n        server {t1};\n        server {t2};\n    }}\n\
         \x20   upstream replay_pool {{\n        least_conn;\n        server {r1};\n        server {r2};\n    }}\n\
         \x20   server {{\n        listen {listen};\n        ssl_preread on;\n        preread_timeout 5s;\n\
         \x20       proxy_pass $pool;\n        proxy_connect_timeout 3s;\n        proxy_timeout 1h;\n{half_close}    }}\n}}\n",
        nofile = plan.nofile,
        // nginx counts both sides of a proxied connection.
        wc = (plan.max_connections * 2 + 64).min(plan.nofile),
    )
}

pub fn haproxy_config(plan: &Plan, listen: SocketAddr, map_file: &Path) -> String {
    let [t1, t2] = plan.tls_servers;
    let [r1, r2] = plan.replay_servers;
    format!(
        "global\n    nbthread 1\n    maxconn {max}\n\n\
         defaults\n    mode tcp\n    timeout connect 3s\n    timeout client 1h\n    timeout server 1h\n\n\
         frontend tls_in\n    bind {listen}\n    tcp-request inspect-delay 5s\n\
         \x20   tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
         \x20   use_backend tls_pool if {{ req_ssl_sni -m end .apps.example.com }}\n\
         \x20   use_backend %[req_ssl_sni,lower,map({map})]\n\n\
         backend tls_pool\n    balance leastconn\n    server a {t1}\n    server b {t2}\n\n\
         backend replay_pool\n    balance leastconn\n    server a {r1}\n    server b {r2}\n",
        max = plan.max_connections,
        map = map_file.display(),
    )
}

fn haproxy_map(plan: &Plan) -> String {
    let mut map = format!("{TLS_NAME} tls_pool\n{} replay_pool\n", plan.replay_name);
    for name in filler_names() {
        map.push_str(&format!("{name} tls_pool\n"));
    }
    map
}

/// Writes `peer`'s config for `job` to a fresh directory and returns the
/// command that runs it in the foreground, and the directory.
fn command(peer: Peer, plan: &Plan, listen: SocketAddr, job: Job) -> (Command, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir for the proxy config");
    let path = |name: &str| -> PathBuf { dir.path().join(name) };
    let (program, args): (&str, Vec<String>) = match peer {
        Peer::Direct => unreachable!("the direct path runs no proxy"),
        Peer::Sniroute => {
            let config = match job {
                Job::Tcp => sniroute_config(plan, listen),
                Job::Quic => sniroute_quic_config(plan, listen),
            };
            std::fs::write(path(SNIROUTE_CONFIG), config).expect("write sniroute config");
            return (sniroute_command(plan, &path(SNIROUTE_CONFIG), false), dir);
        }
        Peer::Nginx => {
            let config = match job {
                Job::Tcp => nginx_config(plan, listen, dir.path()),
                Job::Quic => nginx_quic_config(plan, listen, dir.path()),
            };
            std::fs::write(path("nginx.conf"), config).expect("write nginx config");
            (
                "nginx",
                vec![
                    "-p".into(),
                    dir.path().display().to_string(),
                    "-c".into(),
                    path("nginx.conf").display().to_string(),
                    "-e".into(),
                    "stderr".into(),
                    "-g".into(),
                    "daemon off;".into(),
                ],
            )
        }
        Peer::Haproxy if job == Job::Quic => unreachable!("HAProxy has no UDP proxy"),
        Peer::Haproxy => {
            std::fs::write(path("routes.map"), haproxy_map(plan)).expect("write haproxy map");
            std::fs::write(
                path("haproxy.cfg"),
                haproxy_config(plan, listen, &path("routes.map")),
            )
            .expect("write haproxy config");
            (
                "haproxy",
                vec![
                    "-f".into(),
                    path("haproxy.cfg").display().to_string(),
                    "-db".into(),
                ],
            )
        }
    };
    let mut cmd = pinned(plan, program);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    (cmd, dir)
}

/// `program` on the proxy's core, if pinning.
fn pinned(plan: &Plan, program: &str) -> Command {
    match &plan.proxy_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The name of sniroute's config file in its directory.
pub const SNIROUTE_CONFIG: &str = "sniroute.toml";

/// sniroute (the release build `cargo bench` makes) on `config`, one tokio
/// worker, on the proxy's core. Without `watch` it does not watch its file,
/// as in every case but the reload measurement.
pub fn sniroute_command(plan: &Plan, config: &Path, watch: bool) -> Command {
    let mut cmd = pinned(plan, env!("CARGO_BIN_EXE_sniroute"));
    cmd.arg("--config").arg(config);
    if !watch {
        cmd.arg("--no-watch");
    }
    cmd.env("TOKIO_WORKER_THREADS", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// A free port for `job`'s listener.
fn free_listen(job: Job) -> SocketAddr {
    match job {
        Job::Tcp => free_port(),
        Job::Quic => free_udp_port(),
    }
}

/// Validates `peer`'s config for `job` without serving (`nginx -t`,
/// `haproxy -c`, `sniroute --check`); the error text if it fails.
pub fn check(peer: Peer, plan: &Plan, job: Job) -> Result<(), String> {
    let listen = free_listen(job);
    let (mut cmd, _dir) = command(peer, plan, listen, job);
    let extra: &[&str] = match peer {
        Peer::Direct => return Ok(()),
        Peer::Sniroute => &["--check"],
        Peer::Nginx => &["-t"],
        Peer::Haproxy => &["-c"],
    };
    let out = cmd
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", peer.name()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts `peer` with `job`'s config on a fresh port and waits until it
/// accepts (and, for nginx, until its worker runs).
pub async fn start(peer: Peer, plan: &Plan, job: Job) -> Running {
    try_start(peer, plan, job)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`start`], with the reason if the proxy exits or does not listen.
pub async fn try_start(peer: Peer, plan: &Plan, job: Job) -> Result<Running, String> {
    let listen = free_listen(job);
    let (cmd, dir) = command(peer, plan, listen, job);
    try_launch(peer, cmd, dir, listen, job).await
}

/// Starts sniroute on the config `config(listen)` returns (written to
/// [`SNIROUTE_CONFIG`] in a fresh directory) and waits until it accepts.
pub async fn start_sniroute_with(
    plan: &Plan,
    config: impl FnOnce(SocketAddr) -> String,
    watch: bool,
) -> Running {
    let listen = free_port();
    let dir = tempfile::tempdir().expect("a temp dir for the proxy config");
    let path = dir.path().join(SNIROUTE_CONFIG);
    std::fs::write(&path, config(listen)).expect("write sniroute config");
    let cmd = sniroute_command(plan, &path, watch);
    try_launch(Peer::Sniroute, cmd, dir, listen, Job::Tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` and waits until it listens on `listen`: accepts a TCP
/// connection, or for [`Job::Quic`] has the UDP port bound (there is nothing
/// to connect to; the first QUIC handshake through it is the real test).
async fn try_launch(
    peer: Peer,
    mut cmd: Command,
    dir: tempfile::TempDir,
    listen: SocketAddr,
    job: Job,
) -> Result<Running, String> {
    let log = std::fs::File::create(dir.path().join("stderr.log")).expect("create proxy log");
    let child = cmd
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", peer.name()))?;
    let mut running = Running {
        peer,
        listen,
        child,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = running.child.try_wait() {
            return Err(format!(
                "{} exited at start ({status}):\n{}",
                peer.name(),
                running.log()
            ));
        }
        let workers_up = peer != Peer::Nginx || procfs::tree(running.pid()).len() >= 2;
        let listening = match job {
            Job::Tcp => tokio::net::TcpStream::connect(listen).await.is_ok(),
            Job::Quic => procfs::udp_bound(listen),
        };
        if workers_up && listening {
            return Ok(running);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not start within 10 s:\n{}",
                peer.name(),
                running.log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first line a tool prints about its version, or `None` if it is missing.
pub fn version(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().next().map(|l| l.trim().to_owned())
}
