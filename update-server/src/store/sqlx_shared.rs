//! What both sqlx databases (SQLite and PostgreSQL) share: embedded migrations, errors mapped
//! to [`StoreError`] (constraint violations become conflicts), columns fetched by name from
//! either database's rows ([`PortableRow`]; the decoders of whole rows are in
//! [`super::sqlx_rows`]), values bound to either database's queries ([`PortableQuery`]), and
//! the statements both run alike, each with its binder where it binds a model's fields.
//!
//! The shared statements number their parameters (`$1` … `$N`), which PostgreSQL requires and
//! sqlx's SQLite driver maps by number. A statement whose dialects differ (row locks, `ILIKE`,
//! collations, casts, `RETURNING`, `BEGIN IMMEDIATE`, advisory locks) stays with its store. The
//! check path's direct SQLite connections (rusqlite) would bind `$N` in the order the names
//! first appear, not by number: they use none of these.

use std::borrow::Cow;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type};

use super::StoreError;
use super::credential::MachineCredential;
use super::retention::{AgedTable, StaleInstance};
use crate::model::{App, Channel, Group, NewActivity, Package};

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

/// The wall clock, in Unix seconds (what admin writes are stamped with).
pub fn now() -> i64 {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

/// Maps a value that could not be encoded for a query of operation `op` to a [`StoreError`].
pub fn encode_error(op: &'static str) -> impl FnOnce(BoxDynError) -> StoreError {
    move |e| StoreError::Database {
        op,
        source: sqlx::Error::Encode(e),
    }
}

/// A query of either database to which the values Platte stores bind (text and 64-bit
/// integers): the binders of the shared statements are written against it.
pub trait PortableQuery<'q>: Sized {
    /// Binds a text value.
    fn bind_text(self, v: &'q str) -> Self;
    /// Binds a text value or NULL.
    fn bind_opt_text(self, v: Option<&'q str>) -> Self;
    /// Binds an integer.
    fn bind_int(self, v: i64) -> Self;
    /// Binds an integer or NULL.
    fn bind_opt_int(self, v: Option<i64>) -> Self;
}

impl<'q, DB> PortableQuery<'q> for Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
{
    fn bind_text(self, v: &'q str) -> Self {
        self.bind(v)
    }

    fn bind_opt_int(self, v: Option<i64>) -> Self {
        self.bind(v)
    }

    fn bind_opt_text(self, v: Option<&'q str>) -> Self {
        self.bind(v)
    }

    fn bind_int(self, v: i64) -> Self {
        self.bind(v)
    }
}

/// An activity entry (bound by [`bind_activity`]).
pub const INSERT_ACTIVITY: &str = "INSERT INTO activity (at, kind, severity, app_id, group_id, \
     machine_id, version, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Binds activity entry `a`, made at `at`, to [`INSERT_ACTIVITY`].
pub fn bind_activity<'q, Q: PortableQuery<'q>>(q: Q, a: &'q NewActivity, at: i64) -> Q {
    q.bind_int(at)
        .bind_text(&a.kind)
        .bind_text(a.severity)
        .bind_opt_text(a.app_id.as_deref())
        .bind_opt_text(a.group_id.as_deref())
        .bind_opt_text(a.machine_id.as_deref())
        .bind_opt_text(a.version.as_deref())
        .bind_text(&a.message)
}

/// The package pointers of every channel.
pub const SELECT_CHANNEL_PACKAGES: &str = "SELECT * FROM channel_packages";

/// The extra files of every package, in order.
pub const SELECT_PACKAGE_FILES: &str = "SELECT * FROM package_files ORDER BY package_id, position";

/// A package's extra files in order (`$1` package id): name, size, SHA-1, SHA-256.
pub const SELECT_FILES_OF_PACKAGE: &str = "SELECT name, size, sha1_base64, sha256_hex \
     FROM package_files WHERE package_id = $1 ORDER BY position";

/// Whether the rows of [`SELECT_FILES_OF_PACKAGE`] are `expected`.
pub fn files_are(
    rows: &[(String, i64, String, String)],
    expected: &[crate::model::PackageFile],
) -> bool {
    rows.len() == expected.len()
        && rows
            .iter()
            .zip(expected)
            .all(|((name, size, sha1, sha256), f)| {
                *name == f.name
                    && u64::try_from(*size).ok() == Some(f.size)
                    && *sha1 == f.sha1_base64
                    && *sha256 == f.sha256_hex
            })
}

/// The conflict of a package whose files changed since they were read.
pub fn files_changed(id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "the extra files of package {id} changed meanwhile (another server or operator); read \
         them again and retry"
    ))
}

/// Removes a package's extra files (`$1` package id).
pub const DELETE_PACKAGE_FILES: &str = "DELETE FROM package_files WHERE package_id = $1";

/// An extra file of a package (bound by [`bind_package_file`]).
pub const INSERT_PACKAGE_FILE: &str = "INSERT INTO package_files (package_id, position, name, \
     size, sha1_base64, sha256_hex) VALUES ($1, $2, $3, $4, $5, $6)";

/// Binds extra file `f` of package `package_id`, at `position`, to [`INSERT_PACKAGE_FILE`].
pub fn bind_package_file<'q, Q: PortableQuery<'q>>(
    q: Q,
    package_id: &'q str,
    position: i64,
    f: &'q crate::model::PackageFile,
) -> Result<Q, StoreError> {
    let size = i64::try_from(f.size)
        .map_err(|_| StoreError::Conflict(format!("file size {} too large", f.size)))?;
    Ok(q.bind_text(package_id)
        .bind_int(position)
        .bind_text(&f.name)
        .bind_int(size)
        .bind_text(&f.sha1_base64)
        .bind_text(&f.sha256_hex))
}

/// The deltas of every package.
pub const SELECT_PACKAGE_DELTAS: &str =
    "SELECT * FROM package_deltas ORDER BY package_id, source_version";

/// A delta of a package (bound by [`bind_package_delta`]); inserts nothing (no row changed) when
/// the package does not exist.
pub const INSERT_PACKAGE_DELTA: &str = "INSERT INTO package_deltas (package_id, \
     source_version, filename, size, sha1_base64, sha256_hex, created_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM packages WHERE id = $1)";

/// Binds delta `d` of package `package_id` to [`INSERT_PACKAGE_DELTA`].
pub fn bind_package_delta<'q, Q: PortableQuery<'q>>(
    q: Q,
    package_id: &'q str,
    d: &'q crate::model::PackageDelta,
) -> Result<Q, StoreError> {
    let size = i64::try_from(d.size)
        .map_err(|_| StoreError::Conflict(format!("delta size {} too large", d.size)))?;
    Ok(q.bind_text(package_id)
        .bind_text(&d.source_version)
        .bind_text(&d.filename)
        .bind_int(size)
        .bind_text(&d.sha1_base64)
        .bind_text(&d.sha256_hex)
        .bind_int(d.created_at))
}

/// Every machine's alias (machine id, alias).
pub const SELECT_MACHINE_ALIASES: &str = "SELECT machine_id, alias FROM machine_aliases";

/// An application (bound by [`bind_app`]).
pub const INSERT_APP: &str = "INSERT INTO apps (id, name, description, created_at, \
     completes_on) VALUES ($1, $2, $3, $4, $5)";

/// Binds application `app` to [`INSERT_APP`].
pub fn bind_app<'q, Q: PortableQuery<'q>>(q: Q, app: &'q App) -> Q {
    q.bind_text(&app.id)
        .bind_text(&app.name)
        .bind_text(&app.description)
        .bind_int(app.created_at)
        .bind_text(app.completes_on.as_str())
}

/// A statement that changes one catalogue row, run (with its activity entry, in one
/// transaction) by each store's `exec_one`: when it changes no row, what it names is
/// [`StoreError::NotFound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// The operation, as errors name it.
    pub op: &'static str,
    /// What was not found when no row changed.
    pub what: String,
    /// The statement.
    pub sql: &'static str,
    /// Its text parameters, `$1` first.
    pub binds: Vec<String>,
}

impl RowChange {
    /// Renames application `app` and replaces its description.
    pub fn update_app(app: &App) -> Self {
        Self {
            op: "update app",
            what: format!("application {}", app.id),
            sql: "UPDATE apps SET name = $1, description = $2, completes_on = $3 WHERE id = $4",
            binds: vec![
                app.name.clone(),
                app.description.clone(),
                app.completes_on.as_str().to_owned(),
                app.id.clone(),
            ],
        }
    }

    /// Deletes application `id`.
    pub fn delete_app(id: &str) -> Self {
        Self::delete(
            "delete app",
            format!("application {id}"),
            "DELETE FROM apps WHERE id = $1",
            id,
        )
    }

    /// Deletes channel `id`.
    pub fn delete_channel(id: &str) -> Self {
        Self::delete(
            "delete channel",
            format!("channel {id}"),
            "DELETE FROM channels WHERE id = $1",
            id,
        )
    }

    /// Deletes group `id`.
    pub fn delete_group(id: &str) -> Self {
        Self::delete(
            "delete group",
            format!("group {id}"),
            "DELETE FROM groups_ WHERE id = $1",
            id,
        )
    }

    /// Deletes package `id`.
    pub fn delete_package(id: &str) -> Self {
        Self::delete(
            "delete package",
            format!("package {id}"),
            "DELETE FROM packages WHERE id = $1",
            id,
        )
    }

    /// Deletes package `package_id`'s delta from `source_version`.
    pub fn delete_package_delta(package_id: &str, source_version: &str) -> Self {
        Self {
            op: "delete package delta",
            what: format!("delta from {source_version} of package {package_id}"),
            sql: "DELETE FROM package_deltas WHERE package_id = $1 AND source_version = $2",
            binds: vec![package_id.to_owned(), source_version.to_owned()],
        }
    }

    /// Deletes the row `id` by `sql` (`$1` id).
    fn delete(op: &'static str, what: String, sql: &'static str, id: &str) -> Self {
        Self {
            op,
            what,
            sql,
            binds: vec![id.to_owned()],
        }
    }
}

/// A channel, without its package pointers (bound by [`bind_channel`]).
pub const INSERT_CHANNEL: &str =
    "INSERT INTO channels (id, app_id, name, created_at) VALUES ($1, $2, $3, $4)";

/// Binds channel `c` to [`INSERT_CHANNEL`].
pub fn bind_channel<'q, Q: PortableQuery<'q>>(q: Q, c: &'q Channel) -> Q {
    q.bind_text(&c.id)
        .bind_text(&c.app_id)
        .bind_text(&c.name)
        .bind_int(c.created_at)
}

/// Renames a channel (`$1` name, `$2` id).
pub const UPDATE_CHANNEL: &str = "UPDATE channels SET name = $1 WHERE id = $2";

/// Removes a channel's package pointers (`$1` channel id).
pub const DELETE_CHANNEL_PACKAGES: &str = "DELETE FROM channel_packages WHERE channel_id = $1";

/// Points a channel at a package for an architecture and format (`$1` channel id, `$2`
/// architecture, `$3` format, `$4` package id).
pub const INSERT_CHANNEL_PACKAGE: &str =
    "INSERT INTO channel_packages (channel_id, arch, format, package_id) VALUES ($1, $2, $3, $4)";

/// A group (bound by [`bind_group`]).
pub const INSERT_GROUP: &str = "INSERT INTO groups_ (id, app_id, name, track, channel_id, \
     description, policy, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Binds group `g`, with its policy as stored (`policy`), to [`INSERT_GROUP`].
pub fn bind_group<'q, Q: PortableQuery<'q>>(q: Q, g: &'q Group, policy: &'q str) -> Q {
    q.bind_text(&g.id)
        .bind_text(&g.app_id)
        .bind_text(&g.name)
        .bind_text(&g.track)
        .bind_opt_text(g.channel_id.as_deref())
        .bind_text(&g.description)
        .bind_text(policy)
        .bind_int(g.created_at)
}

/// Replaces a group's fields but its application and creation time (bound by
/// [`bind_group_update`]).
pub const UPDATE_GROUP: &str = "UPDATE groups_ SET name = $1, track = $2, channel_id = $3, \
     description = $4, policy = $5 WHERE id = $6";

/// Binds group `g`, with its policy as stored (`policy`), to [`UPDATE_GROUP`].
pub fn bind_group_update<'q, Q: PortableQuery<'q>>(q: Q, g: &'q Group, policy: &'q str) -> Q {
    q.bind_text(&g.name)
        .bind_text(&g.track)
        .bind_opt_text(g.channel_id.as_deref())
        .bind_text(&g.description)
        .bind_text(policy)
        .bind_text(&g.id)
}

/// A package (bound by [`bind_package`]).
pub const INSERT_PACKAGE: &str = "INSERT INTO packages (id, app_id, version, arch, kind, \
     filename, size, sha1_base64, sha256_hex, external_url, created_at, format, metadata_size, \
     metadata_signature_rsa, deadline, is_delta, disable_payload_backoff, needs_admin) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

/// Binds package `p`, with its size as stored (`size`), to [`INSERT_PACKAGE`].
pub fn bind_package<'q, Q: PortableQuery<'q>>(q: Q, p: &'q Package, size: i64) -> Q {
    q.bind_text(&p.id)
        .bind_text(&p.app_id)
        .bind_text(&p.version)
        .bind_text(&p.arch)
        .bind_text(&p.kind)
        .bind_text(&p.filename)
        .bind_int(size)
        .bind_text(&p.sha1_base64)
        .bind_text(&p.sha256_hex)
        .bind_opt_text(p.external_url.as_deref())
        .bind_int(p.created_at)
        .bind_text(p.format.as_str())
        .bind_opt_int(p.metadata_size.and_then(|m| i64::try_from(m).ok()))
        .bind_opt_text(p.metadata_signature_rsa.as_deref())
        .bind_opt_text(p.deadline.as_deref())
        .bind_int(i64::from(p.is_delta))
        .bind_int(i64::from(p.disable_payload_backoff))
        .bind_int(i64::from(p.needs_admin))
}

/// The catalogue's generation.
pub const SELECT_CATALOGUE_GENERATION: &str =
    "SELECT generation FROM catalogue_generation WHERE id = 1";

/// A group's instances counted by version, status and hold reason (`$1` application, `$2`
/// group), over the `(app_id, group_id)` index.
pub const COUNT_GROUP_INSTANCES: &str = "SELECT version, status, \
     CASE WHEN status = 'on_hold' THEN status_detail ELSE '' END AS hold_reason, \
     COUNT(*) AS n FROM instances WHERE app_id = $1 AND group_id = $2 \
     GROUP BY version, status, hold_reason";

/// Every instance of a group (`$1` application, `$2` group).
pub const SELECT_GROUP_INSTANCES: &str =
    "SELECT * FROM instances WHERE app_id = $1 AND group_id = $2";

/// An instance's status history, newest first (`$1` machine, `$2` application, `$3` limit).
pub const SELECT_INSTANCE_HISTORY: &str = "SELECT * FROM instance_status_history \
     WHERE machine_id = $1 AND app_id = $2 ORDER BY id DESC LIMIT $3";

/// Deletes a machine's rows of one application (`$1` machine, `$2` application): its instance
/// row first (whose count tells whether there was one), then its history, events and refusals.
pub const DELETE_INSTANCE_OF_APP: [&str; 4] = [
    "DELETE FROM instances WHERE machine_id = $1 AND app_id = $2",
    "DELETE FROM instance_status_history WHERE machine_id = $1 AND app_id = $2",
    "DELETE FROM events WHERE machine_id = $1 AND app_id = $2",
    "DELETE FROM refused_versions WHERE machine_id = $1 AND app_id = $2",
];

/// Deletes a machine's rows of every application (`$1` machine), in the order of
/// [`DELETE_INSTANCE_OF_APP`].
pub const DELETE_INSTANCE: [&str; 4] = [
    "DELETE FROM instances WHERE machine_id = $1",
    "DELETE FROM instance_status_history WHERE machine_id = $1",
    "DELETE FROM events WHERE machine_id = $1",
    "DELETE FROM refused_versions WHERE machine_id = $1",
];

/// The key bound to a machine id (`$1`), decoded by [`super::sqlx_rows::credential_of`].
pub const SELECT_CREDENTIAL: &str = "SELECT machine_id, public_key, source, created_at \
     FROM machine_credentials WHERE machine_id = $1";

/// Binds a key to a machine id that has none (bound by [`bind_credential`]).
pub const INSERT_CREDENTIAL_UNLESS_BOUND: &str = "INSERT INTO machine_credentials \
     (machine_id, public_key, source, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (machine_id) DO NOTHING";

/// Binds a key to a machine id, replacing any it had (bound by [`bind_credential`]).
pub const UPSERT_CREDENTIAL: &str = "INSERT INTO machine_credentials \
     (machine_id, public_key, source, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (machine_id) DO UPDATE SET public_key = excluded.public_key, \
     source = excluded.source, created_at = excluded.created_at";

/// Binds credential `cred` to [`INSERT_CREDENTIAL_UNLESS_BOUND`] or [`UPSERT_CREDENTIAL`].
pub fn bind_credential<'q, Q: PortableQuery<'q>>(q: Q, cred: &'q MachineCredential) -> Q {
    q.bind_text(&cred.machine_id)
        .bind_text(&cred.public_key)
        .bind_text(cred.source.as_str())
        .bind_int(cred.created_at)
}

/// Removes a machine id's key (`$1` machine id).
pub const DELETE_CREDENTIAL: &str = "DELETE FROM machine_credentials WHERE machine_id = $1";

/// A FleetLock group's configured slot count (`$1` group).
pub const SELECT_LOCK_SLOTS: &str = "SELECT slots FROM fleetlock_groups WHERE name = $1";

/// Whether a client holds a slot of a FleetLock group (`$1` group, `$2` client id): a row of
/// `1` if so.
pub const SELECT_LOCK_HOLDER: &str =
    "SELECT 1 FROM fleetlock_holders WHERE group_name = $1 AND holder_id = $2";

/// The holders of a FleetLock group (`$1` group).
pub const COUNT_LOCK_HOLDERS: &str = "SELECT COUNT(*) FROM fleetlock_holders WHERE group_name = $1";

/// The FleetLock groups with holders whose slot count was never configured (those clients
/// brought).
pub const COUNT_UNCONFIGURED_LOCK_GROUPS: &str = "SELECT COUNT(DISTINCT group_name) \
     FROM fleetlock_holders WHERE group_name NOT IN (SELECT name FROM fleetlock_groups)";

/// A client takes a slot of a FleetLock group (`$1` group, `$2` client id, `$3` time).
pub const INSERT_LOCK_HOLDER: &str =
    "INSERT INTO fleetlock_holders (group_name, holder_id, since) VALUES ($1, $2, $3)";

/// A client gives its slot of a FleetLock group back (`$1` group, `$2` client id).
pub const DELETE_LOCK_HOLDER: &str =
    "DELETE FROM fleetlock_holders WHERE group_name = $1 AND holder_id = $2";

/// The configured FleetLock groups (`name`, `slots`).
pub const SELECT_LOCK_GROUPS: &str = "SELECT name, slots FROM fleetlock_groups";

/// Configures a FleetLock group's slot count (`$1` group, `$2` slots, `$3` time).
pub const UPSERT_LOCK_SLOTS: &str = "INSERT INTO fleetlock_groups (name, slots, updated_at) \
     VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET slots = excluded.slots, \
     updated_at = excluded.updated_at";

/// The version of every package a channel points at (channel id, version), for the rollout
/// protection rule ([`super::sqlx_rows::rollout_facts_of`]).
pub const SELECT_CHANNEL_TARGETS: &str = "SELECT cp.channel_id, p.version \
     FROM channel_packages cp JOIN packages p ON p.id = cp.package_id";

/// Every group's id, channel and policy as stored, for the rollout protection rule
/// ([`super::sqlx_rows::rollout_facts_of`]).
pub const SELECT_GROUP_FACTS: &str = "SELECT id, channel_id, policy FROM groups_";

/// The condition on `instances` rows that hold no grant in flight.
pub const NO_GRANT_IN_FLIGHT: &str = "NOT EXISTS (SELECT 1 FROM rollout_grants g \
     WHERE g.machine_id = instances.machine_id AND g.app_id = instances.app_id \
     AND g.state = 'in_flight')";

/// The condition on `rollout_grants` rows that are not `installed` by a machine the server
/// still knows (one with an instance row).
pub const NOT_INSTALLED_BY_A_KNOWN_MACHINE: &str = "(state <> 'installed' OR NOT EXISTS \
     (SELECT 1 FROM instances i WHERE i.machine_id = rollout_grants.machine_id \
     AND i.app_id = rollout_grants.app_id))";

/// The condition on `instance_status_history` rows that are not their instance's newest one.
pub const NOT_NEWEST_STATUS: &str = "id < (SELECT MAX(h2.id) FROM instance_status_history h2 \
     WHERE h2.machine_id = instance_status_history.machine_id \
     AND h2.app_id = instance_status_history.app_id)";

/// The column an aged pass over `table` walks, with the row id, in order (its index holds
/// both).
pub fn aged_time_column(table: AgedTable) -> &'static str {
    match table {
        AgedTable::Grants => "granted_at",
        AgedTable::Events | AgedTable::History | AgedTable::Activity => "at",
    }
}

/// The groups that have grants, in the database's text order (bound to nothing).
pub const SELECT_GRANT_GROUPS: &str =
    "SELECT DISTINCT group_id FROM rollout_grants ORDER BY group_id";

/// Stale instances without a grant in flight, after a cursor, oldest first (bound by
/// [`bind_stale_instances`], decoded by [`super::sqlx_rows::stale_instance_of`]). The walk is in
/// the database's text order (on SQLite byte-wise), through the index `instances_last_check`.
pub const SELECT_STALE_INSTANCES: &str = "SELECT machine_id, app_id, last_check_at \
     FROM instances WHERE last_check_at < $1 \
     AND (last_check_at, machine_id, app_id) > ($2, $3, $4) \
     AND NOT EXISTS (SELECT 1 FROM rollout_grants g \
     WHERE g.machine_id = instances.machine_id AND g.app_id = instances.app_id \
     AND g.state = 'in_flight') \
     ORDER BY last_check_at, machine_id, app_id LIMIT $5";

/// Binds the cutoff `before`, the cursor (the last instance of the previous page, `after`; from
/// the start without one) and the page size to [`SELECT_STALE_INSTANCES`].
pub fn bind_stale_instances<'q, Q: PortableQuery<'q>>(
    q: Q,
    before: i64,
    after: Option<&'q StaleInstance>,
    limit: u32,
) -> Q {
    let (at, machine, app) = after.map_or((i64::MIN, "", ""), |s| {
        (s.last_check_at, s.key.0.as_str(), s.key.1.as_str())
    });
    q.bind_int(before)
        .bind_int(at)
        .bind_text(machine)
        .bind_text(app)
        .bind_int(i64::from(limit))
}

/// The groups of an instance's grants (`$1` machine, `$2` application).
pub const SELECT_GRANT_GROUPS_OF_INSTANCE: &str =
    "SELECT DISTINCT group_id FROM rollout_grants WHERE machine_id = $1 AND app_id = $2";

/// The machine other than `$2` that has alias `$1`, if any.
pub const SELECT_ALIAS_HOLDER: &str =
    "SELECT machine_id FROM machine_aliases WHERE alias = $1 AND machine_id <> $2";

/// Sets a machine's alias (`$1` machine, `$2` alias, `$3` time).
pub const UPSERT_MACHINE_ALIAS: &str = "INSERT INTO machine_aliases (machine_id, alias, set_at) \
     VALUES ($1, $2, $3) ON CONFLICT (machine_id) DO UPDATE SET alias = excluded.alias, \
     set_at = excluded.set_at";

/// Removes a machine's alias (`$1` machine).
pub const DELETE_MACHINE_ALIAS: &str = "DELETE FROM machine_aliases WHERE machine_id = $1";

/// A version sample row (bound by [`bind_version_sample`]); a row already there is kept.
pub const INSERT_VERSION_SAMPLE: &str = "INSERT INTO group_version_samples \
     (app_id, group_id, at, version, other_versions, machines) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT DO NOTHING";

/// Deletes the version samples before `$1`.
pub const DELETE_VERSION_SAMPLES_BEFORE: &str = "DELETE FROM group_version_samples WHERE at < $1";

/// A group's version samples (`$1` app, `$2` group) from `$3` on, one instant in `$4` seconds
/// (without the totals that claim each instant).
pub const SELECT_VERSION_SAMPLES: &str = "SELECT app_id, group_id, at, version, other_versions, \
     machines FROM group_version_samples WHERE app_id = $1 AND group_id = $2 AND at >= $3 \
     AND at % $4 = 0 AND other_versions < 2 ORDER BY at";

/// The total of a group's sample (`$1` app, `$2` group, `$3` instant, `$4` machines): written
/// first, it claims the group's instant; a sample already claimed (by another replica, or
/// before a restart) is left as it is.
pub const CLAIM_VERSION_SAMPLE: &str = "INSERT INTO group_version_samples \
     (app_id, group_id, at, version, other_versions, machines) VALUES ($1, $2, $3, '', 2, $4) \
     ON CONFLICT DO NOTHING";

/// The rows of `rows` by group (app, group), in their order, with each group's total.
pub fn version_sample_groups(
    rows: &[super::VersionSample],
) -> Vec<(&super::VersionSample, Vec<&super::VersionSample>, i64)> {
    let mut out: Vec<(&super::VersionSample, Vec<&super::VersionSample>, i64)> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some((first, members, total))
                if first.app_id == r.app_id && first.group_id == r.group_id && first.at == r.at =>
            {
                members.push(r);
                *total = total.saturating_add(i64::try_from(r.machines).unwrap_or(i64::MAX));
            }
            _ => out.push((r, vec![r], i64::try_from(r.machines).unwrap_or(i64::MAX))),
        }
    }
    out
}

/// Binds version sample `v` to [`INSERT_VERSION_SAMPLE`].
pub fn bind_version_sample<'q, Q: PortableQuery<'q>>(q: Q, v: &'q super::VersionSample) -> Q {
    q.bind_text(&v.app_id)
        .bind_text(&v.group_id)
        .bind_int(v.at)
        .bind_text(v.version.as_deref().unwrap_or(""))
        .bind_int(i64::from(v.version.is_none()))
        .bind_int(i64::try_from(v.machines).unwrap_or(i64::MAX))
}

/// Instances that last checked in at or after `$1`, by application and group (PostgreSQL; the
/// SQLite store names the index to use).
pub const COUNT_CHECKED_IN: &str = "SELECT app_id, group_id, COUNT(*) FROM instances \
     WHERE last_check_at >= $1 GROUP BY app_id, group_id";

/// Records a sync check (bound by [`bind_sync_state`]): a failure keeps the last success's
/// version, package and time.
pub const UPSERT_SYNC_STATE: &str = "INSERT INTO sync_states (app_id, channel, arch, format, \
     checked_at, upstream_version, package_id, synced_at, error) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (app_id, channel, arch, format) DO UPDATE SET \
     checked_at = excluded.checked_at, \
     upstream_version = COALESCE(excluded.upstream_version, sync_states.upstream_version), \
     package_id = COALESCE(excluded.package_id, sync_states.package_id), \
     synced_at = COALESCE(excluded.synced_at, sync_states.synced_at), error = excluded.error";

/// Binds `s` to [`UPSERT_SYNC_STATE`].
pub fn bind_sync_state<'q, Q: PortableQuery<'q>>(q: Q, s: &'q super::SyncState) -> Q {
    q.bind_text(&s.app_id)
        .bind_text(&s.channel)
        .bind_text(&s.arch)
        .bind_text(s.format.as_str())
        .bind_int(s.checked_at)
        .bind_opt_text(s.upstream_version.as_deref())
        .bind_opt_text(s.package_id.as_deref())
        .bind_opt_int(s.synced_at)
        .bind_opt_text(s.error.as_deref())
}

/// Every sync state.
pub const SELECT_SYNC_STATES: &str = "SELECT app_id, channel, arch, format, checked_at, \
     upstream_version, package_id, synced_at, error FROM sync_states \
     ORDER BY app_id, channel, arch, format";

/// A row of [`SELECT_SYNC_STATES`].
pub type SyncStateRow = (
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// The sync state of its row (an unknown format reads as update_engine's).
pub fn sync_state_of(
    (app_id, channel, arch, format, checked_at, upstream_version, package_id, synced_at, error): SyncStateRow,
) -> super::SyncState {
    super::SyncState {
        app_id,
        channel,
        arch,
        format: crate::model::PackageFormat::parse(&format)
            .unwrap_or(crate::model::PackageFormat::UpdateEngine),
        checked_at,
        upstream_version,
        package_id,
        synced_at,
        error,
    }
}
