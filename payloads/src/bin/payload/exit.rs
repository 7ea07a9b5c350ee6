//! Maps an error to the documented exit code by finding the library error in its chain.

use payloads::build::BuildError;
use payloads::format::ReadPrefixError;
use payloads::sign::SignError;
use payloads::{ApplyError, ErrorClass, FormatError, VerifyError};

/// I/O or other local error.
pub const LOCAL: u8 = 1;
/// Usage error (clap also exits with 2).
pub const USAGE: u8 = 2;
/// Invalid payload.
pub const INVALID: u8 = 3;
/// Untrusted payload.
pub const UNTRUSTED: u8 = 4;
/// A delta payload whose source does not match (the full payload is needed).
pub const SOURCE: u8 = 5;

/// A usage error detected after argument parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn class_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Invalid => INVALID,
        ErrorClass::Untrusted => UNTRUSTED,
        ErrorClass::Local => LOCAL,
        ErrorClass::Source => SOURCE,
    }
}

fn read_prefix_code(e: &ReadPrefixError) -> u8 {
    match e {
        ReadPrefixError::Io(_) => LOCAL,
        ReadPrefixError::Format(_) | ReadPrefixError::Truncated { .. } => INVALID,
    }
}

/// The exit code for `err`.
pub fn code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ApplyError>() {
            return class_code(e.class());
        }
        if let Some(e) = cause.downcast_ref::<VerifyError>() {
            return match e {
                VerifyError::Expired { .. } => INVALID,
                _ => UNTRUSTED,
            };
        }
        if cause.downcast_ref::<FormatError>().is_some() {
            return INVALID;
        }
        if let Some(e) = cause.downcast_ref::<ReadPrefixError>() {
            return read_prefix_code(e);
        }
        if let Some(e) = cause.downcast_ref::<SignError>() {
            return match e {
                SignError::Payload { error, .. } => read_prefix_code(error),
                SignError::Io { .. } => LOCAL,
            };
        }
        if let Some(e) = cause.downcast_ref::<BuildError>() {
            return match e {
                BuildError::InvalidOption(_) | BuildError::Format(_) => USAGE,
                BuildError::NoKey | BuildError::EmptyImage | BuildError::Io { .. } => LOCAL,
            };
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return USAGE;
        }
    }
    LOCAL
}
