//! `mode = "tcp"`: every connection goes to the frontend's backend pool. Plaintext on both
//! sides, the bytes go through [`Conn::carry`] (the kernel splice when loaded); with TLS on a
//! side ([`tls`]), the handshakes run here and the relay carries the bytes.
mod tls;

use std::os::fd::AsFd as _;

use tokio::net::TcpStream;

use crate::{
    conn::{Conn, Route},
    net,
    pool::Pool,
    tls::{ClientTls, ServerTls},
};

/// Serves one admitted connection of a tcp frontend to its end, log line included (a block,
/// not an `async fn`: see `Conn::carry`).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of each argument in its future"
)]
pub(crate) fn run<'a>(
    conn: &'a Conn<'_>,
    client: TcpStream,
    pool: &'a Pool,
    tls: Option<&'a ServerTls>,
    backend_tls: Option<&'a ClientTls>,
) -> impl Future<Output = ()> + Send {
    async move {
        if tls.is_some() || backend_tls.is_some() {
            Box::pin(tls::run(conn, client, pool, tls, backend_tls)).await;
            return;
        }
        let (upstream, lease) = match Box::pin(pool.connect()).await {
            Ok(pair) => pair,
            Err(e) => return conn.unconnected(client, e),
        };
        let (client, upstream) = (nodelay(client), nodelay(upstream));
        let carried = conn.carry(client, upstream, 0).await;
        let route = Route {
            server: &lease.server().name,
            ..Route::NONE
        };
        if let Some(rest) = conn.finish_carried(&route, carried, 0) {
            rest.await;
        }
        drop(lease);
    }
}

/// Sets TCP_NODELAY (best effort). Takes the stream by value: a borrow of a local in an
/// `async fn` keeps the local's storage in the future even after it is moved away.
fn nodelay(stream: TcpStream) -> TcpStream {
    let _ = net::set_nodelay(stream.as_fd());
    stream
}
