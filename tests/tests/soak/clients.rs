//! The soak's clients, on the agent host: one stream per [`run_stream`] through one daemon and
//! one frontend mode, behaving as its [`Class`] says, and what it saw ([`ClientRecord`]).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_proxy_tests::connect::{PASSWORD, USER, basic_auth, connect_head, open_tunnel};
use agent_proxy_tests::gateway::{INTAKE, PROXY_INNER};
use agent_proxy_tests::peers::{Digest, connect, linger_zero};
use agent_proxy_tests::tls::tls_connect;
use anyhow::{Context as _, bail, ensure};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::topology::{IDLE_TIMEOUT, INTAKE_NAME, INTAKE_PORT, PROXY_NAME, Ports, ip};
use crate::wire::{Class, Plan, Rx, STALL, Tx};

/// How a client reaches the intake through a daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Mode {
    Tcp,
    Tls,
    Connect,
    Transparent,
}

impl Mode {
    pub(crate) const ALL: [Mode; 4] = [Mode::Tcp, Mode::Tls, Mode::Connect, Mode::Transparent];

    /// The frontend's name in the daemon's config (and its log lines and metrics).
    pub(crate) fn frontend(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Tls => "tls",
            Mode::Connect => "connect",
            Mode::Transparent => "transparent",
        }
    }

    /// Whether the daemon finds the intake through DNS for this mode.
    pub(crate) fn resolves(self) -> bool {
        self != Mode::Transparent
    }
}

/// How far from the frontend's `idle_timeout` a silent client may see its connection closed:
/// the proxy checks when the timeout could first expire, and the FIN crosses a lossy link.
/// Early is measured from the client's header, late from the intake's reading it (the judge):
/// the header's last move is what the proxy's timer counts from, and it reaches the intake
/// only once the proxy's dial is through (a dial that loses its SYNs is retried after the
/// 3-s connect timeout).
pub(crate) const IDLE_SLACK: Duration = Duration::from_secs(2);
/// Receive buffer of a slow reader: small, so the backlog builds up in the proxy.
const SLOW_RCVBUF: usize = 64 * 1024;
/// A slow reader takes this much per read, then pauses [`SLOW_PAUSE`]: about 3 MB/s.
const SLOW_READ: usize = 16 * 1024;
const SLOW_PAUSE: Duration = Duration::from_millis(5);

/// A client's connection, whatever the mode wrapped around its TCP socket.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Io for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Io for agent_proxy_tests::tls::ClientStream {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl Io for BufReader<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

/// Opens streams through the daemons (index 0: kernel, 1: userspace).
pub(crate) struct Dialer {
    pub(crate) proxies: Vec<Ports>,
    pub(crate) tls: Arc<ClientConfig>,
}

impl Dialer {
    /// Connects through `proxy`'s `mode` frontend and sends `plan`'s header (with the CONNECT
    /// head in one write, in connect mode).
    async fn open(&self, proxy: usize, mode: Mode, plan: &Plan) -> anyhow::Result<Box<dyn Io>> {
        let ports = self.proxies[proxy];
        let at = |port| SocketAddr::new(ip(PROXY_INNER), port);
        let header = plan.encode();
        let mut io: Box<dyn Io> = match mode {
            Mode::Tcp => Box::new(connect(at(ports.tcp)).await?),
            Mode::Transparent => {
                Box::new(connect(SocketAddr::new(ip(INTAKE), ports.transparent_dst)).await?)
            }
            Mode::Tls => {
                Box::new(tls_connect(at(ports.tls), PROXY_NAME, Arc::clone(&self.tls)).await?)
            }
            Mode::Connect => {
                let head = connect_head(
                    &format!("{INTAKE_NAME}:{INTAKE_PORT}"),
                    &basic_auth(USER, PASSWORD),
                );
                Box::new(open_tunnel(at(ports.connect), &head, &header).await?)
            }
        };
        if mode != Mode::Connect {
            timeout(STALL, io.write_all(&header))
                .await
                .context("header write stalled")??;
        }
        match plan.class {
            // Any close of a resetting client is a reset.
            Class::Reset => linger_zero(io.tcp())?,
            Class::SlowReader => {
                socket2::SockRef::from(io.tcp()).set_recv_buffer_size(SLOW_RCVBUF)?;
            }
            _ => {}
        }
        Ok(io)
    }
}

/// What a client saw of one stream.
#[derive(Debug)]
pub(crate) struct ClientRecord {
    pub(crate) plan: Plan,
    pub(crate) proxy: usize,
    pub(crate) mode: Mode,
    pub(crate) started: Instant,
    /// The client socket's own address (the daemon's log line names it), once connected.
    pub(crate) local: Option<SocketAddr>,
    pub(crate) ended: Instant,
    pub(crate) sent: Digest,
    pub(crate) received: Digest,
    /// Offset of the first received byte that differs from the intake's stream.
    pub(crate) mismatch: Option<u64>,
    /// Why it did not complete (a Reset client completing its own reset is not an error).
    pub(crate) error: Option<String>,
    /// A silent client: when the proxy's close reached it.
    pub(crate) closed_silent: Option<Instant>,
}

/// Runs one stream of `plan` through `proxy`'s `mode` frontend.
pub(crate) async fn run_stream(
    dialer: &Dialer,
    proxy: usize,
    mode: Mode,
    plan: Plan,
) -> ClientRecord {
    let started = Instant::now();
    let mut tx = Tx::new(plan.up_seed());
    let mut rx = Rx::new(plan.down_seed());
    let mut local = None;
    let mut closed_silent = None;
    let result = async {
        let io = dialer.open(proxy, mode, &plan).await?;
        local = io.tcp().local_addr().ok();
        drive(io, &plan, &mut tx, &mut rx, &mut closed_silent).await
    }
    .await;
    ClientRecord {
        plan,
        proxy,
        mode,
        started,
        local,
        ended: Instant::now(),
        sent: tx.digest(),
        received: rx.digest(),
        mismatch: rx.mismatch,
        error: result.err().map(|e| format!("{e:#}")),
        closed_silent,
    }
}

async fn drive(
    mut io: Box<dyn Io>,
    plan: &Plan,
    tx: &mut Tx,
    rx: &mut Rx,
    closed_silent: &mut Option<Instant>,
) -> anyhow::Result<()> {
    match plan.class {
        Class::Idle if plan.rounds == 0 => {
            let silent = Instant::now();
            rx.until_eof(&mut io, 0).await?;
            let closed = Instant::now();
            *closed_silent = Some(closed);
            // Not too late is the judge's to say (from when the intake read the header).
            let after = closed - silent;
            ensure!(
                after >= IDLE_TIMEOUT.saturating_sub(IDLE_SLACK),
                "the proxy closed the silent connection after {after:.1?}; its idle_timeout is \
                 {IDLE_TIMEOUT:?}"
            );
            shutdown(&mut io).await?;
        }
        Class::ReqResp | Class::Idle => {
            if plan.class == Class::Idle {
                tokio::time::sleep(Duration::from_millis(plan.param.into())).await;
            }
            for i in 0..plan.rounds {
                tx.send(&mut io, plan.round_len(plan.up, i)).await?;
                rx.exact(&mut io, plan.round_len(plan.down, i)).await?;
            }
            shutdown(&mut io).await?;
            rx.until_eof(&mut io, plan.down).await?;
        }
        Class::HalfClose => {
            tx.send(&mut io, plan.up).await?;
            shutdown(&mut io).await?;
            rx.until_eof(&mut io, plan.down).await?;
        }
        Class::Bulk | Class::SlowReader => {
            let (mut r, mut w) = tokio::io::split(io);
            let sending = async {
                tx.send(&mut w, plan.up).await?;
                shutdown(&mut w).await
            };
            let receiving = async {
                if plan.class == Class::Bulk {
                    return rx.until_eof(&mut r, plan.down).await;
                }
                while rx.read(&mut r, SLOW_READ).await? > 0 {
                    ensure!(rx.got <= plan.down, "received more than was sent");
                    tokio::time::sleep(SLOW_PAUSE).await;
                }
                Ok(())
            };
            let (sent, received) = tokio::join!(sending, receiving);
            received.context("receiving")?;
            sent.context("sending")?;
        }
        Class::Reset => {
            let (mut r, mut w) = tokio::io::split(io);
            let sending = tx.send(&mut w, plan.up);
            let receiving = async {
                while rx.got < u64::from(plan.param) {
                    if rx.read(&mut r, 64 * 1024).await? == 0 {
                        bail!("EOF before the reset point");
                    }
                }
                anyhow::Ok(())
            };
            tokio::pin!(sending, receiving);
            tokio::select! {
                r = &mut receiving => r?,
                s = &mut sending => {
                    s?;
                    receiving.await?;
                }
            }
            // Dropping the halves closes the socket, with SO_LINGER 0: a reset.
            return Ok(());
        }
    }
    ensure!(
        rx.got == plan.down,
        "EOF after {} of {} bytes",
        rx.got,
        plan.down
    );
    Ok(())
}

async fn shutdown<W: AsyncWrite + Unpin + ?Sized>(w: &mut W) -> anyhow::Result<()> {
    timeout(STALL, w.shutdown())
        .await
        .context("shutdown stalled")?
        .context("shutdown")
}
