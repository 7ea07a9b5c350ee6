//! Benchmark: build and apply images of 512 MiB and 1 GiB (a third random, a third compressible
//! text, a third zeros, in 4 MiB regions) and compare apply throughput with a plain 1 MiB
//! read/write copy of the same image into a target of the same size (`cp`), in the same run. Apply
//! is measured twice: with the writer thread (`apply_from_reader`, what the agent and the CLI do)
//! and single-threaded (`Applier::inline_writes`: decompress, hash and write on one thread, the
//! applier before its pipeline). Each measurement runs in a fresh child process so its peak memory
//! (VmHWM) is its own. Two modes: `cached` (no sync: page-cache speed) and `durable` (the target
//! is fdatasync'ed before the clock stops, as `cp` + `sync`; apply also re-reads and hashes the
//! target, as it always does).
//!
//! Run with `cargo bench -p payloads --bench apply_1gib` (`BENCH_ROUNDS=N` for N rounds, default
//! 5; `BENCH_SIZES_MIB=512,1024` to choose the sizes). Uses about 3.5 GiB in `target/tmp`
//! (CARGO_TARGET_TMPDIR) and removes it afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::env;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Run, Stats, run_child, stats, times};
use payloads::build::{BuildOptions, build_file};
use payloads::keys::{load_signing_key, write_keypair};
use payloads::{Applier, ApplyOptions, OpKind, Target, TrustStore, apply_from_reader, unix_now};

const MIB: u64 = 1 << 20;
const REGION: usize = 4 << 20;
/// The child-process role variable.
const ROLE: &str = "PAYLOADS_BENCH_CHILD";
/// What is measured, in the order of the first round.
const ROLES: [&str; 3] = ["copy", "threaded", "single"];

fn main() {
    if let Ok(role) = env::var(ROLE) {
        child(&role);
        return;
    }
    let rounds: usize = env::var("BENCH_ROUNDS").map_or(5, |v| v.parse().unwrap());
    let sizes: Vec<u64> = env::var("BENCH_SIZES_MIB").map_or_else(
        |_| vec![512, 1024],
        |v| v.split(',').map(|s| s.trim().parse().unwrap()).collect(),
    );
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let d = dir.path();
    let keys = write_keypair(&d.join("bench")).unwrap();
    let key = load_signing_key(&keys.private).unwrap();

    let mut summary = Vec::new();
    for size_mib in sizes {
        let image_len = size_mib * MIB;
        let image = d.join("image");
        let t = Instant::now();
        write_image(&image, image_len);
        println!(
            "image: {size_mib} MiB in 4 MiB regions (1/3 random, 1/3 text, 1/3 zero), generated in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let payload = d.join("payload");
        let opts = BuildOptions::new("bench", "1.0.0", "x86_64", unix_now());
        let t = Instant::now();
        let report = build_file(&image, &payload, std::slice::from_ref(&key), &opts).unwrap();
        let build_s = t.elapsed().as_secs_f64();
        println!(
            "build: {build_s:.2} s ({:.0} MiB/s of image, {} threads), payload {:.1} MiB, operations: REPLACE {}, REPLACE_ZSTD {}, ZERO {}",
            size_mib as f64 / build_s,
            opts.threads,
            report.payload_len as f64 / MIB as f64,
            report.count(OpKind::Replace),
            report.count(OpKind::ReplaceZstd),
            report.count(OpKind::Zero),
        );
        println!(
            "{:<16} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}   {:>9} {:>9} {:>9}",
            "mode",
            "copy s",
            "thr s",
            "thr/cp",
            "single",
            "sgl/cp",
            "thr/sgl",
            "copy HWM",
            "thr HWM",
            "sgl HWM"
        );
        for mode in ["cached", "durable"] {
            let mut runs: [Vec<Run>; 3] = Default::default();
            for round in 0..rounds {
                // Rotate which goes first, so none always pays for another's writeback.
                for k in 0..ROLES.len() {
                    let i = (round + k) % ROLES.len();
                    let env: [(&str, &OsStr); 4] = [
                        ("BENCH_MODE", mode.as_ref()),
                        ("BENCH_IMAGE", image.as_os_str()),
                        ("BENCH_PAYLOAD", payload.as_os_str()),
                        ("BENCH_PUBLIC", keys.public.as_os_str()),
                    ];
                    let target = d.join("target");
                    runs[i].push(run_child(ROLE, ROLES[i], &target, image_len, &env));
                }
            }
            let [copy, threaded, single] = runs.each_ref().map(|r| stats(r));
            let row = |label: &str, pick: fn(&Stats) -> f64| {
                let (c, t, s) = (pick(&copy), pick(&threaded), pick(&single));
                println!(
                    "{:<16} {c:>7.2} {t:>7.2} {:>7.2} {s:>7.2} {:>7.2} {:>7.2}   {:>5.1} MiB {:>5.1} MiB {:>5.1} MiB",
                    format!("{mode}/{label}"),
                    c / t,
                    c / s,
                    s / t,
                    copy.hwm_kib as f64 / 1024.0,
                    threaded.hwm_kib as f64 / 1024.0,
                    single.hwm_kib as f64 / 1024.0,
                );
            };
            row("best", |s| s.best);
            row("median", |s| s.median);
            for (role, r) in ROLES.iter().zip(&runs) {
                println!("                 {role} runs, s (CPU s): {}", times(r));
            }
            summary.push((size_mib, mode, copy, threaded, single));
        }
        fs::remove_file(&image).unwrap();
        fs::remove_file(&payload).unwrap();
        println!();
    }

    println!("Markdown summary (medians of {rounds} runs; ratio = copy time / apply time):");
    println!();
    println!(
        "| image | mode | cp (+ sync) | single-threaded apply | ratio | threaded apply | ratio | peak RSS threaded / single |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (size, mode, c, t, s) in summary {
        let mibs = |secs: f64| size as f64 / secs;
        println!(
            "| {size} MiB | {mode} | {:.2} s ({:.0} MiB/s) | {:.2} s ({:.0} MiB/s) | {:.2} | {:.2} s ({:.0} MiB/s) | **{:.2}** | {:.1} / {:.1} MiB |",
            c.median,
            mibs(c.median),
            s.median,
            mibs(s.median),
            c.median / s.median,
            t.median,
            mibs(t.median),
            c.median / t.median,
            t.hwm_kib as f64 / 1024.0,
            s.hwm_kib as f64 / 1024.0,
        );
    }
    println!();
    println!("goals: apply/copy ratio >= 0.80, apply peak memory < 32 MiB");
    drop(dir);
}

/// Writes a test image of `len` bytes (a multiple of 4 MiB) without holding it in memory.
fn write_image(path: &Path, len: u64) {
    let mut w = BufWriter::with_capacity(REGION, File::create(path).unwrap());
    let text = text_block();
    let zeros = vec![0u8; REGION];
    let mut random = vec![0u8; REGION];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for r in 0..(len as usize / REGION) {
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

/// The child: one measurement.
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
        "threaded" | "single" => {
            let trust = TrustStore::load(&var("BENCH_PUBLIC")).unwrap();
            let target = Target::open(&target_path).unwrap();
            let mut opts = ApplyOptions::new(unix_now());
            opts.sync = durable;
            let payload = File::open(var("BENCH_PAYLOAD")).unwrap();
            if role == "threaded" {
                apply_from_reader(payload, &trust, target, opts).unwrap();
            } else {
                // apply_from_reader's loop, on an applier that writes on this thread.
                let mut applier = Applier::new(&trust, target, opts).inline_writes();
                let mut payload = payload;
                let mut buf = vec![0u8; MIB as usize];
                loop {
                    let n = payload.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    applier.feed(&buf[..n]).unwrap();
                }
                applier.finish().unwrap();
            }
        }
        other => panic!("unknown child role {other}"),
    }
    common::report(t);
}
