//! Least privilege: an unprivileged user binds :443 with CAP_NET_BIND_SERVICE
//! alone, fails clearly without it, and root gets a warning. These tests need
//! root (to switch users, and to be root), so a plain `cargo test` ignores
//! them; `.ci/run` runs them as root with
//! `cargo test --tests -- --ignored`. Run without root, they fail.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Fails the test unless it runs as root: without root it could check nothing.
fn require_root() {
    let uid = Command::new("id").arg("-u").output().unwrap().stdout;
    assert_eq!(
        String::from_utf8_lossy(&uid),
        "0\n",
        "needs root: run as root with `cargo test --test privilege -- --ignored`"
    );
}

/// Runs `sniroute --config` on a config binding 127.0.0.5:443 as `nobody`, with
/// or without the capability, until it is ready or exits; returns (ready, log).
fn run_as_nobody(with_capability: bool) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    // The directory must be readable by `nobody`.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = write_config(
        dir.path(),
        "[[listeners]]\nbind = \"127.0.0.5:443\"\nprotocol = \"tls\"\ndefault = \"p\"\n\
         [upstreams.p]\nservers = [\"127.0.0.2:9\"]\n",
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // A copy of the binary there too: the checkout may sit where `nobody` cannot
    // reach (under /root, say).
    let binary = dir.path().join("sniroute");
    std::fs::copy(env!("CARGO_BIN_EXE_sniroute"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if with_capability {
        cmd.args([
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
        ]);
    }
    let mut child = cmd
        .arg(&binary)
        .args(["--no-watch", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = poll(DEADLINE, || match child.try_wait().unwrap() {
        Some(_) => Some(false),
        None => std::net::TcpStream::connect("127.0.0.5:443")
            .is_ok()
            .then_some(true),
    })
    .expect("neither ready nor exited");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (ready, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
#[ignore = "needs root"]
fn an_unprivileged_user_binds_443_with_the_capability_alone() {
    require_root();
    let (ready, log) = run_as_nobody(true);
    assert!(ready, "did not bind with CAP_NET_BIND_SERVICE:\n{log}");
    assert!(!log.contains("running as root"), "{log}");

    let (ready, log) = run_as_nobody(false);
    assert!(!ready);
    assert!(
        log.contains("cannot bind 127.0.0.5:443: Permission denied (os error 13) (ports below 1024 need CAP_NET_BIND_SERVICE)"),
        "{log}"
    );
}

#[test]
#[ignore = "needs root"]
fn root_is_warned_that_it_is_not_needed() {
    require_root();
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&format!(
        "[[listeners]]\nbind = \"{listen}\"\nprotocol = \"tls\"\ndefault = \"p\"\n[upstreams.p]\nservers = [\"127.0.0.2:9\"]\n"
    ));
    assert!(proxy
        .log()
        .contains("running as root: sniroute needs only CAP_NET_BIND_SERVICE"));
}
