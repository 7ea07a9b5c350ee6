//! The fleet at a glance, for the dashboard: every application with its channels (the version
//! each points at), the groups following each channel, and per group its target version,
//! machines by status, grant counts of the target and the auto-halt threshold; and a group's
//! activity timeline. Read-only: counts come from one aggregate query over the instances and one
//! grant tally per group, never from loading machines.

use std::collections::{BTreeMap, HashMap};

use super::{Fleet, FleetResult, find_app, find_group};
use crate::lifecycle::InstanceStatus;
use crate::model::{Activity, App, Channel, Group, PackageFormat};
use crate::rollout::ramp::effective_percent;
use crate::rollout::spec::{AutoHalt, Halt};
use crate::store::rollout::GrantStats;

/// Activity entries of the application read to find a group's timeline.
const TIMELINE_SCAN: u32 = 1000;

/// Activity kinds an operator's change to a group writes (with the group named in the message,
/// as `group NAME`, and without a group id).
const GROUP_KINDS: [&str; 5] = [
    "group_created",
    "group_updated",
    "group_deleted",
    "rollout_paused",
    "rollout_resumed",
];

/// The whole fleet.
#[derive(Debug, Clone)]
pub struct FleetOverview {
    /// Applications, by name.
    pub apps: Vec<AppOverview>,
    /// When it was read (Unix seconds).
    pub at: i64,
}

/// One application.
#[derive(Debug, Clone)]
pub struct AppOverview {
    /// The application.
    pub app: App,
    /// Its channels, by name, each with the groups following it.
    pub channels: Vec<ChannelOverview>,
    /// Groups that follow no channel.
    pub unassigned: Vec<GroupOverview>,
    /// Machines of the application in no group (their track names none).
    pub ungrouped_machines: u64,
}

/// One channel.
#[derive(Debug, Clone)]
pub struct ChannelOverview {
    /// The channel.
    pub channel: Channel,
    /// The version it points at, per architecture (an update_engine pointer as `<arch>
    /// (update_engine)`; `None`: the package is gone).
    pub versions: BTreeMap<String, Option<String>>,
    /// Groups following it, by name.
    pub groups: Vec<GroupOverview>,
}

/// One group and its rollout.
#[derive(Debug, Clone)]
pub struct GroupOverview {
    /// The group.
    pub group: Group,
    /// The version its channel names (for its first architecture), if any.
    pub target_version: Option<String>,
    /// Paused by an operator.
    pub paused: bool,
    /// Set when the rollout halted itself.
    pub halted: Option<Halt>,
    /// Percentage in force now (ramp included).
    pub effective_percent: f64,
    /// Machines in the group.
    pub machines: u64,
    /// Machines running the target version.
    pub on_target: u64,
    /// Machines by lifecycle status (every status, zero included, in lifecycle order).
    pub by_status: Vec<(InstanceStatus, u64)>,
    /// Grants of the target version by state.
    pub grants: GrantStats,
    /// Failures / attempts of the target version (unweighted).
    pub failure_rate: f64,
    /// The auto-halt threshold, when the policy sets one.
    pub auto_halt: Option<AutoHalt>,
    /// Machines that checked in during the last [`CHECKIN_RATE_WINDOW_SECS`], per minute.
    pub checkins_per_minute: f64,
}

/// The window over which the overview's check-in rate is taken (seconds). A machine counts
/// once in it, however often it checked in (the rate is of machines, not of requests).
pub const CHECKIN_RATE_WINDOW_SECS: i64 = 300;

/// One group's counts.
#[derive(Debug, Clone, Default)]
struct GroupCounts {
    /// Machines by status.
    statuses: HashMap<InstanceStatus, u64>,
    /// Machines by version.
    versions: BTreeMap<String, u64>,
    /// Machines that checked in within the rate window.
    checked_in: u64,
}

/// Per group id, its counts.
type Counts = BTreeMap<String, GroupCounts>;

impl Fleet {
    /// The whole fleet: applications → channels → groups, with each group's counts.
    pub async fn overview(&self) -> FleetResult<FleetOverview> {
        self.flush_checkins().await?;
        let cat = self.catalogue();
        let now = self.now();
        let mut counts: Counts = BTreeMap::new();
        let mut ungrouped: BTreeMap<String, u64> = BTreeMap::new();
        for c in self.store.instance_counts().await? {
            let n = u64::try_from(c.count).unwrap_or(0);
            match c.group_id {
                Some(g) => {
                    let e = counts.entry(g).or_default();
                    *e.statuses.entry(c.status).or_default() += n;
                    *e.versions.entry(c.version).or_default() += n;
                }
                None => *ungrouped.entry(c.app_id).or_default() += n,
            }
        }
        let since = now.saturating_sub(CHECKIN_RATE_WINDOW_SECS);
        for (_, group, n) in self.store.checked_in_counts(since).await? {
            if let Some(g) = group {
                counts.entry(g).or_default().checked_in += n;
            }
        }
        let data = cat.data();
        let mut apps = Vec::new();
        let mut sorted_apps: Vec<&App> = data.apps.iter().collect();
        sorted_apps.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        for app in sorted_apps {
            let mut groups: Vec<&Group> =
                data.groups.iter().filter(|g| g.app_id == app.id).collect();
            groups.sort_by(|a, b| a.name.cmp(&b.name));
            let mut channels = Vec::new();
            let mut app_channels: Vec<&Channel> = data
                .channels
                .iter()
                .filter(|c| c.app_id == app.id)
                .collect();
            app_channels.sort_by(|a, b| a.name.cmp(&b.name));
            for ch in app_channels {
                let versions = ch
                    .all_pointers()
                    .map(|(format, arch, id)| {
                        let key = match format {
                            PackageFormat::Platte => arch.to_owned(),
                            other => format!("{arch} ({})", other.as_str()),
                        };
                        (key, cat.package(id).map(|p| p.version.clone()))
                    })
                    .collect();
                let mut members = Vec::new();
                for g in groups
                    .iter()
                    .filter(|g| g.channel_id.as_deref() == Some(&ch.id))
                {
                    members.push(self.group_overview(g, &counts, now).await?);
                }
                channels.push(ChannelOverview {
                    channel: ch.clone(),
                    versions,
                    groups: members,
                });
            }
            let mut unassigned = Vec::new();
            for g in groups.iter().filter(|g| {
                g.channel_id
                    .as_deref()
                    .is_none_or(|c| cat.channel(c).is_none())
            }) {
                unassigned.push(self.group_overview(g, &counts, now).await?);
            }
            apps.push(AppOverview {
                app: app.clone(),
                channels,
                unassigned,
                ungrouped_machines: ungrouped.get(&app.id).copied().unwrap_or(0),
            });
        }
        Ok(FleetOverview { apps, at: now })
    }

    async fn group_overview(
        &self,
        g: &Group,
        counts: &Counts,
        now: i64,
    ) -> FleetResult<GroupOverview> {
        let spec = self.catalogue().spec(&g.id).clone();
        let target = self.target_version(g);
        let grants = match &target {
            Some(v) => {
                self.service
                    .rollouts
                    .grants
                    .grant_stats(&g.id, v, now)
                    .await?
            }
            None => GrantStats::default(),
        };
        let GroupCounts {
            statuses,
            versions,
            checked_in,
        } = counts.get(&g.id).cloned().unwrap_or_default();
        let machines = statuses.values().sum();
        let on_target = target
            .as_ref()
            .and_then(|t| versions.get(t).copied())
            .unwrap_or(0);
        Ok(GroupOverview {
            group: g.clone(),
            target_version: target,
            paused: g.policy.paused,
            halted: spec.halted.clone(),
            effective_percent: effective_percent(&spec, now),
            machines,
            on_target,
            by_status: InstanceStatus::ALL
                .iter()
                .map(|s| (*s, statuses.get(s).copied().unwrap_or(0)))
                .collect(),
            failure_rate: grants.failure_rate(),
            grants,
            auto_halt: spec.auto_halt,
            checkins_per_minute: checked_in as f64 * 60.0 / CHECKIN_RATE_WINDOW_SECS as f64,
        })
    }

    /// A group's activity timeline, newest first, at most `limit` entries: the entries naming
    /// the group (an auto-halt, a machine's failure or refusal) and the operators' changes to it
    /// (created, updated, paused, resumed), found among the application's latest
    /// [`TIMELINE_SCAN`] entries.
    pub async fn group_activity(
        &self,
        app: &str,
        group: &str,
        limit: usize,
    ) -> FleetResult<Vec<Activity>> {
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let g = find_group(&cat, &a.id, group)?;
        let entries = self
            .store
            .list_activity(Some(&a.id), None, TIMELINE_SCAN)
            .await?;
        Ok(entries
            .into_iter()
            .filter(|e| match &e.group_id {
                Some(id) => *id == g.id,
                None => GROUP_KINDS.contains(&e.kind.as_str()) && names_group(&e.message, &g.name),
            })
            .take(limit)
            .collect())
    }
}

/// Whether an activity message names group `name` (`group NAME` followed by a space or the end).
fn names_group(message: &str, name: &str) -> bool {
    let needle = format!("group {name}");
    message.match_indices(&needle).any(|(at, _)| {
        message[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| c == ' ')
    })
}

#[cfg(test)]
mod tests {
    use super::names_group;

    #[test]
    fn a_message_names_a_group_only_as_a_whole_word() {
        assert!(names_group("rollout of group stable paused", "stable"));
        assert!(names_group("group stable updated", "stable"));
        assert!(names_group(
            "rollout of group stable resumed (was halted: x)",
            "stable"
        ));
        assert!(names_group("group stable", "stable"));
        assert!(!names_group("group stable-2 updated", "stable"));
        assert!(!names_group("group stables updated", "stable"));
        assert!(!names_group("rollout of group beta paused", "stable"));
    }
}
