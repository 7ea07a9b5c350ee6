//! [`Store`] on embedded SQLite: WAL, foreign keys, busy timeout, synchronous=FULL so a
//! committed write survives a crash, and migrations embedded in the binary. The schema, the
//! migrations and the admin operations go through sqlx; the check path (the instance read on
//! every check, and the group-commit writer) uses direct connections ([`DirectPool`]).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

// `status_of` is the direct connections' too (`sqlite_direct.rs`).
use super::sqlx_rows::{
    CatalogueRows, GroupInstanceCountRow, InstanceCountRow, VersionSampleRow, activity_of,
    event_of, group_instance_count_of, group_of, instance_count_of, instance_of, instance_page_of,
    policy_json, status_change_of, status_of, version_sample_of,
};
pub(crate) use super::sqlx_shared::db;
use super::sqlx_shared::{self as shared, RowChange, get, migrator, now};
use super::{CatalogueData, InstanceFilter, Store, StoreError, StoreFuture};
use crate::model::{
    Activity, App, Channel, EventRecord, Group, Instance, NewActivity, Package, PackageDelta,
    PackageFile, StatusChange,
};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "fleetlock",
        include_str!("../../migrations/0002_fleetlock.sql"),
    ),
    (
        3,
        "rollouts",
        include_str!("../../migrations/0003_rollouts.sql"),
    ),
    (
        4,
        "refusals",
        include_str!("../../migrations/0004_refusals.sql"),
    ),
    (
        5,
        "grant_per_machine",
        include_str!("../../migrations/0005_grant_per_machine.sql"),
    ),
    (
        6,
        "retention_indexes",
        include_str!("../../migrations/0006_retention_indexes.sql"),
    ),
    (
        7,
        "forged_clients",
        include_str!("../../migrations/0007_forged_clients.sql"),
    ),
    (
        8,
        "machine_credentials",
        include_str!("../../migrations/0008_machine_credentials.sql"),
    ),
    (
        9,
        "catalogue_generation",
        include_str!("../../migrations/0009_catalogue_generation.sql"),
    ),
    (
        10,
        "grant_tallies",
        include_str!("../../migrations/0010_grant_tallies.sql"),
    ),
    (
        11,
        "package_format",
        include_str!("../../migrations/0011_package_format.sql"),
    ),
    (
        12,
        "version_samples",
        include_str!("../../migrations/0012_version_samples.sql"),
    ),
    (
        13,
        "group_counts_index",
        include_str!("../../migrations/0013_group_counts_index.sql"),
    ),
    (
        14,
        "flatcar_packages",
        include_str!("../../migrations/0014_flatcar_packages.sql"),
    ),
    (
        15,
        "sync_states",
        include_str!("../../migrations/0015_sync_states.sql"),
    ),
    (
        16,
        "package_deltas",
        include_str!("../../migrations/0016_package_deltas.sql"),
    ),
];

#[path = "sqlite_credential.rs"]
mod credential;
#[path = "sqlite_direct.rs"]
mod direct;
#[path = "sqlite_fleetlock.rs"]
mod fleetlock;
#[path = "sqlite_instances.rs"]
mod instances;
#[path = "sqlite_retention.rs"]
mod retention;
#[path = "sqlite_rollout.rs"]
mod rollout;
#[path = "sqlite_writer.rs"]
mod writer;

pub use direct::{DirectPool, DirectTx};

pub use writer::{SqliteWriter, WriterTask};

/// SQLite-backed store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Direct connections for the check path's reads and transactions.
    direct: std::sync::Arc<DirectPool>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(db("open"))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(db("open"))?;
        migrator(MIGRATIONS).run(&pool).await?;
        Ok(Self {
            pool,
            direct: std::sync::Arc::new(DirectPool::new(path)),
        })
    }

    /// The sqlx pool (schema, admin operations).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the direct connections and the pool (the last one checkpoints the WAL).
    pub async fn close(&self) {
        self.direct.close();
        self.pool.close().await;
    }
}

/// An activity entry, as the direct connections write it (`sqlite_rollout.rs`; sqlx binds the
/// shared [`shared::INSERT_ACTIVITY`]).
const INSERT_ACTIVITY: &str = "INSERT INTO activity (at, kind, severity, app_id, group_id, \
     machine_id, version, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";

async fn add_activity(
    conn: &mut sqlx::SqliteConnection,
    a: &NewActivity,
    at: i64,
) -> Result<(), StoreError> {
    if a.kind.is_empty() {
        return Ok(());
    }
    shared::bind_activity(sqlx::query(shared::INSERT_ACTIVITY), a, at)
        .execute(&mut *conn)
        .await
        .map_err(db("insert activity"))?;
    Ok(())
}

/// Replaces package `id`'s extra files with `files`.
async fn set_package_files(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
    files: &[PackageFile],
) -> Result<(), StoreError> {
    sqlx::query(shared::DELETE_PACKAGE_FILES)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(db("update package files"))?;
    for (position, f) in (0i64..).zip(files) {
        shared::bind_package_file(sqlx::query(shared::INSERT_PACKAGE_FILE), id, position, f)?
            .execute(&mut **tx)
            .await
            .map_err(db("add package file"))?;
    }
    Ok(())
}

async fn set_channel_packages(
    tx: &mut Transaction<'_, Sqlite>,
    c: &Channel,
) -> Result<(), StoreError> {
    sqlx::query(shared::DELETE_CHANNEL_PACKAGES)
        .bind(&c.id)
        .execute(&mut **tx)
        .await
        .map_err(db("update channel packages"))?;
    for (format, arch, pkg) in c.all_pointers() {
        sqlx::query(shared::INSERT_CHANNEL_PACKAGE)
            .bind(&c.id)
            .bind(arch)
            .bind(format.as_str())
            .bind(pkg)
            .execute(&mut **tx)
            .await
            .map_err(db("set channel package"))?;
    }
    Ok(())
}

impl SqliteStore {
    async fn begin(&self, op: &'static str) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool.begin().await.map_err(db(op))
    }

    /// Begins a `BEGIN IMMEDIATE` transaction: it takes the write lock before the first read,
    /// so concurrent writers (in this process or another sharing the file) are serialised and
    /// what the transaction counts stays true until it commits.
    async fn begin_immediate(
        &self,
        op: &'static str,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db(op))
    }

    /// Runs `change` and records `act`, in one transaction.
    async fn exec_one(&self, change: RowChange, act: &NewActivity) -> Result<(), StoreError> {
        let RowChange {
            op,
            what,
            sql,
            binds,
        } = change;
        let mut tx = self.begin(op).await?;
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(b);
        }
        let res = q.execute(&mut *tx).await.map_err(db(op))?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(what));
        }
        add_activity(&mut tx, act, now()).await?;
        tx.commit().await.map_err(db(op))
    }
}

impl Store for SqliteStore {
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(db("ping"))?;
            Ok(())
        })
    }

    fn load_catalogue(&self) -> StoreFuture<'_, CatalogueData> {
        Box::pin(async move {
            // One snapshot: a change committed between two of these reads (by another process)
            // would give a catalogue that does not fit together.
            let mut tx = self.pool.begin().await.map_err(db("load catalogue"))?;
            let tx = &mut *tx;
            async fn all(
                conn: &mut sqlx::SqliteConnection,
                sql: &'static str,
                op: &'static str,
            ) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError> {
                sqlx::query(sql).fetch_all(conn).await.map_err(db(op))
            }
            let rows = CatalogueRows {
                apps: all(tx, "SELECT * FROM apps ORDER BY id", "load apps").await?,
                packages: all(
                    tx,
                    "SELECT * FROM packages ORDER BY created_at, id",
                    "load packages",
                )
                .await?,
                package_files: all(tx, shared::SELECT_PACKAGE_FILES, "load package files").await?,
                package_deltas: all(tx, shared::SELECT_PACKAGE_DELTAS, "load package deltas")
                    .await?,
                channel_packages: all(tx, shared::SELECT_CHANNEL_PACKAGES, "load channel packages")
                    .await?,
                channels: all(
                    tx,
                    "SELECT * FROM channels ORDER BY app_id, name",
                    "load channels",
                )
                .await?,
                groups: all(
                    tx,
                    "SELECT * FROM groups_ ORDER BY app_id, name",
                    "load groups",
                )
                .await?,
                machine_aliases: sqlx::query_as(shared::SELECT_MACHINE_ALIASES)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db("load machine aliases"))?,
            };
            rows.decode()
        })
    }

    fn insert_app<'a>(&'a self, app: &'a App, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin("insert app").await?;
            shared::bind_app(sqlx::query(shared::INSERT_APP), app)
                .execute(&mut *tx)
                .await
                .map_err(db("insert app"))?;
            add_activity(&mut tx, act, app.created_at).await?;
            tx.commit().await.map_err(db("insert app"))
        })
    }

    fn update_app<'a>(&'a self, app: &'a App, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(RowChange::update_app(app), act))
    }

    fn delete_app<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(RowChange::delete_app(id), act))
    }

    fn insert_channel<'a>(&'a self, c: &'a Channel, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin("insert channel").await?;
            shared::bind_channel(sqlx::query(shared::INSERT_CHANNEL), c)
                .execute(&mut *tx)
                .await
                .map_err(db("insert channel"))?;
            set_channel_packages(&mut tx, c).await?;
            add_activity(&mut tx, act, c.created_at).await?;
            tx.commit().await.map_err(db("insert channel"))
        })
    }

    fn update_channel<'a>(&'a self, c: &'a Channel, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin("update channel").await?;
            let res = sqlx::query(shared::UPDATE_CHANNEL)
                .bind(&c.name)
                .bind(&c.id)
                .execute(&mut *tx)
                .await
                .map_err(db("update channel"))?;
            if res.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("channel {}", c.id)));
            }
            set_channel_packages(&mut tx, c).await?;
            add_activity(&mut tx, act, now()).await?;
            tx.commit().await.map_err(db("update channel"))
        })
    }

    fn delete_channel<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(RowChange::delete_channel(id), act))
    }

    fn insert_group<'a>(&'a self, g: &'a Group, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let policy = policy_json(g)?;
            let mut tx = self.begin("insert group").await?;
            shared::bind_group(sqlx::query(shared::INSERT_GROUP), g, &policy)
                .execute(&mut *tx)
                .await
                .map_err(db("insert group"))?;
            add_activity(&mut tx, act, g.created_at).await?;
            tx.commit().await.map_err(db("insert group"))
        })
    }

    fn update_group<'a>(
        &'a self,
        g: &'a Group,
        seen: &'a Group,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            const OP: &str = "update group";
            let policy = policy_json(g)?;
            let mut tx = self.begin_immediate(OP).await?;
            let stored = sqlx::query("SELECT * FROM groups_ WHERE id = ?")
                .bind(&g.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(OP))?;
            let Some(stored) = stored else {
                return Err(StoreError::NotFound(format!("group {}", g.id)));
            };
            if group_of(&stored)? != *seen {
                return Err(crate::store::group_changed(g));
            }
            shared::bind_group_update(sqlx::query(shared::UPDATE_GROUP), g, &policy)
                .execute(&mut *tx)
                .await
                .map_err(db(OP))?;
            add_activity(&mut tx, act, now()).await?;
            tx.commit().await.map_err(db(OP))
        })
    }

    fn delete_group<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(RowChange::delete_group(id), act))
    }

    fn insert_package<'a>(&'a self, p: &'a Package, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let size = i64::try_from(p.size)
                .map_err(|_| StoreError::Conflict(format!("package size {} too large", p.size)))?;
            let mut tx = self.begin("insert package").await?;
            shared::bind_package(sqlx::query(shared::INSERT_PACKAGE), p, size)
                .execute(&mut *tx)
                .await
                .map_err(db("insert package"))?;
            set_package_files(&mut tx, &p.id, &p.files).await?;
            add_activity(&mut tx, act, p.created_at).await?;
            tx.commit().await.map_err(db("insert package"))
        })
    }

    fn set_package_files<'a>(
        &'a self,
        id: &'a str,
        expected: &'a [PackageFile],
        files: &'a [PackageFile],
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin("set package files").await?;
            let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM packages WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("set package files"))?;
            if found.is_none() {
                return Err(StoreError::NotFound(format!("package {id}")));
            }
            let current: Vec<(String, i64, String, String)> =
                sqlx::query_as(shared::SELECT_FILES_OF_PACKAGE)
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db("set package files"))?;
            if !shared::files_are(&current, expected) {
                return Err(shared::files_changed(id));
            }
            set_package_files(&mut tx, id, files).await?;
            add_activity(&mut tx, act, now()).await?;
            tx.commit().await.map_err(db("set package files"))
        })
    }

    fn delete_package<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(RowChange::delete_package(id), act))
    }

    fn add_package_delta<'a>(
        &'a self,
        id: &'a str,
        delta: &'a PackageDelta,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()> {
        const OP: &str = "add package delta";
        Box::pin(async move {
            let mut tx = self.begin(OP).await?;
            let added =
                shared::bind_package_delta(sqlx::query(shared::INSERT_PACKAGE_DELTA), id, delta)?
                    .execute(&mut *tx)
                    .await
                    .map_err(db(OP))?;
            if added.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("package {id}")));
            }
            add_activity(&mut tx, act, delta.created_at).await?;
            tx.commit().await.map_err(db(OP))
        })
    }

    fn delete_package_delta<'a>(
        &'a self,
        id: &'a str,
        source_version: &'a str,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(RowChange::delete_package_delta(id, source_version), act))
    }

    fn catalogue_generation(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            sqlx::query_scalar(shared::SELECT_CATALOGUE_GENERATION)
                .fetch_one(&self.pool)
                .await
                .map_err(db("read catalogue generation"))
        })
    }

    fn instance<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> StoreFuture<'a, Option<Instance>> {
        // A primary-key read on the calling thread: a few microseconds from the page cache,
        // cheaper than handing it to another thread and back.
        Box::pin(async move {
            self.direct
                .with(|c| direct::read_instance(c, machine_id, app_id))
        })
    }

    fn group_instance_counts<'a>(
        &'a self,
        app_id: &'a str,
        group_id: &'a str,
    ) -> StoreFuture<'a, Vec<crate::store::GroupInstanceCount>> {
        Box::pin(async move {
            let rows: Vec<GroupInstanceCountRow> = sqlx::query_as(shared::COUNT_GROUP_INSTANCES)
                .bind(app_id)
                .bind(group_id)
                .fetch_all(&self.pool)
                .await
                .map_err(db("count group instances"))?;
            rows.into_iter().map(group_instance_count_of).collect()
        })
    }

    fn record_version_samples<'a>(
        &'a self,
        rows: &'a [crate::store::VersionSample],
        prune_before: i64,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut tx = self.begin("record version samples").await?;
            let mut written = 0;
            // Group by group, in the rows' order (by application and group, the same in every
            // replica, so two replicas' claims never wait on each other in a cycle).
            for (first, members, total) in shared::version_sample_groups(rows) {
                let claimed = sqlx::query(shared::CLAIM_VERSION_SAMPLE)
                    .bind(&first.app_id)
                    .bind(&first.group_id)
                    .bind(first.at)
                    .bind(total)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("record version samples"))?
                    .rows_affected();
                if claimed == 0 {
                    continue;
                }
                for r in members {
                    let q =
                        shared::bind_version_sample(sqlx::query(shared::INSERT_VERSION_SAMPLE), r);
                    written += q
                        .execute(&mut *tx)
                        .await
                        .map_err(db("record version samples"))?
                        .rows_affected();
                }
            }
            sqlx::query(shared::DELETE_VERSION_SAMPLES_BEFORE)
                .bind(prune_before)
                .execute(&mut *tx)
                .await
                .map_err(db("prune version samples"))?;
            tx.commit().await.map_err(db("record version samples"))?;
            Ok(written)
        })
    }

    fn record_activity<'a>(&'a self, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin("record activity").await?;
            add_activity(&mut tx, act, now()).await?;
            tx.commit().await.map_err(db("record activity"))
        })
    }

    fn record_sync_state<'a>(&'a self, state: &'a crate::store::SyncState) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            shared::bind_sync_state(sqlx::query(shared::UPSERT_SYNC_STATE), state)
                .execute(&self.pool)
                .await
                .map_err(db("record sync state"))?;
            Ok(())
        })
    }

    fn sync_states(&self) -> StoreFuture<'_, Vec<crate::store::SyncState>> {
        Box::pin(async move {
            let rows: Vec<shared::SyncStateRow> = sqlx::query_as(shared::SELECT_SYNC_STATES)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read sync states"))?;
            Ok(rows.into_iter().map(shared::sync_state_of).collect())
        })
    }

    fn version_samples<'a>(
        &'a self,
        app_id: &'a str,
        group_id: &'a str,
        since: i64,
        step: i64,
    ) -> StoreFuture<'a, Vec<crate::store::VersionSample>> {
        Box::pin(async move {
            let rows: Vec<VersionSampleRow> = sqlx::query_as(shared::SELECT_VERSION_SAMPLES)
                .bind(app_id)
                .bind(group_id)
                .bind(since)
                .bind(step.max(1))
                .fetch_all(&self.pool)
                .await
                .map_err(db("read version samples"))?;
            rows.into_iter().map(version_sample_of).collect()
        })
    }

    fn group_instances<'a>(
        &'a self,
        app_id: &'a str,
        group_id: &'a str,
    ) -> StoreFuture<'a, Vec<Instance>> {
        Box::pin(async move {
            sqlx::query(shared::SELECT_GROUP_INSTANCES)
                .bind(app_id)
                .bind(group_id)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read group instances"))?
                .iter()
                .map(instance_of)
                .collect()
        })
    }

    fn instance_counts(&self) -> StoreFuture<'_, Vec<super::InstanceCount>> {
        Box::pin(async move {
            let rows: Vec<InstanceCountRow> = sqlx::query_as(
                "SELECT app_id, group_id, version, status, COUNT(*) FROM instances \
                 GROUP BY app_id, group_id, version, status \
                 ORDER BY app_id, group_id, version, status",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db("count instances"))?;
            rows.into_iter().map(instance_count_of).collect()
        })
    }

    fn checked_in_counts(&self, since: i64) -> StoreFuture<'_, Vec<(String, Option<String>, u64)>> {
        Box::pin(async move {
            // Through the last-check index: without statistics SQLite would rather scan the
            // whole table in the covering index's order (to group without sorting).
            let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
                "SELECT app_id, group_id, COUNT(*) FROM instances \
                 INDEXED BY instances_last_check WHERE last_check_at >= $1 \
                 GROUP BY app_id, group_id",
            )
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .map_err(db("count recent check-ins"))?;
            Ok(rows
                .into_iter()
                .map(|(a, g, n)| (a, g, u64::try_from(n).unwrap_or(0)))
                .collect())
        })
    }

    fn list_instances<'a>(
        &'a self,
        f: &'a InstanceFilter,
    ) -> StoreFuture<'a, (Vec<Instance>, u64)> {
        Box::pin(async move {
            let mut cond = String::from(" WHERE 1 = 1");
            let mut binds: Vec<String> = Vec::new();
            if let Some(m) = &f.machine_id {
                cond.push_str(" AND machine_id = ?");
                binds.push(m.clone());
            }
            if let Some(a) = &f.app_id {
                cond.push_str(" AND app_id = ?");
                binds.push(a.clone());
            }
            if let Some(g) = &f.group_id {
                cond.push_str(" AND group_id = ?");
                binds.push(g.clone());
            }
            if let Some(v) = &f.version {
                cond.push_str(" AND version = ?");
                binds.push(v.clone());
            }
            if let Some(s) = f.status {
                cond.push_str(" AND status = ?");
                binds.push(s.as_str().to_owned());
            }
            if let Some(s) = &f.search {
                cond.push_str(" AND (machine_id LIKE ? OR alias LIKE ? OR ip LIKE ?)");
                let pat = format!("%{}%", s.replace(['%', '_'], ""));
                binds.extend([pat.clone(), pat.clone(), pat]);
            }
            let count_sql = format!("SELECT COUNT(*) AS n FROM instances{cond}");
            let mut q = sqlx::query(&count_sql);
            for b in &binds {
                q = q.bind(b);
            }
            let total: i64 = get(
                &q.fetch_one(&self.pool)
                    .await
                    .map_err(db("count instances"))?,
                "instances",
                "n",
            )?;
            let list_sql = format!(
                "SELECT * FROM instances{cond} ORDER BY last_check_at DESC, machine_id, app_id \
                 LIMIT ? OFFSET ?"
            );
            let mut q = sqlx::query(&list_sql);
            for b in &binds {
                q = q.bind(b);
            }
            let rows = q
                .bind(i64::from(f.limit))
                .bind(i64::from(f.offset))
                .fetch_all(&self.pool)
                .await
                .map_err(db("list instances"))?;
            instance_page_of(&rows, total)
        })
    }

    fn instance_history<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: &'a str,
        limit: u32,
    ) -> StoreFuture<'a, Vec<StatusChange>> {
        Box::pin(async move {
            sqlx::query(shared::SELECT_INSTANCE_HISTORY)
                .bind(machine_id)
                .bind(app_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db("instance history"))?
                .iter()
                .map(status_change_of)
                .collect()
        })
    }

    fn delete_instance<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: Option<&'a str>,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut tx = self.begin("delete instance").await?;
            let mut n = 0;
            let deletes = match app_id {
                Some(_) => shared::DELETE_INSTANCE_OF_APP,
                None => shared::DELETE_INSTANCE,
            };
            for (i, sql) in deletes.into_iter().enumerate() {
                let mut q = sqlx::query(sql).bind(machine_id);
                if let Some(a) = app_id {
                    q = q.bind(a);
                }
                let res = q.execute(&mut *tx).await.map_err(db("delete instance"))?;
                if i == 0 {
                    n = res.rows_affected();
                }
            }
            if n == 0 {
                return Err(StoreError::NotFound(format!("instance {machine_id}")));
            }
            add_activity(&mut tx, act, now()).await?;
            tx.commit().await.map_err(db("delete instance"))?;
            Ok(n)
        })
    }

    fn list_events<'a>(
        &'a self,
        machine_id: Option<&'a str>,
        app_id: Option<&'a str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<EventRecord>> {
        Box::pin(async move {
            // A machine's events through the `events_instance` index (a condition that may be
            // void, `? IS NULL OR machine_id = ?`, would scan every event instead).
            let q = match machine_id {
                Some(m) => sqlx::query(
                    "SELECT * FROM events WHERE machine_id = ? \
                     AND (? IS NULL OR app_id = ?) AND (? IS NULL OR id < ?) \
                     ORDER BY id DESC LIMIT ?",
                )
                .bind(m),
                None => sqlx::query(
                    "SELECT * FROM events WHERE (? IS NULL OR app_id = ?) \
                     AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
                ),
            };
            let rows = q
                .bind(app_id)
                .bind(app_id)
                .bind(before_id)
                .bind(before_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db("list events"))?;
            rows.iter().map(event_of).collect()
        })
    }

    fn list_activity<'a>(
        &'a self,
        app_id: Option<&'a str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<Activity>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM activity WHERE (? IS NULL OR app_id = ?) \
                 AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
            )
            .bind(app_id)
            .bind(app_id)
            .bind(before_id)
            .bind(before_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list activity"))?;
            rows.iter().map(activity_of).collect()
        })
    }
}
