//! Builder behaviour: sparse images give tiny payloads, incompressible chunks stay raw,
//! compressible ones use zstd, odd sizes work, builds are reproducible, and file builds match
//! in-memory ones.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use payloads::build::{BuildError, build_file};
use payloads::{ApplyOptions, OpKind, apply_from_reader, build_to_vec};

#[test]
fn sparse_image_gives_a_small_payload() {
    // 48 MiB, all zero except 3 small islands of data.
    let mut image = vec![0u8; 48 << 20];
    for (i, at) in [0usize, 20 << 20, (48 << 20) - 5000]
        .into_iter()
        .enumerate()
    {
        image[at..at + 5000].copy_from_slice(&random_bytes(i as u64, 5000));
    }
    let (payload, report) = build_to_vec(&image, &[key(1)], &options(2 << 20)).unwrap();
    assert!(
        payload.len() < 64 * 1024,
        "payload is {} bytes for a sparse 48 MiB image",
        payload.len()
    );
    assert_eq!(
        report.count(OpKind::Replace) + report.count(OpKind::ReplaceZstd),
        3
    );
    // Runs of zero chunks are merged (3 data chunks split the zeros into at most 3 runs).
    assert!(
        report.count(OpKind::Zero) <= 3,
        "{} ZERO ops",
        report.count(OpKind::Zero)
    );

    let (target, reader) = target(image.len());
    apply_from_reader(
        payload.as_slice(),
        &trust(&[1]),
        target,
        ApplyOptions::new(NOW),
    )
    .unwrap();
    assert!(contents(&reader) == image);
}

#[test]
fn operation_kinds_follow_the_data() {
    let chunk = 64 * 1024;
    let mut image = random_bytes(1, chunk);
    image.extend(text_bytes(chunk));
    image.extend(vec![0u8; chunk]);
    let (_, report) = build_to_vec(&image, &[key(1)], &options(chunk as u32)).unwrap();
    let kinds: Vec<_> = report
        .manifest
        .operations
        .iter()
        .map(|op| op.kind)
        .collect();
    assert_eq!(kinds, [OpKind::Replace, OpKind::ReplaceZstd, OpKind::Zero]);
    let zstd = &report.manifest.operations[1];
    assert!(zstd.data_len < zstd.dst_len / 4);
}

#[test]
fn odd_sizes_and_reproducibility() {
    for len in [1usize, 4095, 4097, 65_537, 200_001] {
        let image = random_bytes(len as u64, len);
        let a = build(&image, 64 * 1024, &[1]);
        let b = build(&image, 64 * 1024, &[1]);
        assert_eq!(a, b, "build of {len} bytes is not reproducible");
        let (target, reader) = target(len);
        apply_from_reader(a.as_slice(), &trust(&[1]), target, ApplyOptions::new(NOW)).unwrap();
        assert!(contents(&reader) == image, "{len}");
    }
}

#[test]
fn file_build_matches_memory_build_and_multiple_keys_sign() {
    let dir = tempfile::tempdir().unwrap();
    let image = mixed_image(100_000, 5);
    let img_path = dir.path().join("img");
    std::fs::write(&img_path, &image).unwrap();
    let out = dir.path().join("p");
    let keys = [key(1), key(2)];
    let report = build_file(&img_path, &out, &keys, &options(64 * 1024)).unwrap();
    let (mem, _) = build_to_vec(&image, &keys, &options(64 * 1024)).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), mem);
    assert_eq!(report.signers.len(), 2);
    assert_eq!(report.payload_len, mem.len() as u64);
    // Either key alone is enough to trust it.
    for seed in [1, 2] {
        payloads::verify_payload(mem.as_slice(), &trust(&[seed]), ApplyOptions::new(NOW)).unwrap();
    }
}

#[test]
fn bad_options_are_refused_before_reading() {
    let image = vec![1u8; 10];
    let mut o = options(64 * 1024);
    o.app_id = "has space".into();
    assert!(matches!(
        build_to_vec(&image, &[key(1)], &o),
        Err(BuildError::Format(_))
    ));
    let mut o = options(3000);
    o.block_size = 4096;
    assert!(matches!(
        build_to_vec(&image, &[key(1)], &o),
        Err(BuildError::InvalidOption(_))
    ));
    assert!(matches!(
        build_to_vec(&image, &[], &options(4096)),
        Err(BuildError::NoKey)
    ));
    assert!(matches!(
        build_to_vec(&[], &[key(1)], &options(4096)),
        Err(BuildError::EmptyImage)
    ));
}
