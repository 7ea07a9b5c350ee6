//! `updatectl` against the `update-agent` daemon on a private `dbus-daemon`, a real update
//! server and a logind stand-in: `status --json`, `check` exit codes (0 up to date, 2 staged,
//! 1 error — never "failed" for up to date), `update --wait` progress lines, `watch`, `reboot`,
//! `reset`, `deny-list`, completions, and the messages for an unreachable bus, a missing agent and a
//! caller that is not root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use support::agent_bus::{
    DaemonProcess, LONG, QUIET, bus_world, parts, updatectl, wait_for, wait_props,
};
use support::{World, image};
use testkit::dbus::DbusDaemon;
use testkit::logind::LogindStandin;

#[test]
fn status_check_update_reboot_reset_and_deny_list() {
    let Some((bus, w)) = bus_world("1.0.0") else {
        return;
    };
    w.seed("1.0.0", &image(1));
    w.write_config(
        "50-test.toml",
        &format!("{QUIET}\n[reboot]\ngrace_period_secs = 0\nnotify_command = []\n"),
    );
    let standin = w.rt.block_on(LogindStandin::start(&bus.address)).unwrap();
    let _d = DaemonProcess::start(&w, &bus.address, None);
    wait_props(&w, &bus.address, LONG, "the agent on the bus", |_| true);
    let ctl = |args: &[&str]| parts(&updatectl(&bus.address, args, false));

    // status --json: every property, parseable.
    let (code, out, err) = ctl(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["status"], "idle");
    assert_eq!(j["current_version"], "1.0.0");
    assert_eq!(j["booted_slot"], "A");
    assert_eq!(j["reboot_strategy"], "off");
    assert_eq!(j["new_version"], "");
    assert_eq!(j["deny_list"], serde_json::json!([]));
    assert_eq!(j["checks_completed"], 0);
    assert_eq!(j["next_reboot_window"], 0);
    assert_eq!(j["held_lock"], false);
    let (code, out, _) = ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("Current version:    1.0.0 (slot A)"), "{out}");

    // watch follows the changes a check makes, until interrupted.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_updatectl"))
        .arg("watch")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let _ = tx.send(l.unwrap());
        }
    });
    let first = lines.recv_timeout(LONG).unwrap();
    assert!(first.ends_with(" Idle; no check yet"), "{first}");

    // check: up to date is exit 0 and says so.
    let (code, out, err) = ctl(&["check"]);
    assert_eq!(
        (code, out.trim()),
        (0, "up to date: version 1.0.0"),
        "{err}"
    );
    loop {
        let l = lines.recv_timeout(LONG).unwrap();
        if l.contains(" Idle; last check ") {
            break;
        }
    }
    Command::new("kill")
        .arg("-INT")
        .arg(watch.id().to_string())
        .status()
        .unwrap();
    assert_eq!(
        watch.wait().unwrap().code(),
        Some(0),
        "watch ends on Ctrl-C"
    );

    // check: a failing server is exit 1 with the reason.
    w.proxy.with(|f| f.omaha_500s = 1);
    let (code, out, _) = ctl(&["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("update check failed") && out.contains("500"),
        "{out}"
    );

    // update --wait: phase, bytes and rate lines (not a terminal), then staged: exit 2. The
    // download is cut once halfway, so the agent is seen downloading before it resumes.
    let payload = w.release("2.0.0", &image(2));
    w.proxy.with(|f| f.cut_at = Some(3 << 20));
    let (code, out, err) = ctl(&["update", "--wait"]);
    assert_eq!(code, 2, "{out}\n{err}\nagent log:\n{}", w.agent_log());
    let total = format!("{:.1} MiB", payload.len() as f64 / 1048576.0);
    let downloading: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("downloading 2.0.0: "))
        .collect();
    assert!(!downloading.is_empty(), "{out}");
    for l in &downloading {
        assert!(
            l.contains(&format!(" of {total}")) && l.contains('%'),
            "{l}"
        );
    }
    assert_eq!(
        out.lines().last(),
        Some("update 2.0.0 is staged; it is applied at the next reboot (`updatectl reboot`)"),
        "{out}"
    );
    // Checking again: already staged is still exit 2.
    let (code, out, _) = ctl(&["check"]);
    assert_eq!(code, 2, "{out}");

    // deny-list: empty; clearing an unknown version is an error naming it.
    let (code, out, _) = ctl(&["deny-list"]);
    assert_eq!((code, out.trim()), (0, "the deny list is empty"));
    let (code, _, err) = ctl(&["deny-list", "clear", "9.9.9"]);
    assert_eq!(code, 1);
    assert!(err.contains("\"9.9.9\" is not on the deny list"), "{err}");

    // reboot: strategy off, but an operator asked: logind is told to reboot.
    assert!(standin.reboots().is_empty());
    let (code, out, err) = ctl(&["reboot"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reboot requested"), "{out}");
    wait_for(LONG, "the reboot", || {
        (!standin.reboots().is_empty()).then_some(())
    });
    assert_eq!(standin.reboots(), [false]);

    // reset: nothing staged any more; reboot now has nothing to reboot into.
    let (code, _, err) = ctl(&["reset"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ctl(&["status", "--json"]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (j["status"].as_str(), j["new_version"].as_str()),
        (Some("idle"), Some(""))
    );
    assert_eq!(w.state()["phase"], "idle");
    let (code, _, err) = ctl(&["reboot", "--now"]);
    assert_eq!(code, 1);
    assert!(err.contains("no update is staged"), "{err}");
}

#[test]
fn clear_messages_for_no_bus_no_agent_and_non_root() {
    if !DbusDaemon::available() {
        return;
    }
    // The bus cannot be reached.
    let (code, _, err) = parts(&updatectl("unix:path=/nonexistent/bus", &["status"], false));
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to the system bus"), "{err}");

    // The bus is there, the agent is not.
    let empty = DbusDaemon::start();
    let (code, _, err) = parts(&updatectl(&empty.address, &["check"], false));
    assert_eq!(code, 1);
    assert!(err.contains("the update agent is not running"), "{err}");

    // Under the shipped policy, nobody may read the status but not change state.
    let bus = DbusDaemon::start_with_shipped_policy();
    let w = World::new("1.0.0");
    w.write_config("50-quiet.toml", QUIET);
    let _d = DaemonProcess::start(&w, &bus.address, None);
    wait_props(&w, &bus.address, LONG, "the agent on the bus", |_| true);
    let (code, out, err) = parts(&updatectl(&bus.address, &["status", "--json"], true));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"status\": \"idle\""), "{out}");
    for args in [
        &["check"][..],
        &["reset"],
        &["reboot"],
        &["deny-list", "clear", "--all"],
    ] {
        let (code, _, err) = parts(&updatectl(&bus.address, args, true));
        assert_eq!(code, 1, "{args:?}");
        assert!(
            err.contains("permission denied") && err.contains("needs root"),
            "{args:?}: {err}"
        );
    }

    // Completions need no agent.
    let (code, out, _) = parts(&updatectl(&empty.address, &["completions", "bash"], false));
    assert_eq!(code, 0);
    assert!(
        out.contains("_updatectl") && out.contains("deny-list"),
        "{out}"
    );
}
