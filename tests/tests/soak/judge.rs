//! The soak's verdict: every client stream held against what the intake saw of it and
//! against the faults.
//!
//! - A stream that completed must be exact both ways: the intake's digest of what it received
//!   equals the client's of what it sent, and the other way round, at the planned lengths.
//! - A stream that failed counts as **cut by a fault** only when a fault touched it: the kill
//!   reset its intake connection, or the intake never saw it while it overlapped a kill (it was
//!   dialed while the intake was down, or the kill came before its header). Anything else is a
//!   **loss**.
//! - A resetting client's intake must see the reset as an error (never a clean end).
//! - Bytes that differ from the sender's stream are a loss whatever the cause.
//! - A stream through a frontend that resolves the intake's name must land on an address DNS
//!   gave between [`DNS_GRACE`] before it started and its end.
//! - A silent client of a tcp frontend must see the proxy close it no later than
//!   `idle_timeout` + [`IDLE_SLACK`] after the intake read its header (the client checks that
//!   it was not closed earlier than `idle_timeout` - [`IDLE_SLACK`] after sending it).
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::clients::{ClientRecord, IDLE_SLACK, Mode};
use crate::faults::Timeline;
use crate::intake::{Ledger, ServerRecord};
use crate::topology::IDLE_TIMEOUT;
use crate::wire::Class;

/// How long after a DNS change a daemon may still dial the previous address. The change comes
/// at the end of an outage: a refresh that failed just before it is retried after at most the
/// daemons' `max_ttl` (5 s, backends and destinations alike), then one lookup (hickory's
/// timeout is 2 s); without an outage, the TTL (1 s) and `min_ttl` (1 s) bound it.
pub(crate) const DNS_GRACE: Duration = Duration::from_secs(7);

/// Stream counts of one (daemon, mode, class).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) exact: u64,
    /// Resetting clients whose reset reached the intake.
    pub(crate) reset: u64,
    pub(crate) cut: u64,
    pub(crate) lost: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub(crate) by_path: BTreeMap<(usize, Mode, Class), Counts>,
    /// Bytes the clients sent and received, all streams.
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    /// Where the resolving streams landed.
    pub(crate) landed: BTreeMap<IpAddr, u64>,
    /// One line per loss.
    pub(crate) losses: Vec<String>,
    /// Per loss: the daemon, the frontend and the client's address, which its log line names.
    pub(crate) lost_clients: Vec<(usize, Mode, Option<SocketAddr>)>,
}

impl Verdict {
    pub(crate) fn total(&self) -> Counts {
        self.by_path
            .values()
            .fold(Counts::default(), |a, c| Counts {
                exact: a.exact + c.exact,
                reset: a.reset + c.reset,
                cut: a.cut + c.cut,
                lost: a.lost + c.lost,
            })
    }
}

enum Fate {
    Exact,
    Reset,
    Cut,
    Lost(String),
}

pub(crate) fn judge(clients: &[ClientRecord], ledger: &Ledger, timeline: &Timeline) -> Verdict {
    let mut v = Verdict::default();
    for c in clients {
        v.bytes_up += c.sent.len;
        v.bytes_down += c.received.len;
        let server = ledger.records.get(&c.plan.id);
        let fate = fate(c, server, timeline, &mut v.landed);
        let counts = v
            .by_path
            .entry((c.proxy, c.mode, c.plan.class))
            .or_default();
        match fate {
            Fate::Exact => counts.exact += 1,
            Fate::Reset => counts.reset += 1,
            Fate::Cut => counts.cut += 1,
            Fate::Lost(why) => {
                counts.lost += 1;
                v.lost_clients.push((c.proxy, c.mode, c.local));
                v.losses.push(format!(
                    "stream {} ({} {:?} {:?}, {:.1?} long): {why}",
                    c.plan.id,
                    ["kernel", "userspace"][c.proxy],
                    c.mode,
                    c.plan.class,
                    c.ended - c.started
                ));
            }
        }
    }
    v
}

fn fate(
    c: &ClientRecord,
    server: Option<&ServerRecord>,
    timeline: &Timeline,
    landed: &mut BTreeMap<IpAddr, u64>,
) -> Fate {
    if let Some(at) = c.mismatch {
        return Fate::Lost(format!(
            "the client received bytes that differ from the intake's stream at offset {at}"
        ));
    }
    if let Some(at) = server.and_then(|s| s.mismatch) {
        return Fate::Lost(format!(
            "the intake received bytes that differ from the client's stream at offset {at}"
        ));
    }
    let overlaps_kill = timeline
        .kills
        .iter()
        .any(|(down, up)| c.started <= *up && c.ended >= *down);
    let touched = server.map_or(overlaps_kill, |s| s.cut);
    let Some(s) = server else {
        return match (&c.error, touched) {
            (_, true) => Fate::Cut,
            (Some(e), false) => Fate::Lost(format!("{e}; the intake never saw the stream")),
            (None, false) => Fate::Lost("the intake never saw the stream".into()),
        };
    };
    if s.cut {
        return Fate::Cut;
    }
    if c.mode.resolves() {
        *landed.entry(s.local.ip()).or_default() += 1;
    }
    if let Some(e) = &c.error {
        return Fate::Lost(format!("client: {e}; intake: {:?}", s.error));
    }
    if c.plan.class == Class::Reset {
        return match &s.error {
            Some(e) if is_reset(e) => Fate::Reset,
            Some(e) => Fate::Lost(format!(
                "the client reset after {} bytes down; the intake did not see a reset (it had \
                 sent {} of its {} bytes): {e}",
                c.received.len, s.sent.len, c.plan.down
            )),
            None => Fate::Lost(format!(
                "the client reset after {} bytes down, but the intake saw a clean end after \
                 receiving {} bytes",
                c.received.len, s.received.len
            )),
        };
    }
    if let Some(e) = &s.error {
        return Fate::Lost(format!("the client completed, the intake failed: {e}"));
    }
    if s.received != c.sent || c.received != s.sent || c.sent.len != c.plan.up {
        return Fate::Lost(format!(
            "digests differ: up {:?} sent, {:?} received; down {:?} sent, {:?} received",
            c.sent, s.received, s.sent, c.received
        ));
    }
    if c.mode.resolves() {
        let ip = s.local.ip();
        let from = c.started.checked_sub(DNS_GRACE).unwrap_or(c.started);
        let given = timeline.answers_during(from, c.ended);
        if !given.contains(&ip) {
            return Fate::Lost(format!(
                "reached the intake at {ip}; DNS answered {given:?} from {DNS_GRACE:?} before \
                 the stream to its end"
            ));
        }
    }
    if let (Some(closed), Some(header)) = (c.closed_silent, s.header_at) {
        // The proxy's idle timer counts from the header's last move, which is its arrival at
        // the intake (a slow dial delays it; the client checked the early side).
        let after = closed.saturating_duration_since(header);
        if after > IDLE_TIMEOUT + IDLE_SLACK {
            return Fate::Lost(format!(
                "the proxy closed the silent connection {after:.1?} after the intake read its \
                 header ({:.1?} after the client sent it); its idle_timeout is {IDLE_TIMEOUT:?}",
                closed - c.started
            ));
        }
    }
    Fate::Exact
}

/// Whether an intake's error says its peer reset the connection (rather than, say, a stall).
fn is_reset(error: &str) -> bool {
    error.contains("reset by peer") || error.contains("Broken pipe")
}
