//! Logging setup and the access log.
//!
//! Everything goes to stderr (journald captures it) through `tracing`, as text or
//! JSON, written by a thread of its own ([`writer`]). The access log is the
//! `sniroute::access` target at info level, enabled or disabled on its own,
//! independent of `log.level`. `RUST_LOG`, when set, overrides both for
//! debugging.
//!
//! Text lines are logfmt: `key=value`, a value quoted (`"…"`, with `\"` and
//! `\\` escaped) when it is empty or holds a space, a quote, a backslash or `=`
//! ([`Logfmt`]). JSON lines carry the same values unquoted, as JSON strings.

use std::fmt;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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
    JSON.store(settings.format == LogFormat::Json, Ordering::Relaxed);
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

/// Whether lines are JSON (values as JSON strings) rather than logfmt text.
static JSON: AtomicBool = AtomicBool::new(false);

/// A string field value as logfmt needs it in text lines: quoted and escaped
/// where it could not be read back otherwise, bare where it can (`pool=apps`,
/// `reason="reading from the client: connection reset"`). Unchanged in JSON.
pub struct Logfmt<'a>(pub &'a str);

impl fmt::Display for Logfmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let plain = !s.is_empty()
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '='));
        if plain || JSON.load(Ordering::Relaxed) {
            return f.write_str(s);
        }
        f.write_str("\"")?;
        for c in s.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c if c.is_control() => write!(f, "\\u{{{:04x}}}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

/// The fields of one access-log line, filled in as the connection progresses.
#[derive(Debug)]
pub struct AccessLog<'a> {
    pub client: SocketAddr,
    pub listener: SocketAddr,
    /// A QUIC flow: its listener is written `ADDRESS/udp`.
    pub udp: bool,
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
            udp: false,
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
            listener = %ListenerLabel(self.listener, self.udp),
            host = %self.host.as_ref().map_or("-", |h| h.as_str()),
            route = %Logfmt(self.route.unwrap_or("-")),
            pool = %Logfmt(self.pool.unwrap_or("-")),
            server = %self.server.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            duration_ms = duration.as_millis() as u64,
            outcome = %outcome.as_str(),
            reason = %Logfmt(&self.reason),
        );
    }
}

/// A TCP listener's address as is, a UDP one's with `/udp`.
struct ListenerLabel(SocketAddr, bool);

impl fmt::Display for ListenerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            false => write!(f, "{}", self.0),
            true => write!(f, "{}/udp", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_quotes_only_what_needs_it() {
        let text = |s: &str| Logfmt(s).to_string();
        assert_eq!(text("apps_https"), "apps_https");
        assert_eq!(text("timeout"), "timeout");
        assert_eq!(text(""), "\"\"");
        assert_eq!(text("edge pool"), "\"edge pool\"");
        assert_eq!(text(r"~^a\.b$"), r#""~^a\\.b$""#);
        assert_eq!(text("say \"hi\"\n"), r#""say \"hi\"\n""#);
        assert_eq!(text("a=b"), "\"a=b\"");
    }
}
