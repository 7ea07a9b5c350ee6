//! Strategy `fleet-lock`: take a slot of the group's FleetLock semaphore before rebooting
//! (optionally only inside maintenance windows) and give it back after a good boot.
//!
//! [`client`] speaks the FleetLock protocol (requests, bodies, errors, the machine's
//! app-specific id); this module holds the strategy ([`FleetLockStrategy`]) and the release
//! after boot ([`release_after_boot`]), which retries until the server lets go.

pub mod client;

use std::time::Duration;

use jiff::Timestamp;
use maintenance_window::WindowSet;
use url::Url;

pub use client::{
    ClientParams, ErrorBody, FLEET_LOCK_APP_ID, FleetLockClient, FleetLockError, PROTOCOL_HEADER,
    RequestBody, app_specific_id, app_specific_id_for,
};

use super::Gate;
use super::time::Sleeper;
use super::windows::window_gate;

/// Strategy `fleet-lock`: hold a slot of the group's semaphore while rebooting, optionally only
/// inside windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLockStrategy {
    /// Server base URL (the protocol paths `v1/...` are appended).
    pub base_url: Url,
    /// FleetLock group (`^[a-zA-Z0-9.-]+$`).
    pub group: String,
    /// This machine's app-specific id.
    pub id: String,
    /// Windows the reboot must also fall in (empty: any time).
    pub windows: WindowSet,
}

impl FleetLockStrategy {
    /// Open any time when there is no window, else as the windows say.
    pub fn gate(&self, now: Timestamp) -> Gate {
        if self.windows.is_empty() {
            Gate::Open
        } else {
            window_gate(&self.windows, now)
        }
    }

    /// A client for this strategy's server, group and id over `http` (the agent's one client).
    pub fn client(&self, http: reqwest::Client) -> FleetLockClient {
        FleetLockClient::new(http, self.base_url.clone(), &self.group, &self.id)
    }
}

/// Exponential backoff: `initial`, doubling, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 5 s doubling up to 5 min (locksmith's unlock backoff).
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(300),
        }
    }
}

/// Releases this machine's slot after a good boot: calls `steady-state` until it succeeds,
/// sleeping with exponential backoff between failures. It never gives up — a machine must
/// never keep the fleet blocked. Run it right after `mark-good` passes, before anything else,
/// whatever the strategy's windows say. Returns the number of attempts made.
pub async fn release_after_boot(
    client: &FleetLockClient,
    sleeper: &impl Sleeper,
    backoff: Backoff,
) -> u32 {
    let mut delay = backoff.initial;
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        match client.steady_state().await {
            Ok(()) => {
                tracing::info!(attempts, "released the fleet lock (steady-state)");
                return attempts;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempts, retry_in_secs = delay.as_secs(), "fleet lock release failed; retrying");
                sleeper.sleep(delay).await;
                delay = delay.saturating_mul(2).min(backoff.max);
            }
        }
    }
}
