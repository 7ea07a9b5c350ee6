//! One round trip instead of a dozen: what a grant attempt will read, asked of the store at once
//! as it takes the group's lock ([`GrantTx::prefetch_grant`]), and a [`GrantTx`] view
//! ([`Prefetched`]) that answers the rules from it.
//!
//! The rules ([`super::grants::try_grant`]) are unchanged: they ask their questions one by one,
//! and the view answers each from the prefetched context only when it was asked with the same
//! arguments and nothing was written since; anything else goes to the store as before. What to
//! count (the concurrency, rate, auto-halt and gate counts, and the timeout to apply first)
//! depends on the group's policy, which is only known for sure under the lock: the caller names
//! the policy it expects (the catalogue's), and the store counts and expires only when the
//! locked policy is that one. A store whose round trips cost nothing (SQLite, in process) answers
//! `None` and the rules run over it directly.

use std::future::ready;

use crate::model::{GroupPolicy, NewActivity};
use crate::rollout::RolloutSpec;
use crate::rollout::grants::{
    GrantCount, GrantKey, GrantRequest, GrantTx, GroupPolicyRow, NewGrant, RefusalReason,
    RefusedVersion, RolloutKey, Settlement,
};
use crate::store::tx::TxFuture;

/// What a store prefetches for one grant attempt. The counts are planned from the policy the
/// caller expects the group to have ([`GrantPrefetch::plan`]); the store computes them, and
/// applies the timeout, only when the locked policy equals `expected_policy`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantPrefetch<'a> {
    /// The grant asked for.
    pub key: GrantKey<'a>,
    /// Now (Unix seconds): the settle time of grants timed out here.
    pub now: i64,
    /// The policy the counts below were planned from (`None`: count nothing).
    pub expected_policy: Option<&'a GroupPolicy>,
    /// Time out the group's in-flight grants (the machine's own grant of the version aside)
    /// without progress since this time, before counting.
    pub expire_before: Option<i64>,
    /// Count the group's in-flight grants (a concurrency limit).
    pub count_in_flight: bool,
    /// Count the machines granted in the group after this time, the grant asked for aside (a
    /// rate limit).
    pub granted_after: Option<i64>,
    /// Count the rollout's grants made after this time by state (auto-halt).
    pub halt_counted_after: Option<i64>,
    /// Read the gate group's policy and its completions of the version.
    pub gate_group: Option<String>,
}

impl<'a> GrantPrefetch<'a> {
    /// The expected policy counts nothing another grant of the group changes (no timeout, no
    /// concurrency or rate limit, no auto-halt; a gate only reads another group): grants of the
    /// group may then be decided by several transactions at once.
    pub fn counts_nothing(&self) -> bool {
        self.expected_policy.is_some()
            && self.expire_before.is_none()
            && !self.count_in_flight
            && self.granted_after.is_none()
            && self.halt_counted_after.is_none()
    }

    /// Plans the prefetch of `r`, as [`super::grants::try_grant`] will read with `expected` as
    /// the group's policy (`None` or an unreadable policy: the per-machine facts only).
    pub fn plan(r: &'a GrantRequest, expected: Option<&'a GroupPolicy>) -> Self {
        let mut p = Self {
            key: GrantKey::of(r),
            now: r.now,
            expected_policy: None,
            expire_before: None,
            count_in_flight: false,
            granted_after: None,
            halt_counted_after: None,
            gate_group: None,
        };
        let Some(policy) = expected else {
            return p;
        };
        let Ok(spec) = RolloutSpec::from_policy(policy) else {
            return p;
        };
        // A paused or halted group holds before anything is counted.
        if policy.paused || spec.halted.is_some() {
            return p;
        }
        p.expected_policy = Some(policy);
        p.expire_before = spec
            .update_timeout_secs
            .map(|t| super::grants::before(r.now, t));
        p.count_in_flight = spec.concurrency_limit.is_some();
        p.granted_after = spec
            .rate_limit
            .map(|rl| super::grants::before(r.now, rl.period_secs));
        p.halt_counted_after = spec
            .auto_halt
            .map(|_| spec.halt_counted_since.unwrap_or(i64::MIN));
        if !r.canary {
            p.gate_group = spec.gate.map(|g| g.group);
        }
        p
    }
}

/// What the store read for a [`GrantPrefetch`], after taking the group's lock.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrantContext {
    /// The group's application and policy, locked (`None`: no such group).
    pub group: Option<GroupPolicyRow>,
    /// Why the machine refuses the version, if it does.
    pub refusal: Option<RefusalReason>,
    /// The machine holds an in-flight grant of the version (in any group).
    pub in_flight_here: bool,
    /// Whether the grant's machine was new to the rollout when the grant was first made (`None`:
    /// no such grant).
    pub recorded_new_machine: Option<bool>,
    /// The stored instance's first contact.
    pub instance_created_at: Option<i64>,
    /// When the rollout's first grant was made.
    pub rollout_start: Option<i64>,
    /// The machine holds in-flight or installed grants of other versions of the application.
    pub other_open_grants: bool,
    /// The planned counts, when the locked policy was the expected one (the timeout applied).
    pub counts: Option<PrefetchedCounts>,
}

/// The counts of a [`GrantPrefetch`], each present when it was planned.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PrefetchedCounts {
    /// The group's in-flight grants.
    pub in_flight: Option<u64>,
    /// Machines granted in the window, the grant asked for aside.
    pub granted_after: Option<u64>,
    /// The rollout's grants by state, for auto-halt.
    pub halt_counts: Option<Vec<GrantCount>>,
    /// The gate group's policy (read without its lock) and its completions of the version.
    pub gate: Option<(Option<GroupPolicyRow>, u64)>,
}

/// A [`GrantTx`] that answers the reads of one grant attempt from its prefetched context and
/// passes everything else to the store's transaction.
pub struct Prefetched<'t, 'p> {
    tx: &'t mut dyn GrantTx,
    plan: GrantPrefetch<'p>,
    ctx: GrantContext,
    /// Nothing was written through this view yet: the context is as current as a read.
    fresh: bool,
}

impl<'t, 'p> Prefetched<'t, 'p> {
    /// A view over `tx` answering from `ctx`, read for `plan`.
    pub fn new(tx: &'t mut dyn GrantTx, plan: GrantPrefetch<'p>, ctx: GrantContext) -> Self {
        Self {
            tx,
            plan,
            ctx,
            fresh: true,
        }
    }

    fn is_key(&self, machine_id: &str, app_id: &str, version: &str) -> bool {
        let k = &self.plan.key;
        k.machine_id == machine_id && k.app_id == app_id && k.version == version
    }

    fn is_group(&self, group_id: &str) -> bool {
        self.plan.key.group_id == group_id
    }

    /// The prefetched counts, while they are current.
    fn counts(&self) -> Option<&PrefetchedCounts> {
        self.ctx.counts.as_ref().filter(|_| self.fresh)
    }

    /// A write through the view: later reads go to the store.
    fn wrote(&mut self) -> &mut dyn GrantTx {
        self.fresh = false;
        &mut *self.tx
    }
}

fn answer<'a, T: Send + 'a>(v: T) -> TxFuture<'a, T> {
    Box::pin(ready(Ok(v)))
}

impl GrantTx for Prefetched<'_, '_> {
    fn group_policy<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, Option<GroupPolicyRow>> {
        if self.fresh && self.is_group(group_id) {
            return answer(self.ctx.group.clone());
        }
        self.tx.group_policy(group_id)
    }

    fn gate_policy<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, Option<GroupPolicyRow>> {
        if let Some((policy, _)) = self.counts().and_then(|c| c.gate.as_ref())
            && self.plan.gate_group.as_deref() == Some(group_id)
        {
            return answer(policy.clone());
        }
        self.tx.gate_policy(group_id)
    }

    fn store_group_policy<'a>(
        &'a mut self,
        group_id: &'a str,
        policy: &'a GroupPolicy,
    ) -> TxFuture<'a, ()> {
        self.wrote().store_group_policy(group_id, policy)
    }

    fn refusal_of<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, Option<RefusalReason>> {
        if self.fresh && self.is_key(machine_id, app_id, version) {
            return answer(self.ctx.refusal);
        }
        self.tx.refusal_of(machine_id, app_id, version)
    }

    fn insert_refusal<'a>(&'a mut self, refusal: &'a RefusedVersion) -> TxFuture<'a, ()> {
        self.wrote().insert_refusal(refusal)
    }

    fn has_in_flight_grant<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, bool> {
        if self.fresh && self.is_key(machine_id, app_id, version) {
            return answer(self.ctx.in_flight_here);
        }
        self.tx.has_in_flight_grant(machine_id, app_id, version)
    }

    fn expire_in_flight_grants<'a>(
        &'a mut self,
        group_id: &'a str,
        cutoff: i64,
        now: i64,
    ) -> TxFuture<'a, ()> {
        // Applied by the store before it counted (sparing the machine's own grant, which is not
        // in flight when the rules get here).
        if self.counts().is_some()
            && self.is_group(group_id)
            && self.plan.expire_before == Some(cutoff)
            && self.plan.now == now
        {
            return answer(());
        }
        self.wrote().expire_in_flight_grants(group_id, cutoff, now)
    }

    fn grant_counts<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
        since: i64,
    ) -> TxFuture<'a, Vec<GrantCount>> {
        if let Some(counts) = self.counts().and_then(|c| c.halt_counts.as_ref())
            && self.is_group(group_id)
            && self.plan.key.version == version
            && self.plan.halt_counted_after == Some(since)
        {
            return answer(counts.clone());
        }
        self.tx.grant_counts(group_id, version, since)
    }

    fn completed_grants<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, u64> {
        if let Some((_, done)) = self.counts().and_then(|c| c.gate.as_ref())
            && self.plan.gate_group.as_deref() == Some(group_id)
            && self.plan.key.version == version
        {
            return answer(*done);
        }
        self.tx.completed_grants(group_id, version)
    }

    fn in_flight_grants<'a>(&'a mut self, group_id: &'a str) -> TxFuture<'a, u64> {
        if let Some(n) = self.counts().and_then(|c| c.in_flight)
            && self.is_group(group_id)
        {
            return answer(n);
        }
        self.tx.in_flight_grants(group_id)
    }

    fn machines_granted_since<'a>(
        &'a mut self,
        besides: GrantKey<'a>,
        since: i64,
    ) -> TxFuture<'a, u64> {
        if let Some(n) = self.counts().and_then(|c| c.granted_after)
            && besides == self.plan.key
            && self.plan.granted_after == Some(since)
        {
            return answer(n);
        }
        self.tx.machines_granted_since(besides, since)
    }

    fn new_machine_grants_of_network<'a>(
        &'a mut self,
        network: &'a str,
        besides: GrantKey<'a>,
        since: i64,
    ) -> TxFuture<'a, u64> {
        // Rarely asked, and under a lock of its own: always the store.
        self.tx
            .new_machine_grants_of_network(network, besides, since)
    }

    fn recorded_new_machine<'a>(&'a mut self, key: GrantKey<'a>) -> TxFuture<'a, Option<bool>> {
        if self.fresh && key == self.plan.key {
            return answer(self.ctx.recorded_new_machine);
        }
        self.tx.recorded_new_machine(key)
    }

    fn rollout_start<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
    ) -> TxFuture<'a, Option<i64>> {
        if self.fresh && self.is_group(group_id) && self.plan.key.version == version {
            return answer(self.ctx.rollout_start);
        }
        self.tx.rollout_start(group_id, version)
    }

    fn record_rollout_start<'a>(
        &'a mut self,
        group_id: &'a str,
        version: &'a str,
        at: i64,
    ) -> TxFuture<'a, ()> {
        // Recorded once; a recorded start is never moved. The context stays valid: the writes
        // before this one (the grant) did not change the start.
        if self.ctx.rollout_start.is_some()
            && self.is_group(group_id)
            && self.plan.key.version == version
        {
            return answer(());
        }
        self.wrote().record_rollout_start(group_id, version, at)
    }

    fn instance_created_at<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> TxFuture<'a, Option<i64>> {
        let k = &self.plan.key;
        if self.fresh && k.machine_id == machine_id && k.app_id == app_id {
            return answer(self.ctx.instance_created_at);
        }
        self.tx.instance_created_at(machine_id, app_id)
    }

    fn supersede_other_grants<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
        now: i64,
    ) -> TxFuture<'a, ()> {
        // Nothing to supersede: the machine had no other open grant when the lock was taken
        // (only this grant attempt's transaction writes the machine's grants of this group, and
        // the timeouts applied since only closed grants).
        if self.fresh && !self.ctx.other_open_grants && self.is_key(machine_id, app_id, version) {
            return answer(());
        }
        self.wrote()
            .supersede_other_grants(machine_id, app_id, version, now)
    }

    fn upsert_grant<'a>(&'a mut self, grant: NewGrant<'a>) -> TxFuture<'a, ()> {
        self.wrote().upsert_grant(grant)
    }

    fn settle_grants<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        settlement: Settlement<'a>,
        now: i64,
    ) -> TxFuture<'a, Vec<RolloutKey>> {
        self.wrote()
            .settle_grants(machine_id, app_id, settlement, now)
    }

    fn add_activity<'a>(&'a mut self, act: &'a NewActivity, at: i64) -> TxFuture<'a, ()> {
        self.wrote().add_activity(act, at)
    }

    fn prefetch_grant<'a>(
        &'a mut self,
        plan: &'a GrantPrefetch<'a>,
    ) -> TxFuture<'a, Option<GrantContext>> {
        self.tx.prefetch_grant(plan)
    }
}
