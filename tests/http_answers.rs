//! What an HTTP listener answers itself: the 308 of `redirect_https`, the ACME
//! key authorization of `acme_thumbprint`, and the challenges `acme_pool` sends
//! on, byte for byte, with their outcomes in the access log and the metrics.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const THUMBPRINT: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";

/// Sends `request` on a new connection and reads the answer to its end.
async fn ask(listen: SocketAddr, request: &str) -> String {
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    String::from_utf8(read_all(&mut c).await).unwrap()
}

fn config(listen: SocketAddr, metrics: SocketAddr, extra: &str, servers: &str) -> String {
    format!(
        "[metrics]\nbind = \"{metrics}\"\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"http\"\n{extra}\n\
         [listeners.routes]\n\"web.example.com\" = \"web\"\n{servers}"
    )
}

fn closed(metrics: SocketAddr, outcome: &str) -> Option<f64> {
    metric(
        &get_metrics(metrics),
        "sniroute_connections_closed_total",
        &[("outcome", outcome)],
    )
}

/// Real curl, `Host: curl.example.com`, with `extra` arguments; its stdout.
async fn curl(extra: &'static [&'static str], url: String) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-H", "Host: curl.example.com"])
            .args(extra)
            .arg(&url)
            .output()
            .expect("curl must be installed")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_hosts_are_redirected_to_https() {
    let web = Upstream::start("127.0.0.3", "web", Mode::Http).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&config(
        listen,
        metrics,
        "redirect_https = true",
        &format!("[upstreams.web]\nservers = [\"{}\"]\n", web.addr),
    ));
    let redirect = |location: &str| {
        format!("HTTP/1.1 308 Permanent Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    assert_eq!(
        ask(
            listen,
            "GET /a/b?c=d&e HTTP/1.1\r\nHost: Other.Example.com:8080\r\n\r\n"
        )
        .await,
        redirect("https://other.example.com/a/b?c=d&e")
    );
    assert_eq!(
        ask(listen, "HEAD / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").await,
        redirect("https://[::1]/")
    );
    assert_eq!(
        ask(
            listen,
            "GET http://abs.example.com:8080/p?q HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .await,
        redirect("https://abs.example.com/p?q")
    );
    assert_eq!(
        ask(listen, "GET / HTTP/1.0\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 39\r\nConnection: close\r\n\r\nno Host header: nothing to redirect to\n"
    );
    // A routed Host is not redirected.
    let routed = ask(listen, "GET / HTTP/1.1\r\nHost: web.example.com\r\n\r\n").await;
    assert!(routed.ends_with("web host=web.example.com"), "{routed}");

    // curl reads the whole answer.
    let out = curl(&["-i"], format!("http://{listen}/x?y=1")).await;
    assert_eq!(out, redirect("https://curl.example.com/x?y=1"));

    let lines = proxy.wait_access(6);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("outcome=redirected"))
            .count(),
        4,
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("outcome=no_route") && l.contains("no Host to redirect to")));
    assert_eq!(closed(metrics, "redirected"), Some(4.0));
    assert_eq!(closed(metrics, "no_route"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_challenges_are_answered_before_routing() {
    let web = Upstream::start("127.0.0.3", "web", Mode::Http).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&config(
        listen,
        metrics,
        &format!("acme_thumbprint = \"{THUMBPRINT}\""),
        &format!("[upstreams.web]\nservers = [\"{}\"]\n", web.addr),
    ));
    let body = format!("tok_-9.{THUMBPRINT}");
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    for host in ["web.example.com", "unrouted.example.com"] {
        let get =
            format!("GET /.well-known/acme-challenge/tok_-9 HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(ask(listen, &get).await, format!("{head}{body}"));
        let head_req = get.replacen("GET", "HEAD", 1);
        assert_eq!(ask(listen, &head_req).await, head);
    }
    assert_eq!(web.accepted(), 0);

    // Malformed tokens get no key authorization: routed, or 421.
    for token in ["", "a%2Fb", "a/b", "a.b"] {
        let answer = ask(
            listen,
            &format!("GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: nope.example.com\r\n\r\n"),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 421 Misdirected Request\r\n"),
            "{token}: {answer}"
        );
    }
    let routed = ask(
        listen,
        "GET /.well-known/acme-challenge/a/b HTTP/1.1\r\nHost: web.example.com\r\n\r\n",
    )
    .await;
    assert!(routed.ends_with("web host=web.example.com"), "{routed}");

    let url = format!("http://{listen}/.well-known/acme-challenge/tok_-9");
    assert_eq!(curl(&[], url).await, body);

    let lines = proxy.wait_access(10);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("outcome=acme_answered"))
            .count(),
        5,
        "{lines:?}"
    );
    assert_eq!(closed(metrics, "acme_answered"), Some(5.0));
    assert_eq!(closed(metrics, "no_route"), Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_pool_gets_every_challenge_unchanged() {
    let web = Upstream::start("127.0.0.3", "web", Mode::Http).await;
    let solver = Upstream::start("127.0.0.4", "solver", Mode::Http).await;
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&config(
        listen,
        metrics,
        "acme_pool = \"solver\"",
        &format!(
            "[upstreams.web]\nservers = [\"{}\"]\n[upstreams.solver]\nservers = [\"{}\"]\n",
            web.addr, solver.addr
        ),
    ));
    let request = "GET /.well-known/acme-challenge/x.y%2F HTTP/1.1\r\nHost: web.example.com\r\nX-A: b\r\n\r\n";
    let answer = ask(listen, request).await;
    assert!(answer.ends_with("solver host=web.example.com"), "{answer}");
    assert_eq!(solver.received.lock().unwrap()[0], request.as_bytes());
    let answer = ask(listen, "GET /x HTTP/1.1\r\nHost: web.example.com\r\n\r\n").await;
    assert!(answer.ends_with("web host=web.example.com"), "{answer}");
    let lines = proxy.wait_access(2);
    assert!(
        lines[0].contains("route=acme_pool pool=solver") && lines[0].contains("outcome=closed"),
        "{lines:?}"
    );
    let text = get_metrics(metrics);
    let routed = |route: &str, pool: &str| {
        metric(
            &text,
            "sniroute_routed_connections_total",
            &[
                ("listener", &listen.to_string()),
                ("route", route),
                ("pool", pool),
            ],
        )
    };
    assert_eq!(routed("acme_pool", "solver"), Some(1.0), "{text}");
    assert_eq!(routed("web.example.com", "web"), Some(1.0), "{text}");
}

#[test]
fn redirect_with_a_default_is_refused_at_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[[listeners]]\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\ndefault = \"web\"\nredirect_https = true\n\
         [upstreams.web]\nservers = [\"127.0.0.2:80\"]\n",
    );
    let (code, _, err) = run_cli(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("sniroute.toml:5:18: listener on 127.0.0.1:8080: `redirect_https = true` and `default = \"web\"` cannot go together"),
        "{err}"
    );
}
