//! The catalogue's admin operations ([`crate::store::Store`]): what they store, the rules the
//! schema enforces (uniqueness, references), the catalogue generation and the activity feed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{
    App, Channel, CompletesOn, Group, GroupPolicy, NewActivity, Package, PackageDelta, PackageFile,
    PackageFormat,
};
use crate::store::StoreError;
use crate::store::testkit::{TestStores, both_stores};
use crate::store::tx::{Urgency, transact};

fn act() -> NewActivity {
    NewActivity {
        kind: "test".into(),
        severity: "info",
        ..Default::default()
    }
}

fn app(id: &str) -> App {
    App {
        id: id.into(),
        name: "OS".into(),
        description: String::new(),
        created_at: 1,
        completes_on: CompletesOn::Install,
    }
}

fn pkg(id: &str, app: &str, v: &str) -> Package {
    Package {
        id: id.into(),
        app_id: app.into(),
        version: v.into(),
        arch: "amd64".into(),
        kind: "full".into(),
        filename: "p.raw".into(),
        size: 10,
        sha1_base64: "x".into(),
        sha256_hex: "y".into(),
        external_url: None,
        created_at: 2,
        format: PackageFormat::UpdateEngine,
        metadata_size: Some(1_020),
        metadata_signature_rsa: Some("c2ln".into()),
        deadline: Some("now".into()),
        is_delta: true,
        disable_payload_backoff: false,
        needs_admin: true,
        files: vec![file("oem-azure.gz", 7), file("flatcar-podman.gz", 8)],
        deltas: Vec::new(),
    }
}

fn delta(source: &str) -> PackageDelta {
    PackageDelta {
        source_version: source.into(),
        filename: format!("from-{source}.payload"),
        size: 5,
        sha1_base64: format!("sha1-{source}"),
        sha256_hex: format!("sha256-{source}"),
        created_at: 9,
    }
}

fn file(name: &str, size: u64) -> PackageFile {
    PackageFile {
        name: name.into(),
        size,
        sha1_base64: format!("sha1-{name}"),
        sha256_hex: format!("sha256-{name}"),
    }
}

/// Channel `id` of app `a`, pointing amd64's update_engine pointer at package `p`.
fn channel(id: &str, p: &str) -> Channel {
    Channel {
        id: id.into(),
        app_id: "a".into(),
        name: "stable".into(),
        packages: BTreeMap::new(),
        update_engine_packages: BTreeMap::from([("amd64".to_owned(), p.to_owned())]),
        created_at: 3,
    }
}

/// Group `g` of app `a` on track `stable`, following channel `channel_id`.
fn group(channel_id: Option<&str>) -> Group {
    let mut policy = GroupPolicy::default();
    policy
        .extra
        .insert("percentage".into(), serde_json::json!(10));
    Group {
        id: "g".into(),
        app_id: "a".into(),
        name: "Stable".into(),
        track: "stable".into(),
        channel_id: channel_id.map(Into::into),
        description: String::new(),
        policy,
        created_at: 4,
    }
}

async fn catalogue_round_trip_and_referential_rules(kit: &mut TestStores) {
    let s = &kit.store;
    s.insert_app(&app("a"), &act()).await.unwrap();
    assert!(matches!(
        s.insert_app(&app("a"), &act()).await,
        Err(StoreError::Conflict(_))
    ));
    s.insert_package(&pkg("p1", "a", "1.0.0"), &act())
        .await
        .unwrap();
    let ch = channel("c", "p1");
    s.insert_channel(&ch, &act()).await.unwrap();
    let g = group(Some("c"));
    s.insert_group(&g, &act()).await.unwrap();
    // A package a channel points at cannot be deleted.
    let r = s.delete_package("p1", &act()).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let data = s.load_catalogue().await.unwrap();
    assert_eq!(data.apps, vec![app("a")]);
    assert_eq!(data.channels, vec![ch]);
    assert_eq!(data.groups, vec![g]);
    assert_eq!(data.packages, vec![pkg("p1", "a", "1.0.0")]);
    // A package's extra files are replaced whole, in order; a missing package is not found.
    let before = pkg("p1", "a", "1.0.0").files;
    let files = vec![file("flatcar-podman.gz", 8)];
    s.set_package_files("p1", &before, &files, &act())
        .await
        .unwrap();
    let data = s.load_catalogue().await.unwrap();
    assert_eq!(data.packages[0].files, files);
    // Written from a stale read: refused, nothing changed.
    assert!(matches!(
        s.set_package_files("p1", &before, &[], &act()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.load_catalogue().await.unwrap().packages[0].files, files);
    assert!(matches!(
        s.set_package_files("nope", &[], &files, &act()).await,
        Err(StoreError::NotFound(_))
    ));
    // Deltas, one per source version, load with their package.
    s.add_package_delta("p1", &delta("0.9.0"), &act())
        .await
        .unwrap();
    s.add_package_delta("p1", &delta("0.8.0"), &act())
        .await
        .unwrap();
    assert!(matches!(
        s.add_package_delta("p1", &delta("0.9.0"), &act()).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.add_package_delta("nope", &delta("0.9.0"), &act()).await,
        Err(StoreError::NotFound(_))
    ));
    let generation = s.catalogue_generation().await.unwrap();
    s.delete_package_delta("p1", "0.8.0", &act()).await.unwrap();
    assert!(s.catalogue_generation().await.unwrap() > generation);
    assert!(matches!(
        s.delete_package_delta("p1", "0.8.0", &act()).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.load_catalogue().await.unwrap().packages[0].deltas,
        vec![delta("0.9.0")]
    );
    assert!(matches!(
        s.delete_group("nope", &act()).await,
        Err(StoreError::NotFound(_))
    ));
    let acts = s.list_activity(None, None, 100).await.unwrap();
    assert_eq!(acts.len(), 8);
}

async fn changes_to_missing_objects_are_not_found_and_references_are_kept(kit: &mut TestStores) {
    let s = &kit.store;
    assert!(matches!(
        s.update_app(&app("a"), &act()).await,
        Err(StoreError::NotFound(_))
    ));
    s.insert_app(&app("a"), &act()).await.unwrap();
    // A package of a missing application, a channel pointing at a missing package and a group
    // following a missing channel are refused.
    for r in [
        s.insert_package(&pkg("p0", "nope", "1.0.0"), &act()).await,
        s.insert_channel(&channel("c", "nope"), &act()).await,
        s.insert_group(&group(Some("nope")), &act()).await,
    ] {
        assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    }
    s.insert_package(&pkg("p1", "a", "1.0.0"), &act())
        .await
        .unwrap();
    let r = s.insert_package(&pkg("p2", "a", "1.0.0"), &act()).await;
    assert!(
        matches!(r, Err(StoreError::Conflict(_))),
        "one package per version and arch: {r:?}"
    );
    assert!(matches!(
        s.update_channel(&channel("c", "p1"), &act()).await,
        Err(StoreError::NotFound(_))
    ));
    s.insert_channel(&channel("c", "p1"), &act()).await.unwrap();
    s.insert_group(&group(Some("c")), &act()).await.unwrap();
    // An application with packages cannot be deleted.
    let r = s.delete_app("a", &act()).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");

    let mut renamed = channel("c", "p1");
    renamed.name = "beta".into();
    renamed.update_engine_packages.clear();
    s.update_channel(&renamed, &act()).await.unwrap();
    s.delete_package("p1", &act()).await.unwrap();
    let mut g = group(Some("c"));
    g.description = "moved".into();
    s.update_group(&g, &group(Some("c")), &act()).await.unwrap();
    let data = s.load_catalogue().await.unwrap();
    assert_eq!(data.channels, vec![renamed]);
    assert_eq!(data.groups, vec![g]);
    assert!(data.packages.is_empty());

    // A deleted channel leaves its groups following none.
    s.delete_channel("c", &act()).await.unwrap();
    assert!(matches!(
        s.delete_channel("c", &act()).await,
        Err(StoreError::NotFound(_))
    ));
    let data = s.load_catalogue().await.unwrap();
    assert_eq!(data.groups[0].channel_id, None);
    s.delete_app("a", &act()).await.unwrap();
    let data = s.load_catalogue().await.unwrap();
    assert!(
        data.apps.is_empty() && data.groups.is_empty(),
        "an application's groups go with it"
    );
}

async fn the_catalogue_generation_moves_with_each_committed_change(kit: &mut TestStores) {
    let s = &kit.store;
    let start = s.catalogue_generation().await.unwrap();
    s.insert_app(&app("a"), &act()).await.unwrap();
    let inserted = s.catalogue_generation().await.unwrap();
    assert!(inserted > start, "{inserted} > {start}");
    let mut renamed = app("a");
    renamed.name = "Flatcar".into();
    s.update_app(&renamed, &act()).await.unwrap();
    let updated = s.catalogue_generation().await.unwrap();
    assert!(updated > inserted, "{updated} > {inserted}");
    // Refused and missing-object changes commit nothing, so the generation stays.
    assert!(s.insert_app(&app("a"), &act()).await.is_err());
    assert!(s.delete_channel("nope", &act()).await.is_err());
    assert_eq!(s.catalogue_generation().await.unwrap(), updated);
    assert_eq!(s.load_catalogue().await.unwrap().apps, vec![renamed]);
}

async fn the_activity_feed_pages_newest_first_by_application(kit: &mut TestStores) {
    let s = &kit.store;
    for id in ["a", "b"] {
        let a = NewActivity {
            app_id: Some(id.into()),
            message: format!("created {id}"),
            ..act()
        };
        s.insert_app(&app(id), &a).await.unwrap();
    }
    // An entry without a kind records nothing.
    let mut c = app("c");
    c.created_at = 7;
    s.insert_app(&c, &NewActivity::default()).await.unwrap();
    let all = s.list_activity(None, None, 10).await.unwrap();
    let messages: Vec<&str> = all.iter().map(|a| a.message.as_str()).collect();
    assert_eq!(messages, ["created b", "created a"]);
    assert_eq!(
        (all[0].kind.as_str(), all[0].app_id.as_deref(), all[0].at),
        ("test", Some("b"), 1)
    );
    assert!(all[0].id > all[1].id);
    let older = s.list_activity(None, Some(all[0].id), 10).await.unwrap();
    assert_eq!(older, all[1..]);
    let of_a = s.list_activity(Some("a"), None, 10).await.unwrap();
    assert_eq!(of_a, all[1..]);
    assert_eq!(s.list_activity(None, None, 1).await.unwrap(), all[..1]);
}

/// A group update is made against the group its caller read: a group changed since (its policy
/// by a rollout's transaction, as an auto-halt writes it; its name by another process) is
/// refused, and the change it made kept.
async fn a_group_update_never_overwrites_a_change_made_since_it_was_read(kit: &mut TestStores) {
    let s = Arc::clone(&kit.store);
    s.insert_app(&app("a"), &act()).await.unwrap();
    let read = group(None);
    s.insert_group(&read, &act()).await.unwrap();
    let mut halted = read.policy.clone();
    halted.paused = true;
    let written = halted.clone();
    transact(kit.writer.as_ref(), Urgency::Answer, move |tx| {
        let policy = written.clone();
        Box::pin(async move { tx.store_group_policy("g", &policy).await })
    })
    .await
    .unwrap();

    let mut edited = read.clone();
    edited.description = "edited".into();
    let r = s.update_group(&edited, &read, &act()).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict(m)) if m.contains("changed since it was read")),
        "{r:?}"
    );
    let stored = s.load_catalogue().await.unwrap().groups[0].clone();
    assert_eq!((stored.description.as_str(), &stored.policy), ("", &halted));

    // Another process renames it: an edit based on the earlier read is refused too.
    let mut renamed = stored.clone();
    renamed.name = "Renamed".into();
    s.update_group(&renamed, &stored, &act()).await.unwrap();
    let mut edited = stored.clone();
    edited.description = "edited".into();
    let r = s.update_group(&edited, &stored, &act()).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");

    // Read again, the same edit goes through and keeps the other changes.
    let mut edited = renamed.clone();
    edited.description = "edited".into();
    s.update_group(&edited, &renamed, &act()).await.unwrap();
    assert_eq!(s.load_catalogue().await.unwrap().groups, vec![edited]);
    let missing = Group {
        id: "nope".into(),
        ..read.clone()
    };
    let r = s.update_group(&missing, &read, &act()).await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
}

both_stores!(
    a_group_update_never_overwrites_a_change_made_since_it_was_read,
    catalogue_round_trip_and_referential_rules,
    changes_to_missing_objects_are_not_found_and_references_are_kept,
    the_catalogue_generation_moves_with_each_committed_change,
    the_activity_feed_pages_newest_first_by_application,
);
