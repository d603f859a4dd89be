//! The config a scenario runs the daemon with, generated from a few typed settings.
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The data path a test asks the daemon for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataplane {
    /// eBPF sockmap splice; the daemon must fail to start if it cannot load. The test clients
    /// run on the daemon's host, and `local_agents = "always"` sends their bytes straight into
    /// the upstream socket (sock_ops + sk_msg) once the gate opens, whatever the kernel's
    /// FIONREAD self-test says (the default, which the test of that self-test covers, keeps
    /// them on the splice on a kernel that misreports).
    Kernel,
    /// The kernel path as agents on other hosts get it: `local_agents = false`, so every byte
    /// of the test clients goes through the splice verdict.
    KernelRemote,
    /// The userspace relay.
    Userspace,
}

impl Dataplane {
    /// The config value, which is also the `path` label of metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel | Self::KernelRemote => "kernel",
            Self::Userspace => "userspace",
        }
    }

    /// `[global]` lines the variant needs beyond `dataplane`.
    pub fn extra_global(self) -> &'static str {
        match self {
            Self::KernelRemote => "local_agents = false\n",
            Self::Kernel => "local_agents = \"always\"\n",
            Self::Userspace => "",
        }
    }

    /// Either kernel variant.
    pub fn is_kernel(self) -> bool {
        self != Self::Userspace
    }

    /// The other path (whose counters must stay at zero).
    pub fn other(self) -> Self {
        match self {
            Self::Kernel | Self::KernelRemote => Self::Userspace,
            Self::Userspace => Self::Kernel,
        }
    }
}

impl fmt::Display for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Name of the single frontend and backend of generated configs.
pub const FRONTEND: &str = "fe";
pub const BACKEND: &str = "be";

/// What goes into a generated config: one frontend in tcp mode, one backend.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub dataplane: Dataplane,
    /// A fixed port inside the test's namespace (port 0 could not be reported back).
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub servers: Vec<SocketAddr>,
    pub balance: &'static str,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub drain_timeout: Duration,
    pub max_connections: u32,
    pub frontend_max_connections: u32,
    pub kernel_window: Option<u64>,
    pub kernel_sndbuf: Option<u64>,
    /// The frontend's `mode`.
    pub mode: &'static str,
    /// TOML lines appended to `[global]`, to the frontend and to the backend table (keys a
    /// scenario needs that the fields above do not cover).
    pub global_extra: String,
    pub frontend_extra: String,
    pub backend_extra: String,
    /// Server entries as written in `servers = [...]` (hostnames, weights); when non-empty
    /// they replace `servers`.
    pub server_entries: Vec<String>,
    /// Leave `local_agents` at the daemon's default rather than the variant's
    /// ([`Dataplane::extra_global`]).
    pub local_agents_default: bool,
    /// The whole file, when a scenario needs a layout the fields cannot express (several
    /// frontends, no backend). `listen` and `admin` must still be what it uses.
    pub toml_override: Option<String>,
    /// The binary to run instead of [`crate::daemon::binary`] (a copy others may execute).
    pub binary: Option<std::path::PathBuf>,
    /// A command the binary runs under, between `ip netns exec NS` and the binary: `setpriv`
    /// with another user and capabilities.
    pub exec_prefix: Vec<String>,
}

impl DaemonConfig {
    pub fn new(dataplane: Dataplane, servers: Vec<SocketAddr>) -> Self {
        Self {
            dataplane,
            listen: "127.0.0.1:7000".parse().expect("valid address"),
            admin: "127.0.0.1:9090".parse().expect("valid address"),
            servers,
            balance: "roundrobin",
            connect_timeout: Duration::from_secs(2),
            retries: 3,
            drain_timeout: Duration::from_secs(2),
            max_connections: 10_000,
            frontend_max_connections: 4_096,
            kernel_window: None,
            kernel_sndbuf: None,
            mode: "tcp",
            global_extra: String::new(),
            frontend_extra: String::new(),
            backend_extra: String::new(),
            server_entries: Vec::new(),
            local_agents_default: false,
            toml_override: None,
            binary: None,
            exec_prefix: Vec::new(),
        }
    }

    pub fn to_toml(&self) -> String {
        if let Some(text) = &self.toml_override {
            return text.clone();
        }
        let mut global = format!(
            "[global]\nmax_connections = {}\ndataplane = \"{}\"\nadmin = \"{}\"\n\
             drain_timeout = \"{}\"\nlog_format = \"json\"\n",
            self.max_connections,
            self.dataplane,
            self.admin,
            humantime(self.drain_timeout),
        );
        if let Some(w) = self.kernel_window {
            global += &format!("kernel_window = {w}\n");
        }
        if let Some(b) = self.kernel_sndbuf {
            global += &format!("kernel_sndbuf = {b}\n");
        }
        if !self.local_agents_default {
            global += self.dataplane.extra_global();
        }
        global += &self.global_extra;
        let servers: Vec<String> = if self.server_entries.is_empty() {
            self.servers.iter().map(|s| format!("\"{s}\"")).collect()
        } else {
            self.server_entries.clone()
        };
        format!(
            "{global}\n[[frontend]]\nname = \"{FRONTEND}\"\nlisten = \"{}\"\nmode = \"{}\"\n\
             backend = \"{BACKEND}\"\nmax_connections = {}\n{}\n[[backend]]\nname = \"{BACKEND}\"\n\
             servers = [{}]\nbalance = \"{}\"\nconnect_timeout = \"{}\"\nretries = {}\n{}",
            self.listen,
            self.mode,
            self.frontend_max_connections,
            self.frontend_extra,
            servers.join(", "),
            self.balance,
            humantime(self.connect_timeout),
            self.retries,
            self.backend_extra,
        )
    }
}

/// A duration as a humantime string ("2s", "1500ms").
fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
