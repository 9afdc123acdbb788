//! Shared harness for the integration tests: the real `sniroute` binary, real
//! upstream servers on 127.0.0.x, real TLS clients. Everything binds loopback only
//! and every wait has a deadline.
#![allow(dead_code)]

pub mod nginx;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const DEADLINE: Duration = Duration::from_secs(10);

/// The body of `GET /metrics` on `addr`, which must answer 200.
#[allow(dead_code)] // not every test binary scrapes
pub fn get_metrics(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    c.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    body.to_owned()
}

/// The value of sample `name` in a scrape whose labels include every one of
/// `labels`.
#[allow(dead_code)] // not every test binary scrapes
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels_text, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| labels_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// A free TCP port on `ip` (bound then released; loopback, so no one else races us).
pub fn free_port(ip: &str) -> u16 {
    StdListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), free_port(ip))
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `within`.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Collects a child's output lines, as they come, into a shared string.
pub fn capture(output: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

/// How to start the binary, beyond its config.
#[derive(Default)]
pub struct Opts {
    /// Lower `RLIMIT_NOFILE` to this (soft and hard).
    pub nofile: Option<u32>,
    /// With `nofile` (the hard limit): a lower soft limit.
    pub nofile_soft: Option<u32>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run this binary instead of the one cargo built (a copy a test may replace).
    pub exe: Option<PathBuf>,
    /// Run inside this network namespace (`ip netns exec`, which execs: the
    /// child is still sniroute itself, so signals reach it).
    pub netns: Option<String>,
}

/// The real binary, running on a config written to a temp dir.
pub struct Sniroute {
    pub child: Child,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Sniroute {
    /// Starts sniroute on `config` and waits until it reports ready.
    pub fn start(config: &str) -> Sniroute {
        Self::start_with(config, Opts::default())
    }

    /// Writes `config` to `sniroute.toml` in a new temp dir and starts on it.
    pub fn start_with(config: &str, opts: Opts) -> Sniroute {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sniroute.toml");
        std::fs::write(&path, config).unwrap();
        Self::launch(dir, &path, opts)
    }

    /// Starts on the config at `path`; `dir` is kept alive as long as the process.
    pub fn launch(dir: tempfile::TempDir, path: &Path, opts: Opts) -> Sniroute {
        let exe = opts.exe.clone().map_or_else(
            || env!("CARGO_BIN_EXE_sniroute").to_owned(),
            |p| p.display().to_string(),
        );
        let mut argv: Vec<String> = match opts.nofile {
            None => vec![exe],
            Some(n) => {
                // Lower RLIMIT_NOFILE through the shell's `ulimit` (without -S or
                // -H it sets both), then exec.
                let soft = opts
                    .nofile_soft
                    .map_or(String::new(), |s| format!(" && ulimit -S -n {s}"));
                vec![
                    "sh".to_owned(),
                    "-c".to_owned(),
                    format!("ulimit -n {n}{soft} && exec \"$0\" \"$@\""),
                    exe,
                ]
            }
        };
        if let Some(ns) = &opts.netns {
            let exec = ["ip", "netns", "exec", ns.as_str()].map(str::to_owned);
            argv.splice(0..0, exec);
        }
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
            .args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .arg("--config")
            .arg(path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self::spawned(child, dir)
    }

    /// Takes over a started process whose stderr is piped, and waits until it
    /// reports ready.
    pub fn spawned(mut child: Child, dir: tempfile::TempDir) -> Sniroute {
        let log = capture(child.stderr.take().unwrap());
        let s = Sniroute { child, dir, log };
        s.wait_log("ready");
        s
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`; returns the whole log.
    pub fn wait_log(&self, needle: &str) -> String {
        poll(DEADLINE, || {
            Some(self.log()).filter(|log| log.contains(needle))
        })
        .unwrap_or_else(|| panic!("no {needle:?} in log:\n{}", self.log()))
    }

    /// Access-log lines (text format) seen so far.
    pub fn access_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("sniroute::access"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits for `n` access-log lines.
    pub fn wait_access(&self, n: usize) -> Vec<String> {
        poll(DEADLINE, || {
            Some(self.access_lines()).filter(|l| l.len() >= n)
        })
        .unwrap_or_else(|| panic!("wanted {n} access lines, log:\n{}", self.log()))
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = &mut self.child;
        poll(within, || child.try_wait().unwrap()).unwrap_or_else(|| {
            panic!(
                "sniroute did not exit within {within:?}; log:\n{}",
                self.log()
            )
        })
    }

    pub fn child_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// CPU time (user + system) the process used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the `(comm)`: state is field 3; utime and stime are 14 and 15.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("sniroute.toml")
    }
}

impl Drop for Sniroute {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid in `upgrade: process N is ready` once that line is logged.
pub fn successor(proxy: &Sniroute) -> i32 {
    let log = proxy.wait_log("serves now");
    let line = log.lines().find(|l| l.contains("serves now")).unwrap();
    line.split("successor=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no successor pid in {line:?}"))
}

/// Kills a process the test did not spawn directly (one an upgrade started, a
/// grandchild), however the test ends.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: a plain syscall on a pid.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Runs the binary to completion with `args`; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sniroute"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sniroute.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What an upstream does with each connection.
#[derive(Clone)]
pub enum Mode {
    /// Echo every byte; on EOF write `bye` and close (shows half-close both ways).
    Echo,
    /// Read an HTTP request head, answer `200` with body `<name> host=<Host>`.
    Http,
    /// TLS server for `*.example.com`; answers one line `<name> sni=<sni>`.
    Tls,
    /// Keep the connection open, reading and discarding, until the peer closes.
    Hold,
    /// Accept, then neither read nor write for this long (an upstream that hangs),
    /// then drain to EOF: `open()` drops once the peer has closed.
    Stall(Duration),
    /// Read one chunk, send `bytes` bytes, then die: with a reset if `reset`, else
    /// a FIN (close).
    Die { bytes: usize, reset: bool },
}

/// A real upstream server on `addr`, run on the test's runtime.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    /// The first bytes each connection sent (up to 64 KiB), in accept order.
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Upstream {
    pub async fn start(ip: &str, name: &str, mode: Mode) -> Upstream {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let up = Upstream {
            addr,
            name: name.to_owned(),
            accepted: accepted.clone(),
            open: open.clone(),
            received: received.clone(),
        };
        let name = name.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let index = {
                    let mut r = received.lock().unwrap();
                    r.push(Vec::new());
                    r.len() - 1
                };
                let (name, mode, open, received) =
                    (name.clone(), mode.clone(), open.clone(), received.clone());
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = serve(stream, &name, mode, &received, index).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        up
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    name: &str,
    mode: Mode,
    received: &Mutex<Vec<Vec<u8>>>,
    index: usize,
) -> std::io::Result<()> {
    let record = |bytes: &[u8]| {
        let mut r = received.lock().unwrap();
        let slot = &mut r[index];
        let room = (64 * 1024usize).saturating_sub(slot.len());
        slot.extend_from_slice(&bytes[..bytes.len().min(room)]);
    };
    match mode {
        Mode::Echo => {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    stream.write_all(b"bye").await?;
                    stream.shutdown().await?;
                    return Ok(());
                }
                record(&buf[..n]);
                stream.write_all(&buf[..n]).await?;
            }
        }
        Mode::Hold => {
            let mut buf = vec![0; 16 * 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                record(&buf[..n]);
            }
        }
        Mode::Stall(pause) => {
            tokio::time::sleep(pause).await;
            let mut sink = vec![0; 64 * 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok(())
        }
        Mode::Die { bytes, reset } => {
            // Read what the client sent first: closing with unread input would make
            // the kernel reset even the "clean" case.
            let mut hello = vec![0; 64 * 1024];
            let n = stream.read(&mut hello).await?;
            record(&hello[..n]);
            stream.write_all(&vec![b'x'; bytes]).await?;
            if reset {
                stream.set_zero_linger()?;
            }
            drop(stream);
            Ok(())
        }
        Mode::Http => {
            let head = read_head(&mut stream).await?;
            record(&head);
            let text = String::from_utf8_lossy(&head).into_owned();
            let host = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Host: ")
                        .or_else(|| l.strip_prefix("host: "))
                })
                .unwrap_or("-")
                .to_owned();
            let body = format!("{name} host={host}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(resp.as_bytes()).await?;
            stream.shutdown().await
        }
        Mode::Tls => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config());
            let mut tls = acceptor
                .accept(stream)
                .await
                .map_err(std::io::Error::other)?;
            let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
            let mut buf = [0u8; 1024];
            let n = tls.read(&mut buf).await?;
            record(&buf[..n]);
            tls.write_all(format!("{name} sni={sni}\n").as_bytes())
                .await?;
            tls.shutdown().await
        }
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

struct TestPki {
    cert_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let names = vec![
            "*.example.com".to_owned(),
            "example.com".to_owned(),
            "*.apps.example.com".to_owned(),
        ];
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        TestPki {
            cert_pem: ck.cert.pem(),
            cert_der: ck.cert.der().clone(),
            key_der: ck.key_pair.serialize_der(),
        }
    })
}

/// The test CA/cert in PEM, for `curl --cacert` / `openssl s_client -CAfile`.
pub fn cert_pem_file(dir: &Path) -> PathBuf {
    let path = dir.join("upstream.pem");
    std::fs::write(&path, &pki().cert_pem).unwrap();
    path
}

fn tls_server_config() -> Arc<rustls::ServerConfig> {
    static CFG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki().key_der.clone().into());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki().cert_der.clone()], key)
            .unwrap();
        Arc::new(cfg)
    })
    .clone()
}

/// A verifying rustls client: connects to `proxy` asking for `sni`, sends one
/// line, returns the server's answer.
pub async fn tls_request(proxy: SocketAddr, sni: &str) -> std::io::Result<String> {
    tls_request_from(proxy, None, sni).await
}

/// Connects to `addr` from the local address `from` (a loopback address standing
/// for a client host), or from wherever the kernel picks.
pub async fn connect_from(addr: SocketAddr, from: Option<&str>) -> std::io::Result<TcpStream> {
    let Some(ip) = from else {
        return TcpStream::connect(addr).await;
    };
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// [`tls_request`] from the local address `from`.
pub async fn tls_request_from(
    proxy: SocketAddr,
    from: Option<&str>,
    sni: &str,
) -> std::io::Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().cert_der.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let stream = connect_from(proxy, from).await?;
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, stream).await?;
    tls.write_all(b"hello\n").await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    Ok(out)
}

/// Reads until EOF (or error), within `DEADLINE`; returns what arrived.
pub async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("read_all timed out");
    out
}

/// Polls an async condition with a deadline.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real ClientHello captured from curl, SNI `curl.example.com`.
pub const CURL_HELLO: &[u8] = include_bytes!("../fixtures/hello/curl.bin");

/// A minimal TLS 1.2 ClientHello asking for `sni` (none: no server_name
/// extension). `nonce` fills the start of the client random, so that every
/// hello is unique and an upstream that receives it can be told apart.
pub fn client_hello(sni: Option<&str>, nonce: u64) -> Vec<u8> {
    let mut extensions = Vec::new();
    if let Some(name) = sni {
        let name = name.as_bytes();
        let list = 3 + name.len();
        extensions.extend(0u16.to_be_bytes()); // server_name
        extensions.extend(u16::try_from(list + 2).unwrap().to_be_bytes());
        extensions.extend(u16::try_from(list).unwrap().to_be_bytes());
        extensions.push(0); // host_name
        extensions.extend(u16::try_from(name.len()).unwrap().to_be_bytes());
        extensions.extend(name);
    }
    let mut random = [0u8; 32];
    random[..8].copy_from_slice(&nonce.to_be_bytes());
    let mut hello = vec![0x03, 0x03]; // TLS 1.2
    hello.extend(random);
    hello.push(0); // no session id
    hello.extend([0x00, 0x02, 0xc0, 0x2f]); // one suite: ECDHE-RSA-AES128-GCM-SHA256
    hello.extend([0x01, 0x00]); // null compression
    hello.extend(u16::try_from(extensions.len()).unwrap().to_be_bytes());
    hello.extend(extensions);
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend(&u32::try_from(hello.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}
