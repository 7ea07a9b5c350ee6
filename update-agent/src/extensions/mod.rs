//! Runtime extensions (systemd-sysext images such as `containerd` or `docker`), each its own
//! Omaha application with its own version, group, channel and rollout.
//!
//! - [`crate::config::extensions`]: `[extensions]` settings; [`state`]: `extensions.json` (atomic);
//!   [`compat`]: `os.versions` of the signed manifest; [`download`](mod@download): the verified download to
//!   `NAME-VERSION.raw`; [`images`]: image files and the `NAME.raw` link;
//!   [`activate`]: link switch → refresh → unit restarts → health, and rollback;
//!   [`systemd`]: `RestartUnit` over D-Bus; [`status`]: status, outcomes, readiness.
//! - [`Extensions`] itself, by what it does: answering an update check (`offers.rs`), staging,
//!   activating and rolling back a build (`install.rs`), finishing what a reboot or a crash left
//!   (`reconcile.rs`), status and readiness (`status.rs`); the state, events and image cleanup
//!   they share are here.
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

mod install;
mod offers;
mod reconcile;

use std::collections::BTreeSet;
use std::path::PathBuf;

use omaha::{AppRequest, EventRequest};

pub use crate::config::extensions::{
    ExtensionSettings, ExtensionsFragment, ExtensionsInputs, ExtensionsSettings,
};
pub use error::{ExtensionError, codes};
pub use status::{ExtensionOutcome, ExtensionState, ExtensionStatus, Outcome, Readiness};
pub use systemd::{Systemd, SystemdError};

use activate::Activator;
use compat::OsVersions;
use state::{ExtensionRecord, ExtensionsState, ExtensionsStore, Image};

use crate::identity::Identity;
use crate::omaha_client::{self, OmahaClient};
use crate::state::{LastError, StateError};

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
}
