//! S7: the container runtime across server and agent (docs/usage/container-runtime.md). The server has
//! two apps, the OS and a `containerd` runtime extension, each with its own channel and group.
//! One host runs the agent daemon on its own bus with the logind and systemd stand-ins; its
//! `[extensions.containerd]` drop-in names a recording refresh command, a health command and
//! `restart_units = ["containerd.service"]`. All agent traffic (Omaha and downloads) goes
//! through a recording proxy, so the test sees what the agent put on the wire.
//!
//! - `os_and_runtime_roll_out_independently`: one Omaha request carries both apps; the runtime
//!   is installed while the OS channel has nothing new; then the OS is updated (staged, rebooted
//!   into, marked good) while the runtime's new build is held at 0 %; then the runtime's rollout
//!   is raised and it updates while the OS has nothing new.
//! - `failed_runtime_restart_rolls_back`: a build whose `containerd.service` restart fails (the
//!   job fails; then, for a second build, the unit dies right after a `done` job) is rolled back
//!   to the previous image, reported `3/0` with code 3112, deny-listed and never fetched again;
//!   the OS app is unaffected.
//!
//! Every wait polls a condition with a deadline; nothing sleeps for a fixed time.
//!
//! Both run against one server and against two replicas on PostgreSQL (the recording proxy then
//! forwards to the replicas' round-robin forwarder).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};

use platte_e2e::dbus::{self, Bus, Logind, RebootLog, RestartFault, Systemd, UnitRestart};
use platte_e2e::extension::HostExtension;
use platte_e2e::omaha_wire::{WireApp, request_apps};
use platte_e2e::process::{Proc, poll_until, tail};
use platte_e2e::{APP, DiskLayout, Machine, Mode, Release, USR_B, World};
use testkit::tcp_proxy::Proxy;

/// The containerd extension's app id (docs/usage/container-runtime.md's example).
const EXT_APP: &str = "5e8a1c7d-2f4b-4c6e-9a1d-3b7c9e2f4a60";
/// The extension's name.
const EXT: &str = "containerd";
/// The unit the agent restarts after switching the extension.
const UNIT: &str = "containerd.service";
/// The error code of a failed unit restart (docs/usage/container-runtime.md).
const RESTART_FAILED: i64 = 3112;
/// The error code of a deny-listed offer.
const DENY_LISTED: i64 = 35;
/// Extension images are small (100 KiB), like the OS images of the other scenarios are.
const EXT_LEN: usize = 100 << 10;
/// Any one step: a check with a download and an activation, a daemon start, a reboot.
const STEP: Duration = Duration::from_secs(30);

/// One host with its bus, stand-ins, extension and daemon, and the world around it.
struct Scenario {
    /// Declared first: the daemon stops before the bus, the stand-ins, the proxy and the world.
    daemon: Option<Proc>,
    m: Machine,
    ext: HostExtension,
    systemd: Systemd,
    _logind: Logind,
    reboots: RebootLog,
    bus: Bus,
    proxy: Proxy,
    w: World,
}

impl Scenario {
    /// A server with both apps, a proxy in front of it for agents and downloads, and host
    /// `host-1` on OS 1.0.0 with containerd configured (reboot strategy `immediate`); the
    /// daemon is not started. The server runs in `mode`.
    fn new(mode: Mode, seed: u64) -> Scenario {
        let proxy = Proxy::start("127.0.0.1:9").unwrap();
        let public = format!("http://{}", proxy.addr());
        let mut w = World::start_with(mode, &["--public-url", &public]).unwrap();
        proxy.set_upstream(&w.upstream());
        w.route_agents_via(&public);
        w.setup_app().unwrap();
        w.setup_extension_app(EXT_APP, EXT).unwrap();
        let m = w
            .machine("host-1", seed, DiskLayout::default(), "1.0.0")
            .unwrap();
        let ext = HostExtension::configure(&m, EXT, EXT_APP, &[UNIT]).unwrap();
        m.write_dropin(
            "50-reboot.toml",
            "[reboot]\nstrategy = \"immediate\"\ngrace_period_secs = 0\nnotify_command = []\n",
        )
        .unwrap();
        let bus = Bus::start(&m.home().join("bus")).unwrap();
        let reboots = RebootLog::default();
        let logind = Logind::start(&bus, &m.name, &reboots).unwrap();
        let systemd = Systemd::start(&bus, &[UNIT]).unwrap();
        Scenario {
            daemon: None,
            m,
            ext,
            systemd,
            _logind: logind,
            reboots,
            bus,
            proxy,
            w,
        }
    }

    fn start_daemon(&mut self) {
        self.daemon = Some(self.m.spawn_daemon(&self.bus).unwrap());
    }

    fn stop_daemon(&mut self) {
        let st = self.daemon.take().unwrap().terminate(STEP).unwrap();
        assert_eq!(st.code(), Some(0), "the daemon on SIGTERM:\n{}", self.log());
    }

    /// Publishes containerd `version` supporting `os_versions` and points its channel at it.
    fn release_runtime(&self, version: &str, os_versions: &str) -> Release {
        let r = self
            .w
            .publish_extension(EXT_APP, EXT, version, os_versions, EXT_LEN)
            .unwrap();
        self.w.point(EXT_APP, &r).unwrap();
        r
    }

    fn log(&self) -> String {
        tail(&self.m.log(), 40)
    }

    /// Polls `probe` until it returns `Some`; on timeout fails with the agent's log.
    fn wait<T>(&self, what: &str, probe: impl FnMut() -> Option<T>) -> T {
        poll_until(what, STEP, probe, || {
            format!(
                "status {:?}\nagent log:\n{}",
                self.m.dbus_status(&self.bus).ok(),
                self.log()
            )
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until the agent's D-Bus properties satisfy `cond`; returns them.
    fn wait_status(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        self.wait(what, || {
            self.m.dbus_status(&self.bus).ok().filter(|s| cond(s))
        })
    }

    /// Waits until containerd shows as `(version, state)` in the `Extensions` property;
    /// returns the agent's properties.
    fn wait_runtime(&self, version: &str, state: impl Fn(&str) -> bool) -> Value {
        self.wait_status(&format!("containerd {version} in Extensions"), |s| {
            let e = &s["extensions"][0];
            s["extensions"].as_array().map(Vec::len) == Some(1)
                && e[0] == EXT
                && e[1] == version
                && e[2].as_str().is_some_and(&state)
        })
    }

    /// `updatectl check`: the daemon checks now; returns once the check is done.
    fn check(&self, expect_code: i32) -> String {
        let r = self.m.updatectl(&self.bus, &["check"]).unwrap();
        assert_eq!(
            r.code,
            Some(expect_code),
            "updatectl check:\n{}{}\nagent log:\n{}",
            r.stdout,
            r.stderr,
            self.log()
        );
        r.stdout
    }

    /// The `<app>`s of every Omaha request the agent sent so far, oldest first.
    fn omaha_requests(&self) -> Vec<Vec<WireApp>> {
        self.proxy
            .http_requests()
            .iter()
            .filter(|r| r.method() == "POST" && r.path().starts_with("/v1/update"))
            .map(|r| request_apps(&r.text()))
            .collect()
    }

    /// The server's view of this host in `app`.
    fn instance(&self, app: &str) -> Value {
        self.w
            .server
            .instance(app, &self.m.machine_id)
            .unwrap()
            .unwrap_or(Value::Null)
    }

    /// The versions of `app` the server refuses this host, with the reason, sorted.
    fn refused_versions(&self, app: &str) -> Vec<(String, String)> {
        let view = self
            .w
            .server
            .get(&format!("/instances/{}", self.m.machine_id))
            .unwrap();
        let mut out: Vec<(String, String)> = view["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| {
                a["refused_versions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|r| r["app_id"].as_str().map(|a| a.trim_matches(['{', '}'])) == Some(app))
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (field("version"), field("reason"))
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until the server shows this host in `app` as `status` on `version`.
    fn wait_instance(&self, app: &str, status: &str, version: &str) -> Value {
        self.w
            .server
            .wait_instance(
                app,
                &self.m.machine_id,
                &format!("`{status}` on {version}"),
                |i| i["status"] == status && i["version"] == version,
            )
            .unwrap()
    }

    /// The server's events of this host for `app`, oldest first: (type, result, code & 0xffff).
    fn events(&self, app: &str) -> Vec<(i64, i64, Option<i64>)> {
        let mut v: Vec<_> = self
            .w
            .server
            .events(&self.m.machine_id)
            .unwrap()
            .iter()
            .filter(|e| e["app_id"].as_str().map(|a| a.trim_matches(['{', '}'])) == Some(app))
            .map(|e| {
                (
                    e["event_type"].as_i64().unwrap_or(-1),
                    e["event_result"].as_i64().unwrap_or(-1),
                    e["error_code"].as_i64().map(|c| c & 0xffff),
                )
            })
            .collect();
        v.reverse();
        v
    }

    /// How many times the agent fetched `release`'s payload through the proxy.
    fn downloads(&self, release: &Release) -> usize {
        let prefix = format!("GET /packages/{}/", release.sha256);
        self.proxy
            .requests()
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .count()
    }
}

/// The one app of `apps` with id `app`.
fn app<'a>(apps: &'a [WireApp], app: &str) -> &'a WireApp {
    let found: Vec<&WireApp> = apps.iter().filter(|a| a.app_id == app).collect();
    assert_eq!(found.len(), 1, "app {app} in {apps:?}");
    found[0]
}

/// Whether one request asks for updates of both the OS and the runtime.
fn carries_both(apps: &[WireApp]) -> bool {
    apps.len() == 2
        && apps.iter().any(|a| a.app_id == APP && a.update_check)
        && apps.iter().any(|a| a.app_id == EXT_APP && a.update_check)
}

fn results(restarts: &[UnitRestart]) -> Vec<(&str, &str, &str)> {
    restarts
        .iter()
        .map(|r| (r.unit.as_str(), r.result.as_str(), r.active_state.as_str()))
        .collect()
}

platte_e2e::in_both_modes!(
    os_and_runtime_roll_out_independently,
    failed_runtime_restart_rolls_back,
);

fn os_and_runtime_roll_out_independently(mode: Mode) {
    if !dbus::available() || !dbus::running_as_root() {
        return;
    }
    let mut s = Scenario::new(mode, 71);
    let v2 = s.w.publish("2.0.0", 1 << 20).unwrap();
    let c10 = s.release_runtime("1.0", "1.* 2.*");

    // 1. The runtime moves, the OS does not (its channel has nothing): the daemon's first check
    //    is one request for both apps; containerd 1.0 is switched, refreshed, restarted and
    //    health-checked.
    s.start_daemon();
    let st = s.wait_runtime("1.0", |st| st == "active");
    assert_eq!(st["current_version"], "1.0.0", "{st}");
    assert_eq!(s.ext.link(), Some(s.ext.image("1.0")));
    assert_eq!(std::fs::read(s.ext.image("1.0")).unwrap(), c10.image);
    let image10 = s.ext.image("1.0").display().to_string();
    assert_eq!(s.ext.refreshes(), std::slice::from_ref(&image10));
    assert_eq!(s.ext.health_runs(), std::slice::from_ref(&image10));
    let restarts = s.systemd.restarts();
    assert_eq!(results(&restarts), [(UNIT, "done", "active")]);
    assert_eq!(restarts[0].mode, "replace");
    // systemd re-read its unit files (daemon-reload) before the restart.
    assert_eq!(s.systemd.reloads(), [0]);
    assert_eq!(s.systemd.active_state(UNIT).as_deref(), Some("active"));
    let first = s.omaha_requests().into_iter().next().unwrap();
    assert!(carries_both(&first), "first request: {first:?}");
    let (os, rt) = (app(&first, APP), app(&first, EXT_APP));
    assert_eq!((os.attr("version"), os.attr("track")), ("1.0.0", "stable"));
    assert_eq!(rt.attr("version"), "0.0.0", "{rt:?}");
    assert_eq!((rt.attr("track"), rt.attr("ap")), ("stable", "os=1.0.0"));
    let rt_done = s.wait_instance(EXT_APP, "complete", "1.0");
    assert_eq!(rt_done["granted_version"], "1.0", "{rt_done}");
    let os_seen = s.instance(APP);
    assert_eq!(os_seen["version"], "1.0.0", "{os_seen}");
    assert!(os_seen["granted_version"].is_null(), "{os_seen}");
    // The D-Bus property itself, and updatectl's view of it.
    assert_eq!(
        s.bus.agent_extensions().unwrap(),
        [(EXT.to_owned(), "1.0".to_owned(), "active".to_owned())]
    );
    let text = s.m.updatectl(&s.bus, &["status"]).unwrap().stdout;
    assert!(
        text.contains("Extensions:         containerd 1.0 (active)"),
        "{text}"
    );
    assert!(s.reboots.calls().is_empty());

    // 2. The OS moves, the runtime's next build is held at 0 %: the check stages OS 2.0.0 and
    //    asks for the runtime in the same request (no offer), then once more for OS 2.0.0
    //    (`ap="os=2.0.0"`). containerd 1.0 supports 2.*, so nothing holds the reboot.
    s.w.set_policy_of(EXT_APP, &json!({"percentage": 0}))
        .unwrap();
    let c11 = s.release_runtime("1.1", "1.* 2.*");
    s.w.point_stable(&v2).unwrap();
    let sent = s.omaha_requests().len();
    s.check(2);
    let reboot = s.wait("the reboot into 2.0.0", || s.reboots.calls().pop());
    assert!(!reboot.interactive);
    let new: Vec<Vec<WireApp>> = s.omaha_requests().split_off(sent);
    let check = new
        .iter()
        .find(|a| carries_both(a))
        .unwrap_or_else(|| panic!("no request for both apps: {new:?}"));
    assert_eq!(app(check, APP).attr("version"), "1.0.0");
    assert_eq!(app(check, EXT_APP).attr("version"), "1.0");
    assert!(
        new.iter().any(|a| a.len() == 1
            && a[0].app_id == EXT_APP
            && a[0].update_check
            && a[0].attr("ap") == "os=2.0.0"),
        "no request for the runtime with the staged OS as context: {new:?}"
    );
    s.wait_instance(APP, "installed", "1.0.0");
    let rt_held = s.instance(EXT_APP);
    assert_eq!(
        (&rt_held["version"], &rt_held["granted_version"]),
        (&json!("1.0"), &json!("1.0")),
        "the runtime was granted 1.1 at 0 %: {rt_held}"
    );
    let rollout = s.w.rollout_status_of(EXT_APP).unwrap();
    assert_eq!(rollout["target_version"], "1.1", "{rollout}");
    assert_eq!(s.downloads(&c11), 0);
    assert_eq!(s.ext.link(), Some(s.ext.image("1.0")));
    assert_eq!(s.systemd.restarts().len(), 1);

    // The reboot: the daemon stops, the boot loader picks B (2.0.0), mark-good passes, the
    // daemon starts and reports the OS update; containerd 1.0 stays as it is.
    s.stop_daemon();
    let booted = s.m.boot().unwrap();
    assert_eq!(
        (booted.label.as_str(), booted.version.as_str()),
        ("USR-B", "2.0.0")
    );
    let r = s.m.mark_good().unwrap();
    assert_eq!(r.code, Some(0), "mark-good:\n{}{}", r.stdout, r.stderr);
    s.start_daemon();
    s.wait_status("idle on 2.0.0", |st| {
        st["status"] == "idle" && st["current_version"] == "2.0.0" && st["booted_slot"] == "B"
    });
    s.wait_instance(APP, "complete", "2.0.0");
    assert!(s.m.slot(USR_B).unwrap().successful);
    s.wait_runtime("1.0", |st| st == "active");
    assert_eq!(s.ext.link(), Some(s.ext.image("1.0")));
    assert_eq!(
        s.systemd.restarts().len(),
        1,
        "containerd restarted by the OS update"
    );
    assert_eq!(s.reboots.calls().len(), 1);

    // 3. The runtime moves again, the OS does not: at 100 % containerd 1.1 is activated by the
    //    next check, which asks for both apps again; the OS stays where it is.
    s.w.set_policy_of(EXT_APP, &json!({"percentage": 100}))
        .unwrap();
    let sent = s.omaha_requests().len();
    let out = s.check(0);
    assert!(out.contains("up to date: version 2.0.0"), "{out}");
    s.wait_runtime("1.1", |st| st == "active");
    let new = s.omaha_requests().split_off(sent);
    let check = new
        .iter()
        .find(|a| carries_both(a))
        .unwrap_or_else(|| panic!("no request for both apps: {new:?}"));
    assert_eq!(app(check, APP).attr("version"), "2.0.0");
    assert_eq!(app(check, EXT_APP).attr("version"), "1.0");
    assert_eq!(app(check, EXT_APP).attr("ap"), "os=2.0.0");
    let image11 = s.ext.image("1.1").display().to_string();
    assert_eq!(s.ext.link(), Some(s.ext.image("1.1")));
    assert_eq!(std::fs::read(s.ext.image("1.1")).unwrap(), c11.image);
    assert!(s.ext.image("1.0").exists(), "the previous image is kept");
    assert_eq!(s.ext.refreshes(), [image10.clone(), image11.clone()]);
    assert_eq!(s.ext.health_runs(), [image10, image11]);
    assert_eq!(
        results(&s.systemd.restarts()),
        [(UNIT, "done", "active"), (UNIT, "done", "active")]
    );
    assert_eq!(s.downloads(&c10), 1);
    assert_eq!(s.downloads(&c11), 1);
    s.wait_instance(EXT_APP, "complete", "1.1");
    let os_after = s.wait_instance(APP, "complete", "2.0.0");
    assert_eq!(os_after["granted_version"], "2.0.0", "{os_after}");
    assert_eq!(s.reboots.calls().len(), 1);
    s.stop_daemon();
}

fn failed_runtime_restart_rolls_back(mode: Mode) {
    if !dbus::available() || !dbus::running_as_root() {
        return;
    }
    let mut s = Scenario::new(mode, 72);
    s.release_runtime("1.0", "1.*");
    s.start_daemon();
    s.wait_runtime("1.0", |st| st == "active");
    s.wait_instance(EXT_APP, "complete", "1.0");
    let image10 = s.ext.image("1.0").display().to_string();
    let os_before = s.instance(APP);
    assert_eq!(os_before["version"], "1.0.0", "{os_before}");

    // The restart job of containerd.service fails (JobFailed), then the unit of the next
    // build dies right after a `done` job (UnitFailed): each time the agent links the previous
    // image again, refreshes, restarts containerd (which then comes up), deletes the failed
    // image, deny-lists the build and reports 3/0 with code 3112. The OS app is unaffected.
    let mut denied = Vec::new();
    let mut builds = Vec::new();
    for (version, fault, job_result) in [
        ("1.1", RestartFault::JobFailed, "failed"),
        ("1.2", RestartFault::UnitFailed, "done"),
    ] {
        let restarts = s.systemd.restarts().len();
        let refreshes = s.ext.refreshes().len();
        let health = s.ext.health_runs().len();
        s.systemd.fail_next_restart(UNIT, fault);
        let build = s.release_runtime(version, "1.*");
        let out = s.check(0);
        assert!(out.contains("up to date: version 1.0.0"), "{out}");
        let st = s.wait_runtime("1.0", |st| st.starts_with("failed: "));
        let state = st["extensions"][0][2].as_str().unwrap();
        assert!(state.contains(UNIT), "{version}: {state}");
        assert_eq!(st["status"], "idle", "{st}");
        assert_eq!(st["current_version"], "1.0.0", "{st}");
        assert_eq!(st["last_check_result"], "no_update", "{st}");
        assert_eq!(s.systemd.pending_faults(UNIT), 0);

        assert_eq!(s.ext.link(), Some(s.ext.image("1.0")), "{version}");
        assert!(
            !s.ext.image(version).exists(),
            "the failed image {version} is kept"
        );
        let image = s.ext.image(version).display().to_string();
        assert_eq!(
            s.ext.refreshes().split_off(refreshes),
            [image, image10.clone()],
            "{version}: refreshed with the new image, then with the previous one"
        );
        assert_eq!(
            s.ext.health_runs().len(),
            health,
            "{version}: health command run after a failed restart"
        );
        assert_eq!(
            results(&s.systemd.restarts().split_off(restarts)),
            [(UNIT, job_result, "failed"), (UNIT, "done", "active"),],
            "{version}: the failed restart, then the rollback's"
        );
        assert_eq!(s.systemd.active_state(UNIT).as_deref(), Some("active"));
        assert_eq!(s.downloads(&build), 1);
        builds.push(build);

        denied.push(version.to_owned());
        assert_eq!(s.ext.deny_list(), denied);
        let failed =
            s.w.server
                .wait_instance(EXT_APP, &s.m.machine_id, "failed with 3112", |i| {
                    i["status"] == "error"
                        && i["error_code"].as_i64().map(|c| c & 0xffff) == Some(RESTART_FAILED)
                })
                .unwrap();
        assert_eq!(failed["version"], "1.0", "{failed}");
        let events = s.events(EXT_APP);
        assert_eq!(
            events.last(),
            Some(&(3, 0, Some(RESTART_FAILED))),
            "{version}: {events:?}"
        );
    }

    // The server heard 3112 for each build and refuses both for this host (held
    // `deny_listed`, like a rolled-back OS version): a later check is answered `noupdate`, and
    // nothing is downloaded, switched or restarted.
    let refused = s.refused_versions(EXT_APP);
    assert_eq!(
        refused,
        [
            ("1.1".to_owned(), "deny_listed".to_owned()),
            ("1.2".to_owned(), "deny_listed".to_owned())
        ],
        "the server's refusals"
    );
    let restarts = s.systemd.restarts().len();
    let refreshes = s.ext.refreshes().len();
    let events = s.events(EXT_APP).len();
    s.check(0);
    let held = s.instance(EXT_APP);
    assert_eq!(
        (&held["status"], &held["status_detail"], &held["version"]),
        (&json!("on_hold"), &json!("deny_listed"), &json!("1.0")),
        "{held}"
    );
    // Still on 1.0; the status keeps the last attempt's failure until something new happens.
    s.wait_runtime("1.0", |st| st.starts_with("failed: "));
    assert_eq!(
        s.events(EXT_APP).len(),
        events,
        "an event for a version not offered"
    );

    // The operator clears the refusals (`instance retry`): 1.2 is offered again, and the agent
    // refuses it from its own deny list (3/0, code 35) without fetching it; the server refuses
    // it for this host again.
    s.w.server
        .cli(&["instance", "retry", &s.m.machine_id, "--app", EXT_APP])
        .unwrap();
    assert!(s.refused_versions(EXT_APP).is_empty());
    s.check(0);
    s.wait("the agent's refusal of 1.2 on the server", || {
        let e = s.events(EXT_APP);
        (e.last() == Some(&(3, 0, Some(DENY_LISTED)))).then_some(e)
    });
    s.wait("the server's refusal of 1.2 again", || {
        let r = s.refused_versions(EXT_APP);
        (r == [("1.2".to_owned(), "deny_listed".to_owned())]).then_some(r)
    });
    // A refusal is not a failure of the running build: containerd 1.0 shows as active again.
    s.wait_runtime("1.0", |st| st == "active");
    assert_eq!(s.systemd.restarts().len(), restarts);
    assert_eq!(s.ext.refreshes().len(), refreshes);
    assert_eq!(s.ext.link(), Some(s.ext.image("1.0")));
    assert!(!s.ext.image("1.2").exists());
    assert_eq!(s.ext.deny_list(), denied);
    for b in &builds {
        assert_eq!(s.downloads(b), 1, "{} fetched again", b.version);
    }

    // The OS app went on as before: no update, nothing written to slot B, no reboot.
    let os_after = s.instance(APP);
    assert_eq!(
        (
            &os_after["version"],
            &os_after["status"],
            &os_after["granted_version"]
        ),
        (
            &os_before["version"],
            &os_before["status"],
            &os_before["granted_version"]
        ),
        "{os_after}"
    );
    assert!(
        s.events(APP).iter().all(|e| e.1 != 0),
        "{:?}",
        s.events(APP)
    );
    assert!(!s.m.slot(USR_B).unwrap().bootable());
    assert!(s.reboots.calls().is_empty());
    s.stop_daemon();
}
