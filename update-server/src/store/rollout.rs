//! Persistence of staged-rollout grants: a separate trait from [`super::Store`]. A grant attempt
//! is one atomic write transaction that re-reads the group's policy and counts the group's grants,
//! so rate and concurrency limits, timeouts, auto-halt and canary gates hold across concurrent
//! checks and across server replicas sharing one database. The rules themselves are domain code
//! ([`crate::rollout::grants`]), run by each store over its [`crate::rollout::grants::GrantTx`];
//! the grant types are defined there and re-exported here.
//!
//! There is one grant per machine, application, group and version: a machine granted a version
//! again (after it failed, timed out, deferred or completed it) reopens its grant, so every count
//! ([`GrantStats`], the limits, auto-halt) counts machines, however often one of them retries.
//!
//! It also keeps the versions a machine refused for good (it rolled back from them, or put them
//! on its deny list): a grant attempt of such a version is held inside the same transaction, so
//! no replica offers it again until an operator clears the refusal.

use super::StoreFuture;
use crate::model::NewActivity;
pub use crate::rollout::grants::{
    GrantOutcome, GrantRequest, GrantState, GrantStats, HaltedRollout, ProgressReport,
    RefusalReason, RefusedVersion,
};

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
