//! `http {}`: a server that only redirects to https becomes a listener with
//! `redirect_https`; everything else there is a note.

use super::*;

fn with_http(http: &str) -> String {
    format!("http {{\n{http}\n}}\n{}", one_server("", ""))
}

/// The import's listener with `redirect_https`, if any.
fn redirect_listener(toml: &str) -> Option<toml::Value> {
    let table: toml::Table = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    table
        .get("listeners")?
        .as_array()?
        .iter()
        .find(|l| l.get("redirect_https").is_some())
        .cloned()
}

#[test]
fn an_http_server_that_only_redirects_to_https_is_named_as_a_redirect_https_listener() {
    let text = with_http(
        "  server {\n    listen 80 default_server;\n    listen [::]:80 default_server;\n    server_name _;\n    access_log off;\n    return 301 https://$host$request_uri;\n  }",
    );
    let toml = import(&text);
    let l = redirect_listener(&toml).unwrap_or_else(|| panic!("{toml}"));
    assert_eq!(l["bind"][0].as_str(), Some("0.0.0.0:80"));
    assert_eq!(l["bind"][1].as_str(), Some("[::]:80"));
    assert_eq!(l["protocol"].as_str(), Some("http"));
    assert_eq!(l["redirect_https"].as_bool(), Some(true));
    let plan = plan(&text);
    let n = note(&plan, "only redirects to https");
    assert_eq!(n.severity, Severity::Info);
    assert!(n.text.contains("`redirect_https = true`"), "{}", n.text);
    // Nothing about the redirect is lost: the config is usable as it is.
    let config = crate::config::parse_offline(&toml, std::path::Path::new("t.toml"));
    assert!(config.is_ok(), "{config:?}\n{toml}");
    assert_eq!(note(&plan, "nginx answered 301").severity, Severity::Info);
}

#[test]
fn redirects_by_rewrite_in_a_location_or_to_the_server_name_are_recognised() {
    for (server, server_name_note) in [
        ("listen 80; rewrite ^ https://$host$request_uri? permanent;", false),
        ("listen 80; rewrite ^(.*)$ https://$host$1 redirect;", false),
        ("listen 80; location / { return 308 https://$host$request_uri; }", false),
        ("listen 10.0.0.5; server_name a.example.com b.example.com; return 302 https://$server_name$request_uri;", true),
    ] {
        let text = with_http(&format!("  server {{ {server} }}"));
        let toml = import(&text);
        let l = redirect_listener(&toml).unwrap_or_else(|| panic!("{server}\n{toml}"));
        assert_eq!(l["redirect_https"].as_bool(), Some(true), "{server}");
        let plan = plan(&text);
        assert_eq!(
            plan.all_notes().any(|n| n.text.contains("redirected to its first server_name")),
            server_name_note,
            "{server}"
        );
        if server_name_note {
            assert_eq!(l["bind"][0].as_str(), Some("10.0.0.5:80"), "{server}");
        }
    }
}

#[test]
fn an_http_server_that_does_more_is_lossy_and_http_settings_are_not_needed() {
    for server in [
        "listen 80; location /.well-known/acme-challenge/ { root /var/www; } location / { return 301 https://$host$request_uri; }",
        "listen 80; return 301 http://www.example.com$request_uri;",
        "listen 80; return 301 https://$host;",
        "listen 443 ssl; return 301 https://$host$request_uri;",
        "listen 80; location / { proxy_pass http://10.0.0.1; }",
    ] {
        let text = with_http(&format!("  sendfile on;\n  server {{ {server} }}"));
        let toml = import(&text);
        assert!(redirect_listener(&toml).is_none(), "{server}\n{toml}");
        assert_eq!(severity(&text, "server {…} (nginx.conf:3)"), Severity::Lossy, "{server}");
        assert_eq!(severity(&text, "http {…} (nginx.conf:1)"), Severity::NotNeeded);
    }
}
