//! The payload prefix (header, manifest, signature block) as the server reads it on publish and
//! the agent before the first data byte: `payloads::prefix_len_needed`, `read_prefix`,
//! `Prefix::decode` and `Prefix::verify` never panic, agree with each other, and a decoded
//! prefix re-encodes to the same bytes. A decoded manifest, signed again by a key the target
//! holds, verifies (the signature check itself cannot be reached with forged bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use payloads::format::{HEADER_LEN, prefix_len_needed};
use payloads::{Prefix, SigningKey, TrustStore, read_prefix};

fuzz_target!(|data: &[u8]| {
    let needed = prefix_len_needed(data);
    let mut reader = data;
    let read = read_prefix(&mut reader);
    let decoded = Prefix::decode(data);

    if let Ok(prefix) = &decoded {
        // A whole valid prefix: the incremental reader needs exactly these bytes and reads them.
        assert_eq!(
            needed.as_ref().ok(),
            Some(&data.len()),
            "prefix_len_needed disagrees"
        );
        let (read_prefix, read_bytes) = read.expect("read_prefix refused a prefix decode accepts");
        assert_eq!(read_bytes, data);
        assert_eq!(read_prefix.encode(), data);
        assert_eq!(
            prefix.encode(),
            data,
            "a decoded prefix re-encodes differently"
        );
        assert_eq!(prefix.len(), data.len() as u64);
        let manifest_bytes = &prefix.signed_bytes()[HEADER_LEN..];
        let encoded = prefix
            .manifest
            .encode()
            .expect("a decoded manifest does not encode");
        assert_eq!(
            encoded, manifest_bytes,
            "manifest encoding is not canonical"
        );

        // Signatures in the input are by keys nobody trusts here: never accepted.
        let key = SigningKey::from_bytes(&[7; 32]);
        let trust = TrustStore::from_keys([key.verifying_key()]).expect("one key");
        let now = prefix.manifest.created;
        if prefix
            .signatures
            .iter()
            .all(|s| s.public_key != key.verifying_key().to_bytes())
        {
            assert!(prefix.verify(&trust, now).is_err());
        }
        let resigned = Prefix::new_signed(prefix.manifest.clone(), &[key]).expect("re-sign");
        let info = resigned
            .verify(&trust, now)
            .expect("our own signature verifies");
        assert_eq!(info.manifest, prefix.manifest);
        let again = Prefix::decode(&resigned.encode()).expect("our own prefix decodes");
        assert_eq!(again.manifest, prefix.manifest);
    } else if let Ok((_, bytes)) = &read {
        // read_prefix stops at the prefix's end; decode refuses only what follows it.
        assert!(
            bytes.len() < data.len(),
            "read_prefix accepted what decode refuses"
        );
        Prefix::decode(bytes).expect("read_prefix returned bytes decode refuses");
    }
});
