//! A lossy, reordering link for the soak test, on one side of a veth pair.
//!
//! With `tc netem` (`CONFIG_NET_SCH_NETEM`) the link gets delay with jitter, loss and
//! reordering. Kernels built without it (this project's 6.18 VM among them) get what their
//! netfilter and HTB can do instead:
//! - **loss**: `iptables -t raw PREROUTING -i DEV -m statistic --mode random -j DROP` on the
//!   receiving side, so that TCP sees a segment lost on the wire (dropping in `OUTPUT` would
//!   return `EPERM` to the sender instead);
//! - **reordering and jitter**: an HTB root on the sending side with a fast default class and a
//!   slow one (`SLOW_RATE`); `iptables -t mangle POSTROUTING -o DEV -m statistic -j CLASSIFY`
//!   sends a random share of the packets into the slow class, where they wait behind its queue
//!   while later packets overtake them. There is no fixed propagation delay without netem.
//!
//! [`Impairment::figures`] reads back what the rules and classes did, so that a test can prove
//! the links were impaired rather than assume it.
use anyhow::ensure;

use crate::connect::{output, run};
use crate::netns::NetNs;

/// Probability that a received TCP packet is dropped (fallback without netem).
pub const LOSS: &str = "0.005";
/// Probability that a sent packet takes the slow class (fallback without netem).
pub const SLOW_SHARE: &str = "0.02";
/// Rate of the slow class: a 1,500-byte packet waits 0.6 ms behind each packet ahead of it,
/// a 64 KiB GSO packet 26 ms.
pub const SLOW_RATE: &str = "20mbit";
/// The netem line when the kernel has netem.
pub const NETEM: [&str; 8] = [
    "delay", "2ms", "1ms", "loss", "0.5%", "reorder", "1%", "50%",
];

/// How a link is impaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Netem,
    /// iptables loss plus HTB reordering (no netem in this kernel).
    Netfilter,
}

/// One impaired veth end: `dev` in `ns` (both directions of the link through it).
pub struct Impairment<'a> {
    ns: &'a NetNs,
    dev: String,
    pub kind: Kind,
}

/// What an impaired link did: packets dropped on receive, packets sent through the slow class
/// (fallback), or netem's own drop count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub dropped: u64,
    pub delayed: u64,
}

impl<'a> Impairment<'a> {
    /// Impairs `dev` in `ns`: netem when `tc` accepts it, the netfilter fallback otherwise.
    pub fn apply(ns: &'a NetNs, dev: &str) -> anyhow::Result<Self> {
        for tool in ["tc", "iptables"] {
            ensure!(
                crate::privileges::which(tool).is_some(),
                "{tool} is missing (apt-get install iproute2 iptables)"
            );
        }
        let netem = [
            &[
                "tc",
                "-n",
                ns.name(),
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "netem",
            ][..],
            &NETEM,
        ]
        .concat();
        let kind = if run(&netem).is_ok() {
            Kind::Netem
        } else {
            Self::fallback(ns, dev)?;
            Kind::Netfilter
        };
        Ok(Self {
            ns,
            dev: dev.to_owned(),
            kind,
        })
    }

    fn fallback(ns: &NetNs, dev: &str) -> anyhow::Result<()> {
        let tc = |args: &[&str]| run(&[&["tc", "-n", ns.name()][..], args].concat());
        tc(&[
            "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
        ])?;
        tc(&[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit",
        ])?;
        tc(&[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate",
            SLOW_RATE, "ceil", SLOW_RATE,
        ])?;
        let ipt = |args: &[&str]| {
            run(&[
                &["ip", "netns", "exec", ns.name(), "iptables", "-w"][..],
                args,
            ]
            .concat())
        };
        ipt(&[
            "-t",
            "mangle",
            "-A",
            "POSTROUTING",
            "-o",
            dev,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            SLOW_SHARE,
            "-j",
            "CLASSIFY",
            "--set-class",
            "1:20",
        ])?;
        ipt(&[
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-i",
            dev,
            "-p",
            "tcp",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            LOSS,
            "-j",
            "DROP",
        ])
    }

    /// What the link did so far.
    pub fn figures(&self) -> anyhow::Result<Figures> {
        let ns = self.ns.name();
        match self.kind {
            Kind::Netem => {
                let out = output(&["tc", "-n", ns, "-s", "qdisc", "show", "dev", &self.dev])?;
                Ok(Figures {
                    dropped: after(&out, "dropped ").unwrap_or(0),
                    delayed: after(&out, "bytes ").unwrap_or(0),
                })
            }
            Kind::Netfilter => {
                let classes = output(&[
                    "tc", "-n", ns, "-s", "class", "show", "dev", &self.dev, "classid", "1:20",
                ])?;
                let rules = output(&[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "iptables",
                    "-w",
                    "-t",
                    "raw",
                    "-nvxL",
                    "PREROUTING",
                ])?;
                let dropped = rules
                    .lines()
                    .filter(|l| l.contains("DROP") && l.contains(&self.dev))
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .sum();
                Ok(Figures {
                    dropped,
                    delayed: after(&classes, "bytes ").unwrap_or(0),
                })
            }
        }
    }
}

/// The number right after the first `word` in `text` ("Sent 90 bytes 1 pkt": after "bytes ").
fn after(text: &str, word: &str) -> Option<u64> {
    let rest = &text[text.find(word)? + word.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::after;

    #[test]
    fn reads_the_number_after_a_word() {
        let text = " Sent 90 bytes 7 pkt (dropped 3, overlimits 0 requeues 0)";
        assert_eq!(after(text, "bytes "), Some(7));
        assert_eq!(after(text, "dropped "), Some(3));
        assert_eq!(after(text, "missing "), None);
    }
}
