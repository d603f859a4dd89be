//! One tcp-mode connection with TLS on at least one side: the client's handshake, the dial
//! with the server's handshake as its last step, and the userspace relay.
use std::os::fd::AsFd as _;

use tokio::net::TcpStream;

use crate::{
    conn::{Conn, Path},
    net,
    pool::Pool,
    relay::{self, TcpUnder as _},
    tls::{ClientTls, ServerTls},
    upstream::{self, Dialed},
};

/// One end of a connection: the TCP socket, or the TLS session over it.
enum Stream<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

type ClientStream = Stream<tokio_rustls::server::TlsStream<TcpStream>>;

impl ClientStream {
    /// The TCP socket, for a reset.
    fn into_tcp(self) -> TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.into_inner().0,
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
    let shared = conn.shared;
    let _ = net::set_nodelay(client.as_fd());
    // The client's handshake comes first: nothing is dialed for a client that cannot complete it
    // (a plaintext or garbage client on a TLS port).
    let client: ClientStream = match tls {
        Some(tls) => match conn.accept_tls(tls, client).await {
            Some(stream) => Stream::Tls(Box::new(stream)),
            None => return,
        },
        None => Stream::Plain(client),
    };
    let (upstream, lease) = match upstream::dial(pool, backend_tls, &shared.metrics).await {
        Ok(pair) => pair,
        Err(e) => return conn.unconnected(client.into_tcp(), e),
    };
    conn.keep_alive(upstream.tcp());
    let counters = conn.relay_counters();
    let cut = conn.cutoff();
    // TLS on either side: the bytes must be decrypted or encrypted here, so the relay.
    let outcome = match (client, upstream) {
        (Stream::Tls(c), Dialed::Plain(u)) => relay::relay_streams(*c, u, &counters, cut).await,
        (Stream::Plain(c), Dialed::Tls(u)) => relay::relay_streams(c, *u, &counters, cut).await,
        (Stream::Tls(c), Dialed::Tls(u)) => relay::relay_streams(*c, *u, &counters, cut).await,
        // Not reached (plaintext both sides goes through `Conn::carry`), but relaying is right.
        (Stream::Plain(c), Dialed::Plain(u)) => relay::relay_streams(c, u, &counters, cut).await,
    };
    let route = crate::conn::Route {
        server: &lease.server().name,
        ..crate::conn::Route::NONE
    };
    conn.finish(&route, Path::Userspace, &outcome);
    drop(lease);
}
