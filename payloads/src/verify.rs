//! Trust decisions over a decoded prefix: at least one signature by a trusted key, then expiry.
//! The result, [`PayloadInfo`], is what the server and the agent read about a payload.

use std::collections::BTreeMap;

use ed25519_dalek::Signature;

use crate::digest::Sha256Digest;
use crate::format::{DeltaSource, Kind, Manifest, Prefix, signed_message};
use crate::keys::{KeyId, TrustStore};

/// Why a well-formed payload is not trusted (or no longer valid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature block is empty.
    #[error("payload carries no signature")]
    NoSignature,
    /// No signature is by a trusted key.
    #[error(
        "payload is signed only by untrusted keys ({}); add the signer's public key to the trust store if it is genuine",
        join(key_ids)
    )]
    UntrustedSigners {
        /// Key ids of the signatures found.
        key_ids: Vec<KeyId>,
    },
    /// A signature claims a trusted key but does not verify: the manifest or signature was altered.
    #[error(
        "signature by trusted key {key_id} does not verify: the header, manifest or signature was altered"
    )]
    BadSignature {
        /// The trusted key whose signature failed.
        key_id: KeyId,
    },
    /// The payload's expiry time has passed.
    #[error("payload expired at {expires} (Unix time); it is now {now}")]
    Expired {
        /// Expiry from the manifest.
        expires: u64,
        /// The time used for the check.
        now: u64,
    },
}

fn join(ids: &[KeyId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A verified payload's description: the signed manifest and who signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadInfo {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Key ids of all signatures, in payload order (trusted or not).
    pub signatures: Vec<KeyId>,
    /// The trusted key whose signature verified.
    pub signer: KeyId,
    /// Length of header, manifest and signatures: offset of the first data byte.
    pub prefix_len: u64,
    /// SHA-256 of `header || manifest`.
    pub signed_sha256: Sha256Digest,
}

impl PayloadInfo {
    /// Application id.
    pub fn app_id(&self) -> &str {
        &self.manifest.app_id
    }
    /// Version.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }
    /// Partition image or file.
    pub fn kind(&self) -> Kind {
        self.manifest.kind
    }
    /// Architecture.
    pub fn arch(&self) -> &str {
        &self.manifest.arch
    }
    /// Board (may be empty).
    pub fn board(&self) -> &str {
        &self.manifest.board
    }
    /// Final target size.
    pub fn target_size(&self) -> u64 {
        self.manifest.target_size
    }
    /// SHA-256 of the final target.
    pub fn target_sha256(&self) -> Sha256Digest {
        self.manifest.target_sha256
    }
    /// The source a delta payload applies to; `None` for a full payload.
    pub fn source(&self) -> Option<&DeltaSource> {
        self.manifest.source.as_ref()
    }
    /// Whether this is a delta payload.
    pub fn is_delta(&self) -> bool {
        self.manifest.is_delta()
    }
    /// Free-form metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.manifest.metadata
    }
    /// Total payload length in bytes.
    pub fn payload_len(&self) -> u64 {
        self.prefix_len.saturating_add(self.manifest.data_len())
    }
}

impl Prefix {
    /// Checks that at least one signature is by a key in `trust` and verifies (strict Ed25519),
    /// then that the payload has not expired at `now` (Unix seconds).
    ///
    /// Signatures by unknown keys are ignored. If no trusted signature verifies, the error is
    /// [`VerifyError::BadSignature`] when a trusted key's signature failed, otherwise
    /// [`VerifyError::NoSignature`] or [`VerifyError::UntrustedSigners`].
    pub fn verify(&self, trust: &TrustStore, now: u64) -> Result<PayloadInfo, VerifyError> {
        if self.signatures.is_empty() {
            return Err(VerifyError::NoSignature);
        }
        let message = signed_message(self.signed_bytes());
        let mut signer = None;
        let mut failed = None;
        for entry in &self.signatures {
            let Some(key) = trust.get(&entry.public_key) else {
                continue;
            };
            let signature = Signature::from_bytes(&entry.signature);
            if key.verify_strict(&message, &signature).is_ok() {
                signer = Some(entry.key_id());
                break;
            }
            failed.get_or_insert(entry.key_id());
        }
        let signer = match (signer, failed) {
            (Some(s), _) => s,
            (None, Some(key_id)) => return Err(VerifyError::BadSignature { key_id }),
            (None, None) => {
                return Err(VerifyError::UntrustedSigners {
                    key_ids: self.signatures.iter().map(|e| e.key_id()).collect(),
                });
            }
        };
        if let Some(expires) = self.manifest.expires.filter(|&e| now >= e) {
            return Err(VerifyError::Expired { expires, now });
        }
        Ok(PayloadInfo {
            manifest: self.manifest.clone(),
            signatures: self.signatures.iter().map(|e| e.key_id()).collect(),
            signer,
            prefix_len: self.len(),
            signed_sha256: self.signed_sha256(),
        })
    }
}
