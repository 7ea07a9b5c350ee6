//! `InstallError`: every way an install can fail or be refused, with the update_engine error
//! code reported for it (`3/0` event) and whether retrying the download may help.

use std::path::PathBuf;

use omaha::ErrorCode;
use payloads::{ApplyError, ErrorClass, VerifyError};

use crate::boot::BootError;
use crate::state::StateError;

/// Platte's own error codes for installs, for failures update_engine has no code for (defined
/// with their names in [`omaha::PlatteCode`], 3100..3199).
pub mod platte_codes {
    use omaha::PlatteCode;

    /// The payload is not for this machine (app id, board or architecture).
    pub const INCOMPATIBLE_PAYLOAD: u32 = PlatteCode::IncompatiblePayload.to_u32();
    /// The inactive slot is too small for the payload's image.
    pub const SLOT_TOO_SMALL: u32 = PlatteCode::SlotTooSmall.to_u32();
    /// No trusted payload keys are installed: updates are refused (fail closed).
    pub const NO_TRUSTED_KEYS: u32 = PlatteCode::NoTrustedKeys.to_u32();
    /// The offered version is the running one: declined (`3/9`), the fallback slot is kept.
    pub const ALREADY_RUNNING: u32 = PlatteCode::AlreadyRunning.to_u32();
    /// A delta payload's source (the active slot) is not the image it was built from: nothing
    /// derived from it was written; the next check asks for the full payload.
    pub const DELTA_SOURCE_MISMATCH: u32 = PlatteCode::DeltaSourceMismatch.to_u32();
}

/// Why an offered update is not installed although nothing is broken (policy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The offered version is older than the running one and downgrades are not allowed.
    #[error(
        "refusing downgrade from {running} to {offered}: {}",
        if *.marked { "updates.allow_downgrade is false" } else { "the server did not mark it a rollback (_rollback)" }
    )]
    Downgrade {
        /// Running version.
        running: String,
        /// Offered version.
        offered: String,
        /// Whether the server marked the offer as a rollback.
        marked: bool,
    },
    /// The offered version rolled back on this machine before and is on the deny list.
    #[error("version {0} is on the local deny list (it rolled back before); clear it to retry")]
    DenyListed(String),
}

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Refused by policy.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The offer or payload is not for this machine.
    #[error(
        "payload is not for this machine: {what} is {found:?}, this machine needs {expected:?}"
    )]
    Incompatible {
        /// What differs (app id, board, arch).
        what: &'static str,
        /// What this machine needs.
        expected: String,
        /// What the payload says.
        found: String,
    },
    /// No trusted keys: fail closed.
    #[error(
        "no trusted payload keys in {}: refusing every update (install the OS vendor's *.pub keys there)",
        dir.display()
    )]
    NoTrustedKeys {
        /// The key directory.
        dir: PathBuf,
    },
    /// The trusted keys cannot be loaded.
    #[error("cannot load trusted payload keys: {0}")]
    Keys(#[from] payloads::KeyError),
    /// The slots cannot be read or changed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Opening the target slot's data failed.
    #[error("cannot open the target slot for writing: {0}")]
    TargetOpen(#[source] std::io::Error),
    /// The download failed (connection, stall, early end).
    #[error("downloading {url}: {detail}")]
    Transfer {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The download server answered an error status.
    #[error("downloading {url}: HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The payload is not the size Omaha announced.
    #[error("payload size mismatch: the Omaha response announced {announced} bytes, {found}")]
    SizeMismatch {
        /// Announced size.
        announced: u64,
        /// What was found instead.
        found: String,
    },
    /// The payload's SHA-256 is not the one Omaha announced.
    #[error(
        "payload SHA-256 mismatch: the Omaha response announced {announced}, the download has {found}"
    )]
    HashMismatch {
        /// Announced digest (hex).
        announced: String,
        /// Digest of the bytes received (hex).
        found: String,
    },
    /// The payload applier rejected the payload or failed to write it.
    #[error("payload rejected: {0}")]
    Apply(#[from] ApplyError),
    /// The state (checkpoint) could not be persisted.
    #[error(transparent)]
    State(#[from] StateError),
    /// Every URL failed.
    #[error("every download URL failed; last error: {0}")]
    AllUrlsFailed(Box<InstallError>),
}

impl InstallError {
    /// The code reported in the `3/0` event: update_engine's where one fits, else Platte's
    /// ([`platte_codes`]).
    pub fn code(&self) -> ErrorCode {
        use platte_codes::*;
        match self {
            InstallError::Refused(_) => ErrorCode::OmahaUpdateIgnoredPerPolicy,
            InstallError::Incompatible { .. } => ErrorCode::Other(INCOMPATIBLE_PAYLOAD),
            InstallError::NoTrustedKeys { .. } | InstallError::Keys(_) => {
                ErrorCode::Other(NO_TRUSTED_KEYS)
            }
            InstallError::Boot(_) | InstallError::TargetOpen(_) => {
                ErrorCode::InstallDeviceOpenError
            }
            InstallError::Transfer { .. } | InstallError::HttpStatus { .. } => {
                ErrorCode::DownloadTransferError
            }
            InstallError::SizeMismatch { .. } => ErrorCode::PayloadSizeMismatchError,
            InstallError::HashMismatch { .. } => ErrorCode::PayloadHashMismatchError,
            InstallError::State(_) => ErrorCode::DownloadStateInitializationError,
            InstallError::AllUrlsFailed(e) => e.code(),
            InstallError::Apply(e) => match e {
                ApplyError::Verify(VerifyError::Expired { .. }) => {
                    ErrorCode::DownloadPayloadVerificationError
                }
                ApplyError::Verify(_) => ErrorCode::DownloadPayloadPubKeyVerificationError,
                ApplyError::Format(_) => ErrorCode::DownloadManifestParseError,
                ApplyError::Mismatch { .. } => ErrorCode::Other(INCOMPATIBLE_PAYLOAD),
                ApplyError::TargetTooSmall { .. } => ErrorCode::Other(SLOT_TOO_SMALL),
                ApplyError::DataHashMismatch { .. } => ErrorCode::DownloadOperationHashMismatch,
                ApplyError::Decompress { .. } => ErrorCode::DownloadOperationExecutionError,
                ApplyError::DataAfterEnd { .. } | ApplyError::Truncated { .. } => {
                    ErrorCode::PayloadSizeMismatchError
                }
                ApplyError::TargetHashMismatch { .. } => ErrorCode::NewRootfsVerificationError,
                ApplyError::Io { .. } => ErrorCode::DownloadWriteError,
                ApplyError::InvalidCheckpoint { .. } => ErrorCode::DownloadStateInitializationError,
                ApplyError::Stopped => ErrorCode::Error,
                // A delta whose source (the active slot) is not the image it was built from, or
                // cannot be read: the remedy is the full payload.
                ApplyError::Source(_) => ErrorCode::Other(DELTA_SOURCE_MISMATCH),
            },
        }
    }

    /// Whether another attempt (resuming from the checkpoint) may succeed: transport failures
    /// and server errors, not a bad or untrusted payload.
    pub fn is_transient(&self) -> bool {
        match self {
            InstallError::Transfer { .. } => true,
            InstallError::HttpStatus { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }

    /// Whether a delta payload does not apply to the active slot ([`ErrorClass::Source`]: built
    /// from another version, a source extent that does not match its signed SHA-256, a source
    /// too small or unreadable). Only a delta fails so; the checkpoint must be dropped.
    pub fn is_source_mismatch(&self) -> bool {
        match self {
            InstallError::Apply(e) => e.class() == ErrorClass::Source,
            InstallError::AllUrlsFailed(e) => e.is_source_mismatch(),
            _ => false,
        }
    }

    /// For the install of a delta payload: whether this failure is the delta's own, one the
    /// full payload of the same version may not have, so that the agent asks for the full
    /// payload next ([`is_source_mismatch`](Self::is_source_mismatch), a bad or untrusted
    /// payload, one not for this machine, a download URL that refuses it). Not a failure that
    /// would hit the full payload alike: transient transfer errors (the download resumes), a
    /// local problem (slots, target I/O, state), or a refusal by policy.
    pub fn is_delta_failure(&self) -> bool {
        match self {
            InstallError::Incompatible { .. } => true,
            InstallError::HttpStatus { .. } => !self.is_transient(),
            InstallError::AllUrlsFailed(e) => e.is_delta_failure(),
            _ => self.is_bad_payload() || self.is_source_mismatch(),
        }
    }

    /// Whether the payload itself is bad or untrusted (the checkpoint must be dropped).
    pub fn is_bad_payload(&self) -> bool {
        match self {
            InstallError::SizeMismatch { .. } | InstallError::HashMismatch { .. } => true,
            InstallError::Apply(e) => {
                matches!(e.class(), ErrorClass::Invalid | ErrorClass::Untrusted)
            }
            InstallError::AllUrlsFailed(e) => e.is_bad_payload(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use payloads::SourceError;

    use super::*;

    fn source_mismatch() -> InstallError {
        InstallError::Apply(ApplyError::Source(SourceError::VersionMismatch {
            expected: "1.0.0".into(),
            found: "0.9.0".into(),
        }))
    }

    fn transfer() -> InstallError {
        InstallError::Transfer {
            url: "http://a/p".into(),
            detail: "connection reset".into(),
        }
    }

    #[test]
    fn a_source_mismatch_has_its_own_code_and_is_a_delta_failure() {
        let e = source_mismatch();
        assert_eq!(e.code(), ErrorCode::Other(3105));
        assert!(e.is_source_mismatch() && e.is_delta_failure());
        assert!(!e.is_bad_payload() && !e.is_transient());
        let all = InstallError::AllUrlsFailed(Box::new(source_mismatch()));
        assert!(all.is_source_mismatch() && all.is_delta_failure());
        assert_eq!(all.code(), ErrorCode::Other(3105));
    }

    #[test]
    fn only_failures_the_full_payload_may_not_have_are_delta_failures() {
        let http = |status| InstallError::HttpStatus {
            url: "http://a/p".into(),
            status,
        };
        let bad = InstallError::Apply(ApplyError::Truncated {
            received: 1,
            expected: None,
        });
        let incompatible = InstallError::Incompatible {
            what: "board",
            expected: "a".into(),
            found: "b".into(),
        };
        for e in [bad, incompatible, http(404)] {
            assert!(e.is_delta_failure(), "{e}");
            assert!(!e.is_source_mismatch(), "{e}");
        }
        let local = InstallError::Apply(ApplyError::TargetTooSmall {
            needed: 2,
            available: 1,
        });
        let all_transient = InstallError::AllUrlsFailed(Box::new(transfer()));
        for e in [transfer(), http(503), local, all_transient] {
            assert!(!e.is_delta_failure(), "{e}");
        }
    }
}
