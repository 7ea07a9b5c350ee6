//! Group commit on PostgreSQL ([`PgBatcher`]): the check path's write jobs (grants, events,
//! status changes, batches of check-ins) queue in this process by *lane* (the group a check's
//! grant would lock; check-ins and jobs of no group share one lane), and each lane's task runs
//! every job waiting in it (up to [`MAX_BATCH`]) in one transaction, commits once, and only then
//! answers each waiter. A release day's grants of one group then take the group's row lock once
//! per batch and wait for one commit (one WAL flush) together, instead of one lock hand-over and
//! one flush per grant: per-group serialisation stays, exactly as strict, but its cost is
//! shared. Lanes run at once, each on its own connection, so one group's queue (or a lock
//! another replica holds on it) never holds up another group's checks.
//!
//! A group whose policy counts nothing that another grant of it changes (no timeout, no
//! concurrency or rate limit, no auto-halt) has [`SHARED_LANES`] shared lanes beside its own:
//! plain first checks go to one of them (by machine), and their transactions lock the group's
//! row shared (`FOR SHARE`), each adding its grants to its own shard of the tallies (migration
//! 0009), so that up to that many batches of the group's grants are decided and committed at
//! once. A shared lane's transaction never takes a group's lock exclusively: a job that would
//! (the locked policy is not the expected one, a grant to settle or supersede) fails the batch,
//! and its jobs run again alone, exclusively.
//!
//! Jobs of one batch run one after the other in the same transaction, so each sees what the
//! ones before it wrote (every limit is counted as if they had committed one by one), and other
//! replicas see all of them or none. Answer jobs go first; a background job (a batch of
//! coalesced check-ins) rides along, at most one per transaction.
//!
//! When a job of a batch fails before the commit (a conflict, PostgreSQL aborting the
//! transaction, a panic), nothing of the batch is kept: every job of it runs again, each alone
//! in its own transaction ([`PgStore`]'s own [`Transactor`], with its retries), so a job's result
//! never depends on another's failure. Jobs may run more than once this way, as they already may
//! on a deadlock retry: they are written to be run again. A commit that fails is retried the
//! same way only when PostgreSQL says it did not commit (a deadlock or serialisation failure);
//! otherwise (the connection lost while committing) whether it committed is unknown, and every
//! job of the batch gets the error, as a single job would.

use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use tokio::sync::{Notify, oneshot};

use super::PgStore;
use crate::store::tx::{JobQueues, SHARED_LANES, Transactor, TxJob, Urgency, WriteLane};
use crate::store::{StoreError, StoreFuture};

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 64;

type Reply = oneshot::Sender<Result<Box<dyn Any + Send>, StoreError>>;
type Out = Result<Box<dyn Any + Send>, StoreError>;

struct Queued {
    job: TxJob,
    urgency: Urgency,
    reply: Reply,
}

/// One lane: its queues and the signal its task waits on.
#[derive(Default)]
struct Lane {
    queues: Mutex<JobQueues<Queued>>,
    ready: Notify,
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobQueues<Queued>> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the lane closing (its task ends once its queues are empty).
    fn close(&self) {
        self.lock().close_when_done();
        self.ready.notify_one();
    }
}

/// The check path's [`Transactor`] on PostgreSQL: queues jobs for the batching tasks.
pub struct PgBatcher {
    store: PgStore,
    /// The lanes (`None`: jobs of no group), each with its task.
    lanes: Mutex<HashMap<Option<WriteLane>, Arc<Lane>>>,
    /// This process's first tally shard: its shared lanes use this and the next
    /// [`SHARED_LANES`] - 1, so that other replicas' lanes rarely share one (they would only wait
    /// on each other's commits).
    shard_base: i32,
}

impl std::fmt::Debug for PgBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBatcher").finish_non_exhaustive()
    }
}

impl PgBatcher {
    /// A batcher over `store`: a lane's task starts with the lane's first job and ends once the
    /// batcher is dropped and the lane's queue is empty.
    pub fn start(store: PgStore) -> Self {
        // The process id picks the range (tally shards are any integer): replicas on one
        // database have different ids unless they run on different hosts.
        let slot = i32::try_from(std::process::id() % 1_000_000).unwrap_or(0);
        Self {
            store,
            lanes: Mutex::new(HashMap::new()),
            shard_base: 1 + slot * i32::from(SHARED_LANES),
        }
    }

    /// The lane `key`, started if new. (A few per group ever written in this process: groups
    /// are an operator's, few.)
    fn lane(&self, key: Option<WriteLane>) -> Arc<Lane> {
        let mut lanes = self
            .lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let shard = key
            .as_ref()
            .and_then(|k| k.shared)
            .map(|n| self.shard_base + i32::from(n % SHARED_LANES));
        Arc::clone(lanes.entry(key).or_insert_with(|| {
            let lane = Arc::new(Lane::default());
            tokio::spawn(run(self.store.clone(), Arc::clone(&lane), shard));
            lane
        }))
    }
}

impl Drop for PgBatcher {
    fn drop(&mut self) {
        let lanes = self
            .lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for lane in lanes.values() {
            lane.close();
        }
    }
}

impl Transactor for PgBatcher {
    fn run(&self, job: TxJob, urgency: Urgency) -> StoreFuture<'_, Box<dyn Any + Send>> {
        self.run_in(job, urgency, None)
    }

    fn run_in(
        &self,
        job: TxJob,
        urgency: Urgency,
        lane: Option<WriteLane>,
    ) -> StoreFuture<'_, Box<dyn Any + Send>> {
        Box::pin(async move {
            let lane = self.lane(lane);
            let (reply, answer) = oneshot::channel();
            let queued = Queued {
                job,
                urgency,
                reply,
            };
            if lane.lock().push(urgency, queued).is_err() {
                return Err(StoreError::Internal(
                    "the PostgreSQL write lane is closed".into(),
                ));
            }
            lane.ready.notify_one();
            answer.await.map_err(|_| {
                StoreError::Internal("the PostgreSQL write task stopped before answering".into())
            })?
        })
    }
}

/// The jobs of the next batch: answer jobs first (up to [`MAX_BATCH`]), at most one background
/// job; `None` once closing with nothing left.
fn next_batch(lane: &Lane) -> Option<Vec<Queued>> {
    let mut q = lane.lock();
    let batch = q.take(MAX_BATCH, MAX_BATCH);
    if batch.is_empty() && q.is_closing() {
        return None;
    }
    Some(batch)
}

/// A lane's task (`shard`: a shared lane's tally shard).
async fn run(store: PgStore, lane: Arc<Lane>, shard: Option<i32>) {
    loop {
        let Some(batch) = next_batch(&lane) else {
            return;
        };
        if batch.is_empty() {
            lane.ready.notified().await;
            continue;
        }
        run_batch(&store, batch, shard).await;
    }
}

/// Why a batch could not be committed whole.
enum BatchFailure {
    /// Before the commit, or a commit PostgreSQL refused to make: nothing was kept.
    NothingKept(StoreError),
    /// The commit itself failed another way: whether it committed is unknown.
    Unknown(StoreError),
}

/// Runs `batch` in one transaction (a shared one with `shard`); if a job fails, runs each job
/// alone instead, exclusively.
async fn run_batch(store: &PgStore, batch: Vec<Queued>, shard: Option<i32>) {
    if batch.len() > 1 || shard.is_some() {
        match together(store, &batch, shard).await {
            Ok(outs) => {
                for (q, out) in batch.into_iter().zip(outs) {
                    let _ = q.reply.send(Ok(out));
                }
                return;
            }
            Err(BatchFailure::Unknown(e)) => {
                tracing::warn!(error = %e, jobs = batch.len(), "committing a batched write failed; its outcome is unknown");
                for q in batch {
                    let _ = q.reply.send(Err(StoreError::Internal(format!(
                        "committing the write failed: {e}"
                    ))));
                }
                return;
            }
            Err(BatchFailure::NothingKept(e)) => {
                tracing::debug!(error = %e, jobs = batch.len(), "a batched write failed; running its jobs one by one");
            }
        }
    }
    for q in batch {
        let out = AssertUnwindSafe(store.run(q.job, q.urgency))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(panicked()));
        let _ = q.reply.send(out);
    }
}

/// The error a job that panicked gets.
fn panicked() -> StoreError {
    StoreError::Internal("a write job panicked".into())
}

/// Runs every job of `batch` in one transaction (a shared lane's with `shard`) and commits it.
async fn together(
    store: &PgStore,
    batch: &[Queued],
    shard: Option<i32>,
) -> Result<Vec<Box<dyn Any + Send>>, BatchFailure> {
    let mut tx = store
        .begin("begin a batched write")
        .await
        .map_err(BatchFailure::NothingKept)?;
    if let Some(shard) = shard {
        tx.share_groups(shard);
    }
    let mut outs = Vec::with_capacity(batch.len());
    for q in batch {
        let out: Out = AssertUnwindSafe((q.job)(&mut tx))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(panicked()));
        outs.push(out.map_err(BatchFailure::NothingKept)?);
    }
    // The writes held back are statements like any other: their failure keeps nothing.
    tx.flush().await.map_err(BatchFailure::NothingKept)?;
    tx.tx.commit().await.map_err(|e| {
        let e = crate::store::sqlx_shared::db("commit a batched write")(e);
        if super::retryable(&e) {
            BatchFailure::NothingKept(e)
        } else {
            BatchFailure::Unknown(e)
        }
    })?;
    Ok(outs)
}
