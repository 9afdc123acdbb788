//! What the config says a pool is: plain, validated descriptions with no live
//! state. The [`Registry`](super::registry::Registry) turns them into live
//! [`Pool`](super::Pool)s, keeping each server's state across reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Balance, HealthPolicy};
use crate::proxy_protocol;

/// One `[upstreams.NAME]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: Arc<str>,
    pub balance: Balance,
    pub health: HealthPolicy,
    /// Active probes, when the pool has a `health_check` table.
    pub check: Option<CheckSpec>,
    /// How often server names are resolved again.
    pub dns_refresh: Duration,
    /// The PROXY protocol header its servers expect, if any.
    pub proxy_protocol: Option<proxy_protocol::Send>,
    pub servers: Vec<ServerSpec>,
}

/// One entry of `servers`: an address, or a name that stands for every address
/// it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub host: Host,
    pub weight: u32,
    pub backup: bool,
    /// Takes no new connections; open ones go on.
    pub drain: bool,
    /// The addresses as resolved when the config was loaded.
    pub addrs: Vec<SocketAddr>,
}

/// How a server was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Addr(SocketAddr),
    /// `name:port`, resolved at load and every `dns_refresh` after.
    Name {
        name: Arc<str>,
        port: u16,
    },
}

impl Host {
    /// The label of one of its addresses in logs: `10.0.0.1:443`, or
    /// `node1.lan:443 (10.0.0.1:443)`.
    pub fn label(&self, addr: SocketAddr) -> Arc<str> {
        match self {
            Host::Addr(a) => Arc::from(a.to_string()),
            Host::Name { name, port } => Arc::from(format!("{name}:{port} ({addr})")),
        }
    }
}

/// `[upstreams.NAME.health_check]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes that take a server down.
    pub fall: u32,
    /// Consecutive good probes that bring it back.
    pub rise: u32,
    /// With it, a probe is a TLS handshake sending this SNI; without, a TCP connect.
    pub tls_sni: Option<Arc<str>>,
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fall: 3,
            rise: 2,
            tls_sni: None,
        }
    }
}

/// The default of `dns_refresh`.
pub const DNS_REFRESH: Duration = Duration::from_secs(30);
