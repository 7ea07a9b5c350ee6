//! Publishing a file hosted elsewhere, named by its URL, size, SHA-1 and SHA-256 (as Flatcar's
//! release server or another Omaha server publishes it), with its extra files. Three ways:
//! - recorded as given (update_engine payloads only: a Platte payload is always verified);
//! - `verify`: downloaded once, checked against the size and both digests and by its format,
//!   then forgotten; clients download it from its URL;
//! - `host`: downloaded and checked the same way, then kept in this server's package store and
//!   served from here (an air-gapped site needs nothing else).

use std::time::Duration;

use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::publish::{Checked, Naming, NewPackage};
use super::{ActionOptions, FileDigests, check_http_url, receive_error, valid_filename};
use crate::blobs::Received;
use crate::fleet::{Fleet, FleetError, FleetResult};
use crate::model::{Package, PackageFile, PackageFormat};

/// How long a download may take to connect, and to deliver its next bytes.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most extra files per package.
pub const MAX_FILES: usize = 64;

/// Body of `POST /packages/by-reference`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct PackageReference {
    /// The payload's format [default: `update_engine`].
    #[serde(default = "update_engine")]
    pub format: PackageFormat,
    /// Application (required for an update_engine payload; checked against a Platte
    /// payload's manifest).
    pub app: Option<String>,
    /// Release version (as for `app`).
    pub version: Option<String>,
    /// Architecture (as for `app`).
    pub arch: Option<String>,
    /// The file's URL: its codebase is everything up to the last `/`, its name the rest.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-1, hex or base64.
    pub sha1: String,
    /// SHA-256, hex or base64.
    pub sha256: String,
    /// update_engine payload: `MetadataSize`, when known (it is read from the file when the
    /// file is downloaded).
    #[serde(default)]
    pub metadata_size: Option<u64>,
    /// update_engine payload: `MetadataSignatureRsa` (base64).
    #[serde(default)]
    pub metadata_signature_rsa: Option<String>,
    /// update_engine payload: `deadline`.
    #[serde(default)]
    pub deadline: Option<String>,
    /// update_engine payload: `IsDeltaPayload` [default: false].
    #[serde(default)]
    pub is_delta: Option<bool>,
    /// `DisablePayloadBackoff` [default: true].
    #[serde(default)]
    pub disable_payload_backoff: Option<bool>,
    /// update_engine payload: `needsadmin` [default: false].
    #[serde(default)]
    pub needs_admin: Option<bool>,
    /// Extra files under the same codebase, in order.
    #[serde(default)]
    pub files: Vec<FileReference>,
    /// Download the payload and extra files once and check them before recording them.
    #[serde(default)]
    pub verify: bool,
    /// Download, check and keep them in this server's store, and serve them from here.
    #[serde(default)]
    pub host: bool,
}

fn update_engine() -> PackageFormat {
    PackageFormat::UpdateEngine
}

/// An extra file named by reference: its name under the package's codebase, size and digests.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct FileReference {
    /// File name (`oem-azure.gz`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-1, hex or base64.
    pub sha1: String,
    /// SHA-256, hex or base64.
    pub sha256: String,
}

impl FileReference {
    /// The file as a package lists it, once its name and digests are checked.
    pub(super) fn to_file(&self) -> FleetResult<PackageFile> {
        if !valid_filename(&self.name) {
            return Err(FleetError::Invalid(format!(
                "invalid extra file name {:?}",
                self.name
            )));
        }
        let d = FileDigests::parse(&self.sha1, &self.sha256)
            .map_err(|e| FleetError::Invalid(format!("extra file {}: {e}", self.name)))?;
        Ok(PackageFile {
            name: self.name.clone(),
            size: self.size,
            sha1_base64: d.sha1_base64,
            sha256_hex: d.sha256_hex,
        })
    }
}

/// Splits a file URL into its codebase (ending in `/`) and file name.
pub fn split_url(url: &str) -> FleetResult<(String, String)> {
    check_http_url("url", url)?;
    let (base, name) = url
        .rsplit_once('/')
        .filter(|(b, _)| b.contains("://") && !b.ends_with(':') && !b.ends_with('/'))
        .ok_or_else(|| FleetError::Invalid(format!("url {url:?} names no file")))?;
    if !valid_filename(name) {
        return Err(FleetError::Invalid(format!(
            "url {url:?} ends in an invalid file name"
        )));
    }
    Ok((format!("{base}/"), name.to_owned()))
}

/// Checks that a downloaded file is the one named: its size and both digests.
pub(super) fn check_named(
    what: &str,
    r: &Received,
    size: u64,
    want: &FileDigests,
) -> FleetResult<()> {
    let got = FileDigests::of(&r.sha1, &r.sha256);
    let mismatch = if r.size != size {
        Some(format!("{} bytes, not {size}", r.size))
    } else if got.sha1_base64 != want.sha1_base64 {
        Some(format!(
            "SHA-1 {}, not {}",
            got.sha1_base64, want.sha1_base64
        ))
    } else if got.sha256_hex != want.sha256_hex {
        Some(format!(
            "SHA-256 {}, not {}",
            got.sha256_hex, want.sha256_hex
        ))
    } else {
        None
    };
    match mismatch {
        Some(m) => Err(FleetError::Unverifiable(format!(
            "{what} does not match its reference: {m}"
        ))),
        None => Ok(()),
    }
}

/// The client downloads use: bounded waits to connect and for the next bytes.
fn download_client() -> FleetResult<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(DOWNLOAD_TIMEOUT)
        .read_timeout(DOWNLOAD_TIMEOUT)
        .build()
        .map_err(|e| FleetError::Internal(format!("HTTP client: {e}")))
}

impl Fleet {
    /// Publishes a package hosted elsewhere, by reference (see the module documentation).
    pub async fn publish_reference(&self, input: PackageReference) -> FleetResult<Package> {
        let (codebase, filename) = split_url(&input.url)?;
        let digests = FileDigests::parse(&input.sha1, &input.sha256)?;
        if input.size == 0 {
            return Err(FleetError::Invalid("size must be more than 0".into()));
        }
        if input.files.len() > MAX_FILES {
            return Err(FleetError::Invalid(format!(
                "at most {MAX_FILES} extra files per package"
            )));
        }
        let mut files = Vec::with_capacity(input.files.len());
        for f in &input.files {
            let file = f.to_file()?;
            if file.name == filename || files.iter().any(|g: &PackageFile| g.name == file.name) {
                return Err(FleetError::Invalid(format!(
                    "file name {} is given twice",
                    file.name
                )));
            }
            files.push(file);
        }
        let download = input.verify || input.host;
        if input.format == PackageFormat::Platte && !download {
            return Err(FleetError::Invalid(
                "a Platte payload by reference must be verified: give `verify` or `host`".into(),
            ));
        }
        let naming = Naming {
            app: input.app.clone(),
            version: input.version.clone(),
            arch: input.arch.clone(),
        };
        let check = self.payload_check(input.format, naming)?;
        let action = ActionOptions {
            metadata_signature_rsa: input.metadata_signature_rsa.clone(),
            deadline: input.deadline.clone(),
            is_delta: input.is_delta,
            disable_payload_backoff: input.disable_payload_backoff,
            needs_admin: input.needs_admin,
        };
        let (checked, to_store) = if download {
            let mut received = Vec::new();
            let downloaded = self
                .download_checked(&input, &codebase, &digests, &files, check, &mut received)
                .await;
            match downloaded {
                Ok(checked) => (checked, if input.host { received } else { Vec::new() }),
                Err(e) => {
                    if input.host {
                        // What arrived and matched its digests is kept: the next attempt
                        // resumes from it instead of downloading it again.
                        for r in received {
                            let _ = r.path.keep();
                        }
                    }
                    return Err(e);
                }
            }
        } else {
            let super::publish::PayloadCheck::Named {
                app_id,
                version,
                arch,
            } = check
            else {
                return Err(FleetError::Internal(
                    "an unverified reference must be an update_engine payload".into(),
                ));
            };
            let checked = Checked {
                app_id,
                version,
                arch,
                kind: "update_engine".to_owned(),
                metadata_size: input.metadata_size,
                provenance: format!(
                    "an update_engine payload by reference to {}, not downloaded",
                    input.url
                ),
                delta: None,
            };
            (checked, Vec::new())
        };
        let mut checked = checked;
        if download {
            checked.provenance = format!(
                "{}, downloaded from {} and checked against its size and digests{}",
                checked.provenance,
                input.url,
                if input.host { ", hosted here" } else { "" }
            );
        }
        self.record_package(NewPackage {
            checked,
            format: input.format,
            filename: Some(filename),
            size: input.size,
            digests,
            external_url: (!input.host).then_some(codebase),
            action,
            files,
            to_store,
        })
        .await
    }

    /// Downloads the payload and each extra file of `input` (each content once) into
    /// `received`, checking each against its size and digests as it arrives, then the payload by
    /// its format (and its metadata size against the given one).
    async fn download_checked(
        &self,
        input: &PackageReference,
        codebase: &str,
        digests: &FileDigests,
        files: &[PackageFile],
        check: super::publish::PayloadCheck,
        received: &mut Vec<Received>,
    ) -> FleetResult<Checked> {
        let payload = self
            .fetch_to(&input.url, digests, input.size, input.host)
            .await?;
        check_named(&input.url, &payload, input.size, digests)?;
        received.push(payload);
        for f in files {
            // A content already fetched (two names for one file) is not fetched again.
            if let Some(same) = received
                .iter()
                .find(|r| hex::encode(r.sha256) == f.sha256_hex)
            {
                let url = format!("{codebase}{}", f.name);
                check_named(&url, same, f.size, &FileDigests::of_file(f))?;
                continue;
            }
            received.push(self.fetch_file(codebase, f, input.host).await?);
        }
        let Some(payload) = received.first() else {
            return Err(FleetError::Internal("no payload downloaded".into()));
        };
        let checked = self.check_received(check, payload).await?;
        if let (Some(given), Some(read)) = (input.metadata_size, checked.metadata_size)
            && given != read
        {
            return Err(FleetError::Unverifiable(format!(
                "metadata_size is {given}, but the payload's header says {read}"
            )));
        }
        Ok(checked)
    }

    /// Downloads the extra file `f` from `codebase` (kept for resuming when `resumable`) and
    /// checks it against its size and digests.
    pub(super) async fn fetch_file(
        &self,
        codebase: &str,
        f: &PackageFile,
        resumable: bool,
    ) -> FleetResult<Received> {
        let url = format!("{codebase}{}", f.name);
        let want = FileDigests::of_file(f);
        let r = self.fetch_to(&url, &want, f.size, resumable).await?;
        check_named(&url, &r, f.size, &want)?;
        Ok(r)
    }

    /// Downloads `url`, expected to have `want`'s digests: to be kept (`resumable`), into a
    /// partial file that a failed attempt leaves for the next one to resume with `Range`;
    /// else once, into a temporary file.
    /// Never more than `size` bytes (the size named) are accepted.
    async fn fetch_to(
        &self,
        url: &str,
        want: &FileDigests,
        size: u64,
        resumable: bool,
    ) -> FleetResult<Received> {
        let limit = size.min(self.max_package_size);
        if resumable {
            self.fetch_resumable(url, &want.sha256_hex, limit).await
        } else {
            self.fetch_limited(url, limit).await
        }
    }

    /// Downloads `url` into the partial file for content `sha256_hex`, resuming what an earlier
    /// attempt left (when the server honours `Range`; else from the start), bounded by the
    /// package size limit. An interrupted download keeps what arrived; the finished file is
    /// hashed whole.
    async fn fetch_resumable(
        &self,
        url: &str,
        sha256_hex: &str,
        limit: u64,
    ) -> FleetResult<Received> {
        let hold = self.blobs.hold_partial(sha256_hex).await;
        let (path, have) = self.blobs.partial(sha256_hex);
        let mut req = download_client()?.get(url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let failed =
            |e: reqwest::Error| FleetError::Unverifiable(format!("downloading {url}: {e}"));
        let resp = req.send().await.map_err(failed)?;
        let status = resp.status();
        if have > 0 && status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // Everything had arrived: the file is checked whole below.
            return self
                .blobs
                .finish_partial(path, hold)
                .await
                .map_err(receive_error);
        }
        let resp = resp.error_for_status().map_err(failed)?;
        let resumed = have > 0
            && status == reqwest::StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
        if have > 0 {
            tracing::info!(url, from = have, resumed, "resuming a download");
        }
        let stream = resp.bytes_stream().map_err(|e| e.to_string());
        let received = self
            .blobs
            .receive_partial(&path, resumed, Box::pin(stream), limit)
            .await;
        if let Err(crate::blobs::BlobError::TooLarge { .. }) = &received {
            // More than named: not the file, and nothing to resume.
            let _ = std::fs::remove_file(&path);
        }
        received.map_err(|e| match e {
            crate::blobs::BlobError::Upload(m) => {
                FleetError::Unverifiable(format!("downloading {url}: {m} (resumed next time)"))
            }
            other => receive_error(other),
        })?;
        self.blobs
            .finish_partial(path, hold)
            .await
            .map_err(receive_error)
    }

    /// Downloads `url` into the package store's temporary area, accepting at most `limit` bytes
    /// (the size named, within the package size limit), computing its size and digests.
    async fn fetch_limited(&self, url: &str, limit: u64) -> FleetResult<Received> {
        let resp = download_client()?
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| FleetError::Unverifiable(format!("downloading {url}: {e}")))?;
        let too_large = |len: Option<u64>| {
            let len = len.map_or_else(|| "more".to_owned(), |l| l.to_string());
            if limit < self.max_package_size {
                FleetError::Unverifiable(format!(
                    "{url} does not match its reference: {len} bytes, more than the {limit} named"
                ))
            } else {
                FleetError::TooLarge(format!(
                    "{url} is {len} bytes, more than the {limit}-byte package limit"
                ))
            }
        };
        if let Some(len) = resp.content_length()
            && len > limit
        {
            return Err(too_large(Some(len)));
        }
        let stream = resp.bytes_stream().map_err(|e| e.to_string());
        self.blobs
            .receive(Box::pin(stream), limit)
            .await
            .map_err(|e| match e {
                crate::blobs::BlobError::Upload(m) => {
                    FleetError::Unverifiable(format!("downloading {url}: {m}"))
                }
                crate::blobs::BlobError::TooLarge { .. } => too_large(None),
                other => receive_error(other),
            })
    }
}
