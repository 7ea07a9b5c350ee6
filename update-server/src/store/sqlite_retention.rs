//! [`RetentionStore`] on SQLite. Every deleting call is one `BEGIN IMMEDIATE` transaction that
//! deletes at most a batch of rows, found through an index on the timestamp (migration 0006:
//! `events_at`, `history_at`, `activity_at`, `instances_last_check`; grants use
//! `rollout_grants_group_time`). An aged batch walks its index in (time, id) order from a
//! cursor: it selects the next `limit` matching rows, then deletes that range of the index, so
//! the rows a pass keeps (each instance's newest status, counted grants) are read once per run,
//! not once per batch. Portable SQL (row values, no `DELETE … LIMIT`).
//!
//! Which grants a rollout still counts is computed by [`crate::retention::protection`] from the
//! groups, channels and packages read inside the same transaction (a channel re-pointed
//! meanwhile is seen); the SQL conditions built from each group's [`Protection`] are here.
//!
//! The retention lease is a row of `job_leases` (migration 0009), upserted only when it is
//! free, expired or the caller's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments as _, Sqlite, Transaction};

use super::{SqliteStore, db};
use crate::checkins::InstanceKey;
use crate::retention::protection::{self, GroupFacts, Protection, RolloutFacts};
use crate::store::retention::{
    AgedTable, Batch, Cursor, Cutoffs, ForgetOutcome, LeaseOutcome, PruneCounts, RetentionStore,
    StaleInstance,
};
use crate::store::{StoreError, StoreFuture};

type Tx = Transaction<'static, Sqlite>;

/// What the protection rule ([`protection::protections`]) is computed from, read in `tx`.
async fn rollout_facts(tx: &mut Tx) -> Result<RolloutFacts, StoreError> {
    let mut facts = RolloutFacts::default();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT cp.channel_id, p.version FROM channel_packages cp \
         JOIN packages p ON p.id = cp.package_id",
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(db("read channel targets"))?;
    for (channel, version) in rows {
        facts
            .channel_versions
            .entry(channel)
            .or_default()
            .push(version);
    }
    let groups: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT id, channel_id, policy FROM groups_")
            .fetch_all(&mut **tx)
            .await
            .map_err(db("read group policies"))?;
    facts.groups = groups
        .into_iter()
        .map(|(id, channel, policy)| GroupFacts {
            id,
            channel,
            policy,
        })
        .collect();
    Ok(facts)
}

/// The protection of every group, read in `tx`.
async fn protections(tx: &mut Tx, now: i64) -> Result<HashMap<String, Protection>, StoreError> {
    Ok(protection::protections(&rollout_facts(tx).await?, now))
}

/// A SQL condition with its bind values.
#[derive(Debug, Default, Clone)]
struct Cond {
    sql: String,
    args: SqliteArguments<'static>,
}

impl Cond {
    fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }
    fn int(&mut self, v: i64) -> Result<(), StoreError> {
        self.args.add(v).map_err(encode_error)
    }
    fn text(&mut self, v: &str) -> Result<(), StoreError> {
        self.args.add(v.to_owned()).map_err(encode_error)
    }
}

fn encode_error(e: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Database {
        op: "bind retention query",
        source: sqlx::Error::Encode(e),
    }
}

/// Appends the condition under which a grant of group `group` may go when its machine is
/// forgotten: not in flight, outside the group's rate-limit window, of a version no rollout
/// counts. `false` when the group keeps every grant. With `in_range` (a batch's delete, whose
/// rows lie at or before a row that met every condition) the bound on `granted_at` is left out,
/// so the batch's range is the only one on the index.
fn forgettable_grant(
    c: &mut Cond,
    group: &str,
    p: Option<&Protection>,
    in_range: bool,
) -> Result<bool, StoreError> {
    if p.is_some_and(|p| p.keep_all) {
        return Ok(false);
    }
    c.push("group_id = ? AND state <> 'in_flight'");
    c.text(group)?;
    if let Some(since) = p.and_then(|p| p.rate_since).filter(|_| !in_range) {
        c.push(" AND granted_at <= ?");
        c.int(since)?;
    }
    if let Some(p) = p.filter(|p| !p.versions.is_empty()) {
        c.push(" AND version NOT IN (");
        for (i, v) in p.versions.iter().enumerate() {
            c.push(if i == 0 { "?" } else { ", ?" });
            c.text(v)?;
        }
        c.push(")");
    }
    Ok(true)
}

/// Appends what the grants retention adds to [`forgettable_grant`]: settled (or last
/// progressing) before the cutoff, and not `installed` by a machine the server still knows.
fn aged_grant(c: &mut Cond, cutoff: i64, in_range: bool) -> Result<(), StoreError> {
    if !in_range {
        c.push("granted_at < ? AND ");
        c.int(cutoff)?;
    }
    c.push(
        "COALESCE(settled_at, progress_at) < ? AND (state <> 'installed' \
         OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.machine_id = rollout_grants.machine_id \
         AND i.app_id = rollout_grants.app_id))",
    );
    c.int(cutoff)
}

/// Status history entries that are not their instance's newest one.
const NOT_NEWEST: &str = "id < (SELECT MAX(h2.id) FROM instance_status_history h2 \
     WHERE h2.machine_id = instance_status_history.machine_id \
     AND h2.app_id = instance_status_history.app_id)";

/// The condition selecting the rows of an aged table (other than grants) older than `cutoff`
/// (with `in_range`, a batch's delete: only what is not about time).
fn aged_rows(table: AgedTable, cutoff: i64, in_range: bool) -> Result<Cond, StoreError> {
    let mut c = Cond::default();
    if in_range {
        c.push("1 = 1");
    } else {
        c.push("at < ?");
        c.int(cutoff)?;
    }
    if table == AgedTable::History {
        c.push(" AND ");
        c.push(NOT_NEWEST);
    }
    Ok(c)
}

async fn run_count(
    tx: &mut Tx,
    sql: &str,
    args: SqliteArguments<'static>,
) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar_with(sql, args)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("count prunable rows"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

async fn run_delete(
    tx: &mut Tx,
    sql: &str,
    args: SqliteArguments<'static>,
) -> Result<u64, StoreError> {
    let r = sqlx::query_with(sql, args)
        .execute(&mut **tx)
        .await
        .map_err(db("prune rows"))?;
    Ok(r.rows_affected())
}

/// The condition of an aged pass over `table` (for grants: of `group`, protected by `prot`);
/// `None` when nothing of it may go.
fn aged_condition(
    table: AgedTable,
    group: Option<&str>,
    prot: &HashMap<String, Protection>,
    cutoffs: &Cutoffs,
    in_range: bool,
) -> Result<Option<Cond>, StoreError> {
    let Some(cutoff) = cutoffs.of(table) else {
        return Ok(None);
    };
    if table != AgedTable::Grants {
        return aged_rows(table, cutoff, in_range).map(Some);
    }
    let Some(group) = group else {
        return Ok(None);
    };
    let mut c = Cond::default();
    if !forgettable_grant(&mut c, group, prot.get(group), in_range)? {
        return Ok(None);
    }
    c.push(" AND ");
    aged_grant(&mut c, cutoff, in_range)?;
    Ok(Some(c))
}

/// The column an aged pass walks, with the row id, in order (its index holds both).
fn time_column(table: AgedTable) -> &'static str {
    match table {
        AgedTable::Grants => "granted_at",
        AgedTable::Events | AgedTable::History | AgedTable::Activity => "at",
    }
}

/// One batch's rows: at most `LIMIT ?` rows of `table` matching `cond` after the cursor, in
/// (time, id) order (binds: the condition's, cursor time and id, limit).
fn batch_select(table: &str, time: &str, cond: &str) -> String {
    format!(
        "SELECT {time}, id FROM {table} WHERE {cond} AND ({time}, id) > (?, ?) \
         ORDER BY {time}, id LIMIT ?"
    )
}

/// Deletes the rows matching `cond` between the cursor (exclusive) and the batch's last row
/// (inclusive): the rows [`batch_select`] found, without a list of ids (binds: the condition's,
/// cursor time and id, last time and id). `cond` has no bound on the time of its own (see
/// `in_range`), so the index range ends at the batch's last row. Portable SQL.
fn batch_delete(table: &str, time: &str, cond: &str) -> String {
    format!("DELETE FROM {table} WHERE {cond} AND ({time}, id) > (?, ?) AND ({time}, id) <= (?, ?)")
}

/// Stale instances without a grant in flight, after a cursor, oldest first (binds: cutoff,
/// cursor time, machine and app, limit).
const STALE_INSTANCES: &str = "SELECT machine_id, app_id, last_check_at FROM instances \
     WHERE last_check_at < ? AND (last_check_at, machine_id, app_id) > (?, ?, ?) \
     AND NOT EXISTS (SELECT 1 FROM rollout_grants g \
     WHERE g.machine_id = instances.machine_id AND g.app_id = instances.app_id \
     AND g.state = 'in_flight') \
     ORDER BY last_check_at, machine_id, app_id LIMIT ?";

/// The instance row condition of a forgettable instance (binds machine, app, cutoff).
const FORGETTABLE_INSTANCE: &str = "machine_id = ? AND app_id = ? AND last_check_at < ? \
     AND NOT EXISTS (SELECT 1 FROM rollout_grants g WHERE g.machine_id = instances.machine_id \
     AND g.app_id = instances.app_id AND g.state = 'in_flight')";

fn key_args(key: &InstanceKey, at: Option<i64>) -> Result<Cond, StoreError> {
    let mut c = Cond::default();
    c.text(&key.0)?;
    c.text(&key.1)?;
    if let Some(t) = at {
        c.int(t)?;
    }
    Ok(c)
}

/// Forgets (or, dry, counts) one instance; `None` when it is not forgettable (any more).
async fn forget_one(
    tx: &mut Tx,
    key: &InstanceKey,
    cutoffs: &Cutoffs,
    forget: i64,
    prot: &HashMap<String, Protection>,
    dry_run: bool,
) -> Result<Option<PruneCounts>, StoreError> {
    let mut n = PruneCounts::default();
    let args = key_args(key, Some(forget))?.args;
    n.instances = if dry_run {
        let sql = format!("SELECT COUNT(*) FROM instances WHERE {FORGETTABLE_INSTANCE}");
        run_count(tx, &sql, args).await?
    } else {
        let sql = format!("DELETE FROM instances WHERE {FORGETTABLE_INSTANCE}");
        run_delete(tx, &sql, args).await?
    };
    if n.instances == 0 {
        return Ok(None);
    }
    // Rows of the instance; a dry run leaves out what the aged passes (which run first) delete.
    for (table, field) in [
        (AgedTable::History, &mut n.instance_status_history),
        (AgedTable::Events, &mut n.events),
    ] {
        let name = table.table();
        let mut c = key_args(key, Some(forget))?;
        let mut sql = "machine_id = ? AND app_id = ? AND at < ?".to_owned();
        if dry_run {
            if let Some(cut) = cutoffs.of(table) {
                let aged = aged_rows(table, cut, false)?;
                sql = format!("{sql} AND NOT ({})", aged.sql);
                c.args.add(cut).map_err(encode_error)?;
            }
            *field = run_count(
                tx,
                &format!("SELECT COUNT(*) FROM {name} WHERE {sql}"),
                c.args,
            )
            .await?;
        } else {
            *field = run_delete(tx, &format!("DELETE FROM {name} WHERE {sql}"), c.args).await?;
        }
    }
    let refused = "machine_id = ? AND app_id = ? AND at < ?";
    let args = key_args(key, Some(forget))?.args;
    n.refused_versions = if dry_run {
        run_count(
            tx,
            &format!("SELECT COUNT(*) FROM refused_versions WHERE {refused}"),
            args,
        )
        .await?
    } else {
        run_delete(
            tx,
            &format!("DELETE FROM refused_versions WHERE {refused}"),
            args,
        )
        .await?
    };
    let groups: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT group_id FROM rollout_grants WHERE machine_id = ? AND app_id = ?",
    )
    .bind(&key.0)
    .bind(&key.1)
    .fetch_all(&mut **tx)
    .await
    .map_err(db("read grants of a forgotten instance"))?;
    for group in groups {
        let mut c = key_args(key, None)?;
        c.push("machine_id = ? AND app_id = ? AND ");
        if !forgettable_grant(&mut c, &group, prot.get(&group), false)? {
            continue;
        }
        if dry_run {
            if let Some(cut) = cutoffs.grants {
                c.push(" AND NOT (");
                aged_grant(&mut c, cut, false)?;
                c.push(")");
            }
            let sql = format!("SELECT COUNT(*) FROM rollout_grants WHERE {}", c.sql);
            n.rollout_grants += run_count(tx, &sql, c.args).await?;
        } else {
            let sql = format!("DELETE FROM rollout_grants WHERE {}", c.sql);
            n.rollout_grants += run_delete(tx, &sql, c.args).await?;
        }
    }
    Ok(Some(n))
}

impl SqliteStore {
    /// A transaction for one prune call: a real batch takes the write lock first
    /// (`BEGIN IMMEDIATE`), a dry run only reads.
    async fn begin_prune(&self, dry_run: bool) -> Result<Tx, StoreError> {
        if dry_run {
            self.begin("count prunable rows").await
        } else {
            self.begin_immediate("prune rows").await
        }
    }
}

impl RetentionStore for SqliteStore {
    fn prune_aged<'a>(
        &'a self,
        table: AgedTable,
        group: Option<&'a str>,
        cutoffs: &'a Cutoffs,
        after: Option<Cursor>,
        limit: u32,
        dry_run: bool,
    ) -> StoreFuture<'a, Batch> {
        Box::pin(async move {
            let mut tx = self.begin_prune(dry_run).await?;
            let locked = Instant::now();
            let prot = if table == AgedTable::Grants {
                protections(&mut tx, cutoffs.now).await?
            } else {
                HashMap::new()
            };
            let Some(c) = aged_condition(table, group, &prot, cutoffs, false)? else {
                tx.commit().await.map_err(db("prune rows"))?;
                return Ok(Batch::default());
            };
            let (name, time) = (table.table(), time_column(table));
            if dry_run {
                let sql = format!("SELECT COUNT(*) FROM {name} WHERE {}", c.sql);
                let rows = run_count(&mut tx, &sql, c.args).await?;
                tx.commit().await.map_err(db("count prunable rows"))?;
                return Ok(Batch {
                    rows,
                    ..Batch::default()
                });
            }
            let from = after.unwrap_or(Cursor {
                at: i64::MIN,
                id: i64::MIN,
            });
            let mut del = aged_condition(table, group, &prot, cutoffs, true)?.unwrap_or_default();
            let mut sel = c;
            sel.int(from.at)?;
            sel.int(from.id)?;
            sel.int(i64::from(limit))?;
            let found: Vec<(i64, i64)> =
                sqlx::query_as_with(&batch_select(name, time, &sel.sql), sel.args)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db("find prunable rows"))?;
            let Some(&(at, id)) = found.last() else {
                tx.commit().await.map_err(db("prune rows"))?;
                return Ok(Batch {
                    locked: locked.elapsed(),
                    ..Batch::default()
                });
            };
            for v in [from.at, from.id, at, id] {
                del.int(v)?;
            }
            let rows = run_delete(&mut tx, &batch_delete(name, time, &del.sql), del.args).await?;
            tx.commit().await.map_err(db("prune rows"))?;
            Ok(Batch {
                rows,
                locked: locked.elapsed(),
                next: (found.len() == limit as usize).then_some(Cursor { at, id }),
            })
        })
    }

    fn grant_groups(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT DISTINCT group_id FROM rollout_grants ORDER BY group_id")
                .fetch_all(&self.pool)
                .await
                .map_err(db("list groups with grants"))
        })
    }

    fn stale_instances<'a>(
        &'a self,
        before: i64,
        after: Option<&'a StaleInstance>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<StaleInstance>> {
        Box::pin(async move {
            let (t, m, a) = after.map_or((i64::MIN, "", ""), |s| {
                (s.last_check_at, s.key.0.as_str(), s.key.1.as_str())
            });
            let rows: Vec<(String, String, i64)> = sqlx::query_as(STALE_INSTANCES)
                .bind(before)
                .bind(t)
                .bind(m)
                .bind(a)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db("list stale instances"))?;
            Ok(rows
                .into_iter()
                .map(|(machine, app, last_check_at)| StaleInstance {
                    key: (machine, app),
                    last_check_at,
                })
                .collect())
        })
    }

    fn forget_instances<'a>(
        &'a self,
        keys: &'a [InstanceKey],
        cutoffs: &'a Cutoffs,
        max_rows: u64,
        max_locked: Duration,
        dry_run: bool,
    ) -> StoreFuture<'a, ForgetOutcome> {
        Box::pin(async move {
            let mut out = ForgetOutcome::default();
            let Some(forget) = cutoffs.forget else {
                out.handled = keys.len();
                return Ok(out);
            };
            let mut tx = self.begin_prune(dry_run).await?;
            let locked = Instant::now();
            let prot = protections(&mut tx, cutoffs.now).await?;
            for key in keys {
                out.handled += 1;
                if let Some(n) = forget_one(&mut tx, key, cutoffs, forget, &prot, dry_run).await? {
                    out.counts.merge(&n);
                }
                if !dry_run && (out.counts.total() >= max_rows || locked.elapsed() >= max_locked) {
                    break;
                }
            }
            tx.commit().await.map_err(db("forget instances"))?;
            if !dry_run {
                out.locked = locked.elapsed();
            }
            Ok(out)
        })
    }

    fn take_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        now: i64,
        expires_at: i64,
    ) -> StoreFuture<'a, LeaseOutcome> {
        Box::pin(async move {
            let mut tx = self.begin_immediate("take a job lease").await?;
            let taken = sqlx::query(
                "INSERT INTO job_leases (name, holder, expires_at) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE job_leases.expires_at < ? OR job_leases.holder = excluded.holder",
            )
            .bind(name)
            .bind(holder)
            .bind(expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("take a job lease"))?
            .rows_affected()
                == 1;
            let out = if taken {
                LeaseOutcome::Taken
            } else {
                let (holder, expires_at): (String, i64) =
                    sqlx::query_as("SELECT holder, expires_at FROM job_leases WHERE name = ?")
                        .bind(name)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db("read a job lease"))?;
                LeaseOutcome::Held { holder, expires_at }
            };
            tx.commit().await.map_err(db("take a job lease"))?;
            Ok(out)
        })
    }

    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query("DELETE FROM job_leases WHERE name = ? AND holder = ?")
                .bind(name)
                .bind(holder)
                .execute(&self.pool)
                .await
                .map_err(db("release a job lease"))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_000 * DAY;
    const APP: &str = "app";

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        (dir, s)
    }

    async fn exec(s: &SqliteStore, sql: &str) {
        sqlx::query(sql).execute(&s.pool).await.unwrap();
    }

    async fn count(s: &SqliteStore, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&s.pool)
            .await
            .unwrap()
    }

    async fn strings(s: &SqliteStore, sql: &str) -> Vec<String> {
        sqlx::query_scalar(sql).fetch_all(&s.pool).await.unwrap()
    }

    async fn event(s: &SqliteStore, machine: &str, at: i64) {
        sqlx::query(
            "INSERT INTO events (machine_id, app_id, event_type, event_result, at) \
             VALUES (?, ?, 3, 2, ?)",
        )
        .bind(machine)
        .bind(APP)
        .bind(at)
        .execute(&s.pool)
        .await
        .unwrap();
    }

    async fn history(s: &SqliteStore, machine: &str, at: i64) {
        sqlx::query(
            "INSERT INTO instance_status_history (machine_id, app_id, status, version, at) \
             VALUES (?, ?, 'idle', '1.0.0', ?)",
        )
        .bind(machine)
        .bind(APP)
        .bind(at)
        .execute(&s.pool)
        .await
        .unwrap();
    }

    async fn activity(s: &SqliteStore, at: i64) {
        sqlx::query(
            "INSERT INTO activity (at, kind, severity, message) VALUES (?, 'k', 'info', 'm')",
        )
        .bind(at)
        .execute(&s.pool)
        .await
        .unwrap();
    }

    async fn instance(s: &SqliteStore, machine: &str, last_check_at: i64) {
        sqlx::query(
            "INSERT INTO instances (machine_id, app_id, last_check_at, status, status_at, \
             created_at) VALUES (?, ?, ?, 'idle', ?, ?)",
        )
        .bind(machine)
        .bind(APP)
        .bind(last_check_at)
        .bind(last_check_at)
        .bind(last_check_at)
        .execute(&s.pool)
        .await
        .unwrap();
    }

    async fn refusal(s: &SqliteStore, machine: &str, version: &str, at: i64) {
        sqlx::query(
            "INSERT INTO refused_versions (machine_id, app_id, version, reason, at) \
             VALUES (?, ?, ?, 'rolled_back', ?)",
        )
        .bind(machine)
        .bind(APP)
        .bind(version)
        .bind(at)
        .execute(&s.pool)
        .await
        .unwrap();
    }

    /// A grant made at `granted_at`; settled then too unless it is open.
    async fn grant(
        s: &SqliteStore,
        group: &str,
        machine: &str,
        version: &str,
        state: &str,
        at: i64,
    ) {
        let open = matches!(state, "in_flight" | "installed");
        sqlx::query(
            "INSERT INTO rollout_grants (group_id, app_id, machine_id, version, state, \
             granted_at, progress_at, settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(group)
        .bind(APP)
        .bind(machine)
        .bind(version)
        .bind(state)
        .bind(at)
        .bind(at)
        .bind((!open).then_some(at))
        .execute(&s.pool)
        .await
        .unwrap();
    }

    /// App `app`; packages 1.0.0, 1.5.0, 2.0.0, 3.0.0; group `g` on a channel at 2.0.0 with
    /// floor 1.5.0 and a 30-day rate window; group `h` on a channel at 3.0.0 gated on `g`;
    /// group `k` whose policy cannot be read.
    async fn catalogue(s: &SqliteStore) {
        exec(
            s,
            "INSERT INTO apps (id, name, created_at) VALUES ('app', 'OS', 0)",
        )
        .await;
        for v in ["1.0.0", "1.5.0", "2.0.0", "3.0.0"] {
            sqlx::query(
                "INSERT INTO packages (id, app_id, version, arch, kind, filename, size, \
                 sha1_base64, sha256_hex, created_at) VALUES (?, 'app', ?, 'amd64', 'full', \
                 'p', 1, 'x', 'y', 0)",
            )
            .bind(format!("p{v}"))
            .bind(v)
            .execute(&s.pool)
            .await
            .unwrap();
        }
        for (c, v) in [("c", "2.0.0"), ("c2", "3.0.0")] {
            sqlx::query(
                "INSERT INTO channels (id, app_id, name, created_at) VALUES (?, 'app', ?, 0)",
            )
            .bind(c)
            .bind(c)
            .execute(&s.pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO channel_packages (channel_id, arch, package_id) VALUES (?, 'amd64', ?)",
            )
            .bind(c)
            .bind(format!("p{v}"))
            .execute(&s.pool)
            .await
            .unwrap();
        }
        let rate = 30 * DAY;
        for (id, channel, policy) in [
            (
                "g",
                Some("c"),
                format!(
                    r#"{{"floors":["1.5.0"],"rate_limit":{{"count":10,"period_secs":{rate}}}}}"#
                ),
            ),
            (
                "h",
                Some("c2"),
                r#"{"gate":{"group":"g","min_complete":1}}"#.to_owned(),
            ),
            ("k", None, r#"{"ramp":5}"#.to_owned()),
        ] {
            sqlx::query(
                "INSERT INTO groups_ (id, app_id, name, track, channel_id, policy, created_at) \
                 VALUES (?, 'app', ?, ?, ?, ?, 0)",
            )
            .bind(id)
            .bind(id)
            .bind(id)
            .bind(channel)
            .bind(policy)
            .execute(&s.pool)
            .await
            .unwrap();
        }
    }

    fn cutoffs(days: i64) -> Cutoffs {
        Cutoffs {
            now: NOW,
            events: Some(NOW - days * DAY),
            history: Some(NOW - days * DAY),
            activity: Some(NOW - days * DAY),
            grants: Some(NOW - days * DAY),
            forget: None,
        }
    }

    /// Every aged pass as the pruner runs them: each table once, grants once per group.
    async fn passes(s: &SqliteStore) -> Vec<(AgedTable, Option<String>)> {
        let mut out = Vec::new();
        for table in AgedTable::ALL {
            if table == AgedTable::Grants {
                for g in s.grant_groups().await.unwrap() {
                    out.push((table, Some(g)));
                }
            } else {
                out.push((table, None));
            }
        }
        out
    }

    /// Runs every aged pass to the end, batches of `limit`; returns the rows per table and the
    /// batch sizes.
    async fn prune_all(s: &SqliteStore, c: &Cutoffs, limit: u32) -> (PruneCounts, Vec<u64>) {
        let mut counts = PruneCounts::default();
        let mut batches = Vec::new();
        for (table, g) in passes(s).await {
            let mut cursor = None;
            loop {
                let b = s
                    .prune_aged(table, g.as_deref(), c, cursor, limit, false)
                    .await
                    .unwrap();
                batches.push(b.rows);
                counts.add(table, b.rows);
                cursor = b.next;
                if cursor.is_none() {
                    break;
                }
            }
        }
        (counts, batches)
    }

    /// Every aged pass as a dry run; returns the rows per table it would delete.
    async fn dry_all(s: &SqliteStore, c: &Cutoffs) -> PruneCounts {
        let mut counts = PruneCounts::default();
        for (table, g) in passes(s).await {
            let n = s
                .prune_aged(table, g.as_deref(), c, None, 1, true)
                .await
                .unwrap()
                .rows;
            counts.add(table, n);
        }
        counts
    }

    #[tokio::test]
    async fn old_rows_go_recent_ones_stay_and_each_instance_keeps_its_newest_status() {
        let (_d, s) = store().await;
        for at in [NOW - 200 * DAY, NOW - 91 * DAY, NOW - 89 * DAY, NOW] {
            event(&s, "m", at).await;
            activity(&s, at).await;
        }
        // `old` changed status twice, long ago: its newest entry stays however old it is.
        history(&s, "old", NOW - 300 * DAY).await;
        history(&s, "old", NOW - 200 * DAY).await;
        history(&s, "new", NOW - 100 * DAY).await;
        history(&s, "new", NOW - DAY).await;
        let c = cutoffs(90);
        let dry = dry_all(&s, &c).await;
        assert_eq!(count(&s, "events").await, 4, "a dry run deletes nothing");
        let (real, _) = prune_all(&s, &c, 1000).await;
        assert_eq!(real, dry, "a dry run counts what a run deletes");
        assert_eq!(
            (real.events, real.activity, real.instance_status_history),
            (2, 2, 2)
        );
        let left: Vec<i64> = sqlx::query_scalar("SELECT at FROM events ORDER BY at")
            .fetch_all(&s.pool)
            .await
            .unwrap();
        assert_eq!(left, [NOW - 89 * DAY, NOW]);
        let hist: Vec<(String, i64)> =
            sqlx::query_as("SELECT machine_id, at FROM instance_status_history ORDER BY id")
                .fetch_all(&s.pool)
                .await
                .unwrap();
        assert_eq!(
            hist,
            [
                ("old".to_owned(), NOW - 200 * DAY),
                ("new".to_owned(), NOW - DAY)
            ]
        );
        // Nothing configured, nothing pruned.
        let keep = Cutoffs {
            now: NOW,
            ..Cutoffs::default()
        };
        let (n, _) = prune_all(&s, &keep, 1000).await;
        assert_eq!(n, PruneCounts::default());
    }

    #[tokio::test]
    async fn a_prune_bigger_than_a_batch_takes_several_bounded_batches() {
        let (_d, s) = store().await;
        let mut tx = s.pool.begin().await.unwrap();
        for i in 0..250 {
            sqlx::query(
                "INSERT INTO events (machine_id, app_id, event_type, event_result, at) \
                 VALUES ('m', 'app', 3, 2, ?)",
            )
            .bind(i)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let c = cutoffs(1);
        let (mut sizes, mut cursor) = (Vec::new(), None);
        loop {
            let b = s
                .prune_aged(AgedTable::Events, None, &c, cursor, 100, false)
                .await
                .unwrap();
            assert!(b.locked > Duration::ZERO);
            sizes.push(b.rows);
            cursor = b.next;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(sizes, [100, 100, 50]);
        assert_eq!(count(&s, "events").await, 0);
    }

    #[tokio::test]
    async fn grants_a_rollout_counts_are_kept_whatever_their_age() {
        let (_d, s) = store().await;
        catalogue(&s).await;
        let old = NOW - 200 * DAY;
        for (group, machine, version, state, at) in [
            ("g", "old-version", "1.0.0", "complete", old), // goes
            ("g", "target", "2.0.0", "complete", old),      // the group's target
            ("g", "floor", "1.5.0", "failed", old),         // a floor of the group
            ("g", "gated", "3.0.0", "complete", old),       // the target of `h`, gated on `g`
            ("g", "in-flight", "1.0.0", "in_flight", old),  // holds a concurrency slot
            ("g", "installed-known", "1.0.0", "installed", old), // staged, machine known
            ("g", "installed-gone", "1.0.0", "installed", old), // staged, machine forgotten: goes
            ("g", "recent", "1.0.0", "complete", NOW - 10 * DAY), // within retention
            ("g", "rate-window", "1.0.0", "complete", NOW - 20 * DAY), // in the 30-day window
            ("deleted-group", "orphan", "1.0.0", "complete", old), // goes
            ("k", "unreadable", "1.0.0", "complete", old),  // the policy cannot be read
        ] {
            grant(&s, group, machine, version, state, at).await;
        }
        instance(&s, "installed-known", old).await;
        // Retention of 15 days: `rate-window` is old enough but inside the rate window.
        let c = cutoffs(15);
        let dry = dry_all(&s, &c).await;
        let (real, _) = prune_all(&s, &c, 2).await;
        assert_eq!(real, dry);
        assert_eq!(real.rollout_grants, 3);
        let left = strings(
            &s,
            "SELECT machine_id FROM rollout_grants ORDER BY machine_id",
        )
        .await;
        assert_eq!(
            left,
            [
                "floor",
                "gated",
                "in-flight",
                "installed-known",
                "rate-window",
                "recent",
                "target",
                "unreadable"
            ]
        );
        // The channel moves on to 3.0.0: the grants of 2.0.0 are no longer counted.
        exec(
            &s,
            "UPDATE channel_packages SET package_id = 'p3.0.0' WHERE channel_id = 'c'",
        )
        .await;
        let (real, _) = prune_all(&s, &c, 100).await;
        assert_eq!(real.rollout_grants, 1);
        assert!(
            !strings(&s, "SELECT machine_id FROM rollout_grants")
                .await
                .contains(&"target".to_owned())
        );
    }

    #[tokio::test]
    async fn forgetting_takes_the_instance_and_its_rows_and_a_dry_run_counts_them_once() {
        let (_d, s) = store().await;
        catalogue(&s).await;
        let forget = NOW - 7 * DAY;
        // `gone`: last seen 30 days ago, with old and less old rows of every kind.
        instance(&s, "gone", NOW - 30 * DAY).await;
        for at in [NOW - 200 * DAY, NOW - 100 * DAY, NOW - 30 * DAY] {
            history(&s, "gone", at).await;
            event(&s, "gone", at).await;
        }
        refusal(&s, "gone", "1.5.0", NOW - 100 * DAY).await;
        grant(&s, "g", "gone", "1.0.0", "complete", NOW - 200 * DAY).await; // aged
        grant(&s, "g", "gone", "1.2.0", "failed", NOW - 40 * DAY).await; // forgotten
        grant(&s, "g", "gone", "2.0.0", "failed", NOW - 30 * DAY).await; // counted: kept
        // `busy`: as old, but a grant in flight: never forgotten.
        instance(&s, "busy", NOW - 30 * DAY).await;
        grant(&s, "g", "busy", "2.0.0", "in_flight", NOW - 30 * DAY).await;
        // `fresh`: seen yesterday.
        instance(&s, "fresh", NOW - DAY).await;
        history(&s, "fresh", NOW - DAY).await;

        let mut c = cutoffs(90);
        c.forget = Some(forget);
        let stale = s.stale_instances(forget, None, 10).await.unwrap();
        let keys: Vec<InstanceKey> = stale.iter().map(|s| s.key.clone()).collect();
        assert_eq!(keys, [("gone".to_owned(), APP.to_owned())]);
        // Paging: nothing after the last one.
        assert!(
            s.stale_instances(forget, stale.last(), 10)
                .await
                .unwrap()
                .is_empty()
        );

        let mut dry = dry_all(&s, &c).await;
        let f = s
            .forget_instances(&keys, &c, u64::MAX, Duration::MAX, true)
            .await
            .unwrap();
        dry.merge(&f.counts);
        assert_eq!(count(&s, "instances").await, 3, "a dry run deletes nothing");

        let (mut real, _) = prune_all(&s, &c, 1000).await;
        let f = s
            .forget_instances(&keys, &c, 1000, Duration::MAX, false)
            .await
            .unwrap();
        assert_eq!(f.counts.instances, 1);
        real.merge(&f.counts);
        assert_eq!(real, dry, "the same rows, each counted once");
        assert_eq!(
            (
                real.instances,
                real.instance_status_history,
                real.events,
                real.refused_versions,
                real.rollout_grants
            ),
            (1, 3, 3, 1, 2)
        );
        assert_eq!(
            strings(&s, "SELECT machine_id FROM instances ORDER BY machine_id").await,
            ["busy", "fresh"]
        );
        assert_eq!(count(&s, "refused_versions").await, 0);
        let grants = strings(
            &s,
            "SELECT machine_id || ' ' || version FROM rollout_grants ORDER BY machine_id",
        )
        .await;
        assert_eq!(
            grants,
            ["busy 2.0.0", "gone 2.0.0"],
            "the counted grant stays"
        );
        // An instance that checked in meanwhile is not forgotten.
        instance(&s, "back", NOW - 30 * DAY).await;
        let back = vec![("back".to_owned(), APP.to_owned())];
        exec(
            &s,
            &format!("UPDATE instances SET last_check_at = {NOW} WHERE machine_id = 'back'"),
        )
        .await;
        let f = s
            .forget_instances(&back, &c, 1000, Duration::MAX, false)
            .await
            .unwrap();
        assert_eq!(f.counts, PruneCounts::default());
        assert_eq!(
            strings(
                &s,
                "SELECT machine_id FROM instances WHERE machine_id = 'back'"
            )
            .await,
            ["back"]
        );
    }

    #[tokio::test]
    async fn forgetting_stops_at_the_row_limit_and_resumes() {
        let (_d, s) = store().await;
        let mut keys = Vec::new();
        for i in 0..6 {
            let m = format!("m{i}");
            instance(&s, &m, NOW - 30 * DAY).await;
            for _ in 0..3 {
                event(&s, &m, NOW - 30 * DAY).await;
            }
            keys.push((m, APP.to_owned()));
        }
        let c = Cutoffs {
            now: NOW,
            forget: Some(NOW - 7 * DAY),
            ..Cutoffs::default()
        };
        // A batch out of lock time ends after its first instance.
        let f = s
            .forget_instances(&keys[..2], &c, 1000, Duration::ZERO, false)
            .await
            .unwrap();
        assert_eq!((f.handled, f.counts.instances), (1, 1));
        keys.remove(0);
        // 4 rows per instance, at most 6 per batch: the second instance ends the batch.
        let f = s
            .forget_instances(&keys, &c, 6, Duration::MAX, false)
            .await
            .unwrap();
        assert_eq!((f.handled, f.counts.total()), (2, 8));
        let f = s
            .forget_instances(&keys[2..], &c, 6, Duration::MAX, false)
            .await
            .unwrap();
        assert_eq!((f.handled, f.counts.instances), (2, 2));
        let f = s
            .forget_instances(&keys[4..], &c, 6, Duration::MAX, false)
            .await
            .unwrap();
        assert_eq!((f.handled, f.counts.instances), (1, 1));
        assert_eq!(count(&s, "instances").await + count(&s, "events").await, 0);
    }

    #[tokio::test]
    async fn a_lease_is_taken_when_free_expired_or_ours_and_given_back_only_by_its_holder() {
        let (_d, s) = store().await;
        let held = |holder: &str, expires_at| LeaseOutcome::Held {
            holder: holder.into(),
            expires_at,
        };
        let take = |holder: &'static str, now: i64| {
            let s = s.clone();
            async move { s.take_lease("job", holder, now, now + 10).await.unwrap() }
        };
        assert_eq!(take("a", 100).await, LeaseOutcome::Taken);
        assert_eq!(take("b", 105).await, held("a", 110), "held until 110");
        assert_eq!(take("a", 105).await, LeaseOutcome::Taken, "renewed");
        assert_eq!(
            take("b", 115).await,
            held("a", 115),
            "not expired at its end"
        );
        assert_eq!(
            take("b", 116).await,
            LeaseOutcome::Taken,
            "expired: taken over"
        );
        s.release_lease("job", "a").await.unwrap();
        assert_eq!(
            take("a", 117).await,
            held("b", 126),
            "only its holder gives it back"
        );
        s.release_lease("job", "b").await.unwrap();
        assert_eq!(take("a", 117).await, LeaseOutcome::Taken, "free");
        assert_eq!(
            s.take_lease("other", "b", 117, 127).await.unwrap(),
            LeaseOutcome::Taken,
            "leases are by name"
        );
    }

    /// The query plan of `sql` with `binds` integer parameters, one detail line per step.
    async fn plan(s: &SqliteStore, sql: &str, c: Cond) -> Vec<String> {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as_with(&format!("EXPLAIN QUERY PLAN {sql}"), c.args)
                .fetch_all(&s.pool)
                .await
                .unwrap();
        rows.into_iter().map(|r| r.3).collect()
    }

    fn assert_indexed(plan: &[String], index: &str) {
        assert!(
            plan.iter().any(|l| l.contains(&format!("INDEX {index} "))),
            "{index} not used: {plan:#?}"
        );
        assert!(
            !plan.iter().any(|l| l.starts_with("SCAN ")),
            "a table or index is scanned in full: {plan:#?}"
        );
    }

    #[tokio::test]
    async fn every_prune_query_finds_its_rows_through_an_index() {
        let (_d, s) = store().await;
        // The batch's select and its delete, with the binds each takes after the condition.
        let both = |table: &str, time: &str, c: &Cond, d: &Cond| {
            let mut sel = c.clone();
            for v in [0, 0, 100] {
                sel.int(v).unwrap();
            }
            // The plan reads `at>? AND at<?` whichever upper bound SQLite took: a cutoff in the
            // delete's own condition would let it scan to the cutoff instead of the batch's end.
            assert!(!d.sql.contains(&format!("{time} <")), "{}", d.sql);
            let mut del = d.clone();
            for v in [0, 0, 1, 1] {
                del.int(v).unwrap();
            }
            [
                (batch_select(table, time, &c.sql), sel),
                (batch_delete(table, time, &d.sql), del),
            ]
        };
        for (table, index) in [
            (AgedTable::Events, "events_at"),
            (AgedTable::History, "history_at"),
            (AgedTable::Activity, "activity_at"),
        ] {
            let c = aged_rows(table, NOW, false).unwrap();
            let d = aged_rows(table, NOW, true).unwrap();
            for (sql, args) in both(table.table(), time_column(table), &c, &d) {
                assert_indexed(&plan(&s, &sql, args).await, index);
            }
        }
        let prot = Protection {
            versions: vec!["2.0.0".into()],
            rate_since: Some(NOW),
            keep_all: false,
        };
        let grants = |in_range| {
            let mut c = Cond::default();
            assert!(forgettable_grant(&mut c, "g", Some(&prot), in_range).unwrap());
            c.push(" AND ");
            aged_grant(&mut c, NOW, in_range).unwrap();
            c
        };
        for (sql, args) in both(
            "rollout_grants",
            "granted_at",
            &grants(false),
            &grants(true),
        ) {
            assert_indexed(&plan(&s, &sql, args).await, "rollout_grants_group_time");
        }
        let mut c = Cond::default();
        for v in [NOW, 0] {
            c.int(v).unwrap();
        }
        c.text("m").unwrap();
        c.text("a").unwrap();
        c.int(10).unwrap();
        let p = plan(&s, STALE_INSTANCES, c).await;
        assert_indexed(&p, "instances_last_check");
    }
}
