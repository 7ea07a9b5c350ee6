//! Resuming from checkpoints: cutting the stream at many points (inside the prefix, at and inside
//! operations, after the last one), persisting the checkpoint as JSON, and continuing from its
//! payload offset always gives a byte-identical target; unusable checkpoints are refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use payloads::format::read_prefix;
use payloads::{Applier, ApplyError, ApplyOptions, Checkpoint, Sha256Digest, Target};

const CHUNK: u32 = 32 * 1024;

fn fixture() -> (Vec<u8>, Vec<u8>, usize) {
    let image = mixed_image(70_000, 9);
    let payload = build(&image, CHUNK, &[1]);
    let (_, raw) = read_prefix(&mut payload.as_slice()).unwrap();
    (image, payload, raw.len())
}

/// Feeds `bytes` in chunks of `step` bytes.
fn feed(applier: &mut Applier, bytes: &[u8], step: usize) {
    for chunk in bytes.chunks(step) {
        applier.feed(chunk).unwrap();
    }
}

/// Applies with one interruption at `cut`; returns the target bytes and the resume offset.
fn apply_with_cut(
    payload: &[u8],
    prefix_len: usize,
    image_len: usize,
    cut: usize,
) -> (Vec<u8>, u64) {
    let file = old_file(image_len);
    let reader = file.try_clone().unwrap();
    let trust = trust(&[1]);
    let new_target = || Target::new(file.try_clone().unwrap(), 0, image_len as u64).unwrap();

    let mut first = Applier::new(&trust, new_target(), ApplyOptions::new(NOW));
    feed(&mut first, &payload[..cut], 5000);
    let checkpoint = first.checkpoint();
    drop(first);

    let (mut second, from) = match checkpoint {
        None => {
            assert!(
                cut < prefix_len,
                "no checkpoint after the prefix at cut {cut}"
            );
            (
                Applier::new(&trust, new_target(), ApplyOptions::new(NOW)),
                0,
            )
        }
        Some(cp) => {
            // Persist and reload the checkpoint as the agent would.
            let json = serde_json::to_string(&cp).unwrap();
            let cp: Checkpoint = serde_json::from_str(&json).unwrap();
            assert!(cp.payload_offset <= cut as u64);
            assert!(cut as u64 - cp.payload_offset <= u64::from(CHUNK) + 64);
            let prefix = &payload[..cp.prefix_len as usize];
            let applier =
                Applier::resume(&trust, new_target(), &cp, prefix, ApplyOptions::new(NOW)).unwrap();
            (applier, cp.payload_offset)
        }
    };
    feed(&mut second, &payload[from as usize..], 3001);
    let applied = second.finish().unwrap();
    assert_eq!(applied.target_sha256, applied.info.target_sha256());
    (contents(&reader), from)
}

#[test]
fn resume_at_many_cut_points_gives_an_identical_target() {
    let (image, payload, prefix_len) = fixture();
    let (prefix, _) = read_prefix(&mut payload.as_slice()).unwrap();
    let mut cuts = vec![
        0,
        1,
        19,
        20,
        prefix_len - 1,
        prefix_len,
        prefix_len + 1,
        payload.len(),
    ];
    // Every operation boundary, and the middle of every data operation.
    let mut offset = prefix_len;
    for op in &prefix.manifest.operations {
        cuts.push(offset);
        cuts.push(offset + op.data_len as usize / 2);
        offset += op.data_len as usize;
    }
    // And a spread of arbitrary points.
    cuts.extend((1..40).map(|i| payload.len() * i / 40 + i));
    cuts.retain(|&c| c <= payload.len());
    cuts.sort_unstable();
    cuts.dedup();
    assert!(cuts.len() > 60, "only {} cut points", cuts.len());
    for cut in cuts {
        let (target, _) = apply_with_cut(&payload, prefix_len, image.len(), cut);
        assert!(target == image, "target differs after a cut at {cut}");
    }
}

#[test]
fn repeated_interruptions_converge() {
    let (image, payload, _) = fixture();
    let file = old_file(image.len());
    let reader = file.try_clone().unwrap();
    let trust = trust(&[1]);
    let target = || Target::new(file.try_clone().unwrap(), 0, image.len() as u64).unwrap();
    let mut applier = Applier::new(&trust, target(), ApplyOptions::new(NOW));
    let mut pos = 0usize;
    let mut resumes = 0;
    // Feed 40 000 bytes at a time, then "crash" and resume from the checkpoint.
    while pos < payload.len() {
        let end = (pos + 40_000).min(payload.len());
        feed(&mut applier, &payload[pos..end], 40_000);
        pos = end;
        if pos == payload.len() {
            break;
        }
        if let Some(cp) = applier.checkpoint() {
            applier.sync().unwrap();
            let prefix = payload[..cp.prefix_len as usize].to_vec();
            applier =
                Applier::resume(&trust, target(), &cp, &prefix, ApplyOptions::new(NOW)).unwrap();
            pos = cp.payload_offset as usize;
            resumes += 1;
        }
    }
    applier.finish().unwrap();
    assert!(resumes > 5);
    assert!(contents(&reader) == image);
}

#[test]
fn the_final_check_rereads_the_whole_target() {
    // Damage a region that was written before the checkpoint: resuming does not rewrite it, and
    // the final re-read catches it.
    let (image, payload, prefix_len) = fixture();
    let file = old_file(image.len());
    let trust = trust(&[1]);
    let target = || Target::new(file.try_clone().unwrap(), 0, image.len() as u64).unwrap();
    let mut a = Applier::new(&trust, target(), ApplyOptions::new(NOW));
    feed(&mut a, &payload[..payload.len() / 2], 4096);
    let cp = a.checkpoint().unwrap();
    assert!(cp.next_operation > 2);
    std::os::unix::fs::FileExt::write_all_at(&file, b"damage", 10).unwrap();
    let mut b = Applier::resume(
        &trust,
        target(),
        &cp,
        &payload[..prefix_len],
        ApplyOptions::new(NOW),
    )
    .unwrap();
    feed(&mut b, &payload[cp.payload_offset as usize..], 65536);
    assert!(matches!(
        b.finish(),
        Err(ApplyError::TargetHashMismatch { .. })
    ));
}

#[test]
fn unusable_checkpoints_are_refused() {
    let (image, payload, prefix_len) = fixture();
    let trust = trust(&[1]);
    let file = old_file(image.len());
    let target = || Target::new(file.try_clone().unwrap(), 0, image.len() as u64).unwrap();
    let mut a = Applier::new(&trust, target(), ApplyOptions::new(NOW));
    feed(&mut a, &payload[..payload.len() / 2], 4096);
    let cp = a.checkpoint().unwrap();
    let prefix = &payload[..prefix_len];
    let resume = |cp: &Checkpoint, prefix: &[u8], t: Target| {
        Applier::resume(&trust, t, cp, prefix, ApplyOptions::new(NOW)).err()
    };
    let invalid = |e: Option<ApplyError>| matches!(e, Some(ApplyError::InvalidCheckpoint { .. }));

    // Another payload (same image, different version) has another header+manifest digest.
    let mut opts = options(CHUNK);
    opts.version = "2.0.0".into();
    let other = payloads::build_to_vec(&image, &[key(1)], &opts).unwrap().0;
    let mut other_cp = cp.clone();
    other_cp.prefix_len = read_prefix(&mut other.as_slice()).unwrap().1.len() as u64;
    assert!(invalid(resume(
        &other_cp,
        &other[..other_cp.prefix_len as usize],
        target()
    )));

    assert!(invalid(resume(&cp, &payload[..prefix_len - 1], target())));
    let mut bad = cp.clone();
    bad.payload_offset += 1;
    assert!(invalid(resume(&bad, prefix, target())));
    let mut bad = cp.clone();
    bad.next_operation = 1 << 40;
    assert!(invalid(resume(&bad, prefix, target())));
    let mut bad = cp.clone();
    bad.version = 99;
    assert!(invalid(resume(&bad, prefix, target())));
    let moved = Target::new(file.try_clone().unwrap(), 512, image.len() as u64).unwrap();
    assert!(invalid(resume(&cp, prefix, moved)));
    let mut bad = cp.clone();
    bad.signed_sha256 = Sha256Digest([0; 32]);
    assert!(invalid(resume(&bad, prefix, target())));

    // The prefix is verified again on resume: an untrusted one is refused as such.
    let untrusted = payloads::TrustStore::from_keys([key(2).verifying_key()]).unwrap();
    assert!(matches!(
        Applier::resume(&untrusted, target(), &cp, prefix, ApplyOptions::new(NOW)).err(),
        Some(ApplyError::Verify(_))
    ));
}
