//! Sets of weekdays, parsed from names (`Mon`, `monday`), ranges (`Mon-Fri`, `Sat-Mon`) and `daily`.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Weekday;

use crate::WindowError;

/// Weekdays in ISO order, Monday first; a day's bit in [`Days`] is its index here.
const ORDER: [Weekday; 7] = [
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
    Weekday::Sunday,
];

/// Three-letter names in [`ORDER`].
const SHORT: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Full names in [`ORDER`], lowercase.
const LONG: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// A non-empty set of weekdays.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Days(u8);

fn index(day: Weekday) -> usize {
    usize::from(day.to_monday_zero_offset().unsigned_abs())
}

/// Parses one day name (case-insensitive, 3-letter or full).
fn parse_day(s: &str) -> Result<usize, WindowError> {
    let lower = s.trim().to_ascii_lowercase();
    (0..7)
        .find(|&i| lower == SHORT[i].to_ascii_lowercase() || lower == LONG[i])
        .ok_or_else(|| WindowError::UnknownDay(s.trim().to_owned()))
}

impl Days {
    /// Every day of the week.
    pub const ALL: Days = Days(0x7f);

    /// The set holding exactly `days`; `None` when `days` is empty.
    pub fn from_weekdays(days: impl IntoIterator<Item = Weekday>) -> Option<Days> {
        let bits = days.into_iter().fold(0u8, |b, d| b | (1 << index(d)));
        (bits != 0).then_some(Days(bits))
    }

    /// Whether `day` is in the set.
    pub fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << index(day)) != 0
    }

    /// The days in the set, Monday first.
    pub fn iter(self) -> impl Iterator<Item = Weekday> {
        ORDER.into_iter().filter(move |&d| self.contains(d))
    }

    /// Three-letter names of the days in the set, Monday first (the serialized form).
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(|d| SHORT[index(d)]).collect()
    }

    /// Parses one item of a day list: a day (`Mon`), a range (`Mon-Fri`, wrapping as `Sat-Mon`),
    /// or `daily`/`*`, and adds it to the set bits.
    fn add_item(bits: &mut u8, item: &str) -> Result<(), WindowError> {
        let item = item.trim();
        if item == "*" || item.eq_ignore_ascii_case("daily") {
            *bits = 0x7f;
            return Ok(());
        }
        match item.split_once('-') {
            None => *bits |= 1 << parse_day(item)?,
            Some((a, b)) => {
                let (a, b) = (parse_day(a)?, parse_day(b)?);
                let mut i = a;
                loop {
                    *bits |= 1 << i;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
        }
        Ok(())
    }

    /// Parses a list of items (each a day, a range or `daily`).
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Days, WindowError> {
        let mut bits = 0u8;
        for item in items {
            Self::add_item(&mut bits, item.as_ref())?;
        }
        if bits == 0 {
            return Err(WindowError::NoDays);
        }
        Ok(Days(bits))
    }
}

impl FromStr for Days {
    type Err = WindowError;

    /// Parses a comma-separated list: `Mon,Wed,Fri`, `Mon-Fri`, `Sat-Mon`, `daily`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<&str> = s.split(',').filter(|i| !i.trim().is_empty()).collect();
        Self::parse_list(&items)
    }
}

impl fmt::Display for Days {
    /// `daily` for all days, else a comma-separated list of three-letter names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Days::ALL {
            return f.write_str("daily");
        }
        f.write_str(&self.names().join(","))
    }
}

impl fmt::Debug for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Days({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ranges_and_wrap() {
        let d: Days = "Mon-Wed,sunday".parse().unwrap();
        assert_eq!(d.names(), ["Mon", "Tue", "Wed", "Sun"]);
        let wrap: Days = "Sat-Mon".parse().unwrap();
        assert_eq!(wrap.names(), ["Mon", "Sat", "Sun"]);
        assert_eq!("daily".parse::<Days>().unwrap(), Days::ALL);
        assert_eq!("FRI".parse::<Days>().unwrap().names(), ["Fri"]);
        assert_eq!(Days::ALL.to_string(), "daily");
        assert_eq!(wrap.to_string(), "Mon,Sat,Sun");
    }

    #[test]
    fn rejects_unknown_and_empty() {
        assert!(
            matches!("Mon,Funday".parse::<Days>(), Err(WindowError::UnknownDay(d)) if d == "Funday")
        );
        assert!(matches!("".parse::<Days>(), Err(WindowError::NoDays)));
        assert!(Days::from_weekdays([]).is_none());
    }
}
