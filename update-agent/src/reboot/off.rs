//! Strategy `off`: stage only; an operator or external tool reboots (kured reads the sentinel).

use super::Gate;

/// Never reboots on its own; a manual request (`updatectl reboot`) still goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Off;

impl Off {
    /// Always [`Gate::Never`].
    pub fn gate(&self) -> Gate {
        Gate::Never
    }
}
