//! Unit tests of the reboot state machine with an injected clock.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jiff::Timestamp;
use maintenance_window::WindowSet;
use url::Url;

use super::*;
use crate::reboot::{FleetLockStrategy, Immediate, Off, Windows};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn obs(now: &str) -> Observation {
    Observation {
        now: ts(now),
        staged: Some("4230.1.0".into()),
        manual: false,
        force: false,
        inhibitors: vec![],
        users: vec![],
    }
}

fn windows(list: &[&str]) -> WindowSet {
    WindowSet::new(list.iter().map(|w| w.parse().unwrap()).collect())
}

fn fleet(ws: &[&str]) -> RebootStrategy {
    RebootStrategy::FleetLock(FleetLockStrategy {
        base_url: Url::parse("http://lock.example/").unwrap(),
        group: "workers".into(),
        id: "0".repeat(32),
        windows: windows(ws),
    })
}

fn block(who: &str) -> Inhibitor {
    Inhibitor {
        what: "sleep:shutdown".into(),
        who: who.into(),
        why: "burning a DVD".into(),
        mode: "block".into(),
    }
}

// 2025-06-02 is a Monday.
const MON_NOON: &str = "2025-06-02T12:00:00Z";

#[test]
fn immediate_reboots_when_staged_and_idles_otherwise() {
    let mut c = Coordinator::new(RebootStrategy::Immediate(Immediate), Timing::default());
    assert_eq!(c.decide(&obs(MON_NOON)), Decision::Reboot);
    let mut o = obs(MON_NOON);
    o.staged = None;
    assert_eq!(c.decide(&o), Decision::Idle);
}

#[test]
fn off_waits_for_a_manual_request() {
    let mut c = Coordinator::new(RebootStrategy::Off(Off), Timing::default());
    assert_eq!(
        c.decide(&obs(MON_NOON)),
        Decision::Wait {
            until: None,
            reason: WaitReason::StrategyOff
        }
    );
    let mut o = obs(MON_NOON);
    o.manual = true;
    assert_eq!(c.decide(&o), Decision::Reboot);
}

#[test]
fn windows_wait_until_the_window_then_reboot() {
    let s = RebootStrategy::Windows(Windows::new(windows(&["Mon 22:30 2h UTC"])));
    let mut c = Coordinator::new(s, Timing::default());
    assert_eq!(
        c.decide(&obs(MON_NOON)),
        Decision::Wait {
            until: Some(ts("2025-06-02T22:30:00Z")),
            reason: WaitReason::OutsideWindow
        }
    );
    // The clock advances to the window's start.
    assert_eq!(c.decide(&obs("2025-06-02T22:30:00Z")), Decision::Reboot);
    // Just after it closes: next Monday.
    assert_eq!(
        c.decide(&obs("2025-06-03T00:30:00Z")),
        Decision::Wait {
            until: Some(ts("2025-06-09T22:30:00Z")),
            reason: WaitReason::OutsideWindow
        }
    );
    // A manual request skips the window.
    let mut o = obs(MON_NOON);
    o.manual = true;
    assert_eq!(c.decide(&o), Decision::Reboot);
}

/// Always draws the same number (clamped to the range asked for).
struct Fixed(u64);

impl crate::scheduler::Rng for Fixed {
    fn up_to(&mut self, max: u64) -> u64 {
        self.0.min(max)
    }
}

/// Draws the middle of the range: no jitter.
struct Middle;

impl crate::scheduler::Rng for Middle {
    fn up_to(&mut self, max: u64) -> u64 {
        max / 2
    }
}

#[test]
fn lock_retry_jitter_stays_within_ten_percent() {
    let base = Duration::from_secs(60);
    assert_eq!(jittered(base, &mut Fixed(0)), Duration::from_secs(54));
    assert_eq!(
        jittered(base, &mut Fixed(u64::MAX)),
        Duration::from_secs(66)
    );
    assert_eq!(jittered(base, &mut Middle), base);
    assert_eq!(
        jittered(Duration::from_secs(1), &mut Fixed(0)),
        Duration::from_millis(900)
    );
    assert_eq!(
        jittered(Duration::from_secs(3600), &mut Fixed(u64::MAX)),
        Duration::from_secs(3960)
    );
    // The OS source spreads a fleet over the whole ±10 % band.
    let mut rng = crate::scheduler::OsRng;
    let draws: Vec<Duration> = (0..200).map(|_| jittered(base, &mut rng)).collect();
    assert!(draws.iter().all(|d| (54..=66).contains(&d.as_secs())));
    assert!(draws.iter().any(|d| *d < Duration::from_secs(57)));
    assert!(draws.iter().any(|d| *d > Duration::from_secs(63)));
}

#[test]
fn lock_retry_uses_the_configured_wait_with_jitter() {
    let timing = Timing {
        lock_retry: Duration::from_secs(10),
        ..Timing::default()
    };
    let mut c = Coordinator::new(fleet(&[]), timing);
    assert_eq!(c.decide(&obs(MON_NOON)), Decision::AcquireLock);
    c.lock_refused(ts(MON_NOON), &mut Fixed(0));
    assert_eq!(
        c.lock(),
        LockState::Refused {
            retry_at: ts("2025-06-02T12:00:09Z")
        }
    );
    assert_eq!(
        c.decide(&obs("2025-06-02T12:00:09Z")),
        Decision::AcquireLock
    );
    c.lock_refused(ts("2025-06-02T12:00:09Z"), &mut Fixed(u64::MAX));
    assert_eq!(
        c.decide(&obs("2025-06-02T12:00:19Z")),
        Decision::Wait {
            until: Some(ts("2025-06-02T12:00:20Z")),
            reason: WaitReason::LockRefused
        }
    );
}

#[test]
fn fleet_lock_acquires_then_reboots_and_retries_after_refusal() {
    let timing = Timing::default();
    let mut c = Coordinator::new(fleet(&[]), timing);
    assert_eq!(c.decide(&obs(MON_NOON)), Decision::AcquireLock);
    c.lock_refused(ts(MON_NOON), &mut Middle);
    assert_eq!(
        c.decide(&obs("2025-06-02T12:00:30Z")),
        Decision::Wait {
            until: Some(ts("2025-06-02T12:01:00Z")),
            reason: WaitReason::LockRefused
        }
    );
    assert_eq!(
        c.decide(&obs("2025-06-02T12:01:00Z")),
        Decision::AcquireLock
    );
    c.lock_acquired();
    assert_eq!(c.decide(&obs("2025-06-02T12:01:01Z")), Decision::Reboot);
}

#[test]
fn fleet_lock_with_windows_asks_only_inside_and_releases_when_the_window_closes() {
    let mut c = Coordinator::new(fleet(&["Mon 22:00 1h UTC"]), Timing::default());
    assert!(matches!(
        c.decide(&obs(MON_NOON)),
        Decision::Wait {
            reason: WaitReason::OutsideWindow,
            ..
        }
    ));
    assert_eq!(
        c.decide(&obs("2025-06-02T22:00:00Z")),
        Decision::AcquireLock
    );
    c.lock_acquired();
    // Blocked by an inhibitor past the window's end: give the slot back.
    let mut o = obs("2025-06-02T22:30:00Z");
    o.inhibitors = vec![block("backup")];
    assert!(matches!(
        c.decide(&o),
        Decision::Wait {
            reason: WaitReason::Inhibited { .. },
            ..
        }
    ));
    assert_eq!(
        c.decide(&obs("2025-06-02T23:00:00Z")),
        Decision::ReleaseLock
    );
    c.lock_released();
    assert!(matches!(
        c.decide(&obs("2025-06-02T23:00:00Z")),
        Decision::Wait {
            reason: WaitReason::OutsideWindow,
            ..
        }
    ));
}

#[test]
fn held_lock_is_released_when_the_update_goes_away() {
    let mut c = Coordinator::new(fleet(&[]), Timing::default());
    c.lock_acquired();
    let mut o = obs(MON_NOON);
    o.staged = None;
    assert_eq!(c.decide(&o), Decision::ReleaseLock);
    c.lock_released();
    assert_eq!(c.decide(&o), Decision::Idle);
}

#[test]
fn block_inhibitor_delays_and_delay_inhibitor_does_not() {
    let timing = Timing::default();
    let mut c = Coordinator::new(RebootStrategy::Immediate(Immediate), timing);
    let mut o = obs(MON_NOON);
    o.inhibitors = vec![block("cd-burner")];
    assert_eq!(
        c.decide(&o),
        Decision::Wait {
            until: Some(ts("2025-06-02T12:00:30Z")),
            reason: WaitReason::Inhibited {
                who: "cd-burner".into(),
                why: "burning a DVD".into()
            }
        }
    );
    o.inhibitors = vec![
        Inhibitor {
            mode: "delay".into(),
            ..block("x")
        },
        Inhibitor {
            what: "sleep:idle".into(),
            ..block("y")
        },
    ];
    assert_eq!(c.decide(&o), Decision::Reboot);
}

#[test]
fn logged_in_users_are_notified_once_then_get_the_grace_period() {
    let timing = Timing {
        grace_period: Duration::from_secs(600),
        ..Timing::default()
    };
    let mut c = Coordinator::new(RebootStrategy::Immediate(Immediate), timing);
    let mut o = obs(MON_NOON);
    o.users = vec!["alice".into()];
    assert_eq!(
        c.decide(&o),
        Decision::NotifyUsers {
            users: vec!["alice".into()],
            at: ts("2025-06-02T12:10:00Z")
        }
    );
    c.users_notified(ts(MON_NOON));
    o.now = ts("2025-06-02T12:05:00Z");
    assert_eq!(
        c.decide(&o),
        Decision::Wait {
            until: Some(ts("2025-06-02T12:10:00Z")),
            reason: WaitReason::GracePeriod
        }
    );
    // Still logged in when the grace period ends: reboot anyway, without a second notice.
    o.now = ts("2025-06-02T12:10:00Z");
    assert_eq!(c.decide(&o), Decision::Reboot);
}

#[test]
fn zero_grace_period_reboots_with_users_logged_in() {
    let timing = Timing {
        grace_period: Duration::ZERO,
        ..Timing::default()
    };
    let mut c = Coordinator::new(RebootStrategy::Immediate(Immediate), timing);
    let mut o = obs(MON_NOON);
    o.users = vec!["bob".into()];
    assert_eq!(c.decide(&o), Decision::Reboot);
}

#[test]
fn notice_is_forgotten_when_the_window_closes() {
    let s = RebootStrategy::Windows(Windows::new(windows(&["Mon 22:00 1h UTC"])));
    let mut c = Coordinator::new(s, Timing::default());
    let mut o = obs("2025-06-02T22:58:00Z");
    o.users = vec!["alice".into()];
    assert!(matches!(c.decide(&o), Decision::NotifyUsers { .. }));
    c.users_notified(o.now);
    o.now = ts("2025-06-02T23:00:00Z");
    assert!(matches!(
        c.decide(&o),
        Decision::Wait {
            reason: WaitReason::OutsideWindow,
            ..
        }
    ));
    // Next week the users are told again rather than rebooted on a week-old notice.
    o.now = ts("2025-06-09T22:00:00Z");
    assert!(matches!(c.decide(&o), Decision::NotifyUsers { .. }));
}

#[test]
fn forced_request_skips_every_gate_but_needs_something_staged() {
    // Off, outside any window, lock not held, inhibited, users logged in: still Reboot.
    for strategy in [
        RebootStrategy::Off(Off),
        RebootStrategy::Windows(Windows::new(windows(&["Sat 03:00 1h"]))),
        fleet(&["Sat 03:00 1h"]),
    ] {
        let mut c = Coordinator::new(strategy, Timing::default());
        let mut o = obs(MON_NOON);
        o.force = true;
        o.inhibitors = vec![block("backup")];
        o.users = vec!["alice".into()];
        assert_eq!(c.decide(&o), Decision::Reboot);
        o.staged = None;
        assert_eq!(c.decide(&o), Decision::Idle);
    }
}

#[test]
fn reboot_request_from_bool() {
    assert_eq!(RebootRequest::from(false), RebootRequest::None);
    assert_eq!(RebootRequest::from(true), RebootRequest::Coordinated);
}
