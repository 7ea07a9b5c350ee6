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
//! The transfer itself (the answer's checks, the body's accounting and hash, the applier on its
//! own thread) is the OS install's ([`crate::install::download`]).

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use futures_util::Stream;
use payloads::format::prefix_len_needed;
use payloads::{Applier, ApplyError, ApplyOptions, Expectations, Kind, Prefix, Target, TrustStore};
use url::Url;

use super::compat::{self, CompatError};
use super::error::{ExtensionError, io};
use super::images::{image_file, partial_path, sync_dir};
use super::state::Image;
use crate::identity::Identity;
use crate::install::InstallError;
use crate::install::download::{self, Incoming, Piece, Worker, transfer};
use crate::install::hasher::ResumableSha256;
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

async fn attempt(req: &DownloadRequest<'_>, url: &Url) -> Result<Image, ExtensionError> {
    let (resp, skip) = download::open(req.http, url, 0, req.offer.size, &req.offer.version).await?;
    let partial = partial_path(req.image_dir, req.name, &req.offer.version);
    let body = download::incoming(resp, url, req.offer.size, 0, skip, ResumableSha256::new());
    let result = stream(req, url, body, &partial).await;
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

async fn stream<S, B>(
    req: &DownloadRequest<'_>,
    url: &Url,
    mut body: Incoming<S>,
    partial: &Path,
) -> Result<Image, ExtensionError>
where
    S: Stream<Item = reqwest::Result<B>> + Unpin,
    B: AsRef<[u8]> + Send + 'static,
{
    let apply = |e: ApplyError| ExtensionError::Download(InstallError::Apply(e));
    // The signed prefix, as received (pieces, and their bytes for checking).
    let mut pending: Vec<Piece<B>> = Vec::new();
    let mut prefix: Vec<u8> = Vec::new();
    let mut writing: Option<Worker<Piece<B>>> = None;
    let mut versions = String::new();
    let result: Result<(), ExtensionError> = loop {
        let piece = match body.next().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(e.into()),
            Some(Ok(p)) => p,
        };
        if let Some(w) = &writing {
            if !w.feed(piece) {
                // The applier stopped on an error: collect it below.
                break Ok(());
            }
            continue;
        }
        prefix.extend_from_slice(piece.as_ref());
        pending.push(piece);
        let need = prefix_len_needed(&prefix).map_err(|e| apply(e.into()))?;
        if prefix.len() < need {
            continue;
        }
        let (info, v) = admit(req, &prefix[..need])?;
        versions = v;
        tracing::info!(extension = req.name, version = %req.offer.version,
            signer = %info.signer, os_versions = %versions,
            "extension payload signature and manifest verified");
        // Only now is anything created on disk.
        let file = create_partial(req.image_dir, partial)?;
        let target = Target::new(file, 0, info.target_size()).map_err(io("opening", partial))?;
        let opts = ApplyOptions {
            now: req.now_unix,
            expect: Expectations {
                kind: Some(Kind::File),
                version: Some(req.offer.version.clone()),
                ..Expectations::default()
            },
            sync: true,
        };
        // The manifest was checked above, before the file was created.
        let w = Worker::start(
            Applier::new(req.trust, target, opts),
            Box::new(|_, _| Ok(())),
        );
        let fed = pending.drain(..).all(|p| w.feed(p));
        writing = Some(w);
        if !fed {
            break Ok(());
        }
    };
    let received = body.pos();
    let Some(w) = writing else {
        result?;
        return Err(transfer(
            url,
            format!("connection closed after {received} bytes, inside the payload's signed prefix"),
        )
        .into());
    };
    let (applier, worker_result) = w.finish();
    worker_result?;
    result?;
    if received != req.offer.size {
        return Err(transfer(
            url,
            format!(
                "connection closed after {received} of {} bytes",
                req.offer.size
            ),
        )
        .into());
    }
    let digest = body.into_hasher().finish();
    if digest != req.offer.sha256 {
        return Err(ExtensionError::Download(InstallError::HashMismatch {
            announced: hex::encode(req.offer.sha256),
            found: hex::encode(digest),
        }));
    }
    let finished = tokio::task::spawn_blocking(move || applier.finish()).await;
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
