//! Persistence of the FleetLock reboot semaphore: a separate trait from [`super::Store`] so the
//! lock can evolve on its own. Every operation is one atomic transaction, so the slot guarantee
//! holds across server replicas sharing one database.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::StoreFuture;
use crate::model::NewActivity;

/// One holder of a reboot slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockHolder {
    /// Client id as sent in `client_params.id`.
    pub id: String,
    /// When the slot was taken (Unix seconds).
    pub since: i64,
}

/// A reboot group: its slot count and current holders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockGroup {
    /// Group name as sent in `client_params.group`.
    pub group: String,
    /// Number of slots (concurrent reboots allowed).
    pub slots: u32,
    /// Whether `slots` was set by an operator (false: the server default applies).
    pub configured: bool,
    /// Holders, oldest first.
    pub holders: Vec<LockHolder>,
}

/// What a lock attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// A free slot was taken.
    Granted,
    /// The client already held a slot (re-entrant lock).
    AlreadyHeld,
    /// Every slot is taken by other clients.
    Full,
    /// The group is new (not configured, no holders) and `max_groups` groups already have
    /// holders: a client cannot create groups (rows, metric series) without bound.
    TooManyGroups,
}

/// Result of a lock attempt with the group's state after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// What happened.
    pub outcome: AcquireOutcome,
    /// Holders after the attempt.
    pub holders: u32,
    /// Slots of the group.
    pub slots: u32,
}

/// Result of a release with the group's state after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Whether the client held a slot (false: nothing to release).
    pub was_held: bool,
    /// Holders after the release.
    pub holders: u32,
}

/// Storage of the FleetLock semaphore.
pub trait FleetLockStore: Send + Sync + std::fmt::Debug {
    /// Takes a slot of `group` for `id` unless it already holds one or all slots are taken
    /// (groups without a configured count have `default_slots`). A group that is neither
    /// configured nor held is refused ([`AcquireOutcome::TooManyGroups`]) while `max_groups`
    /// unconfigured groups have holders.
    fn fleetlock_acquire<'a>(
        &'a self,
        group: &'a str,
        id: &'a str,
        default_slots: u32,
        max_groups: u32,
        at: i64,
    ) -> StoreFuture<'a, Acquired>;
    /// Releases `id`'s slot in `group` if held (idempotent); records `act` only if it was held.
    fn fleetlock_release<'a>(
        &'a self,
        group: &'a str,
        id: &'a str,
        act: Option<&'a NewActivity>,
        at: i64,
    ) -> StoreFuture<'a, Released>;
    /// Every group that has a configured slot count or a holder, by name.
    fn fleetlock_groups(&self, default_slots: u32) -> StoreFuture<'_, Vec<LockGroup>>;
    /// Sets a group's slot count (existing holders are kept even above the new count).
    fn fleetlock_set_slots<'a>(
        &'a self,
        group: &'a str,
        slots: u32,
        at: i64,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()>;
}
