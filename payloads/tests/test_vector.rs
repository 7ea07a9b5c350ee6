//! The test vector of `docs/development/payload-format.md` (appendix): a hand-assembled payload with one
//! operation of each kind, signed with the key whose seed is 32 bytes of 0x01. The exact bytes
//! are pinned here so the format cannot drift from the spec unnoticed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use payloads::{
    ApplyOptions, Kind, Manifest, OpKind, Operation, Prefix, Sha256Digest, apply_from_reader,
};

/// A zstd frame of 4096 bytes of `a` (level 3), stored so the vector does not depend on the
/// compressor's version.
const ZSTD_FRAME: &str = "28b52ffd60000f4d00001061610100fbf70116";

/// The vector's prefix (header, manifest, one signature), as printed in the spec.
const PREFIX_HEX: &str = "504c545041594c440000000100000000000001500464656d6f05312e302e3002067838365f363400000000006553f10001000000006b49d2000000001000000000000000300579052d3294a8d80ef2a9c0f2f1382c31adb2b5632e703e3c9cefbb1d49e3d2f400010b6f732e76657273696f6e730006343038312e2a0000000400000000000000000000000000000010000000000000001000c8f5d0341d54d951a71b136e6e2afcb14d11ed8489a7ae126a8fee0df6ecf193010000000000001000000000000000100000000000000000134e4cad8f8b4931f725cfac87f0b7a1ff4bc867f76a20e34b226f21cf9fde8b9a02000000000000200000000000000010000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000300000000000000000050000000000000005bc2d901b7d0a8558810c4f24b4cf8ae94efb29e3e4d10f4349a3b1e63ef96e7d00018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5cd183e26729e747b5d382df4679ab17ccda6df553120114cbe5b270abc89a1324f585cce8d2fd2033a0fff41343bd2bdb5150bd75d2840be4efdf1059141cdd0d";

/// Key id of the test key (seed 32 × 0x01).
const KEY_ID: &str = "34750f98bd59fcfc";

/// SHA-256 of the whole 4574-byte payload.
const PAYLOAD_SHA256: &str = "cbd28374a0d2a6352957ce4d038e3c72885d18a2217aefc3c0a037a8c40954c1";

fn vector() -> (Vec<u8>, Vec<u8>) {
    let block1: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let frame = hex::decode(ZSTD_FRAME).unwrap();
    let tail = b"tail\n".to_vec();
    let mut image = block1.clone();
    image.extend([b'a'; 4096]);
    image.extend([0u8; 4096]);
    image.extend(&tail);
    let op = |kind, dst_offset, dst_len, data: &[u8]| {
        let digest = if kind == OpKind::Zero {
            Sha256Digest::ZERO
        } else {
            Sha256Digest::of(data)
        };
        Operation::data(kind, dst_offset, dst_len, data.len() as u64, digest)
    };
    let manifest = Manifest {
        app_id: "demo".into(),
        version: "1.0.0".into(),
        kind: Kind::File,
        arch: "x86_64".into(),
        board: String::new(),
        created: 1_700_000_000,
        expires: Some(1_800_000_000),
        min_source_version: None,
        block_size: 4096,
        target_size: image.len() as u64,
        target_sha256: Sha256Digest::of(&image),
        source: None,
        metadata: BTreeMap::from([("os.versions".to_owned(), "4081.*".to_owned())]),
        operations: vec![
            op(OpKind::Replace, 0, 4096, &block1),
            op(OpKind::ReplaceZstd, 4096, 4096, &frame),
            op(OpKind::Zero, 8192, 4096, &[]),
            op(OpKind::Replace, 12288, 5, &tail),
        ],
    };
    let prefix = Prefix::new_signed(manifest, &[key(1)]).unwrap();
    let mut payload = prefix.encode();
    payload.extend(&block1);
    payload.extend(&frame);
    payload.extend(&tail);
    (payload, image)
}

#[test]
fn test_vector_is_stable_and_applies() {
    let (payload, image) = vector();
    let (prefix, raw) = payloads::read_prefix(&mut payload.as_slice()).unwrap();
    assert_eq!(hex::encode(&raw), PREFIX_HEX);
    assert_eq!(raw.len(), 454);
    assert_eq!(payload.len(), 4574);
    assert_eq!(Sha256Digest::of(&payload).to_string(), PAYLOAD_SHA256);
    assert_eq!(prefix.signatures[0].key_id().to_string(), KEY_ID);
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
