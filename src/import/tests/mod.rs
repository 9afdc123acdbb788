//! The translation, end to end on config text: what each nginx construct becomes,
//! and that the result is a config sniroute accepts. One file per concern, as
//! in `translate/`; the test names follow the rows of README's table of nginx
//! directives ("Migrate from nginx stream").

mod access;
mod directives;
mod http;
mod limits;
mod listeners;
mod pools;
mod routes;

use std::path::Path;

use super::note::{Note, Severity};
use super::{emit::Plan, translate::translate, tree::parse_str};

fn plan(text: &str) -> Plan {
    let tree = parse_str(text, "nginx.conf", Path::new(".")).unwrap();
    translate("nginx.conf", &tree).unwrap()
}

/// The TOML, checked to be valid for sniroute.
fn import(text: &str) -> String {
    let toml = plan(text).render();
    if let Err(e) = crate::config::parse(&toml, Path::new("imported.toml")) {
        panic!("imported config does not load: {e}\n{toml}");
    }
    toml
}

/// `(pattern, pool)` of every route of listener `i`, in file order.
fn routes(toml: &str, i: usize) -> Vec<(String, String)> {
    let table: toml::Table = toml::from_str(toml).unwrap();
    let listener = &table["listeners"].as_array().unwrap()[i];
    let Some(routes) = listener.get("routes") else {
        return Vec::new();
    };
    // toml::Table is sorted; the order of regexes matters, so read it from the text.
    let mut out: Vec<(String, String)> = routes
        .as_table()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    out.sort_by_key(|(k, _)| toml.find(&super::emit::quote(k)).unwrap_or(usize::MAX));
    out
}

/// `toml` with runs of spaces squeezed to one, so that tests do not depend on
/// how comments are aligned.
fn squeezed(toml: &str) -> String {
    let mut out = String::with_capacity(toml.len());
    for c in toml.chars() {
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out
}

/// The note whose text contains `needle`.
fn note<'p>(plan: &'p Plan, needle: &str) -> &'p Note {
    let mut notes = plan.all_notes();
    notes.find(|n| n.text.contains(needle)).unwrap_or_else(|| {
        panic!(
            "no note with {needle:?} in {:#?}",
            plan.all_notes().collect::<Vec<_>>()
        )
    })
}

/// The severity of the note about `needle` in the import of `text`.
fn severity(text: &str, needle: &str) -> Severity {
    note(&plan(text), needle).severity
}

/// A stream block with one TLS server in front of upstream `u`, plus `extra`
/// at stream level and `inside` in the server.
fn one_server(extra: &str, inside: &str) -> String {
    format!(
        "stream {{\n upstream u {{ server 10.0.0.1:443; }}\n{extra}\n server {{\n  listen 443;\n  ssl_preread on;\n  proxy_pass u;\n{inside}\n }}\n}}\n"
    )
}

/// Listener `i` of an imported config.
fn listener(toml: &str, i: usize) -> toml::Value {
    let table: toml::Table = toml::from_str(toml).unwrap();
    value(&table, &["listeners"])[i].clone()
}

fn value<'a>(table: &'a toml::Table, path: &[&str]) -> &'a toml::Value {
    let mut v = table.get(path[0]).unwrap_or_else(|| panic!("no {path:?}"));
    for key in &path[1..] {
        v = v.get(*key).unwrap_or_else(|| panic!("no {path:?}"));
    }
    v
}

const TWO_CLUSTERS: &str = r#"
stream {
    map $ssl_preread_server_name $backend {
        hostnames;
        default                 a_https;
        rancher.example.com     a_https;
        .b.example.net          b_https;
        *.apps.example.com      a_https;
        ~^argo-[a-z]+\.example\.com$  b_https;
    }
    upstream a_https {
        least_conn;
        server 10.0.0.1:443 max_fails=3 fail_timeout=5s;
        server 10.0.0.2:443 max_fails=3 fail_timeout=5s weight=2;
        server 10.0.0.3:443 max_fails=3 fail_timeout=5s backup;
    }
    upstream b_https { server 10.0.1.1:443; server 10.0.1.2:443; }
    upstream a_http { least_conn; server 10.0.0.1:80; server 10.0.0.2:80; }
    server { listen 443; listen [::]:443; ssl_preread on; proxy_pass $backend; }
    server { listen 10.9.0.1:80; proxy_pass a_http; }
}
"#;

#[test]
fn two_clusters_become_listeners_routes_and_pools() {
    let toml = import(TWO_CLUSTERS);
    let table: toml::Table = toml::from_str(&toml).unwrap();
    let l0 = &value(&table, &["listeners"]).as_array().unwrap()[0];
    assert_eq!(l0["bind"].as_array().unwrap().len(), 2);
    assert_eq!(l0["bind"][0].as_str(), Some("0.0.0.0:443"));
    assert_eq!(l0["bind"][1].as_str(), Some("[::]:443"));
    assert_eq!(l0["protocol"].as_str(), Some("tls"));
    assert_eq!(l0["default"].as_str(), Some("a_https"));
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        routes(&toml, 0),
        [
            pair("rancher.example.com", "a_https"),
            pair("*.apps.example.com", "a_https"),
            pair("b.example.net", "b_https"),
            pair("*.b.example.net", "b_https"),
            pair(r"~^argo-[a-z]+\.example\.com$", "b_https"),
        ]
    );
    let l1 = &value(&table, &["listeners"]).as_array().unwrap()[1];
    assert_eq!(l1["bind"][0].as_str(), Some("10.9.0.1:80"));
    assert_eq!(l1["protocol"].as_str(), Some("tcp"));
    assert_eq!(l1["default"].as_str(), Some("a_http"));
    assert!(l1.get("routes").is_none());

    let a = value(&table, &["upstreams", "a_https"]);
    assert_eq!(a["balance"].as_str(), Some("least_conn"));
    assert_eq!(a["max_fails"].as_integer(), Some(3));
    assert_eq!(a["fail_timeout"].as_str(), Some("5s"));
    assert_eq!(a["servers"][0].as_str(), Some("10.0.0.1:443"));
    assert_eq!(a["servers"][1]["weight"].as_integer(), Some(2));
    assert_eq!(a["servers"][2]["backup"].as_bool(), Some(true));
    let b = value(&table, &["upstreams", "b_https"]);
    assert_eq!(b["balance"].as_str(), Some("round_robin"));
    assert_eq!(b["max_fails"].as_integer(), Some(1));
    assert_eq!(b["fail_timeout"].as_str(), Some("10s"));
}

#[test]
fn no_stream_block_is_an_error() {
    let tree = parse_str("events {}\nhttp {}\n", "nginx.conf", Path::new(".")).unwrap();
    let err = translate("nginx.conf", &tree).unwrap_err().to_string();
    assert_eq!(err, "nginx.conf: no `stream {}` block (also none in its includes): sniroute replaces nginx's stream module, so there is nothing to translate");
}
