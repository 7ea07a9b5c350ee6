//! Retention ([`crate::store::RetentionStore`]) on both databases: what goes and what stays,
//! bounded batches, forgetting, leases; and, on PostgreSQL, one lease shared by two replicas.

use std::sync::Arc;
use std::time::Duration;

use crate::checkins::InstanceKey;
use crate::store::retention::{AgedTable, Cutoffs, LeaseOutcome, PruneCounts, RetentionStore};
use crate::store::testkit::{TestStores, both_stores};

const DAY: i64 = 86_400;
const NOW: i64 = 1_000 * DAY;
const APP: &str = "app";

async fn count(kit: &TestStores, table: &str) -> i64 {
    kit.query_i64(&format!("SELECT COUNT(*) FROM {table}"))
        .await
}

async fn event(kit: &TestStores, machine: &str, at: i64) {
    kit.exec(&format!(
        "INSERT INTO events (machine_id, app_id, event_type, event_result, at) \
         VALUES ('{machine}', '{APP}', 3, 2, {at})"
    ))
    .await;
}

async fn history(kit: &TestStores, machine: &str, at: i64) {
    kit.exec(&format!(
        "INSERT INTO instance_status_history (machine_id, app_id, status, version, at) \
         VALUES ('{machine}', '{APP}', 'idle', '1.0.0', {at})"
    ))
    .await;
}

async fn activity(kit: &TestStores, at: i64) {
    kit.exec(&format!(
        "INSERT INTO activity (at, kind, severity, message) VALUES ({at}, 'k', 'info', 'm')"
    ))
    .await;
}

async fn instance(kit: &TestStores, machine: &str, last_check_at: i64) {
    let at = last_check_at;
    kit.exec(&format!(
        "INSERT INTO instances (machine_id, app_id, last_check_at, status, status_at, \
         created_at) VALUES ('{machine}', '{APP}', {at}, 'idle', {at}, {at})"
    ))
    .await;
}

async fn refusal(kit: &TestStores, machine: &str, version: &str, at: i64) {
    kit.exec(&format!(
        "INSERT INTO refused_versions (machine_id, app_id, version, reason, at) \
         VALUES ('{machine}', '{APP}', '{version}', 'rolled_back', {at})"
    ))
    .await;
}

/// A grant made at `granted_at`; settled then too unless it is open.
async fn grant(kit: &TestStores, group: &str, machine: &str, version: &str, state: &str, at: i64) {
    let open = matches!(state, "in_flight" | "installed");
    let settled = if open {
        "NULL".to_owned()
    } else {
        at.to_string()
    };
    kit.exec(&format!(
        "INSERT INTO rollout_grants (group_id, app_id, machine_id, version, state, \
         granted_at, progress_at, settled_at) \
         VALUES ('{group}', '{APP}', '{machine}', '{version}', '{state}', {at}, {at}, {settled})"
    ))
    .await;
}

/// App `app`; packages 1.0.0, 1.5.0, 2.0.0, 3.0.0; group `g` on a channel at 2.0.0 with
/// floor 1.5.0 and a 30-day rate window; group `h` on a channel at 3.0.0 gated on `g`;
/// group `k` whose policy cannot be read.
async fn catalogue(kit: &TestStores) {
    kit.exec("INSERT INTO apps (id, name, created_at) VALUES ('app', 'OS', 0)")
        .await;
    for v in ["1.0.0", "1.5.0", "2.0.0", "3.0.0"] {
        kit.exec(&format!(
            "INSERT INTO packages (id, app_id, version, arch, kind, filename, size, \
             sha1_base64, sha256_hex, created_at) VALUES ('p{v}', 'app', '{v}', 'amd64', 'full', \
             'p', 1, 'x', 'y', 0)"
        ))
        .await;
    }
    for (c, v) in [("c", "2.0.0"), ("c2", "3.0.0")] {
        kit.exec(&format!(
            "INSERT INTO channels (id, app_id, name, created_at) VALUES ('{c}', 'app', '{c}', 0); \
             INSERT INTO channel_packages (channel_id, arch, package_id) \
             VALUES ('{c}', 'amd64', 'p{v}')"
        ))
        .await;
    }
    let rate = 30 * DAY;
    for (id, channel, policy) in [
        (
            "g",
            "'c'",
            format!(r#"{{"floors":["1.5.0"],"rate_limit":{{"count":10,"period_secs":{rate}}}}}"#),
        ),
        (
            "h",
            "'c2'",
            r#"{"gate":{"group":"g","min_complete":1}}"#.to_owned(),
        ),
        ("k", "NULL", r#"{"ramp":5}"#.to_owned()),
    ] {
        kit.exec(&format!(
            "INSERT INTO groups_ (id, app_id, name, track, channel_id, policy, created_at) \
             VALUES ('{id}', 'app', '{id}', '{id}', {channel}, '{policy}', 0)"
        ))
        .await;
    }
}

fn cutoffs(days: i64) -> Cutoffs {
    Cutoffs {
        now: NOW,
        events: Some(NOW - days * DAY),
        history: Some(NOW - days * DAY),
        activity: Some(NOW - days * DAY),
        grants: Some(NOW - days * DAY),
        forget: None,
    }
}

/// Every aged pass as the pruner runs them: each table once, grants once per group.
async fn passes(s: &dyn RetentionStore) -> Vec<(AgedTable, Option<String>)> {
    let mut out = Vec::new();
    for table in AgedTable::ALL {
        if table == AgedTable::Grants {
            for g in s.grant_groups().await.unwrap() {
                out.push((table, Some(g)));
            }
        } else {
            out.push((table, None));
        }
    }
    out
}

/// Runs every aged pass to the end, batches of `limit`; returns the rows per table and the
/// batch sizes.
async fn prune_all(s: &dyn RetentionStore, c: &Cutoffs, limit: u32) -> (PruneCounts, Vec<u64>) {
    let mut counts = PruneCounts::default();
    let mut batches = Vec::new();
    for (table, g) in passes(s).await {
        let mut cursor = None;
        loop {
            let b = s
                .prune_aged(table, g.as_deref(), c, cursor, limit, false)
                .await
                .unwrap();
            batches.push(b.rows);
            counts.add(table, b.rows);
            cursor = b.next;
            if cursor.is_none() {
                break;
            }
        }
    }
    (counts, batches)
}

/// Every aged pass as a dry run; returns the rows per table it would delete.
async fn dry_all(s: &dyn RetentionStore, c: &Cutoffs) -> PruneCounts {
    let mut counts = PruneCounts::default();
    for (table, g) in passes(s).await {
        let n = s
            .prune_aged(table, g.as_deref(), c, None, 1, true)
            .await
            .unwrap()
            .rows;
        counts.add(table, n);
    }
    counts
}

async fn old_rows_go_recent_ones_stay_and_each_instance_keeps_its_newest_status(
    kit: &mut TestStores,
) {
    let s = &*kit.retention;
    for at in [NOW - 200 * DAY, NOW - 91 * DAY, NOW - 89 * DAY, NOW] {
        event(kit, "m", at).await;
        activity(kit, at).await;
    }
    // `old` changed status twice, long ago: its newest entry stays however old it is.
    history(kit, "old", NOW - 300 * DAY).await;
    history(kit, "old", NOW - 200 * DAY).await;
    history(kit, "new", NOW - 100 * DAY).await;
    history(kit, "new", NOW - DAY).await;
    let c = cutoffs(90);
    let dry = dry_all(s, &c).await;
    assert_eq!(count(kit, "events").await, 4, "a dry run deletes nothing");
    let (real, _) = prune_all(s, &c, 1000).await;
    assert_eq!(real, dry, "a dry run counts what a run deletes");
    assert_eq!(
        (real.events, real.activity, real.instance_status_history),
        (2, 2, 2)
    );
    let left: Vec<(i64,)> = kit.rows("SELECT at FROM events ORDER BY at").await;
    assert_eq!(left, [(NOW - 89 * DAY,), (NOW,)]);
    let hist: Vec<(String, i64)> = kit
        .rows("SELECT machine_id, at FROM instance_status_history ORDER BY id")
        .await;
    assert_eq!(
        hist,
        [
            ("old".to_owned(), NOW - 200 * DAY),
            ("new".to_owned(), NOW - DAY)
        ]
    );
    // Nothing configured, nothing pruned.
    let keep = Cutoffs {
        now: NOW,
        ..Cutoffs::default()
    };
    let (n, _) = prune_all(s, &keep, 1000).await;
    assert_eq!(n, PruneCounts::default());
}

async fn a_prune_bigger_than_a_batch_takes_several_bounded_batches(kit: &mut TestStores) {
    let s = &*kit.retention;
    let values: Vec<String> = (0..250)
        .map(|i| format!("('m', 'app', 3, 2, {i})"))
        .collect();
    kit.exec(&format!(
        "INSERT INTO events (machine_id, app_id, event_type, event_result, at) VALUES {}",
        values.join(", ")
    ))
    .await;
    let c = cutoffs(1);
    let (mut sizes, mut cursor) = (Vec::new(), None);
    loop {
        let b = s
            .prune_aged(AgedTable::Events, None, &c, cursor, 100, false)
            .await
            .unwrap();
        assert!(b.locked > Duration::ZERO);
        sizes.push(b.rows);
        cursor = b.next;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(count(kit, "events").await, 0);
}

async fn grants_a_rollout_counts_are_kept_whatever_their_age(kit: &mut TestStores) {
    let s = &*kit.retention;
    catalogue(kit).await;
    let old = NOW - 200 * DAY;
    for (group, machine, version, state, at) in [
        ("g", "old-version", "1.0.0", "complete", old), // goes
        ("g", "target", "2.0.0", "complete", old),      // the group's target
        ("g", "floor", "1.5.0", "failed", old),         // a floor of the group
        ("g", "gated", "3.0.0", "complete", old),       // the target of `h`, gated on `g`
        ("g", "in-flight", "1.0.0", "in_flight", old),  // holds a concurrency slot
        ("g", "installed-known", "1.0.0", "installed", old), // staged, machine known
        ("g", "installed-gone", "1.0.0", "installed", old), // staged, machine forgotten: goes
        ("g", "recent", "1.0.0", "complete", NOW - 10 * DAY), // within retention
        ("g", "rate-window", "1.0.0", "complete", NOW - 20 * DAY), // in the 30-day window
        ("deleted-group", "orphan", "1.0.0", "complete", old), // goes
        ("k", "unreadable", "1.0.0", "complete", old),  // the policy cannot be read
    ] {
        grant(kit, group, machine, version, state, at).await;
    }
    instance(kit, "installed-known", old).await;
    // Retention of 15 days: `rate-window` is old enough but inside the rate window.
    let c = cutoffs(15);
    let dry = dry_all(s, &c).await;
    let (real, _) = prune_all(s, &c, 2).await;
    assert_eq!(real, dry);
    assert_eq!(real.rollout_grants, 3);
    let left = kit
        .strings("SELECT machine_id FROM rollout_grants ORDER BY machine_id")
        .await;
    assert_eq!(
        left,
        [
            "floor",
            "gated",
            "in-flight",
            "installed-known",
            "rate-window",
            "recent",
            "target",
            "unreadable"
        ]
    );
    // The channel moves on to 3.0.0: the grants of 2.0.0 are no longer counted.
    kit.exec("UPDATE channel_packages SET package_id = 'p3.0.0' WHERE channel_id = 'c'")
        .await;
    let (real, _) = prune_all(s, &c, 100).await;
    assert_eq!(real.rollout_grants, 1);
    assert!(
        !kit.strings("SELECT machine_id FROM rollout_grants")
            .await
            .contains(&"target".to_owned())
    );
}

async fn forgetting_takes_the_instance_and_its_rows_and_a_dry_run_counts_them_once(
    kit: &mut TestStores,
) {
    let s = &*kit.retention;
    catalogue(kit).await;
    let forget = NOW - 7 * DAY;
    // `gone`: last seen 30 days ago, with old and less old rows of every kind.
    instance(kit, "gone", NOW - 30 * DAY).await;
    for at in [NOW - 200 * DAY, NOW - 100 * DAY, NOW - 30 * DAY] {
        history(kit, "gone", at).await;
        event(kit, "gone", at).await;
    }
    refusal(kit, "gone", "1.5.0", NOW - 100 * DAY).await;
    grant(kit, "g", "gone", "1.0.0", "complete", NOW - 200 * DAY).await; // aged
    grant(kit, "g", "gone", "1.2.0", "failed", NOW - 40 * DAY).await; // forgotten
    grant(kit, "g", "gone", "2.0.0", "failed", NOW - 30 * DAY).await; // counted: kept
    // `busy`: as old, but a grant in flight: never forgotten.
    instance(kit, "busy", NOW - 30 * DAY).await;
    grant(kit, "g", "busy", "2.0.0", "in_flight", NOW - 30 * DAY).await;
    // `fresh`: seen yesterday.
    instance(kit, "fresh", NOW - DAY).await;
    history(kit, "fresh", NOW - DAY).await;

    let mut c = cutoffs(90);
    c.forget = Some(forget);
    let stale = s.stale_instances(forget, None, 10).await.unwrap();
    let keys: Vec<InstanceKey> = stale.iter().map(|s| s.key.clone()).collect();
    assert_eq!(keys, [("gone".to_owned(), APP.to_owned())]);
    // Paging: nothing after the last one.
    assert!(
        s.stale_instances(forget, stale.last(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let mut dry = dry_all(s, &c).await;
    let f = s
        .forget_instances(&keys, &c, u64::MAX, Duration::MAX, true)
        .await
        .unwrap();
    dry.merge(&f.counts);
    assert_eq!(
        count(kit, "instances").await,
        3,
        "a dry run deletes nothing"
    );

    let (mut real, _) = prune_all(s, &c, 1000).await;
    let f = s
        .forget_instances(&keys, &c, 1000, Duration::MAX, false)
        .await
        .unwrap();
    assert_eq!(f.counts.instances, 1);
    real.merge(&f.counts);
    assert_eq!(real, dry, "the same rows, each counted once");
    assert_eq!(
        (
            real.instances,
            real.instance_status_history,
            real.events,
            real.refused_versions,
            real.rollout_grants
        ),
        (1, 3, 3, 1, 2)
    );
    assert_eq!(
        kit.strings("SELECT machine_id FROM instances ORDER BY machine_id")
            .await,
        ["busy", "fresh"]
    );
    assert_eq!(count(kit, "refused_versions").await, 0);
    let grants = kit
        .strings("SELECT machine_id || ' ' || version FROM rollout_grants ORDER BY machine_id")
        .await;
    assert_eq!(
        grants,
        ["busy 2.0.0", "gone 2.0.0"],
        "the counted grant stays"
    );
    // An instance that checked in meanwhile is not forgotten.
    instance(kit, "back", NOW - 30 * DAY).await;
    let back = vec![("back".to_owned(), APP.to_owned())];
    kit.exec(&format!(
        "UPDATE instances SET last_check_at = {NOW} WHERE machine_id = 'back'"
    ))
    .await;
    let f = s
        .forget_instances(&back, &c, 1000, Duration::MAX, false)
        .await
        .unwrap();
    assert_eq!(f.counts, PruneCounts::default());
    assert_eq!(
        kit.strings("SELECT machine_id FROM instances WHERE machine_id = 'back'")
            .await,
        ["back"]
    );
}

async fn forgetting_stops_at_the_row_limit_and_resumes(kit: &mut TestStores) {
    let s = &*kit.retention;
    let mut keys = Vec::new();
    for i in 0..6 {
        let m = format!("m{i}");
        instance(kit, &m, NOW - 30 * DAY).await;
        for _ in 0..3 {
            event(kit, &m, NOW - 30 * DAY).await;
        }
        keys.push((m, APP.to_owned()));
    }
    let c = Cutoffs {
        now: NOW,
        forget: Some(NOW - 7 * DAY),
        ..Cutoffs::default()
    };
    // A batch out of lock time ends after its first instance.
    let f = s
        .forget_instances(&keys[..2], &c, 1000, Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!((f.handled, f.counts.instances), (1, 1));
    keys.remove(0);
    // 4 rows per instance, at most 6 per batch: the second instance ends the batch.
    let f = s
        .forget_instances(&keys, &c, 6, Duration::MAX, false)
        .await
        .unwrap();
    assert_eq!((f.handled, f.counts.total()), (2, 8));
    let f = s
        .forget_instances(&keys[2..], &c, 6, Duration::MAX, false)
        .await
        .unwrap();
    assert_eq!((f.handled, f.counts.instances), (2, 2));
    let f = s
        .forget_instances(&keys[4..], &c, 6, Duration::MAX, false)
        .await
        .unwrap();
    assert_eq!((f.handled, f.counts.instances), (1, 1));
    assert_eq!(
        count(kit, "instances").await + count(kit, "events").await,
        0
    );
}

fn held(holder: &str, expires_at: i64) -> LeaseOutcome {
    LeaseOutcome::Held {
        holder: holder.into(),
        expires_at,
    }
}

async fn a_lease_is_taken_when_free_expired_or_ours_and_given_back_only_by_its_holder(
    kit: &mut TestStores,
) {
    let s = &*kit.retention;
    let take = |holder: &'static str, now: i64| s.take_lease("job", holder, now, now + 10);
    assert_eq!(take("a", 100).await.unwrap(), LeaseOutcome::Taken);
    assert_eq!(
        take("b", 105).await.unwrap(),
        held("a", 110),
        "held until 110"
    );
    assert_eq!(
        take("a", 105).await.unwrap(),
        LeaseOutcome::Taken,
        "renewed"
    );
    assert_eq!(
        take("b", 115).await.unwrap(),
        held("a", 115),
        "not expired at its end"
    );
    assert_eq!(
        take("b", 116).await.unwrap(),
        LeaseOutcome::Taken,
        "expired: taken over"
    );
    s.release_lease("job", "a").await.unwrap();
    assert_eq!(
        take("a", 117).await.unwrap(),
        held("b", 126),
        "only its holder gives it back"
    );
    s.release_lease("job", "b").await.unwrap();
    assert_eq!(take("a", 117).await.unwrap(), LeaseOutcome::Taken, "free");
    assert_eq!(
        s.take_lease("other", "b", 117, 127).await.unwrap(),
        LeaseOutcome::Taken,
        "leases are by name"
    );
}

both_stores!(
    old_rows_go_recent_ones_stay_and_each_instance_keeps_its_newest_status,
    a_prune_bigger_than_a_batch_takes_several_bounded_batches,
    grants_a_rollout_counts_are_kept_whatever_their_age,
    forgetting_takes_the_instance_and_its_rows_and_a_dry_run_counts_them_once,
    forgetting_stops_at_the_row_limit_and_resumes,
    a_lease_is_taken_when_free_expired_or_ours_and_given_back_only_by_its_holder,
);

/// Two replicas on one PostgreSQL database: a lease is one session advisory lock, held by one
/// replica at a time whatever the times they give, until it is given back, its stores close
/// or its session dies.
#[tokio::test]
async fn two_postgres_replicas_never_hold_one_lease_at_once() {
    let Some(mut kit) = TestStores::postgres().await else {
        return;
    };
    let a = Arc::clone(&kit.retention);
    let mut replica_b = kit.replica().await;
    let b = Arc::clone(&replica_b.retention);

    assert_eq!(
        a.take_lease("job", "a", 100, 110).await.unwrap(),
        LeaseOutcome::Taken
    );
    assert_eq!(
        b.take_lease("job", "b", 100, 110).await.unwrap(),
        held("a", 110)
    );
    assert_eq!(
        b.take_lease("job", "b", 1000, 1010).await.unwrap(),
        held("a", 110),
        "a live replica keeps its lease past its end"
    );
    assert_eq!(
        a.take_lease("job", "a", 105, 115).await.unwrap(),
        LeaseOutcome::Taken
    );
    assert_eq!(
        b.take_lease("job", "b", 106, 116).await.unwrap(),
        held("a", 115),
        "renewed"
    );
    assert_eq!(
        b.take_lease("other", "b", 106, 116).await.unwrap(),
        LeaseOutcome::Taken
    );
    b.release_lease("other", "b").await.unwrap();

    // Given back: the other replica gets it, and the first one is told who has it.
    b.release_lease("job", "a").await.unwrap();
    assert_eq!(
        b.take_lease("job", "b", 107, 117).await.unwrap(),
        held("a", 115),
        "not b's to give"
    );
    a.release_lease("job", "a").await.unwrap();
    assert_eq!(
        b.take_lease("job", "b", 120, 130).await.unwrap(),
        LeaseOutcome::Taken
    );
    assert_eq!(
        a.take_lease("job", "a", 120, 130).await.unwrap(),
        held("b", 130)
    );
    a.release_lease("job", "b").await.unwrap();
    assert_eq!(
        a.take_lease("job", "a", 121, 131).await.unwrap(),
        held("b", 130)
    );

    // Its stores close: the lease ends with its sessions.
    replica_b.close().await;
    assert_eq!(
        a.take_lease("job", "a", 122, 132).await.unwrap(),
        LeaseOutcome::Taken
    );
    a.release_lease("job", "a").await.unwrap();

    // A replica whose session dies (its process was killed) loses the lease, and learns it when
    // it renews.
    let mut replica_c = kit.replica().await;
    let c = Arc::clone(&replica_c.retention);
    assert_eq!(
        c.take_lease("job", "c", 200, 210).await.unwrap(),
        LeaseOutcome::Taken
    );
    assert_eq!(
        a.take_lease("job", "a", 200, 210).await.unwrap(),
        held("c", 210)
    );
    kit.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'platte-lease 210 c'",
    )
    .await;
    let mut tries = 0;
    while a.take_lease("job", "a", 201, 211).await.unwrap() != LeaseOutcome::Taken {
        tries += 1;
        assert!(tries < 100, "the dead session's lock was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        c.take_lease("job", "c", 202, 212).await.unwrap(),
        held("a", 211)
    );
    replica_c.close().await;
    kit.close().await;
}
