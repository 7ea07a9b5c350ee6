//! The manifest: what a payload installs (application, version, kind, target size and digest,
//! board/arch, times, metadata, and for a delta the source it applies to) and the ordered
//! operations that produce the target. Encoding is canonical: [`Manifest::decode_version`]
//! accepts exactly the byte strings [`Manifest::encode`] produces.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::wire::{Cursor, put_bytes8, put_bytes16};
use super::{
    DELTA_FORMAT_VERSION, FORMAT_VERSION, FormatError, MAX_COPY_OPERATION_LEN,
    MAX_DATA_OPERATION_LEN, MAX_FORMAT_VERSION, MAX_MANIFEST_LEN, MAX_METADATA_ENTRIES,
    MAX_TARGET_SIZE, MIN_MANIFEST_LEN, OPERATION_LEN,
};
use crate::digest::Sha256Digest;

/// Byte-length bounds of the string fields (inclusive).
const APP_ID_LEN: (usize, usize) = (1, 128);
const VERSION_LEN: (usize, usize) = (1, 64);
const ARCH_LEN: (usize, usize) = (1, 32);
const BOARD_LEN: (usize, usize) = (0, 64);
const META_KEY_LEN: (usize, usize) = (1, 64);
const META_VALUE_LEN: (usize, usize) = (0, 1024);
/// Smallest and largest block size.
const BLOCK_SIZE_RANGE: (u32, u32) = (512, 1 << 20);

/// What the payload installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A partition image for an A/B slot (tag 1).
    Partition,
    /// A file, such as a system extension image (tag 2).
    File,
}

impl Kind {
    /// Wire tag.
    pub fn tag(self) -> u8 {
        match self {
            Kind::Partition => 1,
            Kind::File => 2,
        }
    }

    /// Kind for a wire tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Kind::Partition),
            2 => Some(Kind::File),
            _ => None,
        }
    }

    /// Lowercase name: `partition` or `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::File => "file",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "partition" => Ok(Kind::Partition),
            "file" => Ok(Kind::File),
            other => Err(format!(
                "unknown payload kind {other:?} (expected partition or file)"
            )),
        }
    }
}

/// The kind of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Opcode 0: the data is written as is.
    Replace,
    /// Opcode 1: the data is one zstd frame that decompresses to exactly `dst_len` bytes.
    ReplaceZstd,
    /// Opcode 2: `dst_len` zero bytes are written; no data.
    Zero,
    /// Opcode 3, delta payloads only: `dst_len` bytes are read from the source at `src_offset`,
    /// checked against `src_sha256`, and written; no data.
    SourceCopy,
}

impl OpKind {
    /// Wire opcode.
    pub fn opcode(self) -> u8 {
        match self {
            OpKind::Replace => 0,
            OpKind::ReplaceZstd => 1,
            OpKind::Zero => 2,
            OpKind::SourceCopy => OPCODE_SOURCE_COPY,
        }
    }

    /// Whether the operation consumes payload data (REPLACE, REPLACE_ZSTD).
    pub fn has_data(self) -> bool {
        matches!(self, OpKind::Replace | OpKind::ReplaceZstd)
    }

    /// Upper-case name used in the spec and by `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Replace => "REPLACE",
            OpKind::ReplaceZstd => "REPLACE_ZSTD",
            OpKind::Zero => "ZERO",
            OpKind::SourceCopy => "SOURCE_COPY",
        }
    }
}

/// The SOURCE_COPY opcode (allowed in delta payloads only).
pub const OPCODE_SOURCE_COPY: u8 = 3;

/// One step that writes `dst_len` bytes at `dst_offset` of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// What to do.
    pub kind: OpKind,
    /// Offset in the target (relative to the target region's base).
    pub dst_offset: u64,
    /// Number of target bytes written.
    pub dst_len: u64,
    /// Number of payload data bytes this operation consumes (0 for ZERO and SOURCE_COPY).
    pub data_len: u64,
    /// SHA-256 of those data bytes (all zero for ZERO and SOURCE_COPY).
    pub data_sha256: Sha256Digest,
    /// SOURCE_COPY: offset of the extent in the source; 0 for the other kinds.
    pub src_offset: u64,
    /// SOURCE_COPY: SHA-256 of the `dst_len` source bytes at `src_offset`, checked before they are
    /// used; all zero for the other kinds.
    pub src_sha256: Sha256Digest,
}

impl Operation {
    /// A REPLACE or REPLACE_ZSTD operation consuming `data_len` bytes with digest `data_sha256`.
    pub fn data(
        kind: OpKind,
        dst_offset: u64,
        dst_len: u64,
        data_len: u64,
        data_sha256: Sha256Digest,
    ) -> Self {
        Self {
            kind,
            dst_offset,
            dst_len,
            data_len,
            data_sha256,
            src_offset: 0,
            src_sha256: Sha256Digest::ZERO,
        }
    }

    /// A ZERO operation.
    pub fn zero(dst_offset: u64, dst_len: u64) -> Self {
        Self::data(OpKind::Zero, dst_offset, dst_len, 0, Sha256Digest::ZERO)
    }

    /// A SOURCE_COPY operation: `dst_len` bytes from `src_offset` of the source, whose SHA-256 is
    /// `src_sha256`.
    pub fn source_copy(
        dst_offset: u64,
        dst_len: u64,
        src_offset: u64,
        src_sha256: Sha256Digest,
    ) -> Self {
        Self {
            kind: OpKind::SourceCopy,
            dst_offset,
            dst_len,
            data_len: 0,
            data_sha256: Sha256Digest::ZERO,
            src_offset,
            src_sha256,
        }
    }

    /// End offset in the target (exclusive).
    pub fn dst_end(&self) -> u64 {
        self.dst_offset.saturating_add(self.dst_len)
    }
}

/// What a delta payload applies to: the source image its SOURCE_COPY operations read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaSource {
    /// Version of the source image (the version the machine must be running), same charset and
    /// length as `version`.
    pub version: String,
    /// Size in bytes of the source image; every SOURCE_COPY extent lies inside `[0, size)`.
    pub size: u64,
    /// SHA-256 of the whole source image `[0, size)`. The applier does not need it (it checks each
    /// extent it reads); it identifies the exact source for servers, tools and an optional
    /// up-front check of the source slot.
    pub sha256: Sha256Digest,
}

/// A decoded, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Application id (Omaha app id), 1..=128 printable ASCII bytes without spaces.
    pub app_id: String,
    /// Version of what is installed, 1..=64 printable ASCII bytes without spaces.
    pub version: String,
    /// Partition image or file.
    pub kind: Kind,
    /// Architecture, e.g. `x86_64`, 1..=32 printable ASCII bytes.
    pub arch: String,
    /// Board, 0..=64 printable ASCII bytes; empty means any.
    pub board: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Expiry, seconds since the Unix epoch; the payload is refused at or after it.
    pub expires: Option<u64>,
    /// Oldest version this payload may be installed over (checked by the agent).
    pub min_source_version: Option<String>,
    /// Block size: a power of two in 512..=1 MiB; operations are aligned to it.
    pub block_size: u32,
    /// Size of the final target in bytes.
    pub target_size: u64,
    /// SHA-256 of the final target bytes.
    pub target_sha256: Sha256Digest,
    /// The source of a delta payload; `None` for a full payload. A manifest with a source is
    /// encoded as format version 2 and may contain SOURCE_COPY operations.
    pub source: Option<DeltaSource>,
    /// Free-form key/value metadata (keys `[A-Za-z0-9._-]{1,64}`, values ≤ 1024 bytes UTF-8).
    pub metadata: BTreeMap<String, String>,
    /// Operations, sorted by target offset, covering the target exactly once.
    pub operations: Vec<Operation>,
}

impl Manifest {
    /// The header format version this manifest is encoded with: [`DELTA_FORMAT_VERSION`] for a
    /// delta, [`FORMAT_VERSION`] otherwise.
    pub fn format_version(&self) -> u32 {
        if self.source.is_some() {
            DELTA_FORMAT_VERSION
        } else {
            FORMAT_VERSION
        }
    }

    /// Whether this is a delta payload (it names a source).
    pub fn is_delta(&self) -> bool {
        self.source.is_some()
    }

    /// Target bytes produced by operations of `kind`.
    pub fn target_bytes(&self, kind: OpKind) -> u64 {
        self.operations
            .iter()
            .filter(|op| op.kind == kind)
            .fold(0u64, |acc, op| acc.saturating_add(op.dst_len))
    }

    /// Total payload data bytes consumed by all operations.
    pub fn data_len(&self) -> u64 {
        self.operations
            .iter()
            .fold(0u64, |acc, op| acc.saturating_add(op.data_len))
    }

    /// Encodes and then decodes the result, so that only a manifest that a verifier would accept
    /// is ever produced. Returns the canonical bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let bytes = self.encode_unchecked()?;
        let decoded = Self::decode_version(&bytes, self.format_version())?;
        debug_assert_eq!(&decoded, self);
        Ok(bytes)
    }

    /// Encodes without checking the format's rules (only that each length fits its prefix).
    /// For tests that need to produce invalid manifests; use [`Manifest::encode`] otherwise.
    pub fn encode_unchecked(&self) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::with_capacity(128 + self.operations.len() * OPERATION_LEN);
        put_bytes8(&mut out, "app_id", self.app_id.as_bytes())?;
        put_bytes8(&mut out, "version", self.version.as_bytes())?;
        out.push(self.kind.tag());
        put_bytes8(&mut out, "arch", self.arch.as_bytes())?;
        put_bytes8(&mut out, "board", self.board.as_bytes())?;
        out.extend_from_slice(&self.created.to_be_bytes());
        match self.expires {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.to_be_bytes());
            }
        }
        match &self.min_source_version {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_bytes8(&mut out, "min_source_version", v.as_bytes())?;
            }
        }
        out.extend_from_slice(&self.block_size.to_be_bytes());
        out.extend_from_slice(&self.target_size.to_be_bytes());
        out.extend_from_slice(self.target_sha256.as_bytes());
        if let Some(source) = &self.source {
            put_bytes8(&mut out, "source_version", source.version.as_bytes())?;
            out.extend_from_slice(&source.size.to_be_bytes());
            out.extend_from_slice(source.sha256.as_bytes());
        }
        let count = u16::try_from(self.metadata.len()).map_err(|_| too_many("metadata", &out))?;
        out.extend_from_slice(&count.to_be_bytes());
        for (k, v) in &self.metadata {
            put_bytes8(&mut out, "metadata key", k.as_bytes())?;
            put_bytes16(&mut out, "metadata value", v.as_bytes())?;
        }
        let count =
            u32::try_from(self.operations.len()).map_err(|_| too_many("operations", &out))?;
        out.extend_from_slice(&count.to_be_bytes());
        for op in &self.operations {
            out.push(op.kind.opcode());
            out.extend_from_slice(&op.dst_offset.to_be_bytes());
            out.extend_from_slice(&op.dst_len.to_be_bytes());
            if op.kind == OpKind::SourceCopy {
                out.extend_from_slice(&op.src_offset.to_be_bytes());
                out.extend_from_slice(op.src_sha256.as_bytes());
            } else {
                out.extend_from_slice(&op.data_len.to_be_bytes());
                out.extend_from_slice(op.data_sha256.as_bytes());
            }
        }
        Ok(out)
    }

    /// Decodes and validates the manifest of a full (format version 1) payload. See
    /// [`Manifest::decode_version`].
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        Self::decode_version(bytes, FORMAT_VERSION)
    }

    /// Decodes and validates manifest bytes for the header's `format_version` (1: full payload,
    /// 2: delta payload with a source section and SOURCE_COPY operations). Never panics and never
    /// allocates more than the input size justifies; the first violated rule is reported with its
    /// byte offset or operation index.
    pub fn decode_version(bytes: &[u8], format_version: u32) -> Result<Self, FormatError> {
        if !(FORMAT_VERSION..=MAX_FORMAT_VERSION).contains(&format_version) {
            return Err(FormatError::UnsupportedVersion {
                found: format_version,
                supported: MAX_FORMAT_VERSION,
            });
        }
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        if !(MIN_MANIFEST_LEN..=MAX_MANIFEST_LEN).contains(&len) {
            return Err(FormatError::ManifestLength {
                len,
                min: MIN_MANIFEST_LEN,
                max: MAX_MANIFEST_LEN,
            });
        }
        let mut c = Cursor::new(bytes);
        let app_id = ident(&mut c, "app_id", APP_ID_LEN)?;
        let version = ident(&mut c, "version", VERSION_LEN)?;
        let offset = c.offset();
        let tag = c.u8("kind")?;
        let kind = Kind::from_tag(tag)
            .ok_or_else(|| invalid("kind", offset, format!("unknown kind tag {tag}")))?;
        let arch = ident(&mut c, "arch", ARCH_LEN)?;
        let board = ident(&mut c, "board", BOARD_LEN)?;
        let created = c.u64("created")?;

        let offset = c.offset();
        let expires = match option_tag(&mut c, "expires")? {
            false => None,
            true => {
                let t = c.u64("expires")?;
                if t <= created {
                    return Err(invalid(
                        "expires",
                        offset,
                        format!("expiry {t} is not after the creation time {created}"),
                    ));
                }
                Some(t)
            }
        };
        let min_source_version = match option_tag(&mut c, "min_source_version")? {
            false => None,
            true => Some(ident(&mut c, "min_source_version", VERSION_LEN)?),
        };

        let offset = c.offset();
        let block_size = c.u32("block_size")?;
        if !block_size.is_power_of_two()
            || !(BLOCK_SIZE_RANGE.0..=BLOCK_SIZE_RANGE.1).contains(&block_size)
        {
            return Err(invalid(
                "block_size",
                offset,
                format!("{block_size} is not a power of two in 512..=1048576"),
            ));
        }
        let offset = c.offset();
        let target_size = c.u64("target_size")?;
        if target_size == 0 || target_size > MAX_TARGET_SIZE {
            return Err(invalid(
                "target_size",
                offset,
                format!("{target_size} is outside 1..={MAX_TARGET_SIZE}"),
            ));
        }
        let target_sha256 = Sha256Digest(c.array("target_sha256")?);
        let source = match format_version {
            DELTA_FORMAT_VERSION => Some(decode_source(&mut c)?),
            _ => None,
        };

        let metadata = decode_metadata(&mut c)?;
        let operations = decode_operations(&mut c, block_size, target_size, source.as_ref())?;
        if c.remaining() != 0 {
            return Err(FormatError::TrailingBytes {
                offset: c.offset(),
                count: c.remaining(),
            });
        }
        check_order_and_coverage(&operations, target_size)?;

        Ok(Self {
            app_id,
            version,
            kind,
            arch,
            board,
            created,
            expires,
            min_source_version,
            block_size,
            target_size,
            target_sha256,
            source,
            metadata,
            operations,
        })
    }
}

/// Reads the source section of a delta manifest.
fn decode_source(c: &mut Cursor<'_>) -> Result<DeltaSource, FormatError> {
    let version = ident(c, "source_version", VERSION_LEN)?;
    let offset = c.offset();
    let size = c.u64("source_size")?;
    if size == 0 || size > MAX_TARGET_SIZE {
        return Err(invalid(
            "source_size",
            offset,
            format!("{size} is outside 1..={MAX_TARGET_SIZE}"),
        ));
    }
    let sha256 = Sha256Digest(c.array("source_sha256")?);
    Ok(DeltaSource {
        version,
        size,
        sha256,
    })
}

fn too_many(field: &'static str, out: &[u8]) -> FormatError {
    FormatError::InvalidField {
        field,
        offset: out.len(),
        reason: "too many entries for the count field".to_owned(),
    }
}

fn invalid(field: &'static str, offset: usize, reason: String) -> FormatError {
    FormatError::InvalidField {
        field,
        offset,
        reason,
    }
}

/// Reads an option tag: 0 = absent, 1 = present.
fn option_tag(c: &mut Cursor<'_>, field: &'static str) -> Result<bool, FormatError> {
    let offset = c.offset();
    match c.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        t => Err(invalid(
            field,
            offset,
            format!("option tag {t} is neither 0 (absent) nor 1 (present)"),
        )),
    }
}

/// Reads a `u8`-prefixed identifier of printable ASCII without spaces (0x21..=0x7e).
fn ident(
    c: &mut Cursor<'_>,
    field: &'static str,
    (min, max): (usize, usize),
) -> Result<String, FormatError> {
    let offset = c.offset();
    let raw = c.bytes8(field, min, max)?;
    if let Some(pos) = raw.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        return Err(invalid(
            field,
            offset,
            format!(
                "byte {:#04x} at position {pos} is not printable ASCII without spaces",
                raw[pos]
            ),
        ));
    }
    // Printable ASCII is valid UTF-8.
    Ok(raw.iter().map(|&b| char::from(b)).collect())
}

fn decode_metadata(c: &mut Cursor<'_>) -> Result<BTreeMap<String, String>, FormatError> {
    let offset = c.offset();
    let count = c.u16("metadata_count")?;
    if count > MAX_METADATA_ENTRIES {
        return Err(invalid(
            "metadata_count",
            offset,
            format!("{count} entries; at most {MAX_METADATA_ENTRIES} are allowed"),
        ));
    }
    let mut metadata = BTreeMap::new();
    let mut previous: Option<String> = None;
    for _ in 0..count {
        let offset = c.offset();
        let key = c.bytes8("metadata key", META_KEY_LEN.0, META_KEY_LEN.1)?;
        if let Some(pos) = key
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
        {
            return Err(invalid(
                "metadata key",
                offset,
                format!(
                    "byte {:#04x} at position {pos} is not one of A-Z a-z 0-9 . _ -",
                    key[pos]
                ),
            ));
        }
        let key: String = key.iter().map(|&b| char::from(b)).collect();
        if let Some(prev) = previous.as_ref().filter(|p| key.as_bytes() <= p.as_bytes()) {
            return Err(FormatError::MetadataOrder {
                offset,
                key,
                previous: prev.clone(),
            });
        }
        let value_offset = c.offset();
        let value = c.bytes16("metadata value", META_VALUE_LEN.0, META_VALUE_LEN.1)?;
        let value = std::str::from_utf8(value)
            .map_err(|e| invalid("metadata value", value_offset, format!("not UTF-8: {e}")))?;
        if value.chars().any(char::is_control) {
            return Err(invalid(
                "metadata value",
                value_offset,
                "contains a control character".to_owned(),
            ));
        }
        previous = Some(key.clone());
        metadata.insert(key, value.to_owned());
    }
    Ok(metadata)
}

fn decode_operations(
    c: &mut Cursor<'_>,
    block_size: u32,
    target_size: u64,
    source: Option<&DeltaSource>,
) -> Result<Vec<Operation>, FormatError> {
    let offset = c.offset();
    let count = c.u32("operation_count")?;
    let needed = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(OPERATION_LEN))
        .unwrap_or(usize::MAX);
    // Bound the allocation by the bytes actually present before reserving anything.
    if needed > c.remaining() {
        return Err(FormatError::Truncated {
            field: "operations",
            offset: c.offset(),
            needed,
            available: c.remaining(),
        });
    }
    if count == 0 {
        return Err(invalid(
            "operation_count",
            offset,
            "a payload needs at least one operation".to_owned(),
        ));
    }
    let mut ops = Vec::with_capacity(needed / OPERATION_LEN);
    for index in 0..count {
        let opcode = c.u8("opcode")?;
        let kind = match opcode {
            0 => OpKind::Replace,
            1 => OpKind::ReplaceZstd,
            2 => OpKind::Zero,
            OPCODE_SOURCE_COPY if source.is_some() => OpKind::SourceCopy,
            OPCODE_SOURCE_COPY => {
                return Err(FormatError::UnsupportedOperation {
                    index,
                    name: "SOURCE_COPY",
                });
            }
            _ => return Err(FormatError::UnknownOperation { index, opcode }),
        };
        let dst_offset = c.u64("dst_offset")?;
        let dst_len = c.u64("dst_len")?;
        let op = if kind == OpKind::SourceCopy {
            let src_offset = c.u64("src_offset")?;
            let src_sha256 = Sha256Digest(c.array("src_sha256")?);
            Operation::source_copy(dst_offset, dst_len, src_offset, src_sha256)
        } else {
            let data_len = c.u64("data_len")?;
            let data_sha256 = Sha256Digest(c.array("data_sha256")?);
            Operation::data(kind, dst_offset, dst_len, data_len, data_sha256)
        };
        check_operation(index, &op, block_size, target_size)?;
        if let Some(source) = source.filter(|_| kind == OpKind::SourceCopy) {
            check_source_extent(index, &op, block_size, source)?;
        }
        ops.push(op);
    }
    Ok(ops)
}

/// Rules that concern one operation alone.
fn check_operation(
    index: u32,
    op: &Operation,
    block_size: u32,
    target_size: u64,
) -> Result<(), FormatError> {
    let bad = |reason: String| FormatError::InvalidOperation { index, reason };
    if op.dst_len == 0 {
        return Err(bad("dst_len is 0".to_owned()));
    }
    match op.dst_offset.checked_add(op.dst_len) {
        Some(end) if end <= target_size => {
            let bs = u64::from(block_size);
            if !op.dst_offset.is_multiple_of(bs)
                || (!op.dst_len.is_multiple_of(bs) && end != target_size)
            {
                return Err(FormatError::OperationMisaligned {
                    index,
                    offset: op.dst_offset,
                    len: op.dst_len,
                    block_size,
                });
            }
        }
        _ => {
            return Err(FormatError::OperationOutsideTarget {
                index,
                offset: op.dst_offset,
                end: op.dst_end(),
                target_size,
            });
        }
    }
    match op.kind {
        OpKind::Replace | OpKind::ReplaceZstd if op.dst_len > MAX_DATA_OPERATION_LEN => {
            Err(bad(format!(
                "{} writes {} bytes; at most {MAX_DATA_OPERATION_LEN} per operation",
                op.kind.name(),
                op.dst_len
            )))
        }
        OpKind::Replace if op.data_len != op.dst_len => Err(bad(format!(
            "REPLACE has data_len {} but dst_len {}",
            op.data_len, op.dst_len
        ))),
        OpKind::ReplaceZstd if op.data_len == 0 || op.data_len > MAX_DATA_OPERATION_LEN => {
            Err(bad(format!(
                "REPLACE_ZSTD data_len {} is outside 1..={MAX_DATA_OPERATION_LEN}",
                op.data_len
            )))
        }
        OpKind::Zero if op.data_len != 0 || op.data_sha256 != Sha256Digest::ZERO => Err(bad(
            "ZERO must have data_len 0 and an all-zero data_sha256".to_owned(),
        )),
        OpKind::SourceCopy if op.dst_len > MAX_COPY_OPERATION_LEN => Err(bad(format!(
            "SOURCE_COPY copies {} bytes; at most {MAX_COPY_OPERATION_LEN} per operation",
            op.dst_len
        ))),
        _ => Ok(()),
    }
}

/// Rules of a SOURCE_COPY extent against the manifest's source: aligned start, inside the source.
fn check_source_extent(
    index: u32,
    op: &Operation,
    block_size: u32,
    source: &DeltaSource,
) -> Result<(), FormatError> {
    match op.src_offset.checked_add(op.dst_len) {
        Some(end) if end <= source.size => {}
        _ => {
            return Err(FormatError::SourceExtentOutside {
                index,
                src_offset: op.src_offset,
                end: op.src_offset.saturating_add(op.dst_len),
                source_size: source.size,
            });
        }
    }
    if !op.src_offset.is_multiple_of(u64::from(block_size)) {
        return Err(FormatError::InvalidOperation {
            index,
            reason: format!(
                "SOURCE_COPY source offset {} is not aligned to the block size {block_size}",
                op.src_offset
            ),
        });
    }
    Ok(())
}

/// Rules that concern the sequence: sorted, no overlap, then exact coverage of the target.
fn check_order_and_coverage(ops: &[Operation], target_size: u64) -> Result<(), FormatError> {
    for (i, pair) in ops.windows(2).enumerate() {
        let (prev, op) = (&pair[0], &pair[1]);
        let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if op.dst_offset < prev.dst_offset {
            return Err(FormatError::OperationOutOfOrder {
                index,
                offset: op.dst_offset,
                previous_offset: prev.dst_offset,
            });
        }
        if op.dst_offset < prev.dst_end() {
            return Err(FormatError::OperationOverlap {
                index,
                offset: op.dst_offset,
                previous_end: prev.dst_end(),
            });
        }
    }
    let mut covered = 0u64;
    for (i, op) in ops.iter().enumerate() {
        if op.dst_offset != covered {
            return Err(FormatError::OperationGap {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                offset: op.dst_offset,
                expected: covered,
            });
        }
        covered = op.dst_end();
    }
    if covered != target_size {
        return Err(FormatError::OperationsIncomplete {
            covered,
            target_size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid manifest: one-byte strings, empty board, no options, one op.
    pub(crate) fn minimal() -> Manifest {
        Manifest {
            app_id: "a".into(),
            version: "1".into(),
            kind: Kind::File,
            arch: "x".into(),
            board: String::new(),
            created: 0,
            expires: None,
            min_source_version: None,
            block_size: 512,
            target_size: 1,
            target_sha256: Sha256Digest::ZERO,
            source: None,
            metadata: BTreeMap::new(),
            operations: vec![Operation::zero(0, 1)],
        }
    }

    fn sample() -> Manifest {
        let mut m = minimal();
        m.app_id = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}".into();
        m.version = "4081.2.0".into();
        m.kind = Kind::Partition;
        m.arch = "x86_64".into();
        m.board = "amd64-usr".into();
        m.created = 1_700_000_000;
        m.expires = Some(1_800_000_000);
        m.min_source_version = Some("3975.0.0".into());
        m.block_size = 4096;
        m.target_size = 3 * 4096 + 100;
        m.metadata.insert("os.versions".into(), "4081.*".into());
        m.metadata.insert("a".into(), "é".into());
        m.operations = vec![
            Operation::data(OpKind::Replace, 0, 4096, 4096, Sha256Digest([7; 32])),
            Operation::zero(4096, 8192),
            Operation::data(
                OpKind::ReplaceZstd,
                3 * 4096,
                100,
                20,
                Sha256Digest([9; 32]),
            ),
        ];
        m
    }

    /// `sample` as a delta: op 1 copies two blocks from the source.
    fn delta_sample() -> Manifest {
        let mut m = sample();
        m.source = Some(DeltaSource {
            version: "4080.0.0".into(),
            size: 5 * 4096,
            sha256: Sha256Digest([1; 32]),
        });
        m.operations[1] = Operation::source_copy(4096, 8192, 3 * 4096, Sha256Digest([2; 32]));
        m
    }

    #[test]
    fn delta_round_trip_and_version() {
        let m = delta_sample();
        assert_eq!(m.format_version(), 2);
        assert_eq!(sample().format_version(), 1);
        let bytes = m.encode().unwrap();
        assert_eq!(Manifest::decode_version(&bytes, 2).unwrap(), m);
        // The same bytes are not a version-1 manifest, and a full manifest is not a version-2 one.
        assert!(Manifest::decode(&bytes).is_err());
        assert!(Manifest::decode_version(&sample().encode().unwrap(), 2).is_err());
        assert!(matches!(
            Manifest::decode_version(&bytes, 3),
            Err(FormatError::UnsupportedVersion { found: 3, .. })
        ));
        assert_eq!(m.target_bytes(OpKind::SourceCopy), 8192);
    }

    #[test]
    fn source_extent_rules() {
        let decode = |m: &Manifest| Manifest::decode_version(&m.encode_unchecked().unwrap(), 2);
        let mut m = delta_sample();
        m.operations[1].src_offset = 4 * 4096; // 4..6 blocks of a 5-block source
        assert!(matches!(
            decode(&m),
            Err(FormatError::SourceExtentOutside { index: 1, .. })
        ));
        let mut m = delta_sample();
        m.operations[1].src_offset = u64::MAX - 100;
        assert!(matches!(
            decode(&m),
            Err(FormatError::SourceExtentOutside { index: 1, .. })
        ));
        let mut m = delta_sample();
        m.operations[1].src_offset = 100;
        assert!(matches!(
            decode(&m),
            Err(FormatError::InvalidOperation { index: 1, .. })
        ));
        let mut m = delta_sample();
        m.target_size = 4096 + (8 << 20) + 100;
        m.operations[1].dst_len = 8 << 20;
        m.operations[2].dst_offset = 4096 + (8 << 20);
        if let Some(s) = m.source.as_mut() {
            s.size = 16 << 20;
        }
        assert!(matches!(
            decode(&m),
            Err(FormatError::InvalidOperation { index: 1, .. })
        ));
        let mut m = delta_sample();
        if let Some(s) = m.source.as_mut() {
            s.size = 0;
        }
        assert!(matches!(
            decode(&m),
            Err(FormatError::InvalidField {
                field: "source_size",
                ..
            })
        ));
        let mut m = delta_sample();
        if let Some(s) = m.source.as_mut() {
            s.version = "a b".into();
        }
        assert!(matches!(
            decode(&m),
            Err(FormatError::InvalidField {
                field: "source_version",
                ..
            })
        ));
    }

    #[test]
    fn minimal_manifest_has_the_minimum_length() {
        let bytes = minimal().encode().unwrap();
        assert_eq!(bytes.len(), MIN_MANIFEST_LEN as usize);
    }

    #[test]
    fn round_trip_is_identity() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(Manifest::decode(&bytes).unwrap().encode().unwrap(), bytes);
    }

    fn decode_err(m: &Manifest) -> FormatError {
        Manifest::decode(&m.encode_unchecked().unwrap()).unwrap_err()
    }

    #[test]
    fn non_canonical_fields_are_refused() {
        let mut m = sample();
        m.app_id = "has space".into();
        assert!(matches!(
            decode_err(&m),
            FormatError::InvalidField {
                field: "app_id",
                ..
            }
        ));

        let mut m = sample();
        m.expires = Some(m.created);
        assert!(matches!(
            decode_err(&m),
            FormatError::InvalidField {
                field: "expires",
                ..
            }
        ));

        let mut m = sample();
        m.block_size = 4095;
        assert!(matches!(
            decode_err(&m),
            FormatError::InvalidField {
                field: "block_size",
                ..
            }
        ));

        let mut bytes = sample().encode().unwrap();
        bytes.push(0);
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(FormatError::TrailingBytes { count: 1, .. })
        ));

        let mut m = sample();
        m.metadata.insert("bad key".into(), String::new());
        assert!(matches!(
            decode_err(&m),
            FormatError::InvalidField {
                field: "metadata key",
                ..
            }
        ));
    }

    #[test]
    fn unsorted_metadata_is_refused() {
        let m = sample();
        let mut bytes = m.encode().unwrap();
        // Rename key "a" to "p", which sorts after "os.versions" but is stored first.
        let pos = bytes.windows(3).position(|w| w == [1, b'a', 0]).unwrap();
        bytes[pos + 1] = b'p';
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(FormatError::MetadataOrder { .. })
        ));
    }

    #[test]
    fn operation_sequence_errors_are_distinct() {
        let mut m = sample();
        m.operations[1].dst_offset = 0; // starts inside op 0
        assert!(matches!(
            decode_err(&m),
            FormatError::OperationOverlap { index: 1, .. }
        ));

        let mut m = sample();
        m.operations[1].dst_offset = 2048; // misaligned
        assert!(matches!(
            decode_err(&m),
            FormatError::OperationMisaligned { index: 1, .. }
        ));

        let mut m = sample();
        m.operations.swap(0, 1);
        assert!(matches!(
            decode_err(&m),
            FormatError::OperationOutOfOrder { index: 1, .. }
        ));

        let mut m = sample();
        m.operations[0].dst_len = 8192;
        m.operations[0].data_len = 8192;
        assert!(matches!(
            decode_err(&m),
            FormatError::OperationOverlap { index: 1, .. }
        ));

        let mut m = sample();
        m.operations.remove(1);
        assert!(matches!(
            decode_err(&m),
            FormatError::OperationGap { index: 1, .. }
        ));

        let mut m = sample();
        m.target_size += 4096;
        m.operations[2].dst_len = 4096;
        assert!(matches!(
            decode_err(&m),
            FormatError::OperationsIncomplete { .. }
        ));

        let mut m = sample();
        m.operations[2].dst_len = 200;
        assert!(matches!(
            decode_err(&m),
            FormatError::OperationOutsideTarget { index: 2, .. }
        ));

        let mut m = sample();
        m.operations[0].data_len = 1;
        assert!(matches!(
            decode_err(&m),
            FormatError::InvalidOperation { index: 0, .. }
        ));
    }

    #[test]
    fn reserved_and_unknown_opcodes() {
        let bytes = sample().encode().unwrap();
        let first_op = bytes.len() - 3 * OPERATION_LEN;
        let mut b = bytes.clone();
        b[first_op] = OPCODE_SOURCE_COPY;
        assert_eq!(
            Manifest::decode(&b),
            Err(FormatError::UnsupportedOperation {
                index: 0,
                name: "SOURCE_COPY"
            })
        );
        let mut b = bytes;
        b[first_op] = 200;
        assert_eq!(
            Manifest::decode(&b),
            Err(FormatError::UnknownOperation {
                index: 0,
                opcode: 200
            })
        );
    }

    #[test]
    fn huge_operation_count_is_refused_before_allocation() {
        let bytes = sample().encode().unwrap();
        let count_at = bytes.len() - 3 * OPERATION_LEN - 4;
        let mut b = bytes;
        b[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Manifest::decode(&b),
            Err(FormatError::Truncated {
                field: "operations",
                ..
            })
        ));
    }
}
