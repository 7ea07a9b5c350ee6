//! S4: a bad release. The new slot never passes `mark-good` (a failing health check), so the
//! boot loader falls back to A on the next boot (gptprio: no tries left, not successful); the
//! agent reports the rollback and deny-lists the version; the server records the version as
//! refused for that machine and offers it no more. When an operator clears the server's refusal,
//! the agent's deny list still keeps it from installing the version again. Run against one server
//! and against two replicas on PostgreSQL.
#![allow(clippy::unwrap_used)]

use platte_e2e::{APP, DiskLayout, Mode, USR_A, USR_B, World};

platte_e2e::in_both_modes!(failed_health_check_falls_back_reports_and_deny_lists);

fn failed_health_check_falls_back_reports_and_deny_lists(mode: Mode) {
    let w = World::start(mode).unwrap();
    w.setup_app().unwrap();
    let mut m = w
        .machine("host-bad", 4, DiskLayout::default(), "1.0.0")
        .unwrap();
    m.write_dropin(
        "50-health.toml",
        "[health.checks.app]\ncommand = [\"/bin/false\"]\ntimeout_secs = 5\n",
    )
    .unwrap();
    let v2 = w.publish("2.0.0", 3 << 20).unwrap();
    w.point_stable(&v2).unwrap();

    let r = m.run_once().unwrap();
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    w.server
        .wait_status(APP, &m.machine_id, "installed")
        .unwrap();

    // Boot into B; the health gate fails and leaves it unmarked.
    assert_eq!(m.boot().unwrap().label, "USR-B");
    let r = m.mark_good().unwrap();
    assert_eq!(
        r.code,
        Some(1),
        "mark-good passed a failing check:\n{}{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stderr.contains("app"),
        "the failed check is not named: {}",
        r.stderr
    );
    let b = m.slot(USR_B).unwrap();
    assert!(!b.successful && b.tries == 0, "slot B: {b:?}");

    // Next boot: the boot loader falls back to A, still running 1.0.0.
    let booted = m.boot().unwrap();
    assert_eq!(
        (booted.label.as_str(), booted.version.as_str()),
        ("USR-A", "1.0.0")
    );

    // The agent sees it, reports the rollback (3/0, RollbackError 44) and deny-lists 2.0.0; the
    // server refuses 2.0.0 for this machine from now on: no offer (exit 0), held `rolled_back`.
    let r = m.run_once().unwrap();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let st = m.state().unwrap();
    let deny: Vec<&str> = st["deny_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(deny, ["2.0.0"], "{st}");
    let events = w.server.events(&m.machine_id).unwrap();
    let rollback = events
        .iter()
        .find(|e| e["event_type"] == 3 && e["event_result"] == 0)
        .unwrap_or_else(|| panic!("no 3/0 event: {events:?}"));
    let code = rollback["error_code"].as_i64().unwrap();
    assert_eq!(code & 0xffff, 44, "{rollback}");
    // The server's history of the machine shows the rollback as an error with that code.
    let show = w
        .server
        .get(&format!("/instances/{}", m.machine_id))
        .unwrap();
    let text = show.to_string();
    assert!(
        text.contains("\"error\""),
        "no error status in the history: {show}"
    );
    let refused: Vec<&str> = show["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["refused_versions"].as_array().into_iter().flatten())
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(refused, ["2.0.0"], "{show}");
    w.server
        .wait_instance(APP, &m.machine_id, "held `rolled_back`", |i| {
            i["status"] == "on_hold" && i["status_detail"] == "rolled_back"
        })
        .unwrap();

    // An operator clears the server's refusal: the server offers 2.0.0 again, and the agent's
    // deny list refuses it (exit 3), reported as 3/9 (deferred per policy), slot B untouched.
    w.server
        .cli(&[
            "instance",
            "retry",
            &m.machine_id,
            "--app",
            APP,
            "--version",
            "2.0.0",
        ])
        .unwrap();
    let before = m.slot(USR_B).unwrap();
    assert!(
        !before.bootable(),
        "slot B must not be bootable: {before:?}"
    );
    for _ in 0..2 {
        let r = m.run_once().unwrap();
        assert_eq!(r.code, Some(3), "{}", r.stderr);
    }
    let events = w.server.events(&m.machine_id).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["event_type"] == 3 && e["event_result"] == 9),
        "no 3/9 event: {events:?}"
    );
    assert_eq!(m.slot(USR_B).unwrap(), before, "slot B was written again");
    let a = m.slot(USR_A).unwrap();
    assert!(a.successful && a.priority == 1, "slot A: {a:?}");
    assert_eq!(m.boot().unwrap().label, "USR-A");
}
