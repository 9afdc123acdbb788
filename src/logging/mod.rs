//! Logging setup and the access log.
//!
//! Everything goes to stderr (journald captures it) through `tracing`, as text or
//! JSON, written by a thread of its own ([`writer`]). The access log is the
//! `sniroute::access` target at info level, enabled or disabled on its own,
//! independent of `log.level`. `RUST_LOG`, when set, overrides both for
//! debugging.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogLevel, LogSettings};
use crate::name::HostName;
use crate::proxy::Outcome;

pub const ACCESS_TARGET: &str = "sniroute::access";

pub mod writer;

pub use writer::flush;

/// Installs the global subscriber. Call once, before anything logs; call
/// [`flush`] before the process exits.
pub fn init(settings: &LogSettings) -> std::io::Result<()> {
    let level = match settings.level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    let access = if settings.access_log { "info" } else { "off" };
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},{ACCESS_TARGET}={access}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer::start()?)
        .with_ansi(std::io::stderr().is_terminal());
    match settings.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

/// The fields of one access-log line, filled in as the connection progresses.
#[derive(Debug)]
pub struct AccessLog<'a> {
    pub client: SocketAddr,
    pub listener: SocketAddr,
    pub host: Option<HostName>,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub server: Option<SocketAddr>,
    /// Client → server bytes, including the replayed head.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Why a connection failed; empty when it did not.
    pub reason: String,
}

impl AccessLog<'_> {
    pub fn new(client: SocketAddr, listener: SocketAddr) -> Self {
        AccessLog {
            client,
            listener,
            host: None,
            route: None,
            pool: None,
            server: None,
            bytes_up: 0,
            bytes_down: 0,
            reason: String::new(),
        }
    }

    /// Writes the line. `-` stands for a field the connection never reached.
    pub fn emit(&self, outcome: Outcome, duration: Duration) {
        tracing::info!(
            target: ACCESS_TARGET,
            client = %self.client,
            listener = %self.listener,
            host = %self.host.as_ref().map_or("-", |h| h.as_str()),
            route = %self.route.unwrap_or("-"),
            pool = %self.pool.unwrap_or("-"),
            server = %self.server.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            duration_ms = duration.as_millis() as u64,
            outcome = %outcome.as_str(),
            reason = %self.reason,
        );
    }
}

/// Lets a message that can repeat for every client through at most once every
/// [`Throttle::INTERVAL`], and counts the occurrences it held back. While a
/// whole pool is down, or clients hammer a limit, the log stays readable and
/// does not become the bottleneck; the metrics and the access log still count
/// every connection.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Seconds after [`THROTTLE_EPOCH`] of the last message let through, plus
    /// the interval (so that 0 means "never").
    last: AtomicU64,
    held_back: AtomicU64,
}

static THROTTLE_EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Throttle {
    pub const INTERVAL: Duration = Duration::from_secs(5);

    /// `Some(n)` if this occurrence should be logged, `n` being how many were
    /// held back since the last one logged; `None` if it is held back.
    pub fn admit(&self) -> Option<u64> {
        let interval = Self::INTERVAL.as_secs();
        let now = THROTTLE_EPOCH.elapsed().as_secs() + interval;
        let last = self.last.load(Ordering::Relaxed);
        let admitted = now >= last + interval
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if admitted {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_the_first_through_and_counts_the_rest() {
        let t = Throttle::default();
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        // As if the interval had passed.
        t.last
            .fetch_sub(Throttle::INTERVAL.as_secs(), Ordering::Relaxed);
        assert_eq!(t.admit(), Some(2));
        assert_eq!(t.admit(), None);
    }
}
