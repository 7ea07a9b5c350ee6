//! Client side of the agent's D-Bus API (used by `updatectl` and the tests): proxies for
//! `org.platte.Update1` and update_engine's `com.coreos.update1.Manager`, and
//! [`fetch_properties`], which reads every `org.platte.Update1` property in one call.

// zbus generates the signal's trait, stream and argument types without documentation.
#![allow(missing_docs)]

use std::collections::HashMap;

use zbus::names::InterfaceName;
use zbus::zvariant::OwnedValue;

use super::view::Properties;
use super::{UPDATE1_INTERFACE, UPDATE1_NAME, UPDATE1_PATH};

/// `org.platte.Update1`.
#[zbus::proxy(
    interface = "org.platte.Update1",
    default_service = "org.platte.Update1",
    default_path = "/org/platte/Update1",
    gen_blocking = false
)]
pub trait Update1 {
    /// Starts an interactive check; returns the serial of the answering check.
    fn check_now(&self) -> zbus::Result<u64>;
    /// Checks, downloads and stages now; returns the serial of the answering check.
    fn apply_now(&self) -> zbus::Result<u64>;
    /// Reboots into the staged update, through the coordinator or (`force`) at once.
    fn reboot_now(&self, force: bool) -> zbus::Result<()>;
    /// Forgets a staged or failed update.
    fn reset(&self) -> zbus::Result<()>;
    /// Removes a version (`""`: all) from the deny list; returns what was removed.
    fn clear_deny_list(&self, version: &str) -> zbus::Result<Vec<String>>;
    /// `Status`.
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    /// `ChecksCompleted`.
    #[zbus(property)]
    fn checks_completed(&self) -> zbus::Result<u64>;
    /// `NextRebootWindow`.
    #[zbus(property)]
    fn next_reboot_window(&self) -> zbus::Result<i64>;
}

/// update_engine's `com.coreos.update1.Manager`.
#[zbus::proxy(
    interface = "com.coreos.update1.Manager",
    default_service = "com.coreos.update1",
    default_path = "/com/coreos/update1",
    gen_blocking = false
)]
pub trait Manager {
    /// Starts an interactive check.
    fn attempt_update(&self) -> zbus::Result<()>;
    /// Back to idle.
    fn reset_status(&self) -> zbus::Result<()>;
    /// `(last_checked_time, progress, current_operation, new_version, new_size)`.
    fn get_status(&self) -> zbus::Result<(i64, f64, String, String, i64)>;
    /// Status change.
    #[zbus(signal)]
    fn status_update(
        &self,
        last_checked_time: i64,
        progress: f64,
        current_operation: String,
        new_version: String,
        new_size: i64,
    ) -> zbus::Result<()>;
}

/// A property missing or of the wrong type in a `GetAll` answer.
#[derive(Debug, thiserror::Error)]
#[error("property {name} of {UPDATE1_INTERFACE}: {problem}")]
pub struct PropertyError {
    /// The property.
    pub name: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn take<T>(map: &HashMap<String, OwnedValue>, name: &'static str) -> Result<T, PropertyError>
where
    T: TryFrom<OwnedValue>,
    T::Error: std::fmt::Display,
{
    let v = map.get(name).ok_or(PropertyError {
        name,
        problem: "missing (is the agent older than this updatectl?)".into(),
    })?;
    let v = v.try_clone().map_err(|e| PropertyError {
        name,
        problem: e.to_string(),
    })?;
    T::try_from(v).map_err(|e| PropertyError {
        name,
        problem: e.to_string(),
    })
}

/// Every `org.platte.Update1` property, and `NextRebootWindow`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The signalled properties.
    pub props: Properties,
    /// `NextRebootWindow` (Unix seconds; 0: no windows).
    pub next_reboot_window: i64,
}

/// Reads every property with one `GetAll`.
pub async fn fetch_properties(conn: &zbus::Connection) -> Result<Fetched, FetchError> {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(UPDATE1_NAME)?
        .path(UPDATE1_PATH)?
        .build()
        .await?;
    let map = props
        .get_all(InterfaceName::from_static_str_unchecked(UPDATE1_INTERFACE))
        .await?;
    let p = Properties {
        status: take(&map, "Status")?,
        progress: take(&map, "Progress")?,
        current_version: take(&map, "CurrentVersion")?,
        new_version: take(&map, "NewVersion")?,
        new_size: take(&map, "NewSize")?,
        // Absent from agents that predate delta payloads: not a delta.
        new_is_delta: match map.contains_key("NewIsDelta") {
            true => take(&map, "NewIsDelta")?,
            false => false,
        },
        last_check_time: take(&map, "LastCheckTime")?,
        booted_slot: take(&map, "BootedSlot")?,
        reboot_strategy: take(&map, "RebootStrategy")?,
        last_error: take(&map, "LastError")?,
        held_lock: take(&map, "HeldLock")?,
        deny_list: take(&map, "DenyList")?,
        checks_completed: take(&map, "ChecksCompleted")?,
        last_check_result: take(&map, "LastCheckResult")?,
        reboot_wait: take(&map, "RebootWait")?,
        // Absent from agents that predate runtime extensions: none.
        extensions: match map.contains_key("Extensions") {
            true => take(&map, "Extensions")?,
            false => Vec::new(),
        },
    };
    Ok(Fetched {
        props: p,
        next_reboot_window: take(&map, "NextRebootWindow")?,
    })
}

/// [`fetch_properties`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The D-Bus call failed.
    #[error(transparent)]
    Dbus(#[from] zbus::Error),
    /// The D-Bus call failed (standard error).
    #[error(transparent)]
    Fdo(#[from] zbus::fdo::Error),
    /// The answer is not what this version expects.
    #[error(transparent)]
    Property(#[from] PropertyError),
}
