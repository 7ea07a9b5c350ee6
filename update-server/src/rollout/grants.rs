//! The grant rules of staged rollouts, written once as domain code over a narrow transactional
//! interface ([`GrantTx`]) that each store implements in a few lines of SQL (SQLite:
//! `store/sqlite_rollout.rs`). The store runs them inside one write transaction that it opened
//! with the write lock (SQLite `BEGIN IMMEDIATE`; PostgreSQL: the group row locked first), so
//! every count read here stays true until the decision is committed, across concurrent checks
//! and across server replicas sharing one database.
//!
//! A grant attempt ([`try_grant`]) applies the rules in this order; the first that holds the
//! machine decides:
//!
//! 1. the group is gone → held (paused);
//! 2. the machine refused the version for good (rolled back, deny list) → held;
//! 3. the group is paused → held; 4. the rollout is halted → held;
//! 5. the machine already holds an in-flight grant of the version → granted (nothing written);
//! 6. in-flight grants without progress within the update timeout expire (`timed_out`);
//! 7. auto-halt: the failure threshold is crossed → the rollout halts itself, held;
//! 8. canary gate: the gate group is paused, halted or short of completions → held;
//! 9. concurrency limit; 10. rate limit; 11. the per-network bound on machines new to the
//!    rollout → held;
//! 12. the machine's open grants of other versions are superseded, its grant of this version is
//!     created or reopened (in flight), and the first grant records the rollout's start.
//!
//! A machine's report ([`record_progress`]) records a refusal (failing the machine's grant of
//! that version), moves its open grant, and evaluates expiry and auto-halt for every rollout
//! that gained a failure. [`grant_stats`] counts a rollout's grants, timeouts applied.
//!
//! There is one grant per machine, application, group and version: a machine granted a version
//! again reopens its grant, so every count ([`GrantStats`], the limits, auto-halt) counts
//! machines, however often one of them retries.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{GroupPolicy, NewActivity};
use crate::rollout::prefetch::{GrantContext, GrantPrefetch, Prefetched};
use crate::rollout::{AutoHalt, Halt, HoldReason, RateLimit, RolloutSpec};
use crate::store::StoreError;
use crate::store::tx::TxFuture;

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
    /// (set by a grant attempt only): an attempt, neither a failure nor a completion.
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
    /// The policy the caller expects the group to have (the catalogue's): a store that can
    /// prefetches the counts it needs as it takes the group's lock, and uses them when the
    /// locked policy is this one ([`super::prefetch`]). `None`: nothing is prefetched but the
    /// machine's own facts. The decision is the same either way.
    pub expected_policy: Option<GroupPolicy>,
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

/// Where every store keeps a group's policy (the schema is shared): named by a
/// [`StoreError::Corrupt`] for a policy the rules cannot read or write.
const POLICY_TABLE: &str = "groups_";
/// The policy column of [`POLICY_TABLE`].
const POLICY_COLUMN: &str = "policy";

fn corrupt_policy(detail: String) -> StoreError {
    StoreError::Corrupt {
        table: POLICY_TABLE,
        column: POLICY_COLUMN,
        detail,
    }
}

/// A group's stored rollout settings, as a grant transaction reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPolicyRow {
    /// The group's application.
    pub app_id: String,
    /// The group's policy (`paused` and the rollout spec).
    pub policy: GroupPolicy,
}

/// The identity of one grant: one per machine, application, group and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantKey<'k> {
    /// Machine.
    pub machine_id: &'k str,
    /// Application.
    pub app_id: &'k str,
    /// Group.
    pub group_id: &'k str,
    /// Version.
    pub version: &'k str,
}

impl<'k> GrantKey<'k> {
    /// The grant a request asks for.
    pub fn of(r: &'k GrantRequest) -> Self {
        Self {
            machine_id: &r.machine_id,
            app_id: &r.app_id,
            group_id: &r.group_id,
            version: &r.version,
        }
    }
}

/// A grant being made: created in flight, or reopened in flight (keeping the `new_machine` it
/// recorded when first made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewGrant<'k> {
    /// Which grant.
    pub key: GrantKey<'k>,
    /// The machine is a named canary.
    pub canary: bool,
    /// The machine's source network.
    pub network: &'k str,
    /// The machine is new to the rollout (written on creation only).
    pub new_machine: bool,
    /// Grant time, also its progress time (Unix seconds).
    pub at: i64,
}

/// The number of grants of a rollout in one state, split by whether the machine was new to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantCount {
    /// State of the grants.
    pub state: GrantState,
    /// The grants' machines were new to the rollout.
    pub new_machine: bool,
    /// How many grants (machines).
    pub machines: u64,
}

/// One rollout: a version in a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RolloutKey {
    /// Group.
    pub group_id: String,
    /// Version.
    pub version: String,
}

/// How a machine's report settles its grants (each an update of the machine's grants of one
/// application; the store returns the rollout of every grant it changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement<'a> {
    /// The machine refuses this version for good: every grant of it not yet failed fails
    /// (settled now), whatever state it reached.
    Refuse(&'a str),
    /// A progress event: the in-flight grant's progress time becomes now (its timeout restarts).
    Progress,
    /// In flight → installed (progress time now).
    Installed,
    /// In flight or installed → complete; so does a failed or timed-out grant of
    /// `running_version` (the machine got there after all), unless the machine refused that
    /// version (settled now).
    Complete {
        /// The version the machine runs.
        running_version: &'a str,
    },
    /// In flight or installed → failed (settled now).
    Failed,
    /// In flight → deferred (settled now).
    Deferred,
}

/// The operations the grant rules run inside one write transaction. Each store implements them
/// in SQL; none of them decides anything. Times are Unix seconds.
pub trait GrantTx: Send {
    /// The application and policy of a group (`None`: no such group). A policy that is not
    /// valid JSON is a [`StoreError::Corrupt`].
    fn group_policy<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, Option<GroupPolicyRow>>;
    /// As [`GrantTx::group_policy`], for the group a canary gate waits on: read as committed,
    /// without the lock a store may take on the group being granted (so a gated grant neither
    /// waits behind the gate group's grants nor takes a second group's lock).
    fn gate_policy<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, Option<GroupPolicyRow>>;
    /// Replaces a group's policy.
    fn store_group_policy<'a>(
        &'a mut self,
        group_id: &'a str,
        policy: &'a GroupPolicy,
    ) -> TxFuture<'a, ()>;
    /// Why the machine refuses `version` of `app_id` for good, if it does.
    fn refusal_of<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, Option<RefusalReason>>;
    /// Records a refusal; a machine's repeated refusal of a version keeps the first.
    fn insert_refusal<'a>(&'a mut self, refusal: &'a RefusedVersion) -> TxFuture<'a, ()>;
    /// Whether the machine holds an in-flight grant of `version` of `app_id` (in any group).
    fn has_in_flight_grant<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, bool>;
    /// Times out the group's in-flight grants whose last progress is before `cutoff`,
    /// settled at `now`.
    fn expire_in_flight_grants<'a>(
        &'a mut self,
        group_id: &'a str,
        cutoff: i64,
        now: i64,
    ) -> TxFuture<'a, ()>;
    /// The grants of a rollout made after `since`, counted by state and by whether the
    /// machine was new to the rollout.
    fn grant_counts<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
        since: i64,
    ) -> TxFuture<'a, Vec<GrantCount>>;
    /// The machines that completed `version` in a group.
    fn completed_grants<'a>(&'a mut self, group_id: &'a str, version: &'a str)
    -> TxFuture<'a, u64>;
    /// The group's in-flight grants (of any version).
    fn in_flight_grants<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, u64>;
    /// The machines granted (deferrals aside) in `besides`'s group after `since`, not counting
    /// the grant `besides` itself.
    fn machines_granted_since<'a>(
        &'a mut self,
        besides: GrantKey<'a>,
        since: i64,
    ) -> TxFuture<'a, u64>;
    /// The grants (deferrals aside) of machines new to their rollout from `network` that are in
    /// flight or were made after `since`, in any group, not counting the grant `besides`.
    fn new_machine_grants_of_network<'a>(
        &'a mut self,
        network: &'a str,
        besides: GrantKey<'a>,
        since: i64,
    ) -> TxFuture<'a, u64>;
    /// Whether the grant's machine was new to the rollout when the grant was first made
    /// (`None`: no such grant).
    fn recorded_new_machine<'a>(&'a mut self, key: GrantKey<'a>) -> TxFuture<'a, Option<bool>>;
    /// When a rollout's first grant was made (`None`: not yet).
    fn rollout_start<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, Option<i64>>;
    /// Records a rollout's start unless it is recorded already.
    fn record_rollout_start<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
        at: i64,
    ) -> TxFuture<'a, ()>;
    /// The stored instance's first contact (`created_at`; `None`: no instance row).
    fn instance_created_at<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> TxFuture<'a, Option<i64>>;
    /// Closes the machine's in-flight and installed grants of `app_id` for other versions than
    /// `version` as superseded, settled at `now`.
    fn supersede_other_grants<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
        now: i64,
    ) -> TxFuture<'a, ()>;
    /// Creates the grant in flight, or reopens it (in flight, canary, network and times from
    /// `grant`, unsettled, its recorded `new_machine` kept).
    fn upsert_grant<'a>(&'a mut self, grant: NewGrant<'a>) -> TxFuture<'a, ()>;
    /// Applies a settlement to the machine's grants of `app_id` at `now`; returns the rollout
    /// of every grant it changed.
    fn settle_grants<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        settlement: Settlement<'a>,
        now: i64,
    ) -> TxFuture<'a, Vec<RolloutKey>>;
    /// Appends an entry to the activity feed.
    fn add_activity<'a>(&'a mut self, act: &'a NewActivity, at: i64) -> TxFuture<'a, ()>;
    /// Takes the group's lock for a grant attempt and reads, at once, what the attempt will
    /// read ([`super::prefetch`]); `None` (the default): the store answers each read as it
    /// comes, and takes the lock at [`GrantTx::group_policy`].
    fn prefetch_grant<'a>(
        &'a mut self,
        plan: &'a GrantPrefetch<'a>,
    ) -> TxFuture<'a, Option<GrantContext>> {
        let _ = plan;
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// A group's policy with its rollout spec decoded.
struct Policy {
    app_id: String,
    policy: GroupPolicy,
    spec: RolloutSpec,
}

async fn load_policy(tx: &mut dyn GrantTx, group_id: &str) -> Result<Option<Policy>, StoreError> {
    let row = tx.group_policy(group_id).await?;
    decode_policy(row)
}

fn decode_policy(row: Option<GroupPolicyRow>) -> Result<Option<Policy>, StoreError> {
    let Some(row) = row else {
        return Ok(None);
    };
    let spec = RolloutSpec::from_policy(&row.policy).map_err(|e| corrupt_policy(e.to_string()))?;
    Ok(Some(Policy {
        app_id: row.app_id,
        policy: row.policy,
        spec,
    }))
}

/// `now` minus `secs`, saturating.
pub(crate) fn before(now: i64, secs: u64) -> i64 {
    now.saturating_sub(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// Times out the group's in-flight grants without progress within its update timeout.
async fn expire(
    tx: &mut dyn GrantTx,
    group_id: &str,
    spec: &RolloutSpec,
    now: i64,
) -> Result<(), StoreError> {
    let Some(t) = spec.update_timeout_secs else {
        return Ok(());
    };
    tx.expire_in_flight_grants(group_id, before(now, t), now)
        .await
}

/// Folds per-state counts into [`GrantStats`].
fn fold_stats(counts: &[GrantCount]) -> GrantStats {
    let mut s = GrantStats::default();
    for c in counts {
        let n = c.machines;
        let field = match c.state {
            GrantState::InFlight => &mut s.in_flight,
            GrantState::Installed => &mut s.installed,
            GrantState::Complete => &mut s.complete,
            GrantState::Failed => &mut s.failed,
            GrantState::TimedOut => &mut s.timed_out,
            // Put off by the machine: no attempt (yet), so not counted as one.
            GrantState::Deferred => {
                s.deferred += n;
                continue;
            }
            // Replaced by a newer release before the reboot: an attempt, nothing more.
            GrantState::Superseded => &mut s.superseded,
        };
        *field += n;
        s.attempts += n;
        if c.new_machine {
            s.new_attempts += n;
            if matches!(c.state, GrantState::Failed | GrantState::TimedOut) {
                s.new_failed += n;
            }
        }
    }
    s
}

async fn stats(
    tx: &mut dyn GrantTx,
    group_id: &str,
    version: &str,
    since: i64,
) -> Result<GrantStats, StoreError> {
    Ok(fold_stats(
        &tx.grant_counts(group_id, version, since).await?,
    ))
}

/// The halt reason when `s` crosses the auto-halt threshold `ah` for `version`, else `None`.
fn halt_reason(s: &GrantStats, ah: &AutoHalt, version: &str) -> Option<String> {
    let failures = s.failed + s.timed_out;
    // Machines new to the rollout (possibly invented ids) count `w` each, in the attempts that
    // must reach `min_attempts` and in the rate; with none, this is failures / attempts.
    let w = ah.new_weight();
    let (attempts, failed) = s.weighted(w);
    // A tolerance for the float sum (ten new machines at 0.1 are one attempt).
    let enough = attempts + 1e-9 >= f64::from(ah.min_attempts);
    let rate = if attempts > 0.0 {
        failed / attempts
    } else {
        0.0
    };
    if !enough || rate <= ah.max_failure_rate {
        return None;
    }
    let mut reason = format!(
        "{failures} of {} machines failed to update to {version} ({:.1}% > {:.1}%: {} errors, {} timeouts)",
        s.attempts,
        rate * 100.0,
        ah.max_failure_rate * 100.0,
        s.failed,
        s.timed_out
    );
    if s.new_attempts > 0 {
        reason.push_str(&format!(
            "; {} of the failed and {} of the attempting machines are new to the rollout and \
             count {w} each",
            s.new_failed, s.new_attempts
        ));
    }
    Some(reason)
}

/// Halts the group when its failure threshold is crossed for `version` (storing the halt in its
/// policy and writing the activity feed); returns the reason.
async fn halt_if_needed(
    tx: &mut dyn GrantTx,
    group_id: &str,
    version: &str,
    p: Policy,
    now: i64,
) -> Result<Option<String>, StoreError> {
    let Policy {
        app_id,
        mut policy,
        mut spec,
    } = p;
    let Some(ah) = spec.auto_halt else {
        return Ok(None);
    };
    if spec.halted.is_some() {
        return Ok(None);
    }
    let since = spec.halt_counted_since.unwrap_or(i64::MIN);
    let s = stats(tx, group_id, version, since).await?;
    let Some(reason) = halt_reason(&s, &ah, version) else {
        return Ok(None);
    };
    spec.halted = Some(Halt {
        version: version.to_owned(),
        reason: reason.clone(),
        at: now,
    });
    spec.store_into(&mut policy)
        .map_err(|e| corrupt_policy(e.to_string()))?;
    tx.store_group_policy(group_id, &policy).await?;
    let act = NewActivity {
        kind: "rollout_halted".into(),
        severity: "error",
        app_id: Some(app_id),
        group_id: Some(group_id.to_owned()),
        machine_id: None,
        version: Some(version.to_owned()),
        message: format!("rollout halted itself: {reason}"),
    };
    tx.add_activity(&act, now).await?;
    Ok(Some(reason))
}

/// Whether the machine of `r` is new to the rollout of its version in its group: the server
/// first saw it (the earlier of this process's and the stored instance's first contact) at or
/// after the rollout's first grant, or this grant is the first. A machine granted the version
/// before keeps what its grant recorded then.
async fn is_new_machine(tx: &mut dyn GrantTx, r: &GrantRequest) -> Result<bool, StoreError> {
    if let Some(recorded) = tx.recorded_new_machine(GrantKey::of(r)).await? {
        return Ok(recorded);
    }
    let started = tx.rollout_start(&r.group_id, &r.version).await?;
    let stored = tx.instance_created_at(&r.machine_id, &r.app_id).await?;
    let first_seen = stored.map_or(r.first_seen, |s| s.min(r.first_seen));
    Ok(first_seen >= started.unwrap_or(r.now))
}

/// Decides a grant attempt against the group's stored policy and grant counts, in the order the
/// module documentation gives, and writes the grant when it is made. Run it inside the store's
/// write transaction.
pub async fn try_grant(
    tx: &mut dyn GrantTx,
    req: &GrantRequest,
) -> Result<GrantOutcome, StoreError> {
    try_grant_with(tx, req, None).await
}

/// [`try_grant`] with a context the store already read in this transaction (with the check's
/// first statement, [`crate::store::instances::InstanceTx::check_in_and_prefetch`]), nothing
/// written since: used when it was read for the prefetch `req` plans, else read anew.
pub async fn try_grant_with(
    tx: &mut dyn GrantTx,
    req: &GrantRequest,
    read: Option<(GrantPrefetch<'_>, GrantContext)>,
) -> Result<GrantOutcome, StoreError> {
    let plan = GrantPrefetch::plan(req, req.expected_policy.as_ref());
    let ctx = match read {
        Some((read_for, ctx)) if read_for == plan => Some(ctx),
        _ => tx.prefetch_grant(&plan).await?,
    };
    match ctx {
        Some(ctx) => decide_grant(&mut Prefetched::new(tx, plan, ctx), req).await,
        None => decide_grant(tx, req).await,
    }
}

/// The rules of [`try_grant`], each read asked of `tx` as it comes.
async fn decide_grant(
    tx: &mut dyn GrantTx,
    req: &GrantRequest,
) -> Result<GrantOutcome, StoreError> {
    let r = req;
    let held = |reason| GrantOutcome::Held {
        reason,
        halted_now: None,
    };
    let Some(p) = load_policy(tx, &r.group_id).await? else {
        return Ok(held(HoldReason::Paused));
    };
    if let Some(reason) = tx.refusal_of(&r.machine_id, &r.app_id, &r.version).await? {
        return Ok(held(reason.hold()));
    }
    if p.policy.paused {
        return Ok(held(HoldReason::Paused));
    }
    if p.spec.halted.is_some() {
        return Ok(held(HoldReason::Halted));
    }
    if tx
        .has_in_flight_grant(&r.machine_id, &r.app_id, &r.version)
        .await?
    {
        return Ok(GrantOutcome::Granted);
    }
    expire(tx, &r.group_id, &p.spec, r.now).await?;
    let gate = p.spec.gate.clone();
    let (conc, rate) = (p.spec.concurrency_limit, p.spec.rate_limit);
    if let Some(reason) = halt_if_needed(tx, &r.group_id, &r.version, p, r.now).await? {
        return Ok(GrantOutcome::Held {
            reason: HoldReason::Halted,
            halted_now: Some(reason),
        });
    }
    if let Some(g) = gate
        && !r.canary
    {
        let gate_halted = match decode_policy(tx.gate_policy(&g.group).await?)? {
            Some(gp) => gp.policy.paused || gp.spec.halted.is_some(),
            None => true,
        };
        let done = tx.completed_grants(&g.group, &r.version).await?;
        if gate_halted || done < u64::from(g.min_complete) {
            return Ok(held(HoldReason::Gate));
        }
    }
    if let Some(limit) = conc
        && tx.in_flight_grants(&r.group_id).await? >= u64::from(limit)
    {
        return Ok(held(HoldReason::Concurrency));
    }
    let new_machine = is_new_machine(tx, r).await?;
    if let Some(rl) = rate {
        // Machines granted in the window, this one aside: a re-grant reopens the machine's grant
        // (moving its grant time to now), so it never adds a second one.
        let n = tx
            .machines_granted_since(GrantKey::of(r), before(r.now, rl.period_secs))
            .await?;
        if n >= u64::from(rl.count) {
            return Ok(held(HoldReason::Rate));
        }
    }
    // New machines (possibly invented ids) take the group's scarce slots at a bounded rate per
    // source network, whatever group or application they were granted in: the network's new
    // machines may hold at most `count` grants that are in flight or were made in the window
    // (so they cannot pile up slot after slot over several windows either). Established
    // machines and named canaries are never held by this.
    if let Some(nl) = r.new_machine_limit
        && new_machine
        && !r.canary
        && (conc.is_some() || rate.is_some())
    {
        let since = before(r.now, nl.period_secs);
        let n = tx
            .new_machine_grants_of_network(&r.network, GrantKey::of(r), since)
            .await?;
        if n >= u64::from(nl.count) {
            return Ok(held(HoldReason::NewMachineRate));
        }
    }
    // A machine offered a newer release before it rebooted into its staged one: the older grant
    // is closed as `superseded` (an attempt, neither a failure nor a completion), so the newer
    // version's completion is not counted for it too.
    tx.supersede_other_grants(&r.machine_id, &r.app_id, &r.version, r.now)
        .await?;
    // One grant per machine, group and version: a machine granted this version before (it
    // failed, timed out, deferred, completed or was superseded) gets that grant reopened, so
    // every count stays a count of machines. A reopened grant keeps whether its machine was new
    // to the rollout when first granted.
    tx.upsert_grant(NewGrant {
        key: GrantKey::of(r),
        canary: r.canary,
        network: &r.network,
        new_machine,
        at: r.now,
    })
    .await?;
    // The first grant of the version in the group starts its rollout.
    tx.record_rollout_start(&r.group_id, &r.version, r.now)
        .await?;
    Ok(GrantOutcome::Granted)
}

/// Settles a machine's report: records a refused version (failing the machine's grant of it),
/// moves its open grant to the reported state, and, for every rollout that gained a failure,
/// applies timeouts and evaluates auto-halt; returns the rollouts this halted. Run it inside the
/// store's write transaction.
pub async fn record_progress(
    tx: &mut dyn GrantTx,
    report: &ProgressReport,
) -> Result<Vec<HaltedRollout>, StoreError> {
    let p = report;
    let mut failed = Vec::new();
    if let Some(r) = &p.refuse {
        // The first report counts; a repeated one (the agent retrying) changes nothing.
        tx.insert_refusal(r).await?;
        // Whatever state its grant reached: a rollback reported after the grant completed
        // (the machine ran the version, then fell back) is a failure of that version too.
        failed = tx
            .settle_grants(
                &p.machine_id,
                &p.app_id,
                Settlement::Refuse(&r.version),
                p.now,
            )
            .await?;
    }
    let settlement = match p.state {
        None | Some(GrantState::InFlight) => Settlement::Progress,
        Some(GrantState::Installed) => Settlement::Installed,
        // The open grant completes; so does a failed or timed-out grant of the version the
        // machine now runs (a slow machine got there after its timeout), unless it refused it.
        Some(GrantState::Complete) => Settlement::Complete {
            running_version: &p.running_version,
        },
        Some(GrantState::Failed | GrantState::TimedOut) => Settlement::Failed,
        // Put off before it was installed: the slot is free, nothing failed.
        Some(GrantState::Deferred) => Settlement::Deferred,
        // Only a newer grant supersedes (in the grant transaction); no event reports it.
        Some(GrantState::Superseded) => return Ok(Vec::new()),
    };
    let changed = tx
        .settle_grants(&p.machine_id, &p.app_id, settlement, p.now)
        .await?;
    if settlement == Settlement::Failed {
        failed.extend(changed);
    }
    failed.sort();
    failed.dedup();
    let mut halts = Vec::new();
    for RolloutKey { group_id, version } in failed {
        let Some(policy) = load_policy(tx, &group_id).await? else {
            continue;
        };
        expire(tx, &group_id, &policy.spec, p.now).await?;
        if let Some(reason) = halt_if_needed(tx, &group_id, &version, policy, p.now).await? {
            halts.push(HaltedRollout {
                group_id,
                version,
                reason,
            });
        }
    }
    Ok(halts)
}

/// Grant counts of a rollout, in machines, after applying the group's timeouts as of `now`.
/// Run it inside the store's write transaction (expiry writes).
pub async fn grant_stats(
    tx: &mut dyn GrantTx,
    group_id: &str,
    version: &str,
    now: i64,
) -> Result<GrantStats, StoreError> {
    if let Some(p) = load_policy(tx, group_id).await? {
        expire(tx, group_id, &p.spec, now).await?;
    }
    stats(tx, group_id, version, i64::MIN).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto_halt(max_failure_rate: f64, min_attempts: u32, weight: Option<f64>) -> AutoHalt {
        AutoHalt {
            max_failure_rate,
            min_attempts,
            new_machine_weight: weight,
        }
    }

    #[test]
    fn the_halt_reason_names_failures_attempts_rates_and_kinds() {
        let s = GrantStats {
            attempts: 4,
            failed: 1,
            timed_out: 1,
            complete: 2,
            ..GrantStats::default()
        };
        assert_eq!(
            halt_reason(&s, &auto_halt(0.25, 4, None), "2.0.0").as_deref(),
            Some("2 of 4 machines failed to update to 2.0.0 (50.0% > 25.0%: 1 errors, 1 timeouts)")
        );
        // At the threshold, or short of min_attempts: no halt.
        assert_eq!(halt_reason(&s, &auto_halt(0.5, 4, None), "2.0.0"), None);
        assert_eq!(halt_reason(&s, &auto_halt(0.25, 5, None), "2.0.0"), None);
    }

    #[test]
    fn the_halt_reason_says_how_much_new_machines_weigh() {
        // 2 established attempts (1 failed) and 10 new ones (all failed) at weight 0.1:
        // 3 weighted attempts, 2 weighted failures.
        let s = GrantStats {
            attempts: 12,
            failed: 11,
            complete: 1,
            new_attempts: 10,
            new_failed: 10,
            ..GrantStats::default()
        };
        assert_eq!(
            halt_reason(&s, &auto_halt(0.5, 3, None), "2.0.0").as_deref(),
            Some(
                "11 of 12 machines failed to update to 2.0.0 (66.7% > 50.0%: 11 errors, 0 \
                 timeouts); 10 of the failed and 10 of the attempting machines are new to the \
                 rollout and count 0.1 each"
            )
        );
    }

    #[test]
    fn deferrals_are_not_attempts_and_superseded_grants_are() {
        let c = |state, new_machine, machines| GrantCount {
            state,
            new_machine,
            machines,
        };
        let s = fold_stats(&[
            c(GrantState::Deferred, false, 3),
            c(GrantState::Superseded, false, 2),
            c(GrantState::TimedOut, true, 1),
            c(GrantState::Complete, false, 4),
        ]);
        assert_eq!(
            (
                s.attempts,
                s.deferred,
                s.superseded,
                s.timed_out,
                s.complete
            ),
            (7, 3, 2, 1, 4)
        );
        assert_eq!((s.new_attempts, s.new_failed), (1, 1));
    }
}
