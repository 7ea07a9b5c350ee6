//! `Target`: the byte range `[base, base + len)` of a file or block device that a payload is
//! written into, with positional, bounds-checked reads and writes.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek as _, SeekFrom};
use std::os::unix::fs::{FileExt as _, FileTypeExt as _};
use std::path::Path;

use rustix::fs::{FallocateFlags, fallocate};

/// Zero bytes written by ZERO operations, a slice at a time.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// A writable byte range of a file or block device (for instance one slot of a GPT disk).
#[derive(Debug)]
pub struct Target {
    file: File,
    base: u64,
    len: u64,
}

impl Target {
    /// The range `[base, base + len)` of `file`, which must be open for reading and writing.
    pub fn new(file: File, base: u64, len: u64) -> io::Result<Self> {
        check_range("target", base, len)?;
        Ok(Self { file, base, len })
    }

    /// Opens `path` for reading and writing and uses all of it (its current size).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
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

    /// Another handle on the same range (for reading it back on another thread).
    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            base: self.base,
            len: self.len,
        })
    }

    /// Gives the file back.
    pub fn into_file(self) -> File {
        self.file
    }

    /// How many bytes from `base` can actually be written: the range length, further limited by
    /// the device size for a block device (a regular file grows as needed).
    pub(crate) fn capacity(&self) -> io::Result<u64> {
        let meta = self.file.metadata()?;
        if meta.file_type().is_block_device() {
            let size = device_or_file_size(&self.file)?;
            Ok(self.len.min(size.saturating_sub(self.base)))
        } else {
            Ok(self.len)
        }
    }

    fn absolute(&self, offset: u64, len: u64) -> io::Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "write of {len} bytes at {offset} would leave the target range of {} bytes",
                    self.len
                ),
            )),
        }
    }

    /// Writes `data` at `offset` within the range.
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let at = self.absolute(offset, data.len() as u64)?;
        self.file.write_all_at(data, at)
    }

    /// Writes `len` zero bytes at `offset` within the range: with `fallocate(FALLOC_FL_ZERO_RANGE)`
    /// where the file system or block device supports it (no data copied), else 1 MiB at a time.
    pub(crate) fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        let at = self.absolute(offset, len)?;
        if len > 0 && fallocate(&self.file, FallocateFlags::ZERO_RANGE, at, len).is_ok() {
            return Ok(());
        }
        // Not supported here (tmpfs, unaligned range on a block device, ...): write zeros.
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64);
            self.write_at(offset + done, &ZEROS[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Fills `buf` from `offset` within the range.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = self.absolute(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, at)
    }

    /// Flushes written data to the device.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Checks that the byte range `[base, base + len)` of a `what` (`target`, `source`) does not
/// overflow.
pub(crate) fn check_range(what: &str, base: u64, len: u64) -> io::Result<()> {
    if base.checked_add(len).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} range {base}+{len} overflows"),
        ));
    }
    Ok(())
}

/// Size of a regular file, or of a block device (by seeking to its end).
pub(crate) fn device_or_file_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut f = file;
        f.seek(SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}

/// Shared zero slice for hashing ZERO operations without allocating.
pub(crate) fn zeros() -> &'static [u8] {
    &ZEROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroing_works_with_and_without_fallocate() {
        // /tmp is usually a disk file system (fallocate ZERO_RANGE); /dev/shm is tmpfs, which
        // does not support ZERO_RANGE, so the write fallback runs there.
        let mut dirs = vec![std::env::temp_dir()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push("/dev/shm".into());
        }
        for dir in dirs {
            let file = tempfile::tempfile_in(&dir).unwrap();
            file.write_all_at(&[0xEE; 3 << 20], 0).unwrap();
            let t = Target::new(file, 4096, 2 << 20).unwrap();
            t.write_zeros(1000, (1 << 20) + 5).unwrap();
            let mut buf = vec![0u8; 3 << 20];
            t.into_file().read_exact_at(&mut buf, 0).unwrap();
            let start = 4096 + 1000;
            let end = start + (1 << 20) + 5;
            assert!(buf[..start].iter().all(|&b| b == 0xEE), "{dir:?}");
            assert!(buf[start..end].iter().all(|&b| b == 0), "{dir:?}");
            assert!(buf[end..].iter().all(|&b| b == 0xEE), "{dir:?}");
        }
    }

    #[test]
    fn writes_stay_inside_the_range() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(100).unwrap();
        let t = Target::new(file, 10, 20).unwrap();
        t.write_at(0, &[1; 20]).unwrap();
        assert!(t.write_at(1, &[1; 20]).is_err());
        assert!(t.write_zeros(15, 6).is_err());
        assert!(t.write_at(u64::MAX, &[1]).is_err());
        t.write_zeros(5, 5).unwrap();
        let mut buf = [9u8; 100];
        t.into_file().read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..10], &[0; 10]);
        assert_eq!(&buf[10..15], &[1; 5]);
        assert_eq!(&buf[15..20], &[0; 5]);
        assert_eq!(&buf[20..30], &[1; 10]);
        assert_eq!(&buf[30..], &[0; 70]);
    }
}
