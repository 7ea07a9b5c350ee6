//! The operator's operations on the fleet model: applications, channels, groups (with their
//! rollout policy and its pause / resume), packages (publishing verifies the signed payload),
//! instances, machine credentials, and the event and activity feeds.
//!
//! Every operation is a method of [`Fleet`] that takes typed inputs and returns a typed result
//! or a [`FleetError`]; none knows HTTP. The admin API (`http/admin/`) only parses a request,
//! calls one of them and serialises the answer, and a dashboard calls the same methods, so
//! both apply the same validation and write the same activity entries. Every write goes
//! through the store (durable before it returns) under the admin write lock and then reloads
//! the catalogue snapshot this process serves from.
//!
//! Map: [`apps`], [`channels`], [`groups`], [`rollouts`], [`packages`], [`instances`],
//! [`credentials`], [`feed`]; one file per resource; [`overview`] reads the whole fleet at a
//! glance (the dashboard's first page) and a group's activity timeline, [`history`] a group's
//! versions over time, [`fleetlock`] the FleetLock holders tied to their machines. The rules they
//! apply live in their concern's module ([`crate::rollout`], [`crate::credential`],
//! [`payloads`]); the FleetLock and retention operations are methods of
//! [`crate::fleetlock::FleetLock`] and [`crate::retention::Pruner`].

pub mod apps;
pub mod channels;
pub mod credentials;
pub mod feed;
pub mod fleetlock;
pub mod groups;
pub mod history;
pub mod instances;
pub mod overview;
pub mod packages;
pub mod rollouts;

use std::sync::Arc;

use rand_core::RngCore;

use crate::blobs::BlobStore;
use crate::catalogue::Catalogue;
use crate::credential::Credentials;
use crate::model::{App, Channel, Group, NewActivity, normalize_appid};
use crate::service::UpdateService;
use crate::store::{Store, StoreError};

/// Why an operation failed. The admin API maps each variant to one HTTP status (named on each
/// variant); the message is the text an operator sees.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The input is not acceptable (400).
    #[error("{0}")]
    Invalid(String),
    /// What the input names does not exist (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The operation conflicts with what is stored (409).
    #[error("{0}")]
    Conflict(String),
    /// The upload is larger than the server accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The payload failed verification (422).
    #[error("{0}")]
    Unverifiable(String),
    /// The server is not set up for this operation (503).
    #[error("{0}")]
    Unavailable(String),
    /// Storage or file I/O failed (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) => Self::Conflict(what),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// What an operation returns.
pub type FleetResult<T> = Result<T, FleetError>;

/// The fleet model's operations over the server's stores and catalogue. Cheap to clone (every
/// field is shared).
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Storage of the catalogue, instances, events and activity.
    pub store: Arc<dyn Store>,
    /// The update-check service: catalogue snapshot, clock, pending check-ins, rollout grants.
    pub service: Arc<UpdateService>,
    /// Package files.
    pub blobs: Arc<BlobStore>,
    /// Trusted publisher keys (publishing is refused without them).
    pub trust: Option<Arc<payloads::TrustStore>>,
    /// Largest package upload, bytes.
    pub max_package_size: u64,
    /// Machine-credential checks and the keys bound to machine ids.
    pub credentials: Arc<Credentials>,
    /// Serialises admin writes with the catalogue reload that follows them.
    pub write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Fleet {
    /// Now, Unix seconds, from the server's clock.
    pub fn now(&self) -> i64 {
        self.service.clock.now()
    }

    /// The catalogue snapshot this process serves from.
    pub fn catalogue(&self) -> Arc<Catalogue> {
        self.service.catalogue.get()
    }

    /// Reloads the catalogue snapshot from the store (after a write, or to see another
    /// process's changes).
    pub async fn reload(&self) -> FleetResult<()> {
        self.service.catalogue.reload(self.store.as_ref()).await?;
        Ok(())
    }

    /// Writes pending check-ins, so that a listing shows every machine that checked in.
    pub async fn flush_checkins(&self) -> FleetResult<()> {
        self.service.checkins.flush().await?;
        Ok(())
    }
}

/// A new random (version 4) UUID for a catalogue row.
fn new_id() -> String {
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// An activity entry of severity `info`.
pub(crate) fn activity(kind: &str, app: Option<&str>, message: String) -> NewActivity {
    NewActivity {
        kind: kind.to_owned(),
        severity: "info",
        app_id: app.map(str::to_owned),
        message,
        ..Default::default()
    }
}

/// Checks a name-like field: 1..=`max` bytes, not blank, no control characters.
fn check_text(field: &str, v: &str, max: usize) -> FleetResult<()> {
    if v.trim().is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(FleetError::Invalid(format!(
            "{field} must be 1..={max} printable characters"
        )));
    }
    Ok(())
}

/// The application `app` names (braces and case are normalised).
pub fn find_app(cat: &Catalogue, app: &str) -> FleetResult<App> {
    let id = normalize_appid(app);
    cat.app(&id)
        .cloned()
        .ok_or_else(|| FleetError::NotFound(format!("application {id}")))
}

/// The channel of `app_id` that `key` names (its id or its name).
pub fn find_channel(cat: &Catalogue, app_id: &str, key: &str) -> FleetResult<Channel> {
    cat.data()
        .channels
        .iter()
        .find(|c| c.app_id == app_id && (c.id == key || c.name == key))
        .cloned()
        .ok_or_else(|| FleetError::NotFound(format!("channel {key} of {app_id}")))
}

/// The group of `app_id` that `key` names (its id, track or name).
pub fn find_group(cat: &Catalogue, app_id: &str, key: &str) -> FleetResult<Group> {
    cat.data()
        .groups
        .iter()
        .find(|g| g.app_id == app_id && (g.id == key || g.track == key || g.name == key))
        .cloned()
        .ok_or_else(|| FleetError::NotFound(format!("group {key} of {app_id}")))
}
