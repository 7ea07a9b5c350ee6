//! Moving an installation from SQLite to PostgreSQL as an operator does: a server on SQLite
//! serves a fleet, is stopped, `update-server migrate-store` copies its database, and a server
//! started on PostgreSQL with the same data directory answers as the old one did: the same
//! catalogue, machines, grants, events and activity, and the package still downloads.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

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
const BIN: &str = env!("CARGO_BIN_EXE_update-server");

async fn get(http: &reqwest::Client, s: &Server, path: &str) -> Value {
    let (st, v) = common::api(http, &s.base, &s.token, reqwest::Method::GET, path, None).await;
    assert_eq!(st, StatusCode::OK, "GET {path}: {v}");
    v
}

/// What an operator sees of the fleet through the admin API.
async fn view(http: &reqwest::Client, s: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/apps".to_owned(),
        "/packages".to_owned(),
        format!("/apps/{APP}/channels"),
        format!("/apps/{APP}/groups"),
        "/instances?limit=100".to_owned(),
        "/instances/m-1".to_owned(),
        "/events?limit=100".to_owned(),
        "/activity?limit=100".to_owned(),
    ] {
        out.push(get(http, s, &path).await);
    }
    out
}

async fn check(http: &reqwest::Client, s: &Server, machine: &str) -> String {
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="1.0.0_x86_64"></os>
<app appid="{{{APP}}}" version="1.0.0" track="stable" machineid="{machine}" board="amd64-usr"><ping r="1"></ping><updatecheck></updatecheck></app>
</request>"#
    );
    let (st, text) = common::omaha_post(http, &s.base, xml, &[]).await;
    assert_eq!(st, StatusCode::OK, "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_moved_to_postgres_answers_as_before() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let TestDb::Postgres(pg) = &db else {
        unreachable!("TestDb::postgres is PostgreSQL");
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = common::trusted_key(dir.path(), "release");
    let keys = dir.path().join("keys").display().to_string();
    let http = reqwest::Client::new();

    // The old installation, on SQLite: an app, a release, a channel and group, three machines
    // granted it, one of them reporting progress.
    let sqlite = Server::spawn_in(
        BIN,
        None,
        &[("UPDATE_SERVER_TRUSTED_KEYS", keys.clone())],
        &data,
        None,
    );
    let token = sqlite.token.clone();
    let admin = |s: &Server, method: &str, path: &str, body: Value| {
        let (http, base, token) = (http.clone(), s.base.clone(), token.clone());
        let (method, path) = (method.parse().unwrap(), path.to_owned());
        async move {
            let (st, v) = common::api(&http, &base, &token, method, &path, Some(body)).await;
            assert!(st.is_success(), "{path}: {st} {v}");
            v
        }
    };
    admin(&sqlite, "POST", "/apps", json!({"id": APP, "name": "OS"})).await;
    let payload = common::signed_payload(&key, APP, "2.0.0", &common::image(30_000));
    let (st, pkg) = common::publish(
        &http,
        &sqlite.base,
        &token,
        "update.payload",
        payload.clone(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{pkg}");
    let ch = json!({"name": "stable", "packages": {"amd64": pkg["id"]}});
    admin(&sqlite, "POST", &format!("/apps/{APP}/channels"), ch).await;
    let group = json!({"name": "stable", "channel": "stable", "policy": {}});
    admin(&sqlite, "POST", &format!("/apps/{APP}/groups"), group).await;
    for m in ["m-1", "m-2", "m-3"] {
        assert!(check(&http, &sqlite, m).await.contains(r#"status="ok""#));
    }
    let progress = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<app appid="{{{APP}}}" version="1.0.0" track="stable" machineid="m-1"><event eventtype="13" eventresult="1"></event></app>
</request>"#
    );
    assert_eq!(
        common::omaha_post(&http, &sqlite.base, progress, &[])
            .await
            .0,
        StatusCode::OK
    );
    let before = view(&http, &sqlite).await;
    let rollout = format!("/apps/{APP}/groups/stable/rollout");
    let grants_before = get(&http, &sqlite, &rollout).await["grants"].clone();
    // A graceful stop writes the check-ins still waiting for their batch.
    assert!(sqlite.terminate().success());

    let out = Command::new(BIN)
        .args(["migrate-store", "--from"])
        .arg(&data)
        .args(["--to", &pg.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rollout_grants"), "{stdout}");

    // The new installation: PostgreSQL, the same data directory (package files, tokens).
    let postgres = Server::spawn_in(
        BIN,
        None,
        &[
            ("UPDATE_SERVER_TRUSTED_KEYS", keys),
            ("UPDATE_SERVER_DATABASE", pg.url.clone()),
        ],
        &data,
        None,
    );
    assert_eq!(view(&http, &postgres).await, before);
    assert_eq!(
        get(&http, &postgres, &rollout).await["grants"],
        grants_before
    );
    assert_eq!(grants_before["in_flight"], 3, "{grants_before}");
    // A granted machine is re-served its grant; its download is the file published before.
    let answer = check(&http, &postgres, "m-2").await;
    let url = answer
        .split("codebase=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a download URL")
        .to_owned();
    let name = answer
        .split("<package ")
        .nth(1)
        .and_then(|s| s.split("name=\"").nth(1))
        .and_then(|s| s.split('"').next())
        .expect("a package name")
        .to_owned();
    let body = http
        .get(format!("{url}{name}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], &payload[..]);

    // A second copy into the same database is refused, and says why.
    let again = Command::new(BIN)
        .args(["migrate-store", "--from"])
        .arg(&data)
        .args(["--to", &pg.url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
