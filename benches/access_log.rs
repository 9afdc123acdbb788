//! Connections per second through sniroute with the access log on and off.
//!
//! `cargo bench --bench access_log` starts the release binary three ways (access
//! log off, text, JSON; logs written to a file, as journald or a log file would
//! take them) in front of an in-process upstream that reads the ClientHello and
//! closes, and drives it with concurrent clients that each connect, send a real
//! ClientHello and wait for the close. Each mode runs several rounds, interleaved,
//! and the medians are reported with their ratio to "off". Loopback only,
//! bounded in time.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HELLO: &[u8] = include_bytes!("../tests/fixtures/hello/curl.bin");
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
const CLIENTS: usize = 32;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(mode: &str, listen: SocketAddr, upstream: SocketAddr, dir: &std::path::Path) -> Proxy {
    let log = match mode {
        "off" => "access_log = false",
        "text" => "format = \"text\"",
        _ => "format = \"json\"",
    };
    let config = format!(
        "[log]\n{log}\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"u\"\n\
         [upstreams.u]\nservers = [\"{upstream}\"]\n"
    );
    let path = dir.join(format!("{mode}.toml"));
    std::fs::write(&path, config).unwrap();
    let log_file = std::fs::File::create(dir.join(format!("{mode}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sniroute"))
        .arg("--config")
        .arg(&path)
        .arg("--no-watch")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("build the binary first: cargo build --release");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "sniroute did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proxy(child)
}

/// Accepts, reads the hello, closes.
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0; HELLO.len()];
            let _ = s.read_exact(&mut buf).await;
        });
    }
}

/// Connections completed per second by `CLIENTS` clients during `ROUND`.
async fn round(listen: SocketAddr) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut sink = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = TcpStream::connect(listen).await else {
                        continue;
                    };
                    if c.write_all(HELLO).await.is_ok() {
                        while matches!(c.read(&mut sink).await, Ok(n) if n > 0) {}
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / elapsed.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        tokio::spawn(upstream(listener));
        let dir = tempfile::tempdir().unwrap();
        let modes = ["off", "text", "json"];
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        for _ in 0..ROUNDS {
            for (i, mode) in modes.iter().enumerate() {
                let listen = free_addr();
                let _proxy = start(mode, listen, up, dir.path());
                results[i].push(round(listen).await);
            }
        }
        let off = median(&mut results[0].clone());
        println!("access log    conn/s (median of {ROUNDS} x {ROUND:?}, {CLIENTS} clients)   ratio to off");
        for (i, mode) in modes.iter().enumerate() {
            let m = median(&mut results[i]);
            println!("{mode:<12}  {m:>10.0}                                        {:.3}", m / off);
        }
    });
}
