//! Serde support: a window is read from its string form (`"Mon-Fri 22:30 2h Europe/Berlin"`) or
//! from a table (`{ days = ["Mon","Tue"], start = "22:30", length = "2h", time_zone = "UTC" }`),
//! and written as the table.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::window::{format_length, parse_length, parse_start};
use crate::{Days, Window, WindowSet};

/// The table form, as written in TOML.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Table {
    /// Day names or ranges (`"Mon"`, `"Mon-Fri"`, `"daily"`), or one comma-separated string.
    days: DaysRepr,
    /// `HH:MM` local time.
    start: String,
    /// Length such as `2h`, `90m`, `1h30m`.
    length: String,
    /// IANA time zone; `UTC` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_zone: Option<String>,
}

/// `days` as a list or one comma-separated string.
#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum DaysRepr {
    /// `["Mon", "Tue"]`.
    List(Vec<String>),
    /// `"Mon-Fri"`.
    Text(String),
}

impl Table {
    fn into_window(self) -> Result<Window, crate::WindowError> {
        let days = match &self.days {
            DaysRepr::List(l) => Days::parse_list(l)?,
            DaysRepr::Text(t) => t.parse()?,
        };
        let (h, m) = parse_start(&self.start)?;
        let length = parse_length(&self.length)?;
        Window::new(
            days,
            h,
            m,
            length,
            self.time_zone.as_deref().unwrap_or("UTC"),
        )
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (h, m) = self.start();
        Table {
            days: DaysRepr::List(self.days().names().into_iter().map(String::from).collect()),
            start: format!("{h:02}:{m:02}"),
            length: format_length(self.length()),
            time_zone: Some(self.time_zone().to_owned()),
        }
        .serialize(s)
    }
}

struct WindowVisitor;

impl<'de> Visitor<'de> for WindowVisitor {
    type Value = Window;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a maintenance window: \"Mon-Fri 22:30 2h Europe/Berlin\" or { days, start, length, time_zone }",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Window, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Window, A::Error> {
        let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
        table.into_window().map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WindowVisitor)
    }
}

impl Serialize for WindowSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.windows().serialize(s)
    }
}

impl<'de> Deserialize<'de> for WindowSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Window>::deserialize(d).map(WindowSet::new)
    }
}
