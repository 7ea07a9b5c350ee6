//! How an update ends. Applications that do not reboot (`completes_on = "install"`): Nebraska's
//! Go `updater` library sends 3/1 when done, then 3/2 without a previous version; such an
//! application's instance is complete at 3/1, in the instance list and in the rollout counts,
//! while an OS application still completes only on the first check after its reboot. And a
//! Flatcar host's rollback report refuses the version it left.

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::support::db::TestDb;
use super::{Env, FLATCAR, common, event, update_engine};
use crate::both_databases;

const ADDON: &str = "3c5e1b02-7f6d-4f43-9d57-0c2b1f1bd2c1";

/// A request as a Go `updater` client sends it for `ADDON`.
fn go_updater(machine: &str, version: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="go-omaha" updaterversion="go-omaha" ismachine="1">
<os platform="linux" version="6.1" arch="x86_64"></os>
<app appid="{{{ADDON}}}" version="{version}" track="stable" machineid="{machine}" board="amd64">{body}</app>
</request>"#
    )
}

async fn an_app_that_completes_on_install_is_complete_at_3_1(db: TestDb) {
    let env = Env::new(&db).await;
    let (st, v) = env
        .api(
            Method::POST,
            "/apps",
            Some(json!({"id": ADDON, "name": "Add-on", "completes_on": "sometimes"})),
        )
        .await;
    assert!(
        st.is_client_error(),
        "an unknown setting is refused: {st} {v}"
    );
    let (st, app) = env
        .api(
            Method::POST,
            "/apps",
            Some(json!({"id": ADDON, "name": "Add-on"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{app}");
    assert_eq!(app["completes_on"], "reboot", "the default: {app}");
    let app = env
        .cli(&["app", "set", ADDON, "--completes-on", "install"])
        .await
        .unwrap();
    assert_eq!(app["completes_on"], "install", "{app}");

    let payload = common::signed_payload(&env.key, ADDON, "2.0.0", &common::image(10_000));
    let (st, pkg) = env.publish("filename=addon.payload", payload).await;
    assert_eq!(st, StatusCode::CREATED, "{pkg}");
    for (path, body) in [
        (
            format!("/apps/{ADDON}/channels"),
            json!({"name": "stable", "packages": {"amd64": pkg["id"]}}),
        ),
        (
            format!("/apps/{ADDON}/groups"),
            json!({"name": "stable", "channel": "stable"}),
        ),
    ] {
        let (st, v) = env.api(Method::POST, &path, Some(body)).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }

    let m = "0123456789abcdef0123456789abcdef";
    let xml = env
        .omaha(go_updater(m, "1.0.0", "<updatecheck></updatecheck>"))
        .await;
    assert!(xml.contains(r#"status="ok""#), "{xml}");
    let status = |v: &Value| v["apps"][0]["instance"]["status"].clone();
    let path = format!("/instances/{m}");
    let instance = || env.api(Method::GET, &path, None);
    for (kind, result, want) in [
        (13, 1, "downloading"),
        (14, 1, "downloaded"),
        (3, 1, "complete"),
    ] {
        env.omaha(go_updater(m, "1.0.0", &event(kind, result, "")))
            .await;
        assert_eq!(status(&instance().await.1), want, "after {kind}/{result}");
    }
    // The library's 3/2 without a previous version, and the next check on the new version,
    // leave it complete.
    let body = format!("<updatecheck></updatecheck>{}", event(3, 2, ""));
    let xml = env.omaha(go_updater(m, "2.0.0", &body)).await;
    assert!(xml.contains(r#"status="noupdate""#), "{xml}");
    let (_, inst) = instance().await;
    assert_eq!(status(&inst), "complete", "{inst}");
    assert_eq!(inst["apps"][0]["instance"]["version"], "2.0.0", "{inst}");
    let (st, rollout) = env
        .api(
            Method::GET,
            &format!("/apps/{ADDON}/groups/stable/rollout"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{rollout}");
    assert!(rollout.to_string().contains(r#""complete":1"#), "{rollout}");

    // Set back to `reboot`, 3/1 is only installed again.
    let (st, app) = env
        .api(
            Method::PATCH,
            &format!("/apps/{ADDON}"),
            Some(json!({"completes_on": "reboot"})),
        )
        .await;
    assert_eq!(
        (st, &app["completes_on"]),
        (StatusCode::OK, &json!("reboot"))
    );
    let other = "fedcba9876543210fedcba9876543210";
    env.omaha(go_updater(other, "1.0.0", "<updatecheck></updatecheck>"))
        .await;
    env.omaha(go_updater(other, "1.0.0", &event(3, 1, "")))
        .await;
    let (_, inst) = env
        .api(Method::GET, &format!("/instances/{other}"), None)
        .await;
    assert_eq!(status(&inst), "installed", "{inst}");
    env.server.shutdown().await.unwrap();
}

both_databases!(an_app_that_completes_on_install_is_complete_at_3_1);

/// A Flatcar host whose new release failed to boot falls back to the old slot and reports the
/// failure as 3/0 with Flatcar's `RollbackError` (44, with the dev-server flag bit as a real
/// host sends it) naming the version it left: the server refuses that version for the machine
/// and offers it nothing until an operator retries.
async fn an_update_engine_rollback_refuses_the_version(db: TestDb) {
    let env = Env::new(&db).await;
    let (st, pkg) = env
        .publish(
            &format!("format=update_engine&app={FLATCAR}&version=3510.2.0&arch=amd64"),
            super::crau_file(),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{pkg}");
    super::point_stable_at(&env, &pkg["id"], true).await;
    let m = "0123456789abcdef0123456789abcdef";
    assert_eq!(env.check(m, "3510.1.0").await.status.as_str(), "ok");
    for (kind, result) in [(13, 1), (14, 1), (3, 1)] {
        env.omaha(update_engine(m, "3510.1.0", &event(kind, result, "")))
            .await;
    }
    // Back on 3510.1.0 after the failed boot.
    let rolled_back = format!(
        r#"<event eventtype="3" eventresult="0" errorcode="{}" previousversion="3510.2.0"></event>"#,
        44u32 | (1 << 28)
    );
    env.omaha(update_engine(m, "3510.1.0", &rolled_back)).await;
    let (st, inst) = env.api(Method::GET, &format!("/instances/{m}"), None).await;
    assert_eq!(st, StatusCode::OK, "{inst}");
    let app = &inst["apps"][0];
    assert_eq!(app["instance"]["status"], "error", "{inst}");
    assert_eq!(
        (
            &app["refused_versions"][0]["version"],
            &app["refused_versions"][0]["reason"]
        ),
        (&json!("3510.2.0"), &json!("rolled_back")),
        "{inst}"
    );
    assert_eq!(
        env.check(m, "3510.1.0").await.status.as_str(),
        "noupdate",
        "a refused version is not offered again"
    );
    env.server.shutdown().await.unwrap();
}

both_databases!(an_update_engine_rollback_refuses_the_version);
