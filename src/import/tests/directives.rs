//! Directives sniroute has no key for: which are not needed and which make the
//! import lossy, one test per row of README's table, and that every one of them
//! is named with its file and line.

use super::*;

/// Asserts that each directive (written inside a stream server) gets a note of
/// `expected` severity.
fn in_server(directives: &[&str], expected: Severity) {
    let inside: String = directives.iter().map(|d| format!("  {d};\n")).collect();
    let text = one_server("", &inside);
    import(&text);
    for d in directives {
        assert_eq!(
            severity(&text, &format!("{d} (nginx.conf:")),
            expected,
            "{d}"
        );
    }
}

#[test]
fn logging_directives_are_not_needed() {
    in_server(
        &[
            "error_log /var/log/nginx/stream.log",
            "access_log /var/log/nginx/stream-access.log basic",
            "open_log_file_cache off",
        ],
        Severity::NotNeeded,
    );
    let text = one_server("  log_format basic '$remote_addr $status';", "");
    assert_eq!(severity(&text, "log_format basic"), Severity::NotNeeded);
}

#[test]
fn tcp_nodelay_is_not_needed() {
    in_server(&["tcp_nodelay on"], Severity::NotNeeded);
}

#[test]
fn hash_table_sizes_and_map_volatile_are_not_needed() {
    let text = "stream {\n variables_hash_max_size 2048;\n variables_hash_bucket_size 128;\n map_hash_max_size 4096;\n map_hash_bucket_size 128;\n map $ssl_preread_server_name $b { volatile; default u; }\n upstream u { server 10.0.0.1:443; }\n server { listen 443; ssl_preread on; proxy_pass $b; }\n}\n";
    import(text);
    for d in [
        "variables_hash_max_size",
        "variables_hash_bucket_size",
        "map_hash_max_size",
        "map_hash_bucket_size",
        "volatile",
    ] {
        assert_eq!(severity(text, d), Severity::NotNeeded, "{d}");
    }
}

#[test]
fn resolver_is_not_needed() {
    in_server(
        &["resolver 127.0.0.53 valid=30s", "resolver_timeout 5s"],
        Severity::NotNeeded,
    );
}

#[test]
fn proxy_buffers_rates_keepalive_and_half_close_are_not_needed() {
    in_server(
        &[
            "proxy_buffer_size 32k",
            "proxy_download_rate 1m",
            "proxy_upload_rate 1m",
            "proxy_socket_keepalive on",
            "proxy_half_close on",
        ],
        Severity::NotNeeded,
    );
}

#[test]
fn proxy_next_upstream_is_not_needed() {
    in_server(
        &[
            "proxy_next_upstream on",
            "proxy_next_upstream_tries 3",
            "proxy_next_upstream_timeout 10s",
        ],
        Severity::NotNeeded,
    );
}

#[test]
fn proxy_responses_and_requests_are_not_needed_they_are_udp_only() {
    in_server(
        &["proxy_responses 1", "proxy_requests 1"],
        Severity::NotNeeded,
    );
}

#[test]
fn proxy_protocol_timeout_is_not_needed() {
    in_server(&["proxy_protocol_timeout 10s"], Severity::NotNeeded);
}

#[test]
fn proxy_bind_is_lossy() {
    in_server(&["proxy_bind $remote_addr transparent"], Severity::Lossy);
}

#[test]
fn proxy_ssl_on_is_lossy_and_its_settings_are_not_needed() {
    in_server(&["proxy_ssl on"], Severity::Lossy);
    in_server(
        &[
            "proxy_ssl off",
            "proxy_ssl_verify on",
            "proxy_ssl_server_name on",
            "proxy_ssl_certificate /x.pem",
        ],
        Severity::NotNeeded,
    );
}

#[test]
fn ssl_settings_for_a_terminating_listen_are_not_needed() {
    in_server(
        &[
            "ssl_certificate /x.pem",
            "ssl_certificate_key /x.key",
            "ssl_protocols TLSv1.2 TLSv1.3",
            "ssl_handshake_timeout 10s",
        ],
        Severity::NotNeeded,
    );
}

#[test]
fn return_geo_split_clients_js_server_name_and_unknown_directives_are_lossy() {
    in_server(
        &[
            "server_name a.example.com",
            "js_preread main.preread",
            "some_module_directive x",
        ],
        Severity::Lossy,
    );
    let text = one_server(
        "  geo $blocked { default 0; 10.0.0.0/8 1; }\n  split_clients $remote_addr $half { 50% a; * b; }\n  js_import main.js;",
        "",
    );
    for d in ["geo $blocked", "split_clients", "js_import"] {
        assert_eq!(severity(&text, d), Severity::Lossy, "{d}");
    }
}

#[test]
fn directives_outside_stream_are_not_needed_but_mail_is_lossy() {
    let text = format!(
        "user www-data;\nworker_processes auto;\npid /run/nginx.pid;\nload_module modules/ngx_stream_module.so;\nevents {{ worker_connections 768; }}\nmail {{ server {{ listen 25; }} }}\n{}",
        one_server("", "")
    );
    for d in [
        "user www-data",
        "worker_processes auto",
        "pid /run/nginx.pid",
        "load_module",
        "events {…}",
    ] {
        assert_eq!(severity(&text, d), Severity::NotNeeded, "{d}");
    }
    assert_eq!(severity(&text, "mail {…}"), Severity::Lossy);
}

#[test]
fn every_directive_not_carried_over_is_a_comment_and_a_warning_with_its_file_and_line() {
    let text = "user nginx;\nstream {\n upstream u {\n  random two;\n  server 10.0.0.1:443 max_conns=5;\n }\n server {\n  listen 443 ssl;\n  listen 8443;\n  proxy_bind 10.0.0.9;\n  proxy_pass u;\n }\n}\n";
    let plan = plan(text);
    let warnings: Vec<String> = plan.all_notes().filter_map(Note::warning).collect();
    let expected = [
        "not needed: user nginx (nginx.conf:1)",
        "not needed: random two (nginx.conf:4)",
        "not needed: server 10.0.0.1:443 max_conns=5 (nginx.conf:5)",
        "not translated: listen 443 ssl (nginx.conf:8)",
        "not translated: proxy_bind 10.0.0.9 (nginx.conf:10)",
    ];
    for e in expected {
        assert!(
            warnings.iter().any(|w| w.starts_with(e)),
            "missing {e:?} in {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), expected.len(), "{warnings:#?}");
    let toml = plan.render();
    crate::config::parse(&toml, Path::new("x.toml")).unwrap();
    for e in expected {
        assert!(toml.contains(&format!("\n# {e}")), "{e} in\n{toml}");
    }
    assert!(
        toml.contains("# This import is lossy: 2 \"not translated\" comment(s).\n"),
        "{toml}"
    );
}
