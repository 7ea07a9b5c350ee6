//! Ed25519 keys: key ids, key generation and PEM files (PKCS#8 private keys, SPKI public keys),
//! and the trust store a verifier checks signatures against. A missing or empty trust store is an
//! error: there is no way to "skip verification".

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::EncodePublicKey as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Largest key file read (PEM keys are a few hundred bytes).
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;
/// Most public keys a trust store directory may hold.
const MAX_TRUSTED_KEYS: usize = 256;

/// Short key identifier: the first 8 bytes of SHA-256 over the 32-byte raw Ed25519 public key,
/// shown as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// Key id of a raw 32-byte Ed25519 public key.
    pub fn of_bytes(public_key: &[u8; 32]) -> Self {
        let digest = Sha256::digest(public_key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }

    /// Key id of a verifying key.
    pub fn of(key: &VerifyingKey) -> Self {
        Self::of_bytes(key.as_bytes())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// Why a key or trust store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// `keygen` would overwrite an existing file.
    #[error("{path} already exists; refusing to overwrite a key (choose another --out prefix)")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file is not a valid key of the expected kind.
    #[error("{path} is not a valid {expected}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it should contain.
        expected: &'static str,
        /// Why it does not.
        reason: String,
    },
    /// A private key file is readable by group or others.
    #[error(
        "private key {path} has mode {mode:04o}; it must not be accessible by group or others (chmod 600 it)"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The trust store holds no public key: verification fails closed.
    #[error(
        "trust store {path} holds no public key (*.pub); refusing to verify against an empty trust store"
    )]
    EmptyTrustStore {
        /// The directory or file given.
        path: PathBuf,
    },
    /// The trust store directory holds too many keys.
    #[error("trust store {path} holds more than {max} public keys")]
    TooManyKeys {
        /// The directory.
        path: PathBuf,
        /// Maximum.
        max: usize,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |error| KeyError::Io {
        action,
        path: path.to_owned(),
        error,
    }
}

/// Generates a new signing key from the operating system's random source.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// The private and public key files written by [`write_keypair`].
#[derive(Debug, Clone)]
pub struct KeyPairFiles {
    /// `PREFIX.key`: PKCS#8 PEM, mode 0600.
    pub private: PathBuf,
    /// `PREFIX.pub`: SPKI PEM, mode 0644.
    pub public: PathBuf,
    /// Key id of the new key.
    pub key_id: KeyId,
}

/// Appends `suffix` to the final component of `prefix` (`out/release` → `out/release.key`).
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates `path` exclusively with `mode` and writes `contents`, syncing it.
fn write_new(path: &Path, mode: u32, contents: &[u8]) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io_err("creating", path)(e)
            }
        })?;
    // The umask may have cleared bits but never added any; make the mode exact.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("setting permissions of", path))?;
    file.write_all(contents).map_err(io_err("writing", path))?;
    file.sync_all().map_err(io_err("syncing", path))
}

/// Generates a key pair and writes `PREFIX.key` (PKCS#8 PEM, created exclusively with mode 0600)
/// and `PREFIX.pub` (SPKI PEM). Refuses to overwrite either file.
pub fn write_keypair(prefix: &Path) -> Result<KeyPairFiles, KeyError> {
    let private = with_suffix(prefix, ".key");
    let public = with_suffix(prefix, ".pub");
    for path in [&private, &public] {
        if path.symlink_metadata().is_ok() {
            return Err(KeyError::Exists { path: path.clone() });
        }
    }
    let key = generate_signing_key();
    // PKCS#8 v1 (private key only): what OpenSSL writes and reads; dalek's default v2 encoding
    // (with the public key) is not readable by OpenSSL 3.
    let v1 = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let private_pem = v1
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Parse {
            path: private.clone(),
            expected: "PKCS#8 private key",
            reason: e.to_string(),
        })?;
    let public_pem = public_key_pem(&key.verifying_key());
    write_new(&private, 0o600, private_pem.as_bytes())?;
    if let Err(e) = write_new(&public, 0o644, public_pem.as_bytes()) {
        // Do not leave half a key pair behind; the private key was created by us just now.
        let _ = fs::remove_file(&private);
        return Err(e);
    }
    Ok(KeyPairFiles {
        private,
        public,
        key_id: KeyId::of(&key.verifying_key()),
    })
}

/// SPKI PEM text of a public key.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    // Encoding a 32-byte key into SPKI cannot fail; fall back to an empty string defensively.
    key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    let too_large = || KeyError::Parse {
        path: path.to_owned(),
        expected: "PEM key file",
        reason: format!("more than {MAX_KEY_FILE_LEN} bytes is too large for a key"),
    };
    let meta = fs::metadata(path).map_err(io_err("reading", path))?;
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(too_large());
    }
    // The size may lie (a device, a FIFO, a file still growing): bound the read itself too.
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE_LEN + 1).read_to_string(&mut text))
        .map_err(io_err("reading", path))?;
    if text.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(too_large());
    }
    Ok(text)
}

/// Loads a PKCS#8 PEM private key. Refuses a file that group or others may access.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let meta = fs::metadata(path).map_err(io_err("reading", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let pem = read_small(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Parse {
        path: path.to_owned(),
        expected: "PKCS#8 PEM Ed25519 private key",
        reason: e.to_string(),
    })
}

/// Loads an SPKI PEM Ed25519 public key, refusing weak (small-order) keys.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read_small(path)?;
    let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Parse {
        path: path.to_owned(),
        expected: "SPKI PEM Ed25519 public key",
        reason: e.to_string(),
    })?;
    if key.is_weak() {
        return Err(KeyError::Parse {
            path: path.to_owned(),
            expected: "SPKI PEM Ed25519 public key",
            reason: "weak (small-order) key".to_owned(),
        });
    }
    Ok(key)
}

/// The public keys a verifier trusts. Never empty.
#[derive(Clone, Debug)]
pub struct TrustStore {
    keys: BTreeMap<[u8; 32], VerifyingKey>,
}

impl TrustStore {
    /// Loads a trust store from a directory (every `*.pub` file in it, not recursively) or from a
    /// single public key file. Any unreadable or invalid `*.pub` file, a missing path, or a
    /// directory without keys is an error.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = fs::metadata(path).map_err(io_err("opening trust store", path))?;
        if !meta.is_dir() {
            return Self::from_keys([load_public_key(path)?]).map_err(|_| {
                KeyError::EmptyTrustStore {
                    path: path.to_owned(),
                }
            });
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(path).map_err(io_err("listing trust store", path))? {
            let entry = entry.map_err(io_err("listing trust store", path))?;
            let file = entry.path();
            if file.extension().is_some_and(|e| e == "pub") && file.is_file() {
                files.push(file);
                if files.len() > MAX_TRUSTED_KEYS {
                    return Err(KeyError::TooManyKeys {
                        path: path.to_owned(),
                        max: MAX_TRUSTED_KEYS,
                    });
                }
            }
        }
        files.sort();
        let keys = files
            .iter()
            .map(|f| load_public_key(f))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_keys(keys).map_err(|_| KeyError::EmptyTrustStore {
            path: path.to_owned(),
        })
    }

    /// A trust store of the given keys; fails with [`KeyError::EmptyTrustStore`] when there are none.
    pub fn from_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> Result<Self, KeyError> {
        let keys: BTreeMap<_, _> = keys.into_iter().map(|k| (k.to_bytes(), k)).collect();
        if keys.is_empty() {
            return Err(KeyError::EmptyTrustStore {
                path: PathBuf::from("(in memory)"),
            });
        }
        Ok(Self { keys })
    }

    /// The trusted key with these raw public key bytes, if any.
    pub fn get(&self, public_key: &[u8; 32]) -> Option<&VerifyingKey> {
        self.keys.get(public_key)
    }

    /// Key ids of the trusted keys.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.keys().map(KeyId::of_bytes).collect()
    }

    /// Number of trusted keys (at least one).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a trust store is never empty. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_private_0600_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("release");
        let files = write_keypair(&prefix).unwrap();
        assert_eq!(files.private, dir.path().join("release.key"));
        let mode = fs::metadata(&files.private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sk = load_signing_key(&files.private).unwrap();
        let pk = load_public_key(&files.public).unwrap();
        assert_eq!(sk.verifying_key(), pk);
        assert_eq!(KeyId::of(&pk), files.key_id);
        assert_eq!(files.key_id.to_string().len(), 16);
        assert!(matches!(
            write_keypair(&prefix),
            Err(KeyError::Exists { .. })
        ));
        // PKCS#8 v1 (48 bytes of DER for Ed25519), the form OpenSSL 3 reads.
        let pem = fs::read_to_string(&files.private).unwrap();
        let (label, der) = ed25519_dalek::pkcs8::SecretDocument::from_pem(&pem).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        assert_eq!(der.as_bytes().len(), 48);
    }

    #[test]
    fn group_readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_keypair(&dir.path().join("k")).unwrap();
        fs::set_permissions(&files.private, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load_signing_key(&files.private),
            Err(KeyError::InsecurePermissions { mode: 0o640, .. })
        ));
    }

    #[test]
    fn key_files_are_read_with_a_bound() {
        // A character device reports length 0 and never ends: reading must stop at the bound
        // (so must a file that grows after its size was checked).
        let endless = Path::new("/dev/zero");
        assert!(matches!(
            load_public_key(endless),
            Err(KeyError::Parse { .. })
        ));
        assert!(matches!(
            TrustStore::load(endless),
            Err(KeyError::Parse { .. })
        ));
    }

    #[test]
    fn trust_store_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            TrustStore::load(dir.path()),
            Err(KeyError::EmptyTrustStore { .. })
        ));
        assert!(matches!(
            TrustStore::load(&dir.path().join("missing")),
            Err(KeyError::Io { .. })
        ));
        fs::write(dir.path().join("junk.pub"), "not a key").unwrap();
        assert!(matches!(
            TrustStore::load(dir.path()),
            Err(KeyError::Parse { .. })
        ));
        fs::remove_file(dir.path().join("junk.pub")).unwrap();
        let a = write_keypair(&dir.path().join("a")).unwrap();
        write_keypair(&dir.path().join("b")).unwrap();
        fs::write(dir.path().join("README"), "ignored").unwrap();
        let store = TrustStore::load(dir.path()).unwrap();
        assert_eq!(store.len(), 2);
        let single = TrustStore::load(&a.public).unwrap();
        assert_eq!(single.key_ids(), vec![a.key_id]);
    }
}
