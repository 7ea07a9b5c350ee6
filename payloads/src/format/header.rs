//! The fixed 20-byte header: magic, format version, flags and manifest length.

use super::wire::Cursor;
use super::{
    FORMAT_VERSION, FormatError, HEADER_LEN, MAGIC, MAX_FORMAT_VERSION, MAX_MANIFEST_LEN,
    MIN_MANIFEST_LEN,
};

/// The decoded header: format version 1 (full payload) or 2 (delta payload), no flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the manifest that follows, in bytes.
    pub manifest_len: u32,
    /// [`FORMAT_VERSION`] (full) or [`DELTA_FORMAT_VERSION`](super::DELTA_FORMAT_VERSION).
    pub format_version: u32,
}

impl Header {
    /// A version-1 (full payload) header.
    pub fn full(manifest_len: u32) -> Self {
        Self {
            manifest_len,
            format_version: FORMAT_VERSION,
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.format_version.to_be_bytes());
        out[12..16].copy_from_slice(&0u32.to_be_bytes());
        out[16..20].copy_from_slice(&self.manifest_len.to_be_bytes());
        out
    }

    /// Decodes and checks the first [`HEADER_LEN`] bytes: magic, then version, then flags, then
    /// the manifest length bounds.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, FormatError> {
        let mut cur = Cursor::new(bytes);
        let magic: [u8; 8] = cur.array("magic")?;
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = cur.u32("format_version")?;
        if !(FORMAT_VERSION..=MAX_FORMAT_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: MAX_FORMAT_VERSION,
            });
        }
        let flags = cur.u32("flags")?;
        if flags != 0 {
            return Err(FormatError::UnknownFlags { flags });
        }
        let manifest_len = cur.u32("manifest_len")?;
        if !(MIN_MANIFEST_LEN..=MAX_MANIFEST_LEN).contains(&manifest_len) {
            return Err(FormatError::ManifestLength {
                len: manifest_len,
                min: MIN_MANIFEST_LEN,
                max: MAX_MANIFEST_LEN,
            });
        }
        Ok(Self {
            manifest_len,
            format_version: version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections_in_order() {
        let h = Header::full(500);
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes), Ok(h));
        let delta = Header {
            format_version: 2,
            ..h
        };
        assert_eq!(Header::decode(&delta.encode()), Ok(delta));

        let mut bad = bytes;
        bad[0] = b'X';
        bad[9] = 7; // also a bad version: magic is reported first
        assert!(matches!(
            Header::decode(&bad),
            Err(FormatError::BadMagic { .. })
        ));

        for version in [0u8, 3] {
            let mut bad = bytes;
            bad[11] = version;
            assert_eq!(
                Header::decode(&bad),
                Err(FormatError::UnsupportedVersion {
                    found: u32::from(version),
                    supported: 2
                })
            );
        }

        let mut bad = bytes;
        bad[15] = 1;
        assert_eq!(
            Header::decode(&bad),
            Err(FormatError::UnknownFlags { flags: 1 })
        );

        let too_big = Header::full(MAX_MANIFEST_LEN + 1);
        assert!(matches!(
            Header::decode(&too_big.encode()),
            Err(FormatError::ManifestLength { .. })
        ));
        let too_small = Header::full(MIN_MANIFEST_LEN - 1);
        assert!(matches!(
            Header::decode(&too_small.encode()),
            Err(FormatError::ManifestLength { .. })
        ));
    }
}
