//! Why a pool made no connection, and how each attempt failed.
use std::net::SocketAddr;

use crate::{dial::DialError, report::error_chain, tls::HandshakeError};

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every address is down (or none is known): the client is refused at once.
    #[error("backend {backend:?} has no server up")]
    NoServer { backend: String },
    /// Every attempt failed; `last` says how the last one did. It is written inside the
    /// message (the log line's `detail`), so it is not also a `source`: a chain would say it
    /// twice.
    #[error(
        "no server of backend {backend:?} accepted the connection after {attempts} attempts (last: {})",
        error_chain(.last)
    )]
    Failed {
        backend: String,
        attempts: u32,
        last: AttemptError,
    },
}

/// How one attempt on one server failed: the `reason` a `server down` line gives, and the
/// `last` of [`ConnectError::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The TCP connect failed.
    #[error("{addr}")]
    Dial {
        addr: SocketAddr,
        #[source]
        source: DialError,
    },
    /// The TCP connect succeeded, the TLS handshake on it did not.
    #[error("{addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: HandshakeError,
    },
}
