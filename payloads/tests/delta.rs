//! Delta payloads: old → new by delta gives exactly new, resumes like a full payload, and every
//! tamper case (wrong source, source modified during the apply, copy extents outside the source,
//! overlapping or out-of-order extents, another app, another source version) fails with its own
//! error and never writes data derived from a wrong source. The source is never written.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt as _;

use common::*;
use payloads::delta::{DeltaOptions, build_delta_to_vec};
use payloads::format::{
    DELTA_FORMAT_VERSION, FormatError, HEADER_LEN, encode_prefix_version, read_prefix,
};
use payloads::{
    Applied, Applier, ApplyError, ApplyOptions, ErrorClass, Expectations, Manifest, OpKind,
    Operation, Sha256Digest, Source, SourceError, Target, verify_payload,
    verify_payload_with_source,
};

const BS: usize = 4096;
const CHUNK: u32 = 64 * 1024;

/// The old image: 96 blocks of mixed content (random, zero, text).
fn old_image() -> Vec<u8> {
    mixed_image(16 * BS, 6)
}

/// The new image: most of the old one, with a changed region, a moved region, a zeroed region
/// and a new tail.
fn new_image(old: &[u8]) -> Vec<u8> {
    let mut new = old[..old.len() - 777].to_vec();
    // Changed: 5 blocks of fresh random data in the first random region.
    new[3 * BS..8 * BS].copy_from_slice(&random_bytes(1234, 5 * BS));
    // Moved: the text region (blocks 32..48) also appears at blocks 64..72 (over random data).
    let moved = old[32 * BS..40 * BS].to_vec();
    new[64 * BS..72 * BS].copy_from_slice(&moved);
    // Zeroed: blocks 50..52.
    new[50 * BS..52 * BS].fill(0);
    // A new, longer tail that is not a multiple of the block size.
    new.extend(random_bytes(77, 3 * BS + 123));
    new
}

fn delta_options(from: &str) -> DeltaOptions {
    let mut o = options(CHUNK);
    o.version = "2.0.0".into();
    DeltaOptions::new(o, from)
}

struct Fixture {
    old: Vec<u8>,
    new: Vec<u8>,
    payload: Vec<u8>,
    manifest: Manifest,
    prefix_len: usize,
}

fn fixture() -> Fixture {
    let old = old_image();
    let new = new_image(&old);
    let (payload, report) =
        build_delta_to_vec(&old, &new, &[key(1)], &delta_options("1.0.0")).unwrap();
    let (prefix, raw) = read_prefix(&mut payload.as_slice()).unwrap();
    assert_eq!(prefix.manifest, report.manifest);
    Fixture {
        old,
        new,
        payload,
        manifest: prefix.manifest,
        prefix_len: raw.len(),
    }
}

impl Fixture {
    fn data(&self) -> &[u8] {
        &self.payload[self.prefix_len..]
    }

    /// The payload with its manifest changed by `f`, encoded without checks, signed by key 1.
    fn crafted(&self, f: impl FnOnce(&mut Manifest)) -> Vec<u8> {
        let mut m = self.manifest.clone();
        f(&mut m);
        let mut out = encode_prefix_version(
            m.format_version(),
            &m.encode_unchecked().unwrap(),
            &[key(1)],
        );
        out.extend_from_slice(self.data());
        out
    }

    /// Index of the last data operation before operation `index`.
    fn data_op_before(&self, index: usize) -> usize {
        self.manifest.operations[..index]
            .iter()
            .rposition(|op| op.kind.has_data())
            .unwrap()
    }

    /// Index of the first SOURCE_COPY operation at or after a data operation.
    fn copy_after_data(&self) -> usize {
        let ops = &self.manifest.operations;
        let first_data = ops.iter().position(|op| op.kind.has_data()).unwrap();
        first_data
            + ops[first_data..]
                .iter()
                .position(|op| op.kind == OpKind::SourceCopy)
                .unwrap()
    }

    /// Payload offset where operation `index`'s data starts (all data before it).
    fn data_offset(&self, index: usize) -> usize {
        data_offset(&self.manifest, self.prefix_len, index)
    }
}

/// Applies `payload` with `source` into a fresh [`OLD`]-filled target, fed in odd-sized chunks.
fn run(
    payload: &[u8],
    source: Option<Source>,
    target_len: usize,
    opts: ApplyOptions,
) -> (Result<Applied, ApplyError>, Vec<u8>) {
    apply_in_chunks(payload, target_len, &trust(&[1]), source, opts)
}

/// Asserts that the target holds the new image below `end` and untouched old bytes from `end`:
/// nothing after the failing operation was written.
#[track_caller]
fn written_up_to(target: &[u8], new: &[u8], end: usize) {
    assert!(
        target[..end] == new[..end],
        "written part differs from the new image"
    );
    assert!(
        target[end..].iter().all(|&b| b == OLD),
        "bytes from {end} on were written"
    );
}

#[test]
fn old_to_new_by_delta_equals_new() {
    let fx = fixture();
    let m = &fx.manifest;
    assert_eq!(m.format_version(), DELTA_FORMAT_VERSION);
    assert_eq!(
        u32::from_be_bytes(fx.payload[8..12].try_into().unwrap()),
        DELTA_FORMAT_VERSION
    );
    let source = m.source.as_ref().unwrap();
    assert_eq!(source.version, "1.0.0");
    assert_eq!(source.size, fx.old.len() as u64);
    assert_eq!(source.sha256, Sha256Digest::of(&fx.old));
    let copied = m.target_bytes(OpKind::SourceCopy);
    assert!(
        copied >= (fx.new.len() / 2) as u64,
        "only {copied} of {} bytes copied",
        fx.new.len()
    );
    // The moved text region is copied from where it was.
    assert!(m.operations.iter().any(|op| op.kind == OpKind::SourceCopy
        && op.dst_offset == (64 * BS) as u64
        && op.src_offset == (32 * BS) as u64));

    let (old_file, source) = source_file(&fx.old);
    let (result, target) = run(
        &fx.payload,
        Some(source),
        fx.new.len() + 500,
        ApplyOptions::new(NOW),
    );
    let applied = result.unwrap();
    assert!(target[..fx.new.len()] == fx.new[..]);
    assert!(target[fx.new.len()..].iter().all(|&b| b == OLD));
    assert_eq!(applied.target_sha256, Sha256Digest::of(&fx.new));
    assert!(applied.info.is_delta());
    // The source was read, never written.
    assert!(contents(&old_file) == fx.old);

    // The source can be a range of a larger file (a slot of a disk).
    let mut disk = vec![0xEEu8; 8192];
    disk.extend(&fx.old);
    disk.extend([0xEE; 100]);
    let f = tempfile::tempfile().unwrap();
    f.write_all_at(&disk, 0).unwrap();
    let slot = Source::new(f, 8192, fx.old.len() as u64 + 100).unwrap();
    let (result, target) = run(
        &fx.payload,
        Some(slot),
        fx.new.len(),
        ApplyOptions::new(NOW),
    );
    result.unwrap();
    assert!(target == fx.new);
}

#[test]
fn verification_with_and_without_the_source() {
    let fx = fixture();
    let opts = ApplyOptions::new(NOW);
    let info = verify_payload(fx.payload.as_slice(), &trust(&[1]), opts.clone()).unwrap();
    assert!(info.is_delta());
    let (_f, source) = source_file(&fx.old);
    verify_payload_with_source(fx.payload.as_slice(), &trust(&[1]), source, opts.clone()).unwrap();
    let (_f, other) = source_file(&random_bytes(5, fx.old.len()));
    let err =
        verify_payload_with_source(fx.payload.as_slice(), &trust(&[1]), other, opts).unwrap_err();
    assert!(matches!(
        err,
        ApplyError::Source(SourceError::ExtentMismatch { .. })
    ));
}

#[test]
fn whole_source_check_before_downloading() {
    let fx = fixture();
    let delta = fx.manifest.source.clone().unwrap();
    source_file(&fx.old).1.check_image(&delta).unwrap();
    let mut other = fx.old.clone();
    other[12345] ^= 1;
    assert!(matches!(
        source_file(&other).1.check_image(&delta),
        Err(SourceError::ImageMismatch { .. })
    ));
}

#[test]
fn wrong_source_is_refused_before_its_bytes_are_used() {
    let fx = fixture();
    // Another image of the same size: the first copy's extent does not match.
    let other = random_bytes(4242, fx.old.len());
    let (_f, source) = source_file(&other);
    let (result, target) = run(
        &fx.payload,
        Some(source),
        fx.new.len(),
        ApplyOptions::new(NOW),
    );
    let err = result.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Source);
    let ApplyError::Source(SourceError::ExtentMismatch { index, .. }) = err else {
        panic!("unexpected error {err:?}");
    };
    let op = fx.manifest.operations[index];
    assert_eq!(op.kind, OpKind::SourceCopy);
    assert!(
        fx.manifest.operations[..index]
            .iter()
            .all(|op| op.kind != OpKind::SourceCopy)
    );
    written_up_to(&target, &fx.new, op.dst_offset as usize);

    // The right image with one byte changed inside the extents the delta reads (the moved text
    // region): the operations before it are written, that one and the rest are not.
    let mut damaged = fx.old.clone();
    damaged[32 * BS + 5] ^= 0x01;
    let (_f, source) = source_file(&damaged);
    let (result, target) = run(
        &fx.payload,
        Some(source),
        fx.new.len(),
        ApplyOptions::new(NOW),
    );
    let Err(ApplyError::Source(SourceError::ExtentMismatch { index, .. })) = result else {
        panic!("unexpected result {result:?}");
    };
    written_up_to(
        &target,
        &fx.new,
        fx.manifest.operations[index].dst_offset as usize,
    );
}

#[test]
fn source_modified_after_the_apply_started() {
    let fx = fixture();
    let victim = fx.copy_after_data();
    let op = fx.manifest.operations[victim];
    // Everything up to (not including) the data operation before the victim.
    let data_op = fx.data_op_before(victim);
    let cut = fx.data_offset(data_op);

    let (old_file, source) = source_file(&fx.old);
    let (t, reader) = target(fx.new.len());
    let trust = trust(&[1]);
    let mut applier = Applier::with_source(&trust, t, source, ApplyOptions::new(NOW));
    applier.feed(&fx.payload[..cut]).unwrap();
    assert!(applier.progress().operations_done > 0);
    assert!((applier.progress().operations_done as usize) <= data_op);
    // Now the source changes under the running apply: one byte of the victim's extent.
    old_file
        .write_all_at(&[fx.old[op.src_offset as usize] ^ 0xFF], op.src_offset)
        .unwrap();
    let err = applier.feed(&fx.payload[cut..]).unwrap_err();
    assert!(
        matches!(err, ApplyError::Source(SourceError::ExtentMismatch { index, .. }) if index == victim),
        "{err:?}"
    );
    written_up_to(&contents(&reader), &fx.new, op.dst_offset as usize);
}

#[test]
fn source_modified_between_two_resumed_steps() {
    let fx = fixture();
    let victim = fx.copy_after_data();
    let op = fx.manifest.operations[victim];
    let data_op = fx.data_op_before(victim);
    let (old_file, source) = source_file(&fx.old);
    let file = old_file_for(fx.new.len());
    let reader = file.try_clone().unwrap();
    let new_target = || Target::new(file.try_clone().unwrap(), 0, fx.new.len() as u64).unwrap();
    let trust = trust(&[1]);

    let mut first = Applier::with_source(&trust, new_target(), source, ApplyOptions::new(NOW));
    first
        .feed(&fx.payload[..fx.data_offset(data_op) + 10])
        .unwrap();
    let cp = first.checkpoint().unwrap();
    first.sync().unwrap();
    drop(first);
    assert_eq!(cp.next_operation as usize, data_op);

    old_file
        .write_all_at(b"modified", op.src_offset + 100)
        .unwrap();
    let source = Source::new(old_file.try_clone().unwrap(), 0, fx.old.len() as u64).unwrap();
    let mut second = Applier::resume_with_source(
        &trust,
        new_target(),
        source,
        &cp,
        &fx.payload[..fx.prefix_len],
        ApplyOptions::new(NOW),
    )
    .unwrap();
    let err = second
        .feed(&fx.payload[cp.payload_offset as usize..])
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::Source(SourceError::ExtentMismatch { index, .. }) if index == victim),
        "{err:?}"
    );
    written_up_to(&contents(&reader), &fx.new, op.dst_offset as usize);
}

/// A fresh [`OLD`]-filled file of `len` bytes.
fn old_file_for(len: usize) -> File {
    old_file(len)
}

#[test]
fn resume_at_many_cut_points_gives_the_new_image() {
    let fx = fixture();
    let trust = trust(&[1]);
    let mut cuts: Vec<usize> = (0..=fx.manifest.operations.len())
        .map(|i| fx.data_offset(i))
        .collect();
    cuts.extend([fx.prefix_len - 1, fx.prefix_len + 1, fx.payload.len()]);
    cuts.extend((1..25).map(|i| fx.payload.len() * i / 25 + i));
    cuts.retain(|&c| c <= fx.payload.len());
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        let (_sf, source) = source_file(&fx.old);
        let file = old_file(fx.new.len());
        let reader = file.try_clone().unwrap();
        let new_target = || Target::new(file.try_clone().unwrap(), 0, fx.new.len() as u64).unwrap();
        let mut first = Applier::with_source(&trust, new_target(), source, ApplyOptions::new(NOW));
        first.feed(&fx.payload[..cut]).unwrap();
        let cp = first.checkpoint();
        drop(first);
        let (_sf, source) = source_file(&fx.old);
        let (mut second, from) = match cp {
            None => (
                Applier::with_source(&trust, new_target(), source, ApplyOptions::new(NOW)),
                0,
            ),
            Some(cp) => {
                let json = serde_json::to_string(&cp).unwrap();
                let cp: payloads::Checkpoint = serde_json::from_str(&json).unwrap();
                let a = Applier::resume_with_source(
                    &trust,
                    new_target(),
                    source,
                    &cp,
                    &fx.payload[..fx.prefix_len],
                    ApplyOptions::new(NOW),
                )
                .unwrap();
                (a, cp.payload_offset as usize)
            }
        };
        for c in fx.payload[from..].chunks(3001) {
            second.feed(c).unwrap();
        }
        second.finish().unwrap();
        assert!(
            contents(&reader) == fx.new,
            "target differs after a cut at {cut}"
        );
    }
}

#[test]
fn copy_extents_outside_the_source() {
    let fx = fixture();
    let copy = fx
        .manifest
        .operations
        .iter()
        .position(|op| op.kind == OpKind::SourceCopy)
        .unwrap();
    let source_size = fx.old.len() as u64;
    let p = fx.crafted(|m| {
        m.operations[copy].src_offset = source_size.div_ceil(BS as u64) * BS as u64;
    });
    refused_untouched(
        "extent past the source",
        &p,
        Some(&fx.old),
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| matches!(e, ApplyError::Format(FormatError::SourceExtentOutside { index, .. }) if *index as usize == copy),
    );

    // A manifest claiming a larger source than the slot holds: refused before the first write.
    let p = fx.crafted(|m| {
        if let Some(s) = m.source.as_mut() {
            s.size += 1 << 20;
        }
    });
    refused_untouched(
        "source larger than the slot",
        &p,
        Some(&fx.old),
        ApplyOptions::new(NOW),
        ErrorClass::Source,
        |e| matches!(e, ApplyError::Source(SourceError::TooSmall { .. })),
    );
}

#[test]
fn overlapping_and_out_of_order_extents() {
    let fx = fixture();
    let ops = &fx.manifest.operations;
    let copy = ops
        .iter()
        .skip(1)
        .position(|op| op.kind == OpKind::SourceCopy)
        .unwrap()
        + 1;

    // A copy that overlaps the previous operation's target region.
    let p = fx.crafted(|m| {
        let prev = m.operations[copy - 1];
        let op = &mut m.operations[copy];
        op.dst_offset = prev.dst_offset + prev.dst_len - BS as u64;
        op.dst_len += BS as u64;
    });
    refused_untouched(
        "overlap",
        &p,
        Some(&fx.old),
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| matches!(e, ApplyError::Format(FormatError::OperationOverlap { index, .. }) if *index as usize == copy),
    );

    // Two operations swapped: out of order.
    let p = fx.crafted(|m| m.operations.swap(copy - 1, copy));
    refused_untouched(
        "out of order",
        &p,
        Some(&fx.old),
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::OperationOutOfOrder { .. })
            )
        },
    );

    // A copy whose source offset is not block-aligned.
    let p = fx.crafted(|m| m.operations[copy].src_offset += 1);
    refused_untouched(
        "misaligned source",
        &p,
        Some(&fx.old),
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| matches!(e, ApplyError::Format(FormatError::InvalidOperation { .. })),
    );

    // Source extents may overlap each other and go backwards: the source is only read. A
    // hand-built delta that copies the same source block to every target block applies.
    let block = fx.old[..BS].to_vec();
    let digest = Sha256Digest::of(&block);
    let target: Vec<u8> = block.repeat(4);
    let mut m = fx.manifest.clone();
    m.target_size = target.len() as u64;
    m.target_sha256 = Sha256Digest::of(&target);
    m.operations = vec![
        Operation::source_copy(0, BS as u64, 0, digest),
        Operation::source_copy(BS as u64, BS as u64, 0, digest),
        Operation::source_copy(2 * BS as u64, BS as u64, 0, digest),
        Operation::source_copy(3 * BS as u64, BS as u64, 0, digest),
    ];
    let p = payloads::Prefix::new_signed(m, &[key(1)]).unwrap().encode();
    let (_f, source) = source_file(&fx.old);
    let (result, written) = run(&p, Some(source), target.len(), ApplyOptions::new(NOW));
    result.unwrap();
    assert!(written == target);
}

#[test]
fn a_delta_for_another_app_or_source_version() {
    let fx = fixture();
    let mut opts = ApplyOptions::new(NOW);
    opts.expect = Expectations {
        app_id: Some("another-app".into()),
        ..Expectations::default()
    };
    refused_untouched(
        "another app",
        &fx.payload,
        Some(&fx.old),
        opts,
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Mismatch {
                    field: "app id",
                    ..
                }
            )
        },
    );

    let mut opts = ApplyOptions::new(NOW);
    opts.expect.source_version = Some("1.0.1".into());
    refused_untouched(
        "another source version",
        &fx.payload,
        Some(&fx.old),
        opts,
        ErrorClass::Source,
        |e| {
            matches!(e, ApplyError::Source(SourceError::VersionMismatch { expected, found })
                if expected == "1.0.1" && found == "1.0.0")
        },
    );

    // The right source version is accepted.
    let mut opts = ApplyOptions::new(NOW);
    opts.expect.source_version = Some("1.0.0".into());
    let (_f, source) = source_file(&fx.old);
    let (result, _) = run(&fx.payload, Some(source), fx.new.len(), opts);
    result.unwrap();

    // Another app's signed delta is refused when the app is expected, even with the right source.
    let other_app = {
        let mut o = delta_options("1.0.0");
        o.build.app_id = "another-app".into();
        build_delta_to_vec(&fx.old, &fx.new, &[key(1)], &o)
            .unwrap()
            .0
    };
    let mut opts = ApplyOptions::new(NOW);
    opts.expect.app_id = Some("test-app".into());
    refused_untouched(
        "delta of another app",
        &other_app,
        Some(&fx.old),
        opts,
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Mismatch {
                    field: "app id",
                    ..
                }
            )
        },
    );
}

#[test]
fn a_delta_without_a_source_and_an_old_verifier() {
    let fx = fixture();
    // An applier without a source refuses a delta before writing.
    let (result, target) = run(&fx.payload, None, fx.new.len(), ApplyOptions::new(NOW));
    let err = result.unwrap_err();
    assert!(
        matches!(&err, ApplyError::Source(SourceError::Required { version }) if version == "1.0.0"),
        "{err:?}"
    );
    assert!(target.iter().all(|&b| b == OLD));

    // A version-1 decoder cannot read a delta's manifest: what an applier that knows only format
    // version 1 sees (it stops at the header's version already).
    let manifest_bytes = &fx.payload[HEADER_LEN..HEADER_LEN + fx.manifest.encode().unwrap().len()];
    assert!(Manifest::decode(manifest_bytes).is_err());

    // A full payload's SOURCE_COPY is refused (tests/tamper.rs); a delta's header patched to
    // version 1 no longer verifies (the header is signed) nor decodes.
    let mut p = fx.payload.clone();
    p[8..12].copy_from_slice(&1u32.to_be_bytes());
    let (_f, source) = source_file(&fx.old);
    let (result, target) = run(&p, Some(source), fx.new.len(), ApplyOptions::new(NOW));
    assert!(matches!(result, Err(ApplyError::Format(_))), "{result:?}");
    assert!(target.iter().all(|&b| b == OLD));
}

#[test]
fn a_corrupted_copy_digest_is_a_source_error_and_writes_nothing_of_it() {
    // A signed manifest whose SOURCE_COPY digest does not match the (right) source: the builder's
    // bug or a tampered build; refused like a wrong source.
    let fx = fixture();
    let copy = fx
        .manifest
        .operations
        .iter()
        .position(|op| op.kind == OpKind::SourceCopy)
        .unwrap();
    let p = fx.crafted(|m| m.operations[copy].src_sha256 = Sha256Digest([9; 32]));
    let (_f, source) = source_file(&fx.old);
    let (result, target) = run(&p, Some(source), fx.new.len(), ApplyOptions::new(NOW));
    assert!(matches!(
        result,
        Err(ApplyError::Source(SourceError::ExtentMismatch { index, expected, .. }))
            if index == copy && expected == Sha256Digest([9; 32])
    ));
    written_up_to(
        &target,
        &fx.new,
        fx.manifest.operations[copy].dst_offset as usize,
    );
}
