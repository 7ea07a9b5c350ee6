//! A set of weekly windows: open when any window is; next start; next (merged) opening.

use jiff::Timestamp;

use crate::Window;

/// Days after `t`'s local date searched for openings (one week plus a margin).
const LOOK_AHEAD_DAYS: i64 = 15;

/// Several weekly windows; the set is open whenever at least one of them is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowSet {
    windows: Vec<Window>,
}

impl WindowSet {
    /// A set of `windows` (an empty set is never open).
    pub fn new(windows: Vec<Window>) -> Self {
        Self { windows }
    }

    /// The windows, in configuration order.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Whether the set has no window (and is therefore never open).
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether any window is open at `t`.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.windows.iter().any(|w| w.contains(t))
    }

    /// The earliest window start strictly after `t`; `None` for an empty set.
    pub fn next_start_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.windows
            .iter()
            .filter_map(|w| w.next_start_after(t))
            .min()
    }

    /// The period `[start, end)` during which the set is open that contains `t`, or else the
    /// next one after `t`; `None` for an empty set.
    ///
    /// Overlapping or touching openings (of one or several windows) are merged, so `end` is when
    /// the set really closes. If `t` is inside, `start` is in the past. For a set that is never
    /// closed (windows covering the whole week) `end` is capped about two weeks after `t`.
    pub fn next_opening(&self, t: Timestamp) -> Option<(Timestamp, Timestamp)> {
        let mut all: Vec<(Timestamp, Timestamp)> = self
            .windows
            .iter()
            .flat_map(|w| w.openings_around(t, -8, LOOK_AHEAD_DAYS))
            .collect();
        all.sort();
        let mut merged: Vec<(Timestamp, Timestamp)> = Vec::with_capacity(all.len());
        for (s, e) in all {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged.into_iter().find(|&(_, e)| e > t)
    }
}

impl From<Vec<Window>> for WindowSet {
    fn from(windows: Vec<Window>) -> Self {
        Self::new(windows)
    }
}
