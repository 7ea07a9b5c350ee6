//! What one client can make the server keep (metric series, stored event rows, in-memory and
//! stored instances), replayed against a server over loopback HTTP; and the checks on the way in
//! (`Content-Type` of Omaha posts, the `Bearer` scheme in any case). Each test runs on SQLite and
//! on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use update_server::server::{RunningServer, start};

mod common;
mod support {
    pub mod db;
}
use support::db::TestDb;

const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

struct Env {
    _dir: tempfile::TempDir,
    server: RunningServer,
    http: reqwest::Client,
    base: String,
}

impl Env {
    /// A server knowing one app (no groups or packages: events and pings are all that matter).
    async fn new(db: &TestDb) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = start(db.settings(&dir.path().join("data"))).await.unwrap();
        let base = format!("http://{}", server.addr);
        let env = Self {
            _dir: dir,
            server,
            http: reqwest::Client::new(),
            base,
        };
        let (st, v) = env
            .api(
                reqwest::Method::POST,
                "/apps",
                Some(json!({"id": APP, "name": "Flatcar"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        env
    }

    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        common::api(
            &self.http,
            &self.base,
            &self.server.admin_token,
            method,
            path,
            body,
        )
        .await
    }

    async fn omaha(&self, body: String) -> (StatusCode, String) {
        common::omaha_post(&self.http, &self.base, body, &[]).await
    }

    async fn metrics(&self) -> String {
        common::metrics(&self.http, &self.base).await
    }

    /// Stored event rows of `machine` (up to the API's page of 1000).
    async fn event_rows(&self, machine: &str) -> usize {
        let (st, v) = self
            .api(
                reqwest::Method::GET,
                &format!("/events?machine={machine}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v.as_array().unwrap().len()
    }

    async fn instance_count(&self) -> u64 {
        let (st, v) = self.api(reqwest::Method::GET, "/instances", None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v["total"].as_u64().unwrap()
    }
}

/// An Omaha request for `machine` running `version` with `body` inside its `<app>`.
fn request(machine: &str, version: &str, body: &str) -> String {
    format!(
        r#"<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1"><app appid="{{{APP}}}" version="{version}" track="stable" machineid="{machine}" board="amd64-usr"><ping active="1"></ping>{body}</app></request>"#
    )
}

/// Series of metric `name` in a Prometheus text exposition.
fn series(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .count()
}

/// The value of the one series of `name` whose labels contain `labels`.
fn value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn distinct_event_kinds_add_neither_series_nor_unbounded_rows(db: TestDb) {
    let env = Env::new(&db).await;
    let before = env.metrics().await;
    // The attack: 10 bodies of two `<app>`s with 64 events each (the parser's limit per app),
    // every one a distinct (eventtype, eventresult) pair nobody names: 1280 series and 1280
    // rows on the old code.
    let mut n = 0;
    let mut app = || {
        let events: String = (0..64)
            .map(|i| {
                n += 1;
                format!(
                    r#"<event eventtype="{}" eventresult="{}"></event>"#,
                    1000 + n,
                    100 + i
                )
            })
            .collect();
        format!(
            r#"<app appid="{APP}" version="1.0.0" machineid="attacker"><ping></ping>{events}</app>"#
        )
    };
    for r in 0..10 {
        let body = format!(r#"<request protocol="3.0">{}{}</request>"#, app(), app());
        let (st, answer) = env.omaha(body).await;
        assert_eq!(st, StatusCode::OK, "request {r}: {answer}");
        // Every event is acknowledged, applied or not.
        assert_eq!(
            answer.matches("<event status=\"ok\"").count(),
            128,
            "{answer}"
        );
    }
    let after = env.metrics().await;
    let events = series(&after, "platte_client_events_total");
    assert!(events <= 2, "{events} event series:\n{after}");
    assert_eq!(
        value(
            &after,
            "platte_client_events_total",
            r#"event_type="other",result="other""#
        ),
        640.0,
        "64 events applied per request"
    );
    assert_eq!(
        value(
            &after,
            "platte_client_events_dropped_total",
            r#"reason="request_cap""#
        ),
        640.0
    );
    assert_eq!(
        value(
            &after,
            "platte_client_events_dropped_total",
            r#"reason="machine_budget""#
        ),
        520.0,
        "640 applied, 120 stored"
    );
    assert_eq!(env.event_rows("attacker").await, 120, "the hourly budget");
    eprintln!(
        "/metrics: {} bytes before, {} after; {} stored event rows",
        before.len(),
        after.len(),
        env.event_rows("attacker").await
    );
    // A few new series (requests, the dropped counters), not one per pair (~100 KiB).
    assert!(after.len() < before.len() + 8192, "{}", after.len());

    // Beyond the budget an error still moves the lifecycle (and would settle a grant); it is
    // counted, not stored.
    let error = r#"<event eventtype="3" eventresult="0" errorcode="5"></event>"#;
    let (st, _) = env.omaha(request("attacker", "1.0.0", error)).await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = env
        .api(reqwest::Method::GET, "/instances/attacker", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["apps"][0]["instance"]["status"], "error", "{v}");
    assert_eq!(env.event_rows("attacker").await, 120);
    // Another machine has its own budget.
    let (st, _) = env.omaha(request("other-machine", "1.0.0", error)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(env.event_rows("other-machine").await, 1);
    env.server.shutdown().await.unwrap();
}
both_databases!(distinct_event_kinds_add_neither_series_nor_unbounded_rows);

async fn unknown_error_codes_and_invented_versions_stay_out_of_labels(db: TestDb) {
    let env = Env::new(&db).await;
    // 40 machines on 40 invented versions, each failing with its own unknown error code.
    for i in 0..40 {
        let body = format!(
            r#"<event eventtype="3" eventresult="0" errorcode="{}"></event>"#,
            50_000 + i
        );
        let (st, text) = env
            .omaha(request(&format!("m{i}"), &format!("9.9.{i}"), &body))
            .await;
        assert_eq!(st, StatusCode::OK, "{text}");
    }
    let text = env.metrics().await;
    let errors = series(&text, "platte_update_errors_total");
    assert_eq!(errors, 1, "one `other` series:\n{text}");
    assert!(text.contains(r#"code="other""#), "{text}");
    let instances = series(&text, "platte_instances");
    assert!(
        instances <= update_server::metrics::MAX_VERSION_LABELS + 1,
        "{instances} instance series:\n{text}"
    );
    assert!(text.contains(r#"version="other""#), "{text}");
    // Unknown HTTP methods and paths have one label each.
    for m in ["FROB", "ZAP", "QUUX"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        env.http
            .request(method, format!("{}/nowhere-{m}", env.base))
            .send()
            .await
            .unwrap();
    }
    let text = env.metrics().await;
    assert!(
        !text.contains("FROB") && !text.contains("nowhere"),
        "{text}"
    );
    assert!(
        text.contains(r#"endpoint="unmatched",method="other""#),
        "{text}"
    );
    env.server.shutdown().await.unwrap();
}
both_databases!(unknown_error_codes_and_invented_versions_stay_out_of_labels);

async fn long_or_odd_identities_are_refused_and_not_stored(db: TestDb) {
    let env = Env::new(&db).await;
    let long_id = "f".repeat(4096);
    for (machine, attribute) in [
        (long_id.as_str(), "machineid"),
        ("a b", "machineid"),
        ("m/../x", "machineid"),
    ] {
        let (st, text) = env
            .omaha(request(machine, "1.0.0", "<updatecheck></updatecheck>"))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(attribute), "{text}");
        assert!(text.len() < 512, "the reason is short: {}", text.len());
    }
    let long_alias = format!(
        r#"<request protocol="3.0"><app appid="{APP}" version="1.0.0" machineid="m1" machinealias="{}"><ping></ping></app></request>"#,
        "a".repeat(omaha::MAX_NAME_LEN + 1)
    );
    let (st, text) = env.omaha(long_alias).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("machinealias"), "{text}");
    let long_version = request("m1", &"1".repeat(omaha::MAX_ID_LEN + 1), "");
    let (st, text) = env.omaha(long_version).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("version"), "{text}");
    assert_eq!(env.instance_count().await, 0, "nothing was stored");
    // A machine id at the bound is fine.
    let (st, _) = env.omaha(request(&"f".repeat(128), "1.0.0", "")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(env.instance_count().await, 1);
    env.server.shutdown().await.unwrap();
}
both_databases!(long_or_odd_identities_are_refused_and_not_stored);

async fn omaha_posts_need_an_xml_content_type_or_none(db: TestDb) {
    let env = Env::new(&db).await;
    let body = request("ct", "1.0.0", "");
    let post = |ct: Option<&'static str>| {
        let mut r = env
            .http
            .post(format!("{}/v1/update/", env.base))
            .body(body.clone());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.send()
    };
    for ct in [
        None,
        Some("text/xml"),
        Some("text/xml; charset=utf-8"),
        Some("application/xml"),
        Some("Application/XML ; charset=UTF-8"),
    ] {
        let r = post(ct).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{ct:?}");
    }
    for ct in [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "text/xmlx",
    ] {
        let r = post(Some(ct)).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        let reason = r.text().await.unwrap();
        assert!(reason.contains("Content-Type"), "{reason}");
    }
    env.server.shutdown().await.unwrap();
}
both_databases!(omaha_posts_need_an_xml_content_type_or_none);

async fn the_bearer_scheme_is_matched_in_any_case(db: TestDb) {
    let env = Env::new(&db).await;
    let token = env.server.admin_token.clone();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = env
            .http
            .get(format!("{}/api/v1/apps", env.base))
            .header("authorization", format!("  {scheme}  {token} "))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
    let r = env
        .http
        .get(format!("{}/api/v1/apps", env.base))
        .header("authorization", format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    env.server.shutdown().await.unwrap();
}
both_databases!(the_bearer_scheme_is_matched_in_any_case);

async fn fleetlock_releases_in_invented_groups_add_no_series(db: TestDb) {
    let env = Env::new(&db).await;
    for i in 0..50 {
        let r = env
            .http
            .post(format!("{}/fleetlock/v1/steady-state", env.base))
            .header("fleet-lock-protocol", "true")
            .body(format!(
                r#"{{"client_params":{{"id":"m1","group":"invented-{i}"}}}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    let text = env.metrics().await;
    assert!(!text.contains("invented-"), "{text}");
    env.server.shutdown().await.unwrap();
}
both_databases!(fleetlock_releases_in_invented_groups_add_no_series);
