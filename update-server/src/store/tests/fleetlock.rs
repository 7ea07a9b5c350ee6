//! The FleetLock semaphore ([`crate::store::FleetLockStore`]) on both databases.

use crate::model::NewActivity;
use crate::store::Database;
use crate::store::fleetlock::{AcquireOutcome, LockHolder, Released};
use crate::store::testkit::{TestStores, both_stores};

async fn acquire_is_reentrant_and_bounded_by_slots(kit: &mut TestStores) {
    let s = &kit.fleetlock;
    let a = s.fleetlock_acquire("g", "a", 1, 100, 10).await.unwrap();
    assert_eq!(a.outcome, AcquireOutcome::Granted);
    assert_eq!((a.holders, a.slots), (1, 1));
    let again = s.fleetlock_acquire("g", "a", 1, 100, 20).await.unwrap();
    assert_eq!(again.outcome, AcquireOutcome::AlreadyHeld);
    let b = s.fleetlock_acquire("g", "b", 1, 100, 30).await.unwrap();
    assert_eq!(b.outcome, AcquireOutcome::Full);
    // Another group has its own slots.
    let other = s.fleetlock_acquire("h", "b", 1, 100, 30).await.unwrap();
    assert_eq!(other.outcome, AcquireOutcome::Granted);
    let groups = s.fleetlock_groups(1).await.unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].group, "g");
    assert_eq!(
        groups[0].holders,
        vec![LockHolder {
            id: "a".into(),
            since: 10
        }]
    );
    assert!(!groups[0].configured);
}

async fn release_is_idempotent_and_frees_the_slot(kit: &mut TestStores) {
    let s = &kit.fleetlock;
    s.fleetlock_acquire("g", "a", 1, 100, 10).await.unwrap();
    let r = s.fleetlock_release("g", "a", None, 40).await.unwrap();
    assert_eq!(
        r,
        Released {
            was_held: true,
            holders: 0
        }
    );
    let r = s.fleetlock_release("g", "a", None, 40).await.unwrap();
    assert_eq!(
        r,
        Released {
            was_held: false,
            holders: 0
        }
    );
    let b = s.fleetlock_acquire("g", "b", 1, 100, 30).await.unwrap();
    assert_eq!(b.outcome, AcquireOutcome::Granted);
}

async fn clients_cannot_bring_more_than_max_groups(kit: &mut TestStores) {
    let s = &kit.fleetlock;
    let act = NewActivity::default();
    for g in ["g1", "g2"] {
        let r = s.fleetlock_acquire(g, "a", 1, 2, 10).await.unwrap();
        assert_eq!(r.outcome, AcquireOutcome::Granted, "{g}");
    }
    let third = s.fleetlock_acquire("g3", "a", 1, 2, 10).await.unwrap();
    assert_eq!(third.outcome, AcquireOutcome::TooManyGroups);
    // Held groups still answer; a configured group is always served.
    let again = s.fleetlock_acquire("g1", "a", 1, 2, 11).await.unwrap();
    assert_eq!(again.outcome, AcquireOutcome::AlreadyHeld);
    s.fleetlock_set_slots("ops", 1, 12, &act).await.unwrap();
    let ops = s.fleetlock_acquire("ops", "a", 1, 2, 13).await.unwrap();
    assert_eq!(ops.outcome, AcquireOutcome::Granted);
    // A released group makes room again.
    s.fleetlock_release("g2", "a", None, 14).await.unwrap();
    let third = s.fleetlock_acquire("g3", "a", 1, 2, 15).await.unwrap();
    assert_eq!(third.outcome, AcquireOutcome::Granted);
    assert_eq!(s.fleetlock_groups(1).await.unwrap().len(), 3);
}

async fn configured_slots_override_the_default(kit: &mut TestStores) {
    let s = &kit.fleetlock;
    let act = NewActivity::default();
    s.fleetlock_set_slots("g", 2, 5, &act).await.unwrap();
    for id in ["a", "b"] {
        let r = s.fleetlock_acquire("g", id, 1, 100, 10).await.unwrap();
        assert_eq!(r.outcome, AcquireOutcome::Granted, "{id}");
    }
    let c = s.fleetlock_acquire("g", "c", 1, 100, 10).await.unwrap();
    assert_eq!((c.outcome, c.slots), (AcquireOutcome::Full, 2));
    s.fleetlock_set_slots("g", 0, 6, &act).await.unwrap();
    let groups = s.fleetlock_groups(1).await.unwrap();
    assert_eq!((groups[0].slots, groups[0].configured), (0, true));
    assert_eq!(
        groups[0].holders.len(),
        2,
        "holders are kept when slots shrink"
    );
}

both_stores!(
    acquire_is_reentrant_and_bounded_by_slots,
    release_is_idempotent_and_frees_the_slot,
    clients_cannot_bring_more_than_max_groups,
    configured_slots_override_the_default,
);

/// Lock attempts racing on one database (several connections, as replicas have) take exactly
/// the slots there are, and create exactly the groups allowed.
async fn racing_acquires_never_over_grant(kit: &mut TestStores) {
    let race = |attempts: Vec<(String, String)>, max_groups: u32| {
        let tasks: Vec<_> = attempts
            .into_iter()
            .map(|(group, id)| {
                let s = std::sync::Arc::clone(&kit.fleetlock);
                tokio::spawn(async move {
                    s.fleetlock_acquire(&group, &id, 2, max_groups, 10)
                        .await
                        .unwrap()
                        .outcome
                })
            })
            .collect();
        async move {
            let mut granted = 0;
            for t in tasks {
                if t.await.unwrap() == AcquireOutcome::Granted {
                    granted += 1;
                }
            }
            granted
        }
    };
    let one_group = (0..12).map(|i| ("g".to_owned(), format!("m{i}"))).collect();
    assert_eq!(race(one_group, 100).await, 2, "two slots");
    let new_groups = (0..12).map(|i| (format!("n{i}"), "m".to_owned())).collect();
    assert_eq!(race(new_groups, 3).await, 2, "`g` and two new groups");
    assert_eq!(kit.fleetlock.fleetlock_groups(2).await.unwrap().len(), 3);
}

both_stores!(racing_acquires_never_over_grant);

/// The stores set READ COMMITTED on every connection: on a database whose default is
/// REPEATABLE READ (where a count taken after waiting for a lock misses the commit of the
/// transaction that held it) the semaphore stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_semaphore_stays_exact_when_the_database_defaults_to_repeatable_read() {
    use sqlx::Connection as _;
    let Some(mut kit) = TestStores::postgres().await else {
        return;
    };
    kit.exec(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = \
         ''repeatable read''', current_database()); END $$",
    )
    .await;
    kit.reopen().await;
    let Database::Postgres(url) = kit.database().clone() else {
        unreachable!("a PostgreSQL kit");
    };
    let mut plain = sqlx::PgConnection::connect(&url).await.unwrap();
    let default: String = sqlx::query_scalar("SHOW default_transaction_isolation")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    assert_eq!(default, "repeatable read");
    assert_eq!(
        kit.strings("SHOW default_transaction_isolation").await,
        ["read committed"]
    );
    racing_acquires_never_over_grant(&mut kit).await;
}
