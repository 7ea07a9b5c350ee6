//! Reboot coordination: when a staged update may reboot the host, and how.
//!
//! [`RebootStrategy`] says *when* (one file per strategy: [`off`], [`immediate`], [`windows`],
//! [`fleet_lock`]); [`coordinator`] is the pure decision state machine and [`driver`] performs its
//! decisions against logind ([`logind`]), a FleetLock server ([`fleet_lock`]) and the
//! `/run/reboot-required` sentinel ([`sentinel`]). [`time`] holds the injectable clock and sleeper.
//! [`after_boot`] gives back a FleetLock slot held from before the reboot, once mark-good passed.

pub mod after_boot;
pub mod coordinator;
pub mod driver;
pub mod fleet_lock;
pub mod immediate;
pub mod logind;
pub mod off;
pub mod sentinel;
pub mod time;
pub mod windows;

use jiff::Timestamp;
use maintenance_window::WindowSet;

use crate::config::{RebootSettings, RebootStrategy as RebootStrategyKind};

pub use coordinator::{Coordinator, Decision, Observation, RebootRequest, WaitReason};
pub use driver::{Driver, DriverConfig, RebootView};
pub use fleet_lock::{FleetLockClient, FleetLockError, FleetLockStrategy};
pub use immediate::Immediate;
pub use off::Off;
pub use windows::Windows;

/// When a staged update may reboot the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootStrategy {
    /// Stage only; an operator or an external tool (kured, a script) reboots.
    Off(Off),
    /// Reboot as soon as an update is staged.
    Immediate(Immediate),
    /// Reboot only inside weekly maintenance windows.
    Windows(Windows),
    /// Take a FleetLock slot first, optionally only inside windows.
    FleetLock(FleetLockStrategy),
}

/// What a strategy says about "may we reboot now?", before lock, inhibitors and users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Never on its own (strategy `off`): wait for a manual request.
    Never,
    /// Yes, as far as time goes.
    Open,
    /// Not now: the next window starts at this time (`None`: never, e.g. no window).
    ClosedUntil(Option<Timestamp>),
}

impl RebootStrategy {
    /// Builds the strategy from the validated `[reboot]` settings; `machine_id` is
    /// `/etc/machine-id` (hashed into the FleetLock id, never sent as is).
    pub fn from_settings(s: &RebootSettings, machine_id: &str) -> Result<Self, FleetLockError> {
        Ok(match s.strategy {
            RebootStrategyKind::Off => RebootStrategy::Off(Off),
            RebootStrategyKind::Immediate => RebootStrategy::Immediate(Immediate),
            RebootStrategyKind::Windows => RebootStrategy::Windows(Windows::new(s.windows.clone())),
            RebootStrategyKind::FleetLock => {
                let fl = s.fleet_lock.as_ref().ok_or(FleetLockError::NotConfigured)?;
                RebootStrategy::FleetLock(FleetLockStrategy {
                    base_url: fl.base_url.clone(),
                    group: fl.group.clone(),
                    id: fleet_lock::app_specific_id(machine_id)?,
                    windows: s.windows.clone(),
                })
            }
        })
    }

    /// The strategy's name as configured (`off`, `immediate`, `windows`, `fleet-lock`).
    pub fn name(&self) -> &'static str {
        match self {
            RebootStrategy::Off(_) => "off",
            RebootStrategy::Immediate(_) => "immediate",
            RebootStrategy::Windows(_) => "windows",
            RebootStrategy::FleetLock(_) => "fleet-lock",
        }
    }

    /// Whether time allows a reboot at `now`.
    pub fn gate(&self, now: Timestamp) -> Gate {
        match self {
            RebootStrategy::Off(s) => s.gate(),
            RebootStrategy::Immediate(s) => s.gate(),
            RebootStrategy::Windows(s) => s.gate(now),
            RebootStrategy::FleetLock(s) => s.gate(now),
        }
    }

    /// The windows restricting reboots, if any (empty for `off` and `immediate`).
    pub fn windows(&self) -> Option<&WindowSet> {
        match self {
            RebootStrategy::Windows(w) => Some(w.windows()),
            RebootStrategy::FleetLock(f) if !f.windows.is_empty() => Some(&f.windows),
            _ => None,
        }
    }

    /// The start of the window open at `now`, else of the next one (`None`: no windows).
    pub fn next_window(&self, now: Timestamp) -> Option<Timestamp> {
        self.windows()
            .and_then(|w| w.next_opening(now))
            .map(|(start, _)| start)
    }

    /// Whether a FleetLock slot must be held before rebooting.
    pub fn needs_lock(&self) -> bool {
        matches!(self, RebootStrategy::FleetLock(_))
    }
}
