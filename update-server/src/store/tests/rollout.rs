//! Rollout grants ([`crate::store::RolloutStore`] and the grant rules over
//! [`crate::rollout::grants::GrantTx`]): one grant per machine and version, the tallies the
//! triggers keep, refusals, timeouts, the rate limit and auto-halt's weighing of new machines;
//! and, on PostgreSQL, limits that stay exact while several replicas grant at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{App, Group, GroupPolicy, NewActivity};
use crate::rollout::prefetch::GrantPrefetch;
use crate::rollout::{HoldReason, RateLimit};
use crate::store::Database;
use crate::store::instances::CheckIn;
use crate::store::rollout::{
    GrantOutcome, GrantRequest, GrantState, GrantStats, HaltedRollout, ProgressReport,
    RefusalReason, RefusedVersion,
};
use crate::store::testkit::{TestStores, both_stores};
use crate::store::tx::{Urgency, WriteLane, transact, transact_in};
use crate::store::{PgStore, RolloutStore, StoreError};

const APP: &str = "app";
const GROUP: &str = "g";
const NETWORK: &str = "192.0.2.0/24";

fn act() -> NewActivity {
    NewActivity {
        kind: "test".into(),
        severity: "info",
        ..Default::default()
    }
}

/// Application `app`.
async fn add_app(kit: &TestStores) {
    let app = App {
        id: APP.into(),
        name: "OS".into(),
        description: String::new(),
        created_at: 0,
        completes_on: Default::default(),
    };
    kit.store.insert_app(&app, &act()).await.unwrap();
}

/// Group `id` of `app` (on track `id`) whose policy is the JSON `policy`.
async fn add_group(kit: &TestStores, id: &str, policy: &str) {
    let group = Group {
        id: id.into(),
        app_id: APP.into(),
        name: id.into(),
        track: id.into(),
        channel_id: None,
        description: String::new(),
        policy: serde_json::from_str(policy).unwrap(),
        created_at: 0,
    };
    kit.store.insert_group(&group, &act()).await.unwrap();
}

/// Application `app` and its group `g` whose policy is `policy`.
async fn setup(kit: &TestStores, policy: &str) {
    add_app(kit).await;
    add_group(kit, GROUP, policy).await;
}

/// A grant request of `version` in `group` for a machine the server first saw at `first_seen`.
fn request(group: &str, machine: &str, version: &str, first_seen: i64, now: i64) -> GrantRequest {
    GrantRequest {
        group_id: group.into(),
        app_id: APP.into(),
        machine_id: machine.into(),
        version: version.into(),
        canary: false,
        first_seen,
        network: NETWORK.into(),
        new_machine_limit: None,
        now,
        expected_policy: None,
    }
}

/// The stored policy of every group, as the server's catalogue has it.
async fn stored_policies(kit: &TestStores) -> HashMap<String, GroupPolicy> {
    let data = kit.store.load_catalogue().await.unwrap();
    data.groups.into_iter().map(|g| (g.id, g.policy)).collect()
}

/// `req`, expecting its group's stored policy (as the check path does, from the catalogue): on
/// PostgreSQL the counts are then prefetched with the group's lock.
async fn expecting_stored_policy(kit: &TestStores, mut req: GrantRequest) -> GrantRequest {
    req.expected_policy = stored_policies(kit).await.remove(&req.group_id);
    req
}

async fn grant(kit: &TestStores, machine: &str, version: &str, now: i64) -> GrantOutcome {
    // Known long before any rollout: established.
    let req = request(GROUP, machine, version, -1_000_000, now);
    let req = expecting_stored_policy(kit, req).await;
    kit.rollouts.try_grant(&req).await.unwrap()
}

/// A grant of 2.0.0 in `group` of a machine the server first saw at `first_seen`.
async fn grant_seen(
    kit: &TestStores,
    group: &str,
    machine: &str,
    first_seen: i64,
    now: i64,
) -> GrantOutcome {
    let req = request(group, machine, "2.0.0", first_seen, now);
    let req = expecting_stored_policy(kit, req).await;
    kit.rollouts.try_grant(&req).await.unwrap()
}

async fn report(
    kit: &TestStores,
    machine: &str,
    state: GrantState,
    running: &str,
    refuse: Option<(&str, RefusalReason)>,
    now: i64,
) -> Vec<HaltedRollout> {
    kit.rollouts
        .record_progress(&ProgressReport {
            machine_id: machine.into(),
            app_id: APP.into(),
            state: Some(state),
            running_version: running.into(),
            refuse: refuse.map(|(version, reason)| RefusedVersion {
                machine_id: machine.into(),
                app_id: APP.into(),
                version: version.into(),
                reason,
                error_code: None,
                at: now,
            }),
            now,
        })
        .await
        .unwrap()
}

async fn stats_of(kit: &TestStores, group: &str, version: &str) -> GrantStats {
    kit.rollouts
        .grant_stats(group, version, 1_000_000)
        .await
        .unwrap()
}

async fn stats(kit: &TestStores, version: &str) -> GrantStats {
    stats_of(kit, GROUP, version).await
}

/// Grant counts: (state, new to the rollout, machines), sorted.
type Counts = Vec<(String, bool, u64)>;

fn sorted_counts(rows: Vec<(String, i64, i64)>) -> Counts {
    let mut out: Counts = rows
        .into_iter()
        .map(|(st, new, n)| (st, new != 0, u64::try_from(n).unwrap()))
        .collect();
    out.sort();
    out
}

/// The grant counts as `rollout_grants` holds them (what the tallies must equal).
async fn counted(kit: &TestStores, version: &str, since: i64) -> Counts {
    // `$n` parameters: both databases number them so.
    const SELECT: &str = "SELECT state, new_machine, COUNT(*) FROM rollout_grants WHERE \
                          group_id = $1 AND version = $2 AND granted_at > $3 \
                          GROUP BY state, new_machine";
    let rows: Vec<(String, i64, i64)> = if let Some(s) = kit.sqlite() {
        sqlx::query_as(SELECT)
            .bind(GROUP)
            .bind(version)
            .bind(since)
            .fetch_all(s.pool())
            .await
            .unwrap()
    } else {
        sqlx::query_as(SELECT)
            .bind(GROUP)
            .bind(version)
            .bind(since)
            .fetch_all(kit.postgres().unwrap().pool())
            .await
            .unwrap()
    };
    sorted_counts(rows)
}

/// The grant counts the store reads (from the tallies) inside a write transaction.
async fn tallied(kit: &TestStores, version: &str, since: i64) -> Counts {
    let version = version.to_owned();
    let counts = transact(kit.writer.as_ref(), Urgency::Answer, move |tx| {
        let version = version.clone();
        Box::pin(async move { tx.grant_counts(GROUP, &version, since).await })
    })
    .await
    .unwrap();
    let mut out: Counts = counts
        .into_iter()
        .map(|c| (c.state.as_str().to_owned(), c.new_machine, c.machines))
        .collect();
    out.sort();
    out
}

fn is_held(o: &GrantOutcome, why: HoldReason) -> bool {
    matches!(o, GrantOutcome::Held { reason, .. } if *reason == why)
}

async fn the_tallies_equal_a_count_of_the_grants_through_every_change(kit: &mut TestStores) {
    setup(kit, "{}").await;
    for m in 0..12 {
        let v = if m % 4 == 0 { "3.0.0" } else { "2.0.0" };
        grant(kit, &format!("m{m}"), v, 10 + m as i64).await;
    }
    for m in 0..3 {
        let new_machine = request(GROUP, &format!("n{m}"), "2.0.0", 50, 60);
        kit.rollouts.try_grant(&new_machine).await.unwrap();
    }
    for m in 1..4 {
        report(
            kit,
            &format!("m{m}"),
            GrantState::Installed,
            "1.0.0",
            None,
            30,
        )
        .await;
    }
    report(kit, "m1", GrantState::Complete, "2.0.0", None, 31).await;
    report(kit, "m2", GrantState::Failed, "1.0.0", None, 32).await;
    report(kit, "n1", GrantState::Failed, "1.0.0", None, 61).await;
    // A failed machine granted again reopens its row (state and grant time move).
    grant(kit, "m2", "2.0.0", 70).await;
    // Offered a newer version, the older grant is superseded.
    grant(kit, "m5", "3.0.0", 71).await;
    // Retention deletes settled rows behind the rules' back.
    kit.exec("DELETE FROM rollout_grants WHERE machine_id = 'm1'")
        .await;
    for version in ["2.0.0", "3.0.0"] {
        for since in [i64::MIN, 0, 15, 31, 60, 70, 100] {
            assert_eq!(
                tallied(kit, version, since).await,
                counted(kit, version, since).await,
                "{version} since {since}"
            );
        }
    }
    assert!(!counted(kit, "2.0.0", i64::MIN).await.is_empty());
}

async fn a_machine_failing_a_version_again_and_again_is_one_attempt_and_one_failure(
    kit: &mut TestStores,
) {
    setup(
        kit,
        r#"{"auto_halt": {"max_failure_rate": 0.5, "min_attempts": 3}}"#,
    )
    .await;
    for t in 0..5 {
        assert_eq!(
            grant(kit, "m", "2.0.0", t * 10).await,
            GrantOutcome::Granted
        );
        let halts = report(kit, "m", GrantState::Failed, "1.0.0", None, t * 10 + 1).await;
        assert!(halts.is_empty(), "one machine never reaches min_attempts 3");
    }
    let st = stats(kit, "2.0.0").await;
    assert_eq!((st.attempts, st.failed, st.in_flight), (1, 1, 0), "{st:?}");
    // Granted again, it holds one slot; then it succeeds: complete, no longer failed.
    assert_eq!(grant(kit, "m", "2.0.0", 100).await, GrantOutcome::Granted);
    let st = stats(kit, "2.0.0").await;
    assert_eq!((st.attempts, st.failed, st.in_flight), (1, 0, 1), "{st:?}");
    report(kit, "m", GrantState::Installed, "1.0.0", None, 101).await;
    report(kit, "m", GrantState::Complete, "2.0.0", None, 102).await;
    let st = stats(kit, "2.0.0").await;
    assert_eq!((st.attempts, st.failed, st.complete), (1, 0, 1), "{st:?}");
}

async fn a_rollback_fails_a_completed_grant_and_can_halt(kit: &mut TestStores) {
    setup(
        kit,
        r#"{"auto_halt": {"max_failure_rate": 0.4, "min_attempts": 2}}"#,
    )
    .await;
    for m in ["a", "b"] {
        assert_eq!(grant(kit, m, "2.0.0", 1).await, GrantOutcome::Granted);
        report(kit, m, GrantState::Installed, "1.0.0", None, 2).await;
        report(kit, m, GrantState::Complete, "2.0.0", None, 3).await;
    }
    assert_eq!(stats(kit, "2.0.0").await.complete, 2);
    let rb = Some(("2.0.0", RefusalReason::RolledBack));
    let halts = report(kit, "a", GrantState::Failed, "1.0.0", rb, 4).await;
    let st = stats(kit, "2.0.0").await;
    assert_eq!((st.complete, st.failed, st.attempts), (1, 1, 2), "{st:?}");
    assert_eq!(halts.len(), 1, "1 of 2 failed (50 % > 40 %)");
    assert_eq!(
        (halts[0].group_id.as_str(), halts[0].version.as_str()),
        (GROUP, "2.0.0")
    );
    assert!(
        halts[0].reason.starts_with("1 of 2 machines"),
        "{}",
        halts[0].reason
    );
    // A late 3/2 of the refused version does not turn the failure back into a completion.
    report(kit, "a", GrantState::Complete, "2.0.0", None, 5).await;
    assert_eq!(stats(kit, "2.0.0").await.failed, 1);
}

async fn machines_new_to_the_rollout_weigh_new_machine_weight_for_auto_halt(kit: &mut TestStores) {
    add_app(kit).await;
    // Counted as established (weight 1), the fourth invented failure halts: 4 of 5. Each weight
    // has a group of its own, and machines of their own.
    for (group, weight, halts_at) in [("g-default", None, None), ("g-one", Some(1.0), Some(3))] {
        let policy = serde_json::json!({"auto_halt": {"max_failure_rate": 0.2, "min_attempts": 5,
            "new_machine_weight": weight}});
        add_group(kit, group, &policy.to_string()).await;
        // Known before the rollout; its grant at 100 starts the rollout.
        assert_eq!(
            grant_seen(kit, group, &format!("{group}-est"), 0, 100).await,
            GrantOutcome::Granted
        );
        let mut halted = None;
        for i in 0..5 {
            let m = format!("{group}-new-{i}");
            // First seen at 100 (the rollout's start): new, and stays new when reopened.
            assert_eq!(
                grant_seen(kit, group, &m, 100, 101).await,
                GrantOutcome::Granted
            );
            if !report(kit, &m, GrantState::Failed, "1.0.0", None, 102)
                .await
                .is_empty()
            {
                halted = Some(i);
                break;
            }
        }
        assert_eq!(halted, halts_at, "weight {weight:?}");
        if weight.is_some() {
            continue;
        }
        // 1 + 5 × 0.1 attempts, 5 × 0.1 failures: below min_attempts 5.
        let st = stats_of(kit, group, "2.0.0").await;
        assert_eq!((st.new_attempts, st.new_failed), (5, 5), "{st:?}");
        assert_eq!(st.weighted(0.1), (1.5, 0.5));
        // Re-granted later (its first contact now long past), it is still new here.
        assert_eq!(
            grant_seen(kit, group, &format!("{group}-new-0"), 100, 5000).await,
            GrantOutcome::Granted
        );
        assert_eq!(stats_of(kit, group, "2.0.0").await.new_attempts, 5);
    }
}

async fn a_timed_out_grant_completes_when_the_machine_gets_there(kit: &mut TestStores) {
    setup(kit, r#"{"update_timeout_secs": 60}"#).await;
    assert_eq!(grant(kit, "slow", "2.0.0", 0).await, GrantOutcome::Granted);
    let st = kit.rollouts.grant_stats(GROUP, "2.0.0", 100).await.unwrap();
    assert_eq!(st.timed_out, 1, "{st:?}");
    report(kit, "slow", GrantState::Installed, "1.0.0", None, 110).await;
    report(kit, "slow", GrantState::Complete, "2.0.0", None, 120).await;
    let st = stats(kit, "2.0.0").await;
    assert_eq!(
        (st.timed_out, st.complete, st.attempts),
        (0, 1, 1),
        "{st:?}"
    );
}

async fn a_regrant_counts_once_against_the_rate_limit(kit: &mut TestStores) {
    setup(kit, r#"{"rate_limit": {"count": 2, "period_secs": 3600}}"#).await;
    assert_eq!(grant(kit, "a", "2.0.0", 0).await, GrantOutcome::Granted);
    assert_eq!(grant(kit, "b", "2.0.0", 100).await, GrantOutcome::Granted);
    report(kit, "a", GrantState::Failed, "1.0.0", None, 150).await;
    // `a` is already one of the two machines of the window: its re-grant adds none...
    assert_eq!(grant(kit, "a", "2.0.0", 200).await, GrantOutcome::Granted);
    let st = stats(kit, "2.0.0").await;
    assert_eq!((st.attempts, st.in_flight), (2, 2), "{st:?}");
    // ...a third machine is still held...
    let is_rate = |o: &GrantOutcome| is_held(o, HoldReason::Rate);
    assert!(is_rate(&grant(kit, "c", "2.0.0", 300).await));
    // ...and the re-grant counts from its own time: at 3650 `a` (re-granted at 200) and `b`
    // (granted at 100) are both in the last hour; at 3710 only `a` is.
    assert!(is_rate(&grant(kit, "c", "2.0.0", 3650).await));
    assert_eq!(grant(kit, "c", "2.0.0", 3710).await, GrantOutcome::Granted);
}

async fn a_refusal_holds_the_version_for_that_machine_only(kit: &mut TestStores) {
    setup(kit, "{}").await;
    assert_eq!(grant(kit, "x", "2.0.0", 0).await, GrantOutcome::Granted);
    let deny = Some(("2.0.0", RefusalReason::DenyListed));
    report(kit, "x", GrantState::Failed, "1.0.0", deny, 1).await;
    let held = grant(kit, "x", "2.0.0", 2).await;
    assert!(is_held(&held, HoldReason::DenyListed), "{held:?}");
    assert_eq!(grant(kit, "y", "2.0.0", 3).await, GrantOutcome::Granted);
    assert_eq!(grant(kit, "x", "2.1.0", 4).await, GrantOutcome::Granted);
    let refused = kit.rollouts.refused_versions("x", Some(APP)).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].reason, RefusalReason::DenyListed);
}

async fn refusals_are_listed_and_cleared_and_an_alias_names_one_machine(kit: &mut TestStores) {
    setup(kit, "{}").await;
    let activity = async |kit: &TestStores| {
        kit.store
            .list_activity(None, None, 100)
            .await
            .unwrap()
            .len()
    };
    report(
        kit,
        "x",
        GrantState::Failed,
        "1.0.0",
        Some(("2.1.0", RefusalReason::RolledBack)),
        2,
    )
    .await;
    report(
        kit,
        "x",
        GrantState::Failed,
        "1.0.0",
        Some(("2.0.0", RefusalReason::DenyListed)),
        1,
    )
    .await;
    let refused = kit.rollouts.refused_versions("x", None).await.unwrap();
    let versions: Vec<_> = refused.iter().map(|r| (r.version.as_str(), r.at)).collect();
    assert_eq!(versions, [("2.0.0", 1), ("2.1.0", 2)], "oldest first");
    assert!(
        kit.rollouts
            .refused_versions("x", Some("other"))
            .await
            .unwrap()
            .is_empty()
    );
    // One version cleared: offered again; the other still held.
    let before = activity(kit).await;
    let cleared = kit
        .rollouts
        .clear_refusals("x", Some(APP), Some("2.0.0"), &act(), 3)
        .await
        .unwrap();
    assert_eq!(cleared.len(), 1);
    assert_eq!(
        (cleared[0].version.as_str(), cleared[0].reason),
        ("2.0.0", RefusalReason::DenyListed)
    );
    assert_eq!(activity(kit).await, before + 1);
    assert_eq!(grant(kit, "x", "2.0.0", 4).await, GrantOutcome::Granted);
    assert!(is_held(
        &grant(kit, "x", "2.1.0", 5).await,
        HoldReason::RolledBack
    ));
    // Nothing left to clear of that version: nothing cleared, nothing written.
    let cleared = kit
        .rollouts
        .clear_refusals("x", None, Some("2.0.0"), &act(), 6)
        .await
        .unwrap();
    assert!(cleared.is_empty());
    assert_eq!(activity(kit).await, before + 1);
    let cleared = kit
        .rollouts
        .clear_refusals("x", None, None, &act(), 7)
        .await
        .unwrap();
    assert_eq!(cleared.len(), 1);
    assert!(
        kit.rollouts
            .refused_versions("x", None)
            .await
            .unwrap()
            .is_empty()
    );
    // An alias names one machine: taken, it is a conflict; set again or moved, it follows.
    kit.rollouts
        .set_machine_alias("x", Some("web-1"), &act(), 8)
        .await
        .unwrap();
    kit.rollouts
        .set_machine_alias("x", Some("web-1"), &act(), 9)
        .await
        .unwrap();
    let taken = kit
        .rollouts
        .set_machine_alias("y", Some("web-1"), &act(), 10)
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    kit.rollouts
        .set_machine_alias("x", None, &act(), 11)
        .await
        .unwrap();
    kit.rollouts
        .set_machine_alias("y", Some("web-1"), &act(), 12)
        .await
        .unwrap();
    let aliases = kit.store.load_catalogue().await.unwrap().machine_aliases;
    assert_eq!(
        aliases.into_iter().collect::<Vec<_>>(),
        [("y".to_owned(), "web-1".to_owned())]
    );
}

/// A grant attempt that expects an older policy than the stored one (the catalogue not yet
/// reloaded) is decided by the stored one: in particular the expected, shorter timeout is not
/// applied.
async fn a_stale_expected_policy_decides_as_the_stored_one(kit: &mut TestStores) {
    setup(
        kit,
        r#"{"concurrency_limit": 1, "update_timeout_secs": 1000}"#,
    )
    .await;
    assert_eq!(grant(kit, "m1", "2.0.0", 0).await, GrantOutcome::Granted);
    let stale =
        serde_json::from_str(r#"{"concurrency_limit": 1, "update_timeout_secs": 100}"#).unwrap();
    let req = GrantRequest {
        expected_policy: Some(stale),
        ..request(GROUP, "m2", "2.0.0", -1_000_000, 500)
    };
    let outcome = kit.rollouts.try_grant(&req).await.unwrap();
    assert!(is_held(&outcome, HoldReason::Concurrency), "{outcome:?}");
    let in_flight = "SELECT COUNT(*) FROM rollout_grants WHERE state = 'in_flight'";
    assert_eq!(kit.query_i64(in_flight).await, 1);
    // Past the stored timeout, the expected policy being the stored one.
    assert_eq!(grant(kit, "m2", "2.0.0", 1001).await, GrantOutcome::Granted);
    let timed_out = "SELECT COUNT(*) FROM rollout_grants WHERE state = 'timed_out'";
    assert_eq!(
        (
            kit.query_i64(in_flight).await,
            kit.query_i64(timed_out).await
        ),
        (1, 1)
    );
}

/// The same grant attempts and reports, in two groups with one policy (every limit, a timeout,
/// auto-halt and a gate), decide alike whether the attempts expect the stored policy (their
/// counts prefetched with the lock, on PostgreSQL) or not (each count asked as the rules come
/// to it).
async fn prefetched_and_asked_reads_decide_alike(kit: &mut TestStores) {
    add_app(kit).await;
    add_group(kit, "gate", "{}").await;
    let policy = r#"{"concurrency_limit": 2, "rate_limit": {"count": 5, "period_secs": 40},
        "update_timeout_secs": 30, "gate": {"group": "gate", "min_complete": 1},
        "auto_halt": {"max_failure_rate": 0.5, "min_attempts": 8}}"#;
    for group in ["asked", "prefetched"] {
        add_group(kit, group, policy).await;
    }
    // The gate opens at 20.
    let opener = expecting_stored_policy(kit, request("gate", "c", "2.0.0", -1_000_000, 20)).await;
    assert_eq!(
        kit.rollouts.try_grant(&opener).await.unwrap(),
        GrantOutcome::Granted
    );
    let policies = stored_policies(kit).await;
    let mut decided: HashMap<&str, Vec<String>> = HashMap::new();
    for now in (0..240).step_by(5) {
        if now == 25 {
            report(kit, "c", GrantState::Complete, "2.0.0", None, now).await;
        }
        for group in ["asked", "prefetched"] {
            let machine = format!("{group}-m{}", now % 45);
            let mut req = request(group, &machine, "2.0.0", -1_000_000, now);
            if group == "prefetched" {
                req.expected_policy = policies.get(group).cloned();
            }
            let outcome = kit.rollouts.try_grant(&req).await.unwrap();
            decided
                .entry(group)
                .or_default()
                .push(format!("{now} {outcome:?}"));
            if outcome == GrantOutcome::Granted {
                // A third fail, a third install (and then complete or time out), a third stay in
                // flight (and time out, or are granted again).
                match now % 15 {
                    0 => report(kit, &machine, GrantState::Failed, "1.0.0", None, now + 1).await,
                    5 => report(kit, &machine, GrantState::Installed, "1.0.0", None, now + 1).await,
                    _ => Vec::new(),
                };
            }
        }
    }
    for group in ["asked", "prefetched"] {
        let st = stats_of(kit, group, "2.0.0").await;
        decided.entry(group).or_default().push(format!("{st:?}"));
    }
    assert_eq!(decided["asked"], decided["prefetched"]);
    // Every rule had its say.
    for rule in [
        "Granted",
        "Gate",
        "Concurrency",
        "Rate",
        "Halted",
        "timed_out: 0",
    ] {
        let hit = decided["asked"].iter().any(|d| d.contains(rule));
        assert_eq!(
            hit,
            rule != "timed_out: 0",
            "{rule}: {:?}",
            decided["asked"]
        );
    }
}

/// Timeouts are applied only where the rules come to them: a machine that already holds an
/// in-flight grant is answered without timing out anyone's, whether its attempt's reads were
/// prefetched or asked one by one.
async fn a_machine_already_in_flight_times_out_nobody(kit: &mut TestStores) {
    setup(kit, r#"{"update_timeout_secs": 600}"#).await;
    assert_eq!(grant(kit, "a", "2.0.0", 100).await, GrantOutcome::Granted);
    assert_eq!(grant(kit, "b", "2.0.0", 150).await, GrantOutcome::Granted);
    // At 800 "a" is past its timeout, and so is "b": "b" asks again and is answered as it is.
    assert_eq!(grant(kit, "b", "2.0.0", 800).await, GrantOutcome::Granted);
    let in_flight = "SELECT COUNT(*) FROM rollout_grants WHERE state = 'in_flight'";
    assert_eq!(kit.query_i64(in_flight).await, 2);
    // A new machine's attempt applies the timeout.
    assert_eq!(grant(kit, "c", "2.0.0", 800).await, GrantOutcome::Granted);
    let timed_out = "SELECT COUNT(*) FROM rollout_grants WHERE state = 'timed_out'";
    assert_eq!(
        (
            kit.query_i64(in_flight).await,
            kit.query_i64(timed_out).await
        ),
        (1, 2)
    );
}

/// A check-in of `machine` at `at`, on 1.0.0 in group `g`, first seen then.
fn check_in_of(machine: &str, at: i64) -> CheckIn {
    CheckIn {
        machine_id: machine.into(),
        app_id: APP.into(),
        version: "1.0.0".into(),
        group_id: Some(GROUP.into()),
        track: GROUP.into(),
        alias: String::new(),
        ip: "192.0.2.9".into(),
        oem: String::new(),
        oem_version: String::new(),
        board: String::new(),
        boot_id: String::new(),
        at,
        first_seen: at,
    }
}

/// A check's grant context read with its check-in, in the check's first statement (on
/// PostgreSQL), decides as one read when the attempt comes: the same outcome, the same record of
/// whether the machine is new to the rollout, the same counts; and the row returned is the one
/// stored before the check-in.
async fn a_grant_context_read_with_the_check_in_decides_as_one_read_later(kit: &mut TestStores) {
    setup(
        kit,
        r#"{"concurrency_limit": 5, "update_timeout_secs": 600}"#,
    )
    .await;
    let expected = stored_policies(kit).await.remove(GROUP);
    // The rollout starts at 100 with "a"; "old-*" were first seen long before it.
    assert_eq!(grant(kit, "a", "2.0.0", 100).await, GrantOutcome::Granted);
    let old = vec![check_in_of("old-together", 5), check_in_of("old-apart", 5)];
    transact(kit.writer.as_ref(), Urgency::Answer, move |tx| {
        let old = old.clone();
        Box::pin(async move { tx.check_in(&old).await })
    })
    .await
    .unwrap();
    // Two machines of each kind check in and are granted, one each way, at 200; then one more
    // each way, held by the concurrency limit (5 in flight).
    let mut outcomes = HashMap::new();
    for (machine, together) in [
        ("old-together", true),
        ("old-apart", false),
        ("new-together", true),
        ("new-apart", false),
        ("last-together", true),
        ("last-apart", false),
    ] {
        let row = check_in_of(machine, 200);
        let req = GrantRequest {
            expected_policy: expected.clone(),
            ..request(GROUP, machine, "2.0.0", 200, 200)
        };
        let done = transact(kit.writer.as_ref(), Urgency::Answer, move |tx| {
            let (row, req) = (row.clone(), req.clone());
            Box::pin(async move {
                let plan = GrantPrefetch::plan(&req, req.expected_policy.as_ref());
                let (before, read) = if together {
                    tx.check_in_and_prefetch(&row, Some(&plan)).await?
                } else {
                    let before = tx.instance(&row.machine_id, APP).await?;
                    tx.check_in(std::slice::from_ref(&row)).await?;
                    (before, None)
                };
                // The attempt is given the machine's first contact, as the check path does.
                let req = GrantRequest {
                    first_seen: before.as_ref().map_or(200, |b| b.created_at),
                    ..req.clone()
                };
                let outcome =
                    crate::rollout::grants::try_grant_with(tx, &req, read.map(|c| (plan, c)))
                        .await?;
                Ok((before.map(|b| b.created_at), outcome))
            })
        })
        .await
        .unwrap();
        outcomes.insert(machine, done);
    }
    assert_eq!(outcomes["old-together"], (Some(5), GrantOutcome::Granted));
    assert_eq!(outcomes["old-apart"], (Some(5), GrantOutcome::Granted));
    assert_eq!(outcomes["new-together"], (None, GrantOutcome::Granted));
    assert_eq!(outcomes["new-apart"], (None, GrantOutcome::Granted));
    for last in ["last-together", "last-apart"] {
        assert_eq!(outcomes[last].0, None);
        assert!(
            is_held(&outcomes[last].1, HoldReason::Concurrency),
            "{last}"
        );
    }
    let new_machine: Vec<(String, i64)> = kit
        .rows(
            "SELECT machine_id, new_machine FROM rollout_grants \
             WHERE machine_id LIKE 'old-%' OR machine_id LIKE 'new-%' ORDER BY machine_id",
        )
        .await;
    let new_machine: Vec<(&str, i64)> = new_machine.iter().map(|(m, n)| (m.as_str(), *n)).collect();
    assert_eq!(
        new_machine,
        [
            ("new-apart", 1),
            ("new-together", 1),
            ("old-apart", 0),
            ("old-together", 0)
        ]
    );
}

both_stores!(
    the_tallies_equal_a_count_of_the_grants_through_every_change,
    a_machine_failing_a_version_again_and_again_is_one_attempt_and_one_failure,
    a_rollback_fails_a_completed_grant_and_can_halt,
    machines_new_to_the_rollout_weigh_new_machine_weight_for_auto_halt,
    a_timed_out_grant_completes_when_the_machine_gets_there,
    a_regrant_counts_once_against_the_rate_limit,
    a_refusal_holds_the_version_for_that_machine_only,
    refusals_are_listed_and_cleared_and_an_alias_names_one_machine,
    a_stale_expected_policy_decides_as_the_stored_one,
    prefetched_and_asked_reads_decide_alike,
    a_machine_already_in_flight_times_out_nobody,
    a_grant_context_read_with_the_check_in_decides_as_one_read_later,
);

/// A second replica: another [`PgStore`] (a pool of its own) on the kit's database.
async fn replica(kit: &TestStores) -> PgStore {
    let Database::Postgres(url) = kit.database() else {
        unreachable!("a PostgreSQL kit");
    };
    PgStore::open(url).await.unwrap()
}

/// Runs every request at once, alternating between the kit's store and `other` (two replicas);
/// returns the outcomes in request order. Every other request expects its group's stored policy
/// (its counts prefetched with the lock), the others ask each count as the rules come to it.
async fn grant_at_once(
    kit: &TestStores,
    other: &PgStore,
    requests: Vec<GrantRequest>,
) -> Vec<GrantOutcome> {
    let replicas: [Arc<dyn RolloutStore>; 2] = [kit.rollouts.clone(), Arc::new(other.clone())];
    let policies = stored_policies(kit).await;
    let attempts = requests.into_iter().enumerate().map(|(i, mut req)| {
        if i % 4 < 2 {
            req.expected_policy = policies.get(&req.group_id).cloned();
        }
        let store = Arc::clone(&replicas[i % replicas.len()]);
        tokio::spawn(async move { store.try_grant(&req).await.unwrap() })
    });
    futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_granting_at_once_grant_exactly_the_concurrency_limit() {
    let Some(mut kit) = TestStores::postgres().await else {
        return;
    };
    setup(&kit, r#"{"concurrency_limit": 5}"#).await;
    let other = replica(&kit).await;
    let requests = (0..64)
        .map(|m| request(GROUP, &format!("m{m}"), "2.0.0", -1_000_000, 10))
        .collect();
    let outcomes = grant_at_once(&kit, &other, requests).await;
    let granted = outcomes
        .iter()
        .filter(|o| **o == GrantOutcome::Granted)
        .count();
    assert_eq!(granted, 5, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| *o == GrantOutcome::Granted || is_held(o, HoldReason::Concurrency)),
        "{outcomes:?}"
    );
    assert_eq!(
        kit.query_i64("SELECT COUNT(*) FROM rollout_grants WHERE state = 'in_flight'")
            .await,
        5
    );
    let st = stats(&kit, "2.0.0").await;
    assert_eq!((st.attempts, st.in_flight), (5, 5), "{st:?}");
    other.close().await;
    kit.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_granting_at_once_keep_the_new_machine_limit_of_a_network_across_groups() {
    let Some(mut kit) = TestStores::postgres().await else {
        return;
    };
    add_app(&kit).await;
    for group in ["g-a", "g-b"] {
        add_group(&kit, group, r#"{"concurrency_limit": 100}"#).await;
    }
    let other = replica(&kit).await;
    // Machines first seen now, each the first of its rollout or after its start: all new.
    let requests = (0..32)
        .map(|m| {
            let group = if m % 2 == 0 { "g-a" } else { "g-b" };
            let mut req = request(group, &format!("new-{m}"), "2.0.0", 10, 10);
            req.new_machine_limit = Some(RateLimit {
                count: 3,
                period_secs: 3600,
            });
            req
        })
        .collect();
    let outcomes = grant_at_once(&kit, &other, requests).await;
    let granted = outcomes
        .iter()
        .filter(|o| **o == GrantOutcome::Granted)
        .count();
    assert_eq!(granted, 3, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| *o == GrantOutcome::Granted || is_held(o, HoldReason::NewMachineRate)),
        "{outcomes:?}"
    );
    other.close().await;
    kit.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_granting_and_settling_at_once_keep_the_tallies_exact() {
    let Some(mut kit) = TestStores::postgres().await else {
        return;
    };
    setup(
        &kit,
        r#"{"concurrency_limit": 8, "auto_halt": {"max_failure_rate": 0.9, "min_attempts": 1000}}"#,
    )
    .await;
    let other = replica(&kit).await;
    let replicas: [Arc<dyn RolloutStore>; 2] = [kit.rollouts.clone(), Arc::new(other.clone())];
    let policy = stored_policies(&kit).await.remove(GROUP);
    // Each machine tries until it is granted, then installs, then completes or fails: grants
    // and reports of the group interleave on both replicas. Half of the machines' grant
    // attempts have their counts prefetched with the lock.
    let machines = (0..24).map(|m| {
        let store = Arc::clone(&replicas[m % replicas.len()]);
        let expected = policy.clone().filter(|_| m % 4 < 2);
        tokio::spawn(async move {
            let machine = format!("m{m}");
            let mut now = 10;
            let attempt = |now| GrantRequest {
                expected_policy: expected.clone(),
                ..request(GROUP, &machine, "2.0.0", -1_000_000, now)
            };
            while store.try_grant(&attempt(now)).await.unwrap() != GrantOutcome::Granted {
                now += 1;
                tokio::task::yield_now().await;
            }
            let progress = |state, running: &str| ProgressReport {
                machine_id: machine.clone(),
                app_id: APP.into(),
                state: Some(state),
                running_version: running.into(),
                refuse: None,
                now,
            };
            store
                .record_progress(&progress(GrantState::Installed, "1.0.0"))
                .await
                .unwrap();
            let (last, running) = if m % 3 == 0 {
                (GrantState::Failed, "1.0.0")
            } else {
                (GrantState::Complete, "2.0.0")
            };
            store
                .record_progress(&progress(last, running))
                .await
                .unwrap();
        })
    });
    for done in futures_util::future::join_all(machines).await {
        done.unwrap();
    }
    let st = stats(&kit, "2.0.0").await;
    assert_eq!(
        (st.attempts, st.failed, st.complete, st.in_flight),
        (24, 8, 16, 0),
        "{st:?}"
    );
    assert_eq!(
        tallied(&kit, "2.0.0", i64::MIN).await,
        counted(&kit, "2.0.0", i64::MIN).await
    );
    other.close().await;
    kit.close().await;
}

/// On PostgreSQL the expected policy's counts come back with the lock, equal to the counts the
/// rules would ask for one by one; a policy that is not the stored one gets none.
#[tokio::test]
async fn the_grant_context_holds_the_planned_counts_when_the_policy_is_the_expected_one() {
    let Some(mut kit) = TestStores::postgres().await else {
        return;
    };
    setup(
        &kit,
        r#"{"concurrency_limit": 5, "rate_limit": {"count": 9, "period_secs": 100},
            "update_timeout_secs": 50, "auto_halt": {"max_failure_rate": 0.5, "min_attempts": 9}}"#,
    )
    .await;
    for (m, now) in [("a", 0), ("b", 40), ("c", 45)] {
        assert_eq!(grant(&kit, m, "2.0.0", now).await, GrantOutcome::Granted);
    }
    report(&kit, "c", GrantState::Failed, "1.0.0", None, 46).await;
    let stored = stored_policies(&kit).await.remove(GROUP);
    let stale: GroupPolicy = serde_json::from_str(r#"{"concurrency_limit": 5}"#).unwrap();
    let context = |expected: Option<GroupPolicy>| {
        let req = GrantRequest {
            expected_policy: expected,
            ..request(GROUP, "d", "2.0.0", -1_000_000, 60)
        };
        transact(kit.writer.as_ref(), Urgency::Answer, move |tx| {
            let req = req.clone();
            Box::pin(async move {
                let plan = GrantPrefetch::plan(&req, req.expected_policy.as_ref());
                tx.prefetch_grant(&plan).await
            })
        })
    };
    let ctx = context(stored)
        .await
        .unwrap()
        .expect("PostgreSQL prefetches");
    let counts = ctx.counts.expect("the stored policy was expected");
    // "a" timed out (no progress since 0, cutoff 10); "b" is in flight; "c" failed.
    assert_eq!(counts.in_flight, Some(1));
    assert_eq!(counts.granted_after, Some(3));
    let mut halt: Vec<_> = counts
        .halt_counts
        .unwrap()
        .into_iter()
        .map(|c| (c.state.as_str(), c.machines))
        .collect();
    halt.sort();
    assert_eq!(halt, [("failed", 1), ("in_flight", 1), ("timed_out", 1)]);
    assert_eq!(ctx.rollout_start, Some(0));
    assert!(!ctx.in_flight_here && !ctx.other_open_grants);
    let ctx = context(Some(stale))
        .await
        .unwrap()
        .expect("PostgreSQL prefetches");
    assert_eq!(ctx.counts, None);
    assert!(ctx.group.is_some());
    kit.close().await;
}

/// On PostgreSQL a grant attempt's reads of the machine's own grants stay point lookups however
/// many grants the version has and whatever the statistics say: on a release day the planner,
/// with statistics taken while the table was empty, once read every grant of the version for
/// each attempt (through the group's index), and grants slowed down as they were made.
#[tokio::test]
async fn a_grant_attempt_reads_its_own_machines_grants_not_the_versions() {
    let Some(mut kit) = TestStores::postgres().await else {
        return;
    };
    setup(&kit, r#"{"percentage": 100}"#).await;
    let policy =
        serde_json::to_string(&stored_policies(&kit).await.remove(GROUP).unwrap()).unwrap();
    // Statistics of the empty table, then a release day's grants without a new analysis.
    kit.exec("ANALYZE rollout_grants").await;
    const GRANTED: i64 = 3_000;
    kit.exec(&format!(
        "INSERT INTO rollout_grants (group_id, app_id, machine_id, version, state, granted_at, \
         progress_at) SELECT '{GROUP}', '{APP}', 'm' || i, '2.0.0', 'in_flight', i, i \
         FROM generate_series(1, {GRANTED}) AS i"
    ))
    .await;
    let pool = kit.stores.postgres().expect("PostgreSQL").pool().clone();
    let mut tx = pool.begin().await.unwrap();
    // Past the fifth call, PostgreSQL may keep one generic plan for the function's statements.
    const ATTEMPTS: i64 = 40;
    for i in 0..ATTEMPTS {
        let row: (Option<bool>, Option<i64>) = sqlx::query_as(
            "SELECT ctx_in_flight_here, ctx_recorded_new_machine FROM platte_grant_context( \
             $1, $2, $3, '2.0.0', 100, $4, NULL, FALSE, NULL, NULL, NULL, NULL)",
        )
        .bind(GROUP)
        .bind(format!("new{i}"))
        .bind(APP)
        .bind(&policy)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(row, (Some(false), None), "attempt {i}");
    }
    // Index entries this transaction read from the grants' indexes.
    let read: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(pg_stat_get_xact_tuples_returned(indexrelid)), 0)::BIGINT \
         FROM pg_index WHERE indrelid = 'rollout_grants'::regclass",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        read <= ATTEMPTS * 4,
        "{ATTEMPTS} attempts read {read} grant index entries of the {GRANTED} granted"
    );
    kit.close().await;
}

/// A plain first check of `machine` at `now` in `lane`, as the check path writes it: its
/// check-in with the grant context (the catalogue's policy `expected`), then the attempt; then,
/// if given, it signals `held` and waits for `release` before its transaction commits.
async fn check_in_lane(
    kit: &TestStores,
    lane: Option<u16>,
    machine: &str,
    expected: Option<GroupPolicy>,
    now: i64,
    hold: Option<(Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>)>,
) -> Result<GrantOutcome, StoreError> {
    let row = check_in_of(machine, now);
    let req = GrantRequest {
        expected_policy: expected,
        ..request(GROUP, machine, "2.0.0", now, now)
    };
    let lane = WriteLane {
        group: GROUP.into(),
        shared: lane,
    };
    transact_in(
        kit.writer.as_ref(),
        Urgency::Answer,
        Some(lane),
        move |tx| {
            let (row, req, hold) = (row.clone(), req.clone(), hold.clone());
            Box::pin(async move {
                let plan = GrantPrefetch::plan(&req, req.expected_policy.as_ref());
                let (_, read) = tx.check_in_and_prefetch(&row, Some(&plan)).await?;
                let outcome =
                    crate::rollout::grants::try_grant_with(tx, &req, read.map(|c| (plan, c)))
                        .await?;
                if let Some((held, release)) = hold {
                    held.notify_one();
                    release.notified().await;
                }
                Ok(outcome)
            })
        },
    )
    .await
}

/// On PostgreSQL the plain first checks of a group whose policy counts nothing are decided in
/// its shared lanes at once: one lane's transaction, granted and not yet committed, does not
/// hold up another's grant (an exclusive group lock would), and the tallies, kept in a shard per
/// lane, still equal the grants.
#[tokio::test]
async fn grants_of_a_group_that_counts_nothing_commit_in_shared_lanes_at_once() {
    let Some(kit) = TestStores::postgres().await else {
        return;
    };
    setup(&kit, r#"{"percentage": 100}"#).await;
    let expected = stored_policies(&kit).await.remove(GROUP);
    // The rollout has begun (its first grant records its start, which the next waits for).
    assert_eq!(grant(&kit, "a", "2.0.0", 50).await, GrantOutcome::Granted);
    let (held, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let kit = Arc::new(kit);
    let first = tokio::spawn({
        let (kit, expected) = (Arc::clone(&kit), expected.clone());
        let hold = Some((Arc::clone(&held), Arc::clone(&release)));
        async move { check_in_lane(&kit, Some(0), "first", expected, 100, hold).await }
    });
    held.notified().await;
    // The first lane's transaction holds its grant open; the second lane's grant commits.
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        check_in_lane(&kit, Some(1), "second", expected.clone(), 101, None),
    )
    .await
    .expect("a shared lane's grant waited for another shared lane's transaction");
    assert_eq!(second.unwrap(), GrantOutcome::Granted);
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), GrantOutcome::Granted);
    let shards: Vec<(i64,)> = kit
        .rows("SELECT DISTINCT shard::BIGINT FROM rollout_grant_tallies WHERE machines <> 0")
        .await;
    // "a" in the exclusive shard 0, the two lanes' grants each in its own.
    assert_eq!(shards.len(), 3, "one tally shard per lane: {shards:?}");
    assert_eq!(
        tallied(&kit, "2.0.0", i64::MIN).await,
        counted(&kit, "2.0.0", i64::MIN).await
    );
    let Ok(mut kit) = Arc::try_unwrap(kit) else {
        panic!("the kit is still shared");
    };
    kit.close().await;
}

/// A check routed to a shared lane by a stale catalogue (the group got a concurrency limit a
/// moment ago) is decided under the group's exclusive lock: the limit stays exact.
#[tokio::test]
async fn a_shared_lane_check_under_a_changed_policy_is_decided_exclusively() {
    let Some(kit) = TestStores::postgres().await else {
        return;
    };
    setup(&kit, r#"{"concurrency_limit": 2}"#).await;
    let stale: GroupPolicy = serde_json::from_str(r#"{"percentage": 100}"#).unwrap();
    let kit = Arc::new(kit);
    let checks = (0..6).map(|m| {
        let (kit, stale) = (Arc::clone(&kit), stale.clone());
        tokio::spawn(async move {
            let lane = u16::try_from(m % 3).unwrap();
            check_in_lane(&kit, Some(lane), &format!("m{m}"), Some(stale), 100, None).await
        })
    });
    let mut granted = 0;
    for done in futures_util::future::join_all(checks).await {
        match done.unwrap().unwrap() {
            GrantOutcome::Granted => granted += 1,
            held => assert!(is_held(&held, HoldReason::Concurrency), "{held:?}"),
        }
    }
    assert_eq!(granted, 2);
    assert_eq!(
        tallied(&kit, "2.0.0", i64::MIN).await,
        counted(&kit, "2.0.0", i64::MIN).await
    );
    let Ok(mut kit) = Arc::try_unwrap(kit) else {
        panic!("the kit is still shared");
    };
    kit.close().await;
}
