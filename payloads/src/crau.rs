//! The header of update_engine's payload format ("CrAU"), as Flatcar and ChromeOS publish it:
//! enough to tell such a file from anything else and to compute what update_engine's Omaha
//! answer carries (`MetadataSize`), with a bounded parser that never reads past the header.
//! The payload's signatures are the OS vendor's, checked by the host against its own key; a
//! server serves the file byte for byte and does not verify them.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "CrAU"
//!      4     8  format version, big-endian (1: Flatcar's update_engine; 2: later ChromeOS)
//!     12     8  manifest size, big-endian
//!     20     4  metadata signature size, big-endian (version 2 only)
//!  20|24     …  the protobuf DeltaArchiveManifest, then (version 2) the metadata signature,
//!               then the data blobs and the payload signature
//! ```
//!
//! The metadata (what update_engine reads before it trusts the rest) is the header and the
//! manifest: `20 + manifest size` bytes in version 1, `24 + manifest size` in version 2.

use thiserror::Error;

/// The first four bytes of every CrAU payload.
pub const MAGIC: &[u8; 4] = b"CrAU";

/// Bytes [`parse_header`] needs at most: the longest header (version 2).
pub const MAX_HEADER_LEN: usize = 24;

/// The largest manifest accepted (update_engine's own bound on metadata is far below this; a
/// larger claim is a corrupt or hostile file).
pub const MAX_MANIFEST_LEN: u64 = 64 << 20;

/// A CrAU payload's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrauHeader {
    /// Format version (1 or 2).
    pub version: u64,
    /// Size of the protobuf manifest.
    pub manifest_len: u64,
    /// Size of the metadata signature that follows the manifest (version 2; 0 in version 1).
    pub metadata_signature_len: u32,
}

impl CrauHeader {
    /// Size of the header itself: 20 bytes in version 1, 24 in version 2.
    pub fn header_len(&self) -> u64 {
        if self.version >= 2 { 24 } else { 20 }
    }

    /// What update_engine calls the metadata size (the Omaha answer's `MetadataSize`): the
    /// header and the manifest.
    pub fn metadata_len(&self) -> u64 {
        self.header_len() + self.manifest_len
    }
}

/// Why bytes are not the header of a CrAU payload.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CrauError {
    /// Fewer bytes than the header needs.
    #[error("not an update_engine payload: {len} bytes, a CrAU header needs {needed}")]
    Short {
        /// Bytes given.
        len: usize,
        /// Bytes the header needs.
        needed: usize,
    },
    /// The first four bytes are not `CrAU`.
    #[error("not an update_engine payload: the file starts with {found:02x?}, not \"CrAU\"")]
    Magic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// A format version this parser does not know.
    #[error("unsupported update_engine payload version {0} at byte 4 (known: 1 and 2)")]
    Version(u64),
    /// The manifest size at byte 12 is zero or beyond [`MAX_MANIFEST_LEN`].
    #[error("implausible manifest size {0} at byte 12 of the update_engine payload")]
    ManifestLen(u64),
    /// The header and manifest (and metadata signature) do not fit in the file.
    #[error(
        "the update_engine payload's metadata ({metadata} bytes: header, manifest and metadata \
         signature) does not fit in the {file_len}-byte file"
    )]
    Truncated {
        /// Bytes the metadata claims.
        metadata: u64,
        /// The file's size.
        file_len: u64,
    },
}

/// Parses the header at the start of `bytes` (at most [`MAX_HEADER_LEN`] are read) of a file of
/// `file_len` bytes, and checks that the metadata it announces fits in the file.
pub fn parse_header(bytes: &[u8], file_len: u64) -> Result<CrauHeader, CrauError> {
    let short = |needed| CrauError::Short {
        len: bytes.len(),
        needed,
    };
    let magic = bytes.get(..4).ok_or(short(20))?;
    if magic != MAGIC {
        return Err(CrauError::Magic {
            found: magic.to_vec(),
        });
    }
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    let version = u64_at(4).ok_or(short(20))?;
    let manifest_len = u64_at(12).ok_or(short(20))?;
    let metadata_signature_len = match version {
        1 => 0,
        2 => bytes
            .get(20..24)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(short(24))?,
        v => return Err(CrauError::Version(v)),
    };
    if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
        return Err(CrauError::ManifestLen(manifest_len));
    }
    let header = CrauHeader {
        version,
        manifest_len,
        metadata_signature_len,
    };
    let metadata = header.metadata_len() + u64::from(metadata_signature_len);
    if metadata > file_len {
        return Err(CrauError::Truncated { metadata, file_len });
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u64, manifest_len: u64, signature_len: Option<u32>) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&manifest_len.to_be_bytes());
        if let Some(s) = signature_len {
            b.extend_from_slice(&s.to_be_bytes());
        }
        b
    }

    #[test]
    fn version_1_and_2_headers_give_the_metadata_size() {
        let v1 = parse_header(&header(1, 1000, None), 5000).unwrap();
        assert_eq!((v1.header_len(), v1.metadata_len()), (20, 1020));
        assert_eq!(v1.metadata_signature_len, 0);
        let v2 = parse_header(&header(2, 1000, Some(256)), 5000).unwrap();
        assert_eq!((v2.header_len(), v2.metadata_len()), (24, 1024));
        assert_eq!(v2.metadata_signature_len, 256);
        // Exactly the metadata and nothing more is still a (data-less) payload.
        parse_header(&header(1, 1000, None), 1020).unwrap();
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        assert_eq!(
            parse_header(b"CrA", 3),
            Err(CrauError::Short { len: 3, needed: 20 })
        );
        assert_eq!(
            parse_header(&header(2, 10, None), 100),
            Err(CrauError::Short {
                len: 20,
                needed: 24
            })
        );
        let mut platte = header(1, 10, None);
        platte[..4].copy_from_slice(b"PLTE");
        assert!(matches!(
            parse_header(&platte, 100),
            Err(CrauError::Magic { .. })
        ));
        assert_eq!(
            parse_header(&header(3, 10, None), 100),
            Err(CrauError::Version(3))
        );
        assert_eq!(
            parse_header(&header(1, 0, None), 100),
            Err(CrauError::ManifestLen(0))
        );
        assert_eq!(
            parse_header(&header(1, u64::MAX, None), u64::MAX),
            Err(CrauError::ManifestLen(u64::MAX))
        );
        assert_eq!(
            parse_header(&header(1, 1000, None), 1019),
            Err(CrauError::Truncated {
                metadata: 1020,
                file_len: 1019
            })
        );
        assert_eq!(
            parse_header(&header(2, 1000, Some(u32::MAX)), 10_000),
            Err(CrauError::Truncated {
                metadata: 1024 + u64::from(u32::MAX),
                file_len: 10_000
            })
        );
        let msg = parse_header(b"\x1f\x8b\x08\x00 a gzip file", 100)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("1f, 8b, 08, 00"), "{msg}");
    }
}
