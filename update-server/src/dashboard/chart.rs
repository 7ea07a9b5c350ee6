//! The version-over-time chart of a group page: a stacked area chart drawn as SVG on the
//! server from a [`VersionHistory`]. It is written with maud like the pages, so every version
//! name (which a client reports, and may hold markup) is escaped; it uses presentation
//! attributes only (no `style`), which the Content-Security-Policy allows.

use maud::{Markup, html};

use crate::clock::format_utc;
use crate::version_history::VersionHistory;

/// Drawing size (SVG user units; the image scales with the page).
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
/// Plot area inside the drawing.
const LEFT: f64 = 56.0;
const RIGHT: f64 = 560.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 228.0;
/// Width of the bar drawn when the history has one instant only.
const BAR: f64 = 10.0;

/// Series colours, most common version first; "other versions" is always grey.
const PALETTE: [&str; 8] = [
    "#2f6fb0", "#e08a1e", "#3a9b5c", "#c0392b", "#7d5ba6", "#17a2b8", "#b5895a", "#d35d9a",
];
const OTHER: &str = "#9aa0a6";

/// The label of a series.
pub fn series_label(version: Option<&str>) -> &str {
    version.unwrap_or("other versions")
}

/// The colour of series `i`.
fn colour(h: &VersionHistory, i: usize) -> &'static str {
    match h.series.get(i) {
        Some(None) => OTHER,
        _ => PALETTE[i % PALETTE.len()],
    }
}

/// A one-line description of the chart (the image's alternative text).
pub fn describe(h: &VersionHistory) -> String {
    let last = h.instants.len().saturating_sub(1);
    let now: Vec<String> = h
        .series
        .iter()
        .zip(&h.machines)
        .filter_map(|(s, m)| {
            let n = m.get(last).copied().unwrap_or(0);
            (n > 0).then(|| format!("{} {n}", series_label(s.as_deref())))
        })
        .collect();
    if now.is_empty() {
        "No machines in this group yet.".to_owned()
    } else {
        format!("Machines by version now: {}.", now.join(", "))
    }
}

/// The chart as a standalone SVG document.
pub fn render(h: &VersionHistory) -> Markup {
    let n = h.instants.len();
    let peak = (0..n).map(|i| h.total_at(i)).max().unwrap_or(0).max(1);
    let (t0, t1) = match (h.instants.first(), h.instants.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => (0, 0),
    };
    let x = |t: i64| {
        if t1 > t0 {
            LEFT + (RIGHT - LEFT) * ((t - t0) as f64 / (t1 - t0) as f64)
        } else {
            RIGHT - BAR
        }
    };
    let y = |m: u64| BOTTOM - (BOTTOM - TOP) * (m as f64 / peak as f64);
    // cumulative[s][i]: the machines of series 0..=s at instant i.
    let mut cumulative: Vec<Vec<u64>> = Vec::with_capacity(h.series.len());
    for (s, m) in h.machines.iter().enumerate() {
        let below = s.checked_sub(1).and_then(|p| cumulative.get(p)).cloned();
        let row = (0..n)
            .map(|i| m.get(i).copied().unwrap_or(0) + below.as_ref().map_or(0, |b| b[i]))
            .collect();
        cumulative.push(row);
    }
    let area = |s: usize| -> String {
        let upper = &cumulative[s];
        let lower = s.checked_sub(1).map(|p| &cumulative[p]);
        let mut pts = Vec::with_capacity(2 * n + 2);
        if n == 1 {
            let (top, bottom) = (y(upper[0]), y(lower.map_or(0, |l| l[0])));
            for (px, py) in [
                (RIGHT - BAR, top),
                (RIGHT, top),
                (RIGHT, bottom),
                (RIGHT - BAR, bottom),
            ] {
                pts.push(format!("{px:.1},{py:.1}"));
            }
            return pts.join(" ");
        }
        for (i, &t) in h.instants.iter().enumerate() {
            pts.push(format!("{:.1},{:.1}", x(t), y(upper[i])));
        }
        for (i, &t) in h.instants.iter().enumerate().rev() {
            pts.push(format!("{:.1},{:.1}", x(t), y(lower.map_or(0, |l| l[i]))));
        }
        pts.join(" ")
    };
    let y_ticks = [0, peak / 2, peak];
    let x_ticks: Vec<i64> = if t1 > t0 {
        vec![t0, t0 + (t1 - t0) / 2, t1]
    } else {
        vec![t1]
    };
    html! {
        svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            width=(WIDTH) height=(HEIGHT) font-family="sans-serif" font-size="11" role="img" {
            title { (describe(h)) }
            rect x=(LEFT) y=(TOP) width=(RIGHT - LEFT) height=(BOTTOM - TOP) fill="#fafafa" stroke="#ddd" {}
            @for s in 0..h.series.len() {
                polygon points=(area(s)) fill=(colour(h, s)) fill-opacity="0.85" stroke=(colour(h, s)) stroke-width="0.5"
                    data-series=(series_label(h.series[s].as_deref())) {}
            }
            @for m in y_ticks {
                line x1=(LEFT - 4.0) x2=(LEFT) y1=(y(m)) y2=(y(m)) stroke="#888" {}
                text x=(LEFT - 6.0) y=(y(m) + 4.0) text-anchor="end" fill="#444" { (m) }
            }
            @for (i, t) in x_ticks.iter().enumerate() {
                text x=(x(*t)) y=(BOTTOM + 16.0) fill="#444"
                    text-anchor=(match (i, x_ticks.len()) { (0, l) if l > 1 => "start", (i, l) if i + 1 == l => "end", _ => "middle" }) {
                    (short_time(*t))
                }
            }
            @for (s, label) in h.series.iter().enumerate() {
                rect x=(RIGHT + 16.0) y=(TOP + 18.0 * s as f64) width="12" height="12" fill=(colour(h, s)) {}
                text x=(RIGHT + 34.0) y=(TOP + 18.0 * s as f64 + 10.0) fill="#222" data-legend=(series_label(label.as_deref())) {
                    (truncate(series_label(label.as_deref()), 24))
                    " (" (h.machines[s].last().copied().unwrap_or(0)) ")"
                }
            }
            @if h.series.is_empty() {
                text x=((LEFT + RIGHT) / 2.0) y=((TOP + BOTTOM) / 2.0) text-anchor="middle" fill="#666" {
                    "No machines in this group yet."
                }
            }
        }
    }
}

/// `MM-DD HH:MM` in UTC.
fn short_time(t: i64) -> String {
    let full = format_utc(t);
    // `YYYY-MM-DDTHH:MM:SSZ` → `MM-DD HH:MM`.
    match (full.get(5..10), full.get(11..16)) {
        (Some(d), Some(hm)) => format!("{d} {hm}"),
        _ => full,
    }
}

/// At most `max` characters, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> VersionHistory {
        VersionHistory {
            instants: vec![0, 600, 1200],
            series: vec![Some("1.0".into()), Some("<b>2.0</b>".into()), None],
            machines: vec![vec![4, 2, 0], vec![0, 2, 4], vec![0, 0, 1]],
        }
    }

    #[test]
    fn areas_stack_and_names_are_escaped() {
        let svg = render(&history()).into_string();
        assert_eq!(svg.matches("<polygon").count(), 3);
        assert!(svg.contains("&lt;b&gt;2.0&lt;/b&gt; (4)"), "{svg}");
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("other versions (1)"));
        // The top of the stack at the last instant is the peak (5 machines): y = TOP.
        assert!(svg.contains(&format!("{RIGHT:.1},{TOP:.1}")), "{svg}");
        assert!(!svg.contains("style="));
        assert_eq!(
            describe(&history()),
            "Machines by version now: <b>2.0</b> 4, other versions 1."
        );
    }

    #[test]
    fn one_instant_is_a_bar_and_an_empty_group_says_so() {
        let one = VersionHistory {
            instants: vec![100],
            series: vec![Some("1.0".into())],
            machines: vec![vec![3]],
        };
        let svg = render(&one).into_string();
        assert!(
            svg.contains(&format!("{:.1},{TOP:.1}", RIGHT - BAR)),
            "{svg}"
        );
        let empty = VersionHistory {
            instants: vec![100],
            ..Default::default()
        };
        assert!(
            render(&empty)
                .into_string()
                .contains("No machines in this group yet.")
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
