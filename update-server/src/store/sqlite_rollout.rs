//! [`RolloutStore`] on SQLite: every grant attempt and every settling of a grant is one
//! `BEGIN IMMEDIATE` transaction. It takes the database write lock before it reads the group's
//! policy and counts, so concurrent checks in this process or in another server sharing the file
//! are serialised and a limit of N grants exactly N. (PostgreSQL: the same statements inside a
//! transaction that first locks the group row with `SELECT ... FOR UPDATE`.)
//!
//! One row of `rollout_grants` per machine, application, group and version (a unique index,
//! migration 0005): a grant of a version the machine had before reopens its row, so the counts
//! are machines.
//!
//! Refused versions (`refused_versions`, written with the failed grant of a rollback or a deny
//! list) are read in the same grant transaction, so a refusal recorded through one replica holds
//! on all.

use sqlx::{Sqlite, Transaction};

use super::{SqliteStore, add_activity, db};
use crate::model::{GroupPolicy, NewActivity};
use crate::rollout::{Halt, HoldReason, RolloutSpec};
use crate::store::rollout::{
    GrantOutcome, GrantRequest, GrantState, GrantStats, HaltedRollout, ProgressReport,
    RefusalReason, RefusedVersion, RolloutStore,
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
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT state, new_machine, COUNT(*) FROM rollout_grants WHERE group_id = ? \
         AND version = ? AND granted_at > ? GROUP BY state, new_machine",
    )
    .bind(group_id)
    .bind(version)
    .bind(since)
    .fetch_all(&mut **tx)
    .await
    .map_err(db("rollout stats"))?;
    let mut s = GrantStats::default();
    for (state, new_machine, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        let new_machine = new_machine != 0;
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
        if new_machine {
            s.new_attempts += n;
            if matches!(state, GrantState::Failed | GrantState::TimedOut) {
                s.new_failed += n;
            }
        }
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
    // Machines new to the rollout (possibly invented ids) count `w` each, in the attempts that
    // must reach `min_attempts` and in the rate; with none, this is failures / attempts.
    let w = ah.new_weight();
    let (attempts, failed) = s.weighted(w);
    // A tolerance for the float sum (ten new machines at 0.1 are one attempt).
    let enough = attempts + 1e-9 >= f64::from(ah.min_attempts);
    let rate = if attempts > 0.0 {
        failed / attempts
    } else {
        0.0
    };
    if !enough || rate <= ah.max_failure_rate {
        return Ok(None);
    }
    let mut reason = format!(
        "{failures} of {} machines failed to update to {version} ({:.1}% > {:.1}%: {} errors, {} timeouts)",
        s.attempts,
        rate * 100.0,
        ah.max_failure_rate * 100.0,
        s.failed,
        s.timed_out
    );
    if s.new_attempts > 0 {
        reason.push_str(&format!(
            "; {} of the failed and {} of the attempting machines are new to the rollout and \
             count {w} each",
            s.new_failed, s.new_attempts
        ));
    }
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
    let new_machine = is_new_machine(tx, r).await?;
    if let Some(rl) = rate {
        let since = r
            .now
            .saturating_sub(i64::try_from(rl.period_secs).unwrap_or(i64::MAX));
        // Machines granted in the window, this one aside: a re-grant reopens the machine's row
        // (moving its grant time to now), so it never adds a second one.
        let n = count(
            tx,
            "SELECT COUNT(*) FROM rollout_grants WHERE group_id = ? \
             AND NOT (machine_id = ? AND app_id = ? AND version = ?) \
             AND state <> 'deferred' AND granted_at > ?",
            &[&r.group_id, &r.machine_id, &r.app_id, &r.version],
            Some(since),
        )
        .await?;
        if n >= u64::from(rl.count) {
            return Ok(held(HoldReason::Rate));
        }
    }
    // New machines (possibly invented ids) take the group's scarce slots at a bounded rate per
    // source network, whatever group or application they were granted in: the network's new
    // machines may hold at most `count` grants that are in flight or were made in the window
    // (so they cannot pile up slot after slot over several windows either). Established
    // machines and named canaries are never held by this.
    if let Some(nl) = r.new_machine_limit
        && new_machine
        && !r.canary
        && (conc.is_some() || rate.is_some())
    {
        let since = r
            .now
            .saturating_sub(i64::try_from(nl.period_secs).unwrap_or(i64::MAX));
        let n = count(
            tx,
            "SELECT COUNT(*) FROM rollout_grants WHERE network = ? AND new_machine = 1 \
             AND NOT (machine_id = ? AND app_id = ? AND group_id = ? AND version = ?) \
             AND state <> 'deferred' AND (state = 'in_flight' OR granted_at > ?)",
            &[
                &r.network,
                &r.machine_id,
                &r.app_id,
                &r.group_id,
                &r.version,
            ],
            Some(since),
        )
        .await?;
        if n >= u64::from(nl.count) {
            return Ok(held(HoldReason::NewMachineRate));
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
    // One grant per machine, group and version: a machine granted this version before (it
    // failed, timed out, deferred, completed or was superseded) gets that grant reopened, so
    // every count stays a count of machines.
    // A reopened grant keeps whether its machine was new to the rollout when first granted.
    sqlx::query(
        "INSERT INTO rollout_grants (group_id, app_id, machine_id, version, state, canary, \
         granted_at, progress_at, network, new_machine) \
         VALUES (?, ?, ?, ?, 'in_flight', ?, ?, ?, ?, ?) \
         ON CONFLICT (machine_id, app_id, group_id, version) DO UPDATE SET state = 'in_flight', \
         canary = excluded.canary, granted_at = excluded.granted_at, \
         progress_at = excluded.progress_at, settled_at = NULL, network = excluded.network",
    )
    .bind(&r.group_id)
    .bind(&r.app_id)
    .bind(&r.machine_id)
    .bind(&r.version)
    .bind(i64::from(r.canary))
    .bind(r.now)
    .bind(r.now)
    .bind(&r.network)
    .bind(i64::from(new_machine))
    .execute(&mut **tx)
    .await
    .map_err(db("grant rollout"))?;
    // The first grant of the version in the group starts its rollout.
    sqlx::query(
        "INSERT INTO rollout_starts (group_id, version, started_at) VALUES (?, ?, ?) \
         ON CONFLICT (group_id, version) DO NOTHING",
    )
    .bind(&r.group_id)
    .bind(&r.version)
    .bind(r.now)
    .execute(&mut **tx)
    .await
    .map_err(db("record rollout start"))?;
    Ok(GrantOutcome::Granted)
}

/// Whether the machine of `r` is new to the rollout of its version in its group: the server
/// first saw it (the earlier of this process's and the stored instance's first contact) at or
/// after the rollout's first grant, or this grant is the first. A machine granted the version
/// before keeps what its grant recorded then.
async fn is_new_machine(tx: &mut Tx, r: &GrantRequest) -> Result<bool, StoreError> {
    let recorded: Option<i64> = sqlx::query_scalar(
        "SELECT new_machine FROM rollout_grants WHERE machine_id = ? AND app_id = ? \
         AND group_id = ? AND version = ?",
    )
    .bind(&r.machine_id)
    .bind(&r.app_id)
    .bind(&r.group_id)
    .bind(&r.version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read rollout grant"))?;
    if let Some(n) = recorded {
        return Ok(n != 0);
    }
    let started: Option<i64> = sqlx::query_scalar(
        "SELECT started_at FROM rollout_starts WHERE group_id = ? AND version = ?",
    )
    .bind(&r.group_id)
    .bind(&r.version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read rollout start"))?;
    let stored: Option<i64> =
        sqlx::query_scalar("SELECT created_at FROM instances WHERE machine_id = ? AND app_id = ?")
            .bind(&r.machine_id)
            .bind(&r.app_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("read instance first contact"))?;
    let first_seen = stored.map_or(r.first_seen, |s| s.min(r.first_seen));
    Ok(first_seen >= started.unwrap_or(r.now))
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

/// The grants one settling statement changed: (group, version) of each.
type Settled = Vec<(String, String)>;

/// Runs an `UPDATE … RETURNING group_id, version` that settles grants of `p`'s machine: binds
/// `p.now`, the machine and the application, then `extra`.
async fn settle(
    tx: &mut Tx,
    sql: &'static str,
    p: &ProgressReport,
    extra: &[Option<&str>],
) -> Result<Settled, StoreError> {
    let mut q = sqlx::query_as::<_, (String, String)>(sql)
        .bind(p.now)
        .bind(&p.machine_id)
        .bind(&p.app_id);
    for b in extra {
        q = q.bind(*b);
    }
    q.fetch_all(&mut **tx)
        .await
        .map_err(db("settle rollout grant"))
}

async fn progress_tx(tx: &mut Tx, p: &ProgressReport) -> Result<Vec<HaltedRollout>, StoreError> {
    let mut failed = Settled::new();
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
        // Whatever state its grant reached: a rollback reported after the grant completed
        // (the machine ran the version, then fell back) is a failure of that version too.
        failed = settle(
            tx,
            "UPDATE rollout_grants SET state = 'failed', settled_at = ? WHERE machine_id = ? \
             AND app_id = ? AND version = ? AND state <> 'failed' RETURNING group_id, version",
            p,
            &[Some(&r.version)],
        )
        .await?;
    }
    let (sql, extra): (&'static str, &[Option<&str>]) = match p.state {
        None | Some(GrantState::InFlight) => (
            "UPDATE rollout_grants SET progress_at = ? WHERE machine_id = ? AND app_id = ? \
             AND state = 'in_flight' RETURNING group_id, version",
            &[],
        ),
        Some(GrantState::Installed) => (
            "UPDATE rollout_grants SET state = 'installed', progress_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state = 'in_flight' \
             RETURNING group_id, version",
            &[],
        ),
        // The open grant completes; so does a failed or timed-out grant of the version the
        // machine now runs (a slow machine got there after its timeout), unless it refused it.
        Some(GrantState::Complete) => (
            "UPDATE rollout_grants SET state = 'complete', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND (state IN ('in_flight', 'installed') \
             OR (version = ? AND state IN ('failed', 'timed_out') AND version NOT IN \
             (SELECT version FROM refused_versions WHERE machine_id = rollout_grants.machine_id \
             AND app_id = rollout_grants.app_id))) RETURNING group_id, version",
            &[Some(&p.running_version)],
        ),
        Some(GrantState::Failed | GrantState::TimedOut) => (
            "UPDATE rollout_grants SET state = 'failed', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state IN ('in_flight', 'installed') \
             RETURNING group_id, version",
            &[],
        ),
        // Put off before it was installed: the slot is free, nothing failed.
        Some(GrantState::Deferred) => (
            "UPDATE rollout_grants SET state = 'deferred', settled_at = ? \
             WHERE machine_id = ? AND app_id = ? AND state = 'in_flight' \
             RETURNING group_id, version",
            &[],
        ),
        // Only a newer grant supersedes (in the grant transaction); no event reports it.
        Some(GrantState::Superseded) => return Ok(Vec::new()),
    };
    let changed = settle(tx, sql, p, extra).await?;
    if matches!(p.state, Some(GrantState::Failed | GrantState::TimedOut)) {
        failed.extend(changed);
    }
    failed.sort();
    failed.dedup();
    let mut halts = Vec::new();
    for (group_id, version) in failed {
        let Some((app, policy, spec)) = load_policy(tx, &group_id).await? else {
            continue;
        };
        expire(tx, &group_id, &spec, p.now).await?;
        if let Some(reason) =
            halt_if_needed(tx, &group_id, &app, &version, policy, spec, p.now).await?
        {
            halts.push(HaltedRollout {
                group_id,
                version,
                reason,
            });
        }
    }
    Ok(halts)
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
            let mut tx = self.begin_immediate("grant update").await?;
            let out = try_grant_tx(&mut tx, req).await?;
            tx.commit().await.map_err(db("grant update"))?;
            Ok(out)
        })
    }

    fn record_progress<'a>(
        &'a self,
        report: &'a ProgressReport,
    ) -> StoreFuture<'a, Vec<HaltedRollout>> {
        Box::pin(async move {
            let mut tx = self.begin_immediate("settle rollout grant").await?;
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
            let mut tx = self.begin_immediate("rollout stats").await?;
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
                let holder: Option<String> = sqlx::query_scalar(
                    "SELECT machine_id FROM machine_aliases WHERE alias = ? AND machine_id <> ?",
                )
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
                sqlx::query(
                    "INSERT INTO machine_aliases (machine_id, alias, set_at) VALUES (?, ?, ?) \
                     ON CONFLICT (machine_id) DO UPDATE SET alias = excluded.alias, \
                     set_at = excluded.set_at",
                )
                .bind(machine_id)
                .bind(alias)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db("set machine alias"))?;
            } else {
                sqlx::query("DELETE FROM machine_aliases WHERE machine_id = ?")
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
    use serde_json::json;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;

    const APP: &str = "app";
    const GROUP: &str = "g";

    /// A store with one app and group `g` whose policy is `policy`.
    async fn store(policy: &str) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        sqlx::query("INSERT INTO apps (id, name, created_at) VALUES (?, 'OS', 0)")
            .bind(APP)
            .execute(&s.pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO groups_ (id, app_id, name, track, policy, created_at) \
             VALUES (?, ?, 'stable', 'stable', ?, 0)",
        )
        .bind(GROUP)
        .bind(APP)
        .bind(policy)
        .execute(&s.pool)
        .await
        .unwrap();
        (dir, s)
    }

    async fn grant(s: &SqliteStore, machine: &str, version: &str, now: i64) -> GrantOutcome {
        s.try_grant(&GrantRequest {
            group_id: GROUP.into(),
            app_id: APP.into(),
            machine_id: machine.into(),
            version: version.into(),
            canary: false,
            // Known long before any rollout: established.
            first_seen: -1_000_000,
            network: "192.0.2.0/24".into(),
            new_machine_limit: None,
            now,
        })
        .await
        .unwrap()
    }

    async fn report(
        s: &SqliteStore,
        machine: &str,
        state: GrantState,
        running: &str,
        refuse: Option<(&str, RefusalReason)>,
        now: i64,
    ) -> Vec<HaltedRollout> {
        s.record_progress(&ProgressReport {
            machine_id: machine.into(),
            app_id: APP.into(),
            state: Some(state),
            running_version: running.into(),
            refuse: refuse.map(|(version, reason)| RefusedVersion {
                machine_id: machine.into(),
                app_id: APP.into(),
                version: version.into(),
                reason,
                error_code: None,
                at: now,
            }),
            now,
        })
        .await
        .unwrap()
    }

    async fn stats(s: &SqliteStore, version: &str) -> GrantStats {
        s.grant_stats(GROUP, version, 1_000_000).await.unwrap()
    }

    #[tokio::test]
    async fn a_machine_failing_a_version_again_and_again_is_one_attempt_and_one_failure() {
        let (_d, s) = store(r#"{"auto_halt": {"max_failure_rate": 0.5, "min_attempts": 3}}"#).await;
        for t in 0..5 {
            assert_eq!(grant(&s, "m", "2.0.0", t * 10).await, GrantOutcome::Granted);
            let halts = report(&s, "m", GrantState::Failed, "1.0.0", None, t * 10 + 1).await;
            assert!(halts.is_empty(), "one machine never reaches min_attempts 3");
        }
        let st = stats(&s, "2.0.0").await;
        assert_eq!((st.attempts, st.failed, st.in_flight), (1, 1, 0), "{st:?}");
        // Granted again, it holds one slot; then it succeeds: complete, no longer failed.
        assert_eq!(grant(&s, "m", "2.0.0", 100).await, GrantOutcome::Granted);
        let st = stats(&s, "2.0.0").await;
        assert_eq!((st.attempts, st.failed, st.in_flight), (1, 0, 1), "{st:?}");
        report(&s, "m", GrantState::Installed, "1.0.0", None, 101).await;
        report(&s, "m", GrantState::Complete, "2.0.0", None, 102).await;
        let st = stats(&s, "2.0.0").await;
        assert_eq!((st.attempts, st.failed, st.complete), (1, 0, 1), "{st:?}");
    }

    #[tokio::test]
    async fn a_rollback_fails_a_completed_grant_and_can_halt() {
        let (_d, s) = store(r#"{"auto_halt": {"max_failure_rate": 0.4, "min_attempts": 2}}"#).await;
        for m in ["a", "b"] {
            assert_eq!(grant(&s, m, "2.0.0", 1).await, GrantOutcome::Granted);
            report(&s, m, GrantState::Installed, "1.0.0", None, 2).await;
            report(&s, m, GrantState::Complete, "2.0.0", None, 3).await;
        }
        assert_eq!(stats(&s, "2.0.0").await.complete, 2);
        let rb = Some(("2.0.0", RefusalReason::RolledBack));
        let halts = report(&s, "a", GrantState::Failed, "1.0.0", rb, 4).await;
        let st = stats(&s, "2.0.0").await;
        assert_eq!((st.complete, st.failed, st.attempts), (1, 1, 2), "{st:?}");
        assert_eq!(halts.len(), 1, "1 of 2 failed (50 % > 40 %)");
        assert_eq!(
            (halts[0].group_id.as_str(), halts[0].version.as_str()),
            (GROUP, "2.0.0")
        );
        assert!(
            halts[0].reason.starts_with("1 of 2 machines"),
            "{}",
            halts[0].reason
        );
        // A late 3/2 of the refused version does not turn the failure back into a completion.
        report(&s, "a", GrantState::Complete, "2.0.0", None, 5).await;
        assert_eq!(stats(&s, "2.0.0").await.failed, 1);
    }

    /// A grant of a machine the server first saw at `first_seen`.
    async fn grant_seen(s: &SqliteStore, machine: &str, first_seen: i64, now: i64) -> GrantOutcome {
        s.try_grant(&GrantRequest {
            group_id: GROUP.into(),
            app_id: APP.into(),
            machine_id: machine.into(),
            version: "2.0.0".into(),
            canary: false,
            first_seen,
            network: "192.0.2.0/24".into(),
            new_machine_limit: None,
            now,
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn machines_new_to_the_rollout_weigh_new_machine_weight_for_auto_halt() {
        // Counted as established (weight 1), the fourth invented failure halts: 4 of 5.
        for (weight, halts_at) in [(None, None), (Some(1.0), Some(3))] {
            let policy = json!({"auto_halt": {"max_failure_rate": 0.2, "min_attempts": 5,
                "new_machine_weight": weight}});
            let (_d, s) = store(&policy.to_string()).await;
            // Known before the rollout; its grant at 100 starts the rollout.
            assert_eq!(grant_seen(&s, "est", 0, 100).await, GrantOutcome::Granted);
            let mut halted = None;
            for i in 0..5 {
                let m = format!("new-{i}");
                // First seen at 100 (the rollout's start): new, and stays new when reopened.
                assert_eq!(grant_seen(&s, &m, 100, 101).await, GrantOutcome::Granted);
                if !report(&s, &m, GrantState::Failed, "1.0.0", None, 102)
                    .await
                    .is_empty()
                {
                    halted = Some(i);
                    break;
                }
            }
            assert_eq!(halted, halts_at, "weight {weight:?}");
            if weight.is_some() {
                continue;
            }
            // 1 + 5 × 0.1 attempts, 5 × 0.1 failures: below min_attempts 5.
            let st = stats(&s, "2.0.0").await;
            assert_eq!((st.new_attempts, st.new_failed), (5, 5), "{st:?}");
            assert_eq!(st.weighted(0.1), (1.5, 0.5));
            // Re-granted later (its first contact now long past), it is still new here.
            assert_eq!(
                grant_seen(&s, "new-0", 100, 5000).await,
                GrantOutcome::Granted
            );
            assert_eq!(stats(&s, "2.0.0").await.new_attempts, 5);
        }
    }

    #[tokio::test]
    async fn a_timed_out_grant_completes_when_the_machine_gets_there() {
        let (_d, s) = store(r#"{"update_timeout_secs": 60}"#).await;
        assert_eq!(grant(&s, "slow", "2.0.0", 0).await, GrantOutcome::Granted);
        let st = s.grant_stats(GROUP, "2.0.0", 100).await.unwrap();
        assert_eq!(st.timed_out, 1, "{st:?}");
        report(&s, "slow", GrantState::Installed, "1.0.0", None, 110).await;
        report(&s, "slow", GrantState::Complete, "2.0.0", None, 120).await;
        let st = stats(&s, "2.0.0").await;
        assert_eq!(
            (st.timed_out, st.complete, st.attempts),
            (0, 1, 1),
            "{st:?}"
        );
    }

    #[tokio::test]
    async fn a_regrant_counts_once_against_the_rate_limit() {
        let (_d, s) = store(r#"{"rate_limit": {"count": 2, "period_secs": 3600}}"#).await;
        assert_eq!(grant(&s, "a", "2.0.0", 0).await, GrantOutcome::Granted);
        assert_eq!(grant(&s, "b", "2.0.0", 100).await, GrantOutcome::Granted);
        report(&s, "a", GrantState::Failed, "1.0.0", None, 150).await;
        // `a` is already one of the two machines of the window: its re-grant adds none...
        assert_eq!(grant(&s, "a", "2.0.0", 200).await, GrantOutcome::Granted);
        let st = stats(&s, "2.0.0").await;
        assert_eq!((st.attempts, st.in_flight), (2, 2), "{st:?}");
        // ...a third machine is still held...
        let is_rate = |o: &GrantOutcome| {
            matches!(
                o,
                GrantOutcome::Held {
                    reason: HoldReason::Rate,
                    ..
                }
            )
        };
        assert!(is_rate(&grant(&s, "c", "2.0.0", 300).await));
        // ...and the re-grant counts from its own time: at 3650 `a` (re-granted at 200) and `b`
        // (granted at 100) are both in the last hour; at 3710 only `a` is.
        assert!(is_rate(&grant(&s, "c", "2.0.0", 3650).await));
        assert_eq!(grant(&s, "c", "2.0.0", 3710).await, GrantOutcome::Granted);
    }

    #[tokio::test]
    async fn a_refusal_holds_the_version_for_that_machine_only() {
        let (_d, s) = store("{}").await;
        assert_eq!(grant(&s, "x", "2.0.0", 0).await, GrantOutcome::Granted);
        let deny = Some(("2.0.0", RefusalReason::DenyListed));
        report(&s, "x", GrantState::Failed, "1.0.0", deny, 1).await;
        let held = grant(&s, "x", "2.0.0", 2).await;
        assert!(
            matches!(
                held,
                GrantOutcome::Held {
                    reason: HoldReason::DenyListed,
                    ..
                }
            ),
            "{held:?}"
        );
        assert_eq!(grant(&s, "y", "2.0.0", 3).await, GrantOutcome::Granted);
        assert_eq!(grant(&s, "x", "2.1.0", 4).await, GrantOutcome::Granted);
        let refused = s.refused_versions("x", Some(APP)).await.unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].reason, RefusalReason::DenyListed);
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
