//! Boot Loader Specification entries on the ESP: entry file names with their boot counters
//! (`ID[+LEFT[-DONE]].conf`), the entries found for a slot, their `version` order, and fields
//! of an entry's text.

use super::SlotBootState;

/// Whether `name` may be an entry name: 1..=64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`
/// (no `+`: it starts the boot counter).
pub fn valid_entry_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A boot counter, the `+LEFT[-DONE]` of an entry file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Tries left.
    pub left: u32,
    /// Tries used (absent before the first try).
    pub done: Option<u32>,
}

/// An entry file name split per Boot Loader Specification boot counting: `ID[+LEFT[-DONE]].conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFileName {
    /// The entry id without counter and `.conf`.
    pub id: String,
    /// The boot counter; `None` for a blessed (or never counted) entry.
    pub counter: Option<Counter>,
}

fn all_digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl EntryFileName {
    /// Parses a file name; `None` unless it ends in `.conf` with a non-empty id.
    pub fn parse(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(".conf")?;
        Self::parse_id(stem)
    }

    /// Parses an entry id that may carry a counter (`platte-b+1`, `platte-b+0-1`, `platte-b`).
    pub fn parse_id(stem: &str) -> Option<Self> {
        let (id, counter) = match stem.rsplit_once('+') {
            Some((id, c)) => {
                let counter = match c.split_once('-') {
                    Some((l, d)) => all_digits(l)
                        .zip(all_digits(d))
                        .map(|(left, done)| Counter {
                            left,
                            done: Some(done),
                        }),
                    None => all_digits(c).map(|left| Counter { left, done: None }),
                };
                match counter {
                    Some(c) => (id, Some(c)),
                    None => (stem, None),
                }
            }
            None => (stem, None),
        };
        (!id.is_empty()).then(|| Self {
            id: id.to_owned(),
            counter,
        })
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{}.conf", self.id),
            Some(Counter { left, done: None }) => format!("{}+{left}.conf", self.id),
            Some(Counter {
                left,
                done: Some(d),
            }) => format!("{}+{left}-{d}.conf", self.id),
        }
    }

    /// Whether systemd-boot treats it as bad (counted, no tries left): sorted last, not chosen.
    pub fn exhausted(&self) -> bool {
        matches!(self.counter, Some(Counter { left: 0, .. }))
    }
}

/// One slot entry found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundEntry {
    /// Its file name, parsed.
    pub name: EntryFileName,
    /// Its `version` line, if any.
    pub version: Option<String>,
}

impl FoundEntry {
    /// The boot state this entry gives its slot (priority filled in by the caller).
    pub(super) fn state(&self) -> SlotBootState {
        match self.name.counter {
            None => SlotBootState {
                priority: 1,
                tries: 0,
                successful: true,
            },
            Some(c) => SlotBootState {
                priority: 1,
                tries: u8::try_from(c.left.min(15)).unwrap_or(15),
                successful: false,
            },
        }
    }
}

/// Compares two `version` values the way the entries' generations are written: numbers
/// numerically, anything else as text; a missing version is lowest.
pub(super) fn version_cmp(a: Option<&str>, b: Option<&str>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(p), Ok(q)) => p.cmp(&q),
            _ => x.cmp(y),
        },
        (a, b) => a.is_some().cmp(&b.is_some()),
    }
}

/// Reads the value of `key` from BLS entry text.
pub fn entry_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix(key)?;
        rest.starts_with([' ', '\t']).then(|| rest.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_with_and_without_counters() {
        let p = |s: &str| EntryFileName::parse(s);
        assert_eq!(
            p("platte-b+3.conf"),
            Some(EntryFileName {
                id: "platte-b".into(),
                counter: Some(Counter {
                    left: 3,
                    done: None
                })
            })
        );
        let used = p("platte-b+0-1.conf").unwrap();
        assert_eq!(
            used.counter,
            Some(Counter {
                left: 0,
                done: Some(1)
            })
        );
        assert!(used.exhausted());
        assert_eq!(used.file_name(), "platte-b+0-1.conf");
        assert_eq!(p("platte-a.conf").unwrap().counter, None);
        // A `+` not followed by a counter belongs to the id.
        assert_eq!(p("a+b.conf").unwrap().id, "a+b");
        assert_eq!(p("a+1-.conf").unwrap().id, "a+1-");
        assert_eq!(p("platte-a.txt"), None);
        assert_eq!(p(".conf"), None);
        assert_eq!(p("+1.conf"), None);
    }

    #[test]
    fn versions_compare_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp(Some("10"), Some("9")), Greater);
        assert_eq!(version_cmp(None, Some("1")), Less);
        assert_eq!(version_cmp(Some("b"), Some("a")), Greater);
    }

    #[test]
    fn fields_are_read_by_whole_key() {
        let t = "title X\nversion 7\nversionx 9\noptions root=PARTLABEL=ROOT-A rw\n";
        assert_eq!(entry_field(t, "version"), Some("7"));
        assert_eq!(entry_field(t, "options"), Some("root=PARTLABEL=ROOT-A rw"));
        assert_eq!(entry_field(t, "linux"), None);
    }

    #[test]
    fn entry_names_are_restricted() {
        assert!(valid_entry_name("platte"));
        assert!(valid_entry_name("os.v2_x-y"));
        for bad in ["", "-x", ".x", "a+b", "a/b", "a b"] {
            assert!(!valid_entry_name(bad), "{bad:?}");
        }
    }
}
