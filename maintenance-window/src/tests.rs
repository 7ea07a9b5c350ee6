//! Unit tests of windows and window sets: midnight and week wrap, DST gap and overlap, forms.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::{Days, Timestamp, Window, WindowError, WindowSet};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn w(s: &str) -> Window {
    s.parse().unwrap()
}

// 2025-06-02 is a Monday.

#[test]
fn simple_window_contains_start_inclusive_end_exclusive() {
    let win = w("Mon 22:30 2h UTC");
    assert!(!win.contains(ts("2025-06-02T22:29:59Z")));
    assert!(win.contains(ts("2025-06-02T22:30:00Z")));
    assert!(win.contains(ts("2025-06-03T00:29:59Z")));
    assert!(!win.contains(ts("2025-06-03T00:30:00Z")));
    // Not on Tuesday evening.
    assert!(!win.contains(ts("2025-06-03T23:00:00Z")));
}

#[test]
fn crosses_midnight_in_local_time() {
    // Monday 23:00 Berlin (CEST, UTC+2) = 21:00Z, 3 h until Tuesday 02:00 local = 00:00Z.
    let win = w("Mon 23:00 3h Europe/Berlin");
    assert!(win.contains(ts("2025-06-02T21:00:00Z")));
    assert!(win.contains(ts("2025-06-02T23:59:00Z"))); // Tue 01:59 local
    assert!(!win.contains(ts("2025-06-03T00:00:00Z")));
    assert_eq!(
        win.next_start_after(ts("2025-06-02T12:00:00Z")),
        Some(ts("2025-06-02T21:00:00Z"))
    );
}

#[test]
fn week_wraps_from_sunday_to_monday() {
    let win = w("Sun 23:00 2h UTC");
    // 2025-06-08 is a Sunday; the window runs into Monday 01:00.
    assert!(win.contains(ts("2025-06-09T00:30:00Z")));
    assert!(!win.contains(ts("2025-06-09T01:00:00Z")));
    // From inside the window, the next start is a week later.
    assert_eq!(
        win.next_start_after(ts("2025-06-08T23:00:00Z")),
        Some(ts("2025-06-15T23:00:00Z"))
    );
    // From Monday, the next start is the coming Sunday.
    assert_eq!(
        win.next_start_after(ts("2025-06-09T00:30:00Z")),
        Some(ts("2025-06-15T23:00:00Z"))
    );
}

#[test]
fn next_start_after_skips_to_next_listed_day() {
    let win = w("Mon,Thu 04:00 1h UTC");
    assert_eq!(
        win.next_start_after(ts("2025-06-02T04:00:00Z")),
        Some(ts("2025-06-05T04:00:00Z"))
    );
    assert_eq!(
        win.next_start_after(ts("2025-06-06T00:00:00Z")),
        Some(ts("2025-06-09T04:00:00Z"))
    );
}

#[test]
fn spring_forward_gap_opens_after_the_gap() {
    // Europe/Berlin 2025-03-30 (a Sunday): 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    let win = w("Sun 02:30 1h Europe/Berlin");
    // Opens at 03:30 CEST = 01:30Z (same offset after the gap), lasts one real hour.
    assert_eq!(
        win.next_start_after(ts("2025-03-29T12:00:00Z")),
        Some(ts("2025-03-30T01:30:00Z"))
    );
    assert!(!win.contains(ts("2025-03-30T01:29:00Z")));
    assert!(win.contains(ts("2025-03-30T01:30:00Z")));
    assert!(!win.contains(ts("2025-03-30T02:30:00Z")));
    // The next week is normal again: 02:30 CEST = 00:30Z.
    assert_eq!(
        win.next_start_after(ts("2025-03-30T03:00:00Z")),
        Some(ts("2025-04-06T00:30:00Z"))
    );
}

#[test]
fn length_is_elapsed_time_across_a_clock_change() {
    // Saturday 22:00 CET (21:00Z) for 6 h ends at 03:00Z = Sunday 05:00 CEST local.
    let win = w("Sat 22:00 6h Europe/Berlin");
    assert!(win.contains(ts("2025-03-30T02:59:00Z")));
    assert!(!win.contains(ts("2025-03-30T03:00:00Z")));
    let set = WindowSet::new(vec![win]);
    assert_eq!(
        set.next_opening(ts("2025-03-29T12:00:00Z")),
        Some((ts("2025-03-29T21:00:00Z"), ts("2025-03-30T03:00:00Z")))
    );
}

#[test]
fn fall_back_overlap_opens_at_the_first_occurrence() {
    // Europe/Berlin 2025-10-26 (a Sunday): 03:00 CEST falls back to 02:00 CET; 02:30 happens
    // at 00:30Z (CEST) and again at 01:30Z (CET). The window opens at the first one, once.
    let win = w("Sun 02:30 1h Europe/Berlin");
    assert_eq!(
        win.next_start_after(ts("2025-10-25T12:00:00Z")),
        Some(ts("2025-10-26T00:30:00Z"))
    );
    assert!(win.contains(ts("2025-10-26T00:30:00Z")));
    assert!(win.contains(ts("2025-10-26T01:29:00Z")));
    assert!(!win.contains(ts("2025-10-26T01:30:00Z")));
    assert_eq!(
        win.next_start_after(ts("2025-10-26T00:30:00Z")),
        Some(ts("2025-11-02T01:30:00Z"))
    );
}

#[test]
fn windows_in_different_zones_combine() {
    let set = WindowSet::new(vec![
        w("Mon 01:00 1h America/New_York"), // 05:00Z in June (EDT)
        w("Mon 03:00 1h UTC"),
    ]);
    let t = ts("2025-06-02T00:00:00Z");
    assert_eq!(set.next_start_after(t), Some(ts("2025-06-02T03:00:00Z")));
    assert!(set.contains(ts("2025-06-02T05:30:00Z")));
    assert!(!set.contains(ts("2025-06-02T04:30:00Z")));
    assert_eq!(
        set.next_opening(ts("2025-06-02T04:00:00Z")),
        Some((ts("2025-06-02T05:00:00Z"), ts("2025-06-02T06:00:00Z")))
    );
}

#[test]
fn next_opening_merges_overlapping_and_touching_windows() {
    let set = WindowSet::new(vec![
        w("Mon 22:00 2h UTC"),
        w("Tue 00:00 1h UTC"),  // touches the first
        w("Mon 23:00 30m UTC"), // inside the first
    ]);
    let expect = (ts("2025-06-02T22:00:00Z"), ts("2025-06-03T01:00:00Z"));
    assert_eq!(set.next_opening(ts("2025-06-02T10:00:00Z")), Some(expect));
    // From inside, the same period (start in the past).
    assert_eq!(set.next_opening(ts("2025-06-03T00:15:00Z")), Some(expect));
    // Right at the end, the next week's.
    assert_eq!(
        set.next_opening(ts("2025-06-03T01:00:00Z")),
        Some((ts("2025-06-09T22:00:00Z"), ts("2025-06-10T01:00:00Z")))
    );
}

#[test]
fn empty_set_is_never_open() {
    let set = WindowSet::default();
    let t = ts("2025-06-02T00:00:00Z");
    assert!(!set.contains(t));
    assert_eq!(set.next_start_after(t), None);
    assert_eq!(set.next_opening(t), None);
}

#[test]
fn daily_week_long_window_is_always_open() {
    let set = WindowSet::new(vec![w("daily 00:00 1d UTC")]);
    let t = ts("2025-06-04T13:37:00Z");
    assert!(set.contains(t));
    let (s, e) = set.next_opening(t).unwrap();
    assert!(s <= t && e > ts("2025-06-15T00:00:00Z"));
}

#[test]
fn string_form_round_trips_and_validates() {
    let win = w("mon-fri 7:05 1h30m Europe/Berlin");
    assert_eq!(
        win.to_string(),
        "Mon,Tue,Wed,Thu,Fri 07:05 1h30m Europe/Berlin"
    );
    assert_eq!(w(&win.to_string()), win);
    assert_eq!(w("Sat 03:00 4h").time_zone(), "UTC");
    assert_eq!(win.length(), Duration::from_secs(5400));
    assert_eq!(win.start(), (7, 5));
    assert!(win.days().contains(jiff::civil::Weekday::Friday));

    let err = |s: &str| s.parse::<Window>().unwrap_err();
    assert!(matches!(err("Mon 24:00 1h"), WindowError::BadStart { .. }));
    assert!(matches!(err("Mon 2230 1h"), WindowError::BadStart { .. }));
    assert!(matches!(err("Mon 22:00 0m"), WindowError::BadLength { .. }));
    assert!(matches!(err("Mon 22:00 8d"), WindowError::BadLength { .. }));
    assert!(matches!(
        err("Mon 22:00 90s"),
        WindowError::BadLength { .. }
    ));
    assert!(matches!(
        err("Mon 22:00 -1h"),
        WindowError::BadLength { .. }
    ));
    assert!(matches!(
        err("Mon 22:00 1h Mars/Olympus"),
        WindowError::UnknownTimeZone { .. }
    ));
    assert!(matches!(err("Mon 22:00"), WindowError::Syntax { .. }));
    assert!(matches!(err("Xyz 22:00 1h"), WindowError::UnknownDay(_)));
    assert!(
        err("Mon 22:00 1h Mars/Olympus")
            .to_string()
            .contains("Mars/Olympus")
    );
}

#[test]
fn new_validates_ranges() {
    let days = Days::ALL;
    assert!(Window::new(days, 23, 59, Duration::from_secs(60), "UTC").is_ok());
    assert!(Window::new(days, 24, 0, Duration::from_secs(60), "UTC").is_err());
    assert!(Window::new(days, 0, 60, Duration::from_secs(60), "UTC").is_err());
    assert!(Window::new(days, 0, 0, Duration::from_secs(61), "UTC").is_err());
    assert!(Window::new(days, 0, 0, Duration::from_secs(7 * 86400 + 60), "UTC").is_err());
}

#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
struct Cfg {
    windows: WindowSet,
}

#[test]
fn toml_table_and_string_forms() {
    let cfg: Cfg = toml::from_str(
        r#"
windows = [
  { days = ["Mon", "Tue"], start = "22:30", length = "2h", time_zone = "Europe/Berlin" },
  { days = "Sat-Sun", start = "03:00", length = "45m" },
  "Wed 01:00 1h America/New_York",
]
"#,
    )
    .unwrap();
    let ws = cfg.windows.windows();
    assert_eq!(ws.len(), 3);
    assert_eq!(ws[0], w("Mon,Tue 22:30 2h Europe/Berlin"));
    assert_eq!(ws[1], w("Sat,Sun 03:00 45m UTC"));
    assert_eq!(ws[2].time_zone(), "America/New_York");
    // Serialize writes tables that read back equal.
    let text = toml::to_string(&cfg).unwrap();
    assert!(text.contains("start = \"22:30\""), "{text}");
    let back: Cfg = toml::from_str(&text).unwrap();
    assert_eq!(back, cfg);
    let json = serde_json::to_value(&cfg.windows.windows()[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"days": ["Mon", "Tue"], "start": "22:30", "length": "2h", "time_zone": "Europe/Berlin"})
    );
}

#[test]
fn toml_errors_say_what_is_wrong() {
    for (text, needle) in [
        (
            r#"windows = [{ days = ["Mon"], start = "25:00", length = "1h" }]"#,
            "25:00",
        ),
        (
            r#"windows = [{ days = ["Mon"], start = "01:00", length = "1h", time_zone = "Nowhere/X" }]"#,
            "Nowhere/X",
        ),
        (
            r#"windows = [{ days = ["Mon"], start = "01:00", lenght = "1h" }]"#,
            "lenght",
        ),
        (r#"windows = ["Mon 01:00"]"#, "DAYS HH:MM LENGTH"),
        (
            r#"windows = [{ days = [], start = "01:00", length = "1h" }]"#,
            "at least one day",
        ),
    ] {
        let err = toml::from_str::<Cfg>(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}
