//! Reads a Nebraska PostgreSQL database into [`NebraskaDb`], read-only, in one transaction.
//! Tables and columns Nebraska added over time are looked up first: `flatcar_action` (or the
//! older `coreos_action`), `package_file.hash256`, `application.product_id`,
//! `channel_package_floors` and `group_local` (whose policy overrides win) are read when
//! present. A database older than Nebraska's architecture and track columns is refused: start
//! that Nebraska once so it migrates its database.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, bail};
use sqlx::Connection as _;

use super::schema::{Action, App, Channel, File, Group, NebraskaDb, Package};

/// The tables and columns of the database's current schema.
struct Catalog {
    columns: BTreeSet<(String, String)>,
}

impl Catalog {
    fn has_table(&self, table: &str) -> bool {
        self.columns.iter().any(|(t, _)| t == table)
    }

    fn has(&self, table: &str, column: &str) -> bool {
        self.columns
            .contains(&(table.to_owned(), column.to_owned()))
    }

    /// `column` when `table` has it, else a NULL of `ty` (for optional columns).
    fn or_null(&self, table: &str, column: &str, alias: &str, ty: &str) -> String {
        if self.has(table, column) {
            format!("{alias}.{column}")
        } else {
            format!("NULL::{ty}")
        }
    }
}

/// Reads every table the importer maps from the Nebraska database at `url`
/// (`postgres://USER@HOST/DB`).
pub async fn read(url: &str) -> anyhow::Result<NebraskaDb> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to Nebraska's database")?;
    let mut tx = conn.begin().await.context("starting a read transaction")?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await
        .context("making the transaction read-only")?;
    let cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema()",
    )
    .fetch_all(&mut *tx)
    .await
    .context("listing the database's tables")?;
    let cat = Catalog {
        columns: cols.into_iter().collect(),
    };
    for (table, column) in [
        ("application", "id"),
        ("package", "arch"),
        ("channel", "arch"),
        ("groups", "track"),
    ] {
        if !cat.has(table, column) {
            bail!(
                "not a Nebraska database of a supported version: table {table} has no column \
                 {column} (start a current Nebraska on it once so that it migrates it)"
            );
        }
    }

    let product_id = cat.or_null("application", "product_id", "a", "text");
    let apps: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(&format!(
        "SELECT a.id::text, a.name::text, a.description, {product_id}::text \
         FROM application a ORDER BY a.created_ts, a.id"
    ))
    .fetch_all(&mut *tx)
    .await
    .context("reading table application")?;

    type PackageRow = (
        String,
        String,
        i32,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        i32,
    );
    let packages: Vec<PackageRow> = sqlx::query_as(
        "SELECT id::text, application_id::text, type, version::text, url::text, \
         filename::text, size::text, hash::text, arch FROM package \
         ORDER BY application_id, created_ts, id",
    )
    .fetch_all(&mut *tx)
    .await
    .context("reading table package")?;

    let mut actions: BTreeMap<String, Action> = BTreeMap::new();
    if let Some(table) = ["flatcar_action", "coreos_action"]
        .into_iter()
        .find(|t| cat.has_table(t))
    {
        type ActionRow = (
            String,
            Option<String>,
            Option<bool>,
            Option<bool>,
            Option<bool>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<ActionRow> = sqlx::query_as(&format!(
            "SELECT package_id::text, sha256::text, needs_admin, is_delta, \
             disable_payload_backoff, metadata_signature_rsa::text, metadata_size::text, \
             deadline::text FROM {table} ORDER BY created_ts, id"
        ))
        .fetch_all(&mut *tx)
        .await
        .with_context(|| format!("reading table {table}"))?;
        for (pkg, sha256, admin, delta, backoff, rsa, meta, deadline) in rows {
            // Nebraska answers with one action per package: the first one.
            actions.entry(pkg).or_insert(Action {
                sha256,
                needs_admin: admin,
                is_delta: delta,
                disable_payload_backoff: backoff,
                metadata_signature_rsa: rsa,
                metadata_size: meta,
                deadline,
            });
        }
    }

    let mut files: BTreeMap<String, Vec<File>> = BTreeMap::new();
    if cat.has_table("package_file") {
        let hash256 = cat.or_null("package_file", "hash256", "f", "text");
        type FileRow = (
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<FileRow> = sqlx::query_as(&format!(
            "SELECT f.package_id::text, f.name::text, f.size::text, f.hash::text, \
             {hash256}::text FROM package_file f ORDER BY f.package_id, f.id"
        ))
        .fetch_all(&mut *tx)
        .await
        .context("reading table package_file")?;
        for (pkg, name, size, sha1, sha256) in rows {
            files.entry(pkg).or_default().push(File {
                name,
                size,
                sha1,
                sha256,
            });
        }
    }

    let channels: Vec<(String, String, String, i32, Option<String>)> = sqlx::query_as(
        "SELECT id::text, application_id::text, name::text, arch, package_id::text \
         FROM channel ORDER BY application_id, name, arch",
    )
    .fetch_all(&mut *tx)
    .await
    .context("reading table channel")?;

    // The effective policy: a group_local override, where one is set, wins.
    let local = cat.has_table("group_local");
    let from = if local {
        "groups g LEFT JOIN group_local l ON l.group_id = g.id"
    } else {
        "groups g"
    };
    let col = |c: &str| {
        if local {
            format!("COALESCE(l.{c}_override, g.{c})")
        } else {
            format!("g.{c}")
        }
    };
    type GroupRow = (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
        bool,
        bool,
        Option<String>,
        String,
        i32,
        String,
    );
    let groups: Vec<GroupRow> = sqlx::query_as(&format!(
        "SELECT g.id::text, g.application_id::text, g.name::text, g.description, \
         g.track::text, g.channel_id::text, {}, {}, {}, {}::text, {}::text, {}, {}::text \
         FROM {from} ORDER BY g.application_id, g.created_ts, g.id",
        col("policy_updates_enabled"),
        col("policy_safe_mode"),
        col("policy_office_hours"),
        col("policy_timezone"),
        col("policy_period_interval"),
        col("policy_max_updates_per_period"),
        col("policy_update_timeout"),
    ))
    .fetch_all(&mut *tx)
    .await
    .context("reading table groups")?;

    let floors: Vec<(String, String)> = if cat.has_table("channel_package_floors") {
        sqlx::query_as(
            "SELECT channel_id::text, package_id::text FROM channel_package_floors \
             ORDER BY channel_id, package_id",
        )
        .fetch_all(&mut *tx)
        .await
        .context("reading table channel_package_floors")?
    } else {
        Vec::new()
    };
    let blacklist: Vec<(String, String)> = if cat.has_table("package_channel_blacklist") {
        sqlx::query_as(
            "SELECT package_id::text, channel_id::text FROM package_channel_blacklist \
             ORDER BY channel_id, package_id",
        )
        .fetch_all(&mut *tx)
        .await
        .context("reading table package_channel_blacklist")?
    } else {
        Vec::new()
    };
    tx.rollback().await.context("ending the read transaction")?;
    let _ = conn.close().await;

    Ok(NebraskaDb {
        apps: apps
            .into_iter()
            .map(|(id, name, description, product_id)| App {
                id,
                name,
                description,
                product_id,
            })
            .collect(),
        packages: packages
            .into_iter()
            .map(
                |(id, app_id, kind, version, url, filename, size, sha1, arch)| Package {
                    action: actions.remove(&id),
                    files: files.remove(&id).unwrap_or_default(),
                    id,
                    app_id,
                    kind,
                    version,
                    url,
                    filename,
                    size,
                    sha1,
                    arch,
                },
            )
            .collect(),
        channels: channels
            .into_iter()
            .map(|(id, app_id, name, arch, package_id)| Channel {
                id,
                app_id,
                name,
                arch,
                package_id,
            })
            .collect(),
        groups: groups
            .into_iter()
            .map(
                |(
                    id,
                    app_id,
                    name,
                    description,
                    track,
                    channel_id,
                    updates_enabled,
                    safe_mode,
                    office_hours,
                    timezone,
                    period_interval,
                    max_updates_per_period,
                    update_timeout,
                )| Group {
                    id,
                    app_id,
                    name,
                    description: description.unwrap_or_default(),
                    track: track.unwrap_or_default(),
                    channel_id,
                    updates_enabled,
                    safe_mode,
                    office_hours,
                    timezone,
                    period_interval,
                    max_updates_per_period,
                    update_timeout,
                },
            )
            .collect(),
        floors,
        blacklist,
    })
}
