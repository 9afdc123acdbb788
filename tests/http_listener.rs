//! The edges of HTTP listeners with real clients: an HTTP/2 client with prior
//! knowledge (curl against a real nginx serving h2c) carries no Host and goes to
//! the default, or is closed without one; a request head over
//! `max_peek_bytes` gets a 431 that curl reads whole.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::nginx::Nginx;
use common::*;

/// A real nginx answering `h2c ok` over cleartext HTTP/2 (prior knowledge).
fn h2c_server(dir: &std::path::Path) -> (Nginx, SocketAddr) {
    let listen = free_addr("127.0.0.2");
    let d = dir.display();
    let conf = format!(
        "events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{ listen {listen} http2; location / {{ return 200 \"h2c ok\\n\"; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    (Nginx::start(dir, &[listen]), listen)
}

fn listener(listen: SocketAddr, default: Option<&str>, servers: &str) -> String {
    let default = default.map_or(String::new(), |d| format!("default = \"{d}\"\n"));
    format!(
        "[[listeners]]\nbind = \"{listen}\"\nprotocol = \"http\"\n{default}\
         [listeners.routes]\n\"web.example.com\" = \"web\"\n{servers}"
    )
}

/// curl with `args`; returns (exit code, stdout).
fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl must be installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_with_prior_knowledge_goes_to_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, h2) = h2c_server(dir.path());
    let web = Upstream::start("127.0.0.3", "web", Mode::Http).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&listener(
        listen,
        Some("h2"),
        &format!(
            "[upstreams.web]\nservers = [\"{}\"]\n[upstreams.h2]\nservers = [\"{h2}\"]\n",
            web.addr
        ),
    ));
    let url = format!("http://web.example.com:{}/", listen.port());
    let resolve = format!("web.example.com:{}:127.0.0.1", listen.port());
    let (code, out) = tokio::task::spawn_blocking(move || {
        curl(&[
            "--http2-prior-knowledge",
            "-w",
            "%{http_version}",
            "--resolve",
            &resolve,
            &url,
        ])
    })
    .await
    .unwrap();
    // The preface names no host: the default, although :authority says web.
    assert_eq!((code, out.as_str()), (0, "h2c ok\n2"));
    assert_eq!(web.accepted(), 0);
    let line = &proxy.wait_access(1)[0];
    assert!(
        line.contains("host=- route=default pool=h2") && line.contains("outcome=closed"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_an_http2_client_is_closed_not_answered_in_http1() {
    let web = Upstream::start("127.0.0.3", "web", Mode::Http).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&listener(
        listen,
        None,
        &format!("[upstreams.web]\nservers = [\"{}\"]\n", web.addr),
    ));
    let url = format!("http://{listen}/");
    let (code, out) = tokio::task::spawn_blocking(move || curl(&["--http2-prior-knowledge", &url]))
        .await
        .unwrap();
    // curl: the server closed the connection without an HTTP/2 answer.
    assert_ne!(code, 0);
    assert_eq!(out, "");
    assert_eq!(web.accepted(), 0);
    let line = &proxy.wait_access(1)[0];
    assert!(
        line.contains("outcome=no_route") && line.contains("HTTP/2 preface"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_max_peek_bytes_gets_431() {
    let web = Upstream::start("127.0.0.3", "web", Mode::Http).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&format!(
        "[limits]\nmax_peek_bytes = 1024\n{}",
        listener(
            listen,
            Some("web"),
            &format!("[upstreams.web]\nservers = [\"{}\"]\n", web.addr)
        )
    ));
    let big = format!("X-Big: {}", "a".repeat(2000));
    let url = format!("http://{listen}/");
    let (code, out) = tokio::task::spawn_blocking(move || {
        curl(&["-H", &big, "-D", "-", "-w", "%{http_code}", &url])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "curl read the whole answer: {out}");
    assert!(
        out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{out}"
    );
    assert!(out.contains("Connection: close\r\n"), "{out}");
    assert!(out.ends_with("request head is too large\n431"), "{out}");
    assert_eq!(web.accepted(), 0);
    let line = &proxy.wait_access(1)[0];
    assert!(
        line.contains("outcome=peek_failed reason=too_large"),
        "{line}"
    );

    // A head that fits still goes through.
    let url = format!("http://{listen}/");
    let (code, out) = tokio::task::spawn_blocking(move || curl(&[&url]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.starts_with("web host="), "{out}");
}
