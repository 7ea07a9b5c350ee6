//! The `Platte-Machine-Signature` HTTP header of a Platte agent's Omaha request: its text form
//! (parsed with hard limits, written canonically) and the exact bytes a machine key signs. No
//! keys, clocks or hashing here: the agent signs and the server verifies (both with ed25519);
//! both hash the body with SHA-256 and pass the digest in. See `docs/development/protocol.md`.
//!
//! ```text
//! Platte-Machine-Signature: v=1; key=<base64 public key>; ts=<unix seconds>; sig=<base64 signature>
//! signed bytes: "platte-omaha-v1\n" || ts (decimal ASCII) || "\n" || SHA-256(body) (32 raw bytes)
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Header name, as sent (HTTP header names are case-insensitive).
pub const HEADER_NAME: &str = "Platte-Machine-Signature";
/// Response header in which the server says what it made of a request's signature: one of
/// `valid`, `unenrolled`, `bad_signature`, `key_mismatch`, `stale` (only on answers to requests
/// that carried [`HEADER_NAME`]).
pub const STATUS_HEADER_NAME: &str = "Platte-Machine-Signature-Status";
/// The only header version (`v=1`).
pub const VERSION: &str = "1";
/// Domain-separation prefix of the signed bytes.
pub const DOMAIN: &[u8] = b"platte-omaha-v1\n";
/// Longest accepted header value (a canonical one is 173 bytes with a 10-digit timestamp).
pub const MAX_HEADER_LEN: usize = 256;
/// Most digits of `ts` (`i64::MAX` has 19).
const MAX_TS_DIGITS: usize = 19;
/// Length of an ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The parsed header: who signs, when, and the signature over [`signed_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineSignature {
    /// The machine's ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// When the request was signed, in Unix seconds (never negative).
    pub timestamp: i64,
    /// The ed25519 signature of [`signed_message`]`(timestamp, SHA-256(body))`.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why a header value is not a valid `Platte-Machine-Signature`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureHeaderError {
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("the header is {0} bytes long, at most {MAX_HEADER_LEN} are allowed")]
    TooLong(usize),
    /// Not printable ASCII.
    #[error("the header holds bytes other than printable ASCII")]
    NotAscii,
    /// Not `v=…; key=…; ts=…; sig=…` in that order.
    #[error("the header must be `v=1; key=…; ts=…; sig=…` in this order: {0}")]
    Shape(&'static str),
    /// A version other than `1`.
    #[error("unsupported header version {0:?} (only v=1 is known)")]
    Version(String),
    /// `ts` is not a canonical non-negative decimal number.
    #[error("ts must be Unix seconds in decimal without leading zeros")]
    Timestamp,
    /// `key` or `sig` is not standard padded base64.
    #[error("{0} is not standard base64 (RFC 4648, with padding)")]
    Base64(&'static str),
    /// `key` or `sig` decodes to the wrong number of bytes.
    #[error("{field} decodes to {got} bytes, {want} expected")]
    Length {
        /// `key` or `sig`.
        field: &'static str,
        /// Decoded length.
        got: usize,
        /// Required length.
        want: usize,
    },
}

/// The bytes a machine key signs for a request sent at `timestamp` whose body hashes to
/// `body_sha256`: `"platte-omaha-v1\n" || decimal(timestamp) || "\n" || body_sha256`.
pub fn signed_message(timestamp: i64, body_sha256: &[u8; 32]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut m = Vec::with_capacity(DOMAIN.len() + ts.len() + 1 + body_sha256.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(ts.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body_sha256);
    m
}

fn decode<const N: usize>(field: &'static str, v: &str) -> Result<[u8; N], SignatureHeaderError> {
    // At most N bytes fit in 4 * ceil(N / 3) characters; longer input is refused before decoding.
    if v.len() > N.div_ceil(3) * 4 {
        return Err(SignatureHeaderError::Length {
            field,
            got: v.len() / 4 * 3,
            want: N,
        });
    }
    let bytes = STANDARD
        .decode(v)
        .map_err(|_| SignatureHeaderError::Base64(field))?;
    let got = bytes.len();
    bytes.try_into().map_err(|_| SignatureHeaderError::Length {
        field,
        got,
        want: N,
    })
}

fn timestamp(v: &str) -> Result<i64, SignatureHeaderError> {
    let canonical = !v.is_empty()
        && v.len() <= MAX_TS_DIGITS
        && v.bytes().all(|b| b.is_ascii_digit())
        && (v == "0" || !v.starts_with('0'));
    if !canonical {
        return Err(SignatureHeaderError::Timestamp);
    }
    v.parse::<i64>()
        .map_err(|_| SignatureHeaderError::Timestamp)
}

impl MachineSignature {
    /// Parses a header value. Parameters are `name=value`, separated by `;` with optional
    /// spaces around them, exactly `v`, `key`, `ts`, `sig` in this order.
    pub fn parse(value: &[u8]) -> Result<Self, SignatureHeaderError> {
        if value.len() > MAX_HEADER_LEN {
            return Err(SignatureHeaderError::TooLong(value.len()));
        }
        let text = std::str::from_utf8(value).map_err(|_| SignatureHeaderError::NotAscii)?;
        if !text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(SignatureHeaderError::NotAscii);
        }
        let mut parts = text.split(';').map(|p| p.trim_matches(' '));
        let mut field = |name: &'static str| -> Result<&str, SignatureHeaderError> {
            let part = parts
                .next()
                .ok_or(SignatureHeaderError::Shape("a parameter is missing"))?;
            match part.split_once('=') {
                Some((n, v)) if n == name => Ok(v),
                _ => Err(SignatureHeaderError::Shape("unexpected parameter")),
            }
        };
        let v = field("v")?;
        if v != VERSION {
            return Err(SignatureHeaderError::Version(v.to_owned()));
        }
        let public_key = decode::<PUBLIC_KEY_LEN>("key", field("key")?)?;
        let timestamp = timestamp(field("ts")?)?;
        let signature = decode::<SIGNATURE_LEN>("sig", field("sig")?)?;
        if parts.next().is_some() {
            return Err(SignatureHeaderError::Shape("parameters after sig"));
        }
        Ok(Self {
            public_key,
            timestamp,
            signature,
        })
    }

    /// The canonical header value: `v=1; key=…; ts=…; sig=…`.
    pub fn to_header_value(&self) -> String {
        format!(
            "v={VERSION}; key={}; ts={}; sig={}",
            STANDARD.encode(self.public_key),
            self.timestamp,
            STANDARD.encode(self.signature)
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> MachineSignature {
        MachineSignature {
            public_key: [7; 32],
            timestamp: 1_765_000_000,
            signature: [9; 64],
        }
    }

    #[test]
    fn round_trips_and_tolerates_spacing() {
        let s = sample();
        let text = s.to_header_value();
        assert!(text.len() <= MAX_HEADER_LEN, "{}", text.len());
        assert_eq!(MachineSignature::parse(text.as_bytes()), Ok(s));
        let tight = text.replace("; ", ";");
        assert_eq!(MachineSignature::parse(tight.as_bytes()), Ok(s));
    }

    #[test]
    fn signed_message_is_domain_timestamp_newline_digest() {
        let m = signed_message(42, &[0xab; 32]);
        let mut want = b"platte-omaha-v1\n42\n".to_vec();
        want.extend_from_slice(&[0xab; 32]);
        assert_eq!(m, want);
    }

    #[test]
    fn rejects_malformed_values() {
        let good = sample().to_header_value();
        let key = STANDARD.encode([7u8; 32]);
        let sig = STANDARD.encode([9u8; 64]);
        let cases: Vec<(String, SignatureHeaderError)> = vec![
            ("x".repeat(300), SignatureHeaderError::TooLong(300)),
            (
                good.replace("v=1", "v=2"),
                SignatureHeaderError::Version("2".into()),
            ),
            (
                format!("key={key}; v=1; ts=1; sig={sig}"),
                SignatureHeaderError::Shape("unexpected parameter"),
            ),
            (
                format!("v=1; key={key}; ts=1"),
                SignatureHeaderError::Shape("a parameter is missing"),
            ),
            (
                format!("{good}; extra=1"),
                SignatureHeaderError::Shape("parameters after sig"),
            ),
            (
                format!("v=1; key=not*base64; ts=1; sig={sig}"),
                SignatureHeaderError::Base64("key"),
            ),
            (
                format!("v=1; key={}; ts=1; sig={sig}", STANDARD.encode([1u8; 31])),
                SignatureHeaderError::Length {
                    field: "key",
                    got: 31,
                    want: 32,
                },
            ),
            (
                format!("v=1; key={key}; ts=1; sig={}", STANDARD.encode([1u8; 65])),
                SignatureHeaderError::Length {
                    field: "sig",
                    got: 65,
                    want: 64,
                },
            ),
            (
                format!("v=1; key={key}; ts=01; sig={sig}"),
                SignatureHeaderError::Timestamp,
            ),
            (
                format!("v=1; key={key}; ts=-5; sig={sig}"),
                SignatureHeaderError::Timestamp,
            ),
            (
                format!("v=1; key={key}; ts=99999999999999999999; sig={sig}"),
                SignatureHeaderError::Timestamp,
            ),
            (
                format!("v=1; key={key}; ts=9999999999999999999; sig={sig}"),
                SignatureHeaderError::Timestamp,
            ),
            (good.replace("v=1", "v=1\t"), SignatureHeaderError::NotAscii),
        ];
        for (value, want) in cases {
            assert_eq!(
                MachineSignature::parse(value.as_bytes()),
                Err(want),
                "{value}"
            );
        }
        // Unpadded base64 is refused too.
        let unpadded = format!("v=1; key={}; ts=1; sig={sig}", key.trim_end_matches('='));
        assert_eq!(
            MachineSignature::parse(unpadded.as_bytes()),
            Err(SignatureHeaderError::Base64("key"))
        );
        assert!(MachineSignature::parse(&[0xff, 0xfe]).is_err());
    }
}
