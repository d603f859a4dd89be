//! The kernel data path: loading the eBPF object, owning its maps, and the events the daemon
//! needs from it.
//!
//! - [`SpliceRegistry`] owns the maps: it inserts and removes a connection's sockets in the right
//!   order, sets the flow-control bounds, and reads the counters.
//! - [`SpliceEvents`] turns kernel signals into per-connection wake-ups: a FIN, reset or error on
//!   a spliced socket (epoll, `EPOLLRDHUP` only - never woken per received buffer), and
//!   flow-control marks crossed in the verdict (ring buffer).
mod btf;
mod events;
mod fionread;
mod loader;
mod local;
mod mirror;
mod registry;
mod wakes;

use std::{
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray, RingBuf, SockHash},
    programs::{SkSkb, sk_skb::SkSkbLink},
};
pub use events::{Forward, SpliceEvents, Wake, WatchGuard};
pub use local::{LocalAgents, flow_key};
pub use mirror::KernelMirror;
use proxy_common::KernelOffsets;

use crate::config::LocalAgentsMode;
pub use registry::{KernelTotals, SplicePair, SpliceRegistry};
pub use wakes::Wakes;

/// Why the kernel data path is not available.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the eBPF object was not built into this binary (AYA_BUILD_SKIP was set)")]
    NotBuilt,
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map {name} has an unexpected type")]
    MapType {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF program {what}")]
    Attach {
        what: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF program: {0}")]
    Program(#[source] aya::programs::ProgramError),
    #[error("eBPF map operation {op} failed")]
    Map {
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("socket operation failed")]
    Socket(#[source] std::io::Error),
    #[error("loading with the kernel's BTF offsets failed")]
    Offsets(#[source] Box<KernelError>),
    #[error(
        "this kernel reports FIONREAD 0 for sockets in a sockmap (Linux commit 929e30f9, in \
         stable kernels since 6.18.14): same-host agents would see no readable bytes; \
         local_agents = \"always\" turns the direct path on anyway"
    )]
    FionreadMisreported,
    #[error("the FIONREAD self-test of sockmap sockets failed")]
    FionreadTest(#[source] std::io::Error),
}

#[cfg(not(ebpf_skipped))]
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));
#[cfg(ebpf_skipped)]
static EBPF_OBJECT: &[u8] = &[];

/// The loaded kernel path. Dropping it detaches the program and frees the maps.
///
/// Or a set of maps adopted from the process an upgrade replaced (`crate::handover`): its
/// connections keep running the predecessor's verdict, which stays attached to the maps as long
/// as they exist; no new connection joins such a set.
pub struct Kernel {
    /// The set's id: the kernel's id of its `SPLICE_SOCKS` map (unique while the map exists).
    pub set: u32,
    pub registry: SpliceRegistry,
    pub events: Arc<SpliceEvents>,
    /// Same-host agents' sends straight into upstream sockets; `None` when turned off or not
    /// available (the splice carries their bytes as any client's).
    pub local: Option<LocalAgents>,
    /// The verdict's attachment to `SPLICE_SOCKS`: detached when dropped, unless handed over
    /// ([`Self::keep_attached`]).
    verdict_link: Mutex<Option<SkSkbLink>>,
    /// Holds the programs (`None` for an adopted set).
    _ebpf: Option<Ebpf>,
}

impl Kernel {
    /// Loads the object, attaches the verdict to `SPLICE_SOCKS` and starts the event hub (which
    /// needs a tokio runtime). Unless `mode` is off, also the same-host agent programs; if those
    /// cannot be attached (or the FIONREAD self-test says so) the kernel path still loads,
    /// without them, and the reason is logged.
    ///
    /// # Minimum kernel version
    ///
    /// The splice needs 5.8 (sockhash 4.18, a stream verdict without a parser and the ring
    /// buffer 5.8); same-host agents 5.15 (`bpf_get_netns_cookie` in `sock_ops`). The table of
    /// every feature is in docs/architecture.md, "Minimum kernel versions"; only 6.18 is tested.
    pub fn load(mode: LocalAgentsMode) -> Result<Self, KernelError> {
        let local = mode != LocalAgentsMode::Off;
        if EBPF_OBJECT.is_empty() {
            return Err(KernelError::NotBuilt);
        }
        let offsets = if local {
            btf::kernel_offsets().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "kernel BTF offsets not found; same-host agents \
                    that block in sendmsg take the TCP path when the upstream socket is full");
                KernelOffsets::default()
            })
        } else {
            KernelOffsets::default()
        };
        let skb_cb = btf::skb_cb_offset().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "kernel BTF offset of sk_buff.cb not found; the splice \
                cannot trim retransmitted overlaps and may forward such bytes twice");
            0
        });
        match Self::load_with(mode, offsets, skb_cb) {
            Err(KernelError::Offsets(e)) => {
                tracing::warn!(error = %crate::report::error_chain(&e),
                    "sk_msg program rejected with the kernel's BTF offsets; loading it without \
                     them (same-host agents that block in sendmsg take the TCP path when the \
                     upstream socket is full)");
                Self::load_with(mode, KernelOffsets::default(), skb_cb)
            }
            other => other,
        }
    }

    fn load_with(
        mode: LocalAgentsMode,
        offsets: KernelOffsets,
        skb_cb: u32,
    ) -> Result<Self, KernelError> {
        let mut ebpf = loader::loader(EBPF_OBJECT)
            .override_global(proxy_common::GLOBAL_SKB_CB, &skb_cb, true)
            .override_global(proxy_common::GLOBAL_SOCK_SOCKET, &offsets.sock_socket, true)
            .override_global(
                proxy_common::GLOBAL_SOCK_SNDTIMEO,
                &offsets.sock_sndtimeo,
                true,
            )
            .override_global(proxy_common::GLOBAL_SOCKET_FILE, &offsets.socket_file, true)
            .override_global(proxy_common::GLOBAL_FILE_FLAGS, &offsets.file_flags, true)
            .load(EBPF_OBJECT)
            .map_err(KernelError::Load)?;
        let socks: SockHash<MapData, u64> = take(&mut ebpf, proxy_common::SPLICE_SOCKS)?;
        let peers: SockHash<MapData, u64> = take(&mut ebpf, proxy_common::SPLICE_PEERS)?;
        let conns: HashMap<MapData, u64, proxy_common::SpliceSide> =
            take(&mut ebpf, proxy_common::SPLICE_CONNS)?;
        let limits: HashMap<MapData, u64, proxy_common::SpliceLimit> =
            take(&mut ebpf, proxy_common::SPLICE_LIMITS)?;
        let routes: PerCpuArray<MapData, proxy_common::RouteCounters> =
            take(&mut ebpf, proxy_common::ROUTE_COUNTERS)?;
        let errors: PerCpuArray<MapData, u64> = take(&mut ebpf, proxy_common::KERNEL_ERRORS)?;
        let ring: RingBuf<MapData> = take(&mut ebpf, proxy_common::SPLICE_EVENTS)?;

        let program: &mut SkSkb = ebpf
            .program_mut("splice_verdict")
            .ok_or(KernelError::Program(
                aya::programs::ProgramError::UnexpectedProgramType,
            ))?
            .try_into()
            .map_err(KernelError::Program)?;
        program.load().map_err(KernelError::Program)?;
        let link = program.attach(socks.fd()).map_err(KernelError::Program)?;
        let link = program.take_link(link).map_err(KernelError::Program)?;

        let local = if mode != LocalAgentsMode::Off {
            match LocalAgents::load(&mut ebpf, mode) {
                Ok(agents) => Some(agents),
                Err(
                    e @ KernelError::Attach {
                        what: local::MSG_LOAD,
                        ..
                    },
                ) if offsets != KernelOffsets::default() => {
                    return Err(KernelError::Offsets(Box::new(e)));
                }
                Err(e) => {
                    tracing::warn!(error = %crate::report::error_chain(&e),
                        "same-host agent path (sock_ops + sk_msg) unavailable; \
                         local agents use the splice like remote ones");
                    None
                }
            }
        } else {
            None
        };
        let events = SpliceEvents::start(ring).map_err(KernelError::Socket)?;
        let maps = registry::Maps {
            socks,
            peers,
            conns,
            limits,
            routes,
            errors,
        };
        Self::assemble(maps, events, local, Some(link), Some(ebpf))
    }

    fn assemble(
        maps: registry::Maps,
        events: Arc<SpliceEvents>,
        local: Option<LocalAgents>,
        verdict_link: Option<SkSkbLink>,
        ebpf: Option<Ebpf>,
    ) -> Result<Self, KernelError> {
        Ok(Self {
            set: set_id(&maps.socks)?,
            registry: SpliceRegistry::new(maps)?,
            events,
            local,
            verdict_link: Mutex::new(verdict_link),
            _ebpf: ebpf,
        })
    }

    /// The set's map descriptors for a hand-over, in `crate::handover::MAP_FDS` order.
    pub fn handover_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        let mut fds = self.registry.map_fds()?;
        fds.push(self.events.ring_fd()?);
        Ok(fds)
    }

    /// From now on, dropping this set leaves the verdict attached to its maps: the successor
    /// holds them, and the connections handed over keep running through them.
    pub fn keep_attached(&self) {
        if let Some(link) = self
            .verdict_link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            std::mem::forget(link);
        }
    }

    /// A predecessor's set of maps (`fds` in `crate::handover::MAP_FDS` order), for the
    /// connections it hands over; its ring buffer is read once the predecessor lets go of it
    /// ([`Self::take_ring`]).
    pub fn adopt(mut fds: Vec<OwnedFd>) -> Result<(Self, OwnedFd), KernelError> {
        if fds.len() != crate::handover::MAP_FDS {
            return Err(KernelError::Socket(std::io::Error::other(format!(
                "a set of maps has {} descriptors, not {}",
                fds.len(),
                crate::handover::MAP_FDS
            ))));
        }
        let ring = fds.pop().expect("checked above");
        let mut fds = fds.into_iter();
        let mut next = |kind: fn(MapData) -> Map| {
            let fd = fds.next().expect("checked above");
            MapData::from_fd(fd)
                .map(kind)
                .map_err(registry::map_err("adopt map"))
        };
        let socks: SockHash<MapData, u64> = typed(next(Map::SockHash)?)?;
        let peers = typed(next(Map::SockHash)?)?;
        let conns = typed(next(Map::HashMap)?)?;
        let limits = typed(next(Map::HashMap)?)?;
        let routes = typed(next(Map::PerCpuArray)?)?;
        let errors = typed(next(Map::PerCpuArray)?)?;
        let events = SpliceEvents::start_without_ring().map_err(KernelError::Socket)?;
        let maps = registry::Maps {
            socks,
            peers,
            conns,
            limits,
            routes,
            errors,
        };
        Ok((Self::assemble(maps, events, None, None, None)?, ring))
    }

    /// Starts reading an adopted set's ring buffer (the predecessor no longer does).
    pub fn take_ring(&self, ring: OwnedFd) -> Result<(), KernelError> {
        let data = MapData::from_fd(ring).map_err(registry::map_err("adopt ring"))?;
        let ring: RingBuf<MapData> = typed(Map::RingBuf(data))?;
        self.events.take_ring(ring).map_err(KernelError::Socket)
    }
}

fn typed<M>(map: Map) -> Result<M, KernelError>
where
    M: TryFrom<Map, Error = aya::maps::MapError>,
{
    M::try_from(map).map_err(registry::map_err("adopt map"))
}

/// The kernel's id of a set's `SPLICE_SOCKS` map.
fn set_id(socks: &SockHash<MapData, u64>) -> Result<u32, KernelError> {
    use aya::maps::IterableMap as _;
    let info = socks.map().info().map_err(registry::map_err("map info"))?;
    Ok(info.id())
}

/// A per-CPU counter pair summed over CPUs.
fn sum_cpus(
    values: &aya::maps::PerCpuValues<proxy_common::RouteCounters>,
) -> proxy_common::RouteCounters {
    values
        .iter()
        .fold(proxy_common::RouteCounters::default(), |acc, v| {
            proxy_common::RouteCounters {
                bytes: acc.bytes + v.bytes,
                segments: acc.segments + v.segments,
            }
        })
}

fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, KernelError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    M::try_from(map).map_err(|source| KernelError::MapType { name, source })
}
