//! The instance lifecycle as an explicit state machine: a pure function from (status, event) to
//! the next status, following update_engine's sequence:
//!
//! ```text
//!  (check) ──grant──▶ granted ──13/1──▶ downloading ──14/1──▶ downloaded ──3/1──▶ installed
//!                                                                              (awaiting reboot)
//!  installed ──reboot, check with 3/2 previousversion=V──▶ complete
//!  granted | downloading | downloaded ──3/9──▶ deferred   (the machine put the update off)
//!  any ──x/0 errorcode──▶ error            any ──policy hold──▶ on_hold
//! ```
//!
//! A deferred machine is no longer in flight: its next check goes through the rollout policy
//! again. An error with code 44 (rolled back to the previous version) or a deny list (35, 3112,
//! 3113, 3114) is an `error` like any other here; the service additionally records the version as
//! refused for that machine.
//!
//! Events are honoured whenever they are meaningful, not only while an update is "in progress"
//! (a machine updated by hand and rebooted still reports 3/2 and becomes `complete`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::CompletesOn;

/// Lifecycle status of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Registered; no update activity known.
    Idle,
    /// The server answered `ok` with a version.
    Granted,
    /// Event 13/1: download started.
    Downloading,
    /// Event 14/1: download finished.
    Downloaded,
    /// Event 3/1 (or 800/1): written to the other slot, awaiting a reboot. Not a failure.
    Installed,
    /// Event 3/2 with a previous version after reboot: running the new version.
    Complete,
    /// An event with result 0 (error code kept and decoded).
    Error,
    /// A rollout policy held the update back (reason kept server-side).
    OnHold,
    /// Event 3/9 while an update was in flight: the machine deferred or declined the granted
    /// update (update_engine's "deferred per policy" or backoff, the agent refusing a downgrade).
    /// Not a failure; the machine may be granted again at a later check.
    Deferred,
}

impl InstanceStatus {
    /// All statuses, in lifecycle order.
    pub const ALL: [Self; 9] = [
        Self::Idle,
        Self::Granted,
        Self::Downloading,
        Self::Downloaded,
        Self::Installed,
        Self::Complete,
        Self::Error,
        Self::OnHold,
        Self::Deferred,
    ];

    /// Stable text form (as in the API and the database).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Granted => "granted",
            Self::Downloading => "downloading",
            Self::Downloaded => "downloaded",
            Self::Installed => "installed",
            Self::Complete => "complete",
            Self::Error => "error",
            Self::OnHold => "on_hold",
            Self::Deferred => "deferred",
        }
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True while a granted update is on its way (granted, downloading, downloaded): the server
    /// re-serves the granted version to such a machine without re-running the policy.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Granted | Self::Downloading | Self::Downloaded)
    }
}

/// A client event, as far as the lifecycle cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEvent {
    /// Omaha event type (3 complete, 13 download started, 14 download finished, 800 installed).
    pub event_type: u32,
    /// Omaha event result (0 error, 1 success, 2 success-reboot, 9 deferred...).
    pub event_result: u32,
    /// `previousversion` attribute (empty when absent).
    pub previous_version: String,
}

/// Event type: update complete (update_engine uses it for install and post-reboot reports).
pub const EVENT_UPDATE_COMPLETE: u32 = 3;
/// Event type: download started.
pub const EVENT_DOWNLOAD_STARTED: u32 = 13;
/// Event type: download finished.
pub const EVENT_DOWNLOAD_FINISHED: u32 = 14;
/// Event type: installed (CoreUpdate dialect).
pub const EVENT_INSTALLED: u32 = 800;
/// Event result: the update was deferred (by policy or backoff) or declined by the machine.
pub const RESULT_DEFERRED: u32 = 9;

/// The status an event moves an instance of an application whose updates complete on
/// `completes_on` to, or `None` when it changes nothing.
pub fn transition(
    current: InstanceStatus,
    event: &ClientEvent,
    completes_on: CompletesOn,
) -> Option<InstanceStatus> {
    use InstanceStatus as S;
    let next = match (event.event_type, event.event_result) {
        (_, 0) => S::Error,
        (EVENT_DOWNLOAD_STARTED, 1) => S::Downloading,
        (EVENT_DOWNLOAD_FINISHED, 1) => S::Downloaded,
        // An application that does not reboot is done once installed (Nebraska's Go updater
        // library then sends 3/2 without a previous version, which changes nothing below).
        (EVENT_UPDATE_COMPLETE, 1) | (EVENT_INSTALLED, 1)
            if completes_on == CompletesOn::Install =>
        {
            S::Complete
        }
        (EVENT_UPDATE_COMPLETE, 1) | (EVENT_INSTALLED, 1) => S::Installed,
        (EVENT_UPDATE_COMPLETE, 2) => {
            // update_engine attaches 3/2 to every check; only a real previous version (the first
            // check after the update reboot) means "now running the new version".
            let pv = event.previous_version.trim();
            if pv.is_empty() || pv == "0.0.0.0" {
                return None;
            }
            S::Complete
        }
        // Only an update on its way can be put off; elsewhere 3/9 changes nothing.
        (EVENT_UPDATE_COMPLETE, RESULT_DEFERRED) if current.in_flight() => S::Deferred,
        _ => return None,
    };
    (next != current).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::InstanceStatus as S;
    use super::*;

    fn ev(t: u32, r: u32, pv: &str) -> ClientEvent {
        ClientEvent {
            event_type: t,
            event_result: r,
            previous_version: pv.to_owned(),
        }
    }

    #[test]
    fn full_update_engine_sequence() {
        let mut s = S::Granted;
        for (e, want) in [
            (ev(13, 1, ""), S::Downloading),
            (ev(14, 1, ""), S::Downloaded),
            (ev(3, 1, ""), S::Installed),
            (ev(3, 2, "3374.2.5"), S::Complete),
        ] {
            s = transition(s, &e, CompletesOn::Reboot).unwrap_or(s);
            assert_eq!(s, want, "after {e:?}");
        }
    }

    #[test]
    fn an_app_that_completes_on_install_is_complete_at_3_1() {
        let on_install = |s, e: &ClientEvent| transition(s, e, CompletesOn::Install);
        let mut s = S::Granted;
        // Nebraska's Go updater library: 13/1, 14/1, 3/1 on completion, then 3/2 with no
        // previous version.
        for (e, want) in [
            (ev(13, 1, ""), S::Downloading),
            (ev(14, 1, ""), S::Downloaded),
            (ev(3, 1, ""), S::Complete),
            (ev(3, 2, ""), S::Complete),
        ] {
            s = on_install(s, &e).unwrap_or(s);
            assert_eq!(s, want, "after {e:?}");
        }
        assert_eq!(
            on_install(S::Downloaded, &ev(800, 1, "")),
            Some(S::Complete)
        );
        // Failures and deferrals are the same as for any application.
        assert_eq!(on_install(S::Downloading, &ev(3, 0, "")), Some(S::Error));
        assert_eq!(on_install(S::Granted, &ev(3, 9, "")), Some(S::Deferred));
        // The default is unchanged: 3/1 is only installed.
        assert_eq!(
            transition(S::Downloaded, &ev(3, 1, ""), CompletesOn::default()),
            Some(S::Installed)
        );
    }

    #[test]
    fn installed_is_not_a_failure_and_routine_3_2_changes_nothing() {
        assert_eq!(
            transition(S::Installed, &ev(3, 2, ""), CompletesOn::Reboot),
            None
        );
        assert_eq!(
            transition(S::Installed, &ev(3, 2, "0.0.0.0"), CompletesOn::Reboot),
            None
        );
        assert_eq!(
            transition(S::Complete, &ev(3, 2, ""), CompletesOn::Reboot),
            None
        );
        assert_ne!(S::Installed, S::Error);
    }

    #[test]
    fn errors_from_any_state() {
        for s in S::ALL {
            let want = if s == S::Error { None } else { Some(S::Error) };
            assert_eq!(transition(s, &ev(3, 0, ""), CompletesOn::Reboot), want);
        }
        assert_eq!(
            transition(S::Downloading, &ev(13, 0, ""), CompletesOn::Reboot),
            Some(S::Error)
        );
    }

    #[test]
    fn events_count_outside_an_update_in_progress() {
        // A machine updated out of band still completes.
        assert_eq!(
            transition(S::Idle, &ev(3, 2, "3000.0.0"), CompletesOn::Reboot),
            Some(S::Complete)
        );
        assert_eq!(
            transition(S::Error, &ev(13, 1, ""), CompletesOn::Reboot),
            Some(S::Downloading)
        );
        assert_eq!(
            transition(S::Idle, &ev(800, 1, ""), CompletesOn::Reboot),
            Some(S::Installed)
        );
    }

    #[test]
    fn deferral_ends_an_update_in_flight_only() {
        for s in [S::Granted, S::Downloading, S::Downloaded] {
            assert_eq!(
                transition(s, &ev(3, 9, ""), CompletesOn::Reboot),
                Some(S::Deferred),
                "from {s:?}"
            );
        }
        for s in [
            S::Idle,
            S::Installed,
            S::Complete,
            S::Error,
            S::OnHold,
            S::Deferred,
        ] {
            assert_eq!(
                transition(s, &ev(3, 9, ""), CompletesOn::Reboot),
                None,
                "from {s:?}"
            );
        }
        assert!(!S::Deferred.in_flight());
        // A deferred machine granted again goes through the sequence as usual.
        assert_eq!(
            transition(S::Deferred, &ev(13, 1, ""), CompletesOn::Reboot),
            Some(S::Downloading)
        );
    }

    #[test]
    fn unknown_events_change_nothing() {
        assert_eq!(
            transition(S::Granted, &ev(15, 1, ""), CompletesOn::Reboot),
            None
        );
        assert_eq!(
            transition(S::Granted, &ev(999, 4, ""), CompletesOn::Reboot),
            None
        );
    }

    #[test]
    fn status_text_round_trips() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
        }
        assert_eq!(S::parse("bogus"), None);
    }
}
