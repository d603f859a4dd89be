//! [`LocalAgents`]: the maps and programs that let a same-host agent's `sendmsg` go straight into
//! the upstream socket (see proxy-ebpf's `local` module and docs/architecture.md).
//!
//! The daemon's part: say which addresses are listen addresses (`LOCAL_LISTENERS`), pair an
//! accepted connection's agent socket with the upstream socket (`LOCAL_TARGETS`, `LOCAL_GATES`),
//! move the gate as the upstream socket drains, and undo it all when the connection ends.
use std::{
    fs, io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, RawFd},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, SockHash},
    programs::{CgroupAttachMode, SkMsg, SockOps},
};
use proxy_common::{FlowKey, ListenKey, LocalGate, LocalSend, MAX_FRONTENDS, RouteCounters};

use crate::config::LocalAgentsMode;

use super::{
    KernelError,
    registry::{EntryCount, ignore_missing, map_err, reopen},
    take,
};

const AF_INET: u32 = libc::AF_INET as u32;
const AF_INET6: u32 = libc::AF_INET6 as u32;

struct Maps {
    listeners: HashMap<MapData, ListenKey, u32>,
    socks: SockHash<MapData, FlowKey>,
    targets: SockHash<MapData, FlowKey>,
    state: HashMap<MapData, FlowKey, LocalSend>,
    gates: HashMap<MapData, FlowKey, LocalGate>,
    counters: PerCpuArray<MapData, RouteCounters>,
}

/// The scrape's own handles, so that reading never holds the lock that pairing and the gates
/// (same-host flow control) take (see `registry`). `LOCAL_SOCKS` and `LOCAL_STATE` get their
/// entries from the kernel (`local_sock_ops`, as agents connect), so the daemon cannot count
/// them as it does `LOCAL_TARGETS` and `LOCAL_GATES`: the scrape walks their keys, one per
/// same-host agent socket.
struct Scrape {
    socks: SockHash<MapData, FlowKey>,
    state: HashMap<MapData, FlowKey, LocalSend>,
    counters: PerCpuArray<MapData, RouteCounters>,
}

impl Scrape {
    fn new(maps: &Maps) -> Result<Self, KernelError> {
        use aya::maps::{IterableMap, Map};
        use std::os::fd::AsFd as _;
        Ok(Self {
            socks: reopen(maps.socks.fd().as_fd(), Map::SockHash)?,
            state: reopen(IterableMap::map(&maps.state).fd().as_fd(), Map::HashMap)?,
            counters: reopen(
                IterableMap::map(&maps.counters).fd().as_fd(),
                Map::PerCpuArray,
            )?,
        })
    }
}

pub struct LocalAgents {
    maps: Mutex<Maps>,
    scrape: Mutex<Scrape>,
    /// Entries the daemon put in `LOCAL_TARGETS` and `LOCAL_GATES` (see `registry`).
    targets: EntryCount,
    gates: EntryCount,
    /// The cgroup v2 directory the `sock_ops` program is attached to.
    pub cgroup: PathBuf,
}

impl LocalAgents {
    /// Takes the maps, attaches `local_msg` to `LOCAL_SOCKS` and `local_sock_ops` to the cgroup v2
    /// root (mounting cgroup2 under /run/agent-proxy if the host has no cgroup2 mount).
    pub(super) fn load(ebpf: &mut Ebpf, mode: LocalAgentsMode) -> Result<Self, KernelError> {
        let mut maps = Maps {
            listeners: take(ebpf, proxy_common::LOCAL_LISTENERS)?,
            socks: take(ebpf, proxy_common::LOCAL_SOCKS)?,
            targets: take(ebpf, proxy_common::LOCAL_TARGETS)?,
            state: take(ebpf, proxy_common::LOCAL_STATE)?,
            gates: take(ebpf, proxy_common::LOCAL_GATES)?,
            counters: take(ebpf, proxy_common::LOCAL_COUNTERS)?,
        };
        let msg: &mut SkMsg = program(ebpf, "local_msg")?;
        msg.load().map_err(attach(MSG_LOAD))?;
        msg.attach(maps.socks.fd())
            .map_err(attach("local_msg: attach to LOCAL_SOCKS"))?;
        // Before any agent socket can join LOCAL_SOCKS: does this kernel still count what such
        // a socket has queued (see `fionread`)?
        match (super::fionread::counts_queued_bytes(&mut maps.socks), mode) {
            (Ok(true), _) => {}
            (Ok(false), LocalAgentsMode::Always) => tracing::warn!(
                "this kernel reports FIONREAD 0 on sockets in a sockmap (Linux commit 929e30f9): \
                 same-host agents get the direct path anyway (local_agents = \"always\"), and \
                 their ioctl(FIONREAD) reads 0 while data is readable"
            ),
            (Ok(false), _) => return Err(KernelError::FionreadMisreported),
            (Err(e), _) => return Err(KernelError::FionreadTest(e)),
        }

        let cgroup = cgroup2_root().map_err(KernelError::Socket)?;
        let dir = fs::File::open(&cgroup).map_err(KernelError::Socket)?;
        let ops: &mut SockOps = program(ebpf, "local_sock_ops")?;
        ops.load().map_err(attach("local_sock_ops: load"))?;
        // A link (aya uses bpf_link_create on this kernel) coexists with other programs on the
        // cgroup whatever the mode - other daemons, other tools - and the kernel refuses any
        // attach flag on a link, so the mode must be the flag-less one.
        ops.attach(dir.as_fd(), CgroupAttachMode::Single)
            .map_err(attach("local_sock_ops: attach to the cgroup v2 root"))?;
        Ok(Self {
            scrape: Mutex::new(Scrape::new(&maps)?),
            maps: Mutex::new(maps),
            targets: EntryCount::default(),
            gates: EntryCount::default(),
            cgroup,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Agents in this network namespace that connect to `addr` get the direct path.
    pub fn listen(
        &self,
        listener: RawFd,
        addr: SocketAddr,
        frontend: u32,
    ) -> Result<(), KernelError> {
        let netns = netns_cookie(listener).map_err(KernelError::Socket)?;
        let mut maps = self.lock();
        for key in listen_keys(netns, addr) {
            maps.listeners
                .insert(key, frontend, 0)
                .map_err(map_err("insert listener"))?;
        }
        Ok(())
    }

    /// Undoes [`Self::listen`]: agents connecting to `addr` are no longer taken (a frontend
    /// removed by a reload). `listener`: the listening socket, still open.
    pub fn unlisten(&self, listener: RawFd, addr: SocketAddr) {
        let Ok(netns) = netns_cookie(listener) else {
            return;
        };
        let mut maps = self.lock();
        for key in listen_keys(netns, addr) {
            let _ = ignore_missing(maps.listeners.remove(&key));
        }
    }

    /// Pairs the agent socket behind `accepted` (the daemon's accepted socket) with `upstream`, if
    /// the agent is on this host and `sock_ops` took its socket. The gate starts closed; call
    /// [`Splice`](crate::splice) logic to open it.
    pub fn pair(
        &self,
        accepted: &std::net::TcpStream,
        upstream_fd: RawFd,
        cookie: u64,
        frontend: u32,
    ) -> Result<Option<FlowKey>, KernelError> {
        let (Ok(local), Ok(peer)) = (accepted.local_addr(), accepted.peer_addr()) else {
            return Ok(None);
        };
        // The agent's view: its local address is our peer, its remote address is our local one.
        let Some(key) = flow_key(peer, local) else {
            return Ok(None);
        };
        let mut maps = self.lock();
        if maps.state.get(&key, 0).is_err() {
            return Ok(None);
        }
        let gate = LocalGate {
            tcp_landed: u64::MAX,
            cookie,
            frontend,
            ..LocalGate::default()
        };
        maps.gates
            .insert(key, gate, 0)
            .map_err(map_err("insert gate"))?;
        self.gates.added(1);
        if let Err(e) = maps.targets.insert(key, upstream_fd, 0) {
            self.gates.removed(maps.gates.remove(&key));
            return Err(map_err("insert target")(e));
        }
        self.targets.added(1);
        Ok(Some(key))
    }

    /// The program's counters for an agent socket (`None` once the socket closed).
    pub fn state(&self, key: &FlowKey) -> Option<LocalSend> {
        self.lock().state.get(key, 0).ok()
    }

    pub fn set_gate(&self, key: &FlowKey, gate: LocalGate) -> Result<(), KernelError> {
        self.lock()
            .gates
            .insert(key, gate, 0)
            .map_err(map_err("set gate"))
    }

    /// Ends the pairing: no message goes to the upstream socket after this returns. Returns the
    /// last counters, if the agent socket was still open. Called once per [`Self::pair`] that
    /// returned the key.
    pub fn unpair(&self, key: &FlowKey) -> Option<LocalSend> {
        let mut maps = self.lock();
        self.gates.removed(maps.gates.remove(key));
        self.targets.removed(maps.targets.remove(key));
        let last = maps.state.get(key, 0).ok();
        let _ = ignore_missing(maps.state.remove(key));
        let _ = ignore_missing(maps.socks.remove(key));
        last
    }

    /// Drops the agent socket `agent` -> `listen` from the maps, paired or not (a no-op when
    /// `sock_ops` never took it, or it closed): called when its connection ends.
    pub fn forget(&self, agent: SocketAddr, listen: SocketAddr) {
        let Some(key) = flow_key(agent, listen) else {
            return;
        };
        let mut maps = self.lock();
        let _ = ignore_missing(maps.state.remove(&key));
        let _ = ignore_missing(maps.socks.remove(&key));
    }

    fn scrape(&self) -> std::sync::MutexGuard<'_, Scrape> {
        self.scrape.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Per-frontend totals of what went straight, summed over CPUs.
    pub fn totals(&self) -> Vec<(u32, RouteCounters)> {
        let maps = self.scrape();
        let mut out = Vec::new();
        for frontend in 0..MAX_FRONTENDS {
            let Ok(values) = maps.counters.get(&frontend, 0) else {
                continue;
            };
            let sum = super::sum_cpus(&values);
            if sum.segments > 0 {
                out.push((frontend, sum));
            }
        }
        out
    }

    /// `(map name, entries)` of the per-socket maps: counted, or walked for the two the kernel
    /// fills (see `Scrape`), without the hot lock.
    pub fn entries(&self) -> [(&'static str, u64); 4] {
        let maps = self.scrape();
        [
            (proxy_common::LOCAL_SOCKS, maps.socks.keys().count() as u64),
            (proxy_common::LOCAL_TARGETS, self.targets.get()),
            (proxy_common::LOCAL_STATE, maps.state.keys().count() as u64),
            (proxy_common::LOCAL_GATES, self.gates.get()),
        ]
    }
}

/// What a failed load of `local_msg` is reported as.
pub(super) const MSG_LOAD: &str = "local_msg: load";

fn attach(what: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> KernelError {
    move |source| KernelError::Attach { what, source }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::Program(
            aya::programs::ProgramError::UnexpectedProgramType,
        ))?
        .try_into()
        .map_err(KernelError::Program)
}

/// The `LOCAL_LISTENERS` keys of a listener on `addr` in network namespace `netns`.
fn listen_keys(netns: u64, addr: SocketAddr) -> impl Iterator<Item = ListenKey> {
    listen_ips(addr.ip())
        .into_iter()
        .map(move |(family, ip)| ListenKey {
            netns,
            family,
            port: u32::from(addr.port()),
            ip,
        })
}

/// `(family, address)` pairs a listener on `ip` accepts: an unspecified IPv6 address also takes
/// IPv4 clients (dual-stack).
fn listen_ips(ip: IpAddr) -> Vec<(u32, [u32; 4])> {
    match ip {
        IpAddr::V4(v4) => vec![(AF_INET, ip4(v4))],
        IpAddr::V6(v6) if v6.is_unspecified() => vec![(AF_INET6, [0; 4]), (AF_INET, [0; 4])],
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => vec![(AF_INET, ip4(v4))],
            None => vec![(AF_INET6, ip6(v6))],
        },
    }
}

fn ip4(v4: std::net::Ipv4Addr) -> [u32; 4] {
    [u32::from_ne_bytes(v4.octets()), 0, 0, 0]
}

fn ip6(v6: std::net::Ipv6Addr) -> [u32; 4] {
    let o = v6.octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// The key a socket with these addresses has in the maps (IPv4-mapped IPv6 addresses, as a
/// dual-stack listener reports IPv4 peers, are the IPv4 socket they stand for).
pub fn flow_key(local: SocketAddr, remote: SocketAddr) -> Option<FlowKey> {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let (l, r) = (canon(local.ip()), canon(remote.ip()));
    let (family, local_ip, remote_ip) = match (l, r) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (AF_INET, ip4(a), ip4(b)),
        (IpAddr::V6(a), IpAddr::V6(b)) => (AF_INET6, ip6(a), ip6(b)),
        _ => return None,
    };
    Some(FlowKey {
        family,
        local_port: u32::from(local.port()),
        remote_port: u32::from(remote.port()),
        _pad: 0,
        local_ip,
        remote_ip,
    })
}

fn netns_cookie(fd: RawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, output buffer of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Where the cgroup v2 hierarchy is mounted; mounted under /run/agent-proxy/cgroup2 if nowhere.
fn cgroup2_root() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    if let Some(dir) = cgroup2_in_mountinfo(&mounts) {
        return Ok(dir);
    }
    let dir = Path::new("/run/agent-proxy/cgroup2");
    fs::create_dir_all(dir)?;
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        // Another daemon mounted it between our read and our mount.
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
    }
    Ok(dir.to_path_buf())
}

/// The mount point of the root of a cgroup2 hierarchy in /proc/self/mountinfo.
fn cgroup2_in_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_root_mount() {
        let info = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
40 33 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
90 30 0:50 /sub /mnt/inner rw - cgroup2 none rw
91 30 0:50 / /run/my\\040cg rw,relatime shared:5 - cgroup2 none rw
";
        assert_eq!(
            cgroup2_in_mountinfo(info),
            Some(PathBuf::from("/run/my cg"))
        );
        assert_eq!(
            cgroup2_in_mountinfo("25 30 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn keys_are_the_agent_sockets_view() {
        let agent: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        let listen: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let key = flow_key(agent, listen).unwrap();
        assert_eq!(key.family, AF_INET);
        assert_eq!((key.local_port, key.remote_port), (40000, 7000));
        assert_eq!(key.local_ip, [u32::from_ne_bytes([127, 0, 0, 2]), 0, 0, 0]);
        // A dual-stack listener reports IPv4 peers as mapped IPv6 addresses.
        let mapped: SocketAddr = "[::ffff:127.0.0.2]:40000".parse().unwrap();
        let mapped_listen: SocketAddr = "[::ffff:127.0.0.1]:7000".parse().unwrap();
        assert_eq!(flow_key(mapped, mapped_listen), Some(key));
        let v6 = flow_key("[::1]:1".parse().unwrap(), "[::1]:2".parse().unwrap()).unwrap();
        assert_eq!(v6.family, AF_INET6);
        assert_eq!(v6.local_ip, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
        assert_eq!(flow_key(agent, "[::1]:2".parse().unwrap()), None);
    }

    #[test]
    fn unspecified_listeners_take_both_families() {
        assert_eq!(
            listen_ips("::".parse().unwrap()),
            vec![(AF_INET6, [0; 4]), (AF_INET, [0; 4])]
        );
        assert_eq!(
            listen_ips("0.0.0.0".parse().unwrap()),
            vec![(AF_INET, [0; 4])]
        );
    }
}
