//! `server {}` → listeners: `listen` and its parameters, `ssl_preread`, and the
//! PROXY header from a balancer in front (`listen ... proxy_protocol`,
//! `set_real_ip_from`).

use super::*;

fn binds(l: &toml::Value) -> Vec<&str> {
    l["bind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect()
}

fn strings(v: &toml::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn listen_addresses_become_binds() {
    let toml = import(&one_server(
        "",
        "  listen *:8443;\n  listen 10.0.0.5:9443;\n  listen [::]:443;\n  listen [2001:db8::1]:4443;\n  listen 443;",
    ));
    assert_eq!(
        binds(&listener(&toml, 0)),
        [
            "0.0.0.0:443",
            "0.0.0.0:8443",
            "10.0.0.5:9443",
            "[::]:443",
            "[2001:db8::1]:4443"
        ]
    );
}

#[test]
fn listen_on_an_address_beside_the_wildcard_of_its_port_is_served_by_the_wildcard() {
    // One server: the wildcard serves that address the same way.
    let text = one_server(
        "",
        "  listen 10.0.0.5:443;\n  listen [::]:443;\n  listen [::1]:443;",
    );
    let toml = import(&text);
    assert_eq!(binds(&listener(&toml, 0)), ["0.0.0.0:443", "[::]:443"]);
    assert_eq!(severity(&text, "10.0.0.5:443"), Severity::Info);
    // Two servers: nginx handed connections to 10.0.0.5 to the second by
    // their destination; sniroute binds the port once, so that is lost.
    let text = "stream {\n upstream u { server 10.0.0.1:443; }\n upstream v { server 10.0.0.2:443; }\n server { listen 443; proxy_pass u; }\n server { listen 10.0.0.5:443; listen 8443; proxy_pass v; }\n}\n";
    let toml = import(text);
    assert_eq!(binds(&listener(&toml, 1)), ["0.0.0.0:8443"]);
    assert_eq!(severity(text, "listen 10.0.0.5:443"), Severity::Lossy);
}

#[test]
fn listen_ssl_is_lossy_and_left_out() {
    let text = one_server("", "  listen 8443 ssl;\n  ssl_certificate /etc/x.pem;");
    let toml = import(&text);
    assert_eq!(binds(&listener(&toml, 0)), ["0.0.0.0:443"]);
    assert_eq!(severity(&text, "listen 8443 ssl"), Severity::Lossy);
    assert!(
        note(&plan(&text), "listen 8443 ssl")
            .text
            .contains("sniroute never\nterminates TLS"),
        "{toml}"
    );
    // The certificate only mattered to the `ssl` listen.
    assert_eq!(severity(&text, "ssl_certificate"), Severity::NotNeeded);
}

#[test]
fn listen_udp_is_lossy_and_left_out() {
    let text = one_server("", "  listen 443 udp;");
    assert_eq!(binds(&listener(&import(&text), 0)), ["0.0.0.0:443"]);
    assert_eq!(severity(&text, "listen 443 udp"), Severity::Lossy);
}

#[test]
fn listen_on_a_unix_socket_or_a_name_is_lossy() {
    let text = one_server("", "  listen unix:/run/x.sock;\n  listen app.internal:443;");
    assert_eq!(binds(&listener(&import(&text), 0)), ["0.0.0.0:443"]);
    assert_eq!(severity(&text, "listen unix:/run/x.sock"), Severity::Lossy);
    assert_eq!(severity(&text, "listen app.internal:443"), Severity::Lossy);
}

#[test]
fn listen_socket_tuning_is_not_needed() {
    let text = one_server(
        "",
        "  listen 8443 reuseport backlog=511 rcvbuf=64k sndbuf=64k so_keepalive=on fastopen=16 deferred setfib=1 accept_filter=dataready bind;",
    );
    assert_eq!(
        binds(&listener(&import(&text), 0)),
        ["0.0.0.0:443", "0.0.0.0:8443"]
    );
    let plan = plan(&text);
    let n = note(&plan, "listen 8443 reuseport");
    assert_eq!(n.severity, Severity::NotNeeded);
    for p in [
        "`reuseport`",
        "`backlog=511`",
        "`so_keepalive=on`",
        "`bind`",
        "`deferred`",
    ] {
        assert!(n.text.contains(p), "{p} in {}", n.text);
    }
}

#[test]
fn listen_ipv6only_off_adds_the_ipv4_bind_and_on_is_the_default() {
    let text = "stream {\n upstream u { server 10.0.0.1:22; }\n server { listen [::]:2222 ipv6only=off; proxy_pass u; }\n server { listen [::]:2223 ipv6only=on; proxy_pass u; }\n}\n";
    let toml = import(text);
    assert_eq!(binds(&listener(&toml, 0)), ["[::]:2222", "0.0.0.0:2222"]);
    assert_eq!(binds(&listener(&toml, 1)), ["[::]:2223"]);
    assert_eq!(severity(text, "ipv6only=off"), Severity::Info);
    assert!(plan(text)
        .all_notes()
        .all(|n| !n.text.contains("ipv6only=on")));
}

#[test]
fn ssl_preread_on_in_the_server_or_the_stream_makes_a_tls_listener() {
    let toml = import("stream {\n ssl_preread on;\n upstream u { server 10.0.0.1:443; }\n server { listen 443; proxy_pass u; }\n server { listen 8443; ssl_preread off; proxy_pass u; }\n}\n");
    assert_eq!(listener(&toml, 0)["protocol"].as_str(), Some("tls"));
    assert!(
        squeezed(&toml).contains("protocol = \"tls\" # ssl_preread on (nginx.conf:2)"),
        "{toml}"
    );
    assert_eq!(listener(&toml, 1)["protocol"].as_str(), Some("tcp"));
}

#[test]
fn without_ssl_preread_a_server_is_a_tcp_listener_whatever_its_port() {
    // SSH and SMTP servers speak first; on 443 and 6443 nginx forwarded
    // whatever came, TLS or not. None of them may wait for a client hello.
    for port in [22, 25, 80, 443, 6443, 8443] {
        let text = format!("stream {{\n upstream u {{ server 10.0.0.1:{port}; }}\n server {{ listen {port}; proxy_pass u; }}\n}}\n");
        let toml = import(&text);
        let l = listener(&toml, 0);
        assert_eq!(l["protocol"].as_str(), Some("tcp"), "{toml}");
        assert_eq!(l["default"].as_str(), Some("u"));
        assert!(l.get("routes").is_none());
        assert!(plan(&text).all_notes().next().is_none(), "{toml}");
    }
}

#[test]
fn a_name_map_on_a_tcp_listener_keeps_its_default_as_nginx_did() {
    let text = "stream {\n map $ssl_preread_server_name $b { default u; a.example.com v; }\n upstream u { server 10.0.0.1:22; }\n upstream v { server 10.0.0.2:22; }\n server { listen 22; proxy_pass $b; }\n}\n";
    let l = listener(&import(text), 0);
    assert_eq!(l["protocol"].as_str(), Some("tcp"));
    assert_eq!(l["default"].as_str(), Some("u"));
    assert_eq!(
        severity(text, "nginx never saw a name here"),
        Severity::Info
    );
}

#[test]
fn listen_proxy_protocol_with_set_real_ip_from_accepts_the_header_from_those_only() {
    // Stream-level set_real_ip_from applies where a server has none of its own;
    // a server's own list replaces it.
    let text = "stream {\n set_real_ip_from 10.0.0.0/8;\n set_real_ip_from 2001:db8::/32;\n upstream u { server 10.0.0.1:443; }\n server { listen 443 proxy_protocol; ssl_preread on; proxy_pass u; }\n server { listen 8443 proxy_protocol; set_real_ip_from 192.0.2.7; set_real_ip_from unix:; proxy_pass u; }\n}\n";
    let toml = import(text);
    let l = listener(&toml, 0);
    assert_eq!(l["accept_proxy_protocol"].as_bool(), Some(true));
    assert_eq!(
        strings(&l["proxy_protocol_from"]),
        ["10.0.0.0/8", "2001:db8::/32"]
    );
    let l = listener(&toml, 1);
    assert_eq!(strings(&l["proxy_protocol_from"]), ["192.0.2.7"]);
    assert_eq!(
        severity(text, "set_real_ip_from unix:"),
        Severity::NotNeeded
    );
    // Not lossy: only the documented refusal of sources nginx did not trust.
    assert!(plan(text)
        .all_notes()
        .all(|n| n.severity != Severity::Lossy));
    assert_eq!(severity(text, "reason=proxy_source"), Severity::Info);
}

#[test]
fn listen_proxy_protocol_without_set_real_ip_from_is_lossy_and_commented_out() {
    let text = "stream {\n upstream u { server 10.0.0.1:443; }\n server { listen 443 proxy_protocol; ssl_preread on; proxy_pass u; }\n}\n";
    let toml = plan(text).render();
    let table: toml::Table = toml::from_str(&toml).unwrap();
    assert!(table.get("listeners").is_none(), "{toml}");
    assert!(
        squeezed(&toml).contains("# accept_proxy_protocol = true # listen ... proxy_protocol (nginx.conf:3)\n# proxy_protocol_from = [] #"),
        "{toml}"
    );
    assert_eq!(severity(text, "without set_real_ip_from"), Severity::Lossy);
}

#[test]
fn set_real_ip_from_a_name_is_lossy() {
    let text = "stream {\n upstream u { server 10.0.0.1:443; }\n server { listen 443 proxy_protocol; set_real_ip_from lb.example.net; set_real_ip_from 10.0.0.7; proxy_pass u; }\n}\n";
    let toml = import(text);
    assert_eq!(
        strings(&listener(&toml, 0)["proxy_protocol_from"]),
        ["10.0.0.7"]
    );
    assert_eq!(
        severity(text, "set_real_ip_from lb.example.net"),
        Severity::Lossy
    );
}

#[test]
fn set_real_ip_from_without_listen_proxy_protocol_is_not_needed() {
    let text = one_server(
        "  set_real_ip_from 10.0.0.0/8;",
        "  set_real_ip_from 192.0.2.0/24;",
    );
    let toml = import(&text);
    assert!(listener(&toml, 0).get("accept_proxy_protocol").is_none());
    assert_eq!(
        severity(&text, "set_real_ip_from 10.0.0.0/8"),
        Severity::NotNeeded
    );
    assert_eq!(
        severity(&text, "set_real_ip_from 192.0.2.0/24"),
        Severity::NotNeeded
    );
}

#[test]
fn listen_proxy_protocol_on_some_addresses_only_splits_the_listener() {
    let text = "stream {\n set_real_ip_from 10.0.0.0/8;\n map $ssl_preread_server_name $b { a.example.com u; }\n upstream u { server 10.0.0.1:443; }\n server { listen 443; listen 10.0.0.9:8443 proxy_protocol; ssl_preread on; proxy_pass $b; }\n}\n";
    let toml = import(text);
    let (plain, proxied) = (listener(&toml, 0), listener(&toml, 1));
    assert_eq!(binds(&plain), ["0.0.0.0:443"]);
    assert!(plain.get("accept_proxy_protocol").is_none());
    assert_eq!(binds(&proxied), ["10.0.0.9:8443"]);
    assert_eq!(proxied["accept_proxy_protocol"].as_bool(), Some(true));
    assert_eq!(routes(&toml, 0), routes(&toml, 1));
}

#[test]
fn a_server_without_a_usable_listen_or_proxy_pass_is_commented_out() {
    let text = "stream {\n upstream u { server 10.0.0.1:443; }\n server { listen 53 udp; proxy_pass u; }\n server { listen 8443; return \"hi\"; }\n}\n";
    let toml = plan(text).render();
    let table: toml::Table = toml::from_str(&toml).unwrap();
    assert!(table.get("listeners").is_none(), "{toml}");
    assert_eq!(severity(text, "return hi"), Severity::Lossy);
    assert_eq!(severity(text, "no proxy_pass"), Severity::Info);
}
