//! DNS refresh with a hosts file the test controls: sniroute runs in a mount
//! namespace of its own where that file is bind-mounted over `/etc/hosts`
//! (and an empty `resolv.conf` over `/etc/resolv.conf`, so a name missing
//! from it fails at once instead of asking a real DNS server). Needs root:
//! `cargo test --test dns_refresh -- --ignored`.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Namespaced {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Namespaced {
    fn wait_log(&self, needle: &str) -> String {
        poll(Duration::from_secs(15), || {
            let log = self.log.lock().unwrap().clone();
            log.contains(needle).then_some(log)
        })
        .unwrap_or_else(|| panic!("no `{needle}` in the log:\n{}", self.log.lock().unwrap()))
    }
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An echo server on `ip:port` that counts its connections.
async fn echo(ip: &str, port: u16) -> Arc<Mutex<usize>> {
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    accepted
}

async fn roundtrip(c: &mut TcpStream, bytes: &[u8]) {
    c.write_all(bytes).await.unwrap();
    let mut got = vec![0u8; bytes.len()];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(got, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn names_are_resolved_again_new_addresses_join_gone_ones_drain_failures_keep_the_last() {
    let port = free_port("127.0.0.2");
    let old = echo("127.0.0.2", port).await;
    let new = echo("127.0.0.3", port).await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.2 ingress.test\n").unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = write_config(
        dir.path(),
        &format!(
            "[metrics]\nbind = \"{metrics}\"\n\
             [[listeners]]\nbind = \"{listen}\"\nprotocol = \"tcp\"\ndefault = \"p\"\n\
             [upstreams.p]\nservers = [\"ingress.test:{port}\"]\ndns_refresh = \"1s\"\n"
        ),
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/resolv.conf \
             && exec \"$2\" --config \"$3\"",
        )
        .arg(&hosts)
        .arg(&resolv)
        .arg(env!("CARGO_BIN_EXE_sniroute"))
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs");
    let log = capture(child.stderr.take().unwrap());
    let proxy = Namespaced { child, log };
    proxy.wait_log("ready");

    let mut held = TcpStream::connect(listen).await.unwrap();
    roundtrip(&mut held, b"first").await;
    assert_eq!((*old.lock().unwrap(), *new.lock().unwrap()), (1, 0));

    // The name moves: written in place, as the bind mount pins the file.
    std::fs::write(&hosts, "127.0.0.3 ingress.test\n").unwrap();
    proxy.wait_log("server name resolves to other addresses");
    for _ in 0..3 {
        let mut c = TcpStream::connect(listen).await.unwrap();
        roundtrip(&mut c, b"next").await;
    }
    assert_eq!((*old.lock().unwrap(), *new.lock().unwrap()), (1, 3));
    // The connection to the address that left goes on, and is still counted.
    roundtrip(&mut held, b"still here").await;
    let text = get_metrics(metrics);
    let leaving =
        format!("sniroute_server_active_connections{{pool=\"p\",server=\"127.0.0.2:{port}\"}} 1");
    assert!(text.contains(&leaving), "{text}");

    // The name vanishes: the last good address stays, the failure is counted.
    std::fs::write(&hosts, "127.0.0.9 other.test\n").unwrap();
    proxy.wait_log("DNS lookup failed, keeping the last good addresses");
    let mut c = TcpStream::connect(listen).await.unwrap();
    roundtrip(&mut c, b"kept").await;
    assert_eq!(*new.lock().unwrap(), 4);
    let text = get_metrics(metrics);
    let failures = text
        .lines()
        .find_map(|l| l.strip_prefix("sniroute_dns_lookup_failures_total{pool=\"p\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "{text}");

    // Once the last connection to the old address ends, it leaves the metrics.
    drop(held);
    poll(Duration::from_secs(10), || {
        (!get_metrics(metrics).contains(&format!("server=\"127.0.0.2:{port}\""))).then_some(())
    })
    .expect("the drained address stayed listed after its last connection ended");
}
