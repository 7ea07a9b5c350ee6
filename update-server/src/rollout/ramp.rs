//! Ramps: the effective percentage of a group at a time, and when it next changes.

use super::spec::{Ramp, RolloutSpec};

/// The percentage a ramp allows at `now`.
pub fn ramp_percent(r: &Ramp, now: i64) -> f64 {
    if now < r.start_at {
        return 0.0;
    }
    // `now >= start_at` here; saturating keeps a far-past start (an operator's -1e18) from overflowing.
    let elapsed = u64::try_from(now.saturating_sub(r.start_at)).unwrap_or(u64::MAX);
    if !r.steps.is_empty() {
        return r
            .steps
            .iter()
            .take_while(|s| s.after_secs <= elapsed)
            .last()
            .map_or(r.start_percent, |s| s.percent);
    }
    if r.duration_secs == 0 || elapsed >= r.duration_secs {
        return 100.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let frac = elapsed as f64 / r.duration_secs as f64;
    r.start_percent + (100.0 - r.start_percent) * frac
}

/// The effective percentage of a spec at `now` (ramp, else percentage, else 100).
pub fn effective_percent(s: &RolloutSpec, now: i64) -> f64 {
    match (&s.ramp, s.percentage) {
        (Some(r), _) => ramp_percent(r, now),
        (None, Some(p)) => p,
        (None, None) => 100.0,
    }
}

/// The next time the ramp's percentage changes, with the percentage from then on (a linear ramp
/// reports its start, or its end while running).
pub fn next_step(s: &RolloutSpec, now: i64) -> Option<(i64, f64)> {
    let r = s.ramp.as_ref()?;
    let at = |after: u64| {
        r.start_at
            .saturating_add(i64::try_from(after).unwrap_or(i64::MAX))
    };
    if now < r.start_at {
        return Some((r.start_at, r.start_percent));
    }
    if r.steps.is_empty() {
        let end = at(r.duration_secs);
        return (now < end).then_some((end, 100.0));
    }
    r.steps
        .iter()
        .map(|st| (at(st.after_secs), st.percent))
        .find(|(t, _)| *t > now)
}

#[cfg(test)]
mod tests {
    use super::super::spec::RampStep;
    use super::*;

    #[test]
    fn stepped_ramp_progresses() {
        let s = RolloutSpec {
            ramp: Some(Ramp {
                start_at: 1_000,
                start_percent: 1.0,
                duration_secs: 0,
                steps: vec![
                    RampStep {
                        after_secs: 100,
                        percent: 10.0,
                    },
                    RampStep {
                        after_secs: 200,
                        percent: 50.0,
                    },
                    RampStep {
                        after_secs: 300,
                        percent: 100.0,
                    },
                ],
            }),
            percentage: Some(5.0),
            ..Default::default()
        };
        assert_eq!(effective_percent(&s, 999), 0.0);
        assert_eq!(effective_percent(&s, 1_000), 1.0);
        assert_eq!(effective_percent(&s, 1_099), 1.0);
        assert_eq!(effective_percent(&s, 1_100), 10.0);
        assert_eq!(effective_percent(&s, 1_250), 50.0);
        assert_eq!(effective_percent(&s, 9_999), 100.0);
        assert_eq!(next_step(&s, 500), Some((1_000, 1.0)));
        assert_eq!(next_step(&s, 1_150), Some((1_200, 50.0)));
        assert_eq!(next_step(&s, 1_300), None);
    }

    #[test]
    fn linear_ramp_progresses() {
        let s = RolloutSpec {
            ramp: Some(Ramp {
                start_at: 0,
                start_percent: 10.0,
                duration_secs: 1_000,
                steps: vec![],
            }),
            ..Default::default()
        };
        assert_eq!(effective_percent(&s, 0), 10.0);
        assert!((effective_percent(&s, 500) - 55.0).abs() < 1e-9);
        assert_eq!(effective_percent(&s, 1_000), 100.0);
        assert_eq!(next_step(&s, 10), Some((1_000, 100.0)));
        assert_eq!(effective_percent(&RolloutSpec::default(), 0), 100.0);
    }

    /// Found by the `admin_json` fuzz target: a ramp that started at the far end of the past,
    /// asked about at the far end of the future, overflowed the elapsed-time subtraction.
    #[test]
    fn extreme_start_and_now_do_not_overflow() {
        let s = RolloutSpec {
            ramp: Some(Ramp {
                start_at: i64::MIN,
                start_percent: 1.0,
                duration_secs: 3_600,
                steps: vec![],
            }),
            ..Default::default()
        };
        assert_eq!(effective_percent(&s, i64::MAX), 100.0);
        assert_eq!(next_step(&s, i64::MAX), None);
    }
}
