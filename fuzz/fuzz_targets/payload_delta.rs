//! The manifest of a delta payload (format version 2: source section, SOURCE_COPY operations) as
//! `payloads::Manifest::decode_version` reads it: never panics; what decodes re-encodes to the
//! same bytes; every SOURCE_COPY extent lies inside the source and is at most 4 MiB; a manifest
//! with SOURCE_COPY is never accepted as a full (version 1) manifest; signed again, it makes a
//! version-2 prefix that decodes back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payloads::format::{DELTA_FORMAT_VERSION, MAX_COPY_OPERATION_LEN};
use payloads::{Manifest, OpKind, Prefix, SigningKey};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::decode_version(data, DELTA_FORMAT_VERSION) else {
        return;
    };
    assert_eq!(
        m.encode().expect("a decoded manifest encodes"),
        data,
        "delta manifest encoding is not canonical"
    );
    let source = m
        .source
        .as_ref()
        .expect("a version-2 manifest names its source");
    let mut copies = false;
    for op in &m.operations {
        if op.kind == OpKind::SourceCopy {
            copies = true;
            let end = op
                .src_offset
                .checked_add(op.dst_len)
                .expect("extent overflows");
            assert!(end <= source.size, "extent outside the source accepted");
            assert!(op.dst_len <= MAX_COPY_OPERATION_LEN);
            assert_eq!(op.data_len, 0);
        }
    }
    if copies {
        assert!(
            Manifest::decode(data).is_err(),
            "a version-1 decoder accepted SOURCE_COPY"
        );
    }
    let key = SigningKey::from_bytes(&[7; 32]);
    let prefix = Prefix::new_signed(m.clone(), &[key]).expect("re-sign");
    assert_eq!(prefix.header.format_version, DELTA_FORMAT_VERSION);
    let again = Prefix::decode(&prefix.encode()).expect("our own prefix decodes");
    assert_eq!(again.manifest, m);
});
