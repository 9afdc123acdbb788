//! Config file → validated, immutable [`Config`].
//!
//! `raw` mirrors the TOML; validation checks everything TOML cannot and builds
//! the tables the hot path reads: this module the settings and the whole, then
//! [`pool`] each upstream, [`listener`] each listener with its routes, and
//! [`address`] every address (resolving server DNS names). Errors carry
//! `file:line:col` of the offending value and say what to change. Nothing
//! after [`parse`] handles a possibly invalid value.

mod address;
mod listener;
mod pool;
mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

pub use raw::{LogFormat, LogLevel};
use raw::{RawConfig, RawDuration};

use crate::access::Access;
use crate::peek::{Protocol, Transport};
use crate::pool::{Pool, Registry};
use crate::route::{Route, Router};
use address::binds_overlap;

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
    /// A QUIC flow without a datagram either way this long is forgotten.
    pub udp_idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_peek_bytes: usize,
    /// Open connections allowed from one client address; `None`: no such limit.
    pub max_connections_per_ip: Option<usize>,
    /// QUIC flows (routed, or still reading their Initials), all listeners together.
    pub max_quic_flows: usize,
    /// Client Initial bytes held by flows not routed yet, all listeners together.
    pub max_quic_pending_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    pub level: LogLevel,
    pub format: LogFormat,
    pub access_log: bool,
}

impl Config {
    /// The listener that owns bind address `bind` on `transport`, by index.
    pub fn listener_for(&self, transport: Transport, bind: SocketAddr) -> Option<usize> {
        self.listeners
            .iter()
            .position(|l| l.protocol.transport() == transport && l.binds.contains(&bind))
    }

    /// Every bind address of every listener, with what it carries.
    pub fn binds(&self) -> impl Iterator<Item = (Transport, SocketAddr)> + '_ {
        self.listeners.iter().flat_map(|l| {
            let transport = l.protocol.transport();
            l.binds.iter().map(move |b| (transport, *b))
        })
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
    /// `redirect_https` (HTTP only): a Host no route matches gets a 308 to
    /// the same host and request-target over https instead of a 421.
    pub redirect_https: bool,
    /// `acme_thumbprint` or `acme_pool` (HTTP only): what becomes of ACME
    /// HTTP-01 challenge requests, before routing.
    pub acme: Option<Acme>,
}

/// How an HTTP listener meets ACME HTTP-01 challenges
/// (`/.well-known/acme-challenge/TOKEN`), whatever their Host.
#[derive(Debug)]
pub enum Acme {
    /// `acme_thumbprint`: sniroute answers `TOKEN.THUMBPRINT` itself (the
    /// stateless mode of ACME clients such as acme.sh and lego), so the
    /// challenge succeeds whatever the hostname is routed to.
    Thumbprint(Box<str>),
    /// `acme_pool`: the request goes to this pool (a cert-manager solver, a
    /// certbot `--standalone`), whatever the Host.
    Pool(Route<Target>),
}

/// The route name an `acme_pool` request is logged under.
pub const ACME_ROUTE: &str = "acme_pool";

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

/// Parses and validates config `text`; `path` is only used in messages. Its
/// pools are fresh: for checking and explaining, not for serving.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, None, &Registry::default())
}

/// Like [`parse`], with the live pools made by `registry` (servers it runs
/// keep their state) and the route counters of `previous` kept.
pub fn parse_with(
    text: &str,
    path: &Path,
    previous: Option<&Config>,
    registry: &Registry,
) -> Result<Config, ConfigError> {
    Ctx {
        text,
        path,
        previous,
        registry,
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
        registry: &Registry::default(),
        resolve: false,
    }
    .parse()
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
    previous: Option<&'a Config>,
    registry: &'a Registry,
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
            udp_idle: self.duration(
                "timeouts.udp_idle",
                t.udp_idle.as_ref(),
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
            max_quic_flows: self.bounded(
                "limits.max_quic_flows",
                raw.limits.max_quic_flows.as_ref(),
                10_000,
                1..=10_000_000,
            )?,
            max_quic_pending_bytes: self.bounded(
                "limits.max_quic_pending_bytes",
                raw.limits.max_quic_pending_bytes.as_ref(),
                8 << 20,
                64 << 10..=1 << 30,
            )?,
        };
        let log = LogSettings {
            level: raw.log.level.unwrap_or_default(),
            format: raw.log.format.unwrap_or_default(),
            access_log: raw.log.access_log.unwrap_or(true),
        };

        let mut pools = BTreeMap::new();
        for (name, upstream) in &raw.upstreams {
            let pool = self.registry.pool(self.pool(name, upstream)?);
            pools.insert(Arc::clone(&pool.name), pool);
        }

        if raw.listeners.is_empty() {
            return Err(self.file(
                "no [[listeners]] defined: add at least one with `bind`, `protocol` and routes"
                    .into(),
            ));
        }
        let mut warnings = Vec::new();
        let mut seen_binds: Vec<(Transport, SocketAddr)> = Vec::new();
        let mut listeners = Vec::with_capacity(raw.listeners.len());
        for listener in &raw.listeners {
            listeners.push(self.listener(listener, &pools, &mut seen_binds, &mut warnings)?);
        }
        if let Some(addr) = metrics {
            if let Some((_, other)) = seen_binds
                .iter()
                .find(|(t, b)| *t == Transport::Tcp && (*b == addr || binds_overlap(addr, *b)))
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
}

#[cfg(test)]
mod tests;
