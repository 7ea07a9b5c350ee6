//! The signature block after the manifest: a `u16` count and that many 96-byte entries, each an
//! Ed25519 public key and its signature over `SIGNATURE_DOMAIN || header || manifest`.

use ed25519_dalek::{Signer as _, SigningKey};

use super::wire::Cursor;
use super::{FormatError, MAX_SIGNATURES, SIGNATURE_DOMAIN};
use crate::keys::KeyId;

/// One signature: who claims to have signed, and the signature bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureEntry {
    /// Raw Ed25519 public key of the signer.
    pub public_key: [u8; 32],
    /// Ed25519 signature.
    pub signature: [u8; 64],
}

impl std::fmt::Debug for SignatureEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignatureEntry({})", self.key_id())
    }
}

impl SignatureEntry {
    /// Key id of the signer's public key.
    pub fn key_id(&self) -> KeyId {
        KeyId::of_bytes(&self.public_key)
    }

    /// Signs `signed` (header and manifest bytes) with `key`, adding the domain prefix.
    pub fn sign(key: &SigningKey, signed: &[u8]) -> Self {
        let message = signed_message(signed);
        Self {
            public_key: key.verifying_key().to_bytes(),
            signature: key.sign(&message).to_bytes(),
        }
    }
}

/// The exact message a signature covers: `SIGNATURE_DOMAIN || header || manifest`.
pub(crate) fn signed_message(signed: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + signed.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(signed);
    message
}

/// Decodes the count and the entries; refuses more than [`MAX_SIGNATURES`] and repeated keys.
pub(crate) fn decode_block(c: &mut Cursor<'_>) -> Result<Vec<SignatureEntry>, FormatError> {
    let count = c.u16("signature_count")?;
    if count > MAX_SIGNATURES {
        return Err(FormatError::TooManySignatures {
            count,
            max: MAX_SIGNATURES,
        });
    }
    let mut entries: Vec<SignatureEntry> = Vec::with_capacity(usize::from(count));
    for index in 0..usize::from(count) {
        let entry = SignatureEntry {
            public_key: c.array("signature public_key")?,
            signature: c.array("signature")?,
        };
        if entries.iter().any(|e| e.public_key == entry.public_key) {
            return Err(FormatError::DuplicateSignature {
                index,
                key_id: entry.key_id(),
            });
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Appends the count and the entries.
pub(crate) fn encode_block(out: &mut Vec<u8>, entries: &[SignatureEntry]) {
    let count = u16::try_from(entries.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for e in entries.iter().take(usize::from(count)) {
        out.extend_from_slice(&e.public_key);
        out.extend_from_slice(&e.signature);
    }
}
