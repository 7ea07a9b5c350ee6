//! What forged Omaha clients can no longer steer (docs/usage/rollouts.md, "What an unauthenticated
//! client can do"), over real HTTP with an injected clock: a claimed alias does not make a
//! machine a canary (an operator-assigned one does); invented machine ids reporting failures do
//! not halt a rollout (established machines failing do); invented ids from one network cannot
//! fill a concurrency limit (an established machine is still granted). Each test runs on SQLite
//! and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

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
/// The header a trusted proxy names the client in (so tests can come from several networks).
const PROXY_HEADER: &str = "x-forwarded-for";

struct Env {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    server: RunningServer,
    http: reqwest::Client,
}

impl Env {
    /// One server, app, package 2.0.0 on channel `stable`, group `stable` with `policy`.
    async fn new(db: &TestDb, policy: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = common::trusted_key(dir.path(), "release");
        let body = common::signed_payload(&key, APP, "2.0.0", &common::image(50_000));
        let clock = ManualClock::new(T0);
        let mut s = db.settings(&dir.path().join("data"));
        s.trusted_keys = Some(dir.path().join("keys"));
        s.proxy_header = Some(PROXY_HEADER.into());
        let c: Arc<dyn update_server::clock::Clock> = clock.clone();
        let server = start_with(s, c, Arc::new(RolloutEngine)).await.unwrap();
        let env = Self {
            _dir: dir,
            clock,
            server,
            http: reqwest::Client::new(),
        };
        env.api("POST", "/apps", json!({"id": APP, "name": "OS"}))
            .await;
        let (st, p) = common::publish(
            &env.http,
            &env.base(),
            &env.server.admin_token,
            "update.payload",
            body,
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{p}");
        env.api(
            "POST",
            &format!("/apps/{APP}/channels"),
            json!({"name": "stable", "packages": {"amd64": p["id"]}}),
        )
        .await;
        env.api(
            "POST",
            &format!("/apps/{APP}/groups"),
            json!({"name": "stable", "channel": "stable", "policy": policy}),
        )
        .await;
        env
    }

    fn base(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    async fn try_api(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        common::api(
            &self.http,
            &self.base(),
            &self.server.admin_token,
            method.parse().unwrap(),
            path,
            (!body.is_null()).then_some(body),
        )
        .await
    }

    async fn api(&self, method: &str, path: &str, body: Value) -> Value {
        let (st, v) = self.try_api(method, path, body).await;
        assert!(st.is_success(), "{method} {path}: {st} {v}");
        v
    }

    /// One Omaha request of `machine` (on 1.0.0, reporting `alias`) from `ip`.
    async fn omaha(&self, machine: &str, alias: &str, ip: &str, body: &str) -> String {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="1.0.0_x86_64"></os>
<app appid="{{{APP}}}" version="1.0.0" track="stable" machineid="{machine}" machinealias="{alias}" board="amd64-usr">{body}</app>
</request>"#
        );
        let (st, text) =
            common::omaha_post(&self.http, &self.base(), xml, &[(PROXY_HEADER, ip)]).await;
        assert_eq!(st, StatusCode::OK, "{text}");
        text
    }

    /// A ping without an update check: the server now knows the machine.
    async fn register(&self, machine: &str, ip: &str) {
        self.omaha(machine, "", ip, r#"<ping r="1"></ping>"#).await;
    }

    /// An update check; true when it was answered with an update.
    async fn check_as(&self, machine: &str, alias: &str, ip: &str) -> bool {
        let x = self
            .omaha(
                machine,
                alias,
                ip,
                r#"<ping r="1"></ping><updatecheck></updatecheck>"#,
            )
            .await;
        x.contains(r#"status="ok""#) && x.contains("<manifest")
    }

    async fn check(&self, machine: &str, ip: &str) -> bool {
        self.check_as(machine, "", ip).await
    }

    /// An install error (3/0), as update_engine reports it.
    async fn fail(&self, machine: &str, ip: &str) {
        let code = 5 | (1 << 28);
        self.omaha(
            machine,
            "",
            ip,
            &format!(r#"<event eventtype="3" eventresult="0" errorcode="{code}"></event>"#),
        )
        .await;
    }

    async fn status(&self) -> Value {
        self.api(
            "GET",
            &format!("/apps/{APP}/groups/stable/rollout"),
            Value::Null,
        )
        .await
    }

    async fn status_detail(&self, machine: &str) -> Value {
        self.api("GET", &format!("/instances/{machine}"), Value::Null)
            .await["apps"][0]["instance"]["status_detail"]
            .clone()
    }
}

const NET_A: &str = "198.51.100.7";

async fn a_claimed_alias_is_no_canary_but_an_operator_assigned_one_is(db: TestDb) {
    // Before: `canaries` matched the alias a client reports, so any client claiming
    // machinealias="build-01" bypassed the percentage.
    let env = Env::new(
        &db,
        json!({"percentage": 0, "canaries": ["build-01", "by-id-1"]}),
    )
    .await;
    assert!(
        !env.check_as("forged-1", "build-01", NET_A).await,
        "a reported alias bypassed the percentage"
    );
    assert_eq!(env.status_detail("forged-1").await, "percentage");
    // A canary named by machine id still goes first.
    assert!(env.check("by-id-1", NET_A).await);

    // The operator names a real machine `build-01` (API: unknown machines and bad aliases are
    // refused), and it goes first at 0 %.
    env.register("real-build", NET_A).await;
    for (machine, alias, want) in [
        ("nobody", json!("build-01"), StatusCode::NOT_FOUND),
        ("real-build", json!("two words"), StatusCode::BAD_REQUEST),
        ("real-build", json!("x".repeat(65)), StatusCode::BAD_REQUEST),
    ] {
        let (st, v) = env
            .try_api(
                "PATCH",
                &format!("/instances/{machine}"),
                json!({"alias": alias}),
            )
            .await;
        assert_eq!(st, want, "{machine} {alias}: {v}");
    }
    let (st, _) = common::api(
        &env.http,
        &env.base(),
        &env.server.read_only_token,
        reqwest::Method::PATCH,
        "/instances/real-build",
        Some(json!({"alias": "build-01"})),
    )
    .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "assigning an alias is an admin write"
    );
    let cli = update_server::cli::Cli::parse_from([
        "update-server",
        "instance",
        "set-alias",
        "real-build",
        "build-01",
        "--server",
        &env.base(),
        "--token",
        &env.server.admin_token,
    ]);
    update_server::cli::run_admin(cli.command).await.unwrap();
    let shown = env.api("GET", "/instances/real-build", Value::Null).await;
    assert_eq!(shown["operator_alias"], "build-01", "{shown}");

    // The preview agrees with the check path: the operator-named machine is included at 0 %,
    // the one merely claiming the alias is not.
    let pv = env
        .api(
            "GET",
            &format!("/apps/{APP}/groups/stable/rollout/preview?percent=100&limit=100"),
            Value::Null,
        )
        .await;
    let added: Vec<&str> = pv["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine_id"].as_str().unwrap())
        .collect();
    assert!(added.contains(&"forged-1"), "{pv}");
    assert!(!added.contains(&"real-build"), "{pv}");
    assert_eq!(pv["already_included"], 2, "by-id-1 and real-build: {pv}");

    assert!(
        env.check("real-build", NET_A).await,
        "operator alias is a canary"
    );
    assert!(!env.check_as("forged-1", "build-01", NET_A).await);
    // Nor can a client claim the alias as its machine id: that name is reserved.
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="1.0.0_x86_64"></os>
<app appid="{{{APP}}}" version="1.0.0" track="stable" machineid="build-01" board="amd64-usr"><updatecheck></updatecheck></app>
</request>"#
    );
    let (st, text) =
        common::omaha_post(&env.http, &env.base(), xml, &[(PROXY_HEADER, NET_A)]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("alias the operator assigned"), "{text}");

    // One alias names one machine; removing it ends the canary.
    env.register("other", NET_A).await;
    let (st, v) = env
        .try_api("PATCH", "/instances/other", json!({"alias": "build-01"}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let v = env
        .api("PATCH", "/instances/real-build", json!({"alias": null}))
        .await;
    assert!(v["operator_alias"].is_null(), "{v}");
    env.register("late", NET_A).await;
    env.api("PATCH", "/instances/late", json!({"alias": "build-01"}))
        .await;
    assert!(env.check("late", NET_A).await);
    let act = env.api("GET", "/activity", Value::Null).await;
    assert!(act.to_string().contains("instance_alias_set"), "{act}");
}
both_databases!(a_claimed_alias_is_no_canary_but_an_operator_assigned_one_is);

async fn invented_ids_reporting_failures_do_not_halt_but_established_machines_do(db: TestDb) {
    let env = Env::new(
        &db,
        json!({"auto_halt": {"max_failure_rate": 0.2, "min_attempts": 5}}),
    )
    .await;
    // The fleet the server knew before the rollout.
    for i in 0..6 {
        env.register(&format!("est-{i}"), NET_A).await;
    }
    env.clock.advance(60);
    // The rollout begins with its first grant; one established machine succeeds so far.
    assert!(env.check("est-0", NET_A).await);
    env.clock.advance(60);

    // Five ids the server never saw take a grant each and report 3/0.
    for i in 0..5 {
        let m = format!("invented-{i}");
        assert!(env.check(&m, NET_A).await, "{m}");
        env.fail(&m, NET_A).await;
    }
    let st = env.status().await;
    assert!(
        st["halted"].is_null(),
        "five invented ids halted the rollout: {st}"
    );
    assert_eq!(st["grants"]["failed"], 5, "{st}");
    assert_eq!(st["grants"]["new_attempts"], 5, "{st}");
    assert_eq!(st["grants"]["new_failed"], 5, "{st}");
    assert!(env.check("est-1", NET_A).await, "still granting");

    // Established machines failing halt it. Weighted (new machines count 0.1): after the
    // first established failure 1 + 0.5 failures of 2 + 0.5 attempts, below the 5 attempts
    // needed; at the fourth 4 + 0.5 of 5 + 0.5 (82 % > 20 %) halts, as 4 of 5 would alone.
    for i in 1..6 {
        let m = format!("est-{i}");
        if i > 1 {
            env.check(&m, NET_A).await;
        }
        env.fail(&m, NET_A).await;
    }
    let st = env.status().await;
    let reason = st["halted"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("new to the rollout"), "{st}");
    assert!(!env.check("est-0-late", NET_A).await, "halted");
}
both_databases!(invented_ids_reporting_failures_do_not_halt_but_established_machines_do);

async fn invented_ids_from_one_network_cannot_fill_a_concurrency_limit(db: TestDb) {
    let env = Env::new(&db, json!({"concurrency_limit": 3})).await;
    env.register("real", NET_A).await;
    env.clock.advance(60);

    // Three ids the server never saw, from one /24: two are granted (the default budget of new
    // machines per network and hour), the third is held for it.
    assert!(env.check("invented-0", "198.51.100.20").await);
    assert!(env.check("invented-1", "198.51.100.21").await);
    assert!(!env.check("invented-2", "198.51.100.22").await);
    assert_eq!(env.status_detail("invented-2").await, "new_machine_rate");
    // A machine from another network has its own budget; it takes the last slot.
    assert!(env.check("elsewhere", "203.0.113.5").await);
    // Had it not, the established machine would still be granted: it is never held by this.
    env.api(
        "PATCH",
        &format!("/apps/{APP}/groups/stable"),
        json!({"policy": {"concurrency_limit": 4}}),
    )
    .await;
    assert!(!env.check("invented-3", "198.51.100.23").await);
    assert!(env.check("real", NET_A).await, "the established machine");
    let st = env.status().await;
    assert_eq!(st["on_hold"]["new_machine_rate"], 2, "{st}");
    assert_eq!(st["grants"]["in_flight"], 4, "{st}");
    let metrics = common::metrics(&env.http, &env.base()).await;
    assert!(
        metrics.contains(r#"reason="new_machine_rate""#),
        "{metrics}"
    );
    // After the window the network's two grants are still in flight: they keep counting, so
    // new machines from it cannot pile up slot after slot. Once one installs, another may go.
    env.api(
        "PATCH",
        &format!("/apps/{APP}/groups/stable"),
        json!({"policy": {"concurrency_limit": 10}}),
    )
    .await;
    env.clock.advance(3601);
    assert!(!env.check("invented-2", "198.51.100.22").await);
    assert_eq!(env.status_detail("invented-2").await, "new_machine_rate");
    for (t, r) in [(13, 1), (14, 1), (3, 1)] {
        env.omaha(
            "invented-0",
            "",
            "198.51.100.20",
            &format!(r#"<event eventtype="{t}" eventresult="{r}"></event>"#),
        )
        .await;
    }
    assert!(env.check("invented-2", "198.51.100.22").await);
}
both_databases!(invented_ids_from_one_network_cannot_fill_a_concurrency_limit);
