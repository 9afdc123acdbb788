//! `server {}` in `stream {}` → listeners.
//!
//! A server's `listen` addresses become one listener's binds. With
//! `ssl_preread on` it is a "tls" listener routed by SNI. Without it nginx read
//! nothing and forwarded every connection to one target, so it becomes a "tcp"
//! listener, whatever the port: a listener that waited for a ClientHello or an
//! HTTP request would hang every protocol where the server speaks first (SSH,
//! SMTP, ...) and close every client that does not speak what it expects.
//!
//! `listen ... proxy_protocol` becomes `accept_proxy_protocol`, trusting the
//! `set_real_ip_from` blocks. nginx decides that per `listen` and sniroute per
//! listener, so a server that reads the header on some addresses only becomes
//! two listeners with the same routes.

use std::net::SocketAddr;

use super::super::emit::{list, ListenerPlan, Setting};
use super::super::note::{span, Note};
use super::super::tree::{Directive, Location};
use super::access;
use super::settings::Settings;
use super::Translator;

/// `listen` parameters that only tune the socket, and why sniroute does
/// without them.
const SOCKET_TUNING: &[(&str, &str)] = &[
    ("reuseport", "sniroute accepts on one socket per address"),
    ("backlog", "socket tuning"),
    ("rcvbuf", "socket tuning"),
    ("sndbuf", "socket tuning"),
    (
        "so_keepalive",
        "socket tuning; timeouts.idle closes dead connections",
    ),
    ("fastopen", "socket tuning"),
    ("deferred", "socket tuning"),
    ("accept_filter", "socket tuning"),
    ("setfib", "socket tuning"),
    ("bind", "sniroute binds every address on its own anyway"),
    (
        "ipv6only",
        "sniroute binds IPv6 addresses IPv6-only, as nginx does by default",
    ),
    ("default_server", "sniroute has one listener per address"),
];

/// The addresses of one server, by whether nginx read a PROXY header there.
#[derive(Default)]
struct Binds {
    plain: Vec<String>,
    proxied: Vec<String>,
    /// Where the `listen ... proxy_protocol` directives are.
    proxied_at: Vec<String>,
}

impl<'a> Translator<'a> {
    /// One `server {}`: one listener, or two when only some of its `listen`s
    /// read a PROXY header.
    pub(super) fn server(&mut self, server: &'a Directive) -> Vec<ListenerPlan> {
        let mut l = ListenerPlan {
            origin: format!("server {{}} at {}", server.at),
            ..ListenerPlan::default()
        };
        let mut own = Settings::default();
        let mut listens = Vec::new();
        let mut proxy_pass = None;
        for d in server.block.iter().flatten() {
            match &*d.name {
                "listen" => listens.push(d),
                "proxy_pass" => proxy_pass = Some(d),
                _ => {
                    if let Err(note) = own.apply(d) {
                        l.notes.push(note);
                    }
                }
            }
        }
        let own_real_ip_from = own.lists.real_ip_from.clone();
        let settings = own.over(&self.stream);
        let mut binds = Binds::default();
        for d in listens {
            listen(d, server, &self.wildcards, &mut binds, &mut l.notes);
        }
        if binds.proxied.is_empty() {
            for d in own_real_ip_from {
                l.notes.push(Note::not_needed(
                    d,
                    "no listen of this server has proxy_protocol, and nginx takes the client's address only from a PROXY header",
                ));
            }
        }
        let preread = settings.ssl_preread.as_ref().is_some_and(|s| s.value);
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
        } else {
            l.protocol = "tcp";
            l.protocol_comment =
                "no ssl_preread: nginx read nothing before forwarding, nor does sniroute".into();
        }
        match proxy_pass {
            None => {
                l.notes.push(Note::info(format!(
                    "server {{}} ({}) has no proxy_pass, nothing to forward to, so it is commented out",
                    server.at
                )));
                l.disabled = true;
            }
            Some(d) => self.proxy_pass(d, preread, &mut l),
        }
        if l.default.is_none() && l.routes.is_empty() {
            l.disabled = true;
        }
        access::translate(&settings.lists.access, &mut l);
        l.sends_proxy_protocol = settings
            .proxy_protocol
            .as_ref()
            .filter(|p| p.value)
            .map(|p| format!("proxy_protocol {}", p.from.as_deref().unwrap_or("on")));

        let mut out = Vec::new();
        if !binds.plain.is_empty() || binds.proxied.is_empty() {
            let mut plain = l.clone();
            plain.binds = std::mem::take(&mut binds.plain);
            out.push(plain);
        }
        if !binds.proxied.is_empty() {
            let mut proxied = l;
            if !out.is_empty() {
                proxied.notes = vec![Note::info(
                    "the same server {} for its listen addresses with proxy_protocol:\n\
                     nginx reads a PROXY header on those only",
                )];
            }
            proxied.binds = binds.proxied;
            let at = binds.proxied_at.join(", ");
            self.accept_proxy_protocol(&at, &settings.lists.real_ip_from, &mut proxied);
            out.push(proxied);
        }
        for l in &mut out {
            if l.binds.is_empty() {
                l.notes.push(Note::info(
                    "no listen address of this server is one sniroute can bind, so it is commented out",
                ));
                l.disabled = true;
            }
            if !l.disabled {
                self.effective.push(settings.clone());
            }
        }
        out
    }

    /// `accept_proxy_protocol` from the server's `set_real_ip_from`; without
    /// one the listener is commented out, since trusting every source would
    /// let any client claim any address.
    fn accept_proxy_protocol(
        &mut self,
        listen_at: &str,
        real_ip_from: &[&Directive],
        l: &mut ListenerPlan,
    ) {
        self.accepts_proxy_protocol = true;
        let mut from = Vec::new();
        for &d in real_ip_from {
            match d.args.as_slice() {
                [unix] if unix == "unix:" => l.notes.push(Note::not_needed(
                    d,
                    "sniroute listens on TCP only, so no client comes from a unix socket",
                )),
                [net] if crate::access::parse_net(net).is_some() => from.push(net.clone()),
                _ => l.notes.push(Note::lossy(
                    d,
                    "sniroute trusts addresses and CIDR blocks only: write the addresses this name had",
                )),
            }
        }
        l.settings.push(Setting {
            key: "accept_proxy_protocol",
            value: "true".into(),
            comment: format!("listen ... proxy_protocol ({listen_at})"),
        });
        if from.is_empty() {
            l.notes.push(Note::lossy_text(format!(
                "not translated: listen ... proxy_protocol ({listen_at}) without set_real_ip_from: nginx\n\
                 read a PROXY header from every client and trusted none (the address it saw stayed\n\
                 the balancer's); sniroute reads the header only from proxy_protocol_from and trusts\n\
                 it, and this import never trusts every source. The listener is commented out: list\n\
                 the balancers in front in proxy_protocol_from, then uncomment it."
            )));
            l.disabled = true;
            l.settings.push(Setting {
                key: "proxy_protocol_from",
                value: "[]".into(),
                comment: "the balancers in front; nginx had no set_real_ip_from".into(),
            });
            return;
        }
        l.notes.push(Note::info(
            "nginx also served clients outside set_real_ip_from on these addresses (seeing\n\
             their own address); sniroute closes them (reason=proxy_source)",
        ));
        l.settings.push(Setting {
            key: "proxy_protocol_from",
            value: list(&from),
            comment: format!("set_real_ip_from ({})", span(real_ip_from)),
        });
    }
}

/// A wildcard address a `listen` binds: the port it takes, whether a PROXY
/// header comes on it, and the server it belongs to.
pub(super) struct Wildcard {
    addr: SocketAddr,
    proxied: bool,
    server: Location,
}

/// Every wildcard address the servers listen on, for [`listen`] to tell
/// which specific addresses nginx served out of a wildcard's socket.
pub(super) fn wildcards(servers: &[&Directive]) -> Vec<Wildcard> {
    let mut out = Vec::new();
    for server in servers {
        for d in server.block.iter().flatten().filter(|d| d.name == "listen") {
            let Some((addr, params)) = d.args.split_first() else {
                continue;
            };
            if params.iter().any(|p| p == "udp" || p == "ssl") {
                continue;
            }
            if let Some(addr) = listen_addr(addr)
                .ok()
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                if addr.ip().is_unspecified() {
                    out.push(Wildcard {
                        addr,
                        proxied: params.iter().any(|p| p == "proxy_protocol"),
                        server: server.at.clone(),
                    });
                }
            }
        }
    }
    out
}

/// One `listen`: its addresses into `binds`, its parameters into notes.
fn listen(
    d: &Directive,
    server: &Directive,
    wildcards: &[Wildcard],
    binds: &mut Binds,
    notes: &mut Vec<Note>,
) {
    let Some((addr, params)) = d.args.split_first() else {
        notes.push(Note::lossy(d, "no address"));
        return;
    };
    if params.iter().any(|p| p == "udp") {
        notes.push(Note::lossy(
            d,
            "sniroute forwards UDP only as QUIC, in a \"quic\" listener routed by the SNI of the\n\
             client's Initial packets (HTTP/3; write one by hand if this was HTTP/3); this UDP\n\
             listener is left out",
        ));
        return;
    }
    if params.iter().any(|p| p == "ssl") {
        notes.push(Note::lossy(
            d,
            "nginx terminated TLS here and sent its servers the plain bytes; sniroute never\n\
             terminates TLS, so this address is left out",
        ));
        return;
    }
    let mut proxied = false;
    let mut tuning = Vec::new();
    for p in params {
        let key = p.split_once('=').map_or(p.as_str(), |(k, _)| k);
        if p == "proxy_protocol" {
            proxied = true;
        } else if let Some((_, why)) = SOCKET_TUNING.iter().find(|(k, _)| *k == key) {
            // ipv6only=off is carried over below; =on is what sniroute does.
            if key != "ipv6only" {
                tuning.push(format!("`{p}`: {why}"));
            }
        } else {
            notes.push(Note::lossy(
                d,
                &format!("sniroute has no listen parameter `{p}`"),
            ));
        }
    }
    if !tuning.is_empty() {
        notes.push(Note::not_needed(d, &tuning.join("; ")));
    }
    let bind = match listen_addr(addr) {
        Ok(bind) => bind,
        Err(why) => {
            notes.push(Note::lossy(d, &why));
            return;
        }
    };
    let mut addrs = vec![bind.clone()];
    // nginx's [::]:PORT ipv6only=off takes IPv4 clients too; sniroute binds
    // IPv6 addresses IPv6-only, so the IPv4 half is a bind of its own.
    if params.iter().any(|p| p == "ipv6only=off") {
        if let Some(port) = bind.strip_prefix("[::]:") {
            addrs.push(format!("0.0.0.0:{port}"));
            notes.push(Note::info(format!(
                "listen {addr} ipv6only=off ({}): also bound to 0.0.0.0:{port} for its IPv4 clients",
                d.at
            )));
        }
    }
    let list = if proxied {
        binds.proxied_at.push(d.at.to_string());
        &mut binds.proxied
    } else {
        &mut binds.plain
    };
    for a in addrs {
        // nginx binds a wildcard address once and hands each connection to the
        // server listening on its destination address; sniroute binds every
        // address as a socket of its own, and a wildcard takes its whole port.
        let specific = a
            .parse::<SocketAddr>()
            .ok()
            .filter(|a| !a.ip().is_unspecified());
        let taken = specific.and_then(|a| {
            wildcards
                .iter()
                .find(|w| w.addr.port() == a.port() && w.addr.is_ipv4() == a.is_ipv4())
        });
        match taken {
            Some(w) if w.server == server.at && w.proxied == proxied => {
                notes.push(Note::info(format!(
                    "listen {a} ({}): this server's {} serves that address too; sniroute binds the port once",
                    d.at, w.addr
                )));
            }
            Some(w) => notes.push(Note::lossy(
                d,
                &format!(
                    "nginx served connections to {a} here, out of the socket of {} (server {{}} at {}),
                     by their destination address; sniroute binds the port once, so they reach that listener",
                    w.addr, w.server
                ),
            )),
            None if !list.contains(&a) => list.push(a),
            None => {}
        }
    }
}

/// `listen` address → sniroute bind.
pub(super) fn listen_addr(addr: &str) -> Result<String, String> {
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
