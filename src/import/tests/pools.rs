//! Upstreams and targets → pools; `proxy_protocol on` → the pools' header.

use super::*;

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
fn a_down_server_is_left_out_as_nginx_sends_it_nothing() {
    let text = "stream {\n upstream u { server 10.0.0.1:443; server 10.0.0.2:443 down; }\n server { listen 443; proxy_pass u; }\n}\n";
    let table: toml::Table = toml::from_str(&import(text)).unwrap();
    assert_eq!(
        value(&table, &["upstreams", "u", "servers"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(severity(text, "10.0.0.2:443 down"), Severity::Info);
}

#[test]
fn server_max_conns_resolve_and_slow_start_are_not_needed() {
    let text = "stream {\n upstream u { server node1.lan:443 max_conns=100 resolve; server 10.0.0.2:443 slow_start=30s; }\n server { listen 443; proxy_pass u; }\n}\n";
    let plan = plan(text);
    for p in ["`max_conns=100`", "`resolve`", "`slow_start=30s`"] {
        assert_eq!(note(&plan, p).severity, Severity::NotNeeded, "{p}");
    }
}

#[test]
fn upstream_servers_on_unix_sockets_and_unknown_parameters_are_lossy() {
    let text = "stream {\n upstream u { server 10.0.0.1:443 service=_https._tcp; server unix:/run/x.sock; }\n server { listen 443; proxy_pass u; }\n}\n";
    assert_eq!(severity(text, "`service=_https._tcp`"), Severity::Lossy);
    assert_eq!(severity(text, "server unix:/run/x.sock"), Severity::Lossy);
}

#[test]
fn hash_is_lossy_since_clients_lose_their_server() {
    let text = "stream {\n upstream u { hash $remote_addr consistent; server 10.0.0.1:443; }\n server { listen 443; proxy_pass u; }\n}\n";
    let table: toml::Table = toml::from_str(&import(text)).unwrap();
    assert_eq!(
        value(&table, &["upstreams", "u", "balance"]).as_str(),
        Some("least_conn")
    );
    assert_eq!(
        severity(text, "hash $remote_addr consistent"),
        Severity::Lossy
    );
}

#[test]
fn random_and_least_time_are_not_needed_least_conn_balances() {
    for method in ["random two least_conn", "least_time connect"] {
        let text = format!("stream {{\n upstream u {{ {method}; server 10.0.0.1:443; }}\n server {{ listen 443; proxy_pass u; }}\n}}\n");
        let table: toml::Table = toml::from_str(&import(&text)).unwrap();
        assert_eq!(
            value(&table, &["upstreams", "u", "balance"]).as_str(),
            Some("least_conn")
        );
        assert_eq!(severity(&text, method), Severity::NotNeeded);
    }
}

#[test]
fn zone_and_resolver_in_an_upstream_are_not_needed() {
    let text = "stream {\n upstream u { zone u 64k; resolver 127.0.0.53; server 10.0.0.1:443; }\n server { listen 443; proxy_pass u; }\n}\n";
    assert_eq!(severity(text, "zone u 64k"), Severity::NotNeeded);
    assert_eq!(severity(text, "resolver 127.0.0.53"), Severity::NotNeeded);
}

#[test]
fn proxy_protocol_on_sends_v1_from_the_pools_of_those_servers() {
    let text = "stream {\n map $ssl_preread_server_name $b { a.example.com a; default d; }\n upstream a { server 10.0.0.1:443; }\n upstream d { server 10.0.0.2:443; }\n upstream other { server 10.0.0.3:443; }\n server { listen 443; ssl_preread on; proxy_pass $b; proxy_protocol on; }\n}\n";
    let toml = import(text);
    let table: toml::Table = toml::from_str(&toml).unwrap();
    for pool in ["a", "d"] {
        assert_eq!(
            value(&table, &["upstreams", pool, "proxy_protocol"]).as_str(),
            Some("v1"),
            "{toml}"
        );
    }
    assert!(value(&table, &["upstreams", "other"])
        .get("proxy_protocol")
        .is_none());
    assert!(
        squeezed(&toml).contains("proxy_protocol = \"v1\" # proxy_protocol on (nginx.conf:6)\n"),
        "{toml}"
    );
    assert!(plan(text).all_notes().next().is_none());
}

#[test]
fn a_pool_used_with_and_without_proxy_protocol_is_split() {
    // Stream-level `on`, one server back to `off`; a literal target too.
    let text = "stream {\n proxy_protocol on;\n upstream web { server 10.0.0.1:443; }\n server { listen 443; proxy_pass web; }\n server { listen 8443; proxy_pass web; proxy_protocol off; }\n server { listen 9443; proxy_pass 10.0.0.9:443; }\n server { listen 9444; proxy_pass 10.0.0.9:443; proxy_protocol off; }\n}\n";
    let toml = import(text);
    let table: toml::Table = toml::from_str(&toml).unwrap();
    let pool = |i: usize| listener(&toml, i)["default"].as_str().unwrap().to_owned();
    assert_eq!(
        [pool(0), pool(1), pool(2), pool(3)],
        [
            "web_proxy_protocol",
            "web",
            "10.0.0.9:443_proxy_protocol",
            "10.0.0.9:443"
        ]
    );
    assert!(value(&table, &["upstreams", "web"])
        .get("proxy_protocol")
        .is_none());
    let copy = value(&table, &["upstreams", "web_proxy_protocol"]);
    assert_eq!(copy["proxy_protocol"].as_str(), Some("v1"));
    assert_eq!(copy["servers"][0].as_str(), Some("10.0.0.1:443"));
    assert!(
        squeezed(&toml).contains(
            "# from upstream web (nginx.conf:3), for the servers with proxy_protocol on\n"
        ),
        "{toml}"
    );
}
