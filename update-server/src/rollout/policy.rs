//! The rollout-policy hook of the update-check path. A policy sees the group (with its parsed
//! rollout spec), target package and instance and either grants or holds; a hold is answered
//! `noupdate` and its reason is kept on the server. The staged-rollout engine
//! ([`crate::rollout::RolloutEngine`]) is the implementation the server runs.

use super::{HoldReason, RolloutSpec};
use crate::model::{App, Channel, Group, Instance, Package};

/// What a policy decides for one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    /// Serve the target (subject to the store's atomic limits).
    Grant,
    /// Hold back, for the given reason.
    Hold(HoldReason),
}

/// Everything a policy may look at.
#[derive(Debug)]
pub struct PolicyContext<'a> {
    /// Application.
    pub app: &'a App,
    /// Group.
    pub group: &'a Group,
    /// The group's rollout spec (parsed once per catalogue snapshot).
    pub spec: &'a RolloutSpec,
    /// Channel the group follows.
    pub channel: &'a Channel,
    /// Target package.
    pub target: &'a Package,
    /// The instance asking (already refreshed by its ping).
    pub instance: &'a Instance,
    /// The alias an operator assigned to the machine, if any (canaries may name it; the alias
    /// the client reports is not trusted for anything).
    pub operator_alias: Option<&'a str>,
    /// Now, Unix seconds.
    pub now: i64,
}

/// A rollout policy engine.
pub trait RolloutPolicy: Send + Sync + std::fmt::Debug {
    /// Decides whether the instance may get the target now.
    fn decide(&self, ctx: &PolicyContext<'_>) -> PolicyDecision;
}
