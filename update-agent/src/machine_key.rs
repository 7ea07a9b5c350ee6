//! The machine credential: a per-host ed25519 key that signs every Omaha request in the
//! `Platte-Machine-Signature` header (format in [`omaha::credential`] and `docs/development/protocol.md`),
//! so the server can tell this host's requests from anyone else claiming its machine id.
//!
//! The key is created at the first run in the state directory as `machine-key` (PKCS#8 PEM,
//! mode 0600) and read on every later start. A key file that cannot be read is an error, never
//! silently replaced: a new key would no longer match the one the server bound to this machine
//! id.
//!
//! Creating never replaces a key file: the new key is written and fsynced to a temporary file
//! of its own, then hard-linked to `machine-key`, which fails if the file exists. So when two
//! processes create the key at the same time (at first boot, `update-agent machine-key` for
//! enrollment and the daemon), one wins and the other reads and uses the winner's key: both
//! end up with the key in the file, never with two different keys. A crash between writing and
//! removing the temporary file can leave a hidden `.machine-key.*.tmp` behind (mode 0600).

use std::fs::{self, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{Signer as _, SigningKey};
use omaha::credential::{MachineSignature, signed_message};
use rand_core::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::atomic_file;

/// File name of the key in the state directory.
pub const KEY_FILE: &str = "machine-key";
/// Largest key file read (a PKCS#8 PEM ed25519 key is 119 bytes).
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Why the machine key cannot be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum MachineKeyError {
    /// The key file cannot be read.
    #[error("cannot read the machine key {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds no usable key.
    #[error(
        "{} is not a PKCS#8 ed25519 private key ({why}); move it away to create a new key, \
         and have the server forget the old one (update-server instance forget-credential)",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A new key cannot be written.
    #[error("cannot write a new machine key: {0}")]
    Write(#[from] atomic_file::WriteError),
}

/// This host's machine key.
#[derive(Clone)]
pub struct MachineKey {
    key: SigningKey,
}

impl std::fmt::Debug for MachineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineKey")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl MachineKey {
    /// A key from its 32-byte secret seed (for tests).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Reads `state_dir/machine-key`, creating it (and the directory) with a new random key if
    /// it does not exist.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, MachineKeyError> {
        let path = state_dir.join(KEY_FILE);
        match Self::load(&path) {
            Err(MachineKeyError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Self::create(state_dir, &path)
            }
            other => other,
        }
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, MachineKeyError> {
        let read_err = |source| MachineKeyError::Read {
            path: path.to_owned(),
            source,
        };
        let invalid = |why: String| MachineKeyError::Invalid {
            path: path.to_owned(),
            why,
        };
        let file = fs::File::open(path).map_err(read_err)?;
        let mode = file.metadata().map_err(read_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                "the machine key is readable by others than its owner; chmod 0600 it");
        }
        let mut text = String::new();
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(invalid(format!("larger than {MAX_KEY_FILE_BYTES} bytes")));
        }
        let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { key })
    }

    /// Creates `state_dir` and a new key at `path` in it, or returns the key another process
    /// created there first.
    fn create(state_dir: &Path, path: &Path) -> Result<Self, MachineKeyError> {
        fs::create_dir_all(state_dir).map_err(|source| MachineKeyError::Read {
            path: state_dir.to_owned(),
            source,
        })?;
        let key = SigningKey::generate(&mut rand_core::OsRng);
        Self::publish(state_dir, path, key)
    }

    /// Publishes `key` at `path` (in `dir`) unless a key file is already there, and returns the
    /// key now in the file: `key`, or the existing file's key (which is left unchanged).
    fn publish(dir: &Path, path: &Path, key: SigningKey) -> Result<Self, MachineKeyError> {
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| MachineKeyError::Invalid {
                path: path.to_owned(),
                why: e.to_string(),
            })?;
        // A name of its own: a process creating the key at the same time uses another.
        let tmp = dir.join(format!(
            ".{KEY_FILE}.{}.{:016x}.tmp",
            std::process::id(),
            rand_core::OsRng.next_u64()
        ));
        let write_err = |step, path: &Path| {
            let path = path.to_owned();
            move |source| atomic_file::WriteError { step, path, source }
        };
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(write_err("creating", &tmp))?;
            f.write_all(pem.as_bytes())
                .map_err(write_err("writing", &tmp))?;
            f.sync_all().map_err(write_err("syncing", &tmp))
        })();
        // Fails with `AlreadyExists` if another process published its key first.
        let linked = written.and_then(|()| {
            fs::hard_link(&tmp, path).map_err(write_err("linking into place", path))
        });
        if let Err(e) = fs::remove_file(&tmp)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove the temporary machine key file");
        }
        match linked {
            Ok(()) => {
                atomic_file::sync_dir(dir)?;
                let me = Self { key };
                tracing::info!(path = %path.display(), public_key = %me.public_key_base64(), "created the machine key");
                Ok(me)
            }
            Err(e) if e.source.kind() == std::io::ErrorKind::AlreadyExists => {
                let existing = Self::load(path)?;
                tracing::info!(path = %path.display(), public_key = %existing.public_key_base64(),
                    "another process created the machine key first; using it");
                Ok(existing)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The public key, standard base64 (what `update-server instance enroll` takes).
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    /// The signature of a request with `body` sent at `timestamp` (Unix seconds).
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> MachineSignature {
        let digest: [u8; 32] = Sha256::digest(body).into();
        MachineSignature {
            public_key: self.key.verifying_key().to_bytes(),
            timestamp,
            signature: self
                .key
                .sign(&signed_message(timestamp, &digest))
                .to_bytes(),
        }
    }

    /// The `Platte-Machine-Signature` header value for `body` sent at `timestamp`.
    pub fn header_value(&self, timestamp: i64, body: &[u8]) -> String {
        self.sign(timestamp, body).to_header_value()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ed25519_dalek::{Signature, VerifyingKey};

    use super::*;

    #[test]
    fn created_once_with_mode_0600_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("var/lib/platte");
        let k = MachineKey::load_or_create(&dir).unwrap();
        let path = dir.join(KEY_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(files(&dir), [KEY_FILE]);
        let again = MachineKey::load_or_create(&dir).unwrap();
        assert_eq!(again.public_key_base64(), k.public_key_base64());
    }

    /// The files in `dir`, sorted.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_key_created_by_another_process_first_is_used_and_left_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(KEY_FILE);
        // The other process won the race: its key is in the file when this one publishes.
        let theirs = MachineKey::load_or_create(d.path()).unwrap();
        let before = fs::read(&path).unwrap();
        let ours = SigningKey::from_bytes(&[7; 32]);
        let got = MachineKey::publish(d.path(), &path, ours.clone()).unwrap();
        assert_eq!(got.public_key_base64(), theirs.public_key_base64());
        assert_ne!(
            got.public_key_base64(),
            MachineKey { key: ours }.public_key_base64()
        );
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(files(d.path()), [KEY_FILE]);
    }

    #[test]
    fn concurrent_creators_all_get_the_key_in_the_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| MachineKey::load_or_create(&dir).unwrap()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().public_key_base64())
                .collect()
        });
        let in_file = MachineKey::load(&dir.join(KEY_FILE)).unwrap();
        for k in &keys {
            assert_eq!(*k, in_file.public_key_base64());
        }
        assert_eq!(files(&dir), [KEY_FILE]);
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_a_new_key() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(KEY_FILE), "not a key").unwrap();
        let e = MachineKey::load_or_create(d.path()).unwrap_err();
        assert!(matches!(e, MachineKeyError::Invalid { .. }), "{e}");
        assert_eq!(
            fs::read_to_string(d.path().join(KEY_FILE)).unwrap(),
            "not a key"
        );
    }

    #[test]
    fn signs_the_domain_timestamp_and_body_digest() {
        let k = MachineKey::from_seed([5; 32]);
        let s = k.sign(1_765_000_000, b"<request/>");
        let digest: [u8; 32] = Sha256::digest(b"<request/>").into();
        let vk = VerifyingKey::from_bytes(&s.public_key).unwrap();
        vk.verify_strict(
            &signed_message(1_765_000_000, &digest),
            &Signature::from_bytes(&s.signature),
        )
        .unwrap();
        let header = k.header_value(1_765_000_000, b"<request/>");
        assert_eq!(MachineSignature::parse(header.as_bytes()).unwrap(), s);
        assert!(header.starts_with(&format!(
            "v=1; key={}; ts=1765000000; sig=",
            k.public_key_base64()
        )));
    }
}
