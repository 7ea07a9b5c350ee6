//! Staged rollouts over real HTTP: atomic limits under concurrent checks (also with two server
//! processes' worth of state sharing one SQLite file), release on install and on timeout, rate
//! windows, auto-halt and resume, and the downgrade marker.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use update_server::clock::ManualClock;
use update_server::config::Settings;
use update_server::rollout::RolloutEngine;
use update_server::server::{RunningServer, start_with};

const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const T0: i64 = 1_700_000_000;

fn payload(dir: &Path, version: &str) -> Vec<u8> {
    let keys_dir = dir.join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let key = payloads::keys::generate_signing_key();
    std::fs::write(
        keys_dir.join(format!("release-{version}.pub")),
        payloads::keys::public_key_pem(&key.verifying_key()),
    )
    .unwrap();
    let image: Vec<u8> = version.bytes().cycle().take(50_000).collect();
    let opts = payloads::BuildOptions::new(APP, version, "amd64", payloads::unix_now() - 10);
    payloads::build_to_vec(&image, &[key], &opts).unwrap().0
}

struct Env {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    servers: Vec<RunningServer>,
    http: reqwest::Client,
}

impl Env {
    /// One server, app, packages 2.0.0 (and 1.5.0), channel `stable` at `channel_version`, group
    /// `stable` with `policy`.
    async fn new(policy: Value, channel_version: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pays: Vec<(String, Vec<u8>)> = ["1.5.0", "2.0.0"]
            .iter()
            .map(|v| (v.to_string(), payload(dir.path(), v)))
            .collect();
        let clock = ManualClock::new(T0);
        let mut env = Self {
            clock,
            servers: vec![],
            http: reqwest::Client::new(),
            dir,
        };
        env.start_server().await;
        env.api(0, "POST", "/apps", json!({"id": APP, "name": "OS"}))
            .await;
        let mut ids = std::collections::BTreeMap::new();
        for (v, body) in pays {
            let s = &env.servers[0];
            let r = env
                .http
                .post(format!(
                    "http://{}/api/v1/packages?filename=update.payload",
                    s.addr
                ))
                .bearer_auth(&s.admin_token)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let p: Value = r.json().await.unwrap();
            ids.insert(v, p["id"].clone());
        }
        env.api(
            0,
            "POST",
            &format!("/apps/{APP}/channels"),
            json!({"name": "stable", "packages": {"amd64": ids[channel_version]}}),
        )
        .await;
        env.api(
            0,
            "POST",
            &format!("/apps/{APP}/groups"),
            json!({"name": "stable", "channel": "stable", "policy": policy}),
        )
        .await;
        env
    }

    async fn start_server(&mut self) {
        let mut s = Settings::for_tests(&self.dir.path().join("data"));
        s.trusted_keys = Some(self.dir.path().join("keys"));
        let clock: Arc<dyn update_server::clock::Clock> = self.clock.clone();
        self.servers
            .push(start_with(s, clock, Arc::new(RolloutEngine)).await.unwrap());
    }

    async fn api(&self, server: usize, method: &str, path: &str, body: Value) -> Value {
        let s = &self.servers[server];
        let mut r = self
            .http
            .request(
                method.parse().unwrap(),
                format!("http://{}/api/v1{path}", s.addr),
            )
            .bearer_auth(&s.admin_token);
        if !body.is_null() {
            r = r.json(&body);
        }
        let resp = r.send().await.unwrap();
        let st = resp.status();
        let text = resp.text().await.unwrap();
        assert!(st.is_success(), "{method} {path}: {st} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn omaha(&self, server: usize, machine: &str, version: &str, body: &str) -> String {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="update_engine-0.4.10" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>
<app appid="{{{APP}}}" version="{version}" track="stable" machineid="{machine}" board="amd64-usr">{body}</app>
</request>"#
        );
        let r = self
            .http
            .post(format!("http://{}/v1/update/", self.servers[server].addr))
            .body(xml)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }

    async fn check(&self, server: usize, machine: &str) -> bool {
        let x = self
            .omaha(
                server,
                machine,
                "1.0.0",
                "<ping r=\"1\"></ping><updatecheck></updatecheck>",
            )
            .await;
        x.contains(r#"status="ok""#) && x.contains("<manifest")
    }

    async fn event(&self, machine: &str, t: u32, r: u32) {
        self.omaha(
            0,
            machine,
            "1.0.0",
            &format!(r#"<event eventtype="{t}" eventresult="{r}"></event>"#),
        )
        .await;
    }

    async fn status(&self) -> Value {
        self.api(
            0,
            "GET",
            &format!("/apps/{APP}/groups/stable/rollout"),
            Value::Null,
        )
        .await
    }
}

async fn concurrent_checks(env: &Env, prefix: &str, n: usize) -> Vec<String> {
    let env_ref = &env;
    let futs = (0..n).map(|i| async move {
        let m = format!("{prefix}-{i:03}");
        let granted = env_ref.check(i % env_ref.servers.len(), &m).await;
        granted.then_some(m)
    });
    futures_util::future::join_all(futs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_limit_is_exact_across_two_servers_and_released_on_install() {
    let mut env = Env::new(json!({"concurrency_limit": 5}), "2.0.0").await;
    env.start_server().await; // a second server on the same database file
    let granted = concurrent_checks(&env, "m", 64).await;
    assert_eq!(granted.len(), 5, "granted: {granted:?}");
    // A granted machine is re-served its version without counting again.
    assert!(env.check(1, &granted[0]).await);
    assert_eq!(concurrent_checks(&env, "m", 64).await.len(), 5);

    // Two machines install (staged, awaiting reboot): their slots free up, they are not failures.
    for m in &granted[..2] {
        env.event(m, 13, 1).await;
        env.event(m, 14, 1).await;
        env.event(m, 3, 1).await;
    }
    let more = concurrent_checks(&env, "n", 64).await;
    assert_eq!(more.len(), 2, "{more:?}");
    let st = env.status().await;
    assert_eq!(st["grants"]["installed"], 2, "{st}");
    assert_eq!(st["grants"]["in_flight"], 5);
    assert_eq!(st["failure_rate"], 0.0);
    for s in env.servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_window_and_timeout_release() {
    let env = Env::new(
        json!({"rate_limit": {"count": 2, "period_secs": 3600}, "concurrency_limit": 2,
               "update_timeout_secs": 600}),
        "2.0.0",
    )
    .await;
    assert!(env.check(0, "a").await);
    assert!(env.check(0, "b").await);
    assert!(!env.check(0, "c").await);
    let x = env
        .omaha(0, "c", "1.0.0", "<updatecheck></updatecheck>")
        .await;
    assert!(x.contains("noupdate"));
    let inst = env.api(0, "GET", "/instances/c", Value::Null).await;
    assert_eq!(
        inst["apps"][0]["instance"]["status_detail"], "concurrency",
        "{inst}"
    );

    // "a" makes progress, "b" does not: after the timeout b's slot is free and b counts as failed.
    env.clock.advance(500);
    env.event("a", 13, 1).await;
    env.clock.advance(200);
    // The rate window (1 h) is still full: held for rate now.
    assert!(!env.check(0, "c").await);
    let inst = env.api(0, "GET", "/instances/c", Value::Null).await;
    assert_eq!(inst["apps"][0]["instance"]["status_detail"], "rate");
    env.clock.advance(3600);
    assert!(env.check(0, "c").await);
    let st = env.status().await;
    assert_eq!(
        st["grants"]["timed_out"], 2,
        "a and b both went silent: {st}"
    );
    assert_eq!(st["grants"]["in_flight"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_halt_trips_then_resume_is_explicit() {
    let env = Env::new(
        json!({"auto_halt": {"max_failure_rate": 0.25, "min_attempts": 8}}),
        "2.0.0",
    )
    .await;
    for i in 0..10 {
        assert!(env.check(0, &format!("h{i}")).await);
    }
    // Two failures of 10 (20 %) stay under the threshold; the third (30 %) halts.
    env.event("h0", 3, 0).await;
    env.event("h1", 3, 0).await;
    assert!(env.check(0, "late-1").await);
    env.event("h2", 3, 0).await;
    assert!(!env.check(0, "late-2").await);
    let st = env.status().await;
    let reason = st["halted"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("3 of 11"), "{reason}");
    let act = env.api(0, "GET", "/activity", Value::Null).await;
    assert!(act.to_string().contains("rollout_halted"), "{act}");
    let metrics = env
        .http
        .get(format!("http://{}/metrics", env.servers[0].addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("platte_rollout_halts_total{"), "{metrics}");
    assert!(metrics.contains("reason=\"halted\""));

    env.api(
        0,
        "POST",
        &format!("/apps/{APP}/groups/stable/rollout/resume"),
        Value::Null,
    )
    .await;
    assert!(env.status().await["halted"].is_null());
    assert!(env.check(0, "late-2").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_needs_allow_and_is_marked() {
    let env = Env::new(json!({}), "1.5.0").await;
    let newer = |m: &'static str| {
        let env = &env;
        async move {
            env.omaha(0, m, "2.0.0", "<updatecheck></updatecheck>")
                .await
        }
    };
    assert!(newer("d1").await.contains("noupdate"));
    env.api(
        0,
        "PATCH",
        &format!("/apps/{APP}/groups/stable"),
        json!({"policy": {"allow_downgrade": true}}),
    )
    .await;
    let x = newer("d1").await;
    assert!(x.contains(r#"_rollback="true""#), "{x}");
    assert!(x.contains(r#"version="1.5.0""#), "{x}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentage_preview_and_invalid_policy() {
    let env = Env::new(json!({"percentage": 0, "canaries": ["c-1"]}), "2.0.0").await;
    for i in 0..200 {
        env.check(0, &format!("p{i}")).await;
    }
    assert!(env.check(0, "c-1").await, "canary goes first at 0 %");
    let pv = env
        .api(
            0,
            "GET",
            &format!("/apps/{APP}/groups/stable/rollout/preview?percent=50&limit=500"),
            Value::Null,
        )
        .await;
    let added = pv["added"].as_u64().unwrap();
    assert!((70..130).contains(&added), "{pv}");
    env.api(
        0,
        "PATCH",
        &format!("/apps/{APP}/groups/stable"),
        json!({"policy": {"percentage": 50}}),
    )
    .await;
    let newly: Vec<String> = pv["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine_id"].as_str().unwrap().to_owned())
        .collect();
    for m in &newly {
        assert!(env.check(0, m).await, "{m} previewed but not granted");
    }
    let st = env.status().await;
    assert_eq!(st["on_hold"]["percentage"].as_u64().unwrap(), 200 - added);
    // An invalid policy is refused with a 400 naming the field.
    let r = env
        .http
        .patch(format!(
            "http://{}/api/v1/apps/{APP}/groups/stable",
            env.servers[0].addr
        ))
        .bearer_auth(&env.servers[0].admin_token)
        .json(&json!({"policy": {"percentage": 150}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("percentage"));
}
