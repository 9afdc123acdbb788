//! `http {}`: sniroute does not replace nginx's HTTP module, but one kind of
//! HTTP server is named for what it is: one that only redirects plain HTTP to
//! https, which `redirect_https` on an HTTP listener (a name no route matches
//! gets a 308 to https) replaces.
//!
//! Such a server becomes an HTTP listener with `redirect_https = true` on its
//! addresses, with notes where the redirect differs from nginx's. Every other
//! HTTP server is a lossy note as well (nginx served something there that
//! sniroute will not), and the rest of the block is not needed.
//!
//! "Only redirects" is recognised narrowly, in the forms people write: a
//! `return 301|302|303|307|308 https://$host$request_uri;` (or
//! `$server_name`), or the same as `rewrite ^ https://$host$request_uri?
//! permanent;` or `rewrite ^(.*)$ https://$host$1 permanent;`, at server level
//! or alone in `location / {}`, next to nothing but `listen`, `server_name`
//! and logging. Anything else in the server (an ACME webroot location, a
//! proxy_pass) means it does more, and it is reported as such.

use std::net::IpAddr;

use super::super::emit::{ListenerPlan, Plan, Setting};
use super::super::note::Note;
use super::super::tree::Directive;
use super::listeners::listen_addr;

/// `listen` parameters of an HTTP server that a plain redirect may have.
const PLAIN_LISTEN: &[&str] = &[
    "default_server",
    "default",
    "ipv6only",
    "reuseport",
    "backlog",
    "rcvbuf",
    "sndbuf",
    "deferred",
    "bind",
    "so_keepalive",
    "fastopen",
    "setfib",
    "accept_filter",
];

/// `(regex, replacement after the host)` pairs of `rewrite` that keep the
/// path and query as `redirect_https` does.
const REWRITES: &[(&str, &str)] = &[
    ("^", "$request_uri?"),
    ("^", "$request_uri"),
    ("^(.*)$", "$1"),
    ("^(.*)", "$1"),
    ("^/(.*)$", "/$1"),
    ("^/(.*)", "/$1"),
];

/// One `http {}` block: its redirect servers as listeners, the
/// rest as notes.
pub fn translate(http: &Directive, plan: &mut Plan) {
    let mut settings = false;
    for d in http.block.iter().flatten() {
        if d.name != "server" || d.block.is_none() {
            settings = true;
            continue;
        }
        match redirect(d) {
            Some(listener) => plan.listeners.push(listener),
            None => plan.notes.push(Note::lossy(
                d,
                "an HTTP server in nginx; sniroute does not serve HTTP itself (keep nginx for it on\n\
                 addresses sniroute does not take, or move it into the cluster)",
            )),
        }
    }
    if settings {
        plan.notes.push(Note::not_needed(
            http,
            "settings of nginx's HTTP module; its server {} blocks are named one by one",
        ));
    }
}

/// The listener a redirect-only HTTP server becomes; `None` if it does more.
fn redirect(server: &Directive) -> Option<ListenerPlan> {
    let mut binds = Vec::new();
    let mut how: Option<&Directive> = None;
    for d in server.block.iter().flatten() {
        match &*d.name {
            "listen" => binds.extend(http_listen(d)?),
            "server_name" | "access_log" | "error_log" | "server_tokens" | "log_not_found" => {}
            "return" | "rewrite" if how.is_none() => how = Some(d),
            // `location / { return 301 https://...; }`, nothing else in it.
            "location" if how.is_none() && d.args == ["/"] => match d.block.as_deref() {
                Some([inner]) => how = Some(inner),
                _ => return None,
            },
            _ => return None,
        }
    }
    let how = how?;
    let host = https_target(how)?;
    if binds.is_empty() {
        // nginx's default for a server without `listen`.
        binds.push("0.0.0.0:80".to_owned());
    }
    let mut notes = vec![Note::info(format!(
        "the HTTP server {{}} at {} only redirects to https: `redirect_https = true` on an\n\
         HTTP listener replaces it (every Host gets 308 to https://HOST/PATH?QUERY; a\n\
         request without Host gets 400)",
        server.at
    ))];
    if host == "$server_name" {
        notes.push(Note::info(
            "nginx redirected to its first server_name whatever name was asked for;\n\
             redirect_https keeps the name the client asked for",
        ));
    }
    let code = how.args.first().map(String::as_str);
    if how.name == "return" && code != Some("308") {
        notes.push(Note::info(format!(
            "nginx answered {}; redirect_https answers 308 (a redirect all the same, and a POST stays a POST)",
            code.unwrap_or("")
        )));
    }
    Some(ListenerPlan {
        origin: format!("server {{}} in http {{}} at {}", server.at),
        notes,
        disabled: false,
        binds,
        protocol: "http",
        protocol_comment: String::new(),
        settings: vec![Setting {
            key: "redirect_https",
            value: "true".into(),
            comment: format!("{} ({})", how.text(), how.at),
        }],
        ..ListenerPlan::default()
    })
}

/// The binds of an HTTP `listen`; `None` if it is more than plain HTTP.
fn http_listen(d: &Directive) -> Option<Vec<String>> {
    let (addr, params) = d.args.split_first()?;
    let plain = params.iter().all(|p| {
        let key = p.split_once('=').map_or(p.as_str(), |(k, _)| k);
        PLAIN_LISTEN.contains(&key)
    });
    if !plain {
        return None;
    }
    // In http {}, an address without a port means port 80.
    let bind = listen_addr(addr).ok().or_else(|| {
        let ip = addr.trim_start_matches('[').trim_end_matches(']');
        ip.parse::<IpAddr>()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, 80).to_string())
    })?;
    let mut binds = vec![bind];
    if params.iter().any(|p| p == "ipv6only=off") {
        if let Some(port) = binds[0].strip_prefix("[::]:") {
            binds.push(format!("0.0.0.0:{port}"));
        }
    }
    Some(binds)
}

/// `$host` or `$server_name` when `d` redirects every request to https on the
/// same path and query; `None` otherwise.
fn https_target(d: &Directive) -> Option<&'static str> {
    let (url, regex) = match (&*d.name, d.args.as_slice()) {
        ("return", [code, url]) if ["301", "302", "303", "307", "308"].contains(&code.as_str()) => {
            (url, None)
        }
        ("rewrite", [regex, url, flag]) if flag == "permanent" || flag == "redirect" => {
            (url, Some(regex.as_str()))
        }
        _ => return None,
    };
    let (host, rest) = host_of(url)?;
    let keeps_path = match regex {
        None => rest == "$request_uri",
        Some(regex) => REWRITES.contains(&(regex, rest)),
    };
    keeps_path.then_some(host)
}

/// `https://$host<rest>` → (`"$host"`, rest); also `${host}` and `$server_name`.
fn host_of(url: &str) -> Option<(&'static str, &str)> {
    let after = url.strip_prefix("https://")?;
    for (var, spellings) in [
        ("$host", ["$host", "${host}"]),
        ("$server_name", ["$server_name", "${server_name}"]),
    ] {
        for s in spellings {
            if let Some(rest) = after.strip_prefix(s) {
                return Some((var, rest));
            }
        }
    }
    None
}
