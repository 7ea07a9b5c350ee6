//! The reboot decision as a pure state machine: facts in, one [`Decision`] out; no I/O.
//!
//! Each evaluation walks the same gates in order, so a later fact (a window closing, an
//! inhibitor appearing) always takes effect:
//! 1. nothing staged → [`Decision::Idle`] (or [`Decision::ReleaseLock`] if a slot is held);
//! 2. the strategy's time gate (`off` never opens without a manual request; windows) — a held
//!    slot is released when the window is closed, so a machine never blocks the fleet while
//!    it waits;
//! 3. the FleetLock slot → [`Decision::AcquireLock`], retried [`Timing::lock_retry`] ± 10 %
//!    after a refusal (the jitter keeps a fleet refused together from asking again in step);
//! 4. logind *block* inhibitors on `shutdown` → wait and look again;
//! 5. logged-in users → notify them once ([`Decision::NotifyUsers`]), wait the grace period;
//! 6. [`Decision::Reboot`].
//!
//! A forced request ([`Observation::force`], `updatectl reboot --now`) goes from gate 1 straight
//! to [`Decision::Reboot`]; a slot still held is given back after the boot like any other.
//!
//! The [`Coordinator`] remembers only what the driver reports back (lock held or refused,
//! users notified); the caller passes the time in every [`Observation`] and the randomness of the
//! retry jitter to [`Coordinator::lock_refused`].

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{Gate, RebootStrategy};
use crate::scheduler::Rng;

/// A logind inhibitor lock (`ListInhibitors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibitor {
    /// Colon-separated operations (`shutdown:sleep`).
    pub what: String,
    /// Who holds it.
    pub who: String,
    /// Why.
    pub why: String,
    /// `block` or `delay`.
    pub mode: String,
}

impl Inhibitor {
    /// Whether it blocks a reboot: mode `block` and `shutdown` among the operations.
    pub fn blocks_reboot(&self) -> bool {
        self.mode == "block" && self.what.split(':').any(|w| w == "shutdown")
    }
}

/// What the driver saw just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Now.
    pub now: Timestamp,
    /// The version staged and waiting for a reboot, if any.
    pub staged: Option<String>,
    /// An operator asked to reboot through the coordinator (`updatectl reboot`): strategy
    /// `off` and windows are skipped; the lock, inhibitors and grace period still apply.
    pub manual: bool,
    /// An operator asked to reboot at once (`updatectl reboot --now`): with an update staged,
    /// every gate (windows, lock, inhibitors, grace period) is skipped.
    pub force: bool,
    /// Current logind inhibitors.
    pub inhibitors: Vec<Inhibitor>,
    /// Names of users with interactive sessions.
    pub users: Vec<String>,
}

/// An operator's reboot request, as the D-Bus API and `updatectl reboot` pass it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebootRequest {
    /// No request: the strategy decides.
    #[default]
    None,
    /// Reboot through the coordinator, skipping strategy `off` and the windows
    /// ([`Observation::manual`]).
    Coordinated,
    /// Reboot at once, skipping every gate ([`Observation::force`]).
    Immediate,
}

impl From<bool> for RebootRequest {
    /// `true` is a [`RebootRequest::Coordinated`] request.
    fn from(manual: bool) -> Self {
        if manual {
            RebootRequest::Coordinated
        } else {
            RebootRequest::None
        }
    }
}

/// Why the coordinator waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// Strategy `off`: an operator or external tool reboots.
    StrategyOff,
    /// Outside the maintenance windows (`until` is the next start; `None`: no window).
    OutsideWindow,
    /// The FleetLock server refused a slot; try again at `until`.
    LockRefused,
    /// A block inhibitor is held.
    Inhibited {
        /// Who holds it.
        who: String,
        /// Why.
        why: String,
    },
    /// Users were told; the grace period runs until `until`.
    GracePeriod,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing staged: nothing to do.
    Idle,
    /// Evaluate again at `until` (`None`: only when something changes).
    Wait {
        /// When to look again.
        until: Option<Timestamp>,
        /// Why.
        reason: WaitReason,
    },
    /// Take a FleetLock slot (`pre-reboot`), then report with [`Coordinator::lock_acquired`]
    /// or [`Coordinator::lock_refused`].
    AcquireLock,
    /// Give the slot back (`steady-state`): the reboot is not going to happen now.
    ReleaseLock,
    /// Tell these users the host reboots at `at`, then report [`Coordinator::users_notified`].
    NotifyUsers {
        /// Who is logged in.
        users: Vec<String>,
        /// When the reboot will happen.
        at: Timestamp,
    },
    /// Reboot through logind now.
    Reboot,
}

/// FleetLock state as the coordinator knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Not held.
    Free,
    /// Held by this machine.
    Held,
    /// Refused; may be asked again at this time.
    Refused {
        /// Next attempt.
        retry_at: Timestamp,
    },
}

/// Timing knobs of the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long logged-in users are given after the notice.
    pub grace_period: Duration,
    /// How often a block inhibitor is looked at again.
    pub inhibitor_poll: Duration,
    /// Wait after the FleetLock server refused a slot (or failed), ± [`LOCK_RETRY_JITTER_PERCENT`]
    /// (`reboot.lock_retry_secs`).
    pub lock_retry: Duration,
}

/// The lock retry wait varies by up to this many percent either way.
pub const LOCK_RETRY_JITTER_PERCENT: u32 = 10;

/// `base` ± [`LOCK_RETRY_JITTER_PERCENT`] %, uniformly (nanosecond steps), drawn from `rng`.
pub fn jittered(base: Duration, rng: &mut dyn Rng) -> Duration {
    let span = u64::try_from((base * LOCK_RETRY_JITTER_PERCENT / 100).as_nanos()).unwrap_or(0);
    let draw = rng.up_to(span.saturating_mul(2));
    base.saturating_sub(Duration::from_nanos(span))
        .saturating_add(Duration::from_nanos(draw))
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(300),
            inhibitor_poll: Duration::from_secs(30),
            lock_retry: Duration::from_secs(crate::config::settings::DEFAULT_LOCK_RETRY_SECS),
        }
    }
}

/// The reboot state machine.
#[derive(Debug, Clone)]
pub struct Coordinator {
    strategy: RebootStrategy,
    timing: Timing,
    lock: LockState,
    notified_at: Option<Timestamp>,
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

impl Coordinator {
    /// A coordinator for `strategy`, holding no lock (after boot, `release_after_boot` has
    /// given back any slot this machine held before it rebooted).
    pub fn new(strategy: RebootStrategy, timing: Timing) -> Self {
        Self {
            strategy,
            timing,
            lock: LockState::Free,
            notified_at: None,
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> &RebootStrategy {
        &self.strategy
    }

    /// The lock state.
    pub fn lock(&self) -> LockState {
        self.lock
    }

    /// The next decision for `obs`. Clears a stale user notice when the reboot is put off.
    pub fn decide(&mut self, obs: &Observation) -> Decision {
        let held = self.lock == LockState::Held;
        let now = obs.now;
        if obs.staged.is_none() {
            self.notified_at = None;
            return if held {
                Decision::ReleaseLock
            } else {
                Decision::Idle
            };
        }
        if obs.force {
            self.notified_at = None;
            return Decision::Reboot;
        }
        if !obs.manual {
            let wait = match self.strategy.gate(now) {
                Gate::Open => None,
                Gate::Never => Some(Decision::Wait {
                    until: None,
                    reason: WaitReason::StrategyOff,
                }),
                Gate::ClosedUntil(until) => Some(Decision::Wait {
                    until,
                    reason: WaitReason::OutsideWindow,
                }),
            };
            if let Some(wait) = wait {
                self.notified_at = None;
                return if held { Decision::ReleaseLock } else { wait };
            }
        }
        if self.strategy.needs_lock() {
            match self.lock {
                LockState::Held => {}
                LockState::Free => return Decision::AcquireLock,
                LockState::Refused { retry_at } if now >= retry_at => {
                    return Decision::AcquireLock;
                }
                LockState::Refused { retry_at } => {
                    return Decision::Wait {
                        until: Some(retry_at),
                        reason: WaitReason::LockRefused,
                    };
                }
            }
        }
        if let Some(i) = obs.inhibitors.iter().find(|i| i.blocks_reboot()) {
            return Decision::Wait {
                until: Some(plus(now, self.timing.inhibitor_poll)),
                reason: WaitReason::Inhibited {
                    who: i.who.clone(),
                    why: i.why.clone(),
                },
            };
        }
        if !obs.users.is_empty() && !self.timing.grace_period.is_zero() {
            match self.notified_at {
                None => {
                    return Decision::NotifyUsers {
                        users: obs.users.clone(),
                        at: plus(now, self.timing.grace_period),
                    };
                }
                Some(t) => {
                    let end = plus(t, self.timing.grace_period);
                    if now < end {
                        return Decision::Wait {
                            until: Some(end),
                            reason: WaitReason::GracePeriod,
                        };
                    }
                }
            }
        }
        Decision::Reboot
    }

    /// The FleetLock server granted a slot.
    pub fn lock_acquired(&mut self) {
        self.lock = LockState::Held;
    }

    /// The FleetLock server refused (or could not be reached) at `now`: ask again after
    /// [`Timing::lock_retry`] ± 10 %, the jitter drawn from `rng`.
    pub fn lock_refused(&mut self, now: Timestamp, rng: &mut dyn Rng) {
        self.lock = LockState::Refused {
            retry_at: plus(now, jittered(self.timing.lock_retry, rng)),
        };
    }

    /// The slot was given back.
    pub fn lock_released(&mut self) {
        self.lock = LockState::Free;
    }

    /// Users were told at `now`; the grace period starts.
    pub fn users_notified(&mut self, now: Timestamp) {
        self.notified_at = Some(now);
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
