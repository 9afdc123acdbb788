//! nginx directives → a sniroute [`Plan`], with a note for everything that
//! does not carry over one to one.
//!
//! nginx's stream module reads the whole `stream {}` block before it sets up a
//! single server: stream-level settings apply to every `server {}` wherever
//! they are written, and a map or upstream may be used above its definition.
//! So does this translation: [`Translator::stream`] first sorts the block into
//! settings, maps, upstreams and servers, then [`Translator::finish`] turns each
//! server into listeners with the settings it inherits, and only then decides
//! what is global in sniroute (timeouts, the per-client limit, which pools send
//! a PROXY header), because that depends on every server together.
//!
//! One file per concern: [`settings`] (what a server inherits and which
//! directives are not needed), [`listeners`] (`server {}` → listeners),
//! [`routes`] (maps → routes), [`pools`] (upstreams and targets → pools, the
//! PROXY header to servers), [`access`] (`allow`/`deny`), [`limits`] (timeouts
//! and limits, one value for all listeners) and [`http`] (the one `http {}`
//! server sniroute will replace: a redirect to https).

mod access;
mod http;
mod limits;
mod listeners;
mod pools;
mod routes;
mod settings;

use std::collections::{BTreeMap, HashMap};

use super::emit::Plan;
use super::note::Note;
use super::tree::{Directive, Location};
use routes::MapDef;
use settings::Settings;

/// Why there is nothing to translate.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("{file}: no `stream {{}}` block (also none in its includes): sniroute replaces nginx's stream module, so there is nothing to translate")]
    NoStream { file: String },
}

/// Translates the directives of the nginx config read from `source`.
pub fn translate(source: &str, tree: &[Directive]) -> Result<Plan, TranslateError> {
    let mut plan = Plan {
        source: source.to_owned(),
        ..Plan::default()
    };
    let mut stream: Vec<&Directive> = Vec::new();
    let mut https: Vec<&Directive> = Vec::new();
    let mut found = false;
    for d in tree {
        match (&*d.name, &d.block) {
            ("stream", Some(block)) => {
                found = true;
                stream.extend(block.iter());
            }
            ("http", Some(_)) => https.push(d),
            ("mail", Some(_)) => plan.notes.push(Note::lossy(
                d,
                "nginx's mail proxy listens here; sniroute does not replace it",
            )),
            _ => plan.notes.push(Note::not_needed(
                d,
                "a setting of the nginx process, outside stream {}",
            )),
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
    // After the stream listeners: a redirect's port may be taken by one of them.
    for d in https {
        http::translate(d, &mut plan);
    }
    Ok(plan)
}

/// The `stream {}` block, sorted, and what its servers turned into so far.
#[derive(Default)]
struct Translator<'a> {
    /// Stream-level settings, inherited by every server.
    stream: Settings<'a>,
    maps: HashMap<String, MapDef<'a>>,
    upstreams: Vec<&'a Directive>,
    servers: Vec<&'a Directive>,
    /// `limit_conn_zone`s by zone name.
    zones: HashMap<String, &'a Directive>,
    /// Pools made for a literal `host:port` target: address → where first used.
    literal_pools: BTreeMap<String, Location>,
    /// Effective settings of every listener that is not commented out.
    effective: Vec<Settings<'a>>,
    /// Whether any `listen` takes a PROXY header (and so `set_real_ip_from`).
    accepts_proxy_protocol: bool,
    /// The wildcard addresses of all servers' `listen`s.
    wildcards: Vec<listeners::Wildcard>,
}

impl<'a> Translator<'a> {
    fn stream(&mut self, stream: &[&'a Directive], notes: &mut Vec<Note>) {
        for &d in stream {
            match (&*d.name, &d.block) {
                ("map", Some(block)) => self.map(d, block, notes),
                ("upstream", Some(_)) => self.upstreams.push(d),
                ("server", Some(_)) => self.servers.push(d),
                ("limit_conn_zone", None) => {
                    let zone = d.args.iter().find_map(|a| a.strip_prefix("zone="));
                    match zone.and_then(|z| z.split(':').next()) {
                        Some(name) => {
                            self.zones.insert(name.to_owned(), d);
                        }
                        None => notes.push(Note::lossy(d, "no zone=NAME:SIZE")),
                    }
                }
                _ => {
                    if let Err(note) = self.stream.apply(d) {
                        notes.push(note);
                    }
                }
            }
        }
    }

    fn finish(mut self, plan: &mut Plan) {
        let servers = std::mem::take(&mut self.servers);
        if servers.is_empty() {
            plan.notes.push(Note::info(
                "the stream {} block has no server {}: nothing listens, so sniroute has no listener to run (add one)",
            ));
        }
        self.wildcards = listeners::wildcards(&servers);
        for server in servers {
            let listeners = self.server(server);
            plan.listeners.extend(listeners);
        }
        self.unused_stream_settings(&mut plan.notes);
        self.unused_maps(&mut plan.notes);
        limits::timeouts(&self.stream, &self.effective, plan);
        limits::per_client(&self.zones, &self.effective, plan);
        self.pools(plan);
    }

    /// Stream-level `set_real_ip_from` that no listener took over is named,
    /// not dropped silently.
    fn unused_stream_settings(&self, notes: &mut Vec<Note>) {
        if self.accepts_proxy_protocol {
            return;
        }
        for &d in &self.stream.lists.real_ip_from {
            notes.push(Note::not_needed(
                d,
                "no listen has proxy_protocol, and nginx takes the client's address only from a PROXY header",
            ));
        }
    }
}
