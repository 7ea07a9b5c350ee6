//! Packages: publishing, listing, and deleting one no channel points at.
//!
//! - [`publish`]: a file uploaded to this server, checked by its format (a Platte payload's
//!   signatures against the trusted publisher keys; an update_engine payload's CrAU header);
//! - [`reference`]: a file hosted elsewhere, named by URL, size and digests, optionally
//!   downloaded once to verify it, or to host it here;
//! - [`files`]: a package's extra files (OEM and extension sysexts), served with it;
//! - [`deltas`]: a package's delta payloads, each from one earlier version.

pub mod deltas;
pub mod files;
pub mod publish;
pub mod reference;

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Fleet, FleetError, FleetResult, activity};
use crate::blobs::{BlobError, is_sha256_hex};
use crate::model::{Package, PackageFormat, normalize_appid};

/// Longest codebase URL of an externally hosted package, bytes.
const MAX_EXTERNAL_URL: usize = 2000;
/// Longest download file name, bytes.
const MAX_FILENAME: usize = 200;

/// Query of `GET /packages`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PackageQuery {
    /// Only this application's packages.
    pub app: Option<String>,
}

/// Query of `POST /packages` (the body is the payload).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PublishQuery {
    /// The payload's format [default: `platte`]. An `update_engine` payload (a CrAU file) is
    /// checked to be one and served as it is; it names no app, version or arch, so `app`,
    /// `version` and `arch` are required with it.
    pub format: Option<PackageFormat>,
    /// File name clients download (default: `<app>-<version>-<arch>.payload`, or `update.gz`
    /// for an update_engine payload).
    pub filename: Option<String>,
    /// Host externally at this codebase URL (the file is verified, then not kept).
    pub external_url: Option<String>,
    /// Platte payload: refuse unless the manifest names this application. update_engine
    /// payload: its application.
    pub app: Option<String>,
    /// Platte payload: refuse unless the manifest names this version. update_engine payload:
    /// its version.
    pub version: Option<String>,
    /// Platte payload: refuse unless the manifest names this arch. update_engine payload: its
    /// arch.
    pub arch: Option<String>,
    /// update_engine payload: `MetadataSignatureRsa` to send (base64).
    pub metadata_signature_rsa: Option<String>,
    /// update_engine payload: `deadline` to send (`now` installs at once).
    pub deadline: Option<String>,
    /// update_engine payload: it is a delta (`IsDeltaPayload`) [default: false].
    pub is_delta: Option<bool>,
    /// `DisablePayloadBackoff` to send [default: true].
    pub disable_payload_backoff: Option<bool>,
    /// update_engine payload: `needsadmin` to send [default: false].
    pub needs_admin: Option<bool>,
    /// A Platte delta payload: the id of the full package it is linked to [default: the one
    /// package of the delta's application, version and arch in Platte's format].
    pub delta_of: Option<String>,
}

/// The attributes of update_engine's postinstall action an operator may set on a package
/// (Nebraska's "Flatcar action"; `sha256`, `ChromeOSVersion` and `MetadataSize` come from the
/// file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionOptions {
    /// `MetadataSignatureRsa` (base64).
    pub metadata_signature_rsa: Option<String>,
    /// `deadline`.
    pub deadline: Option<String>,
    /// `IsDeltaPayload` [default: false].
    pub is_delta: Option<bool>,
    /// `DisablePayloadBackoff` [default: true].
    pub disable_payload_backoff: Option<bool>,
    /// `needsadmin` [default: false].
    pub needs_admin: Option<bool>,
}

impl ActionOptions {
    /// Checks the options (bounded text) and sets them on `pkg`.
    fn apply(self, pkg: &mut Package) -> FleetResult<()> {
        if let Some(sig) = &self.metadata_signature_rsa
            && (sig.len() > 4096
                || base64::engine::general_purpose::STANDARD
                    .decode(sig)
                    .is_err())
        {
            return Err(FleetError::Invalid(
                "metadata_signature_rsa must be base64, at most 4096 characters".into(),
            ));
        }
        if let Some(d) = &self.deadline
            && (d.is_empty() || d.len() > 64 || !d.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(FleetError::Invalid(format!("invalid deadline {d:?}")));
        }
        pkg.metadata_signature_rsa = self.metadata_signature_rsa;
        pkg.deadline = self.deadline;
        pkg.is_delta = self.is_delta.unwrap_or(false);
        pkg.disable_payload_backoff = self.disable_payload_backoff.unwrap_or(true);
        pkg.needs_admin = self.needs_admin.unwrap_or(false);
        Ok(())
    }
}

/// A file's digests as stored: SHA-1 in base64, SHA-256 in hex.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDigests {
    /// SHA-1, base64 (Omaha `hash`).
    pub sha1_base64: String,
    /// SHA-256, hex.
    pub sha256_hex: String,
}

impl FileDigests {
    /// Reads digests as an operator or an Omaha answer gives them, each in hex or base64 (told
    /// apart by length): SHA-1 as 40 hex digits or 28 base64 characters, SHA-256 as 64 hex
    /// digits or 44 base64 characters.
    pub fn parse(sha1: &str, sha256: &str) -> FleetResult<Self> {
        let sha1 = decode_digest::<20>("sha1", sha1.trim())?;
        let sha256 = decode_digest::<32>("sha256", sha256.trim())?;
        Ok(Self::of(&sha1, &sha256))
    }

    /// The digests of an extra file, as stored.
    pub fn of_file(f: &crate::model::PackageFile) -> Self {
        Self {
            sha1_base64: f.sha1_base64.clone(),
            sha256_hex: f.sha256_hex.clone(),
        }
    }

    /// The stored forms of raw digests.
    pub fn of(sha1: &[u8; 20], sha256: &[u8; 32]) -> Self {
        Self {
            sha1_base64: base64::engine::general_purpose::STANDARD.encode(sha1),
            sha256_hex: hex::encode(sha256),
        }
    }
}

/// Decodes an `N`-byte digest given in hex or base64 ([`omaha::decode_hex_or_base64`], the same
/// rule the agent applies to answers).
fn decode_digest<const N: usize>(what: &'static str, text: &str) -> FleetResult<[u8; N]> {
    omaha::decode_hex_or_base64::<N>(what, text).map_err(|e| FleetError::Invalid(e.to_string()))
}

/// Whether `f` may be a download file name: 1..=200 bytes of letters, digits and `._-+`, not
/// `.` or `..`.
fn valid_filename(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= MAX_FILENAME
        && f != "."
        && f != ".."
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// Checks that `u` is an http(s) URL of bounded length (`what` names it in the error).
fn check_http_url(what: &str, u: &str) -> FleetResult<()> {
    let parsed = reqwest::Url::parse(u).ok();
    if u.len() > MAX_EXTERNAL_URL
        || !parsed.is_some_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some())
    {
        return Err(FleetError::Invalid(format!(
            "{what} must be an http(s) URL of at most {MAX_EXTERNAL_URL} bytes"
        )));
    }
    Ok(())
}

/// The error of a file that could not be received into the package store.
fn receive_error(e: BlobError) -> FleetError {
    match e {
        BlobError::TooLarge { .. } => FleetError::TooLarge(e.to_string()),
        BlobError::Upload(_) => FleetError::Invalid(e.to_string()),
        other => FleetError::Internal(other.to_string()),
    }
}

/// A signature on a hosted Platte payload, as the file's signature block names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSignature {
    /// The signing key's id (16 hex digits, as `payload keygen` and the `package_published`
    /// activity entry show it).
    pub key_id: String,
    /// Whether the key is among the trusted publisher keys now.
    pub trusted: bool,
}

impl Fleet {
    /// The packages (of one application, or all).
    pub fn list_packages(&self, query: PackageQuery) -> Vec<Package> {
        let app = query.app.map(|a| normalize_appid(&a));
        self.catalogue()
            .data()
            .packages
            .iter()
            .filter(|p| app.as_ref().is_none_or(|a| &p.app_id == a))
            .cloned()
            .collect()
    }

    /// The package with id `id`.
    pub fn package(&self, id: &str) -> FleetResult<Package> {
        self.catalogue()
            .package(id)
            .cloned()
            .ok_or_else(|| FleetError::NotFound(format!("package {id}")))
    }

    /// The signatures on the Platte payloads among `packages` that this server hosts, by
    /// package id, in payload order, read from each file's signature block (the payload was
    /// verified in full when it was published; this reads, it does not verify again).
    /// update_engine payloads, externally hosted ones and files that cannot be read (logged)
    /// are left out.
    pub async fn package_signatures(
        &self,
        packages: &[Package],
    ) -> BTreeMap<String, Vec<PackageSignature>> {
        let files: Vec<(String, std::path::PathBuf)> = packages
            .iter()
            .filter(|p| {
                p.format == PackageFormat::Platte
                    && p.external_url.is_none()
                    && is_sha256_hex(&p.sha256_hex)
            })
            .map(|p| (p.id.clone(), self.blobs.path_of(&p.sha256_hex)))
            .collect();
        if files.is_empty() {
            return BTreeMap::new();
        }
        let trust = self.trust.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut found = BTreeMap::new();
            for (id, path) in files {
                let prefix = std::fs::File::open(&path)
                    .map_err(payloads::format::ReadPrefixError::Io)
                    .and_then(|f| payloads::read_prefix(&mut std::io::BufReader::new(f)));
                match prefix {
                    Ok((prefix, _)) => {
                        let signatures = prefix
                            .signatures
                            .iter()
                            .map(|s| PackageSignature {
                                key_id: s.key_id().to_string(),
                                trusted: trust
                                    .as_ref()
                                    .is_some_and(|t| t.get(&s.public_key).is_some()),
                            })
                            .collect();
                        found.insert(id, signatures);
                    }
                    Err(e) => {
                        tracing::warn!(package = %id, path = %path.display(), error = %e, "cannot read a package's signatures");
                    }
                }
            }
            found
        })
        .await;
        read.unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading package signatures failed");
            BTreeMap::new()
        })
    }

    /// Deletes a package no channel points at, and its files (payload and extra files) when no
    /// other hosted package shares them.
    pub async fn delete_package(&self, id: &str) -> FleetResult<()> {
        let _writing = self.write_lock.lock().await;
        let cat = self.catalogue();
        let pkg = cat
            .package(id)
            .cloned()
            .ok_or_else(|| FleetError::NotFound(format!("package {id}")))?;
        let users = cat.channels_using(id);
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().map(|c| c.name.as_str()).collect();
            return Err(FleetError::Conflict(format!(
                "package {id} is used by channel(s) {}",
                names.join(", ")
            )));
        }
        let mut act = activity(
            "package_deleted",
            Some(&pkg.app_id),
            format!("package {} ({}) deleted", pkg.version, pkg.arch),
        );
        act.version = Some(pkg.version.clone());
        self.store.delete_package(id, &act).await?;
        self.reload().await?;
        // Its deltas went with it (hosted whatever the package is).
        for d in &pkg.deltas {
            self.remove_unused_blob(&d.sha256_hex)?;
        }
        if pkg.external_url.is_none() {
            let contents =
                std::iter::once(&pkg.sha256_hex).chain(pkg.files.iter().map(|f| &f.sha256_hex));
            for sha in contents {
                self.remove_unused_blob(sha)?;
            }
        }
        Ok(())
    }

    /// Removes the stored file with content `sha256_hex` unless a hosted package or extra file
    /// still has it.
    fn remove_unused_blob(&self, sha256_hex: &str) -> FleetResult<()> {
        if self.catalogue().hosted_content_in_use(sha256_hex, "") {
            return Ok(());
        }
        self.blobs
            .remove(sha256_hex)
            .map_err(|e| FleetError::Internal(e.to_string()))
    }
}
