//! The logind client and the reboot driver against the logind stand-in on a real private
//! `dbus-daemon`: Reboot recorded, block inhibitors delay, users get a notice and a grace period.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use update_agent::reboot::coordinator::{Timing, WaitReason};
use update_agent::reboot::driver::{Driver, DriverConfig};
use update_agent::reboot::logind::Logind;
use update_agent::reboot::time::{Clock, Sleeper};
use update_agent::reboot::{Coordinator, Decision, Immediate, RebootStrategy};

use testkit::dbus::DbusDaemon;
use testkit::logind::LogindStandin;

/// A clock the test moves; sleeping moves it too.
#[derive(Clone)]
struct FakeTime(Arc<Mutex<Timestamp>>);

impl FakeTime {
    fn new(t: &str) -> Self {
        Self(Arc::new(Mutex::new(t.parse().unwrap())))
    }
    fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap();
        *t = t
            .checked_add(jiff::SignedDuration::try_from(d).unwrap())
            .unwrap();
    }
}

impl Clock for FakeTime {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

impl Sleeper for FakeTime {
    fn sleep(&self, d: Duration) -> impl std::future::Future<Output = ()> + Send {
        self.advance(d);
        std::future::ready(())
    }
}

async fn setup() -> (DbusDaemon, LogindStandin, Logind) {
    let bus = DbusDaemon::start();
    let standin = LogindStandin::start(&bus.address).await.unwrap();
    let logind = Logind::at_address(&bus.address).await.unwrap();
    (bus, standin, logind)
}

fn driver(
    logind: Logind,
    time: &FakeTime,
    timing: Timing,
    config: DriverConfig,
) -> Driver<FakeTime, FakeTime> {
    let c = Coordinator::new(RebootStrategy::Immediate(Immediate), timing);
    Driver::new(c, logind, config, time.clone(), time.clone())
}

fn no_extras() -> DriverConfig {
    DriverConfig {
        fleet_lock: None,
        notify_command: vec![],
        reboot_required: None,
    }
}

#[tokio::test]
async fn client_lists_inhibitors_and_interactive_users_and_reboots() {
    let (_bus, standin, logind) = setup().await;
    standin.inhibit("shutdown:sleep", "backup", "copying", "block");
    standin.add_session("1", "alice", "user").await.unwrap();
    standin.add_session("2", "alice", "user").await.unwrap();
    standin.add_session("3", "bob", "manager").await.unwrap();
    standin
        .add_session("4", "carol", "background")
        .await
        .unwrap();

    let inh = logind.inhibitors().await.unwrap();
    assert_eq!(inh.len(), 1);
    assert_eq!(inh[0].who, "backup");
    assert!(inh[0].blocks_reboot());
    assert_eq!(logind.interactive_users().await.unwrap(), ["alice"]);

    assert!(standin.reboots().is_empty());
    logind.reboot().await.unwrap();
    assert_eq!(standin.reboots(), [false]);
}

#[tokio::test]
async fn block_inhibitor_delays_the_reboot_until_released() {
    let (_bus, standin, logind) = setup().await;
    let time = FakeTime::new("2025-06-02T12:00:00Z");
    let dir = tempfile::tempdir().unwrap();
    let sentinel = dir.path().join("reboot-required");
    let mut d = driver(
        logind,
        &time,
        Timing::default(),
        DriverConfig {
            reboot_required: Some(sentinel.clone()),
            ..no_extras()
        },
    );
    standin.inhibit("shutdown", "db", "flushing", "block");
    let decision = d.step(Some("4230.1.0"), false).await.unwrap();
    assert!(
        matches!(&decision, Decision::Wait { reason: WaitReason::Inhibited { who, .. }, .. } if who == "db"),
        "{decision:?}"
    );
    assert!(standin.reboots().is_empty());
    assert!(
        std::fs::read_to_string(&sentinel)
            .unwrap()
            .contains("4230.1.0")
    );

    // A delay inhibitor is logind's business, not a reason to wait.
    standin.clear_inhibitors();
    standin.inhibit("shutdown", "journal", "sync", "delay");
    assert_eq!(
        d.step(Some("4230.1.0"), false).await.unwrap(),
        Decision::Reboot
    );
    assert_eq!(standin.reboots(), [false]);
}

#[tokio::test]
async fn logged_in_users_are_told_once_then_rebooted_after_the_grace_period() {
    let (_bus, standin, logind) = setup().await;
    standin.add_session("7", "alice", "user").await.unwrap();
    let time = FakeTime::new("2025-06-02T12:00:00Z");
    let dir = tempfile::tempdir().unwrap();
    let notice = dir.path().join("notice");
    // The message is appended as the last argument: `$0` of the script.
    let cmd = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!("printf '%s\\n' \"$0\" >> {}", notice.display()),
    ];
    let timing = Timing {
        grace_period: Duration::from_secs(600),
        ..Timing::default()
    };
    let mut d = driver(
        logind,
        &time,
        timing,
        DriverConfig {
            notify_command: cmd,
            ..no_extras()
        },
    );
    assert!(matches!(
        d.step(Some("4230.1.0"), false).await.unwrap(),
        Decision::NotifyUsers { .. }
    ));
    let text = std::fs::read_to_string(&notice).unwrap();
    assert!(
        text.contains("4230.1.0") && text.contains("2025-06-02 12:10"),
        "{text}"
    );
    time.advance(Duration::from_secs(300));
    assert!(matches!(
        d.step(Some("4230.1.0"), false).await.unwrap(),
        Decision::Wait {
            reason: WaitReason::GracePeriod,
            ..
        }
    ));
    assert!(standin.reboots().is_empty());
    time.advance(Duration::from_secs(300));
    assert_eq!(
        d.step(Some("4230.1.0"), false).await.unwrap(),
        Decision::Reboot
    );
    assert_eq!(standin.reboots(), [false]);
    // Told exactly once.
    assert_eq!(std::fs::read_to_string(&notice).unwrap().lines().count(), 1);
}

#[tokio::test]
async fn run_reboots_once_an_update_is_staged() {
    let (_bus, standin, logind) = setup().await;
    let time = FakeTime::new("2025-06-02T12:00:00Z");
    let mut d = driver(logind, &time, Timing::default(), no_extras());
    let (staged_tx, staged_rx) = tokio::sync::watch::channel(None::<String>);
    let (_manual_tx, manual_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { d.run(staged_rx, manual_rx).await });
    // Nothing staged: no reboot while idle.
    tokio::task::yield_now().await;
    assert!(standin.reboots().is_empty());
    staged_tx.send(Some("4230.1.0".into())).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(standin.reboots(), [false]);
}
