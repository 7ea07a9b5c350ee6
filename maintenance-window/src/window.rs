//! One weekly window: days, local start time, length and IANA time zone; the time math.
//!
//! A window *opens* on each of its days at the local wall-clock `start` in its time zone and
//! stays open for `length` of **elapsed** time. DST rules (systemd's and cron's "compatible"
//! rule, as RFC 5545 does):
//! - a start inside a spring-forward gap (e.g. 02:30 on a day when 02:00 jumps to 03:00) opens
//!   at the same offset after the gap (03:30);
//! - a start inside a fall-back overlap (02:30 happening twice) opens at the **first** 02:30;
//! - the length is real time, so a 6 h window across a clock change still lasts 6 h
//!   (its local end time shifts by the change).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::{Days, WindowError};

/// Shortest accepted window length.
pub const MIN_LENGTH: Duration = Duration::from_secs(60);
/// Longest accepted window length: one week (a longer one would always be open).
pub const MAX_LENGTH: Duration = Duration::from_secs(7 * 24 * 3600);

/// Local days looked back from `t`'s date for an opening that may still be running
/// (the maximum length is 7 days; one more day covers offset changes).
const LOOK_BACK_DAYS: i64 = 8;

/// One weekly maintenance window.
#[derive(Clone)]
pub struct Window {
    days: Days,
    start: Time,
    length: SignedDuration,
    tz_name: String,
    tz: TimeZone,
}

impl PartialEq for Window {
    fn eq(&self, other: &Self) -> bool {
        self.days == other.days
            && self.start == other.start
            && self.length == other.length
            && self.tz_name == other.tz_name
    }
}

impl Eq for Window {}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Window({self})")
    }
}

/// Parses `HH:MM` (24-hour clock).
pub(crate) fn parse_start(s: &str) -> Result<(u8, u8), WindowError> {
    let bad = |reason: &str| WindowError::BadStart {
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    let (h, m) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| bad("expected HH:MM"))?;
    let num = |v: &str| -> Result<u8, WindowError> {
        if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected HH:MM"));
        }
        v.parse().map_err(|_| bad("expected HH:MM"))
    };
    let (h, m) = (num(h)?, num(m)?);
    if h > 23 || m > 59 {
        return Err(bad("hour must be 0..=23 and minute 0..=59"));
    }
    Ok((h, m))
}

/// Parses a length such as `2h`, `90m`, `1h30m`, `1d 12h` (units `d`, `h`, `m`; whole minutes).
pub(crate) fn parse_length(s: &str) -> Result<Duration, WindowError> {
    let bad = |reason: &str| WindowError::BadLength {
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    let text: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if text.is_empty() || text.len() > 32 {
        return Err(bad("expected a length like 2h, 90m or 1h30m"));
    }
    if text.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let mut minutes: u64 = 0;
    let mut num = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: u64 = match c {
            'd' => 1440,
            'h' => 60,
            'm' => 1,
            's' => return Err(bad("must be whole minutes (units d, h, m)")),
            _ => {
                return Err(bad(
                    "expected a length like 2h, 90m or 1h30m (units d, h, m)",
                ));
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| bad("expected a number before each unit"))?;
        minutes = n
            .checked_mul(unit)
            .and_then(|v| minutes.checked_add(v))
            .ok_or_else(|| bad("too long"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad("a number needs a unit (d, h or m)"));
    }
    minutes
        .checked_mul(60)
        .map(Duration::from_secs)
        .ok_or_else(|| bad("too long"))
}

/// Formats a length as `1d2h30m` (zero parts omitted).
pub(crate) fn format_length(d: Duration) -> String {
    let mins = d.as_secs() / 60;
    let (days, hours, m) = (mins / 1440, (mins / 60) % 24, mins % 60);
    let mut out = String::new();
    for (v, unit) in [(days, "d"), (hours, "h"), (m, "m")] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0m");
    }
    out
}

impl Window {
    /// A window on `days` opening at `hour:minute` local time in `time_zone` (an IANA name such
    /// as `Europe/Berlin`, or `UTC`) for `length` (whole minutes, [`MIN_LENGTH`]..=[`MAX_LENGTH`]).
    pub fn new(
        days: Days,
        hour: u8,
        minute: u8,
        length: Duration,
        time_zone: &str,
    ) -> Result<Window, WindowError> {
        let start = Time::new(
            i8::try_from(hour).unwrap_or(i8::MAX),
            i8::try_from(minute).unwrap_or(i8::MAX),
            0,
            0,
        )
        .map_err(|e| WindowError::BadStart {
            value: format!("{hour:02}:{minute:02}"),
            reason: e.to_string(),
        })?;
        if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) || !length.as_secs().is_multiple_of(60) {
            return Err(WindowError::BadLength {
                value: format_length(length),
                reason: "must be whole minutes from 1m to 7d".to_owned(),
            });
        }
        let length = SignedDuration::try_from(length).map_err(|e| WindowError::BadLength {
            value: format_length(length),
            reason: e.to_string(),
        })?;
        let tz = TimeZone::get(time_zone).map_err(|e| WindowError::UnknownTimeZone {
            name: time_zone.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Window {
            days,
            start,
            length,
            tz_name: time_zone.to_owned(),
            tz,
        })
    }

    /// The days on which the window opens.
    pub fn days(&self) -> Days {
        self.days
    }

    /// Local opening time as (hour, minute).
    pub fn start(&self) -> (u8, u8) {
        (
            u8::try_from(self.start.hour()).unwrap_or(0),
            u8::try_from(self.start.minute()).unwrap_or(0),
        )
    }

    /// How long the window stays open (elapsed time).
    pub fn length(&self) -> Duration {
        Duration::try_from(self.length).unwrap_or(Duration::ZERO)
    }

    /// The IANA time zone name the window is defined in.
    pub fn time_zone(&self) -> &str {
        &self.tz_name
    }

    /// The opening `[start, end)` that starts on local `date`, if the window opens that day.
    fn opening_on(&self, date: Date) -> Option<(Timestamp, Timestamp)> {
        if !self.days.contains(date.weekday()) {
            return None;
        }
        // `to_timestamp` uses the "compatible" disambiguation documented in the module doc.
        let start = self.tz.to_timestamp(date.to_datetime(self.start)).ok()?;
        let end = start.checked_add(self.length).ok()?;
        Some((start, end))
    }

    /// Openings that start on local dates `t`'s date + `from_days` ..= + `to_days`, in order.
    pub(crate) fn openings_around(
        &self,
        t: Timestamp,
        from_days: i64,
        to_days: i64,
    ) -> impl Iterator<Item = (Timestamp, Timestamp)> + '_ {
        let today = self.tz.to_datetime(t).date();
        (from_days..=to_days).filter_map(move |off| {
            let date = today.checked_add(jiff::Span::new().days(off)).ok()?;
            self.opening_on(date)
        })
    }

    /// Whether the window is open at `t` (start inclusive, end exclusive).
    pub fn contains(&self, t: Timestamp) -> bool {
        self.openings_around(t, -LOOK_BACK_DAYS, 1)
            .any(|(s, e)| s <= t && t < e)
    }

    /// The first opening of the window that starts strictly after `t`.
    pub fn next_start_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.openings_around(t, -1, 8)
            .map(|(s, _)| s)
            .find(|&s| s > t)
    }
}

impl fmt::Display for Window {
    /// The compact string form: `Mon,Tue 22:30 2h Europe/Berlin`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m) = self.start();
        write!(
            f,
            "{} {h:02}:{m:02} {} {}",
            self.days,
            format_length(self.length()),
            self.tz_name
        )
    }
}

impl FromStr for Window {
    type Err = WindowError;

    /// Parses `DAYS HH:MM LENGTH [TIME_ZONE]`, e.g. `Mon-Fri 22:30 2h Europe/Berlin`;
    /// the time zone defaults to `UTC`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let (days, start, length, tz) = match parts.as_slice() {
            [d, s, l] => (d, s, l, "UTC"),
            [d, s, l, z] => (d, s, l, *z),
            _ => {
                return Err(WindowError::Syntax {
                    value: s.to_owned(),
                    message: "expected \"DAYS HH:MM LENGTH [TIME_ZONE]\", e.g. \"Mon-Fri 22:30 2h Europe/Berlin\"".to_owned(),
                });
            }
        };
        let days: Days = days.parse()?;
        let (h, m) = parse_start(start)?;
        Window::new(days, h, m, parse_length(length)?, tz)
    }
}
