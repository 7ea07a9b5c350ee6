//! The narrow transactional interface the domain rules run over. The rollout rules
//! ([`crate::rollout::grants`]) and the check path ([`crate::service`]) are written once, against
//! [`StoreTx`]; each store implements its operations in a few lines of SQL and runs jobs through
//! a [`Transactor`]. Both stores commit jobs queued together in one transaction (group commit):
//! SQLite's single writer thread ([`crate::store::SqliteWriter`]) runs each job of a batch in a
//! savepoint, so a job that fails rolls back alone while the others commit; PostgreSQL's
//! batcher (`store/postgres_batch.rs`) runs the jobs of one group's queue together and, when
//! one fails, runs each of them again alone.
//!
//! A job is a closure over the transaction; it awaits only the transaction's operations (a
//! store may run it to completion in one poll, as SQLite's writer does, and fails a job that
//! waits on anything else: no locks, timers or other I/O inside a transaction). Its result is
//! handed back only after the transaction is durable.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use super::{StoreError, StoreFuture};
use crate::rollout::grants::GrantTx;
use crate::store::instances::InstanceTx;

/// A future returned by a transaction operation, borrowing the transaction.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 't>>;

/// Every operation a write transaction offers the domain code.
pub trait StoreTx: GrantTx + InstanceTx {}

impl<T: GrantTx + InstanceTx + ?Sized> StoreTx for T {}

/// A type-erased job: runs in a transaction, returns its result boxed. A store may run it more
/// than once, each time in a new transaction, when the database aborted the earlier one to
/// break a deadlock (PostgreSQL); only the last run's writes are committed.
pub type TxJob =
    Box<dyn for<'t> Fn(&'t mut dyn StoreTx) -> TxFuture<'t, Box<dyn Any + Send>> + Send + Sync>;

/// How a write is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A client waits for it (a grant, an event, a status change): it goes first.
    Answer,
    /// Bookkeeping nobody waits on (a batch of coalesced check-ins): one per transaction, after
    /// the waiting writes.
    Background,
}

/// Where a check's write job queues ([`Transactor::run_in`]): the lane of the group whose grant
/// it may attempt, or one of that group's shared lanes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriteLane {
    /// The group.
    pub group: String,
    /// One of the group's [`SHARED_LANES`] shared lanes: a plain first check (no events) whose
    /// grant attempt counts nothing that another grant of the group changes (see
    /// [`crate::rollout::prefetch::GrantPrefetch::counts_nothing`]). Such attempts may be
    /// decided by several transactions at once. `None`: the group's own lane.
    pub shared: Option<u16>,
}

/// Shared lanes per group ([`WriteLane::shared`]).
pub const SHARED_LANES: u16 = 4;

/// Runs jobs in write transactions.
pub trait Transactor: Send + Sync + std::fmt::Debug {
    /// Runs `job` in a write transaction; resolves with its result once that is durable.
    fn run(&self, job: TxJob, urgency: Urgency) -> StoreFuture<'_, Box<dyn Any + Send>>;

    /// As [`Transactor::run`], for a job that mostly contends on `lane`: a store may run jobs
    /// of different lanes in different transactions at once, and batch a lane's jobs together.
    fn run_in(
        &self,
        job: TxJob,
        urgency: Urgency,
        lane: Option<WriteLane>,
    ) -> StoreFuture<'_, Box<dyn Any + Send>> {
        let _ = lane;
        self.run(job, urgency)
    }
}

/// Runs `f` in a write transaction of `t` and returns its result once it is durable.
pub async fn transact<T, F>(t: &dyn Transactor, urgency: Urgency, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: for<'t> Fn(&'t mut dyn StoreTx) -> TxFuture<'t, T> + Send + Sync + 'static,
{
    transact_in(t, urgency, None, f).await
}

/// As [`transact`], in `lane` ([`Transactor::run_in`]).
pub async fn transact_in<T, F>(
    t: &dyn Transactor,
    urgency: Urgency,
    lane: Option<WriteLane>,
    f: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: for<'t> Fn(&'t mut dyn StoreTx) -> TxFuture<'t, T> + Send + Sync + 'static,
{
    let job: TxJob = Box::new(move |tx| {
        let fut = f(tx);
        Box::pin(async move { fut.await.map(|v| Box::new(v) as Box<dyn Any + Send>) })
    });
    let out = t.run_in(job, urgency, lane).await?;
    out.downcast::<T>()
        .map(|b| *b)
        .map_err(|_| StoreError::Internal("a transaction job returned another type".into()))
}

/// The jobs waiting for a group-commit writer (SQLite's writer thread, PostgreSQL's lanes): jobs a
/// client waits for go first, and a background job (a batch of coalesced check-ins) rides along,
/// at most one per transaction, so bookkeeping never holds a grant up for long. The queues need
/// no bound of their own: an answer job is a request in flight (bounded by the connection cap),
/// and the check-in buffer sends one background job at a time.
#[derive(Debug)]
pub(crate) struct JobQueues<T> {
    answer: VecDeque<T>,
    background: VecDeque<T>,
    /// No job is taken any more; the writer stops once the queues are empty.
    closing: bool,
}

impl<T> Default for JobQueues<T> {
    fn default() -> Self {
        Self {
            answer: VecDeque::new(),
            background: VecDeque::new(),
            closing: false,
        }
    }
}

impl<T> JobQueues<T> {
    /// Queues `job` by its urgency; hands it back once closing.
    pub(crate) fn push(&mut self, urgency: Urgency, job: T) -> Result<(), T> {
        if self.closing {
            return Err(job);
        }
        match urgency {
            Urgency::Answer => self.answer.push_back(job),
            Urgency::Background => self.background.push_back(job),
        }
        Ok(())
    }

    /// Whether no job waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.answer.is_empty() && self.background.is_empty()
    }

    /// How many jobs wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.answer.len() + self.background.len()
    }

    /// Whether the queues are closing.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// The next batch: up to `max_answers` answer jobs, then one background job if the batch
    /// holds fewer than `max_jobs`.
    pub(crate) fn take(&mut self, max_answers: usize, max_jobs: usize) -> Vec<T> {
        let take = self.answer.len().min(max_answers);
        let mut batch: Vec<T> = self.answer.drain(..take).collect();
        if batch.len() < max_jobs
            && let Some(b) = self.background.pop_front()
        {
            batch.push(b);
        }
        batch
    }

    /// Closes the queues (new jobs are refused) and returns the jobs still waiting.
    pub(crate) fn close(&mut self) -> Vec<T> {
        self.closing = true;
        let answer = std::mem::take(&mut self.answer);
        let background = std::mem::take(&mut self.background);
        answer.into_iter().chain(background).collect()
    }

    /// Closes the queues once the jobs waiting are taken (new jobs are refused).
    pub(crate) fn close_when_done(&mut self) {
        self.closing = true;
    }
}
