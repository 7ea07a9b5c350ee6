//! Group commit on SQLite ([`SqliteWriter`]): one thread owns a direct write connection and
//! drains a queue. It takes every job waiting (up to [`MAX_BATCH`]), runs them in one
//! `BEGIN IMMEDIATE` transaction, commits (one fsync for the lot) and only then answers every
//! waiter. Jobs a client waits for (grants, events, status changes) go first; a background job
//! (a batch of coalesced check-ins) rides along, at most one per transaction, so bookkeeping
//! never holds a grant up for long. Jobs run without savepoints; when one fails, the transaction
//! is rolled back and the batch runs again, each job in a savepoint and the failed one left out
//! ([`run_jobs`]), so a failing job never takes the others with it.
//!
//! SQLite has one writer at a time anyway; doing the queueing in the process replaces the busy
//! handler's sleep-and-retry between this process's writers with a queue. A second server process
//! on the same file still waits on the file lock (`busy_timeout`), and every transaction still
//! reads and writes under that lock, so limits stay exact across processes.
//!
//! Checkpoints (copying the write-ahead log into the database file, and syncing it) run on a
//! thread of their own, after commits and at most every [`CHECKPOINT_PACE`], so a commit
//! seldom waits for one. The writer keeps SQLite's own automatic checkpoint too: by then most
//! of the log is copied, so it is short, and it is what lets the next transaction start the log
//! from its beginning again (a log that only grows makes every commit extend a file).
//!
//! The writer is a thread, not a task: its statements run on a direct connection
//! ([`super::direct`]) without a hand-off each, and a job's futures are always ready (a job
//! that waits on anything but the database fails, see [`super::direct::complete`]).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::SqliteStore;
use super::direct::{self, DirectTx, complete, execute, lite};
use crate::store::tx::{JobQueues, Transactor, TxJob, Urgency};
use crate::store::{StoreError, StoreFuture};

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Shortest time between two checkpoints (each one syncs the database file).
const CHECKPOINT_PACE: Duration = Duration::from_millis(100);

type Reply = oneshot::Sender<Result<Box<dyn Any + Send>, StoreError>>;

struct Queued {
    job: TxJob,
    reply: Reply,
}

/// The queues between the handles and the writer thread. They close, and the writer stops once
/// they are empty, when [`WriterTask::stop`] is called or every handle is dropped.
#[derive(Default)]
struct Shared {
    queues: Mutex<JobQueues<Queued>>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobQueues<Queued>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.lock().close_when_done();
        self.wake.notify_one();
    }
}

/// Closes the queues when the last handle is dropped.
struct Handles(Arc<Shared>);

impl Drop for Handles {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The writer's handle: queues jobs for the writer thread.
#[derive(Clone)]
pub struct SqliteWriter {
    handles: Arc<Handles>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteWriter")
    }
}

impl SqliteWriter {
    /// Opens the writer's own connection to `store`'s database and starts the writer thread; it
    /// ends when every handle is dropped or [`WriterTask::stop`] is called, after the jobs
    /// already queued.
    pub async fn start(store: &SqliteStore) -> Result<(Self, WriterTask), StoreError> {
        let path = store.direct.path().to_owned();
        let conn = direct::open(&path)?;
        let checkpoint_conn = direct::open(&path)?;
        let shared = Arc::new(Shared::default());
        let (done, finished) = oneshot::channel();
        let thread_shared = shared.clone();
        let (kick, kicks) = sync_channel(1);
        let thread = |name: &str| std::thread::Builder::new().name(name.into());
        let spawn_failed = |e: std::io::Error| {
            StoreError::Internal(format!("could not start a writer thread: {e}"))
        };
        let checkpointer = thread("sqlite-checkpoint")
            .spawn(move || checkpoint_after_commits(&checkpoint_conn, &kicks))
            .map_err(spawn_failed)?;
        thread("sqlite-writer")
            .spawn(move || {
                run(&path, conn, &thread_shared, &kick);
                drop(kick);
                let _ = checkpointer.join();
                let _ = done.send(());
            })
            .map_err(spawn_failed)?;
        Ok((
            Self {
                handles: Arc::new(Handles(shared.clone())),
            },
            WriterTask { shared, finished },
        ))
    }
}

/// The writer thread, to stop it.
#[derive(Debug)]
pub struct WriterTask {
    shared: Arc<Shared>,
    finished: oneshot::Receiver<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl WriterTask {
    /// Stops the writer once the jobs already queued are done, and closes its connection.
    pub async fn stop(self) {
        self.shared.close();
        let _ = self.finished.await;
    }

    /// Waits for the writer to end (every handle dropped).
    pub async fn join(self) {
        let _ = self.finished.await;
    }
}

impl Transactor for SqliteWriter {
    fn run(&self, job: TxJob, urgency: Urgency) -> StoreFuture<'_, Box<dyn Any + Send>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let stopped = || StoreError::Internal("the database writer has stopped".into());
            {
                let shared = &self.handles.0;
                if shared.lock().push(urgency, Queued { job, reply }).is_err() {
                    return Err(stopped());
                }
                shared.wake.notify_one();
            }
            rx.await.map_err(|_| stopped())?
        })
    }
}

/// The next batch: up to [`MAX_BATCH`] waiting answer jobs and at most one background job;
/// `None` once the queues are closed and empty.
fn next_batch(shared: &Shared) -> Option<Vec<Queued>> {
    let mut q = shared.lock();
    while q.is_empty() {
        if q.is_closing() {
            return None;
        }
        q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
    }
    Some(q.take(MAX_BATCH, MAX_BATCH + 1))
}

fn run(path: &std::path::Path, mut conn: Connection, shared: &Shared, kick: &SyncSender<()>) {
    // However the loop ends (a panic outside a job included), the queues close and every job
    // still queued is answered, so no client waits for a writer that is gone.
    let _closed_on_exit = CloseOnExit(shared);
    let mut checkpointer_gone = false;
    while let Some(batch) = next_batch(shared) {
        let committed = run_batch(&mut conn, batch);
        // A kick while one is pending is folded into it.
        if let Err(TrySendError::Disconnected(())) = kick.try_send(())
            && !checkpointer_gone
        {
            checkpointer_gone = true;
            tracing::error!("the checkpoint thread has stopped; SQLite's own checkpoints go on");
        }
        if !committed {
            // The transaction broke under the batch: start again on a fresh connection.
            let _ = conn.execute_batch("ROLLBACK");
            match direct::open(path) {
                Ok(fresh) => conn = fresh,
                Err(e) => {
                    tracing::error!(error = %e, "reopening the database write connection failed")
                }
            }
        }
    }
}

/// Closes the queues and fails the jobs left in them when the writer thread ends.
struct CloseOnExit<'s>(&'s Shared);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        let left = self.0.lock().close();
        for q in left {
            let _ = q.reply.send(Err(StoreError::Internal(
                "the database writer has stopped".into(),
            )));
        }
    }
}

/// Checkpoints the log after commits (`kicks`), at most every [`CHECKPOINT_PACE`], until the
/// writer ends; then once more. A passive checkpoint copies what no reader still needs and
/// never blocks the writer or a reader.
fn checkpoint_after_commits(conn: &Connection, kicks: &Receiver<()>) {
    let checkpoint = || {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpointing the database log failed");
        }
    };
    while kicks.recv().is_ok() {
        checkpoint();
        // Pacing, not synchronisation: commits meanwhile leave one kick waiting.
        std::thread::sleep(CHECKPOINT_PACE);
    }
    checkpoint();
}

/// What a job returned (or why it failed).
type JobResult = Result<Box<dyn Any + Send>, StoreError>;

/// Runs `batch` in one transaction and answers every job once it committed (or failed).
/// Returns `false` when the transaction itself broke (it could not be begun again, or a
/// savepoint could not be rolled back or released, e.g. SQLite rolled the whole transaction back
/// on a full disk): then every job of the batch is answered with an error, none is reported
/// durable, and the caller reopens the connection.
fn run_batch(conn: &mut Connection, batch: Vec<Queued>) -> bool {
    if let Err(e) = execute(conn, "begin a write transaction", "BEGIN IMMEDIATE", []) {
        let msg = e.to_string();
        for q in batch {
            let _ = q.reply.send(Err(StoreError::Internal(msg.clone())));
        }
        return conn.is_autocommit();
    }
    let (replies, jobs): (Vec<Reply>, Vec<TxJob>) =
        batch.into_iter().map(|q| (q.reply, q.job)).unzip();
    let outs = match run_jobs(conn, &jobs) {
        Ok(outs) => outs,
        Err(e) => {
            let why = e.to_string();
            tracing::error!(error = %why, "a write transaction broke; its batch is answered with errors");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Internal(format!(
                    "the write transaction broke: {why}"
                ))));
            }
            return false;
        }
    };
    match execute(conn, "commit the write transaction", "COMMIT", []) {
        Ok(()) => {
            for (reply, out) in replies.into_iter().zip(outs) {
                let _ = reply.send(out);
            }
            true
        }
        Err(e) => {
            let msg = e.to_string();
            for (reply, out) in replies.into_iter().zip(outs) {
                let err = out
                    .err()
                    .unwrap_or_else(|| StoreError::Internal(msg.clone()));
                let _ = reply.send(Err(err));
            }
            false
        }
    }
}

/// Runs `jobs` in the open transaction, one after the other, without savepoints: nearly every
/// job succeeds, and a savepoint makes SQLite copy every page a job changes into a statement
/// journal first (a third of the writer's time when it wrote batches of check-ins, a twentieth
/// under grants). When a job fails or panics, the whole transaction is rolled back and begun
/// again, and the batch runs once more with each job in its own savepoint and without the
/// failed one (jobs may run again: they only read and write the database). The outer error means the transaction itself broke.
fn run_jobs(conn: &mut Connection, jobs: &[TxJob]) -> Result<Vec<JobResult>, StoreError> {
    let mut outs = Vec::with_capacity(jobs.len());
    for job in jobs {
        match run_plain(conn, job) {
            Ok(v) => outs.push(Ok(v)),
            Err(failed) => {
                let failed_at = outs.len();
                // SQLite may have rolled the transaction back already (e.g. a full disk).
                if !conn.is_autocommit() {
                    execute(conn, "roll back a failed job", "ROLLBACK", [])?;
                }
                execute(
                    conn,
                    "begin again after a job failed",
                    "BEGIN IMMEDIATE",
                    [],
                )?;
                let mut failed = Some(failed);
                let mut again = Vec::with_capacity(jobs.len());
                for (i, job) in jobs.iter().enumerate() {
                    match failed.take_if(|_| i == failed_at) {
                        Some(e) => again.push(Err(e)),
                        None => again.push(run_job(conn, job)?),
                    }
                }
                return Ok(again);
            }
        }
    }
    Ok(outs)
}

/// Runs one job with no savepoint of its own; a panic is its error.
fn run_plain(conn: &mut Connection, job: &TxJob) -> JobResult {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut tx = DirectTx::new(conn);
        complete(job(&mut tx)).and_then(|r| r)
    }))
    .unwrap_or_else(|_| {
        tracing::error!("a database write job panicked; its changes were rolled back");
        Err(StoreError::Internal("a database write job panicked".into()))
    })
}

/// Runs one job in a savepoint: released when the job succeeds, rolled back when it fails or
/// panics (the other jobs of the batch are unaffected). The outer error means the transaction
/// itself broke (the savepoint could not be opened, released or rolled back).
fn run_job(conn: &mut Connection, job: &TxJob) -> Result<JobResult, StoreError> {
    execute(conn, "begin savepoint", "SAVEPOINT job", [])?;
    match run_plain(conn, job) {
        Ok(v) => {
            execute(conn, "release savepoint", "RELEASE job", [])?;
            Ok(Ok(v))
        }
        Err(e) => {
            roll_back_savepoint(conn)?;
            Ok(Err(e))
        }
    }
}

fn roll_back_savepoint(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("ROLLBACK TO job; RELEASE job")
        .map_err(lite("roll back savepoint"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::store::Store as _;
    use crate::store::instances::CheckIn;
    use crate::store::tx::transact;

    fn check_in(machine: &str) -> CheckIn {
        CheckIn::example(machine, "a", 5)
    }

    async fn writer() -> (tempfile::TempDir, SqliteStore, SqliteWriter, WriterTask) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        let (w, task) = SqliteWriter::start(&s).await.unwrap();
        (dir, s, w, task)
    }

    #[tokio::test]
    async fn a_panicking_job_rolls_back_alone() {
        let (_dir, s, w, task) = writer().await;
        let panicked = transact(&w, Urgency::Answer, |tx| {
            Box::pin(async move {
                tx.check_in(&[check_in("m-panic")]).await?;
                if tx.instance("m-panic", "a").await?.is_some() {
                    panic!("a job fails hard after its write");
                }
                Ok(())
            })
        })
        .await;
        let kept = transact(&w, Urgency::Answer, |tx| {
            Box::pin(async move { tx.check_in(&[check_in("m-ok")]).await })
        })
        .await;
        task.stop().await;
        let err = panicked.expect_err("the panicking job reports an error");
        assert!(err.to_string().contains("panicked"), "{err}");
        kept.unwrap();
        assert_eq!(s.instance("m-panic", "a").await.unwrap(), None);
        assert!(s.instance("m-ok", "a").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_job_that_waits_on_anything_but_the_database_fails_without_blocking_the_writer() {
        let (_dir, s, w, task) = writer().await;
        let waited = transact(&w, Urgency::Answer, |tx| {
            Box::pin(async move {
                tx.check_in(&[check_in("m-wait")]).await?;
                // Pending once: the writer must not block on it.
                tokio::task::yield_now().await;
                Ok(())
            })
        })
        .await;
        let after = transact(&w, Urgency::Background, |tx| {
            Box::pin(async move { tx.check_in(&[check_in("m-after")]).await })
        })
        .await;
        task.stop().await;
        let err = waited.expect_err("a job that waits fails");
        assert!(err.to_string().contains("other than the database"), "{err}");
        after.unwrap();
        assert_eq!(
            s.instance("m-wait", "a").await.unwrap(),
            None,
            "rolled back"
        );
        assert!(s.instance("m-after", "a").await.unwrap().is_some());
    }

    /// What a queued job does after writing its machine's check-in.
    #[derive(Clone, Copy)]
    enum Then {
        Succeed,
        Fail,
        Panic,
    }

    /// Runs `jobs` (machine, urgency, outcome) in one batch: a first job holds the writer
    /// thread until all of them are queued. Returns each job's result.
    async fn one_batch(
        w: &SqliteWriter,
        jobs: &[(&'static str, Urgency, Then)],
    ) -> Vec<Result<(), StoreError>> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let (holding, writer_held) = oneshot::channel::<()>();
        let holding = Mutex::new(Some(holding));
        let blocker = {
            let w = w.clone();
            tokio::spawn(async move {
                transact(&w, Urgency::Answer, move |_tx| {
                    if let Some(h) = holding.lock().unwrap().take() {
                        let _ = h.send(());
                    }
                    // Blocks the writer thread (not a pending future) until released.
                    let _ = held.lock().unwrap().recv();
                    Box::pin(async move { Ok(()) })
                })
                .await
            })
        };
        writer_held.await.unwrap();
        let mut tasks = Vec::new();
        for &(machine, urgency, then) in jobs {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                transact(&w, urgency, move |tx| {
                    Box::pin(async move {
                        tx.check_in(&[check_in(machine)]).await?;
                        match then {
                            Then::Succeed => Ok(()),
                            Then::Fail => Err(StoreError::Conflict("this job fails".into())),
                            Then::Panic => panic!("this job panics"),
                        }
                    })
                })
                .await
            }));
        }
        // Readiness, not timing: wait until every job is queued behind the blocker.
        while w.handles.0.lock().len() < jobs.len() {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_failing_job_of_a_batch_rolls_back_alone_wherever_it_runs() {
        let (_dir, s, w, task) = writer().await;
        // Answer jobs run first, then the background job. The second one panics: the
        // transaction is begun again and the batch runs once more without it, each job in a
        // savepoint (the first one again); the background job fails there and is rolled back
        // alone.
        let first = one_batch(
            &w,
            &[
                ("m-bg-fails", Urgency::Background, Then::Fail),
                ("m-a1", Urgency::Answer, Then::Succeed),
                ("m-a2-panics", Urgency::Answer, Then::Panic),
                ("m-a3", Urgency::Answer, Then::Succeed),
            ],
        )
        .await;
        // The first job panics; of the rest, run in savepoints, one fails and one commits.
        let second = one_batch(
            &w,
            &[
                ("m-a4-panics", Urgency::Answer, Then::Panic),
                ("m-a5", Urgency::Answer, Then::Fail),
                ("m-bg-ok", Urgency::Background, Then::Succeed),
            ],
        )
        .await;
        task.stop().await;
        let ok: Vec<bool> = first.iter().chain(&second).map(Result::is_ok).collect();
        assert_eq!(ok, [false, true, false, true, false, false, true]);
        for (machine, kept) in [
            ("m-bg-fails", false),
            ("m-a1", true),
            ("m-a2-panics", false),
            ("m-a3", true),
            ("m-a4-panics", false),
            ("m-a5", false),
            ("m-bg-ok", true),
        ] {
            let row = s.instance(machine, "a").await.unwrap();
            assert_eq!(row.is_some(), kept, "{machine}");
        }
    }

    #[tokio::test]
    async fn a_stopped_writer_refuses_new_jobs() {
        let (_dir, _s, w, task) = writer().await;
        task.stop().await;
        let err = transact(&w, Urgency::Answer, |tx| {
            Box::pin(async move { tx.check_in(&[check_in("m")]).await })
        })
        .await
        .expect_err("the writer has stopped");
        assert!(err.to_string().contains("stopped"), "{err}");
    }
}
