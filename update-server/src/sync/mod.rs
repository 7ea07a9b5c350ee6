//! Following an upstream Omaha server (`[sync]`, `update-server sync`): for each configured
//! application, channel and architecture, this server asks the upstream (Flatcar's public
//! server, another Platte, any Omaha server) as a client would, and makes each release it offers
//! a local package, by reference or hosted here, with its extra files.
//!
//! - **follow**: the local channel moves to the new version at once;
//! - **import**: the package is only added; an operator promotes it with `channel set`.
//!
//! A pass is idempotent: a release already published locally (same application, version, arch
//! and format) is not published again, and a channel already pointing at it is left alone, so
//! an interrupted pass is simply run again. A hosted release is downloaded, resumably, and
//! checked against the upstream's sizes and digests before anything becomes visible
//! ([`crate::fleet::packages::reference`]). In the background one replica at a time runs a pass
//! (the `sync` lease); every replica reads the recorded outcome of each channel
//! ([`crate::store::SyncState`]).
//!
//! The protocol side (the request, reading the answer) is [`upstream`], without I/O.

pub mod config;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use sha2::Digest as _;
use utoipa::ToSchema;

pub use config::{ChannelSpec, Mode, SyncFile, SyncSettings};

use crate::clock::Clock;
use crate::fleet::channels::{CreateChannel, UpdateChannel};
use crate::fleet::packages::reference::{FileReference, PackageReference};
use crate::fleet::{Fleet, FleetError, activity};
use crate::metrics::Metrics;
use crate::store::SyncState;
use crate::store::retention::{LeaseOutcome, RetentionStore};
use upstream::{OfferedRelease, UpstreamQuery};

/// The lease a background pass holds, so one replica at a time runs it.
pub const LEASE: &str = "sync";
/// How long the lease lasts unless given back (a pass downloading large payloads may take a
/// while; a replica that dies loses it after this).
const LEASE_TTL_SECS: i64 = 3600;
/// How long the upstream may take to answer a check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read from the upstream.
const MAX_ANSWER: usize = 1 << 20;

/// What one channel's check did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ChannelOutcome {
    /// The upstream offers nothing newer than the last release it offered (`noupdate`).
    NothingNew,
    /// The offered release was already here and the channel already as it should be.
    UpToDate {
        /// The release.
        version: String,
    },
    /// The offered release was published here (import mode: the channel is left as it is).
    Imported {
        /// The release.
        version: String,
        /// Its local package.
        package_id: String,
    },
    /// The channel was moved to the offered release (follow mode), published first if new.
    Followed {
        /// The release.
        version: String,
        /// Its local package.
        package_id: String,
        /// The version the channel pointed at before, if any.
        from: Option<String>,
    },
    /// The check failed; the next pass tries again.
    Failed {
        /// Why.
        error: String,
    },
}

impl ChannelOutcome {
    /// The metric label.
    fn label(&self) -> &'static str {
        match self {
            ChannelOutcome::NothingNew => "nothing_new",
            ChannelOutcome::UpToDate { .. } => "up_to_date",
            ChannelOutcome::Imported { .. } => "imported",
            ChannelOutcome::Followed { .. } => "followed",
            ChannelOutcome::Failed { .. } => "failed",
        }
    }
}

/// One channel's line of a pass's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ChannelReport {
    /// Application.
    pub app: String,
    /// Local channel.
    pub channel: String,
    /// Architecture.
    pub arch: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: ChannelOutcome,
}

/// What `GET /api/v1/sync` shows: the configuration and each channel's last recorded check.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SyncStatus {
    /// The upstream's Omaha endpoint (`None`: sync is not configured).
    pub upstream: Option<String>,
    /// Seconds between background passes (0: only on demand).
    pub interval_secs: u64,
    /// Each configured channel with its last check.
    pub channels: Vec<ChannelStatus>,
}

/// A configured channel and its last check.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChannelStatus {
    /// What is followed.
    pub spec: ChannelSpec,
    /// The last recorded check (by any replica), if any.
    pub last: Option<SyncState>,
}

/// Labels of the sync check counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    app: String,
    channel: String,
    arch: String,
    outcome: String,
}

/// Runs sync passes.
#[derive(Debug)]
pub struct Syncer {
    settings: Option<SyncSettings>,
    http: reqwest::Client,
    /// This installation's secret seed for the machine ids it shows the upstream.
    seed: String,
    clock: Arc<dyn Clock>,
    leases: Arc<dyn RetentionStore>,
    /// One pass at a time in this process.
    running: tokio::sync::Mutex<()>,
    checks: Family<CheckLabels, Counter>,
    holder: String,
}

impl Syncer {
    /// A syncer for `settings` (`None`: not configured; passes are refused).
    pub fn new(
        settings: Option<SyncSettings>,
        seed: String,
        clock: Arc<dyn Clock>,
        leases: Arc<dyn RetentionStore>,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(CHECK_TIMEOUT)
            .build()?;
        let checks = Family::default();
        metrics.register(
            "sync_checks",
            "Upstream sync checks, by application, channel, architecture and outcome",
            checks.clone(),
        );
        Ok(Self {
            settings,
            http,
            seed,
            clock,
            leases,
            running: tokio::sync::Mutex::new(()),
            checks,
            holder: format!("{}-{}", std::process::id(), rand_suffix()),
        })
    }

    /// The configuration and every channel's last recorded check.
    pub async fn status(&self, fleet: &Fleet) -> Result<SyncStatus, FleetError> {
        let states = fleet.store.sync_states().await?;
        let Some(s) = &self.settings else {
            return Ok(SyncStatus {
                upstream: None,
                interval_secs: 0,
                channels: Vec::new(),
            });
        };
        let channels = s
            .channels
            .iter()
            .map(|spec| ChannelStatus {
                last: states.iter().find(|st| same_channel(st, spec)).cloned(),
                spec: spec.clone(),
            })
            .collect();
        Ok(SyncStatus {
            upstream: Some(s.upstream.clone()),
            interval_secs: s.interval.as_secs(),
            channels,
        })
    }

    /// Runs one pass now, holding the `sync` lease, so no other process (a replica's
    /// background pass, another operator's `update-server sync`) runs one meanwhile; refused
    /// ([`FleetError::Conflict`], naming the holder) while another holds it.
    pub async fn run_leased(&self, fleet: &Fleet) -> Result<Vec<ChannelReport>, FleetError> {
        if self.settings.is_none() {
            return self.run_once(fleet).await;
        }
        let now = self.clock.now();
        match self
            .leases
            .take_lease(LEASE, &self.holder, now, now.saturating_add(LEASE_TTL_SECS))
            .await?
        {
            LeaseOutcome::Taken => {}
            LeaseOutcome::Held { holder, expires_at } => {
                return Err(FleetError::Conflict(format!(
                    "a sync pass is running in server process {holder} (its lease ends at {})",
                    crate::clock::format_utc(expires_at)
                )));
            }
        }
        let report = self.run_once(fleet).await;
        if let Err(e) = self.leases.release_lease(LEASE, &self.holder).await {
            tracing::warn!(error = %e, "giving the sync lease back failed");
        }
        report
    }

    /// Runs one pass over every configured channel now, in this process (callers hold the
    /// lease: [`Syncer::run_leased`]).
    pub async fn run_once(&self, fleet: &Fleet) -> Result<Vec<ChannelReport>, FleetError> {
        let Some(settings) = &self.settings else {
            return Err(FleetError::Unavailable(
                "sync is not configured (the [sync] section of the config file)".into(),
            ));
        };
        let _one = self.running.lock().await;
        let states = fleet.store.sync_states().await?;
        let mut report = Vec::with_capacity(settings.channels.len());
        for spec in &settings.channels {
            let last_offered = states
                .iter()
                .find(|s| same_channel(s, spec))
                .and_then(|s| s.upstream_version.as_deref())
                .unwrap_or(upstream::FIRST_VERSION);
            let outcome = match self
                .sync_channel(fleet, &settings.upstream, spec, last_offered)
                .await
            {
                Ok(o) => o,
                Err(e) => ChannelOutcome::Failed {
                    error: e.to_string(),
                },
            };
            self.record(fleet, spec, &outcome).await;
            report.push(ChannelReport {
                app: spec.app.clone(),
                channel: spec.channel.clone(),
                arch: spec.arch.clone(),
                outcome,
            });
        }
        Ok(report)
    }

    /// Checks one channel and acts on what the upstream offers.
    async fn sync_channel(
        &self,
        fleet: &Fleet,
        upstream_url: &str,
        spec: &ChannelSpec,
        last_offered: &str,
    ) -> Result<ChannelOutcome, FleetError> {
        let machine_id = self.machine_id(spec);
        let body = upstream::request(&UpstreamQuery {
            app: &spec.app,
            track: &spec.track,
            arch: &spec.arch,
            format: spec.format,
            machine_id: &machine_id,
            running: last_offered,
        });
        let answer = self.ask(upstream_url, body).await?;
        let offered = upstream::offered_release(&answer, &spec.app)
            .map_err(|e| FleetError::Unverifiable(e.to_string()))?;
        let Some(release) = offered else {
            return Ok(ChannelOutcome::NothingNew);
        };
        let (package_id, new) = match local_package(fleet, spec, &release)? {
            Some(id) => (id, false),
            None => match fleet.publish_reference(reference_of(spec, &release)).await {
                Ok(p) => (p.id, true),
                // Another replica's pass published it meanwhile.
                Err(FleetError::Conflict(e)) => match local_package(fleet, spec, &release)? {
                    Some(id) => (id, false),
                    None => return Err(FleetError::Conflict(e)),
                },
                Err(e) => return Err(e),
            },
        };
        let version = release.version;
        if spec.mode == Mode::Import {
            return Ok(if new {
                ChannelOutcome::Imported {
                    version,
                    package_id,
                }
            } else {
                ChannelOutcome::UpToDate { version }
            });
        }
        let from = self.point_channel(fleet, spec, &package_id).await?;
        Ok(match from {
            Some(from) => ChannelOutcome::Followed {
                version,
                package_id,
                from,
            },
            None => ChannelOutcome::UpToDate { version },
        })
    }

    /// Sends a check to the upstream and reads its answer (bounded).
    async fn ask(&self, url: &str, body: String) -> Result<Vec<u8>, FleetError> {
        let unreachable =
            |e: reqwest::Error| FleetError::Unverifiable(format!("asking the upstream {url}: {e}"));
        let mut resp = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "text/xml")
            .body(body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unreachable)?;
        let mut answer = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err(FleetError::Unverifiable(format!(
                    "the upstream's answer exceeds {MAX_ANSWER} bytes"
                )));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(answer)
    }

    /// Points the channel's pointer of the spec's format and arch at `package_id` (creating the
    /// channel if needed). Returns the version it pointed at before, or `None` when it already
    /// pointed there (`Some(None)`: it pointed at nothing).
    async fn point_channel(
        &self,
        fleet: &Fleet,
        spec: &ChannelSpec,
        package_id: &str,
    ) -> Result<Option<Option<String>>, FleetError> {
        let current = match fleet.channel(&spec.app, &spec.channel) {
            Ok(c) => c,
            Err(FleetError::NotFound(_)) => {
                fleet
                    .create_channel(
                        &spec.app,
                        CreateChannel {
                            name: spec.channel.clone(),
                            packages: Default::default(),
                            update_engine_packages: Default::default(),
                        },
                    )
                    .await?
            }
            Err(e) => return Err(e),
        };
        let before = current.pointers(spec.format).get(&spec.arch).cloned();
        if before.as_deref() == Some(package_id) {
            return Ok(None);
        }
        let from = before
            .as_deref()
            .and_then(|id| fleet.catalogue().package(id).map(|p| p.version.clone()));
        let pointer =
            std::collections::BTreeMap::from([(spec.arch.clone(), Some(package_id.to_owned()))]);
        let input = match spec.format {
            crate::model::PackageFormat::Platte => UpdateChannel {
                packages: pointer,
                ..UpdateChannel::default()
            },
            crate::model::PackageFormat::UpdateEngine => UpdateChannel {
                update_engine_packages: pointer,
                ..UpdateChannel::default()
            },
        };
        fleet
            .update_channel(&spec.app, &spec.channel, input)
            .await?;
        Ok(Some(from))
    }

    /// Records a channel's outcome: its state for `sync status`, the metric, and an activity
    /// entry when it newly fails (a failure repeated every pass is recorded once).
    async fn record(&self, fleet: &Fleet, spec: &ChannelSpec, outcome: &ChannelOutcome) {
        self.checks
            .get_or_create(&CheckLabels {
                app: spec.app.clone(),
                channel: spec.channel.clone(),
                arch: spec.arch.clone(),
                outcome: outcome.label().to_owned(),
            })
            .inc();
        let now = self.clock.now();
        let mut state = SyncState {
            app_id: spec.app.clone(),
            channel: spec.channel.clone(),
            arch: spec.arch.clone(),
            format: spec.format,
            checked_at: now,
            upstream_version: None,
            package_id: None,
            synced_at: Some(now),
            error: None,
        };
        match outcome {
            ChannelOutcome::NothingNew => {}
            ChannelOutcome::UpToDate { version } => state.upstream_version = Some(version.clone()),
            ChannelOutcome::Imported {
                version,
                package_id,
            }
            | ChannelOutcome::Followed {
                version,
                package_id,
                ..
            } => {
                state.upstream_version = Some(version.clone());
                state.package_id = Some(package_id.clone());
            }
            ChannelOutcome::Failed { error } => {
                state.synced_at = None;
                state.error = Some(error.clone());
                let before = fleet.store.sync_states().await.unwrap_or_default();
                let repeated = before
                    .iter()
                    .any(|s| same_channel(s, spec) && s.error.as_deref() == Some(error.as_str()));
                if !repeated {
                    let mut act = activity(
                        "sync_failed",
                        Some(&spec.app),
                        format!(
                            "sync of channel {} ({}) from {} failed: {error}",
                            spec.channel,
                            spec.arch,
                            self.settings.as_ref().map_or("", |s| s.upstream.as_str())
                        ),
                    );
                    act.severity = "error";
                    if let Err(e) = fleet.store.record_activity(&act).await {
                        tracing::warn!(error = %e, "recording a sync failure's activity entry failed");
                    }
                }
                tracing::warn!(app = %spec.app, channel = %spec.channel, arch = %spec.arch, error = %error, "sync check failed");
            }
        }
        if let Err(e) = fleet.store.record_sync_state(&state).await {
            tracing::warn!(error = %e, "recording a sync state failed");
        }
    }

    /// The machine id this installation shows the upstream for a channel: stable across passes
    /// and restarts, different per channel and per installation.
    fn machine_id(&self, spec: &ChannelSpec) -> String {
        let digest = sha2::Sha256::digest(
            format!(
                "{}\n{}\n{}\n{}\n{}\n{}",
                self.seed,
                spec.app,
                spec.channel,
                spec.track,
                spec.arch,
                spec.format.as_str()
            )
            .as_bytes(),
        );
        hex::encode(&digest[..16])
    }

    /// Runs a pass at start and then every interval (when one is set), holding the lease, until
    /// `shutdown` changes; `fleet` makes the operations' writes.
    pub fn spawn(
        self: Arc<Self>,
        fleet: impl Fn() -> Fleet + Send + Sync + 'static,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.settings.as_ref()?.interval;
        if every.is_zero() {
            return None;
        }
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => break,
                }
                let fleet = fleet();
                tokio::select! {
                    r = self.run_leased(&fleet) => match r {
                        Ok(_) => {}
                        Err(FleetError::Conflict(e)) => {
                            tracing::debug!(held = %e, "sync lease held elsewhere; skipping this pass");
                        }
                        Err(e) => tracing::warn!(error = %e, "sync pass failed"),
                    },
                    _ = shutdown.changed() => {
                        let _ = self.leases.release_lease(LEASE, &self.holder).await;
                        break;
                    }
                }
            }
        }))
    }
}

/// The local package of the offered release (same application, version, arch and format), if
/// any; refused when it is not that release as the channel wants it: other content, or hosted
/// elsewhere while the channel hosts its releases.
fn local_package(
    fleet: &Fleet,
    spec: &ChannelSpec,
    release: &OfferedRelease,
) -> Result<Option<String>, FleetError> {
    let cat = fleet.catalogue();
    let Some(p) = cat.data().packages.iter().find(|p| {
        p.app_id == spec.app
            && p.version == release.version
            && p.arch == spec.arch
            && p.format == spec.format
    }) else {
        return Ok(None);
    };
    if p.sha256_hex != hex::encode(release.payload.sha256) {
        return Err(FleetError::Conflict(format!(
            "version {} is published here as package {} with other content than the upstream's",
            p.version, p.id
        )));
    }
    if spec.host && p.external_url.is_some() {
        return Err(FleetError::Conflict(format!(
            "version {} is published here as package {} by reference to {}, but channel {} hosts \
             its releases: delete that package, or set host = false",
            p.version,
            p.id,
            p.external_url.as_deref().unwrap_or_default(),
            spec.channel
        )));
    }
    Ok(Some(p.id.clone()))
}

/// Whether `s` is the recorded state of `spec`'s channel.
fn same_channel(s: &SyncState, spec: &ChannelSpec) -> bool {
    s.app_id == spec.app
        && s.channel == spec.channel
        && s.arch == spec.arch
        && s.format == spec.format
}

/// A random suffix for this process's lease holder name.
fn rand_suffix() -> String {
    use rand_core::RngCore as _;
    let mut b = [0u8; 4];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The reference that publishes an offered release for `spec`.
fn reference_of(spec: &ChannelSpec, r: &OfferedRelease) -> PackageReference {
    let file = |f: &upstream::OfferedFile| FileReference {
        name: f.name.clone(),
        size: f.size,
        sha1: hex::encode(f.sha1),
        sha256: hex::encode(f.sha256),
    };
    PackageReference {
        format: spec.format,
        app: Some(spec.app.clone()),
        version: Some(r.version.clone()),
        arch: Some(spec.arch.clone()),
        url: format!("{}{}", r.codebase, r.payload.name),
        size: r.payload.size,
        sha1: hex::encode(r.payload.sha1),
        sha256: hex::encode(r.payload.sha256),
        metadata_size: r.metadata_size,
        metadata_signature_rsa: r.metadata_signature_rsa.clone(),
        deadline: r.deadline.clone(),
        is_delta: Some(r.is_delta),
        disable_payload_backoff: Some(r.disable_payload_backoff),
        needs_admin: None,
        files: r.files.iter().map(file).collect(),
        // A Platte payload is always verified; hosting downloads and checks everything.
        verify: spec.host || spec.format == crate::model::PackageFormat::Platte,
        host: spec.host,
    }
}
