//! [`RolloutStore`] and the check path's transaction operations ([`GrantTx`], [`InstanceTx`]) on
//! PostgreSQL. The grant rules are domain code ([`crate::rollout::grants`]); this file is their
//! SQL side, the same statements as SQLite's (`store/sqlite_rollout.rs`,
//! `store/sqlite_instances.rs`) in PostgreSQL's dialect, run in one READ COMMITTED transaction
//! per job.
//!
//! SQLite makes every count exact by taking the database write lock first (`BEGIN IMMEDIATE`).
//! Here each statement sees what was committed when it began, so what must be exact across
//! replicas is serialised by locks, always taken in this order:
//!
//! 1. the instance row (a check writes its check-in first; a batch of check-ins locks its rows
//!    in key order and takes no other lock). A plain first check's first statement writes its
//!    check-in and reads its grant context, which locks the group, in one statement
//!    ([`InstanceTx::check_in_and_prefetch`]): the two locks are taken together there, so the
//!    same machine checking in at once through two replicas can make a cycle, which PostgreSQL
//!    breaks (the job runs again);
//! 2. group rows (`groups_ … FOR UPDATE`): a grant attempt locks its group as it reads the
//!    policy, so the grants of one group are decided one at a time across every replica, and
//!    the counts read after the lock include every grant committed before it. Every write of a
//!    group's grants is made under that group's lock — a report locks the groups of the
//!    machine's grants it settles, in id order, before it changes them; superseding a machine's
//!    grants in other groups locks those groups — so the grant tallies the triggers keep
//!    (`rollout_grant_tallies`) are only ever written by the holder of their group's lock, and
//!    row locks cannot form a cycle. The exception: a group whose policy counts nothing that
//!    another grant changes (no timeout, limit or auto-halt) is locked `FOR SHARE` by the
//!    transactions of its shared lanes ([`super::batch`]), which decide its plain first checks
//!    at once; each adds to its own shard of the tallies (PostgreSQL migration 0009), and none takes a
//!    group's lock exclusively ([`PgTx::exclusive`]): a job that would fails its batch, whose
//!    jobs run again alone;
//! 3. the source network, for the limit on new machines across groups: a transaction advisory
//!    lock on a key derived from the network (`pg_advisory_xact_lock`), taken before counting.
//!
//! A transaction that needs a second group (a canary gate's group, a machine that moved between
//! groups with an open grant) takes it after its own; PostgreSQL detects the rare cycle that can
//! make and fails one of the transactions. Grants of a deleted group have no row to lock; nothing
//! decides grants there any more.
//!
//! Check-ins are written column-wise and conditionally (never back in time), many rows per
//! statement from arrays (`UNNEST`), in key order.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use super::{PgStore, PgTx, add_activity};
use crate::model::{GroupPolicy, Instance, NewActivity, ServedPayload};
use crate::rollout::grants::{
    self, GrantCount, GrantKey, GrantTx, GroupPolicyRow, NewGrant, RolloutKey, Settlement,
};
use crate::rollout::prefetch::{GrantContext, GrantPrefetch, PrefetchedCounts};
use crate::store::instances::{CheckIn, InstanceTx, StatusColumns};
use crate::store::rollout::{
    GrantOutcome, GrantRequest, GrantState, GrantStats, HaltedRollout, ProgressReport,
    RefusalReason, RefusedVersion, RolloutStore,
};
use crate::store::sqlx_rows::{instance_of, policy_of, refusal_reason, refused_version_of, u64_of};
use crate::store::sqlx_shared::{self as shared, db, get};
use crate::store::tx::{TxFuture, Urgency, transact};
use crate::store::{InstanceChange, StoreError, StoreFuture};

const GRANTS: &str = "rollout_grants";

/// Check-ins per statement: a batch of the check path ([`crate::checkins::BATCH`]) is one
/// statement; a larger one is split.
const CHECK_INS_PER_STATEMENT: usize = crate::checkins::BATCH;

/// Writes check-ins given as one array per column (`$1` … `$13`, element `i` of each is row `i`):
/// creates missing rows (`idle`), else updates the check-in columns unless the stored row holds
/// a newer check-in; empty reported values keep the stored ones.
const CHECK_IN: &str = "INSERT INTO instances (machine_id, app_id, alias, ip, version, group_id, \
     track, oem, oem_version, board, boot_id, last_check_at, status, status_at, created_at) \
     SELECT machine_id, app_id, alias, ip, version, group_id, track, oem, oem_version, board, \
     boot_id, at, 'idle', at, first_seen \
     FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], \
     $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[], $12::BIGINT[], \
     $13::BIGINT[]) AS c (machine_id, app_id, alias, ip, version, group_id, track, oem, \
     oem_version, board, boot_id, at, first_seen) \
     ON CONFLICT (machine_id, app_id) DO UPDATE SET \
     alias = CASE WHEN excluded.alias <> '' THEN excluded.alias ELSE instances.alias END, \
     ip = CASE WHEN excluded.ip <> '' THEN excluded.ip ELSE instances.ip END, \
     version = CASE WHEN excluded.version <> '' THEN excluded.version \
       ELSE instances.version END, \
     group_id = excluded.group_id, track = excluded.track, \
     oem = CASE WHEN excluded.oem <> '' THEN excluded.oem ELSE instances.oem END, \
     oem_version = CASE WHEN excluded.oem_version <> '' THEN excluded.oem_version \
       ELSE instances.oem_version END, \
     board = CASE WHEN excluded.board <> '' THEN excluded.board ELSE instances.board END, \
     boot_id = CASE WHEN excluded.boot_id <> '' THEN excluded.boot_id \
       ELSE instances.boot_id END, \
     last_check_at = excluded.last_check_at \
     WHERE excluded.last_check_at >= instances.last_check_at";

fn corrupt_policy(detail: String) -> StoreError {
    StoreError::Corrupt {
        table: "groups_",
        column: "policy",
        detail,
    }
}

fn grant_state(s: &str) -> Result<GrantState, StoreError> {
    GrantState::parse(s).ok_or_else(|| StoreError::Corrupt {
        table: GRANTS,
        column: "state",
        detail: format!("unknown state {s:?}"),
    })
}

/// The one count a query returns (`COUNT(*)` or a sum cast to `BIGINT`), as machines.
async fn count(
    conn: &mut PgConnection,
    query: sqlx::query::QueryScalar<'_, sqlx::Postgres, i64, sqlx::postgres::PgArguments>,
) -> Result<u64, StoreError> {
    let n = query
        .fetch_one(conn)
        .await
        .map_err(db("count rollout grants"))?;
    u64_of(n, GRANTS, "COUNT(*)")
}

/// Which of a machine's grants of an application a settlement changes, and how. In both
/// statements `$1` is the machine, `$2` the application, `$3` the settlement's version when it
/// has one; the time is the last parameter.
struct SettleSql<'a> {
    /// Condition on the grant, besides its machine and application.
    filter: &'static str,
    /// What the update sets.
    set: &'static str,
    /// The version bound as `$3`, if any.
    version: Option<&'a str>,
}

impl<'a> SettleSql<'a> {
    fn of(settlement: Settlement<'a>) -> Self {
        let (filter, set, version) = match settlement {
            Settlement::Refuse(version) => (
                "version = $3 AND state <> 'failed'",
                "state = 'failed', settled_at = $4",
                Some(version),
            ),
            Settlement::Progress => ("state = 'in_flight'", "progress_at = $3", None),
            Settlement::Installed => (
                "state = 'in_flight'",
                "state = 'installed', progress_at = $3",
                None,
            ),
            Settlement::Complete { running_version } => (
                "(state IN ('in_flight', 'installed') OR (version = $3 \
                 AND state IN ('failed', 'timed_out') AND version NOT IN \
                 (SELECT r.version FROM refused_versions r \
                 WHERE r.machine_id = $1 AND r.app_id = $2)))",
                "state = 'complete', settled_at = $4",
                Some(running_version),
            ),
            Settlement::Failed => (
                "state IN ('in_flight', 'installed')",
                "state = 'failed', settled_at = $3",
                None,
            ),
            Settlement::Deferred => (
                "state = 'in_flight'",
                "state = 'deferred', settled_at = $3",
                None,
            ),
        };
        Self {
            filter,
            set,
            version,
        }
    }

    /// Locks the groups of the grants the settlement changes, in id order.
    fn lock_groups(&self) -> String {
        format!(
            "SELECT id FROM groups_ WHERE id IN (SELECT group_id FROM rollout_grants \
             WHERE machine_id = $1 AND app_id = $2 AND {}) ORDER BY id FOR UPDATE",
            self.filter
        )
    }

    /// Changes the grants; returns the rollout of each.
    fn update(&self) -> String {
        format!(
            "UPDATE rollout_grants SET {} WHERE machine_id = $1 AND app_id = $2 AND {} \
             RETURNING group_id, version",
            self.set, self.filter
        )
    }
}

async fn settle_grants(
    conn: &mut PgConnection,
    machine_id: &str,
    app_id: &str,
    settlement: Settlement<'_>,
    now: i64,
) -> Result<Vec<RolloutKey>, StoreError> {
    const OP: &str = "settle rollout grant";
    let s = SettleSql::of(settlement);
    // The tally triggers update rows a grant attempt of the same group updates under the group's
    // lock: take the locks first, in the same order, so the two never wait on each other.
    let lock = s.lock_groups();
    let mut q = sqlx::query(&lock).bind(machine_id).bind(app_id);
    if let Some(v) = s.version {
        q = q.bind(v);
    }
    q.execute(&mut *conn)
        .await
        .map_err(db("lock the groups of rollout grants"))?;
    let update = s.update();
    let mut q = sqlx::query(&update).bind(machine_id).bind(app_id);
    if let Some(v) = s.version {
        q = q.bind(v);
    }
    let rows = q.bind(now).fetch_all(&mut *conn).await.map_err(db(OP))?;
    rows.iter()
        .map(|r| {
            Ok(RolloutKey {
                group_id: get(r, GRANTS, "group_id")?,
                version: get(r, GRANTS, "version")?,
            })
        })
        .collect()
}

async fn grant_counts(
    conn: &mut PgConnection,
    group_id: &str,
    version: &str,
    since: i64,
) -> Result<Vec<GrantCount>, StoreError> {
    // The tallies count every grant of the version; the grants made at or before `since` (a
    // resume) are taken off again (as on SQLite, migration 0010).
    let rows = sqlx::query(
        "SELECT state, new_machine, SUM(n)::BIGINT AS machines FROM ( \
           SELECT state, new_machine, machines AS n FROM rollout_grant_tallies \
           WHERE group_id = $1 AND version = $2 \
           UNION ALL \
           SELECT state, new_machine, -COUNT(*) FROM rollout_grants \
           WHERE group_id = $1 AND version = $2 AND granted_at <= $3 \
           GROUP BY state, new_machine) AS counted \
         GROUP BY state, new_machine HAVING SUM(n) <> 0",
    )
    .bind(group_id)
    .bind(version)
    .bind(since)
    .fetch_all(conn)
    .await
    .map_err(db("rollout stats"))?;
    rows.iter()
        .map(|r| {
            let state: String = get(r, GRANTS, "state")?;
            let new_machine: i64 = get(r, GRANTS, "new_machine")?;
            let n: i64 = get(r, GRANTS, "machines")?;
            Ok(GrantCount {
                state: grant_state(&state)?,
                new_machine: new_machine != 0,
                machines: u64_of(n, GRANTS, "machines")?,
            })
        })
        .collect()
}

/// A group's application and policy, read by `sql` (with or without its row lock).
async fn read_group_policy(
    conn: &mut PgConnection,
    sql: &'static str,
    group_id: &str,
) -> Result<Option<GroupPolicyRow>, StoreError> {
    let row = sqlx::query(sql)
        .bind(group_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("read group policy"))?;
    let Some(r) = row else {
        return Ok(None);
    };
    let app_id: String = get(&r, "groups_", "app_id")?;
    let json: String = get(&r, "groups_", "policy")?;
    Ok(Some(GroupPolicyRow {
        app_id,
        policy: policy_of(&json)?,
    }))
}

impl PgTx {
    /// How a grant attempt planned as `plan` locks its group: in a shared lane's transaction,
    /// shared and with its tally shard (returned), when the expected policy counts nothing;
    /// else exclusively, after this process's turn on the group.
    async fn grant_lock(&mut self, plan: &GrantPrefetch<'_>) -> Result<Option<i32>, StoreError> {
        match self.shared_shard() {
            Some(shard) if plan.counts_nothing() => Ok(Some(shard)),
            Some(_) => Err(super::needs_exclusive()),
            None => {
                self.take_turn(plan.key.group_id).await;
                Ok(None)
            }
        }
    }
}

impl GrantTx for PgTx {
    fn group_policy<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, Option<GroupPolicyRow>> {
        // The lock that makes the group's limits exact: held until this transaction ends.
        Box::pin(async move {
            self.exclusive()?;
            self.take_turn(group_id).await;
            read_group_policy(
                self.conn().await?,
                "SELECT app_id, policy FROM groups_ WHERE id = $1 FOR UPDATE",
                group_id,
            )
            .await
        })
    }

    fn gate_policy<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, Option<GroupPolicyRow>> {
        Box::pin(async move {
            read_group_policy(
                self.conn().await?,
                "SELECT app_id, policy FROM groups_ WHERE id = $1",
                group_id,
            )
            .await
        })
    }

    fn store_group_policy<'a>(
        &'a mut self,
        group_id: &'a str,
        policy: &'a GroupPolicy,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            let json = serde_json::to_string(policy).map_err(|e| corrupt_policy(e.to_string()))?;
            self.locking_groups()?;
            sqlx::query("UPDATE groups_ SET policy = $1 WHERE id = $2")
                .bind(json)
                .bind(group_id)
                .execute(self.conn().await?)
                .await
                .map_err(db("store group policy"))?;
            Ok(())
        })
    }

    fn refusal_of<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, Option<RefusalReason>> {
        Box::pin(async move {
            let reason: Option<String> = sqlx::query_scalar(
                "SELECT reason FROM refused_versions WHERE machine_id = $1 AND app_id = $2 \
                 AND version = $3",
            )
            .bind(machine_id)
            .bind(app_id)
            .bind(version)
            .fetch_optional(self.conn().await?)
            .await
            .map_err(db("read refused versions"))?;
            reason.as_deref().map(refusal_reason).transpose()
        })
    }

    fn insert_refusal<'a>(&'a mut self, r: &'a RefusedVersion) -> TxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO refused_versions (machine_id, app_id, version, reason, error_code, \
                 at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (machine_id, app_id, version) \
                 DO NOTHING",
            )
            .bind(&r.machine_id)
            .bind(&r.app_id)
            .bind(&r.version)
            .bind(r.reason.as_str())
            .bind(r.error_code)
            .bind(r.at)
            .execute(self.conn().await?)
            .await
            .map_err(db("record refused version"))?;
            Ok(())
        })
    }

    fn has_in_flight_grant<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM rollout_grants WHERE machine_id = $1 \
                 AND app_id = $2 AND version = $3 AND state = 'in_flight')",
            )
            .bind(machine_id)
            .bind(app_id)
            .bind(version)
            .fetch_one(self.conn().await?)
            .await
            .map_err(db("read rollout grants"))
        })
    }

    fn expire_in_flight_grants<'a>(
        &'a mut self,
        group_id: &'a str,
        cutoff: i64,
        now: i64,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            // Under the group's lock, exclusive: others' grants change.
            self.exclusive()?;
            sqlx::query(
                "UPDATE rollout_grants SET state = 'timed_out', settled_at = $1 \
                 WHERE group_id = $2 AND state = 'in_flight' AND progress_at < $3",
            )
            .bind(now)
            .bind(group_id)
            .bind(cutoff)
            .execute(self.conn().await?)
            .await
            .map_err(db("expire rollout grants"))?;
            Ok(())
        })
    }

    fn grant_counts<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
        since: i64,
    ) -> TxFuture<'a, Vec<GrantCount>> {
        Box::pin(async move { grant_counts(self.conn().await?, group_id, version, since).await })
    }

    fn completed_grants<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, u64> {
        Box::pin(async move {
            let q = sqlx::query_scalar(
                "SELECT COALESCE(SUM(machines), 0)::BIGINT FROM rollout_grant_tallies \
                 WHERE group_id = $1 AND version = $2 AND state = 'complete'",
            )
            .bind(group_id)
            .bind(version);
            count(self.conn().await?, q).await
        })
    }

    fn in_flight_grants<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, u64> {
        Box::pin(async move {
            let q = sqlx::query_scalar(
                "SELECT COUNT(*) FROM rollout_grants WHERE group_id = $1 AND state = 'in_flight'",
            )
            .bind(group_id);
            count(self.conn().await?, q).await
        })
    }

    fn machines_granted_since<'a>(
        &'a mut self,
        besides: GrantKey<'a>,
        since: i64,
    ) -> TxFuture<'a, u64> {
        Box::pin(async move {
            let q = sqlx::query_scalar(
                "SELECT COUNT(*) FROM rollout_grants WHERE group_id = $1 \
                 AND NOT (machine_id = $2 AND app_id = $3 AND version = $4) \
                 AND state <> 'deferred' AND granted_at > $5",
            )
            .bind(besides.group_id)
            .bind(besides.machine_id)
            .bind(besides.app_id)
            .bind(besides.version)
            .bind(since);
            count(self.conn().await?, q).await
        })
    }

    fn new_machine_grants_of_network<'a>(
        &'a mut self,
        network: &'a str,
        besides: GrantKey<'a>,
        since: i64,
    ) -> TxFuture<'a, u64> {
        Box::pin(async move {
            // The limit spans groups, so the group's lock does not serialise it: the network's
            // lock does (taken after the group's, held until the grant is committed).
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('platte-net:' || $1, 0))")
                .bind(network)
                .execute(self.conn().await?)
                .await
                .map_err(db("lock the network's new machines"))?;
            let q = sqlx::query_scalar(
                "SELECT COUNT(*) FROM rollout_grants WHERE network = $1 AND new_machine = 1 \
                 AND NOT (machine_id = $2 AND app_id = $3 AND group_id = $4 AND version = $5) \
                 AND state <> 'deferred' AND (state = 'in_flight' OR granted_at > $6)",
            )
            .bind(network)
            .bind(besides.machine_id)
            .bind(besides.app_id)
            .bind(besides.group_id)
            .bind(besides.version)
            .bind(since);
            count(self.conn().await?, q).await
        })
    }

    fn recorded_new_machine<'a>(&'a mut self, key: GrantKey<'a>) -> TxFuture<'a, Option<bool>> {
        Box::pin(async move {
            // Keyed by the machine and application alone (the aggregate picks the one grant):
            // with the group and version in the condition, the planner may take a group's
            // index and scan every grant of the version (PostgreSQL migration 0009).
            let recorded: Option<i64> = sqlx::query_scalar(
                "SELECT max(new_machine) FILTER (WHERE group_id = $3 AND version = $4) \
                 FROM rollout_grants WHERE machine_id = $1 AND app_id = $2",
            )
            .bind(key.machine_id)
            .bind(key.app_id)
            .bind(key.group_id)
            .bind(key.version)
            .fetch_one(self.conn().await?)
            .await
            .map_err(db("read rollout grant"))?;
            Ok(recorded.map(|n| n != 0))
        })
    }

    fn rollout_start<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, Option<i64>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT started_at FROM rollout_starts WHERE group_id = $1 AND version = $2",
            )
            .bind(group_id)
            .bind(version)
            .fetch_optional(self.conn().await?)
            .await
            .map_err(db("read rollout start"))
        })
    }

    fn record_rollout_start<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
        at: i64,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO rollout_starts (group_id, version, started_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (group_id, version) DO NOTHING",
            )
            .bind(group_id)
            .bind(version)
            .bind(at)
            .execute(self.conn().await?)
            .await
            .map_err(db("record rollout start"))?;
            Ok(())
        })
    }

    fn instance_created_at<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> TxFuture<'a, Option<i64>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT created_at FROM instances WHERE machine_id = $1 AND app_id = $2",
            )
            .bind(machine_id)
            .bind(app_id)
            .fetch_optional(self.conn().await?)
            .await
            .map_err(db("read instance first contact"))
        })
    }

    fn supersede_other_grants<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
        now: i64,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            // The grants may be of other groups (the machine moved): their tallies change too,
            // so their groups are locked first, as a report does.
            self.locking_groups()?;
            sqlx::query(
                "SELECT id FROM groups_ WHERE id IN (SELECT group_id FROM rollout_grants \
                 WHERE machine_id = $1 AND app_id = $2 AND version <> $3 \
                 AND state IN ('in_flight', 'installed')) ORDER BY id FOR UPDATE",
            )
            .bind(machine_id)
            .bind(app_id)
            .bind(version)
            .execute(self.conn().await?)
            .await
            .map_err(db("lock the groups of rollout grants"))?;
            sqlx::query(
                "UPDATE rollout_grants SET state = 'superseded', settled_at = $1 \
                 WHERE machine_id = $2 AND app_id = $3 AND version <> $4 \
                 AND state IN ('in_flight', 'installed')",
            )
            .bind(now)
            .bind(machine_id)
            .bind(app_id)
            .bind(version)
            .execute(self.conn().await?)
            .await
            .map_err(db("supersede rollout grant"))?;
            Ok(())
        })
    }

    fn upsert_grant<'a>(&'a mut self, g: NewGrant<'a>) -> TxFuture<'a, ()> {
        // Held back: sent with the check's last writes (the instance's status and history),
        // under the group's lock, just before the commit.
        let held = self
            .defer(
                "INSERT INTO rollout_grants (group_id, app_id, machine_id, version, state, \
                 canary, granted_at, progress_at, network, new_machine) \
                 VALUES ($1, $2, $3, $4, 'in_flight', $5, $6, $6, $7, $8) \
                 ON CONFLICT (machine_id, app_id, group_id, version) DO UPDATE \
                 SET state = 'in_flight', canary = excluded.canary, \
                 granted_at = excluded.granted_at, progress_at = excluded.progress_at, \
                 settled_at = NULL, network = excluded.network",
            )
            .bind(g.key.group_id)
            .bind(g.key.app_id)
            .bind(g.key.machine_id)
            .bind(g.key.version)
            .bind(i64::from(g.canary))
            .bind(g.at)
            .bind(g.network)
            .bind(i64::from(g.new_machine))
            .done();
        self.pass_turn();
        Box::pin(std::future::ready(held))
    }

    fn settle_grants<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        settlement: Settlement<'a>,
        now: i64,
    ) -> TxFuture<'a, Vec<RolloutKey>> {
        Box::pin(async move {
            self.locking_groups()?;
            settle_grants(self.conn().await?, machine_id, app_id, settlement, now).await
        })
    }

    fn add_activity<'a>(&'a mut self, act: &'a NewActivity, at: i64) -> TxFuture<'a, ()> {
        Box::pin(async move { add_activity(self.conn().await?, act, at).await })
    }

    fn prefetch_grant<'a>(
        &'a mut self,
        plan: &'a GrantPrefetch<'a>,
    ) -> TxFuture<'a, Option<GrantContext>> {
        Box::pin(async move {
            let shard = self.grant_lock(plan).await?;
            prefetch_grant(self.conn().await?, plan, shard)
                .await
                .map(Some)
        })
    }
}

/// Locks the group and reads what a grant attempt will, in one call of the schema's
/// `platte_grant_context` (migrations 0002, 0009).
async fn prefetch_grant(
    conn: &mut PgConnection,
    plan: &GrantPrefetch<'_>,
    shared_shard: Option<i32>,
) -> Result<GrantContext, StoreError> {
    let row = bind_context_args(
        sqlx::query(
            "SELECT * FROM platte_grant_context($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12)",
        ),
        plan,
        shared_shard,
    )?
    .fetch_optional(&mut *conn)
    .await
    .map_err(db("lock the group and read the grant's context"))?;
    // No row: no such group.
    match row {
        Some(r) => context_of(&r, plan),
        None => Ok(GrantContext::default()),
    }
}

/// Binds `platte_grant_context`'s twelve arguments for `plan`, in order (`shared_shard`: lock
/// the group shared, naming this tally shard).
fn bind_context_args<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    plan: &'q GrantPrefetch<'q>,
    shared_shard: Option<i32>,
) -> Result<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>, StoreError> {
    let expected = plan
        .expected_policy
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt_policy(e.to_string()))?;
    let k = &plan.key;
    Ok(query
        .bind(k.group_id)
        .bind(k.machine_id)
        .bind(k.app_id)
        .bind(k.version)
        .bind(plan.now)
        .bind(expected)
        .bind(plan.expire_before)
        .bind(plan.count_in_flight)
        .bind(plan.granted_after)
        .bind(plan.halt_counted_after)
        .bind(plan.gate_group.as_deref())
        .bind(shared_shard))
}

/// The grant context in a row of `platte_grant_context`'s columns (`ctx_…`).
fn context_of(r: &PgRow, plan: &GrantPrefetch<'_>) -> Result<GrantContext, StoreError> {
    const CTX: &str = "platte_grant_context";
    // Locked shared, the policy was not the expected one: decide under the exclusive lock.
    if get::<Option<bool>, _>(r, CTX, "ctx_shared_refused")? == Some(true) {
        return Err(super::needs_exclusive());
    }
    let count = |column: &'static str| -> Result<Option<u64>, StoreError> {
        get::<Option<i64>, _>(r, CTX, column)?
            .map(|n| u64_of(n, CTX, column))
            .transpose()
    };
    let group_row = |app: Option<String>, policy: Option<String>| match (app, policy) {
        (Some(app_id), Some(json)) => Ok(Some(GroupPolicyRow {
            app_id,
            policy: policy_of(&json)?,
        })),
        _ => Ok::<_, StoreError>(None),
    };
    let group = group_row(get(r, CTX, "ctx_app_id")?, get(r, CTX, "ctx_policy")?)?;
    let refusal: Option<String> = get(r, CTX, "ctx_refusal")?;
    let counts = if get::<Option<bool>, _>(r, CTX, "ctx_planned")? == Some(true) {
        let halt_counts = match get::<Option<Vec<String>>, _>(r, CTX, "ctx_halt_states")? {
            None => None,
            Some(states) => {
                let new: Vec<i64> = get(r, CTX, "ctx_halt_new_machines")?;
                let machines: Vec<i64> = get(r, CTX, "ctx_halt_machines")?;
                let rows = states.iter().zip(new).zip(machines);
                Some(
                    rows.map(|((state, new_machine), n)| {
                        Ok(GrantCount {
                            state: grant_state(state)?,
                            new_machine: new_machine != 0,
                            machines: u64_of(n, CTX, "ctx_halt_machines")?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?,
                )
            }
        };
        let gate = match &plan.gate_group {
            None => None,
            Some(_) => Some((
                group_row(
                    get(r, CTX, "ctx_gate_app_id")?,
                    get(r, CTX, "ctx_gate_policy")?,
                )?,
                count("ctx_gate_completed")?.unwrap_or(0),
            )),
        };
        Some(PrefetchedCounts {
            in_flight: count("ctx_in_flight")?,
            granted_after: count("ctx_granted_after")?,
            halt_counts,
            gate,
        })
    } else {
        None
    };
    Ok(GrantContext {
        group,
        refusal: refusal.as_deref().map(refusal_reason).transpose()?,
        in_flight_here: get::<Option<bool>, _>(r, CTX, "ctx_in_flight_here")? == Some(true),
        recorded_new_machine: get::<Option<i64>, _>(r, CTX, "ctx_recorded_new_machine")?
            .map(|n| n != 0),
        instance_created_at: get(r, CTX, "ctx_instance_created_at")?,
        rollout_start: get(r, CTX, "ctx_rollout_start")?,
        other_open_grants: get::<Option<bool>, _>(r, CTX, "ctx_other_open_grants")? != Some(false),
        counts,
    })
}

/// Of check-ins naming one machine and application more than once, the newest of each (a
/// statement may change a row once), in key order: neighbouring rows share pages, and
/// concurrent batches lock their rows in the same order.
fn newest_in_key_order(rows: &[CheckIn]) -> Vec<&CheckIn> {
    let mut newest: Vec<&CheckIn> = Vec::with_capacity(rows.len());
    let mut seen = HashMap::new();
    for c in rows {
        match seen.get(&(&c.machine_id, &c.app_id)) {
            Some(&i) => {
                let kept: &mut &CheckIn = &mut newest[i];
                if c.at >= kept.at {
                    *kept = c;
                }
            }
            None => {
                seen.insert((&c.machine_id, &c.app_id), newest.len());
                newest.push(c);
            }
        }
    }
    newest.sort_unstable_by(|a, b| (&a.machine_id, &a.app_id).cmp(&(&b.machine_id, &b.app_id)));
    newest
}

async fn check_in(conn: &mut PgConnection, rows: &[CheckIn]) -> Result<(), StoreError> {
    for chunk in newest_in_key_order(rows).chunks(CHECK_INS_PER_STATEMENT) {
        bind_check_ins(sqlx::query(CHECK_IN), chunk)
            .execute(&mut *conn)
            .await
            .map_err(db("write check-ins"))?;
    }
    Ok(())
}

/// [`CHECK_IN`] of one machine's check-in (`$1` … `$13`), whose statement returns the
/// machine's row as it was before (`$14`, `$15`: machine and application): the statement's
/// snapshot does not see what its `WITH` part writes.
static CHECK_IN_RETURNING_PREVIOUS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH written AS ({CHECK_IN}) SELECT * FROM instances WHERE machine_id = $14 AND app_id = $15"
    )
});

/// [`CHECK_IN_RETURNING_PREVIOUS`] with the grant context of the check's planned attempt read
/// in the same statement (`platte_grant_context`, `$16` … `$27`): the machine's row before the
/// check-in beside the context's columns, each `NULL` where there is none.
static CHECK_IN_AND_PREFETCH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH written AS ({CHECK_IN}) SELECT i.*, c.* FROM (SELECT 1) AS one \
         LEFT JOIN instances i ON i.machine_id = $14 AND i.app_id = $15 \
         LEFT JOIN LATERAL platte_grant_context($16, $17, $18, $19, $20, $21, $22, $23, $24, \
         $25, $26, $27) c ON TRUE"
    )
});

/// Binds check-ins to [`CHECK_IN`]'s parameters `$1` … `$13`, one array per column.
fn bind_check_ins<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    chunk: &[&'q CheckIn],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let text = |f: fn(&CheckIn) -> &str| chunk.iter().map(|c| f(c)).collect::<Vec<&str>>();
    query
        .bind(text(|c| &c.machine_id))
        .bind(text(|c| &c.app_id))
        .bind(text(|c| &c.alias))
        .bind(text(|c| &c.ip))
        .bind(text(|c| &c.version))
        .bind(
            chunk
                .iter()
                .map(|c| c.group_id.as_deref())
                .collect::<Vec<Option<&str>>>(),
        )
        .bind(text(|c| &c.track))
        .bind(text(|c| &c.oem))
        .bind(text(|c| &c.oem_version))
        .bind(text(|c| &c.board))
        .bind(text(|c| &c.boot_id))
        .bind(chunk.iter().map(|c| c.at).collect::<Vec<i64>>())
        .bind(
            chunk
                .iter()
                .map(|c| c.first_seen.min(c.at))
                .collect::<Vec<i64>>(),
        )
}

/// `INSERT INTO {into} VALUES` with `rows` tuples of `columns` parameters each, numbered from
/// `$1` row by row: one statement inserts rows in the order given (their ids follow it).
fn insert_rows(into: &str, columns: usize, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {into} VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * columns + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// Holds back the events, status history and activity of a check ([`PgTx::defer`]): one
/// statement part per table, its rows in order.
fn defer_change(
    tx: &mut PgTx,
    machine_id: &str,
    app_id: &str,
    version: &str,
    at: i64,
    change: &InstanceChange,
) -> Result<(), StoreError> {
    if !change.events.is_empty() {
        let sql = insert_rows(
            "events (machine_id, app_id, event_type, event_result, error_code, \
             previous_version, version, at)",
            8,
            change.events.len(),
        );
        let mut part = tx.defer(&sql);
        for e in &change.events {
            part = part
                .bind(machine_id)
                .bind(app_id)
                .bind(e.event_type)
                .bind(e.event_result)
                .bind(e.error_code)
                .bind(&e.previous_version)
                .bind(version)
                .bind(at);
        }
        part.done()?;
    }
    if let Some(s) = &change.status_change {
        tx.defer(
            "INSERT INTO instance_status_history (machine_id, app_id, status, version, detail, \
             error_code, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(machine_id)
        .bind(app_id)
        .bind(s.status.as_str())
        .bind(&s.version)
        .bind(&s.detail)
        .bind(s.error_code)
        .bind(s.at)
        .done()?;
    }
    let activity: Vec<&NewActivity> = change
        .activity
        .iter()
        .filter(|a| !a.kind.is_empty())
        .collect();
    if !activity.is_empty() {
        let sql = insert_rows(
            "activity (at, kind, severity, app_id, group_id, machine_id, version, message)",
            8,
            activity.len(),
        );
        let mut part = tx.defer(&sql);
        for a in activity {
            part = shared::bind_activity(part, a, at);
        }
        part.done()?;
    }
    Ok(())
}

impl InstanceTx for PgTx {
    fn instance<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> TxFuture<'a, Option<Instance>> {
        Box::pin(async move {
            let row: Option<PgRow> =
                sqlx::query("SELECT * FROM instances WHERE machine_id = $1 AND app_id = $2")
                    .bind(machine_id)
                    .bind(app_id)
                    .fetch_optional(self.conn().await?)
                    .await
                    .map_err(db("read instance"))?;
            row.as_ref().map(instance_of).transpose()
        })
    }

    fn check_in<'a>(&'a mut self, rows: &'a [CheckIn]) -> TxFuture<'a, ()> {
        Box::pin(async move { check_in(self.conn().await?, rows).await })
    }

    fn check_in_returning_previous<'a>(
        &'a mut self,
        row: &'a CheckIn,
    ) -> TxFuture<'a, Option<Instance>> {
        Box::pin(async move {
            let previous: Option<PgRow> =
                bind_check_ins(sqlx::query(&CHECK_IN_RETURNING_PREVIOUS), &[row])
                    .bind(&row.machine_id)
                    .bind(&row.app_id)
                    .fetch_optional(self.conn().await?)
                    .await
                    .map_err(db("write a check-in"))?;
            previous.as_ref().map(instance_of).transpose()
        })
    }

    fn check_in_and_prefetch<'a>(
        &'a mut self,
        row: &'a CheckIn,
        grant: Option<&'a GrantPrefetch<'a>>,
    ) -> TxFuture<'a, (Option<Instance>, Option<GrantContext>)> {
        Box::pin(async move {
            let Some(plan) = grant else {
                return Ok((self.check_in_returning_previous(row).await?, None));
            };
            let shard = self.grant_lock(plan).await?;
            let query = bind_check_ins(sqlx::query(&CHECK_IN_AND_PREFETCH), &[row])
                .bind(&row.machine_id)
                .bind(&row.app_id);
            let r = bind_context_args(query, plan, shard)?
                .fetch_one(self.conn().await?)
                .await
                .map_err(db("write a check-in and read the grant's context"))?;
            let previous = match get::<Option<String>, _>(&r, "instances", "machine_id")? {
                Some(_) => Some(instance_of(&r)?),
                None => None,
            };
            // No context row: no such group.
            let context = match get::<Option<String>, _>(&r, "platte_grant_context", "ctx_app_id")?
            {
                Some(_) => context_of(&r, plan)?,
                None => GrantContext::default(),
            };
            Ok((previous, Some(context)))
        })
    }

    fn set_status<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        s: &'a StatusColumns,
    ) -> TxFuture<'a, ()> {
        // Held back: sent with the commit, in one statement with the grant and the history.
        self.pass_turn();
        let held = self
            .defer(
                "UPDATE instances SET status = $1, status_detail = $2, error_code = $3, \
                 status_at = $4, granted_version = $5, granted_at = $6, served_payload = $7 \
                 WHERE machine_id = $8 AND app_id = $9",
            )
            .bind(s.status.as_str())
            .bind(&s.status_detail)
            .bind(s.error_code)
            .bind(s.status_at)
            .bind(&s.granted_version)
            .bind(s.granted_at)
            .bind(s.served_payload.map(ServedPayload::as_str))
            .bind(machine_id)
            .bind(app_id)
            .done();
        Box::pin(std::future::ready(held))
    }

    fn record_change<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
        at: i64,
        change: &'a InstanceChange,
    ) -> TxFuture<'a, ()> {
        // Held back: sent with the commit, in one statement with the status and the grant.
        self.pass_turn();
        let held = defer_change(self, machine_id, app_id, version, at, change);
        Box::pin(std::future::ready(held))
    }
}

impl RolloutStore for PgStore {
    fn try_grant<'a>(&'a self, req: &'a GrantRequest) -> StoreFuture<'a, GrantOutcome> {
        let req = Arc::new(req.clone());
        Box::pin(transact(self, Urgency::Answer, move |tx| {
            let req = Arc::clone(&req);
            Box::pin(async move { grants::try_grant(tx, &req).await })
        }))
    }

    fn record_progress<'a>(
        &'a self,
        report: &'a ProgressReport,
    ) -> StoreFuture<'a, Vec<HaltedRollout>> {
        let report = Arc::new(report.clone());
        Box::pin(transact(self, Urgency::Answer, move |tx| {
            let report = Arc::clone(&report);
            Box::pin(async move { grants::record_progress(tx, &report).await })
        }))
    }

    fn grant_stats<'a>(
        &'a self,
        group_id: &'a str,
        version: &'a str,
        now: i64,
    ) -> StoreFuture<'a, GrantStats> {
        let key = Arc::new((group_id.to_owned(), version.to_owned()));
        Box::pin(transact(self, Urgency::Answer, move |tx| {
            let key = Arc::clone(&key);
            Box::pin(async move { grants::grant_stats(tx, &key.0, &key.1, now).await })
        }))
    }

    fn refused_versions<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<RefusedVersion>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT machine_id, app_id, version, reason, error_code, at \
                 FROM refused_versions WHERE machine_id = $1 \
                 AND ($2::TEXT IS NULL OR app_id = $2) \
                 ORDER BY at, app_id COLLATE \"C\", version COLLATE \"C\"",
            )
            .bind(machine_id)
            .bind(app_id)
            .fetch_all(self.pool())
            .await
            .map_err(db("read refused versions"))?;
            rows.iter().map(refused_version_of).collect()
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
            const OP: &str = "clear refused versions";
            let mut tx = self.begin(OP).await?;
            // Deleting returns what it deleted: a refusal cleared by two replicas at once is
            // reported by one of them.
            let rows = sqlx::query(
                "DELETE FROM refused_versions WHERE machine_id = $1 \
                 AND ($2::TEXT IS NULL OR app_id = $2) AND ($3::TEXT IS NULL OR version = $3) \
                 RETURNING machine_id, app_id, version, reason, error_code, at",
            )
            .bind(machine_id)
            .bind(app_id)
            .bind(version)
            .fetch_all(&mut *tx.tx)
            .await
            .map_err(db(OP))?;
            let mut cleared = rows
                .iter()
                .map(refused_version_of)
                .collect::<Result<Vec<_>, _>>()?;
            // Oldest first, as listed (text in byte order, as SQLite and `COLLATE "C"` compare).
            cleared
                .sort_by(|a, b| (a.at, &a.app_id, &a.version).cmp(&(b.at, &b.app_id, &b.version)));
            if !cleared.is_empty() {
                add_activity(&mut tx.tx, act, now).await?;
            }
            tx.commit(OP).await?;
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
            let mut tx = self.begin("set machine alias").await?;
            if let Some(alias) = alias {
                let holder: Option<String> = sqlx::query_scalar(shared::SELECT_ALIAS_HOLDER)
                    .bind(alias)
                    .bind(machine_id)
                    .fetch_optional(&mut *tx.tx)
                    .await
                    .map_err(db("read machine aliases"))?;
                if let Some(other) = holder {
                    return Err(StoreError::Conflict(format!(
                        "alias {alias:?} is already assigned to machine {other}"
                    )));
                }
                // Another replica assigning the alias at the same time makes this a uniqueness
                // violation: a conflict too.
                sqlx::query(shared::UPSERT_MACHINE_ALIAS)
                    .bind(machine_id)
                    .bind(alias)
                    .bind(now)
                    .execute(&mut *tx.tx)
                    .await
                    .map_err(db("set machine alias"))?;
            } else {
                sqlx::query(shared::DELETE_MACHINE_ALIAS)
                    .bind(machine_id)
                    .execute(&mut *tx.tx)
                    .await
                    .map_err(db("remove machine alias"))?;
            }
            add_activity(&mut tx.tx, act, now).await?;
            tx.commit("set machine alias").await?;
            Ok(())
        })
    }
}
