//! [`RolloutStore`] on SQLite: every grant attempt and every settling of a grant is one
//! `BEGIN IMMEDIATE` transaction. It takes the database write lock before it reads the group's
//! policy and counts, so concurrent checks in this process or in another server sharing the file
//! are serialised and a limit of N grants exactly N. (PostgreSQL: the same statements inside a
//! transaction that first locks the group row with `SELECT ... FOR UPDATE`.)
//!
//! Refused versions (`refused_versions`, written with the failed grant of a rollback) are read
//! in the same grant transaction, so a refusal recorded through one replica holds on all.

use sqlx::{Sqlite, Transaction};

use super::{SqliteStore, add_activity, db};
use crate::model::{GroupPolicy, NewActivity};
use crate::rollout::{Halt, HoldReason, RolloutSpec};
use crate::store::rollout::{
    GrantOutcome, GrantRequest, GrantState, GrantStats, ProgressReport, RefusalReason,
    RefusedVersion, RolloutStore,
};
use crate::store::{StoreError, StoreFuture};

const GRANTS: &str = "rollout_grants";
const REFUSED: &str = "refused_versions";

type Tx = Transaction<'static, Sqlite>;

fn corrupt(column: &'static str, detail: String) -> StoreError {
    StoreError::Corrupt {
        table: "groups_",
        column,
        detail,
    }
}

async fn begin_immediate(s: &SqliteStore, op: &'static str) -> Result<Tx, StoreError> {
    s.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db(op))
}

async fn load_policy(
    tx: &mut Tx,
    group_id: &str,
) -> Result<Option<(String, GroupPolicy, RolloutSpec)>, StoreError> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT app_id, policy FROM groups_ WHERE id = ?")
            .bind(group_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("read group policy"))?;
    let Some((app_id, json)) = row else {
        return Ok(None);
    };
    let policy: GroupPolicy =
        serde_json::from_str(&json).map_err(|e| corrupt("policy", e.to_string()))?;
    let spec = RolloutSpec::from_policy(&policy).map_err(|e| corrupt("policy", e.to_string()))?;
    Ok(Some((app_id, policy, spec)))
}

async fn count(
    tx: &mut Tx,
    sql: &'static str,
    binds: &[&str],
    n: Option<i64>,
) -> Result<u64, StoreError> {
    let mut q = sqlx::query_scalar::<_, i64>(sql);
    for b in binds {
        q = q.bind(*b);
    }
    if let Some(n) = n {
        q = q.bind(n);
    }
    let v = q
        .fetch_one(&mut **tx)
        .await
        .map_err(db("count rollout grants"))?;
    Ok(u64::try_from(v).unwrap_or(0))
}

async fn expire(
    tx: &mut Tx,
    group_id: &str,
    spec: &RolloutSpec,
    now: i64,
) -> Result<(), StoreError> {
    let Some(t) = spec.update_timeout_secs else {
        return Ok(());
    };
    let cutoff = now.saturating_sub(i64::try_from(t).unwrap_or(i64::MAX));
    sqlx::query(
        "UPDATE rollout_grants SET state = 'timed_out', settled_at = ? \
         WHERE group_id = ? AND state = 'in_flight' AND progress_at < ?",
    )
    .bind(now)
    .bind(group_id)
    .bind(cutoff)
    .execute(&mut **tx)
    .await
    .map_err(db("expire rollout grants"))?;
    Ok(())
}

async fn stats(
    tx: &mut Tx,
    group_id: &str,
    version: &str,
    since: i64,
) -> Result<GrantStats, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, COUNT(*) FROM rollout_grants WHERE group_id = ? AND version = ? \
         AND granted_at > ? GROUP BY state",
    )
    .bind(group_id)
    .bind(version)
    .bind(since)
    .fetch_all(&mut **tx)
    .await
    .map_err(db("rollout stats"))?;
    let mut s = GrantStats::default();
    for (state, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        let Some(state) = GrantState::parse(&state) else {
            return Err(StoreError::Corrupt {
                table: GRANTS,
                column: "state",
                detail: format!("unknown state {state:?}"),
            });
        };
        let field = match state {
            GrantState::InFlight => &mut s.in_flight,
            GrantState::Installed => &mut s.installed,
            GrantState::Complete => &mut s.complete,
            GrantState::Failed => &mut s.failed,
            GrantState::TimedOut => &mut s.timed_out,
            // Put off by the machine: no attempt (yet), so not counted as one.
            GrantState::Deferred => {
                s.deferred += n;
                continue;
            }
            // Replaced by a newer release before the reboot: an attempt, nothing more.
            GrantState::Superseded => &mut s.superseded,
        };
        *field += n;
        s.attempts += n;
    }
    Ok(s)
}

/// Halts the group when its failure threshold is crossed for `version`; returns the reason.
async fn halt_if_needed(
    tx: &mut Tx,
    group_id: &str,
    app_id: &str,
    version: &str,
    mut policy: GroupPolicy,
    mut spec: RolloutSpec,
    now: i64,
) -> Result<Option<String>, StoreError> {
    let Some(ah) = spec.auto_halt else {
        return Ok(None);
    };
    if spec.halted.is_some() {
        return Ok(None);
    }
    let s = stats(
        tx,
        group_id,
        version,
        spec.halt_counted_since.unwrap_or(i64::MIN),
    )
    .await?;
    let failures = s.failed + s.timed_out;
    if s.attempts < u64::from(ah.min_attempts) || s.failure_rate() <= ah.max_failure_rate {
        return Ok(None);
    }
    let reason = format!(
        "{failures} of {} machines failed to update to {version} ({:.1}% > {:.1}%: {} errors, {} timeouts)",
        s.attempts,
        s.failure_rate() * 100.0,
        ah.max_failure_rate * 100.0,
        s.failed,
        s.timed_out
    );
    spec.halted = Some(Halt {
        version: version.to_owned(),
        reason: reason.clone(),
        at: now,
    });
    spec.store_into(&mut policy)
        .map_err(|e| corrupt("policy", e.to_string()))?;
    let json = serde_json::to_string(&policy).map_err(|e| corrupt("policy", e.to_string()))?;
    sqlx::query("UPDATE groups_ SET policy = ? WHERE id = ?")
        .bind(json)
        .bind(group_id)
        .execute(&mut **tx)
        .await
        .map_err(db("halt rollout"))?;
    add_activity(
        tx,
        &NewActivity {
            kind: "rollout_halted".into(),
            severity: "error",
            app_id: Some(app_id.to_owned()),
            group_id: Some(group_id.to_owned()),
            machine_id: None,
            version: Some(version.to_owned()),
            message: format!("rollout halted itself: {reason}"),
        },
        now,
    )
    .await?;
    Ok(Some(reason))
}

async fn try_grant_tx(tx: &mut Tx, r: &GrantRequest) -> Result<GrantOutcome, StoreError> {
    let held = |reason| GrantOutcome::Held {
        reason,
        halted_now: None,
    };
    let Some((app_id, policy, spec)) = load_policy(tx, &r.group_id).await? else {
        return Ok(held(HoldReason::Paused));
    };
    if let Some(reason) = refusal(tx, &r.machine_id, &r.app_id, &r.version).await? {
        return Ok(held(reason.hold()));
    }
    if policy.paused {
        return Ok(held(HoldReason::Paused));
    }
    if spec.halted.is_some() {
        return Ok(held(HoldReason::Halted));
    }
    let open = count(
        tx,
        "SELECT COUNT(*) FROM rollout_grants WHERE machine_id = ? AND app_id = ? AND version = ? \
         AND state = 'in_flight'",
        &[&r.machine_id, &r.app_id, &r.version],
        None,
    )
    .await?;
    if open > 0 {
        return Ok(GrantOutcome::Granted);
    }
    expire(tx, &r.group_id, &spec, r.now).await?;
    let gate = spec.gate.clone();
    let (conc, rate) = (spec.concurrency_limit, spec.rate_limit);
    if let Some(reason) =
        halt_if_needed(tx, &r.group_id, &app_id, &r.version, policy, spec, r.now).await?
    {
        return Ok(GrantOutcome::Held {
            reason: HoldReason::Halted,
            halted_now: Some(reason),
        });
    }
    if let Some(g) = gate
        && !r.canary
    {
        let gate_halted = match load_policy(tx, &g.group).await? {
            Some((_, p, s)) => p.paused || s.halted.is_some(),
            None => true,
        };
        let done = count(
            tx,
            "SELECT COUNT(*) FROM rollout_grants WHERE group_id = ? AND version = ? \
             AND state = 'complete'",
            &[&g.group, &r.version],
            None,
        )
        .await?;
        if gate_halted || done < u64::from(g.min_complete) {
            return Ok(held(HoldReason::Gate));
        }
    }
    if let Some(limit) = conc {
        let n = count(
            tx,
            "SELECT COUNT(*) FROM rollout_grants WHERE group_id = ? AND state = 'in_flight'",
            &[&r.group_id],
            None,
        )
        .await?;
        if n >= u64::from(limit) {
            return Ok(held(HoldReason::Concurrency));
        }
    }
    if let Some(rl) = rate {
        let since = r
            .now
            .saturating_sub(i64::try_from(rl.period_secs).unwrap_or(i64::MAX));
        let n = count(
            tx,
            "SELECT COUNT(*) FROM rollout_grants WHERE group_id = ? AND granted_at > ? \
             AND state <> 'deferred'",
            &[&r.group_id],
            Some(since),
        )
        .await?;
        if n >= u64::from(rl.count) {
            return Ok(held(HoldReason::Rate));
        }
    }
    // A machine offered a newer release before it rebooted into its staged one: the older grant
    // is closed as `superseded` (an attempt, neither a failure nor a completion), so the newer
    // version's completion is not counted for it too.
    sqlx::query(
        "UPDATE rollout_grants SET state = 'superseded', settled_at = ? WHERE machine_id = ? \
         AND app_id = ? AND version <> ? AND state IN ('in_flight', 'installed')",
    )
    .bind(r.now)
    .bind(&r.machine_id)
    .bind(&r.app_id)
    .bind(&r.version)
    .execute(&mut **tx)
    .await
    .map_err(db("supersede rollout grant"))?;
    // A machine that deferred this version before gets its grant reopened (one row per
    // machine and version, however often it puts the update off).
    let reopened = sqlx::query(
        "UPDATE rollout_grants SET state = 'in_flight', group_id = ?, canary = ?, granted_at = ?, \
         progress_at = ?, settled_at = NULL WHERE id = (SELECT MAX(id) FROM rollout_grants \
         WHERE machine_id = ? AND app_id = ? AND version = ? AND state = 'deferred')",
    )
    .bind(&r.group_id)
    .bind(i64::from(r.canary))
    .bind(r.now)
    .bind(r.now)
    .bind(&r.machine_id)
    .bind(&r.app_id)
    .bind(&r.version)
    .execute(&mut **tx)
    .await
    .map_err(db("reopen deferred rollout grant"))?
    .rows_affected();
    if reopened > 0 {
        return Ok(GrantOutcome::Granted);
    }
    sqlx::query(
        "INSERT INTO rollout_grants (group_id, app_id, machine_id, version, state, canary, \
         granted_at, progress_at) VALUES (?, ?, ?, ?, 'in_flight', ?, ?, ?)",
    )
    .bind(&r.group_id)
    .bind(&r.app_id)
    .bind(&r.machine_id)
    .bind(&r.version)
    .bind(i64::from(r.canary))
    .bind(r.now)
    .bind(r.now)
    .execute(&mut **tx)
    .await
    .map_err(db("insert rollout grant"))?;
    Ok(GrantOutcome::Granted)
}

/// The reason `machine_id` refuses `version` of `app_id`, if it does.
async fn refusal(
    tx: &mut Tx,
    machine_id: &str,
    app_id: &str,
    version: &str,
) -> Result<Option<RefusalReason>, StoreError> {
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT reason FROM refused_versions WHERE machine_id = ? AND app_id = ? AND version = ?",
    )
    .bind(machine_id)
    .bind(app_id)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read refused versions"))?;
    reason
        .map(|r| {
            RefusalReason::parse(&r).ok_or_else(|| StoreError::Corrupt {
                table: REFUSED,
                column: "reason",
                detail: format!("unknown reason {r:?}"),
            })
        })
        .transpose()
}

async fn progress_tx(tx: &mut Tx, p: &ProgressReport) -> Result<Option<String>, StoreError> {
    if let Some(r) = &p.refuse {
        // The first report counts; a repeated one (the agent retrying) changes nothing.
        sqlx::query(
            "INSERT INTO refused_versions (machine_id, app_id, version, reason, error_code, at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (machine_id, app_id, version) DO NOTHING",
        )
        .bind(&r.machine_id)
        .bind(&r.app_id)
        .bind(&r.version)
        .bind(r.reason.as_str())
        .bind(r.error_code)
        .bind(r.at)
        .execute(&mut **tx)
        .await
        .map_err(db("record refused version"))?;
    }
    let sql = match p.state {
        None | Some(GrantState::InFlight) => {
            "UPDATE rollout_grants SET progress_at = ? WHERE machine_id = ? AND app_id = ? \
             AND state = 'in_flight'"
        }
        Some(GrantState::Installed) => {
            "UPDATE rollout_grants SET state = 'installed', progress_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state = 'in_flight'"
        }
        Some(GrantState::Complete) => {
            "UPDATE rollout_grants SET state = 'complete', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state IN ('in_flight', 'installed')"
        }
        Some(GrantState::Failed | GrantState::TimedOut) => {
            "UPDATE rollout_grants SET state = 'failed', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state IN ('in_flight', 'installed')"
        }
        // Put off before it was installed: the slot is free, nothing failed.
        Some(GrantState::Deferred) => {
            "UPDATE rollout_grants SET state = 'deferred', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state = 'in_flight'"
        }
        // Only a newer grant supersedes (in the grant transaction); no event reports it.
        Some(GrantState::Superseded) => return Ok(None),
    };
    let changed = sqlx::query(sql)
        .bind(p.now)
        .bind(&p.machine_id)
        .bind(&p.app_id)
        .execute(&mut **tx)
        .await
        .map_err(db("settle rollout grant"))?
        .rows_affected();
    if changed == 0 || !matches!(p.state, Some(GrantState::Failed | GrantState::TimedOut)) {
        return Ok(None);
    }
    let last: Option<(String, String)> = sqlx::query_as(
        "SELECT group_id, version FROM rollout_grants WHERE machine_id = ? AND app_id = ? \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(&p.machine_id)
    .bind(&p.app_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read rollout grant"))?;
    let Some((group_id, version)) = last else {
        return Ok(None);
    };
    let Some((app, policy, spec)) = load_policy(tx, &group_id).await? else {
        return Ok(None);
    };
    expire(tx, &group_id, &spec, p.now).await?;
    halt_if_needed(tx, &group_id, &app, &version, policy, spec, p.now).await
}

type RefusalRow = (String, String, String, String, Option<i64>, i64);

fn refused_of(rows: Vec<RefusalRow>) -> Result<Vec<RefusedVersion>, StoreError> {
    rows.into_iter()
        .map(|(machine_id, app_id, version, reason, error_code, at)| {
            let reason = RefusalReason::parse(&reason).ok_or_else(|| StoreError::Corrupt {
                table: REFUSED,
                column: "reason",
                detail: format!("unknown reason {reason:?}"),
            })?;
            Ok(RefusedVersion {
                machine_id,
                app_id,
                version,
                reason,
                error_code,
                at,
            })
        })
        .collect()
}

async fn list_refused(
    tx: &mut Tx,
    machine_id: &str,
    app_id: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<RefusedVersion>, StoreError> {
    let rows: Vec<RefusalRow> = sqlx::query_as(
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
    .map_err(db("read refused versions"))?;
    refused_of(rows)
}

impl RolloutStore for SqliteStore {
    fn try_grant<'a>(&'a self, req: &'a GrantRequest) -> StoreFuture<'a, GrantOutcome> {
        Box::pin(async move {
            let mut tx = begin_immediate(self, "grant update").await?;
            let out = try_grant_tx(&mut tx, req).await?;
            tx.commit().await.map_err(db("grant update"))?;
            Ok(out)
        })
    }

    fn record_progress<'a>(
        &'a self,
        report: &'a ProgressReport,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut tx = begin_immediate(self, "settle rollout grant").await?;
            let out = progress_tx(&mut tx, report).await?;
            tx.commit().await.map_err(db("settle rollout grant"))?;
            Ok(out)
        })
    }

    fn grant_stats<'a>(
        &'a self,
        group_id: &'a str,
        version: &'a str,
        now: i64,
    ) -> StoreFuture<'a, GrantStats> {
        Box::pin(async move {
            let mut tx = begin_immediate(self, "rollout stats").await?;
            if let Some((_, _, spec)) = load_policy(&mut tx, group_id).await? {
                expire(&mut tx, group_id, &spec, now).await?;
            }
            let s = stats(&mut tx, group_id, version, i64::MIN).await?;
            tx.commit().await.map_err(db("rollout stats"))?;
            Ok(s)
        })
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
            let mut tx = begin_immediate(self, "clear refused versions").await?;
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
}
