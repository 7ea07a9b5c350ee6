//! Bench binary: update-check latency of the real `update-server` binary under a soft
//! open-file limit it cannot raise (default 1024), without and then during an attack of idle
//! and slowloris connections (default 1,100 idle: half silent, half kept alive after one
//! request; 500 slowloris: half trickling headers, half trickling a body), with the server's
//! default timeouts. Checks are measured two ways: with `wrk` (kept-alive connections; when
//! installed) and with fresh connections per check from this process. Prints p50/p99 with and
//! without the attack and their ratio.
//!
//! Knobs (environment): `HOSTILE_NOFILE` (1024), `HOSTILE_IDLE` (1100), `HOSTILE_SLOW` (500),
//! `HOSTILE_SECS` (wrk duration per phase, 10), `HOSTILE_CHECKS` (fresh-connection checks per
//! phase, 500).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/hostile.rs"]
mod hostile;

use std::process::Command;
use std::time::Duration;

use hostile::{Attack, Plan, Server};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// wrk's p50, p99, requests/s and error counts for update checks against `base`.
struct WrkRun {
    p50: Duration,
    p99: Duration,
    rps: f64,
    errors: String,
}

fn parse_latency(s: &str) -> Option<Duration> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn wrk(base: &str, secs: u64, first_machine: usize) -> Option<WrkRun> {
    let script = tempfile::NamedTempFile::new().unwrap();
    let body = hostile::check_xml(0).replace("machine-00000000", "machine-%d");
    std::fs::write(
        script.path(),
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"text/xml\"\nlocal n = {first_machine}\nlocal body = [==[{body}]==]\nrequest = function()\n  n = n + 1\n  return wrk.format(nil, nil, nil, string.format(body, n))\nend\n"
        ),
    )
    .unwrap();
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c8",
            &format!("-d{secs}s"),
            "--latency",
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(script.path())
        .arg(format!("{base}/v1/update/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pick = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(str::trim))
            .and_then(parse_latency)
    };
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    let errors = text
        .lines()
        .filter(|l| l.contains("errors") || l.contains("Non-2xx"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Some(WrkRun {
        p50: pick("50%")?,
        p99: pick("99%")?,
        rps,
        errors,
    })
}

fn main() {
    let nofile = knob("HOSTILE_NOFILE", 1024);
    let idle = knob("HOSTILE_IDLE", 1100) as usize;
    let slow = knob("HOSTILE_SLOW", 500) as usize;
    let secs = knob("HOSTILE_SECS", 10);
    let checks = knob("HOSTILE_CHECKS", 500) as usize;
    hostile::raise_own_nofile((idle + slow + 4096) as u64);
    let have_wrk = Command::new("wrk").arg("--version").output().is_ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_update-server");
    let server = Server::spawn(bin, Some(nofile), &[]);
    rt.block_on(async {
        hostile::register_app(&server.base, &server.token).await;
        // Warm-up.
        hostile::round(&server.base, 0, 100, 10, 4, Duration::from_secs(10)).await;
        let calm_wrk = if have_wrk {
            wrk(&server.base, secs, 1_000_000)
        } else {
            None
        };
        let (calm, _) = hostile::round(
            &server.base,
            100_000,
            checks,
            0,
            4,
            Duration::from_secs(10),
        )
        .await;

        let attack = Attack::start(
            server.addr,
            Plan {
                silent: idle / 2,
                kept_alive: idle - idle / 2,
                slow_headers: slow / 2,
                slow_body: slow - slow / 2,
                header_trickle: Duration::from_secs(1),
                body_trickle: Duration::from_secs(60),
            },
        );
        let started = attack.wait_started(Duration::from_secs(60)).await;
        let hot_wrk = if have_wrk {
            tokio::task::spawn_blocking({
                let base = server.base.clone();
                move || wrk(&base, secs, 2_000_000)
            })
            .await
            .unwrap()
        } else {
            None
        };
        let (hot, _) = hostile::round(
            &server.base,
            200_000,
            checks,
            0,
            4,
            Duration::from_secs(10),
        )
        .await;
        let shed = hostile::metric(&server.base, "platte_http_connections_shed_total").await;
        let open = hostile::metric(&server.base, "platte_http_connections_open").await;
        let opened = attack
            .seen
            .opened
            .load(std::sync::atomic::Ordering::Relaxed);
        let refused = attack
            .seen
            .connect_errors
            .load(std::sync::atomic::Ordering::Relaxed);
        attack.stop().await;

        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "update-server under RLIMIT_NOFILE {nofile}:{nofile}; attack: {idle} idle ({} silent, {} kept alive), {slow} slowloris ({} headers, {} body); all connected: {started}; {opened} connections opened, {refused} connects failed; server shed {shed:?}, open at the end {open:?}",
            idle / 2,
            idle - idle / 2,
            slow / 2,
            slow - slow / 2
        );
        match (calm_wrk, hot_wrk) {
            (Some(c), Some(h)) => {
                println!(
                    "wrk, 8 kept-alive connections, {secs} s: without attack {:>7.0} checks/s p50 {:>9.2?} p99 {:>9.2?} [{}]",
                    c.rps, c.p50, c.p99, c.errors
                );
                println!(
                    "wrk, 8 kept-alive connections, {secs} s: during attack  {:>7.0} checks/s p50 {:>9.2?} p99 {:>9.2?} [{}]",
                    h.rps, h.p50, h.p99, h.errors
                );
                println!(
                    "wrk p99 ratio (attack / none) = {:.2}",
                    ratio(h.p99, c.p99)
                );
            }
            _ => println!("wrk: not installed or failed; fresh-connection figures only"),
        }
        for (name, r) in [("without attack", &calm), ("during attack ", &hot)] {
            println!(
                "fresh connection per check, {checks} checks, 4 at a time: {name} p50 {:>9.2?} p99 {:>9.2?} failures {}",
                r.quantile(0.5),
                r.quantile(0.99),
                r.failures.len()
            );
            if let Some(f) = r.failures.first() {
                println!("  first failure: {f}");
            }
        }
        println!(
            "fresh-connection p99 ratio (attack / none) = {:.2}",
            ratio(hot.quantile(0.99), calm.quantile(0.99))
        );
    });
    let status = server.terminate();
    println!("graceful stop: {status}");
}
