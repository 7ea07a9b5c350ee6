//! Staged rollouts over real HTTP, each on SQLite and on PostgreSQL: atomic limits under
//! concurrent checks (also with two servers sharing one database: one SQLite file, or one
//! PostgreSQL database), release on install and on timeout, rate windows, auto-halt and resume,
//! and the downgrade marker.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use clap::Parser as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use update_server::clock::ManualClock;
use update_server::rollout::RolloutEngine;
use update_server::server::{RunningServer, start_with};

mod common;
mod support {
    pub mod db;
}
use support::db::TestDb;

const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const T0: i64 = 1_700_000_000;

/// A payload of `version`, signed by its own new key trusted from `dir/keys`.
fn payload(dir: &Path, version: &str) -> Vec<u8> {
    let key = common::trusted_key(dir, &format!("release-{version}"));
    common::signed_payload(&key, APP, version, &common::image(50_000))
}

/// Versions every environment publishes (machines run 1.0.0).
const VERSIONS: [&str; 3] = ["1.5.0", "2.0.0", "2.1.0"];

struct Env {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    servers: Vec<RunningServer>,
    http: reqwest::Client,
    /// Package id by version.
    packages: BTreeMap<String, Value>,
    /// The database every server of the test uses (last: dropped after the servers).
    db: TestDb,
}

impl Env {
    /// One server on `db`, app, packages 1.5.0, 2.0.0 and 2.1.0, channel `stable` at
    /// `channel_version`, group `stable` with `policy`.
    async fn new(db: TestDb, policy: Value, channel_version: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pays: Vec<(String, Vec<u8>)> = VERSIONS
            .iter()
            .map(|v| (v.to_string(), payload(dir.path(), v)))
            .collect();
        let clock = ManualClock::new(T0);
        let mut env = Self {
            clock,
            servers: vec![],
            http: reqwest::Client::new(),
            dir,
            packages: BTreeMap::new(),
            db,
        };
        env.start_server().await;
        env.api(0, "POST", "/apps", json!({"id": APP, "name": "OS"}))
            .await;
        for (v, body) in pays {
            let s = &env.servers[0];
            let base = format!("http://{}", s.addr);
            let (st, p) =
                common::publish(&env.http, &base, &s.admin_token, "update.payload", body).await;
            assert_eq!(st, StatusCode::CREATED, "{p}");
            env.packages.insert(v, p["id"].clone());
        }
        env.api(
            0,
            "POST",
            &format!("/apps/{APP}/channels"),
            json!({"name": "stable", "packages": {"amd64": env.packages[channel_version]}}),
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

    /// Points channel `stable` at `version`.
    async fn set_channel(&self, version: &str) {
        self.api(
            0,
            "PATCH",
            &format!("/apps/{APP}/channels/stable"),
            json!({"packages": {"amd64": self.packages[version]}}),
        )
        .await;
    }

    /// Starts another server on the test's database (on SQLite: the same file, in the same data
    /// directory).
    async fn start_server(&mut self) {
        let mut s = self.db.settings(&self.dir.path().join("data"));
        s.trusted_keys = Some(self.dir.path().join("keys"));
        let clock: Arc<dyn update_server::clock::Clock> = self.clock.clone();
        self.servers
            .push(start_with(s, clock, Arc::new(RolloutEngine)).await.unwrap());
    }

    /// An admin request to `server` that must succeed; returns the parsed body.
    async fn api(&self, server: usize, method: &str, path: &str, body: Value) -> Value {
        let s = &self.servers[server];
        let (st, v) = common::api(
            &self.http,
            &format!("http://{}", s.addr),
            &s.admin_token,
            method.parse().unwrap(),
            path,
            (!body.is_null()).then_some(body),
        )
        .await;
        assert!(st.is_success(), "{method} {path}: {st} {v}");
        v
    }

    async fn omaha(&self, server: usize, machine: &str, version: &str, body: &str) -> String {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>
<app appid="{{{APP}}}" version="{version}" track="stable" machineid="{machine}" board="amd64-usr">{body}</app>
</request>"#
        );
        let base = format!("http://{}", self.servers[server].addr);
        let (st, text) = common::omaha_post(&self.http, &base, xml, &[]).await;
        assert_eq!(st, StatusCode::OK, "{text}");
        text
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

    /// Server 0's Prometheus text.
    async fn metrics(&self) -> String {
        common::metrics(&self.http, &format!("http://{}", self.servers[0].addr)).await
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

/// The fleet checks in once (a ping, no update check) before the rollout begins, each machine
/// on the server [`concurrent_checks`] sends it to, and a second passes: the server knows these
/// machines, so they are established, not new to the rollout (new machines weigh less for
/// auto-halt and are granted at a bounded rate per network).
async fn register(env: &Env, prefix: &str, n: usize) {
    for i in 0..n {
        let m = format!("{prefix}-{i:03}");
        env.omaha(i % env.servers.len(), &m, "1.0.0", "<ping r=\"1\"></ping>")
            .await;
    }
    env.clock.advance(1);
}

/// [`register`] for machines by name, on server 0.
async fn register_names(env: &Env, names: &[&str]) {
    for m in names {
        env.omaha(0, m, "1.0.0", "<ping r=\"1\"></ping>").await;
    }
    env.clock.advance(1);
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

async fn concurrency_limit_is_exact_across_two_servers_and_released_on_install(db: TestDb) {
    let mut env = Env::new(db, json!({"concurrency_limit": 5}), "2.0.0").await;
    env.start_server().await; // a second server on the same database
    register(&env, "m", 64).await;
    register(&env, "n", 64).await;
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
both_databases!(concurrency_limit_is_exact_across_two_servers_and_released_on_install);

/// One request that reports a rollback and asks for an update: its events are settled before
/// the update is decided, in the same transaction, so the version it rolled back from is held
/// (`rolled_back`), never granted again and failed right after.
async fn events_are_settled_before_the_check_in_the_same_request(db: TestDb) {
    let env = Env::new(db, json!({}), "2.0.0").await;
    assert!(env.check(0, "rb").await);
    let x = env
        .omaha(
            0,
            "rb",
            "1.0.0",
            r#"<event eventtype="3" eventresult="0" errorcode="44" previousversion="2.0.0"></event><updatecheck></updatecheck>"#,
        )
        .await;
    assert!(x.contains(r#"<updatecheck status="noupdate""#), "{x}");
    let inst = env.api(0, "GET", "/instances/rb", Value::Null).await;
    let row = &inst["apps"][0]["instance"];
    assert_eq!(row["status"], "on_hold", "{inst}");
    assert_eq!(row["status_detail"], "rolled_back", "{inst}");
    let st = env.status().await;
    assert_eq!(st["grants"]["failed"], 1, "{st}");
    assert_eq!(st["grants"]["in_flight"], 0, "{st}");
    for s in env.servers {
        s.shutdown().await.unwrap();
    }
}
both_databases!(events_are_settled_before_the_check_in_the_same_request);

/// Two servers on one database hold no state the other could contradict: a catalogue change made
/// through one is served by the other within a second (the database's catalogue generation), and
/// a status one server wrote is what the other answers from and never overwritten by the other's
/// check-ins (column-wise writes, no in-memory rows).
async fn two_servers_share_every_state_through_the_database(db: TestDb) {
    let mut env = Env::new(db, json!({}), "2.0.0").await;
    env.start_server().await;

    // A machine is granted by server 0 and installs the update (staged, awaiting its reboot).
    assert!(env.check(0, "staged").await);
    for (t, r) in [(13, 1), (14, 1), (3, 1)] {
        env.event("staged", t, r).await;
    }
    // Its next checks go to server 1: a plain check-in (coalesced there), then an update check,
    // answered from the row server 0 wrote: it awaits its reboot, nothing is served again.
    env.omaha(1, "staged", "1.0.0", "<ping r=\"1\"></ping>")
        .await;
    env.clock.advance(5);
    let x = env
        .omaha(
            1,
            "staged",
            "1.0.0",
            "<ping r=\"1\"></ping><updatecheck></updatecheck>",
        )
        .await;
    assert!(x.contains(r#"<updatecheck status="noupdate""#), "{x}");
    // Server 1 writes its pending check-ins (a scrape does); the status stays server 0's.
    common::metrics(&env.http, &format!("http://{}", env.servers[1].addr)).await;
    let inst = env.api(0, "GET", "/instances/staged", Value::Null).await;
    let row = &inst["apps"][0]["instance"];
    assert_eq!(row["status"], "installed", "{inst}");
    assert_eq!(row["granted_version"], "2.0.0", "{inst}");
    assert_eq!(
        row["last_check_at"],
        T0 + 5,
        "server 1's check-in reached the row: {inst}"
    );

    // A channel moved through server 0 is served by server 1 within a second (its catalogue
    // snapshot follows the database's catalogue generation).
    env.set_channel("2.1.0").await;
    let moved_at = std::time::Instant::now();
    let mut i = 0;
    loop {
        // A new machine each time: a granted one would be re-served its grant.
        let x = env
            .omaha(
                1,
                &format!("probe-{i}"),
                "1.0.0",
                "<updatecheck></updatecheck>",
            )
            .await;
        assert!(x.contains(r#"<updatecheck status="ok""#), "{x}");
        if x.contains(r#"version="2.1.0""#) {
            break;
        }
        assert!(
            moved_at.elapsed() < std::time::Duration::from_secs(1),
            "server 1 still serves the old channel version a second after the change"
        );
        i += 1;
        tokio::task::yield_now().await;
    }
    let st = env
        .api(
            1,
            "GET",
            &format!("/apps/{APP}/groups/stable/rollout"),
            Value::Null,
        )
        .await;
    assert_eq!(st["target_version"], "2.1.0", "{st}");
    for s in env.servers {
        s.shutdown().await.unwrap();
    }
}
both_databases!(two_servers_share_every_state_through_the_database);

async fn rate_window_and_timeout_release(db: TestDb) {
    let env = Env::new(
        db,
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
both_databases!(rate_window_and_timeout_release);

async fn auto_halt_trips_then_resume_is_explicit(db: TestDb) {
    let env = Env::new(
        db,
        json!({"auto_halt": {"max_failure_rate": 0.25, "min_attempts": 8}}),
        "2.0.0",
    )
    .await;
    let fleet: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    let mut names: Vec<&str> = fleet.iter().map(String::as_str).collect();
    names.extend(["late-1", "late-2"]);
    register_names(&env, &names).await;
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
    let metrics = env.metrics().await;
    assert!(metrics.contains("platte_rollout_halts_total{"), "{metrics}");
    assert!(metrics.contains("reason=\"halted\""));

    // A new policy (as `rollout set` sends one, without `halted`) keeps the halt: only a resume
    // clears it.
    env.api(
        0,
        "PATCH",
        &format!("/apps/{APP}/groups/stable"),
        json!({"policy": {"auto_halt": {"max_failure_rate": 0.5, "min_attempts": 8}}}),
    )
    .await;
    let st = env.status().await;
    assert_eq!(st["halted"]["reason"].as_str(), Some(reason), "{st}");
    assert!(!env.check(0, "late-2").await);

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
both_databases!(auto_halt_trips_then_resume_is_explicit);

async fn downgrade_needs_allow_and_is_marked(db: TestDb) {
    let env = Env::new(db, json!({}), "1.5.0").await;
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
both_databases!(downgrade_needs_allow_and_is_marked);

async fn percentage_preview_and_invalid_policy(db: TestDb) {
    let env = Env::new(db, json!({"percentage": 0, "canaries": ["c-1"]}), "2.0.0").await;
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
both_databases!(percentage_preview_and_invalid_policy);

/// Error code 44 (rolled back) with update_engine's non-production-server flag, as the agent
/// reports it after falling back from a failed boot.
const ROLLBACK_CODE: u32 = 44 | (1 << 28);

/// The agent's report after it fell back: its own request, on the old version, naming the
/// version that failed in `previousversion`.
async fn rolled_back(env: &Env, machine: &str, from: &str) {
    env.omaha(
        0,
        machine,
        "1.0.0",
        &format!(
            r#"<event eventtype="3" eventresult="0" errorcode="{ROLLBACK_CODE}" previousversion="{from}"></event>"#
        ),
    )
    .await;
}

/// Check, download, install: the machine is staged on the offered version.
async fn install(env: &Env, machine: &str) {
    assert!(env.check(0, machine).await, "{machine} was not granted");
    for (t, r) in [(13, 1), (14, 1), (3, 1)] {
        env.event(machine, t, r).await;
    }
}

/// The version in an answer's manifest, if it offers one.
fn offered(xml: &str) -> Option<String> {
    let resp = omaha::parse_response(xml.as_bytes()).unwrap();
    let uc = resp.apps[0].updatecheck.as_ref()?;
    uc.target_manifest().map(|m| m.version.clone())
}

async fn check_version(env: &Env, machine: &str) -> Option<String> {
    let x = env
        .omaha(
            0,
            machine,
            "1.0.0",
            "<ping r=\"1\"></ping><updatecheck></updatecheck>",
        )
        .await;
    offered(&x)
}

async fn instance_app(env: &Env, machine: &str) -> Value {
    env.api(0, "GET", &format!("/instances/{machine}"), Value::Null)
        .await["apps"][0]
        .clone()
}

async fn a_rolled_back_version_is_refused_for_that_machine_until_an_operator_clears_it(db: TestDb) {
    let mut env = Env::new(db, json!({}), "2.0.0").await;
    install(&env, "rb").await;
    rolled_back(&env, "rb", "2.0.0").await;

    // Never offered 2.0.0 again: noupdate, held `rolled_back`, in history, activity, metrics.
    assert_eq!(check_version(&env, "rb").await, None);
    assert_eq!(check_version(&env, "rb").await, None);
    let a = instance_app(&env, "rb").await;
    assert_eq!(a["instance"]["status"], "on_hold", "{a}");
    assert_eq!(a["instance"]["status_detail"], "rolled_back");
    assert_eq!(a["refused_versions"][0]["version"], "2.0.0", "{a}");
    assert_eq!(a["refused_versions"][0]["reason"], "rolled_back");
    assert_eq!(a["refused_versions"][0]["error_code"], ROLLBACK_CODE);
    let history: Vec<String> = a["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{} {}", h["status"], h["detail"]))
        .collect();
    assert!(
        history[1].starts_with("\"error\"") && history[1].contains("version 2.0.0 refused"),
        "{history:?}"
    );
    let act = env.api(0, "GET", "/activity", Value::Null).await;
    assert!(act.to_string().contains("instance_rolled_back"), "{act}");
    let st = env.status().await;
    assert_eq!(
        st["grants"]["failed"], 1,
        "a rollback is a failed attempt: {st}"
    );
    assert_eq!(st["on_hold"]["rolled_back"], 1, "{st}");
    let metrics = env.metrics().await;
    let holds = metrics
        .lines()
        .find(|l| l.starts_with("platte_rollout_holds_total{") && l.contains("rolled_back"))
        .unwrap_or_else(|| panic!("no rolled_back hold metric in\n{metrics}"));
    assert!(holds.ends_with(" 2"), "{holds}");
    assert!(metrics.contains(r#"outcome="rolled_back""#), "{metrics}");
    // Only that machine: another one still gets 2.0.0.
    assert_eq!(check_version(&env, "other").await.as_deref(), Some("2.0.0"));

    // The refusal is in the database: a restarted server still holds the machine back.
    env.servers.remove(0).shutdown().await.unwrap();
    env.start_server().await;
    assert_eq!(check_version(&env, "rb").await, None);
    assert_eq!(
        instance_app(&env, "rb").await["instance"]["status_detail"],
        "rolled_back"
    );

    // The admin API refuses nonsense and unknown machines, then clears the refusal.
    let s = &env.servers[0];
    let base = format!("http://{}", s.addr);
    for (path, want) in [
        ("/instances/nobody/retry".to_owned(), StatusCode::NOT_FOUND),
        (
            "/instances/rb/retry?version=not%20a%20version".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (st, v) = common::api(
            &env.http,
            &base,
            &s.admin_token,
            reqwest::Method::POST,
            &path,
            None,
        )
        .await;
        assert_eq!(st, want, "{path}: {v}");
    }
    let (st, _) = common::api(
        &env.http,
        &base,
        &s.read_only_token,
        reqwest::Method::POST,
        "/instances/rb/retry",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "clearing is an admin write");
    let cleared = env
        .api(
            0,
            "POST",
            &format!("/instances/rb/retry?app={APP}&version=2.0.0"),
            Value::Null,
        )
        .await;
    assert_eq!(cleared["cleared"][0]["version"], "2.0.0", "{cleared}");
    assert!(
        instance_app(&env, "rb").await["refused_versions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(check_version(&env, "rb").await.as_deref(), Some("2.0.0"));

    // It rolls back again; the CLI clears it too.
    for (t, r) in [(13, 1), (14, 1), (3, 1)] {
        env.event("rb", t, r).await;
    }
    rolled_back(&env, "rb", "2.0.0").await;
    assert_eq!(check_version(&env, "rb").await, None);
    let cli = update_server::cli::Cli::parse_from([
        "update-server",
        "instance",
        "retry",
        "rb",
        "--app",
        APP,
        "--server",
        &base,
        "--token",
        &s.admin_token,
    ]);
    update_server::cli::run_admin(cli.command).await.unwrap();
    assert_eq!(check_version(&env, "rb").await.as_deref(), Some("2.0.0"));
    let act = env.api(0, "GET", "/activity", Value::Null).await;
    assert!(act.to_string().contains("instance_retry"), "{act}");
}
both_databases!(a_rolled_back_version_is_refused_for_that_machine_until_an_operator_clears_it);

async fn a_newer_version_is_offered_after_a_rollback(db: TestDb) {
    let env = Env::new(db, json!({}), "2.0.0").await;
    install(&env, "rb").await;
    // No `previousversion` (as a client other than the agent may send it): the granted version
    // is the one refused.
    env.omaha(
        0,
        "rb",
        "1.0.0",
        &format!(r#"<event eventtype="3" eventresult="0" errorcode="{ROLLBACK_CODE}"></event>"#),
    )
    .await;
    assert_eq!(check_version(&env, "rb").await, None);
    env.set_channel("2.1.0").await;
    assert_eq!(check_version(&env, "rb").await.as_deref(), Some("2.1.0"));
    // An ordinary failure refuses nothing: the machine is granted the same version again.
    env.event("rb", 3, 0).await;
    assert_eq!(check_version(&env, "rb").await.as_deref(), Some("2.1.0"));
    let a = instance_app(&env, "rb").await;
    assert_eq!(a["refused_versions"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a["refused_versions"][0]["version"], "2.0.0");
}
both_databases!(a_newer_version_is_offered_after_a_rollback);

async fn a_deferred_grant_frees_its_slot_is_no_failure_and_is_granted_again(db: TestDb) {
    let env = Env::new(
        db,
        json!({"concurrency_limit": 1, "update_timeout_secs": 600,
               "auto_halt": {"max_failure_rate": 0.1, "min_attempts": 1}}),
        "2.0.0",
    )
    .await;
    assert!(env.check(0, "d1").await);
    assert!(!env.check(0, "d2").await, "the one slot is taken");
    // d1 declines (the agent refusing an offer: 3/9 with "update ignored per policy").
    let deferred = 35 | (1 << 28);
    env.omaha(
        0,
        "d1",
        "1.0.0",
        &format!(r#"<event eventtype="3" eventresult="9" errorcode="{deferred}"></event>"#),
    )
    .await;
    let a = instance_app(&env, "d1").await;
    assert_eq!(a["instance"]["status"], "deferred", "{a}");
    let st = env.status().await;
    assert_eq!(st["grants"]["deferred"], 1, "{st}");
    assert_eq!(st["grants"]["in_flight"], 0);
    assert_eq!(st["grants"]["attempts"], 0, "a deferral is no attempt");

    // The slot is free at once; d2 installs.
    install(&env, "d2").await;
    // Past the update timeout: the deferred grant neither timed out nor failed, no halt.
    env.clock.advance(700);
    let st = env.status().await;
    assert_eq!(st["grants"]["timed_out"], 0, "{st}");
    assert_eq!(st["grants"]["failed"], 0);
    assert!(st["halted"].is_null(), "{st}");

    // d1 is granted again through the policy (its grant reopened: one attempt), and holds the
    // slot again.
    assert!(env.check(0, "d1").await);
    assert_eq!(
        instance_app(&env, "d1").await["instance"]["status"],
        "granted"
    );
    let st = env.status().await;
    assert_eq!(st["grants"]["deferred"], 0, "{st}");
    assert_eq!(st["grants"]["in_flight"], 1);
    assert_eq!(st["grants"]["attempts"], 2);
    assert!(
        !env.check(0, "d3").await,
        "the reopened grant holds the slot"
    );
    assert_eq!(
        instance_app(&env, "d3").await["instance"]["status_detail"],
        "concurrency"
    );
}
both_databases!(a_deferred_grant_frees_its_slot_is_no_failure_and_is_granted_again);

/// An error event (3/0) with `code`, from a machine still on 1.0.0.
async fn failed_with(env: &Env, machine: &str, code: u32) {
    env.omaha(
        0,
        machine,
        "1.0.0",
        &format!(r#"<event eventtype="3" eventresult="0" errorcode="{code}"></event>"#),
    )
    .await;
}

/// The first check after the reboot into 2.0.0: 3/2 with `previousversion`.
async fn rebooted_into_2_0_0(env: &Env, machine: &str) {
    env.omaha(
        0,
        machine,
        "2.0.0",
        r#"<ping r="1"></ping><updatecheck></updatecheck><event eventtype="3" eventresult="2" previousversion="1.0.0"></event>"#,
    )
    .await;
}

/// update_engine's non-production-server flag, set on every error code sent to this server.
const NON_PRODUCTION: u32 = 1 << 28;

async fn one_host_failing_a_version_again_and_again_is_one_attempt_and_one_failure(db: TestDb) {
    // Before: every re-grant was a new attempt and every answer a new failure, so one host
    // reached `min_attempts` by itself and halted the rollout.
    let env = Env::new(
        db,
        json!({"auto_halt": {"max_failure_rate": 0.5, "min_attempts": 3}}),
        "2.0.0",
    )
    .await;
    for _ in 0..5 {
        assert_eq!(check_version(&env, "flaky").await.as_deref(), Some("2.0.0"));
        failed_with(&env, "flaky", 10 | NON_PRODUCTION).await;
    }
    let st = env.status().await;
    assert_eq!(st["grants"]["attempts"], 1, "{st}");
    assert_eq!(st["grants"]["failed"], 1, "{st}");
    assert_eq!(st["failure_rate"], 1.0);
    assert!(
        st["halted"].is_null(),
        "one host is below min_attempts: {st}"
    );

    // It is granted again and succeeds: a complete machine, no longer a failed one.
    install(&env, "flaky").await;
    rebooted_into_2_0_0(&env, "flaky").await;
    let st = env.status().await;
    assert_eq!(st["grants"]["attempts"], 1, "{st}");
    assert_eq!(st["grants"]["complete"], 1, "{st}");
    assert_eq!(st["grants"]["failed"], 0, "{st}");
    assert_eq!(st["failure_rate"], 0.0);
}
both_databases!(one_host_failing_a_version_again_and_again_is_one_attempt_and_one_failure);

async fn a_host_that_deny_listed_a_version_is_not_offered_it_until_an_operator_clears_it(
    db: TestDb,
) {
    let env = Env::new(db, json!({}), "2.0.0").await;
    // The agent answers an offer of a deny-listed build with 3/0 and code 35.
    assert_eq!(check_version(&env, "dl").await.as_deref(), Some("2.0.0"));
    failed_with(&env, "dl", 35 | NON_PRODUCTION).await;
    for _ in 0..3 {
        assert_eq!(check_version(&env, "dl").await, None, "not offered again");
    }
    let a = instance_app(&env, "dl").await;
    assert_eq!(a["instance"]["status"], "on_hold", "{a}");
    assert_eq!(a["instance"]["status_detail"], "deny_listed");
    assert_eq!(a["refused_versions"][0]["version"], "2.0.0", "{a}");
    assert_eq!(a["refused_versions"][0]["reason"], "deny_listed");
    let act = env.api(0, "GET", "/activity", Value::Null).await;
    assert!(act.to_string().contains("instance_deny_listed"), "{act}");
    let st = env.status().await;
    assert_eq!(st["grants"]["attempts"], 1, "{st}");
    assert_eq!(st["grants"]["failed"], 1, "{st}");
    assert_eq!(st["on_hold"]["deny_listed"], 1, "{st}");
    let metrics = env.metrics().await;
    assert!(metrics.contains(r#"outcome="deny_listed""#), "{metrics}");
    assert!(metrics.contains(r#"reason="deny_listed""#), "{metrics}");

    // A build that failed its health check after activation (3113) is refused at once.
    install(&env, "health").await;
    failed_with(&env, "health", 3113 | NON_PRODUCTION).await;
    assert_eq!(check_version(&env, "health").await, None);
    assert_eq!(
        instance_app(&env, "health").await["refused_versions"][0]["reason"],
        "deny_listed"
    );
    // 3111 (also link and file errors the agent does not deny-list) refuses nothing.
    install(&env, "link").await;
    failed_with(&env, "link", 3111 | NON_PRODUCTION).await;
    assert_eq!(check_version(&env, "link").await.as_deref(), Some("2.0.0"));

    // `instance retry` clears the refusal: offered again, the same grant reopened.
    let cleared = env
        .api(
            0,
            "POST",
            &format!("/instances/dl/retry?app={APP}"),
            Value::Null,
        )
        .await;
    assert_eq!(cleared["cleared"][0]["reason"], "deny_listed", "{cleared}");
    assert_eq!(check_version(&env, "dl").await.as_deref(), Some("2.0.0"));
    let st = env.status().await;
    assert_eq!(st["grants"]["attempts"], 3, "dl, health, link: {st}");
    assert_eq!(st["grants"]["failed"], 1, "health: {st}");
    assert_eq!(st["grants"]["in_flight"], 2, "dl again, link again: {st}");
}
both_databases!(a_host_that_deny_listed_a_version_is_not_offered_it_until_an_operator_clears_it);

async fn a_rollback_reported_after_the_grant_completed_is_a_failure_and_can_halt(db: TestDb) {
    let env = Env::new(
        db,
        json!({"auto_halt": {"max_failure_rate": 0.4, "min_attempts": 2}}),
        "2.0.0",
    )
    .await;
    register_names(&env, &["a", "b", "late"]).await;
    for m in ["a", "b"] {
        install(&env, m).await;
        rebooted_into_2_0_0(&env, m).await;
    }
    let st = env.status().await;
    assert_eq!(st["grants"]["complete"], 2, "{st}");
    // `a` ran 2.0.0, then fell back to 1.0.0 and says so.
    rolled_back(&env, "a", "2.0.0").await;
    let st = env.status().await;
    assert_eq!(st["grants"]["complete"], 1, "{st}");
    assert_eq!(st["grants"]["failed"], 1, "{st}");
    assert_eq!(st["grants"]["attempts"], 2, "{st}");
    let reason = st["halted"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("1 of 2 machines"), "{st}");
    assert!(!env.check(0, "late").await, "halted");
    assert_eq!(
        instance_app(&env, "a").await["refused_versions"][0]["reason"],
        "rolled_back"
    );
}
both_databases!(a_rollback_reported_after_the_grant_completed_is_a_failure_and_can_halt);
