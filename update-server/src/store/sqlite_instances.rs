//! [`InstanceTx`] on SQLite: column-wise, conditional instance writes. The statements use no
//! SQLite-only feature (upserts and row-count checks as PostgreSQL has them); a PostgreSQL store
//! reuses them with its own placeholders.

use super::{SqliteTx, add_activity, db, read_instance};
use crate::store::InstanceChange;
use crate::store::instances::{CheckIn, InstanceTx, StatusColumns};
use crate::store::tx::TxFuture;

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

impl InstanceTx for SqliteTx<'_> {
    fn instance<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> TxFuture<'a, Option<crate::model::Instance>> {
        Box::pin(async move { read_instance(&mut *self.conn, machine_id, app_id).await })
    }

    fn check_in<'a>(&'a mut self, rows: &'a [CheckIn]) -> TxFuture<'a, ()> {
        Box::pin(async move {
            // One row per machine and statement: a statement that names a machine twice would
            // update its row twice in one go (the caller coalesces; keep the newest here too).
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
            for chunk in newest.chunks(ROWS_PER_STATEMENT) {
                let sql = check_in_sql(chunk.len());
                let mut q = sqlx::query(&sql);
                for c in chunk {
                    q = q
                        .bind(&c.machine_id)
                        .bind(&c.app_id)
                        .bind(&c.alias)
                        .bind(&c.ip)
                        .bind(&c.version)
                        .bind(&c.group_id)
                        .bind(&c.track)
                        .bind(&c.oem)
                        .bind(&c.oem_version)
                        .bind(&c.board)
                        .bind(&c.boot_id)
                        .bind(c.at)
                        .bind(c.at)
                        .bind(c.first_seen.min(c.at));
                }
                q.execute(&mut *self.conn)
                    .await
                    .map_err(db("write check-ins"))?;
            }
            Ok(())
        })
    }

    fn set_status<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        s: &'a StatusColumns,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE instances SET status = ?, status_detail = ?, error_code = ?, \
                 status_at = ?, granted_version = ?, granted_at = ? \
                 WHERE machine_id = ? AND app_id = ?",
            )
            .bind(s.status.as_str())
            .bind(&s.status_detail)
            .bind(s.error_code)
            .bind(s.status_at)
            .bind(&s.granted_version)
            .bind(s.granted_at)
            .bind(machine_id)
            .bind(app_id)
            .execute(&mut *self.conn)
            .await
            .map_err(db("set instance status"))?;
            Ok(())
        })
    }

    fn record_change<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
        at: i64,
        change: &'a InstanceChange,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            for e in &change.events {
                sqlx::query(
                    "INSERT INTO events (machine_id, app_id, event_type, event_result, \
                     error_code, previous_version, version, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(machine_id)
                .bind(app_id)
                .bind(e.event_type)
                .bind(e.event_result)
                .bind(e.error_code)
                .bind(&e.previous_version)
                .bind(version)
                .bind(at)
                .execute(&mut *self.conn)
                .await
                .map_err(db("insert event"))?;
            }
            if let Some(s) = &change.status_change {
                sqlx::query(
                    "INSERT INTO instance_status_history (machine_id, app_id, status, version, \
                     detail, error_code, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(machine_id)
                .bind(app_id)
                .bind(s.status.as_str())
                .bind(&s.version)
                .bind(&s.detail)
                .bind(s.error_code)
                .bind(s.at)
                .execute(&mut *self.conn)
                .await
                .map_err(db("insert status history"))?;
            }
            for a in &change.activity {
                add_activity(self.conn, a, at).await?;
            }
            Ok(())
        })
    }
}
