//! A group's rollout as an operator sees and steers it: its status, a preview of which machines
//! a percentage (or the next ramp step) would add, a preview of a candidate policy (what it would
//! make eligible now and later, before it is saved), and pause / resume (a resume also clears an
//! auto-halt). The rules are [`crate::rollout`]'s; this file reads and writes the group.

use serde::Deserialize;
use utoipa::IntoParams;

use super::groups::valid_spec;
use super::{Fleet, FleetError, FleetResult, activity, find_app, find_group};
use crate::model::{Group, GroupPolicy, PackageFormat, normalize_arch};
use crate::rollout::RolloutSpec;
use crate::rollout::status::{
    PolicyPreview, Preview, RolloutStatus, policy_preview, preview, summarize,
};
use crate::store::StoreError;

/// Times a pause or resume is tried again when the group changed under it (an auto-halt
/// committed between the read and the write).
const STATE_ATTEMPTS: usize = 3;
/// Machines a preview lists by default.
const PREVIEW_DEFAULT_LIMIT: usize = 100;
/// Most machines a preview lists.
const PREVIEW_MAX_LIMIT: usize = 10_000;

/// Query of the preview.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// Percentage to preview [default: the next ramp step, else the current percentage].
    pub percent: Option<f64>,
    /// How many machines to list [default 100, at most 10000].
    pub limit: Option<usize>,
}

/// The stored rollout spec of a group (stored policies were validated when written).
fn spec_of(g: &Group) -> FleetResult<RolloutSpec> {
    RolloutSpec::from_policy(&g.policy).map_err(|e| FleetError::Internal(e.to_string()))
}

impl Fleet {
    /// The version the group's channel points at (for its first architecture, else amd64).
    pub(super) fn target_version(&self, g: &Group) -> Option<String> {
        let cat = self.catalogue();
        let ch = cat.channel(g.channel_id.as_deref()?)?;
        let arch = ch
            .all_pointers()
            .next()
            .map_or_else(|| "amd64".to_owned(), |(_, a, _)| normalize_arch(a));
        cat.channel_package(ch, &arch, &PackageFormat::ALL)
            .map(|p| p.version.clone())
    }

    /// A group's rollout status.
    pub async fn rollout_status(&self, app: &str, group: &str) -> FleetResult<RolloutStatus> {
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let g = find_group(&cat, &a.id, group)?;
        let spec = spec_of(&g)?;
        let target = self.target_version(&g);
        let t = self.now();
        let grants = match &target {
            Some(v) => {
                self.service
                    .rollouts
                    .grants
                    .grant_stats(&g.id, v, t)
                    .await?
            }
            None => Default::default(),
        };
        self.flush_checkins().await?;
        let counts = self.store.group_instance_counts(&a.id, &g.id).await?;
        Ok(summarize(
            &a.id,
            &g.id,
            &g.name,
            g.policy.paused,
            &spec,
            target,
            &counts,
            grants,
            t,
        ))
    }

    /// Which machines a percentage (or the next ramp step) would add to a group's rollout.
    pub async fn rollout_preview(
        &self,
        app: &str,
        group: &str,
        query: PreviewQuery,
    ) -> FleetResult<Preview> {
        if query.percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
            return Err(FleetError::Invalid("percent must be within 0..=100".into()));
        }
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let g = find_group(&cat, &a.id, group)?;
        let spec = spec_of(&g)?;
        let target = self.target_version(&g);
        self.flush_checkins().await?;
        let rows = self.store.group_instances(&a.id, &g.id).await?;
        Ok(preview(
            &a.id,
            &spec,
            &cat.data().machine_aliases,
            target.as_deref(),
            query.percent,
            &rows,
            query
                .limit
                .unwrap_or(PREVIEW_DEFAULT_LIMIT)
                .min(PREVIEW_MAX_LIMIT),
            self.now(),
        ))
    }

    /// What the `candidate` policy would make eligible among the group's machines at `at` and
    /// `horizon_secs` later, next to the stored policy, without saving anything; lists at most
    /// `limit` machines of each kind. The candidate is validated as a policy to be stored is
    /// ([`FleetError::Invalid`]); the counts are the engine's rules
    /// ([`crate::rollout::status::policy_preview`]).
    pub async fn preview_policy(
        &self,
        app: &str,
        group: &str,
        candidate: &GroupPolicy,
        at: i64,
        horizon_secs: i64,
        limit: usize,
    ) -> FleetResult<PolicyPreview> {
        let spec = valid_spec(candidate)?;
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let g = find_group(&cat, &a.id, group)?;
        let stored = spec_of(&g)?;
        let target = self.target_version(&g);
        self.flush_checkins().await?;
        let rows = self.store.group_instances(&a.id, &g.id).await?;
        Ok(policy_preview(
            &a.id,
            &spec,
            &stored,
            &cat.data().machine_aliases,
            target.as_deref(),
            &rows,
            at,
            at.saturating_add(horizon_secs.max(0)),
            limit.min(PREVIEW_MAX_LIMIT),
        ))
    }

    /// Pauses a group's rollout.
    pub async fn pause_rollout(&self, app: &str, group: &str) -> FleetResult<Group> {
        self.set_rollout_state(app, group, true).await
    }

    /// Resumes a group's rollout (unpauses it and clears an auto-halt; machines granted before
    /// the resume no longer count for auto-halt).
    pub async fn resume_rollout(&self, app: &str, group: &str) -> FleetResult<Group> {
        self.set_rollout_state(app, group, false).await
    }

    async fn set_rollout_state(&self, app: &str, key: &str, pause: bool) -> FleetResult<Group> {
        let _writing = self.write_lock.lock().await;
        let a = find_app(&self.catalogue(), app)?;
        let mut attempt = 1;
        loop {
            // Re-read from the store: another replica may have halted the rollout meanwhile.
            self.reload().await?;
            let cat = self.catalogue();
            let mut g = find_group(&cat, &a.id, key)?;
            let seen = g.clone();
            let mut spec = spec_of(&g)?;
            let (kind, msg) = if pause {
                g.policy.paused = true;
                (
                    "rollout_paused",
                    format!("rollout of group {} paused", g.name),
                )
            } else {
                let was = spec.halted.take();
                if was.is_some() {
                    spec.halt_counted_since = Some(self.now());
                }
                g.policy.paused = false;
                let note = was.map_or(String::new(), |h| format!(" (was halted: {})", h.reason));
                (
                    "rollout_resumed",
                    format!("rollout of group {} resumed{note}", g.name),
                )
            };
            spec.store_into(&mut g.policy)
                .map_err(|e| FleetError::Internal(e.to_string()))?;
            let mut act = activity(kind, Some(&a.id), msg);
            act.group_id = Some(g.id.clone());
            match self.store.update_group(&g, &seen, &act).await {
                Err(StoreError::Conflict(_)) if attempt < STATE_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e.into()),
                Ok(()) => {
                    self.reload().await?;
                    self.service
                        .rollouts
                        .metrics
                        .set_halted(&a.id, &g.id, spec.halted.is_some());
                    return Ok(g);
                }
            }
        }
    }
}
