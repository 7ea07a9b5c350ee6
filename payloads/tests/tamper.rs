//! Tamper matrix: every rejection the format promises, each with its own error, and the target
//! left untouched (or, for corrupted data, the bad operation and everything after it unwritten).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use payloads::format::{FormatError, HEADER_LEN, encode_prefix};
use payloads::{
    Applied, Applier, ApplyError, ApplyOptions, ErrorClass, Kind, Manifest, OpKind, Sha256Digest,
    Target, TrustStore, VerifyError,
};

const CHUNK: u32 = 64 * 1024;

fn fixture() -> Fixture {
    fixture_of(mixed_image(150_000, 6), CHUNK)
}

impl Fixture {
    /// The payload with its manifest changed by `f`, encoded without checks and signed by `seeds`.
    fn crafted(&self, seeds: &[u8], f: impl FnOnce(&mut Manifest)) -> Vec<u8> {
        let mut m = self.manifest.clone();
        f(&mut m);
        let keys: Vec<_> = seeds.iter().map(|&s| key(s)).collect();
        let mut out = encode_prefix(&m.encode_unchecked().unwrap(), &keys);
        out.extend_from_slice(self.data());
        out
    }
}

/// Feeds `payload` in odd-sized chunks into a fresh [`OLD`]-filled target, then finishes.
fn run_with(
    payload: &[u8],
    target_len: usize,
    trust: &TrustStore,
    opts: ApplyOptions,
) -> (Result<Applied, ApplyError>, Vec<u8>) {
    apply_in_chunks(payload, target_len, trust, None, opts)
}

fn run(payload: &[u8], target_len: usize) -> (Result<Applied, ApplyError>, Vec<u8>) {
    run_with(payload, target_len, &trust(&[1]), ApplyOptions::new(NOW))
}

#[test]
fn valid_payload_applies() {
    let fx = fixture();
    let (result, target) = run(&fx.payload, fx.image.len() + 1000);
    let applied = result.unwrap();
    assert_eq!(&target[..fx.image.len()], fx.image.as_slice());
    assert!(target[fx.image.len()..].iter().all(|&b| b == OLD));
    assert_eq!(applied.target_sha256, Sha256Digest::of(&fx.image));
    assert_eq!(applied.info.app_id(), "test-app");
}

#[test]
fn header_problems_write_nothing() {
    let fx = fixture();
    let mut p = fx.payload.clone();
    p[0] ^= 0xff;
    refused_untouched(
        "bad magic",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| matches!(e, ApplyError::Format(FormatError::BadMagic { .. })),
    );

    let mut p = fx.payload.clone();
    p[8..12].copy_from_slice(&3u32.to_be_bytes());
    refused_untouched(
        "version 3",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::UnsupportedVersion {
                    found: 3,
                    supported: 2
                })
            )
        },
    );

    let mut p = fx.payload.clone();
    p[12..16].copy_from_slice(&1u32.to_be_bytes());
    refused_untouched(
        "flags",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::UnknownFlags { flags: 1 })
            )
        },
    );

    let mut p = fx.payload.clone();
    p[16..20].copy_from_slice(&(2u32 << 20).to_be_bytes());
    refused_untouched(
        "oversize manifest",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| matches!(e, ApplyError::Format(FormatError::ManifestLength { .. })),
    );
}

#[test]
fn oversize_manifest_is_refused_from_the_header_alone() {
    // Only the 20 header bytes are fed: the error comes before any manifest byte is read.
    let fx = fixture();
    let mut p = fx.payload[..HEADER_LEN].to_vec();
    p[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    let (target, _) = target(10);
    let mut applier = Applier::new(&trust(&[1]), target, ApplyOptions::new(NOW));
    assert!(matches!(
        applier.feed(&p),
        Err(ApplyError::Format(FormatError::ManifestLength { .. }))
    ));
    assert!(matches!(applier.feed(&[]), Err(ApplyError::Stopped)));
}

#[test]
fn truncated_payloads() {
    let fx = fixture();
    for cut in [10, HEADER_LEN + 50, fx.prefix_len - 1] {
        refused_untouched(
            "truncated prefix",
            &fx.payload[..cut],
            None,
            ApplyOptions::new(NOW),
            ErrorClass::Invalid,
            |e| matches!(e, ApplyError::Truncated { expected: None, .. }),
        );
    }
    // Truncated in the data: what was complete is written, the rest is reported missing.
    let cut = fx.payload.len() - 10;
    let (result, _) = run(&fx.payload[..cut], 1_000_000);
    let err = result.unwrap_err();
    assert!(
        matches!(err, ApplyError::Truncated { received, expected: Some(n) }
            if received == cut as u64 && n == fx.payload.len() as u64),
        "{err:?}"
    );
}

#[test]
fn signature_problems_write_nothing() {
    let fx = fixture();

    let unsigned = fx.crafted(&[], |_| {});
    refused_untouched(
        "no signature",
        &unsigned,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Untrusted,
        |e| matches!(e, ApplyError::Verify(VerifyError::NoSignature)),
    );

    let other = fx.crafted(&[2, 3], |_| {});
    refused_untouched(
        "untrusted",
        &other,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Untrusted,
        |e| matches!(e, ApplyError::Verify(VerifyError::UntrustedSigners { key_ids }) if key_ids.len() == 2),
    );

    let mut p = fx.payload.clone();
    let last_sig_byte = fx.prefix_len - 1;
    p[last_sig_byte] ^= 0x01;
    refused_untouched(
        "corrupted signature",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Untrusted,
        |e| matches!(e, ApplyError::Verify(VerifyError::BadSignature { .. })),
    );

    // A manifest byte changed so that it still decodes: only the signature catches it.
    let mut p = fx.payload.clone();
    let version_at = HEADER_LEN + 1 + "test-app".len() + 1; // first byte of "1.0.0"
    assert_eq!(p[version_at], b'1');
    p[version_at] = b'9';
    refused_untouched(
        "corrupted manifest",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Untrusted,
        |e| matches!(e, ApplyError::Verify(VerifyError::BadSignature { .. })),
    );

    // A manifest byte changed so that it no longer decodes: the decoder catches it first.
    let mut p = fx.payload.clone();
    let kind_at = version_at + "1.0.0".len();
    p[kind_at] = 9;
    refused_untouched(
        "malformed manifest",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::InvalidField { field: "kind", .. })
            )
        },
    );

    // A signature by an untrusted key next to a good one is fine; by a trusted key that fails is not.
    let both = fx.crafted(&[2, 1], |_| {});
    let (result, _) = run(&both, 1_000_000);
    assert_eq!(result.unwrap().info.signatures.len(), 2);
}

#[test]
fn signature_block_limits() {
    let fx = fixture();
    let mut p = fx.crafted(&[1], |_| {});
    let count_at = HEADER_LEN + (fx.prefix_len - HEADER_LEN - 2 - 96);
    p[count_at..count_at + 2].copy_from_slice(&17u16.to_be_bytes());
    refused_untouched(
        "17 signatures",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::TooManySignatures { count: 17, .. })
            )
        },
    );

    // The same key twice.
    let mut p = fx.payload[..fx.prefix_len].to_vec();
    let entry = p[fx.prefix_len - 96..].to_vec();
    p[count_at..count_at + 2].copy_from_slice(&2u16.to_be_bytes());
    p.extend_from_slice(&entry);
    p.extend_from_slice(fx.data());
    refused_untouched(
        "duplicate signature",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::DuplicateSignature { index: 1, .. })
            )
        },
    );
}

#[test]
fn expired_payload_writes_nothing() {
    let fx = fixture();
    let p = fx.crafted(&[1], |m| m.expires = Some(NOW));
    refused_untouched(
        "expired",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Verify(VerifyError::Expired {
                    expires: NOW,
                    now: NOW
                })
            )
        },
    );
    // One second earlier it is still valid.
    let (target, _) = target(1_000_000);
    let mut a = Applier::new(&trust(&[1]), target, ApplyOptions::new(NOW - 1));
    a.feed(&p).unwrap();
    a.finish().unwrap();
}

#[test]
fn bad_operation_lists_write_nothing() {
    let fx = fixture();
    let ops = &fx.manifest.operations;
    assert!(ops.len() > 8, "fixture needs several operations");
    let n = ops.len();

    let p = fx.crafted(&[1], |m| {
        let last = m.operations.last_mut().unwrap();
        last.dst_len += 4096;
        if last.kind == OpKind::Replace {
            last.data_len = last.dst_len;
        }
    });
    refused_untouched(
        "outside target",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::OperationOutsideTarget { .. })
            )
        },
    );

    let p = fx.crafted(&[1], |m| m.operations[2].dst_offset -= 4096);
    refused_untouched(
        "overlap",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::OperationOverlap { index: 2, .. })
            )
        },
    );

    let p = fx.crafted(&[1], |m| m.operations.swap(3, 4));
    refused_untouched(
        "out of order",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::OperationOutOfOrder { index: 4, .. })
            )
        },
    );

    let p = fx.crafted(&[1], |m| {
        m.operations.remove(n / 2);
    });
    refused_untouched(
        "gap",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| matches!(e, ApplyError::Format(FormatError::OperationGap { .. })),
    );

    let p = fx.crafted(&[1], |m| {
        m.operations.pop();
    });
    refused_untouched(
        "incomplete",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::OperationsIncomplete { .. })
            )
        },
    );

    // SOURCE_COPY (opcode 3) is only allowed in a delta (format version 2): patch the first
    // opcode of this full manifest, re-sign.
    let mut manifest = fx.manifest.encode().unwrap();
    let first_op = manifest.len() - n * payloads::format::OPERATION_LEN;
    manifest[first_op] = 3;
    let mut p = encode_prefix(&manifest, &[key(1)]);
    p.extend_from_slice(fx.data());
    refused_untouched(
        "source copy",
        &p,
        None,
        ApplyOptions::new(NOW),
        ErrorClass::Invalid,
        |e| {
            matches!(
                e,
                ApplyError::Format(FormatError::UnsupportedOperation {
                    index: 0,
                    name: "SOURCE_COPY"
                })
            )
        },
    );
}

#[test]
fn target_too_small_writes_nothing() {
    let fx = fixture();
    let (result, target) = run(&fx.payload, fx.image.len() - 1);
    let err = result.unwrap_err();
    assert!(
        matches!(err, ApplyError::TargetTooSmall { needed, available }
            if needed == fx.image.len() as u64 && available == fx.image.len() as u64 - 1),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Local);
    assert!(target.iter().all(|&b| b == OLD));

    // A range inside a larger file: the range, not the file, is what counts.
    let file = old_file(fx.image.len() * 2);
    let t = Target::new(file, 4096, fx.image.len() as u64 - 1).unwrap();
    let mut a = Applier::new(&trust(&[1]), t, ApplyOptions::new(NOW));
    assert!(matches!(
        a.feed(&fx.payload),
        Err(ApplyError::TargetTooSmall { .. })
    ));
}

#[test]
fn expectation_mismatch_writes_nothing() {
    let fx = fixture();
    let mut opts = ApplyOptions::new(NOW);
    opts.expect.arch = Some("aarch64".into());
    let (result, target) = run_with(&fx.payload, 1_000_000, &trust(&[1]), opts);
    assert!(matches!(
        result,
        Err(ApplyError::Mismatch { field: "arch", .. })
    ));
    assert!(target.iter().all(|&b| b == OLD));

    let mut opts = ApplyOptions::new(NOW);
    opts.expect.kind = Some(Kind::File);
    let (result, _) = run_with(&fx.payload, 1_000_000, &trust(&[1]), opts);
    assert!(matches!(
        result,
        Err(ApplyError::Mismatch { field: "kind", .. })
    ));
}

#[test]
fn corrupted_data_is_never_written() {
    let fx = fixture();
    let ops = &fx.manifest.operations;
    // Corrupt the last byte of each data operation in turn.
    for (k, op) in ops.iter().enumerate().filter(|(_, op)| op.data_len > 0) {
        let mut p = fx.payload.clone();
        let at = fx.data_offset(k) + op.data_len as usize - 1;
        p[at] ^= 0x40;
        let (result, target) = run(&p, fx.image.len());
        let err = result.unwrap_err();
        assert!(
            matches!(err, ApplyError::DataHashMismatch { index, payload_offset, .. }
                if index == k && payload_offset == fx.data_offset(k) as u64),
            "op {k}: {err:?}"
        );
        assert_eq!(err.class(), ErrorClass::Invalid);
        let start = op.dst_offset as usize;
        assert_eq!(&target[..start], &fx.image[..start], "op {k}: earlier ops");
        assert!(
            target[start..].iter().all(|&b| b == OLD),
            "op {k}: the corrupted operation or a later one was written"
        );
    }
}

#[test]
fn data_after_the_end_is_refused() {
    let fx = fixture();
    let mut p = fx.payload.clone();
    p.push(0);
    let (result, _) = run(&p, fx.image.len());
    let err = result.unwrap_err();
    assert!(
        matches!(err, ApplyError::DataAfterEnd { offset, .. } if offset == fx.payload.len() as u64),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Invalid);
}

#[test]
fn undecompressible_data_with_a_matching_hash_is_not_written() {
    let fx = fixture();
    let k = fx
        .manifest
        .operations
        .iter()
        .position(|op| op.kind == OpKind::ReplaceZstd)
        .unwrap();
    let op = fx.manifest.operations[k];
    // Replace the zstd frame by garbage of the same length and sign a manifest with its hash.
    let mut p = fx.payload.clone();
    let at = fx.data_offset(k);
    let garbage = random_bytes(7, op.data_len as usize);
    p[at..at + garbage.len()].copy_from_slice(&garbage);
    let mut m = fx.manifest.clone();
    m.operations[k].data_sha256 = Sha256Digest::of(&garbage);
    let mut crafted = encode_prefix(&m.encode().unwrap(), &[key(1)]);
    crafted.extend_from_slice(&p[fx.prefix_len..]);
    let (result, target) = run(&crafted, fx.image.len());
    assert!(matches!(result, Err(ApplyError::Decompress { index, .. }) if index == k));
    let start = op.dst_offset as usize;
    assert!(target[start..].iter().all(|&b| b == OLD));
}

#[test]
fn wrong_target_digest_is_caught_by_the_final_check() {
    let fx = fixture();
    let p = fx.crafted(&[1], |m| m.target_sha256 = Sha256Digest([1; 32]));
    let (result, _) = run(&p, fx.image.len());
    let err = result.unwrap_err();
    assert!(
        matches!(err, ApplyError::TargetHashMismatch { found, .. } if found == Sha256Digest::of(&fx.image))
    );
}

#[test]
fn verifier_accepts_good_and_rejects_bad_without_a_target() {
    let fx = fixture();
    let info =
        payloads::verify_payload(fx.payload.as_slice(), &trust(&[1]), ApplyOptions::new(NOW))
            .unwrap();
    assert_eq!(info.target_sha256(), Sha256Digest::of(&fx.image));
    let mut p = fx.payload.clone();
    let last = p.len() - 1;
    p[last] ^= 1;
    assert!(matches!(
        payloads::verify_payload(p.as_slice(), &trust(&[1]), ApplyOptions::new(NOW)),
        Err(ApplyError::DataHashMismatch { .. })
    ));
    assert!(matches!(
        payloads::verify_payload(fx.payload.as_slice(), &trust(&[2]), ApplyOptions::new(NOW)),
        Err(ApplyError::Verify(VerifyError::UntrustedSigners { .. }))
    ));
}
