//! `update-server import-nebraska` against a real Nebraska-shaped PostgreSQL database (the
//! schema in `fixtures/nebraska_schema.sql`, written from Nebraska's migrations) and a running
//! Platte server: a dry run writes nothing; the import creates the applications, packages with
//! their update_engine action attributes and extra files, one channel per name with a pointer
//! per architecture, and the groups (with Nebraska's ids) with their mapped policy; an
//! update_engine client naming its group by Nebraska's group UUID or by its track is offered
//! the release with its extra files; the report names what did not map and why; a second run
//! changes nothing and says so. Skipped without PostgreSQL unless `PLATTE_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use sqlx::Connection as _;
use update_server::config::Settings;
use update_server::server::{RunningServer, start};

mod common;
#[path = "support/pg.rs"]
mod pg;

const FLATCAR: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const ADDON: &str = "7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53";
const TEAM: &str = "d89342dc-9214-441d-a4af-bdd837a3b239";

// Packages.
const P_STABLE_AMD64: &str = "11111111-0000-4000-8000-000000000001";
const P_STABLE_ARM64: &str = "11111111-0000-4000-8000-000000000002";
const P_BETA_AMD64: &str = "11111111-0000-4000-8000-000000000003";
const P_BETA_ARM64: &str = "11111111-0000-4000-8000-000000000004";
const P_NO_ACTION: &str = "11111111-0000-4000-8000-000000000005";
const P_OTHER: &str = "11111111-0000-4000-8000-000000000006";
// Channels.
const C_STABLE_AMD64: &str = "22222222-0000-4000-8000-000000000001";
const C_STABLE_ARM64: &str = "22222222-0000-4000-8000-000000000002";
const C_BETA_AMD64: &str = "22222222-0000-4000-8000-000000000003";
const C_BETA_ARM64: &str = "22222222-0000-4000-8000-000000000004";
const C_MAIN: &str = "22222222-0000-4000-8000-000000000005";
// Groups (the first two are Nebraska's own Flatcar stable groups).
const G_STABLE: &str = "9a2deb70-37be-4026-853f-bfdd6b347bbe";
const G_STABLE_ARM: &str = "11a585f6-9418-4df0-8863-78b2fd3240f8";
const G_BETA: &str = "3fe10490-dd73-4b49-b72a-28ac19acfcdc";
const G_CANARY: &str = "33333333-0000-4000-8000-000000000004";
const G_ADDON: &str = "33333333-0000-4000-8000-000000000005";

const STABLE_URL: &str = "https://mirror.example/amd64-usr/3510.2.0/";
const PAYLOAD: &str = "flatcar_production_update.gz";

/// SHA-1 (base64), SHA-256 (base64) and SHA-256 (hex) of `seed`: digests to publish by.
fn digests(seed: &str) -> (String, String, String) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sha1: [u8; 20] = sha1::Sha1::digest(seed).into();
    let sha256: [u8; 32] = sha2::Sha256::digest(seed).into();
    (b64.encode(sha1), b64.encode(sha256), hex::encode(sha256))
}

/// Nebraska's rows: a Flatcar application with stable and beta for amd64 and arm64 (packages
/// with Flatcar actions and extra files, one file without SHA-256, one Flatcar package without
/// an action), four groups (one sharing the stable track, one with safe mode and office hours,
/// one paused with a group_local override, a floor on beta), and an add-on application with a
/// product id and an "other" package.
fn rows() -> String {
    let mut sql = format!(
        "INSERT INTO team (id, name) VALUES ('{TEAM}', 'default');
         INSERT INTO application (id, name, description, team_id) VALUES
           ('{FLATCAR}', 'Flatcar Container Linux', 'Flatcar', '{TEAM}');
         INSERT INTO application (id, name, description, team_id, product_id) VALUES
           ('{ADDON}', 'Add-on', NULL, '{TEAM}', 'io.example.addon');\n"
    );
    let packages = [
        (P_STABLE_AMD64, "3510.2.0", 1, STABLE_URL.to_owned()),
        (
            P_STABLE_ARM64,
            "3510.2.0",
            2,
            STABLE_URL.replace("amd64", "arm64"),
        ),
        (
            P_BETA_AMD64,
            "3602.1.0",
            1,
            STABLE_URL.replace("3510.2.0", "3602.1.0"),
        ),
        (
            P_BETA_ARM64,
            "3602.1.0",
            2,
            "https://mirror.example/arm64-beta".to_owned(),
        ),
        (
            P_NO_ACTION,
            "3033.2.0",
            1,
            STABLE_URL.replace("3510.2.0", "3033.2.0"),
        ),
    ];
    for (n, (id, version, arch, url)) in packages.into_iter().enumerate() {
        let (sha1, sha256, _) = digests(id);
        sql += &format!(
            "INSERT INTO package (id, type, version, url, filename, size, hash, application_id,
               arch, created_ts) VALUES ('{id}', 1, '{version}', '{url}', '{PAYLOAD}',
               '{size}', '{sha1}', '{FLATCAR}', {arch}, now() + interval '{n} seconds');\n",
            size = 1_000_000 + n,
        );
        if id != P_NO_ACTION {
            let meta = if id == P_STABLE_AMD64 { "4242" } else { "" };
            sql += &format!(
                "INSERT INTO flatcar_action (id, sha256, metadata_size, is_delta,
                   disable_payload_backoff, deadline, package_id) VALUES
                   (gen_random_uuid(), '{sha256}', '{meta}', false, {backoff}, '', '{id}');\n",
                backoff = id != P_BETA_AMD64,
            );
        }
    }
    for (pkg, name, with_sha256) in [
        (P_STABLE_AMD64, "oem-azure.gz", true),
        (P_STABLE_AMD64, "flatcar-docker.gz", true),
        (P_BETA_AMD64, "oem-gce.gz", true),
        (P_BETA_AMD64, "flatcar-old.gz", false),
    ] {
        let (sha1, sha256, _) = digests(&format!("{pkg}/{name}"));
        let sha256 = if with_sha256 { sha256 } else { String::new() };
        sql += &format!(
            "INSERT INTO package_file (package_id, name, hash, size, hash256) VALUES
               ('{pkg}', '{name}', '{sha1}', '{}', '{sha256}');\n",
            name.len() * 1000
        );
    }
    sql += &format!(
        "INSERT INTO package (id, type, version, url, filename, size, hash, application_id, arch)
           VALUES ('{P_OTHER}', 4, '1.0.0', 'https://addon.example/', 'addon.tar', '10', NULL,
                   '{ADDON}', 0);
         INSERT INTO channel (id, name, color, application_id, package_id, arch) VALUES
           ('{C_STABLE_AMD64}', 'stable', '#1458d6', '{FLATCAR}', '{P_STABLE_AMD64}', 1),
           ('{C_STABLE_ARM64}', 'stable', '#1458d6', '{FLATCAR}', '{P_STABLE_ARM64}', 2),
           ('{C_BETA_AMD64}', 'beta', '#fce433', '{FLATCAR}', '{P_BETA_AMD64}', 1),
           ('{C_BETA_ARM64}', 'beta', '#fce433', '{FLATCAR}', '{P_BETA_ARM64}', 2),
           ('{C_MAIN}', 'main', '#000000', '{ADDON}', '{P_OTHER}', 0);
         INSERT INTO channel_package_floors (channel_id, package_id) VALUES
           ('{C_BETA_AMD64}', '{P_STABLE_AMD64}');
         INSERT INTO groups (id, name, description, policy_updates_enabled, policy_safe_mode,
             policy_office_hours, policy_timezone, policy_period_interval,
             policy_max_updates_per_period, policy_update_timeout, application_id, channel_id,
             track, created_ts) VALUES
           ('{G_STABLE}', 'Stable (AMD64)', 'For production clusters (AMD64)', true, false,
            false, NULL, '15 minutes', 50, '60 minutes', '{FLATCAR}', '{C_STABLE_AMD64}',
            'stable', now()),
           ('{G_STABLE_ARM}', 'Stable (ARM)', 'For production clusters (ARM)', true, false,
            false, NULL, '15 minutes', 50, '60 minutes', '{FLATCAR}', '{C_STABLE_ARM64}',
            'stable', now() + interval '1 second'),
           ('{G_BETA}', 'Beta', 'Promoted alpha releases', true, true, true, 'Europe/Berlin',
            '1 hours', 999999, '2 hours', '{FLATCAR}', '{C_BETA_AMD64}', 'beta',
            now() + interval '2 seconds'),
           ('{G_CANARY}', 'Canary', 'First hosts', false, false, false, NULL, '1 days', 10,
            '30 minutes', '{FLATCAR}', '{C_BETA_ARM64}', '{G_CANARY}',
            now() + interval '3 seconds'),
           ('{G_ADDON}', 'Everyone', '', true, false, false, NULL, '1 minutes', 999999,
            '60 minutes', '{ADDON}', '{C_MAIN}', 'addon', now());
         INSERT INTO group_local (group_id, policy_max_updates_per_period_override) VALUES
           ('{G_STABLE}', NULL), ('{G_CANARY}', 3);\n"
    );
    sql
}

struct Env {
    _dir: tempfile::TempDir,
    server: RunningServer,
    http: reqwest::Client,
    base: String,
    nebraska: pg::TestDatabase,
}

impl Env {
    /// A Nebraska database with [`rows`], and an empty Platte server. `None` without PostgreSQL.
    async fn new() -> Option<Self> {
        let nebraska = pg::TestDatabase::create().await?;
        let mut conn = sqlx::PgConnection::connect(&nebraska.url).await.unwrap();
        sqlx::raw_sql(include_str!("fixtures/nebraska_schema.sql"))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql(&rows()).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::for_tests(&dir.path().join("data"));
        // Every check here comes from 127.0.0.1 as a machine new to the rollout: without this,
        // the third would be held by the per-network limit of new machines (rollouts.md).
        settings.new_machines.per_network = None;
        let server = start(settings).await.unwrap();
        let base = format!("http://{}", server.addr);
        Some(Self {
            _dir: dir,
            server,
            http: reqwest::Client::new(),
            base,
            nebraska,
        })
    }

    async fn get(&self, path: &str) -> Value {
        let (st, v) = common::api(
            &self.http,
            &self.base,
            &self.server.admin_token,
            Method::GET,
            path,
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{path}: {v}");
        v
    }

    /// Runs `update-server import-nebraska --from <nebraska> <args>`: (success, stdout, stderr).
    async fn import(&self, args: &[&str]) -> (bool, String, String) {
        let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_update-server"));
        cli.args(["import-nebraska", "--from", &self.nebraska.url])
            .args(args)
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

    /// The JSON report of an import with `args` that succeeded.
    async fn import_json(&self, args: &[&str]) -> Value {
        let (ok, out, err) = self.import(&[args, &["--json"]].concat()).await;
        assert!(ok, "import failed: {out}{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// The update check of an update_engine client on `board` naming `group` as its track.
    async fn check(&self, machine: &str, group: &str, board: &str) -> omaha::UpdateCheckResponse {
        let body = update_engine(machine, group, board);
        let (st, xml) = common::omaha_post(&self.http, &self.base, body, &[]).await;
        assert_eq!(st, StatusCode::OK, "{xml}");
        let resp = omaha::parse_response(xml.as_bytes()).unwrap();
        resp.apps[0].updatecheck.clone().unwrap()
    }
}

/// A check exactly as Flatcar's update_engine sends it (`../shared/reference/
/// flatcar-fleets.md`), from version 3033.0.0, with `GROUP=` `track`.
fn update_engine(machine: &str, track: &str, board: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="update_engine-0.4.10" updaterversion="update_engine-0.4.10" installsource="ondemandupdate" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="3033.0.0_x86_64"></os>
<app appid="{{{FLATCAR}}}" version="3033.0.0" track="{track}" bootid="{{b-{machine}}}" oem="" oemversion="" alephversion="3033.0.0" machineid="{machine}" machinealias="" lang="en-US" board="{board}" hardware_class="" delta_okay="false" ><ping active="1"></ping><updatecheck></updatecheck></app>
</request>"#
    )
}

fn find<'a>(list: &'a Value, key: &str, want: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v[key] == want)
        .unwrap_or_else(|| panic!("no {key} = {want} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nebraska_installation_moves_to_platte() {
    let Some(env) = Env::new().await else {
        return;
    };

    // A dry run prints the plan and writes nothing.
    let dry = env.import_json(&["--dry-run"]).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["failed"], 0);
    assert!(dry["created"].as_u64().unwrap() > 0, "{dry}");
    for kind in ["apps", "packages", "channels", "groups"] {
        for step in dry[kind].as_array().unwrap() {
            assert_eq!(step["outcome"], "would_create", "{step}");
        }
    }
    assert_eq!(env.get("/apps").await, json!([]));

    let first = env.import_json(&[]).await;
    assert_eq!(first["failed"], 0, "{first:#}");
    assert_eq!(first["existing"], 0, "{first:#}");

    // Applications: Flatcar completes on reboot, the add-on on install.
    let apps = env.get("/apps").await;
    assert_eq!(find(&apps, "id", FLATCAR)["completes_on"], "reboot");
    assert_eq!(find(&apps, "id", ADDON)["completes_on"], "install");
    assert_eq!(
        find(&apps, "id", FLATCAR)["name"],
        "Flatcar Container Linux"
    );

    // Packages: the four Flatcar payloads with an action, by reference, with their attributes.
    let packages = env.get(&format!("/packages?app={FLATCAR}")).await;
    assert_eq!(packages.as_array().unwrap().len(), 4, "{packages:#}");
    assert_eq!(env.get(&format!("/packages?app={ADDON}")).await, json!([]));
    let id_of = |nebraska: &str| -> String {
        let p = find(&first["packages"], "nebraska_id", nebraska);
        p["platte_id"].as_str().unwrap().to_owned()
    };
    let stable = find(&packages, "id", &id_of(P_STABLE_AMD64));
    let (sha1, _, sha256_hex) = digests(P_STABLE_AMD64);
    assert_eq!(stable["format"], "update_engine");
    assert_eq!(
        (&stable["version"], &stable["arch"]),
        (&json!("3510.2.0"), &json!("amd64"))
    );
    assert_eq!(stable["external_url"], STABLE_URL);
    assert_eq!(stable["filename"], PAYLOAD);
    assert_eq!(stable["size"], 1_000_000);
    assert_eq!(stable["sha1_base64"], sha1);
    assert_eq!(stable["sha256_hex"], sha256_hex);
    assert_eq!(stable["metadata_size"], 4242);
    assert_eq!(stable["disable_payload_backoff"], true);
    assert_eq!(stable["is_delta"], false);
    let files: Vec<(&str, &str)> = stable["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap(),
                f["sha256_hex"].as_str().unwrap(),
            )
        })
        .collect();
    let file_sha = |name: &str| digests(&format!("{P_STABLE_AMD64}/{name}")).2;
    assert_eq!(
        files,
        [
            ("oem-azure.gz", file_sha("oem-azure.gz").as_str()),
            ("flatcar-docker.gz", file_sha("flatcar-docker.gz").as_str())
        ]
    );
    let beta = find(&packages, "id", &id_of(P_BETA_AMD64));
    assert_eq!(beta["disable_payload_backoff"], false);
    assert_eq!(beta["files"].as_array().unwrap().len(), 1, "{beta}");
    // A URL without a trailing slash is the codebase all the same.
    let beta_arm = find(&packages, "id", &id_of(P_BETA_ARM64));
    assert_eq!(
        beta_arm["external_url"],
        "https://mirror.example/arm64-beta/"
    );

    // Channels: one per name, a pointer per architecture, in the update_engine pointers.
    let channels = env.get(&format!("/apps/{FLATCAR}/channels")).await;
    assert_eq!(channels.as_array().unwrap().len(), 2, "{channels:#}");
    let stable_channel = find(&channels, "name", "stable");
    assert_eq!(
        stable_channel["update_engine_packages"],
        json!({"amd64": id_of(P_STABLE_AMD64), "arm64": id_of(P_STABLE_ARM64)})
    );
    assert_eq!(
        find(&channels, "name", "beta")["update_engine_packages"],
        json!({"amd64": id_of(P_BETA_AMD64), "arm64": id_of(P_BETA_ARM64)})
    );
    let addon_channels = env.get(&format!("/apps/{ADDON}/channels")).await;
    assert_eq!(addon_channels[0]["name"], "main");

    // Groups: Nebraska's ids, their tracks, their channel and the mapped policy.
    let groups = env.get(&format!("/apps/{FLATCAR}/groups")).await;
    let g = find(&groups, "id", G_STABLE);
    assert_eq!(g["track"], "stable");
    assert_eq!(g["name"], "Stable (AMD64)");
    assert_eq!(g["channel_id"], stable_channel["id"]);
    assert_eq!(
        g["policy"],
        json!({"paused": false, "rate_limit": {"count": 50, "period_secs": 900},
               "concurrency_limit": 50, "update_timeout_secs": 3600})
    );
    let arm = find(&groups, "id", G_STABLE_ARM);
    assert_eq!(arm["track"], G_STABLE_ARM, "a track goes to one group only");
    assert_eq!(arm["channel_id"], stable_channel["id"]);
    assert_eq!(
        find(&groups, "id", G_BETA)["policy"],
        json!({"paused": false, "update_timeout_secs": 7200,
               "windows": ["Mon-Fri 09:00 8h Europe/Berlin"], "floors": ["3510.2.0"]})
    );
    let canary = find(&groups, "id", G_CANARY);
    assert_eq!(canary["track"], G_CANARY);
    assert_eq!(
        canary["policy"],
        json!({"paused": true, "rate_limit": {"count": 3, "period_secs": 86400},
               "concurrency_limit": 3, "update_timeout_secs": 1800})
    );
    let addon_groups = env.get(&format!("/apps/{ADDON}/groups")).await;
    assert_eq!(find(&addon_groups, "id", G_ADDON)["track"], "addon");

    // update_engine naming its group by Nebraska's UUID or by the track gets the release and
    // its extra files; an arm64 host of the ARM group gets the arm64 payload.
    for (machine, track, board, want) in [
        ("m-uuid", G_STABLE, "amd64-usr", P_STABLE_AMD64),
        ("m-track", "stable", "amd64-usr", P_STABLE_AMD64),
        ("m-track-upper", "Stable", "amd64-usr", P_STABLE_AMD64),
        ("m-arm", G_STABLE_ARM, "arm64-usr", P_STABLE_ARM64),
    ] {
        let uc = env.check(machine, track, board).await;
        assert_eq!(uc.status.as_str(), "ok", "{track}: {uc:?}");
        let man = uc.target_manifest().unwrap();
        assert_eq!(man.version, "3510.2.0");
        let names: Vec<&str> = man.packages.iter().map(|p| p.name.as_str()).collect();
        let (_, sha256_b64, _) = digests(want);
        assert_eq!(
            man.postinstall().unwrap().sha256.as_deref(),
            Some(sha256_b64.as_str())
        );
        if want == P_STABLE_AMD64 {
            assert_eq!(names, [PAYLOAD, "oem-azure.gz", "flatcar-docker.gz"]);
            assert_eq!(uc.urls, [STABLE_URL]);
            assert_eq!(man.postinstall().unwrap().metadata_size, Some(4242));
        } else {
            assert_eq!(names, [PAYLOAD]);
        }
    }

    // The report names each item that did not map, with its reason.
    let unmapped = first["unmapped"].as_array().unwrap();
    let reason = |id: &str, kind: &str| -> String {
        unmapped
            .iter()
            .find(|u| u["id"] == id && u["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} {id} in {unmapped:#?}"))["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(reason(ADDON, "app").contains("product id"));
    assert!(reason(P_OTHER, "package").contains("a other package"));
    assert!(reason(P_NO_ACTION, "package").contains("SHA-256"));
    assert!(reason(P_BETA_AMD64, "extra file").contains("no SHA-256"));
    assert!(reason(C_MAIN, "channel").contains("not imported"));
    let safe = unmapped
        .iter()
        .find(|u| u["id"] == G_BETA && u["item"].as_str().unwrap().starts_with("policy_safe"))
        .expect("safe mode reported");
    assert!(safe["reason"].as_str().unwrap().contains("no safe mode"));
    assert_eq!(unmapped.len(), 6, "nothing else is reported: {unmapped:#?}");
    // The shared stable track is a note: same channel and policy.
    let notes = first["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .contains(&format!("GROUP={G_STABLE_ARM}"))),
        "{notes:?}"
    );

    // A second run changes nothing and says so.
    let again = env.import_json(&[]).await;
    assert_eq!(
        (&again["created"], &again["failed"]),
        (&json!(0), &json!(0))
    );
    assert_eq!(again["existing"], first["created"]);
    for kind in ["apps", "packages", "channels", "groups"] {
        for step in again[kind].as_array().unwrap() {
            assert_eq!(step["outcome"], "exists", "{step}");
        }
    }
    let (ok, out, err) = env.import(&[]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(
        env.get(&format!("/packages?app={FLATCAR}"))
            .await
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(env.get(&format!("/apps/{FLATCAR}/groups")).await, groups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_id_given_is_kept_and_a_taken_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Settings::for_tests(&dir.path().join("data")))
        .await
        .unwrap();
    let (http, base) = (reqwest::Client::new(), format!("http://{}", server.addr));
    let api = async |method: Method, path: &str, body: Value| {
        common::api(&http, &base, &server.admin_token, method, path, Some(body)).await
    };
    let (st, v) = api(
        Method::POST,
        "/apps",
        json!({"id": FLATCAR, "name": "Flatcar"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let path = format!("/apps/{FLATCAR}/groups");
    let (st, v) = api(
        Method::POST,
        &path,
        json!({"id": G_STABLE, "name": "Stable", "track": "stable"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["id"], G_STABLE);
    let (st, v) = api(
        Method::POST,
        &path,
        json!({"id": G_STABLE, "name": "Again", "track": "again"}),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, v) = api(
        Method::POST,
        &path,
        json!({"id": "not/an id", "name": "Bad", "track": "bad"}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}
