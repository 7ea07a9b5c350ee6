//! Machine credentials over real HTTP: trust on first use, groups that require a credential,
//! key mismatches, stale and replayed signatures, operator enrollment, and unsigned
//! update_engine hosts in groups that do not require one. Time is a manual clock; each test runs
//! on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey};
use omaha::credential::{HEADER_NAME, MachineSignature, STATUS_HEADER_NAME, signed_message};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use update_server::clock::ManualClock;
use update_server::config::Settings;
use update_server::rollout::RolloutEngine;
use update_server::server::{RunningServer, start_with};

mod common;
mod support {
    pub mod db;
}
use support::db::TestDb;

const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const T0: i64 = 1_765_000_000;
const M: &str = "0123456789abcdef0123456789abcdef";

struct Env {
    _dir: tempfile::TempDir,
    server: RunningServer,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
    base: String,
}

impl Env {
    /// A server (settings adjusted by `tweak`) with version 2.0.0 on channel `stable`, followed
    /// by group `secure` (credential required) and group `open` (the default: optional).
    async fn new(db: &TestDb, tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = common::trusted_key(dir.path(), "release");
        let payload = common::signed_payload(&key, APP, "2.0.0", &common::image(50_000));
        let mut s = db.settings(&dir.path().join("data"));
        s.trusted_keys = Some(dir.path().join("keys"));
        tweak(&mut s);
        let clock = ManualClock::new(T0);
        let c: Arc<dyn update_server::clock::Clock> = clock.clone();
        let server = start_with(s, c, Arc::new(RolloutEngine)).await.unwrap();
        let env = Self {
            _dir: dir,
            base: format!("http://{}", server.addr),
            server,
            clock,
            http: reqwest::Client::new(),
        };
        env.ok(Method::POST, "/apps", json!({"id": APP, "name": "OS"}))
            .await;
        let (st, pkg) = common::publish(
            &env.http,
            &env.base,
            &env.server.admin_token,
            "update.payload",
            payload,
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{pkg}");
        env.ok(
            Method::POST,
            &format!("/apps/{APP}/channels"),
            json!({"name": "stable", "packages": {"amd64": pkg["id"]}}),
        )
        .await;
        env.ok(
            Method::POST,
            &format!("/apps/{APP}/groups"),
            json!({"name": "secure", "channel": "stable",
                   "policy": {"machine_credential": "required"}}),
        )
        .await;
        env.ok(
            Method::POST,
            &format!("/apps/{APP}/groups"),
            json!({"name": "open", "channel": "stable"}),
        )
        .await;
        env
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
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

    async fn ok(&self, method: Method, path: &str, body: Value) -> Value {
        let (st, v) = self.api(method.clone(), path, Some(body)).await;
        assert!(st.is_success(), "{method} {path}: {st} {v}");
        v
    }

    /// Posts `body`, signed by `key` at `ts` when given.
    async fn post(&self, body: &str, sig: Option<(&SigningKey, i64)>) -> (StatusCode, String) {
        let header = sig.map(|(k, ts)| sign(k, ts, body.as_bytes()));
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| vec![(HEADER_NAME, h)])
            .unwrap_or_default();
        common::omaha_post(&self.http, &self.base, body.to_owned(), &headers).await
    }

    /// Posts `body` with `headers`; the answer's status, its `Platte-Machine-Signature-Status`
    /// header and its body.
    async fn post_raw(
        &self,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, String) {
        let mut r = self
            .http
            .post(format!("{}/v1/update/", self.base))
            .header("content-type", "text/xml");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.body(body.to_owned()).send().await.unwrap();
        let status = r
            .headers()
            .get(STATUS_HEADER_NAME)
            .map(|v| v.to_str().unwrap().to_owned());
        (r.status(), status, r.text().await.unwrap())
    }

    /// Posts `body` signed by `key` at `ts`; the answer's status header and body.
    async fn post_signed(&self, body: &str, key: &SigningKey, ts: i64) -> (Option<String>, String) {
        let header = sign(key, ts, body.as_bytes());
        let (st, status, xml) = self.post_raw(body, &[(HEADER_NAME, &header)]).await;
        assert_eq!(st, StatusCode::OK, "{xml}");
        (status, xml)
    }

    async fn metric(&self, outcome: &str) -> u64 {
        let text = common::metrics(&self.http, &self.base).await;
        let prefix = format!("platte_machine_credential_requests_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    async fn status(&self, machine: &str) -> Value {
        let (st, v) = self
            .api(Method::GET, &format!("/instances/{machine}"), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v["apps"][0]["instance"]["status"].clone()
    }
}

/// The header value of `body` signed by `key` at `ts`, exactly as docs/development/protocol.md describes.
fn sign(key: &SigningKey, ts: i64, body: &[u8]) -> String {
    let digest: [u8; 32] = Sha256::digest(body).into();
    MachineSignature {
        public_key: key.verifying_key().to_bytes(),
        timestamp: ts,
        signature: key.sign(&signed_message(ts, &digest)).to_bytes(),
    }
    .to_header_value()
}

fn public(key: &SigningKey) -> String {
    STANDARD.encode(key.verifying_key().to_bytes())
}

fn request(machine: &str, track: &str, version: &str, inner: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" installsource="scheduler" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>
<app appid="{{{APP}}}" version="{version}" track="{track}" machineid="{machine}" board="amd64-usr">{inner}</app>
</request>"#
    )
}

fn check(machine: &str, track: &str) -> String {
    request(
        machine,
        track,
        "1.0.0",
        r#"<ping active="1"></ping><updatecheck></updatecheck>"#,
    )
}

/// The `<updatecheck status>` of the only app of an answer.
fn update_status(xml: &str) -> String {
    let resp = omaha::parse_response(xml.as_bytes()).unwrap();
    resp.apps[0]
        .updatecheck
        .as_ref()
        .unwrap()
        .status
        .as_str()
        .to_owned()
}

async fn first_use_binds_the_key_and_a_required_group_ignores_everyone_else(db: TestDb) {
    let env = Env::new(&db, |_| {}).await;
    let agent = SigningKey::from_bytes(&[1; 32]);

    // The agent's first signed check binds its key and gets the update.
    let (st, xml) = env.post(&check(M, "secure"), Some((&agent, T0))).await;
    assert_eq!(st, StatusCode::OK, "{xml}");
    assert_eq!(update_status(&xml), "ok");
    let (st, cred) = env
        .api(Method::GET, &format!("/instances/{M}/credential"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{cred}");
    assert_eq!(cred["public_key"], public(&agent));
    assert_eq!(cred["source"], "first_use");
    assert_eq!(env.status(M).await, "granted");

    // A forged unsigned request claiming the machine, reporting a failure: acknowledged, not
    // counted (no error status, no stored event), and no update.
    let forged = request(
        M,
        "secure",
        "1.0.0",
        r#"<updatecheck></updatecheck><event eventtype="3" eventresult="0" errorcode="268435464"></event>"#,
    );
    let (st, xml) = env.post(&forged, None).await;
    assert_eq!(st, StatusCode::OK, "{xml}");
    assert_eq!(update_status(&xml), "noupdate");
    let resp = omaha::parse_response(xml.as_bytes()).unwrap();
    assert_eq!(resp.apps[0].events.len(), 1, "the event is acknowledged");
    assert_eq!(env.status(M).await, "granted", "the forged 3/0 was applied");
    let (_, events) = env
        .api(Method::GET, &format!("/events?machine={M}"), None)
        .await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event_result"] != 0),
        "{events}"
    );

    // The same forgery, signed with another key: counted as unsigned, so ignored here.
    let thief = SigningKey::from_bytes(&[2; 32]);
    let (status, xml) = env.post_signed(&forged, &thief, T0).await;
    assert_eq!(status.as_deref(), Some("key_mismatch"));
    assert_eq!(update_status(&xml), "noupdate");
    assert_eq!(env.status(M).await, "granted");

    // Naming another track (an optional group, or none at all) does not escape the
    // requirement of the group the server has the machine in.
    for track in ["open", "no-such-group"] {
        let escape = request(
            M,
            track,
            "1.0.0",
            r#"<event eventtype="3" eventresult="0" errorcode="268435464"></event>"#,
        );
        let (st, xml) = env.post(&escape, None).await;
        assert_eq!(st, StatusCode::OK, "{xml}");
        assert_eq!(
            env.status(M).await,
            "granted",
            "{track}: the forged 3/0 was applied"
        );
    }
    let (_, inst) = env.api(Method::GET, &format!("/instances/{M}"), None).await;
    assert!(
        !inst["apps"][0]["instance"]["group_id"].is_null(),
        "the forgery moved the machine out of its group: {inst}"
    );

    // The real agent's report of the same failure counts.
    let report = request(
        M,
        "secure",
        "1.0.0",
        r#"<event eventtype="3" eventresult="0" errorcode="268435464"></event>"#,
    );
    let (st, _) = env.post(&report, Some((&agent, T0 + 1))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(env.status(M).await, "error");

    assert_eq!(env.metric("valid").await, 2);
    assert_eq!(env.metric("none").await, 3);
    assert_eq!(env.metric("key_mismatch").await, 1);
    let text = common::metrics(&env.http, &env.base).await;
    assert!(
        text.contains("platte_machine_credential_ignored_checkins_total 4"),
        "{text}"
    );
    assert!(
        text.contains("platte_client_events_dropped_total{reason=\"unauthenticated\"} 4"),
        "{text}"
    );
}
both_databases!(first_use_binds_the_key_and_a_required_group_ignores_everyone_else);

async fn bad_stale_and_replayed_signatures_authenticate_nothing(db: TestDb) {
    let env = Env::new(&db, |_| {}).await;
    let agent = SigningKey::from_bytes(&[1; 32]);
    let body = check(M, "secure");
    let ignored = |status: Option<String>, want: &str, xml: &str| {
        assert_eq!(status.as_deref(), Some(want), "{xml}");
        assert_eq!(update_status(xml), "noupdate", "{xml}");
    };

    // A body changed after signing.
    let header = sign(&agent, T0, body.as_bytes());
    let (st, status, xml) = env
        .post_raw(&body.replace("1.0.0", "1.0.1"), &[(HEADER_NAME, &header)])
        .await;
    assert_eq!(st, StatusCode::OK);
    ignored(status, "bad_signature", &xml);
    // Garbage in the header.
    let (st, status, xml) = env
        .post_raw(&body, &[(HEADER_NAME, "v=1; key=AAAA; ts=1; sig=AAAA")])
        .await;
    assert_eq!(st, StatusCode::OK);
    ignored(status, "bad_signature", &xml);
    assert_eq!(env.metric("bad_signature").await, 2);
    // Nothing was bound by the failures.
    let (st, _) = env
        .api(Method::GET, &format!("/instances/{M}/credential"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Outside the skew, either way.
    let (status, xml) = env.post_signed(&body, &agent, T0 - 301).await;
    ignored(status, "stale", &xml);
    let (status, xml) = env.post_signed(&body, &agent, T0 + 301).await;
    ignored(status, "stale", &xml);

    // Inside it, but older than the last accepted timestamp of the key.
    env.clock.advance(60);
    let (status, xml) = env.post_signed(&body, &agent, T0 + 50).await;
    assert_eq!(status.as_deref(), Some("valid"));
    assert_eq!(update_status(&xml), "ok", "{xml}");
    let (status, xml) = env.post_signed(&body, &agent, T0 + 40).await;
    ignored(status, "stale", &xml);
    assert_eq!(env.metric("stale").await, 3);
    let (status, _) = env.post_signed(&body, &agent, T0 + 50).await;
    assert_eq!(
        status.as_deref(),
        Some("valid"),
        "the same second again is fine"
    );

    // In a group that does not require a credential, a failed one is an unsigned check-in:
    // a host with a wrong clock still gets its update there.
    let other = "fedcba9876543210fedcba9876543210";
    let (status, xml) = env
        .post_signed(&check(other, "open"), &agent, T0 - 3600)
        .await;
    assert_eq!(status.as_deref(), Some("stale"));
    assert_eq!(update_status(&xml), "ok", "{xml}");
    // An unsigned request carries no status header.
    let (_, status, _) = env.post_raw(&check(other, "open"), &[]).await;
    assert_eq!(status, None);
}
both_databases!(bad_stale_and_replayed_signatures_authenticate_nothing);

async fn operators_enroll_and_forget_keys_when_first_use_is_off(db: TestDb) {
    let env = Env::new(&db, |s| s.machine_credentials.trust_on_first_use = false).await;
    let agent = SigningKey::from_bytes(&[1; 32]);
    let path = format!("/instances/{M}/credential");

    // Signed but not enrolled: unauthenticated, so a required group holds it.
    let (st, xml) = env.post(&check(M, "secure"), Some((&agent, T0))).await;
    assert_eq!(st, StatusCode::OK, "{xml}");
    assert_eq!(update_status(&xml), "noupdate");
    assert_eq!(env.metric("unenrolled").await, 1);
    let (st, _) = env.api(Method::GET, &path, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Bad keys are refused.
    for bad in ["nope", &STANDARD.encode([1u8; 31])] {
        let (st, v) = env
            .api(Method::PUT, &path, Some(json!({"public_key": bad})))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    }
    let cred = env
        .ok(Method::PUT, &path, json!({"public_key": public(&agent)}))
        .await;
    assert_eq!(cred["source"], "enrolled");
    let (st, xml) = env.post(&check(M, "secure"), Some((&agent, T0 + 1))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(update_status(&xml), "ok");

    // The read-only token may look but not enroll.
    let (st, _) = common::api(
        &env.http,
        &env.base,
        &env.server.read_only_token,
        Method::PUT,
        &path,
        Some(json!({"public_key": public(&agent)})),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Forgotten: unauthenticated again (and a second forget finds nothing).
    let (st, _) = env.api(Method::DELETE, &path, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = env.api(Method::DELETE, &path, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, xml) = env.post(&check(M, "secure"), Some((&agent, T0 + 2))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(update_status(&xml), "noupdate");
    let (_, activity) = env.api(Method::GET, "/activity", None).await;
    let kinds: Vec<&str> = activity
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"machine_credential_enrolled"), "{kinds:?}");
    assert!(kinds.contains(&"machine_credential_forgotten"), "{kinds:?}");
}
both_databases!(operators_enroll_and_forget_keys_when_first_use_is_off);

async fn unsigned_update_engine_hosts_keep_working_in_optional_groups(db: TestDb) {
    let env = Env::new(&db, |_| {}).await;
    let other = "fedcba9876543210fedcba9876543210";
    let (st, xml) = env.post(&check(other, "open"), None).await;
    assert_eq!(st, StatusCode::OK, "{xml}");
    assert_eq!(update_status(&xml), "ok");
    assert_eq!(env.status(other).await, "granted");
    // ... and not in a group that requires a credential.
    let (_, xml) = env.post(&check(M, "secure"), None).await;
    assert_eq!(update_status(&xml), "noupdate");
    let (st, _) = env.api(Method::GET, &format!("/instances/{M}"), None).await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "an ignored check-in registers nothing"
    );
    // The group setting is validated and shown.
    let (st, v) = env
        .api(
            Method::POST,
            &format!("/apps/{APP}/groups"),
            Some(json!({"name": "x", "policy": {"machine_credential": "sometimes"}})),
        )
        .await;
    assert!(st.is_client_error(), "{st} {v}");
    let (_, g) = env
        .api(Method::GET, &format!("/apps/{APP}/groups/secure"), None)
        .await;
    assert_eq!(g["policy"]["machine_credential"], "required", "{g}");
}
both_databases!(unsigned_update_engine_hosts_keep_working_in_optional_groups);
