//! The files the Debian package installs: the default config passes `--check`
//! exactly as an operator will see it, the systemd unit runs the binary on
//! that config where the package puts them, and README's install table lists
//! every file the package ships.

mod common;

use common::*;

const DEFAULT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/sniroute.toml");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/sniroute.service");
const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

#[test]
fn the_packaged_default_config_passes_check() {
    let (code, out, err) = run_cli(&["--config", DEFAULT_CONFIG, "--check"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "{DEFAULT_CONFIG}: OK
timeouts: peek 5s, connect 3s, idle 1h, shutdown 30s; max_connections 20000, max_peek_bytes 16384
listeners:
  tls   0.0.0.0:443, [::]:443  routes: 0 exact, 0 wildcard, 0 regex; default: cluster_https
  http  0.0.0.0:80, [::]:80  routes: 0 exact, 0 wildcard, 0 regex; default: cluster_http
upstreams:
  cluster_http (least_conn, 1 server(s), max_fails=1, fail_timeout=10s)
  cluster_https (least_conn, 1 server(s), max_fails=1, fail_timeout=10s)
"
        )
    );
}

#[test]
fn the_unit_checks_then_runs_the_default_config_as_the_sniroute_user() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let lines: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    let config = sniroute::config::DEFAULT_PATH;
    for expected in [
        format!("ExecStartPre=/usr/bin/sniroute --config {config} --check"),
        format!("ExecStart=/usr/bin/sniroute --config {config}"),
        "Type=notify".to_owned(),
        "Type=notify-reload".to_owned(),
        "User=sniroute".to_owned(),
        "AmbientCapabilities=CAP_NET_BIND_SERVICE".to_owned(),
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE".to_owned(),
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX".to_owned(),
        "SystemCallFilter=@system-service".to_owned(),
        // An upgrade's new process says MAINPID= before it is the main one.
        "NotifyAccess=all".to_owned(),
        // SIGTERM lends the listening sockets to systemd's fd store.
        "FileDescriptorStoreMax=64".to_owned(),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "no {expected:?} in the unit"
        );
    }
    // notify-reload must come after notify: older systemd ignores the line it
    // does not know and keeps the one before.
    let notify = lines.iter().position(|l| *l == "Type=notify");
    let reload = lines.iter().position(|l| *l == "Type=notify-reload");
    assert!(notify < reload, "{notify:?} {reload:?}");
    // The stop timeout leaves room for the whole drain.
    assert!(lines.contains(&"TimeoutStopSec=45s"));
}

#[test]
fn the_readme_install_table_lists_every_file_the_package_ships() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(MANIFEST).unwrap()).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    let readme = std::fs::read_to_string(README).unwrap();
    let install = readme
        .split("\n## Install on Debian/Ubuntu\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("no Install section in README");
    assert!(!assets.is_empty());
    for asset in assets {
        let (source, target) = (asset[0].as_str().unwrap(), asset[1].as_str().unwrap());
        // A target ending in `/` is a directory: the file keeps its name.
        let path = match target.strip_suffix('/') {
            Some(dir) => format!("/{dir}/{}", source.rsplit('/').next().unwrap()),
            None => format!("/{target}"),
        };
        assert!(
            install.contains(&format!("\n| `{path}` | ")),
            "README's install table lacks {path}"
        );
    }
}
