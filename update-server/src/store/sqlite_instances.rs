//! [`InstanceTx`] on SQLite (direct connections): column-wise, conditional instance
//! writes. The statements use no
//! SQLite-only feature (upserts and row-count checks as PostgreSQL has them); a PostgreSQL store
//! reuses them with its own placeholders.

use rusqlite::Connection;

use super::direct::{DirectTx, lite, read_instance, ready};
use super::rollout::add_activity_direct;
use crate::model::ServedPayload;
use crate::store::instances::{CheckIn, InstanceTx, StatusColumns};
use crate::store::tx::TxFuture;
use crate::store::{InstanceChange, StoreError};

/// Rows per check-in statement (14 parameters each, far below SQLite's limit of 32,766): one
/// statement writes many rows, so a batch costs a few statements, not one per machine.
const ROWS_PER_STATEMENT: usize = 100;

/// The statement writing `n` check-ins: creates missing rows (`idle`), else updates the check-in
/// columns unless the stored row holds a newer check-in; empty reported values keep the stored
/// ones.
fn check_in_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO instances (machine_id, app_id, alias, ip, version, group_id, track, oem, \
         oem_version, board, boot_id, last_check_at, status, status_at, created_at) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'idle', ?, ?)");
    }
    sql.push_str(
        " ON CONFLICT (machine_id, app_id) DO UPDATE SET \
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
         WHERE excluded.last_check_at >= instances.last_check_at",
    );
    sql
}

impl InstanceTx for DirectTx<'_> {
    fn instance<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> TxFuture<'a, Option<crate::model::Instance>> {
        ready(read_instance(self.conn, machine_id, app_id))
    }

    fn check_in<'a>(&'a mut self, rows: &'a [CheckIn]) -> TxFuture<'a, ()> {
        ready(check_in(self.conn, rows))
    }

    fn set_status<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        s: &'a StatusColumns,
    ) -> TxFuture<'a, ()> {
        ready(set_status(self.conn, machine_id, app_id, s))
    }

    fn record_change<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
        at: i64,
        change: &'a InstanceChange,
    ) -> TxFuture<'a, ()> {
        ready(record_change(
            self.conn, machine_id, app_id, version, at, change,
        ))
    }
}

fn check_in(conn: &Connection, rows: &[CheckIn]) -> Result<(), StoreError> {
    // One row per machine and statement: a statement that names a machine twice would update
    // its row twice in one go (the caller coalesces; keep the newest here too).
    let mut newest: Vec<&CheckIn> = Vec::with_capacity(rows.len());
    let mut seen = std::collections::HashMap::new();
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
    // In key order: neighbouring rows share pages, and each page is visited once.
    newest.sort_unstable_by(|a, b| (&a.machine_id, &a.app_id).cmp(&(&b.machine_id, &b.app_id)));
    for chunk in newest.chunks(ROWS_PER_STATEMENT) {
        let sql = check_in_sql(chunk.len());
        // Full chunks and single rows are the common shapes; caching every size would crowd
        // the grant statements out of the connection's cache.
        let (mut cached, mut plain);
        let stmt: &mut rusqlite::Statement<'_> =
            if chunk.len() == ROWS_PER_STATEMENT || chunk.len() == 1 {
                cached = conn.prepare_cached(&sql).map_err(lite("write check-ins"))?;
                &mut cached
            } else {
                plain = conn.prepare(&sql).map_err(lite("write check-ins"))?;
                &mut plain
            };
        let mut i = 0;
        let mut bind = |v: &dyn rusqlite::ToSql| {
            i += 1;
            stmt.raw_bind_parameter(i, v)
        };
        for c in chunk {
            let first_seen = c.first_seen.min(c.at);
            for v in [
                &c.machine_id as &dyn rusqlite::ToSql,
                &c.app_id,
                &c.alias,
                &c.ip,
                &c.version,
                &c.group_id,
                &c.track,
                &c.oem,
                &c.oem_version,
                &c.board,
                &c.boot_id,
                &c.at,
                &c.at,
                &first_seen,
            ] {
                bind(v).map_err(lite("write check-ins"))?;
            }
        }
        stmt.raw_execute().map_err(lite("write check-ins"))?;
    }
    Ok(())
}

fn set_status(
    conn: &Connection,
    machine_id: &str,
    app_id: &str,
    s: &StatusColumns,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE instances SET status = ?, status_detail = ?, error_code = ?, status_at = ?, \
         granted_version = ?, granted_at = ?, served_payload = ? \
         WHERE machine_id = ? AND app_id = ?",
    )
    .and_then(|mut q| {
        q.execute((
            s.status.as_str(),
            &s.status_detail,
            s.error_code,
            s.status_at,
            &s.granted_version,
            s.granted_at,
            s.served_payload.map(ServedPayload::as_str),
            machine_id,
            app_id,
        ))
    })
    .map_err(lite("set instance status"))?;
    Ok(())
}

fn record_change(
    conn: &Connection,
    machine_id: &str,
    app_id: &str,
    version: &str,
    at: i64,
    change: &InstanceChange,
) -> Result<(), StoreError> {
    if !change.events.is_empty() {
        let mut q = conn
            .prepare_cached(
                "INSERT INTO events (machine_id, app_id, event_type, event_result, error_code, \
                 previous_version, version, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .map_err(lite("insert event"))?;
        for e in &change.events {
            q.execute((
                machine_id,
                app_id,
                e.event_type,
                e.event_result,
                e.error_code,
                &e.previous_version,
                version,
                at,
            ))
            .map_err(lite("insert event"))?;
        }
    }
    if let Some(s) = &change.status_change {
        conn.prepare_cached(
            "INSERT INTO instance_status_history (machine_id, app_id, status, version, detail, \
             error_code, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .and_then(|mut q| {
            q.execute((
                machine_id,
                app_id,
                s.status.as_str(),
                &s.version,
                &s.detail,
                s.error_code,
                s.at,
            ))
        })
        .map_err(lite("insert status history"))?;
    }
    for a in &change.activity {
        add_activity_direct(conn, a, at)?;
    }
    Ok(())
}
