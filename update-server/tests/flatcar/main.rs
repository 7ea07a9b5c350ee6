//! update_engine's own payloads (issue 20): a CrAU file published with `format=update_engine` is
//! served byte for byte, with the size, hashes and action attributes update_engine checks, to a
//! client shaped exactly like a real update_engine request, through its whole event sequence;
//! Platte's agent in the same group is held (`format`); a file that is not a CrAU payload, or
//! one published without its app, version and arch, is refused with the reason. On SQLite and
//! on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;
use update_server::config::Settings;
use update_server::server::{RunningServer, start};

#[path = "../common/mod.rs"]
mod common;
#[path = "../support/db.rs"]
pub mod support_db;
mod support {
    pub use super::support_db as db;
}
// One module per concern; they share `Env` and the request builders.
mod completion;
mod files;
mod mixed;
mod reference;
mod sync;
use support::db::TestDb;

const FLATCAR: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const MANIFEST_LEN: u64 = 1_000;

/// A CrAU payload as Flatcar publishes it (format version 1): header, a manifest of
/// [`MANIFEST_LEN`] bytes, then data. Built from the documented layout; nothing checks its
/// contents past the header here (the host checks the vendor's signatures).
fn crau_file() -> Vec<u8> {
    let mut f = b"CrAU".to_vec();
    f.extend_from_slice(&1u64.to_be_bytes());
    f.extend_from_slice(&MANIFEST_LEN.to_be_bytes());
    f.extend((0..MANIFEST_LEN).map(|i| (i % 251) as u8));
    f.extend((0..50_000u32).map(|i| (i.wrapping_mul(31) % 256) as u8));
    f
}

struct Env {
    dir: tempfile::TempDir,
    server: RunningServer,
    http: reqwest::Client,
    base: String,
    /// Signs Platte payloads the server trusts.
    key: payloads::SigningKey,
}

impl Env {
    async fn new(db: &TestDb) -> Self {
        Self::with(db, |_| {}).await
    }

    /// A server whose settings `configure` changes first.
    async fn with(db: &TestDb, configure: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = common::trusted_key(dir.path(), "release");
        let mut s = db.settings(&dir.path().join("data"));
        s.trusted_keys = Some(dir.path().join("keys"));
        configure(&mut s);
        let server = start(s).await.unwrap();
        let base = format!("http://{}", server.addr);
        let env = Self {
            dir,
            server,
            http: reqwest::Client::new(),
            base,
            key,
        };
        let (st, v) = env
            .api(
                reqwest::Method::POST,
                "/apps",
                Some(json!({"id": FLATCAR, "name": "Flatcar"})),
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

    /// `POST /api/v1/packages?{query}` with `body`.
    async fn publish(&self, query: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.send_bytes(reqwest::Method::POST, &format!("/packages?{query}"), body)
            .await
    }

    /// `PUT /api/v1/packages/{id}/files/{name}` with `body`.
    async fn upload_file(&self, id: &Value, name: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let id = id.as_str().unwrap();
        self.send_bytes(
            reqwest::Method::PUT,
            &format!("/packages/{id}/files/{name}"),
            body,
        )
        .await
    }

    /// `method /api/v1{path}` with `body` as the raw request body: the status and the answer
    /// (JSON, or its text).
    async fn send_bytes(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let r = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.server.admin_token)
            .body(body)
            .send()
            .await
            .unwrap();
        let st = r.status();
        let text = r.text().await.unwrap();
        (
            st,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Runs `update-server <args> --json` against this server; its JSON output, or the failure
    /// with stderr.
    async fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let (ok, stdout, stderr) = self.cli_output(args).await;
        if !ok {
            return Err(format!("{stdout}{stderr}"));
        }
        Ok(serde_json::from_str(&stdout).unwrap())
    }

    /// Runs `update-server <args> --json`: whether it succeeded, its stdout and its stderr.
    async fn cli_output(&self, args: &[&str]) -> (bool, String, String) {
        let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_update-server"));
        cli.args(args)
            .arg("--json")
            .env("UPDATE_SERVER_URL", &self.base)
            .env("UPDATE_SERVER_TOKEN", &self.server.admin_token);
        let out = tokio::task::spawn_blocking(move || cli.output())
            .await
            .unwrap()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The update check of an update_engine client `machine` running `version`: the answer.
    async fn check(&self, machine: &str, version: &str) -> omaha::UpdateCheckResponse {
        let body = "<ping active=\"1\"></ping><updatecheck></updatecheck>";
        let xml = self.omaha(update_engine(machine, version, body)).await;
        let resp = omaha::parse_response(xml.as_bytes()).unwrap();
        resp.apps[0].updatecheck.clone().unwrap()
    }

    async fn omaha(&self, body: String) -> String {
        let (st, xml) = common::omaha_post(&self.http, &self.base, body, &[]).await;
        assert_eq!(st, StatusCode::OK, "{xml}");
        xml
    }

    async fn instance(&self, machine: &str) -> Value {
        let (st, v) = self
            .api(reqwest::Method::GET, &format!("/instances/{machine}"), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v["apps"][0]["instance"].clone()
    }
}

/// A request exactly as Flatcar's update_engine sends it (docs: `../shared/reference/
/// flatcar-fleets.md`), with `body` inside `<app>`.
fn update_engine(machine: &str, version: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="update_engine-0.4.10" updaterversion="update_engine-0.4.10" installsource="ondemandupdate" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>
<app appid="{{{FLATCAR}}}" version="{version}" track="stable" bootid="{{b-{machine}}}" oem="" oemversion="" alephversion="1.0.0" machineid="{machine}" machinealias="" lang="en-US" board="amd64-usr" hardware_class="" delta_okay="false" >{body}</app>
</request>"#
    )
}

/// The same check from Platte's agent.
fn platte_agent(machine: &str, version: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" updaterversion="platte-agent-0.1.0" ismachine="1">
<os platform="Platte" arch="x86_64"></os>
<app appid="{{{FLATCAR}}}" version="{version}" track="stable" machineid="{machine}" board="amd64"><updatecheck></updatecheck></app>
</request>"#
    )
}

fn event(kind: u32, result: u32, previous: &str) -> String {
    format!(
        r#"<event eventtype="{kind}" eventresult="{result}" previousversion="{previous}"></event>"#
    )
}

async fn an_update_engine_payload_is_served_as_it_is(db: TestDb) {
    let env = Env::new(&db).await;
    let file = crau_file();
    let (st, pkg) = env
        .publish(
            &format!("format=update_engine&app={FLATCAR}&version=3510.2.0&arch=amd64"),
            file.clone(),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{pkg}");
    let sha256: [u8; 32] = sha2::Sha256::digest(&file).into();
    let sha1: [u8; 20] = sha1::Sha1::digest(&file).into();
    assert_eq!(pkg["format"], "update_engine");
    assert_eq!(pkg["metadata_size"], 20 + MANIFEST_LEN);
    assert_eq!(pkg["size"], file.len());
    assert_eq!(pkg["sha256_hex"], hex::encode(sha256));
    assert_eq!(pkg["filename"], "update.gz");
    for (path, body) in [
        (
            format!("/apps/{FLATCAR}/channels"),
            json!({"name": "stable", "packages": {"amd64": pkg["id"]}}),
        ),
        (
            format!("/apps/{FLATCAR}/groups"),
            json!({"name": "stable", "channel": "stable"}),
        ),
    ] {
        let (st, v) = env.api(reqwest::Method::POST, &path, Some(body)).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }

    // The check: every attribute update_engine reads.
    let m = "0123456789abcdef0123456789abcdef";
    let check = format!(
        r#"<ping active="1"></ping><updatecheck></updatecheck>{}"#,
        event(3, 2, "0.0.0.0")
    );
    let xml = env.omaha(update_engine(m, "1.0.0", &check)).await;
    let resp = omaha::parse_response(xml.as_bytes()).unwrap();
    let uc = resp.apps[0].updatecheck.as_ref().unwrap();
    assert_eq!(uc.status.as_str(), "ok", "{xml}");
    let man = uc.target_manifest().unwrap();
    assert_eq!(man.version, "3510.2.0");
    let p = &man.packages[0];
    assert_eq!((p.name.as_str(), p.size), ("update.gz", file.len() as u64));
    assert_eq!(p.sha1().unwrap(), Some(sha1));
    let post = man.postinstall().unwrap();
    assert_eq!(
        post.sha256.as_deref(),
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(sha256)
                .as_str()
        )
    );
    assert_eq!(post.metadata_size, Some(20 + MANIFEST_LEN));
    assert_eq!(post.chromeos_version.as_deref(), Some("3510.2.0"));
    assert_eq!(post.needs_admin, Some(false));
    assert!(post.disable_payload_backoff && !post.is_delta_payload);

    // The download is the file, byte for byte.
    let url = format!("{}{}", uc.urls[0], p.name);
    let got = env.http.get(&url).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK, "{url}");
    // Served beside the dashboard: never rendered as a page.
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("content-disposition", "attachment"),
        ("content-security-policy", "sandbox"),
    ] {
        assert_eq!(got.headers()[name], value, "{name}");
    }
    assert_eq!(got.bytes().await.unwrap().as_ref(), file.as_slice());

    // 13/1, 14/1, 3/1, then the reboot into 3510.2.0 and its 3/2.
    for (kind, result) in [(13, 1), (14, 1), (3, 1)] {
        env.omaha(update_engine(m, "1.0.0", &event(kind, result, "")))
            .await;
    }
    assert_eq!(env.instance(m).await["status"], "installed");
    let done = format!(
        "<ping active=\"1\"></ping><updatecheck></updatecheck>{}",
        event(3, 2, "1.0.0")
    );
    let xml = env.omaha(update_engine(m, "3510.2.0", &done)).await;
    assert!(xml.contains(r#"status="noupdate""#), "{xml}");
    let inst = env.instance(m).await;
    assert_eq!(inst["status"], "complete", "{inst}");
    assert_eq!(inst["version"], "3510.2.0");
    let (st, rollout) = env
        .api(
            reqwest::Method::GET,
            &format!("/apps/{FLATCAR}/groups/stable/rollout"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{rollout}");
    assert!(rollout.to_string().contains(r#""complete":1"#), "{rollout}");

    // Platte's agent cannot apply it: held, and recorded why.
    let agent = "fedcba9876543210fedcba9876543210";
    let xml = env.omaha(platte_agent(agent, "1.0.0")).await;
    assert!(xml.contains(r#"status="noupdate""#), "{xml}");
    let inst = env.instance(agent).await;
    assert_eq!(
        (&inst["status"], &inst["status_detail"]),
        (&json!("on_hold"), &json!("format")),
        "{inst}"
    );
    env.server.shutdown().await.unwrap();
}

async fn what_is_not_an_update_engine_payload_is_refused(db: TestDb) {
    let env = Env::new(&db).await;
    let named = format!("format=update_engine&app={FLATCAR}&version=3510.2.0&arch=amd64");
    // A gzip file, as Flatcar names its payloads, but not a CrAU one.
    let (st, v) = env
        .publish(&named, b"\x1f\x8b\x08\x00 not a payload".to_vec())
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("CrAU"), "{v}");
    // A header announcing more metadata than the file holds.
    let mut short = crau_file();
    short.truncate(500);
    let (st, v) = env.publish(&named, short).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("does not fit"), "{v}");
    // No version: a CrAU file names none.
    let (st, v) = env
        .publish(
            &format!("format=update_engine&app={FLATCAR}&arch=amd64"),
            crau_file(),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("names no version"), "{v}");
    // Nothing was stored.
    let (st, list) = env.api(reqwest::Method::GET, "/packages", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    env.server.shutdown().await.unwrap();
}

/// `update-server package publish FILE --format update_engine --app … --version … --arch …`.
async fn the_cli_publishes_an_update_engine_payload(db: TestDb) {
    let env = Env::new(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flatcar_production_update.gz");
    std::fs::write(&file, crau_file()).unwrap();
    let file = file.to_str().unwrap();
    let pkg = env
        .cli(&[
            "package",
            "publish",
            file,
            "--format",
            "update_engine",
            "--app",
            FLATCAR,
            "--version",
            "3510.2.0",
            "--arch",
            "amd64",
        ])
        .await
        .unwrap();
    assert_eq!(
        (&pkg["format"], &pkg["version"], &pkg["arch"]),
        (&json!("update_engine"), &json!("3510.2.0"), &json!("amd64")),
        "{pkg}"
    );
    env.server.shutdown().await.unwrap();
}

/// Points channel `stable` at package `id` (creating channel and group the first time).
async fn point_stable_at(env: &Env, id: &Value, first: bool) {
    if first {
        for (path, body) in [
            (
                format!("/apps/{FLATCAR}/channels"),
                json!({"name": "stable", "packages": {"amd64": id}}),
            ),
            (
                format!("/apps/{FLATCAR}/groups"),
                json!({"name": "stable", "channel": "stable"}),
            ),
        ] {
            let (st, v) = env.api(reqwest::Method::POST, &path, Some(body)).await;
            assert_eq!(st, StatusCode::CREATED, "{v}");
        }
    } else {
        let (st, v) = env
            .api(
                reqwest::Method::PATCH,
                &format!("/apps/{FLATCAR}/channels/stable"),
                Some(json!({"packages": {"amd64": id}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
}

/// Each client is offered only a format it can apply: update_engine is held from a Platte
/// payload and Platte's agent from an update_engine one (also when its granted package is gone
/// and the channel moved on to the other format); a client of another kind gets either.
async fn a_client_is_offered_only_a_format_it_can_apply(db: TestDb) {
    let env = Env::new(&db).await;
    let platte = common::signed_payload(&env.key, FLATCAR, "3510.2.0", &common::image(50_000));
    let (st, platte) = env.publish("filename=p.payload", platte).await;
    assert_eq!(st, StatusCode::CREATED, "{platte}");
    point_stable_at(&env, &platte["id"], true).await;
    let check = "<ping active=\"1\"></ping><updatecheck></updatecheck>";
    let held = |inst: &Value| inst["status"] == "on_hold" && inst["status_detail"] == "format";

    let flatcar = "0123456789abcdef0123456789abcdef";
    let xml = env.omaha(update_engine(flatcar, "1.0.0", check)).await;
    assert!(xml.contains(r#"status="noupdate""#), "{xml}");
    assert!(held(&env.instance(flatcar).await));
    let agent = "fedcba9876543210fedcba9876543210";
    let xml = env.omaha(platte_agent(agent, "1.0.0")).await;
    assert!(xml.contains(r#"status="ok""#), "{xml}");
    let other = platte_agent("00112233445566778899aabbccddeeff", "1.0.0")
        .replace("platte-agent-0.1.0", "some-other-client-1.0");
    let xml = env.omaha(other).await;
    assert!(xml.contains(r#"status="ok""#), "{xml}");

    // The channel moves to an update_engine release and the Platte one is deleted while the
    // agent is still downloading it: the agent is not re-served something else.
    let (st, crau) = env
        .publish(
            &format!("format=update_engine&app={FLATCAR}&version=3510.3.0&arch=amd64"),
            crau_file(),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{crau}");
    point_stable_at(&env, &crau["id"], false).await;
    // The channel still serves the Platte payload to Platte's agents until its pointer goes.
    let (st, v) = env
        .api(
            reqwest::Method::PATCH,
            &format!("/apps/{FLATCAR}/channels/stable"),
            Some(json!({"packages": {"amd64": null}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["update_engine_packages"]["amd64"], crau["id"], "{v}");
    assert!(v["packages"].as_object().unwrap().is_empty(), "{v}");
    let id = platte["id"].as_str().unwrap();
    let (st, v) = env
        .api(reqwest::Method::DELETE, &format!("/packages/{id}"), None)
        .await;
    assert!(st.is_success(), "{st} {v}");
    let xml = env.omaha(platte_agent(agent, "1.0.0")).await;
    assert!(xml.contains(r#"status="noupdate""#), "{xml}");
    assert!(held(&env.instance(agent).await));
    let xml = env.omaha(update_engine(flatcar, "1.0.0", check)).await;
    assert!(
        xml.contains(r#"status="ok""#) && xml.contains("3510.3.0"),
        "{xml}"
    );
    env.server.shutdown().await.unwrap();
}

both_databases!(
    a_client_is_offered_only_a_format_it_can_apply,
    an_update_engine_payload_is_served_as_it_is,
    what_is_not_an_update_engine_payload_is_refused,
    the_cli_publishes_an_update_engine_payload,
);
