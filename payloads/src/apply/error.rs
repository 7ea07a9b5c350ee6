//! `ApplyError`: every way applying or verifying a payload stream can fail, and its class
//! (invalid payload, untrusted payload, a delta whose source does not match, or a local problem)
//! for callers that map it to an action or an exit code. `SourceError`: why a delta's source
//! was refused.

use std::io;

use crate::digest::Sha256Digest;
use crate::format::FormatError;
use crate::verify::VerifyError;

/// Broad class of an [`ApplyError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The payload is malformed, corrupted, expired, incomplete, or not for this machine.
    Invalid,
    /// The payload is not signed by a trusted key (or its signature was altered).
    Untrusted,
    /// A local problem: I/O, a too-small target, or an unusable checkpoint.
    Local,
    /// A delta payload that cannot be applied to this source (another source version, a source
    /// extent that does not match its signed SHA-256, a source too small or unreadable). The
    /// payload itself may be fine; the remedy is the full payload.
    Source,
}

/// Why a delta payload's source was refused. Nothing derived from a refused source is written.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A delta payload was given to an applier without a source.
    #[error(
        "the payload is a delta from version {version} and needs that version's image as its source"
    )]
    Required {
        /// The delta's source version.
        version: String,
    },
    /// The delta was built from another version than the caller runs.
    #[error("the delta applies to source version {found}, but the source is version {expected}")]
    VersionMismatch {
        /// Source version the caller has.
        expected: String,
        /// Source version in the signed manifest.
        found: String,
    },
    /// The source range is smaller than the source image the delta was built from.
    #[error("the delta's source image is {needed} bytes, the source range has only {available}")]
    TooSmall {
        /// Source size from the manifest.
        needed: u64,
        /// Length of the source range.
        available: u64,
    },
    /// A source extent does not match its signed SHA-256 (another image, or the source changed
    /// after the apply started); the operation was not written.
    #[error(
        "operation {index}: source bytes {src_offset}..{} have SHA-256 {found}, the manifest says {expected}; the source is not the image the delta was built from, nothing of it was written",
        src_offset + len
    )]
    ExtentMismatch {
        /// Operation index.
        index: usize,
        /// Source offset of the extent.
        src_offset: u64,
        /// Extent length.
        len: u64,
        /// Digest from the manifest.
        expected: Sha256Digest,
        /// Digest of the bytes read from the source.
        found: Sha256Digest,
    },
    /// The whole source image does not match the manifest's `source_sha256`
    /// ([`Source::check_image`](crate::Source::check_image)).
    #[error("the source image has SHA-256 {found}, the delta was built from {expected}")]
    ImageMismatch {
        /// Digest from the manifest.
        expected: Sha256Digest,
        /// Digest of the source range's first `source_size` bytes.
        found: Sha256Digest,
    },
    /// Reading the source failed.
    #[error("reading the source at offset {offset}: {error}")]
    Read {
        /// Offset in the source range.
        offset: u64,
        /// The underlying error.
        error: io::Error,
    },
}

/// Why a payload could not be applied or verified.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Header, manifest or signature block is malformed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Signatures or expiry rejected the payload.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The signed manifest is not for what the caller expects (app, kind, arch, board, version).
    #[error("payload is for {field} {found:?}, expected {expected:?}")]
    Mismatch {
        /// Manifest field.
        field: &'static str,
        /// Expected value.
        expected: String,
        /// Value in the manifest.
        found: String,
    },
    /// The target range cannot hold the payload's target.
    #[error("target too small: the payload needs {needed} bytes, the target range has {available}")]
    TargetTooSmall {
        /// Target size from the manifest.
        needed: u64,
        /// Writable bytes in the target range.
        available: u64,
    },
    /// An operation's data does not match its signed SHA-256; the operation was not written.
    #[error(
        "operation {index}: data at payload offset {payload_offset} has SHA-256 {found}, the manifest says {expected}; nothing of it was written"
    )]
    DataHashMismatch {
        /// Operation index.
        index: usize,
        /// Payload offset of the operation's data.
        payload_offset: u64,
        /// Digest from the manifest.
        expected: Sha256Digest,
        /// Digest of the data received.
        found: Sha256Digest,
    },
    /// A REPLACE_ZSTD operation's (authentic) data does not decompress to its target length.
    #[error("operation {index}: zstd data does not decompress to the declared length: {reason}")]
    Decompress {
        /// Operation index.
        index: usize,
        /// What went wrong.
        reason: String,
    },
    /// Bytes were fed after the last operation's data.
    #[error(
        "data after the end of the payload at offset {offset} (the payload is {payload_len} bytes)"
    )]
    DataAfterEnd {
        /// Offset of the first extra byte.
        offset: u64,
        /// Payload length from the manifest.
        payload_len: u64,
    },
    /// The stream ended before the payload did.
    #[error("payload truncated: stream ended after {received} bytes{}", expected_len(*.expected))]
    Truncated {
        /// Bytes received.
        received: u64,
        /// Payload length, if the prefix had been read.
        expected: Option<u64>,
    },
    /// Re-reading the target gave a different SHA-256 than the manifest's.
    #[error("target SHA-256 after writing is {found}, the manifest says {expected}")]
    TargetHashMismatch {
        /// Digest from the manifest.
        expected: Sha256Digest,
        /// Digest of the target as re-read.
        found: Sha256Digest,
    },
    /// Reading the payload or reading/writing the target failed.
    #[error("{action} at offset {offset}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Offset (in the target for target I/O, in the payload for payload reads).
        offset: u64,
        /// The underlying error.
        error: io::Error,
    },
    /// A checkpoint does not fit the payload or target it is resumed with.
    #[error("cannot resume from checkpoint: {reason}")]
    InvalidCheckpoint {
        /// Why.
        reason: String,
    },
    /// A delta payload's source is missing, of another version, or does not match its signed
    /// digests; nothing derived from it was written. Apply the full payload instead.
    #[error("delta cannot be applied to this source: {0}; use the full payload")]
    Source(#[from] SourceError),
    /// The applier was used after it had failed; resume from its last checkpoint instead.
    #[error("applier stopped after an earlier error; resume from its last checkpoint")]
    Stopped,
}

fn expected_len(expected: Option<u64>) -> String {
    expected.map_or_else(String::new, |n| format!(" of {n}"))
}

impl ApplyError {
    /// The broad class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            ApplyError::Verify(VerifyError::Expired { .. }) => ErrorClass::Invalid,
            ApplyError::Verify(_) => ErrorClass::Untrusted,
            ApplyError::Format(_)
            | ApplyError::Mismatch { .. }
            | ApplyError::DataHashMismatch { .. }
            | ApplyError::Decompress { .. }
            | ApplyError::DataAfterEnd { .. }
            | ApplyError::Truncated { .. }
            | ApplyError::TargetHashMismatch { .. } => ErrorClass::Invalid,
            ApplyError::TargetTooSmall { .. }
            | ApplyError::Io { .. }
            | ApplyError::InvalidCheckpoint { .. }
            | ApplyError::Stopped => ErrorClass::Local,
            ApplyError::Source(_) => ErrorClass::Source,
        }
    }
}
