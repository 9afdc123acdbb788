//! Running sniroute: bind every listener, serve, reload on demand, drain, exit.
//!
//! SIGHUP and changes of the config file reload it (see [`crate::reload`]).
//! SIGTERM or SIGINT stops every accept loop (their sockets close, so new
//! connections are refused by the kernel), then open connections get up to
//! `timeouts.shutdown` to finish; the metrics endpoint keeps answering, with
//! `/healthz` at 503, until the process exits. A second signal during the drain exits at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::Config;
use crate::connections::Connections;
use crate::listener::{self, BindError, Listeners, Shared};
use crate::metrics::{endpoint, Metrics};
use crate::pool::Registry;
use crate::relay::Engine;
use crate::reload::{Reloader, Trigger, Watcher};
use crate::resources;
use crate::shutdown::{self, Phase};
use crate::status::Page;
use crate::systemd;

/// How to run.
#[derive(Debug)]
pub struct Options {
    /// The config file, for reloads.
    pub path: PathBuf,
    /// Its text as loaded at start, so an unchanged file is not reloaded.
    pub text: String,
    /// Reload when the file changes (`--no-watch` turns this off).
    pub watch: bool,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Serves `config` until SIGTERM/SIGINT and the drain that follows.
pub async fn run(
    config: Config,
    registry: Arc<Registry>,
    options: Options,
) -> Result<(), ServerError> {
    resources::raise_descriptor_limit();
    let mut signals = Signals::new().map_err(ServerError::Signals)?;
    let current = Arc::new(ArcSwap::from_pointee(config));
    let connections = Arc::new(Connections::default());
    let (phase, shutdown) = shutdown::channel();
    let metrics = Metrics::new(Arc::clone(&current), Arc::clone(&connections));
    let mut listeners = Listeners::new(Shared {
        config: Arc::clone(&current),
        connections: Arc::clone(&connections),
        shutdown: shutdown.clone(),
        metrics: Arc::clone(&metrics),
    });
    // Bind everything before accepting anything: a config that cannot be served
    // whole is not served at all.
    let bound = listeners.bind_missing(&current.load())?;
    if let Some(addr) = current.load().metrics {
        let socket = listener::bind(addr)?;
        tracing::info!(metrics = %addr, "serving GET /metrics, /status and /healthz");
        let page = Arc::new(Page::new(Arc::clone(&current), Arc::clone(&connections)));
        tokio::spawn(endpoint::serve(
            socket,
            Arc::clone(&metrics),
            page,
            shutdown,
        ));
    }
    registry.commit(&current.load().pools);
    listeners.start(bound);
    if running_as_root() {
        tracing::warn!(
            "running as root: sniroute needs only CAP_NET_BIND_SERVICE to bind ports below 1024; \
             run it as an unprivileged user with that capability (the systemd unit does)"
        );
    }
    resources::check_descriptor_budget(
        current.load().limits.max_connections,
        Engine::detect().descriptors_per_connection(),
    );
    systemd::ready();
    tracing::info!(
        relay = %Engine::detect().as_str(),
        "sniroute {} ready",
        env!("CARGO_PKG_VERSION")
    );

    let mut watcher = if options.watch {
        Watcher::new(&options.path)
            .map_err(|e| {
                tracing::warn!("cannot watch the config file, reload with SIGHUP only: {e}")
            })
            .ok()
    } else {
        None
    };
    let mut reloader = Reloader::new(
        options.path,
        Arc::clone(&current),
        listeners,
        metrics,
        registry,
        options.text,
    );
    let name = loop {
        tokio::select! {
            name = signals.stop.next() => break name,
            _ = signals.hup.recv() => reloader.reload(Trigger::Signal).await,
            () = file_changed(&mut watcher) => reloader.reload(Trigger::FileChange).await,
        }
    };

    systemd::stopping();
    let timeout = current.load().timeouts.shutdown;
    tracing::info!(
        signal = name,
        open = connections.open(),
        "shutting down: no new connections; draining for up to {timeout:?}"
    );
    let _ = phase.send(Phase::Draining);
    tokio::select! {
        () = connections.all_closed() => {
            tracing::info!("all connections closed; exiting");
            return Ok(());
        }
        () = tokio::time::sleep(timeout) => tracing::warn!(
            open = connections.open(),
            "timeouts.shutdown passed; closing the remaining connections"
        ),
        name = signals.stop.next() => {
            tracing::warn!(signal = name, "second signal; exiting now");
            return Ok(());
        }
    }
    // Cut connections still write their access-log lines; give them a moment.
    let _ = phase.send(Phase::Closing);
    let _ = tokio::time::timeout(Duration::from_secs(1), connections.all_closed()).await;
    Ok(())
}

/// Whether the effective user is root, from `/proc/self/status` (no libc needed).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|effective| effective == "0")
}

async fn file_changed(watcher: &mut Option<Watcher>) {
    match watcher {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// The signals sniroute handles. Installing a handler replaces the default
/// action, so neither SIGHUP nor a second SIGTERM kills the process unhandled.
struct Signals {
    stop: StopSignals,
    hup: Signal,
}

struct StopSignals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            stop: StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            },
            hup: signal(SignalKind::hangup())?,
        })
    }
}

impl StopSignals {
    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
