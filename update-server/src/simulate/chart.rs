//! The SVG chart of a run (plotters, SVG backend only): machines per version over time, the
//! machines the ramp allows, machines in flight or awaiting reboot, cumulative failed attempts on
//! a second axis, and a vertical line where the rollout halted. Series are downsampled to a few
//! hundred points so the file stays small; an early halt gets a logarithmic machine axis.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::sample::Sample;

/// Most points drawn per series.
pub const MAX_POINTS: usize = 400;

/// What the chart shows besides the samples.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartInfo {
    /// Title.
    pub title: String,
    /// Old version.
    pub from_version: String,
    /// New version.
    pub to_version: String,
    /// Fleet size.
    pub machines: u64,
    /// Hours after the start at which the rollout halted.
    pub halt_hours: Option<f64>,
}

/// Every `k`-th sample (and always the last) so at most [`MAX_POINTS`] remain.
pub fn downsample(samples: &[Sample]) -> Vec<Sample> {
    let k = samples.len().div_ceil(MAX_POINTS).max(1);
    let mut out: Vec<Sample> = samples.iter().step_by(k).copied().collect();
    if let (Some(last), Some(kept)) = (samples.last(), out.last())
        && kept.t != last.t
    {
        out.push(*last);
    }
    out
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// Whether the machine axis is logarithmic: when the new version never reached a tenth of the
/// fleet (an early halt), a linear axis would flatten everything but the old version.
pub fn log_axis(samples: &[Sample], machines: u64) -> bool {
    let most_new = samples.iter().map(|s| s.counts.on_new()).max().unwrap_or(0);
    machines >= 1000 && most_new * 10 < machines
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Renders the chart of `samples` to an SVG file at `path`.
pub fn render(path: &Path, samples: &[Sample], info: &ChartInfo) -> anyhow::Result<()> {
    let pts = downsample(samples);
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(&info.title, ("sans-serif", 20)).map_err(err)?;
    // The legend gets its own column so it never hides a line.
    let (plot, legend) = root.split_horizontally(850);
    let y_max = (info.machines as f64 * 1.05).max(1.0);
    let entries = if log_axis(samples, info.machines) {
        // Zero cannot be drawn on a log axis: counts are floored at 0.5 (drawn at the bottom).
        let y = (0.5f64..y_max * 1.5).log_scale();
        draw(&plot, &pts, info, y, "machines (log scale)", 0.5)?
    } else {
        draw(&plot, &pts, info, 0f64..y_max, "machines", 0.0)?
    };
    for (i, (label, color, width)) in entries.into_iter().enumerate() {
        let y = 70 + 24 * i32::try_from(i).unwrap_or(0);
        legend
            .draw(&PathElement::new(
                vec![(8, y), (36, y)],
                color.stroke_width(width),
            ))
            .map_err(err)?;
        legend
            .draw(&Text::new(label, (44, y - 7), ("sans-serif", 14)))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Draws the axes and series; returns the legend entries (label, colour, line width).
fn draw<Y>(
    area: &Area<'_>,
    pts: &[Sample],
    info: &ChartInfo,
    y_spec: Y,
    y_desc: &str,
    floor: f64,
) -> anyhow::Result<Vec<(String, RGBColor, u32)>>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let x_max = pts.last().map_or(1.0, Sample::hours).max(1.0);
    let fail_max = pts.iter().map(|s| s.failures).max().unwrap_or(0).max(10) as f64 * 1.2;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, y_spec)
        .map_err(err)?
        .set_secondary_coord(0f64..x_max, 0f64..fail_max);
    let (y_lo, y_hi) = {
        let r = chart.y_range();
        (r.start, r.end)
    };
    chart
        .configure_mesh()
        .x_desc("simulated hours")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("failed attempts (cumulative)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(err)?;

    let machines = info.machines as f64;
    let line = |f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        pts.iter().map(|s| (s.hours(), f(s).max(floor))).collect()
    };
    let series = [
        (
            "allowed by the ramp".to_owned(),
            RGBColor(170, 170, 170),
            line(&|s| s.server.effective_percent / 100.0 * machines),
        ),
        (
            format!("on {}", info.from_version),
            RGBColor(31, 119, 180),
            line(&|s| s.counts.on_old() as f64),
        ),
        (
            format!("on {}", info.to_version),
            RGBColor(44, 160, 44),
            line(&|s| s.counts.on_new() as f64),
        ),
        (
            "in flight or awaiting reboot".to_owned(),
            RGBColor(255, 127, 14),
            line(&|s| (s.counts.in_flight + s.counts.installed) as f64),
        ),
    ];
    let mut legend = Vec::new();
    for (label, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?;
        legend.push((label, color, 2));
    }
    let red = RGBColor(214, 39, 40);
    chart
        .draw_secondary_series(LineSeries::new(
            pts.iter().map(|s| (s.hours(), s.failures as f64)),
            red.stroke_width(2),
        ))
        .map_err(err)?;
    legend.push(("failed attempts (right axis)".to_owned(), red, 2));
    if let Some(h) = info.halt_hours {
        let dark = RGBColor(120, 0, 0);
        chart
            .draw_series(LineSeries::new(
                [(h, y_lo), (h, y_hi)],
                dark.stroke_width(3),
            ))
            .map_err(err)?;
        legend.push((format!("rollout halted ({h:.1} h)"), dark, 3));
    }
    Ok(legend)
}

#[cfg(test)]
mod tests {
    use super::super::fleet::Counts;
    use super::super::sample::ServerPoint;
    use super::*;

    fn samples(n: i64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                t: i * 600,
                at: 1_700_000_000 + i * 600,
                counts: Counts {
                    waiting: (1000 - i).max(0) as u64,
                    complete: i.min(1000) as u64,
                    ..Default::default()
                },
                grants: i as u64,
                failures: (i / 50) as u64,
                requests: i as u64 * 10,
                server: ServerPoint {
                    effective_percent: 50.0,
                    ..Default::default()
                },
            })
            .collect()
    }

    #[test]
    fn downsampling_bounds_points_and_keeps_the_ends() {
        let s = samples(1001);
        let d = downsample(&s);
        assert!(d.len() <= MAX_POINTS + 1, "{}", d.len());
        assert_eq!(d.first().unwrap().t, 0);
        assert_eq!(d.last().unwrap().t, 1000 * 600);
        assert_eq!(downsample(&s[..10]).len(), 10);
    }

    #[test]
    fn renders_a_small_svg_with_the_halt_marker() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        let info = ChartInfo {
            title: "test".into(),
            from_version: "1.0.0".into(),
            to_version: "2.0.0".into(),
            machines: 1000,
            halt_hours: Some(12.5),
        };
        render(&p, &samples(3000), &info).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        assert!(svg.contains("rollout halted (12.5 h)"));
        assert!(svg.contains("on 2.0.0"));
        assert!(svg.len() < 300_000, "{} bytes", svg.len());
    }

    #[test]
    fn early_halts_get_a_log_axis() {
        let mut s = samples(1001);
        assert!(
            !log_axis(&s, 1000),
            "the new version reached the whole fleet"
        );
        for x in &mut s {
            x.counts.complete = 3;
        }
        assert!(log_axis(&s, 1000));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        let info = ChartInfo {
            title: "log".into(),
            from_version: "1.0.0".into(),
            to_version: "2.0.0".into(),
            machines: 1000,
            halt_hours: Some(0.5),
        };
        render(&p, &s, &info).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.contains("machines (log scale)"));
    }
}
