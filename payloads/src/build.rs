//! The payload builder: splits an image into chunks (2 MiB by default), turns all-zero chunks into
//! ZERO operations (merging neighbours), compresses the others with zstd on several threads and
//! keeps a chunk raw when compression does not make it smaller. The image is read once and never
//! held in memory: operation data is spooled, then written after the signed prefix.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::thread;

use ed25519_dalek::SigningKey;
use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::format::{
    FormatError, Kind, MAX_DATA_OPERATION_LEN, Manifest, OpKind, Operation, Prefix,
};
use crate::keys::KeyId;

/// Default chunk size: the target bytes covered by one REPLACE or REPLACE_ZSTD operation.
pub const DEFAULT_CHUNK_SIZE: u32 = 2 << 20;
/// Largest ZERO operation the builder emits when merging all-zero chunks.
pub const MAX_ZERO_RUN: u64 = 64 << 20;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// What to put in the manifest, and how to cut and compress the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Application id.
    pub app_id: String,
    /// Version.
    pub version: String,
    /// Partition image or file.
    pub kind: Kind,
    /// Architecture.
    pub arch: String,
    /// Board (may be empty).
    pub board: String,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// Expiry (Unix seconds).
    pub expires: Option<u64>,
    /// Oldest version this payload may be installed over.
    pub min_source_version: Option<String>,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// Block size (power of two, 512..=1 MiB).
    pub block_size: u32,
    /// Chunk size: a multiple of the block size, at most 4 MiB.
    pub chunk_size: u32,
    /// zstd compression level.
    pub zstd_level: i32,
    /// Compression threads (at least 1).
    pub threads: usize,
}

impl BuildOptions {
    /// Options with defaults: partition kind, empty board, no expiry, 4096-byte blocks, 2 MiB
    /// chunks, zstd level 3, one thread per CPU.
    pub fn new(app_id: &str, version: &str, arch: &str, created: u64) -> Self {
        Self {
            app_id: app_id.to_owned(),
            version: version.to_owned(),
            kind: Kind::Partition,
            arch: arch.to_owned(),
            board: String::new(),
            created,
            expires: None,
            min_source_version: None,
            metadata: BTreeMap::new(),
            block_size: 4096,
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            threads: thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub(crate) fn manifest(
        &self,
        target_size: u64,
        target_sha256: Sha256Digest,
        operations: Vec<Operation>,
    ) -> Manifest {
        Manifest {
            app_id: self.app_id.clone(),
            version: self.version.clone(),
            kind: self.kind,
            arch: self.arch.clone(),
            board: self.board.clone(),
            created: self.created,
            expires: self.expires,
            min_source_version: self.min_source_version.clone(),
            block_size: self.block_size,
            target_size,
            target_sha256,
            source: None,
            metadata: self.metadata.clone(),
            operations,
        }
    }

    /// Checks the options by encoding a one-operation manifest with them.
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        let bs = u64::from(self.block_size);
        let chunk = u64::from(self.chunk_size);
        if self.block_size == 0 || chunk == 0 || chunk % bs != 0 || chunk > MAX_DATA_OPERATION_LEN {
            return Err(BuildError::InvalidOption(format!(
                "chunk size {chunk} must be a non-zero multiple of the block size {bs} and at most {MAX_DATA_OPERATION_LEN}"
            )));
        }
        if self.threads == 0 {
            return Err(BuildError::InvalidOption(
                "threads must be at least 1".to_owned(),
            ));
        }
        let probe = self.manifest(bs, Sha256Digest::ZERO, vec![Operation::zero(0, bs)]);
        probe.encode()?;
        Ok(())
    }
}

/// Why a payload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An option is out of range.
    #[error("invalid build option: {0}")]
    InvalidOption(String),
    /// The options or the result break a format rule (e.g. an app id with spaces).
    #[error("invalid manifest: {0}")]
    Format(FormatError),
    /// No signing key was given.
    #[error("at least one signing key is required")]
    NoKey,
    /// The image is empty.
    #[error("the image is empty")]
    EmptyImage,
    /// Reading the image or writing the payload failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file involved (empty for in-memory streams).
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

impl From<FormatError> for BuildError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> BuildError + 'a {
    move |error| BuildError::Io {
        action,
        path: path.to_owned(),
        error,
    }
}

/// Summary of a built payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Key ids of the signatures, in order.
    pub signers: Vec<KeyId>,
    /// Length of header, manifest and signatures.
    pub prefix_len: u64,
    /// Total payload length.
    pub payload_len: u64,
}

impl BuildReport {
    /// Number of operations of `kind`.
    pub fn count(&self, kind: OpKind) -> usize {
        self.manifest
            .operations
            .iter()
            .filter(|op| op.kind == kind)
            .count()
    }
}

/// How one chunk is encoded.
pub(crate) enum Encoded {
    Zero,
    Raw(Sha256Digest),
    Zstd(Vec<u8>, Sha256Digest),
}

pub(crate) fn is_zero(chunk: &[u8]) -> bool {
    // Word-wise OR over fixed-size blocks: vectorises well and stops at the first non-zero block.
    let blocks = chunk.chunks_exact(256);
    let tail = blocks.remainder();
    blocks
        .into_iter()
        .all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && tail.iter().all(|&b| b == 0)
}

fn encode_chunk(compressor: &mut zstd::bulk::Compressor<'_>, chunk: &[u8]) -> io::Result<Encoded> {
    if is_zero(chunk) {
        return Ok(Encoded::Zero);
    }
    let compressed = compressor.compress(chunk)?;
    if compressed.len() < chunk.len() {
        let digest = Sha256Digest::of(&compressed);
        Ok(Encoded::Zstd(compressed, digest))
    } else {
        Ok(Encoded::Raw(Sha256Digest::of(chunk)))
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Encodes a batch of chunks on `threads` threads while this thread hashes them into `target`
/// (if given).
pub(crate) fn encode_batch(
    chunks: &[Vec<u8>],
    level: i32,
    threads: usize,
    target: Option<&mut Sha256>,
) -> io::Result<Vec<Encoded>> {
    let threads = threads.clamp(1, chunks.len().max(1));
    let results: Vec<io::Result<Vec<(usize, Encoded)>>> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut compressor = zstd::bulk::Compressor::new(level)?;
                    chunks
                        .iter()
                        .enumerate()
                        .skip(t)
                        .step_by(threads)
                        .map(|(i, c)| encode_chunk(&mut compressor, c).map(|e| (i, e)))
                        .collect::<io::Result<Vec<_>>>()
                })
            })
            .collect();
        if let Some(target) = target {
            for c in chunks {
                target.update(c);
            }
        }
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("compression thread panicked")))
            })
            .collect()
    });
    let mut slots: Vec<Option<Encoded>> = (0..chunks.len()).map(|_| None).collect();
    for r in results {
        for (i, e) in r? {
            slots[i] = Some(e);
        }
    }
    slots
        .into_iter()
        .map(|e| e.ok_or_else(|| io::Error::other("chunk left unencoded")))
        .collect()
}

/// Builds a payload from `image` into `out`, spooling operation data through `spool` (an empty
/// read/write/seek stream, e.g. a temporary file). Reads the image once.
pub fn build_payload(
    mut image: impl Read,
    spool: &mut (impl Read + Write + Seek),
    out: &mut impl Write,
    keys: &[SigningKey],
    opts: &BuildOptions,
) -> Result<BuildReport, BuildError> {
    if keys.is_empty() {
        return Err(BuildError::NoKey);
    }
    opts.validate()?;
    let none = Path::new("");
    let chunk_size = opts.chunk_size as usize;
    let batch_len = opts.threads * 2;
    let mut target = Sha256::new();
    let mut ops: Vec<Operation> = Vec::new();
    let mut offset = 0u64;
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(batch_len);
    let mut eof = false;
    while !eof {
        batch.clear();
        while batch.len() < batch_len {
            let mut buf = vec![0u8; chunk_size];
            let n = read_full(&mut image, &mut buf).map_err(io_err("reading image", none))?;
            buf.truncate(n);
            if n > 0 {
                batch.push(buf);
            }
            if n < chunk_size {
                eof = true;
                break;
            }
        }
        let encoded = encode_batch(&batch, opts.zstd_level, opts.threads, Some(&mut target))
            .map_err(io_err("compressing image", none))?;
        for (chunk, enc) in batch.iter().zip(encoded) {
            let len = chunk.len() as u64;
            let op = match enc {
                Encoded::Zero => {
                    if let Some(prev) = ops
                        .last_mut()
                        .filter(|p| p.kind == OpKind::Zero && p.dst_len + len <= MAX_ZERO_RUN)
                    {
                        prev.dst_len += len;
                        offset += len;
                        continue;
                    }
                    Operation::zero(offset, len)
                }
                Encoded::Raw(digest) => {
                    spool
                        .write_all(chunk)
                        .map_err(io_err("spooling data", none))?;
                    Operation::data(OpKind::Replace, offset, len, len, digest)
                }
                Encoded::Zstd(data, digest) => {
                    spool
                        .write_all(&data)
                        .map_err(io_err("spooling data", none))?;
                    Operation::data(OpKind::ReplaceZstd, offset, len, data.len() as u64, digest)
                }
            };
            ops.push(op);
            offset += len;
        }
    }
    if offset == 0 {
        return Err(BuildError::EmptyImage);
    }
    let manifest = opts.manifest(offset, Sha256Digest(target.finalize().into()), ops);
    write_payload(manifest, keys, spool, out)
}

/// Signs `manifest` and writes the prefix, then the operation data spooled in `spool`, to `out`.
pub(crate) fn write_payload(
    manifest: Manifest,
    keys: &[SigningKey],
    spool: &mut (impl Read + Seek),
    out: &mut impl Write,
) -> Result<BuildReport, BuildError> {
    let none = Path::new("");
    let data_len = manifest.data_len();
    let prefix = Prefix::new_signed(manifest, keys)?;
    out.write_all(&prefix.encode())
        .map_err(io_err("writing payload", none))?;
    spool
        .seek(SeekFrom::Start(0))
        .map_err(io_err("rewinding spool", none))?;
    let copied =
        io::copy(&mut spool.take(data_len), out).map_err(io_err("writing payload", none))?;
    if copied != data_len {
        return Err(BuildError::Io {
            action: "copying spooled data",
            path: PathBuf::new(),
            error: io::Error::new(io::ErrorKind::UnexpectedEof, "spool is short"),
        });
    }
    Ok(BuildReport {
        signers: prefix.signatures.iter().map(|s| s.key_id()).collect(),
        prefix_len: prefix.len(),
        payload_len: prefix.payload_len(),
        manifest: prefix.manifest,
    })
}

/// Builds a payload from the image file at `image` into `out`, atomically: the payload is written
/// to a temporary file in `out`'s directory (data spooled through another one there) and renamed
/// into place only when complete.
pub fn build_file(
    image: &Path,
    out: &Path,
    keys: &[SigningKey],
    opts: &BuildOptions,
) -> Result<BuildReport, BuildError> {
    let image_file = File::open(image).map_err(io_err("opening image", image))?;
    write_atomically(out, |spool, writer| {
        build_payload(
            io::BufReader::with_capacity(1 << 20, image_file),
            spool,
            writer,
            keys,
            opts,
        )
        .map_err(|e| with_paths(e, image, out))
    })
}

/// Runs `build` with a spool file and a writer onto a temporary file in `out`'s directory, then
/// syncs it and renames it to `out`.
pub(crate) fn write_atomically(
    out: &Path,
    build: impl FnOnce(&mut File, &mut BufWriter<&mut File>) -> Result<BuildReport, BuildError>,
) -> Result<BuildReport, BuildError> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut spool = tempfile::tempfile_in(dir).map_err(io_err("creating spool file in", dir))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(io_err("creating temporary file in", dir))?;
    let report = {
        let mut writer = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let report = build(&mut spool, &mut writer)?;
        writer.flush().map_err(io_err("writing", out))?;
        report
    };
    tmp.as_file().sync_all().map_err(io_err("syncing", out))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err("setting permissions of", out))?;
    tmp.persist(out).map_err(|e| BuildError::Io {
        action: "renaming payload into",
        path: out.to_owned(),
        error: e.error,
    })?;
    Ok(report)
}

/// Fills in the file names for I/O errors raised on anonymous streams.
pub(crate) fn with_paths(e: BuildError, image: &Path, out: &Path) -> BuildError {
    match e {
        BuildError::Io {
            action,
            path,
            error,
        } if path.as_os_str().is_empty() => {
            let path = if action == "reading image" {
                image
            } else {
                out
            };
            BuildError::Io {
                action,
                path: path.to_owned(),
                error,
            }
        }
        other => other,
    }
}

/// Builds a payload from an in-memory image (for tests and small files).
pub fn build_to_vec(
    image: &[u8],
    keys: &[SigningKey],
    opts: &BuildOptions,
) -> Result<(Vec<u8>, BuildReport), BuildError> {
    let mut spool = io::Cursor::new(Vec::new());
    let mut out = Vec::new();
    let report = build_payload(image, &mut spool, &mut out, keys, opts)?;
    Ok((out, report))
}
