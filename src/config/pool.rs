//! One `[upstreams.NAME]` entry → [`PoolSpec`]: its servers (names resolved,
//! every address a server), balance, passive and active health, DNS refresh
//! and PROXY protocol. The registry makes the live pool of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::address::{nginx_parameters, url};
use super::raw::{RawBalance, RawHealthCheck, RawProxyProtocol, RawUpstream};
use super::{ConfigError, Ctx};
use crate::pool::spec::{CheckSpec, Host, ServerSpec, DNS_REFRESH};
use crate::pool::{Balance, HealthPolicy, Pool, PoolSpec};
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
    ) -> Result<PoolSpec, ConfigError> {
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
        let check = match &u.health_check {
            Some(raw) => Some(self.check(name, raw)?),
            None => None,
        };
        let dns_refresh = self.duration(
            &format!("upstreams.{name}.dns_refresh"),
            u.dns_refresh.as_ref(),
            DNS_REFRESH,
        )?;
        if let Some(d) = &u.dns_refresh {
            if dns_refresh < Duration::from_secs(1) {
                return Err(self.at(
                    d.span(),
                    format!("upstreams.{name}.dns_refresh must be at least 1s"),
                ));
            }
        }
        if u.servers.is_empty() {
            return Err(self.at(upstream.span(), format!("upstream `{name}` has no servers")));
        }
        let mut servers: Vec<ServerSpec> = Vec::new();
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
            let addrs = self.resolve(&s.addr, entry.span())?;
            for addr in &addrs {
                if servers.iter().any(|known| known.addrs.contains(addr)) {
                    return Err(self.at(
                        entry.span(),
                        format!("upstream `{name}`: server address {addr} is listed twice"),
                    ));
                }
            }
            let host = match s.addr.parse::<SocketAddr>() {
                Ok(addr) => Host::Addr(addr),
                Err(_) => {
                    // resolve() accepted it, so it ends in `:port`.
                    let (host, port) = s.addr.rsplit_once(':').unwrap_or((&s.addr, "0"));
                    Host::Name {
                        name: Arc::from(host),
                        port: port.parse().unwrap_or(0),
                    }
                }
            };
            servers.push(ServerSpec {
                host,
                weight: s.weight,
                backup: s.backup,
                drain: s.drain,
                addrs,
            });
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
        Ok(PoolSpec {
            name: Arc::from(name),
            balance,
            health,
            check,
            dns_refresh,
            proxy_protocol,
            servers,
        })
    }

    fn check(&self, pool: &str, raw: &Spanned<RawHealthCheck>) -> Result<CheckSpec, ConfigError> {
        let c = raw.get_ref();
        let key = |k: &str| format!("upstreams.{pool}.health_check.{k}");
        let defaults = CheckSpec::default();
        let interval = self.duration(&key("interval"), c.interval.as_ref(), defaults.interval)?;
        if interval < Duration::from_millis(100) {
            let span = c.interval.as_ref().map(Spanned::span).unwrap_or_default();
            return Err(self.at(
                span,
                format!(
                    "{} = {interval:?} is too short: use 100ms or more",
                    key("interval")
                ),
            ));
        }
        let timeout = self.duration(
            &key("timeout"),
            c.timeout.as_ref(),
            defaults.timeout.min(interval),
        )?;
        let span = c
            .timeout
            .as_ref()
            .map(Spanned::span)
            .unwrap_or_else(|| raw.span());
        if timeout < Duration::from_millis(10) {
            return Err(self.at(
                span,
                format!(
                    "{} = {timeout:?} is too short: use 10ms or more",
                    key("timeout")
                ),
            ));
        }
        if timeout > interval {
            return Err(self.at(span, format!("{} = {timeout:?} is longer than interval = {interval:?}: a probe must end before the next one starts", key("timeout"))));
        }
        let count = |k: &str, v: &Option<Spanned<u32>>, default: u32| match v {
            Some(v) if *v.get_ref() == 0 => {
                Err(self.at(v.span(), format!("{} must be 1 or more", key(k))))
            }
            Some(v) => Ok(*v.get_ref()),
            None => Ok(default),
        };
        let tls_sni = match &c.tls_sni {
            Some(sni) => {
                if rustls::pki_types::ServerName::try_from(sni.get_ref().as_str()).is_err()
                    || sni.get_ref().parse::<std::net::IpAddr>().is_ok()
                {
                    return Err(self.at(
                        sni.span(),
                        format!("{} = `{}` is not a DNS name", key("tls_sni"), sni.get_ref()),
                    ));
                }
                Some(Arc::from(sni.get_ref().as_str()))
            }
            None => None,
        };
        Ok(CheckSpec {
            interval,
            timeout,
            fall: count("fall", &c.fall, defaults.fall)?,
            rise: count("rise", &c.rise, defaults.rise)?,
            tls_sni,
        })
    }
}
