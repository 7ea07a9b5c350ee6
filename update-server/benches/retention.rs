//! Bench binary: how long retention takes on a big store, how long its longest batch holds the
//! SQLite write lock, and what check-ins that write (events) see meanwhile.
//!
//! Fills a store on disk (the system temp directory, `synchronous=FULL` as in production) with
//! 100,000 instances (10 % not seen for 8–60 days), 1,000,000 events and 250,000 status history
//! entries spread over the last 1,000 days, and 20,000 activity entries; then starts a server
//! with the default retention (90 days events and history, 365 days activity) and forgetting
//! after 7 days, measures check-ins carrying an event (each written before it is answered) from 4
//! concurrent clients, first alone and then during a prune, and prints the figures.
//! `PRUNE_BATCH=N` sets the batch size (default: the server's default), `PRUNE_FILL=random`
//! writes the rows in random time order (the worst case for deletes), `PRUNE_FORGET=0` leaves
//! forgetting off, and `RUST_LOG=update_server::retention=debug` logs every batch with the time
//! it held the write lock. Figures: `docs/usage/operations.md`, *Capacity and retention*.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use update_server::clock::ManualClock;
use update_server::config::Settings;
use update_server::rollout::RolloutEngine;

const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const DAY: i64 = 86_400;
const NOW: i64 = 1_800_000_000;
const INSTANCES: u64 = 100_000;
const EVENTS: u64 = 1_000_000;
const HISTORY: u64 = 250_000;
const ACTIVITY: u64 = 20_000;
const CLIENTS: usize = 4;

/// A deterministic pseudo-random number from `i` (splitmix64).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The time of row `i` of `n`, within the last 1,000 days: rising with `i` (give or take an
/// hour), as the server writes them; with `PRUNE_FILL=random`, in random order (the worst case
/// for deletes: every batch touches pages all over the table).
fn past(i: u64, n: u64) -> i64 {
    let span = 1000 * DAY as u64;
    let off = if std::env::var("PRUNE_FILL").is_ok_and(|v| v == "random") {
        mix(i) % span
    } else {
        (span - i * (span / n)).saturating_sub(mix(i) % 3600)
    };
    NOW - i64::try_from(off).unwrap()
}

fn machine(i: u64) -> String {
    format!("machine-{:08}", i % INSTANCES)
}

async fn fill(path: &std::path::Path) {
    // Migrations first, through the server's own store.
    update_server::store::SqliteStore::open(path)
        .await
        .unwrap()
        .close()
        .await;
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    sqlx::query("PRAGMA synchronous = OFF")
        .execute(&mut c)
        .await
        .unwrap();
    let mut tx = c.begin().await.unwrap();
    sqlx::query("INSERT INTO apps (id, name, created_at) VALUES (?, 'OS', 0)")
        .bind(APP)
        .execute(&mut *tx)
        .await
        .unwrap();
    for i in 0..INSTANCES {
        // One in ten not seen for 8 to 60 days, the rest within the last day.
        let last = if i % 10 == 0 {
            NOW - 8 * DAY - i64::try_from(mix(i) % (52 * DAY as u64)).unwrap()
        } else {
            NOW - i64::try_from(mix(i) % DAY as u64).unwrap()
        };
        sqlx::query(
            "INSERT INTO instances (machine_id, app_id, version, last_check_at, status, \
             status_at, created_at) VALUES (?, ?, '3510.2.0', ?, 'complete', ?, 0)",
        )
        .bind(machine(i))
        .bind(APP)
        .bind(last)
        .bind(last)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for i in 0..EVENTS {
        sqlx::query(
            "INSERT INTO events (machine_id, app_id, event_type, event_result, version, at) \
             VALUES (?, ?, 13, 1, '3510.2.0', ?)",
        )
        .bind(machine(mix(i ^ 0xE)))
        .bind(APP)
        .bind(past(i, EVENTS))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for i in 0..HISTORY {
        sqlx::query(
            "INSERT INTO instance_status_history (machine_id, app_id, status, version, at) \
             VALUES (?, ?, 'downloading', '3510.2.0', ?)",
        )
        .bind(machine(mix(i ^ 0x4)))
        .bind(APP)
        .bind(past(i, HISTORY))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for i in 0..ACTIVITY {
        sqlx::query(
            "INSERT INTO activity (at, kind, severity, app_id, message) \
             VALUES (?, 'instance_update_failed', 'error', ?, 'failed')",
        )
        .bind(past(i, ACTIVITY))
        .bind(APP)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    c.close().await.unwrap();
}

/// Machines the check-ins come from: 200 recently seen ones (never forgotten), each warmed up
/// once before the dry run, so the load changes nothing a prune would delete.
const LOAD_MACHINES: u64 = 200;

fn check_xml(k: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="3510.2.0_x86_64"></os>
<app appid="{{{APP}}}" version="3510.2.0" track="stable" machineid="{}" board="amd64-usr"><ping r="1"></ping><event eventtype="13" eventresult="1"></event></app>
</request>"#,
        machine((k % LOAD_MACHINES) * 10 + 1)
    )
}

/// Check-ins with an event from `CLIENTS` clients until `stop`; their latencies.
async fn load(url: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let (client, url, stop) = (client.clone(), url.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut k = w as u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.post(&url).body(check_xml(k)).send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
                lat.push(t.elapsed());
                k += CLIENTS as u64;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn pct(all: &[Duration], q: f64) -> Duration {
    all[((all.len() as f64 * q) as usize).min(all.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `RUST_LOG=update_server::retention=debug` shows every batch.
    if let Ok(f) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(f).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let db = data.join("platte.sqlite");
        let t = Instant::now();
        fill(&db).await;
        let size = std::fs::metadata(&db).unwrap().len() as f64 / 1e6;
        println!(
            "filled {INSTANCES} instances, {EVENTS} events, {HISTORY} history entries, \
             {ACTIVITY} activity entries in {:.1?} ({size:.0} MB at {})",
            t.elapsed(),
            db.display()
        );

        let mut s = Settings::for_tests(&data);
        s.retention.forget_instances_after_days =
            (std::env::var("PRUNE_FORGET").as_deref() != Ok("0")).then_some(7);
        if let Some(b) = std::env::var("PRUNE_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            s.retention.batch_size = b;
        }
        let batch = s.retention.batch_size;
        let clock: Arc<dyn update_server::clock::Clock> = ManualClock::new(NOW);
        let server = update_server::server::start_with(s, clock, Arc::new(RolloutEngine))
            .await
            .unwrap();
        let url = format!("http://{}/v1/update/", server.addr);
        let pruner = Arc::clone(&server.state.pruner);

        let http = reqwest::Client::new();
        for k in 0..LOAD_MACHINES {
            let r = http.post(&url).body(check_xml(k)).send().await.unwrap();
            assert!(r.status().is_success());
        }

        let t = Instant::now();
        let dry = pruner.run(true).await.unwrap();
        println!(
            "dry run: {} rows to delete, counted in {:.0} ms",
            dry.total,
            ms(t.elapsed())
        );

        // Check-ins alone, for 3 s.
        let stop = Arc::new(AtomicBool::new(false));
        let l = tokio::spawn(load(url.clone(), Arc::clone(&stop)));
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let alone = l.await.unwrap();

        // Check-ins during the prune.
        let stop = Arc::new(AtomicBool::new(false));
        let l = tokio::spawn(load(url, Arc::clone(&stop)));
        let rep = pruner.run(false).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        let during = l.await.unwrap();

        println!("batch size {batch}");
        for (table, n) in rep.rows.by_table() {
            println!("  {table:<24} {n:>9} rows deleted");
        }
        println!(
            "prune: {} rows in {} batches, {:.1} s (pauses between batches included), \
             longest batch {:.1} ms",
            rep.total,
            rep.batches,
            rep.duration_ms / 1000.0,
            rep.longest_batch_ms
        );
        for (what, l) in [("alone", &alone), ("during the prune", &during)] {
            println!(
                "check-ins with an event, {CLIENTS} clients, {what}: {} requests, \
                 p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.len(),
                ms(pct(l, 0.50)),
                ms(pct(l, 0.99)),
                ms(*l.last().unwrap())
            );
        }
        assert_eq!(
            rep.rows, dry.rows,
            "the dry run counted what the run deleted"
        );
        server.shutdown().await.unwrap();
    });
}
