//! The async driver: observes logind, asks the [`Coordinator`], performs its decision.

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use super::coordinator::{Coordinator, Decision, Observation};
use super::fleet_lock::FleetLockClient;
use super::logind::{Logind, LogindError};
use super::sentinel;
use super::time::{Clock, Sleeper, until};

/// Longest a notification command may run.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait after a failed step before trying again.
const ERROR_RETRY: Duration = Duration::from_secs(30);

/// A driver step failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// logind could not be asked or refused to reboot.
    #[error(transparent)]
    Logind(#[from] LogindError),
    /// The reboot-required sentinel could not be written or removed.
    #[error("cannot update {}: {source}", path.display())]
    Sentinel {
        /// The sentinel path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The staged-update channel was closed by the agent.
    #[error("the agent stopped reporting staged updates")]
    Closed,
}

/// What the driver needs besides the coordinator.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// FleetLock client (strategy `fleet-lock` only).
    pub fleet_lock: Option<FleetLockClient>,
    /// Program and arguments run to tell logged-in users; the message is appended as the
    /// last argument. Empty: nobody is told (the grace period still applies).
    pub notify_command: Vec<String>,
    /// `/run/reboot-required` (kured); `None`: not written.
    pub reboot_required: Option<PathBuf>,
}

/// Drives one [`Coordinator`] with real I/O and injected time.
pub struct Driver<C: Clock, S: Sleeper> {
    coordinator: Coordinator,
    logind: Logind,
    config: DriverConfig,
    clock: C,
    sleeper: S,
    sentinel_for: Option<String>,
}

impl<C: Clock, S: Sleeper> Driver<C, S> {
    /// A driver.
    pub fn new(
        coordinator: Coordinator,
        logind: Logind,
        config: DriverConfig,
        clock: C,
        sleeper: S,
    ) -> Self {
        Self {
            coordinator,
            logind,
            config,
            clock,
            sleeper,
            sentinel_for: None,
        }
    }

    /// The coordinator (lock state, strategy).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    fn sync_sentinel(&mut self, staged: Option<&str>) -> Result<(), DriverError> {
        let Some(path) = &self.config.reboot_required else {
            return Ok(());
        };
        if self.sentinel_for.as_deref() == staged {
            return Ok(());
        }
        let res = match staged {
            Some(v) => sentinel::write(path, v),
            None => sentinel::remove(path),
        };
        res.map_err(|source| DriverError::Sentinel {
            path: path.clone(),
            source,
        })?;
        self.sentinel_for = staged.map(str::to_owned);
        Ok(())
    }

    /// Observes, decides and performs one decision; returns it. After
    /// [`Decision::Reboot`] logind has accepted the reboot.
    pub async fn step(
        &mut self,
        staged: Option<&str>,
        manual: bool,
    ) -> Result<Decision, DriverError> {
        self.sync_sentinel(staged)?;
        let now = self.clock.now();
        let (inhibitors, users) = if staged.is_some() {
            (
                self.logind.inhibitors().await?,
                self.logind.interactive_users().await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let obs = Observation {
            now,
            staged: staged.map(str::to_owned),
            manual,
            inhibitors,
            users,
        };
        let decision = self.coordinator.decide(&obs);
        match &decision {
            Decision::Idle | Decision::Wait { .. } => {}
            Decision::AcquireLock => match &self.config.fleet_lock {
                Some(fl) => match fl.pre_reboot().await {
                    Ok(()) => {
                        tracing::info!("fleet lock acquired");
                        self.coordinator.lock_acquired();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "fleet lock not granted");
                        self.coordinator.lock_refused(now);
                    }
                },
                None => self.coordinator.lock_acquired(),
            },
            Decision::ReleaseLock => {
                if let Some(fl) = &self.config.fleet_lock {
                    match fl.steady_state().await {
                        Ok(()) => self.coordinator.lock_released(),
                        Err(e) => tracing::warn!(error = %e, "fleet lock release failed"),
                    }
                } else {
                    self.coordinator.lock_released();
                }
            }
            Decision::NotifyUsers { users, at } => {
                self.notify(users, *at, staged.unwrap_or("?")).await;
                self.coordinator.users_notified(now);
            }
            Decision::Reboot => {
                tracing::info!(version = staged.unwrap_or("?"), "rebooting through logind");
                self.logind.reboot().await?;
            }
        }
        Ok(decision)
    }

    async fn notify(&self, users: &[String], at: Timestamp, version: &str) {
        let Some((program, args)) = self.config.notify_command.split_first() else {
            tracing::info!(?users, "users logged in; no notify_command configured");
            return;
        };
        let message = format!(
            "This host reboots at {} to apply update {version}. Please save your work.",
            at.strftime("%Y-%m-%d %H:%M UTC")
        );
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .arg(&message)
            .stdin(std::process::Stdio::null());
        let res = tokio::task::spawn_blocking(
            move || -> std::io::Result<Option<std::process::ExitStatus>> {
                use wait_timeout::ChildExt as _;
                let mut child = cmd.spawn()?;
                let status = child.wait_timeout(NOTIFY_TIMEOUT)?;
                if status.is_none() {
                    child.kill()?;
                    child.wait()?;
                }
                Ok(status)
            },
        )
        .await;
        match res {
            Ok(Ok(Some(s))) if s.success() => tracing::info!(?users, "users notified"),
            other => tracing::warn!(?users, result = ?other, "notify_command failed"),
        }
    }

    /// Runs until logind accepts a reboot: evaluates whenever `staged` or `manual` change and
    /// when a wait ends. `staged` carries the staged version (`None`: nothing staged).
    pub async fn run(
        &mut self,
        mut staged: watch::Receiver<Option<String>>,
        mut manual: watch::Receiver<bool>,
    ) -> Result<(), DriverError> {
        loop {
            let current = staged.borrow_and_update().clone();
            let is_manual = *manual.borrow_and_update();
            let wait = match self.step(current.as_deref(), is_manual).await {
                Ok(Decision::Reboot) => return Ok(()),
                Ok(
                    Decision::AcquireLock | Decision::ReleaseLock | Decision::NotifyUsers { .. },
                ) => {
                    continue;
                }
                Ok(Decision::Idle) => None,
                Ok(Decision::Wait { until: t, reason }) => {
                    tracing::info!(?reason, until = ?t, "reboot waits");
                    t.map(|t| until(self.clock.now(), t))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reboot coordination step failed");
                    Some(ERROR_RETRY)
                }
            };
            let sleep = async {
                match wait {
                    Some(d) => self.sleeper.sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                r = staged.changed() => r.map_err(|_| DriverError::Closed)?,
                r = manual.changed() => r.map_err(|_| DriverError::Closed)?,
            }
        }
    }
}
