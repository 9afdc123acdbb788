//! Running sniroute: bind every listener (or take the sockets handed over, see
//! [`crate::handover`]), serve, reload on demand, upgrade on demand, drain, exit.
//!
//! SIGHUP and changes of the config file reload it (see [`crate::reload`]).
//! SIGUSR2 starts a new process on the listening sockets ([`crate::upgrade`]);
//! once it is ready this one stops accepting and serving the metrics endpoint,
//! and drains. SIGTERM or SIGINT stops every accept loop, then open connections
//! get up to `timeouts.shutdown` to finish; the metrics endpoint keeps
//! answering, with `/healthz` at 503, until the process exits. The listening
//! sockets close then (new connections are refused by the kernel), unless
//! systemd has an fd store for them: they go there and wait for the next start.
//! A second signal during the drain exits at once.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::connections::Connections;
use crate::handover::{self, Inherited};
use crate::listener::{self, BindError, Listeners, Shared};
use crate::metrics::{endpoint, Metrics};
use crate::peek::Transport;
use crate::pool::Registry;
use crate::quic::Budget;
use crate::relay::Engine;
use crate::reload::{Reloader, Trigger, Watcher};
use crate::resources;
use crate::shutdown::{self, Phase};
use crate::status::Page;
use crate::systemd;
use crate::upgrade::{self, Invocation, Successor, UpgradeError};

/// How to run.
#[derive(Debug)]
pub struct Options {
    /// The config file, for reloads.
    pub path: PathBuf,
    /// Its text as loaded at start, so an unchanged file is not reloaded.
    pub text: String,
    /// Reload when the file changes (`--no-watch` turns this off).
    pub watch: bool,
    /// What SIGUSR2 starts; `None` if it could not be found out at start.
    pub invocation: Option<Invocation>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Why serving ends.
enum End {
    /// SIGTERM or SIGINT.
    Stop(&'static str),
    /// A new process serves now (SIGUSR2).
    HandedOver(Successor),
}

/// Serves `config` until SIGTERM/SIGINT or a completed upgrade, and the drain
/// that follows.
pub async fn run(
    config: Config,
    registry: Arc<Registry>,
    options: Options,
) -> Result<(), ServerError> {
    resources::raise_descriptor_limit();
    let mut signals = Signals::new().map_err(ServerError::Signals)?;
    let mut inherited = Inherited::from_env();
    let current = Arc::new(ArcSwap::from_pointee(config));
    let connections = Arc::new(Connections::default());
    let (phase, shutdown) = shutdown::channel();
    let metrics = Metrics::new(Arc::clone(&current), Arc::clone(&connections));
    let quic = Arc::new(Budget::default());
    let mut listeners = Listeners::new(Shared {
        config: Arc::clone(&current),
        connections: Arc::clone(&connections),
        shutdown: shutdown.clone(),
        metrics: Arc::clone(&metrics),
        quic: Arc::clone(&quic),
    });
    // Bind everything before accepting anything: a config that cannot be served
    // whole is not served at all.
    let bound = listeners.bind_missing(&current.load(), &mut inherited)?;
    let mut endpoint = None;
    if let Some(addr) = current.load().metrics {
        let socket = Arc::new(listener::adopt_or_bind(addr, &mut inherited)?);
        tracing::info!(metrics = %addr, "serving GET /metrics, /status and /healthz");
        let page = Arc::new(Page::new(Arc::clone(&current), Arc::clone(&connections)));
        let task = tokio::spawn(endpoint::serve(
            Arc::clone(&socket),
            Arc::clone(&metrics),
            page,
            shutdown,
        ));
        endpoint = Some(Endpoint { addr, socket, task });
    }
    inherited.close_rest();
    registry.commit(&current.load().pools);
    tokio::spawn(anchor_timers());
    listeners.start(bound);
    listeners.tune(&current.load());
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
    if upgrade::is_successor() {
        systemd::ready_as_main();
        upgrade::announce_ready();
    } else {
        systemd::ready();
    }
    tracing::info!(
        relay = %Engine::detect().as_str(),
        pid = std::process::id(),
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
    let invocation = options.invocation;
    let mut reloader = Reloader::new(
        options.path,
        Arc::clone(&current),
        listeners,
        metrics,
        registry,
        options.text,
    );
    let mut upgrading: Option<Upgrading> = None;
    let end = loop {
        tokio::select! {
            name = signals.stop.next() => break End::Stop(name),
            _ = signals.hup.recv() => reloader.reload(Trigger::Signal).await,
            () = file_changed(&mut watcher) => reloader.reload(Trigger::FileChange).await,
            _ = signals.usr2.recv() => {
                if upgrading.is_some() {
                    tracing::warn!("SIGUSR2: an upgrade is already under way; ignored");
                    continue;
                }
                let Some(invocation) = invocation.clone() else {
                    tracing::error!("SIGUSR2: cannot upgrade: the path of the running binary was not known at start");
                    continue;
                };
                tracing::info!("SIGUSR2: upgrading: starting {}", invocation.exe().display());
                let sockets = handed_on(reloader.listeners(), endpoint.as_ref());
                upgrading = Some(Box::pin(async move {
                    let fds: Vec<_> = sockets.iter().map(|s| s.as_fd()).collect();
                    upgrade::start(&invocation, &fds).await
                }));
            }
            result = upgrade_done(&mut upgrading) => match result {
                Ok(successor) => break End::HandedOver(successor),
                Err(e) => tracing::error!("upgrade failed, still serving: {e}"),
            },
        }
    };

    let timeout = current.load().timeouts.shutdown;
    match &end {
        End::Stop(name) => {
            if systemd::fd_store_enabled() {
                // The next start finds them waiting, with the connections
                // queued meanwhile.
                for (transport, addr, fd) in handed_on_fds(reloader.listeners(), endpoint.as_ref())
                {
                    systemd::store(&handover::name(transport, addr), fd);
                }
            }
            systemd::stopping();
            tracing::info!(
                signal = name,
                open = connections.open(),
                "shutting down: no new connections; draining for up to {timeout:?}"
            );
        }
        End::HandedOver(successor) => {
            // The successor answers /metrics and /healthz from now on; this
            // process is no longer the service, so it tells systemd nothing.
            if let Some(endpoint) = endpoint.take() {
                endpoint.task.abort();
            }
            tracing::info!(
                successor = successor.pid,
                open = connections.open(),
                "upgrade: process {} is ready and serves now; this one stops accepting and drains for up to {timeout:?}",
                successor.pid
            );
        }
    }
    let _ = phase.send(Phase::Draining);
    // Closes this process's copies of the listening sockets.
    reloader.stop_listening();
    // QUIC flows end as the drain begins; waiting for them lets each write
    // its access-log line.
    let all_closed = || async {
        tokio::join!(connections.all_closed(), quic.all_closed());
    };
    tokio::select! {
        () = all_closed() => {
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
    let _ = tokio::time::timeout(Duration::from_secs(1), all_closed()).await;
    Ok(())
}

/// The metrics endpoint's socket and task, kept to hand the socket on and to
/// stop serving it once a successor does.
struct Endpoint {
    addr: SocketAddr,
    socket: Arc<TcpListener>,
    task: JoinHandle<()>,
}

/// Every listening socket with its address: the listeners' and the metrics
/// endpoint's.
fn handed_on_fds<'a>(
    listeners: &'a Listeners,
    endpoint: Option<&'a Endpoint>,
) -> Vec<(Transport, SocketAddr, BorrowedFd<'a>)> {
    let mut fds: Vec<_> = listeners.sockets().collect();
    fds.extend(endpoint.map(|e| (Transport::Tcp, e.addr, e.socket.as_fd())));
    fds
}

/// Owned duplicates of [`handed_on_fds`], for an upgrade that runs while the
/// listeners may change (a reload does not wait for it).
fn handed_on(listeners: &Listeners, endpoint: Option<&Endpoint>) -> Vec<OwnedFd> {
    handed_on_fds(listeners, endpoint)
        .into_iter()
        .filter_map(|(_, addr, fd)| match fd.try_clone_to_owned() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::error!(listener = %addr, "upgrade: cannot duplicate the socket, the new process binds it anew: {e}");
                None
            }
        })
        .collect()
}

/// An upgrade under way: the new process started, not ready yet.
type Upgrading = Pin<Box<dyn Future<Output = Result<Successor, UpgradeError>> + Send>>;

/// How often the timer anchor wakes: below the default connect and peek
/// timeouts, so a new connection's deadline is never the earliest timer.
const TIMER_ANCHOR: Duration = Duration::from_secs(1);

/// Keeps a timer at most [`TIMER_ANCHOR`] away, for good. tokio wakes its own
/// driver (an eventfd write, then one more `epoll_wait` return) whenever a new
/// timer is earlier than every pending one. Without this, each connection's
/// connect timeout (3 s) is such a timer whenever the only others are idle
/// timeouts (1 h): two system calls per connection, for one wake-up a second.
async fn anchor_timers() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR);
    loop {
        tick.tick().await;
    }
}

/// The outcome of the upgrade under way; pending while there is none.
async fn upgrade_done(upgrading: &mut Option<Upgrading>) -> Result<Successor, UpgradeError> {
    let Some(pending) = upgrading else {
        return std::future::pending().await;
    };
    let result = pending.await;
    *upgrading = None;
    result
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
    usr2: Signal,
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
            usr2: signal(SignalKind::user_defined2())?,
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
