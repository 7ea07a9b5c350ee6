//! The rollout-policy hook of the update-check path. A policy sees the group, target package and
//! instance and either grants or holds; a hold is answered `noupdate` and its reason is kept on
//! the server. [`BasicPolicy`] honours only `paused`; the staged-rollout engine (issue 5) plugs in
//! by implementing [`RolloutPolicy`].

use crate::model::{App, Channel, Group, Instance, Package};

/// What a policy decides for one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    /// Serve the target.
    Grant,
    /// Hold back, for the given machine-readable reason (`paused`, `rate`, `window`...).
    Hold(String),
}

/// Everything a policy may look at.
#[derive(Debug)]
pub struct PolicyContext<'a> {
    /// Application.
    pub app: &'a App,
    /// Group.
    pub group: &'a Group,
    /// Channel the group follows.
    pub channel: &'a Channel,
    /// Target package.
    pub target: &'a Package,
    /// The instance asking (already refreshed by its ping).
    pub instance: &'a Instance,
    /// Now, Unix seconds.
    pub now: i64,
}

/// A rollout policy engine.
pub trait RolloutPolicy: Send + Sync + std::fmt::Debug {
    /// Decides whether the instance may get the target now.
    fn decide(&self, ctx: &PolicyContext<'_>) -> PolicyDecision;
}

/// Grants everything except in paused groups.
#[derive(Debug, Default, Clone, Copy)]
pub struct BasicPolicy;

impl RolloutPolicy for BasicPolicy {
    fn decide(&self, ctx: &PolicyContext<'_>) -> PolicyDecision {
        if ctx.group.policy.paused {
            PolicyDecision::Hold("paused".to_owned())
        } else {
            PolicyDecision::Grant
        }
    }
}
