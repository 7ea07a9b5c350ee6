//! [`RolloutStore`] on SQLite. The grant rules are domain code ([`crate::rollout::grants`]); this
//! file is their SQL side: [`GrantTx`] on a [`DirectTx`] (rusqlite, statements run synchronously
//! from the connection's statement cache), one or two statements per operation, and the
//! [`RolloutStore`] methods, each of which runs a rule function in one `BEGIN IMMEDIATE`
//! transaction. That takes the database write lock before the rules read the group's policy and
//! counts, so concurrent checks in this process or in another server sharing the file are
//! serialised and a limit of N grants exactly N. (PostgreSQL: the same statements inside a
//! transaction that first locks the group row with `SELECT ... FOR UPDATE`.)
//!
//! One row of `rollout_grants` per machine, application, group and version (a unique index,
//! migration 0005): a grant of a version the machine had before reopens its row, so the counts
//! are machines.
//!
//! Refused versions (`refused_versions`, written with the failed grant of a rollback or a deny
//! list) are read in the same grant transaction, so a refusal recorded through one replica holds
//! on all.

use rusqlite::Connection;
use sqlx::{Sqlite, Transaction};

use super::direct::{col, complete, execute, lite, ready};
use super::{DirectTx, SqliteStore, add_activity, db};
use crate::model::{GroupPolicy, NewActivity};
use crate::rollout::grants::{
    self, GrantCount, GrantKey, GrantTx, GroupPolicyRow, NewGrant, RolloutKey, Settlement,
};
use crate::store::rollout::{
    GrantOutcome, GrantRequest, GrantState, GrantStats, HaltedRollout, ProgressReport,
    RefusalReason, RefusedVersion, RolloutStore,
};
use crate::store::sqlx_rows::{refusal_reason, refused_version_of};
use crate::store::sqlx_shared as shared;
use crate::store::tx::TxFuture;
use crate::store::{StoreError, StoreFuture};

const GRANTS: &str = "rollout_grants";
const REFUSED: &str = "refused_versions";

type Tx = Transaction<'static, Sqlite>;

fn corrupt_policy(detail: String) -> StoreError {
    StoreError::Corrupt {
        table: "groups_",
        column: "policy",
        detail,
    }
}

/// A stored count as a number of machines.
fn machines(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl GrantTx for DirectTx<'_> {
    fn group_policy<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, Option<GroupPolicyRow>> {
        ready(group_policy(self.conn, group_id))
    }

    fn gate_policy<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, Option<GroupPolicyRow>> {
        // The writer holds the database's one write lock anyway.
        ready(group_policy(self.conn, group_id))
    }

    fn store_group_policy<'a>(
        &'a mut self,
        group_id: &'a str,
        policy: &'a GroupPolicy,
    ) -> TxFuture<'a, ()> {
        ready(store_group_policy(self.conn, group_id, policy))
    }

    fn refusal_of<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, Option<RefusalReason>> {
        ready(refusal_of(self.conn, machine_id, app_id, version))
    }

    fn insert_refusal<'a>(&'a mut self, r: &'a RefusedVersion) -> TxFuture<'a, ()> {
        ready(execute(
            self.conn,
            "record refused version",
            "INSERT INTO refused_versions (machine_id, app_id, version, reason, error_code, \
             at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (machine_id, app_id, version) \
             DO NOTHING",
            (
                &r.machine_id,
                &r.app_id,
                &r.version,
                r.reason.as_str(),
                r.error_code,
                r.at,
            ),
        ))
    }

    fn has_in_flight_grant<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, bool> {
        ready(
            count(
                self.conn,
                "SELECT COUNT(*) FROM rollout_grants WHERE machine_id = ? AND app_id = ? \
                 AND version = ? AND state = 'in_flight'",
                (machine_id, app_id, version),
            )
            .map(|n| n > 0),
        )
    }

    fn expire_in_flight_grants<'a>(
        &'a mut self,
        group_id: &'a str,
        cutoff: i64,
        now: i64,
    ) -> TxFuture<'a, ()> {
        ready(execute(
            self.conn,
            "expire rollout grants",
            "UPDATE rollout_grants SET state = 'timed_out', settled_at = ? \
             WHERE group_id = ? AND state = 'in_flight' AND progress_at < ?",
            (now, group_id, cutoff),
        ))
    }

    fn grant_counts<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
        since: i64,
    ) -> TxFuture<'a, Vec<GrantCount>> {
        ready(grant_counts(self.conn, group_id, version, since))
    }

    fn completed_grants<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, u64> {
        ready(
            count(
                self.conn,
                "SELECT COALESCE(SUM(machines), 0) FROM rollout_grant_tallies \
                 WHERE group_id = ? AND version = ? AND state = 'complete'",
                (group_id, version),
            )
            .map(machines),
        )
    }

    fn in_flight_grants<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, u64> {
        ready(
            count(
                self.conn,
                "SELECT COUNT(*) FROM rollout_grants WHERE group_id = ? AND state = 'in_flight'",
                (group_id,),
            )
            .map(machines),
        )
    }

    fn machines_granted_since<'a>(
        &'a mut self,
        besides: GrantKey<'a>,
        since: i64,
    ) -> TxFuture<'a, u64> {
        ready(
            count(
                self.conn,
                "SELECT COUNT(*) FROM rollout_grants WHERE group_id = ? \
                 AND NOT (machine_id = ? AND app_id = ? AND version = ?) \
                 AND state <> 'deferred' AND granted_at > ?",
                (
                    besides.group_id,
                    besides.machine_id,
                    besides.app_id,
                    besides.version,
                    since,
                ),
            )
            .map(machines),
        )
    }

    fn new_machine_grants_of_network<'a>(
        &'a mut self,
        network: &'a str,
        besides: GrantKey<'a>,
        since: i64,
    ) -> TxFuture<'a, u64> {
        ready(
            count(
                self.conn,
                "SELECT COUNT(*) FROM rollout_grants WHERE network = ? AND new_machine = 1 \
                 AND NOT (machine_id = ? AND app_id = ? AND group_id = ? AND version = ?) \
                 AND state <> 'deferred' AND (state = 'in_flight' OR granted_at > ?)",
                (
                    network,
                    besides.machine_id,
                    besides.app_id,
                    besides.group_id,
                    besides.version,
                    since,
                ),
            )
            .map(machines),
        )
    }

    fn recorded_new_machine<'a>(&'a mut self, key: GrantKey<'a>) -> TxFuture<'a, Option<bool>> {
        ready(
            optional_i64(
                self.conn,
                "read rollout grant",
                GRANTS,
                "new_machine",
                "SELECT new_machine FROM rollout_grants WHERE machine_id = ? AND app_id = ? \
                 AND group_id = ? AND version = ?",
                (key.machine_id, key.app_id, key.group_id, key.version),
            )
            .map(|recorded| recorded.map(|n| n != 0)),
        )
    }

    fn rollout_start<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, Option<i64>> {
        ready(optional_i64(
            self.conn,
            "read rollout start",
            "rollout_starts",
            "started_at",
            "SELECT started_at FROM rollout_starts WHERE group_id = ? AND version = ?",
            (group_id, version),
        ))
    }

    fn record_rollout_start<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
        at: i64,
    ) -> TxFuture<'a, ()> {
        ready(execute(
            self.conn,
            "record rollout start",
            "INSERT INTO rollout_starts (group_id, version, started_at) VALUES (?, ?, ?) \
             ON CONFLICT (group_id, version) DO NOTHING",
            (group_id, version, at),
        ))
    }

    fn instance_created_at<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> TxFuture<'a, Option<i64>> {
        ready(optional_i64(
            self.conn,
            "read instance first contact",
            "instances",
            "created_at",
            "SELECT created_at FROM instances WHERE machine_id = ? AND app_id = ?",
            (machine_id, app_id),
        ))
    }

    fn supersede_other_grants<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
        now: i64,
    ) -> TxFuture<'a, ()> {
        ready(execute(
            self.conn,
            "supersede rollout grant",
            "UPDATE rollout_grants SET state = 'superseded', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND version <> ? \
             AND state IN ('in_flight', 'installed')",
            (now, machine_id, app_id, version),
        ))
    }

    fn upsert_grant<'a>(&'a mut self, g: NewGrant<'a>) -> TxFuture<'a, ()> {
        ready(execute(
            self.conn,
            "grant rollout",
            "INSERT INTO rollout_grants (group_id, app_id, machine_id, version, state, \
             canary, granted_at, progress_at, network, new_machine) \
             VALUES (?, ?, ?, ?, 'in_flight', ?, ?, ?, ?, ?) \
             ON CONFLICT (machine_id, app_id, group_id, version) DO UPDATE \
             SET state = 'in_flight', canary = excluded.canary, \
             granted_at = excluded.granted_at, progress_at = excluded.progress_at, \
             settled_at = NULL, network = excluded.network",
            rusqlite::params![
                g.key.group_id,
                g.key.app_id,
                g.key.machine_id,
                g.key.version,
                i64::from(g.canary),
                g.at,
                g.at,
                g.network,
                i64::from(g.new_machine),
            ],
        ))
    }

    fn settle_grants<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        settlement: Settlement<'a>,
        now: i64,
    ) -> TxFuture<'a, Vec<RolloutKey>> {
        ready(settle_grants(
            self.conn, machine_id, app_id, settlement, now,
        ))
    }

    fn add_activity<'a>(&'a mut self, act: &'a NewActivity, at: i64) -> TxFuture<'a, ()> {
        ready(add_activity_direct(self.conn, act, at))
    }
}

/// The `COUNT(*)` a query of `rollout_grants` returns.
fn count(
    conn: &Connection,
    sql: &'static str,
    params: impl rusqlite::Params,
) -> Result<i64, StoreError> {
    const OP: &str = "count rollout grants";
    let mut stmt = conn.prepare_cached(sql).map_err(lite(OP))?;
    let mut rows = stmt.query(params).map_err(lite(OP))?;
    match rows.next().map_err(lite(OP))? {
        Some(r) => col(r, 0, GRANTS, "COUNT(*)"),
        None => Ok(0),
    }
}

/// The integer column `column` of `table` that a query selecting it returns, if it returns a
/// row (operation `op`).
fn optional_i64(
    conn: &Connection,
    op: &'static str,
    table: &'static str,
    column: &'static str,
    sql: &'static str,
    params: impl rusqlite::Params,
) -> Result<Option<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(lite(op))?;
    let mut rows = stmt.query(params).map_err(lite(op))?;
    match rows.next().map_err(lite(op))? {
        Some(r) => col(r, 0, table, column).map(Some),
        None => Ok(None),
    }
}

fn group_policy(conn: &Connection, group_id: &str) -> Result<Option<GroupPolicyRow>, StoreError> {
    const OP: &str = "read group policy";
    let mut stmt = conn
        .prepare_cached("SELECT app_id, policy FROM groups_ WHERE id = ?")
        .map_err(lite(OP))?;
    let mut rows = stmt.query((group_id,)).map_err(lite(OP))?;
    let Some(r) = rows.next().map_err(lite(OP))? else {
        return Ok(None);
    };
    let app_id: String = col(r, 0, "groups_", "app_id")?;
    let json: String = col(r, 1, "groups_", "policy")?;
    let policy: GroupPolicy =
        serde_json::from_str(&json).map_err(|e| corrupt_policy(e.to_string()))?;
    Ok(Some(GroupPolicyRow { app_id, policy }))
}

fn store_group_policy(
    conn: &Connection,
    group_id: &str,
    policy: &GroupPolicy,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(policy).map_err(|e| corrupt_policy(e.to_string()))?;
    execute(
        conn,
        "store group policy",
        "UPDATE groups_ SET policy = ? WHERE id = ?",
        (json, group_id),
    )
}

fn refusal_of(
    conn: &Connection,
    machine_id: &str,
    app_id: &str,
    version: &str,
) -> Result<Option<RefusalReason>, StoreError> {
    const OP: &str = "read refused versions";
    let mut stmt = conn
        .prepare_cached(
            "SELECT reason FROM refused_versions WHERE machine_id = ? AND app_id = ? \
             AND version = ?",
        )
        .map_err(lite(OP))?;
    let mut rows = stmt
        .query((machine_id, app_id, version))
        .map_err(lite(OP))?;
    match rows.next().map_err(lite(OP))? {
        Some(r) => {
            let reason: String = col(r, 0, REFUSED, "reason")?;
            refusal_reason(&reason).map(Some)
        }
        None => Ok(None),
    }
}

fn grant_counts(
    conn: &Connection,
    group_id: &str,
    version: &str,
    since: i64,
) -> Result<Vec<GrantCount>, StoreError> {
    const OP: &str = "rollout stats";
    // The tallies (migration 0010, kept by triggers) count every grant of the version; the
    // grants made at or before `since` (a resume) are taken off again, from an index-only scan
    // that is empty unless the rollout was resumed.
    let mut stmt = conn
        .prepare_cached(
            "SELECT state, new_machine, SUM(n) FROM ( \
               SELECT state, new_machine, machines AS n FROM rollout_grant_tallies \
               WHERE group_id = ?1 AND version = ?2 \
               UNION ALL \
               SELECT state, new_machine, -COUNT(*) FROM rollout_grants \
               WHERE group_id = ?1 AND version = ?2 AND granted_at <= ?3 \
               GROUP BY state, new_machine) \
             GROUP BY state, new_machine HAVING SUM(n) <> 0",
        )
        .map_err(lite(OP))?;
    let mut rows = stmt.query((group_id, version, since)).map_err(lite(OP))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(lite(OP))? {
        let state: String = col(r, 0, GRANTS, "state")?;
        let new_machine: i64 = col(r, 1, GRANTS, "new_machine")?;
        let n: i64 = col(r, 2, GRANTS, "machines")?;
        let state = GrantState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            table: GRANTS,
            column: "state",
            detail: format!("unknown state {state:?}"),
        })?;
        out.push(GrantCount {
            state,
            new_machine: new_machine != 0,
            machines: machines(n),
        });
    }
    Ok(out)
}

fn settle_grants(
    conn: &Connection,
    machine_id: &str,
    app_id: &str,
    settlement: Settlement<'_>,
    now: i64,
) -> Result<Vec<RolloutKey>, StoreError> {
    const OP: &str = "settle rollout grant";
    // Each binds now, the machine and the application, then `version`.
    let (sql, version): (&'static str, Option<&str>) = match settlement {
        Settlement::Refuse(version) => (
            "UPDATE rollout_grants SET state = 'failed', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND version = ? AND state <> 'failed' \
             RETURNING group_id, version",
            Some(version),
        ),
        Settlement::Progress => (
            "UPDATE rollout_grants SET progress_at = ? WHERE machine_id = ? \
             AND app_id = ? AND state = 'in_flight' RETURNING group_id, version",
            None,
        ),
        Settlement::Installed => (
            "UPDATE rollout_grants SET state = 'installed', progress_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state = 'in_flight' \
             RETURNING group_id, version",
            None,
        ),
        Settlement::Complete { running_version } => (
            "UPDATE rollout_grants SET state = 'complete', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND (state IN ('in_flight', 'installed') \
             OR (version = ? AND state IN ('failed', 'timed_out') AND version NOT IN \
             (SELECT version FROM refused_versions \
             WHERE machine_id = rollout_grants.machine_id \
             AND app_id = rollout_grants.app_id))) RETURNING group_id, version",
            Some(running_version),
        ),
        Settlement::Failed => (
            "UPDATE rollout_grants SET state = 'failed', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state IN ('in_flight', 'installed') \
             RETURNING group_id, version",
            None,
        ),
        Settlement::Deferred => (
            "UPDATE rollout_grants SET state = 'deferred', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state = 'in_flight' \
             RETURNING group_id, version",
            None,
        ),
    };
    let mut stmt = conn.prepare_cached(sql).map_err(lite(OP))?;
    let mut rows = match version {
        Some(v) => stmt.query((now, machine_id, app_id, v)),
        None => stmt.query((now, machine_id, app_id)),
    }
    .map_err(lite(OP))?;
    // Every returned row is read: the update runs to completion as they are stepped.
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(lite(OP))? {
        out.push(RolloutKey {
            group_id: col(r, 0, GRANTS, "group_id")?,
            version: col(r, 1, GRANTS, "version")?,
        });
    }
    Ok(out)
}

/// Appends an activity entry (none when its kind is empty) on a direct connection: the
/// rusqlite twin of the sqlx `add_activity` in `store/sqlite.rs`.
pub(crate) fn add_activity_direct(
    conn: &Connection,
    a: &NewActivity,
    at: i64,
) -> Result<(), StoreError> {
    if a.kind.is_empty() {
        return Ok(());
    }
    execute(
        conn,
        "insert activity",
        super::INSERT_ACTIVITY,
        (
            at,
            &a.kind,
            a.severity,
            &a.app_id,
            &a.group_id,
            &a.machine_id,
            &a.version,
            &a.message,
        ),
    )
}

async fn list_refused(
    tx: &mut Tx,
    machine_id: &str,
    app_id: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<RefusedVersion>, StoreError> {
    sqlx::query(
        "SELECT machine_id, app_id, version, reason, error_code, at FROM refused_versions \
         WHERE machine_id = ? AND (? IS NULL OR app_id = ?) AND (? IS NULL OR version = ?) \
         ORDER BY at, app_id, version",
    )
    .bind(machine_id)
    .bind(app_id)
    .bind(app_id)
    .bind(version)
    .bind(version)
    .fetch_all(&mut **tx)
    .await
    .map_err(db("read refused versions"))?
    .iter()
    .map(refused_version_of)
    .collect()
}

impl RolloutStore for SqliteStore {
    fn try_grant<'a>(&'a self, req: &'a GrantRequest) -> StoreFuture<'a, GrantOutcome> {
        let req = req.clone();
        Box::pin(self.direct.write("grant update", move |tx| {
            complete(grants::try_grant(tx, &req))?
        }))
    }

    fn record_progress<'a>(
        &'a self,
        report: &'a ProgressReport,
    ) -> StoreFuture<'a, Vec<HaltedRollout>> {
        let report = report.clone();
        Box::pin(self.direct.write("settle rollout grant", move |tx| {
            complete(grants::record_progress(tx, &report))?
        }))
    }

    fn grant_stats<'a>(
        &'a self,
        group_id: &'a str,
        version: &'a str,
        now: i64,
    ) -> StoreFuture<'a, GrantStats> {
        let (group_id, version) = (group_id.to_owned(), version.to_owned());
        Box::pin(self.direct.write("rollout stats", move |tx| {
            complete(grants::grant_stats(tx, &group_id, &version, now))?
        }))
    }

    fn refused_versions<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<RefusedVersion>> {
        Box::pin(async move {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(db("read refused versions"))?;
            let out = list_refused(&mut tx, machine_id, app_id, None).await?;
            tx.commit().await.map_err(db("read refused versions"))?;
            Ok(out)
        })
    }

    fn clear_refusals<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: Option<&'a str>,
        version: Option<&'a str>,
        act: &'a NewActivity,
        now: i64,
    ) -> StoreFuture<'a, Vec<RefusedVersion>> {
        Box::pin(async move {
            let mut tx = self.begin_immediate("clear refused versions").await?;
            let cleared = list_refused(&mut tx, machine_id, app_id, version).await?;
            if !cleared.is_empty() {
                sqlx::query(
                    "DELETE FROM refused_versions WHERE machine_id = ? \
                     AND (? IS NULL OR app_id = ?) AND (? IS NULL OR version = ?)",
                )
                .bind(machine_id)
                .bind(app_id)
                .bind(app_id)
                .bind(version)
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(db("clear refused versions"))?;
                add_activity(&mut tx, act, now).await?;
            }
            tx.commit().await.map_err(db("clear refused versions"))?;
            Ok(cleared)
        })
    }

    fn set_machine_alias<'a>(
        &'a self,
        machine_id: &'a str,
        alias: Option<&'a str>,
        act: &'a NewActivity,
        now: i64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin_immediate("set machine alias").await?;
            if let Some(alias) = alias {
                let holder: Option<String> = sqlx::query_scalar(shared::SELECT_ALIAS_HOLDER)
                    .bind(alias)
                    .bind(machine_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("read machine aliases"))?;
                if let Some(other) = holder {
                    return Err(StoreError::Conflict(format!(
                        "alias {alias:?} is already assigned to machine {other}"
                    )));
                }
                sqlx::query(shared::UPSERT_MACHINE_ALIAS)
                    .bind(machine_id)
                    .bind(alias)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("set machine alias"))?;
            } else {
                sqlx::query(shared::DELETE_MACHINE_ALIAS)
                    .bind(machine_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("remove machine alias"))?;
            }
            add_activity(&mut tx, act, now).await?;
            tx.commit().await.map_err(db("set machine alias"))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    //! The rules' behaviour on both databases is tested in `store/tests/rollout.rs`; here, what
    //! only SQLite has: its migrations.
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;

    const APP: &str = "app";
    const GROUP: &str = "g";

    async fn stats(s: &SqliteStore, version: &str) -> GrantStats {
        s.grant_stats(GROUP, version, 1_000_000).await.unwrap()
    }

    #[tokio::test]
    async fn migration_5_folds_a_machines_grants_of_a_version_into_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new().connect_with(opts).await.unwrap();
        super::super::migrator(&super::super::MIGRATIONS[..4])
            .run(&pool)
            .await
            .unwrap();
        // Before: one row per grant attempt.
        for (id, machine, state) in [
            (1, "m", "failed"),
            (2, "n", "complete"),
            (3, "m", "failed"),
            (4, "m", "in_flight"),
        ] {
            sqlx::query(
                "INSERT INTO rollout_grants (id, group_id, app_id, machine_id, version, state, \
                 granted_at, progress_at) VALUES (?, ?, ?, ?, '2.0.0', ?, ?, ?)",
            )
            .bind(id)
            .bind(GROUP)
            .bind(APP)
            .bind(machine)
            .bind(state)
            .bind(id)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        let s = SqliteStore::open(&path).await.unwrap();
        let st = stats(&s, "2.0.0").await;
        assert_eq!(
            (st.attempts, st.in_flight, st.failed, st.complete),
            (2, 1, 0, 1),
            "the newest row of each machine is kept: {st:?}"
        );
        let dup = sqlx::query(
            "INSERT INTO rollout_grants (group_id, app_id, machine_id, version, state, \
             granted_at, progress_at) VALUES (?, ?, 'n', '2.0.0', 'failed', 9, 9)",
        )
        .bind(GROUP)
        .bind(APP)
        .execute(&s.pool)
        .await;
        assert!(dup.is_err(), "one grant per machine and version");
    }
}
