//! A SHA-256 whose running state can be saved and restored, so the whole-payload hash announced
//! by Omaha can be checked even when a download is resumed after a restart: the state at the last
//! checkpoint is persisted with it, and only bytes not yet hashed are fed after the resume.

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;
use sha2::digest::generic_array::typenum::U64;

/// One 64-byte block.
type Block = GenericArray<u8, U64>;
/// Blocks copied per call of the block function.
const BATCH: usize = 32;

const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A resumable SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes hashed so far (including `pending`).
    len: u64,
    /// Bytes of an incomplete 64-byte block.
    pending: Vec<u8>,
}

/// The persisted form of a [`ResumableSha256`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashState {
    /// The eight state words.
    pub state: [u32; 8],
    /// Bytes hashed so far.
    pub len: u64,
    /// Incomplete block, lowercase hex (< 64 bytes).
    pub pending: String,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self {
            state: IV,
            len: 0,
            pending: Vec::with_capacity(64),
        }
    }
}

impl ResumableSha256 {
    /// A fresh hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hashes `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 64 {
                return;
            }
            let block = GenericArray::clone_from_slice(&self.pending);
            sha2::compress256(&mut self.state, &[block]);
            self.pending.clear();
        }
        let full = data.len() / 64 * 64;
        // Copy blocks into a small reused batch (the block function takes typed blocks).
        let mut batch: [Block; BATCH] = Default::default();
        for group in data[..full].chunks(64 * BATCH) {
            let n = group.len() / 64;
            for (dst, src) in batch.iter_mut().zip(group.chunks_exact(64)) {
                dst.copy_from_slice(src);
            }
            sha2::compress256(&mut self.state, &batch[..n]);
        }
        self.pending.extend_from_slice(&data[full..]);
    }

    /// The digest of everything hashed.
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.pending);
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bits.to_be_bytes());
        let blocks: Vec<_> = tail
            .chunks_exact(64)
            .map(GenericArray::clone_from_slice)
            .collect();
        sha2::compress256(&mut self.state, &blocks);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The state to persist.
    pub fn save(&self) -> HashState {
        HashState {
            state: self.state,
            len: self.len,
            pending: hex::encode(&self.pending),
        }
    }

    /// Restores a saved state; `None` when it is inconsistent.
    pub fn restore(s: &HashState) -> Option<Self> {
        let pending = hex::decode(&s.pending).ok()?;
        (pending.len() < 64 && s.len % 64 == pending.len() as u64).then_some(Self {
            state: s.state,
            len: s.len,
            pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn matches_sha256_across_splits_and_restores() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 128, 1000, 10_000] {
            let want: [u8; 32] = sha2::Sha256::digest(&data[..len]).into();
            for split in [0, 1, 63, 64, 65, len / 2, len] {
                let split = split.min(len);
                let mut h = ResumableSha256::new();
                h.update(&data[..split]);
                let h = ResumableSha256::restore(
                    &serde_json::from_value(serde_json::to_value(h.save()).unwrap()).unwrap(),
                )
                .unwrap();
                let mut h = h;
                for piece in data[split..len].chunks(7) {
                    h.update(piece);
                }
                assert_eq!(h.len(), len as u64);
                assert_eq!(h.finish(), want, "len {len} split {split}");
            }
        }
    }

    #[test]
    fn inconsistent_state_is_refused() {
        let mut h = ResumableSha256::new();
        h.update(b"abc");
        let mut s = h.save();
        s.len = 4;
        assert!(ResumableSha256::restore(&s).is_none());
        s.pending = "zz".into();
        assert!(ResumableSha256::restore(&s).is_none());
    }
}
