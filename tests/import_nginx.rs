//! `sniroute import-nginx` against the real nginx: the same nginx config runs in
//! nginx and, imported, in sniroute; the same clients must reach the same
//! upstreams through both (or be refused by both), apart from the differences
//! the import writes down as comments.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::nginx::{load_stream_module, Nginx};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// What a client sends.
#[derive(Clone, Copy, Debug)]
enum Probe<'a> {
    /// A TLS ClientHello with this SNI (or none).
    Tls(Option<&'a str>),
    /// An HTTP/1.1 request head with this Host.
    Http(&'a str),
}

static NONCE: AtomicU64 = AtomicU64::new(1);

/// The bytes of a probe, unique to this call.
fn probe_bytes(probe: Probe<'_>) -> Vec<u8> {
    let nonce = NONCE.fetch_add(1, Ordering::SeqCst);
    match probe {
        Probe::Tls(sni) => client_hello(sni, nonce),
        Probe::Http(host) => {
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Probe: {nonce}\r\n\r\n").into_bytes()
        }
    }
}

/// A connection to `proxy` from the loopback address `from` (any if `None`).
async fn connect_from(from: Option<&str>, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket
            .bind(SocketAddr::new(ip.parse().unwrap(), 0))
            .unwrap();
    }
    socket.connect(proxy).await.unwrap()
}

/// An upstream that received what a client sent, and what came before it on
/// that connection (a PROXY header, or nothing).
#[derive(Debug)]
struct Reached {
    upstream: String,
    header: String,
}

/// Sends `sent` on `stream`; returns the upstream that received `bytes` (the
/// end of `sent`, after any PROXY header of the client's), or `None` if the
/// proxy closed or answered by itself.
async fn forward(
    stream: &mut TcpStream,
    sent: &[u8],
    bytes: &[u8],
    upstreams: &[&Upstream],
) -> Option<Reached> {
    let received = || {
        upstreams.iter().find_map(|u| {
            let got = u.received.lock().unwrap();
            let r = got.iter().find(|r| r.ends_with(bytes))?;
            let header = String::from_utf8_lossy(&r[..r.len() - bytes.len()]).into_owned();
            Some(Reached {
                upstream: u.name.clone(),
                header,
            })
        })
    };
    stream.write_all(sent).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        if let Some(reached) = received() {
            return Some(reached);
        }
        // The upstreams never write, so anything from the proxy (a close, a TLS
        // alert, a 421) means it did not forward this connection.
        let read = tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await;
        if read.is_ok() {
            let late = received();
            assert!(late.is_none(), "answered and forwarded: {late:?}");
            return None;
        }
        assert!(start.elapsed() < DEADLINE, "no outcome");
    }
}

/// Where one probe went: the name of the upstream that received exactly the
/// bytes sent, or `None` if the proxy closed or answered by itself.
async fn route(proxy: SocketAddr, probe: Probe<'_>, upstreams: &[&Upstream]) -> Option<String> {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let bytes = probe_bytes(probe);
    let reached = forward(&mut stream, &bytes, &bytes, upstreams).await?;
    assert_eq!(reached.header, "", "{probe:?}: more than the client sent");
    Some(reached.upstream)
}

/// The pool of an upstream named `pool#n`.
fn pool(upstream: Option<String>) -> Option<String> {
    upstream.map(|u| u.split('#').next().unwrap_or_default().to_owned())
}

/// Runs every probe against every address, in order; returns the pools reached.
async fn routes(
    addrs: &[SocketAddr],
    probes: &[Probe<'_>],
    upstreams: &[&Upstream],
) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for addr in addrs {
        for probe in probes {
            out.push(pool(route(*addr, *probe, upstreams).await));
        }
    }
    out
}

/// Imports `dir/nginx.conf` with the real binary, which must exit 0; checks
/// the result passes `--check`; returns its text.
fn import(dir: &Path) -> String {
    import_with(dir, &[])
}

/// [`import`] with more arguments (`--allow-lossy`).
fn import_with(dir: &Path, args: &[&str]) -> String {
    let conf = dir.join("nginx.conf");
    let mut all = vec!["import-nginx", conf.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, toml, err) = run_cli(&all);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("\nsniroute: translated ") || err.starts_with("sniroute: translated "),
        "{err}"
    );
    let path = dir.join("imported.toml");
    std::fs::write(&path, &toml).unwrap();
    let (code, out, err) = run_cli(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "imported config fails --check: {err}\n{toml}");
    assert!(
        out.starts_with(&format!("{}: OK\n", path.display())),
        "{out}"
    );
    toml
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Starts `n` upstreams named `pool#1..n` on 127.0.0.x, x from `first_ip`.
async fn nodes(pool: &str, first_ip: u8, n: u8) -> Vec<Upstream> {
    let mut out = Vec::new();
    for i in 0..n {
        let ip = format!("127.0.0.{}", first_ip + i);
        out.push(Upstream::start(&ip, &format!("{pool}#{}", i + 1), Mode::Hold).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rke2_clusters_route_the_same_in_nginx_and_sniroute() {
    // Cluster A: three nodes, :443 and :80. Cluster B: two nodes and a backup.
    // A lone legacy server reached by address only.
    let a_https = nodes("a_https", 2, 3).await;
    let a_http = nodes("a_http", 2, 3).await;
    let b_https = nodes("b_https", 5, 3).await;
    let legacy = nodes("legacy", 8, 1).await;
    let server = |u: &Upstream| u.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (tls_port, http_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let tls = [
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
        format!("[::1]:{tls_port}").parse().unwrap(),
    ];
    let http = [
        SocketAddr::from(([127, 0, 0, 1], http_port)),
        format!("[::1]:{http_port}").parse().unwrap(),
    ];
    write(
        dir.path(),
        "nginx.conf",
        &format!(
            "{}\nworker_processes 1;\nevents {{ worker_connections 512; }}\n\nstream {{\n    include streams.d/*.conf;\n}}\n",
            load_stream_module()
        ),
    );
    write(
        dir.path(),
        "streams.d/rke2.conf",
        &format!(
            r#"map $ssl_preread_server_name $rke2_https {{
    hostnames;
    include maps/https.map;
}}

upstream a_https {{
    least_conn;
    server {} max_fails=3 fail_timeout=5s;
    server {} max_fails=3 fail_timeout=5s;
    server {} max_fails=3 fail_timeout=5s;
}}
upstream a_http {{
    least_conn;
    server {} max_fails=3 fail_timeout=5s;
    server {} max_fails=3 fail_timeout=5s;
    server {} max_fails=3 fail_timeout=5s;
}}
upstream b_https {{
    server {} weight=2;
    server {};
    server {} backup;
}}

server {{
    listen {};
    listen {};
    ssl_preread on;
    proxy_pass $rke2_https;
    proxy_connect_timeout 2s;
}}
server {{
    listen {};
    listen {};
    proxy_pass a_http;
}}
"#,
            server(&a_https[0]),
            server(&a_https[1]),
            server(&a_https[2]),
            server(&a_http[0]),
            server(&a_http[1]),
            server(&a_http[2]),
            server(&b_https[0]),
            server(&b_https[1]),
            server(&b_https[2]),
            tls[0],
            tls[1],
            http[0],
            http[1],
        ),
    );
    write(
        dir.path(),
        "maps/https.map",
        &format!(
            r#"default                          a_https;
rancher.example.com              a_https;
*.apps.example.com               a_https;
.cluster-b.example.net           b_https;
*.apps.b.example.com             b_https;
www.example.*                    b_https;
~^argo-[a-z0-9]+\.example\.com$  b_https;
~*^grafana\.                     b_https;
legacy.example.com               {};
"#,
            server(&legacy[0])
        ),
    );
    let toml = import(dir.path());
    assert!(toml.contains("protocol = \"tcp\""), "{toml}");
    assert!(
        toml.contains("from www.example.*: sniroute has no trailing wildcards"),
        "{toml}"
    );

    use Probe::*;
    let tls_probes = [
        Tls(Some("rancher.example.com")),
        Tls(Some("Rancher.Example.COM")),
        Tls(Some("web.apps.example.com")),
        Tls(Some("x.y.apps.example.com")),
        Tls(Some("apps.b.example.com")),
        Tls(Some("web.apps.b.example.com")),
        Tls(Some("cluster-b.example.net")),
        Tls(Some("deep.x.cluster-b.example.net")),
        Tls(Some("www.example.org")),
        Tls(Some("www.example.co.uk")),
        Tls(Some("wwwx.example.org")),
        Tls(Some("argo-cd.example.com")),
        Tls(Some("argo-.example.com")),
        Tls(Some("GRAFANA.example.com")),
        Tls(Some("grafana.example.com")),
        Tls(Some("legacy.example.com")),
        Tls(Some("unknown.example.org")),
        Tls(None),
    ];
    let expected_tls = [
        "a_https", "a_https", "a_https", "a_https", "a_https", "b_https", "b_https", "b_https",
        "b_https", "b_https", "a_https", "b_https", "a_https", "b_https", "b_https", "legacy",
        "a_https", "a_https",
    ];
    let http_probes = [Http("rancher.example.com"), Http("anything.example.org")];
    let all: Vec<&Upstream> = [&a_https, &a_http, &b_https, &legacy]
        .into_iter()
        .flatten()
        .collect();

    let nginx = Nginx::start(dir.path(), &[tls[0], tls[1], http[0], http[1]]);
    let nginx_tls = routes(&tls, &tls_probes, &all).await;
    let nginx_http = routes(&http, &http_probes, &all).await;
    drop(nginx);

    let proxy = Sniroute::start(&toml);
    let sniroute_tls = routes(&tls, &tls_probes, &all).await;
    let sniroute_http = routes(&http, &http_probes, &all).await;

    let expected: Vec<Option<String>> = expected_tls
        .iter()
        .chain(expected_tls.iter())
        .map(|p| Some((*p).to_owned()))
        .collect();
    assert_eq!(nginx_tls, expected, "nginx");
    assert_eq!(sniroute_tls, expected, "sniroute\n{}", proxy.log());
    let expected_http = vec![Some("a_http".to_owned()); 4];
    assert_eq!(nginx_http, expected_http, "nginx");
    assert_eq!(sniroute_http, expected_http, "sniroute\n{}", proxy.log());
    // nginx and sniroute both keep the backup idle while the primaries are up.
    assert_eq!(b_https[2].accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_both_refuse_unknown_names_and_case_differences_are_the_documented_ones()
{
    let api = nodes("api", 2, 2).await;
    let web = nodes("web", 4, 1).await;
    let db = nodes("db", 5, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr("127.0.0.1");
    write(
        dir.path(),
        "nginx.conf",
        &format!(
            r#"{}
events {{}}
stream {{
    map $ssl_preread_server_name $backend {{
        hostnames;
        api.example.com               api;
        *.example.com                 web;
        ~^Caps\.example\.org$         web;
        "~^db-[0-9]{{1,3}}\.example\.org$" {};
    }}
    upstream api {{
        server {};
        server {};
    }}
    upstream web {{ server {}; }}
    server {{
        listen {listen};
        ssl_preread on;
        preread_timeout 5s;
        proxy_pass $backend;
    }}
}}
"#,
            load_stream_module(),
            db[0].addr,
            api[0].addr,
            api[1].addr,
            web[0].addr,
        ),
    );
    let toml = import(dir.path());
    // The two meaning changes this test shows are written into the config.
    assert!(toml.contains("# map $backend ("), "{toml}");
    assert!(
        toml.contains(") has no default: nginx closed connections for names it"),
        "{toml}"
    );
    assert!(toml.contains(r"# ~^Caps\.example\.org$ ("), "{toml}");
    assert!(
        toml.contains("sniroute matches the lowercased name, so they never match now"),
        "{toml}"
    );
    assert!(
        toml.contains(
            "sniroute lowercases names first, so they now also match names sent in upper case"
        ),
        "{toml}"
    );

    use Probe::*;
    let probes = [
        Tls(Some("api.example.com")),
        Tls(Some("www.example.com")),
        Tls(Some("a.b.example.com")),
        Tls(Some("example.com")),
        Tls(Some("unknown.example.org")),
        Tls(None),
        Tls(Some("db-12.example.org")),
        Tls(Some("DB-12.example.org")),
        Tls(Some("Caps.example.org")),
    ];
    let all: Vec<&Upstream> = [&api, &web, &db].into_iter().flatten().collect();

    let nginx = Nginx::start(dir.path(), &[listen]);
    let nginx_routes = routes(&[listen], &probes, &all).await;
    drop(nginx);
    let proxy = Sniroute::start(&toml);
    let sniroute_routes = routes(&[listen], &probes, &all).await;

    let some = |p: &str| Some(p.to_owned());
    let same = [
        some("api"),
        some("web"),
        some("web"),
        None,
        None,
        None,
        some("db"),
    ];
    // nginx's `~` regexes see the name as sent; sniroute's see it lowercased.
    let nginx_rest = [None, some("web")];
    let sniroute_rest = [some("db"), None];
    assert_eq!(nginx_routes, [&same[..], &nginx_rest[..]].concat(), "nginx");
    assert_eq!(
        sniroute_routes,
        [&same[..], &sniroute_rest[..]].concat(),
        "sniroute\n{}",
        proxy.log()
    );
    // Refused names reached no server: api saw its one probe through each proxy.
    assert_eq!(api[0].accepted() + api[1].accepted(), 2);
}

#[test]
fn import_errors_name_the_file_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nginx.conf");
    let (code, out, err) = run_cli(&["import-nginx", conf.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with(&format!(
            "sniroute: error: cannot read {}: ",
            conf.display()
        )),
        "{err}"
    );

    std::fs::write(&conf, "events {}\nhttp {\n  server { listen 80; }\n}\n").unwrap();
    let (code, out, err) = run_cli(&["import-nginx", conf.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!("sniroute: error: {}: no `stream {{}}` block (also none in its includes): sniroute replaces nginx's stream module, so there is nothing to translate\n", conf.display())
    );

    std::fs::write(&conf, "stream {\n  server {\n    listen 443;\n").unwrap();
    let (code, _, err) = run_cli(&["import-nginx", conf.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "sniroute: error: {}:3: unexpected end of file: a `}}` is missing\n",
            conf.display()
        )
    );
}

#[test]
fn import_nginx_stands_alone_and_leaves_the_other_flags_as_they_were() {
    let (code, _, err) = run_cli(&["--config", "x.toml", "import-nginx", "nginx.conf"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("the subcommand 'import-nginx' cannot be used with '--config <FILE>'"),
        "{err}"
    );
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(
        (code, out.as_str()),
        (0, concat!("sniroute ", env!("CARGO_PKG_VERSION"), "\n"))
    );
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\nUsage: sniroute [OPTIONS]\n       sniroute <COMMAND>\n"),
        "{out}"
    );
    // Subcommands and their summaries (clap aligns the column to the longest name).
    for (command, summary) in [
        ("import-nginx", "Translate the `stream {}` block"),
        ("acme-thumbprint", "Print the RFC 7638 thumbprint"),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(command))
            .unwrap_or_else(|| panic!("no {command} in {out}"));
        assert!(line.contains(summary), "{line}");
    }
    let (code, out, _) = run_cli(&["import-nginx", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("      --allow-lossy  Exit 0 even when the import is lossy"),
        "{out}"
    );
    assert!(
        out.contains("Exit status: 0 when everything that decides who may connect"),
        "{out}"
    );
    assert!(out.contains("; 3 when something of that was not"), "{out}");
}

/// A server that speaks first, as SSH and SMTP servers do: it sends `banner`
/// on accept, then echoes every line back.
async fn speaks_first(ip: &str, banner: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.write_all(banner.as_bytes()).await?;
                let mut buf = [0u8; 1024];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    stream.write_all(&buf[..n]).await?;
                }
            });
        }
    });
    addr
}

/// A client that waits for the server to speak first: the banner it gets
/// before sending anything, then the answer to `line`.
async fn converse(proxy: SocketAddr, line: &str) -> (String, String) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let mut stream = BufReader::new(stream);
    let read_line = async |stream: &mut BufReader<TcpStream>| {
        let mut text = String::new();
        tokio::time::timeout(DEADLINE, stream.read_line(&mut text))
            .await
            .unwrap_or_else(|_| panic!("{proxy}: nothing within {DEADLINE:?}"))
            .unwrap();
        text
    };
    let banner = read_line(&mut stream).await;
    stream.get_mut().write_all(line.as_bytes()).await.unwrap();
    (banner, read_line(&mut stream).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_speak_first_are_reached_through_nginx_and_sniroute_alike() {
    // SSH and SMTP: the client says nothing until the server's banner came.
    // Ports 443 and 25 would be no different; these are free ports.
    let ssh = speaks_first("127.0.0.2", "SSH-2.0-OpenSSH_9.2\r\n").await;
    let smtp = speaks_first("127.0.0.3", "220 mail.example.com ESMTP\r\n").await;
    let (git, mail) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "nginx.conf",
        &format!(
            "{}\nevents {{}}\nstream {{\n    upstream git_ssh {{ server {ssh}; }}\n    server {{ listen {git}; proxy_pass git_ssh; }}\n    server {{ listen {mail}; proxy_pass {smtp}; proxy_timeout 1h; }}\n}}\n",
            load_stream_module()
        ),
    );
    let toml = import(dir.path());
    assert_eq!(toml.matches("protocol = \"tcp\"").count(), 2, "{toml}");

    let talk = async || {
        (
            converse(git, "SSH-2.0-client\r\n").await,
            converse(mail, "EHLO client.example.com\r\n").await,
        )
    };
    let expected = (
        (
            "SSH-2.0-OpenSSH_9.2\r\n".to_owned(),
            "SSH-2.0-client\r\n".to_owned(),
        ),
        (
            "220 mail.example.com ESMTP\r\n".to_owned(),
            "EHLO client.example.com\r\n".to_owned(),
        ),
    );
    let nginx = Nginx::start(dir.path(), &[git, mail]);
    assert_eq!(talk().await, expected, "nginx\n{}", nginx.log());
    drop(nginx);
    let proxy = Sniroute::start(&toml);
    assert_eq!(talk().await, expected, "sniroute\n{}", proxy.log());
}

/// The client address in a PROXY v1 header (`PROXY TCP4 src dst sport dport`).
fn header_client(header: &str) -> Option<SocketAddr> {
    let fields: Vec<&str> = header
        .strip_prefix("PROXY ")?
        .trim_end()
        .split(' ')
        .collect();
    let [_, src, _, sport, _] = fields.as_slice() else {
        return None;
    };
    Some(SocketAddr::new(src.parse().ok()?, sport.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_in_and_out_and_allow_deny_behind_it_are_the_same_in_nginx_and_sniroute() {
    // A balancer on 127.0.0.1 sends the PROXY header to `behind`; `direct`
    // takes clients as they are. Both send the header on to `web` (which the
    // third server uses without it, so the pool is split), and `behind`
    // admits only 203.0.113.0/24, as the header says the client is.
    let web = nodes("web", 2, 1).await;
    let other = nodes("other", 3, 1).await;
    let (behind, direct, plain) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "nginx.conf",
        &format!(
            r#"{}
events {{}}
stream {{
    set_real_ip_from 127.0.0.1;
    map $ssl_preread_server_name $backend {{
        hostnames;
        web.example.com  web;
        default          other;
    }}
    upstream web {{ server {}; }}
    upstream other {{ server {}; }}
    server {{
        listen {behind} proxy_protocol;
        ssl_preread on;
        proxy_pass $backend;
        proxy_protocol on;
        allow 203.0.113.0/24;
        deny all;
    }}
    server {{ listen {direct}; ssl_preread on; proxy_pass web; proxy_protocol on; }}
    server {{ listen {plain}; ssl_preread on; proxy_pass web; }}
}}
"#,
            load_stream_module(),
            web[0].addr,
            other[0].addr,
        ),
    );
    let toml = import(dir.path());
    assert!(toml.contains("[upstreams.web_proxy_protocol]"), "{toml}");
    let all: Vec<&Upstream> = [&web, &other].into_iter().flatten().collect();

    // For each probe: the pool reached and the client named in the header
    // it got ("me" for the probe's own address, "" for no header), or `None`
    // where the proxy refused.
    let probes = async || {
        let mut out = Vec::new();
        for (from, to, client, sni) in [
            // From the balancer: the client it names decides and is passed on.
            ("127.0.0.1", behind, Some("203.0.113.7"), "web.example.com"),
            ("127.0.0.1", behind, Some("203.0.113.8"), "else.example.org"),
            ("127.0.0.1", behind, Some("198.51.100.9"), "web.example.com"),
            // Not the balancer: nginx takes its own address (denied), sniroute
            // closes it (reason=proxy_source).
            ("127.0.0.4", behind, Some("203.0.113.7"), "web.example.com"),
            // Direct clients: passed on as they are, or with no header at all.
            ("127.0.0.5", direct, None, "web.example.com"),
            ("127.0.0.6", plain, None, "web.example.com"),
        ] {
            let mut stream = connect_from(Some(from), to).await;
            let me = stream.local_addr().unwrap();
            let hello = probe_bytes(Probe::Tls(Some(sni)));
            let mut sent = client
                .map(|c| format!("PROXY TCP4 {c} 192.0.2.1 40000 443\r\n").into_bytes())
                .unwrap_or_default();
            sent.extend_from_slice(&hello);
            let reached = forward(&mut stream, &sent, &hello, &all).await;
            out.push(reached.map(|r| {
                let named = match header_client(&r.header) {
                    Some(c) if c == me => "me".to_owned(),
                    Some(c) => c.to_string(),
                    None => {
                        assert_eq!(r.header, "", "not a PROXY v1 header");
                        String::new()
                    }
                };
                (pool(Some(r.upstream)).unwrap_or_default(), named)
            }));
        }
        out
    };
    let reached = |pool: &str, client: &str| Some((pool.to_owned(), client.to_owned()));
    let expected = [
        reached("web", "203.0.113.7:40000"),
        reached("other", "203.0.113.8:40000"),
        None,
        None,
        reached("web", "me"),
        reached("web", ""),
    ];
    let nginx = Nginx::start(dir.path(), &[behind, direct, plain]);
    assert_eq!(probes().await, expected, "nginx\n{}", nginx.log());
    drop(nginx);
    let proxy = Sniroute::start(&toml);
    assert_eq!(probes().await, expected, "sniroute\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_admit_the_same_clients_in_nginx_and_sniroute() {
    // `inherits` takes the stream's list; `exact` is denies, allows, deny all;
    // `lossy` lets 127.0.0.4 in through an allow before a broader deny, which
    // sniroute cannot say (deny wins), so the import says so and exits 3.
    let u = nodes("u", 10, 1).await;
    let (inherits, exact, lossy) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "nginx.conf",
        &format!(
            r#"{}
events {{}}
stream {{
    deny 127.0.0.5;
    upstream u {{ server {}; }}
    server {{ listen {inherits}; proxy_pass u; }}
    server {{
        listen {exact};
        proxy_pass u;
        deny 127.0.0.3;
        allow 127.0.0.0/29;
        allow ::1;
        deny all;
    }}
    server {{
        listen {lossy};
        proxy_pass u;
        allow 127.0.0.4;
        deny 127.0.0.0/29;
    }}
}}
"#,
            load_stream_module(),
            u[0].addr,
        ),
    );
    let conf = dir.path().join("nginx.conf");
    let (code, lossy_toml, err) = run_cli(&["import-nginx", conf.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("sniroute: warning: not translated exactly: allow/deny ("),
        "{err}"
    );
    assert!(
        err.contains("nginx admitted 127.0.0.4 through an allow"),
        "{err}"
    );
    assert!(
        err.ends_with("accept with --allow-lossy (exit status 3)\n"),
        "{err}"
    );
    let toml = import_with(dir.path(), &["--allow-lossy"]);
    assert_eq!(
        toml, lossy_toml,
        "--allow-lossy changes the exit status only"
    );

    let clients = [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.9",
    ];
    let probes = async || {
        let mut out = Vec::new();
        for to in [inherits, exact, lossy] {
            for from in clients {
                let mut stream = connect_from(Some(from), to).await;
                let bytes = format!("hello {}\n", NONCE.fetch_add(1, Ordering::SeqCst));
                let reached =
                    forward(&mut stream, bytes.as_bytes(), bytes.as_bytes(), &[&u[0]]).await;
                out.push(reached.is_some());
            }
        }
        out
    };
    let (y, n) = (true, false);
    let same = [
        y, y, y, n, y, /* exact */ y, n, y, y, n, /* lossy */ n, n,
    ];
    let nginx = Nginx::start(dir.path(), &[inherits, exact, lossy]);
    let nginx_admits = probes().await;
    drop(nginx);
    let proxy = Sniroute::start(&toml);
    let sniroute_admits = probes().await;
    // The one difference the import names: 127.0.0.4 on `lossy`.
    assert_eq!(nginx_admits, [&same[..], &[y, n, y]].concat(), "nginx");
    assert_eq!(
        sniroute_admits,
        [&same[..], &[n, n, y]].concat(),
        "sniroute\n{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_config_with_a_per_client_limit_and_an_https_redirect() {
    // What an edge VM runs: :443 by SNI with one connection per client at a
    // time, and an http {} server on :80 that only redirects to https.
    let apps = nodes("apps", 2, 1).await;
    let (https, http) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "nginx.conf",
        &format!(
            r#"{}
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    server {{
        listen {http};
        server_name _;
        return 301 https://$host$request_uri;
    }}
}}
stream {{
    limit_conn_zone $binary_remote_addr zone=perip:1m;
    limit_conn perip 1;
    upstream apps {{ server {}; }}
    server {{ listen {https}; ssl_preread on; proxy_pass apps; }}
}}
"#,
            load_stream_module(),
            apps[0].addr,
        ),
    );
    let conf = dir.path().join("nginx.conf");
    let (code, _, err) = run_cli(&["import-nginx", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "the redirect is carried over: {err}");
    let toml = import_with(dir.path(), &[]);
    assert!(toml.contains("\nmax_connections_per_ip = 1 "), "{toml}");
    assert!(
        toml.contains(&format!(
            "[[listeners]]\nbind = [\"{http}\"]\nprotocol = \"http\"\nredirect_https = true"
        )),
        "{toml}"
    );

    // A second connection from the same client is refused while the first is
    // open; another client gets through.
    let probes = async || {
        let hello = || probe_bytes(Probe::Tls(Some("app.example.com")));
        let mut first = connect_from(Some("127.0.0.5"), https).await;
        let (a, b) = (hello(), hello());
        let one = forward(&mut first, &a, &a, &[&apps[0]]).await.is_some();
        let mut second = connect_from(Some("127.0.0.5"), https).await;
        let two = forward(&mut second, &b, &b, &[&apps[0]]).await.is_some();
        let mut other = connect_from(Some("127.0.0.6"), https).await;
        let c = hello();
        let three = forward(&mut other, &c, &c, &[&apps[0]]).await.is_some();
        (one, two, three)
    };
    let nginx = Nginx::start(dir.path(), &[https, http]);
    assert_eq!(
        probes().await,
        (true, false, true),
        "nginx\n{}",
        nginx.log()
    );
    // The same redirect from both, but for its code (301 in nginx, 308 here).
    let redirect = async |code: &str| {
        let mut client = TcpStream::connect(http).await.unwrap();
        client
            .write_all(b"GET /a?b=c HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&read_all(&mut client).await).into_owned();
        assert!(answer.starts_with(&format!("HTTP/1.1 {code} ")), "{answer}");
        assert!(
            answer.contains("\r\nLocation: https://app.example.com/a?b=c\r\n"),
            "{answer}"
        );
    };
    redirect("301").await;
    drop(nginx);
    let proxy = Sniroute::start(&toml);
    assert_eq!(
        probes().await,
        (true, false, true),
        "sniroute\n{}",
        proxy.log()
    );
    redirect("308").await;
}
