//! `update-server import-nebraska`: moves a Nebraska installation's applications, packages,
//! channels and groups (with their rollout policy) into a running Platte server through its
//! admin API, and reports what it could not map and why.
//!
//! Map: [`schema`] is Nebraska's data as read (one struct per table, its architecture and
//! package-type codes); [`read`] reads it from Nebraska's PostgreSQL database, read-only;
//! [`plan`] maps it onto Platte's API bodies (pure, unit-tested); [`apply`] reads what Platte
//! has and carries the plan out.
//!
//! # The mapping (docs/usage/flatcar.md, "Moving from Nebraska", is the operator's copy)
//!
//! | Nebraska | Platte |
//! | --- | --- |
//! | application (UUID, name, description) | application of the same id; `completes_on` `reboot` for Flatcar (`e96281a6-…`), `install` for any other (Nebraska counts 3/1 complete for those) |
//! | application `product_id` | not mapped (clients must send the appid) |
//! | package of type Flatcar (1) with a Flatcar action | update_engine package by reference: `url` + `filename` as its URL, `size`, `hash` (SHA-1), the action's `sha256`, `metadata_size`, `metadata_signature_rsa`, `deadline`, `is_delta`, `disable_payload_backoff`, `needs_admin`; `--verify` / `--host` passed through |
//! | package extra files (`package_file`) | the package's `files` (name, size, `hash`, `hash256`); one without a SHA-256 is left out and reported |
//! | other packages (Docker, Rocket, other; Flatcar without SHA-256) | not mapped |
//! | architecture codes 0 / 1 / 2 / 3 | `all` / `amd64` / `arm64` / `x86` |
//! | channels of one name (one row per architecture) | one channel, a pointer per architecture |
//! | group (UUID, name, description, channel) | group with the same id, name, description and channel |
//! | group track | track (the group id when Nebraska's is empty); a second group of the application with the same track gets its id as track, reported |
//! | `policy_updates_enabled = false` | `paused: true` |
//! | `policy_max_updates_per_period` N over `policy_period_interval` P (N < 900000) | `rate_limit {count: N, period_secs: P}` and `concurrency_limit: N` (Nebraska also holds while N updates are in progress) |
//! | `policy_update_timeout` | `update_timeout_secs` |
//! | `policy_office_hours` with `policy_timezone` TZ | `windows: ["Mon-Fri 09:00 8h TZ"]` (Nebraska's 9 to 17 on weekdays); without a valid zone, `paused` (Nebraska grants nothing then), reported |
//! | `policy_safe_mode` | not mapped (no equivalent), reported |
//! | floors of the group's channel (`channel_package_floors`) | `floors` (their versions) |
//! | packages blacklisted for the group's channel | `blocked_versions` |
//! | `group_local` policy overrides | applied before mapping |
//!
//! Idempotent: an application of the same id, a package of the same application, version,
//! architecture and format, a channel of the same name, a group of the same id or track are
//! left as they are and reported as existing.

pub mod apply;
pub mod plan;
pub mod read;
pub mod schema;

use anyhow::Context as _;
use clap::Args;

use crate::cli::{ApiClient, Conn};
use apply::{Done, Outcome, Report};

/// Options of `update-server import-nebraska`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Nebraska's PostgreSQL database: `postgres://USER:PASSWORD@HOST/DB` (read only).
    #[arg(
        long,
        value_name = "URL",
        env = "NEBRASKA_DATABASE",
        hide_env_values = true
    )]
    pub from: String,
    /// Print the plan and what does not map; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Have the server download and check every payload and extra file before recording it.
    #[arg(long)]
    pub verify: bool,
    /// Have the server download, check and host every payload and extra file.
    #[arg(long)]
    pub host: bool,
    /// The Platte server.
    #[command(flatten)]
    pub conn: Conn,
}

/// `url` without its password, for messages.
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(the --from URL, which is not a URL)".to_owned(),
    }
}

/// Runs the import: reads Nebraska, reads Platte, plans, applies (unless a dry run) and prints
/// the report. Fails when a step failed.
pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let db = read::read(&args.from)
        .await
        .with_context(|| format!("reading Nebraska's database {}", shown(&args.from)))?;
    let client = ApiClient::new(&args.conn.server, args.conn.token.as_deref())?;
    let existing = apply::existing(&client, &db)
        .await
        .context("reading what the Platte server has")?;
    let opts = plan::Options {
        verify: args.verify,
        host: args.host,
    };
    let plan = plan::plan(&db, &existing, opts);
    let report = apply::apply(&client, &plan, args.dry_run).await;
    if args.conn.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    if report.failed > 0 {
        anyhow::bail!(
            "{} of the import's steps failed (see above); run it again once fixed: what \
             exists is left as it is",
            report.failed
        );
    }
    Ok(())
}

fn outcome(d: &Done) -> String {
    match (d.outcome, &d.error) {
        (Outcome::Created, _) => "created".to_owned(),
        (Outcome::Exists, _) => "exists, left as it is".to_owned(),
        (Outcome::WouldCreate, _) => format!("would create: {}", d.body),
        (Outcome::Failed, e) => format!("FAILED: {}", e.as_deref().unwrap_or("?")),
    }
}

/// Prints a report for a reader.
fn print(r: &Report) {
    if r.dry_run {
        crate::outln!("dry run: nothing is written");
    }
    for (title, items) in [
        ("applications", &r.apps),
        ("packages", &r.packages),
        ("channels", &r.channels),
        ("groups", &r.groups),
    ] {
        crate::outln!("{title}:");
        if items.is_empty() {
            crate::outln!("  (none)");
        }
        for d in items {
            crate::outln!("  {} {}: {}", d.app, d.item, outcome(d));
        }
    }
    if !r.notes.is_empty() {
        crate::outln!("notes:");
        for n in &r.notes {
            crate::outln!("  {n}");
        }
    }
    if r.unmapped.is_empty() {
        crate::outln!("everything mapped");
    } else {
        crate::outln!("not mapped:");
        for u in &r.unmapped {
            crate::outln!("  {} [{}]: {}", u.item, u.id, u.reason);
        }
    }
    match (r.dry_run, r.created, r.failed) {
        (false, 0, 0) => crate::outln!("nothing changed: all {} items already existed", r.existing),
        (true, n, _) => crate::outln!("would create {n}; {} already exist", r.existing),
        (false, n, f) => crate::outln!("created {n}, {} already existed, {f} failed", r.existing),
    }
}
