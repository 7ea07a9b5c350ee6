//! Retention settings in the server's three configuration stages: [`RetentionArgs`] (command
//! line and environment), [`RetentionFile`] (the `[retention]` table of the TOML file) and
//! [`RetentionSettings`] (merged and validated). A period of `0` days keeps that kind of row
//! forever.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::store::retention::Cutoffs;

/// Default days client events are kept.
pub const DEFAULT_EVENTS_DAYS: u32 = 90;
/// Default days status history entries are kept (an instance's newest one always is).
pub const DEFAULT_HISTORY_DAYS: u32 = 90;
/// Default days activity entries are kept.
pub const DEFAULT_ACTIVITY_DAYS: u32 = 365;
/// Default days settled grants no rollout counts are kept.
pub const DEFAULT_GRANTS_DAYS: u32 = 90;
/// Default days without a check-in after which an instance is forgotten (0: never).
pub const DEFAULT_FORGET_DAYS: u32 = 0;
/// Default seconds between background prunes.
pub const DEFAULT_INTERVAL_SECS: u64 = 3600;
/// Default largest number of rows one prune transaction deletes.
pub const DEFAULT_BATCH_SIZE: u32 = 1000;
/// Longest retention period accepted (100 years; use 0 for "forever").
pub const MAX_DAYS: u32 = 36_500;
/// Shortest interval between background prunes.
pub const MIN_INTERVAL_SECS: u64 = 60;
/// Longest interval between background prunes (one week).
pub const MAX_INTERVAL_SECS: u64 = 7 * 86_400;
/// Smallest batch accepted.
pub const MIN_BATCH_SIZE: u32 = 100;
/// Largest batch accepted.
pub const MAX_BATCH_SIZE: u32 = 100_000;

const DAY: i64 = 86_400;

/// Retention options of `update-server serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RetentionArgs {
    /// Days client events are kept; 0 keeps them forever [default: 90].
    #[arg(long, env = "UPDATE_SERVER_RETENTION_EVENTS_DAYS")]
    pub retention_events_days: Option<u32>,
    /// Days status history entries are kept (each instance's newest is always kept); 0 keeps
    /// them forever [default: 90].
    #[arg(long, env = "UPDATE_SERVER_RETENTION_HISTORY_DAYS")]
    pub retention_history_days: Option<u32>,
    /// Days activity entries are kept; 0 keeps them forever [default: 365].
    #[arg(long, env = "UPDATE_SERVER_RETENTION_ACTIVITY_DAYS")]
    pub retention_activity_days: Option<u32>,
    /// Days settled rollout grants that no rollout counts any more are kept; 0 keeps them
    /// forever [default: 90].
    #[arg(long, env = "UPDATE_SERVER_RETENTION_GRANTS_DAYS")]
    pub retention_grants_days: Option<u32>,
    /// Forget an instance (row, history, events, refusals, grants) after this many days without
    /// a check-in; 0 never forgets [default: 0].
    #[arg(long, env = "UPDATE_SERVER_RETENTION_FORGET_INSTANCES_AFTER_DAYS")]
    pub retention_forget_instances_after_days: Option<u32>,
    /// Seconds between background prunes (the first runs at start); 0 turns the background
    /// pruner off (`update-server prune` still works) [default: 3600].
    #[arg(long, env = "UPDATE_SERVER_RETENTION_INTERVAL_SECS")]
    pub retention_interval_secs: Option<u64>,
    /// Most rows one prune transaction deletes [default: 1000].
    #[arg(long, env = "UPDATE_SERVER_RETENTION_BATCH_SIZE")]
    pub retention_batch_size: Option<u32>,
}

/// The `[retention]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// See [`RetentionArgs::retention_events_days`].
    pub events_days: Option<u32>,
    /// See [`RetentionArgs::retention_history_days`].
    pub history_days: Option<u32>,
    /// See [`RetentionArgs::retention_activity_days`].
    pub activity_days: Option<u32>,
    /// See [`RetentionArgs::retention_grants_days`].
    pub grants_days: Option<u32>,
    /// See [`RetentionArgs::retention_forget_instances_after_days`].
    pub forget_instances_after_days: Option<u32>,
    /// See [`RetentionArgs::retention_interval_secs`].
    pub interval_secs: Option<u64>,
    /// See [`RetentionArgs::retention_batch_size`].
    pub batch_size: Option<u32>,
}

/// Validated retention settings. A period of `None` keeps that kind of row forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Days client events are kept.
    pub events_days: Option<u32>,
    /// Days status history entries are kept.
    pub history_days: Option<u32>,
    /// Days activity entries are kept.
    pub activity_days: Option<u32>,
    /// Days settled grants no rollout counts are kept.
    pub grants_days: Option<u32>,
    /// Days without a check-in after which an instance is forgotten.
    pub forget_instances_after_days: Option<u32>,
    /// Time between background prunes (`None`: no background pruner).
    pub interval: Option<Duration>,
    /// Most rows one prune transaction deletes.
    pub batch_size: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let days = |d: u32| (d > 0).then_some(d);
        Self {
            events_days: days(DEFAULT_EVENTS_DAYS),
            history_days: days(DEFAULT_HISTORY_DAYS),
            activity_days: days(DEFAULT_ACTIVITY_DAYS),
            grants_days: days(DEFAULT_GRANTS_DAYS),
            forget_instances_after_days: days(DEFAULT_FORGET_DAYS),
            interval: Some(Duration::from_secs(DEFAULT_INTERVAL_SECS)),
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

/// A retention period: `0` is "forever" (`None`), otherwise at most [`MAX_DAYS`].
fn period(key: &'static str, days: u32) -> Result<Option<u32>, ConfigError> {
    if days > MAX_DAYS {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{days} days is above {MAX_DAYS}; use 0 to keep rows forever"),
        });
    }
    Ok((days > 0).then_some(days))
}

impl RetentionSettings {
    /// Merges arguments over the file over defaults, and validates.
    pub fn resolve(
        args: &RetentionArgs,
        file: Option<&RetentionFile>,
    ) -> Result<Self, ConfigError> {
        let empty = RetentionFile::default();
        let f = file.unwrap_or(&empty);
        let interval_secs = args
            .retention_interval_secs
            .or(f.interval_secs)
            .unwrap_or(DEFAULT_INTERVAL_SECS);
        if interval_secs != 0 && !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&interval_secs) {
            return Err(ConfigError::Invalid {
                key: "retention.interval_secs",
                reason: format!(
                    "{interval_secs} is outside {MIN_INTERVAL_SECS}..={MAX_INTERVAL_SECS} \
                     seconds (0 turns the background pruner off)"
                ),
            });
        }
        let batch_size = args
            .retention_batch_size
            .or(f.batch_size)
            .unwrap_or(DEFAULT_BATCH_SIZE);
        if !(MIN_BATCH_SIZE..=MAX_BATCH_SIZE).contains(&batch_size) {
            return Err(ConfigError::Invalid {
                key: "retention.batch_size",
                reason: format!("{batch_size} is outside {MIN_BATCH_SIZE}..={MAX_BATCH_SIZE} rows"),
            });
        }
        Ok(Self {
            events_days: period(
                "retention.events_days",
                args.retention_events_days
                    .or(f.events_days)
                    .unwrap_or(DEFAULT_EVENTS_DAYS),
            )?,
            history_days: period(
                "retention.history_days",
                args.retention_history_days
                    .or(f.history_days)
                    .unwrap_or(DEFAULT_HISTORY_DAYS),
            )?,
            activity_days: period(
                "retention.activity_days",
                args.retention_activity_days
                    .or(f.activity_days)
                    .unwrap_or(DEFAULT_ACTIVITY_DAYS),
            )?,
            grants_days: period(
                "retention.grants_days",
                args.retention_grants_days
                    .or(f.grants_days)
                    .unwrap_or(DEFAULT_GRANTS_DAYS),
            )?,
            forget_instances_after_days: period(
                "retention.forget_instances_after_days",
                args.retention_forget_instances_after_days
                    .or(f.forget_instances_after_days)
                    .unwrap_or(DEFAULT_FORGET_DAYS),
            )?,
            interval: (interval_secs > 0).then(|| Duration::from_secs(interval_secs)),
            batch_size,
        })
    }

    /// The cutoffs of a run at `now` (Unix seconds).
    pub fn cutoffs(&self, now: i64) -> Cutoffs {
        let before = |d: Option<u32>| d.map(|d| now.saturating_sub(i64::from(d) * DAY));
        Cutoffs {
            now,
            events: before(self.events_days),
            history: before(self.history_days),
            activity: before(self.activity_days),
            grants: before(self.grants_days),
            forget: before(self.forget_instances_after_days),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_a_quarter_and_a_year_and_forget_nothing() {
        let s = RetentionSettings::resolve(&RetentionArgs::default(), None).unwrap();
        assert_eq!(s, RetentionSettings::default());
        assert_eq!(
            (
                s.events_days,
                s.history_days,
                s.activity_days,
                s.grants_days
            ),
            (Some(90), Some(90), Some(365), Some(90))
        );
        assert_eq!(s.forget_instances_after_days, None, "forgetting is opt-in");
        assert_eq!(s.interval, Some(Duration::from_secs(3600)));
        let c = s.cutoffs(100 * DAY);
        assert_eq!(c.events, Some(10 * DAY));
        assert_eq!(c.activity, Some(100 * DAY - 365 * DAY));
        assert_eq!(c.forget, None);
    }

    #[test]
    fn zero_keeps_forever_and_args_beat_the_file() {
        let file: RetentionFile = toml::from_str(
            "events_days = 0\nactivity_days = 30\nforget_instances_after_days = 7\n\
             interval_secs = 0\nbatch_size = 1000",
        )
        .unwrap();
        let args = RetentionArgs {
            retention_activity_days: Some(60),
            ..Default::default()
        };
        let s = RetentionSettings::resolve(&args, Some(&file)).unwrap();
        assert_eq!(s.events_days, None);
        assert_eq!(s.activity_days, Some(60));
        assert_eq!(s.forget_instances_after_days, Some(7));
        assert_eq!(s.interval, None, "0: no background pruner");
        assert_eq!(s.batch_size, 1000);
        assert_eq!(s.cutoffs(8 * DAY).forget, Some(DAY));
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("events_days = 36501", "retention.events_days"),
            (
                "forget_instances_after_days = 99999",
                "retention.forget_instances_after_days",
            ),
            ("interval_secs = 59", "retention.interval_secs"),
            ("interval_secs = 604801", "retention.interval_secs"),
            ("batch_size = 99", "retention.batch_size"),
            ("batch_size = 100001", "retention.batch_size"),
        ] {
            let file: RetentionFile = toml::from_str(text).unwrap();
            let err =
                RetentionSettings::resolve(&RetentionArgs::default(), Some(&file)).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        assert!(toml::from_str::<RetentionFile>("event_days = 1").is_err());
        assert!(toml::from_str::<RetentionFile>("events_days = -1").is_err());
    }
}
