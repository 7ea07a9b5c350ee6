//! The agent: the state machine ([`machine`]) driven by the check-in loop. [`Agent::run_once`]
//! runs one full cycle (report, check, install); [`Agent::run`] is the daemon loop timed by the
//! [`Scheduler`]. [`AgentHandle`] lets another task (the D-Bus service of issue 7) watch the
//! status and ask for a check now.

pub mod machine;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use omaha::{ErrorCode, EventRequest};
use tokio::sync::{Notify, watch};

pub use machine::{Action, Event, Machine, Status};
use report::Reporter;

use crate::boot::BootBackend;
use crate::config::Settings;
use crate::identity::Identity;
use crate::install::{InstallError, Installed, Installer, Refusal, ResumeRecord};
use crate::omaha_client::{self, CheckError, OmahaClient, reported};
use crate::rollback::{self, BootObservation, Outcome};
use crate::scheduler::{CheckResult, OsRng, Scheduler};
use crate::state::{
    AgentState, InstalledUpdate, LastError, PendingReport, Phase, StagedUpdate, StateError,
    StateStore,
};

/// What one cycle did.
#[derive(Debug)]
pub enum CycleOutcome {
    /// No update offered.
    NoUpdate,
    /// The offered version is already staged; nothing downloaded.
    AlreadyStaged {
        /// The staged version.
        version: String,
    },
    /// An update was installed and is staged.
    Installed(Installed),
    /// The offer was refused by policy.
    Refused(Refusal),
    /// The check failed.
    CheckFailed(CheckError),
    /// The install failed.
    InstallFailed(InstallError),
}

impl CycleOutcome {
    /// `update-agent run --once` exit status: 0 nothing new (no update, or already staged),
    /// 2 an update was installed and staged, 3 the offer was refused by policy, 1 error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CycleOutcome::NoUpdate | CycleOutcome::AlreadyStaged { .. } => 0,
            CycleOutcome::Installed(_) => 2,
            CycleOutcome::Refused(_) => 3,
            CycleOutcome::CheckFailed(_) | CycleOutcome::InstallFailed(_) => 1,
        }
    }
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No Omaha server is configured.
    #[error("updates.server is not set: the agent has no server to check")]
    NoServer,
    /// The state cannot be loaded or saved.
    #[error(transparent)]
    State(#[from] StateError),
    /// The HTTP client cannot be built.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// The slots cannot be read.
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
}

/// A view of a running agent for other tasks.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// The current status.
    pub status: watch::Receiver<Status>,
    check_now: Arc<Notify>,
}

impl AgentHandle {
    /// Asks the daemon loop to check now (skipping the wait).
    pub fn check_now(&self) {
        self.check_now.notify_one();
    }
}

/// The host agent.
pub struct Agent {
    settings: Settings,
    identity: Identity,
    backend: Box<dyn BootBackend>,
    store: StateStore,
    state: AgentState,
    http: reqwest::Client,
    omaha: OmahaClient,
    machine: Machine,
    status_tx: watch::Sender<Status>,
    check_now: Arc<Notify>,
    poll_interval: Option<Duration>,
}

fn unix_now() -> u64 {
    payloads::unix_now()
}

impl Agent {
    /// Sets the agent up: loads the state, and after a reboot detects whether the staged update
    /// booted or rolled back (a rollback deny-lists the version; both are reported on the next
    /// check).
    pub fn new(
        settings: Settings,
        identity: Identity,
        backend: Box<dyn BootBackend>,
        store: StateStore,
    ) -> Result<Self, AgentError> {
        let server = settings
            .updates
            .server
            .clone()
            .ok_or(AgentError::NoServer)?;
        let http = crate::http::client(&settings.http)?;
        let omaha = OmahaClient::new(http.clone(), server, settings.http.request_timeout);
        let mut state = store.load()?.state;
        let booted = backend.booted_slot()?;
        let outcome = rollback::detect(
            state.installed_before_reboot.as_ref(),
            &BootObservation {
                boot_id: &identity.boot_id,
                booted_slot: booted,
                running_version: &identity.os_version,
            },
        );
        match &outcome {
            Outcome::NoChange => {}
            Outcome::UpdatedOk {
                version,
                previous_version,
            } => {
                tracing::info!(version = %version, previous = %previous_version, slot = %booted, "booted the installed update");
            }
            Outcome::RolledBack { version } => {
                tracing::error!(version = %version, running = %identity.os_version, slot = %booted, "update rolled back; version deny-listed");
            }
        }
        if state.apply_outcome(&outcome) {
            store.save(&state)?;
        }
        let staged = match (&state.phase, &state.staged) {
            (Phase::Staged, Some(s)) => Some(s.version.clone()),
            _ => None,
        };
        let machine = Machine::new(staged);
        let (status_tx, _) = watch::channel(machine.status().clone());
        Ok(Self {
            settings,
            identity,
            backend,
            store,
            state,
            http,
            omaha,
            machine,
            status_tx,
            check_now: Arc::new(Notify::new()),
            poll_interval: None,
        })
    }

    /// A handle for watching the status and requesting checks.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            status: self.status_tx.subscribe(),
            check_now: Arc::clone(&self.check_now),
        }
    }

    /// The persisted state.
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    fn on(&mut self, ev: Event) -> Action {
        let a = self.machine.on(ev);
        self.status_tx.send_replace(self.machine.status().clone());
        a
    }

    fn record_error(&mut self, code: ErrorCode, message: String) -> Result<(), StateError> {
        self.state.last_error = Some(LastError {
            code: code.to_u32(),
            message,
            at_unix: unix_now(),
        });
        self.store.save(&self.state)
    }

    /// Sends one event, logging (not failing) when the server cannot be reached.
    async fn send_event(&self, event: EventRequest) -> bool {
        let req = omaha_client::event_request(&self.identity, event);
        match self.omaha.send(&req).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not report event");
                false
            }
        }
    }

    /// One full cycle: pending reports, update check, and install when an update is offered.
    pub async fn run_once(&mut self, interactive: bool) -> CycleOutcome {
        // A rollback is reported as its own 3/0 event before the check.
        if let Some(PendingReport::RolledBack { version }) = self.state.pending_report.clone() {
            let mut ev = EventRequest::error(reported(ErrorCode::RollbackError));
            ev.previousversion = Some(version);
            if self.send_event(ev).await {
                self.state.pending_report = None;
                if let Err(e) = self.store.save(&self.state) {
                    tracing::error!(error = %e, "cannot save state");
                }
            }
        }
        let previous = match &self.state.pending_report {
            Some(PendingReport::Rebooted { previous_version }) => Some(previous_version.clone()),
            _ => None,
        };
        self.on(Event::CheckStarted);
        tracing::info!(version = %self.identity.os_version, app = %self.identity.app_id, server = %self.omaha.url(), "checking for an update");
        let req = omaha_client::check_request(&self.identity, previous.as_deref(), interactive);
        let answer = match self
            .omaha
            .send(&req)
            .await
            .and_then(|r| omaha_client::interpret(&r, &self.identity.app_id))
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "update check failed");
                let code = e.code();
                self.on(Event::CheckFailed {
                    code: code.to_u32(),
                    message: e.to_string(),
                });
                if let Err(se) = self.record_error(code, e.to_string()) {
                    tracing::error!(error = %se, "cannot save state");
                }
                return CycleOutcome::CheckFailed(e);
            }
        };
        if previous.is_some() {
            self.state.pending_report = None;
            if let Err(e) = self.store.save(&self.state) {
                tracing::error!(error = %e, "cannot save state");
            }
        }
        self.poll_interval = answer.poll_interval;
        let Some(offer) = answer.offer else {
            tracing::info!(version = %self.identity.os_version, "no update");
            self.on(Event::NoUpdate);
            return CycleOutcome::NoUpdate;
        };
        if self.on(Event::Offered(offer.version.clone())) == Action::None {
            tracing::info!(version = %offer.version, "offered version is already staged; waiting for a reboot");
            return CycleOutcome::AlreadyStaged {
                version: offer.version,
            };
        }
        tracing::info!(version = %offer.version, size = offer.size, rollback = offer.rollback, "update offered");
        self.install(&offer).await
    }

    async fn install(&mut self, offer: &omaha_client::Offer) -> CycleOutcome {
        let resume: Option<ResumeRecord> = self
            .state
            .checkpoint
            .clone()
            .and_then(|v| serde_json::from_value(v).ok());
        let deny_list = self.state.deny_list.clone();
        let result = {
            let installer = Installer {
                identity: &self.identity,
                settings: &self.settings,
                backend: self.backend.as_ref(),
                http: &self.http,
                now_unix: unix_now(),
            };
            let mut reporter = Reporter {
                omaha: &self.omaha,
                identity: &self.identity,
                store: &self.store,
                state: &mut self.state,
                machine: &mut self.machine,
                status_tx: &self.status_tx,
                version: &offer.version,
                last_progress_log: Instant::now(),
            };
            installer
                .install(offer, &deny_list, resume, &mut reporter)
                .await
        };
        match result {
            Ok(done) => {
                self.state.phase = Phase::Staged;
                self.state.staged = Some(StagedUpdate {
                    version: done.version.clone(),
                    slot: done.slot,
                });
                self.state.checkpoint = None;
                self.state.last_error = None;
                self.state.installed_before_reboot = Some(InstalledUpdate {
                    version: done.version.clone(),
                    slot: done.slot,
                    from_version: self.identity.os_version.clone(),
                    boot_id: self.identity.boot_id.clone(),
                });
                if let Err(e) = self.store.save(&self.state) {
                    tracing::error!(error = %e, "cannot save state");
                }
                self.on(Event::SlotActivated);
                self.send_event(EventRequest::update_installed()).await;
                tracing::info!(version = %done.version, slot = %done.slot, downloaded = done.downloaded, resumed = done.resumed, "update staged; reboot to activate it");
                CycleOutcome::Installed(done)
            }
            Err(InstallError::Refused(r)) => {
                tracing::warn!(reason = %r, "update refused");
                self.on(Event::Refused);
                let code = InstallError::Refused(r.clone()).code();
                if let Err(e) = self.record_error(code, r.to_string()) {
                    tracing::error!(error = %e, "cannot save state");
                }
                // As update_engine: a policy refusal is "deferred" (3/9), not a failure (3/0).
                self.send_event(EventRequest::deferred(reported(code)))
                    .await;
                CycleOutcome::Refused(r)
            }
            Err(e) => {
                tracing::error!(error = %e, version = %offer.version, "install failed");
                let code = e.code();
                self.on(Event::InstallFailed {
                    code: code.to_u32(),
                    message: e.to_string(),
                });
                if self.machine.staged().is_none() {
                    // The inactive slot was (partly) overwritten: nothing is staged any more;
                    // a kept checkpoint resumes this version's download next time.
                    self.state.installed_before_reboot = None;
                    if self.state.checkpoint.is_none() {
                        self.state.staged = None;
                        self.state.phase = Phase::Idle;
                    }
                }
                if let Err(se) = self.record_error(code, e.to_string()) {
                    tracing::error!(error = %se, "cannot save state");
                }
                self.send_event(EventRequest::error(reported(code))).await;
                CycleOutcome::InstallFailed(e)
            }
        }
    }

    /// The daemon loop: checks on the [`Scheduler`]'s timing (or at once when asked through an
    /// [`AgentHandle`]) until `shutdown` resolves.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        let mut rng = OsRng;
        let mut sched = Scheduler::new(self.settings.check.clone());
        let mut deadline = sched.first(Instant::now(), &mut rng);
        let check_now = Arc::clone(&self.check_now);
        tokio::pin!(shutdown);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            tracing::info!(
                next_check_in_s = wait.as_secs(),
                "waiting for the next check"
            );
            let interactive = tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => false,
                _ = check_now.notified() => true,
            };
            if !self.settings.updates.enabled && !interactive {
                deadline = sched.next(
                    Instant::now(),
                    CheckResult::Answered {
                        poll_interval: None,
                    },
                    &mut rng,
                );
                continue;
            }
            let outcome = tokio::select! {
                _ = &mut shutdown => return,
                o = self.run_once(interactive) => o,
            };
            let result = match outcome {
                CycleOutcome::CheckFailed(_) | CycleOutcome::InstallFailed(_) => {
                    CheckResult::Failed
                }
                _ => CheckResult::Answered {
                    poll_interval: self.poll_interval,
                },
            };
            deadline = sched.next(Instant::now(), result, &mut rng);
            if sched.failures() > 0 {
                tracing::warn!(failures = sched.failures(), "backing off after failures");
            }
        }
    }
}
