//! One `[[listeners]]` entry → [`Listener`]: its bind addresses (each bound by
//! one listener only), its protocol, its routes with their pools and
//! `allow`/`deny` lists, and its PROXY protocol sources.
//!
//! Route counters of the previous config's listener on the same addresses are
//! carried over, so a reload does not reset `sniroute_routed_connections_total`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use ipnet::IpNet;
use toml::Spanned;

use super::address::binds_overlap;
use super::raw::{self, RawListener, RawProtocol};
use super::{Acme, ConfigError, Ctx, Listener, Target, ACME_ROUTE};
use crate::access::{self, Access};
use crate::peek::{Protocol, Transport};
use crate::pool::Pool;
use crate::route::{Route, RouterBuilder, DEFAULT_ROUTE};

impl Ctx<'_> {
    /// Validates `listener`; its binds join `seen_binds`, warnings about it
    /// join `warnings`.
    pub(super) fn listener(
        &self,
        listener: &Spanned<RawListener>,
        pools: &BTreeMap<Arc<str>, Arc<Pool>>,
        seen_binds: &mut Vec<(Transport, SocketAddr)>,
        warnings: &mut Vec<String>,
    ) -> Result<Listener, ConfigError> {
        let raw_l = listener.get_ref();
        let protocol = match raw_l.protocol {
            RawProtocol::Tls => Protocol::Tls,
            RawProtocol::Http => Protocol::Http,
            RawProtocol::Tcp => Protocol::Tcp,
            RawProtocol::Quic => Protocol::Quic,
        };
        let transport = protocol.transport();
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
            let same_transport = || seen_binds.iter().filter(|(t, _)| *t == transport);
            if same_transport().any(|(_, other)| *other == addr) {
                let what = match transport {
                    Transport::Tcp => "by one TCP listener only (a \"quic\" listener may share it)",
                    Transport::Udp => "by one \"quic\" listener only",
                };
                return Err(self.at(
                    span,
                    format!("bind `{addr}` is used twice; each address may be bound {what}"),
                ));
            }
            if let Some((_, other)) =
                same_transport().find(|(_, other)| binds_overlap(addr, *other))
            {
                return Err(self.at(span, format!("bind `{addr}` overlaps `{other}`: a wildcard address takes its port on every address of its family; keep one of them")));
            }
            seen_binds.push((transport, addr));
            binds.push(addr);
        }
        let counters = self.route_counters(transport, &binds);
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
        let http_only = [
            (
                "redirect_https",
                raw_l.redirect_https.as_ref().map(|v| v.span()),
            ),
            (
                "acme_thumbprint",
                raw_l.acme_thumbprint.as_ref().map(|v| v.span()),
            ),
            ("acme_pool", raw_l.acme_pool.as_ref().map(|v| v.span())),
        ];
        if protocol != Protocol::Http {
            if let Some((key, Some(span))) = http_only.iter().find(|(_, span)| span.is_some()) {
                return Err(self.at(span.clone(), format!("`{key}` is only for \"http\" listeners: a {} listener cannot answer in HTTP", protocol.as_str())));
            }
        }
        if protocol == Protocol::Tcp {
            if let Some((pattern, _)) = raw_l.routes.0.first() {
                return Err(self.at(pattern.span(), "a \"tcp\" listener reads nothing from the client, so it has no name to route on: remove [listeners.routes] and set `default`".into()));
            }
            if raw_l.default.is_none() {
                return Err(self.at(
                    listener.span(),
                    "a \"tcp\" listener needs `default`: the pool every connection goes to".into(),
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
            let pool = self.pool_ref(pools, &name, &what)?;
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
                self.pool_ref(pools, name, "listener default")?,
                None,
            )),
            None => None,
        };
        let redirect_https = raw_l.redirect_https.as_ref().is_some_and(|r| *r.get_ref());
        if let (true, Some(name), Some(redirect)) =
            (redirect_https, &raw_l.default, &raw_l.redirect_https)
        {
            return Err(self.at(redirect.span(), format!("listener on {}: `redirect_https = true` and `default = \"{}\"` cannot go together: with a default every Host is routed and none would be redirected; remove one of them", binds[0], name.get_ref())));
        }
        let acme = self.acme(raw_l, pools)?;
        if raw_l.routes.0.is_empty() && default.is_none() && !redirect_https && acme.is_none() {
            return Err(self.at(listener.span(), "listener has no routes and no default: nothing could ever be routed; add [listeners.routes] or `default`".into()));
        }
        if let (Protocol::Quic, Some(accept)) = (protocol, &raw_l.accept_proxy_protocol) {
            return Err(self.at(accept.span(), "a \"quic\" listener cannot take a PROXY protocol header: a datagram has no stream to carry one; remove accept_proxy_protocol".into()));
        }
        let proxy_from = self.proxy_from(raw_l)?;
        let access = self.access("listener", &raw_l.allow, &raw_l.deny)?;
        let router = router.build(default);
        if protocol == Protocol::Quic {
            if let Some(route) = router
                .routes_and_default()
                .into_iter()
                .find(|r| r.target.pool.proxy_protocol().is_some())
            {
                return Err(self.at(listener.span(), format!("route `{}` of a \"quic\" listener leads to upstream `{}`, which sends a PROXY protocol header: a QUIC server cannot take one; use an upstream without proxy_protocol", route.pattern, route.target.pool.name)));
            }
        }
        Ok(Listener {
            binds,
            protocol,
            router,
            proxy_from,
            access,
            redirect_https,
            acme,
        })
    }

    /// `acme_thumbprint` or `acme_pool`, which exclude each other.
    fn acme(
        &self,
        l: &RawListener,
        pools: &BTreeMap<Arc<str>, Arc<Pool>>,
    ) -> Result<Option<Acme>, ConfigError> {
        match (&l.acme_thumbprint, &l.acme_pool) {
            (None, None) => Ok(None),
            (Some(_), Some(pool)) => Err(self.at(pool.span(), "`acme_pool` and `acme_thumbprint` cannot go together: either sniroute answers the challenges itself (acme_thumbprint) or a pool does (acme_pool); keep one".into())),
            (Some(thumbprint), None) => {
                let t = thumbprint.get_ref();
                if t.len() != 43 || !t.bytes().all(is_base64url) {
                    return Err(self.at(thumbprint.span(), format!("acme_thumbprint `{t}` is not an account key thumbprint: 43 characters of A-Z, a-z, 0-9, `-` and `_` (the unpadded base64url SHA-256 an ACME client prints, e.g. `acme.sh --register-account`), got {} characters", t.chars().count())));
                }
                Ok(Some(Acme::Thumbprint(t.as_str().into())))
            }
            (None, Some(pool)) => {
                let pool = self.pool_ref(pools, pool, "acme_pool")?;
                Ok(Some(Acme::Pool(Route {
                    pattern: ACME_ROUTE.into(),
                    target: Target {
                        pool,
                        access: None,
                        routed: Arc::default(),
                    },
                })))
            }
        }
    }

    /// `accept_proxy_protocol` and `proxy_protocol_from`, which go together.
    fn proxy_from(&self, l: &RawListener) -> Result<Option<Vec<IpNet>>, ConfigError> {
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
        transport: Transport,
        binds: &[SocketAddr],
    ) -> HashMap<Arc<str>, (Arc<str>, Arc<AtomicU64>)> {
        let Some(previous) = self.previous else {
            return HashMap::new();
        };
        let Some(index) = binds
            .iter()
            .find_map(|b| previous.listener_for(transport, *b))
        else {
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
}

/// A character of the unpadded base64url alphabet (RFC 4648 5).
fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
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
