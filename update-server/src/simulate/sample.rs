//! One point of the time series: the simulator's own counts next to what the server reports
//! through its rollout status API at the same simulated instant.

use crate::rollout::status::RolloutStatus;
use crate::store::rollout::GrantStats;

use super::fleet::Counts;

/// What the server's rollout status said.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerPoint {
    /// Effective percentage of the ramp.
    pub effective_percent: f64,
    /// The rollout halted itself.
    pub halted: bool,
    /// Paused by an operator.
    pub paused: bool,
    /// Grants of the target version by state.
    pub grants: GrantStats,
    /// Machines reported on the target version.
    pub on_target: u64,
}

impl ServerPoint {
    /// Extracts the point from a status.
    pub fn of(st: &RolloutStatus, to_version: &str) -> Self {
        Self {
            effective_percent: st.effective_percent,
            halted: st.halted.is_some(),
            paused: st.paused,
            grants: st.grants,
            on_target: st.by_version.get(to_version).copied().unwrap_or(0),
        }
    }
}

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the start of the simulation.
    pub t: i64,
    /// Simulated Unix time.
    pub at: i64,
    /// The simulator's counts by state.
    pub counts: Counts,
    /// Attempts granted so far.
    pub grants: u64,
    /// Attempts failed so far.
    pub failures: u64,
    /// Requests sent so far.
    pub requests: u64,
    /// The server's view.
    pub server: ServerPoint,
}

impl Sample {
    /// Hours since the start.
    pub fn hours(&self) -> f64 {
        self.t as f64 / 3600.0
    }
}
