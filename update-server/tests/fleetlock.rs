//! FleetLock server over real HTTP on loopback, each test on SQLite and on PostgreSQL: wire
//! format, semaphore semantics, concurrency, two servers sharing one database, persistence, and
//! the admin API with its tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use update_server::server::{RunningServer, start};

mod common;
mod support {
    pub mod db;
}
use common::api as admin;
use support::db::TestDb;

const PRE: &str = "fleetlock/v1/pre-reboot";
const STEADY: &str = "fleetlock/v1/steady-state";

fn base(s: &RunningServer) -> String {
    format!("http://{}", s.addr)
}

fn body(id: &str, group: &str) -> Value {
    json!({"client_params": {"id": id, "group": group}})
}

/// A FleetLock request exactly as Zincati sends it; returns status and parsed body (or Null).
async fn lock(
    http: &reqwest::Client,
    base: &str,
    op: &str,
    id: &str,
    group: &str,
) -> (StatusCode, Value) {
    let r = http
        .post(format!("{base}/{op}"))
        .header("fleet-lock-protocol", "true")
        .json(&body(id, group))
        .send()
        .await
        .unwrap();
    let st = r.status();
    let text = r.text().await.unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A server on `db` with data directory `data` (servers given the same `db` and `data` share
/// their database).
async fn server(db: &TestDb, data: &Path) -> RunningServer {
    start(db.settings(data)).await.unwrap()
}

async fn wire_format_reentrancy_and_idempotent_release(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&db, &dir.path().join("data")).await;
    let b = base(&s);
    let http = reqwest::Client::new();

    // Missing and wrong protocol header: 400 with FleetLock's error JSON.
    for header in [None, Some("false")] {
        let mut r = http.post(format!("{b}/{PRE}")).json(&body("m1", "default"));
        if let Some(h) = header {
            r = r.header("fleet-lock-protocol", h);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["kind"], "missing_protocol_header");
        assert!(v["value"].as_str().unwrap().contains("fleet-lock-protocol"));
        assert_eq!(v.as_object().unwrap().len(), 2, "only kind and value: {v}");
    }
    // Bad bodies and groups.
    let resp = http
        .post(format!("{b}/{PRE}"))
        .header("fleet-lock-protocol", "true")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.json::<Value>().await.unwrap()["kind"], "invalid_body");
    let (st, v) = lock(&http, &b, PRE, "m1", "no/slash").await;
    assert_eq!(
        (st, v["kind"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_group"))
    );
    let resp = http
        .post(format!("{b}/{PRE}"))
        .header("fleet-lock-protocol", "true")
        .body(vec![b' '; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.json::<Value>().await.unwrap()["kind"], "invalid_body");

    // Lock, re-lock (re-entrant), a second machine is refused with 409 failed_lock_semaphore_full.
    let (st, _) = lock(&http, &b, PRE, "m1", "default").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = lock(&http, &b, PRE, "m1", "default").await;
    assert_eq!(
        st,
        StatusCode::OK,
        "pre-reboot by the holder succeeds again"
    );
    let (st, v) = lock(&http, &b, PRE, "m2", "default").await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(v["kind"], "failed_lock_semaphore_full");
    assert!(!v["value"].as_str().unwrap().is_empty());
    // Groups are independent.
    let (st, _) = lock(&http, &b, PRE, "m2", "workers").await;
    assert_eq!(st, StatusCode::OK);

    // Release by a non-holder succeeds and changes nothing; by the holder frees the slot.
    let (st, _) = lock(&http, &b, STEADY, "m2", "default").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = lock(&http, &b, PRE, "m2", "default").await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = lock(&http, &b, STEADY, "m1", "default").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = lock(&http, &b, STEADY, "m1", "default").await;
    assert_eq!(st, StatusCode::OK, "release is idempotent");
    let (st, _) = lock(&http, &b, PRE, "m2", "default").await;
    assert_eq!(st, StatusCode::OK);

    // Steady-state also requires the header.
    let resp = http
        .post(format!("{b}/{STEADY}"))
        .json(&body("m2", "default"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Metrics: grants, denials and holders per group.
    let m = common::metrics(&http, &b).await;
    assert!(
        m.contains(r#"platte_fleetlock_requests_total{op="pre_reboot",result="granted"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"platte_fleetlock_requests_total{op="pre_reboot",result="denied"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"platte_fleetlock_requests_total{op="pre_reboot",result="already_held"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"platte_fleetlock_holders{group="default"} 1"#),
        "{m}"
    );
    s.shutdown().await.unwrap();
}
both_databases!(wire_format_reentrancy_and_idempotent_release);

/// `n` machines race for the `slots` of group `race` on a new server on `db`.
async fn race(db: &TestDb, slots: u32, n: usize) -> (usize, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let s = server(db, &dir.path().join("data")).await;
    let b = base(&s);
    let http = reqwest::Client::new();
    if slots != 1 {
        let (st, _) = admin(
            &http,
            &b,
            &s.admin_token,
            reqwest::Method::PATCH,
            "/fleetlock/groups/race",
            Some(json!({"slots": slots})),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
    let results = join_all((0..n).map(|i| {
        let http = http.clone();
        let b = b.clone();
        async move { lock(&http, &b, PRE, &format!("m{i}"), "race").await.0 }
    }))
    .await;
    assert!(
        results
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT),
        "{results:?}"
    );
    let ok = results.iter().filter(|s| **s == StatusCode::OK).count();
    let (_, v) = admin(
        &http,
        &b,
        &s.admin_token,
        reqwest::Method::GET,
        "/fleetlock/groups/race",
        None,
    )
    .await;
    let holders = v["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect();
    s.shutdown().await.unwrap();
    (ok, holders)
}

async fn concurrent_pre_reboots_get_exactly_the_slots(db: TestDb) {
    let (ok, holders) = race(&db, 1, 16).await;
    assert_eq!(ok, 1);
    assert_eq!(holders.len(), 1);
    let (ok, holders) = race(&db.another().await, 2, 16).await;
    assert_eq!(ok, 2);
    assert_eq!(holders.len(), 2);
}
both_databases!(concurrent_pre_reboots_get_exactly_the_slots);

async fn two_servers_share_the_semaphore_and_it_survives_restart(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = server(&db, &data).await;
    let b = server(&db, &data).await;
    let (ba, bb) = (base(&a), base(&b));
    let http = reqwest::Client::new();

    // Concurrent requests split across both replicas: exactly one holder overall.
    let results = join_all((0..12).map(|i| {
        let http = http.clone();
        let url = if i % 2 == 0 { ba.clone() } else { bb.clone() };
        async move { lock(&http, &url, PRE, &format!("m{i}"), "default").await.0 }
    }))
    .await;
    assert_eq!(
        results.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{results:?}"
    );
    let (_, v) = admin(
        &http,
        &bb,
        &b.admin_token,
        reqwest::Method::GET,
        "/fleetlock/groups",
        None,
    )
    .await;
    let holder = v[0]["holders"][0]["id"].as_str().unwrap().to_owned();
    // The holder's re-lock on the other replica is re-entrant; its release there frees the slot.
    let (st, _) = lock(&http, &bb, PRE, &holder, "default").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = lock(&http, &bb, STEADY, &holder, "default").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = lock(&http, &ba, PRE, "late", "default").await;
    assert_eq!(st, StatusCode::OK);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    // After a restart the holder is still there.
    let c = server(&db, &data).await;
    let bc = base(&c);
    let (st, _) = lock(&http, &bc, PRE, "other", "default").await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (_, v) = admin(
        &http,
        &bc,
        &c.admin_token,
        reqwest::Method::GET,
        "/fleetlock/groups",
        None,
    )
    .await;
    assert_eq!(v[0]["holders"][0]["id"], "late");
    c.shutdown().await.unwrap();
}
both_databases!(two_servers_share_the_semaphore_and_it_survives_restart);

async fn admin_list_set_release_with_auth(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&db, &dir.path().join("data")).await;
    let b = base(&s);
    let http = reqwest::Client::new();
    let (adm, ro) = (s.admin_token.clone(), s.read_only_token.clone());
    use reqwest::Method;

    let (st, _) = lock(&http, &b, PRE, "m1", "workers").await;
    assert_eq!(st, StatusCode::OK);

    // No token: 401. Read-only token may list but not change anything.
    let r = http
        .get(format!("{b}/api/v1/fleetlock/groups"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (st, v) = admin(&http, &b, &ro, Method::GET, "/fleetlock/groups", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v[0]["group"], "workers");
    assert_eq!(v[0]["slots"], 1);
    assert_eq!(v[0]["configured"], false);
    assert_eq!(v[0]["holders"][0]["id"], "m1");
    assert!(v[0]["holders"][0]["since"].as_i64().unwrap() > 0);
    let (st, _) = admin(
        &http,
        &b,
        &ro,
        Method::DELETE,
        "/fleetlock/groups/workers/holders/m1",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = admin(
        &http,
        &b,
        &ro,
        Method::PATCH,
        "/fleetlock/groups/workers",
        Some(json!({"slots": 3})),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Set slots: a second machine now gets in; 0 slots stops new locks.
    let (st, v) = admin(
        &http,
        &b,
        &adm,
        Method::PATCH,
        "/fleetlock/groups/workers",
        Some(json!({"slots": 2})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (v["slots"].as_u64(), v["configured"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(
        lock(&http, &b, PRE, "m2", "workers").await.0,
        StatusCode::OK
    );
    assert_eq!(
        lock(&http, &b, PRE, "m3", "workers").await.0,
        StatusCode::CONFLICT
    );
    let (st, _) = admin(
        &http,
        &b,
        &adm,
        Method::PATCH,
        "/fleetlock/groups/bad%2Fname",
        Some(json!({"slots": 2})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Force release: the slot frees up, it is in the activity feed; a second release is 404.
    let (st, _) = admin(
        &http,
        &b,
        &adm,
        Method::DELETE,
        "/fleetlock/groups/workers/holders/m1",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = admin(
        &http,
        &b,
        &adm,
        Method::DELETE,
        "/fleetlock/groups/workers/holders/m1",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(
        lock(&http, &b, PRE, "m3", "workers").await.0,
        StatusCode::OK
    );
    let (_, acts) = admin(&http, &b, &adm, Method::GET, "/activity", None).await;
    let kinds: Vec<&str> = acts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"fleetlock_force_released"), "{kinds:?}");
    assert!(kinds.contains(&"fleetlock_slots_set"), "{kinds:?}");
    let (_, v) = admin(
        &http,
        &b,
        &ro,
        Method::GET,
        "/fleetlock/groups/workers",
        None,
    )
    .await;
    let ids: Vec<&str> = v["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"m2") && ids.contains(&"m3"), "{ids:?}");
    s.shutdown().await.unwrap();
}
both_databases!(admin_list_set_release_with_auth);

async fn shared_secret_and_disabling(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = db.settings(&dir.path().join("data"));
    settings.fleetlock.token = Some("fleetlock-secret-0123456789".into());
    let s = start(settings.clone()).await.unwrap();
    let b = base(&s);
    let http = reqwest::Client::new();
    let (st, v) = lock(&http, &b, PRE, "m1", "default").await;
    assert_eq!(
        (st, v["kind"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let r = http
        .post(format!("{b}/{PRE}"))
        .header("fleet-lock-protocol", "true")
        .bearer_auth("fleetlock-secret-0123456789")
        .json(&body("m1", "default"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.shutdown().await.unwrap();

    settings.fleetlock.token = None;
    settings.fleetlock.enabled = false;
    let s = start(settings).await.unwrap();
    let (st, v) = lock(&http, &base(&s), STEADY, "m1", "default").await;
    assert_eq!(
        (st, v["kind"].as_str()),
        (StatusCode::NOT_FOUND, Some("fleetlock_disabled"))
    );
    // The admin API still shows the held slot, so an operator can release it.
    let (st, v) = admin(
        &http,
        &base(&s),
        &s.admin_token,
        reqwest::Method::GET,
        "/fleetlock/groups",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v[0]["holders"][0]["id"], "m1");
    s.shutdown().await.unwrap();
}
both_databases!(shared_secret_and_disabling);
