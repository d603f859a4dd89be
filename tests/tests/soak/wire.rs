//! What a soak stream is on the wire: a header from the client naming the stream and its
//! shape ([`Plan`]), then pattern bytes both ways (up: seed `2 * id`, down: `2 * id + 1`). Both
//! ends hash what they send and receive ([`Tx`], [`Rx`]) and compare every received byte with
//! the stream it should be, so a corruption is caught at its offset even when the stream is
//! later cut.
use std::time::Duration;

use agent_proxy_tests::pattern::Pattern;
use agent_proxy_tests::peers::Digest;
use anyhow::{Context as _, bail, ensure};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::timeout;

/// How long any single read or write may make no progress before the stream counts as stalled.
/// Generous: the links drop and hold back packets, and two cores carry everything.
pub(crate) const STALL: Duration = Duration::from_secs(20);
const MAGIC: u32 = 0x534f_414b;
pub(crate) const HEADER_LEN: usize = 40;
const CHUNK: usize = 64 * 1024;

/// The client behaviours of the soak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Class {
    /// Rounds of a small request and its answer on one connection (HTTP keep-alive-like).
    ReqResp,
    /// MiBs each way at once.
    Bulk,
    /// Silent after the header for a while, then one round.
    Idle,
    /// Sends its request, shuts down writing, then reads the whole answer.
    HalfClose,
    /// Bulk, but the client closes with SO_LINGER 0 part-way through.
    Reset,
    /// Reads a large answer slowly through a small receive buffer (flow control).
    SlowReader,
}

impl Class {
    pub(crate) const ALL: [Class; 6] = [
        Class::ReqResp,
        Class::Bulk,
        Class::Idle,
        Class::HalfClose,
        Class::Reset,
        Class::SlowReader,
    ];

    fn code(self) -> u8 {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0) as u8
    }
}

/// One stream: who it is and how much goes each way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) id: u64,
    pub(crate) class: Class,
    /// Pattern bytes the client sends after the header.
    pub(crate) up: u64,
    /// Pattern bytes the intake sends.
    pub(crate) down: u64,
    /// Request/answer rounds (ReqResp, Idle): `up` and `down` are split evenly between them.
    /// An Idle stream with none waits for the proxy's idle timeout to close it ([`Plan::idle_cut`]).
    pub(crate) rounds: u32,
    /// Idle: silence before the round. Reset: down bytes read before the reset.
    pub(crate) param: u32,
}

impl Plan {
    /// The plan of stream `id` of `class`: sizes drawn from `id`, bounded.
    pub(crate) fn new(id: u64, class: Class) -> Self {
        let mut p = Pattern::new(id ^ 0x5eed);
        let mut r = [0u8; 8];
        let mut draw = |lo: u64, hi: u64| {
            p.fill(&mut r);
            lo + u64::from_le_bytes(r) % (hi - lo + 1)
        };
        const KIB: u64 = 1024;
        const MIB: u64 = 1 << 20;
        let (up, down, rounds, param) = match class {
            Class::ReqResp => {
                let rounds = draw(5, 30);
                (
                    rounds * draw(100, 2000),
                    rounds * draw(200, 40_000),
                    rounds,
                    0,
                )
            }
            Class::Bulk => (draw(256 * KIB, 3 * MIB), draw(256 * KIB, 3 * MIB), 1, 0),
            Class::Idle => (draw(50, 500), draw(50, 5000), 1, draw(2_000, 6_000)),
            Class::HalfClose => (draw(KIB, 256 * KIB), draw(64 * KIB, 2 * MIB), 1, 0),
            Class::Reset => (4 * MIB, 4 * MIB, 1, draw(64 * KIB, 512 * KIB)),
            Class::SlowReader => (draw(100, 1000), draw(3 * MIB, 6 * MIB), 1, 0),
        };
        Self {
            id,
            class,
            up,
            down,
            rounds: rounds as u32,
            param: param as u32,
        }
    }

    /// This Idle stream, made one that sends nothing after its header and waits for the
    /// proxy's idle timeout to close it (a frontend with a short `idle_timeout`).
    pub(crate) fn idle_cut(mut self) -> Self {
        self.up = 0;
        self.down = 0;
        self.rounds = 0;
        self
    }

    pub(crate) fn up_seed(&self) -> u64 {
        self.id * 2
    }

    pub(crate) fn down_seed(&self) -> u64 {
        self.id * 2 + 1
    }

    /// Size of round `i`'s request (or answer, for `total` = down): the last round takes the
    /// remainder.
    pub(crate) fn round_len(&self, total: u64, i: u32) -> u64 {
        let each = total / u64::from(self.rounds);
        if i + 1 == self.rounds {
            total - each * u64::from(self.rounds - 1)
        } else {
            each
        }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4] = self.class.code();
        h[8..16].copy_from_slice(&self.id.to_le_bytes());
        h[16..24].copy_from_slice(&self.up.to_le_bytes());
        h[24..32].copy_from_slice(&self.down.to_le_bytes());
        h[32..36].copy_from_slice(&self.rounds.to_le_bytes());
        h[36..40].copy_from_slice(&self.param.to_le_bytes());
        h
    }

    pub(crate) fn decode(h: &[u8; HEADER_LEN]) -> anyhow::Result<Self> {
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        ensure!(u32_at(0) == MAGIC, "bad magic in header {h:?}");
        let class = *Class::ALL
            .get(usize::from(h[4]))
            .with_context(|| format!("bad class {}", h[4]))?;
        let plan = Self {
            id: u64_at(8),
            class,
            up: u64_at(16),
            down: u64_at(24),
            rounds: u32_at(32),
            param: u32_at(36),
        };
        ensure!(
            plan.rounds >= 1 || plan.class == Class::Idle,
            "no rounds in {plan:?}"
        );
        Ok(plan)
    }
}

/// The sending side of one direction: the pattern, and the hash of what was sent.
pub(crate) struct Tx {
    pattern: Pattern,
    hash: Sha256,
    pub(crate) sent: u64,
    buf: Vec<u8>,
}

impl Tx {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            pattern: Pattern::new(seed),
            hash: Sha256::new(),
            sent: 0,
            buf: vec![0; CHUNK],
        }
    }

    /// Writes the next `len` bytes of the stream.
    pub(crate) async fn send<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        w: &mut W,
        len: u64,
    ) -> anyhow::Result<()> {
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            self.pattern.fill(&mut self.buf[..n]);
            timeout(STALL, w.write_all(&self.buf[..n]))
                .await
                .with_context(|| format!("write stalled after {} bytes", self.sent))?
                .with_context(|| format!("write failed after {} bytes", self.sent))?;
            self.hash.update(&self.buf[..n]);
            self.sent += n as u64;
            left -= n as u64;
        }
        Ok(())
    }

    pub(crate) fn digest(&self) -> Digest {
        Digest {
            len: self.sent,
            hash: self.hash.clone().finalize().into(),
        }
    }
}

/// The receiving side of one direction: the hash of what came, and where it first differed
/// from the stream it should be.
pub(crate) struct Rx {
    pattern: Pattern,
    hash: Sha256,
    pub(crate) got: u64,
    pub(crate) mismatch: Option<u64>,
    buf: Vec<u8>,
    expected: Vec<u8>,
}

impl Rx {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            pattern: Pattern::new(seed),
            hash: Sha256::new(),
            got: 0,
            mismatch: None,
            buf: vec![0; CHUNK],
            expected: vec![0; CHUNK],
        }
    }

    /// One read of at most `max` bytes: returns how many came (0 at EOF).
    pub(crate) async fn read<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> anyhow::Result<usize> {
        let max = max.clamp(1, CHUNK);
        let n = timeout(STALL, r.read(&mut self.buf[..max]))
            .await
            .with_context(|| format!("read stalled after {} bytes", self.got))?
            .with_context(|| format!("read failed after {} bytes", self.got))?;
        self.pattern.fill(&mut self.expected[..n]);
        if self.mismatch.is_none()
            && let Some(i) = (0..n).find(|&i| self.buf[i] != self.expected[i])
        {
            self.mismatch = Some(self.got + i as u64);
        }
        self.hash.update(&self.buf[..n]);
        self.got += n as u64;
        Ok(n)
    }

    /// Reads exactly `len` more bytes.
    pub(crate) async fn exact<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        r: &mut R,
        len: u64,
    ) -> anyhow::Result<()> {
        let end = self.got + len;
        while self.got < end {
            let want = (end - self.got).min(CHUNK as u64) as usize;
            if self.read(r, want).await? == 0 {
                bail!("EOF after {} bytes, {end} expected", self.got);
            }
        }
        Ok(())
    }

    /// Reads until EOF; more than `limit` bytes in all is an error.
    pub(crate) async fn until_eof<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        r: &mut R,
        limit: u64,
    ) -> anyhow::Result<()> {
        while self.read(r, CHUNK).await? > 0 {
            ensure!(
                self.got <= limit,
                "received {} bytes, more than the {limit} sent",
                self.got
            );
        }
        Ok(())
    }

    pub(crate) fn digest(&self) -> Digest {
        Digest {
            len: self.got,
            hash: self.hash.clone().finalize().into(),
        }
    }
}
