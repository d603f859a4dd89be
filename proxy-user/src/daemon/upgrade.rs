//! SIGUSR2: upgrade in place. The daemon starts its binary anew (the file at the path it was
//! started from, so a replaced package is the new version) with the same arguments, and hands
//! it its listening sockets and the admin endpoint's; the new process builds everything else
//! from the config, serves, and confirms. Only then does the old process stop accepting: no
//! connection is ever refused during an upgrade. Its open connections go on in it until they
//! end (or `drain_timeout` cuts them), then it exits. If the new process fails to start or does
//! not confirm within [`CONFIRM_WITHIN`], it is killed and the old one keeps serving.
//!
//! The hand-over goes through the environment and inherited descriptors (the dup'ed sockets
//! and a pipe are the only descriptors without close-on-exec):
//!
//! - `AGENT_PROXY_UPGRADE_VERSION`: [`PROTOCOL`]; a binary that speaks another refuses to start
//!   rather than guess (the old process then keeps serving).
//! - `AGENT_PROXY_UPGRADE_FDS`: `ADDRESS=FD` pairs separated by `;`, each a listening socket by
//!   the address its frontend configures, and `admin=FD`.
//! - `AGENT_PROXY_UPGRADE_NOTIFY`: one end of a Unix `SOCK_SEQPACKET` socket pair; the new
//!   process sends `ready` on it once it serves, and the old one then hands its kernel-spliced
//!   connections over through it (`crate::handover`, the daemon's `handing` module).
use crate::handover::Message;
use std::{
    collections::HashMap,
    ffi::OsString,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    path::PathBuf,
    sync::Mutex,
    time::Duration,
};

/// The version of the hand-over; a binary that does not speak it refuses the takeover. It
/// covers the layout of the handed-over maps' values too: "3" since `SpliceSide` grew
/// `next_seq`/`seq_known` (the verdict's overlap trim), so a binary from before refuses
/// rather than misread them.
pub(super) const PROTOCOL: &str = "3";
const ENV_VERSION: &str = "AGENT_PROXY_UPGRADE_VERSION";
const ENV_FDS: &str = "AGENT_PROXY_UPGRADE_FDS";
const ENV_NOTIFY: &str = "AGENT_PROXY_UPGRADE_NOTIFY";
/// How long the new process has to start serving.
pub(super) const CONFIRM_WITHIN: Duration = Duration::from_secs(60);

/// Why a process started by an upgrade cannot take over.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error(
        "started by an upgrade speaking hand-over version {0:?}; this binary speaks {PROTOCOL:?}"
    )]
    Version(String),
    #[error("malformed {ENV_FDS} entry {0:?}")]
    Malformed(String),
    #[error("inherited descriptor {fd} is not a listening TCP socket")]
    NotASocket {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
}

/// What this process inherited from the one it replaces (nothing when it was not started by
/// an upgrade).
#[derive(Default)]
pub(crate) struct Inherited {
    /// This process was started by an upgrade.
    pub(crate) upgrade: bool,
    listeners: Mutex<HashMap<SocketAddr, OwnedFd>>,
    admin: Mutex<Option<OwnedFd>>,
    notify: Mutex<Option<OwnedFd>>,
}

impl Inherited {
    /// Reads the hand-over from the environment, once, at start.
    pub(crate) fn from_env() -> Result<Self, InheritError> {
        let Some(version) = std::env::var_os(ENV_VERSION) else {
            return Ok(Self::default());
        };
        if version != PROTOCOL {
            return Err(InheritError::Version(
                version.to_string_lossy().into_owned(),
            ));
        }
        let inherited = Self {
            upgrade: true,
            ..Self::default()
        };
        let fds = std::env::var(ENV_FDS).unwrap_or_default();
        for entry in fds.split(';').filter(|e| !e.is_empty()) {
            let malformed = || InheritError::Malformed(entry.to_owned());
            let (key, fd) = entry.split_once('=').ok_or_else(malformed)?;
            let fd: RawFd = fd.parse().map_err(|_| malformed())?;
            let owned = adopt(fd)?;
            if key == "admin" {
                *inherited.admin.lock().unwrap_or_else(|e| e.into_inner()) = Some(owned);
            } else {
                let addr: SocketAddr = key.parse().map_err(|_| malformed())?;
                inherited
                    .listeners
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(addr, owned);
            }
        }
        if let Some(fd) = std::env::var(ENV_NOTIFY)
            .ok()
            .and_then(|fd| fd.parse::<RawFd>().ok())
            .filter(|&fd| fd > 2)
        {
            set_cloexec(fd);
            // SAFETY: the predecessor passed this descriptor for us alone (ENV_NOTIFY), and
            // nothing else in this process knows or closes it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            *inherited.notify.lock().unwrap_or_else(|e| e.into_inner()) = Some(owned);
        }
        Ok(inherited)
    }

    /// The listening socket the predecessor had for a frontend configured on `addr`.
    pub(crate) fn listener(&self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let fd = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr)?;
        Some(std::net::TcpListener::from(fd))
    }

    /// The predecessor's admin socket.
    pub(crate) fn admin(&self) -> Option<std::net::TcpListener> {
        let fd = self
            .admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(std::net::TcpListener::from(fd))
    }

    /// Tells the predecessor this process serves, and closes what it passed that the config no
    /// longer listens on; the socket the predecessor hands its connections over through.
    pub(crate) fn confirm(&self) -> Option<OwnedFd> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let socket = self
            .notify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        match crate::handover::send(socket.as_fd(), &Message::Ready, &[]) {
            Err(e) => {
                tracing::error!(error = %e, "upgrade: cannot confirm to the old process");
                None
            }
            Ok(()) => {
                tracing::info!(
                    "upgrade: serving; the old process stops accepting and hands \
                    its kernel-spliced connections over"
                );
                Some(socket)
            }
        }
    }
}

/// Takes an inherited listening socket: checks it is one, and sets close-on-exec again.
fn adopt(fd: RawFd) -> Result<OwnedFd, InheritError> {
    if fd <= 2 {
        return Err(InheritError::Malformed(fd.to_string()));
    }
    // SAFETY: getsockopt on a descriptor number writes at most `len` bytes into `accepting`;
    // a number that is not an open socket only makes it fail.
    let listening = unsafe {
        let mut accepting: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut accepting).cast(),
            &mut len,
        );
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(accepting == 1)
        }
    };
    match listening {
        Ok(true) => {}
        Ok(false) => {
            return Err(InheritError::NotASocket {
                fd,
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        }
        Err(source) => return Err(InheritError::NotASocket { fd, source }),
    }
    set_cloexec(fd);
    // SAFETY: a listening socket the predecessor passed for us alone (ENV_FDS); nothing else
    // in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; a failure leaves the flag as it was.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

/// A copy of `fd` without close-on-exec, for the new process to inherit.
fn inheritable(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // SAFETY: dup of a live descriptor; the copy (dup clears close-on-exec) is owned here.
    let copy = unsafe { libc::dup(fd.as_raw_fd()) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `copy` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// The binary and arguments to start again, taken at start (the path the binary was started
/// from: a package upgrade replaces the file there).
#[derive(Clone, Debug)]
pub(super) struct Command {
    pub(super) exe: PathBuf,
    pub(super) args: Vec<OsString>,
}

impl Command {
    pub(super) fn of_this_process() -> Option<Self> {
        let exe = std::env::current_exe().ok()?;
        Some(Self {
            exe,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// Starts the new process with the listening sockets (`listeners`, by configured address) and
/// the admin socket; resolves with its pid and the hand-over socket once it confirms, or an
/// error once it failed (it is then killed if still running).
pub(super) fn start(
    command: &Command,
    listeners: &[(SocketAddr, BorrowedFd<'_>)],
    admin: Option<BorrowedFd<'_>>,
) -> std::io::Result<tokio::task::JoinHandle<Result<(u32, OwnedFd), String>>> {
    let mut passed = Vec::new();
    let mut fds = String::new();
    for (addr, fd) in listeners {
        let copy = inheritable(*fd)?;
        fds.push_str(&format!("{addr}={};", copy.as_raw_fd()));
        passed.push(copy);
    }
    if let Some(fd) = admin {
        let copy = inheritable(fd)?;
        fds.push_str(&format!("admin={};", copy.as_raw_fd()));
        passed.push(copy);
    }
    let mut ends = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            ends.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both ends were just created and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let write = inheritable(write.as_fd())?;
    let mut child = tokio::process::Command::new(&command.exe)
        .args(&command.args)
        .env(ENV_VERSION, PROTOCOL)
        .env(ENV_FDS, &fds)
        .env(ENV_NOTIFY, write.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .spawn()?;
    // The child has its copies; ours go, so that its exit ends the socket's stream.
    drop(passed);
    drop(write);
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, exe = %command.exe.display(), "upgrade: new process started");
    Ok(tokio::spawn(async move {
        let ready =
            tokio::task::spawn_blocking(move || match crate::handover::recv(read.as_fd()) {
                Ok(Some((Message::Ready, _))) => Some(read),
                _ => None,
            });
        tokio::select! {
            said = ready => match said {
                Ok(Some(socket)) => Ok((pid, socket)),
                _ => {
                    let status = child.wait().await;
                    Err(match status {
                        Ok(status) => format!("the new process exited ({status}) before serving"),
                        Err(e) => format!("the new process closed its socket before serving: {e}"),
                    })
                }
            },
            () = tokio::time::sleep(CONFIRM_WITHIN) => {
                let _ = child.kill().await;
                Err(format!("the new process did not serve within {CONFIRM_WITHIN:?}; killed"))
            }
        }
    }))
}
