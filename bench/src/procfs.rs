//! What the bench reads from /proc: whole-machine CPU time (/proc/stat), a process's CPU time
//! (/proc/PID/stat) and memory (/proc/PID/status).
//!
//! CPU is taken for the whole machine on purpose: the kernel path does its work in softirq
//! context and in kernel workers (the psock backlog kworker), which a per-process figure such
//! as `getrusage` or /proc/PID/stat would not show. The per-process figure is reported beside
//! it, never instead.
use anyhow::{Context as _, bail};

/// The aggregate `cpu` line of /proc/stat, in clock ticks (USER_HZ).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Parses the first `cpu ` line of /proc/stat text. guest and guest_nice are already
    /// counted in user and nice, so they are not added again.
    pub(crate) fn parse(stat: &str) -> anyhow::Result<Self> {
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no aggregate `cpu` line in /proc/stat")?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad /proc/stat line {line:?}"))?;
        if f.len() < 8 {
            bail!("short /proc/stat line {line:?}");
        }
        Ok(Self {
            user: f[0],
            nice: f[1],
            system: f[2],
            idle: f[3],
            iowait: f[4],
            irq: f[5],
            softirq: f[6],
            steal: f[7],
        })
    }

    pub(crate) fn read() -> anyhow::Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").context("read /proc/stat")?)
    }

    /// Ticks in which a CPU did work: user + nice + system + irq + softirq + steal.
    pub(crate) fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }

    pub(crate) fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait
    }

    /// What happened between `self` (earlier) and `later`.
    pub(crate) fn until(&self, later: &Self) -> CpuDelta {
        CpuDelta {
            busy_ticks: later.busy().saturating_sub(self.busy()),
            total_ticks: later.total().saturating_sub(self.total()),
        }
    }
}

/// Busy and total ticks over an interval, summed over all CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuDelta {
    pub busy_ticks: u64,
    pub total_ticks: u64,
}

impl CpuDelta {
    /// CPU seconds of work, all CPUs together.
    pub(crate) fn busy_seconds(&self, ticks_per_second: u64) -> f64 {
        self.busy_ticks as f64 / ticks_per_second as f64
    }

    /// Fraction of the machine's capacity that was busy (0..=1).
    pub(crate) fn busy_fraction(&self) -> f64 {
        if self.total_ticks == 0 {
            0.0
        } else {
            self.busy_ticks as f64 / self.total_ticks as f64
        }
    }
}

/// CPU seconds per GB (10^9 bytes) moved.
pub(crate) fn seconds_per_gb(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_seconds / (bytes as f64 / 1e9))
}

/// USER_HZ, the unit of /proc/stat and /proc/PID/stat (100 on every Linux build seen).
pub(crate) fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// utime + stime of a process (all its threads), in ticks, from /proc/PID/stat text.
pub(crate) fn parse_process_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no `)` in /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        f.get(n - 3)
            .with_context(|| format!("/proc/PID/stat has no field {n}"))?
            .parse()
            .with_context(|| format!("bad field {n} in /proc/PID/stat"))
    };
    Ok(field(14)? + field(15)?)
}

pub(crate) fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    parse_process_ticks(&std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?)
}

/// VmRSS and VmHWM (peak RSS) of a process, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Memory {
    pub(crate) fn parse(status: &str) -> anyhow::Result<Self> {
        let kib = |key: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .with_context(|| format!("no {key} in /proc/PID/status"))?
                .parse()
                .with_context(|| format!("bad {key} in /proc/PID/status"))
        };
        Ok(Self {
            rss_kib: kib("VmRSS:")?,
            hwm_kib: kib("VmHWM:")?,
        })
    }

    pub(crate) fn read(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        Self::parse(&std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_BEFORE: &str = "cpu  1000 10 500 8000 20 5 30 2 7 0\n\
        cpu0 500 5 250 4000 10 3 15 1 0 0\nintr 1 2 3\nctxt 99\n";
    const STAT_AFTER: &str = "cpu  1100 10 560 8100 25 6 70 2 9 0\n\
        cpu0 550 5 280 4050 12 3 35 1 0 0\n";

    #[test]
    fn cpu_busy_counts_softirq_and_irq_not_idle_or_guest() {
        let a = CpuTimes::parse(STAT_BEFORE).unwrap();
        assert_eq!(a.busy(), 1000 + 10 + 500 + 5 + 30 + 2);
        assert_eq!(a.total(), a.busy() + 8000 + 20);
        let b = CpuTimes::parse(STAT_AFTER).unwrap();
        let d = a.until(&b);
        // user +100, system +60, irq +1, softirq +40; idle +100, iowait +5.
        assert_eq!(d.busy_ticks, 201);
        assert_eq!(d.total_ticks, 306);
        assert!((d.busy_seconds(100) - 2.01).abs() < 1e-12);
        assert!((d.busy_fraction() - 201.0 / 306.0).abs() < 1e-12);
        assert!((seconds_per_gb(2.0, 4_000_000_000).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(seconds_per_gb(2.0, 0), None);
    }

    #[test]
    fn cpu_rejects_bad_input() {
        assert!(CpuTimes::parse("intr 1 2\n").is_err());
        assert!(CpuTimes::parse("cpu  1 2 3\n").is_err());
        assert!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n").is_err());
    }

    #[test]
    fn process_ticks_survive_spaces_in_the_name() {
        let stat = "4242 (agent proxy) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    321 123 0 0 20 0 3 0 5555 1000000 250 18446744073709551615";
        assert_eq!(parse_process_ticks(stat).unwrap(), 444);
        assert!(parse_process_ticks("4242 (x) S 1").is_err());
    }

    #[test]
    fn memory_from_status() {
        let status =
            "Name:\thaproxy\nVmPeak:\t  99999 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(
            Memory::parse(status).unwrap(),
            Memory {
                rss_kib: 10240,
                hwm_kib: 20480
            }
        );
        assert!(Memory::parse("Name:\tx\n").is_err());
    }
}
