//! Moving an installation from SQLite to PostgreSQL (`update-server migrate-store`): every row
//! of every table is copied, in one PostgreSQL transaction, into a new (empty) database, with
//! its ids. Either all of it arrives or nothing does.
//!
//! What is not copied: grant tallies (the target's triggers count them again from the grants as
//! they arrive) and job leases (held only while a server runs). The catalogue generation moves
//! past the source's, so replicas reload what they serve. Package files are not in the
//! database: the replicas' data directory keeps them (see docs/usage/operations.md).

use std::path::Path;

use futures_util::TryStreamExt as _;
use sqlx::{QueryBuilder, Row as _};

use super::sqlx_shared::db;
use super::{PgStore, SqliteStore, StoreError};

/// The tables copied, in an order that satisfies their references, each with its key (the
/// order rows are read in).
const TABLES: &[(&str, &str)] = &[
    ("apps", "id"),
    ("packages", "id"),
    ("package_files", "package_id, position"),
    ("package_deltas", "package_id, source_version"),
    ("channels", "id"),
    ("channel_packages", "channel_id, arch, format"),
    ("groups_", "id"),
    ("machine_aliases", "machine_id"),
    ("instances", "machine_id, app_id"),
    ("instance_status_history", "id"),
    ("events", "id"),
    ("activity", "id"),
    ("fleetlock_groups", "name"),
    ("fleetlock_holders", "group_name, holder_id"),
    ("rollout_grants", "id"),
    ("refused_versions", "machine_id, app_id, version"),
    ("rollout_starts", "group_id, version"),
    ("machine_credentials", "machine_id"),
    (
        "group_version_samples",
        "app_id, group_id, at, other_versions, version",
    ),
    ("sync_states", "app_id, channel, arch, format"),
];

/// Tables whose ids PostgreSQL generates: their sequences continue after the copied ids.
const IDENTITY_TABLES: &[&str] = &[
    "instance_status_history",
    "events",
    "activity",
    "rollout_grants",
];

/// Rows sent per INSERT statement.
const ROWS_PER_INSERT: usize = 500;

/// Rows copied, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Table and rows, in the order copied.
    pub tables: Vec<(&'static str, u64)>,
}

/// A column of the target table and whether it holds integers (else text).
struct Column {
    name: String,
    integer: bool,
}

/// A value read from SQLite.
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

/// Copies the SQLite database file `from` (brought to the latest schema first) into the
/// PostgreSQL database at `to`, which must hold no rows yet. Stop every server using `from`
/// before: rows they write meanwhile would not be copied.
pub async fn sqlite_to_postgres(from: &Path, to: &str) -> Result<MigrationReport, StoreError> {
    if !from.is_file() {
        return Err(StoreError::NotFound(format!(
            "SQLite database {}",
            from.display()
        )));
    }
    let source = SqliteStore::open(from).await?;
    let target = PgStore::open(to).await?;
    let result = copy(&source, &target).await;
    source.close().await;
    target.close().await;
    result
}

async fn copy(source: &SqliteStore, target: &PgStore) -> Result<MigrationReport, StoreError> {
    for (table, _) in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(target.pool())
            .await
            .map_err(db("count the target's rows"))?;
        if n > 0 {
            return Err(StoreError::Conflict(format!(
                "the target database is not empty (table {table} has {n} rows): migrate into a \
                 new database"
            )));
        }
    }
    let mut tx = target.pool().begin().await.map_err(db("begin the copy"))?;
    // One read transaction on the source: every table as of one moment.
    let mut src = source
        .pool()
        .begin()
        .await
        .map_err(db("begin reading the source"))?;
    let mut report = MigrationReport::default();
    for (table, key) in TABLES {
        let columns = target_columns(&mut tx, table).await?;
        let list = columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let select = format!("SELECT {list} FROM {table} ORDER BY {key}");
        let mut rows = sqlx::query(&select).fetch(&mut *src);
        let mut batch: Vec<Vec<Value>> = Vec::with_capacity(ROWS_PER_INSERT);
        let mut copied = 0u64;
        while let Some(row) = rows.try_next().await.map_err(db("read the source"))? {
            let mut values = Vec::with_capacity(columns.len());
            for c in &columns {
                let v = if c.integer {
                    Value::Int(
                        row.try_get(c.name.as_str())
                            .map_err(db("read the source"))?,
                    )
                } else {
                    Value::Text(
                        row.try_get(c.name.as_str())
                            .map_err(db("read the source"))?,
                    )
                };
                values.push(v);
            }
            batch.push(values);
            if batch.len() == ROWS_PER_INSERT {
                copied += insert(&mut tx, table, &list, &mut batch).await?;
            }
        }
        copied += insert(&mut tx, table, &list, &mut batch).await?;
        report.tables.push((table, copied));
    }
    for table in IDENTITY_TABLES {
        // SQLite's AUTOINCREMENT never reuses an id, not even one of a deleted newest row: the
        // sequence continues after the larger of the last id issued and the last id copied.
        let issued: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = $1")
                .bind(table)
                .fetch_optional(&mut *src)
                .await
                .map_err(db("read the source's id sequences"))?;
        let copied: Option<i64> = sqlx::query_scalar(&format!("SELECT MAX(id) FROM {table}"))
            .fetch_one(&mut *tx)
            .await
            .map_err(db("continue the id sequences"))?;
        let last = issued.unwrap_or(0).max(copied.unwrap_or(0));
        // `setval(…, n, true)`: the next id is n + 1; an empty history starts at 1.
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), $1, $2)"
        ))
        .bind(last.max(1))
        .bind(last > 0)
        .execute(&mut *tx)
        .await
        .map_err(db("continue the id sequences"))?;
    }
    let generation: i64 = sqlx::query_scalar("SELECT generation FROM catalogue_generation")
        .fetch_one(&mut *src)
        .await
        .map_err(db("read the catalogue generation"))?;
    sqlx::query("UPDATE catalogue_generation SET generation = GREATEST(generation, $1 + 1)")
        .bind(generation)
        .execute(&mut *tx)
        .await
        .map_err(db("move the catalogue generation"))?;
    tx.commit().await.map_err(db("commit the copy"))?;
    Ok(report)
}

/// The columns of `table` in the target schema, in their order.
async fn target_columns(
    tx: &mut sqlx::PgConnection,
    table: &str,
) -> Result<Vec<Column>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await
    .map_err(db("read the target schema"))?;
    Ok(rows
        .into_iter()
        .map(|(name, ty)| Column {
            integer: ty == "bigint",
            name,
        })
        .collect())
}

/// Inserts and empties `batch`; returns the rows inserted.
async fn insert(
    tx: &mut sqlx::PgConnection,
    table: &str,
    list: &str,
    batch: &mut Vec<Vec<Value>>,
) -> Result<u64, StoreError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::<sqlx::Postgres>::new(format!("INSERT INTO {table} ({list}) "));
    q.push_values(batch.drain(..), |mut b, row| {
        for v in row {
            match v {
                Value::Int(i) => b.push_bind(i),
                Value::Text(t) => b.push_bind(t),
            };
        }
    });
    let done = q
        .build()
        .execute(&mut *tx)
        .await
        .map_err(db("write the target"))?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testkit::pg::TestDatabase;

    /// The grant tallies, their shards (PostgreSQL, migration 0009) summed.
    const TALLIES: &str = "SELECT group_id, version, state, new_machine, \
        CAST(SUM(machines) AS BIGINT) AS machines FROM rollout_grant_tallies \
        GROUP BY group_id, version, state, new_machine HAVING SUM(machines) <> 0 \
        ORDER BY 1, 2, 3, 4";

    /// Every table's rows, rendered, in key order (both databases render them alike).
    async fn dump_sqlite(s: &SqliteStore) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for (table, key) in TABLES {
            let rows = sqlx::query(&format!("SELECT * FROM {table} ORDER BY {key}"))
                .fetch_all(s.pool())
                .await
                .unwrap();
            out.push((table.to_string(), rows.iter().map(render).collect()));
        }
        let rows = sqlx::query(TALLIES).fetch_all(s.pool()).await.unwrap();
        out.push((
            "rollout_grant_tallies".into(),
            rows.iter().map(render).collect(),
        ));
        out
    }

    async fn dump_pg(p: &PgStore) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for (table, key) in TABLES {
            let rows = sqlx::query(&format!("SELECT * FROM {table} ORDER BY {key}"))
                .fetch_all(p.pool())
                .await
                .unwrap();
            out.push((table.to_string(), rows.iter().map(render).collect()));
        }
        let rows = sqlx::query(TALLIES).fetch_all(p.pool()).await.unwrap();
        out.push((
            "rollout_grant_tallies".into(),
            rows.iter().map(render).collect(),
        ));
        out
    }

    /// A row as `column=value` pairs in column-name order (a column added by a later migration
    /// may sit elsewhere in one database's table than in the other's), alike for both databases
    /// (integers as such, else text).
    fn render<R>(r: &R) -> String
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        for<'v> Option<i64>: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
        for<'v> Option<String>: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
    {
        use sqlx::Column as _;
        r.columns()
            .iter()
            .map(|c| {
                let i: Result<Option<i64>, _> = r.try_get(c.ordinal());
                match i {
                    Ok(v) => format!("{}={v:?}", c.name()),
                    Err(_) => format!(
                        "{}={:?}",
                        c.name(),
                        r.try_get::<Option<String>, _>(c.ordinal()).unwrap()
                    ),
                }
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A source with rows in every table (written as an older server would have left them).
    const FIXTURE: &str = "
        INSERT INTO apps VALUES ('app', 'OS', 'the OS', 10, 'install');
        INSERT INTO packages VALUES ('p1', 'app', '1.0.0', 'amd64', 'platte', 'u.payload', 5,
            'sha1', 'ab', NULL, 11, 'platte', NULL, NULL, NULL, 0, 1, 0), ('p2', 'app', '2.0.0',
            'amd64', 'update_engine', 'update.gz', 6, 'sha1b', 'cd', 'https://mirror.example/u',
            12, 'update_engine', 1020, 'c2ln', 'now', 1, 0, 1);
        INSERT INTO package_files VALUES ('p2', 0, 'oem-azure.gz', 7, 'sha1c', 'ef');
        INSERT INTO package_deltas VALUES ('p1', '0.9.0', 'd.payload', 3, 'sha1d', '0d', 25);
        INSERT INTO channels VALUES ('c1', 'app', 'stable', 13);
        INSERT INTO channel_packages VALUES ('c1', 'amd64', 'update_engine', 'p2'),
            ('c1', 'amd64', 'platte', 'p1');
        INSERT INTO groups_ VALUES ('g1', 'app', 'Stable', 'stable', 'c1', '',
            '{\"paused\":false,\"rollout\":{\"concurrency_limit\":5}}', 14);
        INSERT INTO machine_aliases VALUES ('m1', 'web-1', 15);
        INSERT INTO instances (machine_id, app_id, alias, ip, version, group_id, track,
            last_check_at, granted_version, granted_at, status, status_detail, error_code,
            status_at, created_at)
            VALUES ('m1', 'app', 'w', '10.0.0.1', '1.0.0', 'g1', 'stable', 20, '2.0.0', 19,
            'granted', 'ok', NULL, 19, 16),
            ('m2', 'app', '', '10.0.0.2', '1.0.0', 'g1', 'stable', 21, NULL, NULL,
            'error', 'bad', 44, 21, 17);
        UPDATE instances SET served_payload = 'delta' WHERE machine_id = 'm1';
        INSERT INTO instance_status_history (machine_id, app_id, status, version, detail,
            error_code, at) VALUES ('m1', 'app', 'granted', '1.0.0', '', NULL, 19),
            ('m2', 'app', 'error', '1.0.0', 'bad', 44, 21);
        INSERT INTO events (machine_id, app_id, event_type, event_result, error_code,
            previous_version, version, at) VALUES ('m2', 'app', 3, 0, 44, '0.9', '1.0.0', 21);
        INSERT INTO activity (at, kind, severity, app_id, group_id, machine_id, version, message)
            VALUES (14, 'group_created', 'info', 'app', 'g1', NULL, NULL, 'group Stable'),
            (15, 'gone', 'info', NULL, NULL, NULL, NULL, 'deleted since');
        DELETE FROM activity WHERE kind = 'gone';
        INSERT INTO fleetlock_groups VALUES ('workers', 2, 22);
        INSERT INTO fleetlock_holders VALUES ('workers', 'm1', 23);
        INSERT INTO rollout_grants (group_id, app_id, machine_id, version, state, canary,
            granted_at, progress_at, settled_at, network, new_machine)
            VALUES ('g1', 'app', 'm1', '2.0.0', 'in_flight', 0, 19, 19, NULL, '10.0.0.0/24', 1),
            ('g1', 'app', 'm2', '2.0.0', 'failed', 1, 18, 21, 21, '10.0.0.0/24', 0);
        INSERT INTO refused_versions VALUES ('m2', 'app', '2.0.0', 'rolled_back', 44, 21);
        INSERT INTO rollout_starts VALUES ('g1', '2.0.0', 18);
        INSERT INTO sync_states VALUES ('app', 'stable', 'amd64', 'update_engine', 30, '2.0.0',
            'p2', 30, NULL);
        INSERT INTO machine_credentials VALUES ('m1', 'key', 'enrolled', 24);
        INSERT INTO group_version_samples VALUES ('app', 'g1', 600, '1.0.0', 0, 2),
            ('app', 'g1', 600, '', 1, 3);
    ";

    #[tokio::test]
    async fn every_row_of_every_table_arrives_and_a_second_copy_is_refused() {
        let Some(pg) = TestDatabase::create().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("platte.sqlite");
        let source = SqliteStore::open(&file).await.unwrap();
        sqlx::raw_sql(FIXTURE).execute(source.pool()).await.unwrap();
        let before = dump_sqlite(&source).await;
        source.close().await;

        let report = sqlite_to_postgres(&file, &pg.url).await.unwrap();
        assert_eq!(report.tables.len(), TABLES.len());
        for (table, rows) in &before {
            if let Some((_, n)) = report.tables.iter().find(|(t, _)| t == table) {
                assert_eq!(*n, rows.len() as u64, "{table}");
            }
        }
        assert!(report.tables.iter().all(|(_, n)| *n > 0), "{report:?}");

        let target = PgStore::open(&pg.url).await.unwrap();
        assert_eq!(dump_pg(&target).await, before);
        // New rows continue the copied ids; the catalogue generation moved on.
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (machine_id, app_id, event_type, event_result, at) \
             VALUES ('m3', 'app', 3, 1, 30) RETURNING id",
        )
        .fetch_one(target.pool())
        .await
        .unwrap();
        assert_eq!(id, 2);
        // SQLite issued activity id 2 to a row deleted since: it is not issued again.
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO activity (at, kind, severity, message) \
             VALUES (31, 'test', 'info', 'after the move') RETURNING id",
        )
        .fetch_one(target.pool())
        .await
        .unwrap();
        assert_eq!(id, 3);
        target.close().await;

        let e = sqlite_to_postgres(&file, &pg.url).await.unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        let missing = sqlite_to_postgres(&dir.path().join("nope.sqlite"), &pg.url)
            .await
            .unwrap_err();
        assert!(missing.to_string().contains("nope.sqlite"), "{missing}");
    }
}
