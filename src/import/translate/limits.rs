//! `[timeouts]` and `[limits]`: values nginx sets per server and sniroute has
//! once for all listeners.
//!
//! Timeouts are written out even when nginx used its defaults, so that the
//! timing stays what it was; where servers differ, the longest value wins (a
//! shorter one would cut connections nginx kept) and a comment says so.
//! `limit_conn` becomes `max_connections_per_ip` only where that is the same
//! limit: one zone keyed by the client address, the same number, on every
//! listener. sniroute counts one client's connections across all listeners
//! together, as nginx does within one zone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::super::emit::{Plan, Setting};
use super::super::note::Note;
use super::super::tree::Directive;
use super::super::units::format_duration;
use super::settings::{Settings, Sourced};

/// nginx's defaults for the stream settings sniroute has too.
const NGINX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const NGINX_PROXY_TIMEOUT: Duration = Duration::from_secs(600);
const NGINX_PREREAD_TIMEOUT: Duration = Duration::from_secs(30);

/// `[timeouts]` and `limits.max_peek_bytes` from the servers' `effective`
/// settings (the stream's when no listener is left).
pub fn timeouts(stream: &Settings, effective: &[Settings], plan: &mut Plan) {
    let all: Vec<&Settings> = if effective.is_empty() {
        vec![stream]
    } else {
        effective.iter().collect()
    };
    type Pick = for<'s> fn(&'s Settings<'_>) -> Option<&'s Sourced<Duration>>;
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
        let values: Vec<Sourced<Duration>> = all
            .iter()
            .map(|s| {
                pick(s).cloned().unwrap_or(Sourced {
                    value: nginx_default,
                    from: None,
                })
            })
            .collect();
        let Some(chosen) = values.iter().max_by_key(|v| v.value) else {
            continue;
        };
        if chosen.value.is_zero() {
            plan.notes.push(Note::info(format!(
                "{directive} 0 ({}): sniroute needs a timeout above zero; its default applies",
                chosen.from.as_deref().unwrap_or("nginx default")
            )));
            continue;
        }
        let mut comment = match &chosen.from {
            Some(from) => format!("{directive} {from}"),
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
    let bytes = all.iter().filter_map(|s| s.peek_bytes.as_ref());
    if let Some(chosen) = bytes.max_by_key(|v| v.value) {
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

/// `limit_conn` → `limits.max_connections_per_ip` where it is the same limit;
/// otherwise every `limit_conn` is a lossy note.
pub fn per_client(zones: &HashMap<String, &Directive>, effective: &[Settings], plan: &mut Plan) {
    // What each listener enforces: its limit_conn list, or none in dry-run mode
    // (nginx then only logs what it would refuse).
    let enforced: Vec<&[&Directive]> = effective
        .iter()
        .map(|s| match s.limit_conn_dry_run {
            Some(true) => &[][..],
            _ => &s.lists.limit_conn[..],
        })
        .collect();
    let mut seen: Vec<&Directive> = Vec::new();
    for s in effective {
        for &d in &s.lists.limit_conn {
            if !seen.iter().any(|u| std::ptr::eq(*u, d)) {
                seen.push(d);
            }
        }
    }
    let used_zones: HashSet<&str> = seen
        .iter()
        .filter_map(|d| d.args.first().map(String::as_str))
        .collect();
    let mut unused: Vec<&&Directive> = zones
        .iter()
        .filter(|(name, _)| !used_zones.contains(name.as_str()))
        .map(|(_, d)| d)
        .collect();
    unused.sort_by_key(|d| (d.at.file.clone(), d.at.line));
    for d in unused {
        plan.notes
            .push(Note::not_needed(d, "no listener uses this zone"));
    }
    if seen.is_empty() {
        return;
    }
    if enforced.iter().all(|l| l.is_empty()) {
        for d in seen {
            plan.notes.push(Note::not_needed(
                d,
                "limit_conn_dry_run on: nginx only logged what it would refuse",
            ));
        }
        return;
    }
    match same_limit(zones, &enforced) {
        Ok((n, d, zone)) => plan.limits.push(Setting {
            key: "max_connections_per_ip",
            value: n.to_string(),
            comment: format!(
                "limit_conn {} ({}), zone keyed by {} ({})",
                d.args.join(" "),
                d.at,
                zone.args.first().map(String::as_str).unwrap_or(""),
                zone.at
            ),
        }),
        Err(why) => {
            for d in seen {
                plan.notes.push(Note::lossy(d, &why));
            }
        }
    }
}

const NOT_ONE_LIMIT: &str = "sniroute has one per-client limit, the same on all listeners (limits.max_connections_per_ip); here the listeners do not all have exactly this one limit_conn";

/// The one per-client limit every listener enforces, with its `limit_conn`
/// and zone; `Err(why)` when there is no such one.
fn same_limit<'a>(
    zones: &HashMap<String, &'a Directive>,
    enforced: &[&[&'a Directive]],
) -> Result<(u32, &'a Directive, &'a Directive), String> {
    let mut found: Option<(&str, u32, &Directive)> = None;
    for limits in enforced {
        let [d] = limits else {
            return Err(NOT_ONE_LIMIT.into());
        };
        let (Some(zone), Some(n)) = (
            d.args.first(),
            d.args
                .get(1)
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| (1..=10_000_000).contains(n)),
        ) else {
            return Err("expected a zone and a number from 1 to 10000000".into());
        };
        match found {
            Some((z, m, _)) if (z, m) != (zone.as_str(), n) => return Err(NOT_ONE_LIMIT.into()),
            Some(_) => {}
            None => found = Some((zone, n, d)),
        }
    }
    let (zone, n, d) = found.ok_or(NOT_ONE_LIMIT)?;
    let Some(&z) = zones.get(zone) else {
        return Err(format!("no limit_conn_zone defines zone {zone}"));
    };
    let by_client = matches!(
        z.args.first().map(String::as_str),
        Some("$binary_remote_addr" | "$remote_addr")
    );
    if !by_client {
        return Err(format!(
            "zone {zone} ({}) counts by another key than the client's address; sniroute limits per client address only",
            z.at
        ));
    }
    Ok((n, d, z))
}
