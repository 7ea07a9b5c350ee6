//! `update-server fleetlock`: list FleetLock reboot groups with their holders, set a group's
//! slots, and force-release a holder.

use clap::Subcommand;
use serde_json::{Value, json};

use super::table::{print_table, s, ts};
use super::{ApiClient, Conn, enc, output, rows};

/// `fleetlock` actions.
#[derive(Debug, Subcommand)]
pub enum FleetLockCmd {
    /// List groups with their slots and holders.
    List,
    /// Set the number of reboot slots of a group (0 stops its reboots).
    SetSlots {
        /// FleetLock group.
        group: String,
        /// Slots.
        slots: u32,
    },
    /// Release a holder's slot (e.g. a machine that died while holding it).
    Release {
        /// FleetLock group.
        group: String,
        /// Client id of the holder.
        id: String,
    },
}

fn group_rows(groups: &[Value]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for g in groups {
        let slots = format!(
            "{}{}",
            s(&g["slots"]),
            if g["configured"].as_bool() == Some(true) {
                ""
            } else {
                " (default)"
            }
        );
        let holders = rows(&g["holders"]);
        if holders.is_empty() {
            out.push(vec![s(&g["group"]), slots.clone(), "-".into(), "-".into()]);
        }
        for h in holders {
            out.push(vec![
                s(&g["group"]),
                slots.clone(),
                s(&h["id"]),
                ts(&h["since"]),
            ]);
        }
    }
    out
}

/// Prints one group or a list of them, a row per holder.
fn groups_table(v: &Value) {
    print_table(&["GROUP", "SLOTS", "HOLDER", "SINCE"], group_rows(rows(v)));
}

/// Runs a `fleetlock` action.
pub async fn run(conn: &Conn, cmd: FleetLockCmd) -> anyhow::Result<()> {
    let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
    match cmd {
        FleetLockCmd::List => output(conn, &c.get("/fleetlock/groups").await?, groups_table),
        FleetLockCmd::SetSlots { group, slots } => output(
            conn,
            &c.patch(
                &format!("/fleetlock/groups/{}", enc(&group)),
                &json!({ "slots": slots }),
            )
            .await?,
            groups_table,
        ),
        FleetLockCmd::Release { group, id } => {
            c.delete(&format!(
                "/fleetlock/groups/{}/holders/{}",
                enc(&group),
                enc(&id)
            ))
            .await?;
            output(conn, &json!({"released": id, "group": group}), |_| {
                crate::outln!("released {id} from FleetLock group {group}")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_holder_and_one_for_an_empty_group() {
        let v = json!([
            {"group": "a", "slots": 2, "configured": true,
             "holders": [{"id": "m1", "since": 0}, {"id": "m2", "since": 60}]},
            {"group": "b", "slots": 1, "configured": false, "holders": []}
        ]);
        let r = group_rows(rows(&v));
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], vec!["a", "2", "m1", "1970-01-01 00:00:00"]);
        assert_eq!(r[1][2], "m2");
        assert_eq!(r[2], vec!["b", "1 (default)", "-", "-"]);
    }
}
