//! `Source`: the read-only byte range a delta payload copies extents from (the active slot, or
//! the old image). It is opened read-only and never written; every extent read from it is checked
//! against its signed SHA-256 by the applier before it is used.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::apply::SourceError;
use crate::digest::Sha256Digest;
use crate::format::DeltaSource;
use crate::target::{check_range, device_or_file_size};

/// Read size of [`Source::check_image`].
const CHECK_CHUNK: usize = 1 << 20;

/// A read-only byte range `[base, base + len)` of a file or block device that a delta payload
/// copies from.
#[derive(Debug)]
pub struct Source {
    file: File,
    base: u64,
    len: u64,
}

impl Source {
    /// The range `[base, base + len)` of `file` (opened for reading; it is never written).
    pub fn new(file: File, base: u64, len: u64) -> io::Result<Self> {
        check_range("source", base, len)?;
        Ok(Self { file, base, len })
    }

    /// Opens `path` read-only and uses all of it (its current size).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = device_or_file_size(&file)?;
        Self::new(file, 0, len)
    }

    /// Offset of the range in the file.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length of the range.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` from `offset` within the range; a read past the range's end is an error.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.file.read_exact_at(buf, self.base + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "read of {} bytes at {offset} would leave the source range of {} bytes",
                    buf.len(),
                    self.len
                ),
            )),
        }
    }

    /// Checks the whole source image against a delta's `source.sha256`: the range must hold
    /// `source.size` bytes whose SHA-256 matches. The applier does not need this (it checks every
    /// extent it reads, right before using it); it lets a caller find out before downloading
    /// anything that a delta cannot apply here. Reads `source.size` bytes.
    pub fn check_image(&self, source: &DeltaSource) -> Result<(), SourceError> {
        if self.len < source.size {
            return Err(SourceError::TooSmall {
                needed: source.size,
                available: self.len,
            });
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHECK_CHUNK];
        let mut done = 0u64;
        while done < source.size {
            let n = (source.size - done).min(CHECK_CHUNK as u64) as usize;
            self.read_at(done, &mut buf[..n])
                .map_err(|error| SourceError::Read {
                    offset: done,
                    error,
                })?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        let found = Sha256Digest(hasher.finalize().into());
        if found != source.sha256 {
            return Err(SourceError::ImageMismatch {
                expected: source.sha256,
                found,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stay_inside_the_range_and_the_image_check_works() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(b"xxabcdefyy", 0).unwrap();
        let s = Source::new(file, 2, 6).unwrap();
        let mut buf = [0u8; 3];
        s.read_at(3, &mut buf).unwrap();
        assert_eq!(&buf, b"def");
        assert!(s.read_at(4, &mut buf).is_err());
        assert!(s.read_at(u64::MAX, &mut buf).is_err());
        let mut src = DeltaSource {
            version: "1".into(),
            size: 6,
            sha256: Sha256Digest::of(b"abcdef"),
        };
        s.check_image(&src).unwrap();
        src.size = 5;
        assert!(matches!(
            s.check_image(&src),
            Err(SourceError::ImageMismatch { .. })
        ));
        src.size = 7;
        assert!(matches!(
            s.check_image(&src),
            Err(SourceError::TooSmall {
                needed: 7,
                available: 6
            })
        ));
    }
}
