//! What both data paths report about a finished connection: how it ended, which path carried it,
//! and its byte counts.
use std::fmt;

/// How a connection ended; the `end` field of the log line and a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both directions finished; the client sent its FIN first.
    ClientClose,
    /// Both directions finished; the upstream sent its FIN first.
    UpstreamClose,
    /// The client reset the connection (or failed); the upstream was reset in turn.
    ClientReset,
    /// The upstream reset the connection (or failed); the client was reset in turn.
    UpstreamReset,
    /// No server of the backend accepted the connection.
    ConnectFailed,
    /// Refused before any work: client address not allowed, or a connection limit.
    Rejected,
    /// A CONNECT request answered with an error status (400, 403, 405, 407, 408, 431).
    Refused,
    /// The client's TLS handshake failed or timed out (the detail says why); nothing dialed.
    TlsHandshakeFailed,
    /// No byte in either direction for the frontend's `idle_timeout`: both sides closed.
    IdleTimeout,
    /// Cut when the drain timeout expired at shutdown.
    Shutdown,
    /// The proxy itself failed (see the error field).
    Error,
    /// Not an end: the connection moved to the process an upgrade started, which logs it when
    /// it ends (not in [`End::ALL`]: never counted, never logged).
    HandedOver,
}

impl End {
    /// Every end, in the order the metric's HELP text lists them.
    pub const ALL: [End; 11] = [
        End::ClientClose,
        End::UpstreamClose,
        End::ClientReset,
        End::UpstreamReset,
        End::ConnectFailed,
        End::Rejected,
        End::Refused,
        End::TlsHandshakeFailed,
        End::IdleTimeout,
        End::Shutdown,
        End::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClose => "client_close",
            End::UpstreamClose => "upstream_close",
            End::ClientReset => "client_reset",
            End::UpstreamReset => "upstream_reset",
            End::ConnectFailed => "connect_failed",
            End::Rejected => "rejected",
            End::Refused => "refused",
            End::TlsHandshakeFailed => "tls_handshake_failed",
            End::IdleTimeout => "idle_timeout",
            End::Shutdown => "shutdown",
            End::Error => "error",
            End::HandedOver => "handed_over",
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One socket of a connection: the client's (accepted) or the upstream's (dialed). Which side
/// closed first or failed decides the `end` of the log line; the kernel path indexes its two
/// sides by [`Side::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

impl Side {
    /// The side at index 0 (client) or 1 (upstream); any other index is the upstream.
    pub fn from_index(i: usize) -> Self {
        if i == 0 { Side::Client } else { Side::Upstream }
    }

    pub fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Upstream => 1,
        }
    }

    /// The other socket of the pair.
    pub fn peer(self) -> Self {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

impl End {
    /// Both directions finished, `first` having sent its FIN first (none: the client's).
    pub fn closed(first: Option<Side>) -> Self {
        match first {
            Some(Side::Upstream) => End::UpstreamClose,
            Some(Side::Client) | None => End::ClientClose,
        }
    }

    /// `side` reset the connection or failed.
    pub fn reset_by(side: Side) -> Self {
        match side {
            Side::Client => End::ClientReset,
            Side::Upstream => End::UpstreamReset,
        }
    }
}

/// Why a connection was refused with a reset before any byte moved: the `reason` label of
/// `agent_proxy_frontend_rejected_total` (besides `address_CLASS`, a CONNECT or transparent
/// destination refused for its address class) and the log line's `detail` with `end=rejected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// The client address is in none of the frontend's `allow` networks.
    Denied,
    /// `global.max_connections` reached.
    MaxConnections,
    /// The frontend's `max_connections` reached.
    FrontendMaxConnections,
    /// The client's `rate_limit` window is full.
    RateLimit,
    /// The backend has no server up (or none known yet).
    NoServer,
    /// Transparent: the connection was not redirected to the proxy (no original destination,
    /// or it was the proxy's own listener).
    NotRedirected,
    /// Transparent: the original destination, or the name asked for, matches no
    /// `allow_destinations` rule.
    Destination,
    /// Transparent: nothing the client sent names its destination (no TLS SNI, no HTTP
    /// `Host`: garbage, another protocol, or silence) and no address rule allows it.
    NoName,
    /// Transparent: the allowed name could not be resolved, so the destination cannot be
    /// checked against it.
    Unresolved,
    /// Transparent: the TLS SNI names an allowed host that does not resolve to the original
    /// destination (domain fronting).
    SniMismatch,
    /// Transparent: the same for the HTTP `Host` header.
    HostMismatch,
}

impl Reject {
    /// Every reason, in the order the metric's HELP text lists them.
    pub const ALL: [Reject; 11] = [
        Reject::Denied,
        Reject::MaxConnections,
        Reject::FrontendMaxConnections,
        Reject::RateLimit,
        Reject::NoServer,
        Reject::NotRedirected,
        Reject::Destination,
        Reject::NoName,
        Reject::Unresolved,
        Reject::SniMismatch,
        Reject::HostMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Denied => "denied",
            Reject::MaxConnections => "max_connections",
            Reject::FrontendMaxConnections => "frontend_max_connections",
            Reject::RateLimit => "rate_limit",
            Reject::NoServer => "no_server",
            Reject::NotRedirected => "not_redirected",
            Reject::Destination => "destination",
            Reject::NoName => "no_name",
            Reject::Unresolved => "unresolved",
            Reject::SniMismatch => "sni_mismatch",
            Reject::HostMismatch => "host_mismatch",
        }
    }
}

/// Which data path carried the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Kernel,
    Userspace,
    /// No bytes were carried (rejected, connect failed).
    None,
}

impl Path {
    /// Every path.
    pub const ALL: [Path; 3] = [Path::Kernel, Path::Userspace, Path::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Path::Kernel => "kernel",
            Path::Userspace => "userspace",
            Path::None => "none",
        }
    }
}

/// The result of carrying one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Client to upstream.
    pub bytes_up: u64,
    /// Upstream to client.
    pub bytes_down: u64,
    pub end: End,
    /// Detail for `End::Error` and resets (the OS error), empty otherwise.
    pub detail: String,
    /// Of `bytes_up`, those copied through userspace (all of them on the relay; on the kernel
    /// path only a tail after a flow-control pause, see docs/architecture.md).
    pub copied_up: u64,
    /// Of `bytes_down`, those copied through userspace.
    pub copied_down: u64,
    /// Times a direction of a kernel-path connection was handed to userspace (flow control, or a
    /// client that closed before its socket could join the map).
    pub pauses: u32,
    /// Times the verdict took a direction back from userspace once it had caught up.
    pub resumes: u32,
    /// Of `bytes_up`, those a same-host agent sent straight into the upstream socket
    /// (sock_ops + sk_msg); the rest of the kernel path's bytes went through the splice.
    pub direct_up: u64,
}

impl Outcome {
    /// Adds the bytes the userspace relay carried (up, down) before another data path took
    /// the connection over.
    pub fn add_relayed(&mut self, [up, down]: [u64; 2]) {
        self.bytes_up += up;
        self.bytes_down += down;
        self.copied_up += up;
        self.copied_down += down;
    }

    /// A connection that carried nothing.
    pub fn nothing(end: End, detail: impl Into<String>) -> Self {
        Self {
            bytes_up: 0,
            bytes_down: 0,
            end,
            detail: detail.into(),
            copied_up: 0,
            copied_down: 0,
            pauses: 0,
            resumes: 0,
            direct_up: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_name_their_ends() {
        for side in [Side::Client, Side::Upstream] {
            assert_eq!(Side::from_index(side.index()), side);
            assert_eq!(side.peer().peer(), side);
            assert_ne!(side.peer(), side);
        }
        assert_eq!(End::reset_by(Side::Client), End::ClientReset);
        assert_eq!(End::reset_by(Side::Upstream), End::UpstreamReset);
        assert_eq!(End::closed(Some(Side::Upstream)), End::UpstreamClose);
        assert_eq!(End::closed(Some(Side::Client)), End::ClientClose);
        assert_eq!(End::closed(None), End::ClientClose);
    }
}
