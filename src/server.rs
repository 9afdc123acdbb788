//! Running a config: bind every listener, accept until a signal, drain, exit.
//!
//! SIGTERM or SIGINT stops every accept loop (their sockets close, so new
//! connections are refused by the kernel), then open connections get up to
//! `timeouts.shutdown` to finish. A second signal during the drain exits at once.

use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, Semaphore};

use crate::config::Config;
use crate::listener::{self, Shared};
use crate::proxy::Endpoint;
use crate::shutdown::{self, Phase};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {addr}: {error}{hint}")]
    Bind {
        addr: std::net::SocketAddr,
        error: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Serves `config` until SIGTERM/SIGINT and the drain that follows.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let mut signals = Signals::new().map_err(ServerError::Signals)?;
    // Handled, never the default action (which would kill the process).
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Signals)?;

    // Bind everything before accepting anything: a config that cannot be served
    // whole is not served at all.
    let mut bound = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        for &addr in &l.binds {
            let socket = listener::bind(addr).map_err(|error| ServerError::Bind {
                addr,
                hint: match error.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        " (ports below 1024 need CAP_NET_BIND_SERVICE)"
                    }
                    std::io::ErrorKind::AddrInUse => " (another process listens there)",
                    _ => "",
                },
                error,
            })?;
            tracing::info!(listener = %addr, protocol = l.protocol.as_str(), "listening");
            bound.push((
                socket,
                Endpoint {
                    config: Arc::clone(&config),
                    listener: index,
                    bind: addr,
                },
            ));
        }
    }

    let max = config.limits.max_connections;
    let limiter = Arc::new(Semaphore::new(max));
    let (phase, shutdown) = shutdown::channel();
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let shared = Shared {
        limiter: Arc::clone(&limiter),
        shutdown,
        open: open_tx,
    };
    for (socket, endpoint) in bound {
        tokio::spawn(listener::accept_loop(socket, endpoint, shared.clone()));
    }
    drop(shared);
    tracing::info!("sniroute {} ready", env!("CARGO_PKG_VERSION"));

    let name = loop {
        tokio::select! {
            name = signals.stop() => break name,
            _ = hup.recv() => tracing::warn!(
                "SIGHUP: live reload is not available in this version; restart sniroute to apply a new config"
            ),
        }
    };
    let open = max - limiter.available_permits();
    tracing::info!(
        signal = name,
        open,
        "shutting down: no new connections; draining for up to {:?}",
        config.timeouts.shutdown
    );
    let _ = phase.send(Phase::Draining);

    tokio::select! {
        _ = open_rx.recv() => {
            tracing::info!("all connections closed; exiting");
            return Ok(());
        }
        () = tokio::time::sleep(config.timeouts.shutdown) => {
            let open = max - limiter.available_permits();
            tracing::warn!(open, "timeouts.shutdown passed; closing the remaining connections");
        }
        name = signals.stop() => {
            tracing::warn!(signal = name, "second signal; exiting now");
            return Ok(());
        }
    }
    // Cut connections still write their access-log lines; give them a moment.
    let _ = phase.send(Phase::Closing);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), open_rx.recv()).await;
    Ok(())
}

/// SIGTERM and SIGINT. Installing a handler replaces the default action, so a
/// second signal cannot kill the process mid-drain unhandled.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
