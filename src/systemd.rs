//! systemd readiness (`Type=notify` / `Type=notify-reload`).
//!
//! READY=1 once every listener is bound; RELOADING=1 with MONOTONIC_USEC before a
//! reload and READY=1 after it, whatever its outcome; STOPPING=1 when the drain
//! starts. Without `NOTIFY_SOCKET` (not started by systemd) each call does nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
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
