//! nginx `stream {}` directives → a sniroute [`Plan`], with a note for
//! everything that does not carry over.
//!
//! What maps to what (README "Migrate from nginx stream" has the same table):
//! - each `server {}` becomes a listener: its `listen` addresses are the binds,
//!   `ssl_preread on` makes it a TLS listener; without it nginx routed blindly,
//!   so the listener is TLS on the ports TLS services use (443, 6443, 8443,
//!   9345, …) and HTTP elsewhere (nginx's stream module cannot see `Host`, so
//!   such a listener gets the same single target nginx had, as its default);
//! - `proxy_pass upstream;` or `proxy_pass host:port;` becomes the default;
//!   `proxy_pass $var;` with `map $ssl_preread_server_name $var` becomes the
//!   routes (exact names, `*.` and `.` wildcards, trailing `.*` wildcards as
//!   regexes, `~` / `~*` regexes) and the map's `default` the default;
//! - each `upstream {}` becomes a pool: `least_conn` or nginx's round robin,
//!   `weight`, `backup`, and `max_fails` / `fail_timeout` (nginx's defaults 1 and
//!   10s when absent; sniroute has them per pool, not per server);
//! - `proxy_connect_timeout`, `proxy_timeout`, `preread_timeout` become
//!   `[timeouts]`, written out even when nginx used its defaults, so that the
//!   timing stays what it was; `preread_buffer_size` becomes `max_peek_bytes`.
//!
//! Matching follows nginx's map: exact names, then the longest head wildcard,
//! then the longest tail wildcard, then regexes in order. That is also
//! sniroute's order once tail wildcards are written as the first regexes,
//! longest first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::emit::{ListenerPlan, Plan, PoolPlan, RoutePlan, ServerPlan, Setting};
use super::tree::{Directive, Location};
use super::units::{format_duration, parse_size, parse_time};
use crate::name::HostName;

/// Why there is nothing to translate.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("{file}: no `stream {{}}` block (also none in its includes): sniroute replaces nginx's stream module, so there is nothing to translate")]
    NoStream { file: String },
}

/// Ports whose clients speak TLS from their first byte: a `server {}` on one of
/// them without `ssl_preread` becomes a TLS listener, elsewhere an HTTP one.
const TLS_PORTS: &[u16] = &[443, 465, 636, 853, 993, 995, 2376, 6443, 8443, 9345, 10250];

/// nginx's defaults for the stream settings sniroute has too.
const NGINX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const NGINX_PROXY_TIMEOUT: Duration = Duration::from_secs(600);
const NGINX_PREREAD_TIMEOUT: Duration = Duration::from_secs(30);
const NGINX_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

fn untranslated(d: &Directive, why: &str) -> String {
    let text = match d.block {
        Some(_) => format!("{} {{…}}", d.text()),
        None => d.text(),
    };
    if why.is_empty() {
        format!("not translated: {text} ({})", d.at)
    } else {
        format!("not translated: {text} ({}): {why}", d.at)
    }
}

/// Translates the directives of the nginx config read from `source`.
pub fn translate(source: &str, tree: &[Directive]) -> Result<Plan, TranslateError> {
    let mut plan = Plan {
        source: source.to_owned(),
        ..Plan::default()
    };
    let mut stream: Vec<&Directive> = Vec::new();
    let mut found = false;
    for d in tree {
        match (&*d.name, &d.block) {
            ("stream", Some(block)) => {
                found = true;
                stream.extend(block.iter());
            }
            _ => plan.notes.push(untranslated(d, "outside stream {}")),
        }
    }
    if !found {
        return Err(TranslateError::NoStream {
            file: source.to_owned(),
        });
    }
    let mut t = Translator::default();
    t.stream(&stream, &mut plan.notes);
    t.finish(&mut plan);
    Ok(plan)
}

/// A value nginx had: where it was set, or `None` for nginx's default.
#[derive(Debug, Clone)]
struct Sourced<T> {
    value: T,
    from: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Settings {
    ssl_preread: Option<Sourced<bool>>,
    connect: Option<Sourced<Duration>>,
    idle: Option<Sourced<Duration>>,
    peek: Option<Sourced<Duration>>,
    peek_bytes: Option<Sourced<u64>>,
}

#[derive(Debug)]
struct MapDef<'a> {
    source: String,
    at: Location,
    hostnames: bool,
    default: Option<&'a Directive>,
    entries: Vec<&'a Directive>,
    notes: Vec<String>,
    /// Notes go with the first listener that uses the map.
    notes_taken: bool,
}

#[derive(Default)]
struct Translator<'a> {
    settings: Settings,
    maps: HashMap<String, MapDef<'a>>,
    upstreams: Vec<&'a Directive>,
    servers: Vec<&'a Directive>,
    /// Pools made for a literal `host:port` target: address → where first used.
    literal_pools: BTreeMap<String, Location>,
    /// Effective settings of every translated server, for `[timeouts]`.
    effective: Vec<Settings>,
}

impl<'a> Translator<'a> {
    fn stream(&mut self, stream: &[&'a Directive], notes: &mut Vec<String>) {
        for &d in stream {
            match (&*d.name, &d.block) {
                ("map", Some(block)) => self.map(d, block, notes),
                ("upstream", Some(_)) => self.upstreams.push(d),
                ("server", Some(_)) => self.servers.push(d),
                _ => {
                    let mut settings = std::mem::take(&mut self.settings);
                    if let Err(why) = setting(&mut settings, d) {
                        notes.push(untranslated(d, &why));
                    }
                    self.settings = settings;
                }
            }
        }
    }

    fn map(&mut self, d: &'a Directive, block: &'a [Directive], notes: &mut Vec<String>) {
        let [source, var] = d.args.as_slice() else {
            notes.push(untranslated(d, "a map takes a source and a $variable"));
            return;
        };
        let Some(var) = var.strip_prefix('$') else {
            notes.push(untranslated(
                d,
                "the map's second argument is not a $variable",
            ));
            return;
        };
        let mut map = MapDef {
            source: source.clone(),
            at: d.at.clone(),
            hostnames: false,
            default: None,
            entries: Vec::new(),
            notes: Vec::new(),
            notes_taken: false,
        };
        for entry in block {
            match (&*entry.name, entry.args.len(), &entry.block) {
                ("hostnames", 0, None) => map.hostnames = true,
                // Only about caching in nginx; nothing to carry over.
                ("volatile", 0, None) => {}
                ("default", 1, None) => map.default = Some(entry),
                (_, 1, None) => map.entries.push(entry),
                _ => map
                    .notes
                    .push(untranslated(entry, "not a `key value;` map entry")),
            }
        }
        self.maps.insert(var.to_owned(), map);
    }

    fn finish(mut self, plan: &mut Plan) {
        let servers = std::mem::take(&mut self.servers);
        if servers.is_empty() {
            plan.notes
                .push("the stream {} block has no server {}: nothing listens, so sniroute has no listener to run (add one)".into());
        }
        for server in servers {
            let listener = self.server(server);
            plan.listeners.push(listener);
        }
        self.timeouts(plan);
        self.pools(plan);
    }

    fn server(&mut self, server: &'a Directive) -> ListenerPlan {
        let mut l = ListenerPlan {
            origin: server.at.to_string(),
            ..ListenerPlan::default()
        };
        let mut settings = self.settings.clone();
        let mut listens = Vec::new();
        let mut proxy_pass = None;
        for d in server.block.iter().flatten() {
            match &*d.name {
                "listen" => listens.push(d),
                "proxy_pass" => proxy_pass = Some(d),
                _ => {
                    if let Err(why) = setting(&mut settings, d) {
                        l.notes.push(untranslated(d, &why));
                    }
                }
            }
        }
        for d in listens {
            self.listen(d, &mut l);
        }
        if l.binds.is_empty() {
            l.notes.push(format!(
                "not translated: server {{}} ({}): it has no listen address sniroute can bind",
                server.at
            ));
            l.disabled = true;
        }
        let preread = settings.ssl_preread.as_ref().is_some_and(|s| s.value);
        let ports: Vec<u16> = l
            .binds
            .iter()
            .filter_map(|b| b.parse::<SocketAddr>().ok())
            .map(|a| a.port())
            .collect();
        if preread {
            l.protocol = "tls";
            l.protocol_comment = format!(
                "ssl_preread on{}",
                settings
                    .ssl_preread
                    .as_ref()
                    .and_then(|s| s.from.as_deref())
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            );
        } else if ports.iter().any(|p| TLS_PORTS.contains(p)) {
            l.protocol = "tls";
            l.protocol_comment = "no ssl_preread: TLS because of the port".into();
            l.notes.push(
                "nginx forwarded this port without reading anything (no ssl_preread). sniroute\n\
                 needs a TLS ClientHello on a \"tls\" listener: clients that do not start with\n\
                 TLS are closed. Every name goes to the default, as in nginx."
                    .into(),
            );
        } else {
            l.protocol = "http";
            l.protocol_comment = "no ssl_preread: HTTP, see above".into();
            l.notes.push(
                "nginx's stream module cannot route by the HTTP Host header (it only has\n\
                 $hostname, this machine's own name), so this server forwarded every\n\
                 connection to one target. It becomes an \"http\" listener, which reads the\n\
                 request head and routes on Host: with only a default, as here, every\n\
                 request still goes to that target. Add [listeners.routes] to route by Host.\n\
                 Clients that do not speak HTTP/1.x here are closed."
                    .into(),
            );
        }
        match proxy_pass {
            None => {
                l.notes.push(format!(
                    "not translated: server {{}} ({}): no proxy_pass, nothing to forward to",
                    server.at
                ));
                l.disabled = true;
            }
            Some(d) => self.proxy_pass(d, preread, &mut l),
        }
        if l.default.is_none() && l.routes.is_empty() {
            l.disabled = true;
        }
        if !l.disabled {
            self.effective.push(settings);
        }
        l
    }

    fn listen(&mut self, d: &Directive, l: &mut ListenerPlan) {
        let Some((addr, params)) = d.args.split_first() else {
            l.notes.push(untranslated(d, "no address"));
            return;
        };
        if params.iter().any(|p| p == "udp") {
            l.notes.push(untranslated(
                d,
                "sniroute proxies TCP only; this UDP listener is left out",
            ));
            return;
        }
        for p in params {
            let why = match p.as_str() {
                "ssl" => "sniroute never terminates TLS: clients' TLS goes through to the servers untouched, so they must serve TLS themselves",
                "proxy_protocol" => "sniroute does not accept a PROXY protocol header from clients",
                "ipv6only=off" => "sniroute binds IPv6 addresses v6-only; list 0.0.0.0 with the same port as well to serve IPv4",
                _ => "sniroute has no such listen option",
            };
            l.notes.push(format!(
                "not translated: listen parameter `{p}` ({}): {why}",
                d.at
            ));
        }
        match listen_addr(addr) {
            Ok(bind) => {
                if !l.binds.contains(&bind) {
                    l.binds.push(bind);
                }
            }
            Err(why) => l.notes.push(untranslated(d, &why)),
        }
    }

    fn proxy_pass(&mut self, d: &Directive, preread: bool, l: &mut ListenerPlan) {
        let [target] = d.args.as_slice() else {
            l.notes.push(untranslated(d, "proxy_pass takes one target"));
            l.disabled = true;
            return;
        };
        let var = target
            .strip_prefix("${")
            .and_then(|v| v.strip_suffix('}'))
            .or_else(|| target.strip_prefix('$'));
        let Some(var) = var else {
            match self.target(target, &d.at) {
                Ok(pool) => l.default = Some((pool, format!("proxy_pass {target} ({})", d.at))),
                Err(why) => {
                    l.notes.push(untranslated(d, &why));
                    l.disabled = true;
                }
            }
            return;
        };
        if !self.maps.contains_key(var) {
            l.notes.push(untranslated(
                d,
                "the target is not the result of a map; sniroute routes names to pools only",
            ));
            l.disabled = true;
            return;
        }
        self.routes_from_map(var, preread, l);
    }

    fn routes_from_map(&mut self, var: &str, preread: bool, l: &mut ListenerPlan) {
        let Some(map) = self.maps.get_mut(var) else {
            return;
        };
        if !map.notes_taken {
            map.notes_taken = true;
            l.notes.append(&mut map.notes);
        }
        let source = map.source.clone();
        let map_at = map.at.clone();
        let hostnames = map.hostnames;
        let default = map.default;
        let entries = map.entries.clone();
        if let Some(dd) = default {
            match self.target(&dd.args[0], &dd.at) {
                Ok(pool) => {
                    l.default = Some((pool, format!("map ${var} default ({})", dd.at)));
                }
                Err(why) => l.notes.push(untranslated(dd, &why)),
            }
        } else {
            l.notes.push(format!(
                "map ${var} ({map_at}) has no default: nginx closed connections for names it\n\
                 does not list; sniroute answers them with a TLS unrecognized_name alert\n\
                 (HTTP: 421) and closes. Either way they reach no server."
            ));
        }
        let by_name = source == "$ssl_preread_server_name";
        if !by_name {
            l.notes.push(format!(
                "not translated: the entries of map {source} ${var} ({map_at}): sniroute routes on the\n\
                 client's name (SNI or Host) only; only the map's default is kept"
            ));
            return;
        }
        if !preread {
            l.notes.push(format!(
                "ssl_preread is off in this server, so nginx never saw a name here and always\n\
                 used the default of map ${var} ({map_at}); only that default is kept"
            ));
            return;
        }
        self.map_routes(&entries, hostnames, var, l);
    }

    fn map_routes(
        &mut self,
        entries: &[&Directive],
        hostnames: bool,
        var: &str,
        l: &mut ListenerPlan,
    ) {
        let mut seen: HashSet<String> = HashSet::new();
        let mut names: Vec<RoutePlan> = Vec::new();
        let mut tails: Vec<(usize, RoutePlan)> = Vec::new();
        let mut regexes: Vec<RoutePlan> = Vec::new();
        let mut case_note = false;
        // `.example.com` adds `example.com` only where no exact entry has it:
        // in nginx the exact entry wins wherever it is written.
        let is_dot = |e: &&&Directive| e.name.starts_with('.');
        let ordered = entries
            .iter()
            .filter(|e| !is_dot(e))
            .chain(entries.iter().filter(is_dot));
        for &e in ordered {
            let key = e.name.as_str();
            let pool = match self.target(&e.args[0], &e.at) {
                Ok(pool) => pool,
                Err(why) => {
                    l.notes.push(untranslated(e, &why));
                    continue;
                }
            };
            let at = e.at.to_string();
            if let Some(re) = key.strip_prefix("~*") {
                let pattern = format!("~(?i){re}");
                match regex::Regex::new(re) {
                    Ok(_) => regexes.push(RoutePlan {
                        pattern,
                        pool,
                        comment: format!("~* (case-insensitive) {at}"),
                    }),
                    Err(err) => l.notes.push(untranslated(e, &regex_error(&err))),
                }
                continue;
            }
            if let Some(re) = key.strip_prefix('~') {
                if let Err(err) = regex::Regex::new(re) {
                    l.notes.push(untranslated(e, &regex_error(&err)));
                    continue;
                }
                if has_upper_literal(re) {
                    l.notes.push(format!(
                        "{key} ({at}) has upper-case letters: nginx matched them when a client sent the\n\
                         name in upper case; sniroute matches the lowercased name, so they never match now"
                    ));
                } else if !case_note {
                    case_note = true;
                    l.notes.push(
                        "nginx matched `~` regexes case-sensitively on the name as the client sent it;\n\
                         sniroute lowercases names first, so they now also match names sent in upper case"
                            .into(),
                    );
                }
                regexes.push(RoutePlan {
                    pattern: key.to_owned(),
                    pool,
                    comment: at,
                });
                continue;
            }
            let wildcard = key.starts_with("*.") || key.starts_with('.') || key.ends_with(".*");
            if wildcard && !hostnames {
                l.notes.push(untranslated(
                    e,
                    "map without `hostnames;`: nginx compared this key literally, so no real name matched it",
                ));
                continue;
            }
            if let Some(suffix) = key.strip_prefix("*.") {
                if HostName::parse(suffix.as_bytes()).is_none() {
                    l.notes
                        .push(untranslated(e, "not a hostname sniroute can match"));
                    continue;
                }
                add(&mut seen, &mut names, key.to_owned(), &pool, at);
            } else if let Some(suffix) = key.strip_prefix('.') {
                if HostName::parse(suffix.as_bytes()).is_none() {
                    l.notes
                        .push(untranslated(e, "not a hostname sniroute can match"));
                    continue;
                }
                let why = format!("from {key}: the name and every name below it ({at})");
                add(&mut seen, &mut names, suffix.to_owned(), &pool, why.clone());
                add(&mut seen, &mut names, format!("*.{suffix}"), &pool, why);
            } else if let Some(prefix) = key.strip_suffix(".*") {
                if HostName::parse(prefix.as_bytes()).is_none() {
                    l.notes
                        .push(untranslated(e, "not a hostname sniroute can match"));
                    continue;
                }
                let pattern = format!("~^{}\\..+$", regex::escape(&prefix.to_ascii_lowercase()));
                if seen.insert(pattern.clone()) {
                    tails.push((
                        prefix.len(),
                        RoutePlan {
                            pattern,
                            pool,
                            comment: format!(
                                "from {key}: sniroute has no trailing wildcards; tried before other regexes, as in nginx ({at})"
                            ),
                        },
                    ));
                }
            } else {
                if HostName::parse(key.as_bytes()).is_none() {
                    l.notes
                        .push(untranslated(e, "not a hostname sniroute can match"));
                    continue;
                }
                add(&mut seen, &mut names, key.to_owned(), &pool, at);
            }
        }
        // nginx tries the longest trailing wildcard first; regexes go in file order.
        tails.sort_by_key(|t| std::cmp::Reverse(t.0));
        l.routes.extend(names);
        l.routes.extend(tails.into_iter().map(|(_, r)| r));
        l.routes.extend(regexes);
        if l.routes.is_empty() && l.default.is_none() {
            l.notes.push(format!(
                "nothing of map ${var} could be translated, so this listener could route nothing"
            ));
        }
    }

    /// The pool for a map value or `proxy_pass` target.
    fn target(&mut self, value: &str, at: &Location) -> Result<String, String> {
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

    fn timeouts(&self, plan: &mut Plan) {
        type Pick = fn(&Settings) -> Option<&Sourced<Duration>>;
        let rows: [(&'static str, &str, Pick, Duration); 3] = [
            (
                "peek",
                "preread_timeout",
                |s| s.peek.as_ref(),
                NGINX_PREREAD_TIMEOUT,
            ),
            (
                "connect",
                "proxy_connect_timeout",
                |s| s.connect.as_ref(),
                NGINX_CONNECT_TIMEOUT,
            ),
            (
                "idle",
                "proxy_timeout",
                |s| s.idle.as_ref(),
                NGINX_PROXY_TIMEOUT,
            ),
        ];
        for (key, directive, pick, nginx_default) in rows {
            let values: Vec<Sourced<Duration>> = if self.effective.is_empty() {
                vec![pick(&self.settings).cloned().unwrap_or(Sourced {
                    value: nginx_default,
                    from: None,
                })]
            } else {
                self.effective
                    .iter()
                    .map(|s| {
                        pick(s).cloned().unwrap_or(Sourced {
                            value: nginx_default,
                            from: None,
                        })
                    })
                    .collect()
            };
            let Some(chosen) = values.iter().max_by_key(|v| v.value) else {
                continue;
            };
            if chosen.value.is_zero() {
                plan.notes.push(format!(
                    "not translated: {directive} 0 ({}): sniroute needs a timeout above zero; its default applies",
                    chosen.from.as_deref().unwrap_or("nginx default")
                ));
                continue;
            }
            let mut comment = match &chosen.from {
                Some(from) => format!("{directive} {}", from),
                None => format!("nginx's default {directive}"),
            };
            let distinct: HashSet<Duration> = values.iter().map(|v| v.value).collect();
            if distinct.len() > 1 {
                comment.push_str("; the longest of the servers' values (sniroute has one for all)");
            }
            plan.timeouts.push(Setting {
                key,
                value: format!("\"{}\"", format_duration(chosen.value)),
                comment,
            });
        }
        let bytes: Vec<&Sourced<u64>> = if self.effective.is_empty() {
            self.settings.peek_bytes.iter().collect()
        } else {
            self.effective
                .iter()
                .filter_map(|s| s.peek_bytes.as_ref())
                .collect()
        };
        if let Some(chosen) = bytes.iter().max_by_key(|v| v.value) {
            let clamped = chosen.value.clamp(512, 1 << 20);
            let mut comment = format!(
                "preread_buffer_size {}",
                chosen.from.as_deref().unwrap_or("")
            );
            if clamped != chosen.value {
                comment.push_str("; sniroute allows 512 to 1048576");
            }
            plan.limits.push(Setting {
                key: "max_peek_bytes",
                value: clamped.to_string(),
                comment,
            });
        }
    }

    fn pools(&self, plan: &mut Plan) {
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
            });
        }
    }
}

/// Adds a name route unless the same name (as sniroute compares names) is
/// there already: an exact `example.com` next to `.example.com` wins in nginx.
fn add(
    seen: &mut HashSet<String>,
    names: &mut Vec<RoutePlan>,
    pattern: String,
    pool: &str,
    comment: String,
) {
    let canonical = pattern.trim_end_matches('.').to_ascii_lowercase();
    if seen.insert(canonical) {
        names.push(RoutePlan {
            pattern,
            pool: pool.to_owned(),
            comment,
        });
    }
}

/// Applies a stream- or server-level setting; `Err(why)` if sniroute has none.
fn setting(s: &mut Settings, d: &Directive) -> Result<(), String> {
    let from = Some(format!("{} ({})", d.args.join(" "), d.at));
    let one = || match d.args.as_slice() {
        [v] => Ok(v.as_str()),
        _ => Err("expected one value".to_owned()),
    };
    let time = || {
        let v = one()?;
        parse_time(v).ok_or_else(|| format!("`{v}` is not an nginx time"))
    };
    match &*d.name {
        "ssl_preread" => {
            let value = match one()? {
                "on" => true,
                "off" => false,
                other => return Err(format!("`{other}` is neither on nor off")),
            };
            s.ssl_preread = Some(Sourced { value, from: Some(d.at.to_string()) });
        }
        "proxy_connect_timeout" => s.connect = Some(Sourced { value: time()?, from }),
        "proxy_timeout" => s.idle = Some(Sourced { value: time()?, from }),
        "preread_timeout" => s.peek = Some(Sourced { value: time()?, from }),
        "preread_buffer_size" => {
            let v = one()?;
            let value = parse_size(v).ok_or_else(|| format!("`{v}` is not an nginx size"))?;
            s.peek_bytes = Some(Sourced { value, from });
        }
        "proxy_protocol" => {
            return Err("sniroute sends no PROXY protocol header in this version (only proxy_protocol = \"off\"); servers behind it see sniroute's address as the client's".into())
        }
        "allow" | "deny" => {
            return Err("sniroute has no client address filter: firewall the port instead".into())
        }
        "proxy_next_upstream" | "proxy_next_upstream_tries" | "proxy_next_upstream_timeout" => {
            return Err("sniroute always moves on to the next server of the pool when a connect fails, each server once per client".into())
        }
        _ => return Err(String::new()),
    }
    Ok(())
}

/// `listen` address → sniroute bind.
fn listen_addr(addr: &str) -> Result<String, String> {
    if addr.starts_with("unix:") {
        return Err("sniroute listens on TCP addresses only".into());
    }
    if let Ok(port) = addr.parse::<u16>() {
        return Ok(format!("0.0.0.0:{port}"));
    }
    if let Some(port) = addr.strip_prefix("*:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(format!("0.0.0.0:{port}"));
        }
    }
    match addr.parse::<SocketAddr>() {
        Ok(a) => Ok(a.to_string()),
        Err(_) => Err(
            "sniroute binds an IP address and a port (\"0.0.0.0:443\", \"[::]:443\"); write the address this name resolves to"
                .into(),
        ),
    }
}

/// Whether `addr` is a server address sniroute accepts: `ip:port` or `name:port`.
fn server_addr(addr: &str) -> Result<(), String> {
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

fn regex_error(err: &regex::Error) -> String {
    let first = err.to_string();
    let last = first.lines().last().unwrap_or("invalid").trim().to_owned();
    format!("not a regex sniroute's engine accepts ({last})")
}

/// Whether the regex has an upper-case letter to match literally: not an escape
/// (`\S`, `\D`, `\P{…}`), not inside `{…}`, and not in a `[…]` class, where
/// `[A-Za-z]` still matches lowercase names.
fn has_upper_literal(re: &str) -> bool {
    let mut chars = re.chars();
    let (mut in_braces, mut in_class) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '{' => in_braces = true,
            '}' => in_braces = false,
            '[' => in_class = true,
            ']' => in_class = false,
            c if c.is_ascii_uppercase() && !in_braces && !in_class => return true,
            _ => {}
        }
    }
    false
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
            "hash" | "random" | "least_time" => {
                pool.balance = "least_conn";
                pool.balance_comment = "see the note above".into();
                pool.notes.push(untranslated(
                    d,
                    "sniroute balances with least_conn or round_robin only; least_conn chosen",
                ));
            }
            "zone" => pool.notes.push(format!(
                "not needed: {} ({}): sniroute is one process, its state is shared already",
                d.text(),
                d.at
            )),
            _ => pool.notes.push(untranslated(d, "")),
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
            pool.notes.push(format!(
                "servers differ in max_fails / fail_timeout, sniroute has one value per pool:\n\
                 this pool takes the first server's; the others had {}",
                differ.join(", ")
            ));
        }
    }
    if pool.servers.is_empty() {
        pool.notes.push(format!(
            "upstream {name} ({}) has no server sniroute can use; --check will say so",
            u.at
        ));
    }
    pool
}

fn upstream_server(
    d: &Directive,
    notes: &mut Vec<String>,
) -> Option<(ServerPlan, (u32, Duration, String))> {
    let Some((addr, params)) = d.args.split_first() else {
        notes.push(untranslated(d, "no address"));
        return None;
    };
    if let Err(why) = server_addr(addr) {
        let why = if addr.starts_with("unix:") {
            "sniroute forwards to TCP servers only".to_owned()
        } else {
            why
        };
        notes.push(untranslated(d, &why));
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
                notes.push(untranslated(d, "marked down in nginx, so left out"));
                return None;
            }
            _ => None,
        };
        if ok.is_none() {
            notes.push(format!(
                "not translated: server parameter `{p}` of {addr} ({})",
                d.at
            ));
        }
    }
    Some((server, (max_fails, fail_timeout, d.at.to_string())))
}
