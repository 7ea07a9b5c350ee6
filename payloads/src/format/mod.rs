//! The payload wire format: constants and limits, the header, the canonical manifest encoding, the
//! signature block and the assembled prefix (everything before the first data byte).
//! `docs/development/payload-format.md` specifies it byte by byte; this module is the reference decoder.

mod header;
mod manifest;
mod prefix;
mod signatures;
pub(crate) mod wire;

pub use header::Header;
pub use manifest::{DeltaSource, Kind, Manifest, OpKind, Operation};
pub use prefix::{
    Prefix, ReadPrefixError, encode_prefix, encode_prefix_version, prefix_len_needed, read_prefix,
};
pub use signatures::SignatureEntry;
pub(crate) use signatures::signed_message;

use crate::keys::KeyId;

/// The eight magic bytes that open every payload.
pub const MAGIC: [u8; 8] = *b"PLTPAYLD";
/// The format version of full payloads (every target byte comes from the payload). A payload
/// without a source is always written with this version, so full payloads stay readable by
/// verifiers that know only version 1.
pub const FORMAT_VERSION: u32 = 1;
/// The format version of delta payloads: the manifest names a source image and operations may
/// copy extents from it (SOURCE_COPY). A verifier that knows only version 1 refuses it from the
/// header ("unsupported format version 2") instead of misapplying it.
pub const DELTA_FORMAT_VERSION: u32 = 2;
/// The highest format version this crate reads.
pub const MAX_FORMAT_VERSION: u32 = DELTA_FORMAT_VERSION;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 20;
/// Largest manifest accepted (1 MiB), checked before it is read.
pub const MAX_MANIFEST_LEN: u32 = 1 << 20;
/// Smallest byte count any valid manifest can have; shorter lengths are refused from the header.
pub const MIN_MANIFEST_LEN: u32 = 125;
/// Most signatures a payload may carry.
pub const MAX_SIGNATURES: u16 = 16;
/// Length of one signature entry: 32-byte Ed25519 public key and 64-byte signature.
pub const SIGNATURE_ENTRY_LEN: usize = 96;
/// Largest target region (`dst_len`) of a REPLACE or REPLACE_ZSTD operation, so also the most data
/// the applier buffers for one operation (4 MiB).
pub const MAX_DATA_OPERATION_LEN: u64 = 4 << 20;
/// Largest target size a manifest may declare (2^48 bytes = 256 TiB); also the largest source size.
pub const MAX_TARGET_SIZE: u64 = 1 << 48;
/// Largest target region of one SOURCE_COPY operation (4 MiB), so also the most source bytes the
/// applier reads and hashes before writing them.
pub const MAX_COPY_OPERATION_LEN: u64 = 4 << 20;
/// Encoded length of one operation in the manifest.
pub const OPERATION_LEN: usize = 57;
/// Most metadata entries in a manifest.
pub const MAX_METADATA_ENTRIES: u16 = 64;
/// Domain-separation prefix of the message every signature covers:
/// `SIGNATURE_DOMAIN || header || manifest`.
pub const SIGNATURE_DOMAIN: &[u8] = b"platte-payload-signature-v1\0";
/// The largest possible prefix (header, manifest and signature block).
pub const MAX_PREFIX_LEN: usize =
    HEADER_LEN + MAX_MANIFEST_LEN as usize + 2 + MAX_SIGNATURES as usize * SIGNATURE_ENTRY_LEN;

/// Why a payload's header, manifest or signature block is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The first eight bytes are not [`MAGIC`].
    #[error("not a Platte payload: magic bytes are {found:02x?}, expected \"PLTPAYLD\"")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The header names a format version this verifier does not know.
    #[error(
        "unsupported payload format version {found}; this verifier reads versions 1 to {supported} only (upgrade it or rebuild the payload)"
    )]
    UnsupportedVersion {
        /// Version found in the header.
        found: u32,
        /// Highest version this verifier reads.
        supported: u32,
    },
    /// Header flag bits that no format version defines.
    #[error("header flags are {flags:#010x}; format version 1 defines none, they must be 0")]
    UnknownFlags {
        /// The flags found.
        flags: u32,
    },
    /// The manifest length in the header is outside the allowed range.
    #[error("manifest length {len} in the header is outside {min}..={max} bytes")]
    ManifestLength {
        /// Length from the header.
        len: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// The signature block announces more signatures than allowed.
    #[error("signature block announces {count} signatures; at most {max} are allowed")]
    TooManySignatures {
        /// Count found.
        count: u16,
        /// Maximum allowed.
        max: u16,
    },
    /// Two signature entries carry the same public key.
    #[error("signature {index} repeats key {key_id}; each key may sign once")]
    DuplicateSignature {
        /// Index of the second entry.
        index: usize,
        /// The repeated key.
        key_id: KeyId,
    },
    /// A field runs past the end of the manifest.
    #[error(
        "manifest truncated: field {field} at byte {offset} needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        /// Field being read.
        field: &'static str,
        /// Manifest offset of the field.
        offset: usize,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// Bytes remain after the last operation.
    #[error("manifest has {count} trailing bytes at byte {offset} after the operation list")]
    TrailingBytes {
        /// Offset of the first extra byte.
        offset: usize,
        /// How many extra bytes.
        count: usize,
    },
    /// A length prefix is outside the field's allowed range.
    #[error("manifest field {field} at byte {offset}: length {len} is outside {min}..={max}")]
    FieldLength {
        /// Field name.
        field: &'static str,
        /// Manifest offset of the length prefix.
        offset: usize,
        /// Length found.
        len: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// A field has a value the format does not allow.
    #[error("manifest field {field} at byte {offset}: {reason}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// Manifest offset of the field.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// Metadata keys are not unique and sorted.
    #[error(
        "metadata key {key:?} at byte {offset} does not sort after {previous:?}; keys must be unique and in bytewise order"
    )]
    MetadataOrder {
        /// Offset of the key.
        offset: usize,
        /// The key.
        key: String,
        /// The key before it.
        previous: String,
    },
    /// An opcode that no format version defines.
    #[error("operation {index}: unknown opcode {opcode}")]
    UnknownOperation {
        /// Operation index.
        index: u32,
        /// Opcode found.
        opcode: u8,
    },
    /// An opcode that the payload's format version does not allow (SOURCE_COPY in a full,
    /// version-1 payload).
    #[error("operation {index}: {name} is only allowed in a delta payload (format version 2)")]
    UnsupportedOperation {
        /// Operation index.
        index: u32,
        /// Operation name.
        name: &'static str,
    },
    /// An operation writes beyond the target size.
    #[error("operation {index} writes {offset}..{end}, beyond the target size {target_size}")]
    OperationOutsideTarget {
        /// Operation index.
        index: u32,
        /// Its target offset.
        offset: u64,
        /// Its end (saturated).
        end: u64,
        /// Target size from the manifest.
        target_size: u64,
    },
    /// An operation starts inside the previous one.
    #[error(
        "operation {index} at offset {offset} overlaps the previous operation, which ends at {previous_end}"
    )]
    OperationOverlap {
        /// Operation index.
        index: u32,
        /// Its target offset.
        offset: u64,
        /// End of the previous operation.
        previous_end: u64,
    },
    /// An operation starts before the previous one.
    #[error(
        "operation {index} at offset {offset} comes before the previous operation at {previous_offset}; operations must be sorted by target offset"
    )]
    OperationOutOfOrder {
        /// Operation index.
        index: u32,
        /// Its target offset.
        offset: u64,
        /// Offset of the previous operation.
        previous_offset: u64,
    },
    /// An operation leaves a gap after the previous one.
    #[error(
        "operation {index} starts at {offset} but the previous operations end at {expected}; a gap would leave old data in the target"
    )]
    OperationGap {
        /// Operation index.
        index: u32,
        /// Its target offset.
        offset: u64,
        /// Where it should start.
        expected: u64,
    },
    /// The operations stop before the end of the target.
    #[error("operations cover {covered} bytes but the target size is {target_size}")]
    OperationsIncomplete {
        /// Bytes covered.
        covered: u64,
        /// Target size.
        target_size: u64,
    },
    /// An operation does not start or end on a block boundary.
    #[error(
        "operation {index} at offset {offset} with length {len} is not aligned to the block size {block_size}"
    )]
    OperationMisaligned {
        /// Operation index.
        index: u32,
        /// Its target offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// Block size.
        block_size: u32,
    },
    /// A SOURCE_COPY operation reads beyond the source image the delta was built from.
    #[error(
        "operation {index} copies source bytes {src_offset}..{end}, beyond the source size {source_size}"
    )]
    SourceExtentOutside {
        /// Operation index.
        index: u32,
        /// Source offset of the extent.
        src_offset: u64,
        /// End of the extent (saturated).
        end: u64,
        /// Source size from the manifest.
        source_size: u64,
    },
    /// An operation's lengths or digest break the rules of its kind.
    #[error("operation {index}: {reason}")]
    InvalidOperation {
        /// Operation index.
        index: u32,
        /// What is wrong.
        reason: String,
    },
}
