//! Weekly maintenance windows shared by the Platte agent (reboot windows) and server (grant
//! windows).
//!
//! A [`Window`] opens on some days of the week at a local start time in an IANA time zone and
//! stays open for a length of elapsed time; windows may cross midnight and the end of the week,
//! and daylight-saving changes follow the rules documented in [`window`]. A [`WindowSet`] is open
//! whenever any of its windows is. Everything is a pure function of a [`jiff::Timestamp`]
//! passed in: no clock is read here.
//!
//! # Forms
//! String: `DAYS HH:MM LENGTH [TIME_ZONE]`, e.g. `"Mon-Fri 22:30 2h Europe/Berlin"`;
//! `DAYS` is a comma-separated list of days (`Mon`, `monday`), ranges (`Mon-Fri`, `Sat-Mon`) or
//! `daily`; `LENGTH` is whole minutes from `1m` to `7d` (`90m`, `1h30m`, `2h`); the time zone
//! defaults to `UTC`.
//!
//! TOML table (what [`Window`]'s `Serialize` writes; `Deserialize` reads both forms):
//! ```toml
//! windows = [
//!   { days = ["Mon", "Tue"], start = "22:30", length = "2h", time_zone = "Europe/Berlin" },
//!   "Sat,Sun 03:00 4h UTC",
//! ]
//! ```
//! Time zones come from the system tzdb when present, else from the copy bundled in the binary.

mod days;
mod serde_impl;
mod set;
pub mod window;

pub use days::Days;
pub use jiff;
pub use jiff::Timestamp;
pub use set::WindowSet;
pub use window::Window;

/// What is wrong with a window definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A day name is not a weekday.
    #[error("unknown day {0:?}: expected Mon..Sun (or full names), a range like Mon-Fri, or daily")]
    UnknownDay(String),
    /// The day list is empty.
    #[error("a window needs at least one day")]
    NoDays,
    /// The start time is not `HH:MM`.
    #[error("bad start time {value:?}: {reason}")]
    BadStart {
        /// The text given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The length is not a duration from 1 minute to 7 days in whole minutes.
    #[error("bad window length {value:?}: {reason}")]
    BadLength {
        /// The text given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The time zone is not in the time zone database.
    #[error(
        "unknown time zone {name:?} (expected an IANA name such as Europe/Berlin or UTC): {reason}"
    )]
    UnknownTimeZone {
        /// The name given.
        name: String,
        /// The lookup error.
        reason: String,
    },
    /// The string form does not have the expected parts.
    #[error("bad window {value:?}: {message}")]
    Syntax {
        /// The text given.
        value: String,
        /// What is wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests;
