//! One channel, one package of each format: Platte's agents and update_engine hosts in the same
//! group are each offered their own payload; each pointer keeps its format; a client whose
//! format has no pointer is held (`format`), counted like any other hold.

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::support::db::TestDb;
use super::{Env, FLATCAR, common, crau_file, platte_agent};
use crate::both_databases;

async fn one_channel_serves_each_client_its_own_format(db: TestDb) {
    let env = Env::new(&db).await;
    let platte = common::signed_payload(&env.key, FLATCAR, "3510.2.0", &common::image(20_000));
    let (st, platte) = env.publish("filename=p.payload", platte).await;
    assert_eq!(st, StatusCode::CREATED, "{platte}");
    let (st, crau) = env
        .publish(
            &format!("format=update_engine&app={FLATCAR}&version=3510.3.0&arch=amd64"),
            crau_file(),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{crau}");
    let (st, ch) = env
        .api(
            Method::POST,
            &format!("/apps/{FLATCAR}/channels"),
            Some(
                json!({"name": "stable", "packages": {"amd64": platte["id"]},
                "update_engine_packages": {"amd64": crau["id"]}}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{ch}");
    assert_eq!(
        (
            &ch["packages"]["amd64"],
            &ch["update_engine_packages"]["amd64"]
        ),
        (&platte["id"], &crau["id"]),
        "{ch}"
    );
    let (st, v) = env
        .api(
            Method::POST,
            &format!("/apps/{FLATCAR}/groups"),
            Some(json!({"name": "stable", "channel": "stable"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    // Each client kind gets its own format's release.
    let host = "0123456789abcdef0123456789abcdef";
    let uc = env.check(host, "3510.1.0").await;
    assert_eq!(uc.status.as_str(), "ok");
    let man = uc.target_manifest().unwrap();
    assert_eq!(
        (man.version.as_str(), man.packages[0].name.as_str()),
        ("3510.3.0", "update.gz")
    );
    let agent = "fedcba9876543210fedcba9876543210";
    let xml = env.omaha(platte_agent(agent, "3510.1.0")).await;
    assert!(
        xml.contains(r#"status="ok""#) && xml.contains(r#"version="3510.2.0""#),
        "{xml}"
    );
    assert!(xml.contains(r#"name="p.payload""#), "{xml}");

    // A pointer is kept by format: a wrong-format pointer is refused, and moving one format's
    // pointer leaves the other.
    let channel = format!("/apps/{FLATCAR}/channels/stable");
    let (st, v) = env
        .api(
            Method::PATCH,
            &channel,
            Some(json!({"update_engine_packages": {"amd64": platte["id"]}})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(
        v.to_string()
            .contains("is a platte payload, not update_engine"),
        "{v}"
    );
    let (st, v) = env
        .api(
            Method::PATCH,
            &channel,
            Some(json!({"update_engine_packages": {"amd64": null}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["packages"]["amd64"], platte["id"], "{v}");
    assert!(v.get("update_engine_packages").is_none(), "{v}");
    let (st, v) = env
        .api(
            Method::DELETE,
            &format!("/packages/{}", platte["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "a package in use stays: {v}");

    // The host's format has no pointer now: held for `format`, and counted as a hold.
    let other_host = "00112233445566778899aabbccddeeff";
    let uc = env.check(other_host, "3510.1.0").await;
    assert_eq!(uc.status.as_str(), "noupdate");
    let (st, inst) = env
        .api(Method::GET, &format!("/instances/{other_host}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{inst}");
    let inst = &inst["apps"][0]["instance"];
    assert_eq!(
        (&inst["status"], &inst["status_detail"]),
        (&json!("on_hold"), &json!("format")),
        "{inst}"
    );
    let metrics = common::metrics(&env.http, &env.base).await;
    let held: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("reason=\"format\""))
        .collect();
    assert!(!held.is_empty(), "no hold counted for format:\n{metrics}");
    // The channel listing shows both pointers' formats apart.
    let (st, list): (StatusCode, Value) = env
        .api(Method::GET, &format!("/apps/{FLATCAR}/channels"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list[0]["packages"]["amd64"], platte["id"], "{list}");
    env.server.shutdown().await.unwrap();
}

both_databases!(one_channel_serves_each_client_its_own_format);
