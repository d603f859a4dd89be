//! The userspace data path: copy both directions with tokio, with the kernel path's semantics.
//!
//! - Each direction reads until EOF and then shuts the other socket's write side, while the other
//!   direction keeps flowing (half-close).
//! - A read or write error on one socket resets the other (close with `SO_LINGER` 0).
//! - Buffers exist only while bytes flow: a direction allocates when its socket turns readable
//!   and frees the buffer once the socket has nothing more, so idle connections hold none. A
//!   peer that stops reading stops its direction at one buffer (`write_all` waits), so memory
//!   stays bounded by the socket buffers plus one buffer.
use std::{io, os::fd::AsRawFd};

use prometheus::IntCounter;
use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    conn::{End, Outcome},
    net,
};

/// Bytes read per system call.
const CHUNK: usize = 64 * 1024;

/// The byte counters of one connection's two directions.
pub struct RelayCounters {
    pub up: IntCounter,
    pub down: IntCounter,
}

/// Which socket failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    Client,
    Upstream,
}

struct DirectionError {
    failed: Failed,
    error: io::Error,
}

/// Copies `from` into `to` until EOF (then shuts `to`'s write side), counting into `total`.
async fn pump(
    from: &OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    from_side: Failed,
    to_side: Failed,
    total: &mut u64,
    metric: &IntCounter,
) -> Result<(), DirectionError> {
    let read_err = |error| DirectionError {
        failed: from_side,
        error,
    };
    let write_err = |error| DirectionError {
        failed: to_side,
        error,
    };
    loop {
        from.readable().await.map_err(read_err)?;
        let mut buf = Vec::with_capacity(CHUNK);
        loop {
            buf.clear();
            match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    to.shutdown().await.map_err(write_err)?;
                    return Ok(());
                }
                Ok(n) => {
                    to.write_all(&buf).await.map_err(write_err)?;
                    *total += n as u64;
                    metric.inc_by(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(read_err(e)),
            }
        }
    }
}

/// Relays until both directions finished, one side failed, or `cancel` fires.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    counters: &RelayCounters,
    cancel: &CancellationToken,
) -> Outcome {
    let (client_read, mut client_write) = client.into_split();
    let (upstream_read, mut upstream_write) = upstream.into_split();
    let (mut up, mut down) = (0u64, 0u64);
    let mut first_eof = None;
    let result = {
        let up_fut = pump(
            &client_read,
            &mut upstream_write,
            Failed::Client,
            Failed::Upstream,
            &mut up,
            &counters.up,
        );
        let down_fut = pump(
            &upstream_read,
            &mut client_write,
            Failed::Upstream,
            Failed::Client,
            &mut down,
            &counters.down,
        );
        tokio::pin!(up_fut, down_fut);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            if up_done && down_done {
                break Ok(());
            }
            tokio::select! {
                r = &mut up_fut, if !up_done => match r {
                    Ok(()) => { up_done = true; first_eof.get_or_insert(Failed::Client); }
                    Err(e) => break Err(Some(e)),
                },
                r = &mut down_fut, if !down_done => match r {
                    Ok(()) => { down_done = true; first_eof.get_or_insert(Failed::Upstream); }
                    Err(e) => break Err(Some(e)),
                },
                () = cancel.cancelled() => break Err(None),
            }
        }
    };
    let (end, detail) = match result {
        Ok(()) => match first_eof {
            Some(Failed::Upstream) => (End::UpstreamClose, String::new()),
            _ => (End::ClientClose, String::new()),
        },
        Err(failure) => {
            // Abortive end: reset both sockets so the survivor's peer learns at once.
            for fd in [
                client_read.as_ref().as_raw_fd(),
                upstream_read.as_ref().as_raw_fd(),
            ] {
                let _ = net::set_linger_zero(fd);
            }
            match failure {
                Some(DirectionError {
                    failed: Failed::Client,
                    error,
                }) => (End::ClientReset, error.to_string()),
                Some(DirectionError {
                    failed: Failed::Upstream,
                    error,
                }) => (End::UpstreamReset, error.to_string()),
                None => (End::Shutdown, "drain timeout".to_string()),
            }
        }
    };
    Outcome {
        bytes_up: up,
        bytes_down: down,
        end,
        detail,
        copied_up: up,
        copied_down: down,
        pauses: 0,
    }
}
