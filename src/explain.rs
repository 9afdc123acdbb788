//! What `--check` and `--explain` print: the config as an operator reads it.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::access::Access;
use crate::config::Config;
use crate::name::HostName;
use crate::peek::Protocol;
use crate::pool::Pool;

/// Routes listed per listener by `--check`; a 10k-route table is counted, not printed.
const SUMMARY_ROUTES: usize = 20;

/// The one-screen summary printed by `--check`.
pub fn summary(config: &Config, path: &str) -> String {
    let mut out = format!("{path}: OK\n");
    let t = &config.timeouts;
    let _ = writeln!(
        out,
        "timeouts: peek {}, connect {}, idle {}, shutdown {}; max_connections {}, max_peek_bytes {}",
        fmt_duration(t.peek),
        fmt_duration(t.connect),
        fmt_duration(t.idle),
        fmt_duration(t.shutdown),
        config.limits.max_connections,
        config.limits.max_peek_bytes
    );
    let _ = writeln!(out, "listeners:");
    for l in &config.listeners {
        let (exact, wildcard, regex) = l.router.counts();
        let _ =
            writeln!(
            out,
            "  {:<5} {}  routes: {exact} exact, {wildcard} wildcard, {regex} regex; default: {}",
            l.protocol.as_str(),
            join(&l.binds),
            l.router.default_route().map_or("none", |r| &*r.target.pool.name),
        );
        if let Some(access) = &l.access {
            let _ = writeln!(out, "        clients: {access}");
        }
        let routes = l.router.routes();
        for r in routes.iter().take(SUMMARY_ROUTES) {
            let _ = writeln!(
                out,
                "        {} -> {}{}",
                r.pattern,
                r.target.pool.name,
                access_note(r.target.access.as_ref())
            );
        }
        if routes.len() > SUMMARY_ROUTES {
            let more = routes.len() - SUMMARY_ROUTES;
            let _ = writeln!(
                out,
                "        ... and {more} more (ask about one with --explain HOST)"
            );
        }
    }
    let _ = writeln!(out, "upstreams:");
    for pool in config.pools.values() {
        let _ = writeln!(out, "  {}", describe_pool(pool));
    }
    out
}

/// `--explain` asked about a port or bind address no listener has.
#[derive(Debug, thiserror::Error)]
#[error("no listener is bound to {wanted}; the listeners are bound to {binds}")]
pub struct NoListener {
    wanted: String,
    /// Every listener's binds and protocol.
    binds: String,
}

/// The dry run of `--explain HOST[:PORT] [--listener BIND]`.
pub fn explain(
    config: &Config,
    host: &str,
    listener: Option<SocketAddr>,
) -> Result<String, NoListener> {
    let (name, port) = split_port(host);
    let unbracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
    let ip: Option<IpAddr> = unbracketed.unwrap_or(name).parse().ok();
    // An HTTP client sends an IPv6 address in brackets.
    let parsed = match ip {
        Some(IpAddr::V6(v6)) => HostName::parse(format!("[{v6}]").as_bytes()),
        _ => HostName::parse(name.as_bytes()),
    };
    let mut out = String::new();
    match &parsed {
        Some(n) if ip.is_some() => {
            let _ = writeln!(out, "name: {n} is an IP address: TLS clients send no SNI for an IP address (RFC 6066), so on TLS listeners they count as sending no name and get the default; HTTP clients send it as Host");
        }
        Some(n) => {
            let _ = writeln!(out, "name: {n}");
        }
        None => {
            let _ = writeln!(out, "name: `{name}` is not a valid hostname; clients sending it count as sending no name");
        }
    }
    let mut matched = 0;
    for l in &config.listeners {
        let selected = l
            .binds
            .iter()
            .any(|b| listener.is_none_or(|want| *b == want) && port.is_none_or(|p| b.port() == p));
        if !selected {
            continue;
        }
        matched += 1;
        let _ = writeln!(
            out,
            "\nlistener {} ({})",
            join(&l.binds),
            l.protocol.as_str()
        );
        let name = match l.protocol {
            Protocol::Tls | Protocol::Quic if ip.is_some() => None,
            _ => parsed.as_ref(),
        };
        match l.router.route(name) {
            Some(route) => {
                if let Some(access) = &l.access {
                    let _ = writeln!(out, "  clients: {access} (listener)");
                }
                let _ = writeln!(
                    out,
                    "  route:   {}{}",
                    route.pattern,
                    access_note(route.target.access.as_ref())
                );
                let _ = writeln!(out, "  pool:    {}", describe_pool(&route.target.pool));
                let now = Instant::now();
                for s in &route.target.pool.members().servers {
                    let _ = writeln!(
                        out,
                        "  server:  {} weight={}{}{}{}",
                        s.label,
                        s.weight,
                        if s.backup { " backup" } else { "" },
                        if s.drain { " drain" } else { "" },
                        if s.is_up(now) { "" } else { " (down)" },
                    );
                }
            }
            None if l.redirect_https => {
                let _ = writeln!(
                    out,
                    "  no route: redirect_https answers 308 to https://{}/..., no server is contacted",
                    name.map_or("HOST", |n| n.as_str())
                );
            }
            None => {
                let what = match l.protocol {
                    Protocol::Tls | Protocol::Tcp => {
                        "the client gets a fatal unrecognized_name alert"
                    }
                    Protocol::Http => "the client gets a 421 Misdirected Request",
                    Protocol::Quic => "the client's Initial packets are dropped",
                };
                let _ = writeln!(
                    out,
                    "  no route and no default: {what}, no server is contacted"
                );
            }
        }
    }
    if matched > 0 {
        return Ok(out);
    }
    let wanted = match (listener, port) {
        (Some(addr), Some(port)) if addr.port() != port => format!("both {addr} and port {port}"),
        (Some(addr), _) => addr.to_string(),
        (None, Some(port)) => format!("port {port}"),
        (None, None) => "any address".to_owned(),
    };
    let binds = config
        .listeners
        .iter()
        .map(|l| format!("{} ({})", join(&l.binds), l.protocol.as_str()))
        .collect::<Vec<_>>()
        .join("; ");
    Err(NoListener { wanted, binds })
}

/// ` (allow [...] deny [...])` for a route with its own lists, else nothing.
fn access_note(access: Option<&Access>) -> String {
    access.map_or(String::new(), |a| format!(" ({a})"))
}

fn describe_pool(pool: &Pool) -> String {
    let members = pool.members();
    let backups = members.servers.iter().filter(|s| s.backup).count();
    let health = pool.health();
    let probes = pool.spec.check.as_ref().map_or(String::new(), |c| {
        format!(
            ", health_check every {} ({})",
            fmt_duration(c.interval),
            c.tls_sni
                .as_ref()
                .map_or("TCP connect".to_owned(), |sni| format!("TLS, SNI {sni}"))
        )
    });
    format!(
        "{} ({}, {} server(s){}, max_fails={}, fail_timeout={}{probes})",
        pool.name,
        pool.balance().as_str(),
        members.servers.len() - backups,
        if backups > 0 {
            format!(" + {backups} backup")
        } else {
            String::new()
        },
        health.max_fails,
        fmt_duration(health.fail_timeout),
    )
}

/// `host:port` → (`host`, Some(port)); an IPv6 literal keeps its brackets.
fn split_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (!h.contains(':') || h.ends_with(']')) => {
            match p.parse() {
                Ok(port) => (h, Some(port)),
                Err(_) => (host, None),
            }
        }
        _ => (host, None),
    }
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_port_handles_names_and_ipv6() {
        assert_eq!(
            split_port("a.example.com:443"),
            ("a.example.com", Some(443))
        );
        assert_eq!(split_port("a.example.com"), ("a.example.com", None));
        assert_eq!(split_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_port("::1"), ("::1", None));
    }
}
