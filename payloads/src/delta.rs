//! The delta builder: a signed payload that turns one image (the *source*, the version a machine
//! runs) into another (the *target*) while shipping only what the source does not already hold.
//!
//! The source is read once to index its blocks (SHA-256 of every whole, non-zero block of
//! `block_size` bytes). The target is then read once, block by block:
//!
//! - an all-zero block becomes part of a ZERO operation;
//! - a block whose content exists in the source becomes part of a SOURCE_COPY operation. The
//!   builder prefers to continue the current extent (the next source block), then the block at
//!   the same offset (unchanged data), then any source block with that content (moved data), so
//!   adjacent blocks coalesce into extents of up to 4 MiB;
//! - any other block is new data: runs of new blocks (up to `chunk_size`) are compressed with
//!   zstd on several threads (REPLACE_ZSTD, or REPLACE when compression does not help).
//!
//! Every SOURCE_COPY carries the SHA-256 of the source bytes it reads (equal to the target bytes
//! it writes), and the manifest names the source version, size and whole-image SHA-256.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use ed25519_dalek::SigningKey;
use sha2::{Digest as _, Sha256};

use crate::build::{
    BuildError, BuildOptions, BuildReport, Encoded, encode_batch, io_err, is_zero, read_full,
    with_paths, write_atomically, write_payload,
};
use crate::digest::Sha256Digest;
use crate::format::{DeltaSource, MAX_COPY_OPERATION_LEN, Manifest, OpKind, Operation};

/// A built delta payload's summary (the manifest tells copied, zeroed and shipped bytes).
pub type DeltaReport = BuildReport;

/// What to put in a delta's manifest: the usual build options (for the target) and the version
/// of the source image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaOptions {
    /// Manifest fields, block size, chunk size, compression level and threads, as for a full
    /// payload. `block_size` is also the unit of matching (the file system's block size).
    pub build: BuildOptions,
    /// Version of the source image.
    pub source_version: String,
}

impl DeltaOptions {
    /// Delta options from build options and the source version.
    pub fn new(build: BuildOptions, source_version: &str) -> Self {
        Self {
            build,
            source_version: source_version.to_owned(),
        }
    }

    /// Checks the options by encoding a one-operation delta manifest with them.
    fn validate(&self) -> Result<(), BuildError> {
        self.build.validate()?;
        let bs = u64::from(self.build.block_size);
        let mut probe = self
            .build
            .manifest(bs, Sha256Digest::ZERO, vec![Operation::zero(0, bs)]);
        probe.source = Some(DeltaSource {
            version: self.source_version.clone(),
            size: 1,
            sha256: Sha256Digest::ZERO,
        });
        probe.encode()?;
        Ok(())
    }
}

/// The source's block index: the SHA-256 of every whole block, and the first block holding each
/// non-zero content.
struct SourceIndex {
    blocks: Vec<Sha256Digest>,
    by_content: HashMap<Sha256Digest, u64>,
    size: u64,
    sha256: Sha256Digest,
}

impl SourceIndex {
    /// Reads the source once.
    fn build(mut source: impl Read, block_size: usize) -> io::Result<Self> {
        let mut whole = Sha256::new();
        let mut blocks = Vec::new();
        let mut by_content = HashMap::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; block_size.max(1 << 20)];
        loop {
            let n = read_full(&mut source, &mut buf)?;
            whole.update(&buf[..n]);
            size += n as u64;
            for block in buf[..n].chunks_exact(block_size) {
                let digest = Sha256Digest::of(block);
                let index = blocks.len() as u64;
                if !is_zero(block)
                    && let Entry::Vacant(e) = by_content.entry(digest)
                {
                    e.insert(index);
                }
                blocks.push(digest);
            }
            if n < buf.len() {
                break;
            }
        }
        Ok(Self {
            blocks,
            by_content,
            size,
            sha256: Sha256Digest(whole.finalize().into()),
        })
    }

    /// Digest of source block `index`, if it is a whole block.
    fn block(&self, index: u64) -> Option<&Sha256Digest> {
        usize::try_from(index).ok().and_then(|i| self.blocks.get(i))
    }
}

/// The operation being extended while the target is read.
enum Run {
    None,
    Zero {
        dst: u64,
        len: u64,
    },
    Copy {
        dst: u64,
        src: u64,
        len: u64,
        hasher: Sha256,
    },
    New {
        dst: u64,
        data: Vec<u8>,
    },
}

/// Assembles the operation list; new data goes to the spool in batches, compressed in parallel.
struct Emitter<'a, S> {
    opts: &'a BuildOptions,
    spool: &'a mut S,
    ops: Vec<Operation>,
    /// New-data runs waiting for compression: the index of their placeholder operation and bytes.
    pending: Vec<(usize, Vec<u8>)>,
}

impl<S: Write> Emitter<'_, S> {
    fn push(&mut self, run: Run) -> io::Result<()> {
        match run {
            Run::None => {}
            Run::Zero { dst, len } => self.ops.push(Operation::zero(dst, len)),
            Run::Copy {
                dst,
                src,
                len,
                hasher,
            } => self.ops.push(Operation::source_copy(
                dst,
                len,
                src,
                Sha256Digest(hasher.finalize().into()),
            )),
            Run::New { dst, data } => {
                // Placeholder, completed when the batch is compressed.
                let len = data.len() as u64;
                self.ops.push(Operation::zero(dst, len));
                self.pending.push((self.ops.len() - 1, data));
                if self.pending.len() >= self.opts.threads * 2 {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Compresses the pending new data and spools it in operation order.
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (indexes, chunks): (Vec<usize>, Vec<Vec<u8>>) = self.pending.drain(..).unzip();
        let encoded = encode_batch(&chunks, self.opts.zstd_level, self.opts.threads, None)?;
        for ((index, chunk), enc) in indexes.into_iter().zip(&chunks).zip(encoded) {
            let op = &mut self.ops[index];
            let len = op.dst_len;
            *op = match enc {
                Encoded::Zero => Operation::zero(op.dst_offset, len),
                Encoded::Raw(digest) => {
                    self.spool.write_all(chunk)?;
                    Operation::data(OpKind::Replace, op.dst_offset, len, len, digest)
                }
                Encoded::Zstd(data, digest) => {
                    self.spool.write_all(&data)?;
                    Operation::data(
                        OpKind::ReplaceZstd,
                        op.dst_offset,
                        len,
                        data.len() as u64,
                        digest,
                    )
                }
            };
        }
        Ok(())
    }
}

/// Builds a delta payload from `source` (the old image) to `target` (the new image) into `out`,
/// spooling operation data through `spool` (an empty read/write/seek stream). Reads each image
/// once; holds the source's block index (40 bytes or so per 4 KiB block) and one batch of new data.
pub fn build_delta(
    source: impl Read,
    mut target: impl Read,
    spool: &mut (impl Read + Write + Seek),
    out: &mut impl Write,
    keys: &[SigningKey],
    opts: &DeltaOptions,
) -> Result<DeltaReport, BuildError> {
    if keys.is_empty() {
        return Err(BuildError::NoKey);
    }
    opts.validate()?;
    let none = Path::new("");
    let bopts = &opts.build;
    let bs = bopts.block_size as usize;
    let index = SourceIndex::build(source, bs).map_err(io_err("reading source image", none))?;
    if index.size == 0 {
        return Err(BuildError::EmptyImage);
    }

    let chunk_size = bopts.chunk_size as usize;
    let mut whole = Sha256::new();
    let mut emitter = Emitter {
        opts: bopts,
        spool,
        ops: Vec::new(),
        pending: Vec::new(),
    };
    let mut run = Run::None;
    let mut offset = 0u64;
    let mut buf = vec![0u8; chunk_size];
    loop {
        let n = read_full(&mut target, &mut buf).map_err(io_err("reading image", none))?;
        whole.update(&buf[..n]);
        for block in buf[..n].chunks(bs) {
            let len = block.len() as u64;
            let digest = (block.len() == bs && !is_zero(block)).then(|| Sha256Digest::of(block));
            let next = classify(&index, &run, offset, block, digest.as_ref(), bs as u64);
            run = match (run, next) {
                (Run::Zero { dst, len: l }, Class::Zero)
                    if l + len <= crate::build::MAX_ZERO_RUN =>
                {
                    Run::Zero { dst, len: l + len }
                }
                (
                    Run::Copy {
                        dst,
                        src,
                        len: l,
                        mut hasher,
                    },
                    Class::Copy(s),
                ) if s == src + l && l + len <= MAX_COPY_OPERATION_LEN => {
                    hasher.update(block);
                    Run::Copy {
                        dst,
                        src,
                        len: l + len,
                        hasher,
                    }
                }
                (Run::New { dst, mut data }, Class::New)
                    if data.len() + block.len() <= chunk_size =>
                {
                    data.extend_from_slice(block);
                    Run::New { dst, data }
                }
                (done, next) => {
                    emitter.push(done).map_err(io_err("spooling data", none))?;
                    match next {
                        Class::Zero => Run::Zero { dst: offset, len },
                        Class::Copy(src) => {
                            let mut hasher = Sha256::new();
                            hasher.update(block);
                            Run::Copy {
                                dst: offset,
                                src,
                                len,
                                hasher,
                            }
                        }
                        Class::New => {
                            let mut data = Vec::with_capacity(chunk_size);
                            data.extend_from_slice(block);
                            Run::New { dst: offset, data }
                        }
                    }
                }
            };
            offset += len;
        }
        if n < buf.len() {
            break;
        }
    }
    if offset == 0 {
        return Err(BuildError::EmptyImage);
    }
    emitter.push(run).map_err(io_err("spooling data", none))?;
    emitter.flush().map_err(io_err("spooling data", none))?;
    let ops = emitter.ops;
    let mut manifest: Manifest = bopts.manifest(offset, Sha256Digest(whole.finalize().into()), ops);
    manifest.source = Some(DeltaSource {
        version: opts.source_version.clone(),
        size: index.size,
        sha256: index.sha256,
    });
    let spool = emitter.spool;
    write_payload(manifest, keys, spool, out)
}

/// Where one target block comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Zero,
    /// From the source block at this byte offset.
    Copy(u64),
    New,
}

/// Classifies a target block at `offset`: zero, copy (continuing the current extent if the next
/// source block matches, else the block at the same offset, else any block with that content),
/// or new.
fn classify(
    index: &SourceIndex,
    run: &Run,
    offset: u64,
    block: &[u8],
    digest: Option<&Sha256Digest>,
    bs: u64,
) -> Class {
    let Some(digest) = digest else {
        return if is_zero(block) {
            Class::Zero
        } else {
            Class::New
        };
    };
    if let Run::Copy { src, len, .. } = run {
        let next = src + len;
        if index.block(next / bs) == Some(digest) {
            return Class::Copy(next);
        }
    }
    if index.block(offset / bs) == Some(digest) {
        return Class::Copy(offset);
    }
    match index.by_content.get(digest) {
        Some(&b) => Class::Copy(b * bs),
        None => Class::New,
    }
}

/// Builds a delta payload from the image files `from` (source) and `to` (target) into `out`,
/// atomically (temporary file in `out`'s directory, renamed when complete).
pub fn build_delta_file(
    from: &Path,
    to: &Path,
    out: &Path,
    keys: &[SigningKey],
    opts: &DeltaOptions,
) -> Result<DeltaReport, BuildError> {
    let source = File::open(from).map_err(io_err("opening source image", from))?;
    let target = File::open(to).map_err(io_err("opening image", to))?;
    write_atomically(out, |spool, writer| {
        build_delta(
            io::BufReader::with_capacity(1 << 20, source),
            io::BufReader::with_capacity(1 << 20, target),
            spool,
            writer,
            keys,
            opts,
        )
        .map_err(|e| match e {
            BuildError::Io {
                action: "reading source image",
                path,
                error,
            } if path.as_os_str().is_empty() => BuildError::Io {
                action: "reading source image",
                path: from.to_owned(),
                error,
            },
            other => with_paths(other, to, out),
        })
    })
}

/// Builds a delta payload from in-memory images (for tests and small files).
pub fn build_delta_to_vec(
    from: &[u8],
    to: &[u8],
    keys: &[SigningKey],
    opts: &DeltaOptions,
) -> Result<(Vec<u8>, DeltaReport), BuildError> {
    let mut spool = io::Cursor::new(Vec::new());
    let mut out = Vec::new();
    let report = build_delta(from, to, &mut spool, &mut out, keys, opts)?;
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn opts() -> DeltaOptions {
        let mut b = BuildOptions::new("app", "2", "x86_64", 1);
        b.threads = 2;
        DeltaOptions::new(b, "1")
    }

    #[test]
    fn unchanged_moved_zero_and_new_blocks() {
        let a = bytes(11, 4096);
        let b = bytes(21, 4096);
        let c = bytes(31, 4096);
        let z = vec![0u8; 4096];
        let source = [a.clone(), b.clone(), c.clone(), z.clone()].concat();
        // a unchanged, c moved forward, a zero block, a new block, b, and a short tail.
        let new = bytes(41, 4096);
        let target = [a.clone(), c.clone(), z, new, b.clone(), b[..100].to_vec()].concat();
        let key = SigningKey::from_bytes(&[1; 32]);
        let (_, report) = build_delta_to_vec(&source, &target, &[key], &opts()).unwrap();
        let m = &report.manifest;
        let kinds: Vec<_> = m
            .operations
            .iter()
            .map(|op| {
                if op.kind.has_data() {
                    "data"
                } else {
                    op.kind.name()
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "SOURCE_COPY",
                "SOURCE_COPY",
                "ZERO",
                "data",
                "SOURCE_COPY",
                "data"
            ]
        );
        // a then c do not coalesce: they are not adjacent in the source (blocks 0 and 2).
        let copies: Vec<_> = m
            .operations
            .iter()
            .filter(|op| op.kind == OpKind::SourceCopy)
            .map(|op| (op.dst_offset, op.dst_len, op.src_offset))
            .collect();
        assert_eq!(
            copies,
            [(0, 4096, 0), (4096, 4096, 8192), (16384, 4096, 4096)]
        );
        let source_info = m.source.as_ref().unwrap();
        assert_eq!(source_info.size, source.len() as u64);
        assert_eq!(source_info.sha256, Sha256Digest::of(&source));
        assert_eq!(m.target_sha256, Sha256Digest::of(&target));
    }
}
