//! Timeouts and limits: one value for all listeners.

use super::*;

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
fn a_zero_timeout_keeps_sniroutes_default_and_says_so() {
    let text = one_server("", "  proxy_timeout 0;");
    let toml = import(&text);
    assert!(!toml.contains("idle ="), "{toml}");
    assert_eq!(severity(&text, "proxy_timeout 0"), Severity::Info);
}

const PER_IP: &str = " limit_conn_zone $binary_remote_addr zone=perip:10m;\n";

#[test]
fn limit_conn_on_every_listener_becomes_max_connections_per_ip() {
    let text = format!("stream {{\n{PER_IP} limit_conn perip 20;\n upstream u {{ server 10.0.0.1:443; }}\n server {{ listen 443; proxy_pass u; }}\n server {{ listen 22; proxy_pass u; }}\n}}\n");
    let toml = import(&text);
    assert!(
        squeezed(&toml).contains("max_connections_per_ip = 20 # limit_conn perip 20 (nginx.conf:3), zone keyed by $binary_remote_addr (nginx.conf:2)\n"),
        "{toml}"
    );
    assert!(plan(&text).all_notes().next().is_none());
}

#[test]
fn limit_conn_that_differs_between_listeners_or_counts_another_key_is_lossy() {
    let differ = format!("stream {{\n{PER_IP} upstream u {{ server 10.0.0.1:443; }}\n server {{ listen 443; proxy_pass u; limit_conn perip 20; }}\n server {{ listen 22; proxy_pass u; }}\n}}\n");
    assert!(!import(&differ).contains("max_connections_per_ip ="));
    assert_eq!(severity(&differ, "limit_conn perip 20"), Severity::Lossy);

    let per_server = one_server(
        " limit_conn_zone $server_addr zone=total:1m;",
        "  limit_conn total 1000;",
    );
    assert!(!import(&per_server).contains("max_connections_per_ip ="));
    assert!(note(&plan(&per_server), "limit_conn total 1000")
        .text
        .contains("counts by another key"));
}

#[test]
fn limit_conn_dry_run_log_level_and_unused_zones_are_not_needed() {
    let text = one_server(
        PER_IP,
        "  limit_conn perip 5;\n  limit_conn_dry_run on;\n  limit_conn_log_level warn;",
    );
    assert!(!import(&text).contains("max_connections_per_ip ="));
    assert_eq!(severity(&text, "limit_conn perip 5"), Severity::NotNeeded);
    assert_eq!(
        severity(&text, "limit_conn_log_level warn"),
        Severity::NotNeeded
    );
    assert_eq!(
        severity(&one_server(PER_IP, ""), "zone=perip:10m"),
        Severity::NotNeeded
    );
}
