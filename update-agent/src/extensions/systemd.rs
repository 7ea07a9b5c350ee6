//! Restarting units through systemd's D-Bus API (`org.freedesktop.systemd1.Manager`):
//! `Reload` first (what `systemctl daemon-reload` calls; its reply comes once the unit files are
//! re-read), so a unit shipped or changed by the newly merged extension is what runs — systemd
//! before v255 does not reload after `systemd-sysext refresh`, and restarts the unit's old
//! definition. Then `RestartUnit(name, "replace")` returns a job; the restart succeeded when that
//! job's `JobRemoved` signal says `done` and the unit's `ActiveState` is then `active`.
//!
//! The `JobRemoved` match is registered before `RestartUnit` is called, so a job that finishes
//! before the reply arrives is not missed.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use crate::dbus::client::{self, ConnectError};

/// systemd's bus name.
pub const SYSTEMD1_NAME: &str = "org.freedesktop.systemd1";
/// systemd's manager object.
pub const SYSTEMD1_PATH: &str = "/org/freedesktop/systemd1";
/// First wait between two `ActiveState` reads while a unit is still activating; doubled up to
/// [`MAX_STATE_POLL`].
const STATE_POLL: Duration = Duration::from_millis(50);
/// Longest wait between two `ActiveState` reads.
const MAX_STATE_POLL: Duration = Duration::from_secs(1);

/// Why a unit restart failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// Connecting to the bus failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A method call or property read failed.
    #[error("systemd {call} for {unit} failed: {source}")]
    Call {
        /// The method.
        call: &'static str,
        /// The unit.
        unit: String,
        /// zbus' error.
        source: Box<zbus::Error>,
    },
    /// The restart job ended with another result than `done`.
    #[error("restart of {unit} failed: job {job} ended with result {result:?}")]
    JobFailed {
        /// The unit.
        unit: String,
        /// The job path.
        job: String,
        /// systemd's job result (`failed`, `timeout`, `canceled`, `dependency`...).
        result: String,
    },
    /// The unit is not active after its restart job completed.
    #[error("{unit} is {state:?} after its restart, not \"active\"")]
    NotActive {
        /// The unit.
        unit: String,
        /// Its `ActiveState`.
        state: String,
    },
    /// The job or the unit did not finish in time.
    #[error("restart of {unit} did not finish within {}s ({waiting_for})", after.as_secs())]
    TimedOut {
        /// The unit.
        unit: String,
        /// The time allowed.
        after: Duration,
        /// What was still awaited.
        waiting_for: &'static str,
    },
    /// No D-Bus connection was available to the agent.
    #[error("cannot restart {unit}: the agent has no D-Bus connection to systemd")]
    NoBus {
        /// The unit.
        unit: String,
    },
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
trait Manager {
    /// Asks systemd to emit job and unit signals to this client.
    fn subscribe(&self) -> zbus::Result<()>;
    /// Re-reads every unit file (`systemctl daemon-reload`); replies when done.
    fn reload(&self) -> zbus::Result<()>;
    /// Restarts `name` (`mode`: `replace`); returns the job's object path.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// The object path of a loaded unit.
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// A job finished: (id, job path, unit, result).
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
trait Unit {
    /// `active`, `activating`, `failed`, `inactive`...
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

/// A connection to systemd.
#[derive(Debug, Clone)]
pub struct Systemd {
    conn: zbus::Connection,
}

fn call(call: &'static str, unit: &str) -> impl FnOnce(zbus::Error) -> SystemdError {
    let unit = unit.to_owned();
    move |source| SystemdError::Call {
        call,
        unit,
        source: Box::new(source),
    }
}

impl Systemd {
    /// systemd on the system bus.
    pub async fn system() -> Result<Self, SystemdError> {
        Ok(Self::from_connection(client::connect(None).await?))
    }

    /// systemd (or a stand-in) on the bus at `address` (tests: a private `dbus-daemon`).
    pub async fn at_address(address: &str) -> Result<Self, SystemdError> {
        Ok(Self::from_connection(client::connect(Some(address)).await?))
    }

    /// Over an existing connection (the agent's system-bus connection).
    pub fn from_connection(conn: zbus::Connection) -> Self {
        Self { conn }
    }

    /// Reloads systemd's unit files (`Reload`, as `systemctl daemon-reload`), so that the restarts
    /// after a refresh run the units as the merged extensions define them. `unit` is the first
    /// unit to restart (named in the error).
    pub async fn reload(&self, unit: &str) -> Result<(), SystemdError> {
        let manager = ManagerProxy::new(&self.conn)
            .await
            .map_err(call("proxy", unit))?;
        manager.reload().await.map_err(call("Reload", unit))?;
        tracing::info!("systemd reloaded its unit files");
        Ok(())
    }

    /// Restarts `unit` and waits (at most `timeout`) for its job to complete with `done` and
    /// for the unit to be `active`.
    pub async fn restart_unit(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        let deadline = Instant::now() + timeout;
        let manager = ManagerProxy::new(&self.conn)
            .await
            .map_err(call("proxy", unit))?;
        if let Err(e) = manager.subscribe().await {
            // Already subscribed (or a stand-in without it): signals still arrive then.
            tracing::debug!(error = %e, "systemd Subscribe failed");
        }
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(call("JobRemoved match", unit))?;
        let job = manager
            .restart_unit(unit, "replace")
            .await
            .map_err(call("RestartUnit", unit))?;
        tracing::info!(unit, job = %job.as_str(), "unit restart queued");
        let timed_out = |waiting_for| SystemdError::TimedOut {
            unit: unit.to_owned(),
            after: timeout,
            waiting_for,
        };
        let result = loop {
            let next = tokio::time::timeout_at(deadline, removed.next())
                .await
                .map_err(|_| timed_out("the job's JobRemoved signal"))?;
            let Some(signal) = next else {
                return Err(SystemdError::Call {
                    call: "JobRemoved",
                    unit: unit.to_owned(),
                    source: Box::new(zbus::Error::Failure("the signal stream ended".into())),
                });
            };
            let Ok(args) = signal.args() else { continue };
            if args.job.as_str() == job.as_str() {
                break args.result.to_owned();
            }
        };
        if result != "done" {
            return Err(SystemdError::JobFailed {
                unit: unit.to_owned(),
                job: job.as_str().to_owned(),
                result,
            });
        }
        self.wait_active(unit, deadline, timeout).await
    }

    /// Waits until `unit`'s `ActiveState` is `active`; `activating`/`reloading` are waited out,
    /// anything else fails.
    async fn wait_active(
        &self,
        unit: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), SystemdError> {
        let manager = ManagerProxy::new(&self.conn)
            .await
            .map_err(call("proxy", unit))?;
        let path = manager
            .get_unit(unit)
            .await
            .map_err(call("GetUnit", unit))?;
        let proxy: UnitProxy<'_> = client::uncached_proxy(&self.conn, path)
            .await
            .map_err(call("Unit", unit))?;
        let mut pause = STATE_POLL;
        loop {
            let state = proxy
                .active_state()
                .await
                .map_err(call("ActiveState", unit))?;
            match state.as_str() {
                "active" => {
                    tracing::info!(unit, "unit restarted and active");
                    return Ok(());
                }
                "activating" | "reloading" => {}
                _ => {
                    return Err(SystemdError::NotActive {
                        unit: unit.to_owned(),
                        state,
                    });
                }
            }
            if Instant::now() + pause > deadline {
                return Err(SystemdError::TimedOut {
                    unit: unit.to_owned(),
                    after: timeout,
                    waiting_for: "ActiveState active",
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_STATE_POLL);
        }
    }
}
