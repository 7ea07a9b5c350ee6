//! Content-addressed package files under `DATA_DIR/packages/<sha256[0..2]>/<sha256>`, written
//! atomically (temporary file, fsync, rename, fsync of the directory).

use std::io;
use std::path::{Path, PathBuf};

use sha1::Digest as _;
use tokio::io::AsyncWriteExt;

/// Where package files live.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// One partial download per content at a time in this process.
    partials: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    >,
}

/// A file received into the temporary area with its digests.
#[derive(Debug)]
pub struct Received {
    /// Temporary path (removed on drop of the [`tempfile::TempPath`]).
    pub path: tempfile::TempPath,
    /// Length.
    pub size: u64,
    /// SHA-1.
    pub sha1: [u8; 20],
    /// SHA-256.
    pub sha256: [u8; 32],
    /// For a partial download: this process's hold on its content, released with the file
    /// (committed or removed), so no other download of the same content touches it meanwhile.
    pub hold: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Filesystem failure.
    #[error("package store I/O error during {op} at {path}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The upload exceeded the limit.
    #[error("upload exceeds the {limit}-byte package limit")]
    TooLarge {
        /// Limit.
        limit: u64,
    },
    /// The client stream failed.
    #[error("upload interrupted: {0}")]
    Upload(String),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError {
    let path = path.to_owned();
    move |source| BlobError::Io { op, path, source }
}

/// True for a 64-char lowercase hex SHA-256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    /// A store rooted at `root` (created if missing).
    pub fn open(root: PathBuf) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root.join("tmp")).map_err(io_err("create", &root))?;
        Ok(Self {
            root,
            partials: Default::default(),
        })
    }

    /// Path of a stored file (callers validate the hex first).
    pub fn path_of(&self, sha256_hex: &str) -> PathBuf {
        let prefix = sha256_hex.get(..2).unwrap_or("xx");
        self.root.join(prefix).join(sha256_hex)
    }

    /// Streams chunks into a temporary file, hashing as it goes, refusing more than `limit`.
    pub async fn receive<S, E>(&self, mut chunks: S, limit: u64) -> Result<Received, BlobError>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let tmp_dir = self.root.join("tmp");
        let tmp =
            tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err("create temp", &tmp_dir))?;
        let (std_file, path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut sha1 = sha1::Sha1::new();
        let mut sha256 = sha2::Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| BlobError::Upload(e.to_string()))?;
            size = size.saturating_add(chunk.len() as u64);
            if size > limit {
                return Err(BlobError::TooLarge { limit });
            }
            sha1.update(&chunk);
            sha256.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io_err("write", &path))?;
        }
        file.flush().await.map_err(io_err("flush", &path))?;
        file.sync_all().await.map_err(io_err("fsync", &path))?;
        Ok(Received {
            path,
            size,
            sha1: sha1.finalize().into(),
            sha256: sha256.finalize().into(),
            hold: None,
        })
    }

    /// The partial download of the file expected to have content `sha256_hex` (callers
    /// validate the hex first), kept across failed attempts so the next one resumes it, and
    /// its length so far.
    pub fn partial(&self, sha256_hex: &str) -> (PathBuf, u64) {
        let path = self.root.join("tmp").join(format!("partial-{sha256_hex}"));
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        (path, len)
    }

    /// Waits until no other download of content `sha256_hex` in this process holds its partial
    /// file; the hold goes into the [`Received`] of the download ([`BlobStore::finish_partial`]).
    pub async fn hold_partial(&self, sha256_hex: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut partials = self
                .partials
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::sync::Arc::clone(partials.entry(sha256_hex.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    /// Appends `chunks` to the partial file `path` (or starts it over when `append` is false),
    /// refusing more than `limit` bytes in all. The file is flushed and synced whatever
    /// happens, so what arrived before a failure is kept for the next attempt.
    pub async fn receive_partial<S, E>(
        &self,
        path: &Path,
        append: bool,
        mut chunks: S,
        limit: u64,
    ) -> Result<(), BlobError>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(path)
            .await
            .map_err(io_err("open", path))?;
        let mut size = file.metadata().await.map_err(io_err("stat", path))?.len();
        let mut result = Ok(());
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    result = Err(BlobError::Upload(e.to_string()));
                    break;
                }
            };
            size = size.saturating_add(chunk.len() as u64);
            if size > limit {
                result = Err(BlobError::TooLarge { limit });
                break;
            }
            if let Err(e) = file.write_all(&chunk).await {
                result = Err(io_err("write", path)(e));
                break;
            }
        }
        file.flush().await.map_err(io_err("flush", path))?;
        file.sync_all().await.map_err(io_err("fsync", path))?;
        result
    }

    /// The whole partial file at `path`, hashed, as a received file (removed when dropped
    /// uncommitted, so a file that turns out wrong is downloaded afresh next time).
    pub async fn finish_partial(
        &self,
        path: PathBuf,
        hold: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Received, BlobError> {
        let temp = tempfile::TempPath::try_from_path(&path).map_err(io_err("open", &path))?;
        let path: PathBuf = temp.to_path_buf();
        let hashed = tokio::task::spawn_blocking(move || -> io::Result<_> {
            use std::io::Read as _;
            let mut f = std::fs::File::open(&path)?;
            let mut sha1 = sha1::Sha1::new();
            let mut sha256 = sha2::Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                sha1.update(&buf[..n]);
                sha256.update(&buf[..n]);
                size += n as u64;
            }
            Ok((size, sha1.finalize().into(), sha256.finalize().into()))
        })
        .await
        .map_err(|e| BlobError::Upload(format!("hashing task: {e}")))?
        .map_err(io_err("read", &temp))?;
        let (size, sha1, sha256) = hashed;
        Ok(Received {
            path: temp,
            size,
            sha1,
            sha256,
            hold: Some(hold),
        })
    }

    /// Moves a received file to its content address (durably). Idempotent.
    pub fn commit(&self, r: Received) -> Result<PathBuf, BlobError> {
        let hex = hex::encode(r.sha256);
        let dest = self.path_of(&hex);
        let dir = dest
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| self.root.clone());
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        r.path.persist(&dest).map_err(|e| BlobError::Io {
            op: "rename",
            path: dest.clone(),
            source: e.error,
        })?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync dir", &dir))?;
        Ok(dest)
    }

    /// Removes a stored file (missing is fine).
    pub fn remove(&self, sha256_hex: &str) -> Result<(), BlobError> {
        let p = self.path_of(sha256_hex);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &p)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(axum::body::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn receive_hashes_and_commits_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let bs = BlobStore::open(dir.path().to_owned()).unwrap();
        let r = bs
            .receive(chunks(&[b"hello ", b"world"]), 100)
            .await
            .unwrap();
        assert_eq!(r.size, 11);
        let hex = hex::encode(r.sha256);
        assert_eq!(
            hex,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        let path = bs.commit(r).unwrap();
        assert_eq!(path, bs.path_of(&hex));
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        bs.remove(&hex).unwrap();
        assert!(!path.exists());
        bs.remove(&hex).unwrap();
    }

    #[tokio::test]
    async fn refuses_oversized_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let bs = BlobStore::open(dir.path().to_owned()).unwrap();
        let err = bs
            .receive(chunks(&[b"0123456789", b"x"]), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 10 }));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn sha_hex_validation() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex("../etc/passwd"));
    }
}
