//! The translation, end to end on config text: what each nginx construct becomes,
//! and that the result is a config sniroute accepts.

use std::path::Path;

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
    assert_eq!(l1["protocol"].as_str(), Some("http"));
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
fn a_port_80_server_becomes_an_http_listener_and_says_why() {
    let toml = import(TWO_CLUSTERS);
    assert!(
        toml.contains("# nginx's stream module cannot route by the HTTP Host header (it only has\n# $hostname, this machine's own name)"),
        "{toml}"
    );
    assert!(
        squeezed(&toml).contains("protocol = \"http\" # no ssl_preread: HTTP, see above\n"),
        "{toml}"
    );
}

#[test]
fn nginx_timeout_defaults_are_written_out_and_set_ones_name_their_line() {
    let toml = import(
        "stream {\n proxy_connect_timeout 2s;\n upstream u { server 10.0.0.1:443; }\n server { listen 443; proxy_pass u; proxy_timeout 10m; preread_timeout 3s; preread_buffer_size 32k; }\n}\n",
    );
    assert!(
        squeezed(&toml).contains("peek = \"3s\" # preread_timeout 3s (nginx.conf:4)\n"),
        "{toml}"
    );
    assert!(
        squeezed(&toml).contains("connect = \"2s\" # proxy_connect_timeout 2s (nginx.conf:2)\n"),
        "{toml}"
    );
    assert!(
        squeezed(&toml).contains("idle = \"10m\" # proxy_timeout 10m (nginx.conf:4)\n"),
        "{toml}"
    );
    assert!(
        squeezed(&toml)
            .contains("max_peek_bytes = 32768 # preread_buffer_size 32k (nginx.conf:4)\n"),
        "{toml}"
    );

    let toml = import("stream {\n upstream u { server 10.0.0.1:443; }\n server { listen 443; proxy_pass u; }\n}\n");
    assert!(
        squeezed(&toml).contains("peek = \"30s\" # nginx's default preread_timeout\n"),
        "{toml}"
    );
    assert!(
        squeezed(&toml).contains("connect = \"1m\" # nginx's default proxy_connect_timeout\n"),
        "{toml}"
    );
    assert!(
        squeezed(&toml).contains("idle = \"10m\" # nginx's default proxy_timeout\n"),
        "{toml}"
    );
}

#[test]
fn servers_with_different_timeouts_get_the_longest_and_a_note() {
    let toml = import(
        "stream {\n upstream u { server 10.0.0.1:443; }\n server { listen 443; proxy_pass u; proxy_timeout 5m; }\n server { listen 8443; proxy_pass u; proxy_timeout 2h; }\n}\n",
    );
    assert!(squeezed(&toml).contains("idle = \"2h\" # proxy_timeout 2h (nginx.conf:4); the longest of the servers' values (sniroute has one for all)\n"), "{toml}");
}

#[test]
fn dot_wildcard_is_the_name_and_below_but_an_exact_entry_wins_wherever_written() {
    let toml = import(
        "stream {\n map $ssl_preread_server_name $b {\n  hostnames;\n  .example.com u1;\n  example.com u2;\n }\n upstream u1 { server 10.0.0.1:443; }\n upstream u2 { server 10.0.0.2:443; }\n server { listen 443; ssl_preread on; proxy_pass $b; }\n}\n",
    );
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        routes(&toml, 0),
        [pair("example.com", "u2"), pair("*.example.com", "u1")]
    );
    assert!(
        toml.contains("# from .example.com: the name and every name below it (nginx.conf:4)"),
        "{toml}"
    );
}

#[test]
fn tail_wildcards_become_regexes_tried_first_longest_first() {
    let toml = import(
        r"stream {
 map $ssl_preread_server_name $b {
  hostnames;
  ~^www\.  u1;
  www.*  u1;
  www.example.*  u2;
 }
 upstream u1 { server 10.0.0.1:443; }
 upstream u2 { server 10.0.0.2:443; }
 server { listen 443; ssl_preread on; proxy_pass $b; }
}
",
    );
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        routes(&toml, 0),
        [
            pair(r"~^www\.example\..+$", "u2"),
            pair(r"~^www\..+$", "u1"),
            pair(r"~^www\.", "u1"),
        ]
    );
    assert!(
        toml.contains("from www.example.*: sniroute has no trailing wildcards"),
        "{toml}"
    );
}

#[test]
fn case_insensitive_regexes_keep_their_meaning_and_case_sensitive_ones_say_what_changed() {
    let toml = import(
        r"stream {
 map $ssl_preread_server_name $b {
  ~*^GRAFANA\.  u1;
  ~^Upper\.example\.com$  u1;
  ~^argo\.\S+$  u1;
  ~^[A-Za-z]+\.example\.net$  u1;
 }
 upstream u1 { server 10.0.0.1:443; }
 server { listen 443; ssl_preread on; proxy_pass $b; }
}
",
    );
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        routes(&toml, 0),
        [
            pair(r"~(?i)^GRAFANA\.", "u1"),
            pair(r"~^Upper\.example\.com$", "u1"),
            pair(r"~^argo\.\S+$", "u1"),
            pair(r"~^[A-Za-z]+\.example\.net$", "u1"),
        ]
    );
    assert!(
        toml.contains("# ~^Upper\\.example\\.com$ (nginx.conf:4) has upper-case letters"),
        "{toml}"
    );
    assert!(
        toml.contains(
            "# sniroute lowercases names first, so they now also match names sent in upper case"
        ),
        "{toml}"
    );
    // `\S` and `[A-Za-z]` are no upper-case letters to match: no note for them.
    assert_eq!(toml.matches("has upper-case letters").count(), 1, "{toml}");
}

#[test]
fn wildcards_without_hostnames_matched_nothing_in_nginx_and_are_left_out() {
    let toml = import(
        "stream {\n map $ssl_preread_server_name $b {\n  default u1;\n  *.example.com u2;\n  a.example.com u2;\n }\n upstream u1 { server 10.0.0.1:443; }\n upstream u2 { server 10.0.0.2:443; }\n server { listen 443; ssl_preread on; proxy_pass $b; }\n}\n",
    );
    assert_eq!(
        routes(&toml, 0),
        [("a.example.com".to_owned(), "u2".to_owned())]
    );
    assert!(
        toml.contains(
            "# not translated: *.example.com u2 (nginx.conf:4): map without `hostnames;`"
        ),
        "{toml}"
    );
}

#[test]
fn a_literal_address_value_becomes_a_pool_of_one() {
    let toml = import(
        "stream {\n map $ssl_preread_server_name $b {\n  a.example.com 10.0.0.7:443;\n  b.example.com 10.0.0.7:443;\n }\n server { listen 443; ssl_preread on; proxy_pass $b; }\n server { listen 8443; proxy_pass 10.0.0.8:8443; }\n}\n",
    );
    let table: toml::Table = toml::from_str(&toml).unwrap();
    assert_eq!(
        value(&table, &["upstreams", "10.0.0.7:443", "servers"])[0].as_str(),
        Some("10.0.0.7:443")
    );
    assert_eq!(
        value(&table, &["listeners"])[1]["default"].as_str(),
        Some("10.0.0.8:8443")
    );
    assert_eq!(value(&table, &["upstreams"]).as_table().unwrap().len(), 2);
}

#[test]
fn a_map_without_default_leaves_unknown_names_unrouted_and_says_so() {
    let toml = import(
        "stream {\n map $ssl_preread_server_name $b { a.example.com u; }\n upstream u { server 10.0.0.1:443; }\n server { listen 443; ssl_preread on; proxy_pass $b; }\n}\n",
    );
    let table: toml::Table = toml::from_str(&toml).unwrap();
    assert!(value(&table, &["listeners"])[0].get("default").is_none());
    assert!(
        toml.contains(
            "# map $b (nginx.conf:2) has no default: nginx closed connections for names it"
        ),
        "{toml}"
    );
}

#[test]
fn every_untranslated_directive_is_named_with_file_and_line() {
    let plan = plan(
        "user nginx;\nhttp { server { listen 8080; } }\nstream {\n limit_conn_zone $binary_remote_addr zone=c:10m;\n upstream u {\n  random two;\n  server 10.0.0.1:443 max_conns=5;\n  server 10.0.0.2:443 down;\n  server unix:/run/x.sock;\n }\n server {\n  listen 443 ssl proxy_protocol;\n  listen 53 udp;\n  listen app.internal:443;\n  allow 10.0.0.0/8;\n  proxy_protocol on;\n  ssl_certificate /x.pem;\n  proxy_pass u;\n }\n}\n",
    );
    let notes: Vec<&String> = plan
        .all_notes()
        .filter(|n| n.starts_with("not translated"))
        .collect();
    let expected = [
        "not translated: user nginx (nginx.conf:1): outside stream {}",
        "not translated: http {…} (nginx.conf:2): outside stream {}",
        "not translated: limit_conn_zone $binary_remote_addr zone=c:10m (nginx.conf:4)",
        "not translated: allow 10.0.0.0/8 (nginx.conf:15): sniroute has no client address filter: firewall the port instead",
        "not translated: proxy_protocol on (nginx.conf:16): sniroute sends no PROXY protocol header",
        "not translated: ssl_certificate /x.pem (nginx.conf:17)",
        "not translated: listen parameter `ssl` (nginx.conf:12): sniroute never terminates TLS",
        "not translated: listen parameter `proxy_protocol` (nginx.conf:12): sniroute does not accept a PROXY protocol header",
        "not translated: listen 53 udp (nginx.conf:13): sniroute proxies TCP only",
        "not translated: listen app.internal:443 (nginx.conf:14): sniroute binds an IP address and a port",
        "not translated: random two (nginx.conf:6): sniroute balances with least_conn or round_robin only",
        "not translated: server parameter `max_conns=5` of 10.0.0.1:443 (nginx.conf:7)",
        "not translated: server 10.0.0.2:443 down (nginx.conf:8): marked down in nginx, so left out",
        "not translated: server unix:/run/x.sock (nginx.conf:9): sniroute forwards to TCP servers only",
    ];
    for e in expected {
        assert!(
            notes.iter().any(|n| n.starts_with(e)),
            "missing {e:?} in {notes:#?}"
        );
    }
    assert_eq!(notes.len(), expected.len(), "{notes:#?}");
    // And the result still loads: the untranslatable parts are only comments.
    let toml = plan.render();
    crate::config::parse(&toml, Path::new("x.toml")).unwrap();
    assert!(
        toml.contains("\n# not translated: user nginx (nginx.conf:1): outside stream {}\n"),
        "{toml}"
    );
}

#[test]
fn a_server_that_cannot_be_translated_is_emitted_commented_out() {
    let toml = plan(
        "stream {\n upstream u { server 10.0.0.1:443; }\n server { listen 443; ssl_preread on; proxy_pass $ssl_preread_server_name:443; }\n server { listen 8443; proxy_pass u; }\n}\n",
    )
    .render();
    let table: toml::Table = toml::from_str(&toml).unwrap();
    assert_eq!(value(&table, &["listeners"]).as_array().unwrap().len(), 1);
    assert!(
        toml.contains("# [[listeners]]\n# bind = [\"0.0.0.0:443\"]\n"),
        "{toml}"
    );
    assert!(toml.contains("# not translated: proxy_pass $ssl_preread_server_name:443 (nginx.conf:3): the target is not the result of a map"), "{toml}");
}

#[test]
fn a_map_on_another_variable_keeps_only_its_default() {
    let toml = import(
        "stream {\n map $remote_addr $b { default u; 10.0.0.9 v; }\n upstream u { server 10.0.0.1:443; }\n upstream v { server 10.0.0.2:443; }\n server { listen 443; ssl_preread on; proxy_pass $b; }\n}\n",
    );
    let table: toml::Table = toml::from_str(&toml).unwrap();
    assert_eq!(
        value(&table, &["listeners"])[0]["default"].as_str(),
        Some("u")
    );
    assert!(routes(&toml, 0).is_empty());
    assert!(
        toml.contains("# not translated: the entries of map $remote_addr $b (nginx.conf:2)"),
        "{toml}"
    );
}

#[test]
fn a_port_known_for_tls_without_ssl_preread_is_a_tls_listener() {
    let toml = import("stream {\n upstream api { server 10.0.0.1:6443; }\n server { listen 6443; proxy_pass api; }\n}\n");
    assert!(
        squeezed(&toml).contains("protocol = \"tls\" # no ssl_preread: TLS because of the port\n"),
        "{toml}"
    );
}

#[test]
fn servers_with_different_health_settings_take_the_first_and_say_so() {
    let toml = import(
        "stream {\n upstream u {\n  server 10.0.0.1:443 max_fails=2 fail_timeout=30s;\n  server 10.0.0.2:443;\n }\n server { listen 443; proxy_pass u; }\n}\n",
    );
    let table: toml::Table = toml::from_str(&toml).unwrap();
    assert_eq!(
        value(&table, &["upstreams", "u", "max_fails"]).as_integer(),
        Some(2)
    );
    assert_eq!(
        value(&table, &["upstreams", "u", "fail_timeout"]).as_str(),
        Some("30s")
    );
    assert!(
        toml.contains("the others had max_fails=1 fail_timeout=10s at nginx.conf:4"),
        "{toml}"
    );
}

#[test]
fn no_stream_block_is_an_error() {
    let tree = parse_str("events {}\nhttp {}\n", "nginx.conf", Path::new(".")).unwrap();
    let err = translate("nginx.conf", &tree).unwrap_err().to_string();
    assert_eq!(err, "nginx.conf: no `stream {}` block (also none in its includes): sniroute replaces nginx's stream module, so there is nothing to translate");
}
