//! The verified download of an extension payload (kind `file`) to `NAME-VERSION.raw`, with the
//! same verifier and error codes as OS payloads:
//!
//! 1. the signed prefix (header, manifest, signatures) is collected from the stream and
//!    verified (trusted key, expiry), then the manifest is checked: kind `file`, the offered
//!    version, this extension's app id, this host's arch and board, and `os.versions` against
//!    the OS version the build must run on; the payload length must be the size Omaha announced;
//! 2. only then is the temporary file `.NAME-VERSION.raw.partial` created, and the payload
//!    streamed through the `payloads` applier into it (each operation checked against its signed
//!    SHA-256 before it is written);
//! 3. the whole payload's SHA-256 must be the one Omaha announced, the file is synced, re-read
//!    and checked against the signed image SHA-256, and renamed to `NAME-VERSION.raw`.
//!
//! A failed download leaves no file behind. Each URL is tried once; the next check retries.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use futures_util::StreamExt as _;
use payloads::format::prefix_len_needed;
use payloads::{Applier, ApplyError, ApplyOptions, Expectations, Kind, Prefix, Target, TrustStore};
use sha2::{Digest as _, Sha256};
use url::Url;

use super::compat::{self, CompatError};
use super::error::{ExtensionError, io};
use super::images::{image_file, partial_path, sync_dir};
use super::state::Image;
use crate::identity::Identity;
use crate::install::InstallError;
use crate::omaha_client::Offer;

/// What to download and what it must be.
pub struct DownloadRequest<'a> {
    /// The one HTTP client.
    pub http: &'a reqwest::Client,
    /// Trusted payload keys.
    pub trust: &'a TrustStore,
    /// The offer.
    pub offer: &'a Offer,
    /// Extension name.
    pub name: &'a str,
    /// Extension app id (the manifest's must match).
    pub app_id: &'a str,
    /// This host (arch, board).
    pub identity: &'a Identity,
    /// The OS version the build must support.
    pub os_version: &'a str,
    /// Where images are kept.
    pub image_dir: &'a Path,
    /// Current time (Unix seconds) for the expiry check.
    pub now_unix: u64,
}

fn transfer(url: &Url, detail: impl std::fmt::Display) -> ExtensionError {
    ExtensionError::Download(InstallError::Transfer {
        url: url.to_string(),
        detail: detail.to_string(),
    })
}

/// Downloads and verifies the offer (see the module documentation); returns the stored image.
pub async fn download(req: &DownloadRequest<'_>) -> Result<Image, ExtensionError> {
    let mut last = None;
    for url in &req.offer.urls {
        match attempt(req, url).await {
            Ok(image) => return Ok(image),
            // The signed build itself is not for this host: another URL serves the same build.
            Err(e @ (ExtensionError::UnsupportedOs { .. } | ExtensionError::Io { .. })) => {
                return Err(e);
            }
            Err(ExtensionError::Download(e @ InstallError::Incompatible { .. })) => {
                return Err(e.into());
            }
            Err(e) => {
                tracing::warn!(extension = req.name, url = %url, error = %e, "extension download failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        ExtensionError::Download(InstallError::Transfer {
            url: String::new(),
            detail: "no download URL".into(),
        })
    }))
}

/// Checks the verified prefix; nothing has been written yet.
fn admit(
    req: &DownloadRequest<'_>,
    prefix: &[u8],
) -> Result<(payloads::PayloadInfo, String), ExtensionError> {
    let apply = |e: ApplyError| ExtensionError::Download(InstallError::Apply(e));
    let info = Prefix::decode(prefix)
        .map_err(|e| apply(e.into()))?
        .verify(req.trust, req.now_unix)
        .map_err(|e| apply(e.into()))?;
    Expectations {
        kind: Some(Kind::File),
        version: Some(req.offer.version.clone()),
        ..Expectations::default()
    }
    .check(&info.manifest)
    .map_err(apply)?;
    let versions = match compat::check_manifest(req.app_id, req.identity, &info, req.os_version) {
        Ok(v) => v,
        Err(CompatError::Incompatible(e)) => return Err(e.into()),
        Err(CompatError::Unsupported { reason, .. }) => {
            return Err(ExtensionError::UnsupportedOs {
                version: req.offer.version.clone(),
                os_version: req.os_version.to_owned(),
                reason,
            });
        }
    };
    if info.payload_len() != req.offer.size {
        return Err(ExtensionError::Download(InstallError::SizeMismatch {
            announced: req.offer.size,
            found: format!("the signed payload is {} bytes", info.payload_len()),
        }));
    }
    Ok((info, versions.as_text()))
}

/// The payload written so far into the temporary file.
struct Writing {
    applier: Applier,
}

impl Writing {
    /// Feeds `chunk` on a blocking thread (slot writes are synchronous).
    async fn feed(self, chunk: Vec<u8>) -> (Self, Result<(), ApplyError>) {
        let joined = tokio::task::spawn_blocking(move || {
            let mut w = self;
            let r = w.applier.feed(&chunk).map(|_| ());
            (w, r)
        })
        .await;
        match joined {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

async fn attempt(req: &DownloadRequest<'_>, url: &Url) -> Result<Image, ExtensionError> {
    let resp = req
        .http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| transfer(url, e))?;
    if !resp.status().is_success() {
        return Err(ExtensionError::Download(InstallError::HttpStatus {
            url: url.to_string(),
            status: resp.status().as_u16(),
        }));
    }
    if let Some(len) = resp.content_length().filter(|&l| l != req.offer.size) {
        return Err(ExtensionError::Download(InstallError::SizeMismatch {
            announced: req.offer.size,
            found: format!("the server sends {len} bytes"),
        }));
    }
    let partial = partial_path(req.image_dir, req.name, &req.offer.version);
    let result = stream(req, url, resp, &partial).await;
    if result.is_err() {
        match fs::remove_file(&partial) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                tracing::warn!(file = %partial.display(), error = %e, "cannot remove partial download");
            }
            _ => {}
        }
    }
    result
}

async fn stream(
    req: &DownloadRequest<'_>,
    url: &Url,
    resp: reqwest::Response,
    partial: &Path,
) -> Result<Image, ExtensionError> {
    let apply = |e: ApplyError| ExtensionError::Download(InstallError::Apply(e));
    let mut hash = Sha256::new();
    let mut received = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut writing: Option<Writing> = None;
    let mut versions = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| transfer(url, e))?;
        received += chunk.len() as u64;
        if received > req.offer.size {
            return Err(ExtensionError::Download(InstallError::SizeMismatch {
                announced: req.offer.size,
                found: "the server sends more".into(),
            }));
        }
        hash.update(&chunk);
        let data = match writing.take() {
            Some(w) => {
                let (w, r) = w.feed(chunk.to_vec()).await;
                r.map_err(apply)?;
                writing = Some(w);
                continue;
            }
            None => {
                pending.extend_from_slice(&chunk);
                let need = prefix_len_needed(&pending).map_err(|e| apply(e.into()))?;
                if pending.len() < need {
                    continue;
                }
                let (info, v) = admit(req, &pending[..need])?;
                versions = v;
                tracing::info!(extension = req.name, version = %req.offer.version,
                    signer = %info.signer, os_versions = %versions,
                    "extension payload signature and manifest verified");
                // Only now is anything created on disk.
                let file = create_partial(req.image_dir, partial)?;
                let target =
                    Target::new(file, 0, info.target_size()).map_err(io("opening", partial))?;
                let opts = ApplyOptions {
                    now: req.now_unix,
                    expect: Expectations {
                        kind: Some(Kind::File),
                        version: Some(req.offer.version.clone()),
                        ..Expectations::default()
                    },
                    sync: true,
                };
                writing = Some(Writing {
                    applier: Applier::new(req.trust, target, opts),
                });
                std::mem::take(&mut pending)
            }
        };
        if let Some(w) = writing.take() {
            let (w, r) = w.feed(data).await;
            r.map_err(apply)?;
            writing = Some(w);
        }
    }
    let Some(w) = writing else {
        return Err(transfer(
            url,
            format!("connection closed after {received} bytes, inside the payload's signed prefix"),
        ));
    };
    if received != req.offer.size {
        return Err(transfer(
            url,
            format!(
                "connection closed after {received} of {} bytes",
                req.offer.size
            ),
        ));
    }
    let digest: [u8; 32] = hash.finalize().into();
    if digest != req.offer.sha256 {
        return Err(ExtensionError::Download(InstallError::HashMismatch {
            announced: hex::encode(req.offer.sha256),
            found: hex::encode(digest),
        }));
    }
    let finished = tokio::task::spawn_blocking(move || w.applier.finish()).await;
    let applied = match finished {
        Ok(r) => r.map_err(apply)?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let file = image_file(req.name, &req.offer.version);
    let path = req.image_dir.join(&file);
    fs::rename(partial, &path).map_err(io("renaming into place", &path))?;
    sync_dir(req.image_dir)?;
    tracing::info!(extension = req.name, version = %req.offer.version, file = %path.display(),
        target_sha256 = %applied.target_sha256, "extension image written and verified");
    Ok(Image {
        version: req.offer.version.clone(),
        file,
        os_versions: versions,
    })
}

fn create_partial(image_dir: &Path, partial: &Path) -> Result<fs::File, ExtensionError> {
    fs::create_dir_all(image_dir).map_err(io("creating directory", image_dir))?;
    match fs::remove_file(partial) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io("removing stale", partial)(e)),
        _ => {}
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(partial)
        .map_err(io("creating", partial))
}
