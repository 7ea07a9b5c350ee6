//! `update-server sync`: runs a pass of the server's upstream sync now, or (`sync status`)
//! shows each followed channel's last check, through the admin API.

use clap::Subcommand;
use serde_json::Value;

use super::table::{print_table, s, ts};
use super::{ApiClient, Conn, output, rows};

/// `sync` actions (none: run a pass now).
#[derive(Debug, Subcommand)]
pub enum SyncCmd {
    /// Each followed channel's last check: when, what the upstream offered, the local package,
    /// the last success and the last error.
    Status,
}

fn status_table(v: &Value) {
    crate::outln!(
        "upstream: {}   every {} s",
        v["upstream"].as_str().unwrap_or("(not configured)"),
        v["interval_secs"]
    );
    print_table(
        &[
            "APP", "CHANNEL", "ARCH", "MODE", "CHECKED", "UPSTREAM", "PACKAGE", "SYNCED", "ERROR",
        ],
        rows(&v["channels"]).iter().map(|c| {
            let last = &c["last"];
            vec![
                s(&c["spec"]["app"]),
                s(&c["spec"]["channel"]),
                s(&c["spec"]["arch"]),
                s(&c["spec"]["mode"]),
                ts(&last["checked_at"]),
                s(&last["upstream_version"]),
                s(&last["package_id"]),
                ts(&last["synced_at"]),
                s(&last["error"]),
            ]
        }),
    );
}

fn report_table(v: &Value) {
    print_table(
        &["APP", "CHANNEL", "ARCH", "OUTCOME", "VERSION", "DETAIL"],
        rows(v).iter().map(|c| {
            let detail = match c["outcome"].as_str() {
                Some("followed") => format!("from {}", s(&c["from"])),
                Some("imported") => format!("package {}", s(&c["package_id"])),
                Some("failed") => s(&c["error"]),
                _ => String::new(),
            };
            vec![
                s(&c["app"]),
                s(&c["channel"]),
                s(&c["arch"]),
                s(&c["outcome"]),
                s(&c["version"]),
                detail,
            ]
        }),
    );
}

/// Runs `sync` (a pass now) or `sync status`. A pass in which a channel failed exits non-zero.
pub async fn run(conn: &Conn, cmd: Option<SyncCmd>) -> anyhow::Result<()> {
    let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
    match cmd {
        Some(SyncCmd::Status) => output(conn, &c.get("/sync").await?, status_table),
        None => {
            let v = c.post("/sync", &serde_json::json!({})).await?;
            output(conn, &v, report_table)?;
            let failed = rows(&v).iter().filter(|c| c["outcome"] == "failed").count();
            if failed > 0 {
                anyhow::bail!("{failed} channel(s) failed to sync");
            }
            Ok(())
        }
    }
}
