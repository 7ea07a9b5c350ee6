//! The in-memory fleet: every instance's current row, sharded behind mutexes. Check-ins update it
//! and mark the row dirty; a background task writes dirty rows in batches
//! ([`Fleet::flush`]). Status changes (events, grants) are written through before the client is
//! answered ([`Fleet::persist`]). One async write lock orders both kinds of writes, and rows are
//! copied from memory while it is held, so the database always ends with the newest row.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::Instance;
use crate::store::{InstanceChange, Store, StoreError};

/// (machine id, app id).
pub type InstanceKey = (String, String);

const SHARDS: usize = 32;

#[derive(Debug, Default)]
struct Shard {
    rows: HashMap<InstanceKey, Instance>,
    dirty: HashSet<InstanceKey>,
}

/// In-memory instance rows with coalesced persistence.
#[derive(Debug)]
pub struct Fleet {
    shards: Vec<Mutex<Shard>>,
    write_lock: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Fleet {
    /// A fleet holding `rows` (loaded at start-up), persisting to `store`.
    pub fn new(store: Arc<dyn Store>, rows: Vec<Instance>) -> Self {
        let shards: Vec<Mutex<Shard>> = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        let fleet = Self {
            shards,
            write_lock: tokio::sync::Mutex::new(()),
            store,
        };
        for r in rows {
            let key = (r.machine_id.clone(), r.app_id.clone());
            lock(fleet.shard(&key)).rows.insert(key, r);
        }
        fleet
    }

    fn shard(&self, key: &InstanceKey) -> &Mutex<Shard> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0);
        &self.shards[i % SHARDS]
    }

    /// Runs `f` on the row (created by `init` if absent) under its shard lock; marks it dirty.
    pub fn update<R>(
        &self,
        key: &InstanceKey,
        init: impl FnOnce() -> Instance,
        f: impl FnOnce(&mut Instance) -> R,
    ) -> R {
        let mut shard = lock(self.shard(key));
        let row = shard.rows.entry(key.clone()).or_insert_with(init);
        let r = f(row);
        shard.dirty.insert(key.clone());
        r
    }

    /// A copy of one row.
    pub fn get(&self, key: &InstanceKey) -> Option<Instance> {
        lock(self.shard(key)).rows.get(key).cloned()
    }

    /// Every row (for metrics), as a visitor to avoid copying.
    pub fn for_each(&self, mut f: impl FnMut(&Instance)) {
        for s in &self.shards {
            for r in lock(s).rows.values() {
                f(r);
            }
        }
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).rows.len()).sum()
    }

    /// True when no instance is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the row's current state with `change` durably, now.
    pub async fn persist(
        &self,
        key: &InstanceKey,
        change: &InstanceChange,
    ) -> Result<(), StoreError> {
        let _w = self.write_lock.lock().await;
        let row = {
            let mut shard = lock(self.shard(key));
            shard.dirty.remove(key);
            shard.rows.get(key).cloned()
        };
        let Some(row) = row else { return Ok(()) };
        let res = self.store.record_instance(&row, change).await;
        if res.is_err() {
            // Keep the row for the next batch; the caller reports the failure.
            lock(self.shard(key)).dirty.insert(key.clone());
        }
        res
    }

    /// Writes every dirty row in batches; returns how many were written.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let _w = self.write_lock.lock().await;
        let mut batch = Vec::new();
        for s in &self.shards {
            let mut shard = lock(s);
            let dirty: Vec<InstanceKey> = shard.dirty.drain().collect();
            for k in dirty {
                if let Some(r) = shard.rows.get(&k) {
                    batch.push(r.clone());
                }
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.upsert_instances(&batch).await {
            for r in &batch {
                let key = (r.machine_id.clone(), r.app_id.clone());
                lock(self.shard(&key)).dirty.insert(key);
            }
            return Err(e);
        }
        Ok(batch.len())
    }

    /// Removes rows of a machine (one app or all) from memory; the caller deletes them in the
    /// store while holding [`Fleet::write_guard`].
    pub fn forget(&self, machine_id: &str, app_id: Option<&str>) {
        for s in &self.shards {
            let mut shard = lock(s);
            let Shard { rows, dirty } = &mut *shard;
            rows.retain(|k, _| !(k.0 == machine_id && app_id.is_none_or(|a| a == k.1)));
            dirty.retain(|k| !(k.0 == machine_id && app_id.is_none_or(|a| a == k.1)));
        }
    }

    /// True when the machine has not checked in (as this process knows it) since `cutoff`, or
    /// is not in memory at all.
    pub fn is_stale(&self, key: &InstanceKey, cutoff: i64) -> bool {
        lock(self.shard(key))
            .rows
            .get(key)
            .is_none_or(|r| r.last_check_at < cutoff)
    }

    /// Removes the rows of `keys` that have still not checked in since `cutoff` (a machine that
    /// checked in meanwhile keeps its row, and its next write re-creates it in the store);
    /// returns how many were removed. The caller deletes them in the store while holding
    /// [`Fleet::write_guard`].
    pub fn forget_stale(&self, keys: &[InstanceKey], cutoff: i64) -> usize {
        let mut n = 0;
        for key in keys {
            let mut shard = lock(self.shard(key));
            if shard
                .rows
                .get(key)
                .is_some_and(|r| r.last_check_at < cutoff)
            {
                shard.rows.remove(key);
                shard.dirty.remove(key);
                n += 1;
            }
        }
        n
    }

    /// Rows not checked in since `cutoff` and with nothing waiting to be written (candidates
    /// for dropping from memory once the store no longer has them: another server sharing the
    /// database forgot them).
    pub fn stale_keys(&self, cutoff: i64) -> Vec<InstanceKey> {
        let mut out = Vec::new();
        for s in &self.shards {
            let shard = lock(s);
            out.extend(
                shard
                    .rows
                    .iter()
                    .filter(|(k, r)| r.last_check_at < cutoff && !shard.dirty.contains(*k))
                    .map(|(k, _)| k.clone()),
            );
        }
        out
    }

    /// Holds off batch writes (for deletions that must not be undone by a pending batch).
    pub async fn write_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }
}
