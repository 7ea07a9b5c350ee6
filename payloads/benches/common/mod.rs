//! What the payload benches share: running one measurement in a fresh child process (so its peak
//! memory, VmHWM, is its own) against a fresh target file, and summing runs up.
//!
//! The bench binary runs itself as the child: [`run_child`] sets the environment variable named
//! by the caller to the role, and the bench's `main` calls its own child code when that variable
//! is set, which ends with [`report`].
#![allow(clippy::unwrap_used, dead_code)]

use std::env;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// One measurement: wall-clock seconds, CPU seconds and the child's peak resident memory.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Seconds, as timed by the child.
    pub secs: f64,
    /// CPU seconds (user + system, all threads) of the whole child process.
    pub cpu_secs: f64,
    /// The child's VmHWM in KiB.
    pub hwm_kib: u64,
}

/// Runs the current bench binary as a child with `role_var=role` and `env`, after creating
/// `target` as a file of `target_len` bytes and syncing (so no dirty pages of the previous run are
/// left to write back); removes the target afterwards. The child prints what [`report`] prints.
pub fn run_child(
    role_var: &str,
    role: &str,
    target: &Path,
    target_len: u64,
    env: &[(&str, &OsStr)],
) -> Run {
    let f = File::create(target).unwrap();
    f.set_len(target_len).unwrap();
    drop(f);
    Command::new("sync").status().unwrap();
    let out = Command::new(env::current_exe().unwrap())
        .env(role_var, role)
        .env("BENCH_TARGET", target)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    fs::remove_file(target).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{role} child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        stdout
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("{role} child printed no {name}: {stdout}"))
            .to_owned()
    };
    Run {
        secs: field("seconds=").parse().unwrap(),
        cpu_secs: field("cpu=").parse().unwrap(),
        hwm_kib: field("hwm_kib=").parse().unwrap(),
    }
}

/// In the child: prints the time since `start`, the CPU time and the peak memory, for
/// [`run_child`].
pub fn report(start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "seconds={secs:.4} cpu={:.2} hwm_kib={}",
        cpu_secs(),
        vm_hwm_kib()
    );
}

/// CPU seconds (user + system) this process has used, all its threads included (from
/// /proc/self/stat, in clock ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_secs() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks = |field: usize| fields[field - 3].parse::<u64>().unwrap();
    (ticks(14) + ticks(15)) as f64 / 100.0
}

/// This process's peak resident memory (VmHWM) in KiB.
pub fn vm_hwm_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Best and median time of some runs, and their highest peak memory.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Shortest time, seconds.
    pub best: f64,
    /// Median time, seconds.
    pub median: f64,
    /// Highest VmHWM, KiB.
    pub hwm_kib: u64,
}

/// Sums `runs` up (at least one).
pub fn stats(runs: &[Run]) -> Stats {
    let mut t: Vec<f64> = runs.iter().map(|r| r.secs).collect();
    t.sort_by(f64::total_cmp);
    Stats {
        best: t[0],
        median: t[t.len() / 2],
        hwm_kib: runs.iter().map(|r| r.hwm_kib).max().unwrap_or(0),
    }
}

/// Times of runs (wall clock, and CPU in parentheses), rounded to hundredths of a second.
pub fn times(runs: &[Run]) -> String {
    let t: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.2} ({:.2})", r.secs, r.cpu_secs))
        .collect();
    t.join(", ")
}
