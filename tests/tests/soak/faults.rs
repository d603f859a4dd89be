//! The faults of the soak, on a schedule repeated every [`CYCLE`] (compressed for shorter
//! runs): the intake killed and restarted, then every path probed until it works again; the
//! DNS server stopped (the daemons must say their answer is stale and keep it) and restarted
//! with the intake's other address (the daemons must follow); SIGHUP to both daemons once
//! (a full reload of the unchanged configuration, which must break nothing).
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_proxy_tests::daemon::Daemon;
use agent_proxy_tests::dnsmasq::Dnsmasq;
use agent_proxy_tests::gateway::INTAKE;
use agent_proxy_tests::netns::NetNs;
use anyhow::{Context as _, bail, ensure};
use tokio::task::block_in_place;
use tokio::time::sleep_until;

use crate::clients::{Dialer, Mode, run_stream};
use crate::intake::Intake;
use crate::topology::{INTAKE_ALT, INTAKE_NAME, ip};
use crate::wire::{Class, Plan};

/// One round of the schedule.
pub(crate) const CYCLE: Duration = Duration::from_secs(60);
/// How long the intake stays down.
const INTAKE_DOWN: Duration = Duration::from_secs(2);
/// How long every path gets to work again after the intake is back.
pub(crate) const RECOVERY_BOUND: Duration = Duration::from_secs(15);
/// How long a daemon gets to notice that DNS is down (its re-resolution runs every min_ttl).
const STALE_WITHIN: Duration = Duration::from_secs(8);
/// The counter of successful reloads (SIGHUP re-reads the whole configuration).
const RELOADED: &str = "agent_proxy_config_reloads_total";

/// What was injected, and when.
#[derive(Default, Debug)]
pub(crate) struct Timeline {
    /// Each intake kill: when it went down, when every path worked again.
    pub(crate) kills: Vec<(Instant, Instant)>,
    /// The intake name's answers: from when each one holds.
    pub(crate) answers: Vec<(Instant, IpAddr)>,
    pub(crate) injected: BTreeMap<&'static str, u64>,
    /// Kill to every path working again, per kill.
    pub(crate) recoveries: Vec<Duration>,
}

impl Timeline {
    /// Every answer DNS gave between `from` and `to`.
    pub(crate) fn answers_during(&self, from: Instant, to: Instant) -> Vec<IpAddr> {
        let mut given = vec![self.answer_at(from)];
        given.extend(
            self.answers
                .iter()
                .filter(|(at, _)| *at > from && *at <= to)
                .map(|(_, a)| *a),
        );
        given
    }

    /// The answer DNS gave at `t`.
    pub(crate) fn answer_at(&self, t: Instant) -> IpAddr {
        self.answers
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .or(self.answers.first())
            .map_or(ip(INTAKE), |(_, a)| *a)
    }
}

/// What the schedule acts on.
pub(crate) struct Targets<'a> {
    pub(crate) intake: Intake<'a>,
    pub(crate) dns: &'a mut Dnsmasq,
    pub(crate) proxy_ns: &'a NetNs,
    pub(crate) daemons: [&'a Daemon; 2],
    pub(crate) dialer: &'a Dialer,
    pub(crate) ids: &'a AtomicU64,
}

/// Runs the schedule from `start` until `deadline` (no fault starts in the last
/// [`RECOVERY_BOUND`]); returns the timeline.
pub(crate) async fn run(
    t: &mut Targets<'_>,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<Timeline> {
    let cycle = CYCLE.min(deadline - start);
    let mut timeline = Timeline {
        answers: vec![(start, ip(INTAKE))],
        ..Timeline::default()
    };
    for round in 0u32.. {
        let base = start + cycle * round;
        for (at, step) in [
            (0.15, Step::Kill),
            (0.35, Step::DnsStop),
            (0.55, Step::DnsMove),
            (0.7, Step::Hup),
        ] {
            let when = base + cycle.mul_f64(at);
            if when + RECOVERY_BOUND > deadline {
                return Ok(timeline);
            }
            if step == Step::Hup && round > 0 {
                continue;
            }
            sleep_until(when.into()).await;
            step.inject(t, &mut timeline)
                .await
                .with_context(|| format!("fault {step:?} of round {round}"))?;
            *timeline.injected.entry(step.name()).or_default() += 1;
        }
    }
    Ok(timeline)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Kill,
    DnsStop,
    DnsMove,
    Hup,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Kill => "intake killed and restarted",
            Step::DnsStop => "DNS server stopped",
            Step::DnsMove => "DNS restarted with the other address",
            Step::Hup => "SIGHUP to both daemons",
        }
    }

    async fn inject(self, t: &mut Targets<'_>, timeline: &mut Timeline) -> anyhow::Result<()> {
        match self {
            Step::Kill => {
                let down = Instant::now();
                t.intake.kill().await;
                tokio::time::sleep(INTAKE_DOWN).await;
                t.intake.restart()?;
                probe_every_path(t).await?;
                let up = Instant::now();
                eprintln!(
                    "soak: intake killed; every path works again after {:.1?}",
                    up - down
                );
                timeline.kills.push((down, up));
                timeline.recoveries.push(up - down);
            }
            Step::DnsStop => {
                block_in_place(|| t.dns.stop());
                for daemon in t.daemons {
                    let m = block_in_place(|| {
                        daemon.settle(STALE_WITHIN, |m| {
                            m.get("agent_proxy_dns_stale", &[("host", INTAKE_NAME)]) == Some(1.0)
                        })
                    })?;
                    let stale = m.get("agent_proxy_dns_stale", &[("host", INTAKE_NAME)]);
                    ensure!(
                        stale == Some(1.0),
                        "{} DNS down for {STALE_WITHIN:?}: agent_proxy_dns_stale{{host=\"{INTAKE_NAME}\"}} \
                         is {stale:?}, expected 1",
                        daemon.config.dataplane
                    );
                }
            }
            Step::DnsMove => {
                let now = Instant::now();
                let next = if timeline.answer_at(now) == ip(INTAKE) {
                    ip(INTAKE_ALT)
                } else {
                    ip(INTAKE)
                };
                block_in_place(|| t.dns.restart(t.proxy_ns, &[(INTAKE_NAME, next)]))?;
                timeline.answers.push((Instant::now(), next));
            }
            Step::Hup => {
                for daemon in t.daemons {
                    let before = reloads(daemon)?;
                    // SAFETY: a plain kill(2) of the daemon, a child of this process.
                    if unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) } != 0 {
                        bail!("SIGHUP: {}", std::io::Error::last_os_error());
                    }
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while reloads(daemon)? == before {
                        ensure!(
                            Instant::now() < deadline,
                            "{}: {RELOADED}{{result=\"ok\"}} did not move within 5 s of SIGHUP",
                            daemon.config.dataplane
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        Ok(())
    }
}

fn reloads(daemon: &Daemon) -> anyhow::Result<f64> {
    let metrics = block_in_place(|| daemon.metrics())?;
    Ok(metrics.sum(RELOADED, &[("result", "ok")]))
}

/// A request/response stream through every daemon and mode, each retried until it works
/// (at most [`RECOVERY_BOUND`]).
async fn probe_every_path(t: &Targets<'_>) -> anyhow::Result<()> {
    let deadline = Instant::now() + RECOVERY_BOUND;
    for proxy in 0..t.daemons.len() {
        for mode in Mode::ALL {
            loop {
                let plan = Plan::new(t.ids.fetch_add(1, Ordering::Relaxed), Class::ReqResp);
                let r = run_stream(t.dialer, proxy, mode, plan).await;
                ensure!(
                    r.mismatch.is_none(),
                    "a probe received bytes that differ from the intake's at {:?}: {r:?}",
                    r.mismatch
                );
                if r.error.is_none() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} {mode:?} still failing {RECOVERY_BOUND:?} after the intake came back: {:?}",
                        t.daemons[proxy].config.dataplane,
                        r.error
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}
