//! The rollout policy of a group, as stored in the group's policy JSON (next to `paused`). Every
//! part is optional; absent parts impose nothing. See `docs/usage/rollouts.md` for the fields.

use maintenance_window::Window;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::GroupPolicy;

/// A group's rollout policy (everything except `paused`, which [`GroupPolicy`] holds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSpec {
    /// Share of the group (0..=100) that may get the channel's version [default: 100].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
    /// Time-driven percentage (overrides `percentage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Ramp>,
    /// At most `count` grants per `period_secs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// At most this many machines between grant and installed at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// A grant with no progress event for this long frees its slot and counts as a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_timeout_secs: Option<u64>,
    /// Grant only while one of these weekly windows is open (none: always).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub windows: Vec<Window>,
    /// Machine ids, or aliases an operator assigned, served first regardless of percentage and
    /// ramp (the alias a client reports is never matched).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub canaries: Vec<String>,
    /// A canary group whose success gates this group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Pause the rollout by itself when too many attempters fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_halt: Option<AutoHalt>,
    /// Set by auto-halt; cleared by an explicit resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<Halt>,
    /// Auto-halt counts only grants made after this time (set by a resume, so the failures
    /// that caused a halt do not halt the resumed rollout again at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halt_counted_since: Option<i64>,
    /// Mandatory intermediate versions: a machine below a floor gets the floor first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub floors: Vec<String>,
    /// Versions never served (the channel pointing at one answers `noupdate`, reason `blocked`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked_versions: Vec<String>,
    /// Serve the channel's version to machines running a newer one, marked `_rollback="true"`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

/// A ramp: from `start_percent` at `start_at`, either linearly to 100 % over `duration_secs`, or
/// by `steps` (each sets the percentage from `start_at + after_secs` on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Ramp {
    /// Unix seconds when the ramp starts (0 % before).
    pub start_at: i64,
    /// Percentage at the start.
    pub start_percent: f64,
    /// Linear ramp length (ignored when `steps` is given).
    pub duration_secs: u64,
    /// Explicit steps, in increasing `after_secs`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<RampStep>,
}

/// One step of a ramp.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RampStep {
    /// Seconds after the ramp start.
    pub after_secs: u64,
    /// Percentage from then on.
    pub percent: f64,
}

/// Rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Grants allowed per period.
    pub count: u32,
    /// Period length in seconds (a sliding window).
    pub period_secs: u64,
}

/// Canary gate: this group gets a version only once `group` has `min_complete` machines complete
/// on it (and is not halted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Gate group id.
    pub group: String,
    /// Machines of the gate group that must have completed the version.
    pub min_complete: u32,
}

/// Default weight of a machine new to the rollout in the auto-halt counts.
pub const DEFAULT_NEW_MACHINE_WEIGHT: f64 = 0.1;

/// Auto-halt thresholds.
///
/// A machine the server first saw after the rollout began (its first grant) may be an invented
/// id: its attempt and its failure count `new_machine_weight` each (machines known before count
/// 1), both in `min_attempts` and in the failure rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoHalt {
    /// Halt when failures / attempts exceeds this (0..1).
    pub max_failure_rate: f64,
    /// ... once at least this many machines attempted the version.
    pub min_attempts: u32,
    /// Weight (0..=1) of a machine new to the rollout [default: 0.1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_machine_weight: Option<f64>,
}

impl AutoHalt {
    /// The weight of a machine new to the rollout.
    pub fn new_weight(&self) -> f64 {
        self.new_machine_weight
            .unwrap_or(DEFAULT_NEW_MACHINE_WEIGHT)
            .clamp(0.0, 1.0)
    }
}

/// Why and when a rollout halted itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Halt {
    /// Version that was being rolled out.
    pub version: String,
    /// Human reason (failure counts).
    pub reason: String,
    /// When (Unix seconds).
    pub at: i64,
}

/// A policy JSON that does not describe a valid rollout.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not the expected shape.
    #[error("invalid rollout policy: {0}")]
    Shape(#[from] serde_json::Error),
    /// A value out of range.
    #[error("invalid rollout policy: {field} {problem}")]
    Range {
        /// Field.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

fn pct_ok(p: f64) -> bool {
    (0.0..=100.0).contains(&p)
}

impl RolloutSpec {
    /// Reads the rollout part of a group policy (without validating ranges).
    pub fn from_policy(p: &GroupPolicy) -> Result<Self, SpecError> {
        let obj: serde_json::Map<String, serde_json::Value> = p
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(serde_json::from_value(serde_json::Value::Object(obj))?)
    }

    /// Reads and validates (used by the admin API before storing a policy).
    pub fn parse_valid(p: &GroupPolicy) -> Result<Self, SpecError> {
        let s = Self::from_policy(p)?;
        let range = |field, problem| Err(SpecError::Range { field, problem });
        if s.percentage.is_some_and(|p| !pct_ok(p)) {
            return range("percentage", "must be within 0..=100");
        }
        if let Some(r) = &s.ramp {
            if !pct_ok(r.start_percent) || r.steps.iter().any(|st| !pct_ok(st.percent)) {
                return range("ramp", "percentages must be within 0..=100");
            }
            if r.steps
                .windows(2)
                .any(|w| w[0].after_secs >= w[1].after_secs)
            {
                return range("ramp.steps", "must be in strictly increasing after_secs");
            }
        }
        if s.rate_limit.is_some_and(|r| r.period_secs == 0) {
            return range("rate_limit.period_secs", "must be positive");
        }
        if s.update_timeout_secs == Some(0) {
            return range("update_timeout_secs", "must be positive");
        }
        if let Some(h) = s.auto_halt
            && !(0.0..=1.0).contains(&h.max_failure_rate)
        {
            return range("auto_halt.max_failure_rate", "must be within 0..=1");
        }
        if let Some(h) = s.auto_halt
            && h.new_machine_weight
                .is_some_and(|w| !(0.0..=1.0).contains(&w))
        {
            return range("auto_halt.new_machine_weight", "must be within 0..=1");
        }
        Ok(s)
    }

    /// Writes this spec back into a policy (keeping `paused`).
    pub fn store_into(&self, p: &mut GroupPolicy) -> Result<(), SpecError> {
        let v = serde_json::to_value(self)?;
        p.extra.clear();
        if let serde_json::Value::Object(m) = v {
            p.extra.extend(m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> GroupPolicy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn full_policy_round_trips() {
        let p = policy(
            r#"{"paused":false,"percentage":10,"ramp":{"start_at":100,"start_percent":1,
            "duration_secs":0,"steps":[{"after_secs":60,"percent":5}]},
            "rate_limit":{"count":5,"period_secs":3600},"concurrency_limit":3,
            "update_timeout_secs":600,"windows":["Mon-Fri 22:00 4h Europe/Berlin"],
            "canaries":["m1"],"gate":{"group":"g","min_complete":2},
            "auto_halt":{"max_failure_rate":0.05,"min_attempts":20},
            "floors":["2.0.0"],"blocked_versions":["2.1.0"],"allow_downgrade":true}"#,
        );
        let s = RolloutSpec::parse_valid(&p).unwrap();
        assert_eq!(s.concurrency_limit, Some(3));
        assert_eq!(s.windows.len(), 1);
        let mut back = GroupPolicy::default();
        s.store_into(&mut back).unwrap();
        assert_eq!(RolloutSpec::from_policy(&back).unwrap(), s);
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            r#"{"percentage":101}"#,
            r#"{"rate_limit":{"count":1,"period_secs":0}}"#,
            r#"{"auto_halt":{"max_failure_rate":2,"min_attempts":1}}"#,
            r#"{"auto_halt":{"max_failure_rate":0.1,"min_attempts":1,"new_machine_weight":1.5}}"#,
            r#"{"ramp":{"start_at":0,"start_percent":0,"steps":[{"after_secs":5,"percent":1},{"after_secs":5,"percent":2}]}}"#,
            r#"{"percentag":10}"#,
            r#"{"windows":["Funday 10:00 1h"]}"#,
        ] {
            assert!(RolloutSpec::parse_valid(&policy(bad)).is_err(), "{bad}");
        }
    }
}
