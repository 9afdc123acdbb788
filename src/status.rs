//! The status page, `GET /status` on the metrics bind: what the running config
//! routes where, and the live state of every server of every pool, as one
//! self-refreshing HTML page without external assets (readable with curl, and
//! in a browser without JavaScript).
//!
//! Two halves, kept apart on purpose: [`collect`] reads the live structures
//! (config, pools, servers) into a plain [`StatusView`]; [`render`] turns a
//! view into HTML and knows nothing else. Only `collect` changes when the
//! live state changes shape. [`Page`] ties them to what the endpoint holds.

use std::fmt::{self, Display, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::connections::Connections;
use crate::pool::{Server, State as Condition};

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECS: u32 = 2;

/// Everything the page shows, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusView {
    pub version: String,
    pub uptime: Duration,
    /// Graceful shutdown has begun: no new connections, open ones finishing.
    pub draining: bool,
    /// Client connections open right now, all listeners together.
    pub open_connections: usize,
    pub listeners: Vec<ListenerView>,
    pub pools: Vec<PoolView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerView {
    pub binds: Vec<SocketAddr>,
    /// `tls`, `http` or `tcp`.
    pub protocol: String,
    /// Route keys as written in the config, with the pool each leads to.
    pub routes: Vec<RouteView>,
    /// The pool of the listener's `default`, if it has one.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteView {
    pub pattern: String,
    pub pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    pub name: String,
    /// `least_conn` or `round_robin`.
    pub balance: String,
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub addr: SocketAddr,
    /// How the operator wrote the server (`node1.lan:443 (10.0.0.5:443)`).
    pub label: String,
    pub backup: bool,
    pub state: State,
    pub active: u64,
    /// Failed connects since start.
    pub failures: u64,
    /// The last error seen with this server, and how long ago.
    pub last_error: Option<(String, Duration)>,
    /// Days until the server's certificate expires (negative: expired).
    pub cert_days_left: Option<i64>,
}

/// Whether a server gets new connections, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    /// `until`: how long until it is tried again, when known.
    Down {
        reason: DownReason,
        until: Option<Duration>,
    },
    /// Taken out of rotation by the operator; open connections finish.
    Draining,
    /// Gone from DNS; open connections finish.
    Leaving,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// Passive health: `max_fails` failed connects within `fail_timeout`.
    MaxFails,
    /// An active health check failed.
    Probe,
}

impl State {
    /// The word the page shows, also its CSS class.
    pub fn word(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down { .. } => "down",
            State::Draining => "draining",
            State::Leaving => "leaving",
        }
    }
}

impl DownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DownReason::MaxFails => "max_fails",
            DownReason::Probe => "probe",
        }
    }
}

/// What the view needs from the process besides the config.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pub started: Instant,
    pub open_connections: usize,
    pub draining: bool,
}

/// Reads the running config and its live server state into a view.
pub fn collect(config: &Config, process: &Process, now: Instant) -> StatusView {
    let wall = SystemTime::now();
    let listeners = config
        .listeners
        .iter()
        .map(|l| ListenerView {
            binds: l.binds.clone(),
            protocol: l.protocol.as_str().to_owned(),
            routes: l
                .router
                .routes()
                .iter()
                .map(|r| RouteView {
                    pattern: r.pattern.to_string(),
                    pool: r.target.pool.name.to_string(),
                })
                .collect(),
            default: l
                .router
                .default_route()
                .map(|r| r.target.pool.name.to_string()),
        })
        .collect();
    let pools = config
        .pools
        .values()
        .map(|pool| {
            let members = pool.members();
            let staying = members.servers.iter().map(|s| (s, false));
            let leaving = members.leaving().map(|s| (s, true));
            PoolView {
                name: pool.name.to_string(),
                balance: pool.balance().as_str().to_owned(),
                servers: staying
                    .chain(leaving)
                    .map(|(s, leaving)| server(s, leaving, now, wall))
                    .collect(),
            }
        })
        .collect();
    StatusView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime: now.saturating_duration_since(process.started),
        draining: process.draining,
        open_connections: process.open_connections,
        listeners,
        pools,
    }
}

fn server(s: &Server, leaving: bool, now: Instant, wall: SystemTime) -> ServerView {
    let live = s.live();
    let state = match (leaving, s.condition(now)) {
        (true, _) => State::Leaving,
        (false, Condition::Up) => State::Up,
        (false, Condition::Draining) => State::Draining,
        (false, Condition::ProbeDown) => State::Down {
            reason: DownReason::Probe,
            until: None,
        },
        (false, Condition::Failed { until }) => State::Down {
            reason: DownReason::MaxFails,
            until: Some(until.saturating_duration_since(now)),
        },
    };
    let unix_now = wall
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    ServerView {
        addr: s.addr,
        label: s.label.to_string(),
        backup: s.backup,
        state,
        active: s.active(),
        failures: live.counters().connect_failures,
        last_error: live.last_error().map(|e| {
            (
                format!("{}: {}", e.during, e.error),
                wall.duration_since(e.at).unwrap_or_default(),
            )
        }),
        // Whole days left, rounded down; negative once expired.
        cert_days_left: live
            .cert_not_after()
            .map(|t| (t - unix_now).div_euclid(86_400)),
    }
}

/// What the endpoint holds to build the page on each request.
#[derive(Debug)]
pub struct Page {
    config: Arc<ArcSwap<Config>>,
    connections: Arc<Connections>,
    started: Instant,
}

impl Page {
    pub fn new(config: Arc<ArcSwap<Config>>, connections: Arc<Connections>) -> Page {
        Page {
            config,
            connections,
            started: Instant::now(),
        }
    }

    /// The page as of now.
    pub fn html(&self, draining: bool) -> String {
        let process = Process {
            started: self.started,
            open_connections: self.connections.open(),
            draining,
        };
        render(&collect(&self.config.load(), &process, Instant::now()))
    }
}

/// Text made safe for HTML element content and quoted attribute values.
struct Esc<'a>(&'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A duration as an operator reads it at a glance: `12s`, `4m 05s`, `3h 07m`, `2d 5h`.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// Certificates with fewer days left than this are shown as a warning.
const CERT_WARN_DAYS: i64 = 14;

const STYLE: &str = "\
body{font:14px/1.35 system-ui,sans-serif;margin:0;padding:0 1rem 1rem;color:#1f2328;background:#fff}\
header{position:sticky;top:0;background:#f6f8fa;border-bottom:1px solid #d0d7de;padding:.5rem 1rem;margin:0 -1rem 1rem}\
h1{font-size:1.2rem;margin:0 0 .2rem}h2{font-size:1.05rem;margin:1.2rem 0 .3rem}\
h2 small{font-weight:normal;color:#57606a}\
table{border-collapse:collapse;width:100%;max-width:72rem}\
th,td{border:1px solid #d0d7de;padding:.2rem .5rem;text-align:left;vertical-align:top}\
th{background:#f6f8fa;font-weight:600}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.addr,.mono{font-family:ui-monospace,monospace}\
.label{color:#57606a;margin-left:.3rem}\
.tag{font-size:.8em;border:1px solid #8c959f;border-radius:3px;padding:0 .3rem;margin-left:.3rem;color:#57606a}\
.st{display:inline-block;min-width:4.5em;font-weight:700;border-radius:3px;padding:0 .3rem;text-align:center}\
.st.up{background:#dafbe1;color:#116329}\
.st.down{background:#cf222e;color:#fff}\
.st.draining{background:#fff8c5;color:#7d4e00}\
.st.leaving{background:#eaeef2;color:#424a53}\
tr.down td{background:#ffebe9}\
.why,.ago,.muted{color:#57606a}\
.bad{color:#cf222e;font-weight:700}.warn{color:#9a6700;font-weight:700}\
.banner{background:#fff8c5;border:1px solid #d4a72c;padding:.3rem .6rem;font-weight:700;margin:.3rem 0 0}";

/// The whole page for `view`. Every string that came from the config or from
/// a server is escaped.
pub fn render(view: &StatusView) -> String {
    let mut out = String::with_capacity(4096 + 512 * view.pools.len());
    // Writing into a String cannot fail.
    let _ = write_page(&mut out, view);
    out
}

fn write_page(out: &mut String, view: &StatusView) -> fmt::Result {
    let servers = view.pools.iter().flat_map(|p| &p.servers);
    let count = |word: &str| servers.clone().filter(|s| s.state.word() == word).count();
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>sniroute status</title><style>{STYLE}</style></head>\n<body>\n<header>\
         <h1>sniroute {}</h1><div>up {} · {} listener(s) · {} pool(s) · servers: \
         <b>{} up</b>",
        Esc(&view.version),
        short(view.uptime),
        view.listeners.len(),
        view.pools.len(),
        count("up"),
    )?;
    for word in ["down", "draining", "leaving"] {
        let n = count(word);
        if n > 0 {
            let class = if word == "down" { "bad" } else { "warn" };
            write!(out, ", <b class=\"{class}\">{n} {word}</b>")?;
        }
    }
    write!(
        out,
        " · {} open connection(s) · refreshes every {REFRESH_SECS} s</div>",
        view.open_connections
    )?;
    if view.draining {
        out.push_str(
            "<p class=\"banner\">draining: shutting down, no new connections; open ones are finishing</p>",
        );
    }
    out.push_str("</header>\n");
    for (i, pool) in view.pools.iter().enumerate() {
        write_pool(out, i, pool)?;
    }
    write_listeners(out, view)?;
    out.push_str("</body></html>\n");
    Ok(())
}

fn write_pool(out: &mut String, index: usize, pool: &PoolView) -> fmt::Result {
    let up = pool.servers.iter().filter(|s| s.state == State::Up).count();
    let health = if up == 0 {
        "bad"
    } else if up < pool.servers.len() {
        "warn"
    } else {
        "muted"
    };
    write!(
        out,
        "<section id=\"pool-{index}\"><h2>pool <span class=\"mono\">{}</span> \
         <small>{} · <span class=\"{health}\">{up}/{} up</span></small></h2>\n\
         <table><thead><tr><th>server</th><th>state</th><th>active</th><th>connect failures</th>\
         <th>last error</th><th>certificate</th></tr></thead><tbody>\n",
        Esc(&pool.name),
        Esc(&pool.balance),
        pool.servers.len(),
    )?;
    for s in &pool.servers {
        write_server(out, s)?;
    }
    out.push_str("</tbody></table></section>\n");
    Ok(())
}

fn write_server(out: &mut String, s: &ServerView) -> fmt::Result {
    let word = s.state.word();
    let addr = s.addr.to_string();
    write!(
        out,
        "<tr class=\"{word}\" data-server=\"{addr}\" data-state=\"{word}\"><td><span class=\"addr\">{addr}</span>"
    )?;
    if s.label != addr {
        write!(out, " <span class=\"label\">{}</span>", Esc(&s.label))?;
    }
    if s.backup {
        out.push_str(" <span class=\"tag\">backup</span>");
    }
    write!(out, "</td><td><span class=\"st {word}\">{word}</span>")?;
    let why = match s.state {
        State::Up => None,
        State::Down { reason, until } => Some(match (reason, until) {
            (DownReason::MaxFails, Some(until)) => {
                format!("max_fails (passive), retried in {}", short(until))
            }
            (DownReason::MaxFails, None) => "max_fails (passive)".to_owned(),
            (DownReason::Probe, _) => "probe (active health check)".to_owned(),
        }),
        State::Draining => Some("no new connections; open ones finish".to_owned()),
        State::Leaving => Some("gone from DNS; open connections finish".to_owned()),
    };
    if let Some(why) = why {
        write!(out, " <span class=\"why\">{why}</span>")?;
    }
    write!(
        out,
        "</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>",
        s.active, s.failures
    )?;
    match &s.last_error {
        Some((text, ago)) => write!(
            out,
            "{} <span class=\"ago\">{} ago</span>",
            Esc(text),
            short(*ago)
        )?,
        None => out.push_str("<span class=\"muted\">–</span>"),
    }
    out.push_str("</td><td>");
    match s.cert_days_left {
        Some(days) if days < 0 => {
            write!(out, "<span class=\"bad\">expired {} d ago</span>", -days)?
        }
        Some(days) if days < CERT_WARN_DAYS => {
            write!(out, "<span class=\"warn\">{days} d left</span>")?
        }
        Some(days) => write!(out, "{days} d left")?,
        None => out.push_str("<span class=\"muted\">–</span>"),
    }
    out.push_str("</td></tr>\n");
    Ok(())
}

fn write_listeners(out: &mut String, view: &StatusView) -> fmt::Result {
    out.push_str(
        "<section id=\"listeners\"><h2>listeners and routes</h2>\n<table><thead><tr><th>bind</th>\
         <th>protocol</th><th>route</th><th>pool</th></tr></thead><tbody>\n",
    );
    let pool_index = |name: &str| view.pools.iter().position(|p| p.name == name);
    for l in &view.listeners {
        let default = l.default.as_deref().map(|pool| ("default", pool, true));
        let rows: Vec<(&str, &str, bool)> = l
            .routes
            .iter()
            .map(|r| (r.pattern.as_str(), r.pool.as_str(), false))
            .chain(default)
            .collect();
        let span = rows.len().max(1);
        let binds: Vec<String> = l.binds.iter().map(ToString::to_string).collect();
        write!(
            out,
            "<tr><td rowspan=\"{span}\" class=\"mono\">{}</td><td rowspan=\"{span}\">{}</td>",
            binds.join("<br>"),
            Esc(&l.protocol)
        )?;
        if rows.is_empty() {
            out.push_str("<td class=\"muted\">–</td><td></td></tr>\n");
        }
        for (i, (pattern, pool, is_default)) in rows.into_iter().enumerate() {
            if i > 0 {
                out.push_str("<tr>");
            }
            if is_default {
                out.push_str("<td><i>default</i></td>");
            } else {
                write!(out, "<td class=\"mono\">{}</td>", Esc(pattern))?;
            }
            match pool_index(pool) {
                Some(p) => writeln!(
                    out,
                    "<td><a class=\"mono\" href=\"#pool-{p}\">{}</a></td></tr>",
                    Esc(pool)
                )?,
                None => writeln!(out, "<td class=\"mono\">{}</td></tr>", Esc(pool))?,
            }
        }
    }
    out.push_str("</tbody></table></section>\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(addr: &str, state: State) -> ServerView {
        ServerView {
            addr: addr.parse().unwrap(),
            label: addr.to_owned(),
            backup: false,
            state,
            active: 0,
            failures: 0,
            last_error: None,
            cert_days_left: None,
        }
    }

    fn view() -> StatusView {
        StatusView {
            version: "9.9.9".to_owned(),
            uptime: Duration::from_secs(3725),
            draining: false,
            open_connections: 7,
            listeners: vec![ListenerView {
                binds: vec!["0.0.0.0:443".parse().unwrap(), "[::]:443".parse().unwrap()],
                protocol: "tls".to_owned(),
                routes: vec![
                    RouteView {
                        pattern: "*.apps.example.com".to_owned(),
                        pool: "apps".to_owned(),
                    },
                    RouteView {
                        pattern: "~^(?<n>a|b)&x\"'$".to_owned(),
                        pool: "<evil>".to_owned(),
                    },
                ],
                default: Some("apps".to_owned()),
            }],
            pools: vec![
                PoolView {
                    name: "apps".to_owned(),
                    balance: "least_conn".to_owned(),
                    servers: vec![
                        ServerView {
                            active: 12,
                            failures: 3,
                            cert_days_left: Some(40),
                            ..server("10.0.0.1:443", State::Up)
                        },
                        ServerView {
                            label: "node2.lan:443 (10.0.0.2:443)".to_owned(),
                            last_error: Some((
                                "connect: Connection refused".to_owned(),
                                Duration::from_secs(12),
                            )),
                            ..server(
                                "10.0.0.2:443",
                                State::Down {
                                    reason: DownReason::MaxFails,
                                    until: Some(Duration::from_secs(8)),
                                },
                            )
                        },
                        ServerView {
                            backup: true,
                            cert_days_left: Some(-2),
                            ..server(
                                "10.0.0.3:443",
                                State::Down {
                                    reason: DownReason::Probe,
                                    until: None,
                                },
                            )
                        },
                        server("10.0.0.4:443", State::Draining),
                        server("[2001:db8::5]:443", State::Leaving),
                    ],
                },
                PoolView {
                    name: "<evil>".to_owned(),
                    balance: "round_robin".to_owned(),
                    servers: vec![ServerView {
                        label: "<script>alert(1)</script>:443 (10.0.1.1:443)".to_owned(),
                        last_error: Some(("<b>\"boom\" & 'bang'</b>".to_owned(), Duration::ZERO)),
                        ..server("10.0.1.1:443", State::Up)
                    }],
                },
            ],
        }
    }

    /// The `<tr>` of the server at `addr`.
    fn row<'a>(html: &'a str, addr: &str) -> &'a str {
        let start = html
            .find(&format!("data-server=\"{addr}\""))
            .unwrap_or_else(|| panic!("no row for {addr}"));
        let start = html[..start].rfind("<tr").unwrap();
        let end = start + html[start..].find("</tr>").unwrap();
        &html[start..end]
    }

    #[test]
    fn every_pool_and_server_is_listed_with_its_state_word() {
        let html = render(&view());
        assert!(html.contains("<span class=\"mono\">apps</span>"));
        assert!(html.contains("<span class=\"mono\">&lt;evil&gt;</span>"));
        let expect = [
            ("10.0.0.1:443", "up", None),
            (
                "10.0.0.2:443",
                "down",
                Some("max_fails (passive), retried in 8s"),
            ),
            ("10.0.0.3:443", "down", Some("probe (active health check)")),
            ("10.0.0.4:443", "draining", None),
            ("[2001:db8::5]:443", "leaving", Some("gone from DNS")),
            ("10.0.1.1:443", "up", None),
        ];
        for (addr, word, why) in expect {
            let r = row(&html, addr);
            assert!(r.contains(&format!(">{addr}</span>")), "{r}");
            assert!(
                r.contains(&format!("<span class=\"st {word}\">{word}</span>")),
                "{r}"
            );
            if let Some(why) = why {
                assert!(r.contains(why), "{r}");
            }
        }
        let apps = row(&html, "10.0.0.1:443");
        assert!(apps.contains("<td class=\"n\">12</td><td class=\"n\">3</td>"));
        assert!(apps.contains("40 d left"));
        let backup = row(&html, "10.0.0.3:443");
        assert!(backup.contains("</span> <span class=\"tag\">backup</span>"));
        assert!(backup.contains("expired 2 d ago"));
        let down = row(&html, "10.0.0.2:443");
        assert!(down.contains("node2.lan:443 (10.0.0.2:443)"));
        assert!(down.contains("connect: Connection refused <span class=\"ago\">12s ago</span>"));
    }

    #[test]
    fn header_has_version_uptime_and_totals() {
        let html = render(&view());
        assert!(html.contains("<h1>sniroute 9.9.9</h1>"));
        assert!(html.contains("up 1h 02m · 1 listener(s) · 2 pool(s) · servers: <b>2 up</b>"));
        assert!(html.contains("<b class=\"bad\">2 down</b>"));
        assert!(html.contains("<b class=\"warn\">1 draining</b>"));
        assert!(html.contains("<b class=\"warn\">1 leaving</b>"));
        assert!(html.contains("7 open connection(s)"));
        assert!(html.contains(&format!(
            "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">"
        )));
        assert!(!html.contains("draining: shutting down"));
        let draining = render(&StatusView {
            draining: true,
            ..view()
        });
        assert!(draining.contains("draining: shutting down"));
    }

    #[test]
    fn config_and_server_strings_are_escaped() {
        let html = render(&view());
        assert!(!html.contains("<evil>"));
        assert!(!html.contains("<script>"));
        assert!(!html.contains("(?<n>"));
        assert!(html.contains("~^(?&lt;n&gt;a|b)&amp;x&quot;&#39;$"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;:443 (10.0.1.1:443)"));
        assert!(html.contains("&lt;b&gt;&quot;boom&quot; &amp; &#39;bang&#39;&lt;/b&gt;"));
        // Route to the escaped pool name, linked to its table.
        assert!(html.contains("<a class=\"mono\" href=\"#pool-1\">&lt;evil&gt;</a>"));
        // The only tags are the page's own: no `<` survives outside them.
        assert_eq!(html.matches("<script").count(), 0);
    }

    #[test]
    fn routes_are_listed_under_their_listener_with_the_default_last() {
        let html = render(&view());
        let listeners = &html[html.find("id=\"listeners\"").unwrap()..];
        assert!(listeners.contains(
            "<tr><td rowspan=\"3\" class=\"mono\">0.0.0.0:443<br>[::]:443</td><td rowspan=\"3\">tls</td>"
        ));
        let wildcard = listeners.find("*.apps.example.com").unwrap();
        let regex = listeners.find("~^(?&lt;n").unwrap();
        let default = listeners.find("<i>default</i>").unwrap();
        assert!(wildcard < regex && regex < default);
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(short(Duration::from_millis(999)), "0s");
        assert_eq!(short(Duration::from_secs(59)), "59s");
        assert_eq!(short(Duration::from_secs(65)), "1m 05s");
        assert_eq!(short(Duration::from_secs(3600 * 5 + 420)), "5h 07m");
        assert_eq!(short(Duration::from_secs(86400 * 2 + 3600 * 5)), "2d 5h");
    }

    #[test]
    fn collect_maps_the_config_and_the_live_state() {
        let text = "[[listeners]]\nbind = \"127.0.0.1:8443\"\nprotocol = \"tls\"\ndefault = \"a\"\n\
                    [listeners.routes]\n\"b.example.com\" = \"b\"\n\
                    [upstreams.a]\nservers = [\"127.0.0.2:443\", \"127.0.0.3:443\"]\n\
                    max_fails = 1\nfail_timeout = \"30s\"\n\
                    [upstreams.b]\nbalance = \"round_robin\"\nservers = [\"127.0.0.4:443\", { addr = \"127.0.0.5:443\", backup = true }, { addr = \"127.0.0.6:443\", drain = true }]\n";
        let config = crate::config::parse_offline(text, std::path::Path::new("t.toml")).unwrap();
        let now = Instant::now();
        let a = &config.pools["a"];
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        a.record_failure(
            &a.members().servers[1],
            &refused,
            now - Duration::from_secs(10),
        );
        let process = Process {
            started: now - Duration::from_secs(90),
            open_connections: 2,
            draining: false,
        };
        let view = collect(&config, &process, now);
        assert_eq!(view.uptime, Duration::from_secs(90));
        assert_eq!(view.open_connections, 2);
        assert_eq!(
            view.listeners,
            [ListenerView {
                binds: vec!["127.0.0.1:8443".parse().unwrap()],
                protocol: "tls".to_owned(),
                routes: vec![RouteView {
                    pattern: "b.example.com".to_owned(),
                    pool: "b".to_owned()
                }],
                default: Some("a".to_owned()),
            }]
        );
        let names: Vec<_> = view.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(view.pools[1].balance, "round_robin");
        assert!(view.pools[1].servers[1].backup);
        let down = &view.pools[0].servers[1];
        assert_eq!(down.addr, "127.0.0.3:443".parse().unwrap());
        assert_eq!(down.failures, 1);
        let (error, _ago) = down.last_error.clone().unwrap();
        assert_eq!(error, format!("connect: {refused}"));
        assert_eq!(view.pools[1].servers[2].state, State::Draining);
        assert_eq!(
            down.state,
            State::Down {
                reason: DownReason::MaxFails,
                until: Some(Duration::from_secs(20)),
            }
        );
        assert_eq!(view.pools[0].servers[0].state, State::Up);
    }
}
