//! [`RetentionStore`] on PostgreSQL. Every deleting call is one READ COMMITTED transaction that
//! deletes at most a batch of rows. PostgreSQL has no `DELETE … LIMIT`: an aged batch selects
//! the next `limit` matching rows after its cursor in (time, id) order (through the same
//! timestamp indexes as SQLite's), then deletes those ids under the same condition again, so a
//! row that changed meanwhile (a grant that moved on) is checked once more before it goes.
//!
//! Which grants a rollout still counts is computed by [`crate::retention::protection`] from the
//! groups, channels and packages read inside the deleting transaction.
//!
//! SQLite's write lock orders a batch with every other write. Here a batch takes the locks the
//! check path takes, in the same order (see `postgres_rollout.rs`), and then the catalogue's:
//!
//! 1. a forget batch locks the instance rows of its keys, in key order, as a batch of check-ins
//!    does: a machine checking in meanwhile waits, or its check-in is seen;
//! 2. a batch that deletes grants locks their groups' rows (in id order), as every write of a
//!    group's grants is made under its group's lock;
//! 3. then the row of `catalogue_generation` (`FOR SHARE`), which every catalogue change
//!    updates after its own rows (the schema's trigger): a change either committed before the
//!    batch reads what its protection is computed from (and is seen), or waits until the batch
//!    commits.
//!
//! A dry run only reads and takes no lock.
//!
//! Forgetting checks again, in the `DELETE` of the instance row, that the instance is still
//! stale and holds no grant in flight; with the row locked, no grant is put in flight for it
//! meanwhile (a grant attempt locks its instance row first).
//!
//! # Leases
//!
//! A lease is a session advisory lock, `pg_try_advisory_lock(LEASE_LOCKS, hashtext(name))`,
//! held on a pooled connection set apart for it in [`Leases`] for as long as the lease is held
//! (the `job_leases` table is not used). The session's `application_name` reads
//! `platte-lease <expires_at> <holder>` (cut to PostgreSQL's 63 bytes), so a replica that finds
//! the lock taken reports who holds it, from `pg_locks` and `pg_stat_activity` (or, for a
//! session without that label, its backend pid).
//!
//! - The holder renews its lease by relabelling the session, which also proves it alive; a
//!   session found dead (its lock went with it) is replaced by a new attempt at the lock.
//! - Within one process a lease expired at `now` passes to another holder, as on SQLite. Across
//!   replicas the lock does not expire: a replica keeps the lease while its session lives,
//!   however late it runs, and the others are told it is held.
//! - A replica that dies loses the lease when its session ends: at once when its connections
//!   close (the process exited), after the TCP keepalive gives up when its host vanished.
//! - Giving a lease back unlocks, clears the label and returns the connection to the pool. A
//!   connection whose unlock failed, or whose lease was dropped half-way (a cancelled call), is
//!   closed instead, so a lock never stays behind on a pooled connection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgPool};
use sqlx::{Arguments as _, Encode, Postgres, Transaction, Type};

use super::PgStore;
use crate::checkins::InstanceKey;
use crate::retention::protection::{self, Protection, RolloutFacts};
use crate::store::retention::{
    AgedTable, Batch, Cursor, Cutoffs, ForgetOutcome, LeaseOutcome, PruneCounts, RetentionStore,
    StaleInstance,
};
use crate::store::sqlx_rows::{rollout_facts_of, stale_instance_of};
use crate::store::sqlx_shared::{self as shared, aged_time_column, db, encode_error};
use crate::store::{StoreError, StoreFuture};

type Tx = Transaction<'static, Postgres>;

/// What the protection rule ([`protection::protections`]) is computed from, read in `tx`; with
/// `lock`, after taking the catalogue generation's row lock (step 3 of the module's
/// documentation).
async fn rollout_facts(tx: &mut Tx, lock: bool) -> Result<RolloutFacts, StoreError> {
    if lock {
        sqlx::query("SELECT generation FROM catalogue_generation WHERE id = 1 FOR SHARE")
            .execute(&mut **tx)
            .await
            .map_err(db("lock the catalogue"))?;
    }
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

/// The protection of every group, read in `tx` (locking the catalogue with `lock`).
async fn protections(
    tx: &mut Tx,
    now: i64,
    lock: bool,
) -> Result<HashMap<String, Protection>, StoreError> {
    Ok(protection::protections(
        &rollout_facts(tx, lock).await?,
        now,
    ))
}

/// A SQL condition with its bind values; each bound value appends its numbered placeholder.
#[derive(Debug, Default, Clone)]
struct Cond {
    sql: String,
    args: PgArguments,
}

impl Cond {
    fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    /// Binds `v` and appends its placeholder (`$n`).
    fn bind<T>(&mut self, v: T) -> Result<(), StoreError>
    where
        T: Encode<'static, Postgres> + Type<Postgres> + 'static,
    {
        self.args.add(v).map_err(encode_error(BIND_OP))?;
        self.args
            .format_placeholder(&mut self.sql)
            .map_err(|e| encode_error(BIND_OP)(Box::new(e)))
    }
}

/// The operation a value that could not be bound is reported in.
const BIND_OP: &str = "bind retention query";

/// Appends the condition under which a grant of group `group` may go when its machine is
/// forgotten: not in flight, outside the group's rate-limit window, of a version no rollout
/// counts. `false` when the group keeps every grant.
fn forgettable_grant(
    c: &mut Cond,
    group: &str,
    p: Option<&Protection>,
) -> Result<bool, StoreError> {
    if p.is_some_and(|p| p.keep_all) {
        return Ok(false);
    }
    c.push("group_id = ");
    c.bind(group.to_owned())?;
    c.push(" AND state <> 'in_flight'");
    if let Some(since) = p.and_then(|p| p.rate_since) {
        c.push(" AND granted_at <= ");
        c.bind(since)?;
    }
    if let Some(p) = p.filter(|p| !p.versions.is_empty()) {
        c.push(" AND version <> ALL(");
        c.bind(p.versions.clone())?;
        c.push(")");
    }
    Ok(true)
}

/// Appends what the grants retention adds to [`forgettable_grant`]: made and settled (or last
/// progressing) before the cutoff, and not `installed` by a machine the server still knows.
fn aged_grant(c: &mut Cond, cutoff: i64) -> Result<(), StoreError> {
    c.push("granted_at < ");
    c.bind(cutoff)?;
    c.push(" AND COALESCE(settled_at, progress_at) < ");
    c.bind(cutoff)?;
    c.push(" AND ");
    c.push(shared::NOT_INSTALLED_BY_A_KNOWN_MACHINE);
    Ok(())
}

/// Appends the condition selecting the rows of an aged table (other than grants) older than
/// `cutoff`.
fn aged_rows(c: &mut Cond, table: AgedTable, cutoff: i64) -> Result<(), StoreError> {
    c.push("at < ");
    c.bind(cutoff)?;
    if table == AgedTable::History {
        c.push(" AND ");
        c.push(shared::NOT_NEWEST_STATUS);
    }
    Ok(())
}

/// The condition of an aged pass over `table` (for grants: of `group`, protected by `prot`);
/// `None` when nothing of it may go.
fn aged_condition(
    table: AgedTable,
    group: Option<&str>,
    prot: &HashMap<String, Protection>,
    cutoffs: &Cutoffs,
) -> Result<Option<Cond>, StoreError> {
    let Some(cutoff) = cutoffs.of(table) else {
        return Ok(None);
    };
    let mut c = Cond::default();
    if table != AgedTable::Grants {
        aged_rows(&mut c, table, cutoff)?;
        return Ok(Some(c));
    }
    let Some(group) = group else {
        return Ok(None);
    };
    if !forgettable_grant(&mut c, group, prot.get(group))? {
        return Ok(None);
    }
    c.push(" AND ");
    aged_grant(&mut c, cutoff)?;
    Ok(Some(c))
}

/// Counts (with `dry_run`) or deletes the rows of `table` matching `c`.
async fn count_or_delete(
    tx: &mut Tx,
    table: &str,
    c: Cond,
    dry_run: bool,
) -> Result<u64, StoreError> {
    if dry_run {
        let n: i64 = sqlx::query_scalar_with(
            &format!("SELECT COUNT(*) FROM {table} WHERE {}", c.sql),
            c.args,
        )
        .fetch_one(&mut **tx)
        .await
        .map_err(db("count prunable rows"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    } else {
        let done = sqlx::query_with(&format!("DELETE FROM {table} WHERE {}", c.sql), c.args)
            .execute(&mut **tx)
            .await
            .map_err(db("prune rows"))?;
        Ok(done.rows_affected())
    }
}

/// The condition on one instance's rows (`machine_id`, `app_id`).
fn of_instance(key: &InstanceKey) -> Result<Cond, StoreError> {
    let mut c = Cond::default();
    c.push("machine_id = ");
    c.bind(key.0.clone())?;
    c.push(" AND app_id = ");
    c.bind(key.1.clone())?;
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
    let mut c = of_instance(key)?;
    c.push(" AND last_check_at < ");
    c.bind(forget)?;
    c.push(" AND ");
    c.push(shared::NO_GRANT_IN_FLIGHT);
    n.instances = count_or_delete(tx, "instances", c, dry_run).await?;
    if n.instances == 0 {
        return Ok(None);
    }
    // Rows of the instance; a dry run leaves out what the aged passes (which run first) delete.
    for (table, field) in [
        (AgedTable::History, &mut n.instance_status_history),
        (AgedTable::Events, &mut n.events),
    ] {
        let mut c = of_instance(key)?;
        c.push(" AND at < ");
        c.bind(forget)?;
        if dry_run && let Some(cut) = cutoffs.of(table) {
            c.push(" AND NOT (");
            aged_rows(&mut c, table, cut)?;
            c.push(")");
        }
        *field = count_or_delete(tx, table.table(), c, dry_run).await?;
    }
    let mut c = of_instance(key)?;
    c.push(" AND at < ");
    c.bind(forget)?;
    n.refused_versions = count_or_delete(tx, "refused_versions", c, dry_run).await?;
    let groups: Vec<String> = sqlx::query_scalar(shared::SELECT_GRANT_GROUPS_OF_INSTANCE)
        .bind(&key.0)
        .bind(&key.1)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read grants of a forgotten instance"))?;
    for group in groups {
        let mut c = of_instance(key)?;
        c.push(" AND ");
        if !forgettable_grant(&mut c, &group, prot.get(&group))? {
            continue;
        }
        if dry_run && let Some(cut) = cutoffs.grants {
            c.push(" AND NOT (");
            aged_grant(&mut c, cut)?;
            c.push(")");
        }
        n.rollout_grants += count_or_delete(tx, "rollout_grants", c, dry_run).await?;
    }
    Ok(Some(n))
}

/// Locks the rows of group `group` (step 2 of the module's documentation); a deleted group
/// has none.
async fn lock_group(tx: &mut Tx, group: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT id FROM groups_ WHERE id = $1 FOR UPDATE")
        .bind(group)
        .execute(&mut **tx)
        .await
        .map_err(db("lock a group"))?;
    Ok(())
}

/// Locks the instance rows of `keys` in key order, then the groups of their grants in id order
/// (steps 1 and 2 of the module's documentation).
async fn lock_for_forgetting(tx: &mut Tx, keys: &[InstanceKey]) -> Result<(), StoreError> {
    let machines: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let apps: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    sqlx::query(
        "SELECT 1 FROM instances i \
         JOIN UNNEST($1::TEXT[], $2::TEXT[]) AS k (machine_id, app_id) \
         ON i.machine_id = k.machine_id AND i.app_id = k.app_id \
         ORDER BY i.machine_id COLLATE \"C\", i.app_id COLLATE \"C\" FOR UPDATE OF i",
    )
    .bind(&machines)
    .bind(&apps)
    .execute(&mut **tx)
    .await
    .map_err(db("lock instances to forget"))?;
    sqlx::query(
        "SELECT id FROM groups_ WHERE id IN (SELECT g.group_id FROM rollout_grants g \
         JOIN UNNEST($1::TEXT[], $2::TEXT[]) AS k (machine_id, app_id) \
         ON g.machine_id = k.machine_id AND g.app_id = k.app_id) ORDER BY id FOR UPDATE",
    )
    .bind(&machines)
    .bind(&apps)
    .execute(&mut **tx)
    .await
    .map_err(db("lock the groups of instances to forget"))?;
    Ok(())
}

impl PgStore {
    /// A transaction for one prune call.
    async fn begin_prune(&self, dry_run: bool) -> Result<Tx, StoreError> {
        let op = if dry_run {
            "count prunable rows"
        } else {
            "prune rows"
        };
        self.pool.begin().await.map_err(db(op))
    }
}

impl RetentionStore for PgStore {
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
                if !dry_run && let Some(group) = group {
                    lock_group(&mut tx, group).await?;
                }
                protections(&mut tx, cutoffs.now, !dry_run).await?
            } else {
                HashMap::new()
            };
            let Some(cond) = aged_condition(table, group, &prot, cutoffs)? else {
                tx.commit().await.map_err(db("prune rows"))?;
                return Ok(Batch::default());
            };
            let (name, time) = (table.table(), aged_time_column(table));
            if dry_run {
                let rows = count_or_delete(&mut tx, name, cond, true).await?;
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
            let mut sel = cond.clone();
            sel.push(&format!(" AND ({time}, id) > ("));
            sel.bind(from.at)?;
            sel.push(", ");
            sel.bind(from.id)?;
            sel.push(&format!(") ORDER BY {time}, id LIMIT "));
            sel.bind(i64::from(limit))?;
            let found: Vec<(i64, i64)> = sqlx::query_as_with(
                &format!("SELECT {time}, id FROM {name} WHERE {}", sel.sql),
                sel.args,
            )
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
            let mut del = cond;
            del.push(" AND id = ANY(");
            del.bind(found.iter().map(|&(_, id)| id).collect::<Vec<i64>>())?;
            del.push(")");
            let rows = count_or_delete(&mut tx, name, del, false).await?;
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
            if !dry_run {
                lock_for_forgetting(&mut tx, keys).await?;
            }
            let prot = protections(&mut tx, cutoffs.now, !dry_run).await?;
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
        Box::pin(self.leases.take(&self.pool, name, holder, now, expires_at))
    }

    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.leases.release(name, holder).await;
            Ok(())
        })
    }
}

/// The first key of every lease's advisory lock (the second is `hashtext` of its name): ASCII
/// `PLLE`, apart from the other advisory locks of the schema. Two names whose hashes collide
/// would exclude each other, which only delays a job.
const LEASE_LOCKS: i32 = 0x504C_4C45;

/// What the `application_name` of a lease's session starts with.
const LABEL: &str = "platte-lease";

/// The leases this process holds, by name: each a session advisory lock on a pooled
/// connection of its own (see the module's documentation).
#[derive(Debug, Default)]
pub(super) struct Leases {
    held: tokio::sync::Mutex<HashMap<String, Lease>>,
}

/// One lease held by this process.
#[derive(Debug)]
struct Lease {
    /// Who holds it.
    holder: String,
    /// Until when (Unix seconds), unless renewed; only other holders of this process heed it.
    expires_at: i64,
    /// The session holding the lock.
    session: LockSession,
}

impl Leases {
    /// Takes lease `name` for `holder` (see [`RetentionStore::take_lease`]).
    async fn take(
        &self,
        pool: &PgPool,
        name: &str,
        holder: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<LeaseOutcome, StoreError> {
        let mut held = self.held.lock().await;
        if let Some(lease) = held.get_mut(name) {
            if lease.holder != holder && lease.expires_at >= now {
                return Ok(LeaseOutcome::Held {
                    holder: lease.holder.clone(),
                    expires_at: lease.expires_at,
                });
            }
            // Renewed, or expired and passed on: the session keeps the lock while it lives.
            if lease.session.label(holder, expires_at).await.is_ok() {
                lease.holder = holder.to_owned();
                lease.expires_at = expires_at;
                return Ok(LeaseOutcome::Taken);
            }
            // The session is gone, and its lock with it (dropping it closes the connection).
            held.remove(name);
        }
        let mut session = LockSession::open(pool).await?;
        if !session.try_lock(name).await? {
            return session.holder_elsewhere(name, now).await;
        }
        session.label(holder, expires_at).await?;
        held.insert(
            name.to_owned(),
            Lease {
                holder: holder.to_owned(),
                expires_at,
                session,
            },
        );
        Ok(LeaseOutcome::Taken)
    }

    /// Gives lease `name` up if `holder` has it.
    async fn release(&self, name: &str, holder: &str) {
        let mut held = self.held.lock().await;
        if held.get(name).is_some_and(|l| l.holder == holder)
            && let Some(lease) = held.remove(name)
        {
            lease.session.release(name).await;
        }
    }

    /// Unlocks every lease held (when the store closes).
    pub(super) async fn release_all(&self) {
        let mut held = self.held.lock().await;
        for (name, lease) in held.drain() {
            lease.session.release(&name).await;
        }
    }
}

/// A pooled connection set apart for one lease's lock. Dropped while it may hold the lock, it
/// is closed (its session ends, and the lock with it) instead of going back to the pool.
#[derive(Debug)]
struct LockSession {
    conn: PoolConnection<Postgres>,
    /// The session holds no lock and no label: it may go back to the pool.
    clean: bool,
}

impl Drop for LockSession {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

impl LockSession {
    async fn open(pool: &PgPool) -> Result<Self, StoreError> {
        Ok(Self {
            conn: pool.acquire().await.map_err(db("take a job lease"))?,
            clean: false,
        })
    }

    /// Tries to take the lock of lease `name`; `false` when another session has it.
    async fn try_lock(&mut self, name: &str) -> Result<bool, StoreError> {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LEASE_LOCKS)
            .bind(name)
            .fetch_one(&mut *self.conn)
            .await
            .map_err(db("take a job lease"))?;
        self.clean = !taken;
        Ok(taken)
    }

    /// Labels the session with who holds the lease until when; fails when the session is gone.
    async fn label(&mut self, holder: &str, expires_at: i64) -> Result<(), StoreError> {
        self.clean = false;
        sqlx::query("SELECT set_config('application_name', $1, false)")
            .bind(format!("{LABEL} {expires_at} {holder}"))
            .execute(&mut *self.conn)
            .await
            .map_err(db("label a job lease"))?;
        Ok(())
    }

    /// Who holds lease `name` in another session: its label, or its backend pid when it has
    /// none (then, as when the lock was given up meanwhile, the lease is reported as ending at
    /// `now`).
    async fn holder_elsewhere(&mut self, name: &str, now: i64) -> Result<LeaseOutcome, StoreError> {
        let row: Option<(i32, Option<String>)> = sqlx::query_as(
            "SELECT l.pid, a.application_name FROM pg_locks l \
             LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND l.classid = $1::oid AND l.objid = hashtext($2)::oid LIMIT 1",
        )
        .bind(LEASE_LOCKS)
        .bind(name)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(db("read a job lease"))?;
        let (holder, expires_at) = match row {
            Some((pid, label)) => label
                .as_deref()
                .and_then(parse_label)
                .unwrap_or_else(|| (format!("PostgreSQL backend {pid}"), now)),
            None => ("another server process".to_owned(), now),
        };
        Ok(LeaseOutcome::Held { holder, expires_at })
    }

    /// Unlocks lease `name`, clears the label and returns the connection to the pool; closes
    /// it instead when that fails (the lock ends with the session).
    async fn release(mut self, name: &str) {
        let unlocked: Result<bool, sqlx::Error> = async {
            let unlocked = sqlx::query_scalar("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(LEASE_LOCKS)
                .bind(name)
                .fetch_one(&mut *self.conn)
                .await?;
            sqlx::query("RESET application_name")
                .execute(&mut *self.conn)
                .await?;
            Ok(unlocked)
        }
        .await;
        match unlocked {
            Ok(true) => self.clean = true,
            Ok(false) => {
                // Nothing to unlock (and nothing stays behind): odd, but the connection is clean.
                tracing::warn!(lease = name, "a job lease was not locked by its session");
                self.clean = true;
            }
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "unlocking a job lease failed; its connection is closed");
            }
        }
    }
}

/// The holder and expiry of a session's lease label.
fn parse_label(label: &str) -> Option<(String, i64)> {
    let rest = label.strip_prefix(LABEL)?.strip_prefix(' ')?;
    let (expires_at, holder) = rest.split_once(' ')?;
    Some((holder.to_owned(), expires_at.parse().ok()?))
}
