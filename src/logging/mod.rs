//! Logging setup and the access log.
//!
//! Everything goes to stderr (journald captures it) through `tracing`, as text or
//! JSON, written by a thread of its own ([`writer`]). The access log is the
//! `sniroute::access` target at info level, enabled or disabled on its own,
//! independent of `log.level`. `RUST_LOG`, when set, overrides both for
//! debugging.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogLevel, LogSettings};
use crate::name::HostName;
use crate::outcome::Outcome;

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
