//! Several `update-server` processes (replicas) on one PostgreSQL database, as an operator runs
//! them behind a load balancer: they share the database and one data directory (packages and
//! tokens). Every rollout limit and the FleetLock semaphore stay exact across them, a change
//! made through one replica is served by the others within a second, and killing one with
//! SIGKILL under load loses no acknowledged write while its clients are served by the others.
//!
//! These tests need PostgreSQL (skipped with a banner without one, failed with
//! `PLATTE_REQUIRE_POSTGRES=1`); the same behaviour on SQLite is covered by `tests/rollout.rs`,
//! whose servers share one database file.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
#[path = "support/hostile.rs"]
mod hostile;
mod support {
    pub mod db;
}

use hostile::Server;
use support::db::TestDb;

const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

/// Three replicas on one throwaway PostgreSQL database and one data directory, with an app, a
/// channel `stable` at 2.0.0 and a group `stable` with `policy`, created through replica 0.
struct Fleet {
    replicas: Vec<Server>,
    http: reqwest::Client,
    token: String,
    /// The publisher key the replicas trust.
    key: payloads::SigningKey,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

impl Fleet {
    async fn new(policy: Value) -> Option<Self> {
        let db = TestDb::postgres().await?;
        let TestDb::Postgres(pg) = &db else {
            unreachable!("TestDb::postgres is PostgreSQL");
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let keys = dir.path().join("keys");
        let key = common::trusted_key(dir.path(), "release");
        let bin = env!("CARGO_BIN_EXE_update-server");
        let env = [
            ("UPDATE_SERVER_DATABASE", pg.url.clone()),
            ("UPDATE_SERVER_TRUSTED_KEYS", keys.display().to_string()),
            // Every test machine is new and comes from 127.0.0.1: the per-network limit on
            // new machines (tested in tests/rollout.rs) would hold all but two of them.
            (
                "UPDATE_SERVER_NEW_MACHINE_GRANTS_PER_NETWORK",
                "0".to_owned(),
            ),
            // Three replicas per test, and tests side by side, stay well under the database's
            // 100 connections.
            ("UPDATE_SERVER_DATABASE_MAX_CONNECTIONS", "8".to_owned()),
        ];
        // One at a time: the first creates the schema and the tokens the others read.
        let replicas: Vec<Server> = (0..3)
            .map(|_| Server::spawn_in(bin, None, &env, &data, None))
            .collect();
        let token = replicas[0].token.clone();
        let fleet = Self {
            replicas,
            http: reqwest::Client::new(),
            token,
            key,
            _dir: dir,
            _db: db,
        };
        fleet
            .api(0, "POST", "/apps", json!({"id": APP, "name": "OS"}))
            .await;
        let pkg = fleet.publish("2.0.0").await;
        let ch = json!({"name": "stable", "packages": {"amd64": pkg}});
        fleet
            .api(0, "POST", &format!("/apps/{APP}/channels"), ch)
            .await;
        let group = json!({"name": "stable", "channel": "stable", "policy": policy});
        fleet
            .api(0, "POST", &format!("/apps/{APP}/groups"), group)
            .await;
        fleet.settle().await;
        Some(fleet)
    }

    /// An admin request through replica `r` that must succeed; returns the body.
    async fn api(&self, r: usize, method: &str, path: &str, body: Value) -> Value {
        let (http, base, token) = (&self.http, &self.replicas[r].base, &self.token);
        let (st, v) = common::api(
            http,
            base,
            token,
            method.parse().unwrap(),
            path,
            (!body.is_null()).then_some(body),
        )
        .await;
        assert!(st.is_success(), "{method} {path} on replica {r}: {st} {v}");
        v
    }

    /// Waits until every replica serves the group (its catalogue snapshot caught up).
    async fn settle(&self) {
        let started = Instant::now();
        for r in 0..self.replicas.len() {
            loop {
                let (st, _) = common::api(
                    &self.http,
                    &self.replicas[r].base,
                    &self.token,
                    reqwest::Method::GET,
                    &format!("/apps/{APP}/groups/stable"),
                    None,
                )
                .await;
                if st == StatusCode::OK {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "replica {r} does not serve the group 5 s after it was created"
                );
                tokio::task::yield_now().await;
            }
        }
    }

    /// Publishes `version` through replica 0; returns the package id.
    async fn publish(&self, version: &str) -> Value {
        let payload = common::signed_payload(&self.key, APP, version, &common::image(20_000));
        let (st, pkg) = common::publish(
            &self.http,
            &self.replicas[0].base,
            &self.token,
            "update.payload",
            payload,
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{pkg}");
        pkg["id"].clone()
    }

    /// An update check of `machine` through replica `r`; `None` when the replica cannot be
    /// reached (killed), else whether it offered the update.
    async fn check(&self, r: usize, machine: &str) -> Option<bool> {
        let text = self.answer(r, machine).await?;
        Some(text.contains(r#"<updatecheck status="ok""#))
    }

    /// The answer to an update check of `machine` through replica `r` (`None`: unreachable).
    async fn answer(&self, r: usize, machine: &str) -> Option<String> {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="1.0.0_x86_64"></os>
<app appid="{{{APP}}}" version="1.0.0" track="stable" machineid="{machine}" board="amd64-usr"><ping r="1"></ping><updatecheck></updatecheck></app>
</request>"#
        );
        let resp = self
            .http
            .post(format!("{}/v1/update/", self.replicas[r].base))
            .header("content-type", "text/xml")
            .body(xml)
            .send()
            .await
            .ok()?;
        assert_eq!(resp.status(), StatusCode::OK, "replica {r}");
        resp.text().await.ok()
    }

    async fn rollout(&self, r: usize) -> Value {
        let (st, v) = common::api(
            &self.http,
            &self.replicas[r].base,
            &self.token,
            reqwest::Method::GET,
            &format!("/apps/{APP}/groups/stable/rollout"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }
}

/// 64 machines check at once, spread over three replicas, against `concurrency_limit` 5: exactly
/// 5 are granted, and a second wave grants nobody more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_concurrency_limit_is_exact_across_three_replicas() {
    let Some(fleet) = Fleet::new(json!({"concurrency_limit": 5})).await else {
        return;
    };
    for wave in 0..2 {
        let granted = join_all((0..64).map(|i| {
            let fleet = &fleet;
            async move { fleet.check(i % 3, &format!("m-{i:02}")).await.unwrap() }
        }))
        .await;
        let n = granted.iter().filter(|g| **g).count();
        assert_eq!(
            n, 5,
            "wave {wave}: {n} machines granted against a limit of 5"
        );
    }
    for r in 0..3 {
        assert_eq!(fleet.rollout(r).await["grants"]["in_flight"], 5);
    }
}

/// A rate limit of 3 per hour holds across replicas too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_is_exact_across_three_replicas() {
    let policy = json!({"rate_limit": {"count": 3, "period_secs": 3600}});
    let Some(fleet) = Fleet::new(policy).await else {
        return;
    };
    let granted = join_all((0..48).map(|i| {
        let fleet = &fleet;
        async move { fleet.check(i % 3, &format!("r-{i:02}")).await.unwrap() }
    }))
    .await;
    assert_eq!(granted.iter().filter(|g| **g).count(), 3);
}

/// 16 machines ask for the reboot slot at once over three replicas: exactly one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleetlock_semaphore_is_exact_across_three_replicas() {
    let Some(fleet) = Fleet::new(json!({})).await else {
        return;
    };
    let statuses = join_all((0..16).map(|i| {
        let fleet = &fleet;
        async move {
            fleet
                .http
                .post(format!(
                    "{}/fleetlock/v1/pre-reboot",
                    fleet.replicas[i % 3].base
                ))
                .header("fleet-lock-protocol", "true")
                .json(&json!({"client_params": {"id": format!("m{i}"), "group": "race"}}))
                .send()
                .await
                .unwrap()
                .status()
        }
    }))
    .await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 1, "{statuses:?}");
    let v = fleet
        .api(1, "GET", "/fleetlock/groups/race", Value::Null)
        .await;
    assert_eq!(v["holders"].as_array().unwrap().len(), 1, "{v}");
}

/// A pause made through replica 0 is answered by replicas 1 and 2 within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_through_one_replica_is_served_by_the_others_within_a_second() {
    let Some(fleet) = Fleet::new(json!({})).await else {
        return;
    };
    assert_eq!(fleet.check(1, "before").await, Some(true));
    let pause = format!("/apps/{APP}/groups/stable/rollout/pause");
    fleet.api(0, "POST", &pause, Value::Null).await;
    let paused_at = Instant::now();
    for r in [1, 2] {
        let mut i = 0;
        // A new machine each time: a granted one would be re-served its grant.
        while fleet.check(r, &format!("probe-{r}-{i}")).await == Some(true) {
            assert!(
                paused_at.elapsed() < Duration::from_secs(1),
                "replica {r} still grants a second after the pause"
            );
            i += 1;
            tokio::task::yield_now().await;
        }
    }
    let elapsed = paused_at.elapsed();
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(fleet.rollout(2).await["paused"], true);
}

/// A channel moved through replica 0 is served by replicas 1 and 2 within a second: nothing but
/// their catalogue snapshot (refreshed by the database's notification) says what the channel
/// points at.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_channel_moved_through_one_replica_is_served_by_the_others_within_a_second() {
    let Some(fleet) = Fleet::new(json!({})).await else {
        return;
    };
    let newer = fleet.publish("2.1.0").await;
    let moved = json!({"packages": {"amd64": newer}});
    fleet
        .api(0, "PATCH", &format!("/apps/{APP}/channels/stable"), moved)
        .await;
    let moved_at = Instant::now();
    for r in [1, 2] {
        let mut i = 0;
        // A new machine each time: a granted one would be re-served its grant.
        loop {
            let x = fleet.answer(r, &format!("probe-{r}-{i}")).await.unwrap();
            assert!(x.contains(r#"<updatecheck status="ok""#), "{x}");
            if x.contains(r#"version="2.1.0""#) {
                break;
            }
            assert!(
                moved_at.elapsed() < Duration::from_secs(1),
                "replica {r} still serves 2.0.0 a second after the channel moved"
            );
            i += 1;
            tokio::task::yield_now().await;
        }
    }
}

/// Under load from 90 machines, replica 2 is killed with SIGKILL while requests are in flight:
/// those it can no longer answer are retried on the next replica and served, and every grant a
/// machine was answered with is in the database afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_acknowledged_grant() {
    let Some(fleet) = Fleet::new(json!({})).await else {
        return;
    };
    let victim = fleet.replicas[2].pid();
    let answered = AtomicUsize::new(0);
    let killed = tokio::sync::Notify::new();
    let machines: Vec<String> = (0..90).map(|i| format!("k-{i:02}")).collect();
    let load = join_all(machines.iter().enumerate().map(|(i, m)| {
        let (fleet, answered, killed) = (&fleet, &answered, &killed);
        async move {
            // The second third of the machines starts once replica 2 is gone or going.
            if i >= 30 {
                killed.notified().await;
            }
            // The client's own retry: the next replica when one cannot be reached.
            for attempt in 0..3 {
                if let Some(granted) = fleet.check((i + attempt) % 3, m).await {
                    answered.fetch_add(1, Ordering::SeqCst);
                    return (granted, attempt);
                }
            }
            panic!("no replica answered {m}");
        }
    }));
    let kill = async {
        // Mid-load: after 20 answers, with the rest of the first 30 in flight.
        while answered.load(Ordering::SeqCst) < 20 {
            tokio::task::yield_now().await;
        }
        rustix::process::kill_process(victim, rustix::process::Signal::KILL).unwrap();
        killed.notify_waiters();
    };
    let (answers, ()) = tokio::join!(load, kill);
    assert!(
        answers.iter().all(|(granted, _)| *granted),
        "no limits: every machine is granted"
    );
    let retried = answers.iter().filter(|(_, attempts)| *attempts > 0).count();
    assert!(
        retried >= 10,
        "the killed replica's clients were retried: {retried}"
    );
    for r in [0, 1] {
        let st = fleet.rollout(r).await;
        assert_eq!(st["grants"]["in_flight"], 90, "replica {r}: {st}");
    }
}
