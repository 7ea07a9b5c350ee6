//! `update-server rollout`: a group's staged rollout — status, preview, pause, resume, and
//! setting the rollout policy.

use clap::Subcommand;
use serde_json::{Value, json};

use super::table::{print_table, s, ts};
use super::{ApiClient, Conn, enc, output};

/// `rollout` actions.
#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Target version, counts by state, share complete, failure rate, next step, halt reason.
    Status {
        /// appid.
        app: String,
        /// Group id, track or name.
        group: String,
    },
    /// Machines a percentage (default: the next ramp step) would add.
    Preview {
        /// appid.
        app: String,
        /// Group id, track or name.
        group: String,
        /// Percentage to preview.
        #[arg(long)]
        percent: Option<f64>,
        /// Machines to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Pause the rollout.
    Pause {
        /// appid.
        app: String,
        /// Group id, track or name.
        group: String,
    },
    /// Resume the rollout (also clears an auto-halt).
    Resume {
        /// appid.
        app: String,
        /// Group id, track or name.
        group: String,
    },
    /// Replace the rollout policy with a JSON document (see docs/usage/rollouts.md); `paused` and
    /// `machine_credential` are kept unless given.
    Set {
        /// appid.
        app: String,
        /// Group id, track or name.
        group: String,
        /// Policy JSON, e.g. '{"percentage":10,"concurrency_limit":50}'.
        policy: String,
    },
}

fn status_table(v: &Value) {
    crate::outln!(
        "group {} ({})  target {}  paused {}  percent {}",
        s(&v["group_name"]),
        s(&v["group_id"]),
        s(&v["target_version"]),
        s(&v["paused"]),
        s(&v["effective_percent"])
    );
    if !v["halted"].is_null() {
        crate::outln!(
            "HALTED at {}: {}",
            ts(&v["halted"]["at"]),
            s(&v["halted"]["reason"])
        );
    }
    if !v["next_step_at"].is_null() {
        crate::outln!(
            "next step at {} to {}%",
            ts(&v["next_step_at"]),
            s(&v["next_step_percent"])
        );
    }
    let share = v["share_complete"].as_f64().unwrap_or(0.0) * 100.0;
    let fail = v["failure_rate"].as_f64().unwrap_or(0.0) * 100.0;
    crate::outln!(
        "machines {}  on target {share:.1}%  failure rate {fail:.2}%",
        s(&v["machines"])
    );
    let mut rows = Vec::new();
    for (section, key) in [
        ("status", "by_status"),
        ("hold", "on_hold"),
        ("version", "by_version"),
    ] {
        if let Some(m) = v[key].as_object() {
            for (k, n) in m {
                rows.push(vec![section.to_owned(), k.clone(), s(n)]);
            }
        }
    }
    if let Some(m) = v["grants"].as_object() {
        for (k, n) in m {
            rows.push(vec!["grants".to_owned(), k.clone(), s(n)]);
        }
    }
    print_table(&["KIND", "KEY", "COUNT"], rows);
}

/// Runs a `rollout` action.
pub async fn run(conn: &Conn, cmd: RolloutCmd) -> anyhow::Result<()> {
    let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
    let base = |app: &str, group: &str| format!("/apps/{}/groups/{}", enc(app), enc(group));
    match cmd {
        RolloutCmd::Status { app, group } => output(
            conn,
            &c.get(&format!("{}/rollout", base(&app, &group))).await?,
            status_table,
        ),
        RolloutCmd::Preview {
            app,
            group,
            percent,
            limit,
        } => {
            let mut path = format!("{}/rollout/preview?limit={limit}", base(&app, &group));
            if let Some(p) = percent {
                path.push_str(&format!("&percent={p}"));
            }
            output(conn, &c.get(&path).await?, |v| {
                crate::outln!(
                    "{} → {}%: adds {} machines ({} already included)",
                    s(&v["current_percent"]),
                    s(&v["percent"]),
                    s(&v["added"]),
                    s(&v["already_included"])
                );
                print_table(
                    &["MACHINE", "ALIAS", "VERSION"],
                    v["machines"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|m| vec![s(&m["machine_id"]), s(&m["alias"]), s(&m["version"])]),
                );
            })
        }
        RolloutCmd::Pause { app, group } => {
            let v = c
                .post(&format!("{}/rollout/pause", base(&app, &group)), &json!({}))
                .await?;
            output(conn, &v, |_| crate::outln!("paused rollout of {group}"))
        }
        RolloutCmd::Resume { app, group } => {
            let v = c
                .post(
                    &format!("{}/rollout/resume", base(&app, &group)),
                    &json!({}),
                )
                .await?;
            output(conn, &v, |_| crate::outln!("resumed rollout of {group}"))
        }
        RolloutCmd::Set { app, group, policy } => {
            let mut p: Value = serde_json::from_str(&policy)
                .map_err(|e| anyhow::anyhow!("policy is not JSON: {e}"))?;
            let path = base(&app, &group);
            let current = c.get(&path).await?["policy"].clone();
            if let Some(o) = p.as_object_mut() {
                o.entry("paused").or_insert(current["paused"].clone());
                // A group that requires a machine credential keeps requiring it.
                if let Some(m) = current.get("machine_credential") {
                    o.entry("machine_credential").or_insert(m.clone());
                }
            }
            let v = c.patch(&path, &json!({ "policy": p })).await?;
            output(conn, &v, |g| {
                crate::outln!("policy of {}: {}", s(&g["name"]), g["policy"])
            })
        }
    }
}
