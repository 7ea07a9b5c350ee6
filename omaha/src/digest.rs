//! Encoding and decoding of the digests carried in responses (base64 or hex, by attribute).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

/// A digest attribute that does not decode to a digest of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{attribute} {value:?} is not {expected}")]
pub struct DigestError {
    /// Which attribute, e.g. "action sha256".
    pub attribute: &'static str,
    /// The value as found.
    pub value: String,
    /// What was expected, e.g. "base64 of 32 bytes".
    pub expected: String,
}

/// Encodes bytes as standard padded base64.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64 into exactly `N` bytes.
pub(crate) fn decode_base64<const N: usize>(
    attribute: &'static str,
    value: &str,
) -> Result<[u8; N], DigestError> {
    let err = || DigestError {
        attribute,
        value: value.to_owned(),
        expected: format!("base64 of {N} bytes"),
    };
    // A correct value is at most 4 * ceil(N / 3) characters: refuse longer ones before decoding.
    if value.len() > N.div_ceil(3) * 4 {
        return Err(err());
    }
    let bytes = STANDARD.decode(value).map_err(|_| err())?;
    bytes.try_into().map_err(|_| err())
}

/// Decodes hex (either case) into exactly `N` bytes.
pub(crate) fn decode_hex<const N: usize>(
    attribute: &'static str,
    value: &str,
) -> Result<[u8; N], DigestError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(value, &mut out).map_err(|_| DigestError {
        attribute,
        value: value.to_owned(),
        expected: format!("hex of {N} bytes"),
    })?;
    Ok(out)
}

/// Decodes either hex (either case, `2 * N` characters) or standard padded base64 into exactly
/// `N` bytes. The two forms cannot be confused: hex of `N` bytes is longer than base64 of `N`
/// bytes.
pub fn decode_hex_or_base64<const N: usize>(
    attribute: &'static str,
    value: &str,
) -> Result<[u8; N], DigestError> {
    let parsed = if value.len() == 2 * N {
        decode_hex(attribute, value)
    } else {
        decode_base64(attribute, value)
    };
    parsed.map_err(|_| DigestError {
        attribute,
        value: value.to_owned(),
        expected: format!("hex or base64 of {N} bytes"),
    })
}

#[cfg(test)]
mod tests {
    use super::{decode_base64, decode_hex, decode_hex_or_base64, encode_base64};

    #[test]
    fn hex_or_base64_accepts_both_forms_of_the_same_digest() {
        let d = [0xA5u8; 32];
        assert_eq!(decode_hex_or_base64::<32>("x", &hex::encode(d)), Ok(d));
        assert_eq!(
            decode_hex_or_base64::<32>("x", &hex::encode_upper(d)),
            Ok(d)
        );
        assert_eq!(decode_hex_or_base64::<32>("x", &encode_base64(&d)), Ok(d));
        let e = decode_hex_or_base64::<32>("x", "sha256_1_5_0").unwrap_err();
        assert_eq!(e.expected, "hex or base64 of 32 bytes");
        // Base64 of 20 bytes, hex of 31: wrong lengths either way.
        assert!(decode_hex_or_base64::<32>("x", &encode_base64(&[1; 20])).is_err());
        assert!(decode_hex_or_base64::<32>("x", &hex::encode([1; 31])).is_err());
    }

    #[test]
    fn base64_round_trip_and_length_check() {
        let d = [7u8; 32];
        let s = encode_base64(&d);
        assert_eq!(decode_base64::<32>("x", &s), Ok(d));
        assert!(decode_base64::<20>("x", &s).is_err());
        assert!(decode_base64::<32>("x", "not base64!").is_err());
        // The hex form of a SHA-256 must not be mistaken for the base64 form.
        assert!(decode_base64::<32>("x", &hex::encode(d)).is_err());
    }

    #[test]
    fn hex_decoding() {
        let h = "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043";
        let d = decode_hex::<32>("x", h);
        assert_eq!(d.map(hex::encode), Ok(h.to_owned()));
        assert!(decode_hex::<32>("x", &h[..62]).is_err());
        assert!(decode_hex::<20>("x", h).is_err());
    }
}
