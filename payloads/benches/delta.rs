//! Benchmark: delta payloads against full payloads on ext4 images of a synthetic "userland".
//!
//! The bench writes a file tree shaped like a small Debian userland (about 100 packages of
//! binaries, libraries, documentation, locale files and configuration; 1.0), makes two changed
//! versions of it (1.1: a handful of packages upgraded; 1.0-5%: 5 % of the files changed) and
//! packs each into an ext4 image with `mkfs.ext4 -d` (no root needed), as the VM test builds its
//! guest. Without `mkfs.ext4` it lays the files out block-aligned in a plain image instead, and
//! says so.
//!
//! Printed per pair: the full zstd payload, the delta, `zstd --patch-from` of the same pair
//! (levels 3 and 19, if `zstd` is installed) and `bsdiff` (if installed); the delta as % of the
//! full payload; apply time of the delta against the full payload in the same run (each apply in
//! a fresh child process, alternating order, best and median of several rounds, with and without
//! the final fdatasync); the applier's peak RSS (VmHWM of the child).
//!
//! Run with `cargo bench -p payloads --bench delta`. Uses about 2 GiB in `target/tmp`
//! (CARGO_TARGET_TMPDIR) and removes it afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::env;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{run_child, stats};
use payloads::build::{BuildOptions, build_file};
use payloads::delta::{DeltaOptions, build_delta_file};
use payloads::keys::{load_signing_key, write_keypair};
use payloads::{
    ApplyOptions, OpKind, Source, Target, TrustStore, apply_from_reader,
    apply_from_reader_with_source, unix_now,
};

const MIB: f64 = (1 << 20) as f64;
/// ext4 image size (the slot).
const IMAGE_MIB: u64 = 320;
const ROUNDS: usize = 3;
const PACKAGES: u64 = 100;
/// The child-process role variable.
const ROLE: &str = "PAYLOADS_DELTA_BENCH_CHILD";

fn main() {
    if let Ok(role) = env::var(ROLE) {
        child(&role);
        return;
    }
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let d = dir.path();

    let files = userland();
    let total: u64 = files.iter().map(|f| f.size).sum();
    println!(
        "userland 1.0: {} files in {PACKAGES} packages, {:.1} MiB",
        files.len(),
        total as f64 / MIB
    );
    let upgraded: BTreeSet<u64> = [7, 23, 42, 61, 88].into();
    let minor = |f: &FileSpec| upgraded.contains(&f.package);
    let five = |f: &FileSpec| f.index % 20 == 3;
    let changed = |pred: &dyn Fn(&FileSpec) -> bool| {
        let c: Vec<_> = files.iter().filter(|f| pred(f)).collect();
        (c.len(), c.iter().map(|f| f.size).sum::<u64>())
    };

    let ext4 = mkfs_available();
    let mut images = Vec::new();
    for (name, pred) in [
        ("1.0", &(|_: &FileSpec| false) as &dyn Fn(&FileSpec) -> bool),
        ("1.1", &minor),
        ("1.0-5pct", &five),
    ] {
        let tree = d.join(format!("tree-{name}"));
        write_tree(&tree, &files, pred);
        let img = d.join(format!("{name}.img"));
        if ext4 {
            mkfs(&tree, &img);
        } else {
            pack_blocks(&tree, &files, &img);
        }
        fs::remove_dir_all(&tree).unwrap();
        images.push(img);
    }
    println!(
        "images: {} of {IMAGE_MIB} MiB (fixed UUID and hash seed)",
        if ext4 {
            "ext4 (mkfs.ext4 -d, 4 KiB blocks)"
        } else {
            "block-aligned files (mkfs.ext4 not found)"
        }
    );
    let (n, bytes) = changed(&minor);
    println!(
        "1.0 -> 1.1: {} packages upgraded, {n} files changed ({:.1} MiB)",
        upgraded.len(),
        bytes as f64 / MIB
    );
    let (n, bytes) = changed(&five);
    println!(
        "1.0 -> 1.0-5pct: {n} files changed ({:.1} % of files, {:.1} MiB)",
        n as f64 * 100.0 / files.len() as f64,
        bytes as f64 / MIB
    );

    let keys = write_keypair(&d.join("bench")).unwrap();
    let key = load_signing_key(&keys.private).unwrap();
    let zstd = which("zstd");
    let bsdiff = which("bsdiff");

    let mut rows = Vec::new();
    for (label, new) in [("minor (1.1)", &images[1]), ("5 % files", &images[2])] {
        let old = &images[0];
        let mut opts = BuildOptions::new("bench", "1.1.0", "x86_64", unix_now());
        opts.threads = 2;
        let full = d.join("full.payload");
        let t = Instant::now();
        let full_report = build_file(new, &full, std::slice::from_ref(&key), &opts).unwrap();
        let full_build = t.elapsed().as_secs_f64();
        let delta = d.join("delta.payload");
        let t = Instant::now();
        let delta_report = build_delta_file(
            old,
            new,
            &delta,
            std::slice::from_ref(&key),
            &DeltaOptions::new(opts.clone(), "1.0.0"),
        )
        .unwrap();
        let delta_build = t.elapsed().as_secs_f64();
        let m = &delta_report.manifest;
        println!();
        println!("== {label}");
        println!(
            "full payload  {:>12} bytes ({full_build:.1} s to build)",
            full_report.payload_len
        );
        println!(
            "delta payload {:>12} bytes ({delta_build:.1} s to build): {} operations, target {:.1} % copied from the source, {:.1} % zero, {:.1} % shipped",
            delta_report.payload_len,
            m.operations.len(),
            pct(m.target_bytes(OpKind::SourceCopy), m.target_size),
            pct(m.target_bytes(OpKind::Zero), m.target_size),
            pct(
                m.target_bytes(OpKind::Replace) + m.target_bytes(OpKind::ReplaceZstd),
                m.target_size
            ),
        );
        let patch3 = zstd.then(|| patch_from(old, new, d, 3));
        let patch19 = zstd.then(|| patch_from(old, new, d, 19));
        let bsdiff_len = bsdiff.then(|| bsdiff_size(old, new, d));
        for (name, v) in [
            ("zstd --patch-from -3", patch3),
            ("zstd --patch-from -19", patch19),
            ("bsdiff", bsdiff_len),
        ] {
            match v {
                Some(n) => println!("{name:<22}{n:>12} bytes"),
                None => println!("{name:<22}not installed"),
            }
        }
        println!(
            "delta / full  {:.2} %",
            pct(delta_report.payload_len, full_report.payload_len)
        );

        let mut timing = Vec::new();
        for mode in ["cached", "durable"] {
            let mut fulls = Vec::new();
            let mut deltas = Vec::new();
            for round in 0..ROUNDS {
                let mut pair = [("full", &mut fulls), ("delta", &mut deltas)];
                if round % 2 == 1 {
                    pair.reverse();
                }
                for (role, results) in pair {
                    let payload = if role == "full" { &full } else { &delta };
                    let env: [(&str, &OsStr); 4] = [
                        ("BENCH_MODE", mode.as_ref()),
                        ("BENCH_PAYLOAD", payload.as_os_str()),
                        ("BENCH_SOURCE", old.as_os_str()),
                        ("BENCH_PUBLIC", keys.public.as_os_str()),
                    ];
                    let target = d.join(format!("target-{role}"));
                    results.push(run_child(ROLE, role, &target, IMAGE_MIB << 20, &env));
                }
            }
            let (f, dl) = (stats(&fulls), stats(&deltas));
            let (fb, fm, fh) = (f.best, f.median, f.hwm_kib);
            let (db, dm, dh) = (dl.best, dl.median, dl.hwm_kib);
            println!(
                "apply {mode:<8} full best {fb:.2} s median {fm:.2} s peak RSS {:.1} MiB | delta best {db:.2} s median {dm:.2} s peak RSS {:.1} MiB | delta/full time {:.2}",
                fh as f64 / 1024.0,
                dh as f64 / 1024.0,
                dm / fm
            );
            timing.push((fm, dm, fh.max(dh)));
        }
        rows.push((
            label,
            full_report.payload_len,
            delta_report.payload_len,
            patch3,
            patch19,
            bsdiff_len,
            timing,
        ));
        fs::remove_file(&full).unwrap();
        fs::remove_file(&delta).unwrap();
    }

    println!();
    println!("Markdown summary (sizes in bytes; apply times are medians, cached / durable):");
    println!();
    println!(
        "| pair | full zstd payload | delta | delta / full | zstd --patch-from -3 | zstd --patch-from -19 | bsdiff | full apply s | delta apply s | peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let opt = |v: Option<u64>| v.map_or_else(|| "not installed".to_owned(), |n| n.to_string());
    for (label, full, delta, p3, p19, bs, timing) in rows {
        let (fc, dc, hc) = timing[0];
        let (fd, dd, hd) = timing[1];
        println!(
            "| {label} | {full} | {delta} | {:.2} % | {} | {} | {} | {fc:.2} / {fd:.2} | {dc:.2} / {dd:.2} | {:.1} MiB |",
            pct(delta, full),
            opt(p3),
            opt(p19),
            opt(bs),
            hc.max(hd) as f64 / 1024.0
        );
    }
    println!();
    println!(
        "goals: delta <= 15 % of the full payload for the minor bump; delta apply no slower than full; RSS < 32 MiB"
    );
    drop(dir);
}

fn pct(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole.max(1) as f64
}

/// One file of the userland.
struct FileSpec {
    index: u64,
    package: u64,
    path: String,
    kind: FileKind,
    size: u64,
}

#[derive(Clone, Copy)]
enum FileKind {
    /// Machine code: bytes from a skewed distribution (compresses about 1.5:1).
    Binary,
    /// Text (documentation, configuration, scripts): compresses several-fold.
    Text,
}

/// xorshift64* stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The file list of the userland: per package a few binaries, libraries, docs, locale files and
/// configuration files, with sizes spread like a small Debian install.
fn userland() -> Vec<FileSpec> {
    let mut rng = Rng(0x5EED);
    let mut files = Vec::new();
    for p in 0..PACKAGES {
        let name = format!("pkg{p:03}");
        let mut add = |path: String, kind, size: u64| {
            files.push(FileSpec {
                index: files.len() as u64,
                package: p,
                path,
                kind,
                size,
            })
        };
        for b in 0..1 + rng.below(3) {
            add(
                format!("usr/bin/{name}-tool{b}"),
                FileKind::Binary,
                20_000 + rng.below(600_000),
            );
        }
        for l in 0..rng.below(3) {
            add(
                format!("usr/lib/x86_64-linux-gnu/lib{name}-{l}.so.1"),
                FileKind::Binary,
                30_000 + rng.below(1_200_000),
            );
        }
        for t in 0..2 + rng.below(6) {
            add(
                format!("usr/share/doc/{name}/file{t}.txt"),
                FileKind::Text,
                500 + rng.below(40_000),
            );
        }
        for t in 0..rng.below(4) {
            add(
                format!("usr/share/locale/l{t}/LC_MESSAGES/{name}.mo"),
                FileKind::Text,
                2_000 + rng.below(60_000),
            );
        }
        for t in 0..1 + rng.below(2) {
            add(
                format!("etc/{name}/conf{t}"),
                FileKind::Text,
                100 + rng.below(3_000),
            );
        }
    }
    files
}

/// The bytes of `f`, in its original or its changed version.
fn content(f: &FileSpec, changed: bool) -> Vec<u8> {
    let mut rng = Rng(0x1234_5678 ^ f.index.wrapping_mul(0x9E37_79B9));
    let len = f.size as usize;
    let mut out = Vec::with_capacity(len + 4096);
    match f.kind {
        FileKind::Binary => {
            // A skewed alphabet: a few very common bytes (0x00, 0xff, opcodes), others rare.
            const COMMON: [u8; 16] = [
                0x00, 0x00, 0x00, 0xff, 0x48, 0x89, 0x8b, 0xe8, 0x0f, 0x85, 0x24, 0x45, 0x41, 0xc3,
                0x01, 0x10,
            ];
            while out.len() < len {
                let r = rng.next();
                for i in 0..8 {
                    let b = (r >> (i * 8)) as u8;
                    out.push(if b < 176 {
                        COMMON[usize::from(b % 16)]
                    } else {
                        b
                    });
                }
            }
        }
        FileKind::Text => {
            const WORDS: [&str; 16] = [
                "the",
                "package",
                "configuration",
                "file",
                "is",
                "installed",
                "in",
                "system",
                "default",
                "value",
                "for",
                "option",
                "see",
                "manual",
                "page",
                "debian",
            ];
            while out.len() < len {
                let w = WORDS[rng.below(16) as usize];
                out.extend_from_slice(w.as_bytes());
                out.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
            }
        }
    }
    out.truncate(len);
    if changed {
        // A new upstream version: a few regions rewritten, some bytes inserted (shifting the
        // rest, as a rebuilt binary or an edited text does), the file grows a little.
        let mut edit = Rng(f.index ^ 0xC4A4_6ED5);
        for _ in 0..1 + len / 50_000 {
            let at = edit.below(len as u64) as usize;
            let n = (64 + edit.below(512) as usize).min(len - at);
            for b in &mut out[at..at + n] {
                *b = edit.next() as u8;
            }
        }
        for _ in 0..1 + len / 200_000 {
            let at = edit.below(out.len() as u64) as usize;
            let insert: Vec<u8> = (0..16 + edit.below(200))
                .map(|_| edit.next() as u8)
                .collect();
            out.splice(at..at, insert);
        }
        out.extend((0..edit.below(3000)).map(|_| edit.next() as u8 & 0x7f));
    }
    out
}

fn write_tree(root: &Path, files: &[FileSpec], changed: &dyn Fn(&FileSpec) -> bool) {
    for f in files {
        let path = root.join(&f.path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content(f, changed(f))).unwrap();
    }
}

fn mkfs_available() -> bool {
    Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `mkfs.ext4 -d` with everything that would vary between runs pinned.
fn mkfs(tree: &Path, img: &Path) {
    let f = File::create(img).unwrap();
    f.set_len(IMAGE_MIB << 20).unwrap();
    drop(f);
    let out = Command::new("mkfs.ext4")
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-U",
            "6f1a0b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b",
            "-E",
            "hash_seed=0b7e1c2d-3f4a-4b5c-9d6e-7f8a9b0c1d2e,lazy_itable_init=0",
            "-d",
        ])
        .arg(tree)
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without mkfs.ext4: files laid out one after another, each starting on a 4 KiB block.
fn pack_blocks(tree: &Path, files: &[FileSpec], img: &Path) {
    let mut w = BufWriter::new(File::create(img).unwrap());
    let mut len = 0u64;
    for f in files {
        let bytes = fs::read(tree.join(&f.path)).unwrap();
        w.write_all(&bytes).unwrap();
        let pad = (4096 - bytes.len() % 4096) % 4096;
        w.write_all(&vec![0u8; pad]).unwrap();
        len += (bytes.len() + pad) as u64;
    }
    w.write_all(&vec![0u8; ((IMAGE_MIB << 20) - len) as usize])
        .unwrap();
    w.flush().unwrap();
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn patch_from(old: &Path, new: &Path, d: &Path, level: u32) -> u64 {
    let out = d.join("patch.zst");
    let status = Command::new("zstd")
        .args(["-q", "-f", "-T2", &format!("-{level}")])
        .arg(format!("--patch-from={}", old.display()))
        .arg(new)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "zstd --patch-from failed");
    let n = fs::metadata(&out).unwrap().len();
    fs::remove_file(&out).unwrap();
    n
}

fn bsdiff_size(old: &Path, new: &Path, d: &Path) -> u64 {
    let out = d.join("patch.bsdiff");
    let status = Command::new("bsdiff")
        .arg(old)
        .arg(new)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "bsdiff failed");
    let n = fs::metadata(&out).unwrap().len();
    fs::remove_file(&out).unwrap();
    n
}

/// The child: one apply.
fn child(role: &str) {
    let var = |k: &str| PathBuf::from(env::var_os(k).unwrap());
    let trust = TrustStore::load(&var("BENCH_PUBLIC")).unwrap();
    let target = Target::open(&var("BENCH_TARGET")).unwrap();
    let mut opts = ApplyOptions::new(unix_now());
    opts.sync = env::var("BENCH_MODE").unwrap() == "durable";
    let payload = File::open(var("BENCH_PAYLOAD")).unwrap();
    let t = Instant::now();
    match role {
        "full" => {
            apply_from_reader(payload, &trust, target, opts).unwrap();
        }
        "delta" => {
            let source = Source::open(&var("BENCH_SOURCE")).unwrap();
            apply_from_reader_with_source(payload, &trust, target, source, opts).unwrap();
        }
        other => panic!("unknown child role {other}"),
    }
    common::report(t);
}
