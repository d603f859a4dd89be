//! The figures printed at the end of a soak, and the checks made on them.
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use agent_proxy_tests::daemon::Daemon;
use agent_proxy_tests::impair::Figures;
use anyhow::{bail, ensure};

use crate::clients::Mode;
use crate::faults::Timeline;
use crate::judge::Verdict;
use crate::topology::{INTAKE_ALT, ip};
use crate::wire::Class;
use crate::{Mix, RSS_TOLERANCE};

const MIB: f64 = (1u64 << 20) as f64;

/// What a daemon looked like once the soak's connections were gone.
pub(crate) struct DaemonEnd {
    pub(crate) name: &'static str,
    pub(crate) rss: u64,
    pub(crate) peak_rss: u64,
    /// `agent_proxy_connections_ended_total`, by `end`, over every frontend.
    pub(crate) ended: BTreeMap<String, u64>,
    /// `agent_proxy_bytes_total` by path: (kernel, userspace).
    pub(crate) bytes: (u64, u64),
    /// Of the kernel path's connections (log lines): hand-overs to userspace, hand-backs.
    pub(crate) pauses: u64,
    pub(crate) resumes: u64,
    /// Log lines with `end=idle_timeout`: (tcp frontend, other frontends).
    pub(crate) idle_ends: (u64, u64),
    /// Retransmitted buffers overlapping bytes the verdict already forwarded: (trimmed, kept).
    pub(crate) overlaps: (u64, u64),
}

impl DaemonEnd {
    pub(crate) fn read(daemon: &Daemon) -> anyhow::Result<Self> {
        let m = daemon.metrics()?;
        let mut ended = BTreeMap::new();
        for s in m.matching("agent_proxy_connections_ended_total", &[]) {
            let end = s.labels.get("end").cloned().unwrap_or_default();
            *ended.entry(end).or_default() += s.value as u64;
        }
        let path = |p| m.count("agent_proxy_bytes_total", &[("path", p)]);
        let logs = daemon.conn_logs();
        let kernel = logs.iter().filter(|l| l.path == "kernel");
        let (pauses, resumes) = kernel.fold((0, 0), |(p, r), l| (p + l.pauses, r + l.resumes));
        let idle = logs.iter().filter(|l| l.end == "idle_timeout");
        let tcp = Mode::Tcp.frontend();
        let idle_ends = idle.fold((0, 0), |(t, o), l| {
            if l.frontend == tcp {
                (t + 1, o)
            } else {
                (t, o + 1)
            }
        });
        Ok(Self {
            name: daemon.config.dataplane.as_str(),
            rss: daemon.rss_bytes()?,
            peak_rss: daemon.peak_rss_bytes()?,
            ended,
            bytes: (path("kernel"), path("userspace")),
            pauses,
            resumes,
            idle_ends,
            overlaps: agent_proxy_tests::checks::overlaps(&m),
        })
    }
}

/// Everything the soak measured.
pub(crate) struct Summary<'a> {
    pub(crate) seconds: u64,
    /// From the first stream to the last one's end.
    pub(crate) traffic: Duration,
    pub(crate) verdict: &'a Verdict,
    pub(crate) timeline: &'a Timeline,
    pub(crate) links: &'a [(String, Figures)],
    pub(crate) daemons: &'a [DaemonEnd],
    pub(crate) idle_rss: [u64; 2],
    /// Intake connections that ended without a header, not by a kill.
    pub(crate) unnamed_errors: &'a [String],
}

impl Summary<'_> {
    /// The soak's assertions on the figures (the streams' own are the verdict's losses).
    pub(crate) fn check(&self, mix: &Mix) -> anyhow::Result<()> {
        let v = self.verdict;
        if !v.losses.is_empty() {
            bail!(
                "{} streams lost (not cut by an injected fault); the first ones:\n  {}",
                v.losses.len(),
                v.losses
                    .iter()
                    .take(30)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        }
        for proxy in 0..2 {
            for mode in Mode::ALL {
                for class in Class::ALL {
                    if !mix.runs(proxy, class) {
                        continue;
                    }
                    let c = v
                        .by_path
                        .get(&(proxy, mode, class))
                        .copied()
                        .unwrap_or_default();
                    ensure!(
                        c.exact + c.reset > 0,
                        "no {class:?} stream through the {} daemon's {mode:?} frontend completed: {c:?}",
                        self.daemons[proxy].name
                    );
                }
            }
        }
        for (proxy, d) in self.daemons.iter().enumerate() {
            if !mix.runs(proxy, Class::Idle) {
                continue;
            }
            let c = v
                .by_path
                .get(&(proxy, Mode::Tcp, Class::Idle))
                .copied()
                .unwrap_or_default();
            let silent = c.exact;
            // A silent client the proxy closed for idleness while an intake kill overlapped
            // its stream is judged cut by the fault: it may have its idle_timeout line too.
            let lines = d.idle_ends.0;
            let counted = d.ended.get("idle_timeout").copied().unwrap_or(0);
            ensure!(
                silent > 0
                    && (silent..=silent + c.cut).contains(&lines)
                    && d.idle_ends.1 == 0
                    && counted == lines,
                "the {} daemon: {silent} silent clients of the tcp frontend were closed for \
                 idleness ({} more cut by faults), but its log has {lines} end=idle_timeout \
                 lines there and {} elsewhere, its metric {counted}",
                d.name,
                c.cut,
                d.idle_ends.1
            );
        }
        for (what, f) in self.links {
            ensure!(
                f.dropped > 0 && f.delayed > 0,
                "the {what} link was not impaired: {f:?}"
            );
        }
        if mix.runs(0, Class::SlowReader) {
            ensure!(
                self.daemons[0].pauses > 0,
                "the kernel daemon never handed a direction to userspace: flow control not exercised"
            );
        }
        for d in self.daemons {
            // An overlap forwarded untrimmed is a duplicate run of bytes (docs/architecture.md,
            // "Duplicated bytes under retransmissions").
            ensure!(
                d.overlaps.1 == 0,
                "the {} daemon forwarded {} overlapping buffers untrimmed",
                d.name,
                d.overlaps.1
            );
        }
        for (d, idle) in self.daemons.iter().zip(self.idle_rss) {
            ensure!(
                d.rss <= idle + RSS_TOLERANCE,
                "the {} daemon holds {:.1} MiB after the soak, {:.1} MiB idle before it \
                 (tolerance {} MiB)",
                d.name,
                d.rss as f64 / MIB,
                idle as f64 / MIB,
                RSS_TOLERANCE >> 20
            );
        }
        let injected = |name: &str| self.timeline.injected.get(name).copied().unwrap_or(0);
        if injected("DNS restarted with the other address") > 0 {
            let alt = v.landed.get(&ip(INTAKE_ALT)).copied().unwrap_or(0);
            ensure!(
                alt > 0,
                "no stream reached the intake's second address after the DNS change"
            );
        }
        if self.seconds >= 60 {
            for name in [
                "intake killed and restarted",
                "DNS server stopped",
                "DNS restarted with the other address",
                "SIGHUP to both daemons",
            ] {
                ensure!(injected(name) > 0, "fault never injected: {name}");
            }
        }
        Ok(())
    }
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.verdict;
        let t = v.total();
        writeln!(
            f,
            "==== soak: {} s of traffic ({:.1?} to the last stream's end) ====",
            self.seconds, self.traffic
        )?;
        write!(f, "{:10} {:12}", "daemon", "mode")?;
        for class in Class::ALL {
            write!(f, " {:>10}", format!("{class:?}"))?;
        }
        writeln!(f, " {:>6} {:>5}", "cut", "lost")?;
        for proxy in 0..2 {
            for mode in Mode::ALL {
                write!(
                    f,
                    "{:10} {:12}",
                    self.daemons[proxy].name,
                    format!("{mode:?}")
                )?;
                let (mut cut, mut lost) = (0, 0);
                for class in Class::ALL {
                    let c = v
                        .by_path
                        .get(&(proxy, mode, class))
                        .copied()
                        .unwrap_or_default();
                    write!(f, " {:>10}", c.exact + c.reset)?;
                    cut += c.cut;
                    lost += c.lost;
                }
                writeln!(f, " {cut:>6} {lost:>5}")?;
            }
        }
        writeln!(
            f,
            "streams: {} exact, {} reset by their client as planned, {} cut by faults, {} lost",
            t.exact, t.reset, t.cut, t.lost
        )?;
        writeln!(
            f,
            "bytes: {:.1} MiB up, {:.1} MiB down (client side, all streams)",
            v.bytes_up as f64 / MIB,
            v.bytes_down as f64 / MIB
        )?;
        let faults: Vec<String> = self
            .timeline
            .injected
            .iter()
            .map(|(name, n)| format!("{name}: {n}"))
            .collect();
        writeln!(f, "faults: {}", faults.join(", "))?;
        writeln!(
            f,
            "intake recovery (kill to every path working): {:?}",
            self.timeline.recoveries
        )?;
        writeln!(f, "intake addresses reached (DNS): {:?}", v.landed)?;
        for (what, l) in self.links {
            writeln!(
                f,
                "link {what}: {} packets dropped, {} held back",
                l.dropped, l.delayed
            )?;
        }
        for (d, idle) in self.daemons.iter().zip(self.idle_rss) {
            writeln!(
                f,
                "{} daemon: RSS {:.1} MiB idle, {:.1} MiB peak, {:.1} MiB after; bytes kernel \
                 {:.1} MiB, userspace {:.1} MiB; hand-overs {}, hand-backs {}; overlapping \
                 buffers trimmed {}, kept {}; idle_timeout ends {:?}; ended {:?}",
                d.name,
                idle as f64 / MIB,
                d.peak_rss as f64 / MIB,
                d.rss as f64 / MIB,
                d.bytes.0 as f64 / MIB,
                d.bytes.1 as f64 / MIB,
                d.pauses,
                d.resumes,
                d.overlaps.0,
                d.overlaps.1,
                d.idle_ends,
                d.ended
            )?;
        }
        if !self.unnamed_errors.is_empty() {
            writeln!(
                f,
                "intake connections that ended before their header: {} (first: {})",
                self.unnamed_errors.len(),
                self.unnamed_errors[0]
            )?;
        }
        for loss in v.losses.iter().take(10) {
            writeln!(f, "LOST {loss}")?;
        }
        Ok(())
    }
}
