//! The TOML file as written: serde types mirroring the config schema (README.md, config.example.toml) one to one.
//!
//! Nothing here is validated beyond its TOML type; every value that can be wrong
//! in a way TOML cannot express is kept `Spanned` so that validation can point at
//! its line and column. Unknown keys are rejected by serde with their location.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub log: RawLog,
    pub metrics: Option<RawMetrics>,
    #[serde(default, deserialize_with = "listeners")]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default, deserialize_with = "upstreams")]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
}

/// `[[listeners]]`, an array of tables. Its `expecting` is the hint a single
/// `[listeners]` table (or a `[listeners.routes]` above every listener) gets.
fn listeners<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Spanned<RawListener>>, D::Error> {
    struct ListenersVisitor;
    impl<'de> Visitor<'de> for ListenersVisitor {
        type Value = Vec<Spanned<RawListener>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of tables: write [[listeners]] (double brackets), one per listener, each followed by its own [listeners.routes]")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut listeners = Vec::new();
            while let Some(listener) = seq.next_element()? {
                listeners.push(listener);
            }
            Ok(listeners)
        }
    }
    d.deserialize_any(ListenersVisitor)
}

/// `[upstreams.NAME]`, a table of tables. Its `expecting` is the hint
/// `[[upstreams]]` (a list without names) gets.
fn upstreams<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Spanned<RawUpstream>>, D::Error> {
    struct UpstreamsVisitor;
    impl<'de> Visitor<'de> for UpstreamsVisitor {
        type Value = BTreeMap<String, Spanned<RawUpstream>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("named tables: write [upstreams.NAME] (single brackets), one per upstream, e.g. [upstreams.web]; routes refer to it by NAME")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut upstreams = BTreeMap::new();
            while let Some((name, upstream)) = map.next_entry()? {
                upstreams.insert(name, upstream);
            }
            Ok(upstreams)
        }
    }
    d.deserialize_any(UpstreamsVisitor)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub bind: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub peek: Option<Spanned<RawDuration>>,
    pub connect: Option<Spanned<RawDuration>>,
    pub idle: Option<Spanned<RawDuration>>,
    pub shutdown: Option<Spanned<RawDuration>>,
    pub udp_idle: Option<Spanned<RawDuration>>,
}

/// A duration as written: a string such as `"5s"` or `"1h 30m"`, or a bare
/// integer of seconds (`idle = 3600`, as nginx reads `3600`).
#[derive(Debug)]
pub enum RawDuration {
    Text(String),
    Seconds(u64),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl<'de> Visitor<'de> for DurationVisitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: a string such as \"500ms\", \"5s\", \"1h\", or a whole number of seconds")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(text.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<RawDuration, E> {
                u64::try_from(secs)
                    .map(RawDuration::Seconds)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(secs), &self))
            }
        }
        d.deserialize_any(DurationVisitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<Spanned<u32>>,
    pub max_peek_bytes: Option<Spanned<u32>>,
    pub max_connections_per_ip: Option<Spanned<u32>>,
    pub max_quic_flows: Option<Spanned<u32>>,
    pub max_quic_pending_bytes: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<LogLevel>,
    pub format: Option<LogFormat>,
    pub access_log: Option<bool>,
}

/// `log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub bind: Spanned<OneOrMany>,
    pub protocol: RawProtocol,
    pub default: Option<Spanned<String>>,
    #[serde(default)]
    pub routes: Routes,
    pub accept_proxy_protocol: Option<Spanned<bool>>,
    pub proxy_protocol_from: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub allow: Nets,
    #[serde(default)]
    pub deny: Nets,
    pub redirect_https: Option<Spanned<bool>>,
    pub acme_thumbprint: Option<Spanned<String>>,
    pub acme_pool: Option<Spanned<String>>,
}

/// A list of addresses or CIDR blocks (`allow`, `deny`), each with its place.
pub type Nets = Vec<Spanned<String>>;

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    Tls,
    Http,
    Tcp,
    Quic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub servers: Vec<Spanned<RawServer>>,
    pub balance: Option<RawBalance>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<Spanned<RawDuration>>,
    pub proxy_protocol: Option<Spanned<RawProxyProtocol>>,
    pub proxy_protocol_authority: Option<Spanned<bool>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub dns_refresh: Option<Spanned<RawDuration>>,
}

/// `[upstreams.NAME.health_check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub interval: Option<Spanned<RawDuration>>,
    pub timeout: Option<Spanned<RawDuration>>,
    pub fall: Option<Spanned<u32>>,
    pub rise: Option<Spanned<u32>>,
    pub tls_sni: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    LeastConn,
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProxyProtocol {
    Off,
    V1,
    V2,
}

/// `bind = "addr"` or `bind = ["addr", ...]`.
#[derive(Debug)]
pub struct OneOrMany(pub Vec<Spanned<String>>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address string or an array of address strings")
            }
            fn visit_str<E: de::Error>(self, addr: &str) -> Result<OneOrMany, E> {
                // The caller's span covers the single string; this inner one is unused.
                Ok(OneOrMany(vec![Spanned::new(0..0, addr.to_owned())]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut addrs = Vec::new();
                while let Some(addr) = seq.next_element()? {
                    addrs.push(addr);
                }
                Ok(OneOrMany(addrs))
            }
        }
        d.deserialize_any(OneOrManyVisitor)
    }
}

/// `[listeners.routes]`, kept in file order: `~regex` routes are tried in that order.
#[derive(Debug, Default)]
pub struct Routes(pub Vec<(Spanned<String>, Spanned<RawRoute>)>);

/// A route's value: `"pool"`, or `{ pool = "pool", allow = [...], deny = [...] }`.
#[derive(Debug)]
pub struct RawRoute {
    /// In the short form its span is empty: the caller's span of the whole
    /// value covers it.
    pub pool: Spanned<String>,
    pub allow: Nets,
    pub deny: Nets,
}

impl<'de> Deserialize<'de> for RawRoute {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RouteVisitor;
        impl<'de> Visitor<'de> for RouteVisitor {
            type Value = RawRoute;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an upstream name, or { pool = \"upstream\", allow = [...], deny = [...] }",
                )
            }
            fn visit_str<E: de::Error>(self, pool: &str) -> Result<RawRoute, E> {
                Ok(RawRoute {
                    pool: Spanned::new(0..0, pool.to_owned()),
                    allow: Vec::new(),
                    deny: Vec::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRoute, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    pool: Spanned<String>,
                    #[serde(default)]
                    allow: Nets,
                    #[serde(default)]
                    deny: Nets,
                }
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawRoute {
                    pool: t.pool,
                    allow: t.allow,
                    deny: t.deny,
                })
            }
        }
        d.deserialize_any(RouteVisitor)
    }
}

impl<'de> Deserialize<'de> for Routes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RoutesVisitor;
        impl<'de> Visitor<'de> for RoutesVisitor {
            type Value = Routes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of \"hostname pattern\" = \"upstream name\": write [listeners.routes] (single brackets) after its [[listeners]]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Routes, A::Error> {
                let mut routes = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    routes.push(entry);
                }
                Ok(Routes(routes))
            }
        }
        d.deserialize_map(RoutesVisitor)
    }
}

/// A server: `"host:port"` or `{ addr = "host:port", weight = 2, backup = true }`.
#[derive(Debug)]
pub struct RawServer {
    pub addr: String,
    pub weight: u32,
    pub backup: bool,
    pub drain: bool,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ServerVisitor;
        impl<'de> Visitor<'de> for ServerVisitor {
            type Value = RawServer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"host:port\" or { addr = \"host:port\", weight = N, backup = true, drain = true }")
            }
            fn visit_str<E: de::Error>(self, addr: &str) -> Result<RawServer, E> {
                Ok(RawServer {
                    addr: addr.to_owned(),
                    weight: 1,
                    backup: false,
                    drain: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawServer, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    addr: String,
                    #[serde(default = "one")]
                    weight: u32,
                    #[serde(default)]
                    backup: bool,
                    #[serde(default)]
                    drain: bool,
                }
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawServer {
                    addr: t.addr,
                    weight: t.weight,
                    backup: t.backup,
                    drain: t.drain,
                })
            }
        }
        d.deserialize_any(ServerVisitor)
    }
}
