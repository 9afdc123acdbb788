//! The alert rules and the dashboard the package ships: `promtool` checks the
//! rules and runs their unit tests (`tests/fixtures/prometheus-alerts-test.yml`),
//! every alert has a case where it fires and one where it does not, every
//! metric and label value the rules and the dashboard name is one that a
//! running sniroute exports, `promtool check metrics` accepts a scrape, the
//! dashboard's panels tile its grid, and the health-check and certificate
//! panels' queries give the expected values on sample series.
//!
//! promtool comes with Prometheus (Debian/Ubuntu: `apt-get install
//! --no-install-recommends prometheus`). Without it these tests fail: they
//! never pass having checked nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/prometheus-alerts.yml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/prometheus-alerts-test.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/grafana-dashboard.json"
);

/// Runs promtool with `input` on its stdin; returns whether it succeeded, and
/// its stdout followed by its stderr.
fn promtool(args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install it with `apt-get install --no-install-recommends prometheus`"
            )
        });
    // Small enough for the pipe: written whole before the output is read.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The alert names of the rules file, in file order.
fn alerts() -> Vec<String> {
    std::fs::read_to_string(RULES)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn promtool_checks_the_rules() {
    let (ok, out) = promtool(&["check", "rules", RULES], "");
    let n = alerts().len();
    assert!(ok, "{out}");
    assert_eq!(
        out,
        format!("Checking {RULES}\n  SUCCESS: {n} rules found\n\n")
    );
}

#[test]
fn every_alert_passes_its_promtool_cases() {
    let (ok, out) = promtool(&["test", "rules", RULE_TESTS], "");
    assert!(ok, "{out}");
    assert_eq!(out, format!("Unit Testing:  {RULE_TESTS}\n  SUCCESS\n\n"));
}

#[test]
fn every_alert_has_a_firing_case_and_a_quiet_one() {
    // In the tests file, `alertname: X` is followed by `exp_alerts: []` (a
    // case where X must not fire) or by `exp_alerts:` and a list.
    let tests = std::fs::read_to_string(RULE_TESTS).unwrap();
    let mut cases: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut current = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname: ") {
            current = Some(name.to_owned());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts without alertname");
            let kind = if expected.trim() == "[]" {
                "quiet"
            } else {
                "firing"
            };
            cases.entry(name).or_default().insert(kind);
        }
    }
    let both = BTreeSet::from(["firing", "quiet"]);
    let alerts = alerts();
    for alert in &alerts {
        assert_eq!(cases.get(alert), Some(&both), "cases of {alert}");
    }
    let unknown: Vec<&String> = cases.keys().filter(|n| !alerts.contains(n)).collect();
    assert!(unknown.is_empty(), "cases for no such alert: {unknown:?}");
}

/// A scrape of a running sniroute with one listener and one pool of two
/// servers under TLS health checks: one refuses them, the other completes the
/// handshake, so the health-check counters and the certificate gauge are in it.
fn scrape() -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = rt.block_on(Upstream::start("127.0.0.1", "tls", Mode::Tls));
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let proxy = Sniroute::start(&format!(
        "[metrics]\nbind = \"{metrics}\"\n[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\n\
         default = \"p\"\n[upstreams.p]\nservers = [\"127.0.0.2:9\", \"{}\"]\n\
         [upstreams.p.health_check]\ninterval = \"100ms\"\ntls_sni = \"example.com\"\n",
        tls.addr
    ));
    proxy.wait_log("serving GET /metrics");
    // The certificate gauge appears with the first TLS health check that
    // completes a handshake.
    poll(Duration::from_secs(10), || {
        let body = get_metrics(metrics);
        body.contains("\nsniroute_server_certificate_not_after_seconds{")
            .then_some(body)
    })
    .expect("no certificate gauge after 10s of TLS health checks")
}

#[test]
fn promtool_accepts_a_live_scrape() {
    let (ok, out) = promtool(&["check", "metrics"], &scrape());
    assert!(ok, "{out}");
    assert_eq!(out, "");
}

#[test]
fn the_rules_and_the_dashboard_name_only_exported_series() {
    let body = scrape();

    // Sample names, and the values each label takes.
    let mut names = BTreeSet::new();
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let pair = regex::Regex::new(r#"(\w+)="([^"]*)""#).unwrap();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        names.insert(line.split(['{', ' ']).next().unwrap().to_owned());
        for c in pair.captures_iter(line) {
            values
                .entry(c[1].to_owned())
                .or_default()
                .insert(c[2].to_owned());
        }
    }

    // The dashboard's strings (queries, descriptions) unescaped, then the rules.
    fn strings(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut text = String::new();
    strings(
        &serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap(),
        &mut text,
    );
    text.push_str(&std::fs::read_to_string(RULES).unwrap());

    let metric = regex::Regex::new(r"\bsniroute_[a-z_]+\b").unwrap();
    let named: BTreeSet<&str> = metric.find_iter(&text).map(|m| m.as_str()).collect();
    let missing: Vec<&&str> = named.iter().filter(|n| !names.contains(**n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{body}");

    let matcher =
        regex::Regex::new(r#"\b(outcome|reason|result|direction)\s*(?:=~|!~|!=|=)\s*"([^"]*)""#)
            .unwrap();
    let mut checked = 0;
    for c in matcher.captures_iter(&text) {
        for value in c[2].split('|') {
            assert!(
                values.get(&c[1]).is_some_and(|v| v.contains(value)),
                "{}={value:?} is never exported",
                &c[1]
            );
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} label values found");
}

/// The queries of the dashboard panel titled `title`, by refId, with the
/// dashboard's variables set to what "All" and a 5m rate window give.
fn panel_queries(title: &str) -> BTreeMap<String, String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let panel = panels
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel titled {title:?}"));
    panel["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$instance", ".*")
                .replace("$pool", ".*")
                .replace("$__rate_interval", "5m");
            (t["refId"].as_str().unwrap().to_owned(), expr)
        })
        .collect()
}

#[test]
fn the_health_check_and_certificate_panels_compute_what_their_titles_say() {
    let days = panel_queries("Certificate days left per server");
    let failures = panel_queries("Health-check failures/s by server");
    assert_eq!(
        (days.len(), failures.len()),
        (2, 1),
        "{days:?} {failures:?}"
    );
    // Evaluated by promtool at 10m (time() = 600). 10.0.0.1:443 is seen by two
    // instances, one of them with an older certificate: the panel shows the
    // one that expires first.
    let cases = format!(
        r#"rule_files:
  - {RULES}
tests:
  - interval: 1m
    input_series:
      - series: 'sniroute_server_certificate_not_after_seconds{{instance="edge1:9100", pool="apps", server="10.0.0.1:443"}}'
        values: '1296600x10'
      - series: 'sniroute_server_certificate_not_after_seconds{{instance="edge2:9100", pool="apps", server="10.0.0.1:443"}}'
        values: '864600x10'
      - series: 'sniroute_server_certificate_not_after_seconds{{instance="edge1:9100", pool="apps", server="10.0.0.2:443"}}'
        values: '0x10'
      - series: 'sniroute_health_checks_total{{instance="edge1:9100", pool="apps", server="10.0.0.1:443", result="fail"}}'
        values: '0+30x10'
      - series: 'sniroute_health_checks_total{{instance="edge1:9100", pool="apps", server="10.0.0.1:443", result="ok"}}'
        values: '0+60x10'
      - series: 'sniroute_health_checks_total{{instance="edge1:9100", pool="apps", server="10.0.0.2:443", result="ok"}}'
        values: '0+60x10'
    promql_expr_test:
      - expr: '{days_a}'
        eval_time: 10m
        exp_samples:
          - labels: '{{pool="apps", server="10.0.0.1:443"}}'
            value: 10
          - labels: '{{pool="apps", server="10.0.0.2:443"}}'
            value: -0.006944444444444444
      - expr: '{days_b}'
        eval_time: 10m
        exp_samples:
          - labels: '{{pool="apps", server="10.0.0.1:443"}}'
            value: 864600000
          - labels: '{{pool="apps", server="10.0.0.2:443"}}'
            value: 0
      - expr: '{fail_a}'
        eval_time: 10m
        exp_samples:
          - labels: '{{pool="apps", server="10.0.0.1:443"}}'
            value: 0.5
"#,
        days_a = days["A"],
        days_b = days["B"],
        fail_a = failures["A"],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("panels-test.yml");
    std::fs::write(&path, cases).unwrap();
    let path = path.to_str().unwrap();
    let (ok, out) = promtool(&["test", "rules", path], "");
    assert!(ok, "{out}");
    assert_eq!(out, format!("Unit Testing:  {path}\n  SUCCESS\n\n"));
}

#[test]
fn the_dashboard_panels_have_unique_ids_and_do_not_overlap() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    // Grid cells taken, (x, y), by panel id.
    let mut taken: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for p in panels {
        let id = p["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} used twice");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "panel {id} is wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = taken.insert((cx, cy), id) {
                    panic!("panels {other} and {id} overlap at x={cx} y={cy}");
                }
            }
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {id}");
        }
    }
    assert_eq!(ids.len(), 28);
}
