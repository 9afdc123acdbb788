//! `proxy_pass` and `map $ssl_preread_server_name` → routes and defaults.

use super::*;

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
        toml.contains("# not needed: *.example.com u2 (nginx.conf:4): map without `hostnames;`"),
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
fn a_map_on_another_variable_keeps_only_its_default_and_is_lossy() {
    let text = "stream {\n map $remote_addr $b { default u; 10.0.0.9 v; }\n upstream u { server 10.0.0.1:443; }\n upstream v { server 10.0.0.2:443; }\n server { listen 443; ssl_preread on; proxy_pass $b; }\n}\n";
    let toml = import(text);
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
    assert_eq!(severity(text, "the entries of map"), Severity::Lossy);
}
