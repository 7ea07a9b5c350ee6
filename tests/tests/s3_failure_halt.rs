//! S3: a release that fails to install on most machines (their USR-B partitions, from an older
//! disk layout, are too small for it) halts the rollout by itself; no further machine is granted
//! it, including those that could have installed it. Run against one server and against two
//! replicas on PostgreSQL.
#![allow(clippy::unwrap_used)]

use platte_e2e::{APP, DiskLayout, Machine, Mode, USR_B, World};
use serde_json::json;

platte_e2e::in_both_modes!(failing_installs_halt_the_rollout);

fn failing_installs_halt_the_rollout(mode: Mode) {
    let w = World::start(mode).unwrap();
    w.setup_app().unwrap();
    w.set_policy(&json!({"auto_halt": {"max_failure_rate": 0.5, "min_attempts": 3}}))
        .unwrap();
    let small = DiskLayout {
        slot_a: 1 << 20,
        slot_b: 1 << 20,
    };
    let large = DiskLayout {
        slot_a: 2 << 20,
        slot_b: 2 << 20,
    };
    // Seven machines with the old, small layout; the first three to check in are among them.
    let fleet: Vec<(Machine, bool)> = (0..10u64)
        .map(|i| {
            let fits = matches!(i, 4 | 6 | 8);
            let layout = if fits { large } else { small };
            (
                w.machine(&format!("node-{i:02}"), 300 + i, layout, "1.0.0")
                    .unwrap(),
                fits,
            )
        })
        .collect();

    // The server knows the fleet before the rollout begins (each machine checked in once, with
    // nothing to install yet): established machines, whose failures count in full for
    // auto-halt (a machine first seen after the rollout began counts 0.1, as it may be an
    // invented id). The rollout begins in a later second than these first contacts.
    for (m, _) in &fleet {
        let r = m.run_once().unwrap();
        assert_eq!(r.code, Some(0), "{}: {}", m.name, r.stderr);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()),
    ));

    let v2 = w.publish("2.0.0", (1 << 20) + (512 << 10)).unwrap();
    w.point_stable(&v2).unwrap();

    // The first three are granted it and fail: SlotTooSmall (3102), reported as 3/0.
    for (m, _) in &fleet[..3] {
        let r = m.run_once().unwrap();
        assert_eq!(r.code, Some(1), "{}: {}", m.name, r.stderr);
        let st = m.state().unwrap();
        assert_eq!(st["last_error"]["code"], 3102, "{st}");
        assert!(!m.slot(USR_B).unwrap().bootable());
    }
    let status = w.rollout_status().unwrap();
    assert!(
        status["halted"].is_object(),
        "the rollout did not halt after 3 failures in 3 attempts: {status}"
    );
    assert_eq!(status["halted"]["version"], "2.0.0", "{status}");

    // Nobody else is granted it: every other machine, fitting or not, hears `noupdate`.
    for (m, fits) in &fleet[3..] {
        let r = m.run_once().unwrap();
        assert_eq!(r.code, Some(0), "{} (fits: {fits}): {}", m.name, r.stderr);
        assert!(
            !m.slot(USR_B).unwrap().bootable(),
            "{} installed it",
            m.name
        );
        let i = w
            .server
            .wait_instance(APP, &m.machine_id, "held", |i| i["status"] == "on_hold")
            .unwrap();
        assert_eq!(i["version"], "1.0.0", "{i}");
    }
    let status = w.rollout_status().unwrap();
    assert_eq!(status["grants"]["failed"], 3, "{status}");
    assert_eq!(status["grants"]["attempts"], 3, "{status}");
    // The failed machines are not granted it again either.
    for (m, _) in &fleet[..3] {
        let r = m.run_once().unwrap();
        assert_eq!(r.code, Some(0), "{}: {}", m.name, r.stderr);
    }
}
