//! Runtime extensions through the real `update-agent run` daemon: a real update server with an OS
//! app and a `containerd` extension app, a private `dbus-daemon` with the systemd stand-in
//! (records `RestartUnit`, answers job results) and the logind stand-in, a recording refresh
//! command and a controllable health command. The daemon's own loop installs and activates the
//! extension, shows it in the `Extensions` property and `updatectl status`, rolls a build whose
//! health check fails back to the previous one (reported `3/0` with code 3113), and holds a
//! staged OS update's reboot until a build for the new OS is staged. `run --once` holds
//! `/run/reboot-required` back the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use update_agent::dbus::proxy::ManagerProxy;
use update_agent::extensions::codes;

use support::agent_bus::{
    DaemonProcess, LONG, bus_world, connect, parts, updatectl, wait_for, wait_props,
};
use support::ext_world::{EXT_APP, ExtHost, UNIT, ext_image, ext_payload};
use support::{MACHINE, World, image};
use testkit::logind::LogindStandin;
use testkit::systemd::SystemdStandin;

/// The host side of containerd for `w`'s agent (under `DIR/ext/`), and the `[extensions]`
/// drop-in that configures it: restarts `containerd.service`, runs the health command.
fn extension_host(w: &World) -> ExtHost {
    let d = w.dir.path();
    let h = ExtHost::new(
        d,
        d.join("ext/var/lib/extensions"),
        d.join("ext/var/lib/platte/extensions"),
    );
    w.write_config(
        "40-extensions.toml",
        &format!(
            r#"[extensions]
sysext_refresh_command = ["{refresh}", "refresh"]
image_dir = "{images}"

[extensions.containerd]
app_id = "{EXT_APP}"
install_dir = "{install}"
restart_units = ["{UNIT}"]
health_command = ["{health}"]
restart_timeout_secs = 20
health_timeout_secs = 20
"#,
            refresh = h.refresh_command.display(),
            images = h.image_dir.display(),
            install = h.install_dir.display(),
            health = h.health_command.display(),
        ),
    );
    h
}

/// The containerd app on `w`'s server: app, channel `stable`, group `stable`.
fn create_extension_app(w: &World) {
    for (path, body) in [
        (
            "/apps".to_owned(),
            json!({"id": EXT_APP, "name": "containerd"}),
        ),
        (
            format!("/apps/{EXT_APP}/channels"),
            json!({"name": "stable", "packages": {}}),
        ),
        (
            format!("/apps/{EXT_APP}/groups"),
            json!({"name": "stable", "channel": "stable"}),
        ),
    ] {
        let (st, v) = w.api(reqwest::Method::POST, &path, Some(body));
        assert_eq!(st, 201, "{path}: {v}");
    }
}

/// Publishes containerd `version` supporting `os_versions` and points its channel at it.
fn release_extension(w: &World, version: &str, os_versions: &str) {
    let pkg = w.publish(&ext_payload(&w.key, version, Some(os_versions)));
    let (st, v) = w.api(
        reqwest::Method::PATCH,
        &format!("/apps/{EXT_APP}/channels/stable"),
        Some(json!({"packages": {"amd64": pkg}})),
    );
    assert_eq!(st, 200, "{v}");
}

/// The extension app's events from the test machine, oldest first:
/// `(type, result, error code without flags)`.
fn extension_events(w: &World) -> Vec<(i64, i64, Option<i64>)> {
    let norm = EXT_APP.trim_matches(['{', '}']).to_ascii_lowercase();
    let (st, v) = w.api(
        reqwest::Method::GET,
        &format!("/events?machine={MACHINE}&app={norm}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e: &Value| {
            (
                e["event_type"].as_i64().unwrap(),
                e["event_result"].as_i64().unwrap(),
                e["error_code"].as_i64().map(|c| c & 0x0FFF_FFFF),
            )
        })
        .collect();
    out.reverse();
    out
}

fn entry(name: &str, version: &str, state: &str) -> (String, String, String) {
    (name.to_owned(), version.to_owned(), state.to_owned())
}

#[test]
fn daemon_installs_shows_and_rolls_back_an_extension() {
    let Some((bus, w)) = bus_world("1.0.0") else {
        return;
    };
    w.seed("1.0.0", &image(1));
    create_extension_app(&w);
    release_extension(&w, "1.0", "1.*");
    let host = extension_host(&w);
    let systemd = w.rt.block_on(SystemdStandin::start(&bus.address)).unwrap();
    // The first scheduled check (at once: initial_delay_secs = 0) is the daemon's own.
    let mut d = DaemonProcess::start(&w, &bus.address, None);

    let p = wait_props(&w, &bus.address, LONG, "containerd 1.0 active", |p| {
        p.props.extensions == [entry("containerd", "1.0", "active")]
    });
    // The OS app was answered in the same request, independently: nothing to update.
    assert_eq!(p.props.current_version, "1.0.0");
    assert_eq!(host.link(), Some(host.image("1.0")));
    assert_eq!(std::fs::read(host.image("1.0")).unwrap(), ext_image("1.0"));
    assert_eq!(host.refreshes(), ["refresh"]);
    assert_eq!(systemd.restarts(), [UNIT]);
    assert_eq!(systemd.modes(), ["replace"]);
    assert_eq!(host.health_runs().len(), 1);
    wait_for(LONG, "3/2 of containerd 1.0", || {
        extension_events(&w).contains(&(3, 2, None)).then_some(())
    });

    // updatectl status: one line per extension.
    let (code, out, err) = parts(&updatectl(&bus.address, &["status"], false));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Extensions:         containerd 1.0 (active)"),
        "{out}"
    );
    let (code, out, _) = parts(&updatectl(&bus.address, &["status", "--json"], false));
    assert_eq!(code, 0);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["extensions"], json!([["containerd", "1.0", "active"]]));

    // 1.1 fails its health check: the daemon's check (asked for with updatectl) activates it,
    // rolls back to 1.0, deny-lists 1.1 and reports 3/0 with code 3113; the OS is untouched.
    host.set_health(1);
    release_extension(&w, "1.1", "1.*");
    let (code, out, err) = parts(&updatectl(&bus.address, &["check"], false));
    assert_eq!(code, 0, "{out}{err}\nagent log:\n{}", w.agent_log());
    assert!(out.contains("up to date: version 1.0.0"), "{out}");
    let p = wait_props(&w, &bus.address, LONG, "containerd failed", |p| {
        p.props.extensions.len() == 1 && p.props.extensions[0].2.starts_with("failed: ")
    });
    let (name, version, state) = &p.props.extensions[0];
    assert_eq!((name.as_str(), version.as_str()), ("containerd", "1.0"));
    assert!(state.contains("health"), "{state}");
    assert_eq!(p.props.last_check_result, "no_update");
    assert_eq!(p.props.status, "idle");
    assert_eq!(host.link(), Some(host.image("1.0")));
    assert!(!host.image("1.1").exists(), "the failed image is removed");
    // Health saw 1.1 linked, then the rollback restarted the unit on 1.0.
    let health = host.health_runs();
    assert!(health[1].ends_with("containerd-1.1.raw"), "{health:?}");
    assert_eq!(host.refreshes().len(), 3);
    assert_eq!(systemd.restarts(), [UNIT, UNIT, UNIT]);
    let events = wait_for(LONG, "3/0 of containerd 1.1", || {
        let e = extension_events(&w);
        e.contains(&(3, 0, Some(i64::from(codes::HEALTH_FAILED))))
            .then_some(e)
    });
    assert_eq!(
        events.last(),
        Some(&(3, 0, Some(i64::from(codes::HEALTH_FAILED)))),
        "{events:?}"
    );
    assert!(d.stop().success(), "agent log:\n{}", w.agent_log());

    // The daemon starts again in the same boot: nothing to reconcile, the deny-listed 1.1 is
    // not downloaded again.
    host.set_health(0);
    let mut d = DaemonProcess::start(&w, &bus.address, None);
    let p = wait_props(&w, &bus.address, LONG, "the next check", |p| {
        p.props.checks_completed >= 1
    });
    assert_eq!(p.props.extensions[0].1, "1.0");
    assert_eq!(host.link(), Some(host.image("1.0")));
    assert_eq!(systemd.restarts().len(), 3);
    assert!(d.stop().success(), "agent log:\n{}", w.agent_log());
}

#[test]
fn staged_os_update_reboots_only_once_a_matching_extension_is_staged() {
    let Some((bus, w)) = bus_world("1.0.0") else {
        return;
    };
    w.seed("2.0.0", &image(2));
    create_extension_app(&w);
    release_extension(&w, "1.0", "1.*");
    let host = extension_host(&w);
    w.write_config(
        "50-reboot.toml",
        "[reboot]\nstrategy = \"immediate\"\ngrace_period_secs = 0\nnotify_command = []\n",
    );
    let systemd = w.rt.block_on(SystemdStandin::start(&bus.address)).unwrap();
    let logind = w.rt.block_on(LogindStandin::start(&bus.address)).unwrap();
    let _d = DaemonProcess::start(&w, &bus.address, None);

    // One check: containerd 1.0 is activated for the running OS, OS 2.0.0 is staged, and the
    // extension app is asked again with OS 2.0.0 as context: 1.0 supports 1.* only, so the
    // reboot waits and says why.
    let p = wait_props(&w, &bus.address, LONG, "the reboot held", |p| {
        p.props.status == "staged" && !p.props.reboot_wait.is_empty()
    });
    assert_eq!(p.props.new_version, "2.0.0");
    assert!(
        p.props.reboot_wait.starts_with(
            "waiting for runtime extensions: containerd 1.0 supports OS 1.*, not 2.0.0"
        ),
        "{}",
        p.props.reboot_wait
    );
    assert!(
        p.props.extensions[0].2.starts_with("waiting: "),
        "{:?}",
        p.props.extensions
    );
    // update_engine's view for locksmith and the update operator: not NEED_REBOOT yet.
    let compat = w.rt.block_on(async {
        let conn = connect(&bus.address).await;
        ManagerProxy::new(&conn)
            .await
            .unwrap()
            .get_status()
            .await
            .unwrap()
    });
    assert_eq!(compat.2, "UPDATE_STATUS_FINALIZING");
    assert_eq!(compat.3, "2.0.0");
    assert!(logind.reboots().is_empty(), "rebooted while held");
    assert!(!w.root.join("run/reboot-required").exists());
    assert_eq!(host.link(), Some(host.image("1.0")));
    // An operator's reboot through the agent is refused with the reason.
    let (code, _, err) = parts(&updatectl(&bus.address, &["reboot"], false));
    assert_eq!(code, 1);
    assert!(err.contains("waits for runtime extensions"), "{err}");

    // A build for OS 2.* is published: the next check stages it for the next boot (linked, no
    // refresh or restart now), the hold ends and the immediate strategy reboots.
    let restarts = systemd.restarts().len();
    let refreshes = host.refreshes().len();
    release_extension(&w, "1.2", "2.*");
    let (code, out, err) = parts(&updatectl(&bus.address, &["check"], false));
    assert_eq!(code, 2, "{out}{err}");
    wait_for(LONG, "logind Reboot", || {
        (!logind.reboots().is_empty()).then_some(())
    });
    assert_eq!(host.link(), Some(host.image("1.2")));
    assert_eq!(systemd.restarts().len(), restarts);
    assert_eq!(host.refreshes().len(), refreshes);
    let p = wait_props(&w, &bus.address, LONG, "containerd staged", |p| {
        p.props.extensions.first().map(|e| e.2.as_str()) == Some("staged: 1.2 for OS 2.0.0")
    });
    assert_eq!(p.props.reboot_wait, "");
    assert_eq!(p.props.extensions[0].1, "1.0");
    wait_for(LONG, "3/1 of containerd 1.2", || {
        extension_events(&w).contains(&(3, 1, None)).then_some(())
    });
}

#[test]
fn run_once_writes_reboot_required_only_once_the_extensions_are_ready() {
    // No D-Bus here: a later drop-in takes the unit restart out (tables merge per field).
    let w = World::new("1.0.0");
    w.seed("2.0.0", &image(2));
    create_extension_app(&w);
    release_extension(&w, "1.0", "1.*");
    let host = extension_host(&w);
    w.write_config(
        "45-no-restarts.toml",
        "[extensions.containerd]\nrestart_units = []\n",
    );

    // One cycle: containerd 1.0 is activated for the running OS, OS 2.0.0 is staged, and 1.0
    // does not support it: the reboot is held, so no sentinel.
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    assert_eq!(w.state()["staged"]["version"], "2.0.0");
    assert_eq!(host.link(), Some(host.image("1.0")));
    assert_eq!(w.reboot_required(), None, "agent log:\n{}", w.agent_log());

    // A build for OS 2.* is staged by the next cycle: the hold ends, the sentinel is written.
    release_extension(&w, "1.2", "2.*");
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    assert_eq!(host.link(), Some(host.image("1.2")));
    assert_eq!(
        w.reboot_required().as_deref(),
        Some("*** System restart required to apply update 2.0.0 ***\n")
    );
}
