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
//! A run, in order: flush pending check-ins; the aged passes (events, history, activity, grants
//! group by group), each walking its timestamp index batch after batch; then the forget pass,
//! page by page through the stale instances (oldest first), checked against the in-memory fleet
//! (a machine that checked in since is kept), forgotten in the store and in memory together
//! while the fleet's batch writer is held off. A dry run counts the same rows in read
//! transactions and deletes nothing.

pub mod config;
pub mod metrics;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

pub use config::{RetentionArgs, RetentionFile, RetentionSettings};
pub use metrics::RetentionMetrics;

use crate::clock::Clock;
use crate::fleet::{Fleet, InstanceKey};
use crate::store::StoreError;
use crate::store::retention::{AgedTable, Cutoffs, PruneCounts, RetentionStore, StaleInstance};

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
    /// The store failed.
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Resolves once the server shuts down.
async fn shut_down(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await.map(drop);
}

/// The retention pruner: one per server process.
#[derive(Debug)]
pub struct Pruner {
    store: Arc<dyn RetentionStore>,
    fleet: Arc<Fleet>,
    clock: Arc<dyn Clock>,
    settings: RetentionSettings,
    metrics: RetentionMetrics,
    /// One run at a time (background or operator).
    running: tokio::sync::Mutex<()>,
    /// Real runs finished (for readiness in tests and tools).
    runs: watch::Sender<u64>,
    /// Set when the server shuts down: a run stops after its current batch.
    shutdown: watch::Receiver<bool>,
}

impl Pruner {
    /// A pruner over `store`, forgetting from `fleet` too.
    pub fn new(
        store: Arc<dyn RetentionStore>,
        fleet: Arc<Fleet>,
        clock: Arc<dyn Clock>,
        settings: RetentionSettings,
        metrics: RetentionMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            fleet,
            clock,
            settings,
            metrics,
            running: tokio::sync::Mutex::new(()),
            runs: watch::Sender::new(0),
            shutdown,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &RetentionSettings {
        &self.settings
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
                        // Errors are logged and counted by `run`; the next tick retries.
                        let _ = me.run(false).await;
                    }
                    () = shut_down(&mut stop) => break,
                }
            }
        }))
    }

    /// Runs one prune now (waiting for a run in progress to finish first) and reports it.
    pub async fn run(&self, dry_run: bool) -> Result<PruneReport, StoreError> {
        let _one = self.running.lock().await;
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
        // Check-ins still in memory reach the store first, so the store's last check-in times
        // are current (the forget pass also checks memory).
        self.fleet.flush().await?;
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
            let keys: Vec<InstanceKey> = page
                .into_iter()
                .map(|s| s.key)
                .filter(|k| self.fleet.is_stale(k, forget))
                .collect();
            if dry_run {
                let out = self
                    .store
                    .forget_instances(&keys, cutoffs, u64::MAX, Duration::MAX, true)
                    .await?;
                rep.rows.merge(&out.counts);
            } else {
                self.forget_keys(&keys, forget, cutoffs, rep).await?;
            }
            if !full {
                break;
            }
        }
        if !dry_run {
            self.drop_forgotten_elsewhere(forget).await?;
        }
        Ok(())
    }

    /// Forgets `keys` in batches of at most `batch_size` rows, in the store and in memory
    /// together, with the fleet's writer held off so no pending batch re-creates a row.
    async fn forget_keys(
        &self,
        keys: &[InstanceKey],
        forget: i64,
        cutoffs: &Cutoffs,
        rep: &mut PruneReport,
    ) -> Result<(), Stop> {
        let mut rest = keys;
        while !rest.is_empty() {
            let out = {
                let _w = self.fleet.write_guard().await;
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
                self.fleet.forget_stale(&out.forgotten, forget);
                out
            };
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

    /// Drops from memory the stale rows the store no longer has (another server sharing the
    /// database forgot them), so this server's metrics and rollout counts follow.
    async fn drop_forgotten_elsewhere(&self, forget: i64) -> Result<(), Stop> {
        let stale = self.fleet.stale_keys(forget);
        if stale.is_empty() {
            return Ok(());
        }
        let existing: std::collections::HashSet<InstanceKey> = self
            .store
            .existing_instances(&stale)
            .await?
            .into_iter()
            .collect();
        let gone: Vec<InstanceKey> = stale
            .into_iter()
            .filter(|k| !existing.contains(k))
            .collect();
        let n = self.fleet.forget_stale(&gone, forget);
        if n > 0 {
            tracing::info!(
                instances = n,
                "dropped instances another server forgot from memory"
            );
        }
        Ok(())
    }
}
