//! Release material for tests: deterministic incompressible bytes (OS and extension image
//! stand-ins), signing keys whose public halves a server or an agent trusts, and payloads signed
//! with them, built in-process with the `payloads` crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// `len` bytes of deterministic, incompressible data from `seed` (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A [`noise`] seed made from `text` (FNV-1a), for data that a name and version pick.
pub fn text_seed(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |seed, b| {
        (seed ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Writes `key`'s public half (SPKI PEM) to `path`, creating its directory.
pub fn trust(key: &payloads::SigningKey, path: &Path) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, payloads::keys::public_key_pem(&key.verifying_key())).unwrap();
}

/// A new signing key whose public half is trusted from `dir/keys/{name}.pub`.
pub fn trusted_key(dir: &Path, name: &str) -> payloads::SigningKey {
    let key = payloads::keys::generate_signing_key();
    trust(&key, &dir.join("keys").join(format!("{name}.pub")));
    key
}

/// A new release signing key, trusted by a server (`DIR/server-keys`) and by an agent
/// (`DIR/agent-keys`); returns the key and the two directories.
pub fn release_key(dir: &Path) -> (payloads::SigningKey, PathBuf, PathBuf) {
    let key = payloads::keys::generate_signing_key();
    let server_keys = dir.join("server-keys");
    let agent_keys = dir.join("agent-keys");
    for d in [&server_keys, &agent_keys] {
        trust(&key, &d.join("release.pub"));
    }
    (key, server_keys, agent_keys)
}

/// Build options for `version` of `app` on amd64, built ten seconds ago (so not "from the
/// future" for a server checking the build time).
pub fn options(app: &str, version: &str) -> payloads::BuildOptions {
    payloads::BuildOptions::new(app, version, "amd64", payloads::unix_now() - 10)
}

/// A payload of `image` built with `opts`, signed by `key`.
pub fn signed_payload_with(
    key: &payloads::SigningKey,
    image: &[u8],
    opts: &payloads::BuildOptions,
) -> Vec<u8> {
    payloads::build_to_vec(image, std::slice::from_ref(key), opts)
        .unwrap()
        .0
}

/// A payload of `version` for `app` (amd64) over `image`, signed by `key`.
pub fn signed_payload(
    key: &payloads::SigningKey,
    app: &str,
    version: &str,
    image: &[u8],
) -> Vec<u8> {
    signed_payload_with(key, image, &options(app, version))
}
