//! Retention over real HTTP with a manual clock, each test on SQLite and on PostgreSQL: old
//! events, history and activity go and recent ones stay; a forgotten instance disappears with its
//! refusals and grants; a machine with a grant in flight is kept; the rollout counts of the
//! current target survive a prune; a dry run deletes nothing and counts the same rows; a prune
//! bigger than a batch takes several; the background pruner runs at start; a prune while another
//! server process holds the retention lease is refused (409) until the lease expires (on
//! PostgreSQL: until its session ends); `update-server prune` and its access rules.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use update_server::clock::ManualClock;
use update_server::config::Settings;
use update_server::retention::LEASE;
use update_server::retention::RetentionSettings;
use update_server::rollout::RolloutEngine;
use update_server::server::{RunningServer, start_with};
use update_server::store::Stores;
use update_server::store::retention::LeaseOutcome;

mod common;
mod support {
    pub mod db;
}
use support::db::TestDb;

const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const T0: i64 = 1_700_000_000;
const DAY: i64 = 86_400;

struct Env {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    server: Option<RunningServer>,
    http: reqwest::Client,
    /// Package id by version.
    packages: BTreeMap<String, Value>,
    /// The test's database (last: dropped after the server).
    db: TestDb,
}

/// Retention for tests: no background pruner unless asked, the rest as given.
fn retention(
    events: u32,
    history: u32,
    activity: u32,
    grants: u32,
    forget: u32,
) -> RetentionSettings {
    let days = |d: u32| (d > 0).then_some(d);
    RetentionSettings {
        events_days: days(events),
        history_days: days(history),
        activity_days: days(activity),
        grants_days: days(grants),
        forget_instances_after_days: days(forget),
        interval: None,
        batch_size: 1000,
    }
}

impl Env {
    /// A server on `db` with `retention`, an app with packages 1.5.0 and 2.0.0, channel `stable`
    /// at `channel_version`, and group `stable` following it.
    async fn new(db: TestDb, retention: RetentionSettings, channel_version: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = common::trusted_key(dir.path(), "release");
        let mut env = Self {
            clock: ManualClock::new(T0),
            server: None,
            http: reqwest::Client::new(),
            dir,
            packages: BTreeMap::new(),
            db,
        };
        env.start(retention).await;
        env.api("POST", "/apps", json!({"id": APP, "name": "OS"}))
            .await;
        for v in ["1.5.0", "2.0.0"] {
            let body = common::signed_payload(&key, APP, v, &common::image(20_000));
            let (st, p) =
                common::publish(&env.http, &env.base(), &env.token(), "u.payload", body).await;
            assert_eq!(st, StatusCode::CREATED, "{p}");
            env.packages.insert(v.to_owned(), p["id"].clone());
        }
        env.api(
            "POST",
            &format!("/apps/{APP}/channels"),
            json!({"name": "stable", "packages": {"amd64": env.packages[channel_version]}}),
        )
        .await;
        env.api(
            "POST",
            &format!("/apps/{APP}/groups"),
            json!({"name": "stable", "channel": "stable"}),
        )
        .await;
        env
    }

    /// The settings of the test's servers (before their retention).
    fn settings(&self) -> Settings {
        self.db.settings(&self.dir.path().join("data"))
    }

    async fn start(&mut self, retention: RetentionSettings) {
        let mut s = self.settings();
        s.trusted_keys = Some(self.dir.path().join("keys"));
        s.retention = retention;
        let clock: Arc<dyn update_server::clock::Clock> = self.clock.clone();
        self.server = Some(start_with(s, clock, Arc::new(RolloutEngine)).await.unwrap());
    }

    async fn restart(&mut self, retention: RetentionSettings) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
        self.start(retention).await;
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    fn base(&self) -> String {
        format!("http://{}", self.server().addr)
    }

    fn token(&self) -> String {
        self.server().admin_token.clone()
    }

    /// An admin request that must succeed; returns the parsed body.
    async fn api(&self, method: &str, path: &str, body: Value) -> Value {
        let (st, v) = self.try_api(method, path, body).await;
        assert!(st.is_success(), "{method} {path}: {st} {v}");
        v
    }

    async fn try_api(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        common::api(
            &self.http,
            &self.base(),
            &self.token(),
            method.parse().unwrap(),
            path,
            (!body.is_null()).then_some(body),
        )
        .await
    }

    /// One Omaha request of `machine` running `version`; returns the answer.
    async fn omaha(&self, machine: &str, version: &str, body: &str) -> String {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>
<app appid="{{{APP}}}" version="{version}" track="stable" machineid="{machine}" board="amd64-usr">{body}</app>
</request>"#
        );
        let (st, text) = common::omaha_post(&self.http, &self.base(), xml, &[]).await;
        assert_eq!(st, StatusCode::OK, "{text}");
        text
    }

    /// An update check of `machine` on `version`; true when it was offered an update.
    async fn check(&self, machine: &str, version: &str) -> bool {
        let x = self
            .omaha(
                machine,
                version,
                r#"<ping r="1"></ping><updatecheck></updatecheck>"#,
            )
            .await;
        x.contains(r#"status="ok""#) && x.contains("<manifest")
    }

    async fn event(&self, machine: &str, version: &str, event: &str) {
        self.omaha(machine, version, event).await;
    }

    /// Check, download, install, reboot into `to`: the whole sequence, from 1.0.0.
    async fn update(&self, machine: &str, to: &str) {
        assert!(self.check(machine, "1.0.0").await, "{machine} not granted");
        for (t, r) in [(13, 1), (14, 1), (3, 1)] {
            let e = format!(r#"<event eventtype="{t}" eventresult="{r}"></event>"#);
            self.event(machine, "1.0.0", &e).await;
        }
        let done = r#"<event eventtype="3" eventresult="2" previousversion="1.0.0"></event>"#;
        self.event(machine, to, done).await;
    }

    async fn prune(&self, dry_run: bool) -> Value {
        let q = if dry_run { "?dry_run=true" } else { "" };
        self.api("POST", &format!("/maintenance/prune{q}"), Value::Null)
            .await
    }

    async fn events_of(&self, machine: &str) -> Vec<Value> {
        let v = self
            .api(
                "GET",
                &format!("/events?machine={machine}&limit=1000"),
                Value::Null,
            )
            .await;
        v.as_array().unwrap().clone()
    }

    async fn machines(&self) -> Vec<String> {
        let v = self.api("GET", "/instances?limit=1000", Value::Null).await;
        let mut m: Vec<String> = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["machine_id"].as_str().unwrap().to_owned())
            .collect();
        m.sort();
        m
    }

    async fn status(&self) -> Value {
        self.api(
            "GET",
            &format!("/apps/{APP}/groups/stable/rollout"),
            Value::Null,
        )
        .await
    }

    async fn metrics(&self) -> String {
        common::metrics(&self.http, &self.base()).await
    }
}

/// The report without what differs between two runs of the same prune (times, batches).
fn rows(report: &Value) -> Value {
    report["rows"].clone()
}

/// The value of the metric line starting with `prefix` (`name{labels}`).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn old_rows_go_recent_ones_stay_and_a_dry_run_deletes_nothing(db: TestDb) {
    let env = Env::new(db, retention(90, 90, 30, 90, 0), "2.0.0").await;
    // `a` fails once (an activity entry), then updates; `b` updates; all at T0.
    assert!(env.check("a", "1.0.0").await);
    let err = r#"<event eventtype="3" eventresult="0" errorcode="9"></event>"#;
    env.event("a", "1.0.0", err).await;
    env.update("a", "2.0.0").await;
    env.update("b", "2.0.0").await;
    let old_a = env.events_of("a").await.len();
    assert_eq!(old_a, 5, "error, 13/1, 14/1, 3/1, 3/2");
    // 100 days later `c` updates.
    env.clock.advance(100 * DAY);
    env.update("c", "2.0.0").await;
    let history_a = env.api("GET", "/instances/a", Value::Null).await["apps"][0]["history"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        history_a >= 5,
        "granted, error, granted, downloading, … complete"
    );

    let dry = env.prune(true).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["batches"], 0);
    assert_eq!(
        env.events_of("a").await.len(),
        old_a,
        "a dry run deletes nothing"
    );
    assert_eq!(dry["rows"]["events"], 9, "a's 5 and b's 4 events: {dry}");
    assert_eq!(
        dry["rows"]["activity"], 6,
        "the setup's 5 entries (app, 2 packages, channel, group) and a's failure: {dry}"
    );
    assert_eq!(dry["rows"]["instances"], 0, "forgetting is off");
    assert_eq!(dry["cutoffs"]["events_before"], T0 + 10 * DAY);
    assert_eq!(dry["cutoffs"]["forget_instances_before"], Value::Null);

    let real = env.prune(false).await;
    assert_eq!(
        rows(&real),
        rows(&dry),
        "the dry run counted what the run deleted"
    );
    assert_eq!(real["dry_run"], false);
    assert!(real["batches"].as_u64().unwrap() >= 3, "{real}");
    assert!(env.events_of("a").await.is_empty());
    assert!(env.events_of("b").await.is_empty());
    assert_eq!(env.events_of("c").await.len(), 4, "recent events stay");
    // Every instance is still known, each with its newest status.
    assert_eq!(env.machines().await, ["a", "b", "c"]);
    let a = env.api("GET", "/instances/a", Value::Null).await;
    let history = a["apps"][0]["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["status"], "complete");
    assert_eq!(a["apps"][0]["instance"]["status"], "complete");
    let c_history = env.api("GET", "/instances/c", Value::Null).await["apps"][0]["history"]
        .as_array()
        .unwrap()
        .len();
    assert!(c_history >= 4, "recent history stays");
    let activity = env.api("GET", "/activity?limit=1000", Value::Null).await;
    assert!(
        !activity
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "instance_update_failed"),
        "{activity}"
    );
    // Nothing left to prune; the rollout still counts every machine.
    assert_eq!(env.prune(false).await["total"], 0);
    let st = env.status().await;
    assert_eq!(st["grants"]["complete"], 3, "{st}");

    let m = env.metrics().await;
    assert_eq!(
        metric(&m, r#"platte_retention_pruned_rows_total{table="events"}"#),
        Some(9.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"platte_retention_runs_total{result="ok"}"#),
        Some(2.0),
        "dry runs are not counted"
    );
    assert_eq!(
        metric(&m, "platte_retention_last_run_timestamp_seconds"),
        Some((T0 + 100 * DAY) as f64)
    );
    assert!(metric(&m, "platte_retention_last_run_duration_seconds").is_some());
}
both_databases!(old_rows_go_recent_ones_stay_and_a_dry_run_deletes_nothing);

/// Installs 2.0.0, then reports that it fell back from it (3/0, code 44).
async fn rolled_back_from_2_0_0(env: &Env, machine: &str) {
    assert!(env.check(machine, "1.0.0").await);
    for (t, r) in [(13, 1), (14, 1), (3, 1)] {
        let e = format!(r#"<event eventtype="{t}" eventresult="{r}"></event>"#);
        env.event(machine, "1.0.0", &e).await;
    }
    let code = 44 | (1 << 28);
    let e = format!(
        r#"<event eventtype="3" eventresult="0" errorcode="{code}" previousversion="2.0.0"></event>"#
    );
    env.event(machine, "1.0.0", &e).await;
}

async fn a_forgotten_instance_disappears_with_its_refusals_and_grants(db: TestDb) {
    let env = Env::new(db, retention(90, 90, 365, 90, 7), "1.5.0").await;
    // `gone` updated to 1.5.0 once, then rolled back from 2.0.0; `stays` updated to 2.0.0.
    env.update("gone", "1.5.0").await;
    let stable = format!("/apps/{APP}/channels/stable");
    env.api(
        "PATCH",
        &stable,
        json!({"packages": {"amd64": env.packages["2.0.0"]}}),
    )
    .await;
    rolled_back_from_2_0_0(&env, "gone").await;
    env.update("stays", "2.0.0").await;
    let refused =
        env.api("GET", "/instances/gone", Value::Null).await["apps"][0]["refused_versions"].clone();
    assert_eq!(refused[0]["version"], "2.0.0", "{refused}");
    let before = env.status().await;
    assert_eq!(before["machines"], 2);
    assert_eq!(
        (&before["grants"]["attempts"], &before["grants"]["failed"]),
        (&json!(2), &json!(1))
    );

    // Eight days on, only `stays` checks in.
    env.clock.advance(8 * DAY);
    assert!(!env.check("stays", "2.0.0").await);
    let dry = env.prune(true).await;
    let report = env.prune(false).await;
    assert_eq!(rows(&report), rows(&dry));
    assert_eq!(report["rows"]["instances"], 1, "{report}");
    assert_eq!(report["rows"]["refused_versions"], 1, "{report}");
    assert_eq!(
        report["rows"]["rollout_grants"], 1,
        "the 1.5.0 grant: {report}"
    );
    assert!(report["rows"]["events"].as_u64().unwrap() >= 8, "{report}");
    assert!(report["rows"]["instance_status_history"].as_u64().unwrap() >= 8);

    assert_eq!(env.machines().await, ["stays"]);
    let (st, _) = env.try_api("GET", "/instances/gone", Value::Null).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(env.events_of("gone").await.is_empty());
    let (st, v) = env
        .try_api("POST", "/instances/gone/retry", Value::Null)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "no refusal is left: {v}");
    // The rollout of 2.0.0 still counts `gone`'s failed attempt; it is no longer a machine of
    // the group.
    let after = env.status().await;
    assert_eq!(after["grants"], before["grants"], "{after}");
    assert_eq!(after["machines"], 1);
    let m = env.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"platte_retention_pruned_rows_total{table="instances"}"#
        ),
        Some(1.0)
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("platte_instances{") && l.contains("status=\"error\"")),
        "{m}"
    );
    // Back again, it is a new machine: its refusal went with it (docs/usage/server.md, Retention).
    assert!(env.check("gone", "1.0.0").await);
    assert_eq!(env.machines().await, ["gone", "stays"]);
}
both_databases!(a_forgotten_instance_disappears_with_its_refusals_and_grants);

async fn a_machine_with_a_grant_in_flight_is_kept_however_old(db: TestDb) {
    let env = Env::new(db, retention(1, 1, 1, 1, 7), "2.0.0").await;
    assert!(
        env.check("busy", "1.0.0").await,
        "granted 2.0.0, never heard of again"
    );
    assert!(!env.check("current", "2.0.0").await, "up to date, no grant");
    env.clock.advance(30 * DAY);
    let report = env.prune(false).await;
    assert_eq!(report["rows"]["instances"], 1, "only `current`: {report}");
    assert_eq!(env.machines().await, ["busy"]);
    let busy = env.api("GET", "/instances/busy", Value::Null).await;
    assert_eq!(busy["apps"][0]["instance"]["status"], "granted");
    assert_eq!(
        busy["apps"][0]["history"].as_array().unwrap().len(),
        1,
        "its newest status stays"
    );
    let st = env.status().await;
    assert_eq!(
        st["grants"]["in_flight"], 1,
        "the grant holds its slot: {st}"
    );
    assert_eq!(env.prune(false).await["total"], 0);
}
both_databases!(a_machine_with_a_grant_in_flight_is_kept_however_old);

async fn the_rollout_counts_of_the_current_target_survive_an_aggressive_prune(db: TestDb) {
    let env = Env::new(db, retention(1, 1, 1, 1, 7), "2.0.0").await;
    env.update("complete", "2.0.0").await;
    assert!(env.check("in-flight", "1.0.0").await);
    assert!(env.check("installed", "1.0.0").await);
    for (t, r) in [(13, 1), (14, 1), (3, 1)] {
        let e = format!(r#"<event eventtype="{t}" eventresult="{r}"></event>"#);
        env.event("installed", "1.0.0", &e).await;
    }
    assert!(env.check("failed", "1.0.0").await);
    let err = r#"<event eventtype="3" eventresult="0" errorcode="9"></event>"#;
    env.event("failed", "1.0.0", err).await;
    assert!(env.check("deferred", "1.0.0").await);
    let defer = r#"<event eventtype="3" eventresult="9"></event>"#;
    env.event("deferred", "1.0.0", defer).await;
    rolled_back_from_2_0_0(&env, "rolled-back").await;
    let before = env.status().await["grants"].clone();
    assert_eq!(
        before,
        json!({"attempts": 5, "in_flight": 1, "installed": 1, "complete": 1, "failed": 2,
               "timed_out": 0, "deferred": 1, "superseded": 0,
               // Each machine's first contact was its grant: new to the rollout.
               "new_attempts": 5, "new_failed": 2})
    );
    env.clock.advance(200 * DAY);
    let report = env.prune(false).await;
    assert_eq!(
        report["rows"]["instances"], 5,
        "all but the machine in flight: {report}"
    );
    let after = env.status().await;
    assert_eq!(after["grants"], before, "{after}");
    assert_eq!(after["machines"], 1);
}
both_databases!(the_rollout_counts_of_the_current_target_survive_an_aggressive_prune);

async fn a_prune_of_more_rows_than_a_batch_takes_several_transactions(db: TestDb) {
    let mut r = retention(1, 1, 1, 1, 0);
    r.batch_size = 100;
    let env = Env::new(db, r, "2.0.0").await;
    for i in 0..40 {
        env.update(&format!("m{i:02}"), "2.0.0").await;
    }
    env.clock.advance(2 * DAY);
    let dry = env.prune(true).await;
    assert_eq!(dry["rows"]["events"], 160, "{dry}");
    let report = env.prune(false).await;
    assert_eq!(rows(&report), rows(&dry));
    // 160 events in 100-row batches (2), history in 100-row batches (at least 2), activity
    // and grants (at least 1 each; the grants of the target stay).
    let batches = report["batches"].as_u64().unwrap();
    assert!(batches >= 6, "{report}");
    assert!(report["longest_batch_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        report["rows"]["rollout_grants"], 0,
        "counted by the rollout"
    );
    assert!(env.events_of("m00").await.is_empty());
    assert_eq!(env.status().await["grants"]["complete"], 40);
}
both_databases!(a_prune_of_more_rows_than_a_batch_takes_several_transactions);

async fn the_background_pruner_runs_at_start(db: TestDb) {
    let mut env = Env::new(db, retention(90, 90, 365, 90, 0), "2.0.0").await;
    env.update("a", "2.0.0").await;
    env.clock.advance(100 * DAY);
    let mut r = retention(90, 90, 365, 90, 0);
    r.interval = Some(Duration::from_secs(3600));
    env.restart(r).await;
    let mut runs = env.server().state.pruner.finished_runs();
    tokio::time::timeout(Duration::from_secs(60), runs.wait_for(|n| *n >= 1))
        .await
        .expect("no prune at start within a minute")
        .unwrap();
    assert!(env.events_of("a").await.is_empty());
    let m = env.metrics().await;
    assert_eq!(
        metric(&m, r#"platte_retention_pruned_rows_total{table="events"}"#),
        Some(4.0),
        "{m}"
    );
    // A clean shutdown with the background pruner running.
    env.server.take().unwrap().shutdown().await.unwrap();
}
both_databases!(the_background_pruner_runs_at_start);

async fn a_prune_while_another_server_process_prunes_is_refused_until_its_lease_expires(
    db: TestDb,
) {
    let env = Env::new(db, retention(90, 90, 365, 90, 0), "2.0.0").await;
    env.update("a", "2.0.0").await;
    env.clock.advance(100 * DAY);
    // Another server process on the same database is in the middle of a pass: its stores (opened
    // here) hold the retention lease.
    let database = env.settings().database;
    let mut other = Stores::open(&database).await.unwrap();
    let now = T0 + 100 * DAY;
    let holder = "replica-2/4242/0/cafe";
    let taken = other
        .retention
        .take_lease(LEASE, holder, now, now + 600)
        .await
        .unwrap();
    assert_eq!(taken, LeaseOutcome::Taken);
    let (st, v) = env.try_api("POST", "/maintenance/prune", Value::Null).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains(holder), "{v}");
    assert_eq!(env.events_of("a").await.len(), 4, "nothing was deleted");
    // A dry run needs no lease.
    assert_eq!(env.prune(true).await["rows"]["events"], 4);
    // The other process stopped without giving the lease back (its connections end; on
    // PostgreSQL that ends the lease's session): once it expired, this one prunes.
    other.close().await;
    env.clock.advance(601);
    assert_eq!(env.prune(false).await["rows"]["events"], 4);
    assert!(env.events_of("a").await.is_empty());
    // The lease was given back: yet another process takes it at once (this one's would not
    // have expired yet).
    let mut probe = Stores::open(&database).await.unwrap();
    let now = now + 601;
    let taken = probe
        .retention
        .take_lease(LEASE, "probe", now, now + 60)
        .await
        .unwrap();
    assert_eq!(taken, LeaseOutcome::Taken, "the lease was given back");
    probe.retention.release_lease(LEASE, "probe").await.unwrap();
    probe.close().await;
}
both_databases!(a_prune_while_another_server_process_prunes_is_refused_until_its_lease_expires);

async fn prune_needs_the_admin_token_and_the_cli_drives_it(db: TestDb) {
    let env = Env::new(db, retention(90, 90, 365, 90, 0), "2.0.0").await;
    let url = format!("{}/api/v1/maintenance/prune?dry_run=true", env.base());
    let r = env.http.post(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = env
        .http
        .post(&url)
        .bearer_auth(&env.server().read_only_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    env.update("a", "2.0.0").await;
    env.clock.advance(100 * DAY);
    let (base, token) = (env.base(), env.token());
    for extra in [&["--dry-run"][..], &[]] {
        let mut args = vec![
            "update-server",
            "prune",
            "--server",
            &base,
            "--token",
            &token,
        ];
        args.extend_from_slice(extra);
        let cli = update_server::cli::Cli::parse_from(args);
        update_server::cli::run_admin(cli.command).await.unwrap();
    }
    assert!(
        env.events_of("a").await.is_empty(),
        "the CLI's prune deleted"
    );
}
both_databases!(prune_needs_the_admin_token_and_the_cli_drives_it);
