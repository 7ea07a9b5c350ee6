//! A package's delta payloads: signed Platte payloads (format version 2) that build the
//! package's image from an earlier version's, one per source version. A delta is uploaded like
//! any payload (`POST /packages`): verified against the trusted publisher keys, then linked to
//! its full package — the one of its application, version and arch in Platte's format, or the
//! one `delta_of` names — once its target image is known to be that package's (compared with
//! the full payload's signed manifest when the full payload is hosted here). Deltas are always
//! hosted by this server, under their own codebase. The update check offers one instead of the
//! full payload only to a machine that runs exactly its source version and says it can take
//! deltas ([`crate::service`]).

use std::path::PathBuf;
use std::sync::Arc;

use super::{PublishQuery, valid_filename};
use crate::blobs::Received;
use crate::fleet::packages::publish::Checked;
use crate::fleet::{Fleet, FleetError, FleetResult, activity};
use crate::model::{Package, PackageDelta, PackageFormat};
use crate::version;

/// What a verified delta payload's manifest says it applies to and builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaFacts {
    /// The version whose image it reads.
    pub source_version: String,
    /// SHA-256 of the image it builds.
    pub target_sha256: payloads::Sha256Digest,
}

impl Fleet {
    /// Links a verified, received delta payload to its full package and stores it; returns
    /// the full package with its deltas.
    pub(super) async fn record_delta(
        &self,
        query: PublishQuery,
        checked: Checked,
        facts: DeltaFacts,
        received: Received,
    ) -> FleetResult<Package> {
        if query.external_url.is_some() {
            return Err(FleetError::Invalid(
                "a delta payload is hosted by this server: publish it without external_url".into(),
            ));
        }
        if !version::is_valid(&facts.source_version) {
            return Err(FleetError::Unverifiable(format!(
                "delta source version {:?} is not a release version",
                facts.source_version
            )));
        }
        if facts.source_version == checked.version {
            return Err(FleetError::Unverifiable(format!(
                "delta from {v} to {v}: its source and target are the same version",
                v = checked.version
            )));
        }
        let full = self.full_package_of(&checked, query.delta_of.as_deref())?;
        if full
            .deltas
            .iter()
            .any(|d| d.source_version == facts.source_version)
        {
            return Err(FleetError::Conflict(format!(
                "package {} already has a delta from {}: delete it first",
                full.id, facts.source_version
            )));
        }
        let compared = self.check_delta_target(&full, &facts).await?;
        let filename = query.filename.unwrap_or_else(|| {
            format!(
                "{}-{}-to-{}-{}.payload",
                full.app_id, facts.source_version, full.version, full.arch
            )
        });
        if !valid_filename(&filename) {
            return Err(FleetError::Invalid(format!(
                "invalid filename {filename:?}"
            )));
        }
        let digests = super::FileDigests::of(&received.sha1, &received.sha256);
        let delta = PackageDelta {
            source_version: facts.source_version.clone(),
            filename,
            size: received.size,
            sha1_base64: digests.sha1_base64,
            sha256_hex: digests.sha256_hex,
            created_at: self.now(),
        };
        // Held until the file is in use or removed: a concurrent delete of the same content
        // must not remove the file between this commit and the row that uses it.
        let writing = self.write_lock.lock().await;
        self.blobs
            .commit(received)
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        let mut act = activity(
            "package_delta_published",
            Some(&full.app_id),
            format!(
                "delta {} → {} ({}) published for package {}, {}; {}",
                facts.source_version,
                full.version,
                full.arch,
                full.id,
                checked.provenance,
                compared
            ),
        );
        act.version = Some(full.version.clone());
        act.severity = "success";
        let stored = self.store.add_package_delta(&full.id, &delta, &act).await;
        if let Err(e) = stored {
            // The file stays only if something else has the same content.
            self.reload().await?;
            self.remove_unused_blob(&delta.sha256_hex)?;
            return Err(e.into());
        }
        self.reload().await?;
        drop(writing);
        self.catalogue()
            .package(&full.id)
            .cloned()
            .ok_or_else(|| FleetError::NotFound(format!("package {} (deleted meanwhile)", full.id)))
    }

    /// Removes package `id`'s delta from `source_version`, and its file unless something else
    /// has the same content.
    pub async fn delete_package_delta(&self, id: &str, source_version: &str) -> FleetResult<()> {
        let pkg = self
            .catalogue()
            .package(id)
            .cloned()
            .ok_or_else(|| FleetError::NotFound(format!("package {id}")))?;
        let Some(delta) = pkg
            .deltas
            .iter()
            .find(|d| d.source_version == source_version)
        else {
            return Err(FleetError::NotFound(format!(
                "delta from {source_version} of package {id}"
            )));
        };
        let mut act = activity(
            "package_delta_deleted",
            Some(&pkg.app_id),
            format!(
                "delta {source_version} → {} ({}) of package {id} deleted",
                pkg.version, pkg.arch
            ),
        );
        act.version = Some(pkg.version.clone());
        // Held from the delete to the file's removal: a concurrent publish of the same content
        // waits, and then commits the file again.
        let _writing = self.write_lock.lock().await;
        self.store
            .delete_package_delta(id, source_version, &act)
            .await?;
        self.reload().await?;
        self.remove_unused_blob(&delta.sha256_hex)
    }

    /// The full package a delta of `checked` belongs to: `named`, or the one package of its
    /// application, version and arch in Platte's format.
    fn full_package_of(&self, checked: &Checked, named: Option<&str>) -> FleetResult<Package> {
        let cat = self.catalogue();
        let fits = |p: &Package| {
            p.app_id == checked.app_id
                && p.version == checked.version
                && p.arch == checked.arch
                && p.format == PackageFormat::Platte
        };
        if let Some(id) = named {
            let p = cat
                .package(id)
                .ok_or_else(|| FleetError::NotFound(format!("package {id} (delta_of)")))?;
            if !fits(p) {
                return Err(FleetError::Conflict(format!(
                    "the delta builds {} {} ({}), and package {id} is {} {} ({}, {})",
                    checked.app_id,
                    checked.version,
                    checked.arch,
                    p.app_id,
                    p.version,
                    p.arch,
                    p.format.as_str()
                )));
            }
            return Ok(p.clone());
        }
        let mut matching = cat.data().packages.iter().filter(|p| fits(p));
        match (matching.next(), matching.next()) {
            (Some(p), None) => Ok(p.clone()),
            (None, _) => Err(FleetError::NotFound(format!(
                "full package of {} {} ({}) for this delta: publish the full payload first",
                checked.app_id, checked.version, checked.arch
            ))),
            (Some(_), Some(_)) => Err(FleetError::Conflict(format!(
                "several packages of {} {} ({}): name the full package with delta_of",
                checked.app_id, checked.version, checked.arch
            ))),
        }
    }

    /// Checks that the delta builds `full`'s image: compares the delta's target with the
    /// target named in the full payload's signed manifest (its prefix, read from the start of
    /// the hosted file and verified again). Returns what was compared, for the activity feed.
    async fn check_delta_target(&self, full: &Package, facts: &DeltaFacts) -> FleetResult<String> {
        if full.external_url.is_some() {
            return Ok("target image not compared: the full payload is hosted elsewhere".into());
        }
        let trust = self.trust.clone().ok_or_else(|| {
            FleetError::Unavailable("no trusted publisher keys configured (--trusted-keys)".into())
        })?;
        let path = self.blobs.path_of(&full.sha256_hex);
        let now_s = u64::try_from(self.now()).unwrap_or(0);
        let target = tokio::task::spawn_blocking(move || full_payload_target(path, &trust, now_s))
            .await
            .map_err(|e| FleetError::Internal(format!("reading the full payload: {e}")))??;
        if target != facts.target_sha256 {
            return Err(FleetError::Conflict(format!(
                "the delta builds image {}, and package {} ({}) holds image {target}",
                facts.target_sha256, full.id, full.version
            )));
        }
        Ok("its target image is the full payload's".to_owned())
    }
}

/// The target image SHA-256 named by the signed manifest of the full payload at `path` (its
/// prefix read and its signatures verified; the data is not read).
fn full_payload_target(
    path: PathBuf,
    trust: &Arc<payloads::TrustStore>,
    now_s: u64,
) -> FleetResult<payloads::Sha256Digest> {
    let file = std::fs::File::open(&path).map_err(|e| {
        FleetError::Internal(format!("reading the full payload {}: {e}", path.display()))
    })?;
    let (prefix, _) = payloads::format::read_prefix(&mut std::io::BufReader::new(file))
        .map_err(|e| FleetError::Internal(format!("the full payload {}: {e}", path.display())))?;
    let info = prefix.verify(trust, now_s).map_err(|e| {
        FleetError::Unverifiable(format!("the full payload this delta is for: {e}"))
    })?;
    Ok(info.target_sha256())
}
