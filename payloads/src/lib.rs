//! Platte's signed payload format and the streaming verifier/applier.
//!
//! A payload is `header || manifest || signatures || data`. The header, manifest and signatures
//! (the *prefix*) are bounded in size and say everything needed to decide whether to trust the
//! payload before its first data byte arrives; the data is a sequence of operations (REPLACE,
//! REPLACE_ZSTD, ZERO), each checked against its signed SHA-256 before it is written. A *delta*
//! payload (format version 2) names the source image it was built from and may also copy extents
//! from it (SOURCE_COPY), each checked against its signed SHA-256 before it is used. The format
//! is specified byte by byte in `docs/development/payload-format.md`.
//!
//! - [`build`]: build and sign a payload from an image; [`delta`]: build a delta payload from
//!   two images; [`sign`]: add a signature.
//! - [`Prefix::verify`], [`read_prefix`]: read and verify a payload's prefix without its data
//!   (what the server does on publish); [`verify_payload`]: verify everything without writing.
//! - [`Applier`]: the push-style streaming applier with resumable [`Checkpoint`]s (what the agent
//!   drives); [`apply_from_reader`]: the same from any reader. A delta reads from a read-only
//!   [`Source`] (the active slot).
//! - [`keys`]: key generation, PEM files, key ids and the [`TrustStore`].
//! - [`crau`]: the header of update_engine's own payload format (Flatcar, ChromeOS), which a
//!   server serves as it is.

pub mod apply;
pub mod build;
pub mod crau;
pub mod delta;
mod digest;
pub mod format;
pub mod keys;
pub mod sign;
mod source;
mod target;
mod verify;

pub use apply::{
    Applied, Applier, ApplyError, ApplyOptions, Checkpoint, ErrorClass, Expectations, Progress,
    SourceError, apply_from_reader, apply_from_reader_with_source, verify_payload,
    verify_payload_with_source,
};
pub use build::{BuildOptions, BuildReport, build_file, build_payload, build_to_vec};
pub use delta::{DeltaOptions, DeltaReport, build_delta_file, build_delta_to_vec};
pub use digest::{ParseDigestError, Sha256Digest};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use format::{
    DeltaSource, FormatError, Kind, Manifest, OpKind, Operation, Prefix, read_prefix,
};
pub use keys::{KeyError, KeyId, TrustStore};
pub use source::Source;
pub use target::Target;
pub use verify::{PayloadInfo, VerifyError};

/// The current time in Unix seconds, for [`ApplyOptions::now`]. Call it at the edge (the CLI, the
/// agent's main loop), not inside library logic.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
