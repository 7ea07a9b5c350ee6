//! What an operator sees of a rollout: the group's target, counts by state, share complete,
//! failure rate, next ramp step and halt reason; and a preview of the machines a percentage (or
//! the next ramp step) would add.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::bucket::in_percentage;
use super::engine::is_canary;
use super::ramp::{effective_percent, next_step};
use super::spec::{Halt, RolloutSpec};
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
