//! [`Store`] on embedded SQLite: WAL, foreign keys, busy timeout, synchronous=FULL so a
//! committed write survives a crash, and migrations embedded in the binary. The schema, the
//! migrations and the admin operations go through sqlx; the check path (the instance read on
//! every check, and the group-commit writer) uses direct connections ([`DirectPool`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::{CatalogueData, InstanceFilter, Store, StoreError, StoreFuture};
use crate::lifecycle::InstanceStatus;
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

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| match &source {
        sqlx::Error::Database(e) if e.is_unique_violation() => {
            StoreError::Conflict(format!("{op}: already exists"))
        }
        sqlx::Error::Database(e)
            if e.is_foreign_key_violation() || e.message().contains("FOREIGN KEY") =>
        {
            StoreError::Conflict(format!(
                "{op}: still referenced or refers to a missing object"
            ))
        }
        _ => StoreError::Database { op, source },
    }
}

/// A migrator applying `migrations` (version, description, SQL), in order.
fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            migrations
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        Cow::Borrowed(*d),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
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

fn get<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(
    row: &'r SqliteRow,
    table: &'static str,
    column: &'static str,
) -> Result<T, StoreError> {
    row.try_get(column).map_err(|e| StoreError::Corrupt {
        table,
        column,
        detail: e.to_string(),
    })
}

fn u64_of(v: i64, table: &'static str, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        table,
        column,
        detail: format!("negative {v}"),
    })
}

fn status_of(s: &str, table: &'static str) -> Result<InstanceStatus, StoreError> {
    InstanceStatus::parse(s).ok_or_else(|| StoreError::Corrupt {
        table,
        column: "status",
        detail: format!("unknown status {s:?}"),
    })
}

fn instance_of(r: &SqliteRow) -> Result<Instance, StoreError> {
    const T: &str = "instances";
    Ok(Instance {
        machine_id: get(r, T, "machine_id")?,
        app_id: get(r, T, "app_id")?,
        alias: get(r, T, "alias")?,
        ip: get(r, T, "ip")?,
        version: get(r, T, "version")?,
        group_id: get(r, T, "group_id")?,
        track: get(r, T, "track")?,
        oem: get(r, T, "oem")?,
        oem_version: get(r, T, "oem_version")?,
        board: get(r, T, "board")?,
        boot_id: get(r, T, "boot_id")?,
        last_check_at: get(r, T, "last_check_at")?,
        granted_version: get(r, T, "granted_version")?,
        granted_at: get(r, T, "granted_at")?,
        status: status_of(&get::<String>(r, T, "status")?, T)?,
        status_detail: get(r, T, "status_detail")?,
        error_code: get(r, T, "error_code")?,
        status_at: get(r, T, "status_at")?,
        created_at: get(r, T, "created_at")?,
    })
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

fn policy_json(g: &Group) -> Result<String, StoreError> {
    serde_json::to_string(&g.policy).map_err(|e| StoreError::Corrupt {
        table: "groups_",
        column: "policy",
        detail: e.to_string(),
    })
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
                let policy: GroupPolicy =
                    serde_json::from_str(&policy).map_err(|e| StoreError::Corrupt {
                        table: T,
                        column: "policy",
                        detail: e.to_string(),
                    })?;
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

    fn update_group<'a>(&'a self, g: &'a Group, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let policy = policy_json(g)?;
            self.exec_one(
                "update group",
                format!("group {}", g.id),
                "UPDATE groups_ SET name = ?, track = ?, channel_id = ?, description = ?, \
                 policy = ? WHERE id = ?",
                vec![
                    Some(g.name.clone()),
                    Some(g.track.clone()),
                    g.channel_id.clone(),
                    Some(g.description.clone()),
                    Some(policy),
                    Some(g.id.clone()),
                ],
                act,
            )
            .await
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
                 GROUP BY app_id, group_id, version, status",
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
                        status: status_of(&get::<String>(r, T, "status")?, T)?,
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
                        severity: Severity::parse(&get::<String>(r, T, "severity")?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InstanceChange;

    fn act() -> NewActivity {
        NewActivity {
            kind: "test".into(),
            severity: "info",
            ..Default::default()
        }
    }

    fn app(id: &str) -> App {
        App {
            id: id.into(),
            name: "OS".into(),
            description: String::new(),
            created_at: 1,
        }
    }

    fn pkg(id: &str, app: &str, v: &str) -> Package {
        Package {
            id: id.into(),
            app_id: app.into(),
            version: v.into(),
            arch: "amd64".into(),
            kind: "full".into(),
            filename: "p.raw".into(),
            size: 10,
            sha1_base64: "x".into(),
            sha256_hex: "y".into(),
            external_url: None,
            created_at: 2,
        }
    }

    #[tokio::test]
    async fn catalogue_round_trip_and_referential_rules() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        s.insert_app(&app("a"), &act()).await.unwrap();
        assert!(matches!(
            s.insert_app(&app("a"), &act()).await,
            Err(StoreError::Conflict(_))
        ));
        s.insert_package(&pkg("p1", "a", "1.0.0"), &act())
            .await
            .unwrap();
        let mut ch = Channel {
            id: "c".into(),
            app_id: "a".into(),
            name: "stable".into(),
            packages: BTreeMap::new(),
            created_at: 3,
        };
        ch.packages.insert("amd64".into(), "p1".into());
        s.insert_channel(&ch, &act()).await.unwrap();
        let mut policy = GroupPolicy::default();
        policy
            .extra
            .insert("percentage".into(), serde_json::json!(10));
        let g = Group {
            id: "g".into(),
            app_id: "a".into(),
            name: "Stable".into(),
            track: "stable".into(),
            channel_id: Some("c".into()),
            description: String::new(),
            policy,
            created_at: 4,
        };
        s.insert_group(&g, &act()).await.unwrap();
        // A package a channel points at cannot be deleted.
        let r = s.delete_package("p1", &act()).await;
        assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
        let data = s.load_catalogue().await.unwrap();
        assert_eq!(data.apps, vec![app("a")]);
        assert_eq!(data.channels, vec![ch]);
        assert_eq!(data.groups, vec![g]);
        assert_eq!(data.packages.len(), 1);
        assert!(matches!(
            s.delete_group("nope", &act()).await,
            Err(StoreError::NotFound(_))
        ));
        let acts = s.list_activity(None, None, 100).await.unwrap();
        assert_eq!(acts.len(), 4);
    }

    fn check_in(at: i64, version: &str, ip: &str) -> super::super::instances::CheckIn {
        super::super::instances::CheckIn {
            machine_id: "m1".into(),
            app_id: "a".into(),
            version: version.into(),
            group_id: None,
            track: "stable".into(),
            alias: String::new(),
            ip: ip.into(),
            oem: String::new(),
            oem_version: String::new(),
            board: "amd64-usr".into(),
            boot_id: String::new(),
            at,
            first_seen: at,
        }
    }

    /// Runs `f` through a writer of `s` (started and stopped here).
    async fn write<T: Send + 'static>(
        s: &SqliteStore,
        f: impl for<'t> FnOnce(
            &'t mut dyn super::super::tx::StoreTx,
        ) -> super::super::tx::TxFuture<'t, T>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let (w, task) = SqliteWriter::start(s).await.unwrap();
        let out = super::super::tx::transact(&w, super::super::tx::Urgency::Answer, f).await;
        task.stop().await;
        out
    }

    #[tokio::test]
    async fn instances_persist_and_delete_with_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = SqliteStore::open(&path).await.unwrap();
        let first = check_in(5, "1.0.0", "10.0.0.1");
        let mut i = first.new_row();
        i.alias = "web-1".into();
        let mut c = first.clone();
        c.alias = "web-1".into();
        write(&s, move |tx| {
            Box::pin(async move { tx.check_in(&[c]).await })
        })
        .await
        .unwrap();
        i.status = InstanceStatus::Error;
        i.error_code = Some(268_435_461);
        i.status_at = 6;
        let change = InstanceChange {
            status_change: Some(StatusChange {
                status: InstanceStatus::Error,
                version: "1.0.0".into(),
                detail: "postinstall".into(),
                error_code: Some(268_435_461),
                at: 6,
            }),
            events: vec![super::super::NewEvent {
                event_type: 3,
                event_result: 0,
                error_code: Some(268_435_461),
                previous_version: String::new(),
            }],
            activity: vec![],
        };
        let status = super::super::instances::StatusColumns::of(&i);
        write(&s, move |tx| {
            Box::pin(async move {
                tx.set_status("m1", "a", &status).await?;
                tx.record_change("m1", "a", "1.0.0", 6, &change).await
            })
        })
        .await
        .unwrap();
        s.close().await;
        // Reopen: the state is durable.
        let s = SqliteStore::open(&path).await.unwrap();
        assert_eq!(s.instance("m1", "a").await.unwrap(), Some(i.clone()));
        let f = InstanceFilter {
            status: Some(InstanceStatus::Error),
            search: Some("web".into()),
            limit: 10,
            ..Default::default()
        };
        let (list, total) = s.list_instances(&f).await.unwrap();
        assert_eq!((list.len(), total), (1, 1));
        assert_eq!(s.instance_history("m1", "a", 10).await.unwrap().len(), 1);
        assert_eq!(
            s.list_events(Some("m1"), None, None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(s.delete_instance("m1", None, &act()).await.unwrap(), 1);
        assert_eq!(s.instance("m1", "a").await.unwrap(), None);
        assert!(
            s.list_events(Some("m1"), None, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            s.delete_instance("m1", None, &act()).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_check_in_writes_only_its_columns_and_never_goes_back_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        let rows = vec![check_in(10, "1.0.0", "192.0.2.1")];
        write(&s, move |tx| {
            Box::pin(async move { tx.check_in(&rows).await })
        })
        .await
        .unwrap();
        // Another process set the status meanwhile.
        let mut granted = check_in(10, "1.0.0", "").new_row();
        granted.status = InstanceStatus::Granted;
        granted.granted_version = Some("2.0.0".into());
        granted.granted_at = Some(11);
        let status = super::super::instances::StatusColumns::of(&granted);
        write(&s, move |tx| {
            Box::pin(async move { tx.set_status("m1", "a", &status).await })
        })
        .await
        .unwrap();
        // A later check-in (empty ip: keep) and a late, older one.
        let rows = vec![
            check_in(12, "1.0.1", ""),
            check_in(11, "0.9.0", "198.51.100.7"),
        ];
        write(&s, move |tx| {
            Box::pin(async move { tx.check_in(&rows).await })
        })
        .await
        .unwrap();
        let row = s.instance("m1", "a").await.unwrap().unwrap();
        assert_eq!(
            (row.last_check_at, row.version.as_str(), row.ip.as_str()),
            (12, "1.0.1", "192.0.2.1")
        );
        assert_eq!(
            (row.status, row.granted_version.as_deref()),
            (InstanceStatus::Granted, Some("2.0.0")),
            "a check-in leaves the status columns alone"
        );
    }

    #[tokio::test]
    async fn a_failing_job_rolls_back_alone_and_the_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        let (w, task) = SqliteWriter::start(&s).await.unwrap();
        let w = std::sync::Arc::new(w);
        let mut jobs = Vec::new();
        for n in 0..20_i64 {
            let w = std::sync::Arc::clone(&w);
            jobs.push(tokio::spawn(async move {
                super::super::tx::transact(
                    w.as_ref(),
                    super::super::tx::Urgency::Answer,
                    move |tx| {
                        Box::pin(async move {
                            let mut c = check_in(n, "1.0.0", "");
                            c.machine_id = format!("m{n}");
                            tx.check_in(&[c]).await?;
                            if n % 5 == 0 {
                                return Err(StoreError::Conflict(format!("job {n} fails")));
                            }
                            Ok(n)
                        })
                    },
                )
                .await
            }));
        }
        let mut failed = 0;
        for j in jobs {
            if j.await.unwrap().is_err() {
                failed += 1;
            }
        }
        drop(w);
        task.join().await;
        assert_eq!(failed, 4);
        let (_, total) = s
            .list_instances(&InstanceFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(total, 16, "every job but the failed ones committed");
        assert_eq!(s.instance("m5", "a").await.unwrap(), None);
    }
}
