//! The `update-agent run` daemon against a real private `dbus-daemon`, a logind stand-in and a
//! real update server: a staged update under `immediate` reboots through logind; the
//! `org.platte.Update1` properties and sd_notify follow; update_engine's compatibility interface
//! answers `busctl`/`gdbus` exactly like update_engine; the shipped bus policy refuses state
//! changes from a non-root caller while status stays readable, and the agent itself refuses
//! them too when no policy is installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use futures_util::StreamExt as _;
use update_agent::dbus::proxy::{ManagerProxy, Update1Proxy};

use support::agent_bus::{
    DaemonProcess, LONG, NotifyListener, QUIET, bus_world, connect, props, wait_for, wait_props,
};
use support::{World, image};
use testkit::dbus::DbusDaemon;
use testkit::logind::LogindStandin;
use testkit::sgdisk as common;

#[test]
fn immediate_strategy_reboots_once_staged_with_status_on_dbus_and_sd_notify() {
    let Some((bus, w)) = bus_world("1.0.0") else {
        return;
    };
    let payload = w.seed("2.0.0", &image(2));
    w.write_config(
        "50-reboot.toml",
        "[reboot]\nstrategy = \"immediate\"\ngrace_period_secs = 0\nnotify_command = []\n",
    );
    let standin = w.rt.block_on(LogindStandin::start(&bus.address)).unwrap();
    let mut notify = NotifyListener::new();
    let mut d = DaemonProcess::start(&w, &bus.address, Some(&notify.path));
    notify.wait(LONG, "READY=1", |m| m == "READY=1");

    wait_for(LONG, "logind Reboot", || {
        (!standin.reboots().is_empty()).then_some(())
    });
    assert_eq!(standin.reboots(), [false], "one non-interactive Reboot");
    assert_eq!(w.state()["phase"], "staged");
    let sentinel = std::fs::read_to_string(w.root.join("run/reboot-required")).unwrap();
    assert!(sentinel.contains("2.0.0"), "{sentinel}");

    // The reboot may come before the cycle has finished reporting (3/1): wait for both.
    let p = wait_props(
        &w,
        &bus.address,
        LONG,
        "status rebooting, check done",
        |p| p.props.status == "rebooting" && p.props.checks_completed == 1,
    );
    assert_eq!(p.props.current_version, "1.0.0");
    assert_eq!(p.props.new_version, "2.0.0");
    assert_eq!(p.props.new_size, payload.len() as u64);
    assert_eq!(p.props.booted_slot, "A");
    assert_eq!(p.props.reboot_strategy, "immediate");
    assert_eq!(p.props.last_check_result, "installed");
    assert_eq!(p.props.checks_completed, 1);
    assert!(p.props.last_check_time > 1_700_000_000);
    assert_eq!(p.props.progress, 1.0);
    assert!(!p.props.held_lock);
    assert_eq!(p.next_reboot_window, 0, "no windows");

    notify.wait(LONG, "the rebooting status", |m| {
        m == "STATUS=Rebooting into 2.0.0"
    });
    assert!(d.stop().success(), "agent log:\n{}", w.agent_log());
    notify.wait(LONG, "STOPPING=1", |m| m == "STOPPING=1");
    // Startup order: READY once the names are owned, before any reboot.
    let ready = notify.seen.iter().position(|m| m == "READY=1").unwrap();
    let rebooting = notify
        .seen
        .iter()
        .position(|m| m.starts_with("STATUS=Rebooting"))
        .unwrap();
    assert!(ready < rebooting, "{:?}", notify.seen);
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        String::from_utf8_lossy(&o.stderr).trim().to_owned(),
    )
}

fn busctl(address: &str, args: &[&str]) -> (bool, String, String) {
    run(Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(args))
}

fn busctl_nobody(address: &str, args: &[&str]) -> (bool, String, String) {
    run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
        .arg(format!("--address={address}"))
        .args(args))
}

const GET_STATUS: [&str; 5] = [
    "call",
    "com.coreos.update1",
    "/com/coreos/update1",
    "com.coreos.update1.Manager",
    "GetStatus",
];

#[test]
fn update_engine_compat_interface_answers_like_update_engine() {
    let Some((bus, w)) = bus_world("1.0.0") else {
        return;
    };
    w.seed("1.0.0", &image(1));
    w.write_config("50-quiet.toml", QUIET);
    let _d = DaemonProcess::start(&w, &bus.address, None);
    wait_props(&w, &bus.address, LONG, "the agent on the bus", |_| true);

    // Before any check: update_engine's idle answer, "0.0.0" for no version.
    let (ok, out, err) = busctl(&bus.address, &GET_STATUS);
    assert!(ok, "{err}");
    assert_eq!(out, r#"xdssx 0 0 "UPDATE_STATUS_IDLE" "0.0.0" 0"#);
    let (ok, out, err) = run(Command::new("gdbus").args([
        "call",
        "--address",
        &bus.address,
        "--dest",
        "com.coreos.update1",
        "--object-path",
        "/com/coreos/update1",
        "--method",
        "com.coreos.update1.Manager.GetStatus",
    ]));
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "(int64 0, 0.0, 'UPDATE_STATUS_IDLE', '0.0.0', int64 0)"
    );

    // The introspection data names and types things as update_engine does.
    let (ok, out, err) = busctl(
        &bus.address,
        &["introspect", "com.coreos.update1", "/com/coreos/update1"],
    );
    assert!(ok, "{err}");
    let line = |member: &str| {
        out.lines()
            .find(|l| l.starts_with(member))
            .unwrap_or_else(|| panic!("{member} missing:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line(".GetStatus"),
        [".GetStatus", "method", "-", "xdssx", "-"]
    );
    assert_eq!(
        line(".AttemptUpdate"),
        [".AttemptUpdate", "method", "-", "-", "-"]
    );
    assert_eq!(
        line(".ResetStatus"),
        [".ResetStatus", "method", "-", "-", "-"]
    );
    assert_eq!(
        line(".StatusUpdate"),
        [".StatusUpdate", "signal", "xdssx", "-", "-"]
    );

    // AttemptUpdate runs a check; StatusUpdate announces its end (last_checked_time set).
    let (t, op, version) = w.rt.block_on(async {
        let conn = connect(&bus.address).await;
        let m = ManagerProxy::new(&conn).await.unwrap();
        let mut updates = m.receive_status_update().await.unwrap();
        m.attempt_update().await.unwrap();
        loop {
            let s = tokio::time::timeout(LONG, updates.next())
                .await
                .expect("a StatusUpdate signal")
                .unwrap();
            let a = s.args().unwrap();
            if a.last_checked_time > 0 {
                break (a.last_checked_time, a.current_operation, a.new_version);
            }
        }
    });
    assert!(t > 1_700_000_000);
    assert_eq!(
        (op.as_str(), version.as_str()),
        ("UPDATE_STATUS_IDLE", "0.0.0")
    );
    let (ok, out, _) = busctl(&bus.address, &GET_STATUS);
    assert!(ok);
    assert_eq!(
        out,
        format!(r#"xdssx {t} 0 "UPDATE_STATUS_IDLE" "0.0.0" 0"#)
    );

    // A staged update is UPDATED_NEED_REBOOT with its version and size; ResetStatus forgets it.
    let payload = w.release("2.0.0", &image(2));
    let serial = w.rt.block_on(async {
        let conn = connect(&bus.address).await;
        Update1Proxy::new(&conn)
            .await
            .unwrap()
            .check_now()
            .await
            .unwrap()
    });
    assert_eq!(serial, 2);
    wait_props(&w, &bus.address, LONG, "the staged update", |p| {
        p.props.checks_completed >= 2
    });
    let (ok, out, _) = busctl(&bus.address, &GET_STATUS);
    assert!(ok);
    assert!(
        out.ends_with(&format!(
            r#" 0 "UPDATE_STATUS_UPDATED_NEED_REBOOT" "2.0.0" {}"#,
            payload.len()
        )),
        "{out}\nagent log:\n{}",
        w.agent_log()
    );
    let (ok, _, err) = busctl(
        &bus.address,
        &[
            "call",
            "com.coreos.update1",
            "/com/coreos/update1",
            "com.coreos.update1.Manager",
            "ResetStatus",
        ],
    );
    assert!(ok, "{err}");
    let (_, out, _) = busctl(&bus.address, &GET_STATUS);
    assert!(
        out.ends_with(r#" 0 "UPDATE_STATUS_IDLE" "0.0.0" 0"#),
        "{out}"
    );
    assert_eq!(w.state()["phase"], "idle");
    // The reset slot is unbootable: a reboot would not activate the forgotten update.
    assert_eq!(common::attrs(&w.img, 2) >> 48 & 0xff, 0);
}

#[test]
fn compat_interface_can_be_turned_off() {
    let Some((bus, w)) = bus_world("1.0.0") else {
        return;
    };
    w.write_config(
        "50-quiet.toml",
        &format!("{QUIET}\n[dbus]\nupdate_engine_compat = false\n"),
    );
    let _d = DaemonProcess::start(&w, &bus.address, None);
    wait_props(&w, &bus.address, LONG, "the agent on the bus", |_| true);
    let (ok, _, err) = busctl(&bus.address, &GET_STATUS);
    assert!(!ok);
    assert!(err.contains("com.coreos.update1"), "{err}");
}

#[test]
fn shipped_policy_lets_anyone_read_but_only_root_change_state() {
    if !DbusDaemon::available() {
        return;
    }
    let bus = DbusDaemon::start_with_shipped_policy();
    let w = World::new("1.0.0");
    w.seed("1.0.0", &image(1));
    w.write_config("50-quiet.toml", QUIET);
    let _d = DaemonProcess::start(&w, &bus.address, None);
    wait_props(&w, &bus.address, LONG, "the agent on the bus", |_| true);

    // Reading works for nobody: properties, GetAll, update_engine's GetStatus.
    let (ok, out, err) = busctl_nobody(
        &bus.address,
        &[
            "get-property",
            "org.platte.Update1",
            "/org/platte/Update1",
            "org.platte.Update1",
            "Status",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, r#"s "idle""#);
    let (ok, out, err) = busctl_nobody(&bus.address, &GET_STATUS);
    assert!(ok, "{err}");
    assert!(out.starts_with("xdssx "), "{out}");

    // State changes are refused by the bus itself (the policy), on both interfaces.
    for (dest, path, iface, method) in [
        (
            "org.platte.Update1",
            "/org/platte/Update1",
            "org.platte.Update1",
            "CheckNow",
        ),
        (
            "org.platte.Update1",
            "/org/platte/Update1",
            "org.platte.Update1",
            "Reset",
        ),
        (
            "com.coreos.update1",
            "/com/coreos/update1",
            "com.coreos.update1.Manager",
            "AttemptUpdate",
        ),
        (
            "com.coreos.update1",
            "/com/coreos/update1",
            "com.coreos.update1.Manager",
            "ResetStatus",
        ),
    ] {
        let (ok, _, err) = busctl_nobody(&bus.address, &["call", dest, path, iface, method]);
        assert!(!ok, "{method} allowed for nobody");
        assert!(
            err.contains("Access denied") || err.contains("AccessDenied"),
            "{method}: {err}"
        );
    }
    let before = props(&w, &bus.address).unwrap().props.checks_completed;
    assert_eq!(before, 0, "no check ran");

    // Root may.
    let (ok, out, err) = busctl(
        &bus.address,
        &[
            "call",
            "org.platte.Update1",
            "/org/platte/Update1",
            "org.platte.Update1",
            "CheckNow",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "t 1");
    wait_props(&w, &bus.address, LONG, "the check", |p| {
        p.props.checks_completed == 1 && p.props.last_check_result == "no_update"
    });
}

#[test]
fn agent_refuses_non_root_callers_even_without_the_policy() {
    if !DbusDaemon::available() {
        return;
    }
    // A bus that lets everyone send anything: the agent's own uid check must refuse.
    let bus = DbusDaemon::start_system_like(
        r#"<policy context="default"><allow own="*"/><allow send_destination="*"/></policy>"#,
    )
    .unwrap();
    let w = World::new("1.0.0");
    w.write_config("50-quiet.toml", QUIET);
    let _d = DaemonProcess::start(&w, &bus.address, None);
    wait_props(&w, &bus.address, LONG, "the agent on the bus", |_| true);
    // gdbus shows the error's name and message (busctl only "Access denied").
    for (dest, path, method) in [
        (
            "org.platte.Update1",
            "/org/platte/Update1",
            "org.platte.Update1.CheckNow",
        ),
        (
            "com.coreos.update1",
            "/com/coreos/update1",
            "com.coreos.update1.Manager.AttemptUpdate",
        ),
    ] {
        let (ok, _, err) = run(Command::new("setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "gdbus",
            "call",
            "--address",
            &bus.address,
            "--dest",
            dest,
            "--object-path",
            path,
            "--method",
            method,
        ]));
        assert!(!ok, "{method} allowed for nobody");
        assert!(
            err.contains("org.freedesktop.DBus.Error.AccessDenied")
                && err.contains("allowed to root only (caller uid 65534)"),
            "{method}: {err}"
        );
    }
    assert_eq!(props(&w, &bus.address).unwrap().props.checks_completed, 0);
}
