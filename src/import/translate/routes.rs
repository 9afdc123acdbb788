//! `proxy_pass` and `map $ssl_preread_server_name` → a listener's routes and
//! default.
//!
//! `proxy_pass upstream;` or `proxy_pass host:port;` is the default.
//! `proxy_pass $var;` with `map $ssl_preread_server_name $var` gives the
//! routes: exact names, `*.` and `.` wildcards, trailing `.*` wildcards as
//! regexes, `~` / `~*` regexes; the map's `default` is the default.
//!
//! Matching follows nginx's map: exact names, then the longest head wildcard,
//! then the longest tail wildcard, then regexes in order. That is also
//! sniroute's order once tail wildcards are written as the first regexes,
//! longest first.

use std::collections::HashSet;

use super::super::emit::{ListenerPlan, RoutePlan};
use super::super::note::Note;
use super::super::tree::{Directive, Location};
use super::Translator;
use crate::name::HostName;

#[derive(Debug)]
pub struct MapDef<'a> {
    source: String,
    at: Location,
    hostnames: bool,
    default: Option<&'a Directive>,
    entries: Vec<&'a Directive>,
    notes: Vec<Note>,
    /// Whether a listener uses it; its notes go with the first that does.
    used: bool,
}

impl<'a> Translator<'a> {
    pub(super) fn map(&mut self, d: &'a Directive, block: &'a [Directive], notes: &mut Vec<Note>) {
        let [source, var] = d.args.as_slice() else {
            notes.push(Note::lossy(d, "a map takes a source and a $variable"));
            return;
        };
        let Some(var) = var.strip_prefix('$') else {
            notes.push(Note::lossy(
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
            used: false,
        };
        for entry in block {
            match (&*entry.name, entry.args.len(), &entry.block) {
                ("hostnames", 0, None) => map.hostnames = true,
                ("volatile", 0, None) => map.notes.push(Note::not_needed(
                    entry,
                    "only about nginx's caching of the value",
                )),
                ("default", 1, None) => map.default = Some(entry),
                (_, 1, None) => map.entries.push(entry),
                _ => map
                    .notes
                    .push(Note::lossy(entry, "not a `key value;` map entry")),
            }
        }
        self.maps.insert(var.to_owned(), map);
    }

    /// Maps no listener uses: named, so that nothing disappears unsaid.
    pub(super) fn unused_maps(&self, notes: &mut Vec<Note>) {
        let mut unused: Vec<(&String, &MapDef)> =
            self.maps.iter().filter(|(_, m)| !m.used).collect();
        unused.sort_by_key(|(_, m)| (m.at.file.clone(), m.at.line));
        for (var, m) in unused {
            notes.push(Note::info(format!(
                "map {} ${var} ({}) is used by no proxy_pass here, so it is left out",
                m.source, m.at
            )));
        }
    }

    pub(super) fn proxy_pass(&mut self, d: &Directive, preread: bool, l: &mut ListenerPlan) {
        let [target] = d.args.as_slice() else {
            l.notes.push(Note::lossy(d, "proxy_pass takes one target"));
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
                    l.notes.push(Note::lossy(d, &why));
                    l.disabled = true;
                }
            }
            return;
        };
        if !self.maps.contains_key(var) {
            l.notes.push(Note::lossy(
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
        if !map.used {
            map.used = true;
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
                Err(why) => l.notes.push(Note::lossy(dd, &why)),
            }
        } else {
            l.notes.push(Note::info(format!(
                "map ${var} ({map_at}) has no default: nginx closed connections for names it\n\
                 does not list; sniroute answers them with a TLS unrecognized_name alert\n\
                 and closes. Either way they reach no server."
            )));
        }
        if source != "$ssl_preread_server_name" {
            l.notes.push(Note::lossy_text(format!(
                "not translated: the entries of map {source} ${var} ({map_at}): sniroute routes on the\n\
                 client's name (SNI) only; only the map's default is kept"
            )));
            return;
        }
        if !preread {
            l.notes.push(Note::info(format!(
                "ssl_preread is off in this server, so nginx never saw a name here and always\n\
                 used the default of map ${var} ({map_at}); only that default is kept"
            )));
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
        let unmatchable = "not a hostname sniroute can match";
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
                    l.notes.push(Note::lossy(e, &why));
                    continue;
                }
            };
            let at = e.at.to_string();
            if let Some(re) = key.strip_prefix("~*") {
                match regex::Regex::new(re) {
                    Ok(_) => regexes.push(RoutePlan {
                        pattern: format!("~(?i){re}"),
                        pool,
                        comment: format!("~* (case-insensitive) {at}"),
                    }),
                    Err(err) => l.notes.push(Note::lossy(e, &regex_error(&err))),
                }
                continue;
            }
            if let Some(re) = key.strip_prefix('~') {
                if let Err(err) = regex::Regex::new(re) {
                    l.notes.push(Note::lossy(e, &regex_error(&err)));
                    continue;
                }
                if has_upper_literal(re) {
                    l.notes.push(Note::info(format!(
                        "{key} ({at}) has upper-case letters: nginx matched them when a client sent the\n\
                         name in upper case; sniroute matches the lowercased name, so they never match now"
                    )));
                } else if !case_note {
                    case_note = true;
                    l.notes.push(Note::info(
                        "nginx matched `~` regexes case-sensitively on the name as the client sent it;\n\
                         sniroute lowercases names first, so they now also match names sent in upper case",
                    ));
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
                l.notes.push(Note::not_needed(
                    e,
                    "map without `hostnames;`: nginx compared this key literally, so no real name matched it",
                ));
                continue;
            }
            if let Some(suffix) = key.strip_prefix("*.") {
                if HostName::parse(suffix.as_bytes()).is_none() {
                    l.notes.push(Note::lossy(e, unmatchable));
                    continue;
                }
                add(&mut seen, &mut names, key.to_owned(), &pool, at);
            } else if let Some(suffix) = key.strip_prefix('.') {
                if HostName::parse(suffix.as_bytes()).is_none() {
                    l.notes.push(Note::lossy(e, unmatchable));
                    continue;
                }
                let why = format!("from {key}: the name and every name below it ({at})");
                add(&mut seen, &mut names, suffix.to_owned(), &pool, why.clone());
                add(&mut seen, &mut names, format!("*.{suffix}"), &pool, why);
            } else if let Some(prefix) = key.strip_suffix(".*") {
                if HostName::parse(prefix.as_bytes()).is_none() {
                    l.notes.push(Note::lossy(e, unmatchable));
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
                    l.notes.push(Note::lossy(e, unmatchable));
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
            l.notes.push(Note::info(format!(
                "nothing of map ${var} could be translated, so this listener could route nothing"
            )));
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
