//! Bench binary: server time to render the dashboard's pages on a large fleet (issue 21's goal:
//! the overview and a group page under 100 ms each with 100,000 machines and 1,000,000 events).
//!
//! Builds the catalogue over the admin API (app, channel `stable` pointing at a published 2.0.0,
//! four groups following it), stops the server, fills its SQLite file with 100,000 machines
//! (spread over the groups, versions and statuses, each last seen within the hour), 1,000,000 events, 200,000 status history
//! entries, 20,000 activity entries and 90 days of version samples, starts it again and logs in.
//! Then each page is fetched `BENCH_REQUESTS` times (default 30, after 3 warm-ups), one at a
//! time over loopback, and the median, 95th percentile and slowest time are printed next to
//! `/healthz` (the constant route: the HTTP stack's floor) measured in the same run, with the
//! ratio. Figures: docs/usage/dashboard.md, *Performance*.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use sqlx::Connection as _;
use update_server::config::Settings;
use update_server::server::{RunningServer, start};

const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const GROUPS: [&str; 4] = ["stable", "beta", "canary", "edge"];
const MACHINES: u64 = 100_000;
const EVENTS: u64 = 1_000_000;
const HISTORY: u64 = 200_000;
const ACTIVITY: u64 = 20_000;
const SAMPLE_DAYS: i64 = 90;
/// The goal for the overview and a group page (milliseconds, median).
const GOAL_MS: f64 = 100.0;

fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn machine(i: u64) -> String {
    format!("machine-{:08}", i % MACHINES)
}

/// Machine `i`'s version and status: 70 % on 2.0.0 (complete), 20 % on 1.0.0 (idle), 5 %
/// downloading 2.0.0, 5 % held on 1.0.0.
fn state(i: u64) -> (&'static str, &'static str, &'static str) {
    match mix(i) % 20 {
        0..14 => ("2.0.0", "complete", ""),
        14..18 => ("1.0.0", "idle", ""),
        18 => ("1.0.0", "downloading", ""),
        _ => ("1.0.0", "on_hold", "percentage"),
    }
}

fn release_payload(key: &payloads::SigningKey) -> Vec<u8> {
    let image: Vec<u8> = (0..64 * 1024u64).map(|i| (mix(i) >> 24) as u8).collect();
    let opts = payloads::BuildOptions::new(APP, "2.0.0", "amd64", payloads::unix_now() - 10);
    payloads::build_to_vec(&image, std::slice::from_ref(key), &opts)
        .unwrap()
        .0
}

async fn admin(
    http: &reqwest::Client,
    s: &RunningServer,
    method: reqwest::Method,
    path: &str,
    body: reqwest::Body,
    json: bool,
) -> serde_json::Value {
    let r = http
        .request(method.clone(), format!("http://{}/api/v1{path}", s.addr))
        .bearer_auth(&s.admin_token)
        .header(
            "content-type",
            if json {
                "application/json"
            } else {
                "application/octet-stream"
            },
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// App, channel `stable` at 2.0.0, the groups; returns the group ids.
async fn catalogue(s: &RunningServer, key: &payloads::SigningKey) -> Vec<String> {
    use reqwest::Method;
    let http = reqwest::Client::new();
    let j = |v: serde_json::Value| reqwest::Body::from(v.to_string());
    admin(
        &http,
        s,
        Method::POST,
        "/apps",
        j(serde_json::json!({"id": APP, "name": "OS"})),
        true,
    )
    .await;
    admin(
        &http,
        s,
        Method::POST,
        &format!("/apps/{APP}/channels"),
        j(serde_json::json!({"name": "stable"})),
        true,
    )
    .await;
    let pkg = admin(
        &http,
        s,
        Method::POST,
        "/packages?filename=os.payload",
        reqwest::Body::from(release_payload(key)),
        false,
    )
    .await;
    admin(
        &http,
        s,
        Method::PATCH,
        &format!("/apps/{APP}/channels/stable"),
        j(serde_json::json!({"packages": {"amd64": pkg["id"]}})),
        true,
    )
    .await;
    let mut ids = Vec::new();
    for g in GROUPS {
        let policy = serde_json::json!({
            "percentage": 50,
            "rate_limit": {"count": 1000, "period_secs": 3600},
            "concurrency_limit": 500,
            "auto_halt": {"max_failure_rate": 0.05, "min_attempts": 100},
        });
        let v = admin(
            &http,
            s,
            Method::POST,
            &format!("/apps/{APP}/groups"),
            j(serde_json::json!({"name": g, "channel": "stable", "policy": policy})),
            true,
        )
        .await;
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Fills the stopped server's database.
async fn fill(db: &std::path::Path, groups: &[String], now: i64) {
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    sqlx::query("PRAGMA synchronous = OFF")
        .execute(&mut c)
        .await
        .unwrap();
    let mut tx = c.begin().await.unwrap();
    for i in 0..MACHINES {
        let (version, status, detail) = state(i);
        let group = &groups[(i % groups.len() as u64) as usize];
        // Machines check in about hourly: the last contacts spread over the last hour.
        let last = now - i64::try_from(mix(i ^ 0x11) % 3_600).unwrap();
        sqlx::query(
            "INSERT INTO instances (machine_id, app_id, alias, ip, version, group_id, track, \
             board, last_check_at, status, status_detail, status_at, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, 'stable', 'amd64-usr', ?, ?, ?, ?, ?)",
        )
        .bind(machine(i))
        .bind(APP)
        .bind(format!("host-{i}"))
        .bind(format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255))
        .bind(version)
        .bind(group)
        .bind(last)
        .bind(status)
        .bind(detail)
        .bind(last)
        .bind(now - 30 * 86_400)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for i in 0..EVENTS {
        let (t, r) = [(13, 1), (14, 1), (3, 1), (3, 2)][(i % 4) as usize];
        sqlx::query(
            "INSERT INTO events (machine_id, app_id, event_type, event_result, version, at) \
             VALUES (?, ?, ?, ?, '2.0.0', ?)",
        )
        .bind(machine(mix(i)))
        .bind(APP)
        .bind(t)
        .bind(r)
        .bind(now - i64::try_from(EVENTS - i).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for i in 0..HISTORY {
        sqlx::query(
            "INSERT INTO instance_status_history (machine_id, app_id, status, version, at) \
             VALUES (?, ?, 'downloading', '2.0.0', ?)",
        )
        .bind(machine(mix(i ^ 0x4)))
        .bind(APP)
        .bind(now - i64::try_from(HISTORY - i).unwrap() * 10)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for i in 0..ACTIVITY {
        let group = GROUPS[(i % 4) as usize];
        sqlx::query(
            "INSERT INTO activity (at, kind, severity, app_id, message) \
             VALUES (?, 'group_updated', 'info', ?, ?)",
        )
        .bind(now - i64::try_from(ACTIVITY - i).unwrap() * 60)
        .bind(APP)
        .bind(format!("updated group {group}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    // 90 days of samples: 2.0.0 rising from nothing to 75 %, 1.0.0 falling.
    let interval = update_server::version_history::SAMPLE_INTERVAL_SECS;
    let instants = SAMPLE_DAYS * 86_400 / interval;
    let first = update_server::version_history::sample_instant(now) - instants * interval;
    let per_group = i64::try_from(MACHINES).unwrap() / groups.len() as i64;
    for k in 0..instants {
        let at = first + k * interval;
        let new = per_group * 3 * k / (4 * instants);
        for g in groups {
            for (v, n) in [
                ("2.0.0", new),
                ("1.0.0", per_group - new - 100),
                ("0.9.0", 100),
            ] {
                sqlx::query(
                    "INSERT INTO group_version_samples (app_id, group_id, at, version, machines) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(APP)
                .bind(g)
                .bind(at)
                .bind(v)
                .bind(n)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
        }
    }
    tx.commit().await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
}

/// One page's timings.
struct Timing {
    what: String,
    median: Duration,
    p95: Duration,
    max: Duration,
    bytes: usize,
}

async fn time_page(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
    requests: usize,
) -> Timing {
    let mut times = Vec::with_capacity(requests);
    let mut bytes = 0;
    for k in 0..requests + 3 {
        let t = Instant::now();
        let r = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.bytes().await.unwrap();
        let took = t.elapsed();
        assert!(status.is_success(), "{path}: {status}");
        bytes = body.len();
        if k >= 3 {
            times.push(took);
        }
    }
    times.sort();
    Timing {
        what: path.to_owned(),
        median: times[times.len() / 2],
        p95: times[(times.len() * 95 / 100).min(times.len() - 1)],
        max: times[times.len() - 1],
        bytes,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let key = payloads::keys::generate_signing_key();
        std::fs::write(
            keys.join("release.pub"),
            payloads::keys::public_key_pem(&key.verifying_key()),
        )
        .unwrap();
        let settings = || {
            let mut s = Settings::for_tests(&data);
            s.trusted_keys = Some(keys.clone());
            s
        };
        let server = start(settings()).await.unwrap();
        let groups = catalogue(&server, &key).await;
        server.shutdown().await.unwrap();

        let now = i64::try_from(payloads::unix_now()).unwrap();
        let t = Instant::now();
        let db = data.join(update_server::store::open::SQLITE_FILE);
        fill(&db, &groups, now).await;
        let size = std::fs::metadata(&db).unwrap().len() as f64 / 1e6;
        println!(
            "filled {MACHINES} machines in {} groups, {EVENTS} events, {HISTORY} history \
             entries, {ACTIVITY} activity entries, {SAMPLE_DAYS} days of version samples in \
             {:.1?} ({size:.0} MB)",
            groups.len(),
            t.elapsed()
        );

        let server = start(settings()).await.unwrap();
        let base = format!("http://{}", server.addr);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let login = http
            .post(format!("{base}/ui/login"))
            .form(&[("token", server.admin_token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), reqwest::StatusCode::SEE_OTHER);
        let cookie = login
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();

        let group = format!("/ui/apps/{APP}/groups/stable");
        let pages = [
            "/healthz".to_owned(),
            "/".to_owned(),
            group.clone(),
            format!("{group}/versions.svg?range=24h"),
            format!("{group}/versions.svg?range=90d"),
            "/ui/instances".to_owned(),
            "/ui/instances?search=host-4242".to_owned(),
            format!("/ui/instances/{}", machine(4242)),
            "/ui/activity".to_owned(),
            "/ui/packages".to_owned(),
        ];
        let mut timings = Vec::new();
        for p in &pages {
            timings.push(time_page(&http, &base, p, &cookie, requests).await);
        }
        let floor = ms(timings[0].median);
        println!(
            "\n{requests} requests each, one at a time (after 3 warm-ups); median / p95 / max in \
             ms; ratio = median / /healthz's median\n"
        );
        println!(
            "{:<58} {:>8} {:>8} {:>8} {:>9} {:>9}",
            "page", "median", "p95", "max", "ratio", "bytes"
        );
        for t in &timings {
            println!(
                "{:<58} {:>8.2} {:>8.2} {:>8.2} {:>8.0}× {:>9}",
                t.what,
                ms(t.median),
                ms(t.p95),
                ms(t.max),
                ms(t.median) / floor,
                t.bytes
            );
        }
        println!();
        for t in &timings[1..3] {
            let m = ms(t.median);
            println!(
                "goal {}: median {m:.1} ms {} {GOAL_MS} ms",
                t.what,
                if m < GOAL_MS { "<" } else { "NOT <" }
            );
        }
        server.shutdown().await.unwrap();
        // `BENCH_KEEP=1`: keep the database for a look at its query plans.
        if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
            println!("kept {}", dir.keep().display());
        }
    });
}
