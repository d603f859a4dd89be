//! How one TCP connect to an upstream address failed, told apart by kind: a refused port, an
//! unreachable host or network, no answer within the timeout, or another I/O error. Pools,
//! health checks and CONNECT tunnels all dial; each adds its own context (the address, the
//! probe) around a [`DialError`]; the connect call and its timeout stay at each dial site.
use std::{io, time::Duration};

/// Why a TCP connect gave no connection. The I/O variants render as the I/O error does, so
/// that the context around them (`ADDR: ...`) reads as it always has.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The peer answered the SYN with a reset: nothing listens on that port.
    #[error(transparent)]
    Refused(io::Error),
    /// No route to the host or its network (a local routing error or an ICMP answer).
    #[error(transparent)]
    Unreachable(io::Error),
    /// No answer within the connect timeout.
    #[error("connect timeout after {0:?}")]
    Timeout(Duration),
    /// Any other failure of the connect call.
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for DialError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => DialError::Refused(e),
            io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown => DialError::Unreachable(e),
            _ => DialError::Io(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn kinds_follow_the_errno_and_render_as_the_io_error() {
        let refused = DialError::from(os(libc::ECONNREFUSED));
        assert!(matches!(refused, DialError::Refused(_)), "{refused:?}");
        assert_eq!(refused.to_string(), os(libc::ECONNREFUSED).to_string());
        for code in [libc::EHOSTUNREACH, libc::ENETUNREACH, libc::ENETDOWN] {
            let e = DialError::from(os(code));
            assert!(matches!(e, DialError::Unreachable(_)), "{code}: {e:?}");
            assert_eq!(e.to_string(), os(code).to_string());
        }
        let other = DialError::from(os(libc::EADDRNOTAVAIL));
        assert!(matches!(other, DialError::Io(_)), "{other:?}");
        assert_eq!(other.to_string(), os(libc::EADDRNOTAVAIL).to_string());
        assert_eq!(
            DialError::Timeout(Duration::from_millis(1500)).to_string(),
            "connect timeout after 1.5s"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = DialError::from(TcpStream::connect(addr).await.unwrap_err());
        assert!(matches!(e, DialError::Refused(_)), "{e:?}");
    }
}
