//! Packages: publishing a signed payload (its signatures are verified against the trusted
//! publisher keys and its data against its manifest before anything is stored; app, version,
//! arch and kind come from the signed manifest), listing, and deleting one no channel points at.

use base64::Engine as _;
use hyper::body::Bytes;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Fleet, FleetError, FleetResult, activity, new_id};
use crate::blobs::BlobError;
use crate::model::{Package, normalize_appid, normalize_arch};
use crate::version;

/// Longest codebase URL of an externally hosted package, bytes.
const MAX_EXTERNAL_URL: usize = 2000;
/// Longest download file name, bytes.
const MAX_FILENAME: usize = 200;

/// Query of `GET /packages`.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct PackageQuery {
    /// Only this application's packages.
    pub app: Option<String>,
}

/// Query of `POST /packages` (the body is the signed payload).
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct PublishQuery {
    /// File name clients download (default: `<app>-<version>-<arch>.payload`).
    pub filename: Option<String>,
    /// Host externally at this codebase URL (the file is verified, then not kept).
    pub external_url: Option<String>,
    /// Refuse unless the manifest names this application.
    pub app: Option<String>,
    /// Refuse unless the manifest names this version.
    pub version: Option<String>,
    /// Refuse unless the manifest names this arch.
    pub arch: Option<String>,
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

    /// Publishes a signed payload read from `upload`: verifies its signatures against the
    /// trusted publisher keys and its data against the manifest, reads app/version/arch/kind
    /// from the manifest (refusing a mismatch with `query`), computes SHA-1 and SHA-256, and
    /// stores it content-addressed (or records its external URL).
    pub async fn publish_package<S, E>(
        &self,
        query: PublishQuery,
        upload: S,
    ) -> FleetResult<Package>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let trust = self.trust.clone().ok_or_else(|| {
            FleetError::Unavailable("no trusted publisher keys configured (--trusted-keys)".into())
        })?;
        check_publish_options(&query)?;
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
        if !version::is_valid(&version) {
            return Err(FleetError::Unverifiable(format!(
                "manifest version {version:?} is not a release version"
            )));
        }
        let _writing = self.write_lock.lock().await;
        if self.catalogue().app(&app_id).is_none() {
            return Err(FleetError::NotFound(format!(
                "application {app_id} (named by the payload manifest)"
            )));
        }
        let pkg = Package {
            id: new_id(),
            app_id: app_id.clone(),
            version: version.clone(),
            arch: arch.clone(),
            kind: kind_name(info.kind()).to_owned(),
            filename: query
                .filename
                .unwrap_or_else(|| format!("{app_id}-{version}-{arch}.payload")),
            size: received.size,
            sha1_base64: base64::engine::general_purpose::STANDARD.encode(received.sha1),
            sha256_hex: hex::encode(received.sha256),
            external_url: query.external_url,
            created_at: self.now(),
        };
        if pkg.external_url.is_none() {
            self.blobs
                .commit(received)
                .map_err(|e| FleetError::Internal(e.to_string()))?;
        }
        let mut act = activity(
            "package_published",
            Some(&app_id),
            format!(
                "package {version} ({arch}) published, signed by {}",
                hex::encode(info.signer.0)
            ),
        );
        act.version = Some(version);
        act.severity = "success";
        self.store.insert_package(&pkg, &act).await?;
        self.reload().await?;
        Ok(pkg)
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
