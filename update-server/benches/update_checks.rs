//! Bench binary: 100,000 registered instances, concurrent Omaha update checks over loopback HTTP,
//! next to the constant `/healthz` route in the same run. Prints checks/s, p50/p99 and the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use update_server::config::Settings;
use update_server::store::instances::CheckIn;

const FLATCAR: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const INSTANCES: usize = 100_000;
const REQUESTS: usize = 20_000;
const CONCURRENCY: usize = 32;

fn check_xml(i: usize) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" updaterversion="platte-agent-0.1.0" installsource="scheduler" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="3510.2.0_x86_64"></os>
<app appid="{{{FLATCAR}}}" version="3510.2.0" track="stable" bootid="{{b}}" oem="qemu" machineid="machine-{i:08}" board="amd64-usr"><ping active="1"></ping><updatecheck></updatecheck><event eventtype="3" eventresult="2" previousversion=""></event></app>
</request>"#
    )
}

async fn load(url: String, bodies: Option<Arc<Vec<String>>>) -> (f64, Duration, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let client = client.clone();
        let url = url.clone();
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(REQUESTS / CONCURRENCY);
            for k in 0..REQUESTS / CONCURRENCY {
                let t = Instant::now();
                let resp = match &bodies {
                    Some(b) => {
                        client
                            .post(&url)
                            .body(b[(w * 7919 + k * 104_729) % b.len()].clone())
                            .send()
                            .await
                    }
                    None => client.get(&url).send().await,
                }
                .unwrap();
                assert!(resp.status().is_success());
                resp.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs, p(0.50), p(0.99))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let server = update_server::server::start(Settings::for_tests(dir.path()))
            .await
            .unwrap();
        let base = format!("http://{}", server.addr);
        let http = reqwest::Client::new();
        let tok = &server.admin_token;
        http.post(format!("{base}/api/v1/apps"))
            .bearer_auth(tok)
            .body(format!(r#"{{"id":"{FLATCAR}","name":"Flatcar"}}"#))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        http.post(format!("{base}/api/v1/apps/{FLATCAR}/groups"))
            .bearer_auth(tok)
            .body(r#"{"name":"stable"}"#)
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        let checkins = &server.state.service.checkins;
        let t = Instant::now();
        for i in 0..INSTANCES {
            checkins
                .record(CheckIn {
                    machine_id: format!("machine-{i:08}"),
                    app_id: FLATCAR.to_owned(),
                    version: "3510.2.0".into(),
                    group_id: None,
                    track: "stable".into(),
                    alias: String::new(),
                    ip: "127.0.0.1".into(),
                    oem: String::new(),
                    oem_version: String::new(),
                    board: "amd64-usr".into(),
                    boot_id: String::new(),
                    at: 0,
                    first_seen: 0,
                })
                .await
                .unwrap();
        }
        let n = checkins.flush().await.unwrap();
        println!(
            "registered {n} instances in {:.2?} (batched writes)",
            t.elapsed()
        );
        let bodies = Arc::new((0..INSTANCES).step_by(7).map(check_xml).collect::<Vec<_>>());
        // Warm up both routes.
        load(format!("{base}/healthz"), None).await;
        let (hz_rps, hz_p50, hz_p99) = load(format!("{base}/healthz"), None).await;
        let (uc_rps, uc_p50, uc_p99) = load(format!("{base}/v1/update/"), Some(bodies)).await;
        println!(
            "concurrency {CONCURRENCY}, {REQUESTS} requests per route, {} instances",
            INSTANCES
        );
        println!("/healthz      {hz_rps:>9.0} req/s  p50 {hz_p50:>9.2?}  p99 {hz_p99:>9.2?}");
        println!("/v1/update/   {uc_rps:>9.0} req/s  p50 {uc_p50:>9.2?}  p99 {uc_p99:>9.2?}");
        println!("update checks / ceiling = {:.2}", uc_rps / hz_rps);
        server.shutdown().await.unwrap();
    });
}
