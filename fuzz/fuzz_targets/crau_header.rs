//! The header of an update_engine (CrAU) payload, as the server reads it on publish:
//! `payloads::crau::parse_header` never panics, reads at most its bound, and what it accepts is
//! consistent — the metadata fits in the file, and the header's fields are the bytes given.
//! The file size comes from the input's first eight bytes (so sizes far from the slice's own
//! length are tried too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use payloads::crau::{CrauHeader, MAX_HEADER_LEN, MAX_MANIFEST_LEN, parse_header};

fuzz_target!(|data: &[u8]| {
    let (size, bytes) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_le_bytes(*size), rest),
        None => (data.len() as u64, data),
    };
    let parsed = parse_header(bytes, size);
    // Only the header's bytes matter: what follows it never changes the answer.
    let cut = &bytes[..bytes.len().min(MAX_HEADER_LEN)];
    assert_eq!(parse_header(cut, size), parsed, "read past the header");
    if let Ok(h) = parsed {
        let CrauHeader {
            version,
            manifest_len,
            metadata_signature_len,
        } = h;
        assert!(version == 1 || version == 2);
        assert!(manifest_len > 0 && manifest_len <= MAX_MANIFEST_LEN);
        assert!(h.metadata_len() + u64::from(metadata_signature_len) <= size);
        assert_eq!(&bytes[..4], b"CrAU");
        assert_eq!(bytes[4..12], version.to_be_bytes());
        assert_eq!(bytes[12..20], manifest_len.to_be_bytes());
        if version == 1 {
            assert_eq!(metadata_signature_len, 0);
        } else {
            assert_eq!(bytes[20..24], metadata_signature_len.to_be_bytes());
        }
    }
});
