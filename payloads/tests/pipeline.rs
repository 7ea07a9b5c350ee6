//! The applier's writer thread: checkpoints and syncs wait for it, a write error surfaces once
//! with the offset of the operation that failed (and the checkpoint stops before it), dropping an
//! applier mid-way ends its threads, and writing on the caller's thread gives the same target.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

use common::*;
use payloads::{Applier, ApplyError, ApplyOptions, OpKind, Target};
use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, memfd_create};

const CHUNK: u32 = 64 * 1024;

fn fixture() -> Fixture {
    fixture_of(mixed_image(150_000, 6), CHUNK)
}

impl Fixture {
    /// The first REPLACE_ZSTD operation after the first third of the operations.
    fn zstd_op(&self) -> usize {
        let ops = &self.manifest.operations;
        (ops.len() / 3..ops.len())
            .find(|&i| ops[i].kind == OpKind::ReplaceZstd)
            .unwrap()
    }
}

/// Both ways of writing: on a writer thread (the default) and on the caller's thread.
fn appliers(mut target: impl FnMut() -> Target) -> [(&'static str, Applier); 2] {
    let opts = || ApplyOptions::new(NOW);
    [
        ("threaded", Applier::new(&trust(&[1]), target(), opts())),
        (
            "inline",
            Applier::new(&trust(&[1]), target(), opts()).inline_writes(),
        ),
    ]
}

#[test]
fn checkpoint_and_sync_wait_for_the_writer() {
    let fx = fixture();
    let k = fx.zstd_op();
    let end = fx.manifest.operations[k].dst_end() as usize;
    let (target, reader) = target(fx.image.len());
    let mut applier = Applier::new(&trust(&[1]), target, ApplyOptions::new(NOW));
    for chunk in fx.payload[..fx.data_offset(k + 1)].chunks(7919) {
        applier.feed(chunk).unwrap();
    }
    assert_eq!(applier.progress().operations_done, k as u64 + 1);
    // Right after the last feed: every operation fed is claimed, and is in the target.
    let cp = applier.checkpoint().unwrap();
    assert_eq!(cp.next_operation, k as u64 + 1);
    assert_eq!(cp.payload_offset, fx.data_offset(k + 1) as u64);
    assert_eq!(&contents(&reader)[..end], &fx.image[..end]);
    applier.sync().unwrap();
    for chunk in fx.payload[fx.data_offset(k + 1)..].chunks(7919) {
        applier.feed(chunk).unwrap();
    }
    let applied = applier.finish().unwrap();
    assert_eq!(contents(&reader), fx.image);
    assert_eq!(applied.target_sha256, fx.manifest.target_sha256);
}

#[test]
fn threaded_and_inline_writes_give_the_same_target() {
    let fx = fixture();
    let len = fx.image.len() + 4096;
    let files: Vec<File> = (0..2).map(|_| old_file(len)).collect();
    let mut i = 0;
    let appliers = appliers(|| {
        i += 1;
        Target::new(files[i - 1].try_clone().unwrap(), 0, len as u64).unwrap()
    });
    for ((mode, mut applier), file) in appliers.into_iter().zip(&files) {
        for chunk in fx.payload.chunks(100_003) {
            applier.feed(chunk).unwrap();
        }
        let applied = applier.finish().unwrap();
        assert_eq!(applied.target_sha256, fx.manifest.target_sha256, "{mode}");
        let written = contents(file);
        assert_eq!(&written[..fx.image.len()], fx.image.as_slice(), "{mode}");
        assert!(
            written[fx.image.len()..].iter().all(|&b| b == OLD),
            "{mode}"
        );
    }
}

/// A memory file of `len` bytes of [`OLD`] that cannot grow: writes past `len` fail (EPERM).
fn sealed_file(len: usize) -> File {
    let fd = memfd_create(
        "payload-target",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    let mut f = File::from(fd);
    f.write_all(&vec![OLD; len]).unwrap();
    fcntl_add_seals(&f, SealFlags::GROW).unwrap();
    f
}

#[test]
fn a_write_error_surfaces_once_with_its_offset() {
    let fx = fixture();
    let ops = &fx.manifest.operations;
    // The file ends inside operation k: everything before it can be written, k cannot.
    let k = fx.zstd_op();
    let failing_at = ops[k].dst_offset;
    let file_len = failing_at as usize + 100;
    let files: Vec<File> = (0..2).map(|_| sealed_file(file_len)).collect();
    let mut i = 0;
    let appliers = appliers(|| {
        i += 1;
        Target::new(files[i - 1].try_clone().unwrap(), 0, fx.image.len() as u64).unwrap()
    });
    for ((mode, mut applier), file) in appliers.into_iter().zip(&files) {
        // Feed up to the end of operation k's data, then sync: the error is reported exactly
        // once, by whichever comes first (on the writer thread it may be found by either).
        let mut reported = Vec::new();
        for chunk in fx.payload[..fx.data_offset(k + 1)].chunks(7919) {
            if let Err(e) = applier.feed(chunk) {
                reported.push(e);
                break;
            }
        }
        if let Err(e) = applier.sync() {
            reported.push(e);
        }
        assert_eq!(reported.len(), 1, "{mode}: {reported:?}");
        assert!(
            matches!(
                &reported[0],
                ApplyError::Io { action: "writing target", offset, .. } if *offset == failing_at
            ),
            "{mode}: {:?}",
            reported[0]
        );
        // The checkpoint claims exactly the operations before k, and they are written.
        let cp = applier.checkpoint().unwrap();
        assert_eq!(cp.next_operation, k as u64, "{mode}");
        assert_eq!(cp.payload_offset, fx.data_offset(k) as u64, "{mode}");
        let written = contents(file);
        assert_eq!(
            &written[..failing_at as usize],
            &fx.image[..failing_at as usize],
            "{mode}"
        );
        // Once reported, the applier refuses to go on.
        let err = applier
            .feed(&fx.payload[fx.data_offset(k + 1)..])
            .unwrap_err();
        assert!(matches!(err, ApplyError::Stopped), "{mode}: {err:?}");
        let err = applier.finish().unwrap_err();
        assert!(matches!(err, ApplyError::Stopped), "{mode}: {err:?}");
    }
}

/// How many of this process's file descriptors are open on `path`.
fn open_fds(path: &Path) -> usize {
    let path = fs::canonicalize(path).unwrap();
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|link| *link == path)
        .count()
}

#[test]
fn dropping_an_applier_mid_way_ends_its_threads() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target");
    fs::write(&path, vec![OLD; fx.image.len()]).unwrap();
    for inline in [false, true] {
        let target = Target::open(&path).unwrap();
        let mut applier = Applier::new(&trust(&[1]), target, ApplyOptions::new(NOW));
        if inline {
            applier = applier.inline_writes();
        }
        for chunk in fx.payload[..fx.payload.len() / 2].chunks(7919) {
            applier.feed(chunk).unwrap();
        }
        // The writer (or the applier) and the background re-read each hold the target open.
        assert!(open_fds(&path) >= 2, "inline {inline}");
        drop(applier);
        // Dropping joined them: their handles are closed.
        assert_eq!(open_fds(&path), 0, "inline {inline}");
    }
}
