//! Runtime extensions (systemd-sysext images such as `containerd` or `docker`), each its own
//! Omaha application with its own version, group, channel and rollout.
//!
//! - [`crate::config::extensions`]: `[extensions]` settings; [`state`]: `extensions.json` (atomic);
//!   [`compat`]: `os.versions` of the signed manifest; [`download`](mod@download): the verified download to
//!   `NAME-VERSION.raw`; [`images`]: image files and the `NAME.raw` link;
//!   [`activate`]: link switch → refresh → unit restarts → health, and rollback;
//!   [`systemd`]: `RestartUnit` over D-Bus; [`status`]: status, outcomes, readiness.
//!
//! [`Extensions`] is what the agent loop calls:
//!
//! - [`Extensions::app_requests`]: one `<app>` per enabled extension, added to the OS check
//!   request (`omaha_client::check_request_with`), carrying `ap="os=VERSION"`: the booted OS
//!   version, or the staged one while an OS update waits for its reboot;
//! - [`Extensions::handle_response`]: reads each extension's `<app>` of the answer. With no OS
//!   update staged, an offer is downloaded, checked against the booted OS and activated at once
//!   (any failure: previous image back, refresh, restart, `3/0`, version deny-listed). With an
//!   OS update staged, it is checked against the new OS version and staged: `NAME.raw` points at
//!   it, without a refresh, so the next boot merges it;
//! - [`Extensions::check`]: the same with a request of the extension apps only (after an OS
//!   update was staged, to fetch builds for it at once);
//! - [`Extensions::readiness`]: whether the OS reboot may go ahead;
//! - [`Extensions::reconcile`]: at start, finishes what a reboot or a crash left (promotes
//!   builds staged for the OS that booted, restores the previous image after an OS rollback,
//!   undoes an interrupted activation);
//! - [`Extensions::status`]: per-extension version and state.

pub mod activate;
pub mod compat;
pub mod download;
pub mod error;
pub mod images;
pub mod state;
pub mod status;
pub mod systemd;

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::path::PathBuf;

use omaha::{AppRequest, EventRequest, Response};

pub use crate::config::extensions::{
    ExtensionSettings, ExtensionsFragment, ExtensionsInputs, ExtensionsSettings,
};
pub use error::{ExtensionError, codes};
pub use status::{ExtensionOutcome, ExtensionState, ExtensionStatus, Outcome, Readiness};
pub use systemd::{Systemd, SystemdError};

use activate::Activator;
use compat::OsVersions;
use download::{DownloadRequest, download};
use state::{
    Activating, ExtensionRecord, ExtensionsState, ExtensionsStore, Image, NextBoot, Refused,
};

use crate::identity::Identity;
use crate::omaha_client::{self, Offer, OmahaClient, reported};
use crate::state::{LastError, StateError};
use crate::version;

/// Version sent for an extension with nothing installed.
pub const NOTHING_INSTALLED: &str = "0.0.0";

/// What the extensions share with the rest of the agent.
#[derive(Debug, Clone)]
pub struct ExtensionsEnv {
    /// The agent's state directory (`extensions.json` goes there).
    pub state_dir: PathBuf,
    /// Trusted payload keys (the OS payloads' trust store).
    pub trusted_keys_dir: PathBuf,
    /// The one HTTP client.
    pub http: reqwest::Client,
    /// The Omaha server (event reports and [`Extensions::check`]).
    pub omaha: OmahaClient,
    /// This host.
    pub identity: Identity,
    /// systemd over the agent's bus connection; `None`: the system bus is connected to when a
    /// unit must be restarted.
    pub systemd: Option<Systemd>,
}

/// The runtime extensions of this host.
#[derive(Debug)]
pub struct Extensions {
    settings: ExtensionsSettings,
    env: ExtensionsEnv,
    store: ExtensionsStore,
    state: ExtensionsState,
}

fn now_error(code: u32, message: String) -> LastError {
    LastError {
        code,
        message,
        at_unix: payloads::unix_now(),
    }
}

fn supports(image: &Image, os_version: &str) -> bool {
    OsVersions::parse(&image.os_versions).is_ok_and(|v| v.supports(os_version))
}

impl Extensions {
    /// Loads the extension state (a corrupt file is moved aside).
    pub fn new(settings: ExtensionsSettings, env: ExtensionsEnv) -> Result<Self, StateError> {
        let store = ExtensionsStore::new(&env.state_dir);
        let state = store.load()?;
        Ok(Self {
            settings,
            env,
            store,
            state,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &ExtensionsSettings {
        &self.settings
    }

    /// The persisted state.
    pub fn state(&self) -> &ExtensionsState {
        &self.state
    }

    /// Whether any extension is enabled.
    pub fn any_enabled(&self) -> bool {
        self.settings.enabled().next().is_some()
    }

    fn record(&self, name: &str) -> ExtensionRecord {
        self.state.extensions.get(name).cloned().unwrap_or_default()
    }

    fn put(&mut self, name: &str, rec: ExtensionRecord) -> Result<(), StateError> {
        self.state.extensions.insert(name.to_owned(), rec);
        self.store.save(&self.state)
    }

    fn save_logged(&mut self, name: &str, rec: ExtensionRecord) {
        if let Err(e) = self.put(name, rec) {
            tracing::error!(extension = name, error = %e, "cannot save extension state");
        }
    }

    fn image_path(&self, image: &Image) -> PathBuf {
        self.settings.image_dir.join(&image.file)
    }

    /// Connects to systemd on the system bus when no connection was given and some extension
    /// restarts units (a failure is logged; restarts then fail with a clear error).
    async fn ensure_systemd(&mut self) {
        if self.env.systemd.is_some() || self.settings.enabled().all(|e| e.restart_units.is_empty())
        {
            return;
        }
        match Systemd::system().await {
            Ok(s) => self.env.systemd = Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach systemd; extension unit restarts will fail")
            }
        }
    }

    fn activator(&self) -> Activator<'_> {
        Activator {
            settings: &self.settings,
            systemd: self.env.systemd.as_ref(),
        }
    }

    /// The OS version an extension build must support: `target_os` when an OS update is staged,
    /// else the booted one.
    fn os_for<'a>(&'a self, target_os: Option<&'a str>) -> &'a str {
        target_os.unwrap_or(&self.env.identity.os_version)
    }

    fn base_app(&self, ext: &ExtensionSettings, version: &str, os: &str) -> AppRequest {
        omaha_client::extension_app(&self.env.identity, &ext.app_id, version, &ext.group, os)
    }

    /// One `<app>` per enabled extension: ping, update check, and a pending `3/2` completion.
    /// `target_os` is the staged OS version while an OS update waits for its reboot.
    pub fn app_requests(&self, target_os: Option<&str>) -> Vec<AppRequest> {
        let os = self.os_for(target_os);
        self.settings
            .enabled()
            .map(|ext| {
                let rec = self.state.extensions.get(&ext.name);
                let version = rec
                    .and_then(|r| r.active.as_ref())
                    .map_or(NOTHING_INSTALLED, |i| i.version.as_str());
                let mut app = self
                    .base_app(ext, version, os)
                    .with_active_ping()
                    .with_updatecheck();
                if let Some(prev) = rec.and_then(|r| r.pending_completion.as_deref()) {
                    app = app.with_event(EventRequest::rebooted(prev));
                }
                app
            })
            .collect()
    }

    /// Sends one event for an extension app (best effort: logged, never fails the update).
    async fn send_event(
        &self,
        ext: &ExtensionSettings,
        version: &str,
        os: &str,
        ev: EventRequest,
    ) -> bool {
        let app = self.base_app(ext, version, os).with_event(ev);
        let req = omaha_client::multi_app_request(&self.env.identity, vec![app], false);
        match self.env.omaha.send(&req).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(extension = %ext.name, error = %e, "could not report extension event");
                false
            }
        }
    }

    /// A request with only the extension apps, sent and handled (see [`Self::handle_response`]).
    pub async fn check(
        &mut self,
        target_os: Option<&str>,
        interactive: bool,
    ) -> Result<Vec<ExtensionOutcome>, omaha_client::CheckError> {
        let apps = self.app_requests(target_os);
        if apps.is_empty() {
            return Ok(Vec::new());
        }
        let req = omaha_client::multi_app_request(&self.env.identity, apps, interactive);
        let resp = self.env.omaha.send(&req).await?;
        Ok(self.handle_response(&resp, target_os).await)
    }

    /// Handles every enabled extension's `<app>` of `resp` (the answer to a request that carried
    /// [`Self::app_requests`] with the same `target_os`).
    pub async fn handle_response(
        &mut self,
        resp: &Response,
        target_os: Option<&str>,
    ) -> Vec<ExtensionOutcome> {
        if target_os.is_none() {
            self.cancel_next_boot().await;
        }
        let exts: Vec<ExtensionSettings> = self.settings.enabled().cloned().collect();
        let mut out = Vec::new();
        for ext in exts {
            let outcome = match omaha_client::interpret(resp, &ext.app_id) {
                Err(e) => {
                    tracing::warn!(extension = %ext.name, error = %e, "extension update check failed");
                    Outcome::CheckFailed {
                        code: e.code().to_u32(),
                        message: e.to_string(),
                    }
                }
                Ok(answer) => {
                    let mut rec = self.record(&ext.name);
                    if rec.pending_completion.take().is_some() {
                        self.save_logged(&ext.name, rec);
                    }
                    match answer.offer {
                        None => Outcome::NoUpdate,
                        Some(offer) => self.handle_offer(&ext, &offer, target_os).await,
                    }
                }
            };
            out.push(ExtensionOutcome {
                name: ext.name.clone(),
                outcome,
            });
        }
        out
    }

    /// Policy checks before anything is downloaded.
    fn check_policy(
        &self,
        ext: &ExtensionSettings,
        rec: &ExtensionRecord,
        offer: &Offer,
    ) -> Result<(), ExtensionError> {
        if !crate::config::extensions::valid_version(&offer.version) {
            return Err(ExtensionError::BadVersion(offer.version.clone()));
        }
        if rec.deny_list.contains(&offer.version) {
            return Err(ExtensionError::DenyListed(offer.version.clone()));
        }
        if let Some(pin) = ext.pin_version.as_ref().filter(|p| **p != offer.version) {
            return Err(ExtensionError::Pinned {
                pinned: pin.clone(),
                offered: offer.version.clone(),
            });
        }
        if let Some(active) = &rec.active
            && version::compare(&offer.version, &active.version) == Ordering::Less
            && !offer.rollback
        {
            return Err(ExtensionError::Downgrade {
                active: active.version.clone(),
                offered: offer.version.clone(),
            });
        }
        Ok(())
    }

    async fn handle_offer(
        &mut self,
        ext: &ExtensionSettings,
        offer: &Offer,
        target_os: Option<&str>,
    ) -> Outcome {
        let os = self.os_for(target_os).to_owned();
        let mut rec = self.record(&ext.name);
        let current = rec
            .active
            .as_ref()
            .map_or(NOTHING_INSTALLED.to_owned(), |i| i.version.clone());
        let staged_same = rec.next_boot.as_ref().is_some_and(|n| {
            n.image.version == offer.version && Some(n.os_version.as_str()) == target_os
        });
        let active_same = rec.active.as_ref().is_some_and(|a| {
            a.version == offer.version && (target_os.is_none() || supports(a, &os))
        });
        if staged_same || active_same {
            return Outcome::NoUpdate;
        }
        if let Some(r) = rec
            .refused
            .clone()
            .filter(|r| r.version == offer.version && r.os_version == os)
        {
            // Known: not downloaded again, but reported again so the server's grant settles.
            let code = omaha::ErrorCode::from_u32(r.code);
            let ev = if r.failure {
                EventRequest::error(reported(code))
            } else {
                EventRequest::deferred(reported(code))
            };
            self.send_event(ext, &current, &os, ev).await;
            return Outcome::Refused {
                version: offer.version.clone(),
                reason: r.reason,
            };
        }
        if let Err(e) = self.check_policy(ext, &rec, offer) {
            return self.refuse(ext, rec, offer, &os, &current, e).await;
        }
        let trust = match crate::install::compat::load_trust(&self.env.trusted_keys_dir) {
            Ok(t) => t,
            Err(e) => {
                return self
                    .fail_download(ext, &offer.version, &current, &os, e.into())
                    .await;
            }
        };
        tracing::info!(extension = %ext.name, version = %offer.version, os_version = %os, "extension update offered");
        self.send_event(ext, &current, &os, EventRequest::download_started())
            .await;
        let image = {
            let req = DownloadRequest {
                http: &self.env.http,
                trust: &trust,
                offer,
                name: &ext.name,
                app_id: &ext.app_id,
                identity: &self.env.identity,
                os_version: &os,
                image_dir: &self.settings.image_dir,
                now_unix: payloads::unix_now(),
            };
            download(&req).await
        };
        let image = match image {
            Ok(i) => i,
            Err(e) if e.is_refusal() => {
                return self.refuse(ext, rec, offer, &os, &current, e).await;
            }
            Err(e) => {
                return self
                    .fail_download(ext, &offer.version, &current, &os, e)
                    .await;
            }
        };
        rec.files.insert(image.file.clone());
        rec.refused = None;
        self.save_logged(&ext.name, rec.clone());
        self.send_event(ext, &current, &os, EventRequest::download_finished())
            .await;
        self.ensure_systemd().await;
        match target_os {
            Some(t) => self.stage(ext, rec, image, t, &current).await,
            None => self.activate(ext, rec, image, &current).await,
        }
    }

    /// A refusal: remembered (not downloaded again for the same OS), reported as 3/0 or 3/9
    /// (see [`ExtensionError::reported_as_failure`]).
    async fn refuse(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        offer: &Offer,
        os: &str,
        current: &str,
        e: ExtensionError,
    ) -> Outcome {
        tracing::warn!(extension = %ext.name, version = %offer.version, reason = %e, "extension update refused");
        let code = e.code();
        let failure = e.reported_as_failure();
        rec.refused = Some(Refused {
            version: offer.version.clone(),
            os_version: os.to_owned(),
            reason: e.to_string(),
            code: code.to_u32(),
            failure,
        });
        rec.last_error = Some(now_error(code.to_u32(), e.to_string()));
        self.save_logged(&ext.name, rec);
        let ev = if failure {
            EventRequest::error(reported(code))
        } else {
            EventRequest::deferred(reported(code))
        };
        self.send_event(ext, current, os, ev).await;
        Outcome::Refused {
            version: offer.version.clone(),
            reason: e.to_string(),
        }
    }

    /// A failed download: nothing was activated; reported as 3/0, not deny-listed.
    async fn fail_download(
        &mut self,
        ext: &ExtensionSettings,
        version: &str,
        current: &str,
        os: &str,
        e: ExtensionError,
    ) -> Outcome {
        tracing::error!(extension = %ext.name, version, error = %e, "extension download failed");
        let code = e.code();
        let mut rec = self.record(&ext.name);
        rec.last_error = Some(now_error(code.to_u32(), e.to_string()));
        let active = rec.active.as_ref().map(|i| i.version.clone());
        self.save_logged(&ext.name, rec);
        self.send_event(ext, current, os, EventRequest::error(reported(code)))
            .await;
        Outcome::Failed {
            version: version.to_owned(),
            code: code.to_u32(),
            message: e.to_string(),
            rolled_back_to: active,
        }
    }

    /// Coupled with a staged OS update: `NAME.raw` points at the new build for the next boot
    /// (no refresh: the running system keeps its merged image). Reported as 3/1.
    async fn stage(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        image: Image,
        target_os: &str,
        current: &str,
    ) -> Outcome {
        let path = self.image_path(&image);
        if let Err(e) = self.activator().switch(ext, Some(&path)) {
            let _ = images::remove_image(&self.settings.image_dir, &image.file);
            rec.files.remove(&image.file);
            self.save_logged(&ext.name, rec);
            return self
                .fail_download(ext, &image.version, current, target_os, e)
                .await;
        }
        let version = image.version.clone();
        rec.next_boot = Some(NextBoot {
            image,
            os_version: target_os.to_owned(),
            boot_id: self.env.identity.boot_id.clone(),
        });
        rec.last_error = None;
        self.cleanup(&mut rec);
        self.save_logged(&ext.name, rec);
        tracing::info!(extension = %ext.name, version = %version, os_version = target_os,
            "extension build staged for the next boot");
        self.send_event(ext, current, target_os, EventRequest::update_installed())
            .await;
        Outcome::Staged {
            version,
            os_version: target_os.to_owned(),
        }
    }

    /// Activates `image` now; any failure rolls back (see [`activate`]).
    async fn activate(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        image: Image,
        current: &str,
    ) -> Outcome {
        let os = self.env.identity.os_version.clone();
        rec.activating = Some(Activating {
            image: image.clone(),
        });
        self.save_logged(&ext.name, rec.clone());
        let path = self.image_path(&image);
        let result = self.activator().activate(ext, &path).await;
        rec.activating = None;
        match result {
            Ok(()) => {
                let previous = rec.active.take();
                let prev_version = previous.as_ref().map(|p| p.version.clone());
                rec.previous = previous;
                rec.active = Some(image.clone());
                rec.last_error = None;
                self.cleanup(&mut rec);
                rec.pending_completion =
                    Some(prev_version.clone().unwrap_or(NOTHING_INSTALLED.into()));
                self.save_logged(&ext.name, rec.clone());
                tracing::info!(extension = %ext.name, version = %image.version, previous = ?prev_version,
                    "extension update active");
                let ev =
                    EventRequest::rebooted(prev_version.as_deref().unwrap_or(NOTHING_INSTALLED));
                if self.send_event(ext, &image.version, &os, ev).await {
                    rec.pending_completion = None;
                    self.save_logged(&ext.name, rec);
                }
                Outcome::Activated {
                    version: image.version,
                    previous: prev_version,
                }
            }
            Err(e) => self.roll_back(ext, rec, image, current, &os, e).await,
        }
    }

    /// After a failed activation: previous image back (link, refresh, restart), 3/0, and the
    /// version deny-listed when the build itself failed (refresh, restart, health).
    async fn roll_back(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        image: Image,
        current: &str,
        os: &str,
        e: ExtensionError,
    ) -> Outcome {
        tracing::error!(extension = %ext.name, version = %image.version, error = %e,
            "extension activation failed; rolling back");
        let previous = rec.active.as_ref().map(|i| self.image_path(i));
        let failures = self.activator().rollback(ext, previous.as_deref()).await;
        let mut message = e.to_string();
        if !failures.is_empty() {
            message = format!("{message}; rollback: {}", failures.join("; "));
            tracing::error!(extension = %ext.name, failures = ?failures, "extension rollback incomplete");
        }
        if e.is_activation_failure() {
            rec.deny_list.insert(image.version.clone());
        }
        let code = e.code();
        rec.last_error = Some(now_error(code.to_u32(), message.clone()));
        self.cleanup(&mut rec);
        let rolled_back_to = rec.active.as_ref().map(|i| i.version.clone());
        self.save_logged(&ext.name, rec);
        self.send_event(ext, current, os, EventRequest::error(reported(code)))
            .await;
        Outcome::Failed {
            version: image.version,
            code: code.to_u32(),
            message,
            rolled_back_to,
        }
    }

    /// Deletes image files this agent wrote that are neither active, previous, staged nor being
    /// activated.
    fn cleanup(&self, rec: &mut ExtensionRecord) {
        let keep: BTreeSet<&str> = [
            rec.active.as_ref(),
            rec.previous.as_ref(),
            rec.next_boot.as_ref().map(|n| &n.image),
            rec.activating.as_ref().map(|a| &a.image),
        ]
        .into_iter()
        .flatten()
        .map(|i| i.file.as_str())
        .collect();
        let stale: Vec<String> = rec
            .files
            .iter()
            .filter(|f| !keep.contains(f.as_str()))
            .cloned()
            .collect();
        for f in stale {
            match images::remove_image(&self.settings.image_dir, &f) {
                Ok(()) => {
                    tracing::info!(file = %f, "old extension image removed");
                    rec.files.remove(&f);
                }
                Err(e) => {
                    tracing::warn!(file = %f, error = %e, "cannot remove old extension image")
                }
            }
        }
    }

    /// The OS update is no longer staged in this boot: builds linked for it are unlinked again
    /// (the running system never merged them, so no refresh is needed).
    async fn cancel_next_boot(&mut self) {
        let boot = self.env.identity.boot_id.clone();
        let exts: Vec<ExtensionSettings> = self.settings.enabled().cloned().collect();
        for ext in exts {
            let mut rec = self.record(&ext.name);
            if rec.next_boot.as_ref().is_none_or(|n| n.boot_id != boot) {
                continue;
            }
            let active = rec.active.as_ref().map(|i| self.image_path(i));
            if let Err(e) = self.activator().switch(&ext, active.as_deref()) {
                tracing::error!(extension = %ext.name, error = %e, "cannot unlink the build staged for a cancelled OS update");
                continue;
            }
            tracing::info!(extension = %ext.name, "OS update no longer staged; staged extension build dropped");
            rec.next_boot = None;
            self.cleanup(&mut rec);
            self.save_logged(&ext.name, rec);
        }
    }

    /// Whether a staged OS update to `target_os` may reboot: every enabled extension with an
    /// active image has a build supporting `target_os` staged, or its active image supports it.
    pub fn readiness(&self, target_os: &str) -> Readiness {
        let mut waiting = Vec::new();
        for ext in self.settings.enabled() {
            let Some(rec) = self.state.extensions.get(&ext.name) else {
                continue;
            };
            if rec
                .next_boot
                .as_ref()
                .is_some_and(|n| n.os_version == target_os)
            {
                continue;
            }
            let Some(active) = &rec.active else { continue };
            if supports(active, target_os) {
                continue;
            }
            let mut why = format!(
                "{} {} supports OS {}, not {target_os}; waiting for a build supporting {target_os}",
                ext.name, active.version, active.os_versions
            );
            if let Some(r) = rec.refused.as_ref().filter(|r| r.os_version == target_os) {
                why.push_str(&format!(" (offered {} refused: {})", r.version, r.reason));
            }
            waiting.push(why);
        }
        if waiting.is_empty() {
            Readiness::Ready
        } else {
            Readiness::Waiting(waiting)
        }
    }

    /// Each configured extension's version and state; `target_os` is the staged OS version, if
    /// any (an extension the reboot waits for is `waiting`).
    pub fn status(&self, target_os: Option<&str>) -> Vec<ExtensionStatus> {
        self.settings
            .extensions
            .iter()
            .map(|ext| {
                let rec = self
                    .state
                    .extensions
                    .get(&ext.name)
                    .cloned()
                    .unwrap_or_default();
                let version = rec
                    .active
                    .as_ref()
                    .map(|i| i.version.clone())
                    .unwrap_or_default();
                let (state, detail) = if !ext.enabled {
                    (ExtensionState::Disabled, String::new())
                } else if let Some(n) = rec
                    .next_boot
                    .as_ref()
                    .filter(|n| Some(n.os_version.as_str()) == target_os)
                {
                    (
                        ExtensionState::Staged,
                        format!("{} for OS {}", n.image.version, n.os_version),
                    )
                } else if let Some(Readiness::Waiting(w)) = target_os.map(|t| self.readiness(t))
                    && let Some(line) = w.iter().find(|l| l.starts_with(&format!("{} ", ext.name)))
                {
                    (ExtensionState::Waiting, line.clone())
                } else if let Some(err) = rec.last_error.as_ref().filter(|_| rec.refused.is_none())
                {
                    (ExtensionState::Failed, err.message.clone())
                } else if rec.active.is_some() {
                    (ExtensionState::Active, String::new())
                } else {
                    (ExtensionState::NotInstalled, String::new())
                };
                ExtensionStatus {
                    name: ext.name.clone(),
                    version,
                    state,
                    detail,
                }
            })
            .collect()
    }

    /// At agent start: finishes what a reboot or a crash left behind (see the module
    /// documentation). Events go out with the next check ([`Self::app_requests`]) or at once.
    pub async fn reconcile(&mut self) -> Vec<ExtensionOutcome> {
        let pending = self.state.extensions.values().any(|r| {
            r.activating.is_some()
                || r.next_boot
                    .as_ref()
                    .is_some_and(|n| n.boot_id != self.env.identity.boot_id)
        });
        if pending {
            self.ensure_systemd().await;
        }
        let exts: Vec<ExtensionSettings> = self.settings.enabled().cloned().collect();
        let mut out = Vec::new();
        for ext in exts {
            let rec = self.record(&ext.name);
            if rec.activating.is_some() {
                out.push(ExtensionOutcome {
                    name: ext.name.clone(),
                    outcome: self.undo_interrupted(&ext, rec).await,
                });
                continue;
            }
            let Some(nb) = rec.next_boot.clone() else {
                continue;
            };
            if nb.boot_id == self.env.identity.boot_id {
                continue;
            }
            let outcome = if nb.os_version == self.env.identity.os_version {
                self.promote(&ext, rec, nb).await
            } else {
                self.restore(&ext, rec, &nb).await
            };
            out.push(ExtensionOutcome {
                name: ext.name.clone(),
                outcome,
            });
        }
        out
    }

    /// An activation was interrupted (crash, kill): the previous image is linked again and the
    /// units restarted; the version may be offered again (it is not deny-listed).
    async fn undo_interrupted(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
    ) -> Outcome {
        let version = rec
            .activating
            .take()
            .map(|a| a.image.version)
            .unwrap_or_default();
        tracing::warn!(extension = %ext.name, version = %version, "extension activation was interrupted; restoring the active image");
        let active = rec.active.as_ref().map(|i| self.image_path(i));
        let failures = self.activator().rollback(ext, active.as_deref()).await;
        if !failures.is_empty() {
            tracing::error!(extension = %ext.name, failures = ?failures, "restoring the active extension image was incomplete");
        }
        self.cleanup(&mut rec);
        let restored = rec.active.as_ref().map(|i| i.version.clone());
        self.save_logged(&ext.name, rec);
        Outcome::Restored { version: restored }
    }

    /// Booted into the OS a build was staged for: the boot merged it; it becomes active after a
    /// refresh and the health command (a failure rolls back to the previous image when that one
    /// supports the booted OS, and deny-lists the version).
    async fn promote(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        nb: NextBoot,
    ) -> Outcome {
        let os = self.env.identity.os_version.clone();
        let prev_version = rec.active.as_ref().map(|i| i.version.clone());
        rec.previous = rec.active.take();
        rec.active = Some(nb.image.clone());
        rec.next_boot = None;
        rec.pending_completion = Some(prev_version.clone().unwrap_or(NOTHING_INSTALLED.into()));
        self.save_logged(&ext.name, rec.clone());
        let act = self.activator();
        let checked = match act.refresh().await {
            Ok(()) => act.health(ext).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(()) => {
                self.cleanup(&mut rec);
                self.save_logged(&ext.name, rec);
                tracing::info!(extension = %ext.name, version = %nb.image.version, "extension build staged for this OS is active");
                Outcome::Activated {
                    version: nb.image.version,
                    previous: prev_version,
                }
            }
            Err(e) => {
                let failed = rec.active.take().unwrap_or(nb.image);
                rec.pending_completion = None;
                match rec.previous.take() {
                    Some(p) if supports(&p, &os) => rec.active = Some(p),
                    other => {
                        // Nothing better to go back to: keep the build the boot merged.
                        rec.previous = other;
                        rec.active = Some(failed.clone());
                        rec.deny_list.insert(failed.version.clone());
                        let code = e.code();
                        rec.last_error = Some(now_error(code.to_u32(), e.to_string()));
                        self.save_logged(&ext.name, rec);
                        self.send_event(
                            ext,
                            &failed.version,
                            &os,
                            EventRequest::error(reported(code)),
                        )
                        .await;
                        return Outcome::Failed {
                            version: failed.version.clone(),
                            code: code.to_u32(),
                            message: format!("{e}; no previous build supports OS {os}"),
                            rolled_back_to: None,
                        };
                    }
                }
                let current = failed.version.clone();
                self.roll_back(ext, rec, failed, &current, &os, e).await
            }
        }
    }

    /// Booted into another OS than the one a build was staged for (the OS update rolled back
    /// or was replaced): the active image is linked again, refreshed and its units restarted.
    async fn restore(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        nb: &NextBoot,
    ) -> Outcome {
        tracing::warn!(extension = %ext.name, staged = %nb.image.version, staged_for = %nb.os_version,
            booted = %self.env.identity.os_version, "booted another OS than the extension build was staged for; restoring");
        let active = rec.active.as_ref().map(|i| self.image_path(i));
        let failures = self.activator().rollback(ext, active.as_deref()).await;
        if !failures.is_empty() {
            tracing::error!(extension = %ext.name, failures = ?failures, "restoring the extension image was incomplete");
        }
        rec.next_boot = None;
        self.cleanup(&mut rec);
        let version = rec.active.as_ref().map(|i| i.version.clone());
        self.save_logged(&ext.name, rec);
        Outcome::Restored { version }
    }
}
