//! Direct SQLite connections (rusqlite) for the check path: the instance row read on every
//! update check, and the write transactions of grants, events and check-ins ([`DirectTx`], run
//! by the group-commit writer thread). sqlx's SQLite driver hands every statement to a worker
//! thread and back; a grant is about fifteen statements and a release day brings thousands of
//! them a second, so those hand-offs were a third of the server's CPU. Here a statement runs on
//! the calling thread, from a cache of prepared statements.
//!
//! Both drivers open the same file with the same settings (WAL, `synchronous=FULL`, foreign
//! keys, a busy timeout) and link the same SQLite library. The schema and its migrations stay
//! with sqlx ([`super::SqliteStore::open`]), as do the admin operations, which are few.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row};

use crate::model::Instance;
use crate::store::StoreError;

/// How long a statement waits for another connection's write lock (as the sqlx pool does).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Prepared statements kept per connection (the check path uses a few dozen).
const STATEMENT_CACHE: usize = 128;
/// Idle connections kept by a [`DirectPool`].
const POOL_IDLE: usize = 8;

/// A write transaction (or a savepoint in one) on a direct connection: the domain code's
/// operations ([`crate::store::tx::StoreTx`]) run through it. Each operation completes before it
/// returns; its future is always ready.
#[derive(Debug)]
pub struct DirectTx<'c> {
    pub(crate) conn: &'c mut Connection,
}

impl<'c> DirectTx<'c> {
    /// Wraps a connection that is inside a transaction.
    pub fn new(conn: &'c mut Connection) -> Self {
        Self { conn }
    }
}

/// Maps a rusqlite error of operation `op` to a [`StoreError`], telling constraint violations
/// (a conflict the caller can report) from failures.
pub(crate) fn lite(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| {
        use rusqlite::ffi;
        if let rusqlite::Error::SqliteFailure(e, _) = &source {
            match e.extended_code {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    return StoreError::Conflict(format!("{op}: already exists"));
                }
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                    return StoreError::Conflict(format!(
                        "{op}: still referenced or refers to a missing object"
                    ));
                }
                _ => {}
            }
        }
        StoreError::Sqlite { op, source }
    }
}

/// Runs a statement that returns no rows (operation `op`), prepared once per connection.
pub(crate) fn execute(
    conn: &Connection,
    op: &'static str,
    sql: &'static str,
    params: impl rusqlite::Params,
) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute(params))
        .map_err(lite(op))?;
    Ok(())
}

/// Column `i` (named `column` in errors) of `row` in `table`; a value of the wrong type is a
/// [`StoreError::Corrupt`].
pub(crate) fn col<T: rusqlite::types::FromSql>(
    row: &Row<'_>,
    i: usize,
    table: &'static str,
    column: &'static str,
) -> Result<T, StoreError> {
    row.get(i).map_err(|e| StoreError::Corrupt {
        table,
        column,
        detail: e.to_string(),
    })
}

/// Opens a direct connection to the database at `path` (which [`super::SqliteStore::open`] has
/// created and migrated).
pub(crate) fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(lite("open a direct connection"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(lite("set the busy timeout"))?;
    // Temporary storage (statement journals of savepoints, sorts) in memory: a savepoint's
    // journal would otherwise spill to a temporary file past 64 KiB, one write call per page.
    conn.execute_batch(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY;",
    )
    .map_err(lite("set connection pragmas"))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Direct connections for reads on the calling thread, and for the occasional write
/// transaction outside the writer (run on a blocking thread, since it may wait for the lock).
#[derive(Debug)]
pub struct DirectPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl DirectPool {
    /// A pool of connections to the database at `path`, opened as they are needed.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on an idle connection (opening one if none is idle), then keeps the connection
    /// for the next caller unless it is still inside a transaction or enough are idle. Reads
    /// run on the caller's thread: in WAL mode a reader does not wait for the writer, and a
    /// primary-key read from the page cache takes microseconds.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match taken {
            Some(c) => c,
            None => open(&self.path)?,
        };
        let out = f(&mut conn);
        // A connection left inside a transaction (a failure mid-way) is not reused.
        if conn.is_autocommit() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < POOL_IDLE {
                idle.push(conn);
            }
        }
        out
    }

    /// Closes the idle connections (the last connection to close checkpoints the log).
    pub fn close(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on a blocking thread and commits it; rolls
    /// back when `f` fails.
    pub async fn write<T, F>(
        self: &std::sync::Arc<Self>,
        op: &'static str,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DirectTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            pool.with(|conn| {
                conn.execute_batch("BEGIN IMMEDIATE").map_err(lite(op))?;
                let out = f(&mut DirectTx::new(conn));
                match out {
                    Ok(v) => {
                        conn.execute_batch("COMMIT").map_err(lite(op))?;
                        Ok(v)
                    }
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        Err(e)
                    }
                }
            })
        })
        .await
        .map_err(|e| StoreError::Internal(format!("{op}: the database thread failed: {e}")))?
    }
}

/// The output of `fut`, which must complete without waiting: a job over a [`DirectTx`] awaits
/// only its operations, whose futures are ready. A job that waits on anything else is a bug;
/// it fails instead of blocking the writer.
pub(crate) fn complete<F: Future>(fut: F) -> Result<F::Output, StoreError> {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => Err(StoreError::Internal(
            "a database job waited on something other than the database".into(),
        )),
    }
}

/// One instance row, read on `conn`.
pub(crate) fn read_instance(
    conn: &Connection,
    machine_id: &str,
    app_id: &str,
) -> Result<Option<Instance>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT machine_id, app_id, alias, ip, version, group_id, track, oem, oem_version, \
             board, boot_id, last_check_at, granted_version, granted_at, status, status_detail, \
             error_code, status_at, created_at, served_payload FROM instances \
             WHERE machine_id = ?1 AND app_id = ?2",
        )
        .map_err(lite("read instance"))?;
    let mut rows = stmt
        .query((machine_id, app_id))
        .map_err(lite("read instance"))?;
    match rows.next().map_err(lite("read instance"))? {
        Some(r) => instance_of(r).map(Some),
        None => Ok(None),
    }
}

/// An instance row, selected with its columns in table order.
pub(crate) fn instance_of(r: &Row<'_>) -> Result<Instance, StoreError> {
    const T: &str = "instances";
    let status: String = col(r, 14, T, "status")?;
    Ok(Instance {
        machine_id: col(r, 0, T, "machine_id")?,
        app_id: col(r, 1, T, "app_id")?,
        alias: col(r, 2, T, "alias")?,
        ip: col(r, 3, T, "ip")?,
        version: col(r, 4, T, "version")?,
        group_id: col(r, 5, T, "group_id")?,
        track: col(r, 6, T, "track")?,
        oem: col(r, 7, T, "oem")?,
        oem_version: col(r, 8, T, "oem_version")?,
        board: col(r, 9, T, "board")?,
        boot_id: col(r, 10, T, "boot_id")?,
        last_check_at: col(r, 11, T, "last_check_at")?,
        granted_version: col(r, 12, T, "granted_version")?,
        granted_at: col(r, 13, T, "granted_at")?,
        status: super::status_of(&status, T)?,
        status_detail: col(r, 15, T, "status_detail")?,
        error_code: col(r, 16, T, "error_code")?,
        status_at: col(r, 17, T, "status_at")?,
        created_at: col(r, 18, T, "created_at")?,
        served_payload: crate::store::sqlx_rows::served_payload_of(
            col(r, 19, T, "served_payload")?,
            T,
        )?,
    })
}

/// A ready [`crate::store::tx::TxFuture`] holding `r`.
pub(crate) fn ready<'a, T: Send + 'a>(
    r: Result<T, StoreError>,
) -> crate::store::tx::TxFuture<'a, T> {
    Box::pin(std::future::ready(r))
}
