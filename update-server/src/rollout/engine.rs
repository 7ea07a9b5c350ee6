//! Pure policy evaluation: from a group's policy, a machine and the time, either a hold with its
//! reason or a grant candidate. No I/O; the shared limits are decided by the store afterwards.

use maintenance_window::Timestamp;

use super::bucket::in_percentage;
use super::ramp::effective_percent;
use super::spec::RolloutSpec;
use crate::rollout::policy::{PolicyContext, PolicyDecision, RolloutPolicy};

/// Why a machine is held back (answered `noupdate`, recorded on the instance, counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// The operator paused the group.
    Paused,
    /// The rollout halted itself (auto-halt).
    Halted,
    /// No grant window is open.
    Window,
    /// Outside the current percentage / ramp.
    Percentage,
    /// The canary group has not yet succeeded with this version.
    Gate,
    /// The rate limit is used up for the period.
    Rate,
    /// The concurrency limit is reached.
    Concurrency,
    /// The channel's version is on the block list.
    Blocked,
    /// The machine rolled back from this version before: it is never offered it again (an
    /// operator can clear that with `POST /api/v1/instances/{machine}/retry`).
    RolledBack,
    /// The machine put this version on its deny list (it failed there and the agent will not
    /// install it): it is never offered it again, until an operator clears that as above.
    DenyListed,
    /// The machine is new to the rollout (first seen after it began) and its source network
    /// (IPv4 /24, IPv6 /64) used up its grants to new machines for the window (server setting
    /// `new_machines`; only in groups with a concurrency or rate limit).
    NewMachineRate,
    /// The channel's package is in a format the client cannot apply (an update_engine payload
    /// and Platte's agent): offering it would fail on the host.
    Format,
}

impl HoldReason {
    /// All reasons.
    pub const ALL: [Self; 12] = [
        Self::Paused,
        Self::Halted,
        Self::Window,
        Self::Percentage,
        Self::Gate,
        Self::Rate,
        Self::Concurrency,
        Self::Blocked,
        Self::RolledBack,
        Self::DenyListed,
        Self::NewMachineRate,
        Self::Format,
    ];

    /// Stable text form (instance status detail, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::Window => "window",
            Self::Percentage => "percentage",
            Self::Gate => "gate",
            Self::Rate => "rate",
            Self::Concurrency => "concurrency",
            Self::Blocked => "blocked",
            Self::RolledBack => "rolled_back",
            Self::DenyListed => "deny_listed",
            Self::NewMachineRate => "new_machine_rate",
            Self::Format => "format",
        }
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The in-memory verdict for one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Held back.
    Hold(HoldReason),
    /// May be granted, subject to the store's atomic limits.
    Candidate {
        /// The machine is a named canary (it bypassed the percentage).
        canary: bool,
    },
}

/// Whether the machine is a named canary of the spec: a canary names it by machine id or by the
/// alias an operator assigned to it (`operator_alias`). The alias a client reports is never
/// compared: any client may claim any alias.
pub fn is_canary(spec: &RolloutSpec, machine_id: &str, operator_alias: Option<&str>) -> bool {
    let alias = operator_alias.filter(|a| !a.is_empty());
    spec.canaries
        .iter()
        .any(|c| c == machine_id || alias == Some(c.as_str()))
}

/// Evaluates everything that needs no shared state, in this order: paused, halted, window,
/// canary (bypasses the percentage), percentage/ramp.
pub fn evaluate(
    paused: bool,
    spec: &RolloutSpec,
    app_id: &str,
    machine_id: &str,
    operator_alias: Option<&str>,
    now: i64,
) -> Verdict {
    if paused {
        return Verdict::Hold(HoldReason::Paused);
    }
    if spec.halted.is_some() {
        return Verdict::Hold(HoldReason::Halted);
    }
    if !spec.windows.is_empty() {
        let t = Timestamp::from_second(now).unwrap_or(Timestamp::UNIX_EPOCH);
        if !spec.windows.iter().any(|w| w.contains(t)) {
            return Verdict::Hold(HoldReason::Window);
        }
    }
    if is_canary(spec, machine_id, operator_alias) {
        return Verdict::Candidate { canary: true };
    }
    if !in_percentage(app_id, machine_id, effective_percent(spec, now)) {
        return Verdict::Hold(HoldReason::Percentage);
    }
    Verdict::Candidate { canary: false }
}

/// The staged-rollout engine as the service's [`RolloutPolicy`].
#[derive(Debug, Default, Clone, Copy)]
pub struct RolloutEngine;

impl RolloutPolicy for RolloutEngine {
    fn decide(&self, ctx: &PolicyContext<'_>) -> PolicyDecision {
        match evaluate(
            ctx.group.policy.paused,
            ctx.spec,
            &ctx.app.id,
            &ctx.instance.machine_id,
            ctx.operator_alias,
            ctx.now,
        ) {
            Verdict::Hold(r) => PolicyDecision::Hold(r),
            Verdict::Candidate { .. } => PolicyDecision::Grant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{Halt, Ramp, RampStep};
    use super::*;

    fn ev(spec: &RolloutSpec, m: &str, now: i64) -> Verdict {
        evaluate(false, spec, "app", m, None, now)
    }

    #[test]
    fn pause_and_halt_hold_everyone() {
        let s = RolloutSpec::default();
        assert_eq!(
            evaluate(true, &s, "app", "m", None, 0),
            Verdict::Hold(HoldReason::Paused)
        );
        let h = RolloutSpec {
            halted: Some(Halt {
                version: "2".into(),
                reason: "x".into(),
                at: 0,
            }),
            ..Default::default()
        };
        assert_eq!(ev(&h, "m", 0), Verdict::Hold(HoldReason::Halted));
        // Resume = clearing the halt.
        assert_eq!(ev(&s, "m", 0), Verdict::Candidate { canary: false });
    }

    #[test]
    fn percentage_follows_ramp_and_canaries_go_first() {
        let s = RolloutSpec {
            ramp: Some(Ramp {
                start_at: 100,
                start_percent: 0.0,
                duration_secs: 0,
                steps: vec![
                    RampStep {
                        after_secs: 10,
                        percent: 20.0,
                    },
                    RampStep {
                        after_secs: 20,
                        percent: 100.0,
                    },
                ],
            }),
            canaries: vec!["canary-alias".into()],
            ..Default::default()
        };
        let machines: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
        let granted = |now| {
            machines
                .iter()
                .filter(|m| matches!(ev(&s, m, now), Verdict::Candidate { .. }))
                .count()
        };
        assert_eq!(granted(100), 0);
        let at20 = granted(115);
        assert!((150..250).contains(&at20), "{at20}");
        assert_eq!(granted(120), 1000);
        // A canary (by the alias an operator assigned) is a candidate even at 0 %.
        assert_eq!(
            evaluate(false, &s, "app", "zz", Some("canary-alias"), 100),
            Verdict::Candidate { canary: true }
        );
        assert_eq!(ev(&s, "zz", 100), Verdict::Hold(HoldReason::Percentage));
        // By id too; an empty operator alias names nothing.
        let by_id = RolloutSpec {
            canaries: vec!["zz".into(), String::new()],
            ..s.clone()
        };
        assert_eq!(ev(&by_id, "zz", 100), Verdict::Candidate { canary: true });
        assert!(!is_canary(&by_id, "yy", Some("")));
    }

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn window_across_midnight() {
        let s: RolloutSpec =
            serde_json::from_str(r#"{"windows":["Fri 23:00 2h Europe/Berlin"]}"#).unwrap();
        // Friday 2024-03-08 23:30 Berlin (UTC+1) = 22:30Z; Saturday 00:30 = 23:30Z.
        assert_eq!(
            ev(&s, "m", at("2024-03-08T22:30:00Z")),
            Verdict::Candidate { canary: false }
        );
        assert_eq!(
            ev(&s, "m", at("2024-03-08T23:30:00Z")),
            Verdict::Candidate { canary: false }
        );
        assert_eq!(
            ev(&s, "m", at("2024-03-09T00:00:00Z")),
            Verdict::Hold(HoldReason::Window)
        );
        assert_eq!(
            ev(&s, "m", at("2024-03-08T21:59:00Z")),
            Verdict::Hold(HoldReason::Window)
        );
    }

    #[test]
    fn window_across_dst_change() {
        // Berlin goes to summer time on Sunday 2024-03-31 at 02:00 local. A window Sun 01:00 for
        // 3h (elapsed) ends at 05:00 summer time = 03:00Z, not 04:00 local.
        let s: RolloutSpec =
            serde_json::from_str(r#"{"windows":["Sun 01:00 3h Europe/Berlin"]}"#).unwrap();
        assert_eq!(
            ev(&s, "m", at("2024-03-31T00:00:00Z")),
            Verdict::Candidate { canary: false }
        );
        assert_eq!(
            ev(&s, "m", at("2024-03-31T02:59:00Z")),
            Verdict::Candidate { canary: false }
        );
        assert_eq!(
            ev(&s, "m", at("2024-03-31T03:00:00Z")),
            Verdict::Hold(HoldReason::Window)
        );
        // The next Sunday (summer time, UTC+2): opens at 23:00Z on Saturday.
        assert_eq!(
            ev(&s, "m", at("2024-04-06T23:00:00Z")),
            Verdict::Candidate { canary: false }
        );
        assert_eq!(
            ev(&s, "m", at("2024-04-06T22:59:00Z")),
            Verdict::Hold(HoldReason::Window)
        );
    }

    #[test]
    fn reasons_round_trip() {
        for r in HoldReason::ALL {
            assert_eq!(HoldReason::parse(r.as_str()), Some(r));
        }
    }
}
