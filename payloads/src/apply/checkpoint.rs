//! `Checkpoint`: the small, serialisable state from which an interrupted apply continues.

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// Version of the checkpoint schema.
pub const CHECKPOINT_VERSION: u32 = 1;

/// Where an apply stands: every operation before `next_operation` has been written, and the
/// payload continues at `payload_offset` with that operation's data.
///
/// Resume by re-supplying the first `prefix_len` payload bytes (re-verified) to
/// [`Applier::resume`](super::Applier::resume) and then feeding the payload from `payload_offset`
/// (e.g. with an HTTP `Range: bytes=OFFSET-` request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Schema version, [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// SHA-256 of the payload's `header || manifest`: binds the checkpoint to one payload.
    pub signed_sha256: Sha256Digest,
    /// Length of the payload's header, manifest and signatures.
    pub prefix_len: u64,
    /// Index of the first operation not yet written.
    pub next_operation: u64,
    /// Payload offset of that operation's data: where to continue the download.
    pub payload_offset: u64,
    /// Base offset of the target range written to.
    pub target_base: u64,
    /// Length of the target range written to.
    pub target_len: u64,
}
