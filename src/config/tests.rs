use super::*;
use crate::pool::{Balance, HealthPolicy};

fn load_str(text: &str) -> Result<Config, String> {
    parse(text, Path::new("t.toml")).map_err(|e| e.to_string())
}

const MINIMAL: &str = r#"
[[listeners]]
bind = ["127.0.0.1:8443", "[::1]:8443"]
protocol = "tls"
default = "web"
[listeners.routes]
"a.example.com" = "web"

[upstreams.web]
servers = ["127.0.0.2:443", { addr = "127.0.0.3:443", weight = 2 }, { addr = "127.0.0.9:443", backup = true }]
"#;

#[test]
fn defaults_are_those_of_the_spec() {
    let c = load_str(MINIMAL).unwrap();
    assert_eq!(
        c.timeouts,
        Timeouts {
            peek: Duration::from_secs(5),
            connect: Duration::from_secs(3),
            idle: Duration::from_secs(3600),
            shutdown: Duration::from_secs(30),
            udp_idle: Duration::from_secs(30),
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            max_connections: 20_000,
            max_peek_bytes: 16_384,
            max_connections_per_ip: None,
            max_quic_flows: 10_000,
            max_quic_pending_bytes: 8 << 20,
        }
    );
    assert_eq!(
        c.log,
        LogSettings {
            level: LogLevel::Info,
            format: LogFormat::Text,
            access_log: true
        }
    );
    let web = &c.pools["web"];
    assert_eq!(
        web.health(),
        HealthPolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10)
        }
    );
    assert_eq!(web.balance(), Balance::LeastConn);
    let servers: Vec<_> = web
        .members()
        .servers
        .iter()
        .map(|s| (s.addr.to_string(), s.weight, s.backup))
        .collect();
    assert_eq!(
        servers,
        [
            ("127.0.0.2:443".into(), 1, false),
            ("127.0.0.3:443".into(), 2, false),
            ("127.0.0.9:443".into(), 1, true)
        ]
    );
    assert_eq!(c.listeners[0].binds.len(), 2);
    assert_eq!(c.listeners[0].protocol, Protocol::Tls);
}

#[test]
fn the_spec_example_without_proxy_protocol_is_valid() {
    let text = r#"
[timeouts]
peek = "5s"
connect = "3s"
idle = "1h"
shutdown = "30s"
[limits]
max_connections = 20000
max_peek_bytes = 16384
[log]
level = "info"
format = "text"
access_log = true
[metrics]
bind = "127.0.0.1:9100"
[[listeners]]
bind = ["0.0.0.0:443", "[::]:443"]
protocol = "tls"
default = "apps_https"
[listeners.routes]
"rancher.example.com" = "rancher_https"
"*.apps.example.com"  = "apps_https"
"~^argo-[a-z]+\\.example\\.com$" = "apps_https"
[[listeners]]
bind = ["0.0.0.0:80"]
protocol = "http"
[listeners.routes]
"rancher.example.com" = "rancher_http"
[upstreams.rancher_https]
servers = ["192.168.0.1:443", "192.168.0.2:443",
           { addr = "192.168.0.3:443", weight = 2 },
           { addr = "192.168.0.9:443", backup = true }]
balance = "least_conn"
max_fails = 3
fail_timeout = "5s"
proxy_protocol = "off"
[upstreams.apps_https]
servers = ["192.168.0.1:443"]
balance = "round_robin"
[upstreams.rancher_http]
servers = ["192.168.0.1:80"]
"#;
    let c = load_str(text).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.metrics, Some("127.0.0.1:9100".parse().unwrap()));
    let per_ip = format!("[limits]\nmax_connections_per_ip = 50\n{MINIMAL}");
    assert_eq!(
        load_str(&per_ip).unwrap().limits.max_connections_per_ip,
        Some(50)
    );
    assert_eq!(
        c.pools["rancher_https"].health(),
        HealthPolicy {
            max_fails: 3,
            fail_timeout: Duration::from_secs(5)
        }
    );
    assert_eq!(c.pools["apps_https"].balance(), Balance::RoundRobin);
    assert_eq!(c.listeners[0].router.counts(), (1, 1, 1));
}

fn err_with(text: &str) -> String {
    load_str(text).unwrap_err()
}

#[test]
fn unknown_pool_is_named_with_its_location() {
    let text = MINIMAL.replace("\"a.example.com\" = \"web\"", "\"a.example.com\" = \"foo\"");
    assert_eq!(
        err_with(&text),
        "t.toml:7:19: route `a.example.com` points to unknown upstream `foo`; defined upstreams: web"
    );
}

#[test]
fn unknown_key_is_rejected_with_location() {
    let text = MINIMAL.replace("protocol = \"tls\"", "protocol = \"tls\"\nmax_fail = 3");
    let e = err_with(&text);
    assert!(e.starts_with("t.toml:5:1: unknown field `max_fail`"), "{e}");
}

#[test]
fn syntax_error_points_at_the_line() {
    let e = err_with("[[listeners]\nbind = 1");
    assert!(e.starts_with("t.toml:1:"), "{e}");
}

#[test]
fn bad_values_name_key_and_fix() {
    let cases = [
        (
            "[timeouts]\npeek = \"5 parsecs\"\n",
            "t.toml:2:8: timeouts.peek: `5 parsecs` is not a duration",
        ),
        (
            "[timeouts]\nconnect = \"0s\"\n",
            "t.toml:2:11: timeouts.connect must be greater than zero",
        ),
        (
            "[limits]\nmax_connections = 0\n",
            "t.toml:2:19: limits.max_connections = 0 is out of range",
        ),
        (
            "[log]\nlevel = \"loud\"\n",
            "t.toml:2:9: unknown variant `loud`",
        ),
        (
            "[metrics]\nbind = \"localhost:9100\"\n",
            "t.toml:2:8: metrics.bind `localhost:9100` is not an IP:port address",
        ),
        (
            "[metrics]\nbind = \"127.0.0.1:8443\"\n",
            "t.toml:2:8: metrics.bind `127.0.0.1:8443` collides with listener bind `127.0.0.1:8443`",
        ),
        (
            "[metrics]\nport = 1\n",
            "t.toml:2:1: unknown field `port`",
        ),
    ];
    for (prefix, want) in cases {
        let e = err_with(&format!("{prefix}{MINIMAL}"));
        assert!(e.starts_with(want), "got {e:?}, want {want:?}");
    }
}

#[test]
fn bad_listeners_and_servers_are_explained() {
    let cases = [
        (
            MINIMAL.replace("\"[::1]:8443\"", "\"127.0.0.1:8443\""),
            "t.toml:3:27: bind `127.0.0.1:8443` is used twice",
        ),
        (
            MINIMAL.replace("\"[::1]:8443\"", "\"0.0.0.0:8443\""),
            "t.toml:3:27: bind `0.0.0.0:8443` overlaps `127.0.0.1:8443`",
        ),
        (
            MINIMAL.replace("\"[::1]:8443\"", "\"localhost:8443\""),
            "t.toml:3:27: bind `localhost:8443` is not an IP:port address",
        ),
        (
            MINIMAL.replace("\"127.0.0.2:443\"", "\"127.0.0.2\""),
            "t.toml:10:12: server `127.0.0.2` needs a port",
        ),
        (
            MINIMAL.replace("weight = 2", "weight = 0"),
            "t.toml:10:29: upstream `web`: server `127.0.0.3:443` has weight 0",
        ),
        (
            MINIMAL.replace("\"a.example.com\" =", "\"~(\" ="),
            "t.toml:7:1: invalid regex `~(`",
        ),
        (
            MINIMAL.replace("default = \"web\"", "default = \"nope\""),
            "t.toml:5:11: listener default points to unknown upstream `nope`",
        ),
        (
            MINIMAL.replace("protocol = \"tls\"", "protocol = \"udp\""),
            "t.toml:4:12: unknown variant `udp`",
        ),
    ];
    for (text, want) in cases {
        let e = err_with(&text);
        assert!(e.starts_with(want), "got {e:?}, want {want:?}");
    }
}

#[test]
fn no_listener_or_listener_without_routes_is_invalid() {
    assert_eq!(
        err_with("[upstreams.a]\nservers = [\"127.0.0.2:1\"]\n"),
        "t.toml: no [[listeners]] defined: add at least one with `bind`, `protocol` and routes"
    );
    let e = err_with("[[listeners]]\nbind = \"127.0.0.1:1\"\nprotocol = \"http\"\n");
    assert!(
        e.starts_with("t.toml:1:1: listener has no routes and no default"),
        "{e}"
    );
}

#[test]
fn proxy_protocol_towards_servers() {
    use crate::proxy_protocol::Send;
    let pool = |extra: &str| {
        load_str(&format!("{MINIMAL}{extra}\n")).map(|c| c.pools["web"].proxy_protocol())
    };
    assert_eq!(pool(""), Ok(None));
    assert_eq!(pool("proxy_protocol = \"off\""), Ok(None));
    assert_eq!(pool("proxy_protocol = \"v1\""), Ok(Some(Send::V1)));
    assert_eq!(
        pool("proxy_protocol = \"v2\""),
        Ok(Some(Send::V2 { authority: false }))
    );
    assert_eq!(
        pool("proxy_protocol = \"v2\"\nproxy_protocol_authority = true"),
        Ok(Some(Send::V2 { authority: true }))
    );
    let e = pool("proxy_protocol = \"v1\"\nproxy_protocol_authority = true").unwrap_err();
    assert_eq!(e, "t.toml:12:28: upstreams.web.proxy_protocol_authority needs proxy_protocol = \"v2\" (v1 has no TLVs)");
    let e = pool("proxy_protocol = \"v3\"").unwrap_err();
    assert!(
        e.starts_with("t.toml:11:18: unknown variant `v3`, expected one of `off`, `v1`, `v2`"),
        "{e}"
    );
}

#[test]
fn proxy_protocol_from_balancers_in_front() {
    let listener = |extra: &str| {
        let text = MINIMAL.replace(
            "protocol = \"tls\"",
            &format!("protocol = \"tls\"\n{extra}"),
        );
        load_str(&text).map(|c| c.listeners[0].proxy_from.clone())
    };
    assert_eq!(listener(""), Ok(None));
    let nets = listener("accept_proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::1/32\"]");
    let nets: Vec<String> = nets
        .unwrap()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    let cases = [
        (
            "accept_proxy_protocol = true",
            "t.toml:5:25: accept_proxy_protocol needs proxy_protocol_from",
        ),
        (
            "proxy_protocol_from = [\"10.0.0.0/8\"]",
            "t.toml:5:23: proxy_protocol_from is set but accept_proxy_protocol is not true",
        ),
        (
            "accept_proxy_protocol = true\nproxy_protocol_from = []",
            "t.toml:6:23: proxy_protocol_from is empty",
        ),
        (
            "accept_proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/33\"]",
            "t.toml:6:24: proxy_protocol_from: `10.0.0.0/33` is not an address or CIDR block",
        ),
        (
            "accept_proxy_protocol = true\nproxy_protocol_from = [\"10.0.0/8\"]",
            "t.toml:6:24: proxy_protocol_from: `10.0.0/8` is not an address or CIDR block",
        ),
    ];
    for (extra, want) in cases {
        let e = listener(extra).unwrap_err();
        assert!(e.starts_with(want), "got {e:?}, want {want:?}");
    }
}

#[test]
fn dns_names_are_resolved_at_load() {
    let text = MINIMAL.replace("\"127.0.0.2:443\"", "\"localhost:443\"");
    let c = load_str(&text).unwrap();
    let s = &c.pools["web"].members().servers[0];
    assert!(s.addr.ip().is_loopback());
    assert!(s.label.starts_with("localhost:443 ("), "{}", s.label);
}

#[test]
fn routes_keep_file_order_for_regexes() {
    let text = MINIMAL.replace(
        "\"a.example.com\" = \"web\"",
        "\"~b\" = \"web\"\n\"~a\" = \"web\"",
    );
    let c = load_str(&text).unwrap();
    let patterns: Vec<_> = c.listeners[0]
        .router
        .routes()
        .iter()
        .map(|r| r.pattern.to_string())
        .collect();
    assert_eq!(patterns, ["~b", "~a"]);
}

#[test]
fn live_state_carries_over_for_servers_that_stay_in_their_pool() {
    let registry = Registry::default();
    let now = std::time::Instant::now();
    let old = parse_with(MINIMAL, Path::new("t.toml"), None, &registry).unwrap();
    registry.commit(&old.pools);
    let pool = &old.pools["web"];
    let mut attempts = pool.attempts();
    let lease = pool.next_server(&mut attempts, now).unwrap();
    assert_eq!(lease.server().addr.to_string(), "127.0.0.3:443"); // weight 2 goes first
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    pool.record_failure(&pool.members().servers[0], &refused, now);

    // Same pool, one server dropped, weights changed, plus a renamed copy of the pool.
    let text = MINIMAL
        .replace("\"127.0.0.2:443\", ", "")
        .replace("weight = 2", "weight = 5")
        + "[upstreams.web2]\nservers = [\"127.0.0.3:443\"]\n";
    let new = parse_with(&text, Path::new("t.toml"), Some(&old), &registry).unwrap();
    let web = new.pools["web"].members();
    assert_eq!(web.servers[0].addr.to_string(), "127.0.0.3:443");
    assert_eq!(web.servers[0].weight, 5);
    assert_eq!(web.servers[0].active(), 1, "active count survives");
    assert_eq!(
        new.pools["web2"].members().servers[0].active(),
        0,
        "another pool's server is another server"
    );

    let newer = parse_with(MINIMAL, Path::new("t.toml"), Some(&old), &registry).unwrap();
    assert!(
        !newer.pools["web"].members().servers[0].is_up(now),
        "health survives"
    );
    drop(lease);
    assert_eq!(web.servers[0].active(), 0);
    assert_eq!(newer.pools["web"].members().servers[1].active(), 0);
}

#[test]
fn a_server_a_reload_removes_is_listed_as_leaving_while_it_has_connections() {
    let registry = Registry::default();
    let old = parse_with(MINIMAL, Path::new("t.toml"), None, &registry).unwrap();
    registry.commit(&old.pools);
    let pool = &old.pools["web"];
    let lease = pool
        .next_server(&mut pool.attempts(), std::time::Instant::now())
        .unwrap();
    assert_eq!(lease.server().addr.to_string(), "127.0.0.3:443");
    let text = MINIMAL.replace("{ addr = \"127.0.0.3:443\", weight = 2 }, ", "");
    let new = parse_with(&text, Path::new("t.toml"), Some(&old), &registry).unwrap();
    let members = new.pools["web"].members();
    assert!(members
        .servers
        .iter()
        .all(|s| s.addr != lease.server().addr));
    let leaving: Vec<_> = members.leaving().map(|s| (s.addr, s.active())).collect();
    assert_eq!(leaving, [(lease.server().addr, 1)]);
    drop(lease);
    assert_eq!(
        members.leaving().count(),
        0,
        "listed only while it has connections"
    );
    registry.commit(&new.pools);
    let newer = parse_with(&text, Path::new("t.toml"), Some(&new), &registry).unwrap();
    assert_eq!(newer.pools["web"].members().leaving().count(), 0);
}

#[test]
fn offline_parsing_never_resolves_names() {
    let text = MINIMAL.replace("\"127.0.0.2:443\"", "\"localhost:443\"");
    let e = parse_offline(&text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t.toml:10:12: server `localhost:443` would need a DNS lookup"
    );
    assert!(parse_offline(MINIMAL, Path::new("t.toml")).is_ok());
}

#[test]
fn unanchored_regex_routes_are_warnings_with_their_location() {
    let warnings = |pattern: &str| {
        let text = MINIMAL.replace("\"a.example.com\"", &format!("\"{pattern}\""));
        load_str(&text).unwrap().warnings
    };
    for anchored in [
        "a.example.com",
        "*.example.com",
        r"~^argo-[a-z]+\\.example\\.com$",
        r"~^(?:a|b)\\.example\\.com$",
        r"~\\Aa\\z",
    ] {
        assert_eq!(warnings(anchored), Vec::<String>::new(), "{anchored}");
    }
    assert_eq!(
        warnings("~internal"),
        ["t.toml:7:1: route `~internal` has no `^` at the start and no `$` at the end: it matches any name that only contains a match, as `~internal` matches `internal.evil.com`; write `~^internal$` unless that is meant"]
    );
    let cases = [
        ("~^internal", "has no `$` at the end:", "`~^internal$`"),
        ("~internal$", "has no `^` at the start:", "`~^internal$`"),
        (
            "~^a|b$",
            "no `^` at the start and no `$` at the end",
            "`~^(?:a|b)$`",
        ),
    ];
    for (pattern, missing, instead) in cases {
        let w = warnings(pattern).join("\n");
        assert!(w.contains(missing) && w.contains(instead), "{pattern}: {w}");
    }
}

#[test]
fn health_check_settings_are_parsed_with_their_defaults() {
    let text = format!("{MINIMAL}[upstreams.web.health_check]\ntls_sni = \"apps.example.com\"\n");
    let c = load_str(&text).unwrap();
    let check = c.pools["web"].spec.check.clone().unwrap();
    assert_eq!(
        check,
        crate::pool::spec::CheckSpec {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fall: 3,
            rise: 2,
            tls_sni: Some(Arc::from("apps.example.com")),
        }
    );
    // A short interval shortens the default timeout with it.
    let text = format!("{MINIMAL}[upstreams.web.health_check]\ninterval = \"500ms\"\n");
    let check = load_str(&text).unwrap().pools["web"]
        .spec
        .check
        .clone()
        .unwrap();
    assert_eq!(check.timeout, Duration::from_millis(500));
    assert_eq!(check.tls_sni, None);
}

#[test]
fn bad_health_check_and_dns_settings_say_what_to_write() {
    let check = |lines: &str| {
        load_str(&format!("{MINIMAL}[upstreams.web.health_check]\n{lines}\n")).unwrap_err()
    };
    assert_eq!(
        check("interval = \"50ms\""),
        "t.toml:12:12: upstreams.web.health_check.interval = 50ms is too short: use 100ms or more"
    );
    assert_eq!(
        check("interval = \"1s\"\ntimeout = \"2s\""),
        "t.toml:13:11: upstreams.web.health_check.timeout = 2s is longer than interval = 1s: a probe must end before the next one starts"
    );
    assert_eq!(
        check("timeout = \"5ms\""),
        "t.toml:12:11: upstreams.web.health_check.timeout = 5ms is too short: use 10ms or more"
    );
    assert_eq!(
        check("fall = 0"),
        "t.toml:12:8: upstreams.web.health_check.fall must be 1 or more"
    );
    assert_eq!(
        check("tls_sni = \"10.0.0.1\""),
        "t.toml:12:11: upstreams.web.health_check.tls_sni = `10.0.0.1` is not a DNS name"
    );
    assert!(check("tcp = true").contains("unknown field `tcp`"));
    let text = MINIMAL.replace(
        "[upstreams.web]\n",
        "[upstreams.web]\ndns_refresh = \"500ms\"\n",
    );
    assert_eq!(
        load_str(&text).unwrap_err(),
        "t.toml:10:15: upstreams.web.dns_refresh must be at least 1s"
    );
}

#[test]
fn drain_is_a_server_setting() {
    let text = MINIMAL.replace(
        "\"127.0.0.2:443\"",
        "{ addr = \"127.0.0.2:443\", drain = true }",
    );
    let c = load_str(&text).unwrap();
    let drained: Vec<bool> = c.pools["web"]
        .members()
        .servers
        .iter()
        .map(|s| s.drain)
        .collect();
    assert_eq!(drained, [true, false, false]);
}

/// An HTTP listener with `extra` keys, a route and pools `web` and `solver`.
fn http_listener(protocol: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\nbind = \"127.0.0.1:8080\"\nprotocol = \"{protocol}\"\n{extra}\n\
         [listeners.routes]\n\"a.example.com\" = \"web\"\n\
         [upstreams.web]\nservers = [\"127.0.0.2:80\"]\n\
         [upstreams.solver]\nservers = [\"127.0.0.3:80\"]\n"
    )
}

const THUMBPRINT: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";

#[test]
fn redirect_and_acme_keys_are_read() {
    let c = load_str(&http_listener(
        "http",
        &format!("redirect_https = true\nacme_thumbprint = \"{THUMBPRINT}\""),
    ))
    .unwrap();
    assert!(c.listeners[0].redirect_https);
    assert!(matches!(&c.listeners[0].acme, Some(Acme::Thumbprint(t)) if &**t == THUMBPRINT));
    let c = load_str(&http_listener("http", "acme_pool = \"solver\"")).unwrap();
    assert!(
        matches!(&c.listeners[0].acme, Some(Acme::Pool(r)) if &*r.target.pool.name == "solver")
    );
    // A listener that only redirects needs no route.
    let only =
        "[[listeners]]\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\nredirect_https = true\n";
    assert!(load_str(only).unwrap().listeners[0].redirect_https);
}

#[test]
fn redirect_and_acme_key_errors_point_at_the_key() {
    let err = err_with(&http_listener(
        "http",
        "redirect_https = true\ndefault = \"web\"",
    ));
    assert!(
        err.starts_with("t.toml:4:18: listener on 127.0.0.1:8080: `redirect_https = true` and `default = \"web\"` cannot go together"),
        "{err}"
    );
    let err = err_with(&http_listener(
        "http",
        &format!("acme_thumbprint = \"{THUMBPRINT}\"\nacme_pool = \"solver\""),
    ));
    assert!(
        err.starts_with("t.toml:5:13: `acme_pool` and `acme_thumbprint` cannot go together"),
        "{err}"
    );
    for bad in [
        &THUMBPRINT[1..],
        &format!("{THUMBPRINT}A"),
        &THUMBPRINT.replace('X', "+"),
        &THUMBPRINT.replace('X', "="),
    ] {
        let err = err_with(&http_listener(
            "http",
            &format!("acme_thumbprint = \"{bad}\""),
        ));
        assert!(
            err.starts_with(&format!("t.toml:4:19: acme_thumbprint `{bad}` is not an account key thumbprint: 43 characters")),
            "{err}"
        );
    }
    let err = err_with(&http_listener("http", "acme_pool = \"nope\""));
    assert!(
        err.starts_with("t.toml:4:13: acme_pool points to unknown upstream `nope`; defined upstreams: solver, web"),
        "{err}"
    );
    for key in ["redirect_https = true", "acme_pool = \"solver\""] {
        let err = err_with(&http_listener("tls", key));
        let name = key.split(' ').next().unwrap();
        assert!(
            err.starts_with("t.toml:4:")
                && err.contains(&format!(
                    "`{name}` is only for \"http\" listeners: a tls listener cannot answer in HTTP"
                )),
            "{err}"
        );
    }
}

/// MINIMAL with a QUIC listener on the same addresses as its TLS one.
fn with_quic(extra: &str) -> String {
    MINIMAL.replace(
        "[upstreams.web]",
        &format!("[[listeners]]\nbind = [\"127.0.0.1:8443\", \"[::1]:8443\"]\nprotocol = \"quic\"\ndefault = \"web\"\n{extra}\n[upstreams.web]"),
    )
}

#[test]
fn a_quic_listener_may_share_its_address_with_a_tcp_one() {
    let c = load_str(&with_quic("")).unwrap();
    let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
    assert_eq!(c.listener_for(Transport::Tcp, addr), Some(0));
    assert_eq!(c.listener_for(Transport::Udp, addr), Some(1));
    assert_eq!(c.listeners[1].protocol, Protocol::Quic);
    let binds: Vec<_> = c.binds().collect();
    assert!(binds.contains(&(Transport::Udp, addr)) && binds.contains(&(Transport::Tcp, addr)));
    let c = load_str(&format!("[timeouts]\nudp_idle = \"5s\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.timeouts.udp_idle, Duration::from_secs(5));
}

#[test]
fn quic_listeners_are_checked() {
    let twice = with_quic("").replace(
        "[upstreams.web]",
        "[[listeners]]\nbind = \"0.0.0.0:8443\"\nprotocol = \"quic\"\ndefault = \"web\"\n[upstreams.web]",
    );
    let e = err_with(&twice);
    assert!(
        e.contains("bind `0.0.0.0:8443` overlaps `127.0.0.1:8443`"),
        "{e}"
    );
    let e = err_with(&with_quic("accept_proxy_protocol = true"));
    assert!(
        e.contains("a \"quic\" listener cannot take a PROXY protocol header"),
        "{e}"
    );
    let e = err_with(&with_quic("").replace(
        "[upstreams.web]",
        "[upstreams.web]\nproxy_protocol = \"v2\"",
    ));
    assert!(
        e.contains("route `default` of a \"quic\" listener leads to upstream `web`, which sends a PROXY protocol header"),
        "{e}"
    );
    let e = err_with(&format!("[limits]\nmax_quic_flows = 0\n{MINIMAL}"));
    assert!(
        e.contains("limits.max_quic_flows = 0 is out of range"),
        "{e}"
    );
}
