//! Installing an offered update into the inactive slot, as an explicit sequence of named steps
//! (RAUC style), in the order [`Installer::install`] runs them:
//!
//! 1. [`Installer::check_compatibility`]: version policy (no downgrade unless marked and
//!    allowed, not deny-listed) and trusted keys present (fail closed).
//! 2. [`Installer::mark_target_unbootable`]: the inactive slot gets priority 0, tries 0 —
//!    after the observer persisted that the slot now holds an unfinished install of the
//!    offered version ([`Observer::claim_target`]), so a state file never names a staged
//!    update whose slot no longer boots.
//! 3. [`Installer::stream_payload`]: the payload is streamed from its URL through the
//!    `payloads` applier into the inactive slot's byte range, in bounded memory; its signed
//!    prefix is verified (trusted key, app id, arch, board, version, slot size) before data is
//!    written; a delta payload (one whose verified manifest names a source, [`PayloadKind`])
//!    also copies extents of the **active** slot, opened read-only ([`BootBackend::open_source`]),
//!    each checked against its signed SHA-256 before it is written, and must have been built from
//!    the running version; a checkpoint (applier checkpoint + running SHA-256) is persisted at most every
//!    `install.checkpoint_interval`; an interrupted download resumes with HTTP `Range` (the
//!    prefix again, then from the checkpoint; a server ignoring `Range` sends everything, and
//!    the bytes before the checkpoint are discarded unwritten); after `install.start_over_after` failed attempts
//!    on one checkpoint it starts over; the next URL is tried after `attempts_per_url`.
//! 4. [`Installer::verify`]: size and SHA-256 announced by Omaha, every operation written, the
//!    slot re-read and its SHA-256 checked against the signed manifest.
//! 5. [`Installer::mark_target_active`]: the slot becomes the next boot's (highest priority,
//!    `boot.tries` tries, not successful).
//!
//! The booted slot is never opened for writing: the only write handle comes from
//! [`BootBackend::target_slot`]; a delta's source is a read-only [`payloads::Source`].

pub mod compat;
pub(crate) mod download;
pub mod error;
pub mod hasher;
mod stream;

use std::collections::BTreeSet;

use payloads::{Applier, TrustStore};
use serde::{Deserialize, Serialize};

pub use error::{InstallError, Refusal, platte_codes};
use hasher::HashState;

use crate::boot::{BootBackend, SlotId, TargetSlot};
use crate::config::Settings;
use crate::identity::Identity;
use crate::omaha_client::Offer;
use crate::state::StateError;

/// What is persisted (in the state's `checkpoint`) to resume an interrupted download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRecord {
    /// Version being installed.
    pub version: String,
    /// Payload SHA-256 announced by Omaha (hex).
    pub payload_sha256: String,
    /// Payload size announced by Omaha.
    pub payload_size: u64,
    /// Slot being written.
    pub slot: SlotId,
    /// The applier's checkpoint.
    pub applier: payloads::Checkpoint,
    /// The whole-payload SHA-256 state, covering bytes `0..hash.len`.
    pub hash: HashState,
    /// Failed attempts since this checkpoint last advanced.
    pub failures: u32,
}

impl ResumeRecord {
    /// Whether this record belongs to `offer` written into `slot`.
    pub fn matches(&self, offer: &Offer, slot: SlotId) -> bool {
        self.version == offer.version
            && self.payload_sha256 == hex::encode(offer.sha256)
            && self.payload_size == offer.size
            && self.slot == slot
    }
}

/// What the verified payload is: it decides whether the active slot is read (a delta), not the
/// offer's `IsDeltaPayload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadKind {
    /// A full image: the active slot is not read.
    Full,
    /// A delta: its SOURCE_COPY operations read the active slot, which must hold
    /// `source_version`'s image.
    Delta {
        /// The version the delta was built from (the signed manifest's `source_version`).
        source_version: String,
    },
}

impl PayloadKind {
    /// The kind of a verified payload.
    pub fn of(info: &payloads::PayloadInfo) -> Self {
        match &info.manifest.source {
            Some(source) => PayloadKind::Delta {
                source_version: source.version.clone(),
            },
            None => PayloadKind::Full,
        }
    }

    /// Whether it is a delta.
    pub fn is_delta(&self) -> bool {
        matches!(self, PayloadKind::Delta { .. })
    }
}

/// Steps reported to the caller while installing (for events and status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The download is about to start (Omaha event 13/1).
    DownloadStarted,
    /// The payload was written and verified (Omaha event 14/1).
    DownloadVerified,
    /// The slot is marked to boot next (Omaha event 3/1).
    SlotActivated,
}

/// The caller's side of an install: reports and checkpoint persistence.
pub trait Observer {
    /// A step was reached.
    fn step(&mut self, step: Step) -> impl Future<Output = ()>;
    /// Download progress: payload bytes received of `total`.
    fn progress(&mut self, received: u64, total: u64);
    /// The payload's signed prefix was verified (or verified again when resuming): what it is.
    fn payload_verified(&mut self, kind: &PayloadKind);
    /// Persists the resume record (`None` clears it).
    fn save_resume(&mut self, record: Option<&ResumeRecord>) -> Result<(), StateError>;
    /// Persists that the target `slot` is about to be overwritten with `version` (an unfinished
    /// install of it, keeping a resume record of the same install): called before the slot is
    /// made unbootable, so nothing persisted claims the slot still holds what it held.
    fn claim_target(&mut self, version: &str, slot: SlotId) -> Result<(), StateError>;
    /// The claimed slot could not be made unbootable, so it was not touched: persists again
    /// what it held before [`Observer::claim_target`].
    fn release_target(&mut self) -> Result<(), StateError>;
}

/// The result of an install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Version installed.
    pub version: String,
    /// Slot written.
    pub slot: SlotId,
    /// Payload bytes downloaded by this install (including a re-fetched prefix).
    pub downloaded: u64,
    /// Whether it continued from a checkpoint.
    pub resumed: bool,
    /// Payload bytes a server that ignored `Range` sent again (answering `200` to a resumed
    /// request) and that were discarded unwritten: they were already in the slot.
    pub discarded: u64,
    /// What the payload was (a delta read the active slot).
    pub kind: PayloadKind,
}

/// Everything an install needs.
pub struct Installer<'a> {
    /// This host.
    pub identity: &'a Identity,
    /// Settings (`[install]`, `[boot]`, `[updates]`).
    pub settings: &'a Settings,
    /// The A/B slots.
    pub backend: &'a dyn BootBackend,
    /// The one HTTP client.
    pub http: &'a reqwest::Client,
    /// Current time (Unix seconds) for the payload's expiry check.
    pub now_unix: u64,
}

/// A fully streamed payload, before the final verification.
pub struct Streamed {
    applier: Applier,
    hash: [u8; 32],
    received: u64,
    downloaded: u64,
    resumed: bool,
    discarded: u64,
}

impl Installer<'_> {
    /// Runs the whole sequence (see the module documentation).
    pub async fn install<O: Observer>(
        &self,
        offer: &Offer,
        deny_list: &BTreeSet<String>,
        resume: Option<ResumeRecord>,
        obs: &mut O,
    ) -> Result<Installed, InstallError> {
        let trust = self.check_compatibility(offer, deny_list)?;
        let target = self.backend.target_slot()?;
        obs.claim_target(&offer.version, target.slot())?;
        if let Err(e) = self.mark_target_unbootable(&target) {
            // Untouched: the slot still holds (and may still boot) what it held before.
            if let Err(released) = obs.release_target() {
                tracing::error!(error = %released, "could not record that the slot was left as it was");
            }
            return Err(e);
        }
        obs.step(Step::DownloadStarted).await;
        let streamed = self
            .stream_payload(offer, &trust, &target, resume, obs)
            .await?;
        let (downloaded, resumed, discarded) =
            (streamed.downloaded, streamed.resumed, streamed.discarded);
        let verified = self.verify(offer, streamed);
        // Verified or bad: either way the checkpoint has served (a bad payload is not resumed,
        // nor a delta that does not apply to the active slot).
        if verified.as_ref().is_ok()
            || verified
                .as_ref()
                .is_err_and(|e| e.is_bad_payload() || e.is_source_mismatch())
        {
            obs.save_resume(None)?;
        }
        let kind = verified?;
        obs.step(Step::DownloadVerified).await;
        self.mark_target_active(&target)?;
        obs.step(Step::SlotActivated).await;
        Ok(Installed {
            version: offer.version.clone(),
            slot: target.slot(),
            downloaded,
            resumed,
            discarded,
            kind,
        })
    }

    /// Step 1: policy and trust checks before any slot is touched.
    pub fn check_compatibility(
        &self,
        offer: &Offer,
        deny_list: &BTreeSet<String>,
    ) -> Result<TrustStore, InstallError> {
        compat::check_version(
            offer,
            &self.identity.os_version,
            self.settings.updates.allow_downgrade,
            deny_list,
        )?;
        let trust = compat::load_trust(&self.settings.updates.trusted_keys_dir)?;
        tracing::info!(
            version = %offer.version,
            app = %self.identity.app_id,
            keys = trust.len(),
            "update is compatible"
        );
        Ok(trust)
    }

    /// Step 2: the target slot is made unbootable before it is written.
    pub fn mark_target_unbootable(&self, target: &TargetSlot) -> Result<(), InstallError> {
        self.backend.mark_unbootable(target)?;
        tracing::info!(slot = %target.slot(), "target slot marked unbootable");
        Ok(())
    }

    /// Step 3: streams the payload into the target: download attempts over the offer's URLs,
    /// resuming from the last checkpoint (the private `stream` module).
    pub async fn stream_payload<O: Observer>(
        &self,
        offer: &Offer,
        trust: &TrustStore,
        target: &TargetSlot,
        resume: Option<ResumeRecord>,
        obs: &mut O,
    ) -> Result<Streamed, InstallError> {
        stream::stream_payload(self, offer, trust, target, resume, obs).await
    }

    /// Step 4: announced size and SHA-256, then the applier's final check (every operation
    /// written, target re-read and hashed against the signed manifest). Returns what the
    /// payload was.
    pub fn verify(&self, offer: &Offer, s: Streamed) -> Result<PayloadKind, InstallError> {
        if s.received != offer.size {
            return Err(InstallError::SizeMismatch {
                announced: offer.size,
                found: format!("{} bytes were received", s.received),
            });
        }
        if s.hash != offer.sha256 {
            return Err(InstallError::HashMismatch {
                announced: hex::encode(offer.sha256),
                found: hex::encode(s.hash),
            });
        }
        let applied = s.applier.finish()?;
        let kind = PayloadKind::of(&applied.info);
        tracing::info!(
            version = %offer.version,
            target_sha256 = %applied.target_sha256,
            signer = %applied.info.signer,
            delta = kind.is_delta(),
            "payload written and verified"
        );
        Ok(kind)
    }

    /// Step 5: the target becomes the slot to boot next.
    pub fn mark_target_active(&self, target: &TargetSlot) -> Result<(), InstallError> {
        self.backend.mark_active(target, self.settings.boot.tries)?;
        tracing::info!(slot = %target.slot(), tries = self.settings.boot.tries, "target slot marked active for the next boot");
        Ok(())
    }
}
