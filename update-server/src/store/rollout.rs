//! Persistence of staged-rollout grants: a separate trait from [`super::Store`]. A grant attempt
//! is one atomic write transaction that re-reads the group's policy and counts the group's grants,
//! so rate and concurrency limits, timeouts, auto-halt and canary gates hold across concurrent
//! checks and across server replicas sharing one database.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::StoreFuture;
use crate::rollout::HoldReason;

/// State of one grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Granted, not yet installed: occupies a concurrency slot.
    InFlight,
    /// Installed, awaiting reboot: not in flight, not failed.
    Installed,
    /// Running the new version.
    Complete,
    /// Reported an error.
    Failed,
    /// No progress within the update timeout: slot freed, counted as a failure.
    TimedOut,
}

impl GrantState {
    /// Stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Installed => "installed",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }
}

/// A grant attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    /// Group.
    pub group_id: String,
    /// Application.
    pub app_id: String,
    /// Machine.
    pub machine_id: String,
    /// Version to grant.
    pub version: String,
    /// The machine is a named canary.
    pub canary: bool,
    /// Now (Unix seconds).
    pub now: i64,
}

/// What a grant attempt decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOutcome {
    /// Granted (or already granted this version and still in flight).
    Granted,
    /// Held back.
    Held {
        /// Why.
        reason: HoldReason,
        /// This attempt found the failure threshold crossed and halted the rollout.
        halted_now: Option<String>,
    },
}

/// Grant counts of a group for one version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantStats {
    /// Machines that attempted the version (every grant).
    pub attempts: u64,
    /// Granted, not yet installed.
    pub in_flight: u64,
    /// Installed, awaiting reboot.
    pub installed: u64,
    /// Running it.
    pub complete: u64,
    /// Reported errors.
    pub failed: u64,
    /// Timed out.
    pub timed_out: u64,
}

impl GrantStats {
    /// Failures (errors and timeouts) over attempts (0 without attempts).
    pub fn failure_rate(&self) -> f64 {
        if self.attempts == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let r = (self.failed + self.timed_out) as f64 / self.attempts as f64;
        r
    }
}

/// Rollout grant persistence.
pub trait RolloutStore: Send + Sync + std::fmt::Debug {
    /// Decides a grant atomically against the group's stored policy and grant counts.
    fn try_grant<'a>(&'a self, req: &'a GrantRequest) -> StoreFuture<'a, GrantOutcome>;
    /// Moves a machine's open grant to `state` (progress events refresh its timeout) and, on a
    /// failure, evaluates auto-halt; returns the halt reason when this halted the rollout.
    fn record_progress<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: &'a str,
        state: Option<GrantState>,
        now: i64,
    ) -> StoreFuture<'a, Option<String>>;
    /// Grant counts of a group for a version (timeouts applied as of `now`).
    fn grant_stats<'a>(
        &'a self,
        group_id: &'a str,
        version: &'a str,
        now: i64,
    ) -> StoreFuture<'a, GrantStats>;
}
