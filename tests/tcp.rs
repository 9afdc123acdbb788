//! Plain TCP listeners (`protocol = "tcp"`) through the real binary: nothing is
//! read before connecting, so protocols where the server speaks first work,
//! with their real clients (curl speaking SMTP, OpenSSH's ssh-keyscan against a
//! real sshd).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn tcp_config(listen: SocketAddr, servers: &[SocketAddr], listener_extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[timeouts]\npeek = \"30s\"\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tcp\"\ndefault = \"mail\"\n\
         {listener_extra}\n[upstreams.mail]\nservers = [{}]\n",
        servers.join(", ")
    )
}

/// A tiny SMTP server: greets first (`220`), answers every command, keeps the
/// message of each transaction. Enough for curl's SMTP client.
async fn smtp_server(ip: &str) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 mx.test ESMTP\r\n").await?;
                let mut message = String::new();
                while let Some(line) = lines.next_line().await? {
                    let verb = line.split_whitespace().next().unwrap_or("").to_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 mx.test\r\n",
                        "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 ok\r\n",
                        "DATA" => {
                            write.write_all(b"354 go ahead\r\n").await?;
                            while let Some(l) = lines.next_line().await? {
                                if l == "." {
                                    break;
                                }
                                message.push_str(&l);
                                message.push('\n');
                            }
                            let _ = tx.send(std::mem::take(&mut message));
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            write.write_all(b"221 bye\r\n").await?;
                            return Ok::<_, std::io::Error>(());
                        }
                        _ => b"502 no\r\n",
                    };
                    write.write_all(answer).await?;
                }
                Ok(())
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_first_without_waiting_for_the_client() {
    let (smtp, _) = smtp_server("127.0.0.2").await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&tcp_config(listen, &[smtp], ""));
    let start = Instant::now();
    let mut c = TcpStream::connect(listen).await.unwrap();
    let mut greeting = [0u8; 19];
    tokio::time::timeout(DEADLINE, c.read_exact(&mut greeting))
        .await
        .expect("no greeting: the proxy waits for the client")
        .unwrap();
    assert_eq!(&greeting, b"220 mx.test ESMTP\r\n");
    // Far below the 30 s peek timeout: nothing waited for a first byte.
    assert!(start.elapsed() < Duration::from_secs(5));
    c.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(read_all(&mut c).await, b"221 bye\r\n");
    drop(c);
    let line = &proxy.wait_access(1)[0];
    assert!(line.contains("host=- route=default pool=mail"), "{line}");
    assert!(line.contains("bytes_up=6 bytes_down=28"), "{line}");
    assert!(line.contains("outcome=closed"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sends_mail_through_a_tcp_listener() {
    let (smtp, mut mail) = smtp_server("127.0.0.2").await;
    let dead = free_addr("127.0.0.3");
    let listen = free_addr("127.0.0.1");
    // A dead server first: the retry happens before the greeting, unseen.
    let _proxy = Sniroute::start(&tcp_config(listen, &[dead, smtp], ""));
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("mail.txt");
    std::fs::write(&body, "Subject: hello\r\n\r\nthrough sniroute\r\n").unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .arg(format!("smtp://{listen}"))
            .args([
                "--mail-from",
                "a@example.com",
                "--mail-rcpt",
                "b@example.com",
            ])
            .arg("--upload-file")
            .arg(&body)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = tokio::time::timeout(DEADLINE, mail.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "Subject: hello\n\nthrough sniroute\n");
}

/// Behind another balancer: the PROXY header is read first (it comes first),
/// then the server still speaks first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_then_the_server_speaks_first() {
    let (smtp, _) = smtp_server("127.0.0.2").await;
    let listen = free_addr("127.0.0.1");
    let _proxy = Sniroute::start(&tcp_config(
        listen,
        &[smtp],
        "accept_proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.0/8\"]",
    ));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"PROXY TCP4 203.0.113.9 198.51.100.1 5555 25\r\n")
        .await
        .unwrap();
    let mut greeting = [0u8; 19];
    tokio::time::timeout(DEADLINE, c.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"220 mx.test ESMTP\r\n");
}

#[test]
fn a_tcp_listener_needs_a_default_and_takes_no_routes() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[listeners]]\nbind = \"127.0.0.1:2525\"\nprotocol = \"tcp\"\n[listeners.routes]\n\"a.example.com\" = \"p\"\n[upstreams.p]\nservers = [\"127.0.0.2:25\"]\n",
            "sniroute.toml:5:1: a \"tcp\" listener reads nothing from the client",
        ),
        (
            "[[listeners]]\nbind = \"127.0.0.1:2525\"\nprotocol = \"tcp\"\n[upstreams.p]\nservers = [\"127.0.0.2:25\"]\n",
            "a \"tcp\" listener needs `default`",
        ),
    ];
    for (text, want) in cases {
        let path = write_config(dir.path(), text);
        let (code, _, err) = run_cli(&["--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
}

/// A real SSH handshake (server banner first, then key exchange) through a
/// `tcp` listener: ssh-keyscan gets the host key of the sshd behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd runs its privilege separation as root) and openssh-server"]
async fn ssh_keyscan_reaches_a_real_sshd() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("host_key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(status.success());
    let sshd_addr = free_addr("127.0.0.2");
    let config = dir.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {}\nListenAddress {}\nHostKey {}\nPidFile none\nUsePAM no\n",
            sshd_addr.port(),
            sshd_addr.ip(),
            key.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let mut sshd = Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-f")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd (openssh-server)");
    poll(DEADLINE, || std::net::TcpStream::connect(sshd_addr).ok()).expect("sshd does not listen");
    let listen = free_addr("127.0.0.1");
    let _proxy = Sniroute::start(&tcp_config(listen, &[sshd_addr], ""));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("ssh-keyscan")
            .args(["-T", "5", "-t", "ed25519", "-p"])
            .arg(listen.port().to_string())
            .arg(listen.ip().to_string())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = sshd.kill();
    let _ = sshd.wait();
    let public = std::fs::read_to_string(dir.path().join("host_key.pub")).unwrap();
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    let scanned = String::from_utf8_lossy(&out.stdout);
    let got: Vec<&str> = scanned.split_whitespace().skip(1).take(2).collect();
    assert_eq!(got, public, "ssh-keyscan said: {scanned}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_handed_over_at_once_on_tcp_but_only_with_its_hello_on_tls() {
    let up = Upstream::start("127.0.0.2", "up", Mode::Echo).await;
    let (tls, tcp, metrics) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let _proxy = Sniroute::start(&format!(
        "[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{tls}\"\nprotocol = \"tls\"\ndefault = \"up\"\n\
         [[listeners]]\nbind = \"{tcp}\"\nprotocol = \"tcp\"\ndefault = \"up\"\n\
         [upstreams.up]\nservers = [\"{}\"]\n",
        up.addr
    ));
    let accepted = |listener: SocketAddr| {
        metric(
            &get_metrics(metrics),
            "sniroute_connections_accepted_total",
            &[("listener", &listener.to_string())],
        )
        .unwrap_or(0.0)
    };
    let mut silent_tls = TcpStream::connect(tls).await.unwrap();
    let _silent_tcp = TcpStream::connect(tcp).await.unwrap();
    // On tcp the server may speak first: the connection is taken at once.
    assert!(
        poll(DEADLINE, || (accepted(tcp) == 1.0).then_some(())).is_some(),
        "tcp listener did not accept"
    );
    // On tls the kernel holds it (TCP_DEFER_ACCEPT) until the client speaks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        accepted(tls),
        0.0,
        "a silent TLS client was accepted before its hello"
    );
    silent_tls
        .write_all(&client_hello(Some("a.example.com"), 1))
        .await
        .unwrap();
    assert!(
        poll(DEADLINE, || (accepted(tls) == 1.0).then_some(())).is_some(),
        "the hello did not get the TLS client accepted"
    );
    assert!(
        poll(DEADLINE, || (up.accepted() == 2).then_some(())).is_some(),
        "both reached the upstream"
    );
}
