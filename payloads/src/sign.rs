//! Adding a signature to an existing payload file (key rotation, several release keys). The
//! signature covers header and manifest only, so the data is copied unchanged; the file is
//! replaced atomically.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::format::{FormatError, ReadPrefixError, read_prefix};
use crate::keys::KeyId;

/// Why a signature could not be added.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The payload's prefix is malformed or truncated, or the key already signed it, or the
    /// signature block is full.
    #[error("{path}: {error}")]
    Payload {
        /// The payload file.
        path: PathBuf,
        /// What is wrong.
        error: ReadPrefixError,
    },
    /// Reading or writing failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

/// Appends a signature by `key` to the payload at `path` and returns the key id. The existing
/// signatures are kept; they are not verified (signing needs no trust store).
pub fn add_signature_file(path: &Path, key: &SigningKey) -> Result<KeyId, SignError> {
    let io_err = |action: &'static str| {
        move |error| SignError::Io {
            action,
            path: path.to_owned(),
            error,
        }
    };
    let payload_err = |error: ReadPrefixError| SignError::Payload {
        path: path.to_owned(),
        error,
    };
    let mut file = File::open(path).map_err(io_err("opening"))?;
    let permissions = file.metadata().map_err(io_err("reading"))?.permissions();
    let (mut prefix, _raw) = read_prefix(&mut file).map_err(payload_err)?;
    prefix
        .add_signature(key)
        .map_err(|e: FormatError| payload_err(e.into()))?;

    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(io_err("creating a temporary file beside"))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        w.write_all(&prefix.encode()).map_err(io_err("writing"))?;
        // `file` is positioned right after the old prefix.
        io::copy(&mut file, &mut w).map_err(io_err("copying data of"))?;
        w.flush().map_err(io_err("writing"))?;
    }
    fs::set_permissions(tmp.path(), permissions).map_err(io_err("setting permissions for"))?;
    tmp.as_file().sync_all().map_err(io_err("syncing"))?;
    tmp.persist(path).map_err(|e| SignError::Io {
        action: "replacing",
        path: path.to_owned(),
        error: e.error,
    })?;
    Ok(KeyId::of(&key.verifying_key()))
}
