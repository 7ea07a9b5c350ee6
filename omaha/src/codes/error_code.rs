//! update_engine's error codes (`ActionExitCode`) and the flag bits it ORs into them.
//!
//! An `<event errorcode>` from update_engine is a base code in the low 28 bits plus flags in the
//! top four: against any self-hosted server bit 28 is set, so "postinstall failed" (5) arrives as
//! 268435461. [`ErrorCode::decode`] splits the two and names both.

use std::fmt;

use super::numbered_enum;

numbered_enum! {
    /// update_engine's `ActionExitCode` values (the low 28 bits of an event `errorcode`).
    ///
    /// Codes 2000..=2999 are "the Omaha server answered HTTP N" (N = code - 2000); they are
    /// kept as `Other` and recognised by [`ErrorCode::http_status`].
    ErrorCode {
        /// 0: success.
        Success = 0 => "success",
        /// 1: generic error.
        Error = 1 => "error",
        /// 2: the Omaha request failed.
        OmahaRequestError = 2 => "Omaha request failed",
        /// 3: the Omaha response could not be handled.
        OmahaResponseHandlerError = 3 => "Omaha response handler failed",
        /// 4: copying the filesystem failed.
        FilesystemCopierError = 4 => "filesystem copy failed",
        /// 5: the postinstall step failed.
        PostinstallRunnerError = 5 => "postinstall failed",
        /// 6: setting the bootable flag failed (unused).
        SetBootableFlagError = 6 => "setting the bootable flag failed",
        /// 7: the install device could not be opened.
        InstallDeviceOpenError = 7 => "install device could not be opened",
        /// 8: the kernel device could not be opened.
        KernelDeviceOpenError = 8 => "kernel device could not be opened",
        /// 9: the payload download failed.
        DownloadTransferError = 9 => "download failed",
        /// 10: the payload hash did not match.
        PayloadHashMismatchError = 10 => "payload hash mismatch",
        /// 11: the payload size did not match.
        PayloadSizeMismatchError = 11 => "payload size mismatch",
        /// 12: payload verification failed.
        DownloadPayloadVerificationError = 12 => "payload verification failed",
        /// 13: the new partition info was wrong.
        DownloadNewPartitionInfoError = 13 => "new partition info invalid",
        /// 14: writing the payload failed.
        DownloadWriteError = 14 => "writing the payload failed",
        /// 15: the new root filesystem failed verification.
        NewRootfsVerificationError = 15 => "new root filesystem failed verification",
        /// 16: the new kernel failed verification.
        NewKernelVerificationError = 16 => "new kernel failed verification",
        /// 17: a signed delta payload was expected.
        SignedDeltaPayloadExpectedError = 17 => "signed delta payload expected",
        /// 18: payload public-key verification failed.
        DownloadPayloadPubKeyVerificationError = 18 => "payload public-key verification failed",
        /// 19: booted from firmware B.
        PostinstallBootedFromFirmwareB = 19 => "booted from firmware B",
        /// 20: download state initialisation failed.
        DownloadStateInitializationError = 20 => "download state initialisation failed",
        /// 21: invalid payload metadata magic.
        DownloadInvalidMetadataMagicString = 21 => "invalid payload metadata magic",
        /// 22: signature missing in the payload manifest.
        DownloadSignatureMissingInManifest = 22 => "signature missing in payload manifest",
        /// 23: the payload manifest could not be parsed.
        DownloadManifestParseError = 23 => "payload manifest parse error",
        /// 24: metadata signature error.
        DownloadMetadataSignatureError = 24 => "metadata signature error",
        /// 25: metadata signature verification failed.
        DownloadMetadataSignatureVerificationError = 25 => "metadata signature verification failed",
        /// 26: metadata signature mismatch.
        DownloadMetadataSignatureMismatch = 26 => "metadata signature mismatch",
        /// 27: operation hash verification failed.
        DownloadOperationHashVerificationError = 27 => "operation hash verification failed",
        /// 28: an install operation failed.
        DownloadOperationExecutionError = 28 => "install operation failed",
        /// 29: an operation hash did not match.
        DownloadOperationHashMismatch = 29 => "operation hash mismatch",
        /// 30: the Omaha response was empty.
        OmahaRequestEmptyResponseError = 30 => "empty Omaha response",
        /// 31: the Omaha response was not parseable XML.
        OmahaRequestXmlParseError = 31 => "Omaha response XML parse error",
        /// 32: invalid metadata size.
        DownloadInvalidMetadataSize = 32 => "invalid metadata size",
        /// 33: invalid metadata signature.
        DownloadInvalidMetadataSignature = 33 => "invalid metadata signature",
        /// 34: the Omaha response was invalid (e.g. an updatecheck status other than ok/noupdate).
        OmahaResponseInvalid = 34 => "invalid Omaha response",
        /// 35: update ignored per policy.
        OmahaUpdateIgnoredPerPolicy = 35 => "update ignored per policy",
        /// 36: update deferred per policy.
        OmahaUpdateDeferredPerPolicy = 36 => "update deferred per policy",
        /// 37: error in the HTTP response.
        OmahaErrorInHttpResponse = 37 => "error in Omaha HTTP response",
        /// 38: operation hash missing.
        DownloadOperationHashMissingError = 38 => "operation hash missing",
        /// 39: metadata signature missing.
        DownloadMetadataSignatureMissingError = 39 => "metadata signature missing",
        /// 40: update deferred for backoff.
        OmahaUpdateDeferredForBackoff = 40 => "update deferred for backoff",
        /// 41: postinstall powerwash failed.
        PostinstallPowerwashError = 41 => "postinstall powerwash failed",
        /// 42: new PCR policy verification failed.
        NewPcrPolicyVerificationError = 42 => "new PCR policy verification failed",
        /// 43: posting the new PCR policy failed.
        NewPcrPolicyHttpError = 43 => "posting the new PCR policy failed",
        /// 44: the host rolled back to the previous version (Flatcar).
        RollbackError = 44 => "rolled back to the previous version",
        /// 100: download incomplete (internal, never sent by update_engine).
        DownloadIncomplete = 100 => "download incomplete",
    }
}

/// Base of the "Omaha server answered HTTP N" codes (2000 + N).
const HTTP_BASE: u32 = 2000;

impl ErrorCode {
    /// Splits a raw `errorcode` into its base code and flag bits, e.g. 268435461 is
    /// [`ErrorCode::PostinstallRunnerError`] with [`ErrorFlags::NON_PRODUCTION_SERVER`].
    pub const fn decode(raw: u32) -> DecodedErrorCode {
        DecodedErrorCode::from_raw(raw)
    }

    /// For codes 2000..=2999, the HTTP status N the Omaha server answered.
    pub const fn http_status(self) -> Option<u32> {
        match self {
            ErrorCode::Other(n) if n >= HTTP_BASE && n < HTTP_BASE + 1000 => Some(n - HTTP_BASE),
            _ => None,
        }
    }

    /// The code for "the Omaha server answered HTTP `status`" (update_engine maps statuses
    /// outside 0..1000 to 999).
    pub const fn http(status: u32) -> Self {
        let status = if status >= 1000 { 999 } else { status };
        ErrorCode::Other(HTTP_BASE + status)
    }
}

/// The flag bits update_engine ORs into an error code (the top four bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ErrorFlags(u32);

impl ErrorFlags {
    /// Bit 28: the agent talks to a server other than the production one (always set against a
    /// self-hosted server).
    pub const NON_PRODUCTION_SERVER: ErrorFlags = ErrorFlags(1 << 28);
    /// Bit 29: the running image is a test (non-official) build.
    pub const TEST_IMAGE: ErrorFlags = ErrorFlags(1 << 29);
    /// Bit 30: the download was resumed.
    pub const RESUMED: ErrorFlags = ErrorFlags(1 << 30);
    /// Bit 31: the host is in developer mode (defined, never set by Flatcar).
    pub const DEV_MODE: ErrorFlags = ErrorFlags(1 << 31);
    /// Mask of all flag bits.
    pub const MASK: u32 = 0xF000_0000;

    const NAMES: [(ErrorFlags, &'static str); 4] = [
        (ErrorFlags::NON_PRODUCTION_SERVER, "non-production server"),
        (ErrorFlags::TEST_IMAGE, "test image"),
        (ErrorFlags::RESUMED, "resumed"),
        (ErrorFlags::DEV_MODE, "dev mode"),
    ];

    /// No flags set.
    pub const fn empty() -> Self {
        ErrorFlags(0)
    }

    /// The flags within a raw error code (other bits are dropped).
    pub const fn from_bits(raw: u32) -> Self {
        ErrorFlags(raw & Self::MASK)
    }

    /// The flag bits as a number.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag in `other` is set in `self`.
    pub const fn contains(self, other: ErrorFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of two flag sets.
    pub const fn union(self, other: ErrorFlags) -> Self {
        ErrorFlags(self.0 | other.0)
    }

    /// Names of the set flags, lowest bit first.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| n)
    }
}

impl std::ops::BitOr for ErrorFlags {
    type Output = ErrorFlags;
    fn bitor(self, rhs: ErrorFlags) -> ErrorFlags {
        self.union(rhs)
    }
}

/// An event `errorcode` split into base code and flags; converts losslessly to and from the raw
/// number. `Display` gives e.g. "postinstall failed (non-production server)".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedErrorCode {
    /// The base code (low 28 bits).
    pub code: ErrorCode,
    /// The flag bits (top 4 bits).
    pub flags: ErrorFlags,
}

impl DecodedErrorCode {
    /// Splits a raw error code.
    pub const fn from_raw(raw: u32) -> Self {
        DecodedErrorCode {
            code: ErrorCode::from_u32(raw & !ErrorFlags::MASK),
            flags: ErrorFlags::from_bits(raw),
        }
    }

    /// A code without flags.
    pub const fn new(code: ErrorCode) -> Self {
        DecodedErrorCode {
            code,
            flags: ErrorFlags::empty(),
        }
    }

    /// The same code with `flags` added.
    pub const fn with_flags(self, flags: ErrorFlags) -> Self {
        DecodedErrorCode {
            code: self.code,
            flags: self.flags.union(flags),
        }
    }

    /// The raw number as sent on the wire.
    pub const fn to_raw(self) -> u32 {
        (self.code.to_u32() & !ErrorFlags::MASK) | self.flags.bits()
    }
}

impl From<u32> for DecodedErrorCode {
    fn from(raw: u32) -> Self {
        DecodedErrorCode::from_raw(raw)
    }
}

impl From<ErrorCode> for DecodedErrorCode {
    fn from(code: ErrorCode) -> Self {
        DecodedErrorCode::new(code)
    }
}

impl fmt::Display for DecodedErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let platte = super::platte::PlatteCode::from_u32(self.code.to_u32()).description();
        match (self.code.description(), self.code.http_status(), platte) {
            (Some(d), _, _) => f.write_str(d)?,
            (None, Some(status), _) => write!(f, "Omaha server answered HTTP {status}")?,
            (None, None, Some(d)) => f.write_str(d)?,
            (None, None, None) => write!(f, "unknown error code {}", self.code.to_u32())?,
        }
        if !self.flags.is_empty() {
            f.write_str(" (")?;
            for (i, name) in self.flags.names().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                f.write_str(name)?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{DecodedErrorCode, ErrorCode, ErrorFlags};

    #[test]
    fn postinstall_failure_from_a_self_hosted_server() {
        let d = ErrorCode::decode(268_435_461);
        assert_eq!(d.code, ErrorCode::PostinstallRunnerError);
        assert_eq!(d.flags, ErrorFlags::NON_PRODUCTION_SERVER);
        assert_eq!(d.to_string(), "postinstall failed (non-production server)");
        assert_eq!(d.to_raw(), 268_435_461);
    }

    #[test]
    fn plain_codes_have_no_flags() {
        let d = ErrorCode::decode(5);
        assert_eq!(d.code, ErrorCode::PostinstallRunnerError);
        assert!(d.flags.is_empty());
        assert_eq!(d.to_string(), "postinstall failed");
        assert_eq!(ErrorCode::decode(44).code, ErrorCode::RollbackError);
        assert_eq!(ErrorCode::decode(34).code, ErrorCode::OmahaResponseInvalid);
        assert_eq!(
            ErrorCode::decode(40).code,
            ErrorCode::OmahaUpdateDeferredForBackoff
        );
    }

    #[test]
    fn every_flag_is_named_in_bit_order() {
        let raw = (1u32 << 28) | (1 << 29) | (1 << 30) | (1 << 31) | 10;
        let d = ErrorCode::decode(raw);
        assert_eq!(d.code, ErrorCode::PayloadHashMismatchError);
        assert!(d.flags.contains(ErrorFlags::RESUMED));
        assert!(d.flags.contains(ErrorFlags::DEV_MODE));
        assert_eq!(
            d.to_string(),
            "payload hash mismatch (non-production server, test image, resumed, dev mode)"
        );
        assert_eq!(d.to_raw(), raw);
    }

    #[test]
    fn http_codes_are_recognised() {
        let d = ErrorCode::decode((1 << 28) | 2503);
        assert_eq!(d.code.http_status(), Some(503));
        assert_eq!(
            d.to_string(),
            "Omaha server answered HTTP 503 (non-production server)"
        );
        assert_eq!(ErrorCode::http(404).to_u32(), 2404);
        assert_eq!(ErrorCode::http(1234).to_u32(), 2999);
        assert_eq!(ErrorCode::PostinstallRunnerError.http_status(), None);
    }

    #[test]
    fn platte_codes_are_named() {
        let d = ErrorCode::decode((1 << 28) | 3112);
        assert_eq!(d.code, ErrorCode::Other(3112));
        assert_eq!(
            d.to_string(),
            "Platte: extension unit restart failed (non-production server)"
        );
        assert_eq!(
            ErrorCode::decode(3103).to_string(),
            "Platte: no trusted payload keys installed"
        );
        assert_eq!(
            ErrorCode::decode(3199).to_string(),
            "unknown error code 3199"
        );
    }

    #[test]
    fn unknown_codes_are_preserved_not_rejected() {
        let d = ErrorCode::decode(12_345);
        assert_eq!(d.code, ErrorCode::Other(12_345));
        assert_eq!(d.to_string(), "unknown error code 12345");
        assert_eq!(d.to_raw(), 12_345);
    }

    #[test]
    fn raw_round_trip_is_lossless() {
        for raw in [
            0u32,
            1,
            5,
            44,
            100,
            2000,
            2999,
            3000,
            0x0FFF_FFFF,
            u32::MAX,
            0x8000_4010,
        ] {
            assert_eq!(DecodedErrorCode::from_raw(raw).to_raw(), raw);
        }
        for code in ErrorCode::NAMED {
            assert_eq!(ErrorCode::from_u32(code.to_u32()), *code);
            assert!(code.description().is_some());
        }
    }

    #[test]
    fn builder_adds_flags() {
        let d = DecodedErrorCode::new(ErrorCode::DownloadTransferError)
            .with_flags(ErrorFlags::NON_PRODUCTION_SERVER | ErrorFlags::RESUMED);
        assert_eq!(d.to_raw(), 9 | (1 << 28) | (1 << 30));
    }
}
