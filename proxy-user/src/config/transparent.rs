//! The keys of a `mode = "transparent"` frontend (docs/transparent.md).

use std::net::SocketAddr;

use toml::Spanned;

use super::convert::{Result, allow_destinations, error_at, int, parse_at, timeout};
use super::raw::{RawFrontend, RawIntercept};
use super::{Backend, Intercept, TransparentMode, value};

/// `multiport` takes at most 15 ports a rule; more ports make more rules, and past this many an
/// operator is better served by routing the whole host through the proxy.
const MAX_PORTS: usize = 64;

/// Converts the transparent-mode keys of frontend `name`, which listens on `listen`.
pub(super) fn mode(raw: &RawFrontend, name: &str, listen: SocketAddr) -> Result<TransparentMode> {
    let intercept = raw
        .intercept
        .as_ref()
        .map(|spanned| intercept(spanned, name, listen))
        .transpose()?;
    Ok(TransparentMode {
        allow_destinations: allow_destinations(raw)?,
        backend: raw.backend.as_ref().map(|b| b.get_ref().clone()),
        intercept,
        connect_timeout: timeout(
            "connect_timeout",
            raw.connect_timeout.as_ref(),
            Backend::DEFAULT_CONNECT_TIMEOUT,
        )?,
        sniff_timeout: timeout(
            "sniff_timeout",
            raw.sniff_timeout.as_ref(),
            TransparentMode::DEFAULT_SNIFF_TIMEOUT,
        )?,
    })
}

fn intercept(spanned: &Spanned<RawIntercept>, name: &str, listen: SocketAddr) -> Result<Intercept> {
    let raw = spanned.get_ref();
    let mut ports: Vec<u16> = Vec::new();
    for entry in &raw.ports.get_ref().0 {
        let port: u16 = int("intercept port", entry, 1, i64::from(u16::MAX))?;
        if ports.contains(&port) {
            return Err(error_at(
                entry.span(),
                format!("duplicate intercept port {port}"),
            ));
        }
        ports.push(port);
    }
    if ports.is_empty() || ports.len() > MAX_PORTS {
        return Err(error_at(
            raw.ports.span(),
            format!("intercept ports: expected 1 to {MAX_PORTS} ports"),
        ));
    }
    if ports.contains(&listen.port()) {
        return Err(error_at(
            raw.ports.span(),
            format!(
                "frontend \"{name}\": intercept ports include the frontend's own port {}; \
                 its connections would be redirected to itself",
                listen.port()
            ),
        ));
    }
    let from = match &raw.from {
        Some(list) => list
            .get_ref()
            .0
            .iter()
            .map(|entry| {
                parse_at(entry, |text| {
                    value::network(text).map_err(|_| {
                        format!(
                            "invalid intercept network \"{text}\": expected an IP address or a \
                             CIDR such as 10.0.0.0/8"
                        )
                    })
                })
            })
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let local = raw.local.as_ref().is_some_and(|l| *l.get_ref());
    if from.is_empty() && !local {
        return Err(error_at(
            spanned.span(),
            format!(
                "frontend \"{name}\": intercept captures nothing: set `from` (client networks \
                 routed through this host) and/or `local = true` (this host's own processes)"
            ),
        ));
    }
    // REDIRECT sends a routed connection to the address of the interface it came in on, and a
    // local one to the loopback address: the listener must be bound where those arrive.
    let ip = listen.ip();
    if (!from.is_empty() && !ip.is_unspecified())
        || (local && !ip.is_unspecified() && !ip.is_loopback())
    {
        let needs = if from.is_empty() {
            "a loopback or wildcard address (127.0.0.1, 0.0.0.0, [::])"
        } else {
            "a wildcard address (0.0.0.0 or [::])"
        };
        return Err(error_at(
            spanned.span(),
            format!(
                "frontend \"{name}\": intercept redirects to this host's own port {}: listen on \
                 {needs}, not {ip}",
                listen.port()
            ),
        ));
    }
    if listen.port() == 0 {
        return Err(error_at(
            spanned.span(),
            format!("frontend \"{name}\": intercept needs a fixed listen port, not 0"),
        ));
    }
    Ok(Intercept { ports, from, local })
}
