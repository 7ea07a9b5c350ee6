//! Where applied operations go: a real [`Target`], or a running hash when a payload is only
//! verified (the target is reconstructed in order and hashed, never stored).
//!
//! For a real target the final check re-reads the target from the file. To keep it off the
//! critical path, a background thread re-reads and hashes each region as soon as the operation
//! that wrote it has returned (operations are in target order and never overlap, so a region is
//! final once written); `finish` waits for it to reach the end. After a resume it starts again
//! from offset 0, so the whole target is always re-read.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::target::{Target, zeros};

/// Read-back buffer size for the final target check.
const REREAD_CHUNK: usize = 1 << 20;

/// A failed re-read: the target offset and the error.
pub(crate) type RereadError = (u64, io::Error);

/// Destination of the operations.
pub(crate) enum Sink {
    /// Write into a target range; `reread` hashes what has been written, in the background.
    Target {
        /// The target range.
        target: Target,
        /// The background re-reader, once started.
        reread: Option<Reread>,
    },
    /// Hash the reconstructed target bytes (operations arrive in target order).
    Hash(Sha256),
    /// Verify a delta without its source: the target cannot be reconstructed, so nothing is kept.
    Discard,
}

impl Sink {
    /// A sink writing into `target`.
    pub(crate) fn target(target: Target) -> Self {
        Sink::Target {
            target,
            reread: None,
        }
    }

    /// Starts the background re-read of the first `size` bytes, `done` of which are written.
    pub(crate) fn start(&mut self, size: u64, done: u64) {
        if let Sink::Target { target, reread } = self {
            *reread = Reread::spawn(target, size);
            self.advance(done);
        }
    }

    /// Tells the re-reader that the target is final up to `end`.
    pub(crate) fn advance(&self, end: u64) {
        if let Sink::Target {
            reread: Some(r), ..
        } = self
        {
            r.advance(end);
        }
    }

    /// Whether this sink hashes (a verifier).
    pub(crate) fn is_hash(&self) -> bool {
        matches!(self, Sink::Hash(_))
    }

    /// Whether this sink discards (a verifier of a delta without its source).
    pub(crate) fn is_discard(&self) -> bool {
        matches!(self, Sink::Discard)
    }

    /// Writes `data` at `offset`.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Target { target, .. } => target.write_at(offset, data),
            Sink::Hash(h) => {
                h.update(data);
                Ok(())
            }
            Sink::Discard => Ok(()),
        }
    }

    /// Writes `len` zero bytes at `offset`.
    pub(crate) fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            Sink::Target { target, .. } => target.write_zeros(offset, len),
            Sink::Hash(h) => {
                let z = zeros();
                let mut left = len;
                while left > 0 {
                    let n = left.min(z.len() as u64);
                    h.update(&z[..n as usize]);
                    left -= n;
                }
                Ok(())
            }
            Sink::Discard => Ok(()),
        }
    }

    /// Writable capacity, or `None` when unlimited.
    pub(crate) fn capacity(&self) -> io::Result<Option<u64>> {
        match self {
            Sink::Target { target, .. } => target.capacity().map(Some),
            Sink::Hash(_) | Sink::Discard => Ok(None),
        }
    }

    /// The target's `(base, len)`, or `None` when hashing only.
    pub(crate) fn range(&self) -> Option<(u64, u64)> {
        match self {
            Sink::Target { target, .. } => Some((target.base(), target.len())),
            Sink::Hash(_) | Sink::Discard => None,
        }
    }

    /// Flushes a target to its device.
    pub(crate) fn sync(&self) -> io::Result<()> {
        match self {
            Sink::Target { target, .. } => target.sync(),
            Sink::Hash(_) | Sink::Discard => Ok(()),
        }
    }

    /// SHA-256 of the first `size` target bytes, as re-read from the target (after an optional
    /// sync), or the running hash; `None` when discarding. Every operation must have been written.
    pub(crate) fn final_digest(
        self,
        size: u64,
        sync: bool,
    ) -> Result<Option<Sha256Digest>, RereadError> {
        match self {
            Sink::Discard => Ok(None),
            Sink::Hash(h) => Ok(Some(Sha256Digest(h.finalize().into()))),
            Sink::Target { target, reread } => {
                if sync {
                    target.sync().map_err(|e| (0, e))?;
                }
                match reread {
                    Some(r) => r.finish(),
                    None => hash_range(&target, size, &AtomicBool::new(false), |_| size),
                }
                .map(Some)
            }
        }
    }
}

/// Hashes `[0, size)` of `target`, reading only below the limit `limit(hashed)` returns (which may
/// block until more is written).
fn hash_range(
    target: &Target,
    size: u64,
    cancel: &AtomicBool,
    mut limit: impl FnMut(u64) -> u64,
) -> Result<Sha256Digest, RereadError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; REREAD_CHUNK];
    let mut hashed = 0u64;
    while hashed < size {
        if cancel.load(Ordering::Relaxed) {
            return Err((hashed, io::Error::other("target re-read cancelled")));
        }
        let end = limit(hashed).min(size);
        if end <= hashed {
            return Err((
                hashed,
                io::Error::other("target re-read stopped before the end of the target"),
            ));
        }
        let n = (end - hashed).min(REREAD_CHUNK as u64) as usize;
        target
            .read_at(hashed, &mut buf[..n])
            .map_err(|e| (hashed, e))?;
        hasher.update(&buf[..n]);
        hashed += n as u64;
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// The background re-reader: a thread hashing the target up to the written watermark.
pub(crate) struct Reread {
    tx: Option<mpsc::Sender<u64>>,
    cancel: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Result<Sha256Digest, RereadError>>>,
}

impl Reread {
    /// Spawns the thread; `None` if the target cannot be cloned or no thread can be started
    /// (the final check then re-reads synchronously).
    fn spawn(target: &Target, size: u64) -> Option<Self> {
        let target = target.try_clone().ok()?;
        let (tx, rx) = mpsc::channel::<u64>();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let handle = thread::Builder::new()
            .name("payload-reread".to_owned())
            .spawn(move || {
                let mut watermark = 0u64;
                hash_range(&target, size, &flag, |hashed| {
                    // Take every watermark already sent; block only when nothing new is readable.
                    while let Ok(w) = rx.try_recv() {
                        watermark = watermark.max(w);
                    }
                    while watermark <= hashed {
                        match rx.recv() {
                            Ok(w) => watermark = watermark.max(w),
                            Err(_) => break,
                        }
                    }
                    watermark
                })
            })
            .ok()?;
        Some(Self {
            tx: Some(tx),
            cancel,
            handle: Some(handle),
        })
    }

    fn advance(&self, end: u64) {
        if let Some(tx) = &self.tx {
            // A send error means the thread has stopped; `finish` reports why.
            let _ = tx.send(end);
        }
    }

    /// Waits for the thread to hash the whole target.
    fn finish(mut self) -> Result<Sha256Digest, RereadError> {
        self.tx = None;
        match self.handle.take().map(thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err((0, io::Error::other("target re-read thread failed"))),
        }
    }
}

impl Drop for Reread {
    fn drop(&mut self) {
        // An abandoned apply: stop the thread at its next chunk and wait for it, so no thread
        // outlives the applier.
        self.cancel.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
