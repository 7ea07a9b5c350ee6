//! What both sqlx databases (SQLite and PostgreSQL) share: embedded migrations, errors mapped to [`StoreError`]
//! (constraint violations become conflicts), and rows decoded once for both: each column is fetched by name and a value that does not decode is reported as corrupt data
//! naming its table and column.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::StoreError;
use crate::lifecycle::InstanceStatus;
use crate::model::{Group, GroupPolicy, Instance};

/// A row of a database whose driver decodes the column types Platte stores (text, 64-bit
/// integers, either possibly null).
pub trait PortableRow:
    Row
    + for<'c> RowGet<'c, String>
    + for<'c> RowGet<'c, i64>
    + for<'c> RowGet<'c, Option<String>>
    + for<'c> RowGet<'c, Option<i64>>
{
}

impl<R> PortableRow for R where
    R: Row
        + for<'c> RowGet<'c, String>
        + for<'c> RowGet<'c, i64>
        + for<'c> RowGet<'c, Option<String>>
        + for<'c> RowGet<'c, Option<i64>>
{
}

/// Fetching one column of type `T` by name.
pub trait RowGet<'r, T> {
    /// The column's value, or why it did not decode.
    fn column_value(&'r self, column: &'static str) -> Result<T, sqlx::Error>;
}

impl<'r, R, T> RowGet<'r, T> for R
where
    R: Row,
    &'static str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    fn column_value(&'r self, column: &'static str) -> Result<T, sqlx::Error> {
        self.try_get(column)
    }
}

/// Maps a sqlx error of operation `op` to a [`StoreError`], telling uniqueness and reference
/// violations (a conflict the caller can report) from failures.
pub fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| match &source {
        sqlx::Error::Database(e) if e.is_unique_violation() => {
            StoreError::Conflict(format!("{op}: already exists"))
        }
        sqlx::Error::Database(e)
            if e.is_foreign_key_violation() || e.message().contains("FOREIGN KEY") =>
        {
            StoreError::Conflict(format!(
                "{op}: still referenced or refers to a missing object"
            ))
        }
        _ => StoreError::Database { op, source },
    }
}

/// Column `column` of `row` (of table `table`).
pub fn get<'r, T, R: RowGet<'r, T>>(
    row: &'r R,
    table: &'static str,
    column: &'static str,
) -> Result<T, StoreError> {
    row.column_value(column).map_err(|e| StoreError::Corrupt {
        table,
        column,
        detail: e.to_string(),
    })
}

/// A stored count or size, which is never negative.
pub fn u64_of(v: i64, table: &'static str, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        table,
        column,
        detail: format!("negative {v}"),
    })
}

/// A stored instance status.
pub fn status_of(s: &str, table: &'static str) -> Result<InstanceStatus, StoreError> {
    InstanceStatus::parse(s).ok_or_else(|| StoreError::Corrupt {
        table,
        column: "status",
        detail: format!("unknown status {s:?}"),
    })
}

/// A group's stored policy.
pub fn policy_of(json: &str) -> Result<GroupPolicy, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        table: "groups_",
        column: "policy",
        detail: e.to_string(),
    })
}

/// A group's policy, as stored.
pub fn policy_json(g: &Group) -> Result<String, StoreError> {
    serde_json::to_string(&g.policy).map_err(|e| StoreError::Corrupt {
        table: "groups_",
        column: "policy",
        detail: e.to_string(),
    })
}

/// A row of `instances` (selected with `*`).
pub fn instance_of<R: PortableRow>(r: &R) -> Result<Instance, StoreError> {
    const T: &str = "instances";
    Ok(Instance {
        machine_id: get(r, T, "machine_id")?,
        app_id: get(r, T, "app_id")?,
        alias: get(r, T, "alias")?,
        ip: get(r, T, "ip")?,
        version: get(r, T, "version")?,
        group_id: get(r, T, "group_id")?,
        track: get(r, T, "track")?,
        oem: get(r, T, "oem")?,
        oem_version: get(r, T, "oem_version")?,
        board: get(r, T, "board")?,
        boot_id: get(r, T, "boot_id")?,
        last_check_at: get(r, T, "last_check_at")?,
        granted_version: get(r, T, "granted_version")?,
        granted_at: get(r, T, "granted_at")?,
        status: status_of(&get::<String, _>(r, T, "status")?, T)?,
        status_detail: get(r, T, "status_detail")?,
        error_code: get(r, T, "error_code")?,
        status_at: get(r, T, "status_at")?,
        created_at: get(r, T, "created_at")?,
    })
}

/// A migrator applying `migrations` (version, description, SQL), in order.
pub fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            migrations
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        Cow::Borrowed(*d),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}
