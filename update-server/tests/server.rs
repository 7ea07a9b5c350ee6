//! Integration tests over real HTTP on loopback against a running server, each on SQLite and
//! on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};
use update_server::config::Settings;
use update_server::server::{RunningServer, start};
use update_server::store::Stores;

mod common;
mod support {
    pub mod db;
}
use support::db::TestDb;

const FLATCAR: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/omaha");

struct Env {
    _dir: tempfile::TempDir,
    server: RunningServer,
    http: reqwest::Client,
    base: String,
    payload: Vec<u8>,
    key: payloads::SigningKey,
}

/// A payload of `version` signed by a new key, trusted from `dir/keys`.
fn build_payload(dir: &Path, app: &str, version: &str) -> (Vec<u8>, payloads::SigningKey) {
    let key = common::trusted_key(dir, "release");
    (signed_payload(&key, app, version), key)
}

/// A payload of `version` signed by `key`.
fn signed_payload(key: &payloads::SigningKey, app: &str, version: &str) -> Vec<u8> {
    common::signed_payload(key, app, version, &common::image(200_000))
}

impl Env {
    async fn new(db: &TestDb) -> Self {
        Self::with(db, |_| {}).await
    }

    /// A server on `db` whose settings `tweak` adjusted.
    async fn with(db: &TestDb, tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (payload, key) = build_payload(dir.path(), FLATCAR, "3510.2.0");
        let mut s = db.settings(&dir.path().join("data"));
        s.trusted_keys = Some(dir.path().join("keys"));
        s.proxy_header = Some("x-forwarded-for".into());
        tweak(&mut s);
        let server = start(s).await.unwrap();
        let base = format!("http://{}", server.addr);
        Self {
            _dir: dir,
            server,
            http: reqwest::Client::new(),
            base,
            payload,
            key,
        }
    }

    /// Publishes `version` (signed by the trusted key) and points channel `stable` at it.
    async fn release(&self, version: &str) -> Value {
        self.release_image(version, &common::image(200_000)).await
    }

    /// Publishes `image` as `version` (signed by the trusted key) and points channel `stable`
    /// at it.
    async fn release_image(&self, version: &str, image: &[u8]) -> Value {
        let (st, pkg) = self
            .publish(common::signed_payload(&self.key, FLATCAR, version, image))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{pkg}");
        let (st, v) = self
            .api(
                reqwest::Method::PATCH,
                &format!("/apps/{FLATCAR}/channels/stable"),
                Some(json!({"packages": {"amd64": pkg["id"]}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        pkg
    }

    /// Publishes a payload as `flatcar_production_update.payload`.
    async fn publish(&self, payload: Vec<u8>) -> (StatusCode, Value) {
        common::publish(
            &self.http,
            &self.base,
            &self.server.admin_token,
            "flatcar_production_update.payload",
            payload,
        )
        .await
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

    /// App, published payload, channel `stable` → it, groups `stable` and `beta` following it.
    async fn seed(&self) -> Value {
        let (st, _) = self
            .api(
                reqwest::Method::POST,
                "/apps",
                Some(json!({"id": format!("{{{}}}", FLATCAR.to_uppercase()), "name": "Flatcar"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let (st, pkg) = self.publish(self.payload.clone()).await;
        assert_eq!(st, StatusCode::CREATED, "{pkg}");
        let (st, _) = self
            .api(
                reqwest::Method::POST,
                &format!("/apps/{FLATCAR}/channels"),
                Some(json!({"name": "stable", "packages": {"amd64": pkg["id"]}})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        for g in ["stable", "beta", "alpha"] {
            let (st, _) = self
                .api(
                    reqwest::Method::POST,
                    &format!("/apps/{FLATCAR}/groups"),
                    Some(json!({"name": g, "channel": "stable"})),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED);
        }
        pkg
    }

    async fn omaha(&self, body: impl Into<reqwest::Body>) -> (StatusCode, String) {
        common::omaha_post(
            &self.http,
            &self.base,
            body,
            &[("x-forwarded-for", "198.51.100.9, 203.0.113.7")],
        )
        .await
    }
}

fn check_xml(machine: &str, version: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" updaterversion="platte-agent-0.1.0" installsource="scheduler" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>
<app appid="{{{FLATCAR}}}" version="{version}" track="stable" bootid="{{b}}" oem="qemu" machineid="{machine}" machinealias="web-1" board="amd64-usr">{body}</app>
</request>"#
    )
}

async fn instance(env: &Env, machine: &str) -> Value {
    let (st, v) = env
        .api(reqwest::Method::GET, &format!("/instances/{machine}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["apps"][0].clone()
}

async fn full_event_sequence_moves_instance_through_states(db: TestDb) {
    let env = Env::new(&db).await;
    let pkg = env.seed().await;
    let m = "0123456789abcdef0123456789abcdef";
    let check = r#"<ping active="1"></ping><updatecheck></updatecheck><event eventtype="3" eventresult="2" previousversion=""></event>"#;

    let (st, xml) = env.omaha(check_xml(m, "3374.2.5", check)).await;
    assert_eq!(st, StatusCode::OK);
    let resp = omaha::parse_response(xml.as_bytes()).unwrap();
    let uc = resp.apps[0].updatecheck.as_ref().unwrap();
    assert_eq!(uc.status.as_str(), "ok");
    let codebase = &uc.urls[0];
    assert!(codebase.ends_with('/'), "{codebase}");
    assert!(codebase.starts_with(&env.base));
    let man = uc.target_manifest().unwrap();
    assert_eq!(man.version, "3510.2.0");
    let p = &man.packages[0];
    assert_eq!(p.name, "flatcar_production_update.payload");
    assert_eq!(p.size, env.payload.len() as u64);
    use sha2::Digest;
    let sha256: [u8; 32] = sha2::Sha256::digest(&env.payload).into();
    let sha1: [u8; 20] = sha1::Sha1::digest(&env.payload).into();
    assert_eq!(p.sha1().unwrap(), Some(sha1));
    assert_eq!(pkg["sha256_hex"], hex::encode(sha256));
    assert!(
        xml.contains(&format!("hash_sha256=\"{}\"", hex::encode(sha256))),
        "{xml}"
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(sha256);
    assert!(xml.contains(&format!("sha256=\"{b64}\"")), "{xml}");
    let i = instance(&env, m).await;
    assert_eq!(i["instance"]["status"], "granted");
    assert_eq!(i["instance"]["granted_version"], "3510.2.0");
    // The entry the proxy appended (rightmost), not what the client put before it.
    assert_eq!(i["instance"]["ip"], "203.0.113.7");
    assert_eq!(i["instance"]["alias"], "web-1");

    // The download itself is served byte-exact by the advertised URL.
    let url = format!("{codebase}{}", p.name);
    let body = env
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), env.payload.as_slice());

    for (ev, want) in [
        (
            r#"<event eventtype="13" eventresult="1"></event>"#,
            "downloading",
        ),
        (
            r#"<event eventtype="14" eventresult="1"></event>"#,
            "downloaded",
        ),
        (
            r#"<event eventtype="3" eventresult="1"></event>"#,
            "installed",
        ),
    ] {
        let (st, xml) = env.omaha(check_xml(m, "3374.2.5", ev)).await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            xml.contains(r#"<event status="ok">"#) || xml.contains(r#"<event status="ok"/>"#),
            "{xml}"
        );
        assert_eq!(instance(&env, m).await["instance"]["status"], want);
    }
    // Staged and awaiting reboot: a ping-only check is not a failure and changes nothing.
    env.omaha(check_xml(m, "3374.2.5", r#"<ping active="1"></ping>"#))
        .await;
    assert_eq!(instance(&env, m).await["instance"]["status"], "installed");

    // After the reboot: 3/2 with the previous version, running the new version.
    let after = r#"<ping active="1"></ping><updatecheck></updatecheck><event eventtype="3" eventresult="2" previousversion="3374.2.5"></event>"#;
    let (_, xml) = env.omaha(check_xml(m, "3510.2.0", after)).await;
    let resp = omaha::parse_response(xml.as_bytes()).unwrap();
    assert_eq!(
        resp.apps[0].updatecheck.as_ref().unwrap().status.as_str(),
        "noupdate"
    );
    let i = instance(&env, m).await;
    assert_eq!(i["instance"]["status"], "complete");
    assert_eq!(i["instance"]["version"], "3510.2.0");
    let hist: Vec<&str> = i["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        hist,
        [
            "complete",
            "installed",
            "downloaded",
            "downloading",
            "granted"
        ]
    );

    // An error with update_engine's non-production flag is decoded.
    let err = r#"<event eventtype="3" eventresult="0" errorcode="268435461"></event>"#;
    env.omaha(check_xml(m, "3510.2.0", err)).await;
    let i = instance(&env, m).await;
    assert_eq!(i["instance"]["status"], "error");
    assert_eq!(i["instance"]["error_code"], 268435461);
    assert!(
        i["instance"]["status_detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("postinstall"),
        "{i}"
    );
    let (_, events) = env
        .api(reqwest::Method::GET, &format!("/events?machine={m}"), None)
        .await;
    assert_eq!(events.as_array().unwrap().len(), 5);
    let metrics = common::metrics(&env.http, &env.base).await;
    assert!(
        metrics.contains(
            "platte_update_errors_total{app=\"e96281a6-d1af-4bde-9a0a-97b76e56dc57\",code=\"5\""
        ),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"error\"} 1"), "{metrics}");
    env.server.shutdown().await.unwrap();
}
both_databases!(full_event_sequence_moves_instance_through_states);

async fn every_update_engine_sample_gets_a_well_formed_answer(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed().await;
    let mut seen = 0;
    for entry in std::fs::read_dir(SAMPLES).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.contains("request") || !name.ends_with(".xml") {
            continue;
        }
        seen += 1;
        let body = std::fs::read(&path).unwrap();
        let parsed = omaha::parse_request(&body);
        let (st, xml) = env.omaha(body).await;
        let Ok(req) = parsed else {
            assert_eq!(st, StatusCode::BAD_REQUEST, "{name}");
            continue;
        };
        assert_eq!(st, StatusCode::OK, "{name}: {xml}");
        let resp =
            omaha::parse_response(xml.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}\n{xml}"));
        assert_eq!(resp.apps.len(), req.apps.len(), "{name}");
        for (q, a) in req.apps.iter().zip(&resp.apps) {
            assert_eq!(q.appid, a.appid, "{name}");
            let known = q.normalized_appid() == FLATCAR;
            if !known {
                assert_eq!(a.status.as_str(), "error-unknownApplication", "{name}");
                continue;
            }
            assert_eq!(a.events.len(), q.events.len(), "{name}");
            assert_eq!(a.ping.is_some(), q.ping.is_some(), "{name}");
            match &q.updatecheck {
                None => assert!(a.updatecheck.is_none(), "{name}"),
                Some(_) => {
                    let uc = a.updatecheck.as_ref().unwrap();
                    let groups = ["stable", "beta", "alpha"];
                    // The channel holds a Platte payload: update_engine is held from it
                    // (`format`), other clients are offered it.
                    let update_engine = req
                        .version
                        .as_deref()
                        .is_some_and(|v| v.starts_with("update_engine"));
                    let expect_ok =
                        !update_engine && groups.contains(&q.track.as_deref().unwrap_or(""));
                    assert_eq!(
                        uc.status.as_str(),
                        if expect_ok { "ok" } else { "noupdate" },
                        "{name}"
                    );
                    if expect_ok {
                        let m = uc.target_manifest().unwrap();
                        assert!(uc.urls[0].ends_with('/'));
                        assert!(m.postinstall().is_some());
                        assert!(m.packages[0].size > 0);
                    }
                }
            }
        }
    }
    assert!(seen >= 6, "only {seen} request samples found");
    // The update_engine sample registered its machine under the reported identity.
    let i = instance(&env, "abce671d61774703ac7be60715220bfe").await;
    assert_eq!(i["instance"]["oem"], "ami");
    assert_eq!(i["instance"]["track"], "alpha");
    env.server.shutdown().await.unwrap();
}
both_databases!(every_update_engine_sample_gets_a_well_formed_answer);

async fn multi_app_and_unknown_app_are_answered_independently(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed().await;
    let xml = format!(
        r#"<request protocol="3.0"><app appid="{FLATCAR}" version="3374.2.5" track="stable" machineid="m-multi" board="amd64-usr"><ping active="1"/><updatecheck/></app><app appid="{{11111111-2222-3333-4444-555555555555}}" version="1.0.0" track="stable" machineid="m-multi"><updatecheck/></app><app appid="{FLATCAR}" version="3374.2.5" track="nosuchgroup" machineid="m-multi2"><updatecheck/></app></request>"#
    );
    let (st, body) = env.omaha(xml).await;
    assert_eq!(st, StatusCode::OK);
    let r = omaha::parse_response(body.as_bytes()).unwrap();
    assert_eq!(r.apps.len(), 3);
    assert_eq!(
        r.apps[0].updatecheck.as_ref().unwrap().status.as_str(),
        "ok"
    );
    assert_eq!(r.apps[1].status.as_str(), "error-unknownApplication");
    assert_eq!(
        r.apps[2].updatecheck.as_ref().unwrap().status.as_str(),
        "noupdate"
    );
    env.server.shutdown().await.unwrap();
}
both_databases!(multi_app_and_unknown_app_are_answered_independently);

/// The `<updatecheck>` of the first app of an answer.
fn updatecheck(xml: &str) -> omaha::UpdateCheckResponse {
    let r = omaha::parse_response(xml.as_bytes()).unwrap();
    r.apps[0].updatecheck.clone().unwrap()
}

async fn staged_machine_is_offered_a_newer_release_never_the_same_one(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed().await;
    let m = "5eed0000000000000000000000000001";
    let check = r#"<ping active="1"></ping><updatecheck></updatecheck>"#;
    let (_, xml) = env.omaha(check_xml(m, "3374.2.5", check)).await;
    assert_eq!(
        updatecheck(&xml).target_manifest().unwrap().version,
        "3510.2.0"
    );
    for ev in ["13", "14", "3"] {
        let body = format!(r#"<event eventtype="{ev}" eventresult="1"></event>"#);
        env.omaha(check_xml(m, "3374.2.5", &body)).await;
    }
    assert_eq!(instance(&env, m).await["instance"]["status"], "installed");

    // Staged 3510.2.0, still the channel's version: noupdate, nothing to download again.
    let (_, xml) = env.omaha(check_xml(m, "3374.2.5", check)).await;
    assert_eq!(updatecheck(&xml).status.as_str(), "noupdate", "{xml}");
    assert_eq!(instance(&env, m).await["instance"]["status"], "installed");

    // The channel moves on, but the group is paused: the newer release is held, and the machine
    // keeps its `installed` status (its staged update is still there).
    let newer = env.release("3510.3.0").await;
    let group = format!("/apps/{FLATCAR}/groups/stable");
    let pause = |paused: bool| json!({"policy": {"paused": paused}});
    let (st, _) = env
        .api(reqwest::Method::PATCH, &group, Some(pause(true)))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, xml) = env.omaha(check_xml(m, "3374.2.5", check)).await;
    assert_eq!(updatecheck(&xml).status.as_str(), "noupdate", "{xml}");
    let i = instance(&env, m).await;
    assert_eq!(i["instance"]["status"], "installed", "{i}");
    assert_eq!(i["instance"]["granted_version"], "3510.2.0", "{i}");

    // Resumed: the newer release is granted through the policy and offered.
    let (st, _) = env
        .api(reqwest::Method::PATCH, &group, Some(pause(false)))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, xml) = env.omaha(check_xml(m, "3374.2.5", check)).await;
    let uc = updatecheck(&xml);
    assert_eq!(uc.status.as_str(), "ok", "{xml}");
    let man = uc.target_manifest().unwrap();
    assert_eq!(man.version, "3510.3.0");
    assert_eq!(
        man.packages[0]
            .sha256()
            .unwrap()
            .map(hex::encode)
            .as_deref(),
        newer["sha256_hex"].as_str()
    );
    let i = instance(&env, m).await;
    assert_eq!(i["instance"]["status"], "granted", "{i}");
    assert_eq!(i["instance"]["granted_version"], "3510.3.0", "{i}");

    // Once that one is staged too, the machine waits for its reboot again.
    for ev in ["13", "14", "3"] {
        let body = format!(r#"<event eventtype="{ev}" eventresult="1"></event>"#);
        env.omaha(check_xml(m, "3374.2.5", &body)).await;
    }
    let (_, xml) = env.omaha(check_xml(m, "3374.2.5", check)).await;
    assert_eq!(updatecheck(&xml).status.as_str(), "noupdate", "{xml}");
    assert_eq!(instance(&env, m).await["instance"]["status"], "installed");
    let metrics = common::metrics(&env.http, &env.base).await;
    assert!(
        metrics.contains(r#"outcome="noupdate_awaiting_reboot"} 2"#),
        "{metrics}"
    );

    // The machine reboots into 3510.3.0: that grant completes, and the superseded 3510.2.0 grant
    // is not counted as complete too.
    let rebooted = r#"<ping active="1"></ping><updatecheck></updatecheck><event eventtype="3" eventresult="2" previousversion="3374.2.5"></event>"#;
    env.omaha(check_xml(m, "3510.3.0", rebooted)).await;
    assert_eq!(instance(&env, m).await["instance"]["status"], "complete");
    let (st, g) = env.api(reqwest::Method::GET, &group, None).await;
    assert_eq!(st, StatusCode::OK, "{g}");
    let group_id = g["id"].as_str().unwrap().to_owned();
    env.server.shutdown().await.unwrap();
    // In the database (the only machine, so the group's counts are its grants): one grant per
    // version, the 3510.2.0 one superseded, the 3510.3.0 one complete.
    let mut stores = Stores::open(&db.settings(&env._dir.path().join("data")).database)
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut grants = vec![];
    for v in ["3510.2.0", "3510.3.0"] {
        let n = stores
            .rollouts
            .grant_stats(&group_id, v, now)
            .await
            .unwrap();
        grants.push((
            v,
            n.attempts,
            n.superseded,
            n.complete,
            n.in_flight + n.installed,
        ));
    }
    stores.close().await;
    assert_eq!(
        grants,
        [("3510.2.0", 1, 1, 0, 0), ("3510.3.0", 1, 0, 1, 0)],
        "(version, attempts, superseded, complete, open)"
    );
}
both_databases!(staged_machine_is_offered_a_newer_release_never_the_same_one);

async fn poll_interval_and_download_mirrors_are_sent_when_configured(db: TestDb) {
    // Not configured: no PollInterval, one URL (the server's).
    let env = Env::new(&db).await;
    env.seed().await;
    let check = "<updatecheck></updatecheck>";
    let (_, xml) = env.omaha(check_xml("m-plain", "3374.2.5", check)).await;
    let uc = updatecheck(&xml);
    assert_eq!(uc.poll_interval, None, "{xml}");
    assert!(!xml.contains("PollInterval"), "{xml}");
    assert_eq!(uc.urls.len(), 1);
    env.server.shutdown().await.unwrap();

    // A server of its own, on a database of its own.
    let other = db.another().await;
    let env = Env::with(&other, |s| {
        s.omaha.poll_interval_secs = Some(2700);
        s.omaha.download_mirrors = vec![
            "https://cdn.example/platte".into(),
            "http://mirror.example".into(),
        ];
    })
    .await;
    let pkg = env.seed().await;
    let sha = pkg["sha256_hex"].as_str().unwrap();
    // On an ok answer: PollInterval and the mirrors first, the server last.
    let (_, xml) = env.omaha(check_xml("m-1", "3374.2.5", check)).await;
    let uc = updatecheck(&xml);
    assert_eq!(uc.status.as_str(), "ok");
    assert_eq!(uc.poll_interval, Some(2700), "{xml}");
    assert_eq!(
        uc.urls,
        [
            format!("https://cdn.example/platte/packages/{sha}/"),
            format!("http://mirror.example/packages/{sha}/"),
            format!("{}/packages/{sha}/", env.base),
        ]
    );
    // On noupdate answers too (up to date; unknown group).
    let (_, xml) = env.omaha(check_xml("m-2", "3510.2.0", check)).await;
    let uc = updatecheck(&xml);
    assert_eq!(
        (uc.status.as_str(), uc.poll_interval),
        ("noupdate", Some(2700)),
        "{xml}"
    );
    let (_, xml) = env
        .omaha(check_xml("m-3", "3374.2.5", check).replace("track=\"stable\"", "track=\"nope\""))
        .await;
    let uc = updatecheck(&xml);
    assert_eq!(
        (uc.status.as_str(), uc.poll_interval),
        ("noupdate", Some(2700)),
        "{xml}"
    );
    env.server.shutdown().await.unwrap();
}
both_databases!(poll_interval_and_download_mirrors_are_sent_when_configured);

async fn paused_group_answers_noupdate_and_keeps_reason(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed().await;
    let (st, _) = env
        .api(
            reqwest::Method::PATCH,
            &format!("/apps/{FLATCAR}/groups/stable"),
            Some(json!({"policy": {"paused": true, "percentage": 10}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, body) = env
        .omaha(check_xml("m-hold", "3374.2.5", "<updatecheck/>"))
        .await;
    let r = omaha::parse_response(body.as_bytes()).unwrap();
    assert_eq!(
        r.apps[0].updatecheck.as_ref().unwrap().status.as_str(),
        "noupdate"
    );
    let i = instance(&env, "m-hold").await;
    assert_eq!(i["instance"]["status"], "on_hold");
    assert_eq!(i["instance"]["status_detail"], "paused");
    let (_, g) = env
        .api(
            reqwest::Method::GET,
            &format!("/apps/{FLATCAR}/groups/stable"),
            None,
        )
        .await;
    assert_eq!(
        g["policy"]["percentage"], 10,
        "unknown policy fields are stored for the policy engine"
    );
    env.server.shutdown().await.unwrap();
}
both_databases!(paused_group_answers_noupdate_and_keeps_reason);

async fn hostile_bodies_get_400_and_server_keeps_serving(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed().await;
    let big = format!(
        "<request protocol=\"3.0\">{}</request>",
        "<x/>".repeat(20_000)
    );
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]><request protocol="3.0">&b;</request>"#;
    for body in [big.into_bytes(), bomb.as_bytes().to_vec(), b"".to_vec(), b"<request".to_vec(), vec![0xff, 0xfe, 0x00], b"<request protocol=\"3.0\"><app appid=\"x\" version=\"1\"><event eventtype=\"zz\"/></app></request>".to_vec()] {
        let (st, text) = env.omaha(body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{text}");
        assert!(!text.is_empty());
    }
    let ok = env
        .http
        .get(format!("{}/healthz", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let (st, _) = env
        .omaha(check_xml("m-after", "3374.2.5", "<updatecheck/>"))
        .await;
    assert_eq!(st, StatusCode::OK);
    env.server.shutdown().await.unwrap();
}
both_databases!(hostile_bodies_get_400_and_server_keeps_serving);

async fn auth_failures(db: TestDb) {
    let env = Env::new(&db).await;
    let url = format!("{}/api/v1/apps", env.base);
    let r = env.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let r = env
        .http
        .get(&url)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = env
        .http
        .get(&url)
        .bearer_auth(&env.server.read_only_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = env
        .http
        .post(&url)
        .bearer_auth(&env.server.read_only_token)
        .json(&json!({"id": "x", "name": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "forbidden");
    let (st, v) = env.api(reqwest::Method::GET, "/apps/nope", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    env.server.shutdown().await.unwrap();
}
both_databases!(auth_failures);

/// A client still sending a large body when the server refuses it (an upload with a wrong
/// token, refused from its headers) gets the refusal, not a reset connection: the server shuts
/// its side and reads what is still coming before it closes (a lingering close), and the
/// answer says the connection closes.
async fn a_refused_upload_gets_its_answer_while_its_body_is_still_being_sent(db: TestDb) {
    const BODY: usize = 32 << 20;
    let env = Env::new(&db).await;
    let addr = env.base.trim_start_matches("http://").to_owned();
    let sent = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(&addr)?;
        write!(
            s,
            "POST /api/v1/packages HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer wrong-token-wrong-token\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {BODY}\r\n\r\n"
        )?;
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..BODY / chunk.len() {
            s.write_all(&chunk)?;
        }
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .await
    .unwrap();
    let answer = sent.expect("the whole body is sent and the answer read");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // And it is told the connection closes, so it sends no next request on it.
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    env.server.shutdown().await.unwrap();
}
both_databases!(a_refused_upload_gets_its_answer_while_its_body_is_still_being_sent);

async fn publish_refuses_bad_payloads_and_downloads_support_ranges(db: TestDb) {
    let env = Env::new(&db).await;
    let pkg = env.seed().await;
    let publish = |body: Vec<u8>| {
        env.http
            .post(format!("{}/api/v1/packages", env.base))
            .bearer_auth(&env.server.admin_token)
            .body(body)
            .send()
    };
    // Tampered data byte: refused.
    let mut bad = env.payload.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let r = publish(bad).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A delta payload, validly signed, of a version with no full package: not found (it is
    // linked to its full package, never served on its own).
    let (delta, _) = delta_payload(&env.key, "3600.0.0", &common::image(64 * 1024), "3601.0.0");
    let r = publish(delta).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let text = r.text().await.unwrap();
    assert!(text.contains("publish the full payload first"), "{text}");
    // Signed by an untrusted key: refused.
    let other = build_payload(tempfile::tempdir().unwrap().path(), FLATCAR, "3600.0.0").0;
    assert_eq!(
        publish(other).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Same version again: conflict.
    assert_eq!(
        publish(env.payload.clone()).await.unwrap().status(),
        StatusCode::CONFLICT
    );
    // Package in use cannot be deleted.
    let (st, _) = env
        .api(
            reqwest::Method::DELETE,
            &format!("/packages/{}", pkg["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);

    let url = format!(
        "{}/packages/{}/flatcar_production_update.payload",
        env.base,
        pkg["sha256_hex"].as_str().unwrap()
    );
    let len = env.payload.len();
    let r = env
        .http
        .get(&url)
        .header("range", "bytes=100-4195")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-4195/{len}").as_str()
    );
    assert_eq!(r.headers()["content-length"], "4096");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &env.payload[100..4196]);
    // Resume from an offset to the end.
    let r = env
        .http
        .get(&url)
        .header("range", format!("bytes={}-", len - 10))
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &env.payload[len - 10..]);
    let r = env
        .http
        .get(&url)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = env
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = env.http.head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    let r = env
        .http
        .get(format!(
            "{}/packages/{}/other-name",
            env.base,
            pkg["sha256_hex"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    env.server.shutdown().await.unwrap();
}
both_databases!(publish_refuses_bad_payloads_and_downloads_support_ranges);

/// The image of `version` in the delta tests: the seed's image (`common::image(200_000)`) with
/// a few bytes changed per version.
fn image_of(version: &str) -> Vec<u8> {
    let mut image = common::image(200_000);
    for (i, b) in version.bytes().enumerate() {
        image[4096 * (i + 1)] ^= b;
    }
    image
}

/// A delta from `source` (whose image is `from`) to `version` (image [`image_of`]), signed.
fn delta_payload(
    key: &payloads::SigningKey,
    source: &str,
    from: &[u8],
    version: &str,
) -> (Vec<u8>, Vec<u8>) {
    let to = image_of(version);
    let opts = payloads::DeltaOptions::new(testkit::release::options(FLATCAR, version), source);
    let (delta, _) =
        payloads::build_delta_to_vec(from, &to, std::slice::from_ref(key), &opts).unwrap();
    (delta, to)
}

/// The SHA-256 (hex) of the payload an answer's manifest offers.
fn offered_sha256(man: &omaha::Manifest) -> Option<String> {
    man.packages[0].sha256().unwrap().map(hex::encode)
}

/// An update check from `machine` on `version`, with `delta_okay` as given (absent if `None`).
fn delta_check(machine: &str, version: &str, delta_okay: Option<bool>) -> String {
    let attr = delta_okay.map_or(String::new(), |d| format!(r#" delta_okay="{d}""#));
    check_xml(
        machine,
        version,
        r#"<ping active="1"></ping><updatecheck></updatecheck>"#,
    )
    .replace(
        r#"board="amd64-usr">"#,
        &format!(r#"board="amd64-usr"{attr}>"#),
    )
}

async fn deltas_are_offered_on_their_source_version_only(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed().await;
    let seed_image = common::image(200_000);
    // 3510.3.0: its full payload, then a delta from the seed's 3510.2.0.
    let full = env.release_image("3510.3.0", &image_of("3510.3.0")).await;
    let (delta, _) = delta_payload(&env.key, "3510.2.0", &seed_image, "3510.3.0");
    // Published without naming anything: the manifest names app, version and arch.
    let r = env
        .http
        .post(format!("{}/api/v1/packages", env.base))
        .bearer_auth(&env.server.admin_token)
        .body(delta.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let linked: Value = r.json().await.unwrap();
    assert_eq!(linked["id"], full["id"], "the answer is the full package");
    let d = &linked["deltas"][0];
    assert_eq!(d["source_version"], "3510.2.0", "{linked}");
    assert_eq!(d["size"], delta.len());
    assert_eq!(
        d["filename"],
        format!("{FLATCAR}-3510.2.0-to-3510.3.0-amd64.payload")
    );
    let delta_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&delta));
    assert_eq!(d["sha256_hex"], delta_sha.as_str());
    // The same source again: conflict. A delta that builds another image than the full
    // package's: conflict, nothing stored.
    let (st, v) = env.publish(delta.clone()).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let mut other = seed_image.clone();
    other[100] ^= 1;
    let wrong = {
        let opts =
            payloads::DeltaOptions::new(testkit::release::options(FLATCAR, "3510.3.0"), "3510.1.0");
        payloads::build_delta_to_vec(&seed_image, &other, std::slice::from_ref(&env.key), &opts)
            .unwrap()
            .0
    };
    let (st, v) = env.publish(wrong).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("holds image"), "{v}");

    // A machine on the source version that takes deltas gets the delta, marked as one.
    let (_, xml) = env
        .omaha(delta_check(
            "de17a000000000000000000000000001",
            "3510.2.0",
            Some(true),
        ))
        .await;
    let uc = updatecheck(&xml);
    let man = uc.target_manifest().unwrap();
    assert_eq!(man.version, "3510.3.0", "{xml}");
    assert_eq!(
        offered_sha256(man).as_deref(),
        Some(delta_sha.as_str()),
        "{xml}"
    );
    assert_eq!(man.packages[0].size, delta.len() as u64);
    assert!(man.postinstall().unwrap().is_delta_payload, "{xml}");
    assert!(
        uc.urls[0].ends_with(&format!("/packages/{delta_sha}/")),
        "{xml}"
    );
    // The delta is downloadable under its codebase.
    let url = format!("{}{}", uc.urls[0], man.packages[0].name);
    let got = env.http.get(&url).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK, "{url}");
    assert_eq!(got.bytes().await.unwrap().as_ref(), delta.as_slice());
    let i = instance(&env, "de17a000000000000000000000000001").await;
    assert_eq!(i["instance"]["served_payload"], "delta", "{i}");

    // The full payload for a machine that does not say it takes deltas, says it does not, or
    // runs a version no delta starts from.
    for (machine, version, okay) in [
        ("de17a000000000000000000000000002", "3510.2.0", None),
        ("de17a000000000000000000000000003", "3510.2.0", Some(false)),
        ("de17a000000000000000000000000004", "3374.2.5", Some(true)),
    ] {
        let (_, xml) = env.omaha(delta_check(machine, version, okay)).await;
        let uc = updatecheck(&xml);
        let man = uc.target_manifest().unwrap();
        assert_eq!(
            offered_sha256(man).as_deref(),
            full["sha256_hex"].as_str(),
            "{machine}: {xml}"
        );
        assert!(!man.postinstall().unwrap().is_delta_payload, "{xml}");
        let i = instance(&env, machine).await;
        assert_eq!(i["instance"]["served_payload"], "full", "{i}");
    }

    // A machine downloading the full payload keeps it when it then says it takes deltas: a
    // switch would discard its download.
    let m2 = "de17a000000000000000000000000002";
    let started = r#"<event eventtype="13" eventresult="1"></event>"#;
    let (st, _) = env.omaha(check_xml(m2, "3510.2.0", started)).await;
    assert_eq!(st, StatusCode::OK);
    let (_, xml) = env.omaha(delta_check(m2, "3510.2.0", Some(true))).await;
    let man = updatecheck(&xml).target_manifest().unwrap().clone();
    assert_eq!(
        offered_sha256(&man).as_deref(),
        full["sha256_hex"].as_str(),
        "{xml}"
    );

    // The delta fails on the first machine (its source does not match): the agent reports it
    // as deferred with code 3105 (not a failure of the release) and asks again without deltas,
    // and is offered the full payload.
    let m = "de17a000000000000000000000000001";
    let failed = r#"<event eventtype="3" eventresult="9" errorcode="3105"></event>"#;
    let (st, _) = env.omaha(check_xml(m, "3510.2.0", failed)).await;
    assert_eq!(st, StatusCode::OK);
    let i = instance(&env, m).await;
    assert_eq!(i["instance"]["status"], "deferred", "{i}");
    let (_, xml) = env.omaha(delta_check(m, "3510.2.0", Some(false))).await;
    let uc = updatecheck(&xml);
    assert_eq!(
        uc.status.as_str(),
        "ok",
        "never stuck on a delta it cannot apply: {xml}"
    );
    let man = uc.target_manifest().unwrap();
    assert_eq!(
        offered_sha256(man).as_deref(),
        full["sha256_hex"].as_str(),
        "{xml}"
    );
    let i = instance(&env, m).await;
    assert_eq!(i["instance"]["served_payload"], "full", "{i}");
    let metrics = common::metrics(&env.http, &env.base).await;
    let app = FLATCAR;
    assert!(
        metrics.contains(&format!(
            r#"platte_update_payloads_offered_total{{app="{app}",payload="delta"}} 1"#
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            r#"platte_update_payloads_offered_total{{app="{app}",payload="full"}} 5"#
        )),
        "{metrics}"
    );

    // Deleted: no longer offered, no longer served.
    let path = format!("/packages/{}/deltas/3510.2.0", full["id"].as_str().unwrap());
    let (st, _) = env.api(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = env.api(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, xml) = env
        .omaha(delta_check(
            "de17a000000000000000000000000005",
            "3510.2.0",
            Some(true),
        ))
        .await;
    let man = updatecheck(&xml).target_manifest().unwrap().clone();
    assert_eq!(
        offered_sha256(&man).as_deref(),
        full["sha256_hex"].as_str(),
        "{xml}"
    );
    assert_eq!(
        env.http.get(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    env.server.shutdown().await.unwrap();
}
both_databases!(deltas_are_offered_on_their_source_version_only);

async fn instances_filter_delete_and_survive_restart(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = db.settings(&data);
    s.flush_interval = std::time::Duration::from_secs(60);
    let server = start(s.clone()).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let tok = server.admin_token.clone();
    http.post(format!("{base}/api/v1/apps"))
        .bearer_auth(&tok)
        .json(&json!({"id": FLATCAR, "name": "F"}))
        .send()
        .await
        .unwrap();
    for m in ["aaa1", "aaa2", "bbb3"] {
        let xml = check_xml(m, "3374.2.5", r#"<ping active="1"/>"#);
        assert_eq!(
            http.post(format!("{base}/v1/update"))
                .body(xml)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    // Pings are coalesced (flush interval 60 s): graceful shutdown must write them.
    server.shutdown().await.unwrap();
    let server = start(s).await.unwrap();
    let base = format!("http://{}", server.addr);
    let list: Value = http
        .get(format!("{base}/api/v1/instances?search=aaa"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 2);
    let list: Value = http
        .get(format!(
            "{base}/api/v1/instances?status=idle&version=3374.2.5"
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 3);
    let r = http
        .get(format!("{base}/api/v1/instances?status=bogus"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http
        .delete(format!("{base}/api/v1/instances/aaa1"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(format!("{base}/api/v1/instances/aaa1"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let list: Value = http
        .get(format!("{base}/api/v1/instances"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 2);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    server.shutdown().await.unwrap();
}
both_databases!(instances_filter_delete_and_survive_restart);

async fn committed_openapi_matches_the_server(db: TestDb) {
    let env = Env::new(&db).await;
    let served: Value = env
        .http
        .get(format!("{}/api/v1/openapi.json", env.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/usage/openapi.json"
    ))
    .expect(
        "docs/usage/openapi.json missing: run `update-server openapi > docs/usage/openapi.json`",
    );
    let committed: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(
        served, committed,
        "docs/usage/openapi.json is stale: run `cargo run -p update-server -- openapi > docs/usage/openapi.json`"
    );
    assert_eq!(update_server::openapi::document(), served);
    env.server.shutdown().await.unwrap();
}
both_databases!(committed_openapi_matches_the_server);
