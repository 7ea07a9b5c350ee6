//! S1: one release end to end — publish v2 to `stable`, the agent stages it into slot B, the
//! server shows it installed, the machine reboots into B, `mark-good` passes, the next check
//! reports 3/2 and the server shows it complete. Run against one server and against two
//! replicas on PostgreSQL (`publish_stage_reboot_mark_good_complete::{single,replicas}`).
#![allow(clippy::unwrap_used)]

use platte_e2e::{APP, DiskLayout, Mode, USR_A, USR_B, World, gpt};

platte_e2e::in_both_modes!(publish_stage_reboot_mark_good_complete);

fn publish_stage_reboot_mark_good_complete(mode: Mode) {
    let w = World::start(mode).unwrap();
    w.setup_app().unwrap();
    let mut m = w
        .machine("host-1", 1, DiskLayout::default(), "1.0.0")
        .unwrap();

    // Nothing published yet: the machine checks in and stays on 1.0.0.
    let r = m.run_once().unwrap();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let inst = w
        .server
        .wait_instance(APP, &m.machine_id, "after its first check-in", |i| {
            !i.is_null()
        });
    assert_eq!(inst.unwrap()["version"], "1.0.0");

    let v2 = w.publish("2.0.0", 3 << 20).unwrap();
    w.point_stable(&v2).unwrap();
    let r = m.run_once().unwrap();
    assert_eq!(r.code, Some(2), "run --once did not stage:\n{}", r.stderr);

    // Slot B holds the image, is next to boot with one try; slot A is untouched.
    assert_eq!(m.slot_bytes(USR_B, v2.image.len()).unwrap(), v2.image);
    let (a, b) = (m.slot(USR_A).unwrap(), m.slot(USR_B).unwrap());
    assert!(a.successful && a.priority == 1, "slot A changed: {a:?}");
    assert!(
        b.priority > a.priority && b.tries == 1 && !b.successful,
        "slot B: {b:?}"
    );
    w.server
        .wait_status(APP, &m.machine_id, "installed")
        .unwrap();
    let st = m.state().unwrap();
    assert_eq!(st["phase"], "staged", "{st}");

    // "Reboot": the boot loader picks B and spends its try.
    let booted = m.boot().unwrap();
    assert_eq!(
        (booted.label.as_str(), booted.version.as_str()),
        ("USR-B", "2.0.0")
    );
    assert_eq!(m.slot(USR_B).unwrap().tries, 0);

    let r = m.mark_good().unwrap();
    assert_eq!(
        r.code,
        Some(0),
        "mark-good failed:\n{}{}",
        r.stdout,
        r.stderr
    );
    let b = m.slot(USR_B).unwrap();
    assert!(
        b.successful && b.priority > 0,
        "slot B after mark-good: {b:?}"
    );

    // The first check after the reboot reports 3/2 with previousversion 1.0.0.
    let r = m.run_once().unwrap();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let inst = w
        .server
        .wait_status(APP, &m.machine_id, "complete")
        .unwrap();
    assert_eq!(inst["version"], "2.0.0", "{inst}");
    let events = w.server.events(&m.machine_id).unwrap();
    let done = events
        .iter()
        .find(|e| e["event_type"] == 3 && e["event_result"] == 2)
        .unwrap_or_else(|| panic!("no 3/2 event: {events:?}"));
    assert_eq!(done["previous_version"], "1.0.0", "{done}");
    let st = m.state().unwrap();
    assert_eq!(st["phase"], "idle", "{st}");

    // B stays the boot slot from now on (successful, no tries needed), and both GPT copies are
    // valid for an independent tool too.
    assert_eq!(m.boot().unwrap().label, "USR-B");
    if let Some(out) = gpt::sgdisk_verify(&m.disk).unwrap() {
        assert!(out.contains("No problems found"), "sgdisk -v: {out}");
    }
    // With replicas, the agent's runs (each with connections of its own) reached both of them.
    if mode == Mode::Replicas {
        let per = w.agent_connections();
        assert!(
            per.len() == 2 && per.iter().all(|&n| n > 0),
            "agent connections per replica: {per:?}"
        );
    }
}
