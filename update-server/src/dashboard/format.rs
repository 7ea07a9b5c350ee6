//! Formatting shared by the pages: times, percentages, statuses and the stacked status bar.
//! Everything returns [`Markup`] built by maud, so every value is escaped.

use maud::{Markup, html};

use crate::lifecycle::InstanceStatus;

/// A time as `<time>`: UTC text, the machine-readable instant in `datetime` (the script shows
/// it in the browser's time zone).
pub fn time(t: i64) -> Markup {
    let utc = crate::clock::format_utc(t);
    let iso = format!("{}Z", utc.replacen(' ', "T", 1));
    html! { time datetime=(iso) { (utc) " UTC" } }
}

/// An optional time, or a dash.
pub fn maybe_time(t: Option<i64>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { "–" },
    }
}

/// A share 0..=1 as a percentage with one decimal (`12.5 %`).
pub fn share(x: f64) -> String {
    percent(x * 100.0)
}

/// A percentage 0..=100 with at most one decimal (`12.5 %`, `100 %`).
pub fn percent(p: f64) -> String {
    let r = (p * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0} %")
    } else {
        format!("{r:.1} %")
    }
}

/// How a status is shown.
pub fn status_label(s: InstanceStatus) -> &'static str {
    match s {
        InstanceStatus::Idle => "idle",
        InstanceStatus::Granted => "granted",
        InstanceStatus::Downloading => "downloading",
        InstanceStatus::Downloaded => "downloaded",
        InstanceStatus::Installed => "installed (awaiting reboot)",
        InstanceStatus::Complete => "complete",
        InstanceStatus::Error => "error",
        InstanceStatus::OnHold => "on hold",
        InstanceStatus::Deferred => "deferred",
    }
}

/// A status as a coloured tag (`st-<status>` classes in the stylesheet).
pub fn status_tag(s: InstanceStatus) -> Markup {
    html! { span class={ "tag st-" (s.as_str()) } { (status_label(s)) } }
}

/// A stacked bar of machines by status, drawn as SVG (sizes are attributes, colours come
/// from the stylesheet's classes: no inline style).
pub fn status_bar(counts: &[(InstanceStatus, u64)]) -> Markup {
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let label = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", status_label(*s)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut segments = Vec::new();
    let mut x = 0u64;
    for (s, n) in counts.iter().filter(|(_, n)| *n > 0) {
        let start = x * 1000 / total;
        x += n;
        segments.push((s.as_str(), start, x * 1000 / total - start));
    }
    let label = if total == 0 {
        "no machines".to_owned()
    } else {
        label
    };
    html! {
        svg class="statusbar" viewBox="0 0 1000 10" preserveAspectRatio="none" role="img"
            aria-label=(label) {
            @if total == 0 {
                rect class="st-none" x="0" y="0" width="1000" height="10" {}
            }
            @for (class, start, width) in segments {
                rect class={ "st-" (class) } x=(start) y="0" width=(width) height="10" {}
            }
        }
    }
}

/// `s` as one percent-encoded URL path segment (everything but unreserved characters encoded).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An Omaha error code with its decoded meaning (`44: ... (flags)`).
pub fn error_code(code: Option<i64>) -> String {
    match code {
        None => "–".to_owned(),
        Some(c) => match u32::try_from(c) {
            Ok(raw) => format!("{c}: {}", omaha::DecodedErrorCode::from_raw(raw)),
            Err(_) => c.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_times_read_well() {
        assert_eq!(percent(25.0), "25 %");
        assert_eq!(percent(12.345), "12.3 %");
        assert_eq!(share(0.02), "2 %");
        let t = time(0).into_string();
        assert!(t.contains(r#"datetime="1970-01-01T00:00:00Z""#), "{t}");
        assert!(t.contains("1970-01-01 00:00:00 UTC"), "{t}");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("abc-1.2_~"), "abc-1.2_~");
        assert_eq!(path_segment("a b/c?<"), "a%20b%2Fc%3F%3C");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn the_status_bar_covers_the_width_once() {
        let bar = status_bar(&[
            (InstanceStatus::Complete, 1),
            (InstanceStatus::Error, 2),
            (InstanceStatus::Idle, 0),
        ])
        .into_string();
        assert!(
            bar.contains(r#"class="st-complete" x="0" y="0" width="333""#),
            "{bar}"
        );
        assert!(
            bar.contains(r#"class="st-error" x="333" y="0" width="667""#),
            "{bar}"
        );
        assert!(!bar.contains("st-idle"));
        assert!(!bar.contains("style"));
        assert!(status_bar(&[]).into_string().contains("no machines"));
    }
}
