//! Persistence of staged-rollout grants: a separate trait from [`super::Store`]. A grant attempt
//! is one atomic write transaction that re-reads the group's policy and counts the group's grants,
//! so rate and concurrency limits, timeouts, auto-halt and canary gates hold across concurrent
//! checks and across server replicas sharing one database.
//!
//! There is one grant per machine, application, group and version: a machine granted a version
//! again (after it failed, timed out, deferred or completed it) reopens its grant, so every count
//! ([`GrantStats`], the limits, auto-halt) counts machines, however often one of them retries.
//!
//! It also keeps the versions a machine refused for good (it rolled back from them, or put them
//! on its deny list): a grant attempt of such a version is held inside the same transaction, so
//! no replica offers it again until an operator clears the refusal.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::StoreFuture;
use crate::model::NewActivity;
use crate::rollout::{HoldReason, RateLimit};

/// State of one grant.
///
/// ```text
///  in_flight ──3/1──▶ installed ──3/2 previousversion──▶ complete
///  in_flight | installed ──x/0──▶ failed        in_flight ──no progress──▶ timed_out
///  failed | timed_out ──3/2 on this version──▶ complete  (it got there after all)
///  any ──rollback from (or deny list of) this version──▶ failed
///  in_flight ──3/9──▶ deferred
///  in_flight | installed ──a newer version granted──▶ superseded
///  any but in_flight ──granted again──▶ in_flight (the same row: one per machine and version)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Granted, not yet installed: occupies a concurrency slot.
    InFlight,
    /// Installed, awaiting reboot: not in flight, not failed.
    Installed,
    /// Running the new version.
    Complete,
    /// Reported an error (a rollback included).
    Failed,
    /// No progress within the update timeout: slot freed, counted as a failure.
    TimedOut,
    /// The machine deferred or declined the update (event 3/9): slot freed, neither an attempt
    /// nor a failure; reopened when the machine is granted the version again.
    Deferred,
    /// Closed because the machine was granted a newer version before it rebooted into this one
    /// (set by the store only): an attempt, neither a failure nor a completion.
    Superseded,
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
            Self::Deferred => "deferred",
            Self::Superseded => "superseded",
        }
    }

    /// All states.
    pub const ALL: [Self; 7] = [
        Self::InFlight,
        Self::Installed,
        Self::Complete,
        Self::Failed,
        Self::TimedOut,
        Self::Deferred,
        Self::Superseded,
    ];

    /// Parses the stored text form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Why a machine refuses a version for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The machine booted the version, failed, and fell back to the previous one (event 3/0
    /// with error code 44).
    RolledBack,
    /// The machine put the version on its deny list and will not install it (the Platte
    /// agent's runtime extensions: event 3/0 with code 35, "deny-listed", or 3112/3113/3114, a build
    /// whose restart or health check failed after activation and which the agent deny-listed).
    DenyListed,
}

/// Error code 44: rolled back to the previous version.
const CODE_ROLLED_BACK: u32 = 44;
/// Error code 35 in a 3/0 (not a 3/9): the Platte agent's deny list refused the offer.
const CODE_DENY_LISTED: u32 = 35;
/// The Platte agent's extension codes after which it always deny-lists the build: restart
/// failed (3112), health command failed (3113), refresh command failed (3114). 3111 (switching
/// the link failed) is a host problem, not the build's, and is not among them.
const CODES_DENY_LISTED_AFTER_FAILURE: [u32; 3] = [
    omaha::PlatteCode::ExtensionRestartFailed.to_u32(),
    omaha::PlatteCode::ExtensionHealthFailed.to_u32(),
    omaha::PlatteCode::ExtensionRefreshFailed.to_u32(),
];

impl RefusalReason {
    /// All reasons.
    pub const ALL: [Self; 2] = [Self::RolledBack, Self::DenyListed];

    /// Stable text form (as stored).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RolledBack => "rolled_back",
            Self::DenyListed => "deny_listed",
        }
    }

    /// Parses the stored text form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The refusal an error event (result 0) announces by its code (flag bits allowed), if any.
    pub fn of_error_code(code: Option<i64>) -> Option<Self> {
        let raw = u32::try_from(code?).ok()?;
        let base = omaha::ErrorCode::decode(raw).code.to_u32();
        match base {
            CODE_ROLLED_BACK => Some(Self::RolledBack),
            CODE_DENY_LISTED => Some(Self::DenyListed),
            c if CODES_DENY_LISTED_AFTER_FAILURE.contains(&c) => Some(Self::DenyListed),
            _ => None,
        }
    }

    /// The hold answered to a check that would offer the refused version.
    pub fn hold(self) -> HoldReason {
        match self {
            Self::RolledBack => HoldReason::RolledBack,
            Self::DenyListed => HoldReason::DenyListed,
        }
    }
}

/// A version one machine must not be offered again (per application).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RefusedVersion {
    /// Machine.
    pub machine_id: String,
    /// Application.
    pub app_id: String,
    /// The refused version.
    pub version: String,
    /// Why.
    pub reason: RefusalReason,
    /// The error code the machine reported (flags included), if any.
    pub error_code: Option<i64>,
    /// When it was recorded (Unix seconds).
    pub at: i64,
}

/// A machine's report on its open grant, settled in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressReport {
    /// Machine.
    pub machine_id: String,
    /// Application.
    pub app_id: String,
    /// The state the open grant moves to; `None` (or `InFlight`) only refreshes its timeout.
    pub state: Option<GrantState>,
    /// The version the machine runs, as this request says: a completion (3/2) also completes a
    /// failed or timed-out grant of it (the machine got there after all), unless it refused it.
    pub running_version: String,
    /// The machine refuses this version for good (it rolled back from it, or deny-listed it):
    /// record the refusal; the machine's grant of that version fails, whatever state it reached.
    pub refuse: Option<RefusedVersion>,
    /// Now (Unix seconds).
    pub now: i64,
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
    /// When this process first saw the machine (its instance's `created_at`); the store takes
    /// the earlier of this and the stored row's. A machine first seen at or after the first
    /// grant of the version in the group is new to that rollout.
    pub first_seen: i64,
    /// The machine's source network ([`crate::rollout::newcomers::network_of`]).
    pub network: String,
    /// The server-wide bound on grants to new machines per network (`None`: unbounded).
    pub new_machine_limit: Option<RateLimit>,
    /// Now (Unix seconds).
    pub now: i64,
}

/// A rollout that halted itself while a machine's report was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaltedRollout {
    /// Group.
    pub group_id: String,
    /// The version whose failure rate crossed the threshold.
    pub version: String,
    /// The halt reason (also stored in the group's policy).
    pub reason: String,
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

/// Grant counts of a group for one version, in machines (one grant per machine and version,
/// counted by the state of its latest attempt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantStats {
    /// Machines that attempted the version (every grant but the deferred ones).
    pub attempts: u64,
    /// Machines granted it, not yet installed (a retry after a failure included).
    pub in_flight: u64,
    /// Machines that installed it, awaiting reboot.
    pub installed: u64,
    /// Machines running it.
    pub complete: u64,
    /// Machines whose latest attempt failed (an error event, a rollback, a deny list).
    pub failed: u64,
    /// Machines whose latest attempt timed out.
    pub timed_out: u64,
    /// Machines that deferred or declined it (3/9), not granted again since: not attempts.
    #[serde(default)]
    pub deferred: u64,
    /// Machines granted a newer version before the reboot (counted in `attempts`).
    #[serde(default)]
    pub superseded: u64,
    /// Of `attempts`, the machines new to the rollout (first seen after its first grant).
    #[serde(default)]
    pub new_attempts: u64,
    /// Of `failed` and `timed_out`, the machines new to the rollout.
    #[serde(default)]
    pub new_failed: u64,
}

impl GrantStats {
    /// Machines that failed (errors and timeouts) over machines that attempted (0 without
    /// attempts).
    pub fn failure_rate(&self) -> f64 {
        if self.attempts == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let r = (self.failed + self.timed_out) as f64 / self.attempts as f64;
        r
    }

    /// Attempts and failures as auto-halt weighs them: a machine known before the rollout
    /// began counts 1, a machine new to it `new_weight`.
    pub fn weighted(&self, new_weight: f64) -> (f64, f64) {
        #[allow(clippy::cast_precision_loss)]
        let w = |all: u64, new: u64| all.saturating_sub(new) as f64 + new_weight * new as f64;
        (
            w(self.attempts, self.new_attempts),
            w(self.failed + self.timed_out, self.new_failed),
        )
    }
}

/// Rollout grant persistence.
pub trait RolloutStore: Send + Sync + std::fmt::Debug {
    /// Decides a grant atomically against the group's stored policy and grant counts; a grant
    /// of a version the machine was granted before in that group reopens that grant.
    fn try_grant<'a>(&'a self, req: &'a GrantRequest) -> StoreFuture<'a, GrantOutcome>;
    /// Moves a machine's open grant to the reported state (progress events refresh its timeout),
    /// records a refused version (failing the machine's grant of it), and, on a failure,
    /// evaluates auto-halt for every group and version that gained one; returns the rollouts
    /// this halted.
    fn record_progress<'a>(
        &'a self,
        report: &'a ProgressReport,
    ) -> StoreFuture<'a, Vec<HaltedRollout>>;
    /// Grant counts of a group for a version (timeouts applied as of `now`).
    fn grant_stats<'a>(
        &'a self,
        group_id: &'a str,
        version: &'a str,
        now: i64,
    ) -> StoreFuture<'a, GrantStats>;
    /// The versions a machine refused (for one app or all), oldest first.
    fn refused_versions<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<RefusedVersion>>;
    /// Clears a machine's refusals (for one app or all; one version or all) so the versions may
    /// be offered again, writing `act` to the activity feed when any was cleared; returns the
    /// cleared refusals.
    fn clear_refusals<'a>(
        &'a self,
        machine_id: &'a str,
        app_id: Option<&'a str>,
        version: Option<&'a str>,
        act: &'a NewActivity,
        now: i64,
    ) -> StoreFuture<'a, Vec<RefusedVersion>>;
    /// Sets (or, with `None`, removes) the alias an operator assigned to a machine, writing
    /// `act` to the activity feed; an alias another machine has is a
    /// [`super::StoreError::Conflict`].
    fn set_machine_alias<'a>(
        &'a self,
        machine_id: &'a str,
        alias: Option<&'a str>,
        act: &'a NewActivity,
        now: i64,
    ) -> StoreFuture<'a, ()>;
}
