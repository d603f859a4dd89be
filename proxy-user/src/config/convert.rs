//! Raw → typed: the one place where config values get their meaning.
//!
//! Every check that can fail has the [`Spanned`] value it is about at hand, so each error carries
//! the byte offset of the offending value (or of the `[[frontend]]`/`[[backend]]` header when a
//! required key is missing). Sections are converted in file order - global, frontends,
//! backends - and cross-references (a frontend's backend) are resolved last, when every backend
//! is known.

use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

use super::raw::{
    Int, List, RawBackend, RawBackendTls, RawCertFiles, RawConfig, RawFrontend, RawFrontendTls,
    RawGlobal, RawKeepalive, RawLocalAgents, RawRateLimit,
};
use super::{
    Backend, BackendTls, Balance, CertFiles, Config, ConnectMode, Dataplane, DestinationRule,
    Frontend, FrontendMode, FrontendTls, Global, HttpMode, LocalAgentsMode, LogFormat, RateLimit,
    TcpKeepalive, User, pool, value,
};

/// Connection limits above this are refused: no fd limit allows that many sockets, and the
/// limit feeds a `tokio::sync::Semaphore`, which panics above `usize::MAX >> 3` permits.
const MAX_CONNECTIONS_LIMIT: i64 = 1 << 30;

/// A conversion error: a message and the byte offset it is about.
#[derive(Debug)]
pub(super) struct SpanError {
    pub offset: usize,
    pub message: String,
}

pub(super) type Result<T> = std::result::Result<T, SpanError>;

pub(super) fn error_at(span: Range<usize>, message: impl Into<String>) -> SpanError {
    SpanError {
        offset: span.start,
        message: message.into(),
    }
}

/// Runs `parse` on a spanned value, positioning its error at the value.
pub(super) fn parse_at<V, T>(
    spanned: &Spanned<V>,
    parse: impl FnOnce(&V) -> std::result::Result<T, String>,
) -> Result<T> {
    parse(spanned.get_ref()).map_err(|message| error_at(spanned.span(), message))
}

/// An integer key checked against `min..=max` and converted to the type the field stores.
pub(super) fn int<T: TryFrom<i64>>(
    key: &str,
    spanned: &Spanned<Int>,
    min: i64,
    max: i64,
) -> Result<T> {
    parse_at(spanned, |&Int(value)| {
        if value < min {
            return Err(format!("invalid {key} {value}: expected at least {min}"));
        }
        if value > max {
            return Err(format!("invalid {key} {value}: expected at most {max}"));
        }
        T::try_from(value).map_err(|_| format!("invalid {key} {value}: too large"))
    })
}

pub(super) fn config(raw: RawConfig) -> Result<Config> {
    let global = match raw.global {
        Some(raw) => global(raw)?,
        None => Global::default(),
    };

    // `frontend = []` points at the array; no frontend at all points at the file's start.
    let frontends_span = raw.frontend.as_ref().map_or(0..0, Spanned::span);
    let raw_frontends = match raw.frontend.map(Spanned::into_inner) {
        Some(List(frontends)) if !frontends.is_empty() => frontends,
        _ => {
            return Err(error_at(
                frontends_span,
                "at least one [[frontend]] is required",
            ));
        }
    };
    let mut frontends: Vec<Frontend> = Vec::with_capacity(raw_frontends.len());
    let mut backend_refs = Vec::with_capacity(raw_frontends.len());
    for raw in raw_frontends {
        let (frontend, backend_ref) = self::frontend(raw, &frontends, &global)?;
        frontends.push(frontend);
        backend_refs.push(backend_ref);
    }

    let raw_backends = raw
        .backend
        .map_or_else(Vec::new, |spanned| spanned.into_inner().0);
    let mut backends: Vec<Backend> = Vec::with_capacity(raw_backends.len());
    for raw in raw_backends {
        let backend = self::backend(raw, &backends)?;
        backends.push(backend);
    }

    for (frontend, backend_ref) in frontends.iter().zip(&backend_refs) {
        let backend = match &frontend.mode {
            FrontendMode::Tcp { backend } | FrontendMode::Http(HttpMode { backend, .. }) => backend,
            FrontendMode::Transparent(mode) => match &mode.backend {
                Some(backend) => backend,
                None => continue,
            },
            FrontendMode::Connect(_) => continue,
        };
        let Some(backend_ref) = backend_ref else {
            continue;
        };
        if !backends.iter().any(|b| &b.name == backend) {
            return Err(error_at(
                backend_ref.clone(),
                format!(
                    "frontend \"{}\": backend \"{backend}\" is not defined",
                    frontend.name
                ),
            ));
        }
    }

    Ok(Config {
        global,
        frontends,
        backends,
    })
}

fn global(raw: RawGlobal) -> Result<Global> {
    let mut global = Global::default();
    if let Some(spanned) = &raw.max_connections {
        global.max_connections = int("max_connections", spanned, 1, MAX_CONNECTIONS_LIMIT)?;
    }
    if let Some(spanned) = &raw.dataplane {
        global.dataplane = parse_at(spanned, |text| match text.as_str() {
            "auto" => Ok(Dataplane::Auto),
            "kernel" => Ok(Dataplane::Kernel),
            "userspace" => Ok(Dataplane::Userspace),
            other => Err(format!(
                "invalid dataplane \"{other}\": expected auto, kernel or userspace"
            )),
        })?;
    }
    if let Some(spanned) = &raw.admin {
        global.admin = parse_at(spanned, |text| match text.as_str() {
            "off" | "" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| {
                format!("invalid admin address \"{addr}\": expected IP:PORT or \"off\"")
            }),
        })?;
    }
    if let Some(spanned) = &raw.drain_timeout {
        global.drain_timeout = parse_at(spanned, |text| value::duration("drain_timeout", text))?;
    }
    if let Some(spanned) = &raw.log_format {
        global.log_format = parse_at(spanned, |text| match text.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "invalid log_format \"{other}\": expected text or json"
            )),
        })?;
    }
    if let Some(spanned) = &raw.nameservers {
        global.nameservers = spanned
            .get_ref()
            .0
            .iter()
            .map(|entry| parse_at(entry, |text| value::nameserver(text)))
            .collect::<Result<_>>()?;
    }
    if let Some(spanned) = &raw.kernel_sndbuf {
        // setsockopt takes an `int`.
        global.kernel_sndbuf = int("kernel_sndbuf", spanned, 0, i64::from(i32::MAX))?;
    }
    if let Some(spanned) = &raw.kernel_window {
        let min = Global::MIN_KERNEL_WINDOW.cast_signed();
        global.kernel_window = int("kernel_window", spanned, min, i64::MAX)?;
    }
    if let Some(spanned) = &raw.kernel_after {
        global.kernel_after = int("kernel_after", spanned, 0, i64::MAX)?;
    }
    if let Some(spanned) = &raw.local_agents {
        global.local_agents = parse_at(spanned, |value| match value {
            RawLocalAgents::Flag(true) => Ok(LocalAgentsMode::On),
            RawLocalAgents::Flag(false) => Ok(LocalAgentsMode::Off),
            RawLocalAgents::Word(word) if word == "always" => Ok(LocalAgentsMode::Always),
            RawLocalAgents::Word(word) => Err(format!(
                "invalid local_agents \"{word}\": expected true, false or \"always\""
            )),
        })?;
    }
    if let Some(spanned) = &raw.outgoing_mark {
        global.outgoing_mark = int("outgoing_mark", spanned, 1, i64::from(u32::MAX))?;
    }
    if let Some(spanned) = &raw.tcp_keepalive {
        global.tcp_keepalive = tcp_keepalive(spanned)?;
    }
    if let Some(spanned) = &raw.dns {
        global.dns = pool::dns(spanned)?;
    }
    if let Some(spanned) = &raw.pid_file {
        global.pid_file = Some(parse_at(spanned, |text| {
            if text.is_empty() {
                return Err("pid_file must not be empty".to_owned());
            }
            Ok(std::path::PathBuf::from(text))
        })?);
    }
    Ok(global)
}

/// `tcp_keepalive = { idle, interval, count }`, each key defaulting to
/// [`TcpKeepalive::default`]'s; whole seconds, as the socket options take them.
fn tcp_keepalive(spanned: &Spanned<RawKeepalive>) -> Result<TcpKeepalive> {
    let raw = spanned.get_ref();
    let default = TcpKeepalive::default();
    let seconds = |key: &str, value: Option<&Spanned<String>>, default| match value {
        None => Ok(default),
        Some(spanned) => parse_at(spanned, |text| {
            let duration = value::duration(key, text)?;
            if duration.subsec_nanos() != 0 || duration.is_zero() {
                return Err(format!(
                    "invalid {key} \"{text}\": expected whole seconds, at least 1s"
                ));
            }
            Ok(duration)
        }),
    };
    let idle = seconds("tcp_keepalive idle", raw.idle.as_ref(), default.idle)?;
    let interval = seconds(
        "tcp_keepalive interval",
        raw.interval.as_ref(),
        default.interval,
    )?;
    // TCP_KEEPCNT takes at most 127.
    let count = match &raw.count {
        Some(spanned) => int("tcp_keepalive count", spanned, 1, 127)?,
        None => default.count,
    };
    Ok(TcpKeepalive {
        idle,
        interval,
        count,
    })
}

/// Converts one frontend; returns it with the span of its backend name (tcp mode), which is
/// checked once all backends are known. `earlier` are the frontends before it, for uniqueness.
fn frontend(
    spanned: Spanned<RawFrontend>,
    earlier: &[Frontend],
    global: &Global,
) -> Result<(Frontend, Option<Range<usize>>)> {
    let header = spanned.span();
    let raw = spanned.into_inner();

    let name = parse_at(&raw.name, |text| value::name("frontend", text))?;
    if earlier.iter().any(|f| f.name == name) {
        return Err(error_at(
            raw.name.span(),
            format!("duplicate frontend name \"{name}\""),
        ));
    }
    let listen = parse_at(&raw.listen, |text| {
        value::socket_addr("listen address", text)
    })?;
    if let Some(other) = earlier.iter().find(|f| listens_overlap(f.listen, listen)) {
        let message = if other.listen == listen {
            format!(
                "frontend \"{name}\": listen address {listen} is already used by frontend \"{}\"",
                other.name
            )
        } else {
            format!(
                "frontend \"{name}\": listen address {listen} overlaps {} of frontend \"{}\"",
                other.listen, other.name
            )
        };
        return Err(error_at(raw.listen.span(), message));
    }

    let allow = match &raw.allow {
        Some(list) => list
            .get_ref()
            .0
            .iter()
            .map(|entry| parse_at(entry, |text| value::network(text)))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let max_connections = match &raw.max_connections {
        Some(spanned) => int("max_connections", spanned, 1, MAX_CONNECTIONS_LIMIT)?,
        None => Frontend::DEFAULT_MAX_CONNECTIONS,
    };
    let rate_limit = raw.rate_limit.as_ref().map(rate_limit).transpose()?;
    let tls = raw.tls.as_ref().map(frontend_tls).transpose()?;
    // "0s" turns them off.
    let idle_timeout = match &raw.idle_timeout {
        Some(spanned) => parse_at(spanned, |text| value::duration("idle_timeout", text))?,
        None => Frontend::DEFAULT_IDLE_TIMEOUT,
    };
    let idle_timeout = (!idle_timeout.is_zero()).then_some(idle_timeout);
    let max_connections_queue = match &raw.max_connections_queue {
        Some(spanned) => parse_at(spanned, |text| {
            value::duration("max_connections_queue", text)
        })?,
        None => std::time::Duration::ZERO,
    };
    let max_connections_queue = (!max_connections_queue.is_zero()).then_some(max_connections_queue);
    let tcp_keepalive = match &raw.tcp_keepalive {
        Some(spanned) => tcp_keepalive(spanned)?,
        None => global.tcp_keepalive,
    };

    let kind = match &raw.mode {
        Some(mode) => parse_at(mode, |text| match text.as_str() {
            "tcp" => Ok(Kind::Tcp),
            "connect" => Ok(Kind::Connect),
            "transparent" => Ok(Kind::Transparent),
            "http" => Ok(Kind::Http),
            other => Err(format!(
                "invalid mode \"{other}\": expected tcp, connect, transparent or http"
            )),
        })?,
        None => Kind::Tcp,
    };
    refuse_other_modes_keys(&raw, &name, kind)?;
    let (mode, backend_span) = match kind {
        Kind::Connect => {
            if let Some(backend) = &raw.backend {
                return Err(error_at(
                    backend.span(),
                    format!(
                        "frontend \"{name}\": `backend` is not used in connect mode (each CONNECT \
                         request names its destination; list them in allow_destinations)"
                    ),
                ));
            }
            (FrontendMode::Connect(connect_mode(&raw)?), None)
        }
        Kind::Transparent => {
            if let Some(tls) = &raw.tls {
                return Err(error_at(
                    tls.span(),
                    format!(
                        "frontend \"{name}\": `tls` is not used in transparent mode (the agents' \
                         TLS passes through to the intake untouched)"
                    ),
                ));
            }
            let span = raw.backend.as_ref().map(Spanned::span);
            let mode = super::transparent::mode(&raw, &name, listen)?;
            (FrontendMode::Transparent(mode), span)
        }
        Kind::Tcp | Kind::Http => {
            // tcp and http mode send every connection to their backend.
            let Some(backend) = &raw.backend else {
                let mode = if kind == Kind::Tcp { "tcp" } else { "http" };
                return Err(error_at(
                    header,
                    format!("frontend \"{name}\": missing `backend` (required in {mode} mode)"),
                ));
            };
            let backend = backend.get_ref().clone();
            let span = raw.backend.as_ref().map(Spanned::span);
            let mode = match kind {
                Kind::Http => FrontendMode::Http(HttpMode {
                    backend,
                    request_timeout: timeout(
                        "request_timeout",
                        raw.request_timeout.as_ref(),
                        ConnectMode::DEFAULT_REQUEST_TIMEOUT,
                    )?,
                    request_metrics: raw.request_metrics.as_ref().is_none_or(|m| *m.get_ref()),
                }),
                _ => FrontendMode::Tcp { backend },
            };
            (mode, span)
        }
    };

    let frontend = Frontend {
        name,
        listen,
        mode,
        allow,
        max_connections,
        rate_limit,
        tls,
        idle_timeout,
        tcp_keepalive,
        max_connections_queue,
    };
    Ok((frontend, backend_span))
}

/// The value of a frontend's `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Connect,
    Transparent,
    Http,
}

/// A mode-specific key: its name, where it is (when set), the modes that use it and how they
/// are named in the message.
type KeyUse<'a> = (&'a str, Option<Range<usize>>, &'a [Kind], &'a str);

/// Refuses a key of another mode, naming the modes that use it.
fn refuse_other_modes_keys(raw: &RawFrontend, name: &str, kind: Kind) -> Result<()> {
    use Kind::{Connect, Http, Transparent};
    let keys: [KeyUse<'_>; 7] = [
        (
            "users",
            raw.users.as_ref().map(Spanned::span),
            &[Connect],
            "connect mode",
        ),
        (
            "allow_destinations",
            raw.allow_destinations.as_ref().map(Spanned::span),
            &[Connect, Transparent],
            "connect and transparent mode",
        ),
        (
            "connect_timeout",
            raw.connect_timeout.as_ref().map(Spanned::span),
            &[Connect, Transparent],
            "connect and transparent mode",
        ),
        (
            "request_timeout",
            raw.request_timeout.as_ref().map(Spanned::span),
            &[Connect, Http],
            "connect and http mode",
        ),
        (
            "request_metrics",
            raw.request_metrics.as_ref().map(Spanned::span),
            &[Http],
            "http mode",
        ),
        (
            "intercept",
            raw.intercept.as_ref().map(Spanned::span),
            &[Transparent],
            "transparent mode",
        ),
        (
            "sniff_timeout",
            raw.sniff_timeout.as_ref().map(Spanned::span),
            &[Transparent],
            "transparent mode",
        ),
    ];
    for (key, span, modes, where_) in keys {
        if let Some(span) = span
            && !modes.contains(&kind)
        {
            return Err(error_at(
                span,
                format!("frontend \"{name}\": `{key}` is only used in {where_}"),
            ));
        }
    }
    Ok(())
}

/// The connect-mode keys of a frontend.
fn connect_mode(raw: &RawFrontend) -> Result<ConnectMode> {
    let mut users: Vec<User> = Vec::new();
    for entry in raw.users.iter().flat_map(|list| &list.get_ref().0) {
        let user = entry.get_ref();
        let name = parse_at(&user.name, |name| {
            if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
                return Err(format!(
                    "invalid user name {name:?}: expected a non-empty name without ':'"
                ));
            }
            if users.iter().any(|u| &u.name == name) {
                return Err(format!("duplicate user name {name:?}"));
            }
            Ok(name.clone())
        })?;
        // The message must not quote the password.
        if user.password.get_ref().is_empty() {
            return Err(error_at(
                user.password.span(),
                format!("user {name:?}: the password must not be empty"),
            ));
        }
        users.push(User::new(name, user.password.get_ref().clone()));
    }
    Ok(ConnectMode {
        users,
        allow_destinations: allow_destinations(raw)?,
        connect_timeout: timeout(
            "connect_timeout",
            raw.connect_timeout.as_ref(),
            Backend::DEFAULT_CONNECT_TIMEOUT,
        )?,
        request_timeout: timeout(
            "request_timeout",
            raw.request_timeout.as_ref(),
            ConnectMode::DEFAULT_REQUEST_TIMEOUT,
        )?,
    })
}

/// A frontend's `allow_destinations` (connect and transparent mode).
pub(super) fn allow_destinations(raw: &RawFrontend) -> Result<Vec<DestinationRule>> {
    raw.allow_destinations
        .iter()
        .flat_map(|list| &list.get_ref().0)
        .map(|entry| parse_at(entry, |text| DestinationRule::parse(text)))
        .collect()
}

/// An optional timeout key: more than zero when set, `default` when not.
pub(super) fn timeout(
    key: &str,
    spanned: Option<&Spanned<String>>,
    default: std::time::Duration,
) -> Result<std::time::Duration> {
    match spanned {
        Some(spanned) => positive_duration(key, spanned),
        None => Ok(default),
    }
}

fn rate_limit(spanned: &Spanned<RawRateLimit>) -> Result<RateLimit> {
    let raw = spanned.get_ref();
    let connections = int(
        "rate_limit connections",
        &raw.connections,
        1,
        i64::from(u32::MAX),
    )?;
    let per = match &raw.per {
        Some(per) => positive_duration("rate_limit per", per)?,
        None => RateLimit::DEFAULT_PER,
    };
    Ok(RateLimit { connections, per })
}

/// A duration key that must be more than zero (a zero timeout or period would refuse
/// everything before it starts).
pub(super) fn positive_duration(
    key: &str,
    spanned: &Spanned<String>,
) -> Result<std::time::Duration> {
    parse_at(spanned, |text| match value::duration(key, text)? {
        zero if zero.is_zero() => Err(format!("invalid {key} \"{text}\": expected more than zero")),
        duration => Ok(duration),
    })
}

/// Whether binding `b` would fail because `a` is bound: the same address, or a wildcard and an
/// address of the same family, on the same port. Port 0 asks the kernel for a free port, so
/// it never collides.
fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Converts one backend; `earlier` are the backends before it, for uniqueness.
fn backend(spanned: Spanned<RawBackend>, earlier: &[Backend]) -> Result<Backend> {
    let header = spanned.span();
    let raw = spanned.into_inner();

    let name = parse_at(&raw.name, |text| value::name("backend", text))?;
    if earlier.iter().any(|b| b.name == name) {
        return Err(error_at(
            raw.name.span(),
            format!("duplicate backend name \"{name}\""),
        ));
    }

    let no_servers = format!("backend \"{name}\": at least one server is required");
    let servers: Vec<_> = match &raw.servers {
        Some(list) if list.get_ref().0.is_empty() => return Err(error_at(list.span(), no_servers)),
        Some(list) => list
            .get_ref()
            .0
            .iter()
            .map(pool::server)
            .collect::<Result<_>>()?,
        None => return Err(error_at(header, no_servers)),
    };

    let balance = match &raw.balance {
        Some(spanned) => parse_at(spanned, |text| match text.as_str() {
            "roundrobin" => Ok(Balance::RoundRobin),
            "leastconn" => Ok(Balance::LeastConn),
            "random" => Ok(Balance::Random),
            other => Err(format!(
                "invalid balance \"{other}\": expected roundrobin, leastconn or random"
            )),
        })?,
        None => Balance::default(),
    };
    let connect_timeout = match &raw.connect_timeout {
        // A zero timeout would fail every connect before it starts.
        Some(spanned) => positive_duration("connect_timeout", spanned)?,
        None => Backend::DEFAULT_CONNECT_TIMEOUT,
    };
    let retries = match &raw.retries {
        Some(spanned) => int("retries", spanned, 0, i64::from(u32::MAX))?,
        None => Backend::DEFAULT_RETRIES,
    };

    let tls = raw.tls.map(backend_tls).transpose()?;
    let health_check = raw
        .health_check
        .as_ref()
        .map(pool::health_check)
        .transpose()?;
    let passive = raw
        .passive
        .as_ref()
        .map(pool::passive)
        .transpose()?
        .unwrap_or_default();
    let dns = raw
        .dns
        .as_ref()
        .map(pool::dns)
        .transpose()?
        .unwrap_or_default();

    Ok(Backend {
        name,
        servers,
        balance,
        connect_timeout,
        retries,
        tls,
        health_check,
        passive,
        dns,
    })
}

/// A file path: any non-empty string, used as written (relative to the working directory).
fn path(key: &str, spanned: &Spanned<String>) -> Result<std::path::PathBuf> {
    parse_at(spanned, |text| {
        if text.is_empty() {
            Err(format!(
                "invalid {key}: expected a file path, got an empty string"
            ))
        } else {
            Ok(text.into())
        }
    })
}

fn cert_files(cert: &Spanned<String>, key: Option<&Spanned<String>>) -> Result<CertFiles> {
    Ok(CertFiles {
        cert: path("cert", cert)?,
        key: key.map(|key| path("key", key)).transpose()?,
    })
}

/// `tls = { cert, key, certs, client_ca, handshake_timeout }` of a frontend.
fn frontend_tls(spanned: &Spanned<RawFrontendTls>) -> Result<FrontendTls> {
    let span = spanned.span();
    let raw = spanned.get_ref();
    let mut certs = Vec::new();
    match (&raw.cert, &raw.key) {
        (Some(cert), key) => certs.push(cert_files(cert, key.as_ref())?),
        (None, Some(key)) => {
            return Err(error_at(key.span(), "tls: `key` without `cert`"));
        }
        (None, None) => {}
    }
    if let Some(list) = &raw.certs {
        for entry in &list.get_ref().0 {
            let RawCertFiles { cert, key } = entry.get_ref();
            certs.push(cert_files(cert, key.as_ref())?);
        }
    }
    if certs.is_empty() {
        return Err(error_at(
            span,
            "tls: a certificate is required: `cert` (and `key`, unless the cert file holds it) \
             or `certs = [{ cert, key }]`",
        ));
    }
    let handshake_timeout = match &raw.handshake_timeout {
        Some(spanned) => positive_duration("handshake_timeout", spanned)?,
        None => FrontendTls::DEFAULT_HANDSHAKE_TIMEOUT,
    };
    Ok(FrontendTls {
        certs,
        client_ca: raw
            .client_ca
            .as_ref()
            .map(|p| path("client_ca", p))
            .transpose()?,
        handshake_timeout,
    })
}

/// `tls = { sni, ca_file, verify }` of a backend; `tls = {}` is TLS with every default.
fn backend_tls(spanned: Spanned<RawBackendTls>) -> Result<BackendTls> {
    let raw = spanned.into_inner();
    let sni = match &raw.sni {
        Some(spanned) => Some(parse_at(spanned, |text| {
            rustls_pki_types::ServerName::try_from(text.as_str())
                .map(|_| text.clone())
                .map_err(|_| {
                    format!("invalid sni \"{text}\": expected a DNS name or an IP address")
                })
        })?),
        None => None,
    };
    Ok(BackendTls {
        sni,
        ca_file: raw
            .ca_file
            .as_ref()
            .map(|p| path("ca_file", p))
            .transpose()?,
        verify: raw.verify.as_ref().is_none_or(|v| *v.get_ref()),
    })
}
