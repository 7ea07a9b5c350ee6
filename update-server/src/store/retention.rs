//! Persistence side of retention: what the pruner may delete and how, as a separate trait from
//! [`super::Store`]. Every deleting call is one short write transaction bounded by a row limit,
//! so check-ins wait at most one batch behind a prune.
//!
//! What is never deleted, whatever the settings (the rules are in the SQL of the implementation
//! and documented in `docs/usage/server.md`, *Retention*):
//! - an instance's row and its newest status history entry, unless the instance is forgotten;
//! - an instance with an `in_flight` grant (it holds a concurrency slot): it is never forgotten;
//! - `in_flight` grants, and `installed` grants of a machine the server still knows;
//! - grants of a version a group's rollout still counts: the version of a package the group's
//!   channel points at (its target, every architecture), the group's floors, and the target of
//!   every group gated on it (`gate.group`); and grants inside the group's rate-limit window;
//! - refused versions of a kept instance.
//!
//! Which grants a rollout counts is domain code ([`crate::retention::protection`]); a store
//! only reads what it is computed from, in the deleting transaction. A pass runs in one server
//! process at a time: the pruner holds a lease ([`RetentionStore::take_lease`]) while it runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::StoreFuture;
use crate::checkins::InstanceKey;

/// A table pruned by age, one batch at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgedTable {
    /// `events`: client events older than the events retention.
    Events,
    /// `instance_status_history`: entries older than the history retention, each instance's
    /// newest entry aside.
    History,
    /// `activity`: entries older than the activity retention.
    Activity,
    /// `rollout_grants`: settled grants older than the grants retention that no rollout counts.
    Grants,
}

impl AgedTable {
    /// Every aged table, in the order a run prunes them.
    pub const ALL: [Self; 4] = [Self::Events, Self::History, Self::Activity, Self::Grants];

    /// The table's name in the database (and in metrics and reports).
    pub fn table(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::History => "instance_status_history",
            Self::Activity => "activity",
            Self::Grants => "rollout_grants",
        }
    }
}

/// The instants before which rows go, as of one run (`None`: that kind of row is kept forever).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cutoffs {
    /// The run's "now" (Unix seconds): rate-limit windows end here.
    pub now: i64,
    /// Events with `at` before this go.
    pub events: Option<i64>,
    /// Status history entries with `at` before this go (an instance's newest one aside).
    pub history: Option<i64>,
    /// Activity entries with `at` before this go.
    pub activity: Option<i64>,
    /// Grants settled (or last progressing) before this go, unless a rollout counts them.
    pub grants: Option<i64>,
    /// Instances whose last check-in is before this are forgotten.
    pub forget: Option<i64>,
}

impl Cutoffs {
    /// The cutoff of an aged table.
    pub fn of(&self, table: AgedTable) -> Option<i64> {
        match table {
            AgedTable::Events => self.events,
            AgedTable::History => self.history,
            AgedTable::Activity => self.activity,
            AgedTable::Grants => self.grants,
        }
    }
}

/// Rows pruned (or, in a dry run, that would be), per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PruneCounts {
    /// Forgotten instances (`instances` rows).
    pub instances: u64,
    /// Status history entries.
    pub instance_status_history: u64,
    /// Client events.
    pub events: u64,
    /// Activity entries.
    pub activity: u64,
    /// Rollout grants.
    pub rollout_grants: u64,
    /// Refused versions (of forgotten instances only).
    pub refused_versions: u64,
}

impl PruneCounts {
    /// Every count with its table name.
    pub fn by_table(&self) -> [(&'static str, u64); 6] {
        [
            ("instances", self.instances),
            ("instance_status_history", self.instance_status_history),
            ("events", self.events),
            ("activity", self.activity),
            ("rollout_grants", self.rollout_grants),
            ("refused_versions", self.refused_versions),
        ]
    }

    /// All rows.
    pub fn total(&self) -> u64 {
        self.by_table().iter().map(|(_, n)| n).sum()
    }

    /// Adds `n` rows to an aged table's count.
    pub fn add(&mut self, table: AgedTable, n: u64) {
        let field = match table {
            AgedTable::Events => &mut self.events,
            AgedTable::History => &mut self.instance_status_history,
            AgedTable::Activity => &mut self.activity,
            AgedTable::Grants => &mut self.rollout_grants,
        };
        *field += n;
    }

    /// Adds another count, table by table.
    pub fn merge(&mut self, o: &Self) {
        self.instances += o.instances;
        self.instance_status_history += o.instance_status_history;
        self.events += o.events;
        self.activity += o.activity;
        self.rollout_grants += o.rollout_grants;
        self.refused_versions += o.refused_versions;
    }
}

/// An instance not seen since the forget cutoff, with no grant in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleInstance {
    /// Machine and application.
    pub key: InstanceKey,
    /// Its last check-in as stored (Unix seconds); the listing's cursor.
    pub last_check_at: i64,
}

/// Where an aged pass stands: the time and id of the last row its previous batch took (rows
/// are taken in that order, so the next batch starts after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The row's time (`at`; `granted_at` for grants).
    pub at: i64,
    /// The row's id.
    pub id: i64,
}

/// What one aged batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    /// Rows deleted (or, dry, counted).
    pub rows: u64,
    /// How long the transaction held the database's write lock (from taking it to the end of
    /// its commit; zero in a dry run, which takes no lock).
    pub locked: Duration,
    /// Where the next batch starts; `None` when the pass is done (always in a dry run).
    pub next: Option<Cursor>,
}

/// What one forgetting call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForgetOutcome {
    /// Rows deleted (or counted), per table.
    pub counts: PruneCounts,
    /// How long the transaction held the write lock (zero in a dry run).
    pub locked: Duration,
    /// How many of the given keys were handled (the rest did not fit in the row limit).
    pub handled: usize,
}

/// What taking a lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the lease until the instant it asked for.
    Taken,
    /// Another holder has it.
    Held {
        /// The holder's id (which server process).
        holder: String,
        /// When its lease ends unless renewed (Unix seconds).
        expires_at: i64,
    },
}

/// Retention persistence.
pub trait RetentionStore: Send + Sync + std::fmt::Debug {
    /// Deletes at most `limit` rows of `table` older than its cutoff, after `after`, in one
    /// write transaction (for grants: of group `group` only). With `dry_run`, deletes nothing
    /// and counts every row the pass would delete, without a limit.
    fn prune_aged<'a>(
        &'a self,
        table: AgedTable,
        group: Option<&'a str>,
        cutoffs: &'a Cutoffs,
        after: Option<Cursor>,
        limit: u32,
        dry_run: bool,
    ) -> StoreFuture<'a, Batch>;
    /// The groups that have grants (including groups deleted since), for the grants pass.
    fn grant_groups(&self) -> StoreFuture<'_, Vec<String>>;
    /// Instances last checked before `before` with no `in_flight` grant, oldest first, after
    /// `after` (a cursor: the previous page's last entry), at most `limit`.
    fn stale_instances<'a>(
        &'a self,
        before: i64,
        after: Option<&'a StaleInstance>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<StaleInstance>>;
    /// Forgets instances (their row, status history, events, refused versions and the grants no
    /// rollout counts) in one write transaction, in order, stopping after the instance that
    /// brings the rows deleted to `max_rows` or the time holding the write lock to
    /// `max_locked`. Whether an instance may go is decided in SQL inside that transaction: one
    /// that checked in since `cutoffs.forget` or got a grant in flight is skipped. With
    /// `dry_run`, deletes nothing and counts what a real run would delete after the aged passes
    /// (rows those passes delete are not counted twice), for every key.
    fn forget_instances<'a>(
        &'a self,
        keys: &'a [InstanceKey],
        cutoffs: &'a Cutoffs,
        max_rows: u64,
        max_locked: Duration,
        dry_run: bool,
    ) -> StoreFuture<'a, ForgetOutcome>;
    /// Takes lease `name` for `holder` until `expires_at` (Unix seconds) if it is free, expired
    /// at `now`, or already `holder`'s (then it is renewed), in one write transaction; otherwise
    /// reports who holds it. SQLite upserts the `job_leases` row only when it is free, expired
    /// or the caller's. A PostgreSQL store may do the same or instead hold a session advisory
    /// lock (`pg_try_advisory_lock`) on a dedicated connection for the pass, reporting the
    /// backend holding it as the holder; either way two holders never hold `name` at once, and
    /// a holder that dies loses it (at expiry, or when its session ends).
    fn take_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        now: i64,
        expires_at: i64,
    ) -> StoreFuture<'a, LeaseOutcome>;
    /// Gives lease `name` up if `holder` still has it (a no-op otherwise).
    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str) -> StoreFuture<'a, ()>;
}
