//! Property tests: the decoders never panic on arbitrary or mutated input, valid manifests
//! round-trip, and the encoding is canonical (whatever decodes re-encodes to the same bytes).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use payloads::format::{Prefix, prefix_len_needed};
use payloads::{
    Applier, ApplyOptions, DeltaSource, Kind, Manifest, OpKind, Operation, Sha256Digest,
};
use proptest::prelude::*;

fn ident(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[!-~]{{1,{max}}}")).unwrap()
}

/// Size of the source in generated delta manifests: 1000 blocks.
const SOURCE_SIZE: u64 = 1000 * 4096;

prop_compose! {
    /// Operations covering a target; kind 3 (SOURCE_COPY, from block `src` of the source) only
    /// when `delta`.
    fn operations(delta: bool)(
        lens in proptest::collection::vec((0u8..4, 1u64..4, 1u64..5000, 0u64..997), 1..20),
    ) -> (Vec<Operation>, u64) {
        let mut ops = Vec::new();
        let mut offset = 0u64;
        for (kind, blocks, zlen, src) in lens {
            let dst_len = blocks * 4096;
            ops.push(match kind {
                0 => Operation::data(OpKind::Replace, offset, dst_len, dst_len, Sha256Digest([3; 32])),
                1 => Operation::data(OpKind::ReplaceZstd, offset, dst_len, zlen, Sha256Digest([4; 32])),
                3 if delta => Operation::source_copy(offset, dst_len, src * 4096, Sha256Digest([6; 32])),
                _ => Operation::zero(offset, dst_len),
            });
            offset += dst_len;
        }
        (ops, offset)
    }
}

fn manifest() -> impl Strategy<Value = Manifest> {
    any::<bool>().prop_flat_map(manifest_of)
}

prop_compose! {
    fn manifest_of(delta: bool)(
        app_id in ident(128),
        version in ident(64),
        file in any::<bool>(),
        arch in ident(32),
        board in proptest::option::of(ident(64)),
        created in 0u64..u64::MAX / 2,
        expires_after in proptest::option::of(1u64..1_000_000),
        min_source_version in proptest::option::of(ident(64)),
        metadata in proptest::collection::btree_map("[a-z0-9._-]{1,20}", "\\PC{0,40}", 0..5),
        (operations, target_size) in operations(delta),
        source_version in ident(64),
    ) -> Manifest {
        Manifest {
            app_id, version,
            kind: if file { Kind::File } else { Kind::Partition },
            arch, board: board.unwrap_or_default(), created,
            expires: expires_after.map(|d| created + d),
            min_source_version,
            block_size: 4096, target_size,
            target_sha256: Sha256Digest([5; 32]),
            source: delta.then_some(DeltaSource {
                version: source_version,
                size: SOURCE_SIZE,
                sha256: Sha256Digest([7; 32]),
            }),
            metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
            operations,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Manifest::decode(&bytes);
        let _ = Manifest::decode_version(&bytes, 2);
        let _ = Prefix::decode(&bytes);
        let _ = prefix_len_needed(&bytes);
    }

    #[test]
    fn valid_manifests_round_trip(m in manifest()) {
        let bytes = m.encode().unwrap();
        prop_assert_eq!(Manifest::decode_version(&bytes, m.format_version()).unwrap(), m);
    }

    #[test]
    fn mutated_encodings_fail_or_stay_canonical(
        m in manifest(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = m.encode().unwrap();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(decoded) = Manifest::decode_version(&bytes, m.format_version()) {
            // Exactly one encoding per manifest: what decodes re-encodes to the same bytes.
            prop_assert_eq!(decoded.encode().unwrap(), bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The applier survives arbitrary corruption of a real payload fed in arbitrary chunks: it
    /// either errors or produces the exact image, and never panics.
    #[test]
    fn applier_never_panics_on_corrupted_payloads(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        step in 1usize..5000,
    ) {
        let image = mixed_image(9000, 4);
        let mut payload = build(&image, 4096, &[1]);
        for (at, value) in edits {
            let i = at.index(payload.len());
            payload[i] = value;
        }
        let (t, reader) = target(image.len());
        let mut a = Applier::new(&trust(&[1]), t, ApplyOptions::new(NOW));
        let fed = payload.chunks(step).try_for_each(|c| a.feed(c).map(|_| ()));
        if fed.and_then(|()| a.finish()).is_ok() {
            prop_assert!(contents(&reader) == image);
        }
    }
}
