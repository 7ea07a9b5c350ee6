//! The stores on PostgreSQL ([`PgStore`]), for several server replicas on one database. Every
//! operation runs on a connection of one pool; write transactions are PostgreSQL's own (READ
//! COMMITTED), and what must be exact across replicas is serialised by row locks:
//!
//! - a grant attempt locks its group's row (`SELECT … FOR UPDATE` in
//!   [`crate::rollout::grants::GrantTx::group_policy`]), so grants of one group are decided one
//!   at a time while other groups go on in parallel; a grant report (event) locks the groups of
//!   the machine's grants (in id order) before it changes them, so a report and a grant of one
//!   group take their locks in the same order;
//! - the per-network limit on new machines takes a transaction advisory lock on the network
//!   (after the group's lock);
//! - the FleetLock semaphore takes a transaction advisory lock on the group (and one more for
//!   the first holder of a group nobody configured, which counts such groups);
//! - background jobs (retention) hold a session advisory lock ([`crate::store::RetentionStore::take_lease`]).
//!
//! The schema has its own migrations (`update-server/migrations/postgres/`), equal in effect to
//! SQLite's. Catalogue changes move the same generation counter and also notify channel
//! [`CATALOGUE_CHANNEL`], which every replica listens on.
//!
//! A transaction that needs a second group (a check that settles a grant in one group and is
//! granted in another, a grant superseding one in another group, a halt, whose policy write
//! also takes the catalogue generation's row) can form a rare cycle with another. PostgreSQL
//! breaks it by aborting one transaction (`40P01`); the [`Transactor`] runs a check's job again
//! (at most [`RETRIES`] times), and an admin call or a retention batch that loses fails and is
//! retried by its caller (the operator, the next pruning pass).
//!
//! Every connection starts with [`SESSION_SETTINGS`]: READ COMMITTED whatever the database's
//! default (the locks above rely on it), and timeouts that end the transactions and locks of a
//! replica whose host vanished.
//!
//! The check path's jobs are committed in groups, one lane per group ([`batch`]); a job run
//! directly through this store's own [`Transactor`] is one transaction (with deadlock retries).

#[path = "postgres_admin.rs"]
mod admin;
#[path = "postgres_batch.rs"]
pub mod batch;
#[path = "postgres_credential.rs"]
mod credential;
#[path = "postgres_deferred.rs"]
mod deferred;
#[path = "postgres_fleetlock.rs"]
mod fleetlock;
#[path = "postgres_retention.rs"]
mod retention;
#[path = "postgres_rollout.rs"]
mod rollout;

use std::any::Any;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::sqlx_shared::{self as shared, db, migrator};
use super::tx::{Transactor, TxJob, Urgency};
use super::{StoreError, StoreFuture};
use crate::model::NewActivity;

/// The notification channel a catalogue change is announced on (by the schema's trigger).
pub const CATALOGUE_CHANNEL: &str = "platte_catalogue";

/// Connections per server process by default: the check path's transactions, admin calls and
/// the background jobs share them (plus one for catalogue notifications and one per held lease).
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// Settings every connection starts with, whatever the database or role defaults to:
/// - READ COMMITTED: each statement sees what was committed before it, so a count taken after a
///   lock includes the transaction that held it (under REPEATABLE READ the snapshot would be
///   older than the lock, and limits would be exceeded);
/// - a transaction left open by a client that vanished (a replica's host lost mid-request)
///   is ended after 30 s, releasing the group locks it held;
/// - a lock wait longer than 20 s fails the request instead of holding its connection;
/// - dead peers are detected by TCP keepalives within about a minute (the session advisory lock
///   of a lost replica's retention pass is released with its session).
const SESSION_SETTINGS: [(&str, &str); 6] = [
    // A space in a startup option is escaped with a backslash.
    ("default_transaction_isolation", "read\\ committed"),
    ("idle_in_transaction_session_timeout", "30s"),
    ("lock_timeout", "20s"),
    ("tcp_keepalives_idle", "30"),
    ("tcp_keepalives_interval", "10"),
    ("tcp_keepalives_count", "3"),
];

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "grant_context",
        include_str!("../../migrations/postgres/0002_grant_context.sql"),
    ),
    (
        3,
        "package_format",
        include_str!("../../migrations/postgres/0003_package_format.sql"),
    ),
    (
        4,
        "version_samples",
        include_str!("../../migrations/postgres/0004_version_samples.sql"),
    ),
    (
        5,
        "group_counts_index",
        include_str!("../../migrations/postgres/0005_group_counts_index.sql"),
    ),
    (
        6,
        "flatcar_packages",
        include_str!("../../migrations/postgres/0006_flatcar_packages.sql"),
    ),
    (
        7,
        "sync_states",
        include_str!("../../migrations/postgres/0007_sync_states.sql"),
    ),
    (
        8,
        "package_deltas",
        include_str!("../../migrations/postgres/0008_package_deltas.sql"),
    ),
    (
        9,
        "shared_grant_lanes",
        include_str!("../../migrations/postgres/0009_shared_grant_lanes.sql"),
    ),
];

/// PostgreSQL-backed stores (every store trait, and the [`Transactor`] of the check path).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    leases: Arc<retention::Leases>,
    turns: Arc<GroupTurns>,
}

/// A write transaction on PostgreSQL: the domain code's operations
/// ([`crate::store::tx::StoreTx`]) run through it.
#[derive(Debug)]
pub struct PgTx {
    /// The transaction. A statement run on it directly must [`PgTx::flush`] first if the
    /// transaction may hold writes back (the check path's do: use [`PgTx::conn`]).
    pub(crate) tx: Transaction<'static, Postgres>,
    /// Writes held back, sent with the next statement or before the commit.
    deferred: deferred::Deferred,
    turns: Arc<GroupTurns>,
    /// This process's turn on the group being granted, held until the transaction ends.
    turn: Option<OwnedMutexGuard<()>>,
    /// The transaction may hold a group's row lock (it must not wait for a turn then).
    locked_groups: bool,
    /// A shared lane's transaction ([`batch`]): its tally shard. Its grant attempts lock their
    /// group shared, and it takes no group lock exclusively ([`PgTx::exclusive`]).
    shared_shard: Option<i32>,
}

/// Turns on each group's grant attempts within this process: a grant attempt waits for its
/// group's turn here before it queues on the group's row lock, so one connection per replica
/// waits on the lock, not every one (each commit would wake them all). A transaction that may
/// already hold a group's row lock (it settled or superseded grants, or stored a policy) goes to
/// the row lock directly: it never waits for a turn while holding a lock, so turns and row locks
/// cannot wait on each other in a cycle.
#[derive(Debug, Default)]
struct GroupTurns {
    groups: std::sync::Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// The longest wait for a group's turn. The waiting session is idle in its transaction
/// meanwhile, so this stays well below `idle_in_transaction_session_timeout` (30 s); past it the
/// attempt queues on the row lock without a turn (bounded by `lock_timeout`, 20 s), as it would
/// without turns.
const TURN_WAIT: Duration = Duration::from_secs(10);

impl GroupTurns {
    /// Waits for the group's turn (at most [`TURN_WAIT`]; `None` past it). (The map holds one
    /// entry per group ever granted in this process: groups are an operator's, few.)
    async fn take(&self, group_id: &str) -> Option<OwnedMutexGuard<()>> {
        let turn = {
            let mut groups = self
                .groups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(groups.entry(group_id.to_owned()).or_default())
        };
        tokio::time::timeout(TURN_WAIT, turn.lock_owned())
            .await
            .ok()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://…`) with [`DEFAULT_POOL_SIZE`]
    /// connections at most, and applies migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_sized(url, DEFAULT_POOL_SIZE).await
    }

    /// As [`PgStore::open`], with at most `pool_size` connections.
    pub async fn open_sized(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(db("parse the database URL"))?
            .options(SESSION_SETTINGS);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(db("connect"))?;
        migrator(MIGRATIONS).run(&pool).await?;
        Ok(Self {
            pool,
            leases: Default::default(),
            turns: Default::default(),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Listens for catalogue changes announced by any replica (on [`CATALOGUE_CHANNEL`]); the
    /// listener reconnects by itself after a lost connection.
    pub async fn catalogue_listener(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(db("listen for catalogue changes"))?;
        listener
            .listen(CATALOGUE_CHANNEL)
            .await
            .map_err(db("listen for catalogue changes"))?;
        Ok(listener)
    }

    /// Closes the pool (held leases end with their sessions).
    pub async fn close(&self) {
        self.leases.release_all().await;
        self.pool.close().await;
    }

    /// Begins a write transaction.
    pub(crate) async fn begin(&self, op: &'static str) -> Result<PgTx, StoreError> {
        Ok(PgTx {
            tx: self.pool.begin().await.map_err(db(op))?,
            deferred: Default::default(),
            turns: Arc::clone(&self.turns),
            turn: None,
            locked_groups: false,
            shared_shard: None,
        })
    }
}

impl PgTx {
    /// Before a grant attempt locks `group_id`'s row: waits for this process's turn on the
    /// group, unless the transaction may hold a group lock already ([`GroupTurns`]).
    pub(crate) async fn take_turn(&mut self, group_id: &str) {
        if !self.locked_groups && self.turn.is_none() {
            self.turn = self.turns.take(group_id).await;
        }
        self.locked_groups = true;
    }

    /// Makes this a shared lane's transaction with tally shard `shard` ([`batch`]).
    pub(crate) fn share_groups(&mut self, shard: i32) {
        self.shared_shard = Some(shard);
    }

    /// The tally shard of a shared lane's transaction (`None`: an exclusive one).
    pub(crate) fn shared_shard(&self) -> Option<i32> {
        self.shared_shard
    }

    /// Before a statement that locks group rows exclusively: refused in a shared lane's
    /// transaction. It may hold group locks shared, and two transactions waiting to make a
    /// shared lock exclusive would wait on each other; its jobs run again, each alone in an
    /// exclusive transaction.
    pub(crate) fn exclusive(&self) -> Result<(), StoreError> {
        match self.shared_shard {
            None => Ok(()),
            Some(_) => Err(needs_exclusive()),
        }
    }

    /// Notes that the transaction may now hold a group's row lock (exclusively: refused in a
    /// shared lane's transaction, [`PgTx::exclusive`]).
    pub(crate) fn locking_groups(&mut self) -> Result<(), StoreError> {
        self.exclusive()?;
        self.locked_groups = true;
        Ok(())
    }

    /// The grant attempt is decided (the grant written, or the check moved on to the instance's
    /// own writes): the next attempt of this process may queue on the group's row lock now, and
    /// is woken by PostgreSQL the moment this transaction commits.
    pub(crate) fn pass_turn(&mut self) {
        self.turn = None;
    }

    /// Sends the writes held back, then commits.
    pub(crate) async fn commit(mut self, op: &'static str) -> Result<(), StoreError> {
        self.flush().await?;
        self.tx.commit().await.map_err(db(op))
    }

    /// Sends the writes held back ([`deferred`]), if any.
    pub(crate) async fn flush(&mut self) -> Result<(), StoreError> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        self.deferred.send(&mut self.tx).await
    }

    /// The connection, the writes held back sent: for any statement but a held write.
    pub(crate) async fn conn(&mut self) -> Result<&mut sqlx::PgConnection, StoreError> {
        self.flush().await?;
        Ok(&mut *self.tx)
    }

    /// Holds a write back until the next statement or the commit.
    pub(crate) fn defer(&mut self, sql: &str) -> deferred::DeferredPart<'_> {
        self.deferred.push(sql)
    }
}

/// Appends `a` to the activity feed at `at` (an entry without a kind records nothing).
pub(crate) async fn add_activity(
    conn: &mut sqlx::PgConnection,
    a: &NewActivity,
    at: i64,
) -> Result<(), StoreError> {
    if a.kind.is_empty() {
        return Ok(());
    }
    shared::bind_activity(sqlx::query(shared::INSERT_ACTIVITY), a, at)
        .execute(conn)
        .await
        .map_err(db("insert activity"))?;
    Ok(())
}

/// The error a shared lane's job gets where it needs a group's lock exclusively (a policy that
/// counts, a settlement): the batch is rolled back and its jobs run again, each alone.
pub(crate) fn needs_exclusive() -> StoreError {
    StoreError::Internal(
        "a grant of a shared lane needs its group's lock exclusively; it runs again alone".into(),
    )
}

/// Runs of a job after the first, when PostgreSQL aborted its transaction to break a deadlock or
/// a serialisation conflict.
const RETRIES: u32 = 3;

/// Whether `e` is PostgreSQL aborting a transaction that can simply run again: a deadlock
/// (`40P01`, a rare cycle between two groups' locks) or a serialisation failure (`40001`).
pub(crate) fn retryable(e: &StoreError) -> bool {
    let StoreError::Database {
        source: sqlx::Error::Database(d),
        ..
    } = e
    else {
        return false;
    };
    matches!(d.code().as_deref(), Some("40P01" | "40001"))
}

impl Transactor for PgStore {
    fn run(&self, job: TxJob, _urgency: Urgency) -> StoreFuture<'_, Box<dyn Any + Send>> {
        Box::pin(async move {
            let mut retries = 0;
            loop {
                let mut tx = self.begin("begin a write").await?;
                let result = match job(&mut tx).await {
                    Ok(out) => tx.commit("commit a write").await.map(|()| out),
                    // Dropping the transaction rolls it back.
                    Err(e) => Err(e),
                };
                match result {
                    Err(e) if retries < RETRIES && retryable(&e) => {
                        retries += 1;
                        tracing::debug!(error = %e, retries, "write transaction aborted; running it again");
                    }
                    other => return other,
                }
            }
        })
    }
}
