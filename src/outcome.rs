//! How a client connection ended: the one word every connection is counted
//! under in the metrics and written with in the access log.

/// How a client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions closed normally.
    Closed,
    IdleTimeout,
    ClientError,
    UpstreamError,
    /// Still open when the shutdown drain ended.
    Shutdown,
    PeekFailed,
    NoRoute,
    ConnectFailed,
    /// Closed at once: `max_connections` were open.
    OverLimit,
    /// Closed at once: `max_connections_per_ip` were open from this address.
    OverClientLimit,
    /// Refused by an `allow`/`deny` list of the listener or of the route.
    Denied,
    /// Answered with a 308 to https by a `redirect_https` listener.
    Redirected,
    /// An ACME HTTP-01 challenge answered by sniroute (`acme_thumbprint`).
    AcmeAnswered,
}

impl Outcome {
    /// Every outcome, in declaration order (`ALL[o as usize] == o`).
    pub const ALL: [Outcome; 13] = [
        Outcome::Closed,
        Outcome::IdleTimeout,
        Outcome::ClientError,
        Outcome::UpstreamError,
        Outcome::Shutdown,
        Outcome::PeekFailed,
        Outcome::NoRoute,
        Outcome::ConnectFailed,
        Outcome::OverLimit,
        Outcome::OverClientLimit,
        Outcome::Denied,
        Outcome::Redirected,
        Outcome::AcmeAnswered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::ClientError => "client_error",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Shutdown => "shutdown",
            Outcome::PeekFailed => "peek_failed",
            Outcome::NoRoute => "no_route",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::OverLimit => "over_limit",
            Outcome::OverClientLimit => "over_ip_limit",
            Outcome::Denied => "denied",
            Outcome::Redirected => "redirected",
            Outcome::AcmeAnswered => "acme_answered",
        }
    }
}
