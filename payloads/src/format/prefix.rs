//! The prefix: header, manifest and signature block, i.e. everything before the first data byte.
//! It is bounded by [`MAX_PREFIX_LEN`](super::MAX_PREFIX_LEN) and its length is known from the
//! header and the signature count before the bytes are read.

use std::io::{self, Read};

use ed25519_dalek::SigningKey;

use super::signatures::{decode_block, encode_block};
use super::wire::Cursor;
use super::{
    FormatError, HEADER_LEN, Header, MAX_SIGNATURES, Manifest, SIGNATURE_ENTRY_LEN, SignatureEntry,
};
use crate::digest::Sha256Digest;

/// A decoded prefix. Decoding checks the format only; [`Prefix::verify`] checks trust.
#[derive(Debug, Clone)]
pub struct Prefix {
    /// The header.
    pub header: Header,
    /// The decoded manifest.
    pub manifest: Manifest,
    /// Signature entries, in payload order.
    pub signatures: Vec<SignatureEntry>,
    /// `header || manifest` as found in the payload: the bytes signatures cover.
    signed: Vec<u8>,
}

impl Prefix {
    /// Decodes a complete prefix; `bytes` must be exactly the prefix. Checks run in the order
    /// header, manifest, signature block.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut c = Cursor::new(bytes);
        let header_bytes: [u8; HEADER_LEN] = c.array("header")?;
        let header = Header::decode(&header_bytes)?;
        let manifest_len = header.manifest_len as usize;
        let manifest_bytes = c.take(manifest_len, "manifest")?;
        let manifest = Manifest::decode_version(manifest_bytes, header.format_version)?;
        let signatures = decode_block(&mut c)?;
        if c.remaining() != 0 {
            return Err(FormatError::TrailingBytes {
                offset: c.offset(),
                count: c.remaining(),
            });
        }
        Ok(Self {
            header,
            manifest,
            signatures,
            signed: bytes[..HEADER_LEN + manifest_len].to_vec(),
        })
    }

    /// Builds a prefix for `manifest` signed by each of `keys`.
    pub fn new_signed(manifest: Manifest, keys: &[SigningKey]) -> Result<Self, FormatError> {
        let manifest_bytes = manifest.encode()?;
        let manifest_len =
            u32::try_from(manifest_bytes.len()).map_err(|_| FormatError::ManifestLength {
                len: u32::MAX,
                min: super::MIN_MANIFEST_LEN,
                max: super::MAX_MANIFEST_LEN,
            })?;
        let header = Header {
            manifest_len,
            format_version: manifest.format_version(),
        };
        let mut signed = header.encode().to_vec();
        signed.extend_from_slice(&manifest_bytes);
        let mut prefix = Self {
            header,
            manifest,
            signatures: Vec::new(),
            signed,
        };
        for key in keys {
            prefix.add_signature(key)?;
        }
        Ok(prefix)
    }

    /// Adds a signature by `key`. Fails if that key already signed or the block is full.
    pub fn add_signature(&mut self, key: &SigningKey) -> Result<(), FormatError> {
        let entry = SignatureEntry::sign(key, &self.signed);
        if self
            .signatures
            .iter()
            .any(|e| e.public_key == entry.public_key)
        {
            return Err(FormatError::DuplicateSignature {
                index: self.signatures.len(),
                key_id: entry.key_id(),
            });
        }
        if self.signatures.len() >= usize::from(MAX_SIGNATURES) {
            return Err(FormatError::TooManySignatures {
                count: MAX_SIGNATURES.saturating_add(1),
                max: MAX_SIGNATURES,
            });
        }
        self.signatures.push(entry);
        Ok(())
    }

    /// The canonical bytes of this prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len_usize());
        out.extend_from_slice(&self.signed);
        encode_block(&mut out, &self.signatures);
        out
    }

    /// `header || manifest`: the bytes that signatures cover (after the domain prefix).
    pub fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }

    /// SHA-256 of `header || manifest`; binds checkpoints to one payload.
    pub fn signed_sha256(&self) -> Sha256Digest {
        Sha256Digest::of(&self.signed)
    }

    fn len_usize(&self) -> usize {
        self.signed.len() + 2 + self.signatures.len() * SIGNATURE_ENTRY_LEN
    }

    /// Length of the prefix in bytes: the payload offset of the first data byte.
    pub fn len(&self) -> u64 {
        self.len_usize() as u64
    }

    /// Always false: a prefix holds at least a header and a manifest.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Total payload length: prefix plus all operation data.
    pub fn payload_len(&self) -> u64 {
        self.len().saturating_add(self.manifest.data_len())
    }
}

/// Given the first bytes of a payload, the total prefix length as far as it can be known: 20 until
/// the header is there, then header + manifest + 2 until the signature count is there, then the
/// exact prefix length. Header and signature-count errors are reported as soon as those bytes are
/// present, before anything else is read.
pub fn prefix_len_needed(buf: &[u8]) -> Result<usize, FormatError> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(HEADER_LEN);
    };
    let header = Header::decode(header_bytes)?;
    let count_at = HEADER_LEN + header.manifest_len as usize;
    let Some(count) = buf.get(count_at..count_at + 2) else {
        return Ok(count_at + 2);
    };
    let count = u16::from_be_bytes([count[0], count[1]]);
    if count > MAX_SIGNATURES {
        return Err(FormatError::TooManySignatures {
            count,
            max: MAX_SIGNATURES,
        });
    }
    Ok(count_at + 2 + usize::from(count) * SIGNATURE_ENTRY_LEN)
}

/// Why a prefix could not be read from a reader.
#[derive(Debug, thiserror::Error)]
pub enum ReadPrefixError {
    /// The bytes read are not a valid prefix.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The payload ended inside the prefix.
    #[error(
        "payload truncated: it ends after {got} bytes, inside its first {needed} bytes (header, manifest and signatures)"
    )]
    Truncated {
        /// Bytes the prefix needs (as far as known).
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// Reading failed.
    #[error("reading payload: {0}")]
    Io(io::Error),
}

impl From<io::Error> for ReadPrefixError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Reads exactly the prefix from `reader` (and nothing after it), checking the header before
/// reading the manifest and the signature count before reading the signatures.
pub fn read_prefix(reader: &mut impl Read) -> Result<(Prefix, Vec<u8>), ReadPrefixError> {
    let mut buf = Vec::new();
    loop {
        let needed = prefix_len_needed(&buf)?;
        if buf.len() == needed {
            break;
        }
        let want = (needed - buf.len()) as u64;
        let got = reader.by_ref().take(want).read_to_end(&mut buf)?;
        if (got as u64) < want {
            return Err(ReadPrefixError::Truncated {
                needed,
                got: buf.len(),
            });
        }
    }
    let prefix = Prefix::decode(&buf)?;
    Ok((prefix, buf))
}

/// Assembles `header || manifest_bytes || signature block` for arbitrary (even invalid) manifest
/// bytes, signing with each key. For tests and tools that need to craft payloads; [`Prefix`] is
/// the checked way.
pub fn encode_prefix(manifest_bytes: &[u8], keys: &[SigningKey]) -> Vec<u8> {
    encode_prefix_version(super::FORMAT_VERSION, manifest_bytes, keys)
}

/// [`encode_prefix`] with the given header format version (2 for delta manifests).
pub fn encode_prefix_version(
    format_version: u32,
    manifest_bytes: &[u8],
    keys: &[SigningKey],
) -> Vec<u8> {
    let header = Header {
        manifest_len: u32::try_from(manifest_bytes.len()).unwrap_or(u32::MAX),
        format_version,
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(manifest_bytes);
    let entries: Vec<_> = keys.iter().map(|k| SignatureEntry::sign(k, &out)).collect();
    encode_block(&mut out, &entries);
    out
}
