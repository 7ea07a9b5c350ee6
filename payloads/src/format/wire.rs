//! Bounded big-endian primitives for the canonical encoding: a cursor that reads fixed-width
//! integers and length-prefixed fields (never reading past its slice, never allocating more than
//! the bytes that are actually present) and the matching writer helpers.

use super::FormatError;

/// A read cursor over a byte slice that knows its absolute offset, for error messages.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Offset of the next byte to be read.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// Number of bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Takes the next `n` bytes, or fails naming `field`.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FormatError> {
        let available = self.remaining();
        if n > available {
            return Err(FormatError::Truncated {
                field,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads a fixed-size array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// Reads a `u8`.
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a big-endian `u16`.
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u32`.
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u64`.
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads a `u8`-length-prefixed byte string whose length must lie in `min..=max`.
    pub(crate) fn bytes8(
        &mut self,
        field: &'static str,
        min: usize,
        max: usize,
    ) -> Result<&'a [u8], FormatError> {
        let offset = self.pos;
        let len = usize::from(self.u8(field)?);
        check_len(field, offset, len, min, max)?;
        self.take(len, field)
    }

    /// Reads a `u16`-length-prefixed byte string whose length must lie in `min..=max`.
    pub(crate) fn bytes16(
        &mut self,
        field: &'static str,
        min: usize,
        max: usize,
    ) -> Result<&'a [u8], FormatError> {
        let offset = self.pos;
        let len = usize::from(self.u16(field)?);
        check_len(field, offset, len, min, max)?;
        self.take(len, field)
    }
}

fn check_len(
    field: &'static str,
    offset: usize,
    len: usize,
    min: usize,
    max: usize,
) -> Result<(), FormatError> {
    if len < min || len > max {
        return Err(FormatError::FieldLength {
            field,
            offset,
            len,
            min,
            max,
        });
    }
    Ok(())
}

/// Appends a `u8`-length-prefixed byte string; fails if it is longer than 255 bytes.
pub(crate) fn put_bytes8(
    out: &mut Vec<u8>,
    field: &'static str,
    value: &[u8],
) -> Result<(), FormatError> {
    let len = u8::try_from(value.len()).map_err(|_| FormatError::FieldLength {
        field,
        offset: out.len(),
        len: value.len(),
        min: 0,
        max: usize::from(u8::MAX),
    })?;
    out.push(len);
    out.extend_from_slice(value);
    Ok(())
}

/// Appends a `u16`-length-prefixed byte string; fails if it is longer than 65535 bytes.
pub(crate) fn put_bytes16(
    out: &mut Vec<u8>,
    field: &'static str,
    value: &[u8],
) -> Result<(), FormatError> {
    let len = u16::try_from(value.len()).map_err(|_| FormatError::FieldLength {
        field,
        offset: out.len(),
        len: value.len(),
        min: 0,
        max: usize::from(u16::MAX),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}
