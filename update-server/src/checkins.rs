//! Coalesced check-ins ([`Checkins`]): a check that changes nothing but the machine's check-in
//! columns (last contact, version, track, addresses) is answered at once and its [`CheckIn`]
//! waits here, newest per machine and application, until a background batch writes it
//! (column-wise and conditional: [`crate::store::instances::InstanceTx::check_in`]).
//!
//! The buffer is bounded: past [`Checkins::capacity`] pending machines, a check-in is written
//! through before its answer (slower, never lost from memory). A batch holds at most
//! [`BATCH`] rows, so one write transaction never grows with the fleet and the writes clients
//! wait for are never held up by more than one batch. Nothing here is authority: the database
//! row is, and a pending check-in only ever moves it forward.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::StoreError;
use crate::store::instances::CheckIn;
use crate::store::tx::{Transactor, Urgency, transact};

/// Default bound on pending machines (about 40 MB of check-ins).
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Most check-ins written in one background transaction: large enough that a backlog drains
/// in few commits whose rows share pages (2,000 halved the drain time of 500 in the release-day
/// bench, and grants meanwhile went faster), small enough that a waiting write is held up by
/// tens of milliseconds at most.
pub const BATCH: usize = 2_000;
const SHARDS: usize = 16;

/// (machine id, app id).
pub type InstanceKey = (String, String);

/// Pending check-ins, sharded by key.
#[derive(Debug)]
pub struct Checkins {
    shards: Vec<Mutex<HashMap<InstanceKey, CheckIn>>>,
    capacity: usize,
    writer: Arc<dyn Transactor>,
    /// Held while a batch is taken and written: one batch at a time, so a [`Checkins::flush`]
    /// returns only once nothing is on its way to the database, and [`Checkins::hold`] keeps
    /// batches out (a deletion is not undone by a batch taken before it).
    batch: tokio::sync::Mutex<()>,
    /// First contacts of the batch being written (taken from the buffer, not yet committed).
    in_flight: Mutex<HashMap<InstanceKey, i64>>,
}

fn lock(m: &Mutex<HashMap<InstanceKey, CheckIn>>) -> MutexGuard<'_, HashMap<InstanceKey, CheckIn>> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Checkins {
    /// An empty buffer writing through `writer`, holding at most `capacity` machines.
    pub fn new(writer: Arc<dyn Transactor>, capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            capacity,
            writer,
            batch: tokio::sync::Mutex::new(()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps batches from being written while the guard lives (none is in flight once this
    /// returns). Pending check-ins stay pending.
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.batch.lock().await
    }

    /// Most pending machines before check-ins are written through.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn shard(&self, key: &InstanceKey) -> &Mutex<HashMap<InstanceKey, CheckIn>> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key);
        let i = usize::try_from(h % SHARDS as u64).unwrap_or(0);
        &self.shards[i]
    }

    /// Pending check-ins.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When this process first saw a machine whose check-in is still pending (its row may not
    /// be written yet).
    pub fn first_seen(&self, machine_id: &str, app_id: &str) -> Option<i64> {
        let key = (machine_id.to_owned(), app_id.to_owned());
        let pending = lock(self.shard(&key)).get(&key).map(|c| c.first_seen);
        let writing = match self.in_flight.lock() {
            Ok(g) => g.get(&key).copied(),
            Err(p) => p.into_inner().get(&key).copied(),
        };
        match (pending, writing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records a check-in; when the buffer is full it is written before this returns.
    pub async fn record(&self, c: CheckIn) -> Result<(), StoreError> {
        let key = (c.machine_id.clone(), c.app_id.clone());
        let full = self.len() >= self.capacity;
        {
            let mut shard = lock(self.shard(&key));
            match shard.entry(key) {
                Entry::Occupied(mut e) => {
                    merge(e.get_mut(), c);
                    return Ok(());
                }
                Entry::Vacant(e) if !full => {
                    e.insert(c);
                    return Ok(());
                }
                Entry::Vacant(_) => {}
            }
        }
        write(self.writer.as_ref(), vec![c], Urgency::Answer).await
    }

    /// Drops a pending check-in that a write transaction superseded: one not newer than `at`
    /// (that transaction wrote the check-in of `at`, with the first contact it had from here).
    pub fn written(&self, machine_id: &str, app_id: &str, at: i64) {
        let key = (machine_id.to_owned(), app_id.to_owned());
        let mut shard = lock(self.shard(&key));
        if shard.get(&key).is_some_and(|c| c.at <= at) {
            shard.remove(&key);
        }
    }

    /// Drops what is pending for a machine (one app or all), e.g. when an operator deletes it.
    pub fn forget(&self, machine_id: &str, app_id: Option<&str>) {
        for s in &self.shards {
            lock(s).retain(|k, _| !(k.0 == machine_id && app_id.is_none_or(|a| a == k.1)));
        }
    }

    /// Takes up to `max` pending check-ins.
    fn take(&self, max: usize) -> Vec<CheckIn> {
        let mut out = Vec::new();
        for s in &self.shards {
            let mut shard = lock(s);
            let keys: Vec<InstanceKey> = shard.keys().take(max - out.len()).cloned().collect();
            for k in keys {
                if let Some(c) = shard.remove(&k) {
                    out.push(c);
                }
            }
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// Puts check-ins of a failed batch back (a newer one pending meanwhile wins).
    fn put_back(&self, rows: Vec<CheckIn>) {
        for c in rows {
            let key = (c.machine_id.clone(), c.app_id.clone());
            let mut shard = lock(self.shard(&key));
            match shard.entry(key) {
                Entry::Occupied(mut e) => {
                    let newer = std::mem::replace(e.get_mut(), c);
                    merge(e.get_mut(), newer);
                }
                Entry::Vacant(e) => {
                    e.insert(c);
                }
            }
        }
    }

    /// Writes one batch (at most [`BATCH`] rows) in the background; returns how many.
    pub async fn write_batch(&self) -> Result<usize, StoreError> {
        let _one_at_a_time = self.batch.lock().await;
        let rows = self.take(BATCH);
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        self.set_in_flight(
            rows.iter()
                .map(|c| ((c.machine_id.clone(), c.app_id.clone()), c.first_seen)),
        );
        let keep = rows.clone();
        let res = write(self.writer.as_ref(), rows, Urgency::Background).await;
        if res.is_err() {
            self.put_back(keep);
        }
        self.set_in_flight(std::iter::empty());
        res.map(|()| n)
    }

    fn set_in_flight(&self, rows: impl Iterator<Item = (InstanceKey, i64)>) {
        let mut g = match self.in_flight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.clear();
        g.extend(rows);
    }

    /// Writes everything pending, batch by batch (and waits for a batch already on its way);
    /// returns how many rows.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.write_batch().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }
}

/// Folds a newer check-in into a pending one (what is empty in the newer keeps the older; the
/// first contact is the earlier of both).
fn merge(pending: &mut CheckIn, newer: CheckIn) {
    let first_seen = pending.first_seen.min(newer.first_seen);
    pending.first_seen = first_seen;
    if newer.at < pending.at {
        return;
    }
    let old = std::mem::replace(pending, newer);
    for (kept, field) in [
        (old.version, &mut pending.version),
        (old.alias, &mut pending.alias),
        (old.ip, &mut pending.ip),
        (old.oem, &mut pending.oem),
        (old.oem_version, &mut pending.oem_version),
        (old.board, &mut pending.board),
        (old.boot_id, &mut pending.boot_id),
    ] {
        if field.is_empty() {
            *field = kept;
        }
    }
    pending.first_seen = first_seen;
}

async fn write(w: &dyn Transactor, rows: Vec<CheckIn>, urgency: Urgency) -> Result<(), StoreError> {
    let rows = Arc::new(rows);
    transact(w, urgency, move |tx| {
        let rows = Arc::clone(&rows);
        Box::pin(async move { tx.check_in(&rows).await })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(at: i64, version: &str, ip: &str) -> CheckIn {
        CheckIn {
            version: version.into(),
            ip: ip.into(),
            ..CheckIn::example("m", "a", at)
        }
    }

    #[test]
    fn a_newer_check_in_wins_but_keeps_what_it_left_empty() {
        let mut p = c(10, "1.0.0", "192.0.2.1");
        merge(&mut p, c(12, "2.0.0", ""));
        assert_eq!(
            (p.at, p.version.as_str(), p.ip.as_str()),
            (12, "2.0.0", "192.0.2.1")
        );
        merge(&mut p, c(11, "3.0.0", "192.0.2.9"));
        assert_eq!(
            (p.at, p.version.as_str()),
            (12, "2.0.0"),
            "an older one changes nothing"
        );
    }
}
