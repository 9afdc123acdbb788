//! One `[upstreams.NAME]` entry → [`Pool`]: its servers (names resolved,
//! every address a server), balance, passive health and PROXY protocol.
//!
//! Servers that the previous config had in the same pool keep their live
//! state, and the pool keeps its duration histogram.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use toml::Spanned;

use super::address::{nginx_parameters, url};
use super::raw::{RawBalance, RawProxyProtocol, RawUpstream};
use super::{ConfigError, Ctx};
use crate::pool::{Balance, HealthPolicy, Pool, Server};
use crate::proxy_protocol;

impl Ctx<'_> {
    pub(super) fn pool_ref(
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

    pub(super) fn pool(
        &self,
        name: &str,
        upstream: &Spanned<RawUpstream>,
    ) -> Result<Pool, ConfigError> {
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
}
