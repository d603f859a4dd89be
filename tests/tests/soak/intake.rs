//! The soak's intake: listeners on the intake host that serve every stream by its header
//! ([`crate::wire::Plan`]) and write down what they received and sent ([`Ledger`]). It can be
//! killed (every listener closed, every open connection reset, as a crashed process's would be)
//! and restarted on the same ports; the ledger remembers which streams the kill cut.
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_proxy_tests::gateway::Gateway;
use agent_proxy_tests::peers::{Digest, linger_zero};
use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::wire::{Class, HEADER_LEN, Plan, Rx, STALL, Tx};

/// What the intake saw of one stream.
#[derive(Debug)]
pub(crate) struct ServerRecord {
    /// The address the connection reached (which DNS answer the proxy dialed).
    pub(crate) local: SocketAddr,
    pub(crate) received: Digest,
    pub(crate) sent: Digest,
    /// Offset of the first received byte that differs from the client's stream.
    pub(crate) mismatch: Option<u64>,
    /// Why the stream did not complete, if it did not.
    pub(crate) error: Option<String>,
    /// Cut by a kill of the intake.
    pub(crate) cut: bool,
    /// When its header was read.
    pub(crate) header_at: Option<Instant>,
}

/// Every stream the intake served, and the connections cut before their header arrived.
#[derive(Default)]
pub(crate) struct Ledger {
    pub(crate) records: HashMap<u64, ServerRecord>,
    /// Connections a kill cut before they named their stream.
    pub(crate) unnamed_cuts: u64,
    /// Connections that ended without a header, not by a kill (each is a client's failure too).
    pub(crate) unnamed_errors: Vec<String>,
    /// Handlers still running.
    pub(crate) live: u64,
}

pub(crate) struct Intake<'a> {
    gw: &'a Gateway,
    ports: Vec<u16>,
    pub(crate) ledger: Arc<Mutex<Ledger>>,
    kill: watch::Sender<u64>,
    accepting: Vec<JoinHandle<()>>,
}

impl<'a> Intake<'a> {
    /// Listens on `0.0.0.0:PORT` of the intake host for each of `ports`.
    pub(crate) fn start(gw: &'a Gateway, ports: &[u16]) -> anyhow::Result<Self> {
        let mut intake = Self {
            gw,
            ports: ports.to_vec(),
            ledger: Arc::default(),
            kill: watch::channel(0).0,
            accepting: Vec::new(),
        };
        intake.listen()?;
        Ok(intake)
    }

    fn listen(&mut self) -> anyhow::Result<()> {
        for &port in &self.ports {
            let addr = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
            let listener = self.gw.intake_listener(addr)?;
            let ledger = Arc::clone(&self.ledger);
            let kill = self.kill.clone();
            self.accepting
                .push(tokio::spawn(accept_loop(listener, ledger, kill)));
        }
        Ok(())
    }

    /// Closes every listener and resets every open connection.
    pub(crate) async fn kill(&mut self) {
        for task in self.accepting.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.kill.send_modify(|generation| *generation += 1);
    }

    /// Listens again on the same ports.
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.listen()
    }

    /// Waits (at most `within`) until no handler runs: every stream's record is written.
    pub(crate) async fn settle(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let live = self.ledger.lock().expect("ledger").live;
            if live == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{live} intake handlers still running {within:?} after the last client");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The intake's TCP keepalive: a connection whose daemon socket is gone without a word reaching
/// the intake is found out by a probe, which the proxy host answers with a reset. That is how a
/// daemon's reset dropped by the lossy link still arrives: TCP never sends a reset twice, and an
/// intake that has sent all its bytes (and had them acknowledged) sends nothing that would draw
/// another one, so it would wait for good. A daemon that keeps the connection open answers the
/// probes, so a stall of its own is still a stall.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_COUNT: u32 = 5;

async fn accept_loop(listener: TcpListener, ledger: Arc<Mutex<Ledger>>, kill: watch::Sender<u64>) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_COUNT);
    while let Ok((s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        let _ = socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive);
        ledger.lock().expect("ledger").live += 1;
        tokio::spawn(handle(s, Arc::clone(&ledger), kill.subscribe()));
    }
}

/// What a handler has learnt and moved so far (kept outside the work, so that a cut stream's
/// partial figures survive the kill).
#[derive(Default)]
struct Serving {
    plan: Option<Plan>,
    header_at: Option<Instant>,
    tx: Option<Tx>,
    rx: Option<Rx>,
}

async fn handle(mut s: TcpStream, ledger: Arc<Mutex<Ledger>>, mut killed: watch::Receiver<u64>) {
    let local = s
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
    let mut st = Serving::default();
    let outcome = {
        let work = serve(&mut s, &mut st);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => Some(r),
            _ = killed.changed() => None,
        }
    };
    let cut = outcome.is_none();
    if cut {
        let _ = linger_zero(&s);
    }
    drop(s);
    let mut ledger = ledger.lock().expect("ledger");
    ledger.live -= 1;
    let error = match outcome {
        Some(Err(e)) => Some(format!("{e:#}")),
        _ => None,
    };
    let (Some(plan), Some(tx), Some(rx)) = (st.plan, st.tx, st.rx) else {
        if cut {
            ledger.unnamed_cuts += 1;
        } else if let Some(e) = error {
            ledger.unnamed_errors.push(e);
        }
        return;
    };
    ledger.records.insert(
        plan.id,
        ServerRecord {
            local,
            received: rx.digest(),
            sent: tx.digest(),
            mismatch: rx.mismatch,
            error,
            cut,
            header_at: st.header_at,
        },
    );
}

/// Serves one stream as its header says.
async fn serve(s: &mut TcpStream, st: &mut Serving) -> anyhow::Result<()> {
    let mut header = [0u8; HEADER_LEN];
    timeout(STALL, s.read_exact(&mut header))
        .await
        .context("no header")?
        .context("reading the header")?;
    let plan = Plan::decode(&header)?;
    st.plan = Some(plan);
    st.header_at = Some(Instant::now());
    let tx = st.tx.insert(Tx::new(plan.down_seed()));
    let rx = st.rx.insert(Rx::new(plan.up_seed()));
    match plan.class {
        Class::Idle if plan.rounds == 0 => {
            // The proxy closes it for idleness: EOF, and nothing before it.
            rx.until_eof(s, 0).await?;
            s.shutdown().await.context("shutdown")?;
        }
        Class::ReqResp | Class::Idle => {
            for i in 0..plan.rounds {
                rx.exact(s, plan.round_len(plan.up, i)).await?;
                tx.send(s, plan.round_len(plan.down, i)).await?;
            }
            rx.until_eof(s, plan.up).await?;
            s.shutdown().await.context("shutdown")?;
        }
        Class::HalfClose => {
            rx.until_eof(s, plan.up).await?;
            tx.send(s, plan.down).await?;
            s.shutdown().await.context("shutdown")?;
        }
        Class::Bulk | Class::Reset | Class::SlowReader => {
            let (mut r, mut w) = s.split();
            let sending = async {
                tx.send(&mut w, plan.down).await?;
                w.shutdown().await.context("shutdown")
            };
            let receiving = rx.until_eof(&mut r, plan.up);
            let (sent, received) = tokio::join!(sending, receiving);
            received.context("receiving")?;
            sent.context("sending")?;
        }
    }
    if rx.got != plan.up {
        bail!("EOF after {} of {} bytes", rx.got, plan.up);
    }
    Ok(())
}
