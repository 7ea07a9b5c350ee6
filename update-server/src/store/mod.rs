//! Persistent storage behind traits, so handlers do not know the database. [`SqliteStore`] is
//! the embedded default; [`PgStore`] serves several replicas on one PostgreSQL database.

pub mod credential;
pub mod fleetlock;
pub mod instances;
pub mod migrate;
pub mod open;
pub mod postgres;
pub mod retention;
pub mod rollout;
mod sqlite;
pub mod sqlx_rows;
pub mod sqlx_shared;
#[cfg(test)]
pub mod testkit;
#[cfg(test)]
mod tests;
pub mod tx;

use std::future::Future;
use std::pin::Pin;

pub use credential::CredentialStore;
pub use fleetlock::FleetLockStore;
pub use open::{Database, Stores};
pub use postgres::{CATALOGUE_CHANNEL, PgStore, PgTx};
pub use retention::RetentionStore;
pub use rollout::RolloutStore;
pub use sqlite::{DirectPool, DirectTx, SqliteStore, SqliteWriter, WriterTask};

use crate::lifecycle::InstanceStatus;
use crate::model::{
    Activity, App, Channel, EventRecord, Group, Instance, NewActivity, Package, PackageDelta,
    PackageFile, StatusChange,
};

/// A boxed future returned by [`Store`] methods (keeps the trait usable as `dyn Store`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A uniqueness or reference rule was violated.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored value could not be decoded.
    #[error("corrupt stored data in {table}.{column}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The database failed.
    #[error("database error during {op}: {source}")]
    Database {
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// The database failed (on a direct connection of the check path).
    #[error("database error during {op}: {source}")]
    Sqlite {
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Schema migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store's own machinery failed (its writer stopped, a job panicked).
    #[error("storage internal error: {0}")]
    Internal(String),
}

/// Everything the in-memory catalogue is built from.
#[derive(Debug, Clone, Default)]
pub struct CatalogueData {
    /// Applications.
    pub apps: Vec<App>,
    /// Packages.
    pub packages: Vec<Package>,
    /// Channels.
    pub channels: Vec<Channel>,
    /// Groups.
    pub groups: Vec<Group>,
    /// Aliases operators assigned to machines, by machine id (rollout canaries may name them).
    pub machine_aliases: std::collections::BTreeMap<String, String>,
}

/// How many instances of an application's group run a version in a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceCount {
    /// Application.
    pub app_id: String,
    /// Group (`None`: the track named none).
    pub group_id: Option<String>,
    /// Version.
    pub version: String,
    /// Status.
    pub status: InstanceStatus,
    /// Instances.
    pub count: i64,
}

/// How many machines of a group ran a version at a sampled instant (the dashboard's
/// version-over-time chart; see [`crate::version_history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSample {
    /// Application.
    pub app_id: String,
    /// Group.
    pub group_id: String,
    /// The instant (Unix seconds, a multiple of the sampling interval).
    pub at: i64,
    /// The version; `None`: every version beyond the group's most common ones, summed.
    pub version: Option<String>,
    /// Machines.
    pub machines: u64,
}

/// The last upstream sync of one followed channel and architecture ([`crate::sync`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SyncState {
    /// Application.
    pub app_id: String,
    /// Local channel name.
    pub channel: String,
    /// Architecture.
    pub arch: String,
    /// The payload format followed.
    pub format: crate::model::PackageFormat,
    /// When it was last checked (Unix seconds).
    pub checked_at: i64,
    /// The version the upstream last offered.
    pub upstream_version: Option<String>,
    /// The local package that version is.
    pub package_id: Option<String>,
    /// When a check last succeeded.
    pub synced_at: Option<i64>,
    /// The last check's error (`None` when it succeeded).
    pub error: Option<String>,
}

/// How many instances of one group run a version in a status (and, on hold, for which reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInstanceCount {
    /// Version.
    pub version: String,
    /// Status.
    pub status: InstanceStatus,
    /// The hold reason of instances on hold (`status_detail`); empty for the others.
    pub hold_reason: String,
    /// Instances.
    pub count: u64,
}

/// The conflict of a group update whose policy changed since the caller read it.
pub(crate) fn group_changed(g: &Group) -> StoreError {
    StoreError::Conflict(format!(
        "group {} changed since it was read (another process, or its rollout halted itself): \
         read it again and retry",
        g.name
    ))
}

/// Instance list filters (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    /// Exact machine id.
    pub machine_id: Option<String>,
    /// Application.
    pub app_id: Option<String>,
    /// Group id.
    pub group_id: Option<String>,
    /// Exact version.
    pub version: Option<String>,
    /// Status.
    pub status: Option<InstanceStatus>,
    /// Substring of machine id, alias or IP.
    pub search: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Page offset.
    pub offset: u32,
}

/// An event to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Event type.
    pub event_type: i64,
    /// Event result.
    pub event_result: i64,
    /// Error code as sent.
    pub error_code: Option<i64>,
    /// previousversion as sent.
    pub previous_version: String,
}

/// A durable change to one instance: its new row plus what explains it.
#[derive(Debug, Clone, Default)]
pub struct InstanceChange {
    /// New status history entry.
    pub status_change: Option<StatusChange>,
    /// Events received.
    pub events: Vec<NewEvent>,
    /// Activity entries.
    pub activity: Vec<NewActivity>,
}

/// Storage operations used by the server. Every write is one transaction, durable when the
/// future resolves.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Checks the database answers.
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// Loads apps, packages, channels and groups.
    fn load_catalogue(&self) -> StoreFuture<'_, CatalogueData>;
    /// Inserts an application.
    fn insert_app<'a>(&'a self, app: &'a App, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Updates an application's name/description.
    fn update_app<'a>(&'a self, app: &'a App, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Deletes an application (refused while it has packages).
    fn delete_app<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Inserts a channel (with its package pointers).
    fn insert_channel<'a>(&'a self, c: &'a Channel, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Replaces a channel's name and package pointers.
    fn update_channel<'a>(&'a self, c: &'a Channel, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Deletes a channel.
    fn delete_channel<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Inserts a group.
    fn insert_group<'a>(&'a self, g: &'a Group, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Updates a group whose stored row is still `seen` (the group the caller read and
    /// changed). A group changed since, by an auto-halt or another process, is a
    /// [`StoreError::Conflict`] and nothing is written: no change is overwritten unseen.
    fn update_group<'a>(
        &'a self,
        g: &'a Group,
        seen: &'a Group,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()>;
    /// Deletes a group.
    fn delete_group<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Inserts a package.
    fn insert_package<'a>(&'a self, p: &'a Package, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Replaces the extra files of package `id` (in order) if they are still `expected` (else
    /// [`StoreError::Conflict`]: another process changed them meanwhile).
    fn set_package_files<'a>(
        &'a self,
        id: &'a str,
        expected: &'a [PackageFile],
        files: &'a [PackageFile],
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()>;
    /// Adds a delta to package `id` ([`StoreError::NotFound`] without the package,
    /// [`StoreError::Conflict`] when it has a delta from that source version already).
    fn add_package_delta<'a>(
        &'a self,
        id: &'a str,
        delta: &'a PackageDelta,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()>;
    /// Removes package `id`'s delta from `source_version`.
    fn delete_package_delta<'a>(
        &'a self,
        id: &'a str,
        source_version: &'a str,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()>;
    /// Deletes a package (refused while a channel points at it).
    fn delete_package<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// The catalogue's generation: it grows with every change to what [`Store::load_catalogue`]
    /// returns, whichever process made it (kept by the database itself).
    fn catalogue_generation(&self) -> StoreFuture<'_, i64>;
    /// One instance row, as committed.
    fn instance<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> StoreFuture<'a, Option<Instance>>;
    /// An application's group's instances counted by version, status and hold reason
    /// (without reading them: what the rollout status shows).
    fn group_instance_counts<'a>(
        &'a self,
        app_id: &'a str,
        group_id: &'a str,
    ) -> StoreFuture<'a, Vec<GroupInstanceCount>>;
    /// Every instance of an application's group.
    fn group_instances<'a>(
        &'a self,
        app_id: &'a str,
        group_id: &'a str,
    ) -> StoreFuture<'a, Vec<Instance>>;
    /// Instances counted by application, group, version and status (a scan of the covering
    /// index `instances_group_counts`, not of the table).
    fn instance_counts(&self) -> StoreFuture<'_, Vec<InstanceCount>>;
    /// Instances that last checked in at or after `since`, counted by application and group
    /// (`None`: no group), found through the `instances_last_check` index.
    fn checked_in_counts(&self, since: i64) -> StoreFuture<'_, Vec<(String, Option<String>, u64)>>;
    /// Records one sample of machines per version and group (rows that share one `at`, a
    /// group's rows together): each group's rows unless that group's instant is already
    /// recorded (by another replica, or before a restart), and deletes the samples from before
    /// `prune_before`. Returns the version rows written.
    fn record_version_samples<'a>(
        &'a self,
        rows: &'a [VersionSample],
        prune_before: i64,
    ) -> StoreFuture<'a, u64>;
    /// A group's samples from `since` on whose instant is a multiple of `step` seconds,
    /// ordered by instant.
    fn version_samples<'a>(
        &'a self,
        app_id: &'a str,
        group_id: &'a str,
        since: i64,
        step: i64,
    ) -> StoreFuture<'a, Vec<VersionSample>>;
    /// Records an activity entry on its own (one that no other write carries).
    fn record_activity<'a>(&'a self, act: &'a NewActivity) -> StoreFuture<'a, ()>;
    /// Records a sync check: a success replaces every field; a failure (`error` set) keeps
    /// the last offered version, package and success time.
    fn record_sync_state<'a>(&'a self, state: &'a SyncState) -> StoreFuture<'a, ()>;
    /// Every recorded sync state, by application, channel and architecture.
    fn sync_states(&self) -> StoreFuture<'_, Vec<SyncState>>;
    /// Lists instances matching a filter, with the total count.
    fn list_instances<'a>(&'a self, f: &'a InstanceFilter)
    -> StoreFuture<'a, (Vec<Instance>, u64)>;
    /// An instance's status history, newest first.
    fn instance_history<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: &'a str,
        limit: u32,
    ) -> StoreFuture<'a, Vec<StatusChange>>;
    /// Deletes a machine's rows (for one app or all), with its history and events.
    fn delete_instance<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: Option<&'a str>,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, u64>;
    /// Events, newest first, optionally for one machine/app, before an id.
    fn list_events<'a>(
        &'a self,
        machine_id: Option<&'a str>,
        app_id: Option<&'a str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<EventRecord>>;
    /// Activity feed, newest first, optionally for one app, before an id.
    fn list_activity<'a>(
        &'a self,
        app_id: Option<&'a str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<Activity>>;
}
