//! [`Store`] on PostgreSQL: the catalogue's admin operations, instance reads and deletions, and
//! the event and activity feeds. Each behaves as SQLite's does ([`crate::store::SqliteStore`]):
//! the same rows, errors ([`StoreError::NotFound`], [`StoreError::Conflict`]) and activity
//! entries, and lists in the same order. Text sort keys are compared byte-wise (`COLLATE "C"`,
//! SQLite's `BINARY`), whatever the database's own collation.

use std::fmt::Write as _;

use sqlx::PgConnection;

use super::{PgStore, add_activity};
use crate::model::{
    Activity, App, Channel, EventRecord, Group, Instance, NewActivity, Package, PackageDelta,
    PackageFile, StatusChange,
};
use crate::store::sqlx_rows::{
    CatalogueRows, GroupInstanceCountRow, InstanceCountRow, VersionSampleRow, activity_of,
    event_of, group_instance_count_of, group_of, instance_count_of, instance_of, instance_page_of,
    policy_json, status_change_of, version_sample_of,
};
use crate::store::sqlx_shared::{self as shared, RowChange, db, get, now};
use crate::store::{CatalogueData, InstanceCount, InstanceFilter, Store, StoreError, StoreFuture};

/// Replaces package `id`'s extra files with `files`.
async fn set_package_files(
    conn: &mut PgConnection,
    id: &str,
    files: &[PackageFile],
) -> Result<(), StoreError> {
    sqlx::query(shared::DELETE_PACKAGE_FILES)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db("update package files"))?;
    for (position, f) in (0i64..).zip(files) {
        shared::bind_package_file(sqlx::query(shared::INSERT_PACKAGE_FILE), id, position, f)?
            .execute(&mut *conn)
            .await
            .map_err(db("add package file"))?;
    }
    Ok(())
}

/// Points a channel at its packages: replaces its `channel_packages` rows.
async fn set_channel_packages(conn: &mut PgConnection, c: &Channel) -> Result<(), StoreError> {
    sqlx::query(shared::DELETE_CHANNEL_PACKAGES)
        .bind(&c.id)
        .execute(&mut *conn)
        .await
        .map_err(db("update channel packages"))?;
    for (format, arch, pkg) in c.all_pointers() {
        sqlx::query(shared::INSERT_CHANNEL_PACKAGE)
            .bind(&c.id)
            .bind(arch)
            .bind(format.as_str())
            .bind(pkg)
            .execute(&mut *conn)
            .await
            .map_err(db("set channel package"))?;
    }
    Ok(())
}

impl PgStore {
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
        let res = q.execute(&mut *tx.tx).await.map_err(db(op))?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(what));
        }
        add_activity(&mut tx.tx, act, now()).await?;
        tx.commit(op).await
    }
}

/// Appends the conditions of `f` to a `WHERE` clause, their values to `binds` (numbered from
/// `$1`). The search matches a substring of the machine id, alias or address, ignoring case
/// (`ILIKE`: for every letter, where SQLite's `LIKE` folds ASCII only); `%` and `_` in it are
/// dropped, and no escape character applies.
fn instance_conditions(f: &InstanceFilter, binds: &mut Vec<String>) -> String {
    let mut cond = String::from(" WHERE TRUE");
    let equal = [
        ("machine_id", f.machine_id.clone()),
        ("app_id", f.app_id.clone()),
        ("group_id", f.group_id.clone()),
        ("version", f.version.clone()),
        ("status", f.status.map(|s| s.as_str().to_owned())),
    ];
    for (column, value) in equal {
        if let Some(v) = value {
            binds.push(v);
            let _ = write!(cond, " AND {column} = ${}", binds.len());
        }
    }
    if let Some(s) = &f.search {
        binds.push(format!("%{}%", s.replace(['%', '_'], "")));
        let n = binds.len();
        let _ = write!(
            cond,
            " AND (machine_id ILIKE ${n} ESCAPE '' OR alias ILIKE ${n} ESCAPE '' \
             OR ip ILIKE ${n} ESCAPE '')"
        );
    }
    cond
}

impl Store for PgStore {
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
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(db("load catalogue"))?;
            let tx = &mut *tx;
            async fn all(
                conn: &mut sqlx::PgConnection,
                sql: &'static str,
                op: &'static str,
            ) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
                sqlx::query(sql).fetch_all(conn).await.map_err(db(op))
            }
            let rows = CatalogueRows {
                apps: all(
                    tx,
                    "SELECT * FROM apps ORDER BY id COLLATE \"C\"",
                    "load apps",
                )
                .await?,
                packages: all(
                    tx,
                    "SELECT * FROM packages ORDER BY created_at, id COLLATE \"C\"",
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
                    "SELECT * FROM channels ORDER BY app_id COLLATE \"C\", name COLLATE \"C\"",
                    "load channels",
                )
                .await?,
                groups: all(
                    tx,
                    "SELECT * FROM groups_ ORDER BY app_id COLLATE \"C\", name COLLATE \"C\"",
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
                .execute(&mut *tx.tx)
                .await
                .map_err(db("insert app"))?;
            add_activity(&mut tx.tx, act, app.created_at).await?;
            tx.commit("insert app").await
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
                .execute(&mut *tx.tx)
                .await
                .map_err(db("insert channel"))?;
            set_channel_packages(&mut tx.tx, c).await?;
            add_activity(&mut tx.tx, act, c.created_at).await?;
            tx.commit("insert channel").await
        })
    }

    fn update_channel<'a>(&'a self, c: &'a Channel, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin("update channel").await?;
            let res = sqlx::query(shared::UPDATE_CHANNEL)
                .bind(&c.name)
                .bind(&c.id)
                .execute(&mut *tx.tx)
                .await
                .map_err(db("update channel"))?;
            if res.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("channel {}", c.id)));
            }
            set_channel_packages(&mut tx.tx, c).await?;
            add_activity(&mut tx.tx, act, now()).await?;
            tx.commit("update channel").await
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
                .execute(&mut *tx.tx)
                .await
                .map_err(db("insert group"))?;
            add_activity(&mut tx.tx, act, g.created_at).await?;
            tx.commit("insert group").await
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
            let mut tx = self.begin(OP).await?;
            // The group's lock, as a grant attempt (and so an auto-halt) takes it.
            let stored = sqlx::query("SELECT * FROM groups_ WHERE id = $1 FOR UPDATE")
                .bind(&g.id)
                .fetch_optional(&mut *tx.tx)
                .await
                .map_err(db(OP))?;
            let Some(stored) = stored else {
                return Err(StoreError::NotFound(format!("group {}", g.id)));
            };
            if group_of(&stored)? != *seen {
                return Err(crate::store::group_changed(g));
            }
            shared::bind_group_update(sqlx::query(shared::UPDATE_GROUP), g, &policy)
                .execute(&mut *tx.tx)
                .await
                .map_err(db(OP))?;
            add_activity(&mut tx.tx, act, now()).await?;
            tx.commit(OP).await
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
                .execute(&mut *tx.tx)
                .await
                .map_err(db("insert package"))?;
            set_package_files(&mut tx.tx, &p.id, &p.files).await?;
            add_activity(&mut tx.tx, act, p.created_at).await?;
            tx.commit("insert package").await
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
            // The package's row is locked, so a concurrent delete waits or wins whole.
            let found: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM packages WHERE id = $1 FOR UPDATE")
                    .bind(id)
                    .fetch_optional(&mut *tx.tx)
                    .await
                    .map_err(db("set package files"))?;
            if found.is_none() {
                return Err(StoreError::NotFound(format!("package {id}")));
            }
            let current: Vec<(String, i64, String, String)> =
                sqlx::query_as(shared::SELECT_FILES_OF_PACKAGE)
                    .bind(id)
                    .fetch_all(&mut *tx.tx)
                    .await
                    .map_err(db("set package files"))?;
            if !shared::files_are(&current, expected) {
                return Err(shared::files_changed(id));
            }
            set_package_files(&mut tx.tx, id, files).await?;
            add_activity(&mut tx.tx, act, now()).await?;
            tx.commit("set package files").await
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
                    .execute(&mut *tx.tx)
                    .await
                    .map_err(db(OP))?;
            if added.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("package {id}")));
            }
            add_activity(&mut tx.tx, act, delta.created_at).await?;
            tx.commit(OP).await
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
        Box::pin(async move {
            sqlx::query("SELECT * FROM instances WHERE machine_id = $1 AND app_id = $2")
                .bind(machine_id)
                .bind(app_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read instance"))?
                .as_ref()
                .map(instance_of)
                .transpose()
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
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(db("record version samples"))?;
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
            add_activity(&mut tx.tx, act, now()).await?;
            tx.commit("record activity").await
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

    /// In the order SQLite's grouping yields them: by application, group (none first),
    /// version and status.
    fn instance_counts(&self) -> StoreFuture<'_, Vec<InstanceCount>> {
        Box::pin(async move {
            let rows: Vec<InstanceCountRow> = sqlx::query_as(
                "SELECT app_id, group_id, version, status, COUNT(*) FROM instances \
                 GROUP BY app_id, group_id, version, status \
                 ORDER BY app_id COLLATE \"C\", group_id COLLATE \"C\" NULLS FIRST, \
                 version COLLATE \"C\", status COLLATE \"C\"",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db("count instances"))?;
            rows.into_iter().map(instance_count_of).collect()
        })
    }

    fn checked_in_counts(&self, since: i64) -> StoreFuture<'_, Vec<(String, Option<String>, u64)>> {
        Box::pin(async move {
            let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(shared::COUNT_CHECKED_IN)
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
            let mut binds = Vec::new();
            let cond = instance_conditions(f, &mut binds);
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
                "SELECT * FROM instances{cond} ORDER BY last_check_at DESC, \
                 machine_id COLLATE \"C\", app_id COLLATE \"C\" LIMIT ${} OFFSET ${}",
                binds.len() + 1,
                binds.len() + 2
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
                let res = q
                    .execute(&mut *tx.tx)
                    .await
                    .map_err(db("delete instance"))?;
                if i == 0 {
                    n = res.rows_affected();
                }
            }
            if n == 0 {
                return Err(StoreError::NotFound(format!("instance {machine_id}")));
            }
            add_activity(&mut tx.tx, act, now()).await?;
            tx.commit("delete instance").await?;
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
            // void would let a generic plan scan every event instead).
            let sql = if machine_id.is_some() {
                "SELECT * FROM events WHERE machine_id = $1 \
                 AND ($2::text IS NULL OR app_id = $2) AND ($3::bigint IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4"
            } else {
                "SELECT * FROM events WHERE $1::text IS NULL \
                 AND ($2::text IS NULL OR app_id = $2) AND ($3::bigint IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4"
            };
            let rows = sqlx::query(sql)
                .bind(machine_id)
                .bind(app_id)
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
                "SELECT * FROM activity WHERE ($1::text IS NULL OR app_id = $1) \
                 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            )
            .bind(app_id)
            .bind(before_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list activity"))?;
            rows.iter().map(activity_of).collect()
        })
    }
}
