//! `agent-proxy run`: build the parts from a config, serve until a signal, drain, exit.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin::{self, AdminState},
    config::{Config, Dataplane, DnsTtl, FrontendMode, LocalAgentsMode},
    conn::{self, Shared},
    connect,
    dns::{Dns, DnsError},
    kernel::{Kernel, KernelError, KernelMirror},
    listener::{self, Listener, Mode, ratelimit::RateLimiter},
    metrics::Metrics,
    net,
    pool::Pool,
    redirect::{self, Plan, RedirectError},
    tls::TlsLoadError,
    transparent,
};

/// How long connection tasks get to clean up (map entries, fds) after being cut at the end of
/// the drain.
const ABORT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("dataplane = \"kernel\" but the kernel path cannot be used")]
    Kernel(#[source] KernelError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("cannot install the transparent frontends' iptables rules")]
    Redirect(#[source] RedirectError),
    #[error("cannot listen on {addr} (frontend {frontend:?})")]
    Bind {
        frontend: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve the admin endpoint on {addr}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("at most {} frontends are supported", proxy_common::MAX_FRONTENDS)]
    TooManyFrontends,
    #[error(transparent)]
    Tls(#[from] TlsLoadError),
}

pub use crate::tls::TlsState;

/// Reloads the TLS files on each SIGHUP until `stop` fires.
async fn reload_on_sighup(
    tls: Arc<TlsState>,
    mut hup: tokio::signal::unix::Signal,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            received = hup.recv() => {
                if received.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: re-reading the TLS certificates (the config file itself is not re-read yet)");
                let tls = Arc::clone(&tls);
                // File reads and key parsing block: keep them off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Loads the kernel path as `dataplane` asks. `auto` falls back to userspace and says why, once.
pub fn load_kernel(
    dataplane: Dataplane,
    local_agents: LocalAgentsMode,
) -> Result<Option<Arc<Kernel>>, StartError> {
    match dataplane {
        Dataplane::Userspace => Ok(None),
        Dataplane::Kernel => Kernel::load(local_agents)
            .map(Arc::new)
            .map(Some)
            .map_err(StartError::Kernel),
        Dataplane::Auto => match Kernel::load(local_agents) {
            Ok(kernel) => Ok(Some(Arc::new(kernel))),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e),
                    "kernel data path unavailable; every connection uses the userspace relay");
                Ok(None)
            }
        },
    }
}

/// Gives the heap pages that start-up freed back to the kernel. Loading the eBPF object parses
/// the running kernel's BTF (aya does it twice: some 300,000 small allocations) and frees it at once, but
/// glibc keeps freed pages below the top of its heap resident: a fresh kernel-path daemon held
/// 25.9 MiB of RSS, 10.6 MiB after this (docs/benchmarks.md, "Idle connection memory").
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and releases glibc's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub use crate::report::error_chain;

/// The start-up steps that need no privileges and touch no network: what `agent-proxy check`
/// runs after parsing, and `run` runs first. Returns the loaded TLS settings.
pub fn validate(config: &Config) -> Result<TlsState, StartError> {
    if config.frontends.len() > proxy_common::MAX_FRONTENDS as usize {
        return Err(StartError::TooManyFrontends);
    }
    Ok(TlsState::load(config)?)
}

/// A daemon built from its config and bound, not yet serving: [`Daemon::build`] then
/// [`Daemon::serve`]. Split so that each step reads on its own, and so that a later reload can
/// build the next generation beside the one serving.
pub struct Daemon {
    config: Config,
    tls: Arc<TlsState>,
    hup: Option<tokio::signal::unix::Signal>,
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, Arc<Listener>)>,
    admin: Option<(TcpListener, Arc<AdminState>)>,
    ready: Arc<AtomicBool>,
    /// Stops DNS refreshes and health checks when the daemon stops.
    stop_background: CancellationToken,
    /// The transparent frontends' iptables rules were installed: removed when accepting stops.
    redirecting: bool,
}

/// Runs the proxy until `shutdown` resolves, then drains for `drain_timeout`.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    Daemon::build(config).await?.serve(shutdown).await
}

impl Daemon {
    /// Everything before serving: validation, the kernel path, metrics, DNS and the pools
    /// (whose names resolve in the background from here on), the listeners and the admin
    /// endpoint bound.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        // Installed first: from here on a SIGHUP reloads instead of killing the process.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let tls = Arc::new(validate(&config)?);
        raise_fd_limit();
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        for (name, backend) in &tls.backends {
            tracing::info!(backend = %name, trust = %backend.trust, "tls to the servers");
        }
        let plan = Plan::new(&config);
        if plan.local {
            // Before anything dials (health checks, first connections): the OUTPUT rules let
            // only marked sockets pass.
            net::set_outgoing_mark(config.global.outgoing_mark);
        }
        let kernel = load_kernel(config.global.dataplane, config.global.local_agents)?;
        release_freed_memory();
        let metrics = Arc::new(Metrics::new());
        let path = if kernel.is_some() {
            "kernel"
        } else {
            "userspace"
        };
        for p in ["kernel", "userspace"] {
            metrics
                .dataplane
                .with_label_values(&[p])
                .set(i64::from(p == path));
        }
        tracing::info!(dataplane = path, "data path selected");

        // hickory's own cache must not outlive the shortest bounds any backend asks for.
        let bounds = config
            .backends
            .iter()
            .fold(DnsTtl::default(), |acc, b| DnsTtl {
                min_ttl: acc.min_ttl.min(b.dns.min_ttl),
                max_ttl: acc.max_ttl.min(b.dns.max_ttl),
            });
        let dns = Arc::new(Dns::new(
            &config.global.nameservers,
            bounds,
            Arc::clone(&metrics),
        )?);
        // Stops DNS refreshes and health checks when the daemon stops.
        let stop_background = CancellationToken::new();
        let pools: HashMap<String, Arc<Pool>> = config
            .backends
            .iter()
            .map(|b| (b.name.clone(), Pool::new(b, Arc::clone(&metrics))))
            .collect();
        for pool in pools.values() {
            // Checks of a TLS backend complete a handshake, as a real connection would.
            let check_tls = tls.backends.get(&pool.name).cloned();
            // Resolves in the background: the listeners open at once, and a client that comes
            // before a backend's first address waits for it (up to its connect_timeout).
            pool.start(Arc::clone(&dns), check_tls, stop_background.clone());
            for server in pool.servers() {
                tracing::info!(backend = %pool.name, server = %server.name, address = %server.addr, weight = server.weight, "server");
            }
        }

        let shared = Arc::new(Shared {
            metrics: Arc::clone(&metrics),
            kernel: kernel.clone(),
            global_limit: Arc::new(Semaphore::new(config.global.max_connections)),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            kernel_window: config.global.kernel_window,
            kernel_sndbuf: config.global.kernel_sndbuf,
            dns: Arc::clone(&dns),
        });

        let mut listeners = Vec::new();
        for (id, fe) in config.frontends.iter().enumerate() {
            let (mode, backend) = match &fe.mode {
                FrontendMode::Tcp { backend } => (
                    Mode::Tcp {
                        pool: Arc::clone(&pools[backend]),
                        tls: tls.frontends.get(&fe.name).cloned(),
                        backend_tls: tls.backends.get(backend).cloned(),
                    },
                    backend.as_str(),
                ),
                FrontendMode::Connect(connect) => {
                    if connect.users.is_empty() {
                        tracing::warn!(frontend = %fe.name,
                            "connect frontend without users: any client allowed by `allow` may open \
                             tunnels to allow_destinations");
                    }
                    (
                        Mode::Connect(connect::Settings::new(connect, &metrics, &fe.name)),
                        "-",
                    )
                }
                FrontendMode::Transparent(transparent) => {
                    let pool = transparent.backend.as_ref().map(|b| Arc::clone(&pools[b]));
                    let settings = transparent::Settings::new(transparent, pool);
                    let backend = transparent.backend.as_deref().unwrap_or("-");
                    (Mode::Transparent(settings), backend)
                }
            };
            let socket = listener::bind(fe.listen).map_err(|source| StartError::Bind {
                frontend: fe.name.clone(),
                addr: fe.listen,
                source,
            })?;
            let (client_tls, upstream_tls) = match &mode {
                Mode::Tcp {
                    tls, backend_tls, ..
                } => (tls.is_some(), backend_tls.is_some()),
                Mode::Connect(_) | Mode::Transparent(_) => (false, false),
            };
            tracing::info!(frontend = %fe.name, listen = %fe.listen, backend, "listening");
            // Agents on this host that connect here may send straight into the upstream socket,
            // unless TLS on a side keeps the connection in userspace anyway. A transparent
            // frontend's agents connect to their intake's address, never to the listener's,
            // so the kernel cannot pair them by it (docs/transparent.md, "Same-host agents").
            let mut local_agents = false;
            if let Some(local) = kernel.as_ref().and_then(|k| k.local.as_ref())
                && !client_tls
                && !upstream_tls
                && !matches!(mode, Mode::Transparent(_))
            {
                match local.listen(socket.as_raw_fd(), fe.listen, id as u32) {
                    Ok(()) => local_agents = true,
                    Err(e) => tracing::warn!(frontend = %fe.name, error = %error_chain(&e),
                        "same-host agents of this frontend use the splice like remote ones"),
                }
            }
            let listener = Listener {
                frontend: conn::Frontend {
                    id: id as u32,
                    name: fe.name.clone(),
                    backend: backend.to_owned(),
                    tls_sides: conn::Frontend::tls_field(client_tls, upstream_tls),
                    local_agents,
                    metrics: conn::FrontendMetrics::new(&metrics, &fe.name),
                },
                mode,
                allow: fe.allow.clone(),
                limit: Arc::new(Semaphore::new(fe.max_connections)),
                rate_limit: fe.rate_limit.map(RateLimiter::new),
            };
            listeners.push((socket, Arc::new(listener)));
        }

        let ready = Arc::new(AtomicBool::new(false));
        let admin = match config.global.admin {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Admin { addr, source })?;
                let state = admin_state(&config, &metrics, kernel.as_ref(), &pools, &ready);
                tracing::info!(%addr, "admin endpoint");
                Some((listener, state))
            }
            None => None,
        };

        // Last, once every listener is bound: a redirected connection finds its frontend.
        // Whatever an earlier (killed) daemon left in the chains is replaced.
        let redirecting = !plan.is_empty();
        if redirecting {
            redirect::install(&plan).map_err(StartError::Redirect)?;
            tracing::info!(
                ipv4 = plan.v4.prerouting.len() + plan.v4.output.len(),
                ipv6 = plan.v6.prerouting.len() + plan.v6.output.len(),
                "iptables rules of the transparent frontends installed"
            );
        }
        Ok(Self {
            config,
            tls,
            hup,
            shared,
            listeners,
            admin,
            ready,
            stop_background,
            redirecting,
        })
    }

    /// Serves until `shutdown` resolves, then stops accepting and drains for `drain_timeout`.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), StartError> {
        let Self {
            config,
            tls,
            hup,
            shared,
            listeners,
            admin,
            ready,
            stop_background,
            redirecting,
        } = self;
        let stop_admin = CancellationToken::new();
        let admin_task = admin.map(|(listener, state)| {
            let stop = stop_admin.clone();
            tokio::spawn(admin::serve(listener, state, async move {
                stop.cancelled().await
            }))
        });
        let stop_accepting = CancellationToken::new();
        let accept_tasks: Vec<_> = listeners
            .into_iter()
            .map(|(socket, listener)| {
                tokio::spawn(listener::serve(
                    socket,
                    listener,
                    Arc::clone(&shared),
                    stop_accepting.clone(),
                ))
            })
            .collect();
        let reload_task = hup.map(|hup| {
            tokio::spawn(reload_on_sighup(
                Arc::clone(&tls),
                hup,
                stop_accepting.clone(),
            ))
        });
        ready.store(true, Ordering::SeqCst);

        shutdown.await;
        tracing::info!(drain_timeout = ?config.global.drain_timeout, "stopping: no new connections, draining");
        ready.store(false, Ordering::SeqCst);
        // New connections now go where they were sent (routed), not to a proxy that no longer
        // accepts; the ones already redirected keep their conntrack entry and are drained.
        if redirecting {
            match redirect::remove() {
                Ok(()) => tracing::info!("iptables rules of the transparent frontends removed"),
                Err(e) => tracing::error!(error = %error_chain(&e),
                    "cannot remove the iptables rules; run `agent-proxy redirect remove`"),
            }
        }
        stop_accepting.cancel();
        for task in accept_tasks.into_iter().chain(reload_task) {
            let _ = task.await;
        }
        shared.tracker.close();
        if tokio::time::timeout(config.global.drain_timeout, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = shared.tracker.len(),
                "drain timeout: cutting open connections"
            );
            shared.abort.cancel();
            let _ = tokio::time::timeout(ABORT_GRACE, shared.tracker.wait()).await;
        }
        stop_background.cancel();
        stop_admin.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// What the admin endpoint reads: the metrics, readiness and its reasons, and the refresh that
/// copies the kernel's counters into the metrics before a scrape.
fn admin_state(
    config: &Config,
    metrics: &Arc<Metrics>,
    kernel: Option<&Arc<Kernel>>,
    pools: &HashMap<String, Arc<Pool>>,
    ready: &Arc<AtomicBool>,
) -> Arc<AdminState> {
    let names: Vec<String> = config.frontends.iter().map(|f| f.name.clone()).collect();
    let mirror = KernelMirror::default();
    let refresh_metrics = Arc::clone(metrics);
    let refresh_kernel = kernel.cloned();
    let refresh_pools: Vec<Arc<Pool>> = pools.values().cloned().collect();
    let mut pending_pools = refresh_pools.clone();
    pending_pools.sort_by(|a, b| a.name.cmp(&b.name));
    let pending_kernel = kernel.cloned();
    Arc::new(AdminState {
        metrics: Arc::clone(metrics),
        ready: Arc::clone(ready),
        pending: Box::new(move || {
            let mut reasons: Vec<String> = pending_pools
                .iter()
                .flat_map(|pool| {
                    pool.unresolved().into_iter().map(move |server| {
                        format!("backend {}: no address known for {server} yet", pool.name)
                    })
                })
                .collect();
            if pending_kernel
                .as_ref()
                .is_some_and(|k| k.events.has_stopped())
            {
                reasons.push(
                    "kernel event task stopped: spliced connections get no wake-ups".to_owned(),
                );
            }
            reasons
        }),
        refresh: Box::new(move || {
            if let Some(kernel) = &refresh_kernel {
                mirror.refresh(kernel, &refresh_metrics, &names);
            }
            for pool in &refresh_pools {
                pool.refresh_gauges();
            }
        }),
    })
}

/// Raises the soft open-files limit to the hard limit: each connection holds two sockets, and the
/// usual soft default (1024) would cap the proxy near 500 connections.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("cannot raise the open-files limit");
            }
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            tracing::info!(limit = limit.rlim_cur, "open-files limit");
        }
    }
}
