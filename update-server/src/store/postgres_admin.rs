//! [`Store`] on PostgreSQL: the catalogue's admin operations, instance reads and deletions, and
//! the event and activity feeds. Each behaves as SQLite's does ([`crate::store::SqliteStore`]):
//! the same rows, errors ([`StoreError::NotFound`], [`StoreError::Conflict`]) and activity
//! entries, and lists in the same order. Text sort keys are compared byte-wise (`COLLATE "C"`,
//! SQLite's `BINARY`), whatever the database's own collation.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sqlx::PgConnection;

use super::{PgStore, add_activity, now};
use crate::model::{
    Activity, App, Channel, EventRecord, Group, GroupPolicy, Instance, NewActivity, Package,
    Severity, StatusChange,
};
use crate::store::sqlx_shared::{db, get, instance_of, policy_json, policy_of, status_of, u64_of};
use crate::store::{CatalogueData, InstanceCount, InstanceFilter, Store, StoreError, StoreFuture};

/// Points a channel at its packages: replaces its `channel_packages` rows.
async fn set_channel_packages(conn: &mut PgConnection, c: &Channel) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM channel_packages WHERE channel_id = $1")
        .bind(&c.id)
        .execute(&mut *conn)
        .await
        .map_err(db("update channel packages"))?;
    for (arch, pkg) in &c.packages {
        sqlx::query(
            "INSERT INTO channel_packages (channel_id, arch, package_id) VALUES ($1, $2, $3)",
        )
        .bind(&c.id)
        .bind(arch)
        .bind(pkg)
        .execute(&mut *conn)
        .await
        .map_err(db("set channel package"))?;
    }
    Ok(())
}

impl PgStore {
    /// Runs `sql` (text parameters `binds`) and records `act`, in one transaction; a statement
    /// that changes no row is [`StoreError::NotFound`] (`what`).
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
/// as SQLite's `LIKE` does; `%` and `_` in it are dropped, and no escape character applies.
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
            let mut out = CatalogueData::default();
            for r in sqlx::query("SELECT * FROM apps ORDER BY id COLLATE \"C\"")
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
            for r in sqlx::query("SELECT * FROM packages ORDER BY created_at, id COLLATE \"C\"")
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
            for r in sqlx::query(
                "SELECT * FROM channels ORDER BY app_id COLLATE \"C\", name COLLATE \"C\"",
            )
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
            for r in sqlx::query(
                "SELECT * FROM groups_ ORDER BY app_id COLLATE \"C\", name COLLATE \"C\"",
            )
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
            sqlx::query(
                "INSERT INTO apps (id, name, description, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&app.id)
            .bind(&app.name)
            .bind(&app.description)
            .bind(app.created_at)
            .execute(&mut *tx.tx)
            .await
            .map_err(db("insert app"))?;
            add_activity(&mut tx.tx, act, app.created_at).await?;
            tx.commit("insert app").await
        })
    }

    fn update_app<'a>(&'a self, app: &'a App, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(
            "update app",
            format!("application {}", app.id),
            "UPDATE apps SET name = $1, description = $2 WHERE id = $3",
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
            "DELETE FROM apps WHERE id = $1",
            vec![Some(id.to_owned())],
            act,
        ))
    }

    fn insert_channel<'a>(&'a self, c: &'a Channel, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin("insert channel").await?;
            sqlx::query(
                "INSERT INTO channels (id, app_id, name, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&c.id)
            .bind(&c.app_id)
            .bind(&c.name)
            .bind(c.created_at)
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
            let res = sqlx::query("UPDATE channels SET name = $1 WHERE id = $2")
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
        Box::pin(self.exec_one(
            "delete channel",
            format!("channel {id}"),
            "DELETE FROM channels WHERE id = $1",
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
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&g.id)
            .bind(&g.app_id)
            .bind(&g.name)
            .bind(&g.track)
            .bind(&g.channel_id)
            .bind(&g.description)
            .bind(policy)
            .bind(g.created_at)
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
        seen: &'a GroupPolicy,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            const OP: &str = "update group";
            let policy = policy_json(g)?;
            let mut tx = self.begin(OP).await?;
            // The group's lock, as a grant attempt (and so an auto-halt) takes it.
            let stored: Option<String> =
                sqlx::query_scalar("SELECT policy FROM groups_ WHERE id = $1 FOR UPDATE")
                    .bind(&g.id)
                    .fetch_optional(&mut *tx.tx)
                    .await
                    .map_err(db(OP))?;
            let Some(stored) = stored else {
                return Err(StoreError::NotFound(format!("group {}", g.id)));
            };
            if policy_of(&stored)? != *seen {
                return Err(crate::store::group_changed(g));
            }
            sqlx::query(
                "UPDATE groups_ SET name = $1, track = $2, channel_id = $3, description = $4, \
                 policy = $5 WHERE id = $6",
            )
            .bind(&g.name)
            .bind(&g.track)
            .bind(&g.channel_id)
            .bind(&g.description)
            .bind(policy)
            .bind(&g.id)
            .execute(&mut *tx.tx)
            .await
            .map_err(db(OP))?;
            add_activity(&mut tx.tx, act, now()).await?;
            tx.commit(OP).await
        })
    }

    fn delete_group<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(
            "delete group",
            format!("group {id}"),
            "DELETE FROM groups_ WHERE id = $1",
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
            .execute(&mut *tx.tx)
            .await
            .map_err(db("insert package"))?;
            add_activity(&mut tx.tx, act, p.created_at).await?;
            tx.commit("insert package").await
        })
    }

    fn delete_package<'a>(&'a self, id: &'a str, act: &'a NewActivity) -> StoreFuture<'a, ()> {
        Box::pin(self.exec_one(
            "delete package",
            format!("package {id}"),
            "DELETE FROM packages WHERE id = $1",
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

    fn group_instances<'a>(
        &'a self,
        app_id: &'a str,
        group_id: &'a str,
    ) -> StoreFuture<'a, Vec<Instance>> {
        Box::pin(async move {
            sqlx::query("SELECT * FROM instances WHERE app_id = $1 AND group_id = $2")
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
            let rows: Vec<(String, Option<String>, String, String, i64)> = sqlx::query_as(
                "SELECT app_id, group_id, version, status, COUNT(*) FROM instances \
                 GROUP BY app_id, group_id, version, status \
                 ORDER BY app_id COLLATE \"C\", group_id COLLATE \"C\" NULLS FIRST, \
                 version COLLATE \"C\", status COLLATE \"C\"",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db("count instances"))?;
            rows.into_iter()
                .map(|(app_id, group_id, version, status, count)| {
                    Ok(InstanceCount {
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
                "SELECT * FROM instance_status_history WHERE machine_id = $1 AND app_id = $2 \
                 ORDER BY id DESC LIMIT $3",
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
                    Some(_) => {
                        format!("DELETE FROM {table} WHERE machine_id = $1 AND app_id = $2")
                    }
                    None => format!("DELETE FROM {table} WHERE machine_id = $1"),
                };
                let mut q = sqlx::query(&sql).bind(machine_id);
                if let Some(a) = app_id {
                    q = q.bind(a);
                }
                let res = q
                    .execute(&mut *tx.tx)
                    .await
                    .map_err(db("delete instance"))?;
                if counts {
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
            const T: &str = "events";
            let rows = sqlx::query(
                "SELECT * FROM events WHERE ($1::text IS NULL OR machine_id = $1) \
                 AND ($2::text IS NULL OR app_id = $2) AND ($3::bigint IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4",
            )
            .bind(machine_id)
            .bind(app_id)
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
                "SELECT * FROM activity WHERE ($1::text IS NULL OR app_id = $1) \
                 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            )
            .bind(app_id)
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
