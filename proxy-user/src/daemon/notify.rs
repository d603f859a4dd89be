//! The systemd notification protocol (`sd_notify`), for a unit with `Type=notify`: `READY=1`
//! once the daemon serves, `RELOADING=1` / `READY=1` around a reload, `STOPPING=1` when it
//! drains, and `MAINPID=` from a process that took over by an upgrade (SIGUSR2), so that
//! systemd follows the new process (the unit needs `NotifyAccess=all` for that). Without
//! `NOTIFY_SOCKET` in the environment (not under systemd) every call does nothing.
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd; errors are logged once at
/// debug level, a notification is never worth failing for.
pub(super) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::debug!(socket = %path, error = %e, "cannot notify systemd");
    }
}
