//! Helpers shared by the integration tests: deterministic keys, images and payloads, and target
//! files pre-filled with a recognisable "old slot" pattern.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;

use payloads::build::{BuildOptions, build_to_vec};
use payloads::{
    Applied, Applier, ApplyError, ApplyOptions, ErrorClass, SigningKey, Source, Target, TrustStore,
};

/// The byte every target starts filled with (stands for the old slot contents).
pub const OLD: u8 = 0xA5;
/// "Now" for tests, well after the build time below.
pub const NOW: u64 = 1_750_000_000;
/// Creation time used by the test builds.
pub const CREATED: u64 = 1_700_000_000;

/// A deterministic signing key.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A trust store holding the keys with these seeds.
pub fn trust(seeds: &[u8]) -> TrustStore {
    TrustStore::from_keys(seeds.iter().map(|&s| key(s).verifying_key())).unwrap()
}

/// xorshift64* bytes: incompressible, deterministic.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible text-like bytes.
pub fn text_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("line {i}: the quick brown fox jumps\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// An image of `regions` regions of `region` bytes cycling random, zero and text, plus a short
/// random tail so the size is not a multiple of the block size.
pub fn mixed_image(region: usize, regions: usize) -> Vec<u8> {
    let mut img = Vec::with_capacity(region * regions + 777);
    for r in 0..regions {
        match r % 3 {
            0 => img.extend(random_bytes(r as u64 + 1, region)),
            1 => img.extend(std::iter::repeat_n(0u8, region)),
            _ => img.extend(text_bytes(region)),
        }
    }
    img.extend(random_bytes(99, 777));
    img
}

/// Build options for tests: small chunks so there are many operations.
pub fn options(chunk_size: u32) -> BuildOptions {
    let mut o = BuildOptions::new("test-app", "1.0.0", "x86_64", CREATED);
    o.chunk_size = chunk_size;
    o.threads = 2;
    o
}

/// Builds a payload signed by the keys with these seeds.
pub fn build(image: &[u8], chunk_size: u32, seeds: &[u8]) -> Vec<u8> {
    let keys: Vec<_> = seeds.iter().map(|&s| key(s)).collect();
    build_to_vec(image, &keys, &options(chunk_size)).unwrap().0
}

/// A temporary file of `len` bytes of [`OLD`].
pub fn old_file(len: usize) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&vec![OLD; len]).unwrap();
    f
}

/// A target covering all of a fresh [`old_file`] of `len` bytes, plus a handle to read it back.
pub fn target(len: usize) -> (Target, File) {
    let f = old_file(len);
    let reader = f.try_clone().unwrap();
    (Target::new(f, 0, len as u64).unwrap(), reader)
}

/// All bytes of `file`.
pub fn contents(file: &File) -> Vec<u8> {
    let len = file.metadata().unwrap().len() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// A temporary source file holding `bytes`, and a read-only [`Source`] on it.
pub fn source_file(bytes: &[u8]) -> (File, Source) {
    let f = tempfile::tempfile().unwrap();
    f.write_all_at(bytes, 0).unwrap();
    let source = Source::new(f.try_clone().unwrap(), 0, bytes.len() as u64).unwrap();
    (f, source)
}

/// Applies `payload` (with `source`, for a delta) into a fresh [`OLD`]-filled target of
/// `target_len` bytes, fed in odd-sized chunks, then finishes; returns the result of the first
/// failing step (or of `finish`) and the target bytes.
pub fn apply_in_chunks(
    payload: &[u8],
    target_len: usize,
    trust: &TrustStore,
    source: Option<Source>,
    opts: ApplyOptions,
) -> (Result<Applied, ApplyError>, Vec<u8>) {
    let (target, reader) = target(target_len);
    let mut applier = match source {
        Some(s) => Applier::with_source(trust, target, s, opts),
        None => Applier::new(trust, target, opts),
    };
    let fed = payload
        .chunks(7919)
        .try_for_each(|c| applier.feed(c).map(|_| ()));
    let result = fed.and_then(|()| applier.finish());
    (result, contents(&reader))
}

/// Asserts that applying `payload` (trusted key seed 1, from a source holding `source` if given)
/// fails with an error matching `expected`, of class `class`, and that the target was not touched
/// at all.
#[track_caller]
pub fn refused_untouched(
    name: &str,
    payload: &[u8],
    source: Option<&[u8]>,
    opts: ApplyOptions,
    class: ErrorClass,
    expected: impl Fn(&ApplyError) -> bool,
) {
    let (_file, source) = source.map(source_file).unzip();
    let (result, target) = apply_in_chunks(payload, 1_000_000, &trust(&[1]), source, opts);
    let err = result.expect_err(name);
    assert!(expected(&err), "{name}: unexpected error {err:?}");
    assert_eq!(err.class(), class, "{name}: class of {err}");
    assert!(
        target.iter().all(|&b| b == OLD),
        "{name}: the target was written to"
    );
}

/// A payload built from an image, with its parsed manifest and the length of its signed prefix.
pub struct Fixture {
    /// The image.
    pub image: Vec<u8>,
    /// The payload (chunks of the size given, signed by key 1).
    pub payload: Vec<u8>,
    /// Its manifest.
    pub manifest: payloads::Manifest,
    /// Bytes before the operations' data.
    pub prefix_len: usize,
}

/// The payload of `image` in chunks of `chunk_size`, signed by key 1, parsed.
pub fn fixture_of(image: Vec<u8>, chunk_size: u32) -> Fixture {
    let payload = build(&image, chunk_size, &[1]);
    let (prefix, raw) = payloads::format::read_prefix(&mut payload.as_slice()).unwrap();
    Fixture {
        image,
        payload,
        manifest: prefix.manifest,
        prefix_len: raw.len(),
    }
}

impl Fixture {
    /// The operations' data (everything after the prefix).
    pub fn data(&self) -> &[u8] {
        &self.payload[self.prefix_len..]
    }

    /// Offset in the payload of operation `index`'s data (the payload's length for the count).
    pub fn data_offset(&self, index: usize) -> usize {
        data_offset(&self.manifest, self.prefix_len, index)
    }
}

/// Offset of operation `index`'s data in a payload of `manifest` whose prefix is `prefix_len`
/// bytes.
pub fn data_offset(manifest: &payloads::Manifest, prefix_len: usize, index: usize) -> usize {
    prefix_len
        + manifest.operations[..index]
            .iter()
            .map(|op| op.data_len as usize)
            .sum::<usize>()
}
