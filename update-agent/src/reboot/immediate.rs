//! Strategy `immediate`: reboot as soon as an update is staged.

use super::Gate;

/// Reboots as soon as an update is staged (after inhibitors and the users' grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Immediate;

impl Immediate {
    /// Always [`Gate::Open`].
    pub fn gate(&self) -> Gate {
        Gate::Open
    }
}
