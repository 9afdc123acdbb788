//! `upstream {}` blocks and literal `host:port` targets → pools, and
//! `proxy_protocol on` → the pools that send a PROXY header.
//!
//! An upstream keeps its name. A target given as `host:port` becomes a pool of
//! one server named after it. nginx's round robin and `least_conn` map to
//! sniroute's; weights, `backup` and `max_fails` / `fail_timeout` carry over
//! (sniroute keeps the last two per pool, so the first server's values win);
//! `down` servers are left out, as nginx sends them nothing.
//!
//! nginx decides per `server {}` whether servers get a PROXY header; sniroute
//! decides per pool. A pool that servers with and without `proxy_protocol on`
//! share is therefore split in two: `NAME` without the header, and a copy
//! `NAME_proxy_protocol` with it, which the listeners that had it route to.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::super::emit::{ListenerPlan, Plan, PoolPlan, ServerPlan};
use super::super::note::{Note, Severity};
use super::super::tree::{Directive, Location};
use super::super::units::{format_duration, parse_time};
use super::Translator;
use crate::name::HostName;

const NGINX_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

impl Translator<'_> {
    /// The pool for a map value or `proxy_pass` target; `Err(why)` if there is
    /// none sniroute can have.
    pub(super) fn target(&mut self, value: &str, at: &Location) -> Result<String, String> {
        if self
            .upstreams
            .iter()
            .any(|u| u.args.first().map(String::as_str) == Some(value))
        {
            return Ok(value.to_owned());
        }
        if value.contains('$') {
            return Err(
                "the target is built from variables; sniroute routes to fixed pools only".into(),
            );
        }
        if value.starts_with("unix:") {
            return Err("sniroute forwards to TCP servers only".into());
        }
        if server_addr(value).is_ok() {
            self.literal_pools
                .entry(value.to_owned())
                .or_insert_with(|| at.clone());
            return Ok(value.to_owned());
        }
        Err(format!(
            "`{value}` is neither an upstream {{}} nor a host:port"
        ))
    }

    /// Every pool, then the PROXY header on those whose servers got it.
    pub(super) fn pools(&self, plan: &mut Plan) {
        for u in &self.upstreams {
            plan.upstreams.push(upstream(u));
        }
        for (addr, at) in &self.literal_pools {
            plan.upstreams.push(PoolPlan {
                name: addr.clone(),
                origin: format!("the target {addr} ({at}), a pool of one"),
                notes: Vec::new(),
                servers: vec![ServerPlan {
                    addr: addr.clone(),
                    weight: 1,
                    backup: false,
                }],
                balance: "round_robin",
                balance_comment: String::new(),
                max_fails: 1,
                fail_timeout: format_duration(NGINX_FAIL_TIMEOUT),
                proxy_protocol: None,
            });
        }
        send_proxy_protocol(&mut plan.listeners, &mut plan.upstreams);
    }
}

/// The pool names a listener routes to.
fn pools_of(l: &mut ListenerPlan) -> impl Iterator<Item = &mut String> {
    l.default
        .iter_mut()
        .map(|(pool, _)| pool)
        .chain(l.routes.iter_mut().map(|r| &mut r.pool))
}

/// `proxy_protocol = "v1"` (all nginx sends) on the pools of the listeners that
/// had `proxy_protocol on`; a pool also used without it is split.
fn send_proxy_protocol(listeners: &mut [ListenerPlan], pools: &mut Vec<PoolPlan>) {
    // Pool → where `proxy_protocol on` applied to a listener using it.
    let mut with: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut without: HashSet<String> = HashSet::new();
    for l in listeners.iter_mut() {
        let sends = l.sends_proxy_protocol.clone();
        for pool in pools_of(l) {
            match &sends {
                Some(from) => {
                    let froms = with.entry(pool.clone()).or_default();
                    if !froms.contains(from) {
                        froms.push(from.clone());
                    }
                }
                None => {
                    without.insert(pool.clone());
                }
            }
        }
    }
    for (name, froms) in with {
        let Some(i) = pools.iter().position(|p| p.name == name) else {
            continue;
        };
        let from = froms.join(", ");
        if !without.contains(&name) {
            pools[i].proxy_protocol = Some(from);
            continue;
        }
        let mut copy_name = format!("{name}_proxy_protocol");
        while pools.iter().any(|p| p.name == copy_name) {
            copy_name.push('_');
        }
        let mut copy = pools[i].clone();
        copy.origin = format!("{}, for the servers with proxy_protocol on", copy.origin);
        copy.notes = vec![Note::info(format!(
            "the servers of {name} again, with the PROXY header: nginx sent it from some\n\
             stream servers and not from others, sniroute decides per pool"
        ))];
        copy.name = copy_name.clone();
        copy.proxy_protocol = Some(from);
        pools.insert(i + 1, copy);
        for l in listeners
            .iter_mut()
            .filter(|l| l.sends_proxy_protocol.is_some())
        {
            for pool in pools_of(l).filter(|p| **p == name) {
                pool.clone_from(&copy_name);
            }
        }
    }
}

/// Whether `addr` is a server address sniroute accepts: `ip:port` or `name:port`.
pub(super) fn server_addr(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match addr.rsplit_once(':') {
        Some((host, port))
            if port.parse::<u16>().is_ok()
                && !host.contains(':')
                && HostName::parse(host.as_bytes()).is_some() =>
        {
            Ok(())
        }
        _ => Err(format!("`{addr}` is not host:port")),
    }
}

fn upstream(u: &Directive) -> PoolPlan {
    let name = u.args.first().cloned().unwrap_or_default();
    let mut pool = PoolPlan {
        name: name.clone(),
        origin: format!("upstream {name} ({})", u.at),
        notes: Vec::new(),
        servers: Vec::new(),
        balance: "round_robin",
        balance_comment: "nginx's default: weighted round robin".into(),
        max_fails: 1,
        fail_timeout: format_duration(NGINX_FAIL_TIMEOUT),
        proxy_protocol: None,
    };
    // (max_fails, fail_timeout, where) of each server, for the one pool-wide value.
    let mut health: Vec<(u32, Duration, String)> = Vec::new();
    for d in u.block.iter().flatten() {
        match &*d.name {
            "server" => {
                if let Some((server, h)) = upstream_server(d, &mut pool.notes) {
                    pool.servers.push(server);
                    health.push(h);
                }
            }
            "least_conn" => {
                pool.balance = "least_conn";
                pool.balance_comment = format!("least_conn ({})", d.at);
            }
            "hash" => {
                pool.balance = "least_conn";
                pool.balance_comment = "see the note above".into();
                pool.notes.push(Note::lossy(
                    d,
                    "nginx kept each key (such as a client address) on one server; sniroute balances\n\
                     least_conn, so a client may reach another server each time",
                ));
            }
            "random" | "least_time" => {
                pool.balance = "least_conn";
                pool.balance_comment = "see the note above".into();
                pool.notes.push(Note::not_needed(
                    d,
                    "another way to spread load; sniroute balances least_conn",
                ));
            }
            "zone" => pool.notes.push(Note::not_needed(
                d,
                "sniroute is one process, its state is shared already",
            )),
            "resolver" | "resolver_timeout" => pool.notes.push(Note::not_needed(
                d,
                "sniroute resolves server names with the system resolver",
            )),
            _ => pool
                .notes
                .push(Note::lossy(d, "sniroute has no counterpart")),
        }
    }
    if let Some((max_fails, fail_timeout, _)) = health.first().cloned() {
        pool.max_fails = max_fails;
        pool.fail_timeout = format_duration(fail_timeout);
        let differ: Vec<String> = health
            .iter()
            .filter(|(m, f, _)| (*m, *f) != (max_fails, fail_timeout))
            .map(|(m, f, at)| format!("max_fails={m} fail_timeout={} at {at}", format_duration(*f)))
            .collect();
        if !differ.is_empty() {
            pool.notes.push(Note {
                severity: Severity::NotNeeded,
                text: format!(
                    "not needed per server: servers differ in max_fails / fail_timeout, sniroute has one\n\
                     value per pool: this pool takes the first server's; the others had {}",
                    differ.join(", ")
                ),
            });
        }
    }
    if pool.servers.is_empty() {
        pool.notes.push(Note::lossy_text(format!(
            "not translated: upstream {name} ({}) has no server sniroute can use; --check fails until it has one",
            u.at
        )));
    }
    pool
}

/// Server parameters that change neither who may connect nor which pool a
/// connection reaches.
const SERVER_NOT_NEEDED: &[(&str, &str)] = &[
    (
        "max_conns",
        "sniroute caps connections overall (limits.max_connections), not per server",
    ),
    (
        "resolve",
        "sniroute resolves the name when the config is loaded, at start and on every reload",
    ),
    (
        "slow_start",
        "sniroute gives a server that is back its full share at once",
    ),
];

fn upstream_server(
    d: &Directive,
    notes: &mut Vec<Note>,
) -> Option<(ServerPlan, (u32, Duration, String))> {
    let Some((addr, params)) = d.args.split_first() else {
        notes.push(Note::lossy(d, "no address"));
        return None;
    };
    if let Err(why) = server_addr(addr) {
        let why = if addr.starts_with("unix:") {
            "sniroute forwards to TCP servers only".to_owned()
        } else {
            why
        };
        notes.push(Note::lossy(d, &why));
        return None;
    }
    let mut server = ServerPlan {
        addr: addr.clone(),
        weight: 1,
        backup: false,
    };
    let mut max_fails = 1;
    let mut fail_timeout = NGINX_FAIL_TIMEOUT;
    for p in params {
        let (key, value) = p.split_once('=').unwrap_or((p.as_str(), ""));
        let ok = match key {
            "weight" => value
                .parse::<u32>()
                .ok()
                .filter(|w| *w > 0)
                .map(|w| server.weight = w),
            "max_fails" => value.parse::<u32>().ok().map(|m| max_fails = m),
            "fail_timeout" => parse_time(value)
                .filter(|t| !t.is_zero())
                .map(|t| fail_timeout = t),
            "backup" if value.is_empty() => {
                server.backup = true;
                Some(())
            }
            "down" if value.is_empty() => {
                notes.push(Note::info(format!(
                    "{} ({}) is marked down, so nginx sent it nothing: left out",
                    d.text(),
                    d.at
                )));
                return None;
            }
            _ => match SERVER_NOT_NEEDED.iter().find(|(k, _)| *k == key) {
                Some((_, why)) => {
                    notes.push(Note::not_needed(d, &format!("`{p}`: {why}")));
                    Some(())
                }
                None => None,
            },
        };
        if ok.is_none() {
            notes.push(Note::lossy(
                d,
                &format!("sniroute cannot carry over the server parameter `{p}`"),
            ));
        }
    }
    Some((server, (max_fails, fail_timeout, d.at.to_string())))
}
