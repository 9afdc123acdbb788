//! Addresses as users write them: `ip:port` to bind, `host:port` for a
//! server (a DNS name resolved through the system resolver), and the hints for
//! what users write instead (nginx's `ip:port weight=2`, URLs, ports out of
//! range or 0).

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;

use super::{ConfigError, Ctx};

impl Ctx<'_> {
    /// An address to listen on: `what` (`bind`, `metrics.bind`) names it in
    /// errors, `example` shows how to write one.
    pub(super) fn bind_addr(
        &self,
        what: &str,
        addr: &str,
        span: Range<usize>,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        self.check_port(
            what,
            addr,
            span.clone(),
            "has the kernel pick a port no client knows, another at each start: give a fixed port (1 to 65535)",
        )?;
        addr.parse().map_err(|_| {
            self.at(
                span,
                format!("{what} `{addr}` is not an IP:port address (e.g. {example})"),
            )
        })
    }

    /// An error naming `what` (`bind`, `server`) if [`port_problem`] finds the
    /// port of `addr` unusable.
    fn check_port(
        &self,
        what: &str,
        addr: &str,
        span: Range<usize>,
        zero: &str,
    ) -> Result<(), ConfigError> {
        match port_problem(addr, zero) {
            Some(problem) => Err(self.at(span, format!("{what} `{addr}`: {problem}"))),
            None => Ok(()),
        }
    }

    /// `ip:port` as is; `name:port` through the system resolver, every address it
    /// returns becoming a server (as nginx does).
    pub(super) fn resolve(
        &self,
        addr: &str,
        span: Range<usize>,
    ) -> Result<Vec<SocketAddr>, ConfigError> {
        self.check_port(
            "server",
            addr,
            span.clone(),
            "cannot be connected to: use 1 to 65535",
        )?;
        if let Ok(addr) = addr.parse() {
            return Ok(vec![addr]);
        }
        if !has_port(addr) {
            return Err(self.at(
                span,
                format!("server `{addr}` needs a port: write \"host:port\" or \"ip:port\""),
            ));
        }
        if !self.resolve {
            return Err(self.at(span, format!("server `{addr}` would need a DNS lookup")));
        }
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| self.at(span.clone(), format!("cannot resolve server `{addr}`: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(self.at(span, format!("server `{addr}` resolves to no address")));
        }
        Ok(addrs)
    }
}

/// What to write instead of a server given the nginx way, `"ip:port weight=2
/// backup"`, in upstream `pool`; `None` when `addr` carries no parameters.
pub(super) fn nginx_parameters(pool: &str, addr: &str) -> Option<String> {
    let mut words = addr.split_whitespace();
    let host_port = words.next()?;
    let mut fields = String::new();
    let mut upstream = Vec::new();
    let mut unknown = Vec::new();
    for param in words {
        match param.split_once('=') {
            Some(("weight", n)) => fields.push_str(&format!(", weight = {n}")),
            None if param == "backup" => fields.push_str(", backup = true"),
            Some(("max_fails", n)) => upstream.push(format!("max_fails = {n}")),
            // nginx reads a bare number as seconds.
            Some(("fail_timeout", t)) if t.bytes().all(|b| b.is_ascii_digit()) => {
                upstream.push(format!("fail_timeout = \"{t}s\""));
            }
            Some(("fail_timeout", t)) => upstream.push(format!("fail_timeout = \"{t}\"")),
            _ => unknown.push(format!("`{param}`")),
        }
    }
    if fields.is_empty() && upstream.is_empty() && unknown.is_empty() {
        return None;
    }
    let server = if fields.is_empty() {
        format!("\"{host_port}\"")
    } else {
        format!("{{ addr = \"{host_port}\"{fields} }}")
    };
    let mut hint = format!("a server is \"host:port\" alone; write {server}");
    if !upstream.is_empty() {
        hint += &format!(
            ", and {} under [upstreams.{pool}] (set per upstream, not per server)",
            upstream.join(", ")
        );
    }
    if !unknown.is_empty() {
        hint += &format!("; leave out {} (no equivalent here)", unknown.join(", "));
    }
    Some(hint)
}

/// What to write instead of a server given as a URL (`https://node.lan`):
/// `host:port`, the port from the URL or its scheme. `None` for anything else.
pub(super) fn url(addr: &str) -> Option<String> {
    let (scheme, rest) = addr.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let instead = match scheme.to_ascii_lowercase().as_str() {
        _ if has_port(authority) => authority.to_owned(),
        "https" => format!("{authority}:443"),
        "http" => format!("{authority}:80"),
        _ => format!("{authority}:PORT"),
    };
    Some(format!(
        "a server is \"host:port\", not a URL; write \"{instead}\""
    ))
}

/// Whether `addr` ends in `:port` after a host.
fn has_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// What is wrong with the port of `addr` (`host:port`, `[v6]:port`) when it is
/// written as a number that is no port, `zero` saying why 0 is not one here;
/// `None` for anything else, which the address parser or the resolver judge.
fn port_problem(addr: &str, zero: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    let bare_v6 = host.contains(':') && !host.ends_with(']');
    if host.is_empty() || bare_v6 || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match port.parse::<u16>() {
        Ok(0) => Some(format!("port 0 {zero}")),
        Ok(_) => None,
        Err(_) => Some(format!("port {port} is out of range: use 1 to 65535")),
    }
}

/// Whether binding both would fail with "address in use": same port and family,
/// one of them the wildcard address. (IPv6 sockets are bound `IPV6_V6ONLY`, so
/// `[::]:443` and `0.0.0.0:443` coexist.)
pub(super) fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip().is_unspecified() || b.ip().is_unspecified())
}
