//! Version history: how many machines of each group ran each version, over time (the
//! dashboard's version-over-time chart).
//!
//! Instances are rows of current state, so the past is kept by sampling: every
//! [`SAMPLE_INTERVAL_SECS`] the server counts each group's machines by version (one `GROUP BY`
//! over the instances, [`Store::instance_counts`]) and stores the counts at the instant rounded
//! down to the interval ([`Store::record_version_samples`]). A group keeps its
//! [`TOP_VERSIONS`] most common versions by name, the rest summed as "other versions", so
//! clients reporting made-up versions cannot grow the table. Samples older than
//! [`KEEP_SECS`] are deleted by the same write.
//!
//! Every replica samples, just after each multiple of the interval (by the wall clock, so no
//! instant is skipped). A group's sample starts with a row holding its total, inserted only if
//! absent: it claims the group's instant, so when replicas (or a restart) sample the same
//! instant, the first set is kept whole and the others add nothing. A chart reads at most [`MAX_POINTS`] instants of the chosen range
//! (every sample's instant is a multiple of the interval, so a coarser step is a filter on the
//! index) and ends with the group's counts now, so it is current between samples.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::store::{InstanceCount, Store, StoreError, VersionSample};

/// How often the machines are counted (seconds).
pub const SAMPLE_INTERVAL_SECS: i64 = 600;
/// How long samples are kept (seconds): 90 days.
pub const KEEP_SECS: i64 = 90 * 86_400;
/// Versions of a group kept by name in a sample; the others are summed.
pub const TOP_VERSIONS: usize = 8;
/// Most instants a chart reads.
pub const MAX_POINTS: i64 = 144;

/// A chart's time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Range {
    /// The last 24 hours.
    #[default]
    Day,
    /// The last 7 days.
    Week,
    /// The last 30 days.
    Month,
    /// The last 90 days (everything kept).
    Quarter,
}

impl Range {
    /// Every range, shortest first.
    pub const ALL: [Range; 4] = [Range::Day, Range::Week, Range::Month, Range::Quarter];

    /// The range named by a query value (`24h`, `7d`, `30d`, `90d`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == s)
    }

    /// Its query value.
    pub fn name(self) -> &'static str {
        match self {
            Range::Day => "24h",
            Range::Week => "7d",
            Range::Month => "30d",
            Range::Quarter => "90d",
        }
    }

    /// Its length in seconds.
    pub fn secs(self) -> i64 {
        match self {
            Range::Day => 86_400,
            Range::Week => 7 * 86_400,
            Range::Month => 30 * 86_400,
            Range::Quarter => KEEP_SECS,
        }
    }

    /// The step between the instants a chart of this range reads: a multiple of the sampling
    /// interval giving at most [`MAX_POINTS`] instants.
    pub fn step(self) -> i64 {
        let samples = self.secs() / SAMPLE_INTERVAL_SECS;
        let every = (samples + MAX_POINTS - 1) / MAX_POINTS;
        every.max(1) * SAMPLE_INTERVAL_SECS
    }
}

/// The instant a sample taken at `now` is recorded at.
pub fn sample_instant(now: i64) -> i64 {
    now - now.rem_euclid(SAMPLE_INTERVAL_SECS)
}

/// One sample from instance counts (any statuses): per group, its [`TOP_VERSIONS`] most
/// common versions (ties by name) and the rest summed under `version: None`. Machines in no
/// group are not sampled.
pub fn fold(at: i64, counts: &[InstanceCount]) -> Vec<VersionSample> {
    let mut groups: BTreeMap<(&str, &str), BTreeMap<&str, u64>> = BTreeMap::new();
    for c in counts {
        let Some(group) = c.group_id.as_deref() else {
            continue;
        };
        let n = u64::try_from(c.count).unwrap_or(0);
        *groups
            .entry((&c.app_id, group))
            .or_default()
            .entry(&c.version)
            .or_default() += n;
    }
    let mut out = Vec::new();
    for ((app, group), versions) in groups {
        let (top, rest) = top_versions(versions);
        let row = |version: Option<String>, machines| VersionSample {
            app_id: app.to_owned(),
            group_id: group.to_owned(),
            at,
            version,
            machines,
        };
        out.extend(top.into_iter().map(|(v, n)| row(Some(v.to_owned()), n)));
        if rest > 0 {
            out.push(row(None, rest));
        }
    }
    out
}

/// The [`TOP_VERSIONS`] largest counts (ties by name), and the sum of the others.
fn top_versions(versions: BTreeMap<&str, u64>) -> (Vec<(&str, u64)>, u64) {
    let mut all: Vec<(&str, u64)> = versions.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let rest = all.iter().skip(TOP_VERSIONS).map(|(_, n)| n).sum();
    all.truncate(TOP_VERSIONS);
    (all, rest)
}

/// A group's version history as a chart draws it: the instants, the series (one per version,
/// most machines first, "other versions" last) and each series' machines at each instant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionHistory {
    /// The instants, oldest first (Unix seconds); the last is "now".
    pub instants: Vec<i64>,
    /// The series: `Some(version)`, or `None` for every other version.
    pub series: Vec<Option<String>>,
    /// `machines[s][i]`: machines of series `s` at instant `i`.
    pub machines: Vec<Vec<u64>>,
}

impl VersionHistory {
    /// The history from stored samples (ordered by instant) and the group's counts now
    /// (version → machines) at `now`. Series beyond [`TOP_VERSIONS`] (by their largest count)
    /// are merged into "other versions", so a chart has at most `TOP_VERSIONS + 1` series.
    pub fn build(samples: &[VersionSample], current: &BTreeMap<String, u64>, now: i64) -> Self {
        let mut instants: Vec<i64> = samples
            .iter()
            .map(|s| s.at)
            .filter(|&at| at < now)
            .collect();
        instants.dedup();
        instants.push(now);
        let last = instants.len() - 1;
        let mut by_series: BTreeMap<Option<&str>, Vec<u64>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.at < now) {
            // Instants are sorted and deduplicated: the position is found by binary search.
            let Ok(i) = instants[..last].binary_search(&s.at) else {
                continue;
            };
            by_series
                .entry(s.version.as_deref())
                .or_insert_with(|| vec![0; instants.len()])[i] += s.machines;
        }
        for (v, &n) in current {
            by_series
                .entry(Some(v.as_str()))
                .or_insert_with(|| vec![0; instants.len()])[last] += n;
        }
        let mut named: Vec<(&str, Vec<u64>)> = Vec::new();
        let mut other = by_series.remove(&None);
        for (v, m) in by_series {
            if let Some(v) = v {
                named.push((v, m));
            }
        }
        let peak = |m: &Vec<u64>| m.iter().copied().max().unwrap_or(0);
        named.sort_by(|a, b| peak(&b.1).cmp(&peak(&a.1)).then(a.0.cmp(b.0)));
        for (_, m) in named.drain(TOP_VERSIONS.min(named.len())..) {
            let o = other.get_or_insert_with(|| vec![0; instants.len()]);
            for (o, n) in o.iter_mut().zip(m) {
                *o += n;
            }
        }
        let mut series: Vec<Option<String>> =
            named.iter().map(|(v, _)| Some((*v).to_owned())).collect();
        let mut machines: Vec<Vec<u64>> = named.into_iter().map(|(_, m)| m).collect();
        if let Some(o) = other {
            series.push(None);
            machines.push(o);
        }
        Self {
            instants,
            series,
            machines,
        }
    }

    /// The machines at instant `i`, all series together.
    pub fn total_at(&self, i: usize) -> u64 {
        self.machines
            .iter()
            .map(|m| m.get(i).copied().unwrap_or(0))
            .sum()
    }
}

/// The background job that samples the fleet every [`SAMPLE_INTERVAL_SECS`].
pub struct VersionSampler {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl VersionSampler {
    /// A sampler over `store`, timed by `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Counts the machines and records the sample of this interval (unless it is recorded
    /// already); returns the rows written.
    pub async fn sample(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let counts = self.store.instance_counts().await?;
        let rows = fold(sample_instant(now), &counts);
        self.store
            .record_version_samples(&rows, now.saturating_sub(KEEP_SECS))
            .await
    }

    /// Samples at start and then just after each multiple of the interval until `shutdown`
    /// turns true.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.sample().await {
                    tracing::warn!(error = %e, "sampling versions for the chart failed; will retry");
                }
                let now = self.clock.now();
                let next = sample_instant(now) + SAMPLE_INTERVAL_SECS;
                // A second past the boundary, so the clock has surely crossed it.
                let wait = Duration::from_secs((next - now).unsigned_abs() + 1);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => break,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::InstanceStatus;

    fn count(group: Option<&str>, version: &str, n: i64) -> InstanceCount {
        InstanceCount {
            app_id: "a".into(),
            group_id: group.map(str::to_owned),
            version: version.into(),
            status: InstanceStatus::Complete,
            count: n,
        }
    }

    #[test]
    fn fold_keeps_the_most_common_versions_and_sums_the_rest() {
        let mut counts = vec![count(Some("g"), "1.0", 5), count(Some("g"), "1.0", 2)];
        for i in 0..10 {
            counts.push(count(Some("g"), &format!("9.{i}"), 1));
        }
        counts.push(count(None, "1.0", 99));
        let rows = fold(600, &counts);
        assert_eq!(rows.len(), TOP_VERSIONS + 1);
        assert_eq!(rows[0].version.as_deref(), Some("1.0"));
        assert_eq!(rows[0].machines, 7);
        // Ties by name: 9.0 … 9.6 kept, 9.7 … 9.9 summed.
        assert_eq!(rows[7].version.as_deref(), Some("9.6"));
        assert_eq!(rows[8].version, None);
        assert_eq!(rows[8].machines, 3);
        assert!(rows.iter().all(|r| r.at == 600 && r.group_id == "g"));
    }

    #[test]
    fn instants_and_steps_are_multiples_of_the_interval() {
        assert_eq!(sample_instant(1_234), 1_200);
        assert_eq!(sample_instant(-1), -SAMPLE_INTERVAL_SECS);
        for r in Range::ALL {
            assert_eq!(r.step() % SAMPLE_INTERVAL_SECS, 0, "{r:?}");
            assert!(r.secs() / r.step() <= MAX_POINTS, "{r:?}");
            assert_eq!(Range::parse(r.name()), Some(r));
        }
        assert_eq!(Range::Day.step(), SAMPLE_INTERVAL_SECS);
        assert_eq!(Range::parse("1y"), None);
    }

    fn sample(at: i64, version: Option<&str>, machines: u64) -> VersionSample {
        VersionSample {
            app_id: "a".into(),
            group_id: "g".into(),
            at,
            version: version.map(str::to_owned),
            machines,
        }
    }

    #[test]
    fn history_lines_samples_up_and_ends_with_now() {
        let samples = [
            sample(600, Some("1.0"), 10),
            sample(1200, Some("1.0"), 6),
            sample(1200, Some("1.1"), 4),
            sample(1200, None, 1),
        ];
        let now = BTreeMap::from([("1.1".to_owned(), 9), ("1.0".to_owned(), 2)]);
        let h = VersionHistory::build(&samples, &now, 1500);
        assert_eq!(h.instants, [600, 1200, 1500]);
        assert_eq!(h.series, [Some("1.0".into()), Some("1.1".into()), None]);
        assert_eq!(h.machines, [vec![10, 6, 2], vec![0, 4, 9], vec![0, 1, 0]]);
        assert_eq!(h.total_at(1), 11);
    }

    #[test]
    fn history_merges_series_beyond_the_top_into_other() {
        let now: BTreeMap<String, u64> = (0..12).map(|i| (format!("v{i:02}"), i + 1)).collect();
        let h = VersionHistory::build(&[], &now, 100);
        assert_eq!(h.series.len(), TOP_VERSIONS + 1);
        assert_eq!(h.series[0].as_deref(), Some("v11"));
        assert_eq!(h.series.last(), Some(&None));
        // v00..v03 (1 + 2 + 3 + 4 machines) went to "other".
        assert_eq!(h.machines.last(), Some(&vec![10]));
        assert_eq!(h.total_at(0), (1..=12).sum::<u64>());
    }
}
