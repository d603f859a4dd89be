//! A connect frontend with `tls`: an HTTPS proxy (`curl --proxy https://...`, Go's and
//! Python's clients with an `https://` proxy URL). The client's TLS handshake comes first, so
//! the credentials and the CONNECT head travel encrypted; then the same checks and answers as
//! on a plaintext frontend.
//!
//! A tunnel's bytes must be decrypted on the client side, so it runs in the userspace relay
//! ([`relay::relay_streams`]), never on the kernel path: the log line says `path=userspace`
//! and `tls=client`. Plain `http://` requests are served as on a plaintext frontend
//! ([`super::forward`]), over the TLS session.
//!
//! A TLS session cannot be peeked at, so the head is read ([`handshake::read_head_from`]):
//! what the client sent behind a CONNECT's head (a pipelined ClientHello) is written to the
//! upstream before the relay starts, and a plain request's first bytes are handed to the HTTP
//! server with the rest of the stream.

use std::os::fd::AsFd as _;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::{ESTABLISHED, Refusal, Settings, check, forward, handshake, head_refusal, open};
use crate::conn::{Conn, End, Path, Route};
use crate::dns::Dns;
use crate::relay;
use crate::tls::ServerTls;

/// The log line's word on a tunnel of a TLS frontend.
const RELAYED: &str = "TLS frontend: tunnel relayed in userspace";

/// What the first request of a TLS connection leads to.
enum Secured {
    /// The upstream of a tunnel, 200 written and the early bytes copied to it.
    Tunnel {
        upstream: TcpStream,
        server: std::net::SocketAddr,
        destination: String,
        early: u64,
    },
    /// A plain request: the bytes read so far, its head first.
    Forward(Vec<u8>),
}

/// Serves one admitted connection of a connect frontend with TLS, log line included.
pub(super) async fn run(conn: &Conn<'_>, client: TcpStream, settings: &Settings, tls: &ServerTls) {
    let shared = conn.shared;
    let _ = client.set_nodelay(true);
    let Some(mut client) = conn.accept_tls(tls, client).await else {
        return;
    };
    let negotiated = tokio::select! {
        result = negotiate(&mut client, settings, &shared.dns) => result,
        () = shared.abort.cancelled() => {
            conn.finish_nothing(End::Shutdown, "cut during the CONNECT handshake".into());
            return;
        }
    };
    match negotiated {
        Ok(Secured::Forward(read)) => Box::pin(forward::serve(conn, client, read, settings)).await,
        Ok(Secured::Tunnel {
            upstream,
            server,
            destination,
            early,
        }) => {
            settings.tunnels.inc();
            settings.early_bytes.inc_by(early);
            let _ = upstream.set_nodelay(true);
            conn.keep_alive(upstream.as_fd());
            let counters = conn.relay_counters();
            let mut outcome =
                relay::relay_streams(client, upstream, &counters, conn.cutoff()).await;
            outcome.bytes_up += early;
            outcome.copied_up += early;
            outcome.detail = if outcome.detail.is_empty() {
                RELAYED.to_owned()
            } else {
                format!("{RELAYED}; {}", outcome.detail)
            };
            let route = Route {
                server: &server.to_string(),
                destination: &destination,
                status: "200",
                ..Route::NONE
            };
            conn.finish(&route, Path::Userspace, &outcome);
        }
        Err(refusal) => super::refuse(conn, client, refusal).await,
    }
}

/// Steps 2-5 of the module doc of [`super`], over the TLS session.
async fn negotiate(
    client: &mut TlsStream<TcpStream>,
    settings: &Settings,
    dns: &Dns,
) -> Result<Secured, Refusal> {
    let (request, mut read) = handshake::read_head_from(client, settings.request_timeout)
        .await
        .map_err(|e| head_refusal(e, settings))?;
    let Some((target, destination)) = check(&request, settings)? else {
        return Ok(Secured::Forward(read));
    };
    let (mut upstream, server) = open(settings, dns, &target, &destination).await?;
    let gone = |detail: String| Refusal {
        status: Err(End::ClientClose),
        destination: destination.clone(),
        detail,
        class: None,
    };
    let early = read.split_off(request.head_len.min(read.len()));
    let written = async {
        client.write_all(ESTABLISHED).await?;
        client.flush().await
    };
    written.await.map_err(|e| gone(format!("client: {e}")))?;
    upstream
        .write_all(&early)
        .await
        .map_err(|e| gone(format!("upstream: {e}")))?;
    Ok(Secured::Tunnel {
        upstream,
        server,
        destination,
        early: early.len() as u64,
    })
}
