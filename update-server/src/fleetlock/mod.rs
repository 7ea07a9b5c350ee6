//! The FleetLock server: a persistent counting semaphore per reboot group, spoken to by Zincati
//! and the Platte agent over the FleetLock protocol (`/fleetlock/v1/pre-reboot`,
//! `/fleetlock/v1/steady-state`) and driven by operators through the admin API.
//!
//! Map: [`protocol`] is the wire format; [`config`] the settings; [`metrics`] the metric
//! families; [`FleetLock`] the operations, both the clients' and the operators'. The semaphore
//! itself lives in the database behind [`crate::store::FleetLockStore`], so every replica
//! sharing the database shares the slots. The HTTP handlers are in `http/fleetlock.rs` (the
//! protocol) and `http/admin/fleetlock.rs` (the admin routes).

pub mod config;
pub mod metrics;
pub mod protocol;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use config::FleetLockSettings;
pub use protocol::{ClientParams, FleetLockError};

use crate::clock::Clock;
use crate::fleet::FleetError;
use crate::metrics::Metrics;
use crate::model::NewActivity;
use crate::store::fleetlock::{AcquireOutcome, LockGroup};
use crate::store::{FleetLockStore, StoreError};
use metrics::FleetLockMetrics;

/// The semaphore service behind the FleetLock routes and the admin API.
pub struct FleetLock {
    store: Arc<dyn FleetLockStore>,
    settings: FleetLockSettings,
    token: Option<[u8; 32]>,
    clock: Arc<dyn Clock>,
    metrics: FleetLockMetrics,
}

impl std::fmt::Debug for FleetLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLock")
            .field("enabled", &self.settings.enabled)
            .field("token", &self.token.is_some())
            .field("default_slots", &self.settings.default_slots)
            .finish_non_exhaustive()
    }
}

/// Checks a group name an operator gave.
fn check_group(group: &str) -> Result<(), FleetError> {
    if protocol::valid_group(group) {
        Ok(())
    } else {
        Err(FleetError::Invalid(format!(
            "invalid FleetLock group {:?}: it must match ^[a-zA-Z0-9.-]+$",
            group.chars().take(64).collect::<String>()
        )))
    }
}

fn digest(t: &str) -> [u8; 32] {
    Sha256::digest(t.trim().as_bytes()).into()
}

impl FleetLock {
    /// A service over `store`, registering its metrics with `metrics`.
    pub fn new(
        store: Arc<dyn FleetLockStore>,
        settings: FleetLockSettings,
        clock: Arc<dyn Clock>,
        metrics: &Metrics,
    ) -> Self {
        Self {
            store,
            token: settings.token.as_deref().map(digest),
            settings,
            clock,
            metrics: FleetLockMetrics::register(metrics),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &FleetLockSettings {
        &self.settings
    }

    /// Checks the shared secret a client presented (the credentials of its `Authorization:
    /// Bearer` header, if any) against the one configured, if any; constant time.
    pub fn check_token(&self, presented: Option<&str>) -> Result<(), FleetLockError> {
        let Some(want) = &self.token else {
            return Ok(());
        };
        let presented = presented.ok_or(FleetLockError::Unauthorized)?;
        if bool::from(digest(presented).ct_eq(want)) {
            Ok(())
        } else {
            Err(FleetLockError::Unauthorized)
        }
    }

    /// `RecursiveLock`: takes a slot for the client, or confirms the one it holds.
    pub async fn pre_reboot(&self, p: &ClientParams) -> Result<AcquireOutcome, FleetLockError> {
        const OP: &str = "pre_reboot";
        let r = self
            .store
            .fleetlock_acquire(
                &p.group,
                &p.id,
                self.settings.default_slots,
                self.settings.max_groups,
                self.clock.now(),
            )
            .await
            .map_err(|e| {
                self.metrics.request(OP, "internal_error");
                FleetLockError::Internal(e.to_string())
            })?;
        if r.outcome == AcquireOutcome::TooManyGroups {
            // No series for a group that was refused.
            self.metrics.request(OP, "too_many_groups");
            tracing::warn!(group = %p.group, id = %p.id, max_groups = self.settings.max_groups, "fleetlock lock in a new group refused: too many groups");
            return Err(FleetLockError::TooManyGroups {
                max: self.settings.max_groups,
            });
        }
        self.metrics.group(&p.group, r.holders, Some(r.slots));
        match r.outcome {
            AcquireOutcome::Granted => {
                self.metrics.request(OP, "granted");
                tracing::info!(group = %p.group, id = %p.id, holders = r.holders, slots = r.slots, "fleetlock slot granted");
            }
            AcquireOutcome::AlreadyHeld => self.metrics.request(OP, "already_held"),
            AcquireOutcome::TooManyGroups => {}
            AcquireOutcome::Full => {
                self.metrics.request(OP, "denied");
                tracing::debug!(group = %p.group, id = %p.id, slots = r.slots, "fleetlock semaphore full");
                return Err(FleetLockError::SemaphoreFull {
                    group: p.group.clone(),
                    slots: r.slots,
                });
            }
        }
        Ok(r.outcome)
    }

    /// `UnlockIfHeld`: releases the client's slot if it holds one. Returns whether it did.
    pub async fn steady_state(&self, p: &ClientParams) -> Result<bool, FleetLockError> {
        const OP: &str = "steady_state";
        let r = self
            .store
            .fleetlock_release(&p.group, &p.id, None, self.clock.now())
            .await
            .map_err(|e| {
                self.metrics.request(OP, "internal_error");
                FleetLockError::Internal(e.to_string())
            })?;
        if r.was_held {
            // Only a release changes a group's gauge: a steady-state report naming a group
            // nobody holds (any name a client invents) adds no series.
            self.metrics.group(&p.group, r.holders, None);
            self.metrics.request(OP, "released");
            tracing::info!(group = %p.group, id = %p.id, holders = r.holders, "fleetlock slot released");
        } else {
            self.metrics.request(OP, "not_held");
        }
        Ok(r.was_held)
    }

    /// Counts a request refused before reaching the semaphore.
    pub fn refused(&self, op: &'static str, e: &FleetLockError) {
        self.metrics.request(op, e.kind());
    }

    /// Every known group (configured or with holders), refreshing the gauges.
    pub async fn groups(&self) -> Result<Vec<LockGroup>, StoreError> {
        let groups = self
            .store
            .fleetlock_groups(self.settings.default_slots)
            .await?;
        for g in &groups {
            let holders = u32::try_from(g.holders.len()).unwrap_or(u32::MAX);
            self.metrics.group(&g.group, holders, Some(g.slots));
        }
        Ok(groups)
    }

    /// One group; an unknown group has the default slots and no holders.
    pub async fn group(&self, name: &str) -> Result<LockGroup, FleetError> {
        check_group(name)?;
        Ok(self
            .groups()
            .await?
            .into_iter()
            .find(|g| g.group == name)
            .unwrap_or_else(|| LockGroup {
                group: name.to_owned(),
                slots: self.settings.default_slots,
                configured: false,
                holders: Vec::new(),
            }))
    }

    /// Sets a group's slot count, at most [`config::MAX_SLOTS`] (recorded in the activity
    /// feed).
    pub async fn set_slots(&self, group: &str, slots: u32) -> Result<LockGroup, FleetError> {
        check_group(group)?;
        if slots > config::MAX_SLOTS {
            return Err(FleetError::Invalid(format!(
                "slots {slots} is above {}",
                config::MAX_SLOTS
            )));
        }
        let act = NewActivity {
            kind: "fleetlock_slots_set".to_owned(),
            severity: "info",
            message: format!("FleetLock group {group} set to {slots} reboot slot(s)"),
            ..Default::default()
        };
        self.store
            .fleetlock_set_slots(group, slots, self.clock.now(), &act)
            .await?;
        tracing::info!(group, slots, "fleetlock slots set");
        self.group(group).await
    }

    /// Releases a holder by force (recorded in the activity feed); [`FleetError::NotFound`] if
    /// `id` holds no slot of the group.
    pub async fn force_release(&self, group: &str, id: &str) -> Result<(), FleetError> {
        check_group(group)?;
        let act = NewActivity {
            kind: "fleetlock_force_released".to_owned(),
            severity: "warning",
            machine_id: Some(id.to_owned()),
            message: format!("FleetLock slot of {id} in group {group} released by an operator"),
            ..Default::default()
        };
        let r = self
            .store
            .fleetlock_release(group, id, Some(&act), self.clock.now())
            .await?;
        self.metrics.group(group, r.holders, None);
        if r.was_held {
            tracing::warn!(group, id, "fleetlock slot force-released");
            Ok(())
        } else {
            Err(FleetError::NotFound(format!(
                "FleetLock holder {id} in group {group}"
            )))
        }
    }
}
