//! Stream- and server-level directives: what a `server {}` inherits from
//! `stream {}`, and what becomes of each directive sniroute has no key for.
//!
//! nginx merges a server's settings over the stream's: a value set in the
//! server wins, and a list the server has at all (`allow`/`deny`,
//! `set_real_ip_from`, `limit_conn`) replaces the stream's list instead of
//! adding to it. [`Settings::over`] does the same, so that every listener is
//! translated from what nginx really applied to it.
//!
//! Every other directive is sorted by [`dropped`] into "not needed" (it changes
//! neither who may connect, nor where connections go, nor what servers
//! receive) or "not translated" (lossy). The tables say why for each one the
//! edge configs we know use; a directive in neither is lossy, because an
//! unknown directive may well decide something.

use std::time::Duration;

use super::super::note::Note;
use super::super::tree::Directive;
use super::super::units::{parse_size, parse_time};

/// A value nginx had: where it was set, or `None` for nginx's default.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub value: T,
    pub from: Option<String>,
}

/// The settings of one server (or of `stream {}` itself).
#[derive(Debug, Default, Clone)]
pub struct Settings<'a> {
    pub ssl_preread: Option<Sourced<bool>>,
    pub connect: Option<Sourced<Duration>>,
    pub idle: Option<Sourced<Duration>>,
    pub peek: Option<Sourced<Duration>>,
    pub peek_bytes: Option<Sourced<u64>>,
    /// `proxy_protocol on|off`: the header nginx sends to servers.
    pub proxy_protocol: Option<Sourced<bool>>,
    pub limit_conn_dry_run: Option<bool>,
    pub lists: Lists<'a>,
}

/// Directives nginx keeps as lists, in file order.
#[derive(Debug, Default, Clone)]
pub struct Lists<'a> {
    /// `allow` and `deny`, interleaved as written: their order is their meaning.
    pub access: Vec<&'a Directive>,
    pub real_ip_from: Vec<&'a Directive>,
    pub limit_conn: Vec<&'a Directive>,
}

impl<'a> Settings<'a> {
    /// These (a server's own) settings over `outer` (the stream's), as nginx
    /// merges them.
    pub fn over(self, outer: &Settings<'a>) -> Settings<'a> {
        let list = |own: Vec<&'a Directive>, outer: &[&'a Directive]| {
            if own.is_empty() {
                outer.to_vec()
            } else {
                own
            }
        };
        Settings {
            ssl_preread: self.ssl_preread.or_else(|| outer.ssl_preread.clone()),
            connect: self.connect.or_else(|| outer.connect.clone()),
            idle: self.idle.or_else(|| outer.idle.clone()),
            peek: self.peek.or_else(|| outer.peek.clone()),
            peek_bytes: self.peek_bytes.or_else(|| outer.peek_bytes.clone()),
            proxy_protocol: self.proxy_protocol.or_else(|| outer.proxy_protocol.clone()),
            limit_conn_dry_run: self.limit_conn_dry_run.or(outer.limit_conn_dry_run),
            lists: Lists {
                access: list(self.lists.access, &outer.lists.access),
                real_ip_from: list(self.lists.real_ip_from, &outer.lists.real_ip_from),
                limit_conn: list(self.lists.limit_conn, &outer.lists.limit_conn),
            },
        }
    }

    /// Takes in one stream- or server-level directive; `Err` with the note to
    /// write when sniroute has nothing for it.
    pub fn apply(&mut self, d: &'a Directive) -> Result<(), Note> {
        let from = Some(format!("{} ({})", d.args.join(" "), d.at));
        let bad = |why: String| Note::lossy(d, &why);
        let one = || match d.args.as_slice() {
            [v] => Ok(v.as_str()),
            _ => Err(bad("expected one value".to_owned())),
        };
        let time = || {
            let v = one()?;
            parse_time(v).ok_or_else(|| bad(format!("`{v}` is not an nginx time")))
        };
        let on_off = || match one()? {
            "on" => Ok(true),
            "off" => Ok(false),
            other => Err(bad(format!("`{other}` is neither on nor off"))),
        };
        match &*d.name {
            "ssl_preread" => {
                let value = on_off()?;
                self.ssl_preread = Some(Sourced {
                    value,
                    from: Some(d.at.to_string()),
                });
            }
            "proxy_connect_timeout" => {
                self.connect = Some(Sourced {
                    value: time()?,
                    from,
                })
            }
            "proxy_timeout" => {
                self.idle = Some(Sourced {
                    value: time()?,
                    from,
                })
            }
            "preread_timeout" => {
                self.peek = Some(Sourced {
                    value: time()?,
                    from,
                })
            }
            "preread_buffer_size" => {
                let v = one()?;
                let value =
                    parse_size(v).ok_or_else(|| bad(format!("`{v}` is not an nginx size")))?;
                self.peek_bytes = Some(Sourced { value, from });
            }
            "proxy_protocol" => {
                let value = on_off()?;
                self.proxy_protocol = Some(Sourced { value, from });
            }
            "limit_conn_dry_run" => self.limit_conn_dry_run = Some(on_off()?),
            "allow" | "deny" => self.lists.access.push(d),
            "set_real_ip_from" => self.lists.real_ip_from.push(d),
            "limit_conn" => self.lists.limit_conn.push(d),
            _ => return Err(dropped(d)),
        }
        Ok(())
    }
}

/// Directives that change neither who may connect, nor where connections go,
/// nor what servers receive. A trailing `*` matches any rest of the name.
const NOT_NEEDED: &[(&str, &str)] = &[
    ("error_log", "sniroute logs to stderr (the journal), see [log]"),
    ("access_log", "sniroute writes one access line per connection, see [log]"),
    ("log_format", "sniroute's access line has fixed fields, see [log]"),
    ("open_log_file_cache", "sniroute logs to stderr"),
    ("tcp_nodelay", "sniroute always sets TCP_NODELAY, as nginx's default does"),
    ("variables_hash_*", "sizes nginx's own hash tables"),
    ("map_hash_*", "sizes nginx's own hash tables"),
    ("server_names_hash_*", "sizes nginx's own hash tables"),
    ("resolver", "sniroute resolves server names with the system resolver"),
    ("resolver_timeout", "sniroute resolves server names with the system resolver"),
    ("proxy_buffer_size", "sniroute sizes its own buffers"),
    ("proxy_download_rate", "sniroute does not limit bandwidth"),
    ("proxy_upload_rate", "sniroute does not limit bandwidth"),
    ("proxy_socket_keepalive", "sniroute's timeouts.idle closes dead connections"),
    ("proxy_half_close", "sniroute always forwards a half-close"),
    ("proxy_next_upstream", "sniroute always moves on to the next server of the pool when a connect fails, each server once per client"),
    ("proxy_next_upstream_tries", "sniroute always moves on to the next server of the pool when a connect fails, each server once per client"),
    ("proxy_next_upstream_timeout", "sniroute always moves on to the next server of the pool when a connect fails, each server once per client"),
    ("proxy_responses", "UDP only"),
    ("proxy_requests", "UDP only"),
    ("proxy_protocol_timeout", "sniroute reads a PROXY header within timeouts.peek"),
    ("proxy_ssl_*", "only used with proxy_ssl on"),
    ("ssl_*", "only used with listen ... ssl, which sniroute does not do"),
    ("limit_conn_log_level", "sniroute logs refusals at warn, throttled"),
];

/// Directives sniroute has nothing for although they decide who may connect,
/// where connections go or what servers receive.
const LOSSY: &[(&str, &str)] = &[
    ("proxy_bind", "sniroute connects to servers from the address the system picks; servers (or firewalls) that expected this source see another one"),
    ("proxy_ssl", "sniroute never opens TLS to servers: they receive the client's bytes as they are"),
    ("return", "sniroute never answers by itself; this answer is gone"),
    ("server_name", "nginx (1.25.5 and later) picks among servers on one address by this name; in sniroute that is one listener with routes: merge these servers by hand"),
    ("geo", "sniroute routes on the client's name only, not on its address"),
    ("geoip_*", "sniroute routes on the client's name only, not on its address"),
    ("split_clients", "sniroute routes on the client's name only"),
    ("js_*", "sniroute runs no scripts"),
];

/// The note for a directive sniroute has no key for.
pub fn dropped(d: &Directive) -> Note {
    let find = |table: &[(&'static str, &'static str)]| {
        table.iter().find_map(|&(name, why)| {
            let hit = match name.strip_suffix('*') {
                Some(prefix) => d.name.starts_with(prefix),
                None => d.name == name,
            };
            hit.then_some(why)
        })
    };
    // `proxy_ssl on` is lossy; `proxy_ssl off` is nginx's default.
    if d.name == "proxy_ssl" && d.args == ["off"] {
        return Note::not_needed(d, "nginx's default");
    }
    if let Some(why) = find(LOSSY) {
        return Note::lossy(d, why);
    }
    match find(NOT_NEEDED) {
        Some(why) => Note::not_needed(d, why),
        None => Note::lossy(d, "sniroute has no counterpart"),
    }
}
