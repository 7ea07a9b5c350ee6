//! Upstream sync against a second Platte server acting as the upstream (as Flatcar's public
//! server or any Omaha server would): `follow` moves the local channel to each new release,
//! `import` only adds it; with hosting, the payload and its extra files are downloaded, checked
//! and served from here; a pass is idempotent; an upstream whose file server goes away in the
//! middle of a download leaves an error in `sync status`, and the next pass resumes the download
//! where it stopped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use update_server::model::PackageFormat;
use update_server::sync::{ChannelSpec, Mode, SyncSettings};

use super::support::db::TestDb;
use super::{Env, FLATCAR, crau_file};
use crate::both_databases;

/// A plain file server for the upstream's payloads, honouring `Range`, whose first whole
/// download of `cut_file` stops after `cut_at` bytes and closes the connection (a server going
/// away mid-download). It records each request's path and `Range`.
struct FileServer {
    base: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

/// A request the file server saw: its path and `Range` header.
type Request = (String, Option<String>);

impl FileServer {
    async fn start(files: BTreeMap<String, Vec<u8>>, cut_file: &str, cut_at: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let files = Arc::new(files);
        let cut_file = cut_file.to_owned();
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut cut_pending = true;
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_owned();
                let range = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: ")
                        .map(str::to_owned)
                });
                log.lock().unwrap().push((path.clone(), range.clone()));
                let Some(body) = files.get(&path) else {
                    let _ = sock
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    continue;
                };
                let from = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
                let reply = match from {
                    Some(k) if k < body.len() => {
                        let mut r = format!(
                            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {k}-{}/{}\r\nconnection: close\r\n\r\n",
                            body.len() - k,
                            body.len() - 1,
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body[k..]);
                        r
                    }
                    _ => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        if path == cut_file && cut_pending {
                            cut_pending = false;
                            r.extend_from_slice(&body[..cut_at]);
                        } else {
                            r.extend_from_slice(body);
                        }
                        r
                    }
                };
                let _ = sock.write_all(&reply).await;
                let _ = sock.shutdown().await;
            }
        });
        Self { base, seen }
    }
}

/// Hex SHA-1 and SHA-256.
fn digests(bytes: &[u8]) -> (String, String) {
    (
        hex::encode(sha1::Sha1::digest(bytes)),
        hex::encode(sha2::Sha256::digest(bytes)),
    )
}

/// A hosted channel `channel` following the upstream's `track`.
fn spec(channel: &str, track: &str, mode: Mode) -> ChannelSpec {
    ChannelSpec {
        app: FLATCAR.into(),
        channel: channel.into(),
        track: track.into(),
        arch: "amd64".into(),
        mode,
        host: true,
        format: PackageFormat::UpdateEngine,
    }
}

/// The outcome of each channel of a `sync` run by the CLI, by channel name. The command fails
/// exactly when a channel failed (its report is printed all the same).
async fn sync(env: &Env) -> BTreeMap<String, Value> {
    let (ok, stdout, stderr) = env.cli_output(&["sync"]).await;
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    let failed = report.to_string().contains(r#""outcome":"failed""#);
    assert_eq!(ok, !failed, "{stdout}{stderr}");
    report
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["channel"].as_str().unwrap().to_owned(), c.clone()))
        .collect()
}

/// Points the upstream's channel `name` at package `id` (creating it and its group the first
/// time).
async fn point_upstream(upstream: &Env, name: &str, id: &Value, first: bool) {
    let (st, v) = if first {
        upstream
            .api(
                Method::POST,
                &format!("/apps/{FLATCAR}/channels"),
                Some(json!({"name": name, "packages": {"amd64": id}})),
            )
            .await
    } else {
        upstream
            .api(
                Method::PATCH,
                &format!("/apps/{FLATCAR}/channels/{name}"),
                Some(json!({"packages": {"amd64": id}})),
            )
            .await
    };
    assert!(st.is_success(), "{v}");
    if first {
        let (st, v) = upstream
            .api(
                Method::POST,
                &format!("/apps/{FLATCAR}/groups"),
                Some(json!({"name": name, "channel": name})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
}

async fn an_upstream_is_followed_imported_and_hosted(db: TestDb) {
    // The upstream: Flatcar's stable and beta channels, each a release with an OEM sysext.
    let upstream = Env::new(&TestDb::Sqlite).await;
    let oem = b"an OEM sysext".repeat(500);
    let mut releases = BTreeMap::new();
    for (channel, version) in [("stable", "3510.2.0"), ("beta", "3602.0.0")] {
        let (st, pkg) = upstream
            .publish(
                &format!("format=update_engine&app={FLATCAR}&version={version}&arch=amd64"),
                crau_file(),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{pkg}");
        let (st, v) = upstream
            .upload_file(&pkg["id"], "oem-azure.gz", oem.clone())
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        point_upstream(&upstream, channel, &pkg["id"], true).await;
        releases.insert(channel, pkg);
    }

    let omaha = format!("{}/v1/update/", upstream.base);
    let env = Env::with(&db, |s| {
        s.sync = Some(SyncSettings {
            upstream: omaha.clone(),
            interval: Duration::ZERO,
            channels: vec![
                spec("stable", "stable", Mode::Follow),
                spec("mirror", "beta", Mode::Import),
            ],
        });
    })
    .await;

    // First pass: stable follows, mirror imports; both hosted here.
    let report = sync(&env).await;
    assert_eq!(report["stable"]["outcome"], "followed", "{report:?}");
    assert_eq!(report["stable"]["version"], "3510.2.0");
    assert_eq!(report["mirror"]["outcome"], "imported", "{report:?}");
    assert_eq!(report["mirror"]["version"], "3602.0.0");
    let (_, ch) = env
        .api(
            Method::GET,
            &format!("/apps/{FLATCAR}/channels/stable"),
            None,
        )
        .await;
    let followed = ch["update_engine_packages"]["amd64"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, pkg) = env
        .api(Method::GET, &format!("/packages/{followed}"), None)
        .await;
    assert!(pkg["external_url"].is_null(), "hosted here: {pkg}");
    assert_eq!(pkg["sha256_hex"], releases["stable"]["sha256_hex"], "{pkg}");
    assert_eq!(pkg["files"][0]["name"], "oem-azure.gz", "{pkg}");
    assert_eq!(
        pkg["metadata_size"],
        20 + super::MANIFEST_LEN,
        "read from the download: {pkg}"
    );
    let (st, v) = env
        .api(
            Method::GET,
            &format!("/apps/{FLATCAR}/channels/mirror"),
            None,
        )
        .await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "import mode leaves channels alone: {v}"
    );

    // Idempotent: nothing new, nothing published twice.
    let report = sync(&env).await;
    assert_eq!(report["stable"]["outcome"], "nothing_new", "{report:?}");
    assert_eq!(report["mirror"]["outcome"], "nothing_new", "{report:?}");
    let (_, list) = env.api(Method::GET, "/packages", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    // Upstream, stable moves to beta's release, and beta to a new one whose file server goes
    // away in the middle of the payload's download.
    let next = {
        let mut f = crau_file();
        f.extend_from_slice(b"3602.1.0");
        f
    };
    let oem3 = b"the next OEM sysext".repeat(400);
    let files = BTreeMap::from([
        ("update.gz".to_owned(), next.clone()),
        ("oem-azure.gz".to_owned(), oem3.clone()),
    ]);
    let cut_at = 20_000;
    let fs = FileServer::start(files, "update.gz", cut_at).await;
    let (sha1, sha256) = digests(&next);
    let (oem_sha1, oem_sha256) = digests(&oem3);
    let (st, third) = upstream
        .api(
            Method::POST,
            "/packages/by-reference",
            Some(
                json!({"app": FLATCAR, "version": "3602.1.0", "arch": "amd64",
                "url": format!("{}update.gz", fs.base), "size": next.len(), "sha1": sha1,
                "sha256": sha256, "files": [{"name": "oem-azure.gz", "size": oem3.len(),
                "sha1": oem_sha1, "sha256": oem_sha256}]}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{third}");
    point_upstream(&upstream, "beta", &third["id"], false).await;
    point_upstream(&upstream, "stable", &releases["beta"]["id"], false).await;

    let report = sync(&env).await;
    assert_eq!(report["stable"]["outcome"], "followed", "{report:?}");
    assert_eq!(
        (&report["stable"]["version"], &report["stable"]["from"]),
        (&json!("3602.0.0"), &json!("3510.2.0")),
        "{report:?}"
    );
    assert_eq!(report["mirror"]["outcome"], "failed", "{report:?}");
    assert!(
        report["mirror"]["error"]
            .as_str()
            .unwrap()
            .contains("downloading"),
        "{report:?}"
    );
    let status = env.cli(&["sync", "status"]).await.unwrap();
    let mirror = status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["spec"]["channel"] == "mirror")
        .unwrap()
        .clone();
    assert!(
        mirror["last"]["error"]
            .as_str()
            .unwrap()
            .contains("downloading"),
        "{status}"
    );
    assert_eq!(
        mirror["last"]["upstream_version"], "3602.0.0",
        "the last success stays: {status}"
    );
    let (_, list) = env.api(Method::GET, "/packages", None).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "nothing half-downloaded is visible: {list}"
    );
    let (_, feed) = env.api(Method::GET, "/activity?limit=20", None).await;
    assert!(feed.to_string().contains("sync_failed"), "{feed}");
    let metrics = super::common::metrics(&env.http, &env.base).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("platte_sync_checks_total{")
            && l.contains("outcome=\"failed\"")),
        "{metrics}"
    );

    // The next pass resumes the download where it stopped, and hosts the release.
    let report = sync(&env).await;
    assert_eq!(report["mirror"]["outcome"], "imported", "{report:?}");
    let ranges: Vec<Option<String>> = fs
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "update.gz")
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(
        ranges,
        [None, Some(format!("bytes={cut_at}-"))],
        "resumed, not restarted"
    );
    // An operator promotes it; it is served entirely from here, with its sysext, once the
    // upstream and its file server are gone.
    let id = report["mirror"]["package_id"].clone();
    point_upstream(&env, "mirror", &id, true).await;
    upstream.server.shutdown().await.unwrap();
    drop(fs);
    let body = "<ping active=\"1\"></ping><updatecheck></updatecheck>";
    let request = super::update_engine("0123456789abcdef0123456789abcdef", "1.0.0", body)
        .replace("track=\"stable\"", "track=\"mirror\"");
    let xml = env.omaha(request).await;
    let uc = omaha::parse_response(xml.as_bytes()).unwrap().apps[0]
        .updatecheck
        .clone()
        .unwrap();
    assert!(uc.urls[0].starts_with(&env.base), "{xml}");
    let man = uc.target_manifest().unwrap();
    assert_eq!(man.version, "3602.1.0");
    for (p, bytes) in man.packages.iter().zip([&next, &oem3]) {
        let got = env
            .http
            .get(format!("{}{}", uc.urls[0], p.name))
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.bytes().await.unwrap().as_ref(),
            bytes.as_slice(),
            "{}",
            p.name
        );
    }
    // With the upstream gone, a pass reports it and changes nothing.
    let report = sync(&env).await;
    assert_eq!(report["stable"]["outcome"], "failed", "{report:?}");
    env.server.shutdown().await.unwrap();
}

both_databases!(an_upstream_is_followed_imported_and_hosted);
