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
use crate::retention::protection::{self, Protection, RolloutFacts};
use crate::store::retention::{
    AgedTable, Batch, Cursor, Cutoffs, ForgetOutcome, LeaseOutcome, PruneCounts, RetentionStore,
    StaleInstance,
};
use crate::store::sqlx_rows::{rollout_facts_of, stale_instance_of};
use crate::store::sqlx_shared::{self as shared, aged_time_column, encode_error};
use crate::store::{StoreError, StoreFuture};

type Tx = Transaction<'static, Sqlite>;

/// What the protection rule ([`protection::protections`]) is computed from, read in `tx`.
async fn rollout_facts(tx: &mut Tx) -> Result<RolloutFacts, StoreError> {
    let targets = sqlx::query_as(shared::SELECT_CHANNEL_TARGETS)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read channel targets"))?;
    let groups = sqlx::query_as(shared::SELECT_GROUP_FACTS)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read group policies"))?;
    Ok(rollout_facts_of(targets, groups))
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
        self.args.add(v).map_err(encode_error(BIND_OP))
    }
    fn text(&mut self, v: &str) -> Result<(), StoreError> {
        self.args.add(v.to_owned()).map_err(encode_error(BIND_OP))
    }
}

/// The operation a value that could not be bound is reported in.
const BIND_OP: &str = "bind retention query";

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
    c.push("COALESCE(settled_at, progress_at) < ? AND ");
    c.push(shared::NOT_INSTALLED_BY_A_KNOWN_MACHINE);
    c.int(cutoff)
}

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
        c.push(shared::NOT_NEWEST_STATUS);
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

/// The instance row condition of a forgettable instance (binds machine, app, cutoff).
fn forgettable_instance() -> String {
    format!(
        "machine_id = ? AND app_id = ? AND last_check_at < ? AND {}",
        shared::NO_GRANT_IN_FLIGHT
    )
}

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
        let sql = format!(
            "SELECT COUNT(*) FROM instances WHERE {}",
            forgettable_instance()
        );
        run_count(tx, &sql, args).await?
    } else {
        let sql = format!("DELETE FROM instances WHERE {}", forgettable_instance());
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
                c.args.add(cut).map_err(encode_error(BIND_OP))?;
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
    let groups: Vec<String> = sqlx::query_scalar(shared::SELECT_GRANT_GROUPS_OF_INSTANCE)
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
            let (name, time) = (table.table(), aged_time_column(table));
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
            sqlx::query_scalar(shared::SELECT_GRANT_GROUPS)
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
            shared::bind_stale_instances(
                sqlx::query(shared::SELECT_STALE_INSTANCES),
                before,
                after,
                limit,
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db("list stale instances"))?
            .iter()
            .map(stale_instance_of)
            .collect()
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

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        (dir, s)
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
            for (sql, args) in both(table.table(), aged_time_column(table), &c, &d) {
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
        let p = plan(&s, shared::SELECT_STALE_INSTANCES, c).await;
        assert_indexed(&p, "instances_last_check");
    }
}
