//! Group commit on SQLite ([`SqliteWriter`]): one task owns a write connection and drains a
//! queue. It takes every job waiting (up to [`MAX_BATCH`]), runs them in one `BEGIN IMMEDIATE`
//! transaction, each in its own savepoint, commits (one fsync for the lot) and only then answers
//! every waiter. Jobs a client waits for (grants, events, status changes) go first; a background
//! job (a batch of coalesced check-ins) rides along, at most one per transaction, so bookkeeping
//! never holds a grant up for long.
//!
//! SQLite has one writer at a time anyway; doing the queueing in the process replaces the busy
//! handler's sleep-and-retry between this process's writers with a queue. A second server process
//! on the same file still waits on the file lock (`busy_timeout`), and every transaction still
//! reads and writes under that lock, so limits stay exact across processes.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use sqlx::{ConnectOptions as _, Connection as _, Sqlite, SqliteConnection, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{SqliteStore, SqliteTx, db};
use crate::store::tx::{Transactor, TxJob, Urgency};
use crate::store::{StoreError, StoreFuture};

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Jobs that may wait for the writer before senders wait for room.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Box<dyn Any + Send>, StoreError>>;

struct Queued {
    job: TxJob,
    reply: Reply,
}

/// The writer's handle: queues jobs for the writer task.
#[derive(Debug, Clone)]
pub struct SqliteWriter {
    answer: mpsc::Sender<Queued>,
    background: mpsc::Sender<Queued>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queued")
    }
}

impl SqliteWriter {
    /// Opens the writer's own connection to `store`'s database and starts the writer task; it
    /// ends when every handle is dropped or [`WriterTask::stop`] is called, after the jobs
    /// already queued.
    pub async fn start(store: &SqliteStore) -> Result<(Self, WriterTask), StoreError> {
        let options = store.pool.connect_options();
        let conn = options
            .connect()
            .await
            .map_err(db("open the write connection"))?;
        let (answer, answer_rx) = mpsc::channel(QUEUE);
        let (background, background_rx) = mpsc::channel(QUEUE);
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(run(options, conn, answer_rx, background_rx, stop.clone()));
        Ok((Self { answer, background }, WriterTask { task, stop }))
    }
}

/// The writer task, to stop it.
#[derive(Debug)]
pub struct WriterTask {
    task: tokio::task::JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
}

impl WriterTask {
    /// Stops the writer once the jobs already queued are done, and closes its connection.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Waits for the writer to end (every handle dropped).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

impl Transactor for SqliteWriter {
    fn run(&self, job: TxJob, urgency: Urgency) -> StoreFuture<'_, Box<dyn Any + Send>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let queue = match urgency {
                Urgency::Answer => &self.answer,
                Urgency::Background => &self.background,
            };
            let stopped = || StoreError::Internal("the database writer has stopped".into());
            queue
                .send(Queued { job, reply })
                .await
                .map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        })
    }
}

async fn run(
    options: std::sync::Arc<sqlx::sqlite::SqliteConnectOptions>,
    mut conn: SqliteConnection,
    mut answer: mpsc::Receiver<Queued>,
    mut background: mpsc::Receiver<Queued>,
    stop: tokio_util::sync::CancellationToken,
) {
    let (mut answer_open, mut background_open) = (true, true);
    loop {
        // Queued jobs first: a stop takes effect once both queues are empty; the writer also
        // ends once every handle is dropped and both queues are drained.
        let first = tokio::select! {
            biased;
            q = answer.recv(), if answer_open => match q {
                Some(q) => (q, false),
                None => {
                    answer_open = false;
                    continue;
                }
            },
            q = background.recv(), if background_open => match q {
                Some(q) => (q, true),
                None => {
                    background_open = false;
                    continue;
                }
            },
            () = stop.cancelled(), if answer_open || background_open => break,
            else => break,
        };
        let (first, first_is_background) = first;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match answer.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        // At most one background job per transaction.
        if !first_is_background && let Ok(q) = background.try_recv() {
            batch.push(q);
        }
        if !run_batch(&mut conn, batch).await {
            // The transaction broke under the batch: start again on a fresh connection.
            match options.connect().await {
                Ok(fresh) => {
                    let old = std::mem::replace(&mut conn, fresh);
                    let _ = old.close().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reopening the database write connection failed")
                }
            }
        }
    }
    let _ = conn.close().await;
}

/// Runs `batch` in one transaction and answers every job once it committed (or failed).
/// Returns `false` when the transaction itself broke (a savepoint could not be rolled back or
/// released, e.g. SQLite rolled the whole transaction back on a full disk): then every job of
/// the batch is answered with an error, none is reported durable, and the caller reopens the
/// connection.
async fn run_batch(conn: &mut SqliteConnection, batch: Vec<Queued>) -> bool {
    let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            for q in batch {
                let _ = q.reply.send(Err(StoreError::Internal(format!(
                    "could not begin a write transaction: {msg}"
                ))));
            }
            return true;
        }
    };
    let mut done = Vec::with_capacity(batch.len());
    let mut pending = batch.into_iter();
    let mut broken = None;
    for q in pending.by_ref() {
        match run_job(&mut tx, q.job).await {
            Ok(out) => done.push((q.reply, out)),
            Err(e) => {
                broken = Some(e.to_string());
                let _ = q.reply.send(Err(e));
                break;
            }
        }
    }
    if let Some(why) = broken {
        tracing::error!(error = %why, "a write transaction broke; its batch is answered with errors");
        drop(tx);
        let fail = |_| StoreError::Internal(format!("the write transaction broke: {why}"));
        for (reply, _) in done {
            let _ = reply.send(Err(fail(())));
        }
        for q in pending {
            let _ = q.reply.send(Err(fail(())));
        }
        return false;
    }
    match tx.commit().await {
        Ok(()) => {
            for (reply, out) in done {
                let _ = reply.send(out);
            }
            true
        }
        Err(e) => {
            let msg = e.to_string();
            for (reply, out) in done {
                let err = out.err().unwrap_or_else(|| {
                    StoreError::Internal(format!("the write transaction failed to commit: {msg}"))
                });
                let _ = reply.send(Err(err));
            }
            false
        }
    }
}

/// Runs one job in a savepoint: released when the job succeeds, rolled back when it fails or
/// panics (the other jobs of the batch are unaffected). The outer error means the transaction
/// itself broke (the savepoint could not be opened, released or rolled back).
async fn run_job(
    tx: &mut Transaction<'_, Sqlite>,
    job: TxJob,
) -> Result<Result<Box<dyn Any + Send>, StoreError>, StoreError> {
    let mut sp = tx.begin().await.map_err(db("begin savepoint"))?;
    let out = {
        let mut stx = SqliteTx::new(&mut sp);
        AssertUnwindSafe(job(&mut stx)).catch_unwind().await
    };
    match out {
        Ok(Ok(v)) => {
            sp.commit().await.map_err(db("release savepoint"))?;
            Ok(Ok(v))
        }
        Ok(Err(e)) => {
            sp.rollback().await.map_err(db("roll back savepoint"))?;
            Ok(Err(e))
        }
        Err(_) => {
            sp.rollback().await.map_err(db("roll back savepoint"))?;
            tracing::error!("a database write job panicked; its changes were rolled back");
            Ok(Err(StoreError::Internal(
                "a database write job panicked".into(),
            )))
        }
    }
}
