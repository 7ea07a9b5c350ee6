//! [`Store`] on embedded SQLite: WAL, foreign keys, busy timeout, synchronous=FULL so a
//! committed write survives a crash, and migrations embedded in the binary. The schema, the
//! migrations and the admin operations go through sqlx; the check path (the instance read on
//! every check, and the group-commit writer) uses direct connections ([`DirectPool`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

pub(crate) use super::sqlx_shared::db;
use super::sqlx_shared::{get, instance_of, migrator, policy_json, policy_of, status_of, u64_of};
use super::{CatalogueData, InstanceFilter, Store, StoreError, StoreFuture};
use crate::model::{
    Activity, App, Channel, EventRecord, Group, GroupPolicy, Instance, NewActivity, Package,
    Severity, StatusChange,
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

/// An activity entry, as both drivers write it (sqlx here, the direct connections in
/// `sqlite_rollout.rs`).
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
    sqlx::query(INSERT_ACTIVITY)
        .bind(at)
        .bind(&a.kind)
        .bind(a.severity)
        .bind(&a.app_id)
        .bind(&a.group_id)
        .bind(&a.machine_id)
        .bind(&a.version)
        .bind(&a.message)
        .execute(&mut *conn)
        .await
        .map_err(db("insert activity"))?;
    Ok(())
}

fn now() -> i64 {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

async fn set_channel_packages(
    tx: &mut Transaction<'_, Sqlite>,
    c: &Channel,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM channel_packages WHERE channel_id = ?")
        .bind(&c.id)
        .execute(&mut **tx)
        .await
        .map_err(db("update channel packages"))?;
    for (arch, pkg) in &c.packages {
        sqlx::query("INSERT INTO channel_packages (channel_id, arch, package_id) VALUES (?, ?, ?)")
            .bind(&c.id)
            .bind(arch)
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

    async fn exec_one(
        &self,
        op: &'static str,
        what: String,
        sql: &'static str,
        binds: Vec<Option<String>>,
        act: &NewActivity,
    ) -> Result<(), StoreError> {
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
            let mut out = CatalogueData::default();
            for r in sqlx::query("SELECT * FROM apps ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(db("load apps"))?
            {
                out.apps.push(App {
                    id: get(&r, "apps", "id")?,
                    name: get(&r, "apps", "name")?,
                    description: get(&r, "apps", "description")?,
                    created_at: get(&r, "apps", "created_at")?,
                });
            }
            for r in sqlx::query("SELECT * FROM packages ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await
                .map_err(db("load packages"))?
            {
                const T: &str = "packages";
                out.packages.push(Package {
                    id: get(&r, T, "id")?,
                    app_id: get(&r, T, "app_id")?,
                    version: get(&r, T, "version")?,
                    arch: get(&r, T, "arch")?,
                    kind: get(&r, T, "kind")?,
                    filename: get(&r, T, "filename")?,
                    size: u64_of(get(&r, T, "size")?, T, "size")?,
                    sha1_base64: get(&r, T, "sha1_base64")?,
                    sha256_hex: get(&r, T, "sha256_hex")?,
                    external_url: get(&r, T, "external_url")?,
                    created_at: get(&r, T, "created_at")?,
                });
            }
            let mut pointers: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for r in sqlx::query("SELECT * FROM channel_packages")
                .fetch_all(&self.pool)
                .await
                .map_err(db("load channel packages"))?
            {
                const T: &str = "channel_packages";
                pointers
                    .entry(get(&r, T, "channel_id")?)
                    .or_default()
                    .insert(get(&r, T, "arch")?, get(&r, T, "package_id")?);
            }
            for r in sqlx::query("SELECT * FROM channels ORDER BY app_id, name")
                .fetch_all(&self.pool)
                .await
                .map_err(db("load channels"))?
            {
                const T: &str = "channels";
                let id: String = get(&r, T, "id")?;
                out.channels.push(Channel {
                    packages: pointers.remove(&id).unwrap_or_default(),
                    id,
                    app_id: get(&r, T, "app_id")?,
                    name: get(&r, T, "name")?,
                    created_at: get(&r, T, "created_at")?,
                });
            }
            for r in sqlx::query("SELECT * FROM groups_ ORDER BY app_id, name")
                .fetch_all(&self.pool)
                .await
                .map_err(db("load groups"))?
            {
                const T: &str = "groups_";
                let policy: String = get(&r, T, "policy")?;
                let policy = policy_of(&policy)?;
                out.groups.push(Group {
                    id: get(&r, T, "id")?,
                    app_id: get(&r, T, "app_id")?,
                    name: get(&r, T, "name")?,
                    track: get(&r, T, "track")?,
                    channel_id: get(&r, T, "channel_id")?,
                    description: get(&r, T, "description")?,
                    policy,
                    created_at: get(&r, T, "created_at")?,
                });
            }
            let aliases: Vec<(String, String)> =
                sqlx::query_as("SELECT machine_id, alias FROM machine_aliases")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("load machine aliases"))?;
            out.machine_aliases = aliases.into_iter().collect();
            Ok(out)
        })
    }

    fn insert_app<'a>(&'a self, app: &'a App, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin("insert app").await?;
            sqlx::query("INSERT INTO apps (id, name, description, created_at) VALUES (?, ?, ?, ?)")
                .bind(&app.id)
                .bind(&app.name)
                .bind(&app.description)
                .bind(app.created_at)
                .execute(&mut *tx)
                .await
                .map_err(db("insert app"))?;
            add_activity(&mut tx, act, app.created_at).await?;
            tx.commit().await.map_err(db("insert app"))
        })
    }

    fn update_app<'a>(&'a self, app: &'a App, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(
            "update app",
            format!("application {}", app.id),
            "UPDATE apps SET name = ?, description = ? WHERE id = ?",
            vec![
                Some(app.name.clone()),
                Some(app.description.clone()),
                Some(app.id.clone()),
            ],
            act,
        ))
    }

    fn delete_app<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(
            "delete app",
            format!("application {id}"),
            "DELETE FROM apps WHERE id = ?",
            vec![Some(id.to_owned())],
            act,
        ))
    }

    fn insert_channel<'a>(&'a self, c: &'a Channel, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin("insert channel").await?;
            sqlx::query("INSERT INTO channels (id, app_id, name, created_at) VALUES (?, ?, ?, ?)")
                .bind(&c.id)
                .bind(&c.app_id)
                .bind(&c.name)
                .bind(c.created_at)
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
            let res = sqlx::query("UPDATE channels SET name = ? WHERE id = ?")
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
        Box::pin(self.exec_one(
            "delete channel",
            format!("channel {id}"),
            "DELETE FROM channels WHERE id = ?",
            vec![Some(id.to_owned())],
            act,
        ))
    }

    fn insert_group<'a>(&'a self, g: &'a Group, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let policy = policy_json(g)?;
            let mut tx = self.begin("insert group").await?;
            sqlx::query(
                "INSERT INTO groups_ (id, app_id, name, track, channel_id, description, policy, \
                 created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&g.id)
            .bind(&g.app_id)
            .bind(&g.name)
            .bind(&g.track)
            .bind(&g.channel_id)
            .bind(&g.description)
            .bind(policy)
            .bind(g.created_at)
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
        seen: &'a GroupPolicy,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            const OP: &str = "update group";
            let policy = policy_json(g)?;
            let mut tx = self.begin_immediate(OP).await?;
            let stored: Option<String> =
                sqlx::query_scalar("SELECT policy FROM groups_ WHERE id = ?")
                    .bind(&g.id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(OP))?;
            let Some(stored) = stored else {
                return Err(StoreError::NotFound(format!("group {}", g.id)));
            };
            if policy_of(&stored)? != *seen {
                return Err(super::group_changed(g));
            }
            sqlx::query(
                "UPDATE groups_ SET name = ?, track = ?, channel_id = ?, description = ?, \
                 policy = ? WHERE id = ?",
            )
            .bind(&g.name)
            .bind(&g.track)
            .bind(&g.channel_id)
            .bind(&g.description)
            .bind(policy)
            .bind(&g.id)
            .execute(&mut *tx)
            .await
            .map_err(db(OP))?;
            add_activity(&mut tx, act, now()).await?;
            tx.commit().await.map_err(db(OP))
        })
    }

    fn delete_group<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(
            "delete group",
            format!("group {id}"),
            "DELETE FROM groups_ WHERE id = ?",
            vec![Some(id.to_owned())],
            act,
        ))
    }

    fn insert_package<'a>(&'a self, p: &'a Package, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let size = i64::try_from(p.size)
                .map_err(|_| StoreError::Conflict(format!("package size {} too large", p.size)))?;
            let mut tx = self.begin("insert package").await?;
            sqlx::query(
                "INSERT INTO packages (id, app_id, version, arch, kind, filename, size, \
                 sha1_base64, sha256_hex, external_url, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&p.id)
            .bind(&p.app_id)
            .bind(&p.version)
            .bind(&p.arch)
            .bind(&p.kind)
            .bind(&p.filename)
            .bind(size)
            .bind(&p.sha1_base64)
            .bind(&p.sha256_hex)
            .bind(&p.external_url)
            .bind(p.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db("insert package"))?;
            add_activity(&mut tx, act, p.created_at).await?;
            tx.commit().await.map_err(db("insert package"))
        })
    }

    fn delete_package<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(
            "delete package",
            format!("package {id}"),
            "DELETE FROM packages WHERE id = ?",
            vec![Some(id.to_owned())],
            act,
        ))
    }

    fn catalogue_generation(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT generation FROM catalogue_generation WHERE id = 1")
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

    fn group_instances<'a>(
        &'a self,
        app_id: &'a str,
        group_id: &'a str,
    ) -> StoreFuture<'a, Vec<Instance>> {
        Box::pin(async move {
            sqlx::query("SELECT * FROM instances WHERE app_id = ? AND group_id = ?")
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
            let rows: Vec<(String, Option<String>, String, String, i64)> = sqlx::query_as(
                "SELECT app_id, group_id, version, status, COUNT(*) FROM instances \
                 GROUP BY app_id, group_id, version, status \
                 ORDER BY app_id, group_id, version, status",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db("count instances"))?;
            rows.into_iter()
                .map(|(app_id, group_id, version, status, count)| {
                    Ok(super::InstanceCount {
                        app_id,
                        group_id,
                        version,
                        status: status_of(&status, "instances")?,
                        count,
                    })
                })
                .collect()
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
            let list = rows
                .iter()
                .map(instance_of)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((list, u64_of(total, "instances", "count")?))
        })
    }

    fn instance_history<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: &'a str,
        limit: u32,
    ) -> StoreFuture<'a, Vec<StatusChange>> {
        Box::pin(async move {
            const T: &str = "instance_status_history";
            let rows = sqlx::query(
                "SELECT * FROM instance_status_history WHERE machine_id = ? AND app_id = ? \
                 ORDER BY id DESC LIMIT ?",
            )
            .bind(machine_id)
            .bind(app_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("instance history"))?;
            rows.iter()
                .map(|r| {
                    Ok(StatusChange {
                        status: status_of(&get::<String, _>(r, T, "status")?, T)?,
                        version: get(r, T, "version")?,
                        detail: get(r, T, "detail")?,
                        error_code: get(r, T, "error_code")?,
                        at: get(r, T, "at")?,
                    })
                })
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
            for (table, counts) in [
                ("instances", true),
                ("instance_status_history", false),
                ("events", false),
                ("refused_versions", false),
            ] {
                let sql = match app_id {
                    Some(_) => format!("DELETE FROM {table} WHERE machine_id = ? AND app_id = ?"),
                    None => format!("DELETE FROM {table} WHERE machine_id = ?"),
                };
                let mut q = sqlx::query(&sql).bind(machine_id);
                if let Some(a) = app_id {
                    q = q.bind(a);
                }
                let res = q.execute(&mut *tx).await.map_err(db("delete instance"))?;
                if counts {
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
            const T: &str = "events";
            let rows = sqlx::query(
                "SELECT * FROM events WHERE (? IS NULL OR machine_id = ?) \
                 AND (? IS NULL OR app_id = ?) AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
            )
            .bind(machine_id)
            .bind(machine_id)
            .bind(app_id)
            .bind(app_id)
            .bind(before_id)
            .bind(before_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list events"))?;
            rows.iter()
                .map(|r| {
                    Ok(EventRecord {
                        id: get(r, T, "id")?,
                        machine_id: get(r, T, "machine_id")?,
                        app_id: get(r, T, "app_id")?,
                        event_type: get(r, T, "event_type")?,
                        event_result: get(r, T, "event_result")?,
                        error_code: get(r, T, "error_code")?,
                        previous_version: get(r, T, "previous_version")?,
                        version: get(r, T, "version")?,
                        at: get(r, T, "at")?,
                    })
                })
                .collect()
        })
    }

    fn list_activity<'a>(
        &'a self,
        app_id: Option<&'a str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<Activity>> {
        Box::pin(async move {
            const T: &str = "activity";
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
            rows.iter()
                .map(|r| {
                    Ok(Activity {
                        id: get(r, T, "id")?,
                        at: get(r, T, "at")?,
                        kind: get(r, T, "kind")?,
                        severity: Severity::parse(&get::<String, _>(r, T, "severity")?),
                        app_id: get(r, T, "app_id")?,
                        group_id: get(r, T, "group_id")?,
                        machine_id: get(r, T, "machine_id")?,
                        version: get(r, T, "version")?,
                        message: get(r, T, "message")?,
                    })
                })
                .collect()
        })
    }
}
