//! One tcp-mode connection with TLS on at least one side: the client's handshake, the dial
//! with the server's handshake as its last step, and the userspace relay.
use std::os::fd::AsFd as _;

use tokio::net::TcpStream;

use crate::{
    conn::{Conn, End, Path, Shared},
    net,
    pool::{ConnectError, Lease, Pool},
    relay,
    tls::{ClientTls, HandshakeError, ServerTls},
};

/// One end of a connection: the TCP socket, or the TLS session over it.
enum Stream<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

type ClientStream = Stream<tokio_rustls::server::TlsStream<TcpStream>>;
type UpstreamStream = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

impl ClientStream {
    /// The TCP socket, for a reset.
    fn into_tcp(self) -> TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.into_inner().0,
        }
    }
}

impl UpstreamStream {
    /// The TCP socket under the stream.
    fn tcp(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Plain(tcp) => tcp.as_fd(),
            Stream::Tls(tls) => relay::TcpUnder::tcp(&**tls),
        }
    }
}

/// tcp mode with `tls` on the frontend, the backend, or both.
pub(super) async fn run(
    conn: &Conn<'_>,
    client: TcpStream,
    pool: &Pool,
    tls: Option<&ServerTls>,
    backend_tls: Option<&ClientTls>,
) {
    let (frontend, shared) = (conn.frontend, conn.shared);
    let _ = net::set_nodelay(client.as_fd());
    // The client's handshake comes first: nothing is dialed for a client that cannot complete it
    // (a plaintext or garbage client on a TLS port), and it runs here, in the connection's task,
    // so a slow one never holds up the accept loop.
    let client: ClientStream = match tls {
        Some(tls) => match tokio::select! {
            r = tls.accept(client) => r,
            // Cut at the end of the drain like a carried connection, with its log line.
            () = shared.abort.cancelled() => Err(HandshakeError::Shutdown),
        } {
            Ok(stream) => Stream::Tls(Box::new(stream)),
            Err(e) => {
                shared
                    .metrics
                    .tls_handshake_errors_total
                    .with_label_values(&["frontend", frontend.name.as_str(), e.reason()])
                    .inc();
                conn.finish_nothing(End::TlsHandshakeFailed, e.to_string());
                return;
            }
        },
        None => Stream::Plain(client),
    };
    let (upstream, lease) = match dial(pool, backend_tls, shared).await {
        Ok(pair) => pair,
        Err(e) => return conn.unconnected(client.into_tcp(), e),
    };
    conn.keep_alive(upstream.tcp());
    let counters = conn.relay_counters();
    let cut = conn.cutoff();
    // TLS on either side: the bytes must be decrypted or encrypted here, so the relay.
    let outcome = match (client, upstream) {
        (Stream::Tls(c), Stream::Plain(u)) => relay::relay_streams(*c, u, &counters, cut).await,
        (Stream::Plain(c), Stream::Tls(u)) => relay::relay_streams(c, *u, &counters, cut).await,
        (Stream::Tls(c), Stream::Tls(u)) => relay::relay_streams(*c, *u, &counters, cut).await,
        // Not reached (plaintext both sides goes through `Conn::carry`), but relaying is right.
        (Stream::Plain(c), Stream::Plain(u)) => relay::relay_streams(c, u, &counters, cut).await,
    };
    let route = crate::conn::Route {
        server: &lease.server().name,
        ..crate::conn::Route::NONE
    };
    conn.finish(&route, Path::Userspace, &outcome);
    drop(lease);
}

/// Dials a server of `pool`, with the TLS handshake as the last step of the connect when the
/// backend has `tls`: a failed handshake is counted and the next server is tried.
async fn dial(
    pool: &Pool,
    tls: Option<&ClientTls>,
    shared: &Shared,
) -> Result<(UpstreamStream, Lease), ConnectError> {
    let Some(tls) = tls else {
        let (tcp, lease) = pool.connect().await?;
        let _ = net::set_nodelay(tcp.as_fd());
        return Ok((Stream::Plain(tcp), lease));
    };
    let handshake_errors = &shared.metrics.tls_handshake_errors_total;
    let (stream, lease) = pool
        .connect_with(|tcp, server| async move {
            let _ = net::set_nodelay(tcp.as_fd());
            tls.connect(tcp, &server.host).await.inspect_err(|e| {
                handshake_errors
                    .with_label_values(&["backend", pool.name.as_str(), e.reason()])
                    .inc();
            })
        })
        .await?;
    Ok((Stream::Tls(Box::new(stream)), lease))
}
