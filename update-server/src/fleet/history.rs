//! A group's version history (the dashboard's version-over-time chart): the stored samples of
//! a range (see [`crate::version_history`]) ending with the group's counts now.

use std::collections::BTreeMap;

use super::{Fleet, FleetResult, find_app, find_group};
use crate::version_history::{Range, VersionHistory};

impl Fleet {
    /// How many of a group's machines ran each version over `range`, up to now.
    pub async fn version_history(
        &self,
        app: &str,
        group: &str,
        range: Range,
    ) -> FleetResult<VersionHistory> {
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let g = find_group(&cat, &a.id, group)?;
        let now = self.now();
        let samples = self
            .store
            .version_samples(&a.id, &g.id, now.saturating_sub(range.secs()), range.step())
            .await?;
        self.flush_checkins().await?;
        let mut current: BTreeMap<String, u64> = BTreeMap::new();
        for c in self.store.group_instance_counts(&a.id, &g.id).await? {
            *current.entry(c.version).or_default() += c.count;
        }
        Ok(VersionHistory::build(&samples, &current, now))
    }
}
