//! systemd readiness (`Type=notify` / `Type=notify-reload`) and its fd store.
//!
//! READY=1 once every listener is bound; RELOADING=1 with MONOTONIC_USEC before a
//! reload and READY=1 after it, whatever its outcome; STOPPING=1 when the drain
//! starts. A process started by a binary upgrade says MAINPID= with its READY=1,
//! as it is not the process systemd started (the unit needs `NotifyAccess=all`).
//! On SIGTERM the listening sockets go to the fd store ([`store`]), named by
//! [`crate::handover::name`]; sockets the config drops leave it ([`forget`]).
//! Without `NOTIFY_SOCKET` (not started by systemd) each call does nothing.

use std::os::fd::BorrowedFd;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// READY=1 from a process systemd did not start: it takes over as the main one.
pub fn ready_as_main() {
    send(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!("cannot read the monotonic clock for systemd: {e}"),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Whether sockets handed to [`store`] are kept: systemd runs us and has an fd
/// store for us. systemd 254 and later say so in `FDSTORE` (its size); older
/// ones say nothing, so only an explicit `FDSTORE=0` turns storing off.
pub fn fd_store_enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
        && std::env::var("FDSTORE").map_or(true, |n| n.trim() != "0")
}

/// Hands `fd` to systemd's fd store under `name`; systemd keeps it open and
/// passes it to the next start of the service.
pub fn store(name: &str, fd: BorrowedFd<'_>) {
    let states = [NotifyState::FdStore, NotifyState::FdName(name)];
    if let Err(e) = sd_notify::notify_with_fds(&states, &[fd]) {
        tracing::warn!(
            socket = name,
            "cannot hand the socket to systemd's fd store: {e}"
        );
    }
}

/// Takes the socket stored as `name` out of systemd's fd store, which closes it.
pub fn forget(name: &str) {
    if !fd_store_enabled() {
        return;
    }
    send(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]);
}
