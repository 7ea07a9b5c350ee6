//! What an operator sees of a rollout: the group's target, counts by state, share complete,
//! failure rate, next ramp step and halt reason; and a preview of the machines a percentage (or
//! the next ramp step) would add; and a preview of a candidate policy (the machines it would make
//! eligible now and later, by the engine's own rules), for the policy editor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use maintenance_window::{Timestamp, WindowSet};

use super::bucket::in_percentage;
use super::engine::{HoldReason, Verdict, evaluate, is_canary};
use super::ramp::{effective_percent, next_step};
use super::spec::{Halt, RolloutSpec};
use super::target::{TargetChoice, choose};
use crate::model::Instance;
use crate::store::GroupInstanceCount;
use crate::store::rollout::GrantStats;

/// A group's rollout as seen now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutStatus {
    /// Application.
    pub app_id: String,
    /// Group id.
    pub group_id: String,
    /// Group name.
    pub group_name: String,
    /// Version the group's channel names (for its first architecture), if any.
    pub target_version: Option<String>,
    /// Paused by an operator.
    pub paused: bool,
    /// Set when the rollout halted itself.
    pub halted: Option<Halt>,
    /// Percentage in force now.
    pub effective_percent: f64,
    /// When the ramp next changes (Unix seconds).
    pub next_step_at: Option<i64>,
    /// Percentage from the next step on.
    pub next_step_percent: Option<f64>,
    /// Machines in the group.
    pub machines: u64,
    /// Machines by lifecycle status.
    pub by_status: BTreeMap<String, u64>,
    /// Machines by version.
    pub by_version: BTreeMap<String, u64>,
    /// Machines on hold by reason.
    pub on_hold: BTreeMap<String, u64>,
    /// Share (0..1) of the group running the target version.
    pub share_complete: f64,
    /// Grants of the target version by state.
    pub grants: GrantStats,
    /// Failures / attempts of the target version.
    pub failure_rate: f64,
    /// The policy in force.
    pub policy: RolloutSpec,
}

/// Counts a group's machines into a status (the caller fills the grant numbers).
#[allow(clippy::too_many_arguments)]
pub fn summarize(
    app_id: &str,
    group_id: &str,
    group_name: &str,
    paused: bool,
    spec: &RolloutSpec,
    target_version: Option<String>,
    counts: &[GroupInstanceCount],
    grants: GrantStats,
    now: i64,
) -> RolloutStatus {
    let mut s = RolloutStatus {
        app_id: app_id.to_owned(),
        group_id: group_id.to_owned(),
        group_name: group_name.to_owned(),
        target_version,
        paused,
        halted: spec.halted.clone(),
        effective_percent: effective_percent(spec, now),
        next_step_at: None,
        next_step_percent: None,
        machines: 0,
        by_status: BTreeMap::new(),
        by_version: BTreeMap::new(),
        on_hold: BTreeMap::new(),
        share_complete: 0.0,
        failure_rate: grants.failure_rate(),
        grants,
        policy: spec.clone(),
    };
    if let Some((at, p)) = next_step(spec, now) {
        s.next_step_at = Some(at);
        s.next_step_percent = Some(p);
    }
    let mut on_target = 0u64;
    for c in counts {
        let n = c.count;
        s.machines += n;
        *s.by_status.entry(c.status.as_str().to_owned()).or_default() += n;
        *s.by_version.entry(c.version.clone()).or_default() += n;
        if c.status == crate::lifecycle::InstanceStatus::OnHold {
            *s.on_hold.entry(c.hold_reason.clone()).or_default() += n;
        }
        if s.target_version.as_deref() == Some(c.version.as_str()) {
            on_target += n;
        }
    }
    if s.machines > 0 {
        #[allow(clippy::cast_precision_loss)]
        let share = on_target as f64 / s.machines as f64;
        s.share_complete = share;
    }
    s
}

/// A machine a preview would add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreviewMachine {
    /// Machine id.
    pub machine_id: String,
    /// Alias the machine reports (not trusted for anything).
    pub alias: String,
    /// Alias an operator assigned (canaries may name it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_alias: Option<String>,
    /// Version it runs.
    pub version: String,
}

/// Which machines a percentage would add to those included now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Preview {
    /// Percentage in force now.
    pub current_percent: f64,
    /// Percentage previewed.
    pub percent: f64,
    /// Machines it adds (not yet on the target), in total.
    pub added: u64,
    /// Machines already included (or canaries) and not yet on the target.
    pub already_included: u64,
    /// The added machines (up to the requested limit), by machine id.
    pub machines: Vec<PreviewMachine>,
}

/// Previews `percent` (default: the next ramp step) for the group's machines; `aliases` are the
/// aliases operators assigned, by machine id (canaries match them as the check path does).
#[allow(clippy::too_many_arguments)]
pub fn preview<'a>(
    app_id: &str,
    spec: &RolloutSpec,
    aliases: &BTreeMap<String, String>,
    target_version: Option<&str>,
    percent: Option<f64>,
    instances: impl IntoIterator<Item = &'a Instance>,
    limit: usize,
    now: i64,
) -> Preview {
    let current = effective_percent(spec, now);
    let percent = percent
        .or_else(|| next_step(spec, now).map(|(_, p)| p))
        .unwrap_or(current)
        .clamp(0.0, 100.0);
    let mut out = Preview {
        current_percent: current,
        percent,
        added: 0,
        already_included: 0,
        machines: Vec::new(),
    };
    for i in instances {
        if target_version == Some(i.version.as_str()) {
            continue;
        }
        let operator_alias = aliases.get(&i.machine_id).map(String::as_str);
        let now_in = is_canary(spec, &i.machine_id, operator_alias)
            || in_percentage(app_id, &i.machine_id, current);
        if now_in {
            out.already_included += 1;
        } else if in_percentage(app_id, &i.machine_id, percent) {
            out.added += 1;
            out.machines.push(PreviewMachine {
                machine_id: i.machine_id.clone(),
                alias: i.alias.clone(),
                operator_alias: operator_alias.map(str::to_owned),
                version: i.version.clone(),
            });
        }
    }
    out.machines.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
    out.machines.truncate(limit);
    out
}

/// What a policy lets through at one instant (a policy preview's "now" or "later").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EligibleAt {
    /// The instant (Unix seconds).
    pub at: i64,
    /// Percentage the policy sets then (its ramp included).
    pub percent: f64,
    /// Whether a grant window is open then (always, for a policy without windows).
    pub window_open: bool,
    /// When the next window opens, if none is open then.
    pub next_window_at: Option<i64>,
    /// Machines the policy lets through then: their next check would be a grant candidate.
    pub eligible: u64,
    /// Machines the percentage, ramp and canaries admit then but a closed window holds.
    pub waiting_for_window: u64,
}

/// What a candidate policy would make eligible now and later, compared with the stored one.
///
/// Computed by the engine's in-memory rules ([`evaluate`] after [`choose`]): the version choice
/// (block list, floors, downgrades), windows, canaries, percentage and ramp. Pause and halt are
/// left out (the editor does not change them), and so are the limits decided when a grant is
/// made (rate, concurrency, gate, auto-halt, new machines per network).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyPreview {
    /// Machines in the group.
    pub machines: u64,
    /// Machines the candidate would offer a version (not on the target, not blocked, not newer
    /// unless downgrades are allowed); every machine when the group has no target version.
    pub to_update: u64,
    /// Eligible machines at the preview's time.
    pub now: EligibleAt,
    /// Eligible machines at the later instant.
    pub later: EligibleAt,
    /// Machines eligible at the later instant that are not eligible now.
    pub more_later: u64,
    /// Machines the stored policy lets through now.
    pub eligible_stored: u64,
    /// Machines eligible now under the candidate and not under the stored policy.
    pub added_now: u64,
    /// Machines eligible now under the stored policy and not under the candidate.
    pub removed_now: u64,
    /// The first machines (by machine id) `added_now` counts, up to the requested limit.
    pub added_machines: Vec<PreviewMachine>,
    /// The first machines (by machine id) `more_later` counts, up to the requested limit.
    pub later_machines: Vec<PreviewMachine>,
}

/// A policy as the preview applies it: pause and halt left out, and the same policy without
/// windows (to tell what a closed window holds).
struct PreviewRules {
    spec: RolloutSpec,
    without_windows: RolloutSpec,
}

impl PreviewRules {
    fn new(spec: &RolloutSpec) -> Self {
        let spec = RolloutSpec {
            halted: None,
            ..spec.clone()
        };
        let without_windows = RolloutSpec {
            windows: Vec::new(),
            ..spec.clone()
        };
        Self {
            spec,
            without_windows,
        }
    }

    /// Whether the machine would be offered a version at all (the check path's version choice).
    fn offers(&self, target: Option<&str>, version: &str) -> bool {
        match target {
            None => true,
            Some(t) => {
                crate::version::is_valid(version)
                    && matches!(
                        choose(&self.spec, version, t, |_| true),
                        TargetChoice::Serve { .. }
                    )
            }
        }
    }

    /// The engine's verdict for a machine at `t` (never paused: see [`PolicyPreview`]).
    fn verdict(&self, app_id: &str, machine: &str, alias: Option<&str>, t: i64) -> Verdict {
        evaluate(false, &self.spec, app_id, machine, alias, t)
    }

    /// Whether the percentage, ramp or canaries admit the machine at `t`, windows aside.
    fn admits_without_windows(
        &self,
        app_id: &str,
        machine: &str,
        alias: Option<&str>,
        t: i64,
    ) -> bool {
        matches!(
            evaluate(false, &self.without_windows, app_id, machine, alias, t),
            Verdict::Candidate { .. }
        )
    }

    /// The instant's summary, without its machine counts.
    fn at(&self, t: i64) -> EligibleAt {
        let windows = WindowSet::new(self.spec.windows.clone());
        let ts = Timestamp::from_second(t).unwrap_or(Timestamp::UNIX_EPOCH);
        let window_open = windows.is_empty() || windows.contains(ts);
        EligibleAt {
            at: t,
            percent: effective_percent(&self.spec, t),
            window_open,
            next_window_at: (!window_open)
                .then(|| windows.next_start_after(ts).map(|n| n.as_second()))
                .flatten(),
            eligible: 0,
            waiting_for_window: 0,
        }
    }
}

/// Previews the `candidate` policy against the `stored` one on a group's machines, at `at`
/// and at `later`; `aliases` are the aliases operators assigned, by machine id (canaries match
/// them as the check path does); the machine lists hold at most `limit` entries each.
#[allow(clippy::too_many_arguments)]
pub fn policy_preview<'a>(
    app_id: &str,
    candidate: &RolloutSpec,
    stored: &RolloutSpec,
    aliases: &BTreeMap<String, String>,
    target_version: Option<&str>,
    instances: impl IntoIterator<Item = &'a Instance>,
    at: i64,
    later: i64,
    limit: usize,
) -> PolicyPreview {
    let cand = PreviewRules::new(candidate);
    let stor = PreviewRules::new(stored);
    let mut out = PolicyPreview {
        machines: 0,
        to_update: 0,
        now: cand.at(at),
        later: cand.at(later),
        more_later: 0,
        eligible_stored: 0,
        added_now: 0,
        removed_now: 0,
        added_machines: Vec::new(),
        later_machines: Vec::new(),
    };
    // Tallies one instant; returns whether the machine is eligible then.
    let tally = |slot: &mut EligibleAt, machine: &str, alias: Option<&str>| -> bool {
        match cand.verdict(app_id, machine, alias, slot.at) {
            Verdict::Candidate { .. } => {
                slot.eligible += 1;
                true
            }
            Verdict::Hold(HoldReason::Window) => {
                if cand.admits_without_windows(app_id, machine, alias, slot.at) {
                    slot.waiting_for_window += 1;
                }
                false
            }
            Verdict::Hold(_) => false,
        }
    };
    for i in instances {
        out.machines += 1;
        let alias = aliases.get(&i.machine_id).map(String::as_str);
        let stored_now = stor.offers(target_version, &i.version)
            && matches!(
                stor.verdict(app_id, &i.machine_id, alias, at),
                Verdict::Candidate { .. }
            );
        if stored_now {
            out.eligible_stored += 1;
        }
        if !cand.offers(target_version, &i.version) {
            if stored_now {
                out.removed_now += 1;
            }
            continue;
        }
        out.to_update += 1;
        let now_in = tally(&mut out.now, &i.machine_id, alias);
        let later_in = tally(&mut out.later, &i.machine_id, alias);
        let listed = || PreviewMachine {
            machine_id: i.machine_id.clone(),
            alias: i.alias.clone(),
            operator_alias: alias.map(str::to_owned),
            version: i.version.clone(),
        };
        match (now_in, stored_now) {
            (true, false) => {
                out.added_now += 1;
                out.added_machines.push(listed());
            }
            (false, true) => out.removed_now += 1,
            _ => {}
        }
        if later_in && !now_in {
            out.more_later += 1;
            out.later_machines.push(listed());
        }
    }
    for list in [&mut out.added_machines, &mut out.later_machines] {
        list.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
        list.truncate(limit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::spec::{Ramp, RampStep};
    use super::*;
    use crate::lifecycle::InstanceStatus;

    fn machine(id: &str, version: &str) -> Instance {
        Instance {
            machine_id: id.to_owned(),
            app_id: "app".to_owned(),
            alias: String::new(),
            ip: String::new(),
            version: version.to_owned(),
            group_id: Some("g".to_owned()),
            track: "stable".to_owned(),
            oem: String::new(),
            oem_version: String::new(),
            board: "amd64-usr".to_owned(),
            boot_id: String::new(),
            last_check_at: 0,
            granted_version: None,
            granted_at: None,
            status: InstanceStatus::Idle,
            status_detail: String::new(),
            error_code: None,
            status_at: 0,
            created_at: 0,
            served_payload: None,
        }
    }

    fn fleet(n: usize) -> Vec<Instance> {
        (0..n)
            .map(|i| machine(&format!("m{i:03}"), "1.0.0"))
            .collect()
    }

    fn percent(p: f64) -> RolloutSpec {
        RolloutSpec {
            percentage: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn a_percentage_counts_what_the_percentage_preview_adds() {
        let machines = fleet(400);
        let aliases = BTreeMap::new();
        let stored = percent(0.0);
        let p = policy_preview(
            "app",
            &percent(25.0),
            &stored,
            &aliases,
            Some("2.0.0"),
            &machines,
            1_000,
            1_000 + 86_400,
            5,
        );
        let by_percent = preview(
            "app",
            &stored,
            &aliases,
            Some("2.0.0"),
            Some(25.0),
            &machines,
            5,
            1_000,
        );
        assert_eq!(p.machines, 400);
        assert_eq!(p.now.eligible, by_percent.added);
        assert!((60..140).contains(&p.now.eligible), "{}", p.now.eligible);
        assert_eq!(p.added_now, p.now.eligible);
        assert_eq!(p.more_later, 0);
        assert_eq!(p.added_machines, by_percent.machines);
        // Lowering it back removes them again.
        let back = policy_preview(
            "app",
            &stored,
            &percent(25.0),
            &aliases,
            Some("2.0.0"),
            &machines,
            1_000,
            1_000,
            5,
        );
        assert_eq!(back.removed_now, p.now.eligible);
        assert_eq!(back.now.eligible, 0);
    }

    #[test]
    fn a_ramp_step_within_the_horizon_is_counted_later() {
        let machines = fleet(400);
        let ramp = RolloutSpec {
            ramp: Some(Ramp {
                start_at: 0,
                start_percent: 10.0,
                duration_secs: 0,
                steps: vec![RampStep {
                    after_secs: 86_400,
                    percent: 50.0,
                }],
            }),
            ..Default::default()
        };
        let p = policy_preview(
            "app",
            &ramp,
            &RolloutSpec::default(),
            &BTreeMap::new(),
            Some("2.0.0"),
            &machines,
            3_600,
            3_600 + 86_400,
            1_000,
        );
        let at = |pc| {
            machines
                .iter()
                .filter(|m| in_percentage("app", &m.machine_id, pc))
                .count() as u64
        };
        assert_eq!(p.now.percent, 10.0);
        assert_eq!(p.later.percent, 50.0);
        assert_eq!(p.now.eligible, at(10.0));
        assert_eq!(p.later.eligible, at(50.0));
        assert_eq!(p.more_later, at(50.0) - at(10.0));
        assert_eq!(p.later_machines.len() as u64, p.more_later);
        // The stored policy (100 %) let every machine through: the ramp removes most.
        assert_eq!(p.eligible_stored, 400);
        assert_eq!(p.removed_now, 400 - at(10.0));
    }

    #[test]
    fn machines_on_the_target_blocked_versions_and_closed_windows_are_not_eligible() {
        let mut machines = fleet(10);
        machines.push(machine("on-target", "2.0.0"));
        machines.push(machine("newer", "3.0.0"));
        let all = BTreeMap::new();
        let p = policy_preview(
            "app",
            &RolloutSpec::default(),
            &RolloutSpec::default(),
            &all,
            Some("2.0.0"),
            &machines,
            0,
            0,
            100,
        );
        assert_eq!((p.machines, p.to_update, p.now.eligible), (12, 10, 10));
        let blocked = RolloutSpec {
            blocked_versions: vec!["2.0.0".into()],
            ..Default::default()
        };
        let p = policy_preview(
            "app",
            &blocked,
            &RolloutSpec::default(),
            &all,
            Some("2.0.0"),
            &machines,
            0,
            0,
            100,
        );
        assert_eq!((p.to_update, p.now.eligible, p.removed_now), (0, 0, 10));
        // 1970-01-01 was a Thursday: a Monday window is closed then, and its opening is named.
        let windowed: RolloutSpec =
            serde_json::from_str(r#"{"windows":["Mon 10:00 1h UTC"],"canaries":["m001"]}"#)
                .unwrap();
        let p = policy_preview(
            "app",
            &windowed,
            &RolloutSpec::default(),
            &all,
            Some("2.0.0"),
            &machines,
            0,
            0,
            100,
        );
        assert!(!p.now.window_open);
        assert_eq!(p.now.eligible, 0);
        assert_eq!(p.now.waiting_for_window, 10);
        assert_eq!(p.now.next_window_at, Some(4 * 86_400 + 10 * 3600));
        // Inside the window: everyone (the canary too).
        let monday = 4 * 86_400 + 10 * 3600 + 60;
        let p = policy_preview(
            "app",
            &windowed,
            &RolloutSpec::default(),
            &all,
            Some("2.0.0"),
            &machines,
            monday,
            monday,
            100,
        );
        assert!(p.now.window_open);
        assert_eq!((p.now.eligible, p.now.waiting_for_window), (10, 0));
    }
}
