//! The async driver: observes logind, asks the [`Coordinator`], performs its decision, and
//! publishes what it is doing as a [`RebootView`] (for the D-Bus API and sd_notify status).

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use super::coordinator::{
    Coordinator, Decision, LockState, Observation, RebootRequest, WaitReason,
};
use super::fleet_lock::FleetLockClient;
use super::logind::{Logind, LogindError};
use super::sentinel::{self, SentinelError};
use super::time::{Clock, Sleeper, until};
use crate::scheduler::OsRng;

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
    #[error(transparent)]
    Sentinel(#[from] SentinelError),
    /// The staged-update channel was closed by the agent.
    #[error("the agent stopped reporting staged updates")]
    Closed,
}

/// What the reboot driver is doing, as other tasks see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RebootView {
    /// This machine holds a FleetLock slot.
    pub lock_held: bool,
    /// Why the reboot waits (`None`: not waiting, e.g. nothing staged).
    pub wait: Option<WaitReason>,
    /// When the coordinator looks again (`None`: only when something changes).
    pub wait_until: Option<Timestamp>,
    /// logind accepted the reboot.
    pub rebooting: bool,
    /// The last step failed (logind unreachable, sentinel not writable); retried.
    pub error: Option<String>,
}

impl RebootView {
    /// A short human-readable reason for the wait (`""` when not waiting).
    pub fn wait_text(&self) -> String {
        let at = |t: Option<Timestamp>| t.map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string());
        match &self.wait {
            None => String::new(),
            Some(WaitReason::StrategyOff) => {
                "strategy off: reboot with `updatectl reboot` or another tool".to_owned()
            }
            Some(WaitReason::OutsideWindow) => match at(self.wait_until) {
                Some(t) => format!("outside the maintenance windows; next opens {t}"),
                None => "outside the maintenance windows; none ever opens".to_owned(),
            },
            Some(WaitReason::LockRefused) => match at(self.wait_until) {
                Some(t) => format!("FleetLock slot refused; asking again at {t}"),
                None => "FleetLock slot refused".to_owned(),
            },
            Some(WaitReason::Inhibited { who, why }) => {
                format!("blocked by a shutdown inhibitor of {who:?} ({why})")
            }
            Some(WaitReason::GracePeriod) => match at(self.wait_until) {
                Some(t) => format!("logged-in users were told; rebooting at {t}"),
                None => "logged-in users were told".to_owned(),
            },
        }
    }
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
    view: watch::Sender<RebootView>,
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
            view: watch::channel(RebootView::default()).0,
        }
    }

    /// Publishes the [`RebootView`] on `tx` (instead of a channel of its own).
    pub fn with_view(mut self, tx: watch::Sender<RebootView>) -> Self {
        self.view = tx;
        self
    }

    /// Follows what the driver does (lock held, why it waits, rebooting).
    pub fn view(&self) -> watch::Receiver<RebootView> {
        self.view.subscribe()
    }

    fn publish(&self, decision: Option<&Decision>, error: Option<String>) {
        let lock_held = self.coordinator.lock() == LockState::Held;
        self.view.send_if_modified(|v| {
            let mut next = RebootView {
                lock_held,
                error,
                rebooting: v.rebooting,
                ..RebootView::default()
            };
            match decision {
                Some(Decision::Wait { until, reason }) => {
                    next.wait = Some(reason.clone());
                    next.wait_until = *until;
                }
                Some(Decision::Reboot) => next.rebooting = true,
                // An error keeps showing what the driver was waiting for.
                None => {
                    next.wait = v.wait.clone();
                    next.wait_until = v.wait_until;
                }
                Some(_) => {}
            }
            let changed = *v != next;
            *v = next;
            changed
        });
    }

    /// The coordinator (lock state, strategy).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    fn sync_sentinel(&mut self, staged: Option<&str>) -> Result<(), DriverError> {
        if self.config.reboot_required.is_none() || self.sentinel_for.as_deref() == staged {
            return Ok(());
        }
        sentinel::sync(self.config.reboot_required.as_deref(), staged)?;
        self.sentinel_for = staged.map(str::to_owned);
        Ok(())
    }

    /// Observes, decides and performs one decision; returns it. After
    /// [`Decision::Reboot`] logind has accepted the reboot. `manual`: a coordinated operator
    /// request ([`RebootRequest::Coordinated`]).
    pub async fn step(
        &mut self,
        staged: Option<&str>,
        manual: bool,
    ) -> Result<Decision, DriverError> {
        self.step_request(staged, manual.into()).await
    }

    /// [`Driver::step`] with any operator request, including a forced one.
    pub async fn step_request(
        &mut self,
        staged: Option<&str>,
        request: RebootRequest,
    ) -> Result<Decision, DriverError> {
        let res = self.step_inner(staged, request).await;
        match &res {
            Ok(d) => self.publish(Some(d), None),
            Err(e) => self.publish(None, Some(e.to_string())),
        }
        res
    }

    async fn step_inner(
        &mut self,
        staged: Option<&str>,
        request: RebootRequest,
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
            manual: request == RebootRequest::Coordinated,
            force: request == RebootRequest::Immediate,
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
                        // The retry jitter from the OS: hosts refused together spread out.
                        self.coordinator.lock_refused(now, &mut OsRng);
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
                tracing::info!(
                    version = staged.unwrap_or("?"),
                    forced = obs.force,
                    "rebooting through logind"
                );
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
    /// when a wait ends. `staged` carries the staged version (`None`: nothing staged); `manual`
    /// carries operator requests (`bool` for coordinated ones, or a [`RebootRequest`]). A request
    /// applies to the version staged when it was made: once that version is gone (reset, or
    /// superseded by a newer download) the strategy decides again.
    pub async fn run<M>(
        &mut self,
        mut staged: watch::Receiver<Option<String>>,
        mut manual: watch::Receiver<M>,
    ) -> Result<(), DriverError>
    where
        M: Copy + Into<RebootRequest>,
    {
        let mut request: RebootRequest = (*manual.borrow_and_update()).into();
        let mut request_for = staged.borrow().clone();
        loop {
            let current = staged.borrow_and_update().clone();
            let effective = if current.is_some() && current == request_for {
                request
            } else {
                RebootRequest::None
            };
            let wait = match self.step_request(current.as_deref(), effective).await {
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
                r = manual.changed() => {
                    r.map_err(|_| DriverError::Closed)?;
                    request = (*manual.borrow_and_update()).into();
                    request_for = staged.borrow().clone();
                }
            }
        }
    }
}
