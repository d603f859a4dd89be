//! Both ends of handing kernel-spliced connections over on an upgrade (the exchange is
//! described in `crate::handover`): [`Giving`] in the process that is replaced, [`receive`] in
//! the one that replaces it, which keeps what it adopted in [`Adopted`].
use std::{
    os::fd::{AsFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Process;
use crate::{
    conn,
    handover::{self, Message, Outgoing},
    kernel::{Kernel, KernelMirror},
    listener::Serving,
    metrics::Metrics,
};

/// How often sets of maps whose connections have all ended are let go of.
const RELEASE_EVERY: Duration = Duration::from_secs(5);

/// Sets of maps adopted from predecessors, while connections of theirs run here.
#[derive(Default)]
pub(crate) struct Adopted {
    sets: Mutex<Vec<Arc<AdoptedSet>>>,
    /// The predecessor still sends (it has not exited): no upgrade of this process until then,
    /// since it may still hand over a set's ring buffer.
    predecessor: AtomicBool,
}

pub(crate) struct AdoptedSet {
    pub(crate) kernel: Arc<Kernel>,
    /// Frontend names by the set's ids.
    names: Vec<String>,
    mirror: KernelMirror,
    /// The set's ring buffer, until the predecessor lets go of it.
    ring: Mutex<Option<OwnedFd>>,
}

impl Adopted {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AdoptedSet>>> {
        self.sets.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn sets(&self) -> Vec<Arc<AdoptedSet>> {
        self.lock().clone()
    }

    /// The predecessor still reads the ring buffer of a set whose connections it handed over
    /// (it has not exited): this process cannot hand those on yet.
    pub(crate) fn predecessor_alive(&self) -> bool {
        self.predecessor.load(Ordering::Acquire)
            && self.lock().iter().any(|set| {
                // The list's reference, and one per connection task.
                Arc::strong_count(set) > 1
                    && set.ring.lock().unwrap_or_else(|e| e.into_inner()).is_some()
            })
    }

    /// Copies the adopted sets' kernel counters into the metrics (before a scrape); their
    /// kernels, for the map entries.
    pub(crate) fn refresh(&self, metrics: &Metrics) -> Vec<Arc<Kernel>> {
        let sets = self.sets();
        for set in &sets {
            set.mirror.counters(&set.kernel, metrics, &set.names);
        }
        sets.iter().map(|set| Arc::clone(&set.kernel)).collect()
    }

    fn find(&self, id: u32) -> Option<Arc<AdoptedSet>> {
        self.lock().iter().find(|s| s.kernel.set == id).cloned()
    }
}

/// The replaced process's side: sends the sets of maps, then every connection that reaches its
/// steady state, then (at exit) the ring buffers.
pub(super) struct Giving {
    tx: mpsc::UnboundedSender<Outgoing>,
    writer: tokio::task::JoinHandle<()>,
    sets: Vec<Arc<Kernel>>,
}

impl Giving {
    /// Starts handing over through `socket` (the successor confirmed it serves).
    pub(super) fn start(process: &Process, socket: OwnedFd, names: Vec<String>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        let writer = tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            while let Some(out) = rx.blocking_recv() {
                if let Err(e) = handover::send(socket.as_fd(), &out.message, &out.fds) {
                    // What is still queued closes with its descriptors: those connections
                    // are cut.
                    tracing::error!(error = %e, sent, "upgrade: the hand-over socket failed");
                    return;
                }
                sent += 1;
            }
        });
        let mut sets: Vec<(Arc<Kernel>, Vec<String>)> = Vec::new();
        if let Some(kernel) = &process.kernel {
            sets.push((Arc::clone(kernel), names));
        }
        for set in process.adopted.sets() {
            sets.push((Arc::clone(&set.kernel), set.names.clone()));
        }
        let mut given = Vec::new();
        for (kernel, names) in sets {
            let fds = match kernel.handover_fds() {
                Ok(fds) => fds,
                Err(e) => {
                    // Its connections stay here; nothing of the set was sent.
                    tracing::error!(set = kernel.set, error = %e,
                        "upgrade: cannot hand a set of maps over; its connections drain here");
                    continue;
                }
            };
            let message = Message::Maps {
                set: kernel.set,
                names,
            };
            if tx.send(Outgoing { message, fds }).is_err() {
                break;
            }
            kernel.keep_attached();
            let (events_tx, set) = (tx.clone(), kernel.set);
            kernel.events.forward_to(Box::new(move |cookie, event| {
                let message = Message::Event { set, cookie, event };
                let _ = events_tx.send(Outgoing {
                    message,
                    fds: Vec::new(),
                });
            }));
            given.push(kernel);
        }
        // Only connections of a set that was given move (see `Conn::finish_carried`).
        process
            .handover
            .request(tx.clone(), given.iter().map(|k| k.set).collect());
        // Every splice task looks at once; a connection spliced from now on looks first thing.
        for kernel in &given {
            kernel.events.wake_all(crate::kernel::Wake::Handover);
        }
        Self {
            tx,
            writer,
            sets: given,
        }
    }

    /// At exit, once every connection here has ended or moved: stops reading the ring buffers
    /// and hands them over, then closes the exchange.
    pub(super) async fn finish(self, process: &Process) {
        process.handover.close();
        for kernel in &self.sets {
            kernel.events.stop_ring().await;
            let message = Message::Ring { set: kernel.set };
            let _ = self.tx.send(Outgoing {
                message,
                fds: Vec::new(),
            });
            kernel.events.stop_forwarding();
        }
        drop(self.tx);
        let _ = self.writer.await;
        tracing::info!("upgrade: hand-over finished");
    }
}

/// The new process's side: adopts what the predecessor sends through `socket` until it exits.
/// `serving`: the frontends by name, for the connections' names, limits and settings.
pub(super) fn receive(
    process: &Process,
    socket: OwnedFd,
    serving: Vec<(String, Arc<Serving>)>,
    stop: CancellationToken,
) {
    let adopted = Arc::clone(&process.adopted);
    adopted.predecessor.store(true, Ordering::Release);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || {
        loop {
            match handover::recv(socket.as_fd()) {
                Ok(Some(record)) => {
                    if tx.send(record).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "upgrade: reading the hand-over failed");
                    return;
                }
            }
        }
    });
    let metrics = Arc::clone(&process.metrics);
    tokio::spawn(async move {
        let mut adopted_conns = 0u64;
        while let Some((message, fds)) = rx.recv().await {
            match message {
                Message::Maps { set, names } => match Kernel::adopt(fds) {
                    Ok((kernel, ring)) => {
                        tracing::info!(set, "upgrade: adopted a set of maps");
                        adopted.lock().push(Arc::new(AdoptedSet {
                            kernel: Arc::new(kernel),
                            names,
                            mirror: KernelMirror::default(),
                            ring: Mutex::new(Some(ring)),
                        }));
                    }
                    Err(e) => tracing::error!(set, error = %crate::report::error_chain(&e),
                        "upgrade: cannot adopt a set of maps; its connections will be cut"),
                },
                Message::Conn(state) => {
                    let Some(set) = adopted.find(state.set) else {
                        tracing::error!(set = state.set, "upgrade: a connection of an unknown set");
                        continue;
                    };
                    if adopt_conn(&serving, &metrics, set, *state, fds) {
                        adopted_conns += 1;
                    }
                }
                Message::Event { set, cookie, event } => {
                    if let Some(set) = adopted.find(set) {
                        set.kernel.events.inject(cookie, event);
                    }
                }
                Message::Ring { set } => {
                    if let Some(set) = adopted.find(set) {
                        take_ring(&set);
                    }
                }
                Message::Ready => {}
            }
        }
        // The predecessor has exited: any ring it did not hand over explicitly is ours now.
        for set in adopted.sets() {
            take_ring(&set);
        }
        adopted.predecessor.store(false, Ordering::Release);
        tracing::info!(
            connections = adopted_conns,
            "upgrade: the old process exited; hand-over complete"
        );
        // Let go of each set once its last connection ended (the maps are then freed), its
        // counters copied one last time.
        loop {
            adopted.lock().retain(|set| {
                // The list's reference, and one per connection task.
                let used = Arc::strong_count(set) > 1;
                if !used {
                    set.mirror.counters(&set.kernel, &metrics, &set.names);
                }
                used
            });
            if adopted.lock().is_empty() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(RELEASE_EVERY) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}

fn take_ring(set: &AdoptedSet) {
    let ring = set.ring.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(ring) = ring
        && let Err(e) = set.kernel.take_ring(ring)
    {
        tracing::error!(set = set.kernel.set, error = %crate::report::error_chain(&e),
            "upgrade: cannot read an adopted ring buffer");
    }
}

/// Starts the task of one adopted connection; false if it could not be placed.
fn adopt_conn(
    serving: &[(String, Arc<Serving>)],
    metrics: &Arc<Metrics>,
    set: Arc<AdoptedSet>,
    state: handover::ConnState,
    fds: Vec<OwnedFd>,
) -> bool {
    let Ok([client, upstream]) = <[OwnedFd; 2]>::try_from(fds) else {
        tracing::error!("upgrade: a connection came without its two sockets");
        return false;
    };
    let sockets = [
        std::net::TcpStream::from(client),
        std::net::TcpStream::from(upstream),
    ];
    let found = serving.iter().find(|(name, _)| *name == state.frontend);
    let Some((_, serving)) = found.or_else(|| serving.first()) else {
        tracing::error!(frontend = %state.frontend, "upgrade: no frontend to carry a connection");
        return false;
    };
    let serving = Arc::clone(serving);
    // A frontend the new config no longer has: carried under its own name, with no limits.
    let orphan = (found.is_none()).then(|| conn::Frontend {
        id: u32::MAX,
        name: state.frontend.clone(),
        backend: "-".to_owned(),
        tls_sides: "none",
        local_agents: false,
        metrics: conn::FrontendMetrics::new(metrics, &state.frontend),
        idle_timeout: None,
        tcp_keepalive: serving.listener.frontend.tcp_keepalive,
    });
    let shared = Arc::clone(&serving.shared);
    // Admitted once already: carried even if the limits are full now.
    let permits = Arc::clone(&shared.global_limit)
        .try_acquire_owned()
        .ok()
        .zip(Arc::clone(&serving.listener.limit).try_acquire_owned().ok());
    shared.tracker.clone().spawn(async move {
        let frontend = orphan.as_ref().unwrap_or(&serving.listener.frontend);
        conn::adopt(frontend, &shared, &set.kernel, state, sockets, permits).await;
    });
    true
}
