//! Strategy `windows`: reboot only inside weekly maintenance windows.

use jiff::Timestamp;
use maintenance_window::WindowSet;

use super::Gate;

/// Reboots only while one of the windows is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    windows: WindowSet,
}

impl Windows {
    /// The strategy for `windows` (config validation guarantees at least one).
    pub fn new(windows: WindowSet) -> Self {
        Self { windows }
    }

    /// The windows.
    pub fn windows(&self) -> &WindowSet {
        &self.windows
    }

    /// Open inside a window, else closed until the next window starts.
    pub fn gate(&self, now: Timestamp) -> Gate {
        window_gate(&self.windows, now)
    }
}

/// [`Gate`] of a window set at `now`.
pub(crate) fn window_gate(windows: &WindowSet, now: Timestamp) -> Gate {
    if windows.contains(now) {
        Gate::Open
    } else {
        Gate::ClosedUntil(windows.next_start_after(now))
    }
}
