//! Staged rollouts: the per-group policy ([`spec`]), the stable machine bucket ([`bucket`]), ramps
//! ([`ramp`]), the hook the update-check path calls ([`policy`]), the pure policy evaluation
//! ([`engine`]), the choice of the version to serve
//! (floors, block list, downgrades: [`target`]) and what an operator sees ([`status`]).
//!
//! Evaluation is split in two: everything that needs no shared state (pause, halt, windows,
//! percentage, ramp, canaries, block list, floors) is decided in memory from the cached catalogue,
//! so the common answers (no update, up to date, not in bucket) cost no database round trip. Only
//! an actual grant attempt goes to the store: the shared limits (refusals, rate, concurrency,
//! timeouts, auto-halt, canary gate, new machines per network) are decided by
//! [`grants::try_grant`] inside the store's write transaction, over the narrow
//! [`grants::GrantTx`] interface each store implements in SQL
//! ([`crate::store::rollout::RolloutStore::try_grant`] runs it).
//!
//! Clients are not authenticated, so what they claim steers nothing alone: canaries are named by
//! machine id or by an alias an operator assigned ([`engine::is_canary`]), and machines new to a
//! rollout weigh less for auto-halt and are granted at a bounded rate per network
//! ([`newcomers`]).

pub mod bucket;
pub mod engine;
pub mod grants;
pub mod metrics;
pub mod newcomers;
pub mod policy;
pub mod prefetch;
pub mod ramp;
pub mod spec;
pub mod status;
pub mod target;

pub use engine::{HoldReason, RolloutEngine, Verdict};
pub use metrics::RolloutMetrics;

use std::sync::Arc;

use crate::store::RolloutStore;

/// What the check path needs for staged rollouts beyond the catalogue: the grant store (admin
/// reads and operator actions), the metrics and the new-machine bound.
#[derive(Debug, Clone)]
pub struct Rollouts {
    /// Atomic grant decisions.
    pub grants: Arc<dyn RolloutStore>,
    /// Metrics.
    pub metrics: RolloutMetrics,
    /// The server-wide bound on grants to machines new to a rollout, per source network.
    pub new_machines: newcomers::NewMachineSettings,
}
pub use spec::{AutoHalt, Gate, Halt, Ramp, RampStep, RateLimit, RolloutSpec, SpecError};
