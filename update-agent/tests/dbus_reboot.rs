//! Reboot coordination end to end, with the daemon run in-process (so its clock can be injected)
//! on private `dbus-daemon`s with logind stand-ins, against a real update server (Omaha and
//! FleetLock): `windows` waits for the window; two `fleet-lock` agents in a one-slot group
//! reboot one after the other; a slot held from before a reboot is released right after
//! mark-good, outside any window, before the first check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use update_agent::agent::daemon::DaemonOptions;
use update_agent::reboot::fleet_lock::app_specific_id;
use update_agent::reboot::time::TokioSleeper;

use support::agent_bus::{
    InProcess, LONG, ManualClock, NotifyListener, bus_world, lock_holders, wait_for, wait_props,
};
use support::{MACHINE, World, image};
use testkit::dbus::DbusDaemon;
use testkit::logind::LogindStandin;
use testkit::sgdisk as common;

// 2025-06-02 is a Monday.
const MON_NOON: &str = "2025-06-02T12:00:00Z";

fn opts(bus: &DbusDaemon) -> DaemonOptions {
    DaemonOptions {
        bus_address: Some(bus.address.clone()),
        lock_retry: Some(Duration::from_millis(100)),
        mark_good_poll: Duration::from_millis(20),
        ..DaemonOptions::default()
    }
}

const NO_USERS: &str = "grace_period_secs = 0\nnotify_command = []\n";

#[test]
fn windows_strategy_waits_for_the_window() {
    let Some((bus, w)) = bus_world("1.0.0") else {
        return;
    };
    w.seed("2.0.0", &image(2));
    w.write_config(
        "50-reboot.toml",
        &format!("[reboot]\nstrategy = \"windows\"\nwindows = [\"Sat 03:00 1h UTC\"]\n{NO_USERS}"),
    );
    let standin = w.rt.block_on(LogindStandin::start(&bus.address)).unwrap();
    let clock = ManualClock::new(MON_NOON);
    let mut d = InProcess::start(&w.conf, &w.root, opts(&bus), clock.clone(), clock.clone());

    let p = wait_props(
        &w,
        &bus.address,
        LONG,
        "staged, waiting for the window",
        |p| p.props.status == "staged" && !p.props.reboot_wait.is_empty(),
    );
    let sat: jiff::Timestamp = "2025-06-07T03:00:00Z".parse().unwrap();
    assert_eq!(p.next_reboot_window, sat.as_second());
    assert!(
        p.props
            .reboot_wait
            .contains("outside the maintenance windows")
            && p.props.reboot_wait.contains("2025-06-07 03:00 UTC"),
        "{}",
        p.props.reboot_wait
    );
    assert!(standin.reboots().is_empty(), "no reboot outside the window");

    // Saturday 03:00: the window opens and the host reboots.
    clock.set(sat);
    wait_for(LONG, "the reboot in the window", || {
        (!standin.reboots().is_empty()).then_some(())
    });
    assert_eq!(standin.reboots(), [false]);
    wait_props(&w, &bus.address, LONG, "status rebooting", |p| {
        p.props.status == "rebooting"
    });
    d.stop().unwrap();
}

/// A host of the fleet: config directory, host root, FleetLock id.
struct Host {
    conf: PathBuf,
    root: PathBuf,
    id: String,
}

impl Host {
    fn of_world(w: &World) -> Self {
        Self {
            conf: w.conf.clone(),
            root: w.root.clone(),
            id: app_specific_id(MACHINE).unwrap(),
        }
    }

    /// A second host next to `w`'s, using the same server, in `dir`.
    fn beside(w: &World, dir: &Path, machine: &str) -> Self {
        let img = common::make_image(dir);
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
        std::fs::write(root.join("etc/machine-id"), format!("{machine}\n")).unwrap();
        let conf = dir.join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let base = std::fs::read_to_string(w.conf.join("10-base.toml"))
            .unwrap()
            .replace(w.img.to_str().unwrap(), img.to_str().unwrap());
        std::fs::write(conf.join("10-base.toml"), base).unwrap();
        let h = Self {
            conf,
            root,
            id: app_specific_id(machine).unwrap(),
        };
        h.set_boot_id("b0000000-0000-4000-8000-000000000001");
        h
    }

    fn set_boot_id(&self, id: &str) {
        std::fs::write(
            self.root.join("proc/sys/kernel/random/boot_id"),
            format!("{id}\n"),
        )
        .unwrap();
    }

    fn write_config(&self, name: &str, text: &str) {
        std::fs::write(self.conf.join(name), text).unwrap();
    }

    /// Simulates the reboot into slot B running `version`, then runs `update-agent mark-good`.
    fn reboot_into_b_and_mark_good(&self, version: &str) {
        self.set_boot_id("b0000000-0000-4000-8000-000000000002");
        self.write_config(
            "60-booted.toml",
            &format!("[boot]\nbooted_slot = \"B\"\n\n[identity]\nos_version = \"{version}\"\n"),
        );
        mark_good(&self.conf, &self.root);
    }
}

fn mark_good(conf: &Path, root: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_update-agent"))
        .arg("--config-dir")
        .arg(conf)
        .arg("--host-root")
        .arg(root)
        .arg("mark-good")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mark-good: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fleet_lock_agents_in_a_one_slot_group_reboot_one_after_the_other() {
    if !DbusDaemon::available() {
        return;
    }
    let w = World::new("1.0.0");
    w.seed("2.0.0", &image(2));
    let dir_b = tempfile::tempdir().unwrap();
    let hosts = [
        Host::of_world(&w),
        Host::beside(&w, dir_b.path(), "fedcba9876543210fedcba9876543210"),
    ];
    for h in &hosts {
        h.write_config(
            "50-reboot.toml",
            &format!(
                "[reboot]\nstrategy = \"fleet-lock\"\n{NO_USERS}\n[reboot.fleet_lock]\nbase_url = \"{}/fleetlock\"\ngroup = \"workers\"\n",
                w.base
            ),
        );
    }
    let buses = [DbusDaemon::start(), DbusDaemon::start()];
    let standins: Vec<LogindStandin> = buses
        .iter()
        .map(|b| w.rt.block_on(LogindStandin::start(&b.address)).unwrap())
        .collect();
    let start = |i: usize| {
        InProcess::start(
            &hosts[i].conf,
            &hosts[i].root,
            opts(&buses[i]),
            update_agent::reboot::time::SystemClock,
            TokioSleeper,
        )
    };
    let mut daemons = vec![start(0), start(1)];

    // Both stage 2.0.0; the group has one slot: exactly one reboots.
    let first = wait_for(LONG, "a first reboot", || {
        (0..2).find(|&i| !standins[i].reboots().is_empty())
    });
    let second = 1 - first;
    assert_eq!(lock_holders(&w, "workers"), [hosts[first].id.clone()]);
    let p = wait_props(
        &w,
        &buses[second].address,
        LONG,
        "the other one refused",
        |p| p.props.status == "staged" && p.props.reboot_wait.contains("refused"),
    );
    assert!(!p.props.held_lock);
    assert!(standins[second].reboots().is_empty());

    // The first host reboots into 2.0.0, passes mark-good, and its agent starts again: it
    // releases the slot, and the second host takes it and reboots.
    daemons[first].stop().unwrap();
    hosts[first].reboot_into_b_and_mark_good("2.0.0");
    daemons[first] = start(first);
    wait_for(LONG, "the second reboot", || {
        (!standins[second].reboots().is_empty()).then_some(())
    });
    assert_eq!(standins[second].reboots(), [false]);
    assert_eq!(
        standins[first].reboots(),
        [false],
        "the first host rebooted once"
    );
    assert_eq!(lock_holders(&w, "workers"), [hosts[second].id.clone()]);
    for d in &mut daemons {
        d.stop().unwrap();
    }
}

#[test]
fn lock_held_before_the_reboot_is_released_right_after_mark_good_outside_any_window() {
    let Some((bus, w)) = bus_world("1.0.0") else {
        return;
    };
    w.seed("2.0.0", &image(2));
    // The host took a slot, rebooted into slot B (2.0.0; GRUB used its one try) and is up,
    // outside its only window; mark-good has not run yet.
    let id = app_specific_id(MACHINE).unwrap();
    let status = w.rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/fleetlock/v1/pre-reboot", w.base))
            .header("fleet-lock-protocol", "true")
            .json(&serde_json::json!({"client_params": {"id": id, "group": "default"}}))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    assert_eq!(lock_holders(&w, "default"), std::slice::from_ref(&id));
    common::sgdisk(&["-A", "2:set:49", w.img.to_str().unwrap()]);
    w.reboot_into("boot-2", "B", "2.0.0");
    w.write_config(
        "50-reboot.toml",
        &format!(
            "[reboot]\nstrategy = \"fleet-lock\"\nwindows = [\"Sat 03:00 1h UTC\"]\n{NO_USERS}\n[reboot.fleet_lock]\nbase_url = \"{}/fleetlock/\"\n",
            w.base
        ),
    );
    let mut notify = NotifyListener::new();
    let o = DaemonOptions {
        notify_socket: Some(notify.path.to_str().unwrap().to_owned()),
        ..opts(&bus)
    };
    let mut d = InProcess::start(
        &w.conf,
        &w.root,
        o,
        ManualClock::new(MON_NOON),
        TokioSleeper,
    );

    // D-Bus is up while the agent waits for mark-good; no check, the slot still held.
    notify.wait(LONG, "READY=1", |m| m == "READY=1");
    notify.wait(LONG, "the mark-good wait", |m| {
        m == "STATUS=Waiting for mark-good before releasing the fleet lock"
    });
    let p = support::agent_bus::props(&w, &bus.address).unwrap();
    assert_eq!(
        (p.props.status.as_str(), p.props.booted_slot.as_str()),
        ("idle", "B")
    );
    assert_eq!(lock_holders(&w, "default"), std::slice::from_ref(&id));
    assert!(
        w.proxy.with(|f| f.omaha_requests.is_empty()),
        "no check before the release"
    );

    // mark-good passes: the slot is released at once (outside the window), then the agent checks.
    mark_good(&w.conf, &w.root);
    wait_for(LONG, "the release", || {
        lock_holders(&w, "default").is_empty().then_some(())
    });
    wait_for(LONG, "the first check", || {
        (!w.proxy.with(|f| f.omaha_requests.is_empty())).then_some(())
    });
    let releasing = notify.wait(LONG, "the release status", |m| {
        m == "STATUS=Releasing the fleet lock held from before the reboot"
    });
    assert!(!releasing.is_empty());
    wait_props(&w, &bus.address, LONG, "the check answered", |p| {
        p.props.last_check_result == "no_update"
    });
    d.stop().unwrap();
}
