//! Group commit on PostgreSQL ([`PgBatcher`]): the check path's write jobs (grants, events,
//! status changes, batches of check-ins) queue in this process, and one task runs every job
//! waiting (up to [`MAX_BATCH`]) in one transaction, commits once, and only then answers each
//! waiter. A release day's grants of one group then take the group's row lock once per batch and
//! wait for one commit (one WAL flush) together, instead of one lock hand-over and one flush per
//! grant: per-group serialisation stays, exactly as strict, but its cost is shared.
//!
//! Jobs of one batch run one after the other in the same transaction, so each sees what the
//! ones before it wrote (every limit is counted as if they had committed one by one), and other
//! replicas see all of them or none. Answer jobs go first; a background job (a batch of
//! coalesced check-ins) rides along, at most one per transaction.
//!
//! When a job of a batch fails (a conflict, PostgreSQL aborting the transaction, a failed
//! commit), nothing of the batch is kept: every job of it runs again, each alone in its own
//! transaction ([`PgStore`]'s own [`Transactor`], with its retries), so a job's result never
//! depends on another's failure. Jobs may run more than once this way, as they already may on a
//! deadlock retry: they are written to be run again.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use super::PgStore;
use crate::store::tx::{Transactor, TxJob, Urgency};
use crate::store::{StoreError, StoreFuture};

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 64;

type Reply = oneshot::Sender<Result<Box<dyn Any + Send>, StoreError>>;

struct Queued {
    job: TxJob,
    urgency: Urgency,
    reply: Reply,
}

#[derive(Default)]
struct Queues {
    answer: VecDeque<Queued>,
    background: VecDeque<Queued>,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    ready: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The check path's [`Transactor`] on PostgreSQL: queues jobs for the batching task.
#[derive(Debug)]
pub struct PgBatcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.lock();
        f.debug_struct("PgBatchQueues")
            .field("answer", &q.answer.len())
            .field("background", &q.background.len())
            .finish()
    }
}

impl PgBatcher {
    /// Starts the batching task over `store` (it ends once the batcher is dropped and its
    /// queue is empty).
    pub fn start(store: PgStore) -> Self {
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(store, Arc::clone(&shared)));
        Self { shared }
    }
}

impl Drop for PgBatcher {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.ready.notify_one();
    }
}

impl Transactor for PgBatcher {
    fn run(&self, job: TxJob, urgency: Urgency) -> StoreFuture<'_, Box<dyn Any + Send>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            {
                let mut q = self.shared.lock();
                let queued = Queued {
                    job,
                    urgency,
                    reply,
                };
                match urgency {
                    Urgency::Answer => q.answer.push_back(queued),
                    Urgency::Background => q.background.push_back(queued),
                }
            }
            self.shared.ready.notify_one();
            answer.await.map_err(|_| {
                StoreError::Internal("the PostgreSQL write task stopped before answering".into())
            })?
        })
    }
}

/// The jobs of the next batch: answer jobs first (up to [`MAX_BATCH`]), at most one background
/// job; `None` once closing with nothing left.
fn next_batch(shared: &Shared) -> Option<Vec<Queued>> {
    let mut q = shared.lock();
    let take = q.answer.len().min(MAX_BATCH);
    let mut batch: Vec<Queued> = q.answer.drain(..take).collect();
    if batch.len() < MAX_BATCH
        && let Some(b) = q.background.pop_front()
    {
        batch.push(b);
    }
    if batch.is_empty() && q.closing {
        return None;
    }
    Some(batch)
}

async fn run(store: PgStore, shared: Arc<Shared>) {
    loop {
        let Some(batch) = next_batch(&shared) else {
            return;
        };
        if batch.is_empty() {
            shared.ready.notified().await;
            continue;
        }
        run_batch(&store, batch).await;
    }
}

/// Runs `batch` in one transaction; if anything fails, runs each job alone instead.
async fn run_batch(store: &PgStore, batch: Vec<Queued>) {
    if batch.len() > 1 {
        match together(store, &batch).await {
            Ok(outs) => {
                for (q, out) in batch.into_iter().zip(outs) {
                    let _ = q.reply.send(Ok(out));
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, jobs = batch.len(), "a batched write failed; running its jobs one by one");
            }
        }
    }
    for q in batch {
        let out = store.run(q.job, q.urgency).await;
        let _ = q.reply.send(out);
    }
}

/// Runs every job of `batch` in one transaction and commits it.
async fn together(
    store: &PgStore,
    batch: &[Queued],
) -> Result<Vec<Box<dyn Any + Send>>, StoreError> {
    let mut tx = store.begin("begin a batched write").await?;
    let mut outs = Vec::with_capacity(batch.len());
    for q in batch {
        outs.push((q.job)(&mut tx).await?);
    }
    tx.commit("commit a batched write").await?;
    Ok(outs)
}
