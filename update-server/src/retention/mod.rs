//! Retention: the server prunes what it no longer needs, so its tables stop growing with time.
//! Events, status history, activity and settled grants go after their retention period; an
//! instance not seen for `forget_instances_after_days` is forgotten with everything about it.
//! What the server still needs is never deleted (see [`crate::store::retention`]).
//!
//! A [`Pruner`] runs at start and then every `interval_secs` in the background, and on demand
//! (`POST /api/v1/maintenance/prune`, `update-server prune`). Each batch is its own short write
//! transaction of at most `batch_size` rows, and the pruner pauses between batches for as long
//! as the batch held the write lock and at least [`MIN_PAUSE`], so check-ins (which need the
//! same SQLite write lock) get in between while a large prune runs. Time comes from the injected
//! clock.
//!
//! A run, in order: take the retention lease; flush pending check-ins, so the database is the
//! whole truth; the aged passes (events, history, activity, grants group by group), each walking
//! its timestamp index batch after batch; then the forget pass, page by page through the stale
//! instances (oldest first), each forgotten in a write transaction that checks again, in SQL,
//! that it is still stale and holds no grant in flight (a machine that checked in since is
//! kept); then give the lease back. A dry run counts the same rows in read transactions, deletes
//! nothing and needs no lease.
//!
//! A check-in arriving while its machine's stale row is being forgotten waits in [`Checkins`]
//! and, when its batch is written, simply creates a new row: the machine comes back as a new one
//! (its refusals went with the old row). Nothing in memory has to be kept in step with the
//! store.
//!
//! One pass at a time across every server process sharing the database: a pass holds the lease
//! [`LEASE`] in the store ([`RetentionStore::take_lease`]) for [`LEASE_TTL_SECS`], renewed
//! between batches once half of it has gone, and given back at the end. A scheduled pass that
//! finds the lease held elsewhere is skipped (logged at debug, counted in
//! `retention_passes_skipped_total{reason="lease_held"}`); an operator's run is refused with
//! [`StoreError::Conflict`] (409) naming the holder and when its lease ends. On SQLite the lease
//! is a row: a process that dies mid-pass holds it until it expires. On PostgreSQL it is a
//! session advisory lock: it lasts as long as the holder's connection, so a dying replica loses
//! it at once, and a live one keeps it past its expiry while it still runs the pass.

pub mod config;
pub mod metrics;
pub mod protection;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

pub use config::{RetentionArgs, RetentionFile, RetentionSettings};
pub use metrics::RetentionMetrics;

use crate::checkins::{Checkins, InstanceKey};
use crate::clock::{Clock, format_utc};
use crate::store::StoreError;
use crate::store::retention::{
    AgedTable, Cutoffs, LeaseOutcome, PruneCounts, RetentionStore, StaleInstance,
};

/// The name of the lease a pass holds in the store.
pub const LEASE: &str = "retention";
/// How long a taken lease lasts (seconds) unless renewed: far longer than one batch and the
/// pause after it, between which the pass renews it once half of it has gone.
pub const LEASE_TTL_SECS: i64 = 600;

/// Stale instances read per page of the forget pass.
const STALE_PAGE: u32 = 1000;
/// Longest time a forget batch goes on taking instances while it holds the write lock (each
/// instance costs several statements; `batch_size` bounds its rows as well).
pub const FORGET_BATCH_TIME: Duration = Duration::from_millis(25);
/// Shortest pause between two batches: SQLite's busy handler, with which a writer waits for
/// the lock, sleeps at most 100 ms between two attempts, so a writer waiting during a batch
/// always tries again (and gets the lock) before the next one.
pub const MIN_PAUSE: Duration = Duration::from_millis(100);

/// The instants before which a run deletes rows (Unix seconds; `null`: kept forever).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CutoffReport {
    /// Events before this go.
    pub events_before: Option<i64>,
    /// Status history entries before this go (each instance's newest one aside).
    pub history_before: Option<i64>,
    /// Activity entries before this go.
    pub activity_before: Option<i64>,
    /// Settled grants no rollout counts, settled before this, go.
    pub grants_before: Option<i64>,
    /// Instances last seen before this are forgotten.
    pub forget_instances_before: Option<i64>,
}

/// What a prune run did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PruneReport {
    /// Nothing was deleted; `rows` are what a real run would delete now.
    pub dry_run: bool,
    /// The run's "now" (Unix seconds, the server's clock).
    pub at: i64,
    /// The cutoffs applied.
    pub cutoffs: CutoffReport,
    /// Rows deleted (or that would be), per table.
    pub rows: PruneCounts,
    /// All rows.
    pub total: u64,
    /// Write transactions (0 in a dry run).
    pub batches: u64,
    /// The longest time one batch held the write lock, in milliseconds.
    pub longest_batch_ms: f64,
    /// The whole run, in milliseconds (pauses between batches included).
    pub duration_ms: f64,
    /// The server began shutting down during the run, which stopped after its current batch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl PruneReport {
    fn batch(&mut self, locked: Duration) {
        self.batches += 1;
        self.longest_batch_ms = self.longest_batch_ms.max(locked.as_secs_f64() * 1000.0);
    }
}

/// Why a run stopped early.
enum Stop {
    /// The server is shutting down.
    Shutdown,
    /// The store failed (or the lease went to another process).
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// What an attempt at a run came to.
enum Attempt {
    /// It ran (perhaps cut short by shutdown).
    Ran(PruneReport),
    /// Another process holds the lease.
    LeaseHeld {
        /// Who.
        holder: String,
        /// Until when (Unix seconds).
        expires_at: i64,
    },
}

/// Resolves once the server shuts down.
async fn shut_down(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await.map(drop);
}

/// This process's lease holder id: host, process id, a sequence number (two pruners in one
/// process differ) and a random number (a reused process id on the same host differs).
fn holder_id() -> String {
    use rand_core::RngCore as _;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    let mut r = [0u8; 4];
    // Without randomness the host, process id and sequence still tell processes apart.
    let _ = rand_core::OsRng.try_fill_bytes(&mut r);
    format!(
        "{host}/{}/{}/{:08x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        u32::from_be_bytes(r)
    )
}

/// The error of an operator's run while another process holds the lease.
fn lease_held(holder: &str, expires_at: i64) -> StoreError {
    StoreError::Conflict(format!(
        "a retention pass is running in another server process ({holder}; its lease ends at \
         {} UTC unless renewed); try again once it finished",
        format_utc(expires_at)
    ))
}

/// The retention pruner: one per server process.
#[derive(Debug)]
pub struct Pruner {
    store: Arc<dyn RetentionStore>,
    checkins: Arc<Checkins>,
    clock: Arc<dyn Clock>,
    settings: RetentionSettings,
    metrics: RetentionMetrics,
    /// This process's id as a lease holder.
    holder: String,
    /// When the lease of the run in progress ends (Unix seconds; only read during a run).
    lease_until: AtomicI64,
    /// One run at a time in this process (background or operator).
    running: tokio::sync::Mutex<()>,
    /// Real runs finished (for readiness in tests and tools).
    runs: watch::Sender<u64>,
    /// Set when the server shuts down: a run stops after its current batch.
    shutdown: watch::Receiver<bool>,
}

impl Pruner {
    /// A pruner over `store` that writes the server's pending `checkins` before each run.
    pub fn new(
        store: Arc<dyn RetentionStore>,
        checkins: Arc<Checkins>,
        clock: Arc<dyn Clock>,
        settings: RetentionSettings,
        metrics: RetentionMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            checkins,
            clock,
            settings,
            metrics,
            holder: holder_id(),
            lease_until: AtomicI64::new(0),
            running: tokio::sync::Mutex::new(()),
            runs: watch::Sender::new(0),
            shutdown,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &RetentionSettings {
        &self.settings
    }

    /// This process's id as holder of the retention lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The number of real runs finished so far, updated at the end of each.
    pub fn finished_runs(&self) -> watch::Receiver<u64> {
        self.runs.subscribe()
    }

    /// Starts the background pruner (at once, then every interval) unless it is turned off;
    /// it ends when the server shuts down.
    pub fn spawn(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.settings.interval?;
        let me = Arc::clone(self);
        let mut stop = self.shutdown.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        // Errors are logged and counted by the run; the next tick retries.
                        let _ = me.run_scheduled().await;
                    }
                    () = shut_down(&mut stop) => break,
                }
            }
        }))
    }

    /// Runs one prune now (waiting for a run of this process in progress to finish first) and
    /// reports it. A real run while another server process holds the lease is refused with
    /// [`StoreError::Conflict`] naming the holder; a dry run needs no lease.
    pub async fn run(&self, dry_run: bool) -> Result<PruneReport, StoreError> {
        match self.attempt(dry_run).await? {
            Attempt::Ran(rep) => Ok(rep),
            Attempt::LeaseHeld { holder, expires_at } => Err(lease_held(&holder, expires_at)),
        }
    }

    /// Runs one scheduled prune, or skips it (`None`) when another server process holds the
    /// lease: that process is pruning, and the next interval tries again.
    pub async fn run_scheduled(&self) -> Result<Option<PruneReport>, StoreError> {
        match self.attempt(false).await? {
            Attempt::Ran(rep) => Ok(Some(rep)),
            Attempt::LeaseHeld { holder, expires_at } => {
                tracing::debug!(
                    holder = %holder,
                    expires_at,
                    "retention pass skipped: another server process holds the lease"
                );
                self.metrics.skipped("lease_held");
                Ok(None)
            }
        }
    }

    /// Takes the lease (unless dry), runs, gives the lease back.
    async fn attempt(&self, dry_run: bool) -> Result<Attempt, StoreError> {
        let _one = self.running.lock().await;
        if dry_run {
            return self.pass(true).await.map(Attempt::Ran);
        }
        let now = self.clock.now();
        let until = now.saturating_add(LEASE_TTL_SECS);
        match self.store.take_lease(LEASE, &self.holder, now, until).await {
            Ok(LeaseOutcome::Taken) => self.lease_until.store(until, Ordering::SeqCst),
            Ok(LeaseOutcome::Held { holder, expires_at }) => {
                return Ok(Attempt::LeaseHeld { holder, expires_at });
            }
            Err(e) => {
                tracing::warn!(error = %e, "taking the retention lease failed; nothing pruned");
                self.metrics
                    .runs
                    .get_or_create(&metrics::RunLabels { result: "error" })
                    .inc();
                return Err(e);
            }
        }
        let res = self.pass(false).await;
        if let Err(e) = self.store.release_lease(LEASE, &self.holder).await {
            tracing::warn!(error = %e, "giving the retention lease back failed; it expires");
        }
        res.map(Attempt::Ran)
    }

    /// One run, logged and (unless dry) counted.
    async fn pass(&self, dry_run: bool) -> Result<PruneReport, StoreError> {
        let started = Instant::now();
        let now = self.clock.now();
        let cutoffs = self.settings.cutoffs(now);
        let mut rep = PruneReport {
            dry_run,
            at: now,
            cutoffs: CutoffReport {
                events_before: cutoffs.events,
                history_before: cutoffs.history,
                activity_before: cutoffs.activity,
                grants_before: cutoffs.grants,
                forget_instances_before: cutoffs.forget,
            },
            ..PruneReport::default()
        };
        let res = self.passes(&cutoffs, dry_run, &mut rep).await;
        rep.total = rep.rows.total();
        rep.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let result = match &res {
            Ok(()) => "ok",
            Err(Stop::Shutdown) => "interrupted",
            Err(Stop::Store(_)) => "error",
        };
        let r = &rep.rows;
        if let Err(Stop::Store(e)) = &res {
            tracing::warn!(
                error = %e, dry_run, instances = r.instances, history = r.instance_status_history,
                events = r.events, activity = r.activity, grants = r.rollout_grants,
                refusals = r.refused_versions, batches = rep.batches,
                "retention prune failed; rows deleted before the failure stay deleted"
            );
        } else {
            tracing::info!(
                dry_run,
                result,
                instances = r.instances,
                history = r.instance_status_history,
                events = r.events,
                activity = r.activity,
                grants = r.rollout_grants,
                refusals = r.refused_versions,
                total = rep.total,
                batches = rep.batches,
                longest_batch_ms = rep.longest_batch_ms,
                duration_ms = rep.duration_ms,
                "retention prune finished"
            );
        }
        if !dry_run {
            let m = &self.metrics;
            m.runs.get_or_create(&metrics::RunLabels { result }).inc();
            m.last_run.set(self.clock.now());
            m.last_duration.set(rep.duration_ms / 1000.0);
            m.longest_batch.set(rep.longest_batch_ms / 1000.0);
            self.runs.send_modify(|n| *n += 1);
        }
        match res {
            Ok(()) => Ok(rep),
            Err(Stop::Shutdown) => {
                rep.interrupted = true;
                Ok(rep)
            }
            Err(Stop::Store(e)) => Err(e),
        }
    }

    async fn passes(
        &self,
        cutoffs: &Cutoffs,
        dry_run: bool,
        rep: &mut PruneReport,
    ) -> Result<(), Stop> {
        // Check-ins still in memory reach the store first: the store is then the whole truth
        // about when each machine was last seen.
        self.checkins.flush().await?;
        for table in AgedTable::ALL {
            if cutoffs.of(table).is_none() {
                continue;
            }
            if table == AgedTable::Grants {
                for group in self.store.grant_groups().await? {
                    self.drain(table, Some(&group), cutoffs, dry_run, rep)
                        .await?;
                }
            } else {
                self.drain(table, None, cutoffs, dry_run, rep).await?;
            }
        }
        if let Some(forget) = cutoffs.forget {
            self.forget(forget, cutoffs, dry_run, rep).await?;
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Renews the lease before a batch once half of it has gone; stops the run when another
    /// process took it meanwhile (this one was held up for longer than the lease lasts).
    async fn keep_lease(&self) -> Result<(), Stop> {
        let now = self.clock.now();
        if self.lease_until.load(Ordering::SeqCst).saturating_sub(now) > LEASE_TTL_SECS / 2 {
            return Ok(());
        }
        let until = now.saturating_add(LEASE_TTL_SECS);
        match self
            .store
            .take_lease(LEASE, &self.holder, now, until)
            .await?
        {
            LeaseOutcome::Taken => {
                self.lease_until.store(until, Ordering::SeqCst);
                Ok(())
            }
            LeaseOutcome::Held { holder, expires_at } => {
                Err(Stop::Store(StoreError::Conflict(format!(
                    "the retention lease expired during the pass and {holder} took it (until {} \
                     UTC); this pass stopped",
                    format_utc(expires_at)
                ))))
            }
        }
    }

    /// Pauses after a batch that deleted rows for as long as it held the write lock, and at
    /// least [`MIN_PAUSE`], so writers waiting for the lock get it before the next batch (of
    /// this pass or the next); stops the run when the server is shutting down.
    async fn pace(&self, locked: Duration) -> Result<(), Stop> {
        if self.stopping() {
            return Err(Stop::Shutdown);
        }
        tokio::time::sleep(locked.max(MIN_PAUSE)).await;
        Ok(())
    }

    /// Deletes `table`'s aged rows batch after batch (dry: counts them).
    async fn drain(
        &self,
        table: AgedTable,
        group: Option<&str>,
        cutoffs: &Cutoffs,
        dry_run: bool,
        rep: &mut PruneReport,
    ) -> Result<(), Stop> {
        let limit = self.settings.batch_size;
        if dry_run {
            let b = self
                .store
                .prune_aged(table, group, cutoffs, None, limit, true)
                .await?;
            rep.rows.add(table, b.rows);
            return Ok(());
        }
        let mut cursor = None;
        loop {
            self.keep_lease().await?;
            let b = self
                .store
                .prune_aged(table, group, cutoffs, cursor, limit, false)
                .await?;
            rep.batch(b.locked);
            tracing::debug!(
                table = table.table(),
                rows = b.rows,
                locked_ms = b.locked.as_secs_f64() * 1000.0,
                "retention batch"
            );
            rep.rows.add(table, b.rows);
            self.metrics.pruned(table.table(), b.rows);
            if b.rows > 0 {
                self.pace(b.locked).await?;
            }
            cursor = b.next;
            if cursor.is_none() {
                return Ok(());
            }
        }
    }

    /// Forgets the instances not seen since `forget`, page by page.
    async fn forget(
        &self,
        forget: i64,
        cutoffs: &Cutoffs,
        dry_run: bool,
        rep: &mut PruneReport,
    ) -> Result<(), Stop> {
        let mut cursor: Option<StaleInstance> = None;
        loop {
            let page = self
                .store
                .stale_instances(forget, cursor.as_ref(), STALE_PAGE)
                .await?;
            let full = page.len() == STALE_PAGE as usize;
            cursor = page.last().cloned();
            let keys: Vec<InstanceKey> = page.into_iter().map(|s| s.key).collect();
            if dry_run {
                let out = self
                    .store
                    .forget_instances(&keys, cutoffs, u64::MAX, Duration::MAX, true)
                    .await?;
                rep.rows.merge(&out.counts);
            } else {
                self.forget_keys(&keys, cutoffs, rep).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Forgets `keys` in batches of at most `batch_size` rows; each batch checks again, in its
    /// transaction, that every instance is still stale.
    async fn forget_keys(
        &self,
        keys: &[InstanceKey],
        cutoffs: &Cutoffs,
        rep: &mut PruneReport,
    ) -> Result<(), Stop> {
        let mut rest = keys;
        while !rest.is_empty() {
            self.keep_lease().await?;
            let out = self
                .store
                .forget_instances(
                    rest,
                    cutoffs,
                    u64::from(self.settings.batch_size),
                    FORGET_BATCH_TIME,
                    false,
                )
                .await?;
            rep.batch(out.locked);
            tracing::debug!(
                table = "instances",
                instances = out.counts.instances,
                rows = out.counts.total(),
                locked_ms = out.locked.as_secs_f64() * 1000.0,
                "retention batch"
            );
            rep.rows.merge(&out.counts);
            for (table, n) in out.counts.by_table() {
                self.metrics.pruned(table, n);
            }
            if out.counts.total() > 0 {
                self.pace(out.locked).await?;
            }
            if out.handled == 0 {
                break;
            }
            rest = rest.get(out.handled..).unwrap_or_default();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
