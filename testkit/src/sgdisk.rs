//! GPT disk images made and checked with `sgdisk` (Debian package `gdisk`), independently of
//! the agent's own GPT code: a two-slot image as a fresh Flatcar's, partition fields and
//! attribute words, and `sgdisk -v`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// CoreOS `/usr` partition type, as GRUB gptprio selects.
pub const USR_TYPE: &str = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6";

/// Runs `sgdisk` with `args`, panicking with its output on failure.
pub fn sgdisk(args: &[&str]) -> String {
    let out = Command::new("sgdisk")
        .args(args)
        .output()
        .expect("sgdisk must be installed (Debian package gdisk)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sgdisk {args:?} failed: {text}");
    text
}

/// A 40 MiB image: 1 USR-A (8 MiB), 2 USR-B (8 MiB), 3 ROOT (4 MiB). USR-A starts as a
/// freshly installed Flatcar's: priority 1, successful.
pub fn make_image(dir: &Path) -> PathBuf {
    let img = dir.join("disk.img");
    let f = fs::File::create(&img).unwrap();
    f.set_len(40 << 20).unwrap();
    drop(f);
    let t1 = format!("1:{USR_TYPE}");
    let t2 = format!("2:{USR_TYPE}");
    let p = img.to_str().unwrap();
    sgdisk(&[
        "-o",
        "-n",
        "1:2048:+8M",
        "-c",
        "1:USR-A",
        "-t",
        &t1,
        "-n",
        "2:0:+8M",
        "-c",
        "2:USR-B",
        "-t",
        &t2,
        "-n",
        "3:0:+4M",
        "-c",
        "3:ROOT",
        "-A",
        "1:set:48",
        "-A",
        "1:set:56",
        p,
    ]);
    assert_verified(&img);
    img
}

/// Asserts `sgdisk -v` finds no problem with both GPT copies.
pub fn assert_verified(img: &Path) {
    let out = sgdisk(&["-v", img.to_str().unwrap()]);
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
}

/// The attribute word of partition `n` as `sgdisk -i` reports it.
pub fn attrs(img: &Path, n: u32) -> u64 {
    let out = sgdisk(&["-i", &n.to_string(), img.to_str().unwrap()]);
    let hex = out
        .lines()
        .find_map(|l| l.strip_prefix("Attribute flags: "))
        .unwrap_or_else(|| panic!("no attribute flags in {out}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// Partition `n`'s field (e.g. "Partition unique GUID") from `sgdisk -i`.
pub fn info(img: &Path, n: u32, field: &str) -> String {
    let out = sgdisk(&["-i", &n.to_string(), img.to_str().unwrap()]);
    let prefix = format!("{field}: ");
    out.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {field} in {out}"))
        .trim()
        .to_string()
}

/// The gptprio attribute word for (priority, tries, successful).
pub fn gptprio(priority: u64, tries: u64, successful: bool) -> u64 {
    (priority << 48) | (tries << 52) | (u64::from(successful) << 56)
}
