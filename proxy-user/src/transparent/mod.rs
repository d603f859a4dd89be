//! `mode = "transparent"`: connections that iptables redirected to the proxy (nat `REDIRECT`,
//! rules of [`crate::redirect`]), each going where its client sent it.
//!
//! A connection lives like this:
//! 1. admission as in every mode (client CIDRs, connection limits, per-IP rate limit);
//! 2. its original destination comes from conntrack (`SO_ORIGINAL_DST`, IPv4, or
//!    `IP6T_SO_ORIGINAL_DST`); a connection that was not redirected - one made straight to the
//!    listener - is refused, since it would be sent back to the proxy;
//! 3. the destination policy of connect mode ([`crate::destination`], default deny):
//!    - an address rule naming the original destination allows it as it is, without reading a
//!      byte (so protocols where the server speaks first work);
//!    - otherwise the client's first bytes are *peeked* ([`sniff`]: nothing is consumed, the
//!      bytes stay queued for the data path) for the name it asks for: the TLS ClientHello's
//!      SNI or the plain-HTTP `Host`. That name must match a name rule, and the original
//!      destination must be one of the addresses the proxy resolves it to: a client cannot
//!      present an allowed name while connecting elsewhere (domain fronting). Garbage, a
//!      ClientHello without SNI, or nothing within `sniff_timeout` names nothing and is refused;
//!    - the original destination must be global unicast unless a rule names it (the address
//!      policy of connect mode: loopback, private, link-local and metadata addresses refused);
//! 4. the upstream is dialed - the original destination, or a server of the frontend's
//!    `backend` - from a socket marked with `global.outgoing_mark`, which the `OUTPUT` rules
//!    let pass, so the proxy never captures its own connection;
//! 5. the pair goes to [`Conn::carry`]: the kernel splice when it is loaded, the bytes still
//!    queued in the client socket included; the agent's TLS passes through untouched.
//!
//! A refusal resets the client (it is not a proxy client: there is nobody to read an answer),
//! counted in `agent_proxy_frontend_rejected_total{reason}` and logged with the original
//! destination, the name asked for, and why.
pub(crate) mod sniff;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::TransparentMode;
use crate::conn::{Conn, End, Outcome, Path, Reject, Route};
use crate::destination::{Judgement, Policy, Target, TargetHost};
use crate::dial::DialError;
use crate::dns::Dns;
use crate::net;
use crate::peek::{self, Seen};
use crate::pool::Pool;
use sniff::Sniffed;

/// What a transparent frontend needs at run time, built once from its config.
pub(crate) struct Settings {
    pub policy: Policy,
    /// Where allowed connections go instead of their original destination.
    pub backend: Option<Arc<Pool>>,
    pub connect_timeout: Duration,
    pub sniff_timeout: Duration,
}

impl Settings {
    pub(crate) fn new(config: &TransparentMode, backend: Option<Arc<Pool>>) -> Self {
        Self {
            policy: Policy::new(config.allow_destinations.clone()),
            backend,
            connect_timeout: config.connect_timeout,
            sniff_timeout: config.sniff_timeout,
        }
    }
}

/// What step 3 decided.
enum Decision {
    /// Allowed; `host` is the name the client asked for ("-" when an address rule allowed it).
    Allowed { host: String },
    Refused {
        reason: String,
        host: String,
        detail: String,
    },
    /// The client left before it named its destination.
    Gone { end: End, detail: String },
}

impl Decision {
    fn refused(reason: Reject, host: &str, detail: String) -> Self {
        Decision::Refused {
            reason: reason.as_str().to_owned(),
            host: host.to_owned(),
            detail,
        }
    }
}

/// Serves one admitted connection of a transparent frontend to its end, log line included.
pub(crate) async fn run(conn: &Conn<'_>, client: TcpStream, settings: &Settings) {
    let original = match original_destination(&client) {
        Ok(original) => original,
        Err(detail) => {
            return conn.refuse(client, Reject::NotRedirected.as_str(), &Route::NONE, detail);
        }
    };
    let destination = original.to_string();
    let decided = tokio::select! {
        decided = decide(&client, settings, original, &conn.shared.dns) => decided,
        () = conn.shared.abort.cancelled() => Decision::Gone {
            end: End::Shutdown,
            detail: "cut while reading what the client asks for".into(),
        },
    };
    let host = match decided {
        Decision::Allowed { host } => host,
        Decision::Refused {
            reason,
            host,
            detail,
        } => {
            let route = Route {
                destination: &destination,
                host: &host,
                ..Route::NONE
            };
            return conn.refuse(client, &reason, &route, detail);
        }
        Decision::Gone { end, detail } => {
            let route = Route {
                destination: &destination,
                ..Route::NONE
            };
            return conn.finish(&route, Path::None, &Outcome::nothing(end, detail));
        }
    };
    Box::pin(forward(
        conn,
        client,
        settings,
        original,
        &destination,
        &host,
    ))
    .await;
}

/// Steps 4 and 5: dial, carry, log.
async fn forward(
    conn: &Conn<'_>,
    client: TcpStream,
    settings: &Settings,
    original: SocketAddr,
    destination: &str,
    host: &str,
) {
    let (upstream, server, lease) = match &settings.backend {
        Some(pool) => match Box::pin(pool.connect()).await {
            Ok((upstream, lease)) => {
                let server = lease.server().name.clone();
                (upstream, server, Some(lease))
            }
            Err(e) => return conn.unconnected(client, e),
        },
        None => {
            match tokio::time::timeout(settings.connect_timeout, net::connect(original)).await {
                Ok(Ok(upstream)) => (upstream, destination.to_owned(), None),
                Ok(Err(e)) => return unreachable(conn, client, destination, host, e.into()),
                Err(_) => {
                    let e = DialError::Timeout(settings.connect_timeout);
                    return unreachable(conn, client, destination, host, e);
                }
            }
        }
    };
    for stream in [&client, &upstream] {
        let _ = net::set_nodelay(stream.as_fd());
    }
    let carried = conn.carry(client, upstream, 0).await;
    let route = Route {
        server: &server,
        destination,
        host,
        ..Route::NONE
    };
    if let Some(rest) = conn.finish_carried(&route, carried, 0) {
        rest.await;
    }
    drop(lease);
}

/// The original destination could not be dialed: the client gets a reset, as it would have
/// from a destination that refused it, and the log line says why.
fn unreachable(conn: &Conn<'_>, client: TcpStream, destination: &str, host: &str, why: DialError) {
    let route = Route {
        destination,
        host,
        ..Route::NONE
    };
    let detail = format!("cannot connect to {destination}: {why}");
    conn.reset(client, &route, End::ConnectFailed, detail);
}

/// Step 2. IPv4-mapped addresses (an IPv4 client of a dual-stack listener) come out as IPv4.
fn original_destination(client: &TcpStream) -> Result<SocketAddr, String> {
    let local = client
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?;
    let ipv4 = local.ip().to_canonical().is_ipv4();
    let original = net::original_destination(client.as_fd(), ipv4).map_err(|e| {
        format!("no original destination ({e}): the connection was not redirected by iptables")
    })?;
    let original = SocketAddr::new(original.ip().to_canonical(), original.port());
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    if original == local {
        return Err(format!(
            "the connection was made straight to the listener {local}, not redirected to it; \
             only redirected connections are proxied"
        ));
    }
    Ok(original)
}

/// Step 3.
async fn decide(
    client: &TcpStream,
    settings: &Settings,
    original: SocketAddr,
    dns: &Dns,
) -> Decision {
    let policy = &settings.policy;
    let literal = Target {
        host: TargetHost::Ip(original.ip()),
        port: original.port(),
    };
    if policy.allows(&literal) {
        // An address rule names it, so the address policy lets it through too.
        return Decision::Allowed { host: "-".into() };
    }
    if !policy.has_name_rules() {
        return Decision::refused(
            Reject::Destination,
            "-",
            format!("destination {original} is not allowed"),
        );
    }
    let mut buf = vec![0u8; sniff::MAX_SNIFF];
    let sniffed = tokio::time::timeout(
        settings.sniff_timeout,
        peek::until(client, &mut buf, |seen| match seen {
            // `Some(None)`: the client reset the connection.
            Seen::Bytes { bytes, closed } => sniff::sniff(bytes, closed).map(Some),
            Seen::Reset => Some(None),
        }),
    )
    .await;
    let (name, mismatch) = match sniffed {
        Err(_) => {
            return Decision::refused(
                Reject::NoName,
                "-",
                format!(
                    "the client sent nothing that names its destination within {:?}; only an \
                     address rule allows a protocol where the server speaks first",
                    settings.sniff_timeout
                ),
            );
        }
        // `sniff` decides on every closed client, so a stall is a client that closed.
        Ok(Err(_stalled)) => {
            return Decision::Gone {
                end: End::ClientClose,
                detail: "client closed before it named its destination".into(),
            };
        }
        Ok(Ok(None)) => {
            return Decision::Gone {
                end: End::ClientReset,
                detail: "client reset the connection before it named its destination".into(),
            };
        }
        Ok(Ok(Some(sniffed))) => match sniffed {
            Sniffed::Tls { sni: Some(name) } => (name, Reject::SniMismatch),
            Sniffed::Http { host: Some(value) } => (
                sniff::host_without_port(&value).to_owned(),
                Reject::HostMismatch,
            ),
            Sniffed::Tls { sni: None } => {
                return no_name("a TLS ClientHello without SNI");
            }
            Sniffed::Http { host: None } => {
                return no_name("an HTTP request without exactly one Host header");
            }
            Sniffed::Other => {
                return no_name("neither a TLS ClientHello nor an HTTP/1.x request");
            }
        },
    };
    check_name(policy, dns, original, &name, mismatch).await
}

fn no_name(what: &str) -> Decision {
    Decision::refused(
        Reject::NoName,
        "-",
        format!(
            "the client sent {what}, which names no destination, and no address rule allows it"
        ),
    )
}

/// Step 3 for a name: a rule, the name's addresses, the address policy.
async fn check_name(
    policy: &Policy,
    dns: &Dns,
    original: SocketAddr,
    name: &str,
    mismatch: Reject,
) -> Decision {
    let shown = name.chars().take(253).collect::<String>();
    let target = match Target::parse(&format!("{name}:{}", original.port())) {
        Ok(target) => target,
        Err(_) => {
            return Decision::refused(
                Reject::NoName,
                "-",
                format!("the client asked for {shown:?}, which is not a host name"),
            );
        }
    };
    let TargetHost::Name { name, .. } = &target.host else {
        // An address in `Host`: only address rules (already checked) could allow it.
        return Decision::refused(
            Reject::Destination,
            &shown,
            format!("destination {original} is not allowed"),
        );
    };
    if !policy.allows(&target) {
        return Decision::refused(
            Reject::Destination,
            name,
            format!(
                "{name}:{} is not allowed (destination {original})",
                original.port()
            ),
        );
    }
    // Resolved as a fully qualified name: the check must not depend on search domains.
    let addrs = match dns.resolve(&format!("{name}."), original.port()).await {
        Ok(addrs) => addrs,
        Err(e) => {
            return Decision::refused(
                Reject::Unresolved,
                name,
                format!("cannot resolve {name} to check destination {original}: {e}"),
            );
        }
    };
    let ip: IpAddr = original.ip();
    if !addrs.iter().any(|a| a.ip().to_canonical() == ip) {
        let list = addrs
            .iter()
            .map(|a| a.ip().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Decision::refused(
            mismatch,
            name,
            format!("{name} resolves to {list}, not to the destination {original}"),
        );
    }
    match policy.judge(original) {
        Judgement::Refused(why) => Decision::Refused {
            reason: crate::address_class::reason(why.class),
            host: name.clone(),
            detail: format!(
                "destination {original} ({why}) is not global unicast; name it in \
                 allow_destinations to allow it"
            ),
        },
        Judgement::Global | Judgement::Named(_) => Decision::Allowed { host: name.clone() },
    }
}
