//! Deterministic pseudo-random byte streams and their SHA-256, so that a receiver can prove it
//! got exactly what the sender sent: no byte lost, added or reordered.
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// An endless byte stream determined by its seed (SplitMix64 output, little-endian). The
/// stream does not depend on how it is cut into `fill` calls.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
    /// Bytes of the current word not yet handed out: `word[pos..]`.
    word: [u8; 8],
    pos: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            word: [0; 8],
            pos: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut out = buf;
        let pending = (8 - self.pos).min(out.len());
        out[..pending].copy_from_slice(&self.word[self.pos..self.pos + pending]);
        self.pos += pending;
        out = &mut out[pending..];
        let mut chunks = out.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_word());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word();
            rest.copy_from_slice(&self.word[..rest.len()]);
            self.pos = rest.len();
        }
    }

    /// The first `len` bytes of the stream for `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Self::new(seed).fill(&mut v);
        v
    }

    /// SHA-256 of the first `len` bytes of the stream for `seed`.
    pub fn hash(seed: u64, len: u64) -> Hash {
        let mut p = Self::new(seed);
        let mut h = Sha256::new();
        let mut buf = vec![0; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            p.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            left -= n as u64;
        }
        h.finalize().into()
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_does_not_depend_on_chunking() {
        let whole = Pattern::bytes(7, 1000);
        let mut p = Pattern::new(7);
        let mut pieces = Vec::new();
        for n in [1, 3, 8, 13, 0, 64, 5, 906] {
            let mut buf = vec![0; n];
            p.fill(&mut buf);
            pieces.extend_from_slice(&buf);
        }
        assert_eq!(pieces, whole);
        assert_eq!(Pattern::hash(7, 1000), sha256(&whole));
    }

    #[test]
    fn seeds_give_different_streams() {
        assert_ne!(Pattern::bytes(1, 64), Pattern::bytes(2, 64));
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
