//! Rollout metrics, per app/group/version: grants, installs, completions, failures, holds by
//! reason, and halted rollouts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// Labels of rollout counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// Application.
    pub app: String,
    /// Group id.
    pub group: String,
    /// Version concerned.
    pub version: String,
    /// `granted`, `installed`, `complete`, `failed`, `deferred`; and `rolled_back` or
    /// `deny_listed` next to `failed` when the machine refused the version for good.
    pub outcome: String,
}

/// Labels of hold counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldLabels {
    /// Application.
    pub app: String,
    /// Group id.
    pub group: String,
    /// Version held back.
    pub version: String,
    /// Hold reason.
    pub reason: String,
}

/// Labels of the halted gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Application.
    pub app: String,
    /// Group id.
    pub group: String,
}

/// The rollout metric families.
#[derive(Debug, Clone, Default)]
pub struct RolloutMetrics {
    /// Grant outcomes.
    pub outcomes: Family<RolloutLabels, Counter>,
    /// Checks held back, by reason.
    pub holds: Family<HoldLabels, Counter>,
    /// Auto-halts that happened.
    pub halts: Family<GroupLabels, Counter>,
    /// 1 while a group's rollout is halted (as known to this process).
    pub halted: Family<GroupLabels, Gauge>,
}

impl RolloutMetrics {
    /// Creates the families and registers them.
    pub fn register(m: &Metrics) -> Self {
        let s = Self::default();
        m.register(
            "rollout_updates",
            "Rollout grant outcomes by app, group, version",
            s.outcomes.clone(),
        );
        m.register(
            "rollout_holds",
            "Update checks held back by a rollout policy, by reason",
            s.holds.clone(),
        );
        m.register(
            "rollout_halts",
            "Rollouts that halted themselves",
            s.halts.clone(),
        );
        m.register(
            "rollout_halted",
            "1 while a group's rollout is halted",
            s.halted.clone(),
        );
        s
    }

    /// Counts a grant outcome.
    pub fn outcome(&self, app: &str, group: &str, version: &str, outcome: &str) {
        self.outcomes
            .get_or_create(&RolloutLabels {
                app: app.to_owned(),
                group: group.to_owned(),
                version: version.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a hold.
    pub fn hold(&self, app: &str, group: &str, version: &str, reason: &str) {
        self.holds
            .get_or_create(&HoldLabels {
                app: app.to_owned(),
                group: group.to_owned(),
                version: version.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Sets whether a group is halted.
    pub fn set_halted(&self, app: &str, group: &str, halted: bool) {
        self.halted
            .get_or_create(&GroupLabels {
                app: app.to_owned(),
                group: group.to_owned(),
            })
            .set(i64::from(halted));
    }
}
