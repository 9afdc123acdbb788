//! Config file → validated, immutable [`Config`].
//!
//! `raw` mirrors the TOML; this module checks everything TOML cannot (durations,
//! addresses, pool references, route patterns), resolves server DNS names, and
//! builds the routing tables the hot path reads. Errors carry `file:line:col` of
//! the offending value and say what to change. Nothing after [`parse`] handles a
//! possibly invalid value.

mod raw;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

pub use raw::{LogFormat, LogLevel};
use raw::{RawBalance, RawConfig, RawDuration, RawProtocol, RawProxyProtocol, RawUpstream};

use crate::access::{self, Access};
use crate::peek::Protocol;
use crate::pool::{Balance, HealthPolicy, Pool, Server};
use crate::proxy_protocol;
use crate::route::{Router, RouterBuilder, DEFAULT_ROUTE};

/// Where sniroute looks without `--config`.
pub const DEFAULT_PATH: &str = "/etc/sniroute/sniroute.toml";

/// A loaded, valid configuration.
#[derive(Debug)]
pub struct Config {
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub log: LogSettings,
    pub listeners: Vec<Listener>,
    /// Every pool, by name.
    pub pools: BTreeMap<Arc<str>, Arc<Pool>>,
    /// Where `GET /metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// What is valid but likely not meant, each as `file:line:col: message`:
    /// printed by `--check`, logged at start and at each reload.
    pub warnings: Vec<String>,
}

/// What a route leads to: a pool, who may take it, and the count of
/// connections routed that way (kept across reloads while the listener,
/// pattern and pool stay the same).
#[derive(Debug)]
pub struct Target {
    pub pool: Arc<Pool>,
    /// The route's own `allow`/`deny`, checked after the listener's.
    pub access: Option<Access>,
    pub routed: Arc<AtomicU64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub peek: Duration,
    pub connect: Duration,
    pub idle: Duration,
    pub shutdown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_peek_bytes: usize,
    /// Open connections allowed from one client address; `None`: no such limit.
    pub max_connections_per_ip: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    pub level: LogLevel,
    pub format: LogFormat,
    pub access_log: bool,
}

impl Config {
    /// The listener that owns bind address `bind`, by index.
    pub fn listener_for(&self, bind: SocketAddr) -> Option<usize> {
        self.listeners.iter().position(|l| l.binds.contains(&bind))
    }

    /// Every bind address of every listener.
    pub fn binds(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listeners.iter().flat_map(|l| l.binds.iter().copied())
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug)]
pub struct Listener {
    pub binds: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub router: Router<Target>,
    /// With `accept_proxy_protocol`: the sources that may (and must) send a PROXY
    /// header; connections from anywhere else are closed.
    pub proxy_from: Option<Vec<IpNet>>,
    /// The listener's `allow`/`deny`: refused clients are closed unread.
    pub access: Option<Access>,
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// Reads the config file's text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })
}

/// Parses and validates config `text`; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, None)
}

/// Like [`parse`], but servers that `previous` has too (same pool name, same
/// address) keep their live state: active connections and passive health.
pub fn parse_with(
    text: &str,
    path: &Path,
    previous: Option<&Config>,
) -> Result<Config, ConfigError> {
    Ctx {
        text,
        path,
        previous,
        resolve: true,
    }
    .parse()
}

/// Like [`parse`], but never asks a resolver: a server given by name is an
/// error. For fuzzing and other places that must not touch the network.
pub fn parse_offline(text: &str, path: &Path) -> Result<Config, ConfigError> {
    Ctx {
        text,
        path,
        previous: None,
        resolve: false,
    }
    .parse()
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
    previous: Option<&'a Config>,
    /// Whether server names may be resolved through the system resolver.
    resolve: bool,
}

impl Ctx<'_> {
    fn parse(&self) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(self.text).map_err(|e| {
            let mut message = e.message().to_owned();
            // `[listeners]` or `[listeners.routes]` above the first `[[listeners]]`
            // made `listeners` a table before the array began.
            if message.contains("duplicate key `listeners`") {
                message.push_str(": [listeners.routes] goes after the [[listeners]] it belongs to, and every listener starts with [[listeners]]");
            }
            match e.span() {
                Some(span) => self.at(span, message),
                None => self.file(message),
            }
        })?;
        self.validate(raw)
    }

    fn at(&self, span: Range<usize>, message: String) -> ConfigError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::At {
            path: self.path.to_owned(),
            line,
            col,
            message,
        }
    }

    fn file(&self, message: String) -> ConfigError {
        ConfigError::File {
            path: self.path.to_owned(),
            message,
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&Spanned<RawDuration>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let d = match value.get_ref() {
            RawDuration::Seconds(secs) => Duration::from_secs(*secs),
            RawDuration::Text(text) => humantime::parse_duration(text.trim()).map_err(|e| {
                self.at(
                    value.span(),
                    format!(
                        "{key}: `{text}` is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"1h\""
                    ),
                )
            })?,
        };
        if d.is_zero() && key != "timeouts.shutdown" {
            return Err(self.at(value.span(), format!("{key} must be greater than zero")));
        }
        Ok(d)
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let metrics = match &raw.metrics {
            Some(m) => Some(self.bind_addr(
                "metrics.bind",
                m.bind.get_ref(),
                m.bind.span(),
                "\"127.0.0.1:9100\"",
            )?),
            None => None,
        };
        let t = &raw.timeouts;
        let timeouts = Timeouts {
            peek: self.duration("timeouts.peek", t.peek.as_ref(), Duration::from_secs(5))?,
            connect: self.duration(
                "timeouts.connect",
                t.connect.as_ref(),
                Duration::from_secs(3),
            )?,
            idle: self.duration("timeouts.idle", t.idle.as_ref(), Duration::from_secs(3600))?,
            shutdown: self.duration(
                "timeouts.shutdown",
                t.shutdown.as_ref(),
                Duration::from_secs(30),
            )?,
        };
        let limits = Limits {
            max_connections: self.bounded(
                "limits.max_connections",
                raw.limits.max_connections.as_ref(),
                20_000,
                1..=10_000_000,
            )?,
            max_peek_bytes: self.bounded(
                "limits.max_peek_bytes",
                raw.limits.max_peek_bytes.as_ref(),
                16_384,
                512..=1 << 20,
            )?,
            max_connections_per_ip: match &raw.limits.max_connections_per_ip {
                Some(v) => Some(self.bounded(
                    "limits.max_connections_per_ip",
                    Some(v),
                    0,
                    1..=10_000_000,
                )?),
                None => None,
            },
        };
        let log = LogSettings {
            level: raw.log.level.unwrap_or_default(),
            format: raw.log.format.unwrap_or_default(),
            access_log: raw.log.access_log.unwrap_or(true),
        };

        let mut pools = BTreeMap::new();
        for (name, upstream) in &raw.upstreams {
            let pool = self.pool(name, upstream)?;
            pools.insert(Arc::clone(&pool.name), Arc::new(pool));
        }

        if raw.listeners.is_empty() {
            return Err(self.file(
                "no [[listeners]] defined: add at least one with `bind`, `protocol` and routes"
                    .into(),
            ));
        }
        let mut warnings = Vec::new();
        let mut seen_binds: Vec<SocketAddr> = Vec::new();
        let mut listeners = Vec::with_capacity(raw.listeners.len());
        for listener in &raw.listeners {
            let raw_l = listener.get_ref();
            let mut binds = Vec::new();
            if raw_l.bind.get_ref().0.is_empty() {
                return Err(self.at(
                    raw_l.bind.span(),
                    "listener `bind` is empty: give at least one address".into(),
                ));
            }
            for bind in &raw_l.bind.get_ref().0 {
                // A lone string has no span of its own: point at the `bind` value.
                let span = if bind.span().is_empty() {
                    raw_l.bind.span()
                } else {
                    bind.span()
                };
                let addr = self.bind_addr(
                    "bind",
                    bind.get_ref(),
                    span.clone(),
                    "\"0.0.0.0:443\", \"[::]:443\"",
                )?;
                if seen_binds.contains(&addr) {
                    return Err(self.at(span, format!("bind `{addr}` is used twice; each address may be bound by one listener only")));
                }
                if let Some(other) = seen_binds.iter().find(|other| binds_overlap(addr, **other)) {
                    return Err(self.at(span, format!("bind `{addr}` overlaps `{other}`: a wildcard address takes its port on every address of its family; keep one of them")));
                }
                seen_binds.push(addr);
                binds.push(addr);
            }
            let counters = self.route_counters(&binds);
            let target = |pattern: &str, pool: Arc<Pool>, access: Option<Access>| {
                let routed = counters
                    .get(pattern)
                    .filter(|(name, _)| *name == pool.name)
                    .map_or_else(Arc::default, |(_, routed)| Arc::clone(routed));
                Target {
                    pool,
                    access,
                    routed,
                }
            };
            let protocol = match raw_l.protocol {
                RawProtocol::Tls => Protocol::Tls,
                RawProtocol::Http => Protocol::Http,
                RawProtocol::Tcp => Protocol::Tcp,
            };
            if protocol == Protocol::Tcp {
                if let Some((pattern, _)) = raw_l.routes.0.first() {
                    return Err(self.at(pattern.span(), "a \"tcp\" listener reads nothing from the client, so it has no name to route on: remove [listeners.routes] and set `default`".into()));
                }
                if raw_l.default.is_none() {
                    return Err(self.at(
                        listener.span(),
                        "a \"tcp\" listener needs `default`: the pool every connection goes to"
                            .into(),
                    ));
                }
            }
            let mut router = RouterBuilder::default();
            for (pattern, route) in &raw_l.routes.0 {
                let r = route.get_ref();
                let name = match r.pool.span().is_empty() {
                    true => Spanned::new(route.span(), r.pool.get_ref().clone()),
                    false => r.pool.clone(),
                };
                let what = format!("route `{}`", pattern.get_ref());
                let pool = self.pool_ref(&pools, &name, &what)?;
                let access = self.access(&what, &r.allow, &r.deny)?;
                router
                    .add(pattern.get_ref(), target(pattern.get_ref(), pool, access))
                    .map_err(|e| self.at(pattern.span(), e.to_string()))?;
                if let Some(warning) = unanchored(pattern.get_ref()) {
                    warnings.push(self.at(pattern.span(), warning).to_string());
                }
            }
            let default = match &raw_l.default {
                Some(name) => Some(target(
                    DEFAULT_ROUTE,
                    self.pool_ref(&pools, name, "listener default")?,
                    None,
                )),
                None => None,
            };
            if raw_l.routes.0.is_empty() && default.is_none() {
                return Err(self.at(listener.span(), "listener has no routes and no default: nothing could ever be routed; add [listeners.routes] or `default`".into()));
            }
            let proxy_from = self.proxy_from(raw_l)?;
            let access = self.access("listener", &raw_l.allow, &raw_l.deny)?;
            listeners.push(Listener {
                binds,
                protocol,
                router: router.build(default),
                proxy_from,
                access,
            });
        }
        if let Some(addr) = metrics {
            if let Some(other) = seen_binds
                .iter()
                .find(|b| **b == addr || binds_overlap(addr, **b))
            {
                let span = raw
                    .metrics
                    .as_ref()
                    .map(|m| m.bind.span())
                    .unwrap_or_default();
                return Err(self.at(span, format!("metrics.bind `{addr}` collides with listener bind `{other}`; use another port")));
            }
        }
        Ok(Config {
            timeouts,
            limits,
            log,
            listeners,
            pools,
            metrics,
            warnings,
        })
    }

    /// `accept_proxy_protocol` and `proxy_protocol_from`, which go together.
    fn proxy_from(&self, l: &raw::RawListener) -> Result<Option<Vec<IpNet>>, ConfigError> {
        let accept = l.accept_proxy_protocol.as_ref();
        match (accept.map(|a| *a.get_ref()), &l.proxy_protocol_from) {
            (None | Some(false), None) => Ok(None),
            (None | Some(false), Some(from)) => Err(self.at(from.span(), "proxy_protocol_from is set but accept_proxy_protocol is not true: set both, or neither".into())),
            (Some(true), None) => Err(self.at(accept.map(|a| a.span()).unwrap_or_default(), "accept_proxy_protocol needs proxy_protocol_from: the addresses of the balancers in front, e.g. [\"10.0.0.0/8\"]".into())),
            (Some(true), Some(from)) => {
                if from.get_ref().is_empty() {
                    return Err(self.at(from.span(), "proxy_protocol_from is empty: list the balancers in front, e.g. [\"10.0.0.0/8\"]".into()));
                }
                self.nets("proxy_protocol_from", from.get_ref()).map(Some)
            }
        }
    }

    /// The `allow` and `deny` lists of `what` (a listener, a route).
    fn access(
        &self,
        what: &str,
        allow: &raw::Nets,
        deny: &raw::Nets,
    ) -> Result<Option<Access>, ConfigError> {
        let allow = self.nets(&format!("{what}: allow"), allow)?;
        let deny = self.nets(&format!("{what}: deny"), deny)?;
        Ok(Access::new(allow, deny))
    }

    /// Addresses and CIDR blocks, each error pointing at its entry.
    fn nets(&self, key: &str, nets: &raw::Nets) -> Result<Vec<IpNet>, ConfigError> {
        nets.iter()
            .map(|net| {
                access::parse_net(net.get_ref()).ok_or_else(|| {
                    self.at(net.span(), format!("{key}: `{}` is not an address or CIDR block (e.g. \"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\")", net.get_ref().trim()))
                })
            })
            .collect()
    }

    /// The routed-connection counters of the previous config's listener on the
    /// same addresses: pattern → (pool name, counter).
    fn route_counters(
        &self,
        binds: &[SocketAddr],
    ) -> HashMap<Arc<str>, (Arc<str>, Arc<AtomicU64>)> {
        let Some(previous) = self.previous else {
            return HashMap::new();
        };
        let Some(index) = binds.iter().find_map(|b| previous.listener_for(*b)) else {
            return HashMap::new();
        };
        let router = &previous.listeners[index].router;
        router
            .routes_and_default()
            .into_iter()
            .map(|r| {
                (
                    Arc::clone(&r.pattern),
                    (
                        Arc::clone(&r.target.pool.name),
                        Arc::clone(&r.target.routed),
                    ),
                )
            })
            .collect()
    }

    fn bounded(
        &self,
        key: &str,
        value: Option<&Spanned<u32>>,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let v = *value.get_ref() as usize;
        if !range.contains(&v) {
            return Err(self.at(
                value.span(),
                format!(
                    "{key} = {v} is out of range: use {} to {}",
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(v)
    }

    fn pool_ref(
        &self,
        pools: &BTreeMap<Arc<str>, Arc<Pool>>,
        name: &Spanned<String>,
        what: &str,
    ) -> Result<Arc<Pool>, ConfigError> {
        pools.get(name.get_ref().as_str()).cloned().ok_or_else(|| {
            let known: Vec<&str> = pools.keys().map(|k| &**k).collect();
            self.at(
                name.span(),
                format!(
                    "{what} points to unknown upstream `{}`; defined upstreams: {}",
                    name.get_ref(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }

    fn pool(&self, name: &str, upstream: &Spanned<RawUpstream>) -> Result<Pool, ConfigError> {
        let u = upstream.get_ref();
        let authority = u.proxy_protocol_authority.as_ref();
        let proxy_protocol = match u.proxy_protocol.as_ref().map(|p| *p.get_ref()) {
            None | Some(RawProxyProtocol::Off) => None,
            Some(RawProxyProtocol::V1) => Some(proxy_protocol::Send::V1),
            Some(RawProxyProtocol::V2) => Some(proxy_protocol::Send::V2 {
                authority: authority.is_some_and(|a| *a.get_ref()),
            }),
        };
        if let Some(a) = authority {
            if *a.get_ref() && !matches!(proxy_protocol, Some(proxy_protocol::Send::V2 { .. })) {
                return Err(self.at(a.span(), format!("upstreams.{name}.proxy_protocol_authority needs proxy_protocol = \"v2\" (v1 has no TLVs)")));
            }
        }
        let health = HealthPolicy {
            max_fails: u.max_fails.unwrap_or(HealthPolicy::default().max_fails),
            fail_timeout: self.duration(
                &format!("upstreams.{name}.fail_timeout"),
                u.fail_timeout.as_ref(),
                HealthPolicy::default().fail_timeout,
            )?,
        };
        if u.servers.is_empty() {
            return Err(self.at(upstream.span(), format!("upstream `{name}` has no servers")));
        }
        let mut servers: Vec<Server> = Vec::new();
        for entry in &u.servers {
            let s = entry.get_ref();
            if let Some(hint) = nginx_parameters(name, &s.addr).or_else(|| url(&s.addr)) {
                return Err(self.at(entry.span(), format!("server `{}`: {hint}", s.addr)));
            }
            if s.weight == 0 {
                return Err(self.at(
                    entry.span(),
                    format!(
                        "upstream `{name}`: server `{}` has weight 0; use 1 or more (or remove it)",
                        s.addr
                    ),
                ));
            }
            for addr in self.resolve(&s.addr, entry.span())? {
                if servers.iter().any(|known| known.addr == addr) {
                    return Err(self.at(
                        entry.span(),
                        format!("upstream `{name}`: server address {addr} is listed twice"),
                    ));
                }
                let label: Arc<str> = match s.addr.parse::<SocketAddr>() {
                    Ok(_) => Arc::from(s.addr.as_str()),
                    Err(_) => Arc::from(format!("{} ({addr})", s.addr)),
                };
                let state = self
                    .previous
                    .and_then(|p| p.pools.get(name))
                    .and_then(|p| p.servers.iter().find(|known| known.addr == addr))
                    .map(Server::state);
                servers.push(Server::new(
                    addr,
                    label,
                    s.weight,
                    s.backup,
                    state.unwrap_or_default(),
                ));
            }
        }
        if servers.iter().all(|s| s.backup) {
            return Err(self.at(
                upstream.span(),
                format!("upstream `{name}` has only backup servers; make at least one a primary"),
            ));
        }
        let balance = match u.balance {
            None | Some(RawBalance::LeastConn) => Balance::LeastConn,
            Some(RawBalance::RoundRobin) => Balance::RoundRobin,
        };
        let durations = self
            .previous
            .and_then(|p| p.pools.get(name))
            .map_or_else(Arc::default, |p| Arc::clone(&p.durations));
        let mut pool = Pool::new(Arc::from(name), balance, health, servers, durations);
        pool.proxy_protocol = proxy_protocol;
        Ok(pool)
    }

    /// An address to listen on: `what` (`bind`, `metrics.bind`) names it in
    /// errors, `example` shows how to write one.
    fn bind_addr(
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
    fn resolve(&self, addr: &str, span: Range<usize>) -> Result<Vec<SocketAddr>, ConfigError> {
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
fn nginx_parameters(pool: &str, addr: &str) -> Option<String> {
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
fn url(addr: &str) -> Option<String> {
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

/// Why route `pattern`, if a `~regex`, may match more than meant: a regex not
/// anchored at both ends matches every name that merely contains a match.
fn unanchored(pattern: &str) -> Option<String> {
    use regex_syntax::hir::Look;
    let regex = pattern.strip_prefix('~')?;
    // Already compiled by the router, so this parse does not fail.
    let hir = regex_syntax::parse(regex).ok()?;
    let props = hir.properties();
    let mut missing = Vec::new();
    if !props.look_set_prefix().contains(Look::Start) {
        missing.push("no `^` at the start");
    }
    if !props.look_set_suffix().contains(Look::End) {
        missing.push("no `$` at the end");
    }
    if missing.is_empty() {
        return None;
    }
    let core = regex.strip_prefix('^').unwrap_or(regex);
    let core = core.strip_suffix('$').unwrap_or(core);
    let anchored = if core.contains('|') {
        format!("~^(?:{core})$")
    } else {
        format!("~^{core}$")
    };
    Some(format!(
        "route `{pattern}` has {}: it matches any name that only contains a match, as `~internal` matches `internal.evil.com`; write `{anchored}` unless that is meant",
        missing.join(" and ")
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
fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests;
