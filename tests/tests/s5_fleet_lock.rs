//! S5: fleet lock. Three hosts — each with its own GPT disk image, host root, machine id, private
//! system bus and logind stand-in — run the agent daemon (`update-agent run`) with reboot
//! strategy `fleet-lock` against the update server's FleetLock endpoint, in a group with one
//! slot. 2.0.0 is published; all three stage it; their reboots are strictly serialised: at every
//! moment at most one host holds the slot and at most one host has asked logind to reboot without
//! having been marked good since. The test plays the reboot (the stand-in's recorded call is the
//! cue): it stops the daemon, boots the host into slot B, runs `mark-good` and starts the daemon
//! again (for the first host the other way round: the daemon keeps the slot until mark-good has
//! passed), and the daemon gives the slot back at once; only then does the next host get it.
//!
//! The hosts set `reboot.lock_retry_secs = 1`, so a refused agent asks again after about a second
//! (±10 % jitter) instead of the default minute, and the scenario takes seconds: each hand-over
//! waits for a refused agent's next attempt.
//!
//! Run against one server and against two replicas on PostgreSQL. With replicas the agents'
//! FleetLock base URL is the forwarder's too (each new connection of a daemon goes to the next
//! replica), the slot is the database's, and the released-slot counter is the sum over the
//! replicas (each counts the requests it served).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::Value;

use platte_e2e::dbus::{self, Bus, Logind, RebootLog};
use platte_e2e::process::Proc;
use platte_e2e::{APP, DiskLayout, Machine, Mode, USR_A, USR_B, World};

/// The FleetLock group of the three hosts.
const GROUP: &str = "workers";
/// `reboot.lock_retry_secs` of the hosts (the default is 60).
const LOCK_RETRY_SECS: u64 = 1;
/// A hand-over: a refused agent's next attempt (about [`LOCK_RETRY_SECS`]) plus a cycle; the rest
/// is slack for a loaded machine.
const HANDOVER: Duration = Duration::from_secs(60);
/// Anything else (a check and 1 MiB install, a daemon start, a release).
const STEP: Duration = Duration::from_secs(30);
/// How often the fleet is looked at while waiting.
const LOOK: Duration = Duration::from_millis(100);
/// `platte_fleetlock_requests_total` of the releases of a held slot.
const RELEASED: &str = r#"platte_fleetlock_requests_total{op="steady_state",result="released"}"#;

/// One host: the simulated machine, its bus, its logind stand-in and its agent daemon.
struct Host {
    m: Machine,
    bus: Bus,
    _logind: Logind,
    daemon: Option<Proc>,
    /// The id the agent uses with the FleetLock server.
    lock_id: String,
}

impl Host {
    fn status(&self) -> Option<Value> {
        self.m.dbus_status(&self.bus).ok()
    }

    fn start_daemon(&mut self) {
        self.daemon = Some(self.m.spawn_daemon(&self.bus).unwrap());
    }
}

/// The fleet and what the test has done to it.
struct Fleet {
    /// Declared before the world: daemons and buses stop before its directory goes.
    hosts: Vec<Host>,
    reboots: RebootLog,
    /// Hosts the test has rebooted and marked good, in order, with when mark-good started.
    done: Vec<(usize, Instant)>,
    w: World,
}

impl Fleet {
    fn name(&self, i: usize) -> &str {
        &self.hosts[i].m.name
    }

    fn holders(&self) -> Vec<String> {
        self.w.server.fleetlock_holders(GROUP).unwrap()
    }

    /// Asserts the serialisation invariants on the current state (server view and the
    /// stand-ins' record); returns the holders seen.
    ///
    /// The reboot record is read before the holders: a host that has asked to reboot and is not
    /// marked good yet cannot give the slot back before the test marks it good, so it must
    /// still be among the holders read afterwards. (The other order races with a host that takes
    /// the slot and reboots between the two reads, which a 1 s lock retry makes likely.)
    fn check(&self) -> Vec<String> {
        let mut rebooting = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let calls = self.reboots.of(&h.m.name).len();
            assert!(
                calls <= 1,
                "{} was asked to reboot {calls} times: {:?}",
                h.m.name,
                self.reboots.calls()
            );
            if calls == 1 && !self.done.iter().any(|(d, _)| *d == i) {
                rebooting.push(i);
            }
        }
        assert!(
            rebooting.len() <= 1,
            "hosts {:?} asked to reboot and none of them is marked good yet",
            rebooting.iter().map(|&i| self.name(i)).collect::<Vec<_>>()
        );
        let holders = self.holders();
        assert!(
            holders.len() <= 1,
            "more than one holder of the one slot: {holders:?}"
        );
        if let Some(&i) = rebooting.first() {
            assert_eq!(
                holders,
                [self.hosts[i].lock_id.clone()],
                "{} reboots without holding the slot",
                self.name(i)
            );
        }
        holders
    }

    /// Polls `cond` (checking the invariants at every look) until it returns `Some`.
    fn wait<T>(&self, what: &str, limit: Duration, mut cond: impl FnMut(&Fleet) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            self.check();
            if let Some(v) = cond(self) {
                return v;
            }
            if start.elapsed() > limit {
                let states: Vec<String> = self
                    .hosts
                    .iter()
                    .map(|h| format!("{}: {:?}", h.m.name, h.status()))
                    .collect();
                let logs: Vec<String> = self
                    .hosts
                    .iter()
                    .map(|h| {
                        format!(
                            "--- {}\n{}",
                            h.m.name,
                            platte_e2e::process::tail(&h.m.log(), 25)
                        )
                    })
                    .collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}\nholders {:?}\nreboots {:?}\n{}\n{}",
                    self.holders(),
                    self.reboots.hosts(),
                    states.join("\n"),
                    logs.join("\n")
                );
            }
            std::thread::sleep(LOOK);
        }
    }

    /// Waits until host `i`'s D-Bus properties satisfy `cond`; returns them.
    fn wait_status(&self, i: usize, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let what = format!("{} {what}", self.name(i));
        self.wait(&what, STEP, |f| f.hosts[i].status().filter(|s| cond(s)))
    }
}

fn reboot_config(server: &str) -> String {
    format!(
        r#"[reboot]
strategy = "fleet-lock"
grace_period_secs = 0
lock_retry_secs = {LOCK_RETRY_SECS}
notify_command = []

[reboot.fleet_lock]
base_url = "{server}/fleetlock"
group = "{GROUP}"
"#
    )
}

platte_e2e::in_both_modes!(one_slot_serialises_reboots_and_mark_good_releases_it);

fn one_slot_serialises_reboots_and_mark_good_releases_it(mode: Mode) {
    if !dbus::available() {
        return;
    }
    let w = World::start(mode).unwrap();
    w.setup_app().unwrap();
    w.server
        .cli(&["fleetlock", "set-slots", GROUP, "1"])
        .unwrap();
    let v2 = w.publish("2.0.0", 1 << 20).unwrap();
    w.point_stable(&v2).unwrap();

    // Three hosts on 1.0.0, each with its own bus and logind; their daemons check at start.
    let reboots = RebootLog::default();
    let mut hosts = Vec::new();
    for i in 0..3u64 {
        let name = format!("host-{}", i + 1);
        let m = w
            .machine(&name, 51 + i, DiskLayout::default(), "1.0.0")
            .unwrap();
        m.write_dropin("50-reboot.toml", &reboot_config(w.agent_url()))
            .unwrap();
        let bus = Bus::start(&w.path().join(&name).join("bus")).unwrap();
        let logind = Logind::start(&bus, &name, &reboots).unwrap();
        let lock_id = m.fleetlock_id().unwrap();
        assert_ne!(lock_id, m.machine_id, "the machine id itself is never sent");
        let mut h = Host {
            m,
            bus,
            _logind: logind,
            daemon: None,
            lock_id,
        };
        h.start_daemon();
        hosts.push(h);
    }
    let mut f = Fleet {
        hosts,
        reboots,
        done: Vec::new(),
        w,
    };

    // All three stage 2.0.0 (one of them may already be rebooting by then).
    for i in 0..3 {
        let s = f.wait_status(i, "staged 2.0.0", |s| {
            matches!(s["status"].as_str(), Some("staged" | "rebooting"))
                && s["new_version"] == "2.0.0"
        });
        assert_eq!(s["reboot_strategy"], "fleet-lock", "{s}");
        assert_eq!(f.hosts[i].m.slot(USR_B).unwrap().tries, 1);
    }

    for round in 0..3 {
        // The next host gets the slot and asks logind to reboot.
        let next = f.wait(&format!("reboot {} of 3", round + 1), HANDOVER, |f| {
            (0..3).find(|&i| {
                !f.done.iter().any(|(d, _)| *d == i) && !f.reboots.of(f.name(i)).is_empty()
            })
        });
        let name = f.name(next).to_owned();
        assert_eq!(
            f.check(),
            [f.hosts[next].lock_id.clone()],
            "{name} holds the slot"
        );
        if let Some(&(prev, marked)) = f.done.last() {
            let at = f.reboots.of(&name)[0].at;
            assert!(
                at > marked,
                "{name} rebooted before {} was marked good",
                f.name(prev)
            );
        }
        f.wait_status(next, "holding the slot, rebooting", |s| {
            s["status"] == "rebooting" && s["held_lock"] == true
        });
        // The others wait: staged, refused by the server, holding nothing.
        for i in (0..3).filter(|&i| i != next && !f.done.iter().any(|(d, _)| *d == i)) {
            let s = f.wait_status(i, "refused the slot", |s| {
                s["status"] == "staged"
                    && s["held_lock"] == false
                    && s["reboot_wait"]
                        .as_str()
                        .is_some_and(|r| r.contains("refused"))
            });
            assert!(f.reboots.of(f.name(i)).is_empty(), "{s}");
        }

        // The reboot: the daemon goes down and the boot loader picks B. The first host's
        // daemon comes up before mark-good has run (it keeps the slot until it has); the others
        // come up in systemd's order, after mark-good (boot-complete.target).
        let daemon_first = round == 0;
        let h = &mut f.hosts[next];
        let st = h.daemon.take().unwrap().terminate(STEP).unwrap();
        assert_eq!(st.code(), Some(0), "{name}'s daemon on SIGTERM");
        let booted = h.m.boot().unwrap();
        assert_eq!(
            (booted.label.as_str(), booted.version.as_str()),
            ("USR-B", "2.0.0"),
            "{name}"
        );
        if daemon_first {
            h.start_daemon();
            f.wait_status(next, "up on slot B", |s| {
                s["booted_slot"] == "B" && s["current_version"] == "2.0.0"
            });
            assert_eq!(
                f.check(),
                [f.hosts[next].lock_id.clone()],
                "{name} released the slot before mark-good"
            );
        }
        let released_before = f.w.metric(RELEASED).unwrap();

        // mark-good passes: the daemon gives the slot back right away.
        let marked = Instant::now();
        let r = f.hosts[next].m.mark_good().unwrap();
        assert_eq!(
            r.code,
            Some(0),
            "{name} mark-good:\n{}{}",
            r.stdout,
            r.stderr
        );
        f.done.push((next, marked));
        if !daemon_first {
            assert_eq!(
                f.check(),
                [f.hosts[next].lock_id.clone()],
                "the slot is the daemon's to give back, not mark-good's"
            );
            f.hosts[next].start_daemon();
        }
        let lock_id = f.hosts[next].lock_id.clone();
        let holders = f.wait(&format!("{name} to release the slot"), STEP, |f| {
            let h = f.holders();
            (!h.contains(&lock_id)).then_some(h)
        });
        assert_eq!(
            f.w.metric(RELEASED).unwrap(),
            released_before + 1.0,
            "one steady-state released a held slot"
        );
        // Free — unless a waiting host's retry took it in the instant since, which the next
        // round checks happened after this mark-good.
        if !holders.is_empty() {
            eprintln!("note: the slot was taken again at once by {holders:?}");
        }
        let s = f.wait_status(next, "idle on 2.0.0 from slot B without the slot", |s| {
            s["status"] == "idle"
                && s["held_lock"] == false
                && s["booted_slot"] == "B"
                && s["current_version"] == "2.0.0"
        });
        assert!(f.hosts[next].m.slot(USR_B).unwrap().successful, "{s}");
        f.w.server
            .wait_status(APP, &f.hosts[next].m.machine_id, "complete")
            .unwrap();
    }

    // Each host rebooted exactly once, one after the other, in the order the slot went round;
    // nothing holds it now.
    let order: Vec<String> = f.done.iter().map(|&(i, _)| f.name(i).to_owned()).collect();
    assert_eq!(f.reboots.hosts(), order);
    assert!(f.reboots.calls().iter().all(|c| !c.interactive));
    assert!(f.check().is_empty(), "the slot is still held");
    assert_eq!(f.w.metric(RELEASED).unwrap(), 3.0);
    for h in &mut f.hosts {
        let a = h.m.slot(USR_A).unwrap();
        assert!(a.successful && a.priority > 0, "{}: slot A {a:?}", h.m.name);
        if let Some(d) = h.daemon.as_mut() {
            assert_eq!(d.terminate(STEP).unwrap().code(), Some(0));
        }
        assert!(h.bus.running(), "{}'s bus died", h.m.name);
    }
}
