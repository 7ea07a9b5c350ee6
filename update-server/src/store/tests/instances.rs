//! Instance rows: check-ins and status changes written through the check path's transactions
//! ([`crate::store::instances::InstanceTx`] on the stores' writer), and the reads, lists and
//! deletions of [`crate::store::Store`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::lifecycle::InstanceStatus;
use crate::model::{NewActivity, StatusChange};
use crate::store::instances::{CheckIn, StatusColumns};
use crate::store::testkit::{TestStores, both_stores};
use crate::store::tx::{StoreTx, TxFuture, Urgency, transact};
use crate::store::{InstanceChange, InstanceFilter, NewEvent, StoreError, VersionSample};

fn act() -> NewActivity {
    NewActivity {
        kind: "test".into(),
        severity: "info",
        ..Default::default()
    }
}

/// A check-in of machine `m1` for app `a` on track `stable`.
fn check_in(at: i64, version: &str, ip: &str) -> CheckIn {
    CheckIn {
        machine_id: "m1".into(),
        app_id: "a".into(),
        version: version.into(),
        group_id: None,
        track: "stable".into(),
        alias: String::new(),
        ip: ip.into(),
        oem: String::new(),
        oem_version: String::new(),
        board: "amd64-usr".into(),
        boot_id: String::new(),
        at,
        first_seen: at,
    }
}

/// Runs `f` in a write transaction of `kit`'s writer.
async fn write<T: Send + 'static>(
    kit: &TestStores,
    f: impl for<'t> Fn(&'t mut dyn StoreTx) -> TxFuture<'t, T> + Send + Sync + 'static,
) -> Result<T, StoreError> {
    transact(kit.writer.as_ref(), Urgency::Answer, f).await
}

async fn instances_persist_and_delete_with_history(kit: &mut TestStores) {
    let first = check_in(5, "1.0.0", "10.0.0.1");
    let mut i = first.new_row();
    i.alias = "web-1".into();
    let mut c = first.clone();
    c.alias = "web-1".into();
    write(kit, move |tx| {
        let c = c.clone();
        Box::pin(async move { tx.check_in(&[c]).await })
    })
    .await
    .unwrap();
    i.status = InstanceStatus::Error;
    i.error_code = Some(268_435_461);
    i.status_at = 6;
    let change = InstanceChange {
        status_change: Some(StatusChange {
            status: InstanceStatus::Error,
            version: "1.0.0".into(),
            detail: "postinstall".into(),
            error_code: Some(268_435_461),
            at: 6,
        }),
        events: vec![NewEvent {
            event_type: 3,
            event_result: 0,
            error_code: Some(268_435_461),
            previous_version: String::new(),
        }],
        activity: vec![],
    };
    let status = StatusColumns::of(&i);
    write(kit, move |tx| {
        let (status, change) = (status.clone(), change.clone());
        Box::pin(async move {
            tx.set_status("m1", "a", &status).await?;
            tx.record_change("m1", "a", "1.0.0", 6, &change).await
        })
    })
    .await
    .unwrap();
    // Reopen: the state is durable.
    kit.reopen().await;
    let s = &kit.store;
    assert_eq!(s.instance("m1", "a").await.unwrap(), Some(i.clone()));
    let f = InstanceFilter {
        status: Some(InstanceStatus::Error),
        search: Some("web".into()),
        limit: 10,
        ..Default::default()
    };
    let (list, total) = s.list_instances(&f).await.unwrap();
    assert_eq!((list.len(), total), (1, 1));
    assert_eq!(s.instance_history("m1", "a", 10).await.unwrap().len(), 1);
    assert_eq!(
        s.list_events(Some("m1"), None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.delete_instance("m1", None, &act()).await.unwrap(), 1);
    assert_eq!(s.instance("m1", "a").await.unwrap(), None);
    assert!(
        s.list_events(Some("m1"), None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        s.delete_instance("m1", None, &act()).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_check_in_writes_only_its_columns_and_never_goes_back_in_time(kit: &mut TestStores) {
    let rows = vec![check_in(10, "1.0.0", "192.0.2.1")];
    write(kit, move |tx| {
        let rows = rows.clone();
        Box::pin(async move { tx.check_in(&rows).await })
    })
    .await
    .unwrap();
    // Another process set the status meanwhile.
    let mut granted = check_in(10, "1.0.0", "").new_row();
    granted.status = InstanceStatus::Granted;
    granted.granted_version = Some("2.0.0".into());
    granted.granted_at = Some(11);
    let status = StatusColumns::of(&granted);
    write(kit, move |tx| {
        let status = status.clone();
        Box::pin(async move { tx.set_status("m1", "a", &status).await })
    })
    .await
    .unwrap();
    // A later check-in (empty ip: keep) and a late, older one.
    let rows = vec![
        check_in(12, "1.0.1", ""),
        check_in(11, "0.9.0", "198.51.100.7"),
    ];
    write(kit, move |tx| {
        let rows = rows.clone();
        Box::pin(async move { tx.check_in(&rows).await })
    })
    .await
    .unwrap();
    let row = kit.store.instance("m1", "a").await.unwrap().unwrap();
    assert_eq!(
        (row.last_check_at, row.version.as_str(), row.ip.as_str()),
        (12, "1.0.1", "192.0.2.1")
    );
    assert_eq!(
        (row.status, row.granted_version.as_deref()),
        (InstanceStatus::Granted, Some("2.0.0")),
        "a check-in leaves the status columns alone"
    );
}

async fn a_failing_job_rolls_back_alone_and_the_batch_commits(kit: &mut TestStores) {
    let mut jobs = Vec::new();
    for n in 0..20_i64 {
        let w = Arc::clone(&kit.writer);
        jobs.push(tokio::spawn(async move {
            transact(w.as_ref(), Urgency::Answer, move |tx| {
                Box::pin(async move {
                    let mut c = check_in(n, "1.0.0", "");
                    c.machine_id = format!("m{n}");
                    tx.check_in(&[c]).await?;
                    if n % 5 == 0 {
                        return Err(StoreError::Conflict(format!("job {n} fails")));
                    }
                    Ok(n)
                })
            })
            .await
        }));
    }
    let mut failed = 0;
    for j in jobs {
        if j.await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 4);
    let (_, total) = kit
        .store
        .list_instances(&InstanceFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 16, "every job but the failed ones committed");
    assert_eq!(kit.store.instance("m5", "a").await.unwrap(), None);
}

async fn a_panicking_job_fails_alone_and_the_writer_goes_on(kit: &mut TestStores) {
    let mut jobs = Vec::new();
    for n in 0..12_i64 {
        let w = Arc::clone(&kit.writer);
        jobs.push(tokio::spawn(async move {
            transact(w.as_ref(), Urgency::Answer, move |tx| {
                Box::pin(async move {
                    let mut c = check_in(n, "1.0.0", "");
                    c.machine_id = format!("m{n}");
                    tx.check_in(&[c]).await?;
                    assert!(n != 7, "job 7 fails hard after its write");
                    Ok(n)
                })
            })
            .await
        }));
    }
    let mut failed = Vec::new();
    for j in jobs {
        if let Err(e) = j.await.unwrap() {
            failed.push(e.to_string());
        }
    }
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("panicked"), "{failed:?}");
    assert_eq!(kit.store.instance("m7", "a").await.unwrap(), None);
    // The writer still answers.
    let after = write(kit, |tx| {
        Box::pin(async move {
            let mut c = check_in(99, "1.0.0", "");
            c.machine_id = "m-after".into();
            tx.check_in(&[c]).await
        })
    })
    .await;
    after.unwrap();
    let (_, total) = kit
        .store
        .list_instances(&InstanceFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        total, 12,
        "every job but the panicking one committed, and the one after"
    );
}

async fn instance_lists_filter_search_count_and_order_alike(kit: &mut TestStores) {
    // (machine, app, group, alias, ip, last check)
    let machines = [
        ("m-b", "a", Some("g"), "Web-1", "10.0.0.1", 20),
        ("m-a", "a", Some("g"), "db_1", "10.0.0.2", 20),
        ("M-c", "a", None, "", "192.0.2.9", 20),
        ("m-d", "b", Some("g"), r"back\slash", "", 10),
    ];
    let rows: Vec<CheckIn> = machines
        .iter()
        .map(|&(m, a, g, alias, ip, at)| {
            let mut c = check_in(at, "1.0.0", ip);
            c.machine_id = m.into();
            c.app_id = a.into();
            c.group_id = g.map(Into::into);
            c.alias = alias.into();
            c
        })
        .collect();
    write(kit, move |tx| {
        let rows = rows.clone();
        Box::pin(async move { tx.check_in(&rows).await })
    })
    .await
    .unwrap();
    let s = &kit.store;
    let found = |f: InstanceFilter| async move {
        let (list, total) = s
            .list_instances(&InstanceFilter { limit: 10, ..f })
            .await
            .unwrap();
        let machines: Vec<String> = list.into_iter().map(|i| i.machine_id).collect();
        (machines, total)
    };
    let search = |s: &str| InstanceFilter {
        search: Some(s.into()),
        ..Default::default()
    };
    // Newest check first, then by machine id in byte order (upper case first).
    assert_eq!(
        found(InstanceFilter::default()).await,
        (
            vec!["M-c".into(), "m-a".into(), "m-b".into(), "m-d".into()],
            4
        )
    );
    // The search ignores ASCII case in machine ids, aliases and addresses.
    assert_eq!(found(search("WEB")).await, (vec!["m-b".into()], 1));
    assert_eq!(
        found(search("m-C")).await,
        (vec!["M-c".into()], 1),
        "machine ids match without case"
    );
    assert_eq!(found(search("192.0.2")).await, (vec!["M-c".into()], 1));
    // `%` and `_` are dropped from a search, and a backslash is a character like any other.
    assert_eq!(found(search("db_1")).await, (vec![], 0));
    assert_eq!(found(search("%")).await.1, 4);
    assert_eq!(found(search(r"k\s")).await, (vec!["m-d".into()], 1));
    assert_eq!(found(search(r"\")).await, (vec!["m-d".into()], 1));
    let filtered = InstanceFilter {
        app_id: Some("a".into()),
        group_id: Some("g".into()),
        version: Some("1.0.0".into()),
        status: Some(InstanceStatus::Idle),
        ..Default::default()
    };
    assert_eq!(found(filtered).await, (vec!["m-a".into(), "m-b".into()], 2));
    let second_page = s
        .list_instances(&InstanceFilter {
            limit: 2,
            offset: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let second: Vec<&str> = second_page
        .0
        .iter()
        .map(|i| i.machine_id.as_str())
        .collect();
    assert_eq!((second, second_page.1), (vec!["m-a", "m-b"], 4));

    let counted: Vec<(String, Option<String>, i64)> = s
        .instance_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            assert_eq!(
                (c.version.as_str(), c.status),
                ("1.0.0", InstanceStatus::Idle)
            );
            (c.app_id, c.group_id, c.count)
        })
        .collect();
    assert_eq!(
        counted,
        [
            ("a".to_owned(), None, 1),
            ("a".to_owned(), Some("g".to_owned()), 2),
            ("b".to_owned(), Some("g".to_owned()), 1),
        ]
    );
    // Checked in since 15: all but m-d (at 10).
    let mut recent = s.checked_in_counts(15).await.unwrap();
    recent.sort();
    assert_eq!(
        recent,
        [
            ("a".to_owned(), None, 1),
            ("a".to_owned(), Some("g".to_owned()), 2)
        ]
    );
    let mut in_group: Vec<String> = s
        .group_instances("a", "g")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.machine_id)
        .collect();
    in_group.sort();
    assert_eq!(in_group, ["m-a", "m-b"]);

    // Deleting one application's row keeps the machine's others.
    let mut other = check_in(40, "2.0.0", "");
    other.machine_id = "m-a".into();
    other.app_id = "b".into();
    write(kit, move |tx| {
        let other = other.clone();
        Box::pin(async move { tx.check_in(&[other]).await })
    })
    .await
    .unwrap();
    let s = &kit.store;
    assert_eq!(
        s.delete_instance("m-a", Some("a"), &act()).await.unwrap(),
        1
    );
    assert_eq!(s.instance("m-a", "a").await.unwrap(), None);
    assert!(s.instance("m-a", "b").await.unwrap().is_some());
    assert!(matches!(
        s.delete_instance("m-a", Some("a"), &act()).await,
        Err(StoreError::NotFound(_))
    ));
    let deleted = s.list_activity(None, None, 10).await.unwrap();
    assert_eq!(deleted.len(), 1, "one entry per deletion");
}

/// A check's events and activity entries are stored in the order they came (their ids follow
/// it), with the status and history written in the same transaction.
async fn a_checks_events_and_activity_keep_their_order(kit: &mut TestStores) {
    let c = check_in(5, "1.0.0", "10.0.0.1");
    let event = |event_type, event_result| NewEvent {
        event_type,
        event_result,
        error_code: None,
        previous_version: String::new(),
    };
    let entry = |message: &str| NewActivity {
        kind: "test".into(),
        severity: "info",
        message: message.into(),
        ..Default::default()
    };
    let change = InstanceChange {
        status_change: None,
        events: vec![event(13, 1), event(14, 1), event(3, 1), event(800, 1)],
        activity: vec![entry("first"), entry("second"), entry("third")],
    };
    write(kit, move |tx| {
        let (c, change) = (c.clone(), change.clone());
        Box::pin(async move {
            tx.check_in(&[c]).await?;
            tx.record_change("m1", "a", "1.0.0", 6, &change).await
        })
    })
    .await
    .unwrap();
    let events = kit
        .strings("SELECT CAST(event_type AS TEXT) FROM events ORDER BY id")
        .await;
    assert_eq!(events, ["13", "14", "3", "800"]);
    let activity = kit
        .strings("SELECT message FROM activity WHERE kind = 'test' ORDER BY id")
        .await;
    assert_eq!(activity, ["first", "second", "third"]);
}

/// A group's instances are counted by version, status and hold reason, without reading them,
/// and only the group's own.
async fn a_groups_instances_are_counted_by_version_status_and_hold_reason(kit: &mut TestStores) {
    let rows: Vec<(&str, &str, Option<&str>, InstanceStatus, &str)> = vec![
        (
            "m1",
            "1.0.0",
            Some("g"),
            InstanceStatus::OnHold,
            "percentage",
        ),
        (
            "m2",
            "1.0.0",
            Some("g"),
            InstanceStatus::OnHold,
            "percentage",
        ),
        ("m3", "1.0.0", Some("g"), InstanceStatus::OnHold, "format"),
        (
            "m4",
            "2.0.0",
            Some("g"),
            InstanceStatus::Complete,
            "left over",
        ),
        ("m5", "1.0.0", Some("g"), InstanceStatus::Idle, ""),
        (
            "m6",
            "1.0.0",
            Some("other"),
            InstanceStatus::OnHold,
            "percentage",
        ),
        ("m7", "1.0.0", None, InstanceStatus::Idle, ""),
    ];
    for (machine, version, group, status, detail) in rows {
        let mut c = check_in(5, version, "10.0.0.1");
        c.machine_id = machine.into();
        c.group_id = group.map(str::to_owned);
        let mut i = c.new_row();
        i.status = status;
        i.status_detail = detail.into();
        let columns = StatusColumns::of(&i);
        write(kit, move |tx| {
            let (c, columns) = (c.clone(), columns.clone());
            Box::pin(async move {
                tx.check_in(std::slice::from_ref(&c)).await?;
                tx.set_status(&c.machine_id, &c.app_id, &columns).await
            })
        })
        .await
        .unwrap();
    }
    let mut counts: Vec<(String, &str, String, u64)> = kit
        .store
        .group_instance_counts("a", "g")
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.version, c.status.as_str(), c.hold_reason, c.count))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [
            ("1.0.0".to_owned(), "idle", String::new(), 1),
            ("1.0.0".to_owned(), "on_hold", "format".to_owned(), 1),
            ("1.0.0".to_owned(), "on_hold", "percentage".to_owned(), 2),
            ("2.0.0".to_owned(), "complete", String::new(), 1),
        ]
    );
}

fn sample(group: &str, at: i64, version: Option<&str>, machines: u64) -> VersionSample {
    VersionSample {
        app_id: "a".into(),
        group_id: group.into(),
        at,
        version: version.map(str::to_owned),
        machines,
    }
}

async fn version_samples_are_written_once_read_by_step_and_pruned(kit: &mut TestStores) {
    let store = &kit.store;
    let first = [
        sample("g", 600, Some("1.0"), 7),
        sample("g", 600, None, 2),
        sample("h", 600, Some("1.0"), 1),
    ];
    assert_eq!(store.record_version_samples(&first, 0).await.unwrap(), 3);
    // The same instant again (another replica that counted differently, a restart): the first
    // set stays whole, nothing is added to it.
    let again = [
        sample("g", 600, Some("1.0"), 99),
        sample("g", 600, Some("1.1"), 1),
    ];
    assert_eq!(store.record_version_samples(&again, 0).await.unwrap(), 0);
    let second = [
        sample("g", 1200, Some("1.0"), 5),
        sample("g", 1200, Some("1.1"), 4),
    ];
    assert_eq!(store.record_version_samples(&second, 0).await.unwrap(), 2);
    let mut read = store.version_samples("a", "g", 0, 600).await.unwrap();
    read.sort_by(|a, b| (a.at, &a.version).cmp(&(b.at, &b.version)));
    assert_eq!(
        read,
        [
            sample("g", 600, None, 2),
            sample("g", 600, Some("1.0"), 7),
            sample("g", 1200, Some("1.0"), 5),
            sample("g", 1200, Some("1.1"), 4),
        ]
    );
    // A coarser step reads only its instants; `since` bounds the range.
    let coarse = store.version_samples("a", "g", 0, 1200).await.unwrap();
    assert!(coarse.iter().all(|s| s.at == 1200), "{coarse:?}");
    assert_eq!(coarse.len(), 2);
    assert_eq!(
        store
            .version_samples("a", "g", 601, 600)
            .await
            .unwrap()
            .len(),
        2
    );
    // Writing the next sample deletes those before the cutoff.
    let third = [sample("g", 1800, Some("1.1"), 9)];
    assert_eq!(store.record_version_samples(&third, 1000).await.unwrap(), 1);
    let left = store.version_samples("a", "g", 0, 600).await.unwrap();
    assert_eq!(left.first().map(|s| s.at), Some(1200));
    assert!(
        store
            .version_samples("a", "h", 0, 600)
            .await
            .unwrap()
            .is_empty()
    );
}

both_stores!(
    version_samples_are_written_once_read_by_step_and_pruned,
    instances_persist_and_delete_with_history,
    a_groups_instances_are_counted_by_version_status_and_hold_reason,
    a_checks_events_and_activity_keep_their_order,
    a_check_in_writes_only_its_columns_and_never_goes_back_in_time,
    a_failing_job_rolls_back_alone_and_the_batch_commits,
    a_panicking_job_fails_alone_and_the_writer_goes_on,
    instance_lists_filter_search_count_and_order_alike,
);
