//! The FleetLock client: the HTTP protocol exactly as Zincati speaks it, its request and error
//! bodies, its errors, and the id a machine asks with.
//!
//! Wire format: `POST {base}/v1/pre-reboot` (take a slot before rebooting) and
//! `POST {base}/v1/steady-state` (give it back after a good boot), header
//! `fleet-lock-protocol: true`, body `{"client_params":{"id":"<id>","group":"<group>"}}`.
//! HTTP 200 is success; anything else is a failure whose body, when it is FleetLock's error JSON
//! `{"kind":"…","value":"…"}`, is surfaced as is. Both calls are idempotent for one id.
//!
//! The id is the **app-specific machine id** (systemd's `sd_id128_get_machine_app_specific`,
//! which Zincati uses too): HMAC-SHA256 keyed with the 16 bytes of `/etc/machine-id` over the
//! 16 bytes of [`FLEET_LOCK_APP_ID`], truncated to 16 bytes, marked as a version-4 UUID, written
//! as 32 lowercase hex digits. It is stable per machine and does not reveal the machine id;
//! `systemd-id128 machine-id --app-specific=` prints the same value.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use url::Url;

/// Platte's application id for FleetLock machine ids (not Zincati's, so the two never collide).
pub const FLEET_LOCK_APP_ID: &str = "a0c3f1d2e4b5468797a8b9cadbecfd0e";

/// Header FleetLock requires on every request (a guard against accidental redirects).
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";

/// Longest error body read from a server.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Why a FleetLock operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetLockError {
    /// Strategy `fleet-lock` without `[reboot.fleet_lock]`.
    #[error("reboot.strategy is \"fleet-lock\" but reboot.fleet_lock.base_url is not set")]
    NotConfigured,
    /// `/etc/machine-id` is not 32 hex digits.
    #[error("machine id {0:?} is not 32 hex digits")]
    BadMachineId(String),
    /// The request could not be sent or the answer not read.
    #[error("FleetLock {op} at {url}: {source}")]
    Transport {
        /// `pre-reboot` or `steady-state`.
        op: &'static str,
        /// The URL.
        url: String,
        /// The HTTP client error.
        source: reqwest::Error,
    },
    /// The server answered with FleetLock's error JSON.
    #[error("FleetLock {op} refused by the server (HTTP {status}): {kind}: {value}")]
    Server {
        /// `pre-reboot` or `steady-state`.
        op: &'static str,
        /// HTTP status.
        status: u16,
        /// Error kind (e.g. `failed_lock`), as the server names it.
        kind: String,
        /// Human-readable detail.
        value: String,
    },
    /// The server answered with another non-200 status.
    #[error("FleetLock {op}: unexpected HTTP {status} from {url}: {body}")]
    Status {
        /// `pre-reboot` or `steady-state`.
        op: &'static str,
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The base URL cannot take the protocol paths.
    #[error("FleetLock base URL {0} cannot be a base for v1/... paths")]
    BadBaseUrl(String),
}

/// FleetLock's error body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorBody {
    /// Machine-readable kind.
    pub kind: String,
    /// Human-readable detail.
    pub value: String,
}

/// FleetLock's request body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RequestBody {
    /// Who asks.
    pub client_params: ClientParams,
}

/// `client_params` of a request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ClientParams {
    /// App-specific machine id.
    pub id: String,
    /// Group.
    pub group: String,
}

/// Computes the app-specific machine id of `machine_id` for [`FLEET_LOCK_APP_ID`].
pub fn app_specific_id(machine_id: &str) -> Result<String, FleetLockError> {
    app_specific_id_for(machine_id, FLEET_LOCK_APP_ID)
}

/// `sd_id128_get_machine_app_specific(app_id)` for `machine_id` (both 32 hex digits).
pub fn app_specific_id_for(machine_id: &str, app_id: &str) -> Result<String, FleetLockError> {
    let bytes = |s: &str| -> Result<[u8; 16], FleetLockError> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|_| FleetLockError::BadMachineId(s.to_owned()))?;
        Ok(out)
    };
    let key = bytes(machine_id)?;
    let msg = bytes(app_id)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
        .map_err(|_| FleetLockError::BadMachineId(machine_id.to_owned()))?;
    mac.update(&msg);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(hex::encode(id))
}

/// A FleetLock client for one machine in one group.
#[derive(Debug, Clone)]
pub struct FleetLockClient {
    http: reqwest::Client,
    base: Url,
    body: RequestBody,
}

impl FleetLockClient {
    /// A client talking to `base` (e.g. `https://lock.example.com/fleetlock/`; a missing
    /// trailing slash is added so `v1/pre-reboot` goes *under* it).
    pub fn new(http: reqwest::Client, mut base: Url, group: &str, id: &str) -> Self {
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Self {
            http,
            base,
            body: RequestBody {
                client_params: ClientParams {
                    id: id.to_owned(),
                    group: group.to_owned(),
                },
            },
        }
    }

    /// Takes a reboot slot (`v1/pre-reboot`); `Ok` means this machine holds one.
    pub async fn pre_reboot(&self) -> Result<(), FleetLockError> {
        self.post("pre-reboot").await
    }

    /// Gives this machine's slot back (`v1/steady-state`); `Ok` also when it held none.
    pub async fn steady_state(&self) -> Result<(), FleetLockError> {
        self.post("steady-state").await
    }

    async fn post(&self, op: &'static str) -> Result<(), FleetLockError> {
        let url = self
            .base
            .join(&format!("v1/{op}"))
            .map_err(|_| FleetLockError::BadBaseUrl(self.base.to_string()))?;
        let transport = |source| FleetLockError::Transport {
            op,
            url: url.to_string(),
            source,
        };
        let resp = self
            .http
            .post(url.clone())
            .header(PROTOCOL_HEADER, "true")
            .json(&self.body)
            .timeout(Duration::from_secs(30 * 60))
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_ERROR_BODY {
                body.truncate(MAX_ERROR_BODY);
                break;
            }
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => Err(FleetLockError::Server {
                op,
                status,
                kind: e.kind,
                value: e.value,
            }),
            Err(_) => Err(FleetLockError::Status {
                op,
                url: url.to_string(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(512).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn app_specific_id_is_a_v4_uuid_and_stable() {
        let a = app_specific_id("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(&a[12..13], "4");
        assert!(matches!(&a[16..17], "8" | "9" | "a" | "b"));
        assert_eq!(
            a,
            app_specific_id("0123456789ABCDEF0123456789ABCDEF\n").unwrap()
        );
        assert_ne!(
            a,
            app_specific_id("1123456789abcdef0123456789abcdef").unwrap()
        );
        assert!(app_specific_id("nope").is_err());
    }

    #[test]
    fn app_specific_id_matches_systemd() {
        // systemd-id128 computes the same function from /etc/machine-id.
        let Ok(mid) = std::fs::read_to_string("/etc/machine-id") else {
            eprintln!("SKIPPED: no /etc/machine-id");
            return;
        };
        let Ok(out) = std::process::Command::new("systemd-id128")
            .args(["machine-id", "--app-specific", FLEET_LOCK_APP_ID])
            .output()
        else {
            eprintln!("SKIPPED: systemd-id128 missing");
            return;
        };
        if !out.status.success() {
            eprintln!("SKIPPED: systemd-id128 failed");
            return;
        }
        let expect = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(app_specific_id(mid.trim()).unwrap(), expect);
    }

    #[test]
    fn body_is_zincatis_shape() {
        let b = RequestBody {
            client_params: ClientParams {
                id: "abc".into(),
                group: "workers".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"client_params":{"id":"abc","group":"workers"}}"#
        );
    }
}
