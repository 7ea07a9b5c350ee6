//! Packages: publishing a signed payload (its signatures are verified against the trusted
//! publisher keys and its data against its manifest before anything is stored; app, version,
//! arch and kind come from the signed manifest), listing, and deleting one no channel points at.

use std::collections::BTreeMap;

use base64::Engine as _;
use hyper::body::Bytes;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Fleet, FleetError, FleetResult, activity, new_id};
use crate::blobs::{BlobError, is_sha256_hex};
use crate::model::{Package, PackageFormat, normalize_appid, normalize_arch};
use crate::version;

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

/// How a file being published is checked, decided before it is received.
enum PayloadCheck {
    /// A Platte payload: verified against these trusted publisher keys.
    Verify(std::sync::Arc<payloads::TrustStore>),
    /// An update_engine payload: its CrAU header checked; published as this application,
    /// version and arch.
    Named((String, String, String)),
}

/// What a published file says about itself once checked.
struct Checked {
    app_id: String,
    version: String,
    arch: String,
    kind: String,
    metadata_size: Option<u64>,
    /// How it was checked, for the activity feed.
    provenance: String,
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

/// The catalogue's name of a payload kind.
fn kind_name(k: payloads::Kind) -> &'static str {
    match k {
        payloads::Kind::Partition => "partition",
        payloads::Kind::File => "file",
    }
}

/// Checks the publish options before the upload is read.
fn check_publish_options(q: &PublishQuery) -> FleetResult<()> {
    if let Some(f) = &q.filename
        && !valid_filename(f)
    {
        return Err(FleetError::Invalid(format!("invalid filename {f:?}")));
    }
    if let Some(u) = &q.external_url
        && (!(u.starts_with("https://") || u.starts_with("http://")) || u.len() > MAX_EXTERNAL_URL)
    {
        return Err(FleetError::Invalid(
            "external_url must be an http(s) URL".into(),
        ));
    }
    Ok(())
}

/// The application, version and arch an update_engine payload is published as (its file
/// names none of them): all three are required.
fn named_release(q: &PublishQuery) -> FleetResult<(String, String, String)> {
    let need = |what: &str, v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                FleetError::Invalid(format!(
                    "an update_engine payload names no {what}: give `{what}`"
                ))
            })
    };
    Ok((
        normalize_appid(&need("app", &q.app)?),
        need("version", &q.version)?,
        normalize_arch(&need("arch", &q.arch)?),
    ))
}

/// Checks that the `size`-byte file at `path` is an update_engine payload: a CrAU header whose
/// metadata fits in the file ([`payloads::crau::parse_header`]).
async fn check_update_engine_payload(
    path: std::path::PathBuf,
    size: u64,
    app_id: String,
    version: String,
    arch: String,
) -> FleetResult<Checked> {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::with_capacity(payloads::crau::MAX_HEADER_LEN);
    tokio::fs::File::open(&path)
        .await
        .map_err(|e| FleetError::Internal(format!("reading upload: {e}")))?
        .take(payloads::crau::MAX_HEADER_LEN as u64)
        .read_to_end(&mut head)
        .await
        .map_err(|e| FleetError::Internal(format!("reading upload: {e}")))?;
    let header = payloads::crau::parse_header(&head, size)
        .map_err(|e| FleetError::Unverifiable(format!("payload rejected: {e}")))?;
    Ok(Checked {
        app_id,
        version,
        arch,
        kind: "update_engine".to_owned(),
        metadata_size: Some(header.metadata_len()),
        provenance: format!(
            "an update_engine payload (CrAU version {}, {} bytes of metadata; its signatures \
             are checked by the hosts)",
            header.version,
            header.metadata_len()
        ),
    })
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

    /// Publishes a payload read from `upload`, by format:
    /// - a Platte payload: verifies its signatures against the trusted publisher keys and its
    ///   data against the manifest, and reads app/version/arch/kind from the manifest
    ///   (refusing a mismatch with `query`);
    /// - an update_engine payload: checks its CrAU header (bounded; the metadata must fit in
    ///   the file) and takes app/version/arch from `query` (its signatures are the OS
    ///   vendor's, checked by the hosts).
    ///
    /// Either way it computes size, SHA-1 and SHA-256 from the bytes and stores the file
    /// content-addressed (or records its external URL).
    pub async fn publish_package<S, E>(
        &self,
        query: PublishQuery,
        upload: S,
    ) -> FleetResult<Package>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let format = query.format.unwrap_or_default();
        let trust = match format {
            PackageFormat::Platte => Some(self.trust.clone().ok_or_else(|| {
                FleetError::Unavailable(
                    "no trusted publisher keys configured (--trusted-keys)".into(),
                )
            })?),
            PackageFormat::UpdateEngine => None,
        };
        check_publish_options(&query)?;
        let check = match trust {
            Some(trust) => PayloadCheck::Verify(trust),
            None => PayloadCheck::Named(named_release(&query)?),
        };
        let received = self
            .blobs
            .receive(upload, self.max_package_size)
            .await
            .map_err(|e| match e {
                BlobError::TooLarge { .. } => FleetError::TooLarge(e.to_string()),
                BlobError::Upload(_) => FleetError::Invalid(e.to_string()),
                other => FleetError::Internal(other.to_string()),
            })?;
        let path = received.path.to_path_buf();
        let checked = match check {
            PayloadCheck::Verify(trust) => self.check_platte_payload(path, trust, &query).await?,
            PayloadCheck::Named((app_id, version, arch)) => {
                check_update_engine_payload(path, received.size, app_id, version, arch).await?
            }
        };
        let Checked {
            app_id,
            version,
            arch,
            kind,
            metadata_size,
            provenance,
        } = checked;
        if !version::is_valid(&version) {
            return Err(FleetError::Unverifiable(format!(
                "version {version:?} is not a release version"
            )));
        }
        let _writing = self.write_lock.lock().await;
        if self.catalogue().app(&app_id).is_none() {
            return Err(FleetError::NotFound(format!(
                "application {app_id} (named by the payload)"
            )));
        }
        let default_filename = match format {
            PackageFormat::Platte => format!("{app_id}-{version}-{arch}.payload"),
            PackageFormat::UpdateEngine => "update.gz".to_owned(),
        };
        let pkg = Package {
            id: new_id(),
            app_id: app_id.clone(),
            version: version.clone(),
            arch: arch.clone(),
            kind,
            filename: query.filename.unwrap_or(default_filename),
            size: received.size,
            sha1_base64: base64::engine::general_purpose::STANDARD.encode(received.sha1),
            sha256_hex: hex::encode(received.sha256),
            external_url: query.external_url,
            created_at: self.now(),
            format,
            metadata_size,
        };
        if pkg.external_url.is_none() {
            self.blobs
                .commit(received)
                .map_err(|e| FleetError::Internal(e.to_string()))?;
        }
        let mut act = activity(
            "package_published",
            Some(&app_id),
            format!("package {version} ({arch}) published, {provenance}"),
        );
        act.version = Some(version);
        act.severity = "success";
        self.store.insert_package(&pkg, &act).await?;
        self.reload().await?;
        Ok(pkg)
    }

    /// Verifies a Platte payload at `path` (signatures, manifest, data) and checks it names
    /// what `query` expects.
    async fn check_platte_payload(
        &self,
        path: std::path::PathBuf,
        trust: std::sync::Arc<payloads::TrustStore>,
        query: &PublishQuery,
    ) -> FleetResult<Checked> {
        let now_s = u64::try_from(self.now()).unwrap_or(0);
        let info = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path)?;
            let mut opts = payloads::ApplyOptions::new(now_s);
            opts.sync = false;
            Ok::<_, std::io::Error>(payloads::verify_payload(
                std::io::BufReader::new(f),
                &trust,
                opts,
            ))
        })
        .await
        .map_err(|e| FleetError::Internal(format!("verification task: {e}")))?
        .map_err(|e| FleetError::Internal(format!("reading upload: {e}")))?
        .map_err(|e| FleetError::Unverifiable(format!("payload rejected: {e}")))?;

        let app_id = normalize_appid(info.app_id());
        let arch = normalize_arch(info.arch());
        let version = info.version().to_owned();
        for (what, want, got) in [
            ("app", query.app.as_deref().map(normalize_appid), &app_id),
            ("version", query.version.clone(), &version),
            ("arch", query.arch.as_deref().map(normalize_arch), &arch),
        ] {
            if let Some(w) = want
                && &w != got
            {
                return Err(FleetError::Conflict(format!(
                    "manifest {what} is {got}, expected {w}"
                )));
            }
        }
        Ok(Checked {
            app_id,
            version,
            arch,
            kind: kind_name(info.kind()).to_owned(),
            metadata_size: None,
            provenance: format!("signed by {}", hex::encode(info.signer.0)),
        })
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

    /// Deletes a package no channel points at, and its file when no other hosted package
    /// shares it.
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
        let shared = self
            .catalogue()
            .data()
            .packages
            .iter()
            .any(|p| p.sha256_hex == pkg.sha256_hex && p.external_url.is_none());
        if pkg.external_url.is_none() && !shared {
            self.blobs
                .remove(&pkg.sha256_hex)
                .map_err(|e| FleetError::Internal(e.to_string()))?;
        }
        Ok(())
    }
}
