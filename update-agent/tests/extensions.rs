//! Runtime extensions end to end: the `extensions` module against a real in-process update
//! server (an OS app and a containerd app, answered in one multi-app request), a real private
//! `dbus-daemon` with a systemd stand-in that records `RestartUnit` and answers job results,
//! a recording refresh command and a controllable health command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use update_agent::extensions::{ExtensionState, Extensions, Outcome, Readiness, codes};
use update_agent::omaha_client;

use support::ext_world::{EXT, EXT_APP, OS_APP, UNIT, World, ext_payload, os_payload};

/// update_engine's OmahaUpdateIgnoredPerPolicy (deny-listed builds).
const IGNORED_PER_POLICY: i64 = 35;

fn only(out: Vec<update_agent::extensions::ExtensionOutcome>) -> Outcome {
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].name, EXT);
    out.into_iter().next().unwrap().outcome
}

/// Installs containerd `version` (supporting OS `1.*`) as the active image.
async fn install(w: &World, ext: &mut Extensions, version: &str) {
    w.release(EXT_APP, ext_payload(&w.key, version, Some("1.*")))
        .await;
    let o = only(ext.check(None, false).await.unwrap());
    assert!(
        matches!(&o, Outcome::Activated { version: v, .. } if v == version),
        "{o:?}"
    );
}

/// With 1.0 active on OS 1.0.0, stages 1.1 (supporting OS `2.*`) for an OS 2.0.0 update.
async fn stage_for_os_2(w: &World, ext: &mut Extensions) {
    install(w, ext, "1.0").await;
    w.release(EXT_APP, ext_payload(&w.key, "1.1", Some("2.*")))
        .await;
    let o = only(ext.check(Some("2.0.0"), false).await.unwrap());
    assert!(matches!(o, Outcome::Staged { .. }), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_app_request_updates_os_and_runtime_independently() {
    let w = World::start().await;
    let mut ext = w.extensions("1.0.0", "boot-1").await;
    let id = w.identity("1.0.0", "boot-1");
    w.release(OS_APP, os_payload(&w.key, "2.0.0")).await;
    w.release(EXT_APP, ext_payload(&w.key, "1.1", Some("1.*")))
        .await;

    // The OS group is paused: one request, the OS app answered noupdate, the runtime updated.
    w.pause(OS_APP, true).await;
    let req = omaha_client::check_request_with(&id, None, false, true, ext.app_requests(None));
    assert_eq!(req.apps.len(), 2);
    let resp = w.omaha().send(&req).await.unwrap();
    let os = omaha_client::interpret(&resp, OS_APP).unwrap();
    assert_eq!(os.offer, None);
    let o = only(ext.handle_response(&resp, None).await);
    assert_eq!(
        o,
        Outcome::Activated {
            version: "1.1".into(),
            previous: None
        }
    );
    assert_eq!(w.host.link(), Some(w.host.image("1.1")));

    // Now the runtime's group is paused and the OS one resumed: the OS is offered, the runtime
    // (with a newer build on its channel) is not.
    w.release(EXT_APP, ext_payload(&w.key, "1.2", Some("1.*")))
        .await;
    w.pause(EXT_APP, true).await;
    w.pause(OS_APP, false).await;
    let req = omaha_client::check_request_with(&id, None, false, true, ext.app_requests(None));
    let ext_app = &req.apps[1];
    assert_eq!(ext_app.version.as_deref(), Some("1.1"));
    assert_eq!(omaha_client::os_context(ext_app), Some("1.0.0"));
    let resp = w.omaha().send(&req).await.unwrap();
    let os = omaha_client::interpret(&resp, OS_APP).unwrap();
    assert_eq!(os.offer.unwrap().version, "2.0.0");
    assert_eq!(
        only(ext.handle_response(&resp, None).await),
        Outcome::NoUpdate
    );
    assert_eq!(w.host.link(), Some(w.host.image("1.1")));

    // The server keeps one instance per app for this machine, each with its own version.
    let detail = w.get(&format!("/instances/{}", support::MACHINE)).await;
    let mut versions: Vec<(String, String)> = detail["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["instance"]["app_id"].as_str().unwrap().to_owned(),
                a["instance"]["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        [
            (
                "5e8a1c7d-2f4b-4c6e-9a1d-3b7c9e2f4a60".to_owned(),
                "1.1".to_owned()
            ),
            (
                "7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53".to_owned(),
                "1.0.0".to_owned()
            ),
        ]
    );
    // The runtime's events are its own app's: download started/finished, then complete (3/2
    // from 0.0.0, sent with the new version); the OS app has none.
    let events = w.events(EXT_APP).await;
    assert_eq!(
        events,
        [
            (13, 1, None, String::new(), "0.0.0".into()),
            (14, 1, None, String::new(), "0.0.0".into()),
            (3, 2, None, "0.0.0".into(), "1.1".into()),
        ]
    );
    assert!(w.events(OS_APP).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_update_activates_and_restarts_the_unit() {
    let w = World::start().await;
    let mut ext = w.extensions("1.0.0", "boot-1").await;
    install(&w, &mut ext, "1.0").await;
    install(&w, &mut ext, "1.1").await;

    assert_eq!(w.host.link(), Some(w.host.image("1.1")));
    assert_eq!(
        std::fs::read(w.host.image("1.1")).unwrap(),
        support::ext_world::ext_image("1.1")
    );
    // Each activation: link switched, then one refresh, then the unit restarted with
    // "replace", then the health command (which saw the new link).
    assert_eq!(w.host.refreshes(), ["refresh", "refresh"]);
    assert_eq!(w.systemd.restarts(), [UNIT, UNIT]);
    assert_eq!(w.systemd.modes(), ["replace", "replace"]);
    let health = w.host.health_runs();
    assert_eq!(health.len(), 2);
    assert!(health[1].ends_with("containerd-1.1.raw"), "{health:?}");
    let st = ext.status(None);
    assert_eq!(
        (st[0].version.as_str(), st[0].state),
        ("1.1", ExtensionState::Active)
    );
    assert_eq!(
        st[0].to_dbus(),
        ("containerd".into(), "1.1".into(), "active".into())
    );
    // Current and previous kept; a third version removes the oldest.
    assert_eq!(
        w.host.image_files(),
        ["containerd-1.0.raw", "containerd-1.1.raw"]
    );
    install(&w, &mut ext, "1.2").await;
    assert_eq!(
        w.host.image_files(),
        ["containerd-1.1.raw", "containerd-1.2.raw"]
    );
    let rec = &ext.state().extensions[EXT];
    assert_eq!(rec.previous.as_ref().unwrap().version, "1.1");

    // The state survives a restart of the agent (same boot): nothing to reconcile.
    let mut again = w.extensions("1.0.0", "boot-1").await;
    assert!(again.reconcile().await.is_empty());
    assert_eq!(again.status(None)[0].version, "1.2");
    assert_eq!(again.app_requests(None)[0].version.as_deref(), Some("1.2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_restart_rolls_back_to_the_previous_image_and_reports() {
    let w = World::start().await;
    let mut ext = w.extensions("1.0.0", "boot-1").await;
    install(&w, &mut ext, "1.0").await;

    // The restart job of 1.1 fails; the rollback's restart succeeds.
    w.systemd.fail_next(UNIT, "failed");
    w.release(EXT_APP, ext_payload(&w.key, "1.1", Some("1.*")))
        .await;
    let o = only(ext.check(None, false).await.unwrap());
    let Outcome::Failed {
        version,
        code,
        message,
        rolled_back_to,
    } = o
    else {
        panic!("{o:?}")
    };
    assert_eq!(version, "1.1");
    assert_eq!(code, codes::RESTART_FAILED);
    assert!(message.contains("failed"), "{message}");
    assert_eq!(rolled_back_to.as_deref(), Some("1.0"));
    assert_eq!(w.host.link(), Some(w.host.image("1.0")));
    // activate 1.0, activate 1.1, roll back: three refreshes and three restarts, each after a
    // reload of systemd's unit files.
    assert_eq!(w.host.refreshes().len(), 3);
    assert_eq!(w.systemd.restarts(), [UNIT, UNIT, UNIT]);
    assert_eq!(w.systemd.reloads(), [0, 1, 2]);
    // The failed image is gone, the good one kept.
    assert_eq!(w.host.image_files(), ["containerd-1.0.raw"]);
    let events = w.events(EXT_APP).await;
    let last = events.last().unwrap();
    assert_eq!(
        (last.0, last.1, last.2, last.4.as_str()),
        (3, 0, Some(i64::from(codes::RESTART_FAILED)), "1.0")
    );
    let st = &ext.status(None)[0];
    assert_eq!(
        (st.version.as_str(), st.state),
        ("1.0", ExtensionState::Failed)
    );
    assert!(st.detail.contains("containerd.service"), "{}", st.detail);
    // A failing health command rolls back the same way.
    w.host.set_health(1);
    w.release(EXT_APP, ext_payload(&w.key, "1.2", Some("1.*")))
        .await;
    let o = only(ext.check(None, false).await.unwrap());
    assert!(
        matches!(&o, Outcome::Failed { code, rolled_back_to: Some(v), .. }
            if *code == codes::HEALTH_FAILED && v == "1.0"),
        "{o:?}"
    );
    assert_eq!(w.host.link(), Some(w.host.image("1.0")));
    let last = w.events(EXT_APP).await.pop().unwrap();
    assert_eq!(
        (last.0, last.1, last.2),
        (3, 0, Some(i64::from(codes::HEALTH_FAILED)))
    );

    // Deny-listed: the server heard the failures and no longer offers 1.1 or 1.2 to this
    // machine. An operator clears that (`instance retry`); offered again, 1.2 is refused without
    // a download or activation, and reported as a failure (so the server releases the grant,
    // refuses the version for this machine again and offers the next build).
    w.host.set_health(0);
    assert_eq!(
        ext.state().extensions[EXT].deny_list,
        ["1.1".to_string(), "1.2".to_string()].into()
    );
    let (refreshes, restarts) = (w.host.refreshes().len(), w.systemd.restarts().len());
    let o = only(ext.check(None, false).await.unwrap());
    assert!(
        matches!(o, Outcome::NoUpdate),
        "offered a deny-listed build: {o:?}"
    );
    w.api(
        reqwest::Method::POST,
        &format!("/instances/{}/retry?app={EXT_APP}", support::MACHINE),
        serde_json::Value::Null,
        200,
    )
    .await;
    let o = only(ext.check(None, false).await.unwrap());
    assert!(
        matches!(&o, Outcome::Refused { version, reason } if version == "1.2" && reason.contains("deny list")),
        "{o:?}"
    );
    assert_eq!(
        (w.host.refreshes().len(), w.systemd.restarts().len()),
        (refreshes, restarts)
    );
    let last = w.events(EXT_APP).await.pop().unwrap();
    assert_eq!((last.0, last.1, last.2), (3, 0, Some(IGNORED_PER_POLICY)));
    // A fixed build is offered and activated.
    install(&w, &mut ext, "1.3").await;
    assert_eq!(w.host.link(), Some(w.host.image("1.3")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_refresh_rolls_back_and_the_server_refuses_the_build() {
    let w = World::start().await;
    let mut ext = w.extensions("1.0.0", "boot-1").await;
    install(&w, &mut ext, "1.0").await;
    let restarts = w.systemd.restarts().len();

    // systemd-sysext cannot merge 1.1: the refresh fails with 1.1 linked.
    w.host.fail_refresh_of("1.1");
    w.release(EXT_APP, ext_payload(&w.key, "1.1", Some("1.*")))
        .await;
    let o = only(ext.check(None, false).await.unwrap());
    assert!(
        matches!(&o, Outcome::Failed { version, code, rolled_back_to: Some(v), .. }
            if version == "1.1" && *code == codes::REFRESH_FAILED && v == "1.0"),
        "{o:?}"
    );
    // Rolled back: 1.0 linked and refreshed again, its unit restarted; 1.1 deleted, deny-listed.
    assert_eq!(w.host.link(), Some(w.host.image("1.0")));
    let refreshes = w.host.refreshes();
    assert_eq!(refreshes.len(), 3, "{refreshes:?}");
    assert_eq!(w.systemd.restarts().len(), restarts + 1);
    assert_eq!(w.host.image_files(), ["containerd-1.0.raw"]);
    assert_eq!(
        ext.state().extensions[EXT].deny_list,
        ["1.1".to_string()].into()
    );
    let last = w.events(EXT_APP).await.pop().unwrap();
    assert_eq!(
        (last.0, last.1, last.2),
        (3, 0, Some(i64::from(codes::REFRESH_FAILED)))
    );
    // The server refuses 1.1 for this machine from now on.
    let detail = w.get(&format!("/instances/{}", support::MACHINE)).await;
    let refused: Vec<_> = detail["apps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["refused_versions"].as_array().unwrap().clone())
        .map(|r| (r["version"].clone(), r["reason"].clone()))
        .collect();
    assert_eq!(
        refused,
        [(serde_json::json!("1.1"), serde_json::json!("deny_listed"))],
        "{detail}"
    );
    let o = only(ext.check(None, false).await.unwrap());
    assert!(matches!(o, Outcome::NoUpdate), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_not_supporting_the_booted_os_is_refused() {
    let w = World::start().await;
    let mut ext = w.extensions("1.0.0", "boot-1").await;

    w.release(EXT_APP, ext_payload(&w.key, "2.0", Some("2.* 3.0.0")))
        .await;
    let o = only(ext.check(None, false).await.unwrap());
    assert!(
        matches!(&o, Outcome::Refused { version, reason }
            if version == "2.0" && reason.contains("2.* 3.0.0") && reason.contains("1.0.0")),
        "{o:?}"
    );
    // Nothing written, linked, refreshed or restarted.
    assert_eq!(w.host.link(), None);
    assert!(
        w.host.image_files().is_empty(),
        "{:?}",
        w.host.image_files()
    );
    assert!(w.host.refreshes().is_empty());
    assert!(w.systemd.restarts().is_empty());
    let events = w.events(EXT_APP).await;
    let last = events.last().unwrap();
    assert_eq!(
        (last.0, last.1, last.2),
        (3, 0, Some(i64::from(codes::UNSUPPORTED_OS)))
    );
    // Asked again, the same build is not downloaded again; the refusal is reported again.
    let n = events.len();
    assert!(matches!(
        only(ext.check(None, false).await.unwrap()),
        Outcome::Refused { .. }
    ));
    assert!(w.host.image_files().is_empty());
    assert_eq!(w.events(EXT_APP).await.len(), n + 1);
    // Not deny-listed: the build may fit after an OS update.
    assert!(ext.state().extensions[EXT].deny_list.is_empty());

    // A build that declares no OS versions is refused too (fail closed).
    w.release(EXT_APP, ext_payload(&w.key, "2.1", None)).await;
    let o = only(ext.check(None, false).await.unwrap());
    assert!(
        matches!(&o, Outcome::Refused { reason, .. } if reason.contains("os.versions")),
        "{o:?}"
    );
    assert_eq!(w.host.link(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_update_waits_until_a_compatible_extension_is_staged() {
    let w = World::start().await;
    let mut ext = w.extensions("1.0.0", "boot-1").await;
    install(&w, &mut ext, "1.0").await;
    let (refreshes, restarts) = (w.host.refreshes().len(), w.systemd.restarts().len());

    // OS 2.0.0 is staged. containerd 1.0 supports 1.* only: the reboot waits, and says why.
    let r = ext.readiness("2.0.0");
    assert!(!r.is_ready());
    assert!(
        r.reason()
            .contains("containerd 1.0 supports OS 1.*, not 2.0.0"),
        "{}",
        r.reason()
    );
    // Asking the server with the new OS version as context: nothing newer on the channel yet.
    assert_eq!(
        only(ext.check(Some("2.0.0"), false).await.unwrap()),
        Outcome::NoUpdate
    );
    assert!(matches!(ext.readiness("2.0.0"), Readiness::Waiting(_)));
    let st = &ext.status(Some("2.0.0"))[0];
    assert_eq!(st.state, ExtensionState::Waiting);
    assert!(
        st.to_dbus().2.starts_with("waiting: containerd 1.0"),
        "{:?}",
        st.to_dbus()
    );

    // A build for OS 2.* is published: it is checked against 2.0.0 (not the booted 1.0.0),
    // downloaded and linked for the next boot, without refresh or restart now.
    w.release(EXT_APP, ext_payload(&w.key, "1.1", Some("2.*")))
        .await;
    let apps = ext.app_requests(Some("2.0.0"));
    assert_eq!(omaha_client::os_context(&apps[0]), Some("2.0.0"));
    let o = only(ext.check(Some("2.0.0"), false).await.unwrap());
    assert_eq!(
        o,
        Outcome::Staged {
            version: "1.1".into(),
            os_version: "2.0.0".into()
        }
    );
    assert_eq!(ext.readiness("2.0.0"), Readiness::Ready);
    assert_eq!(w.host.link(), Some(w.host.image("1.1")));
    assert_eq!(w.host.refreshes().len(), refreshes);
    assert_eq!(w.systemd.restarts().len(), restarts);
    let st = &ext.status(Some("2.0.0"))[0];
    assert_eq!(
        (st.version.as_str(), st.state, st.detail.as_str()),
        ("1.0", ExtensionState::Staged, "1.1 for OS 2.0.0")
    );
    let last = w.events(EXT_APP).await.pop().unwrap();
    assert_eq!((last.0, last.1), (3, 1), "installed, awaiting the reboot");
    // The staged build is not activated by a later check while the OS update is pending.
    assert_eq!(
        only(ext.check(Some("2.0.0"), false).await.unwrap()),
        Outcome::NoUpdate
    );

    // The reboot into OS 2.0.0: the agent starts, the staged build becomes active (refresh and
    // health, no restart: the boot started the units with it), and the next check reports 3/2.
    let mut after = w.extensions("2.0.0", "boot-2").await;
    let out = after.reconcile().await;
    assert_eq!(
        only(out),
        Outcome::Activated {
            version: "1.1".into(),
            previous: Some("1.0".into())
        }
    );
    assert_eq!(w.host.refreshes().len(), refreshes + 1);
    assert_eq!(w.systemd.restarts().len(), restarts);
    let apps = after.app_requests(None);
    assert_eq!(apps[0].version.as_deref(), Some("1.1"));
    assert_eq!(apps[0].events[0].previousversion.as_deref(), Some("1.0"));
    assert_eq!(
        only(after.check(None, false).await.unwrap()),
        Outcome::NoUpdate
    );
    let last = w.events(EXT_APP).await.pop().unwrap();
    assert_eq!(
        (last.0, last.1, last.3.as_str(), last.4.as_str()),
        (3, 2, "1.0", "1.1")
    );
    assert!(after.app_requests(None)[0].events.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_rollback_restores_the_previous_extension_image() {
    let w = World::start().await;
    let mut ext = w.extensions("1.0.0", "boot-1").await;
    stage_for_os_2(&w, &mut ext).await;
    assert_eq!(w.host.link(), Some(w.host.image("1.1")));
    let restarts = w.systemd.restarts().len();

    // The new OS did not come up: the machine is back on 1.0.0 in a new boot.
    let mut after = w.extensions("1.0.0", "boot-2").await;
    assert_eq!(
        only(after.reconcile().await),
        Outcome::Restored {
            version: Some("1.0".into())
        }
    );
    assert_eq!(w.host.link(), Some(w.host.image("1.0")));
    assert_eq!(w.systemd.restarts().len(), restarts + 1);
    assert_eq!(w.host.image_files(), ["containerd-1.0.raw"]);
    assert_eq!(after.status(None)[0].state, ExtensionState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_os_update_unlinks_the_staged_build() {
    let w = World::start().await;
    let mut ext = w.extensions("1.0.0", "boot-1").await;
    stage_for_os_2(&w, &mut ext).await;
    // The OS update is no longer staged (e.g. a failed newer install overwrote the slot): the
    // next check without a target OS puts the link back (the server answers noupdate: the
    // staged build is installed, awaiting a reboot).
    assert_eq!(
        only(ext.check(None, false).await.unwrap()),
        Outcome::NoUpdate
    );
    assert_eq!(w.host.link(), Some(w.host.image("1.0")));
    assert_eq!(ext.status(None)[0].state, ExtensionState::Active);
    assert_eq!(w.host.image_files(), ["containerd-1.0.raw"]);
}
