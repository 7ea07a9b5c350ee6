//! The write stage of the applier: operations that have been checked (data digest, decompression,
//! source extent digest) are handed to a [`Writer`], which puts them into the [`Sink`] in order.
//!
//! By default the writer runs on its own thread, so checking and decompressing operation *n + 1*
//! on the caller's thread overlaps with writing operation *n*. Memory stays bounded: the bytes of
//! an operation travel in one of at most [`WRITE_BUFFERS`] buffers (≤ 4 MiB each, the largest
//! operation), which the writer hands back once written; a caller that runs ahead waits for one.
//! Only checked bytes ever reach the writer, so the stage adds no way for unverified bytes to be
//! written.
//!
//! The writer records how far it has written (operation index, payload offset, target bytes),
//! which is what a checkpoint may claim; [`Writer::drain`] waits until everything submitted has
//! been written. A write error stops the writer (later jobs are dropped unwritten) and is kept
//! until the applier asks for it. Dropping a threaded writer stops the thread after the write in
//! progress and joins it.
//!
//! [`Writer::inline`] writes on the caller's thread instead, at once (the applier's
//! single-threaded mode, and the fallback when no thread can be started).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use super::error::ApplyError;
use super::sink::Sink;

/// Buffers of operation bytes in flight between the caller's thread and the writer thread (one
/// being filled, the others queued or being written). Each holds at most one operation (≤ 4 MiB).
pub(crate) const WRITE_BUFFERS: usize = 2;

/// How far the target has been written: every operation before `next_op` is in the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// Index of the first operation not yet written.
    pub(crate) next_op: usize,
    /// Payload offset of that operation's data.
    pub(crate) payload_offset: u64,
    /// Target bytes written.
    pub(crate) target_done: u64,
}

/// What one operation writes.
pub(crate) enum Body {
    /// The operation's bytes: the first `dst_len` bytes of a buffer obtained from
    /// [`Writer::buffer`] (handed back to the pool once written).
    Bytes(Vec<u8>),
    /// `dst_len` zero bytes.
    Zeros,
    /// Nothing: a verifier that cannot reconstruct the target (a delta without its source) only
    /// counts the operation.
    Nothing,
}

/// One checked operation to write.
pub(crate) struct Job {
    /// Target offset.
    pub(crate) dst_offset: u64,
    /// Target length.
    pub(crate) dst_len: u64,
    /// The bytes.
    pub(crate) body: Body,
    /// The position once it is written.
    pub(crate) after: Position,
}

/// Puts checked operations into the sink, inline or on a thread (see the module documentation).
pub(crate) enum Writer {
    /// Writes at once on the caller's thread.
    Inline {
        /// The destination.
        sink: Sink,
        /// How far it has written.
        written: Position,
        /// Buffers to reuse.
        free: Vec<Vec<u8>>,
    },
    /// Writes on its own thread.
    Thread(WriterThread),
}

impl Writer {
    /// A writer that writes on the caller's thread.
    pub(crate) fn inline(sink: Sink, at: Position) -> Self {
        Writer::Inline {
            sink,
            written: at,
            free: Vec::new(),
        }
    }

    /// A writer on its own thread, or an inline one if no thread can be started.
    pub(crate) fn threaded(sink: Sink, at: Position) -> Self {
        match WriterThread::spawn(sink, at) {
            Ok(t) => Writer::Thread(t),
            Err(sink) => Self::inline(sink, at),
        }
    }

    /// Moves the writing to its own thread (if it is not there already, and a thread can be
    /// started). Only between operations: nothing may be in flight.
    pub(crate) fn move_to_thread(&mut self) {
        if let Writer::Inline { written, .. } = self {
            let at = *written;
            if let Writer::Inline { sink, .. } =
                std::mem::replace(self, Self::inline(Sink::Discard, at))
            {
                *self = Self::threaded(sink, at);
            }
        }
    }

    /// A buffer for the next operation's bytes (with whatever it held before: callers overwrite
    /// the part they use, so it need not be cleared); waits while every buffer is in flight.
    /// Fails (with the writer's error) once the writer has stopped on an error.
    pub(crate) fn buffer(&mut self) -> Result<Vec<u8>, ApplyError> {
        match self {
            Writer::Inline { free, .. } => Ok(free.pop().unwrap_or_default()),
            Writer::Thread(t) => t.buffer(),
        }
    }

    /// Gives back a buffer that was not submitted (it is reused).
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        match self {
            Writer::Inline { free, .. } => free.push(buf),
            Writer::Thread(t) => t.lock().free.push(buf),
        }
    }

    /// Writes `job` (inline), or queues it (threaded: an error surfaces on a later call).
    pub(crate) fn submit(&mut self, job: Job) -> Result<(), ApplyError> {
        match self {
            Writer::Inline {
                sink,
                written,
                free,
            } => {
                let result = write_job(sink, &job);
                if let Body::Bytes(buf) = job.body {
                    free.push(buf);
                }
                result?;
                *written = job.after;
                Ok(())
            }
            Writer::Thread(t) => t.submit(job),
        }
    }

    /// The writer's error, if it has stopped on one since the last call. After it has been
    /// returned once, [`ApplyError::Stopped`].
    pub(crate) fn check(&self) -> Result<(), ApplyError> {
        match self {
            Writer::Inline { .. } => Ok(()),
            Writer::Thread(t) => t.lock().take_error(),
        }
    }

    /// Waits until everything submitted has been written (or dropped after a write error), and
    /// returns how far the target has been written.
    pub(crate) fn drain(&self) -> Position {
        match self {
            Writer::Inline { written, .. } => *written,
            Writer::Thread(t) => t.drain().written,
        }
    }

    /// Waits until everything submitted has been written, then flushes the sink to its device.
    /// A write error not yet returned is returned instead; once it has been, what was written
    /// before it is synced (so a checkpoint taken after the error can be made durable).
    pub(crate) fn sync(&self) -> Result<(), ApplyError> {
        let sync_error = |error| ApplyError::Io {
            action: "syncing target",
            offset: 0,
            error,
        };
        match self {
            Writer::Inline { sink, .. } => sink.sync().map_err(sync_error),
            Writer::Thread(t) => {
                if let Some(error) = t.drain().error.take() {
                    return Err(error);
                }
                t.sink_sync().map_err(sync_error)
            }
        }
    }

    /// Waits until everything submitted has been written and hands back the sink (joining the
    /// thread), or the write error.
    pub(crate) fn finish(self) -> Result<Sink, ApplyError> {
        match self {
            Writer::Inline { sink, .. } => Ok(sink),
            Writer::Thread(t) => t.finish(),
        }
    }
}

/// Writes one job into the sink; the error names the target offset.
fn write_job(sink: &mut Sink, job: &Job) -> Result<(), ApplyError> {
    let result = match &job.body {
        // dst_len ≤ 4 MiB (manifest limit) and the buffer was filled with that many bytes.
        Body::Bytes(buf) => match buf.get(..job.dst_len as usize) {
            Some(bytes) => sink.write(job.dst_offset, bytes),
            None => Err(io::Error::other(format!(
                "internal error: {} bytes to write, the buffer holds {}",
                job.dst_len,
                buf.len()
            ))),
        },
        Body::Zeros => sink.write_zeros(job.dst_offset, job.dst_len),
        Body::Nothing => Ok(()),
    };
    result.map_err(|error| ApplyError::Io {
        action: "writing target",
        offset: job.dst_offset,
        error,
    })?;
    sink.advance(job.dst_offset + job.dst_len);
    Ok(())
}

/// What the caller's thread and the writer thread share.
struct Shared {
    /// Written buffers, ready for reuse.
    free: Vec<Vec<u8>>,
    /// Buffers created so far (at most [`WRITE_BUFFERS`]).
    allocated: usize,
    /// Messages sent to the thread (jobs and syncs).
    submitted: u64,
    /// Messages the thread has handled.
    handled: u64,
    /// How far the target has been written.
    written: Position,
    /// Set once a write failed: later jobs are dropped unwritten.
    failed: bool,
    /// The write error, until the applier has taken it.
    error: Option<ApplyError>,
    /// The result of the last sync, until taken.
    synced: Option<io::Result<()>>,
    /// The thread has ended (normally, or by a panic).
    exited: bool,
}

impl Shared {
    /// The write error once (then [`ApplyError::Stopped`]), or `Ok` if the writer has not failed.
    fn take_error(&mut self) -> Result<(), ApplyError> {
        if self.failed {
            return Err(self.error.take().unwrap_or(ApplyError::Stopped));
        }
        if self.exited {
            return Err(thread_gone());
        }
        Ok(())
    }
}

fn thread_gone() -> ApplyError {
    ApplyError::Io {
        action: "writing target",
        offset: 0,
        error: io::Error::other("the payload writer thread stopped unexpectedly"),
    }
}

/// A message to the writer thread.
enum Message {
    Write(Job),
    Sync,
}

/// The writer thread and its channel.
pub(crate) struct WriterThread {
    tx: Option<mpsc::SyncSender<Message>>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    cancel: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Sink>>,
}

/// Marks the thread as ended when it returns or unwinds, so no one waits for it forever.
struct ExitGuard(Arc<(Mutex<Shared>, Condvar)>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.0;
        lock.lock().unwrap_or_else(|e| e.into_inner()).exited = true;
        cvar.notify_all();
    }
}

impl WriterThread {
    /// Starts the thread; gives the sink back if it cannot.
    fn spawn(sink: Sink, at: Position) -> Result<Self, Sink> {
        let shared = Arc::new((
            Mutex::new(Shared {
                free: Vec::new(),
                allocated: 0,
                submitted: 0,
                handled: 0,
                written: at,
                failed: false,
                error: None,
                synced: None,
                exited: false,
            }),
            Condvar::new(),
        ));
        // Jobs carry buffers (bounded by the pool) or are ZERO runs; the channel bound keeps the
        // latter from queueing without limit too.
        let (tx, rx) = mpsc::sync_channel::<Message>(WRITE_BUFFERS * 4);
        let cancel = Arc::new(AtomicBool::new(false));
        // The sink goes to the thread through a slot, so it can be taken back if spawning fails.
        let slot = Arc::new(Mutex::new(Some(sink)));
        let (thread_shared, thread_cancel, thread_slot) =
            (Arc::clone(&shared), Arc::clone(&cancel), Arc::clone(&slot));
        let spawned = thread::Builder::new()
            .name("payload-writer".to_owned())
            .spawn(move || {
                let guard = ExitGuard(thread_shared);
                let sink = thread_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                match sink {
                    Some(sink) => run(sink, &rx, &guard.0, &thread_cancel),
                    // Unreachable: the slot is filled before the thread starts.
                    None => Sink::Discard,
                }
            });
        match spawned {
            Ok(handle) => Ok(Self {
                tx: Some(tx),
                shared,
                cancel,
                handle: Some(handle),
            }),
            Err(_) => Err(slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or(Sink::Discard)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn buffer(&self) -> Result<Vec<u8>, ApplyError> {
        let mut s = self.lock();
        loop {
            s.take_error()?;
            if let Some(buf) = s.free.pop() {
                return Ok(buf);
            }
            if s.allocated < WRITE_BUFFERS {
                s.allocated += 1;
                return Ok(Vec::new());
            }
            s = self.shared.1.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn send(&self, message: Message) -> Result<(), ApplyError> {
        self.lock().submitted += 1;
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(message).is_ok());
        if sent {
            Ok(())
        } else {
            self.lock().submitted -= 1;
            Err(thread_gone())
        }
    }

    fn submit(&self, job: Job) -> Result<(), ApplyError> {
        self.lock().take_error()?;
        self.send(Message::Write(job))
    }

    /// Waits until the thread has handled every message sent, or has ended.
    fn drain(&self) -> MutexGuard<'_, Shared> {
        let s = self.lock();
        self.shared
            .1
            .wait_while(s, |s| s.handled < s.submitted && !s.exited)
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Syncs the sink on the thread, after every write sent before.
    fn sink_sync(&self) -> io::Result<()> {
        self.send(Message::Sync)
            .map_err(|_| io::Error::other("the payload writer thread stopped unexpectedly"))?;
        let mut s = self.drain();
        match s.synced.take() {
            Some(result) => result,
            None => Err(io::Error::other(
                "the payload writer thread stopped before syncing",
            )),
        }
    }

    fn finish(mut self) -> Result<Sink, ApplyError> {
        self.drain().take_error()?;
        self.tx = None;
        match self.handle.take().map(thread::JoinHandle::join) {
            Some(Ok(sink)) => Ok(sink),
            _ => Err(thread_gone()),
        }
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        // An abandoned apply: the thread drops what is queued, finishes the write in progress and
        // ends; wait for it, so no thread outlives the applier.
        self.cancel.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The writer thread: handles messages in order until the channel closes; returns the sink.
fn run(
    mut sink: Sink,
    rx: &mpsc::Receiver<Message>,
    shared: &(Mutex<Shared>, Condvar),
    cancel: &AtomicBool,
) -> Sink {
    let (lock, cvar) = shared;
    let mut failed = false;
    for message in rx {
        let cancelled = cancel.load(Ordering::Relaxed);
        match message {
            Message::Write(job) => {
                let result = if failed || cancelled {
                    None
                } else {
                    Some(write_job(&mut sink, &job))
                };
                let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Some(Ok(())) => s.written = job.after,
                    Some(Err(e)) => {
                        failed = true;
                        s.failed = true;
                        s.error = Some(e);
                    }
                    None => {}
                }
                if let Body::Bytes(buf) = job.body {
                    s.free.push(buf);
                }
                s.handled += 1;
            }
            Message::Sync => {
                // Also after a write error: what was written before it may be synced.
                let result = if cancelled { Ok(()) } else { sink.sync() };
                let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                s.synced = Some(result);
                s.handled += 1;
            }
        }
        cvar.notify_all();
    }
    sink
}
