//! The process's way down, broadcast to every task.
//!
//! One `watch` channel carries the phase; tasks wait for the phase that concerns
//! them: accept loops stop at [`Phase::Draining`], relays end at [`Phase::Closing`]
//! (so that even a cut connection writes its access-log line). The metrics
//! endpoint stops at neither: it reads the phase to answer `/healthz` until the
//! process exits.

use tokio::sync::watch;

/// Where the process is on its way down; phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// No new connections; open ones may finish.
    Draining,
    /// The drain is over: open connections are closed now.
    Closing,
}

/// Receiving end, cloned into every task that must react.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<Phase>);

impl Shutdown {
    /// Resolves once `phase` is reached (or the sender is gone: the process is
    /// going away anyway).
    pub async fn reached(&mut self, phase: Phase) {
        let _ = self.0.wait_for(|p| *p >= phase).await;
    }

    /// The phase right now.
    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }
}

pub fn channel() -> (watch::Sender<Phase>, Shutdown) {
    let (tx, rx) = watch::channel(Phase::Running);
    (tx, Shutdown(rx))
}
