//! Benchmark: build and apply a 1 GiB image (a third random, a third compressible text, a third
//! zeros, in 4 MiB regions) and compare apply throughput with a plain 1 MiB read/write copy of the
//! same image into a target of the same size, in the same run. Each measurement runs in a fresh
//! child process so its peak memory (VmHWM) is its own. Two modes: `cached` (no sync: page-cache
//! speed) and `durable` (the target is fdatasync'ed before the clock stops; apply also re-reads
//! and hashes the target, as it always does).
//!
//! Run with `cargo bench -p payloads --bench apply_1gib`. Uses about 3.5 GiB in
//! `target/tmp` (CARGO_TARGET_TMPDIR) and removes it afterwards.
#![allow(clippy::unwrap_used)]

use std::env;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use payloads::build::{BuildOptions, build_file};
use payloads::keys::{load_signing_key, write_keypair};
use payloads::{ApplyOptions, OpKind, Target, TrustStore, apply_from_reader, unix_now};

const MIB: u64 = 1 << 20;
const IMAGE_LEN: u64 = 1024 * MIB;
const REGION: usize = 4 << 20;
const ROUNDS: usize = 5;

fn main() {
    if let Ok(role) = env::var("PAYLOADS_BENCH_CHILD") {
        child(&role);
        return;
    }
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let d = dir.path();

    let image = d.join("image");
    let t = Instant::now();
    write_image(&image);
    println!(
        "image: {} MiB in 4 MiB regions (1/3 random, 1/3 text, 1/3 zero), generated in {:.1} s",
        IMAGE_LEN / MIB,
        t.elapsed().as_secs_f64()
    );

    let keys = write_keypair(&d.join("bench")).unwrap();
    let key = load_signing_key(&keys.private).unwrap();
    let payload = d.join("payload");
    let opts = BuildOptions::new("bench", "1.0.0", "x86_64", unix_now());
    let t = Instant::now();
    let report = build_file(&image, &payload, &[key], &opts).unwrap();
    let build_s = t.elapsed().as_secs_f64();
    println!(
        "build: {build_s:.2} s ({:.0} MiB/s of image, {} threads), payload {:.1} MiB, operations: REPLACE {}, REPLACE_ZSTD {}, ZERO {}",
        IMAGE_LEN as f64 / MIB as f64 / build_s,
        opts.threads,
        report.payload_len as f64 / MIB as f64,
        report.count(OpKind::Replace),
        report.count(OpKind::ReplaceZstd),
        report.count(OpKind::Zero),
    );

    println!();
    println!(
        "{:<15} {:>8} {:>11} {:>8} {:>11} {:>6} {:>13} {:>14}",
        "mode",
        "copy s",
        "copy MiB/s",
        "apply s",
        "apply MiB/s",
        "ratio",
        "copy VmHWM",
        "apply VmHWM"
    );
    for mode in ["cached", "durable"] {
        let mut copy = Vec::new();
        let mut apply = Vec::new();
        for round in 0..ROUNDS {
            // Alternate which goes first, so neither always pays for the other's writeback.
            let mut pair = [("copy", &mut copy), ("apply", &mut apply)];
            if round % 2 == 1 {
                pair.reverse();
            }
            for (role, results) in pair {
                results.push(run_child(d, role, mode, &image, &payload, &keys.public));
            }
        }
        // Best and median time, peak memory over all runs.
        let stats = |v: &[(f64, u64)]| {
            let mut t: Vec<f64> = v.iter().map(|r| r.0).collect();
            t.sort_by(f64::total_cmp);
            let hwm = v.iter().map(|r| r.1).max().unwrap_or(0);
            (t[0], t[t.len() / 2], hwm)
        };
        let (cs, cmed, chwm) = stats(&copy);
        let (as_, amed, ahwm) = stats(&apply);
        let mibs = |s: f64| IMAGE_LEN as f64 / MIB as f64 / s;
        for (label, c, a) in [("best", cs, as_), ("median", cmed, amed)] {
            println!(
                "{:<15} {c:>8.2} {:>11.0} {a:>8.2} {:>11.0} {:>6.2} {:>10.1} MiB {:>11.1} MiB",
                format!("{mode}/{label}"),
                mibs(c),
                mibs(a),
                c / a,
                chwm as f64 / 1024.0,
                ahwm as f64 / 1024.0,
            );
        }
        println!(
            "                (all runs: copy {:?} s, apply {:?} s)",
            copy.iter()
                .map(|r| (r.0 * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            apply
                .iter()
                .map(|r| (r.0 * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
    println!();
    println!("goals: apply/copy ratio >= 0.80, apply peak memory < 32 MiB");
    drop(dir);
}

/// Writes the 1 GiB test image without holding it in memory.
fn write_image(path: &Path) {
    let mut w = BufWriter::with_capacity(REGION, File::create(path).unwrap());
    let text = text_block();
    let zeros = vec![0u8; REGION];
    let mut random = vec![0u8; REGION];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for r in 0..(IMAGE_LEN as usize / REGION) {
        match r % 3 {
            0 => {
                for word in random.chunks_exact_mut(8) {
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    word.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
                }
                w.write_all(&random).unwrap();
            }
            1 => w.write_all(&text).unwrap(),
            _ => w.write_all(&zeros).unwrap(),
        }
    }
    w.flush().unwrap();
    w.get_ref().sync_all().unwrap();
}

/// 4 MiB of log-like text (compresses several-fold, like binaries and text in an OS image).
fn text_block() -> Vec<u8> {
    let mut out = Vec::with_capacity(REGION + 128);
    let mut i = 0u64;
    while out.len() < REGION {
        let line = format!(
            "{:08} kernel: usb {}-{}: new high-speed USB device number {} using xhci_hcd\n",
            i,
            i % 7,
            i % 13,
            i % 127
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(REGION);
    out
}

/// Runs one measurement in a child process; returns (seconds, VmHWM KiB).
fn run_child(
    dir: &Path,
    role: &str,
    mode: &str,
    image: &Path,
    payload: &Path,
    public: &Path,
) -> (f64, u64) {
    let target = dir.join(format!("target-{role}"));
    let f = File::create(&target).unwrap();
    f.set_len(IMAGE_LEN).unwrap();
    drop(f);
    // Start from a clean page cache state: no dirty pages left by the previous run.
    Command::new("sync").status().unwrap();
    let out = Command::new(env::current_exe().unwrap())
        .env("PAYLOADS_BENCH_CHILD", role)
        .env("BENCH_MODE", mode)
        .env("BENCH_IMAGE", image)
        .env("BENCH_PAYLOAD", payload)
        .env("BENCH_PUBLIC", public)
        .env("BENCH_TARGET", &target)
        .output()
        .unwrap();
    fs::remove_file(&target).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{role} child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut secs = None;
    let mut hwm = None;
    for field in stdout.split_whitespace() {
        if let Some(v) = field.strip_prefix("seconds=") {
            secs = v.parse().ok();
        }
        if let Some(v) = field.strip_prefix("hwm_kib=") {
            hwm = v.parse().ok();
        }
    }
    (secs.unwrap(), hwm.unwrap())
}

fn vm_hwm_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn child(role: &str) {
    let var = |k: &str| PathBuf::from(env::var_os(k).unwrap());
    let durable = env::var("BENCH_MODE").unwrap() == "durable";
    let target_path = var("BENCH_TARGET");
    let t = Instant::now();
    match role {
        "copy" => {
            let mut src = File::open(var("BENCH_IMAGE")).unwrap();
            let dst = OpenOptions::new().write(true).open(&target_path).unwrap();
            let mut w = &dst;
            let mut buf = vec![0u8; MIB as usize];
            loop {
                let n = src.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n]).unwrap();
            }
            if durable {
                dst.sync_data().unwrap();
            }
        }
        "apply" => {
            let trust = TrustStore::load(&var("BENCH_PUBLIC")).unwrap();
            let target = Target::open(&target_path).unwrap();
            let mut opts = ApplyOptions::new(unix_now());
            opts.sync = durable;
            let payload = File::open(var("BENCH_PAYLOAD")).unwrap();
            apply_from_reader(payload, &trust, target, opts).unwrap();
        }
        other => panic!("unknown child role {other}"),
    }
    let secs = t.elapsed().as_secs_f64();
    println!("seconds={secs:.4} hwm_kib={}", vm_hwm_kib());
}
