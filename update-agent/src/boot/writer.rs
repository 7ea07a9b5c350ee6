//! [`SlotWriter`]: write access to the target slot's byte range on the disk, and nothing else.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use super::SlotId;

/// A handle on the disk confined to one slot's byte range; positions are relative to the slot.
///
/// Only [`super::BootBackend::open_target`] creates one, for the inactive slot.
#[derive(Debug)]
pub struct SlotWriter {
    file: File,
    slot: SlotId,
    offset: u64,
    len: u64,
    pos: u64,
}

fn out_of_range(slot: SlotId, pos: u64, n: usize, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("access to slot {slot} at {pos}+{n} is outside its {len} bytes"),
    )
}

impl SlotWriter {
    pub(crate) fn new(file: File, slot: SlotId, offset: u64, len: u64) -> Self {
        Self {
            file,
            slot,
            offset,
            len,
            pos: 0,
        }
    }

    /// Which slot this writes.
    pub fn slot(&self) -> SlotId {
        self.slot
    }

    /// Size of the slot in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the slot has zero size.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, pos: u64, n: usize) -> io::Result<u64> {
        let n64 = u64::try_from(n).map_err(|_| out_of_range(self.slot, pos, n, self.len))?;
        match pos.checked_add(n64) {
            Some(end) if end <= self.len => Ok(self.offset + pos),
            _ => Err(out_of_range(self.slot, pos, n, self.len)),
        }
    }

    /// Writes all of `buf` at slot-relative position `pos`; fails if it would leave the slot.
    pub fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let at = self.check(pos, buf.len())?;
        self.file.write_all_at(buf, at)
    }

    /// Reads exactly `buf.len()` bytes at slot-relative position `pos`.
    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let at = self.check(pos, buf.len())?;
        self.file.read_exact_at(buf, at)
    }

    /// Turns this handle into the payload applier's target (the same file and byte range).
    pub fn into_target(self) -> io::Result<payloads::Target> {
        payloads::Target::new(self.file, self.offset, self.len)
    }

    /// Flushes written data to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Write for SlotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let room = self.len.saturating_sub(self.pos);
        if room == 0 {
            return Err(out_of_range(self.slot, self.pos, buf.len(), self.len));
        }
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let at = self.check(self.pos, n)?;
        let written = self.file.write_at(&buf[..n], at)?;
        self.pos += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for SlotWriter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let at = self.check(self.pos, n)?;
        let read = self.file.read_at(&mut buf[..n], at)?;
        self.pos += read as u64;
        Ok(read)
    }
}

impl Seek for SlotWriter {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("seek outside slot {} ({} bytes)", self.slot, self.len),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (SlotWriter, File) {
        let f = tempfile::tempfile().unwrap();
        f.set_len(64).unwrap();
        let w = SlotWriter::new(f.try_clone().unwrap(), SlotId::B, 16, 16);
        (w, f)
    }

    #[test]
    fn writes_stay_inside_the_range() {
        let (mut w, f) = writer();
        w.write_all_at(b"abcd", 12).unwrap();
        assert!(w.write_all_at(b"abcde", 12).is_err());
        assert!(w.write_all_at(b"a", u64::MAX).is_err());
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(b"0123456789").unwrap();
        // Write past the end: only what fits, then an error.
        assert!(w.write_all(b"XXXXXXXXXX").is_err());
        let mut all = vec![0u8; 64];
        f.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(&all[..16], &[0u8; 16]);
        assert_eq!(&all[16..32], b"0123456789XXXXXX");
        assert_eq!(&all[32..], &[0u8; 32]);
        assert!(w.seek(SeekFrom::Start(17)).is_err());
        assert!(w.seek(SeekFrom::Current(-100)).is_err());
    }

    #[test]
    fn reads_are_relative_and_bounded() {
        let (mut w, f) = writer();
        f.write_all_at(b"zzzzzzzzzzzzzzzzHELLO", 0).unwrap();
        let mut b = [0u8; 5];
        w.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"HELLO");
        let mut rest = Vec::new();
        w.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len(), 16);
    }
}
