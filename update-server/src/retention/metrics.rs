//! Retention metrics: rows pruned per table, runs by result, scheduled passes skipped (another
//! server process held the lease), and the last run's time, duration and longest batch (dry
//! runs change none of them).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// Labels of the pruned-rows counter (bounded: the six pruned tables).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// Table name (`events`, `instance_status_history`, `activity`, `rollout_grants`,
    /// `instances`, `refused_versions`).
    pub table: &'static str,
}

/// Labels of the runs counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// `ok`, `error` or `interrupted` (the server stopped during the run).
    pub result: &'static str,
}

/// Labels of the skipped-passes counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    /// Why: `lease_held` (another server process holds the retention lease).
    pub reason: &'static str,
}

/// The retention metric families.
#[derive(Debug, Clone, Default)]
pub struct RetentionMetrics {
    /// Rows deleted, per table.
    pub pruned: Family<TableLabels, Counter>,
    /// Prune runs (background and operator-triggered, not dry runs), by result.
    pub runs: Family<RunLabels, Counter>,
    /// Scheduled passes not run, by reason.
    pub skipped: Family<SkipLabels, Counter>,
    /// When the last run ended (Unix seconds, the server's clock).
    pub last_run: Gauge,
    /// How long the last run took.
    pub last_duration: Gauge<f64, AtomicU64>,
    /// The longest time one batch of the last run held the write lock.
    pub longest_batch: Gauge<f64, AtomicU64>,
}

impl RetentionMetrics {
    /// Creates the families and registers them with the server's registry.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(
            "retention_pruned_rows",
            "Rows deleted by retention, per table",
            m.pruned.clone(),
        );
        metrics.register(
            "retention_runs",
            "Retention prune runs by result",
            m.runs.clone(),
        );
        metrics.register(
            "retention_passes_skipped",
            "Scheduled retention passes skipped, by reason (lease_held: another server process \
             holds the retention lease)",
            m.skipped.clone(),
        );
        metrics.register(
            "retention_last_run_timestamp_seconds",
            "When the last retention prune ended (Unix seconds)",
            m.last_run.clone(),
        );
        metrics.register(
            "retention_last_run_duration_seconds",
            "How long the last retention prune took",
            m.last_duration.clone(),
        );
        metrics.register(
            "retention_last_run_longest_batch_seconds",
            "Longest time one batch of the last retention prune held the write lock",
            m.longest_batch.clone(),
        );
        m
    }

    /// Counts a scheduled pass skipped for `reason`.
    pub fn skipped(&self, reason: &'static str) {
        self.skipped.get_or_create(&SkipLabels { reason }).inc();
    }

    /// Counts rows deleted from `table`.
    pub fn pruned(&self, table: &'static str, n: u64) {
        if n > 0 {
            self.pruned.get_or_create(&TableLabels { table }).inc_by(n);
        }
    }
}
