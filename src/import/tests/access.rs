//! `allow` / `deny`: nginx's first-match list against sniroute's "in allow (or
//! no allow) and not in deny". Each shape of list is checked here, and a
//! property test compares both, address by address, against an oracle that
//! evaluates nginx's list the way nginx does.

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;
use crate::access::{parse_net, Access};

/// The nginx config: one TCP server with `rules` in it (one `allow`/`deny`
/// per line, without the `;`).
fn config(rules: &[&str]) -> String {
    let rules: String = rules.iter().map(|r| format!("  {r};\n")).collect();
    format!("stream {{\n upstream u {{ server 10.0.0.1:22; }}\n server {{\n  listen 22;\n  proxy_pass u;\n{rules} }}\n}}\n")
}

/// What the import made of `rules`: (allow, deny, notes).
fn translated(rules: &[&str]) -> (Vec<String>, Vec<String>, Vec<Note>) {
    let plan = plan(&config(rules));
    let l = &plan.listeners[0];
    let list = |key: &str| -> Vec<String> {
        let Some(s) = l.settings.iter().find(|s| s.key == key) else {
            return Vec::new();
        };
        let t: toml::Table = toml::from_str(&format!("v = {}", s.value)).unwrap();
        t["v"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    (
        list("allow"),
        list("deny"),
        plan.all_notes().cloned().collect(),
    )
}

/// nginx's verdict, evaluated directly: the first rule that matches decides,
/// `unix:` matches no TCP client, and no match admits.
fn nginx_admits(rules: &[&str], client: IpAddr) -> bool {
    for rule in rules {
        let (action, who) = rule.split_once(' ').unwrap();
        let matches = match who {
            "all" => true,
            "unix:" => false,
            net => net
                .parse::<IpNet>()
                .unwrap_or_else(|_| IpNet::from(net.parse::<IpAddr>().unwrap()))
                .contains(&client),
        };
        if matches {
            return action == "allow";
        }
    }
    true
}

/// sniroute's verdict with the translated lists, through its own `Access`.
fn sniroute_admits(allow: &[String], deny: &[String], client: IpAddr) -> bool {
    let nets = |l: &[String]| l.iter().map(|n| parse_net(n).unwrap()).collect();
    Access::new(nets(allow), nets(deny)).is_none_or(|a| a.admits(client))
}

fn lossy(notes: &[Note]) -> Vec<&Note> {
    notes
        .iter()
        .filter(|n| n.severity == Severity::Lossy)
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn only_denies_carry_over_exactly() {
    let (allow, deny, notes) = translated(&["deny 192.0.2.66", "deny 10.0.0.0/8"]);
    assert!(allow.is_empty());
    assert_eq!(strs(&deny), ["192.0.2.66", "10.0.0.0/8"]);
    assert!(lossy(&notes).is_empty(), "{notes:#?}");
}

#[test]
fn denies_then_allows_then_deny_all_carry_over_exactly() {
    let rules = [
        "deny 10.0.0.66",
        "allow 10.0.0.0/24",
        "allow 2001:db8::/32",
        "deny all",
    ];
    let (allow, deny, notes) = translated(&rules);
    assert_eq!(strs(&allow), ["10.0.0.0/24", "2001:db8::/32"]);
    assert_eq!(strs(&deny), ["10.0.0.66"]);
    assert!(lossy(&notes).is_empty(), "{notes:#?}");
    let toml = import(&config(&rules));
    assert!(
        squeezed(&toml).contains("allow = [\"10.0.0.0/24\", \"2001:db8::/32\"] # allow/deny (nginx.conf:6-9): the same clients as in nginx\n"),
        "{toml}"
    );
}

#[test]
fn allows_then_deny_all_carry_over_exactly_for_both_families() {
    let rules = ["allow 10.0.0.0/8", "deny all"];
    let (allow, deny, notes) = translated(&rules);
    assert_eq!(strs(&allow), ["10.0.0.0/8"]);
    assert!(deny.is_empty());
    assert!(lossy(&notes).is_empty());
    // An IPv6 client meets `deny all` in nginx and an allow list without it here.
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert!(!nginx_admits(&rules, v6));
    assert!(!sniroute_admits(&allow, &deny, v6));
}

#[test]
fn deny_all_alone_denies_everyone() {
    let (allow, deny, notes) = translated(&["deny 10.0.0.1", "deny all"]);
    assert!(allow.is_empty());
    assert_eq!(strs(&deny), ["0.0.0.0/0", "::/0"]);
    assert!(lossy(&notes).is_empty());
}

#[test]
fn allow_all_admits_everyone_else_and_ends_the_list() {
    let (allow, deny, notes) = translated(&["deny 10.0.0.1", "allow all", "deny 10.0.0.2"]);
    assert!(allow.is_empty());
    assert_eq!(strs(&deny), ["10.0.0.1"]);
    assert!(lossy(&notes).is_empty());
    let plan = plan(&config(&["deny 10.0.0.1", "allow all", "deny 10.0.0.2"]));
    let n = note(&plan, "deny 10.0.0.2");
    assert_eq!(n.severity, Severity::NotNeeded);
    assert!(
        n.text.contains("no client reaches it in nginx"),
        "{}",
        n.text
    );
    // `allow all` alone restricts nothing: no lists at all.
    let (allow, deny, _) = translated(&["allow all"]);
    assert!(allow.is_empty() && deny.is_empty());
}

#[test]
fn a_deny_inside_an_earlier_allow_never_decides_and_is_dropped() {
    let (allow, deny, notes) = translated(&["allow 10.0.0.0/8", "deny 10.1.0.0/16", "deny all"]);
    assert_eq!(strs(&allow), ["10.0.0.0/8"]);
    assert!(deny.is_empty(), "{deny:?}");
    assert!(lossy(&notes).is_empty(), "{notes:#?}");
}

#[test]
fn a_deny_over_an_earlier_allow_is_lossy_and_names_what_nginx_admitted() {
    let (allow, deny, notes) = translated(&["allow 10.1.0.0/16", "deny 10.0.0.0/8"]);
    assert!(allow.is_empty());
    assert_eq!(strs(&deny), ["10.0.0.0/8"]);
    let lossy = lossy(&notes);
    assert_eq!(lossy.len(), 1, "{notes:#?}");
    assert!(lossy[0].text.starts_with("not translated exactly: allow/deny (nginx.conf:6-7): nginx admitted 10.1.0.0/16 through an allow"), "{}", lossy[0].text);

    let rules = [
        "allow 10.1.2.3",
        "deny 10.0.0.0/8",
        "allow 10.0.0.0/8",
        "deny all",
    ];
    let (allow, deny, notes) = translated(&rules);
    assert_eq!(
        (strs(&allow), strs(&deny)),
        (vec!["10.1.2.3"], vec!["10.0.0.0/8"])
    );
    assert!(note_text(&notes).contains("nginx admitted 10.1.2.3 through an allow"));
}

fn note_text(notes: &[Note]) -> String {
    notes
        .iter()
        .map(|n| n.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn unix_rules_match_no_tcp_client_and_are_not_needed() {
    let rules = ["allow unix:", "deny all"];
    let (allow, deny, notes) = translated(&rules);
    assert!(allow.is_empty());
    assert_eq!(strs(&deny), ["0.0.0.0/0", "::/0"]);
    assert!(lossy(&notes).is_empty());
    assert_eq!(
        severity(&config(&rules), "allow unix:"),
        Severity::NotNeeded
    );
}

#[test]
fn ipv4_mapped_rules_and_bad_rules_are_lossy() {
    let rules = ["deny ::ffff:10.0.0.0/104", "allow 10.0.0.300"];
    assert_eq!(
        severity(&config(&rules), "deny ::ffff:10.0.0.0/104"),
        Severity::Lossy
    );
    assert_eq!(
        severity(&config(&rules), "allow 10.0.0.300"),
        Severity::Lossy
    );
}

#[test]
fn a_servers_own_rules_replace_the_streams() {
    let text = "stream {\n deny 10.0.0.1;\n upstream u { server 10.0.0.1:22; }\n server { listen 22; proxy_pass u; }\n server { listen 23; proxy_pass u; allow 10.0.0.0/8; deny all; }\n}\n";
    let toml = import(text);
    let (a, b) = (listener(&toml, 0), listener(&toml, 1));
    assert_eq!(a["deny"][0].as_str(), Some("10.0.0.1"));
    assert!(a.get("allow").is_none());
    assert_eq!(b["allow"][0].as_str(), Some("10.0.0.0/8"));
    assert!(
        b.get("deny").is_none(),
        "the stream's deny does not add to the server's list"
    );
}

/// A rule over a small space: IPv4 blocks in 10.0.0.0/28, IPv6 in fd00::/124.
fn rule() -> impl Strategy<Value = String> {
    let who = prop_oneof![
        Just("all".to_owned()),
        Just("unix:".to_owned()),
        (0u8..16, 28u8..=32).prop_map(|(a, p)| format!("10.0.0.{a}/{p}")),
        (0u8..16, 124u8..=128).prop_map(|(a, p)| format!("fd00::{a:x}/{p}")),
    ];
    (any::<bool>(), who)
        .prop_map(|(allow, who)| format!("{} {who}", if allow { "allow" } else { "deny" }))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_lists_never_admit_a_client_nginx_refused_and_say_when_they_refuse_one_it_admitted(
        rules in proptest::collection::vec(rule(), 0..7)
    ) {
        let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
        let (allow, deny, notes) = translated(&rules);
        let exact = lossy(&notes).is_empty();
        let clients = (0..18u8)
            .map(|a| IpAddr::from([10, 0, 0, a]))
            .chain((0..18u16).map(|a| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, a])))
            .chain(["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()]);
        for client in clients {
            let (nginx, sniroute) = (nginx_admits(&rules, client), sniroute_admits(&allow, &deny, client));
            prop_assert!(nginx || !sniroute, "{client} admitted by sniroute only: {rules:?} -> {allow:?} {deny:?}");
            prop_assert!(!exact || nginx == sniroute, "{client}: nginx {nginx}, sniroute {sniroute}, no lossy note: {rules:?} -> {allow:?} {deny:?}");
        }
    }
}
