//! S4: a bad release. The new slot never passes `mark-good` (a failing health check), so the
//! boot loader falls back to A on the next boot (gptprio: no tries left, not successful); the
//! agent reports the rollback, deny-lists the version, and never installs it again.
#![allow(clippy::unwrap_used)]

use platte_e2e::{APP, DiskLayout, USR_A, USR_B, World};

#[test]
fn failed_health_check_falls_back_reports_and_deny_lists() {
    let w = World::new().unwrap();
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

    // The agent sees it, reports the rollback (3/0, RollbackError 44), deny-lists 2.0.0 and
    // refuses the offer the server still makes (exit 3), without touching slot B.
    let r = m.run_once().unwrap();
    assert_eq!(r.code, Some(3), "{}", r.stderr);
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
    // The refusal is reported too: 3/9 (deferred per policy).
    assert!(
        events
            .iter()
            .any(|e| e["event_type"] == 3 && e["event_result"] == 9),
        "no 3/9 event: {events:?}"
    );

    let before = m.slot(USR_B).unwrap();
    assert!(
        !before.bootable(),
        "slot B must not be bootable: {before:?}"
    );
    for _ in 0..2 {
        let r = m.run_once().unwrap();
        assert_eq!(r.code, Some(3), "{}", r.stderr);
    }
    assert_eq!(m.slot(USR_B).unwrap(), before, "slot B was written again");
    let a = m.slot(USR_A).unwrap();
    assert!(a.successful && a.priority == 1, "slot A: {a:?}");
    assert_eq!(m.boot().unwrap().label, "USR-A");
}
