//! `update-server prune [--dry-run]`: runs the server's retention pruner now through the admin
//! API (`POST /api/v1/maintenance/prune`) and prints the rows deleted per table.

use serde_json::Value;

use super::table::{render_table, s, ts};
use super::{ApiClient, Conn, output};

/// The tables of a prune report, in the order they are printed.
const TABLES: [&str; 6] = [
    "events",
    "instance_status_history",
    "activity",
    "rollout_grants",
    "instances",
    "refused_versions",
];

/// A prune report as text: one row per table with its cutoff, then a summary line.
pub fn render(v: &Value) -> String {
    let dry = v["dry_run"].as_bool() == Some(true);
    let cut = &v["cutoffs"];
    let cutoff = |table: &str| match table {
        "events" => ts(&cut["events_before"]),
        "instance_status_history" => ts(&cut["history_before"]),
        "activity" => ts(&cut["activity_before"]),
        "rollout_grants" => ts(&cut["grants_before"]),
        "instances" | "refused_versions" => ts(&cut["forget_instances_before"]),
        _ => "-".to_owned(),
    };
    let rows = TABLES
        .iter()
        .map(|t| vec![(*t).to_owned(), s(&v["rows"][*t]), cutoff(t)]);
    let head = if dry { "WOULD DELETE" } else { "DELETED" };
    let mut out = render_table(&["TABLE", head, "OLDER THAN (- = kept forever)"], rows);
    if dry {
        out.push_str(&format!(
            "dry run: nothing deleted; {} rows would be\n",
            s(&v["total"])
        ));
    } else {
        out.push_str(&format!(
            "{} rows deleted in {} batches (longest {:.1} ms) in {:.1} ms{}\n",
            s(&v["total"]),
            s(&v["batches"]),
            v["longest_batch_ms"].as_f64().unwrap_or(0.0),
            v["duration_ms"].as_f64().unwrap_or(0.0),
            if v["interrupted"].as_bool() == Some(true) {
                " (interrupted: the server is shutting down)"
            } else {
                ""
            }
        ));
    }
    out
}

/// Runs `prune`.
pub async fn run(conn: &Conn, dry_run: bool) -> anyhow::Result<()> {
    let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
    let path = if dry_run {
        "/maintenance/prune?dry_run=true"
    } else {
        "/maintenance/prune"
    };
    let v = c.post(path, &serde_json::json!({})).await?;
    output(conn, &v, |v| crate::out!("{}", render(v)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_report_shows_every_table_its_cutoff_and_the_totals() {
        let v = json!({
            "dry_run": false, "at": 86_400 * 100, "total": 7, "batches": 3,
            "longest_batch_ms": 12.25, "duration_ms": 40.0,
            "cutoffs": {"events_before": 86_400 * 10, "history_before": null,
                        "activity_before": 0, "grants_before": null,
                        "forget_instances_before": null},
            "rows": {"events": 5, "instance_status_history": 0, "activity": 2,
                     "rollout_grants": 0, "instances": 0, "refused_versions": 0}
        });
        let text = render(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        assert!(
            lines[0].starts_with("TABLE") && lines[0].contains("DELETED"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("events") && lines[1].contains("1970-01-11"),
            "{text}"
        );
        assert!(
            lines[2].contains(" 0 ") && lines[2].ends_with('-'),
            "{text}"
        );
        assert_eq!(
            lines[7],
            "7 rows deleted in 3 batches (longest 12.2 ms) in 40.0 ms"
        );
        let dry = render(&json!({"dry_run": true, "total": 9, "rows": {}, "cutoffs": {}}));
        assert!(dry.contains("WOULD DELETE"), "{dry}");
        assert!(
            dry.ends_with("dry run: nothing deleted; 9 rows would be\n"),
            "{dry}"
        );
    }
}
