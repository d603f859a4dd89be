//! `agent-proxy run`: build the parts from a config, serve until a signal, drain, exit.
mod generation;
mod handing;
mod notify;
mod upgrade;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin::{self, AdminState},
    config::{Config, Dataplane, LocalAgentsMode},
    dns::DnsError,
    kernel::{Kernel, KernelError, KernelMirror},
    metrics::Metrics,
    net,
    pool::Pool,
    redirect::{self, Plan, RedirectError},
    tls::TlsLoadError,
};
use generation::Generation;

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
    #[error("cannot take over from the process being upgraded")]
    Inherit(#[source] upgrade::InheritError),
}

pub use crate::tls::TlsState;

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

/// Fixes glibc's mmap threshold at 1 MiB (and so its trim threshold at the default 128 KiB)
/// before the kernel path loads. Left dynamic, glibc raises the threshold to the size of the
/// largest mmapped block freed so far. It was brought in when the daemon and aya each parsed the
/// running kernel's BTF in full: the first parse's 5.5 MB block, once freed, put the second
/// parse on a fragmented heap (start-up peak 34 -> 28.4 MiB). Neither parse is left
/// (`kernel/btf.rs` reads four offsets in 64 KiB pieces, `kernel/loader.rs` keeps aya from
/// parsing), and with or without this the start-up peak is the same 11.3-11.8 MiB; kept for
/// the memory per connection, 0.1-0.2 KiB lower with it on the remote-agent path in three
/// alternated runs of the bench's agents-1000 (docs/benchmarks.md, "Where the kernel path's
/// peak RSS goes"), and so that the carry loop's 256 KiB buffers live on the heap from the
/// first one on.
fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a parameter of glibc's allocator, under its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Gives the heap pages that start-up freed back to the kernel: glibc keeps freed pages below
/// the top of its heap resident. Loading the kernel path frees what it used (the BTF lookups'
/// type index, 0.5 MB each, aya's reading of the eBPF object): a fresh kernel-path daemon held
/// 1.33 MiB of anonymous memory without this, 0.90 MiB with it (when aya and the daemon parsed
/// the whole BTF, 25.9 MiB of RSS against 10.6; docs/benchmarks.md, "Idle connection memory").
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

/// What a reload never changes: the parts of the process built once at start.
pub(crate) struct Process {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) kernel: Option<Arc<Kernel>>,
    /// `global.max_connections`, resized by reloads.
    pub(crate) global_limit: Arc<Semaphore>,
    /// Cancelled when the drain timeout expires: connections still open are cut.
    pub(crate) abort: CancellationToken,
    /// Every connection task of every generation, for the drain.
    pub(crate) tracker: TaskTracker,
    /// Parent of every pool's token: stops DNS refreshes and health checks at exit.
    pub(crate) stop_background: CancellationToken,
    /// Parent of every accept loop's token: stops accepting at shutdown.
    pub(crate) stop_accepting: CancellationToken,
    ready: Arc<AtomicBool>,
    /// What the admin endpoint shows of the generation serving.
    view: Arc<RwLock<AdminView>>,
    /// The last reload, for `/stats`.
    reload_status: Arc<Mutex<serde_json::Value>>,
    /// What this process inherited when it was started by an upgrade (SIGUSR2).
    inherited: upgrade::Inherited,
    /// Asked by an upgrade: kernel-spliced connections move to the new process.
    pub(crate) handover: Arc<crate::handover::Handover>,
    /// Sets of maps adopted from the process this one replaced, with connections of theirs.
    pub(crate) adopted: Arc<handing::Adopted>,
}

/// The admin endpoint's view of the generation serving.
#[derive(Default)]
struct AdminView {
    /// Frontend names by id, for the kernel counters.
    names: Vec<String>,
    pools: Vec<Arc<Pool>>,
}

/// A daemon built from its config and bound, not yet serving: [`Daemon::build`] then
/// [`Daemon::serve`]. A SIGHUP builds the next [`Generation`] beside the one serving and swaps
/// it in ([`Daemon::reload`]).
pub struct Daemon {
    /// The config file, re-read on SIGHUP.
    path: PathBuf,
    process: Process,
    generation: Generation,
    hup: Option<tokio::signal::unix::Signal>,
    admin: Option<(TcpListener, Arc<AdminState>)>,
    /// The transparent frontends' iptables rules are installed: removed when accepting stops.
    redirecting: bool,
    /// The binary and arguments an upgrade starts again.
    command: Option<upgrade::Command>,
    /// A copy of the admin endpoint's socket, for an upgrade to hand over.
    admin_socket: Option<std::os::fd::OwnedFd>,
}

/// Runs the proxy until `shutdown` resolves, then drains for `drain_timeout`. `path`: the file
/// `config` came from, re-read on SIGHUP.
pub async fn run(
    config: Config,
    path: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    Daemon::build(config, path).await?.serve(shutdown).await
}

/// An upgrade under way: resolves with the new process's pid and the hand-over socket once it
/// serves.
type UpgradeTask = tokio::task::JoinHandle<Result<(u32, std::os::fd::OwnedFd), String>>;

/// Why a reload was refused: the old config keeps serving.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{file}: {message}")]
    Static { file: String, message: String },
    #[error("{file}: {}", error_chain(.source))]
    Start {
        file: String,
        #[source]
        source: StartError,
    },
}

impl Daemon {
    /// Everything before serving: validation, the kernel path, metrics, DNS and the pools'
    /// first resolutions, the listeners and the admin endpoint bound.
    pub async fn build(config: Config, path: PathBuf) -> Result<Self, StartError> {
        // Installed first: from here on a SIGHUP reloads instead of killing the process.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let inherited = upgrade::Inherited::from_env().map_err(StartError::Inherit)?;
        let tls = validate(&config)?;
        raise_fd_limit();
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        for (name, backend) in &tls.backends {
            tracing::info!(backend = %name, trust = %backend.trust, "tls to the servers");
        }
        let plan = Plan::new(&config);
        // Before anything dials (health checks, first connections): the OUTPUT rules let only
        // marked sockets pass.
        net::set_outgoing_mark(if plan.local {
            config.global.outgoing_mark
        } else {
            0
        });
        fix_mmap_threshold();
        let kernel = load_kernel(config.global.dataplane, config.global.local_agents)?;
        release_freed_memory();
        let metrics = Arc::new(Metrics::new());
        let path_name = if kernel.is_some() {
            "kernel"
        } else {
            "userspace"
        };
        for p in ["kernel", "userspace"] {
            metrics
                .dataplane
                .with_label_values(&[p])
                .set(i64::from(p == path_name));
        }
        for result in ["ok", "error"] {
            metrics.config_reloads_total.with_label_values(&[result]);
        }
        tracing::info!(dataplane = path_name, "data path selected");

        let process = Process {
            metrics: Arc::clone(&metrics),
            kernel: kernel.clone(),
            global_limit: Arc::new(Semaphore::new(config.global.max_connections)),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            stop_background: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            ready: Arc::new(AtomicBool::new(false)),
            view: Arc::default(),
            reload_status: Arc::new(Mutex::new(serde_json::json!({ "reloads": 0 }))),
            inherited,
            handover: Arc::default(),
            adopted: Arc::default(),
        };
        for result in ["ok", "error"] {
            metrics.upgrades_total.with_label_values(&[result]);
        }
        let admin_addr = config.global.admin;
        let generation = Generation::build(&process, config, &tls, None).await?;
        *process.view.write().unwrap_or_else(|e| e.into_inner()) = AdminView {
            names: generation.names(),
            pools: generation.pool_list(),
        };

        let admin = match admin_addr {
            Some(addr) => {
                let error = |source| StartError::Admin { addr, source };
                let listener = match process.inherited.admin() {
                    Some(socket) => {
                        socket.set_nonblocking(true).map_err(error)?;
                        TcpListener::from_std(socket).map_err(error)?
                    }
                    None => TcpListener::bind(addr).await.map_err(error)?,
                };
                tracing::info!(%addr, "admin endpoint");
                Some((listener, admin_state(&process)))
            }
            None => None,
        };
        let admin_socket = match &admin {
            Some((listener, _)) => Some(
                std::os::fd::AsFd::as_fd(listener)
                    .try_clone_to_owned()
                    .map_err(|source| StartError::Admin {
                        addr: listener
                            .local_addr()
                            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                        source,
                    })?,
            ),
            None => None,
        };

        // Last, once every listener is bound: a redirected connection finds its frontend.
        // Whatever an earlier (killed) daemon left in the chains is replaced.
        let redirecting = !generation.plan.is_empty();
        if redirecting {
            install_rules(&generation.plan).map_err(StartError::Redirect)?;
        }
        Ok(Self {
            path,
            process,
            generation,
            hup,
            admin,
            redirecting,
            command: upgrade::Command::of_this_process(),
            admin_socket,
        })
    }

    /// Serves until `shutdown` resolves, reloading on SIGHUP, then stops accepting and drains
    /// for `drain_timeout`.
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), StartError> {
        let stop_admin = CancellationToken::new();
        let admin_task = self.admin.take().map(|(listener, state)| {
            let stop = stop_admin.clone();
            tokio::spawn(admin::serve(listener, state, async move {
                stop.cancelled().await
            }))
        });
        self.generation.commit(&self.process, None);
        let pid_file = self.generation.config.global.pid_file.clone();
        if let Some(file) = &pid_file
            && let Err(e) = std::fs::write(file, format!("{}\n", std::process::id()))
        {
            tracing::error!(file = %file.display(), error = %e, "cannot write the pid file");
        }
        self.process.ready.store(true, Ordering::SeqCst);
        // Started by an upgrade: the old process may stop accepting now, and systemd follows
        // this one.
        if let Some(socket) = self.process.inherited.confirm() {
            let serving = self.generation.serving();
            let stop = self.process.stop_background.clone();
            handing::receive(&self.process, socket, serving, stop);
        }
        if self.process.inherited.upgrade {
            notify::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
        } else {
            notify::notify("READY=1");
        }

        let mut shutdown = std::pin::pin!(shutdown);
        let mut hup = self.hup.take();
        let mut usr2 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok();
        let mut upgrading: Option<UpgradeTask> = None;
        // The pid of the process that took over, once one did, and the hand-over to it.
        let mut successor = None;
        let mut giving = None;
        loop {
            let reload = async {
                match hup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let upgrade_asked = async {
                match usr2.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let upgraded = async {
                match upgrading.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                received = reload => {
                    if received.is_none() {
                        hup = None;
                        continue;
                    }
                    self.reload().await;
                }
                received = upgrade_asked => {
                    if received.is_none() {
                        usr2 = None;
                        continue;
                    }
                    if upgrading.is_some() {
                        tracing::warn!("SIGUSR2 during an upgrade: ignored");
                        continue;
                    }
                    if self.process.adopted.predecessor_alive() {
                        tracing::warn!("SIGUSR2 while the process this one replaced still \
                            hands connections over: ignored");
                        continue;
                    }
                    upgrading = self.start_upgrade();
                }
                result = upgraded => {
                    upgrading = None;
                    let result = result.unwrap_or_else(|e| Err(format!("upgrade task: {e}")));
                    let label = if result.is_ok() { "ok" } else { "error" };
                    self.process.metrics.upgrades_total.with_label_values(&[label]).inc();
                    match result {
                        Ok((pid, socket)) => {
                            tracing::info!(pid, "upgrade: the new process serves; this one stops accepting, hands its kernel-spliced connections over and drains the rest");
                            successor = Some(pid);
                            let names = self.generation.names();
                            giving = Some(handing::Giving::start(&self.process, socket, names));
                            break;
                        }
                        Err(error) => tracing::error!(%error, "upgrade failed; this process keeps serving"),
                    }
                }
            }
        }

        let (process, generation) = (&self.process, &self.generation);
        let drain_timeout = generation.config.global.drain_timeout;
        tracing::info!(?drain_timeout, "stopping: no new connections, draining");
        // After an upgrade the service goes on, in the new process.
        if successor.is_none() {
            notify::notify("STOPPING=1");
        }
        process.ready.store(false, Ordering::SeqCst);
        // New connections now go where they were sent (routed), not to a proxy that no longer
        // accepts; the ones already redirected keep their conntrack entry and are drained.
        // After an upgrade the rules are the new process's.
        if self.redirecting && successor.is_none() {
            match redirect::remove() {
                Ok(()) => tracing::info!("iptables rules of the transparent frontends removed"),
                Err(e) => tracing::error!(error = %error_chain(&e),
                    "cannot remove the iptables rules; run `agent-proxy redirect remove`"),
            }
        }
        process.stop_accepting.cancel();
        if successor.is_some() {
            // Scrapes and probes of the shared admin socket go to the new process from now on.
            stop_admin.cancel();
        }
        for fe in &generation.frontends {
            if let Some(task) = fe.bound.take_task() {
                let _ = task.await;
            }
        }
        let tracker = &process.tracker;
        tracker.close();
        if tokio::time::timeout(drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = tracker.len(),
                "drain timeout: cutting open connections"
            );
            process.abort.cancel();
            let _ = tokio::time::timeout(ABORT_GRACE, tracker.wait()).await;
        }
        if let Some(giving) = giving {
            giving.finish(process).await;
        }
        process.stop_background.cancel();
        stop_admin.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        // After an upgrade the file holds the new process's pid.
        if let Some(file) = &pid_file
            && successor.is_none()
        {
            let _ = std::fs::remove_file(file);
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// SIGUSR2: starts the new process with this one's sockets (see [`upgrade`]); `None` when
    /// it could not even start (counted and logged here).
    fn start_upgrade(&self) -> Option<UpgradeTask> {
        let started = match &self.command {
            Some(command) => upgrade::start(
                command,
                &self.generation.listeners(),
                self.admin_socket.as_ref().map(std::os::fd::AsFd::as_fd),
            )
            .map_err(|e| format!("cannot start {}: {e}", command.exe.display())),
            None => Err("the path of this binary is unknown".to_owned()),
        };
        match started {
            Ok(task) => Some(task),
            Err(error) => {
                self.process
                    .metrics
                    .upgrades_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(%error, "upgrade failed; this process keeps serving");
                None
            }
        }
    }

    /// SIGHUP: re-reads the config file and puts it in service, or refuses it and keeps the
    /// one serving; either way counted, logged and shown on `/stats`.
    async fn reload(&mut self) {
        tracing::info!(file = %self.path.display(), "SIGHUP: reloading the configuration");
        notify::notify("RELOADING=1");
        let result = self.try_reload().await;
        notify::notify("READY=1");
        let metrics = &self.process.metrics;
        let (label, error) = match &result {
            Ok(()) => ("ok", None),
            Err(e) => ("error", Some(e.to_string())),
        };
        // /stats before the metrics: whoever sees the count move sees the rest.
        {
            let mut status = self
                .process
                .reload_status
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let count = status["reloads"].as_u64().unwrap_or(0) + 1;
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            *status = serde_json::json!({
                "reloads": count,
                "last": { "result": label, "at_unix": at, "error": error },
            });
        }
        metrics.record_reload(error.is_none());
        match error {
            None => tracing::info!(
                frontends = self.generation.frontends.len(),
                backends = self.generation.pools.len(),
                "reloaded"
            ),
            Some(error) => {
                tracing::error!(%error, "reload refused; the previous configuration keeps serving")
            }
        }
    }

    async fn try_reload(&mut self) -> Result<(), ReloadError> {
        let file = self.path.display().to_string();
        let config = crate::config::load(&self.path)?;
        fixed_at_start(&self.generation.config, &config).map_err(|message| {
            ReloadError::Static {
                file: file.clone(),
                message,
            }
        })?;
        let start_error = |source| ReloadError::Start {
            file: file.clone(),
            source,
        };
        let tls = validate(&config).map_err(start_error)?;
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let next = Generation::build(&self.process, config, &tls, Some(&self.generation))
            .await
            .map_err(start_error)?;
        // The rules, before anything else changes: a failure leaves the old ones and the old
        // generation in place.
        let plan_changed = next.plan != self.generation.plan;
        if plan_changed {
            if next.plan.is_empty() {
                if let Err(e) = redirect::remove() {
                    return Err(start_error(StartError::Redirect(e)));
                }
                tracing::info!("iptables rules of the transparent frontends removed");
            } else if let Err(e) = install_rules(&next.plan) {
                if self.redirecting {
                    let _ = install_rules(&self.generation.plan);
                }
                return Err(start_error(StartError::Redirect(e)));
            }
            self.redirecting = !next.plan.is_empty();
        }
        net::set_outgoing_mark(if next.plan.local {
            next.config.global.outgoing_mark
        } else {
            0
        });
        let old = std::mem::replace(&mut self.generation, next);
        self.generation.commit(&self.process, Some(old));
        *self.process.view.write().unwrap_or_else(|e| e.into_inner()) = AdminView {
            names: self.generation.names(),
            pools: self.generation.pool_list(),
        };
        Ok(())
    }
}

/// Installs the transparent frontends' rules and says so.
fn install_rules(plan: &Plan) -> Result<(), RedirectError> {
    redirect::install(plan)?;
    tracing::info!(
        ipv4 = plan.v4.prerouting.len() + plan.v4.output.len(),
        ipv6 = plan.v6.prerouting.len() + plan.v6.output.len(),
        "iptables rules of the transparent frontends installed"
    );
    Ok(())
}

/// The settings a running daemon cannot change (docs/configuration.md, "Reload"): `Err` names
/// the first that differs.
fn fixed_at_start(running: &Config, next: &Config) -> Result<(), String> {
    let (a, b) = (&running.global, &next.global);
    let differs = [
        (
            "dataplane",
            a.dataplane != b.dataplane,
            "the data path is chosen at start",
        ),
        (
            "local_agents",
            a.local_agents != b.local_agents,
            "the kernel programs are attached at start",
        ),
        (
            "admin",
            a.admin != b.admin,
            "the admin endpoint is bound at start",
        ),
        (
            "log_format",
            a.log_format != b.log_format,
            "logging is set up at start",
        ),
        (
            "pid_file",
            a.pid_file != b.pid_file,
            "the pid file is written at start",
        ),
    ];
    match differs.iter().find(|(_, changed, _)| *changed) {
        Some((key, _, why)) => Err(format!(
            "global.{key} cannot change on reload ({why}): restart the daemon to apply it"
        )),
        None => Ok(()),
    }
}

/// What the admin endpoint reads: the metrics, readiness and its reasons, and the refresh that
/// copies the kernel's counters into the metrics before a scrape - of whichever generation is
/// serving.
fn admin_state(process: &Process) -> Arc<AdminState> {
    let mirror = KernelMirror::default();
    let (refresh_metrics, refresh_kernel) = (Arc::clone(&process.metrics), process.kernel.clone());
    let (refresh_view, pending_view) = (Arc::clone(&process.view), Arc::clone(&process.view));
    let pending_kernel = process.kernel.clone();
    let refresh_adopted = Arc::clone(&process.adopted);
    Arc::new(AdminState {
        metrics: Arc::clone(&process.metrics),
        ready: Arc::clone(&process.ready),
        reload: Arc::clone(&process.reload_status),
        started: std::time::Instant::now(),
        backends: {
            let view = Arc::clone(&process.view);
            Box::new(move || {
                let view = view.read().unwrap_or_else(|e| e.into_inner());
                Some(admin::backends_status(&view.pools))
            })
        },
        pending: Box::new(move || {
            let view = pending_view.read().unwrap_or_else(|e| e.into_inner());
            let mut reasons: Vec<String> = view
                .pools
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
            let view = refresh_view.read().unwrap_or_else(|e| e.into_inner());
            if let Some(kernel) = &refresh_kernel {
                let adopted = refresh_adopted.refresh(&refresh_metrics);
                let adopted: Vec<&Kernel> = adopted.iter().map(|k| &**k).collect();
                mirror.refresh(kernel, &refresh_metrics, &view.names, &adopted);
            }
            for pool in &view.pools {
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
