//! The streaming applier: a push-style state machine that is fed payload bytes in chunks of any
//! size, verifies header, manifest and signatures before anything is written, checks each
//! operation's SHA-256 before writing it, and finally re-reads the target and checks its SHA-256.
//! It does no network I/O; the caller owns the transport, the clock and checkpoint persistence.
//!
//! A delta payload's SOURCE_COPY operations read from a read-only [`Source`]: each extent is read,
//! hashed and compared with its signed SHA-256 right before it is written, so a wrong or modified
//! source fails with [`ApplyError::Source`] and nothing derived from it reaches the target.
//!
//! The work is pipelined over threads: the caller's thread (in [`Applier::feed`]) buffers an
//! operation's data, checks its digest, decompresses it or reads and checks its source extent;
//! a writer thread writes the checked bytes into the target (the private `writer` module); a
//! re-read thread hashes the written target for the final check (the private `sink` module). So
//! checking operation *n + 1* overlaps with writing operation *n*. Only checked bytes are handed
//! to the writer, and [`Applier::checkpoint`], [`Applier::sync`] and [`Applier::finish`] first
//! wait for it to write everything handed over, so a checkpoint claims only written operations.
//! [`Applier::inline_writes`] writes on the caller's thread instead.
//!
//! Memory is bounded independently of the image size: the prefix (≤ 1 MiB + signatures), one
//! operation's data (≤ 4 MiB), the operations in flight to the writer (at most two buffers of
//! one operation's target bytes each, ≤ 4 MiB), and the re-read buffer (1 MiB).

mod checkpoint;
mod error;
mod sink;
mod writer;

use std::io::{self, Read};

pub use checkpoint::{CHECKPOINT_VERSION, Checkpoint};
pub use error::{ApplyError, ErrorClass, SourceError};

use sink::Sink;
use writer::{Body, Job, Position, Writer};

use crate::digest::Sha256Digest;
use crate::format::{Kind, Manifest, OpKind, Operation, Prefix, prefix_len_needed};
use crate::keys::TrustStore;
use crate::source::Source;
use crate::target::Target;
use crate::verify::PayloadInfo;

/// Size of the reads done by [`apply_from_reader`] and [`verify_payload`].
const READ_CHUNK: usize = 1 << 20;

/// Manifest values the caller requires; a mismatch is refused before anything is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    /// Required application id.
    pub app_id: Option<String>,
    /// Required version.
    pub version: Option<String>,
    /// Required kind.
    pub kind: Option<Kind>,
    /// Required architecture.
    pub arch: Option<String>,
    /// Required board.
    pub board: Option<String>,
    /// The version the source runs: a delta payload must have been built from it (else
    /// [`SourceError::VersionMismatch`]). Ignored for full payloads.
    pub source_version: Option<String>,
}

impl Expectations {
    /// Checks `manifest` against every expectation that is set.
    pub fn check(&self, manifest: &Manifest) -> Result<(), ApplyError> {
        let fields: [(&'static str, Option<&str>, &str); 5] = [
            ("app id", self.app_id.as_deref(), &manifest.app_id),
            ("version", self.version.as_deref(), &manifest.version),
            ("kind", self.kind.map(Kind::as_str), manifest.kind.as_str()),
            ("arch", self.arch.as_deref(), &manifest.arch),
            ("board", self.board.as_deref(), &manifest.board),
        ];
        for (field, expected, found) in fields {
            if let Some(expected) = expected.filter(|&e| e != found) {
                return Err(ApplyError::Mismatch {
                    field,
                    expected: expected.to_owned(),
                    found: found.to_owned(),
                });
            }
        }
        if let (Some(expected), Some(source)) = (&self.source_version, &manifest.source)
            && *expected != source.version
        {
            return Err(SourceError::VersionMismatch {
                expected: expected.clone(),
                found: source.version.clone(),
            }
            .into());
        }
        Ok(())
    }
}

/// How to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Current time in Unix seconds, for the expiry check (injected, never read from the clock here).
    pub now: u64,
    /// Manifest values the caller requires.
    pub expect: Expectations,
    /// Whether [`Applier::finish`] syncs the target to its device before re-reading it.
    pub sync: bool,
}

impl ApplyOptions {
    /// Options with the given time, no expectations, and syncing enabled.
    pub fn new(now: u64) -> Self {
        Self {
            now,
            expect: Expectations::default(),
            sync: true,
        }
    }
}

/// Where an apply stands after a [`Applier::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Payload bytes consumed so far (the payload offset of the next byte to feed).
    pub received: u64,
    /// Total payload length, once the prefix has been verified.
    pub payload_len: Option<u64>,
    /// Operations checked and handed to the writer (the last of them may still be being written:
    /// [`Applier::checkpoint`] and [`Applier::sync`] wait for them).
    pub operations_done: u64,
    /// Number of operations, once the prefix has been verified.
    pub operations_total: Option<u64>,
    /// Target bytes of those operations.
    pub target_bytes_done: u64,
}

impl Progress {
    /// Whether header, manifest and signatures have been verified.
    pub fn is_verified(&self) -> bool {
        self.payload_len.is_some()
    }

    /// Whether every operation has been checked and handed to the writer; [`Applier::finish`]
    /// remains (it waits for the writer).
    pub fn is_complete(&self) -> bool {
        self.operations_total == Some(self.operations_done)
    }
}

/// The result of a successful apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The verified payload.
    pub info: PayloadInfo,
    /// SHA-256 of the target as re-read (equal to the manifest's).
    pub target_sha256: Sha256Digest,
}

/// The streaming applier. See the module documentation.
pub struct Applier {
    trust: TrustStore,
    opts: ApplyOptions,
    /// Where operations go, until the prefix is verified; then it moves into the writer.
    sink: Option<Sink>,
    /// The target's `(base, len)`, or `None` when only verifying.
    target_range: Option<(u64, u64)>,
    /// Write on the caller's thread instead of a writer thread.
    inline_writes: bool,
    /// Where a delta's SOURCE_COPY operations read from.
    source: Option<Source>,
    stage: Stage,
    received: u64,
    stopped: bool,
}

enum Stage {
    /// Collecting header, manifest and signatures.
    Prefix(Vec<u8>),
    /// Verified; applying operations.
    Data(Box<DataState>),
}

struct DataState {
    info: PayloadInfo,
    /// Index of the first operation not yet checked and handed to the writer.
    next_op: usize,
    /// Payload offset of that operation's data.
    op_data_offset: u64,
    /// Target bytes of the operations before `next_op`.
    target_done: u64,
    /// Partial data of `next_op`.
    buf: Vec<u8>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    /// Writes the checked operations, in order.
    writer: Writer,
    /// A verifier of a delta without its source: nothing is reconstructed.
    discard: bool,
}

impl Applier {
    /// An applier that writes into `target` once the payload it is fed has been verified against
    /// `trust` (copied: trust stores are small). It applies full payloads; a delta payload is
    /// refused with [`SourceError::Required`] (use [`Applier::with_source`]).
    pub fn new(trust: &TrustStore, target: Target, opts: ApplyOptions) -> Self {
        Self::with_sink(trust, Sink::target(target), None, opts)
    }

    /// An applier that writes into `target` and reads a delta payload's SOURCE_COPY extents from
    /// `source` (opened read-only, never written). Full payloads are applied as by
    /// [`Applier::new`] (the source is then unused).
    pub fn with_source(
        trust: &TrustStore,
        target: Target,
        source: Source,
        opts: ApplyOptions,
    ) -> Self {
        Self::with_sink(trust, Sink::target(target), Some(source), opts)
    }

    /// An applier that writes nothing: it reconstructs the target in memory order, hashes it and
    /// checks the result, so a payload can be fully verified without a target. A delta payload
    /// has no source here: its data operations are checked (digest, decompression) but the
    /// target cannot be reconstructed, so its digest is not checked (use
    /// [`Applier::verifier_with_source`] for that).
    pub fn verifier(trust: &TrustStore, opts: ApplyOptions) -> Self {
        Self::with_sink(trust, Sink::Hash(Default::default()), None, opts)
    }

    /// A verifier (see [`Applier::verifier`]) that reconstructs a delta's target from `source`, so
    /// every source extent and the target digest are checked too.
    pub fn verifier_with_source(trust: &TrustStore, source: Source, opts: ApplyOptions) -> Self {
        Self::with_sink(trust, Sink::Hash(Default::default()), Some(source), opts)
    }

    fn with_sink(
        trust: &TrustStore,
        sink: Sink,
        source: Option<Source>,
        opts: ApplyOptions,
    ) -> Self {
        Self {
            trust: trust.clone(),
            opts,
            target_range: sink.range(),
            sink: Some(sink),
            inline_writes: false,
            source,
            stage: Stage::Prefix(Vec::new()),
            received: 0,
            stopped: false,
        }
    }

    /// Writes on the thread that calls [`feed`](Self::feed) instead of a writer thread, so
    /// checking and writing do not overlap: how the applier worked before it had a writer thread,
    /// kept to measure against (the `apply_1gib` bench). The final check's re-read still runs in
    /// the background. Call it before the first `feed` (the writer thread starts there).
    pub fn inline_writes(mut self) -> Self {
        self.inline_writes = true;
        self
    }

    /// Enters the data stage at operation `next_op`: starts the final check's re-read, and a
    /// writer on the caller's thread (it moves to its own thread at the first
    /// [`feed`](Self::feed), unless [`inline_writes`](Self::inline_writes)).
    fn start_data(
        &mut self,
        info: PayloadInfo,
        next_op: usize,
        op_data_offset: u64,
        target_done: u64,
    ) {
        let mut sink = self.sink.take().unwrap_or(Sink::Discard);
        sink.start(info.manifest.target_size, target_done);
        let discard = sink.is_discard();
        let at = Position {
            next_op,
            payload_offset: op_data_offset,
            target_done,
        };
        let writer = Writer::inline(sink, at);
        self.stage = Stage::Data(Box::new(DataState {
            info,
            next_op,
            op_data_offset,
            target_done,
            buf: Vec::new(),
            decompressor: None,
            writer,
            discard,
        }));
    }

    /// Continues an apply from `checkpoint`. `prefix` must be the payload's first
    /// `checkpoint.prefix_len` bytes; it is decoded and verified again (trust, expiry,
    /// expectations, target size) and must be the payload the checkpoint was taken from. Then feed
    /// the payload from `checkpoint.payload_offset` on.
    pub fn resume(
        trust: &TrustStore,
        target: Target,
        checkpoint: &Checkpoint,
        prefix: &[u8],
        opts: ApplyOptions,
    ) -> Result<Self, ApplyError> {
        Self::resume_inner(trust, target, None, checkpoint, prefix, opts)
    }

    /// [`Applier::resume`] for a delta payload: SOURCE_COPY operations read from `source`. The
    /// source need not be the same handle as before the interruption, but every extent read is
    /// checked against its signed SHA-256 as always.
    pub fn resume_with_source(
        trust: &TrustStore,
        target: Target,
        source: Source,
        checkpoint: &Checkpoint,
        prefix: &[u8],
        opts: ApplyOptions,
    ) -> Result<Self, ApplyError> {
        Self::resume_inner(trust, target, Some(source), checkpoint, prefix, opts)
    }

    fn resume_inner(
        trust: &TrustStore,
        target: Target,
        source: Option<Source>,
        checkpoint: &Checkpoint,
        prefix: &[u8],
        opts: ApplyOptions,
    ) -> Result<Self, ApplyError> {
        let bad = |reason: String| ApplyError::InvalidCheckpoint { reason };
        if checkpoint.version != CHECKPOINT_VERSION {
            return Err(bad(format!(
                "checkpoint version {} is not {CHECKPOINT_VERSION}",
                checkpoint.version
            )));
        }
        if prefix.len() as u64 != checkpoint.prefix_len {
            return Err(bad(format!(
                "{} prefix bytes supplied, the checkpoint needs exactly {}",
                prefix.len(),
                checkpoint.prefix_len
            )));
        }
        if (target.base(), target.len()) != (checkpoint.target_base, checkpoint.target_len) {
            return Err(bad(format!(
                "target range {}+{} differs from the checkpoint's {}+{}",
                target.base(),
                target.len(),
                checkpoint.target_base,
                checkpoint.target_len
            )));
        }
        let mut applier = Self::with_sink(trust, Sink::target(target), source, opts);
        let info = applier.admit(prefix)?;
        if info.signed_sha256 != checkpoint.signed_sha256 {
            return Err(bad(
                "the checkpoint belongs to another payload (header and manifest digest differ)"
                    .to_owned(),
            ));
        }
        let ops = &info.manifest.operations;
        let next_op = usize::try_from(checkpoint.next_operation)
            .ok()
            .filter(|&n| n <= ops.len())
            .ok_or_else(|| {
                bad(format!(
                    "next operation {} is beyond the payload's {} operations",
                    checkpoint.next_operation,
                    ops.len()
                ))
            })?;
        let done = &ops[..next_op];
        let offset = info.prefix_len + done.iter().map(|op| op.data_len).sum::<u64>();
        if offset != checkpoint.payload_offset {
            return Err(bad(format!(
                "payload offset {} does not match operation {next_op}, whose data starts at {offset}",
                checkpoint.payload_offset
            )));
        }
        let target_done = done.iter().map(|op| op.dst_len).sum();
        applier.start_data(info, next_op, offset, target_done);
        applier.received = offset;
        Ok(applier)
    }

    /// Decodes and verifies a complete prefix, and checks expectations, the source of a delta and
    /// target capacity.
    fn admit(&mut self, prefix: &[u8]) -> Result<PayloadInfo, ApplyError> {
        let prefix = Prefix::decode(prefix)?;
        let info = prefix.verify(&self.trust, self.opts.now)?;
        self.opts.expect.check(&info.manifest)?;
        let Some(sink) = &mut self.sink else {
            // Unreachable: the sink moves to the writer only after this check.
            return Err(ApplyError::Stopped);
        };
        if let Some(delta) = &info.manifest.source {
            match &self.source {
                Some(source) if source.len() < delta.size => {
                    return Err(SourceError::TooSmall {
                        needed: delta.size,
                        available: source.len(),
                    }
                    .into());
                }
                Some(_) => {}
                // Verifying a delta without its source: check what can be checked.
                None if sink.is_hash() => *sink = Sink::Discard,
                None => {
                    return Err(SourceError::Required {
                        version: delta.version.clone(),
                    }
                    .into());
                }
            }
        }
        let capacity = sink.capacity().map_err(|error| ApplyError::Io {
            action: "checking target size",
            offset: 0,
            error,
        })?;
        if let Some(available) = capacity.filter(|&a| a < info.manifest.target_size) {
            return Err(ApplyError::TargetTooSmall {
                needed: info.manifest.target_size,
                available,
            });
        }
        Ok(info)
    }

    /// Consumes the next bytes of the payload. Once the prefix is complete it is verified; then
    /// every operation whose data is complete is checked and written. After an error the applier
    /// refuses further input ([`ApplyError::Stopped`]); its [`checkpoint`](Self::checkpoint)
    /// stays valid.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Progress, ApplyError> {
        if self.stopped {
            return Err(ApplyError::Stopped);
        }
        match self.feed_inner(chunk) {
            Ok(()) => Ok(self.progress()),
            Err(e) => {
                self.stopped = true;
                self.drain();
                Err(e)
            }
        }
    }

    /// Waits until the writer has written every operation handed to it (after an error: so what
    /// was checked before it is in the target, and the checkpoint says so).
    fn drain(&self) {
        if let Stage::Data(s) = &self.stage {
            s.writer.drain();
        }
    }

    fn feed_inner(&mut self, mut chunk: &[u8]) -> Result<(), ApplyError> {
        if let Stage::Prefix(buf) = &mut self.stage {
            loop {
                let needed = prefix_len_needed(buf)?;
                if buf.len() == needed {
                    break;
                }
                if chunk.is_empty() {
                    return Ok(());
                }
                let take = (needed - buf.len()).min(chunk.len());
                buf.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                self.received += take as u64;
            }
            let prefix = std::mem::take(buf);
            let info = self.admit(&prefix)?;
            let start = info.prefix_len;
            self.start_data(info, 0, start, 0);
        }
        match &mut self.stage {
            Stage::Data(state) => {
                // A write error of an earlier operation surfaces here.
                state.writer.check()?;
                if !self.inline_writes && !state.discard {
                    state.writer.move_to_thread();
                }
                state.consume(self.source.as_ref(), chunk, &mut self.received)
            }
            Stage::Prefix(_) => Ok(()),
        }
    }

    /// Current progress.
    pub fn progress(&self) -> Progress {
        match &self.stage {
            Stage::Prefix(_) => Progress {
                received: self.received,
                payload_len: None,
                operations_done: 0,
                operations_total: None,
                target_bytes_done: 0,
            },
            Stage::Data(s) => Progress {
                received: self.received,
                payload_len: Some(s.info.payload_len()),
                operations_done: s.next_op as u64,
                operations_total: Some(s.info.manifest.operations.len() as u64),
                target_bytes_done: s.target_done,
            },
        }
    }

    /// The verified payload, once the prefix has been verified.
    pub fn info(&self) -> Option<&PayloadInfo> {
        match &self.stage {
            Stage::Data(s) => Some(&s.info),
            Stage::Prefix(_) => None,
        }
    }

    /// A checkpoint of the operations written so far, once the prefix has been verified (and only
    /// when writing to a target). It first waits for the writer to write every operation fed so
    /// far (after a write error: it claims only those before it). Call [`sync`](Self::sync) before
    /// persisting it if it must survive a power loss; the final hash check catches lost writes in
    /// any case.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let Stage::Data(s) = &self.stage else {
            return None;
        };
        let (target_base, target_len) = self.target_range?;
        let written = s.writer.drain();
        Some(Checkpoint {
            version: CHECKPOINT_VERSION,
            signed_sha256: s.info.signed_sha256,
            prefix_len: s.info.prefix_len,
            next_operation: written.next_op as u64,
            payload_offset: written.payload_offset,
            target_base,
            target_len,
        })
    }

    /// Waits for the writer to write every operation fed so far, then flushes the target's
    /// written data to its device. A write error not reported yet is reported here.
    pub fn sync(&self) -> Result<(), ApplyError> {
        match (&self.stage, &self.sink) {
            (Stage::Data(s), _) => s.writer.sync(),
            (Stage::Prefix(_), Some(sink)) => sink.sync().map_err(|error| ApplyError::Io {
                action: "syncing target",
                offset: 0,
                error,
            }),
            (Stage::Prefix(_), None) => Ok(()),
        }
    }

    /// Completes the apply: every operation must have been written and nothing may be left over;
    /// then the target is synced (if [`ApplyOptions::sync`]) and re-read, and its SHA-256 must
    /// equal the manifest's. (A delta verified without its source cannot be reconstructed; its
    /// result carries the manifest's target digest.)
    pub fn finish(self) -> Result<Applied, ApplyError> {
        if self.stopped {
            return Err(ApplyError::Stopped);
        }
        let Stage::Data(mut s) = self.stage else {
            return Err(ApplyError::Truncated {
                received: self.received,
                expected: None,
            });
        };
        if let Err(e) = s.run_dataless_ops(self.source.as_ref()) {
            s.writer.drain();
            return Err(e);
        }
        // Waits for every write; a write error surfaces here.
        let sink = s.writer.finish()?;
        if s.next_op < s.info.manifest.operations.len() {
            return Err(ApplyError::Truncated {
                received: self.received,
                expected: Some(s.info.payload_len()),
            });
        }
        let expected = s.info.manifest.target_sha256;
        let found = sink
            .final_digest(s.info.manifest.target_size, self.opts.sync)
            .map_err(|(offset, error)| ApplyError::Io {
                action: "re-reading target",
                offset,
                error,
            })?
            .unwrap_or(expected);
        if found != expected {
            return Err(ApplyError::TargetHashMismatch { expected, found });
        }
        Ok(Applied {
            info: s.info,
            target_sha256: found,
        })
    }
}

impl DataState {
    /// Applies operations as their data completes.
    fn consume(
        &mut self,
        source: Option<&Source>,
        mut chunk: &[u8],
        received: &mut u64,
    ) -> Result<(), ApplyError> {
        loop {
            self.run_dataless_ops(source)?;
            let Some(op) = self.info.manifest.operations.get(self.next_op).copied() else {
                if chunk.is_empty() {
                    return Ok(());
                }
                return Err(ApplyError::DataAfterEnd {
                    offset: *received,
                    payload_len: self.info.payload_len(),
                });
            };
            if chunk.is_empty() {
                return Ok(());
            }
            // data_len ≤ MAX_DATA_OPERATION_LEN (4 MiB), checked by the manifest decoder.
            let data_len = op.data_len as usize;
            let need = data_len - self.buf.len();
            if self.buf.is_empty() && chunk.len() >= need {
                let (data, rest) = chunk.split_at(need);
                *received += need as u64;
                chunk = rest;
                self.apply_op(source, &op, Input::Chunk(data))?;
            } else {
                let take = need.min(chunk.len());
                if self.buf.is_empty() {
                    self.buf.reserve_exact(data_len);
                }
                self.buf.extend_from_slice(&chunk[..take]);
                *received += take as u64;
                chunk = &chunk[take..];
                if self.buf.len() == data_len {
                    let result = self.apply_op(source, &op, Input::Buffered);
                    self.buf.clear();
                    result?;
                }
            }
        }
    }

    /// Applies the ZERO and SOURCE_COPY operations at the current position (they need no data).
    fn run_dataless_ops(&mut self, source: Option<&Source>) -> Result<(), ApplyError> {
        while let Some(op) = self.info.manifest.operations.get(self.next_op).copied() {
            if op.kind.has_data() {
                break;
            }
            self.apply_op(source, &op, Input::Chunk(&[]))?;
        }
        Ok(())
    }

    /// Checks an operation's input (payload data, or source extent) against its digest, then
    /// hands its target bytes to the writer.
    fn apply_op(
        &mut self,
        source: Option<&Source>,
        op: &Operation,
        input: Input<'_>,
    ) -> Result<(), ApplyError> {
        let index = self.next_op;
        let body = match op.kind {
            OpKind::Zero => Body::Zeros,
            OpKind::SourceCopy => match source {
                Some(source) => {
                    let mut out = self.writer.buffer()?;
                    match read_source(index, source, op, &mut out) {
                        Ok(()) => Body::Bytes(out),
                        Err(e) => {
                            self.writer.recycle(out);
                            return Err(e);
                        }
                    }
                }
                // A verifier without the source: nothing to reconstruct (checked in `admit`).
                None if self.discard => Body::Nothing,
                None => {
                    return Err(SourceError::Required {
                        version: self
                            .info
                            .manifest
                            .source
                            .as_ref()
                            .map_or_else(String::new, |s| s.version.clone()),
                    }
                    .into());
                }
            },
            OpKind::Replace | OpKind::ReplaceZstd => {
                let data = match input {
                    Input::Chunk(data) => data,
                    Input::Buffered => self.buf.as_slice(),
                };
                let found = Sha256Digest::of(data);
                if found != op.data_sha256 {
                    return Err(ApplyError::DataHashMismatch {
                        index,
                        payload_offset: self.op_data_offset,
                        expected: op.data_sha256,
                        found,
                    });
                }
                let mut out = self.writer.buffer()?;
                match (op.kind, input) {
                    // The buffered data are the target bytes: hand that buffer over, and keep
                    // the empty one for the next operation's data.
                    (OpKind::Replace, Input::Buffered) => std::mem::swap(&mut out, &mut self.buf),
                    (OpKind::Replace, Input::Chunk(data)) => {
                        out.clear();
                        out.extend_from_slice(data);
                    }
                    _ => {
                        let decompressed = decompress(
                            &mut self.decompressor,
                            index,
                            data,
                            &mut out,
                            op.dst_len as usize,
                        );
                        if let Err(e) = decompressed {
                            self.writer.recycle(out);
                            return Err(e);
                        }
                    }
                }
                Body::Bytes(out)
            }
        };
        let after = Position {
            next_op: index + 1,
            payload_offset: self.op_data_offset + op.data_len,
            target_done: self.target_done + op.dst_len,
        };
        self.writer.submit(Job {
            dst_offset: op.dst_offset,
            dst_len: op.dst_len,
            body,
            after,
        })?;
        self.next_op = after.next_op;
        self.op_data_offset = after.payload_offset;
        self.target_done = after.target_done;
        Ok(())
    }
}

/// Where an operation's data is.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// In the chunk being fed (empty for operations without data).
    Chunk(&'a [u8]),
    /// In [`DataState::buf`].
    Buffered,
}

/// Reads a SOURCE_COPY extent into the first `dst_len` bytes of `out` and checks it against its
/// signed digest.
fn read_source(
    index: usize,
    source: &Source,
    op: &Operation,
    out: &mut Vec<u8>,
) -> Result<(), ApplyError> {
    // dst_len ≤ MAX_COPY_OPERATION_LEN (4 MiB), checked by the manifest decoder.
    let len = op.dst_len as usize;
    if out.len() < len {
        out.resize(len, 0);
    }
    let buf = &mut out[..len];
    source
        .read_at(op.src_offset, buf)
        .map_err(|error| SourceError::Read {
            offset: op.src_offset,
            error,
        })?;
    let found = Sha256Digest::of(buf);
    if found != op.src_sha256 {
        return Err(SourceError::ExtentMismatch {
            index,
            src_offset: op.src_offset,
            len: op.dst_len,
            expected: op.src_sha256,
            found,
        }
        .into());
    }
    Ok(())
}

/// Decompresses one zstd operation into exactly the first `dst_len` bytes of `out`.
fn decompress(
    decompressor: &mut Option<zstd::bulk::Decompressor<'static>>,
    index: usize,
    data: &[u8],
    out: &mut Vec<u8>,
    dst_len: usize,
) -> Result<(), ApplyError> {
    let fail = |reason: String| ApplyError::Decompress { index, reason };
    let decompressor = match decompressor {
        Some(d) => d,
        slot => slot.insert(zstd::bulk::Decompressor::new().map_err(|e| fail(e.to_string()))?),
    };
    // Grown once to the largest operation; not cleared between operations (every byte used is
    // overwritten, and the length is checked below).
    if out.len() < dst_len {
        out.resize(dst_len, 0);
    }
    let n = decompressor
        .decompress_to_buffer(data, &mut out[..dst_len])
        .map_err(|e| fail(e.to_string()))?;
    if n != dst_len {
        return Err(fail(format!("produced {n} bytes, expected {dst_len}")));
    }
    Ok(())
}

/// Feeds everything `reader` yields into `applier`, in 1 MiB reads.
fn drive(applier: &mut Applier, mut reader: impl Read) -> Result<(), ApplyError> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(ApplyError::Io {
                    action: "reading payload",
                    offset: applier.received,
                    error,
                });
            }
        };
        applier.feed(&buf[..n])?;
    }
}

/// Applies the whole payload from `reader` into `target` and finishes (final hash check).
pub fn apply_from_reader(
    reader: impl Read,
    trust: &TrustStore,
    target: Target,
    opts: ApplyOptions,
) -> Result<Applied, ApplyError> {
    let mut applier = Applier::new(trust, target, opts);
    drive(&mut applier, reader)?;
    applier.finish()
}

/// [`apply_from_reader`] for a payload that may be a delta: SOURCE_COPY operations read from
/// `source` (read-only).
pub fn apply_from_reader_with_source(
    reader: impl Read,
    trust: &TrustStore,
    target: Target,
    source: Source,
    opts: ApplyOptions,
) -> Result<Applied, ApplyError> {
    let mut applier = Applier::with_source(trust, target, source, opts);
    drive(&mut applier, reader)?;
    applier.finish()
}

/// Fully verifies a payload without writing anything: prefix, signatures, expiry, expectations,
/// every operation's data, nothing after the end, and the SHA-256 of the target it produces.
/// For a delta payload everything but the source extents and the target digest is checked (there
/// is no source here); [`verify_payload_with_source`] checks those too.
pub fn verify_payload(
    reader: impl Read,
    trust: &TrustStore,
    opts: ApplyOptions,
) -> Result<PayloadInfo, ApplyError> {
    let mut applier = Applier::verifier(trust, opts);
    drive(&mut applier, reader)?;
    applier.finish().map(|applied| applied.info)
}

/// [`verify_payload`] that reconstructs a delta's target from `source`: every source extent and
/// the target digest are checked as well.
pub fn verify_payload_with_source(
    reader: impl Read,
    trust: &TrustStore,
    source: Source,
    opts: ApplyOptions,
) -> Result<PayloadInfo, ApplyError> {
    let mut applier = Applier::verifier_with_source(trust, source, opts);
    drive(&mut applier, reader)?;
    applier.finish().map(|applied| applied.info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent drives the applier from a blocking task of an async runtime (and shares it by
    /// reference for checkpoints).
    #[test]
    fn applier_and_checkpoint_are_send() {
        fn assert_send<T: Send + 'static>() {}
        fn assert_sync<T: Sync>() {}
        assert_send::<Applier>();
        assert_sync::<Applier>();
        assert_send::<Checkpoint>();
        assert_send::<ApplyError>();
    }
}
