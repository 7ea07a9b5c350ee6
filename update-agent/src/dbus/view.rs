//! What the D-Bus API shows, computed without I/O: the agent's status, its [`AgentInfo`] and the
//! reboot driver's [`RebootView`] become one [`Snapshot`] — the `org.platte.Update1` properties
//! and update_engine's `GetStatus` tuple — and a [`Throttle`] decides which changes are signalled.
//! The status's names and progress come from the update flow ([`Status::property_name`],
//! [`Status::update_engine_name`], [`Status::progress`]); this module only assembles them.
//!
//! Progress is throttled like update_engine does it: a change of progress alone is signalled once
//! it moved by 1 % (or after 1 s on `org.platte.Update1`, 10 s on the compatibility interface);
//! any other change is signalled at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zbus::zvariant::Value;

use crate::agent::{AgentInfo, Status};
use crate::reboot::RebootView;

/// update_engine's `new_version` when it has none.
pub const UPDATE_ENGINE_NO_VERSION: &str = "0.0.0";

/// Smallest progress step signalled on its own.
const PROGRESS_STEP: f64 = 0.01;
/// A smaller progress change is still signalled after this long (`org.platte.Update1`).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// A smaller progress change is still signalled after this long (update_engine's 10 s).
const COMPAT_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Names of the signalled `org.platte.Update1` properties.
pub const PROPERTY_NAMES: [&str; 16] = [
    "Status",
    "Progress",
    "CurrentVersion",
    "NewVersion",
    "NewSize",
    "NewIsDelta",
    "LastCheckTime",
    "BootedSlot",
    "RebootStrategy",
    "LastError",
    "HeldLock",
    "DenyList",
    "ChecksCompleted",
    "LastCheckResult",
    "RebootWait",
    "Extensions",
];

/// One runtime extension as the `Extensions` property shows it: `(name, version, state)`.
pub type ExtensionEntry = (String, String, String);

/// The `org.platte.Update1` properties (`NextRebootWindow` is computed when read).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Properties {
    /// `Status`: `idle`, `checking`, `update_available`, `downloading`, `verifying`,
    /// `finalizing`, `staged`, `rebooting` or `error`.
    pub status: String,
    /// `Progress`: 0..1 while downloading; 1 once downloaded; else 0.
    pub progress: f64,
    /// `CurrentVersion`: the running OS version.
    pub current_version: String,
    /// `NewVersion`: the version being installed or staged (`""`: none).
    pub new_version: String,
    /// `NewSize`: its payload size in bytes (0: unknown or none).
    pub new_size: u64,
    /// `NewIsDelta`: its payload is a delta, reading the running slot (false: a full payload,
    /// none, or unknown).
    #[serde(default)]
    pub new_is_delta: bool,
    /// `LastCheckTime`: when the server last answered a check (Unix seconds; 0: not since start).
    pub last_check_time: i64,
    /// `BootedSlot`: `A`, `B` (`""`: unknown).
    pub booted_slot: String,
    /// `RebootStrategy`: `off`, `immediate`, `windows` or `fleet-lock`.
    pub reboot_strategy: String,
    /// `LastError`: the last failure, `"MESSAGE (code N)"` (`""`: none).
    pub last_error: String,
    /// `HeldLock`: this machine holds a FleetLock slot.
    pub held_lock: bool,
    /// `DenyList`: versions never installed automatically.
    pub deny_list: Vec<String>,
    /// `ChecksCompleted`: checks finished since the agent started (see `CheckNow`).
    pub checks_completed: u64,
    /// `LastCheckResult`: how the last finished check ended (`no_update`, `already_staged`,
    /// `installed`, `refused`, `check_failed`, `install_failed`; `""`: none yet).
    pub last_check_result: String,
    /// `RebootWait`: why a staged update does not reboot yet (`""`: not waiting).
    pub reboot_wait: String,
    /// `Extensions` (`a(sss)`): each configured runtime extension's name, active version (`""`:
    /// none) and state (`active`, `staged: V for OS X`, `waiting: …`, `failed: …`,
    /// `not-installed`, `disabled`).
    #[serde(default)]
    pub extensions: Vec<ExtensionEntry>,
}

/// update_engine's `GetStatus` / `StatusUpdate` tuple:
/// `(last_checked_time, progress, current_operation, new_version, new_size)`.
pub type CompatStatus = (i64, f64, String, String, i64);

/// Everything the D-Bus objects serve.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// `org.platte.Update1` properties.
    pub props: Properties,
    /// `com.coreos.update1.Manager.GetStatus`.
    pub compat: CompatStatus,
}

impl Snapshot {
    /// The snapshot for this agent status, info, staged version, reboot view and strategy name.
    pub fn new(
        status: &Status,
        info: &AgentInfo,
        staged: Option<&str>,
        reboot: &RebootView,
        strategy: &str,
    ) -> Self {
        let name = status.property_name(reboot.rebooting);
        let new_version = status.version().or(staged).unwrap_or("").to_owned();
        let offer = info
            .offer
            .as_ref()
            .filter(|o| !new_version.is_empty() && o.version == new_version);
        let new_size = match (status, offer) {
            (Status::Downloading { total, .. }, _) if *total > 0 => *total,
            (_, Some(o)) => o.size,
            _ => 0,
        };
        let new_is_delta = offer.is_some_and(|o| o.delta);
        let last_error = match (status, &info.last_error) {
            (Status::Error { code, message }, _) => format!("{message} (code {code})"),
            (_, Some(e)) => format!("{} (code {})", e.message, e.code),
            (_, None) => String::new(),
        };
        // While runtime extensions hold the staged update, the reboot driver does not see it:
        // their reason is the only one.
        let held = !info.extensions_wait.is_empty() && staged.is_some();
        let reboot_wait = match &reboot.error {
            _ if held => format!("waiting for runtime extensions: {}", info.extensions_wait),
            Some(e) => format!("reboot coordination failing, retrying: {e}"),
            None => reboot.wait_text(),
        };
        let last_check_time = info
            .last_check_unix
            .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX));
        let props = Properties {
            status: name.to_owned(),
            progress: status.progress(),
            current_version: info.current_version.clone(),
            new_version: new_version.clone(),
            new_size,
            new_is_delta,
            last_check_time,
            booted_slot: info.booted_slot.map(|s| s.to_string()).unwrap_or_default(),
            reboot_strategy: strategy.to_owned(),
            last_error,
            held_lock: reboot.lock_held,
            deny_list: info.deny_list.clone(),
            checks_completed: info.checks_completed,
            last_check_result: info
                .last_result
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            reboot_wait,
            extensions: info.extensions.iter().map(|e| e.to_dbus()).collect(),
        };
        // update_engine: "0.0.0" and 0 when there is no new version.
        let compat = (
            last_check_time,
            status.update_engine_progress(),
            // Tools that reboot on update_engine's NEED_REBOOT (locksmith, the Flatcar update
            // operator) must not while runtime extensions hold the update: not final yet.
            match status {
                Status::Staged { .. } if held => "UPDATE_STATUS_FINALIZING",
                _ => status.update_engine_name(),
            }
            .to_owned(),
            if new_version.is_empty() {
                UPDATE_ENGINE_NO_VERSION.to_owned()
            } else {
                new_version
            },
            i64::try_from(new_size).unwrap_or(i64::MAX),
        );
        Self { props, compat }
    }
}

impl Properties {
    /// Names of the properties whose values differ from `old`.
    pub fn changed_since(&self, old: &Properties) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut check = |differs: bool, name: &'static str| {
            if differs {
                v.push(name);
            }
        };
        check(self.status != old.status, "Status");
        check(self.progress != old.progress, "Progress");
        check(
            self.current_version != old.current_version,
            "CurrentVersion",
        );
        check(self.new_version != old.new_version, "NewVersion");
        check(self.new_size != old.new_size, "NewSize");
        check(self.new_is_delta != old.new_is_delta, "NewIsDelta");
        check(self.last_check_time != old.last_check_time, "LastCheckTime");
        check(self.booted_slot != old.booted_slot, "BootedSlot");
        check(
            self.reboot_strategy != old.reboot_strategy,
            "RebootStrategy",
        );
        check(self.last_error != old.last_error, "LastError");
        check(self.held_lock != old.held_lock, "HeldLock");
        check(self.deny_list != old.deny_list, "DenyList");
        check(
            self.checks_completed != old.checks_completed,
            "ChecksCompleted",
        );
        check(
            self.last_check_result != old.last_check_result,
            "LastCheckResult",
        );
        check(self.reboot_wait != old.reboot_wait, "RebootWait");
        check(self.extensions != old.extensions, "Extensions");
        v
    }

    /// The D-Bus value of property `name` (`None` for an unknown name).
    pub fn value(&self, name: &str) -> Option<Value<'static>> {
        Some(match name {
            "Status" => Value::from(self.status.clone()),
            "Progress" => Value::from(self.progress),
            "CurrentVersion" => Value::from(self.current_version.clone()),
            "NewVersion" => Value::from(self.new_version.clone()),
            "NewSize" => Value::from(self.new_size),
            "NewIsDelta" => Value::from(self.new_is_delta),
            "LastCheckTime" => Value::from(self.last_check_time),
            "BootedSlot" => Value::from(self.booted_slot.clone()),
            "RebootStrategy" => Value::from(self.reboot_strategy.clone()),
            "LastError" => Value::from(self.last_error.clone()),
            "HeldLock" => Value::from(self.held_lock),
            "DenyList" => Value::from(self.deny_list.clone()),
            "ChecksCompleted" => Value::from(self.checks_completed),
            "LastCheckResult" => Value::from(self.last_check_result.clone()),
            "RebootWait" => Value::from(self.reboot_wait.clone()),
            "Extensions" => Value::from(self.extensions.clone()),
            _ => return None,
        })
    }

    /// `changed` as the map of a `PropertiesChanged` signal.
    pub fn values(&self, changed: &[&'static str]) -> HashMap<&'static str, Value<'static>> {
        changed
            .iter()
            .filter_map(|n| self.value(n).map(|v| (*n, v)))
            .collect()
    }
}

/// Decides which changes are signalled (see the module documentation).
#[derive(Debug, Default)]
pub struct Throttle {
    props: Option<(Properties, Instant)>,
    compat: Option<(CompatStatus, Instant)>,
}

impl Throttle {
    /// The properties to signal for `new` at `now` (`None`: nothing, or a progress step too small).
    pub fn properties(&mut self, new: &Properties, now: Instant) -> Option<Vec<&'static str>> {
        let changed = match &self.props {
            // The first snapshot: every property, so a listener sees them all.
            None => PROPERTY_NAMES.to_vec(),
            Some((old, at)) => {
                let changed = new.changed_since(old);
                let small = (new.progress - old.progress).abs() < PROGRESS_STEP
                    && now.saturating_duration_since(*at) < PROGRESS_EVERY;
                if changed.is_empty() || (changed == ["Progress"] && small) {
                    return None;
                }
                changed
            }
        };
        self.props = Some((new.clone(), now));
        Some(changed)
    }

    /// Whether update_engine's `StatusUpdate` is sent for `new` at `now`: on any change but the
    /// progress, on a progress step of 1 %, or on a smaller progress change 10 s after the last.
    pub fn compat(&mut self, new: &CompatStatus, now: Instant) -> bool {
        if let Some((old, at)) = &self.compat {
            if old == new {
                return false;
            }
            let only_progress = (old.0, &old.2, &old.3, old.4) == (new.0, &new.2, &new.3, new.4);
            if only_progress
                && (new.1 - old.1).abs() < PROGRESS_STEP
                && now.saturating_duration_since(*at) < COMPAT_PROGRESS_EVERY
            {
                return false;
            }
        }
        self.compat = Some((new.clone(), now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{CycleResult, OfferInfo};
    use crate::boot::SlotId;
    use crate::reboot::WaitReason;
    use crate::state::LastError;

    fn info() -> AgentInfo {
        AgentInfo {
            current_version: "1.0.0".into(),
            booted_slot: Some(SlotId::A),
            ..AgentInfo::default()
        }
    }

    fn snap(status: &Status, info: &AgentInfo, staged: Option<&str>, r: &RebootView) -> Snapshot {
        Snapshot::new(status, info, staged, r, "immediate")
    }

    #[test]
    fn idle_is_update_engines_idle() {
        let s = snap(&Status::Idle, &info(), None, &RebootView::default());
        assert_eq!(s.props.status, "idle");
        assert_eq!(s.props.booted_slot, "A");
        assert_eq!(s.props.new_version, "");
        assert_eq!(
            s.compat,
            (0, 0.0, "UPDATE_STATUS_IDLE".into(), "0.0.0".into(), 0)
        );
    }

    #[test]
    fn download_phases_and_sizes() {
        let mut i = info();
        i.offer = Some(OfferInfo {
            version: "2.0.0".into(),
            size: 1000,
            delta: true,
        });
        i.last_check_unix = Some(1_700_000_000);
        let d = Status::Downloading {
            version: "2.0.0".into(),
            received: 250,
            total: 1000,
        };
        let s = snap(&d, &i, None, &RebootView::default());
        assert_eq!(s.props.status, "downloading");
        assert!((s.props.progress - 0.25).abs() < 1e-9);
        assert_eq!(s.props.new_size, 1000);
        assert!(s.props.new_is_delta);
        assert_eq!(
            s.compat,
            (
                1_700_000_000,
                0.25,
                "UPDATE_STATUS_DOWNLOADING".into(),
                "2.0.0".into(),
                1000
            )
        );
        let v = Status::Downloading {
            version: "2.0.0".into(),
            received: 1000,
            total: 1000,
        };
        assert_eq!(
            snap(&v, &i, None, &RebootView::default()).props.status,
            "verifying"
        );
        let st = Status::Staged {
            version: "2.0.0".into(),
        };
        let s = snap(&st, &i, Some("2.0.0"), &RebootView::default());
        assert_eq!(
            (s.props.status.as_str(), s.props.new_size),
            ("staged", 1000)
        );
        assert_eq!(
            s.compat.1, 0.0,
            "update_engine resets progress after the download"
        );
        assert_eq!(s.compat.2, "UPDATE_STATUS_UPDATED_NEED_REBOOT");
        let rebooting = RebootView {
            rebooting: true,
            ..RebootView::default()
        };
        assert_eq!(
            snap(&st, &i, Some("2.0.0"), &rebooting).props.status,
            "rebooting"
        );
    }

    #[test]
    fn staged_version_shows_while_checking_and_errors_are_formatted() {
        let mut i = info();
        i.last_error = Some(LastError {
            code: 2,
            message: "server down".into(),
            at_unix: 1,
        });
        i.last_result = Some(CycleResult::CheckFailed);
        let s = snap(&Status::Checking, &i, Some("2.0.0"), &RebootView::default());
        assert_eq!(s.props.new_version, "2.0.0");
        assert_eq!(s.props.last_error, "server down (code 2)");
        assert_eq!(s.props.last_check_result, "check_failed");
        let r = RebootView {
            wait: Some(WaitReason::Inhibited {
                who: "db".into(),
                why: "flush".into(),
            }),
            lock_held: true,
            ..RebootView::default()
        };
        let s = snap(&Status::Idle, &i, None, &r);
        assert!(s.props.held_lock);
        assert!(
            s.props.reboot_wait.contains("\"db\""),
            "{}",
            s.props.reboot_wait
        );
    }

    #[test]
    fn extensions_are_listed_and_their_hold_is_the_reboot_wait() {
        use crate::extensions::{ExtensionState, ExtensionStatus};
        let mut i = info();
        i.extensions = vec![ExtensionStatus {
            name: "containerd".into(),
            version: "1.7.20".into(),
            state: ExtensionState::Waiting,
            detail: "containerd 1.7.20 supports OS 1.*, not 2.0.0".into(),
        }];
        i.extensions_wait = "containerd 1.7.20 supports OS 1.*, not 2.0.0".into();
        let st = Status::Staged {
            version: "2.0.0".into(),
        };
        let s = snap(&st, &i, Some("2.0.0"), &RebootView::default());
        assert_eq!(
            s.props.extensions,
            [(
                "containerd".to_owned(),
                "1.7.20".to_owned(),
                "waiting: containerd 1.7.20 supports OS 1.*, not 2.0.0".to_owned()
            )]
        );
        assert_eq!(
            s.props.reboot_wait,
            "waiting for runtime extensions: containerd 1.7.20 supports OS 1.*, not 2.0.0"
        );
        assert_eq!(
            s.compat.2, "UPDATE_STATUS_FINALIZING",
            "no NEED_REBOOT for locksmith while held"
        );
        let v = s.props.value("Extensions").unwrap();
        assert_eq!(v.value_signature().to_string(), "a(sss)");
        // Nothing staged (e.g. reset): no hold shown; a change of the list is signalled.
        let idle = snap(&Status::Idle, &i, None, &RebootView::default());
        assert_eq!(idle.props.reboot_wait, "");
        let mut other = s.props.clone();
        other.extensions.clear();
        assert!(s.props.changed_since(&other).contains(&"Extensions"));
    }

    #[test]
    fn small_progress_steps_are_throttled() {
        let t0 = Instant::now();
        let mut th = Throttle::default();
        let mut p = Properties {
            status: "downloading".into(),
            ..Properties::default()
        };
        let first = th.properties(&p, t0).unwrap_or_default();
        assert!(
            first.contains(&"Status") && first.contains(&"DenyList"),
            "{first:?}"
        );
        assert_eq!(th.properties(&p, t0), None, "nothing changed");
        p.progress = 0.005;
        assert_eq!(th.properties(&p, t0), None, "0.5 % within 1 s");
        p.progress = 0.011;
        assert_eq!(th.properties(&p, t0), Some(vec!["Progress"]));
        p.progress = 0.012;
        assert_eq!(
            th.properties(&p, t0 + Duration::from_secs(2)),
            Some(vec!["Progress"]),
            "a small step after 1 s"
        );
        p.progress = 0.013;
        p.status = "verifying".into();
        assert_eq!(th.properties(&p, t0), Some(vec!["Status", "Progress"]));
    }

    #[test]
    fn compat_signal_follows_update_engines_throttle() {
        let t0 = Instant::now();
        let mut th = Throttle::default();
        let mut c: CompatStatus = (0, 0.0, "UPDATE_STATUS_DOWNLOADING".into(), "2".into(), 9);
        assert!(th.compat(&c, t0), "first status is broadcast");
        assert!(!th.compat(&c, t0));
        c.1 = 0.005;
        assert!(!th.compat(&c, t0 + Duration::from_secs(9)));
        assert!(th.compat(&c, t0 + Duration::from_secs(10)));
        c.1 = 0.02;
        assert!(th.compat(&c, t0 + Duration::from_secs(10)));
        c.2 = "UPDATE_STATUS_FINALIZING".into();
        assert!(th.compat(&c, t0 + Duration::from_secs(10)));
    }
}
