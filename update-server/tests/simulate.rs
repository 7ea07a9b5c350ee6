//! The fleet simulator end to end, on small fleets against an in-process server with a shared
//! manual clock: a high failure rate halts the rollout and nothing is granted after the halt; no
//! failures complete it with every machine on the new version. In both, the simulator's counts
//! agree with the server's rollout status, and the CSV and chart are written.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use clap::Parser as _;
use update_server::simulate::{SimulateArgs, StopReason, simulate};

fn args(dir: &std::path::Path, extra: &[&str]) -> SimulateArgs {
    let csv = dir.join("run.csv");
    let chart = dir.join("run.svg");
    // Defaults, each left out when `extra` sets it.
    let defaults = [
        ("--machines", "300"),
        ("--check-interval", "2h"),
        ("--step-interval", "4h"),
        ("--reboot-delay", "30m"),
        ("--linger", "2h"),
        ("--sample-every", "20m"),
        ("--parallel", "32"),
    ];
    let mut v = vec!["simulate".to_string()];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            v.extend([flag.to_string(), value.to_string()]);
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v.extend([
        "--data-dir".into(),
        dir.display().to_string(),
        "--csv".into(),
        csv.display().to_string(),
        "--chart".into(),
        chart.display().to_string(),
    ]);
    SimulateArgs::try_parse_from(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_failure_rate_halts_and_nothing_is_granted_after() {
    let dir = tempfile::tempdir().unwrap();
    let out = simulate(args(
        dir.path(),
        &[
            "--failure-rate",
            "0.3",
            "--halt-rate",
            "0.1",
            "--halt-min-attempts",
            "20",
            "--ramp",
            "10,50,100",
            "--seed",
            "11",
        ],
    ))
    .await
    .unwrap();
    let s = &out.summary;
    assert_eq!(s.stop, StopReason::Halted, "{s}");
    let halt = s.halt.clone().expect("halted");
    assert!(
        halt.reason.contains("failed to update to"),
        "{}",
        halt.reason
    );
    assert!(s.totals.failures > 0 && s.counts.complete < 300, "{s}");
    assert_eq!(s.grants_after_halt, 0, "{s}");
    // The server agrees: its attempts never grow after the halt, and every count matches.
    let after: Vec<_> = out.samples.iter().filter(|x| x.at > halt.at).collect();
    assert!(after.len() >= 3, "the run lingers after the halt");
    let attempts = s.server.grants.attempts;
    assert!(
        after
            .iter()
            .all(|x| x.server.grants.attempts == attempts && x.server.halted)
    );
    assert!(s.mismatches().is_empty(), "{s}");
    assert_eq!(s.server.grants.attempts, s.counts.attempted);
    assert!(
        s.totals.grants >= s.counts.attempted,
        "a machine that failed and was granted again is one attempt on the server: {s}"
    );
    assert_eq!(
        s.counts.registered, 300,
        "every machine checked in after the halt"
    );
    // Outputs.
    let csv = std::fs::read_to_string(dir.path().join("run.csv")).unwrap();
    assert_eq!(csv.lines().count(), out.samples.len() + 1);
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "server_halted").unwrap();
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    assert_eq!(last[col], "1", "halted flag in the last row");
    let svg = std::fs::read_to_string(dir.path().join("run.svg")).unwrap();
    assert!(svg.contains("rollout halted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failures_complete_with_every_machine_on_the_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = simulate(args(
        dir.path(),
        &["--failure-rate", "0", "--ramp", "10,50,100", "--seed", "5"],
    ))
    .await
    .unwrap();
    let s = &out.summary;
    assert_eq!(s.stop, StopReason::Completed, "{s}");
    assert!(s.halt.is_none());
    assert_eq!(s.counts.complete, 300, "{s}");
    assert_eq!(s.totals.grants, 300, "one attempt each");
    assert_eq!(s.server.by_version.get("4152.2.0"), Some(&300));
    assert_eq!(s.server.effective_percent, 100.0);
    assert!(s.mismatches().is_empty(), "{s}");
    // The ramp held machines back: the new version grew in steps, never above what was allowed.
    for x in &out.samples {
        let allowed = x.server.effective_percent / 100.0 * 300.0;
        assert!(
            (x.counts.on_new() as f64) <= allowed * 1.35 + 3.0,
            "{} on new at {:.1} h with {}% allowed",
            x.counts.on_new(),
            x.hours(),
            x.server.effective_percent
        );
    }
    assert!(dir.path().join("run.svg").exists());
}

/// Release day in small: a new version at 100 % from the start, machines checking every 45
/// minutes. Every machine holds a grant within one (jittered) check interval, and the summary
/// reports when, with the wall-clock latency of every update check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_day_grants_every_machine_within_one_check_interval() {
    let dir = tempfile::tempdir().unwrap();
    let out = simulate(args(
        dir.path(),
        &[
            "--failure-rate",
            "0",
            "--ramp",
            "100",
            "--check-interval",
            "45m",
            "--linger",
            "0s",
            "--seed",
            "3",
        ],
    ))
    .await
    .unwrap();
    let s = &out.summary;
    assert_eq!(s.stop, StopReason::Completed, "{s}");
    let granted = s.all_granted_secs.expect("every machine was granted");
    // First checks come within one check interval with ±25 % jitter, a minute's tick on top.
    let bound = 45 * 60 * 5 / 4 + 60;
    assert!(
        granted > 0 && granted <= bound,
        "granted after {granted} s: {s}"
    );
    let l = s.check_latency;
    assert!(
        l.count >= 300 * 2,
        "a first check and a post-reboot check per machine: {s}"
    );
    assert!(
        l.p50 > std::time::Duration::ZERO && l.p50 <= l.p99 && l.p99 <= l.max,
        "{l:?}"
    );
    assert!(s.to_string().contains("every machine granted after"), "{s}");
    assert!(s.mismatches().is_empty(), "{s}");
}
