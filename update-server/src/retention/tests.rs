//! The pruner over a real database, on SQLite and on PostgreSQL ([`crate::store::testkit`]):
//! one pass at a time across processes (two sets of stores on one database stand for two
//! server processes), and pending check-ins written before a pass.

use std::any::Any;

use tokio::sync::Semaphore;

use super::*;
use crate::clock::ManualClock;
use crate::store::instances::CheckIn;
use crate::store::testkit::{TestStores, both_stores};
use crate::store::tx::{Transactor, TxJob, Urgency};
use crate::store::{StoreFuture, Stores};

const DAY: i64 = 86_400;
const NOW: i64 = 1_000 * DAY;
const APP: &str = "app";

/// A transactor that holds every job until the test opens it, and counts the jobs that
/// arrived: a pruner over it stops in the middle of its pass (while it writes pending
/// check-ins).
#[derive(Debug)]
struct Gate {
    inner: Arc<dyn Transactor>,
    arrived: watch::Sender<usize>,
    open: Semaphore,
}

impl Gate {
    fn new(inner: Arc<dyn Transactor>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            arrived: watch::Sender::new(0),
            open: Semaphore::new(0),
        })
    }

    /// Lets jobs through (one at a time).
    fn open(&self) {
        self.open.add_permits(1);
    }

    /// Stops jobs again (once the one let through is done).
    async fn close(&self) {
        self.open.acquire().await.unwrap().forget();
    }

    /// Waits until `n` jobs in all arrived.
    async fn arrived(&self, n: usize) {
        self.arrived
            .subscribe()
            .wait_for(|k| *k >= n)
            .await
            .unwrap();
    }
}

impl Transactor for Gate {
    fn run(&self, job: TxJob, urgency: Urgency) -> StoreFuture<'_, Box<dyn Any + Send>> {
        Box::pin(async move {
            self.arrived.send_modify(|n| *n += 1);
            let _open = self
                .open
                .acquire()
                .await
                .map_err(|_| StoreError::Internal("gate closed".into()))?;
            self.inner.run(job, urgency).await
        })
    }
}

fn settings() -> RetentionSettings {
    RetentionSettings {
        events_days: Some(90),
        history_days: Some(90),
        activity_days: Some(365),
        grants_days: Some(90),
        forget_instances_after_days: Some(7),
        interval: None,
        batch_size: 1000,
    }
}

fn check_in(machine: &str, at: i64) -> CheckIn {
    CheckIn::example(machine, APP, at)
}

/// A stale instance row, last seen `at`.
async fn instance(kit: &TestStores, machine: &str, at: i64) {
    kit.exec(&format!(
        "INSERT INTO instances (machine_id, app_id, last_check_at, status, status_at, \
         created_at) VALUES ('{machine}', '{APP}', {at}, 'idle', {at}, {at})"
    ))
    .await;
}

/// Who holds the retention lease, asked through `store` without taking it over: at the
/// earliest instant no lease has expired (and one taken because it was free is given back).
async fn lease_holder(store: &dyn RetentionStore) -> Option<String> {
    match store
        .take_lease(LEASE, "probe", i64::MIN, i64::MIN)
        .await
        .unwrap()
    {
        LeaseOutcome::Held { holder, .. } => Some(holder),
        LeaseOutcome::Taken => {
            store.release_lease(LEASE, "probe").await.unwrap();
            None
        }
    }
}

/// A pruner over `stores` whose check-ins go through `writer`.
async fn pruner(
    stores: &Stores,
    clock: &Arc<ManualClock>,
    writer: Arc<dyn Transactor>,
    pending: &[CheckIn],
) -> Arc<Pruner> {
    let checkins = Arc::new(Checkins::new(writer, 100));
    for c in pending {
        checkins.record(c.clone()).await.unwrap();
    }
    let clock: Arc<dyn Clock> = clock.clone();
    let (_tx, shutdown) = watch::channel(false);
    Arc::new(Pruner::new(
        Arc::clone(&stores.retention),
        checkins,
        clock,
        settings(),
        RetentionMetrics::default(),
        shutdown,
    ))
}

async fn two_pruners_on_one_database_never_run_a_pass_at_the_same_time(kit: &mut TestStores) {
    let mut other = kit.replica().await;
    let clock = ManualClock::new(NOW);
    let (gate_a, gate_b) = (
        Gate::new(Arc::clone(&kit.writer)),
        Gate::new(Arc::clone(&other.writer)),
    );
    let a = pruner(kit, &clock, gate_a.clone(), &[check_in("a", NOW)]).await;
    let b = pruner(&other, &clock, gate_b.clone(), &[check_in("b", NOW)]).await;
    assert_ne!(a.holder(), b.holder());
    instance(kit, "stale", NOW - 30 * DAY).await;

    // `a` takes the lease and stops in its pass, writing its pending check-in.
    let run_a = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.run(false).await }
    });
    gate_a.arrived(1).await;

    // `b`'s scheduled pass is skipped, and an operator's run refused naming `a`.
    assert!(b.run_scheduled().await.unwrap().is_none());
    assert_eq!(
        b.metrics
            .skipped
            .get_or_create(&metrics::SkipLabels {
                reason: "lease_held"
            })
            .get(),
        1
    );
    match b.run(false).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains(a.holder()), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A dry run needs no lease; it counts the stale instance and deletes nothing.
    gate_b.open();
    let dry = b.run(true).await.unwrap();
    assert_eq!(dry.rows.instances, 1);
    assert_eq!(*b.finished_runs().borrow(), 0, "no real pass of `b` ran");
    assert_eq!(
        kit.strings("SELECT machine_id FROM instances ORDER BY machine_id")
            .await,
        ["b", "stale"]
    );

    clock.advance(LEASE_TTL_SECS + 1);
    if kit.kind() == "postgres" {
        // `a` is held up past its lease, but its session lives: an advisory lock does not
        // expire, so `b` is skipped again.
        assert!(b.run_scheduled().await.unwrap().is_none());
        assert_eq!(
            lease_holder(&*other.retention).await.as_deref(),
            Some(a.holder())
        );

        // `a` goes on, renews its lease and runs its pass to the end.
        gate_a.open();
        let rep = run_a.await.unwrap().unwrap();
        assert_eq!(rep.rows.instances, 1, "{rep:?}");
        assert_eq!(
            kit.strings("SELECT machine_id FROM instances ORDER BY machine_id")
                .await,
            ["a", "b"]
        );
        assert_eq!(lease_holder(&*other.retention).await, None);

        // Now `b` may run.
        b.checkins.record(check_in("b", NOW + 1)).await.unwrap();
        assert_eq!(b.run(false).await.unwrap().rows.instances, 0);
        assert_eq!(a.run(false).await.unwrap().rows.instances, 0);
        other.close().await;
        return;
    }

    // `a` is held up past its lease: `b` takes it over and stops in its own pass (its gate
    // closed again, with a check-in pending).
    b.checkins.record(check_in("b", NOW + 1)).await.unwrap();
    gate_b.close().await;
    let run_b = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.run_scheduled().await }
    });
    gate_b.arrived(2).await;
    let holder: Vec<String> = kit.strings("SELECT holder FROM job_leases").await;
    assert_eq!(holder, [b.holder()]);
    assert_eq!(
        lease_holder(&*kit.retention).await.as_deref(),
        Some(b.holder())
    );

    // `a` goes on, finds the lease with `b` before its first batch, and stops deleting nothing.
    gate_a.open();
    match run_a.await.unwrap() {
        Err(StoreError::Conflict(m)) => assert!(m.contains(b.holder()), "{m}"),
        other => panic!("`a` should have stopped, got {other:?}"),
    }
    assert_eq!(
        kit.strings("SELECT machine_id FROM instances ORDER BY machine_id")
            .await,
        ["a", "b", "stale"],
        "`a` wrote its check-in and deleted nothing"
    );
    assert_eq!(
        kit.strings("SELECT holder FROM job_leases").await,
        [b.holder()]
    );

    // `b` runs its pass to the end and gives the lease back.
    gate_b.open();
    let rep = run_b.await.unwrap().unwrap().expect("`b` held the lease");
    assert_eq!(rep.rows.instances, 1, "{rep:?}");
    assert_eq!(
        kit.strings("SELECT machine_id FROM instances ORDER BY machine_id")
            .await,
        ["a", "b"]
    );
    assert!(
        kit.strings("SELECT holder FROM job_leases")
            .await
            .is_empty()
    );
    // Now `a` may run again.
    assert_eq!(a.run(false).await.unwrap().rows.instances, 0);
    other.close().await;
}

async fn a_pending_check_in_is_written_before_the_pass_so_its_machine_is_kept(
    kit: &mut TestStores,
) {
    let clock = ManualClock::new(NOW);
    // Both last seen 30 days ago as far as the database knows; `back` checked in a minute ago,
    // still pending in memory.
    instance(kit, "back", NOW - 30 * DAY).await;
    instance(kit, "gone", NOW - 30 * DAY).await;
    let writer = Arc::clone(&kit.writer);
    let p = pruner(kit, &clock, writer, &[check_in("back", NOW - 60)]).await;
    assert_eq!(p.checkins.len(), 1);
    let rep = p.run(false).await.unwrap();
    assert_eq!(rep.rows.instances, 1, "{rep:?}");
    assert!(p.checkins.is_empty());
    let left: Vec<(String, i64)> = kit
        .rows("SELECT machine_id, last_check_at FROM instances")
        .await;
    assert_eq!(left, [("back".to_owned(), NOW - 60)]);
}

both_stores!(
    two_pruners_on_one_database_never_run_a_pass_at_the_same_time,
    a_pending_check_in_is_written_before_the_pass_so_its_machine_is_kept,
);
