//! The command line: `--check`, `--explain`, `--version`, start-up errors.

mod common;

use common::*;

const GOOD: &str = r#"
[[listeners]]
bind = ["127.0.0.1:18443", "[::1]:18443"]
protocol = "tls"
default = "apps"
[listeners.routes]
"rancher.example.com" = "rancher"
"*.apps.example.com" = "apps"
"~^argo-[a-z]+\\.example\\.com$" = "apps"

[[listeners]]
bind = "127.0.0.1:18080"
protocol = "http"
[listeners.routes]
"rancher.example.com" = "rancher"

[upstreams.rancher]
servers = ["127.0.0.2:443", { addr = "127.0.0.3:443", weight = 2 }, { addr = "127.0.0.9:443", backup = true }]
max_fails = 3
fail_timeout = "5s"

[upstreams.apps]
servers = ["127.0.0.4:443"]
"#;

#[test]
fn check_accepts_a_good_config_and_summarises_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), GOOD);
    for flag in ["--check", "-t"] {
        let (code, out, err) = run_cli(&["--config", path.to_str().unwrap(), flag]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with(&format!("{}: OK\n", path.display())),
            "{out}"
        );
        assert!(out.contains("tls   127.0.0.1:18443, [::1]:18443  routes: 1 exact, 1 wildcard, 1 regex; default: apps"), "{out}");
        assert!(out.contains("        *.apps.example.com -> apps"), "{out}");
        assert!(
            out.contains(
                "rancher (least_conn, 2 server(s) + 1 backup, max_fails=3, fail_timeout=5s)"
            ),
            "{out}"
        );
    }
}

#[test]
fn check_rejects_a_bad_config_with_file_line_col_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &GOOD.replace(
            "\"*.apps.example.com\" = \"apps\"",
            "\"*.apps.example.com\" = \"foo\"",
        ),
    );
    let (code, out, err) = run_cli(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "sniroute: error: {}:8:24: route `*.apps.example.com` points to unknown upstream `foo`; defined upstreams: apps, rancher\n",
            path.display()
        )
    );

    let path = write_config(dir.path(), "[[listeners]\n");
    let (code, _, err) = run_cli(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!("sniroute: error: {}:1:", path.display())),
        "{err}"
    );

    let (code, _, err) = run_cli(&["--config", "/nonexistent/sniroute.toml", "--check"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("sniroute: error: cannot read config file /nonexistent/sniroute.toml:"),
        "{err}"
    );
}

#[test]
fn explain_shows_listener_route_pool_and_servers() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), GOOD);
    let p = path.to_str().unwrap();

    let (code, out, _) = run_cli(&["--config", p, "--explain", "Rancher.Example.com:18443"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "name: rancher.example.com\n\n\
         listener 127.0.0.1:18443, [::1]:18443 (tls)\n  \
         route:   rancher.example.com\n  \
         pool:    rancher (least_conn, 2 server(s) + 1 backup, max_fails=3, fail_timeout=5s)\n  \
         server:  127.0.0.2:443 weight=1\n  \
         server:  127.0.0.3:443 weight=2\n  \
         server:  127.0.0.9:443 weight=1 backup\n"
    );

    let (_, out, _) = run_cli(&[
        "--config",
        p,
        "--explain",
        "argo-cd.example.com",
        "--listener",
        "127.0.0.1:18443",
    ]);
    assert!(
        out.contains("route:   ~^argo-[a-z]+\\.example\\.com$\n  pool:    apps "),
        "{out}"
    );

    let (_, out, _) = run_cli(&["--config", p, "--explain", "unknown.example.org:18080"]);
    assert!(out.contains("listener 127.0.0.1:18080 (http)\n  no route and no default: the client gets a 421 Misdirected Request"), "{out}");

    // Without a port: every listener.
    let (_, out, _) = run_cli(&["--config", p, "--explain", "x.apps.example.com"]);
    assert_eq!(out.matches("\nlistener ").count(), 2, "{out}");
}

#[test]
fn version_and_help() {
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(
        (code, out),
        (0, format!("sniroute {}\n", env!("CARGO_PKG_VERSION")))
    );
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--check",
        "--explain",
        "--listener",
        "--version",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn a_bind_that_fails_stops_start_up_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[[listeners]]\nbind = \"{addr}\"\nprotocol = \"tls\"\ndefault = \"p\"\n[upstreams.p]\nservers = [\"127.0.0.2:1\"]\n"),
    );
    let (code, _, err) = run_cli(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("sniroute: error: cannot bind {addr}: ")),
        "{err}"
    );
    assert!(err.contains("(another process listens there)"), "{err}");
}

#[test]
fn check_summarises_ten_thousand_routes_on_one_screen() {
    let mut text = String::from(
        "[[listeners]]\nbind = \"127.0.0.1:18443\"\nprotocol = \"tls\"\n[listeners.routes]\n",
    );
    for i in 0..10_000 {
        text.push_str(&format!("\"host{i}.example.com\" = \"p\"\n"));
    }
    text.push_str("[upstreams.p]\nservers = [\"127.0.0.2:443\"]\n");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &text);
    let (code, out, _) = run_cli(&["--config", path.to_str().unwrap(), "-t"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("routes: 10000 exact, 0 wildcard, 0 regex; default: none"),
        "{out}"
    );
    assert!(
        out.contains("        ... and 9980 more (ask about one with --explain HOST)\n"),
        "{out}"
    );
    assert!(out.lines().count() < 40, "{out}");
}

#[test]
fn the_example_config_passes_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let (code, out, err) = run_cli(&["--config", example, "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("127.0.0.1:8443"), "{out}");
}

/// Runs `--check` on `text`; stderr with the temp dir left out, so that
/// messages read `sniroute.toml:LINE:COL: ...`.
fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), text);
    let (code, out, err) = run_cli(&["--config", path.to_str().unwrap(), "--check"]);
    let dir = format!("{}/", dir.path().display());
    (code, out, err.replace(&dir, ""))
}

/// `--check` refuses `text` with exit code 1, the error at `at`
/// (`sniroute.toml:LINE:COL`) and each of `words` in its message.
fn assert_rejected(text: &str, at: &str, words: &[&str]) {
    let (code, out, err) = check(text);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    let prefix = format!("sniroute: error: {at}: ");
    assert!(err.starts_with(&prefix), "want {prefix:?}, got {err:?}");
    for word in words {
        assert!(err.contains(word), "want {word:?} in {err:?}");
    }
}

#[test]
fn check_says_a_port_is_out_of_range() {
    let bind = GOOD.replace("\"127.0.0.1:18080\"", "\"127.0.0.1:99999\"");
    let words = ["port 99999 is out of range", "1 to 65535"];
    assert_rejected(&bind, "sniroute.toml:12:8", &words);
    assert_rejected(
        &GOOD.replace("\"[::1]:18443\"", "\"[::1]:99999\""),
        "sniroute.toml:3:28",
        &words,
    );
    for server in ["127.0.0.4:99999", "localhost:99999"] {
        let text = GOOD.replace("\"127.0.0.4:443\"", &format!("\"{server}\""));
        assert_rejected(&text, "sniroute.toml:23:12", &words);
    }
}

#[test]
fn check_turns_nginx_server_parameters_into_the_table_form() {
    let with = |server: &str| GOOD.replace("\"127.0.0.4:443\"", &format!("\"{server}\""));
    assert_rejected(
        &with("127.0.0.4:443 weight=2"),
        "sniroute.toml:23:12",
        &["{ addr = \"127.0.0.4:443\", weight = 2 }"],
    );
    assert_rejected(
        &with("127.0.0.4:443 backup"),
        "sniroute.toml:23:12",
        &["{ addr = \"127.0.0.4:443\", backup = true }"],
    );
    assert_rejected(
        &with("127.0.0.4:443 weight=3 max_fails=2 fail_timeout=30"),
        "sniroute.toml:23:12",
        &[
            "{ addr = \"127.0.0.4:443\", weight = 3 }",
            "max_fails = 2",
            "fail_timeout = \"30s\"",
            "[upstreams.apps]",
        ],
    );
    assert_rejected(
        &with("127.0.0.4:443 down"),
        "sniroute.toml:23:12",
        &["`down`"],
    );
}

#[test]
fn check_says_a_server_is_host_port_not_a_url() {
    let with = |server: &str| GOOD.replace("\"127.0.0.4:443\"", &format!("\"{server}\""));
    for (url, instead) in [
        ("https://127.0.0.4:443", "\"127.0.0.4:443\""),
        ("https://node.lan", "\"node.lan:443\""),
        ("http://node.lan/", "\"node.lan:80\""),
    ] {
        assert_rejected(
            &with(url),
            "sniroute.toml:23:12",
            &["not a URL", "host:port", instead],
        );
    }
}

#[test]
fn check_rejects_port_zero() {
    assert_rejected(
        &GOOD.replace("\"127.0.0.1:18080\"", "\"127.0.0.1:0\""),
        "sniroute.toml:12:8",
        &["bind `127.0.0.1:0`", "port 0", "fixed port"],
    );
    assert_rejected(
        &format!("[metrics]\nbind = \"127.0.0.1:0\"\n{GOOD}"),
        "sniroute.toml:2:8",
        &["metrics.bind `127.0.0.1:0`", "port 0", "fixed port"],
    );
    for server in ["127.0.0.4:0", "localhost:0"] {
        let text = GOOD.replace("\"127.0.0.4:443\"", &format!("\"{server}\""));
        assert_rejected(&text, "sniroute.toml:23:12", &["port 0", "1 to 65535"]);
    }
}

#[test]
fn check_reads_bare_integers_as_seconds_and_says_how_to_write_a_duration() {
    let text = format!(
        "[timeouts]\npeek = 4\nconnect = 2\nidle = 3600\nshutdown = 0\n{}",
        GOOD.replace("fail_timeout = \"5s\"", "fail_timeout = 30")
    );
    let (code, out, err) = check(&text);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("timeouts: peek 4s, connect 2s, idle 1h, shutdown 0s;"),
        "{out}"
    );
    assert!(out.contains("max_fails=3, fail_timeout=30s)"), "{out}");

    let words = ["duration", "\"5s\"", "seconds"];
    assert_rejected(
        &format!("[timeouts]\nidle = true\n{GOOD}"),
        "sniroute.toml:2:8",
        &words,
    );
    assert_rejected(
        &GOOD.replace("fail_timeout = \"5s\"", "fail_timeout = 1.5"),
        "sniroute.toml:20:16",
        &words,
    );
    assert_rejected(
        &format!("[timeouts]\nconnect = 0\n{GOOD}"),
        "sniroute.toml:2:11",
        &["timeouts.connect must be greater than zero"],
    );
}

#[test]
fn check_hints_at_the_brackets_of_listeners_upstreams_and_routes() {
    let listener = "bind = \"127.0.0.1:18443\"\nprotocol = \"tls\"\ndefault = \"apps\"\n";
    let upstream = "\n[upstreams.apps]\nservers = [\"127.0.0.4:443\"]\n";
    assert_rejected(
        &format!("[listeners]\n{listener}{upstream}"),
        "sniroute.toml:1:1",
        &["write [[listeners]]", "one per listener"],
    );
    assert_rejected(
        &format!("[[listeners]]\n{listener}\n[[upstreams]]\nservers = [\"127.0.0.4:443\"]\n"),
        "sniroute.toml:6:1",
        &["write [upstreams.NAME]", "one per upstream"],
    );
    // Routes above their listener, or in double brackets.
    assert_rejected(
        &format!("[listeners.routes]\n\"a.example.com\" = \"apps\"\n\n[[listeners]]\n{listener}{upstream}"),
        "sniroute.toml:4:1",
        &["[listeners.routes]", "after the [[listeners]] it belongs to"],
    );
    assert_rejected(
        &format!("[[listeners]]\n{listener}[[listeners.routes]]\n\"a.example.com\" = \"apps\"\n{upstream}"),
        "sniroute.toml:5:1",
        &["write [listeners.routes] (single brackets)"],
    );
}

#[test]
fn check_warns_about_unanchored_regex_routes_and_still_passes() {
    let (code, _, err) = check(GOOD);
    assert_eq!((code, err.as_str()), (0, ""));
    let text = GOOD.replace(r#""~^argo-[a-z]+\\.example\\.com$""#, r#""~argo""#);
    let (code, out, err) = check(&text);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": OK\n"), "{out}");
    assert!(
        err.starts_with("sniroute: warning: sniroute.toml:9:1: route `~argo`"),
        "{err}"
    );
    for word in ["no `^` at the start", "no `$` at the end", "`~^argo$`"] {
        assert!(err.contains(word), "want {word:?} in {err:?}");
    }
}

#[test]
fn unanchored_regex_routes_are_logged_at_start_and_on_reload() {
    let port = free_port("127.0.0.1");
    let config = |pattern: &str| {
        format!("[[listeners]]\nbind = \"127.0.0.1:{port}\"\nprotocol = \"tls\"\n[listeners.routes]\n\"{pattern}\" = \"apps\"\n[upstreams.apps]\nservers = [\"127.0.0.4:443\"]\n")
    };
    let sniroute = Sniroute::start(&config("~internal"));
    let log = sniroute.log();
    let warning = log.lines().find(|l| l.contains("route `~internal`"));
    assert!(warning.is_some_and(|l| l.contains("WARN")), "{log}");
    std::fs::write(sniroute.path(), config("~^beta")).unwrap();
    sniroute.signal("HUP");
    let log = sniroute.wait_log("route `~^beta`");
    assert!(log.contains("no `$` at the end"), "{log}");
}

#[test]
fn explain_on_a_port_no_listener_has_lists_the_binds() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), GOOD);
    let p = path.to_str().unwrap();
    let binds = "127.0.0.1:18443, [::1]:18443 (tls); 127.0.0.1:18080 (http)";
    for (args, wanted) in [
        (&["--explain", "a.example.com:9999"][..], "port 9999"),
        (
            &["--explain", "a.example.com", "--listener", "127.0.0.1:9999"],
            "127.0.0.1:9999",
        ),
    ] {
        let (code, out, err) = run_cli(&[&["--config", p][..], args].concat());
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert!(err.starts_with("sniroute: error: "), "{err}");
        for word in [wanted, binds] {
            assert!(err.contains(word), "want {word:?} in {err:?}");
        }
    }
}

#[test]
fn explain_an_ip_address_as_tls_clients_send_it_no_sni() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace(
        "\"rancher.example.com\" = \"rancher\"",
        "\"rancher.example.com\" = \"rancher\"\n\"10.0.0.1\" = \"rancher\"",
    );
    let path = write_config(dir.path(), &text);
    let p = path.to_str().unwrap();
    for (host, http_route) in [
        ("10.0.0.1", "route:   10.0.0.1\n"),
        ("[::1]", "no route and no default"),
        ("::1", "no route and no default"),
    ] {
        let (code, out, err) = run_cli(&["--config", p, "--explain", host]);
        assert_eq!(code, 0, "{err}");
        let (head, listeners) = out.split_once("\nlistener ").unwrap();
        for word in [
            "no SNI",
            "RFC 6066",
            "TLS listeners",
            "default",
            "HTTP",
            "Host",
        ] {
            assert!(head.contains(word), "{host}: want {word:?} in {head:?}");
        }
        let (tls, http) = listeners.split_once("\nlistener ").unwrap();
        assert!(tls.contains("(tls)\n  route:   default\n"), "{host}: {out}");
        assert!(http.contains(http_route), "{host}: {out}");
    }
}

#[test]
fn help_names_signals_log_settings_and_environment() {
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    for word in [
        "SIGHUP",
        "SIGTERM",
        "SIGINT",
        "second signal",
        "SIGUSR2",
        "binary upgrade",
        "fd store",
        "[log]",
        "format = \"text\"",
        "\"json\"",
        "level",
        "access_log",
        "RUST_LOG",
        "SNIROUTE_RELAY",
        "NOTIFY_SOCKET",
    ] {
        assert!(out.contains(word), "want {word:?} in --help:\n{out}");
    }
}

#[test]
fn explain_says_an_unrouted_name_is_redirected_on_a_redirect_https_listener() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        "[[listeners]]\nbind = \"127.0.0.1:18080\"\nprotocol = \"http\"\nredirect_https = true\n\
                [listeners.routes]\n\"a.example.com\" = \"web\"\n\
                [upstreams.web]\nservers = [\"127.0.0.2:80\"]\n";
    let path = write_config(dir.path(), text);
    let (code, out, err) = run_cli(&[
        "--config",
        path.to_str().unwrap(),
        "--explain",
        "Other.Example.com:18080",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "no route: redirect_https answers 308 to https://other.example.com/..., no server is contacted"
        ),
        "{out}"
    );
}
