//! Publishing a file uploaded to this server: checked by its format before anything is stored
//! (a Platte payload's signatures against the trusted publisher keys and its data against its
//! manifest; an update_engine payload's CrAU header), then stored content-addressed. The checks
//! and the recording of a new package are shared with [`super::reference`].

use std::path::PathBuf;
use std::sync::Arc;

use hyper::body::Bytes;

use super::{
    ActionOptions, FileDigests, PublishQuery, check_http_url, receive_error, valid_filename,
};
use crate::blobs::Received;
use crate::fleet::{Fleet, FleetError, FleetResult, activity, new_id};
use crate::model::{Package, PackageFile, PackageFormat, normalize_appid, normalize_arch};
use crate::version;

/// The application, version and arch a publisher names: an update_engine payload names none
/// of them itself, so all three are required with it; a Platte payload's manifest names them,
/// and what is given here must match.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    /// Application id.
    pub app: Option<String>,
    /// Release version.
    pub version: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
}

/// How a file being published is checked, decided before it is received.
pub(super) enum PayloadCheck {
    /// A Platte payload: verified against these trusted publisher keys; its manifest must
    /// match what was named.
    Verify(Arc<payloads::TrustStore>, Naming),
    /// An update_engine payload: its CrAU header checked; published as this application,
    /// version and arch.
    Named {
        app_id: String,
        version: String,
        arch: String,
    },
}

/// What a published file says about itself once checked.
pub(super) struct Checked {
    pub(super) app_id: String,
    pub(super) version: String,
    pub(super) arch: String,
    pub(super) kind: String,
    pub(super) metadata_size: Option<u64>,
    /// How it was checked, for the activity feed.
    pub(super) provenance: String,
    /// A Platte delta payload: what it applies to and what it builds.
    pub(super) delta: Option<super::deltas::DeltaFacts>,
}

/// A package about to be recorded: its checked file and where it is served from.
pub(super) struct NewPackage {
    pub(super) checked: Checked,
    pub(super) format: PackageFormat,
    pub(super) filename: Option<String>,
    pub(super) size: u64,
    pub(super) digests: FileDigests,
    /// Codebase URL when hosted elsewhere.
    pub(super) external_url: Option<String>,
    pub(super) action: ActionOptions,
    pub(super) files: Vec<PackageFile>,
    /// Received files to move into the store (hosted packages): the payload and extra files.
    pub(super) to_store: Vec<Received>,
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
    if let Some(u) = &q.external_url {
        check_http_url("external_url", u)?;
    }
    Ok(())
}

/// Checks that the `size`-byte file at `path` is an update_engine payload: a CrAU header whose
/// metadata fits in the file ([`payloads::crau::parse_header`]).
async fn check_update_engine_payload(
    path: PathBuf,
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
        delta: None,
    })
}

impl Fleet {
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
        check_publish_options(&query)?;
        let naming = Naming {
            app: query.app.clone(),
            version: query.version.clone(),
            arch: query.arch.clone(),
        };
        let check = self.payload_check(format, naming)?;
        let received = self
            .blobs
            .receive(upload, self.max_package_size)
            .await
            .map_err(receive_error)?;
        let checked = self.check_received(check, &received).await?;
        if let Some(facts) = checked.delta.clone() {
            return self.record_delta(query, checked, facts, received).await;
        }
        let size = received.size;
        let digests = FileDigests::of(&received.sha1, &received.sha256);
        let external_url = query.external_url.clone();
        let to_store = if external_url.is_none() {
            vec![received]
        } else {
            Vec::new()
        };
        self.record_package(NewPackage {
            checked,
            format,
            filename: query.filename,
            size,
            digests,
            external_url,
            action: ActionOptions {
                metadata_signature_rsa: query.metadata_signature_rsa,
                deadline: query.deadline,
                is_delta: query.is_delta,
                disable_payload_backoff: query.disable_payload_backoff,
                needs_admin: query.needs_admin,
            },
            files: Vec::new(),
            to_store,
        })
        .await
    }

    /// How a file of `format` is to be checked; refuses before anything is received when the
    /// server cannot check it or the naming is incomplete.
    pub(super) fn payload_check(
        &self,
        format: PackageFormat,
        naming: Naming,
    ) -> FleetResult<PayloadCheck> {
        match format {
            PackageFormat::Platte => {
                let trust = self.trust.clone().ok_or_else(|| {
                    FleetError::Unavailable(
                        "no trusted publisher keys configured (--trusted-keys)".into(),
                    )
                })?;
                Ok(PayloadCheck::Verify(trust, naming))
            }
            PackageFormat::UpdateEngine => {
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
                Ok(PayloadCheck::Named {
                    app_id: normalize_appid(&need("app", &naming.app)?),
                    version: need("version", &naming.version)?,
                    arch: normalize_arch(&need("arch", &naming.arch)?),
                })
            }
        }
    }

    /// Checks a received file as `check` says.
    pub(super) async fn check_received(
        &self,
        check: PayloadCheck,
        received: &Received,
    ) -> FleetResult<Checked> {
        let path = received.path.to_path_buf();
        match check {
            PayloadCheck::Verify(trust, naming) => {
                self.check_platte_payload(path, trust, &naming).await
            }
            PayloadCheck::Named {
                app_id,
                version,
                arch,
            } => check_update_engine_payload(path, received.size, app_id, version, arch).await,
        }
    }

    /// Records a new package (its application must exist and its version be a release
    /// version): moves its received files into the store, then inserts it with a
    /// `package_published` activity entry.
    pub(super) async fn record_package(&self, new: NewPackage) -> FleetResult<Package> {
        let NewPackage {
            checked,
            format,
            filename,
            size,
            digests,
            external_url,
            action,
            files,
            to_store,
        } = new;
        let Checked {
            app_id,
            version,
            arch,
            kind,
            metadata_size,
            provenance,
            delta,
        } = checked;
        if let Some(d) = delta {
            return Err(FleetError::Unverifiable(format!(
                "payload rejected: it is a delta from version {}; upload it to be linked to its \
                 full package (`update-server package publish`)",
                d.source_version
            )));
        }
        if !version::is_valid(&version) {
            return Err(FleetError::Unverifiable(format!(
                "version {version:?} is not a release version"
            )));
        }
        let default_filename = match format {
            PackageFormat::Platte => format!("{app_id}-{version}-{arch}.payload"),
            PackageFormat::UpdateEngine => "update.gz".to_owned(),
        };
        let mut pkg = Package {
            id: new_id(),
            app_id: app_id.clone(),
            version: version.clone(),
            arch: arch.clone(),
            kind,
            filename: filename.unwrap_or(default_filename),
            size,
            sha1_base64: digests.sha1_base64,
            sha256_hex: digests.sha256_hex,
            external_url,
            created_at: self.now(),
            format,
            metadata_size,
            metadata_signature_rsa: None,
            deadline: None,
            is_delta: false,
            disable_payload_backoff: true,
            needs_admin: false,
            files,
            deltas: Vec::new(),
        };
        action.apply(&mut pkg)?;
        let _writing = self.write_lock.lock().await;
        if self.catalogue().app(&app_id).is_none() {
            return Err(FleetError::NotFound(format!(
                "application {app_id} (named by the payload)"
            )));
        }
        for r in to_store {
            self.blobs
                .commit(r)
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
    /// what `naming` expects.
    async fn check_platte_payload(
        &self,
        path: PathBuf,
        trust: Arc<payloads::TrustStore>,
        naming: &Naming,
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

        let delta = info.source().map(|s| super::deltas::DeltaFacts {
            source_version: s.version.clone(),
            target_sha256: info.target_sha256(),
        });
        let app_id = normalize_appid(info.app_id());
        let arch = normalize_arch(info.arch());
        let version = info.version().to_owned();
        for (what, want, got) in [
            ("app", naming.app.as_deref().map(normalize_appid), &app_id),
            ("version", naming.version.clone(), &version),
            ("arch", naming.arch.as_deref().map(normalize_arch), &arch),
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
            delta,
        })
    }
}
