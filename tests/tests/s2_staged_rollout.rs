//! S2: a staged rollout across 10 machines. At 30 % exactly the machines the server's rollout
//! preview lists get the release; raising the rollout to 100 % updates the rest. Run against one
//! server and against two replicas on PostgreSQL.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use platte_e2e::{APP, DiskLayout, Machine, Mode, World};
use serde_json::json;

fn preview(w: &World, percent: u32) -> BTreeSet<String> {
    let p = w
        .server
        .cli_json(&[
            "rollout",
            "preview",
            APP,
            "stable",
            "--percent",
            &percent.to_string(),
            "--limit",
            "100",
        ])
        .unwrap();
    assert_eq!(
        p["added"].as_u64().unwrap() as usize,
        p["machines"].as_array().unwrap().len(),
        "{p}"
    );
    p["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs `run --once` on every machine; returns the ids of those that staged the update.
fn check_all(fleet: &[Machine]) -> BTreeSet<String> {
    let mut staged = BTreeSet::new();
    for m in fleet {
        let r = m.run_once().unwrap();
        match r.code {
            Some(2) => {
                staged.insert(m.machine_id.clone());
            }
            Some(0) => {}
            other => panic!("{}: run --once exited {other:?}:\n{}", m.name, r.stderr),
        }
    }
    staged
}

platte_e2e::in_both_modes!(thirty_percent_then_everyone);

fn thirty_percent_then_everyone(mode: Mode) {
    let w = World::start(mode).unwrap();
    w.setup_app().unwrap();
    w.set_policy(&json!({"percentage": 0})).unwrap();
    let layout = DiskLayout {
        slot_a: 2 << 20,
        slot_b: 2 << 20,
    };
    let fleet: Vec<Machine> = (0..10)
        .map(|i| {
            w.machine(&format!("node-{i:02}"), 100 + i, layout, "1.0.0")
                .unwrap()
        })
        .collect();
    // Every machine checks in once, so the server knows the fleet.
    assert!(check_all(&fleet).is_empty());
    for m in &fleet {
        w.server
            .wait_instance(APP, &m.machine_id, "checked in", |i| !i.is_null())
            .unwrap();
    }

    let v2 = w.publish("2.0.0", 1 << 20).unwrap();
    w.point_stable(&v2).unwrap();
    let first = preview(&w, 30);
    assert!(
        (1..=6).contains(&first.len()),
        "30 % of 10 machines by bucket should be a few of them: {first:?}"
    );
    // At 0 % nobody gets it.
    assert!(check_all(&fleet).is_empty(), "machines updated at 0 %");

    w.set_policy(&json!({"percentage": 30})).unwrap();
    let staged = check_all(&fleet);
    assert_eq!(
        staged, first,
        "the machines updated at 30 % are not the previewed ones"
    );
    for m in fleet.iter().filter(|m| first.contains(&m.machine_id)) {
        w.server
            .wait_status(APP, &m.machine_id, "installed")
            .unwrap();
    }
    // Checking again changes nothing: the rest stay held back.
    assert!(check_all(&fleet).is_empty());

    let rest = preview(&w, 100);
    let all: BTreeSet<String> = fleet.iter().map(|m| m.machine_id.clone()).collect();
    assert_eq!(
        rest,
        all.difference(&first).cloned().collect::<BTreeSet<_>>(),
        "100 % should add exactly the machines not yet included"
    );
    w.set_policy(&json!({"percentage": 100})).unwrap();
    assert_eq!(check_all(&fleet), rest);
    for m in &fleet {
        w.server
            .wait_status(APP, &m.machine_id, "installed")
            .unwrap();
    }
    let status = w.rollout_status().unwrap();
    assert_eq!(status["target_version"], "2.0.0", "{status}");
}
