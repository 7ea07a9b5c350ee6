//! The agent: the update flow ([`flow`], one state machine) driven by the check-in loop.
//! [`Agent::run_once`] runs one full cycle (report, check, install); [`Agent::run`] is the daemon
//! loop timed by the [`Scheduler`]. The loop feeds the flow its events, performs its actions, and
//! saves and publishes what is derived from it: the update record of `state.json`, the
//! [`Status`] and the staged version. [`AgentHandle`] lets other tasks (the D-Bus service, the
//! reboot driver) watch the status, the staged version and [`AgentInfo`], ask for a check now,
//! and send the few commands that change the agent's state between cycles
//! ([`AgentHandle::reset`], [`AgentHandle::clear_deny_list`]). [`daemon`] wires the agent, the
//! reboot driver, the D-Bus service and sd_notify together for `update-agent run`.
//!
//! Runtime extensions ([`crate::extensions`], wired in `runtime_extensions.rs`) ride along: their
//! apps are in every OS check request, builds for a newly staged OS are fetched at once, and while
//! they are not ready the staged OS update is withheld from the reboot driver
//! ([`AgentHandle::rebootable`]).

pub mod daemon;
pub mod flow;
pub mod notify;
mod report;
mod runtime_extensions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use omaha::{ErrorCode, EventRequest};
use serde::Deserialize as _;
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use flow::{Action, Event, RefusedEvent, SlotRecord, Status, UpdateFlow};
use report::Reporter;
use runtime_extensions::RebootGate;

use crate::boot::{BootBackend, BootError, SlotId};
use crate::config::Settings;
use crate::extensions::{ExtensionStatus, Extensions};
use crate::identity::Identity;
use crate::install::{InstallError, Installed, Installer, PayloadKind, Refusal, ResumeRecord};
use crate::omaha_client::{self, CheckError, OmahaClient, reported};
use crate::reboot::sentinel::{self, SentinelError};
use crate::rollback::{self, BootObservation, Outcome};
use crate::scheduler::{CheckResult, OsRng, Scheduler};
use crate::state::{
    AgentState, DeltaFailure, InstalledUpdate, LastError, PendingReport, StateError, StateStore,
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
    /// The offered version is the one running (a version-blind server): declined, reported as
    /// `3/9` with Platte's code 3104, nothing touched (installing it would overwrite the
    /// fallback slot with a copy of the running version).
    AlreadyRunning {
        /// The running (and offered) version.
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
    /// `update-agent run --once` exit status: 0 nothing new (no update, already staged, or the
    /// running version offered), 2 an update was installed and staged, 3 the offer was refused
    /// by policy, 1 error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CycleOutcome::NoUpdate
            | CycleOutcome::AlreadyStaged { .. }
            | CycleOutcome::AlreadyRunning { .. } => 0,
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
    /// The host's identity cannot be read.
    #[error("reading this host's identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// The machine key cannot be read or created.
    #[error(transparent)]
    MachineKey(#[from] crate::machine_key::MachineKeyError),
}

/// What one finished cycle ended with (for `updatectl check` and the D-Bus API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleResult {
    /// The server had no update.
    NoUpdate,
    /// The offered version was already staged.
    AlreadyStaged,
    /// An update was installed and staged.
    Installed,
    /// The offer was refused by policy (downgrade, deny list).
    Refused,
    /// The check failed.
    CheckFailed,
    /// The install failed.
    InstallFailed,
}

impl CycleResult {
    /// Its name on the D-Bus API (`no_update`, `already_staged`, `installed`, `refused`,
    /// `check_failed`, `install_failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            CycleResult::NoUpdate => "no_update",
            CycleResult::AlreadyStaged => "already_staged",
            CycleResult::Installed => "installed",
            CycleResult::Refused => "refused",
            CycleResult::CheckFailed => "check_failed",
            CycleResult::InstallFailed => "install_failed",
        }
    }
}

impl From<&CycleOutcome> for CycleResult {
    fn from(o: &CycleOutcome) -> Self {
        match o {
            // The running version offered again is no update for the host.
            CycleOutcome::NoUpdate | CycleOutcome::AlreadyRunning { .. } => CycleResult::NoUpdate,
            CycleOutcome::AlreadyStaged { .. } => CycleResult::AlreadyStaged,
            CycleOutcome::Installed(_) => CycleResult::Installed,
            CycleOutcome::Refused(_) => CycleResult::Refused,
            CycleOutcome::CheckFailed(_) => CycleResult::CheckFailed,
            CycleOutcome::InstallFailed(_) => CycleResult::InstallFailed,
        }
    }
}

/// What the agent knows besides its [`Status`], published for the D-Bus API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentInfo {
    /// The running OS version.
    pub current_version: String,
    /// The slot the running system booted from (`None`: unknown).
    pub booted_slot: Option<SlotId>,
    /// When the server last answered an update check (Unix seconds; `None`: not since start).
    pub last_check_unix: Option<u64>,
    /// The last offer being installed or staged.
    pub offer: Option<OfferInfo>,
    /// The last failure (persisted in the state).
    pub last_error: Option<LastError>,
    /// Versions never installed automatically, sorted.
    pub deny_list: Vec<String>,
    /// Cycles (checks) started since the agent started.
    pub checks_started: u64,
    /// Cycles (checks) finished since the agent started.
    pub checks_completed: u64,
    /// How the last finished cycle ended.
    pub last_result: Option<CycleResult>,
    /// Each configured runtime extension's version and state (empty: none configured).
    pub extensions: Vec<ExtensionStatus>,
    /// Why the staged OS update waits for runtime extensions (empty: it does not).
    pub extensions_wait: String,
}

/// The offer being installed or staged, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferInfo {
    /// Version offered.
    pub version: String,
    /// Payload size announced.
    pub size: u64,
    /// Whether the payload is a delta (reading the active slot): as the offer announced it
    /// (`IsDeltaPayload`) until the payload's signed prefix is verified, then as it is.
    pub delta: bool,
}

/// A command the agent could not carry out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A check or install is running; state changes wait for it to finish.
    #[error("a check or install is running; try again when it has finished")]
    Busy,
    /// The version to clear is not on the deny list.
    #[error("version {0:?} is not on the deny list")]
    NotDenyListed(String),
    /// The staged slot could not be made unbootable.
    #[error("cannot make the staged slot unbootable: {0}")]
    Boot(#[source] BootError),
    /// The state could not be saved.
    #[error(transparent)]
    State(#[from] StateError),
    /// The agent's loop is not running (stopping, or not started yet).
    #[error("the agent is not running its loop (starting or stopping)")]
    Stopped,
}

/// Commands carried out by the daemon loop between cycles.
#[derive(Debug)]
enum Command {
    Reset(oneshot::Sender<Result<(), CommandError>>),
    ClearDenyList(
        Option<String>,
        oneshot::Sender<Result<Vec<String>, CommandError>>,
    ),
}

impl Command {
    fn refuse(self, e: impl FnOnce() -> CommandError) {
        // The caller may have given up waiting: nothing to tell then.
        match self {
            Command::Reset(r) => {
                let _ = r.send(Err(e()));
            }
            Command::ClearDenyList(_, r) => {
                let _ = r.send(Err(e()));
            }
        }
    }
}

/// Where the flow's status and staged version are published.
#[derive(Debug)]
struct Publisher {
    status: watch::Sender<Status>,
    staged: watch::Sender<Option<String>>,
    /// The staged version the reboot driver may act on (see [`AgentHandle::rebootable`]).
    rebootable: watch::Sender<Option<String>>,
    /// What the runtime extensions allow.
    gate: watch::Sender<RebootGate>,
}

/// Replaces `*slot` by `value`; whether it changed.
fn replace_if_changed<T: PartialEq>(slot: &mut T, value: T) -> bool {
    let changed = *slot != value;
    *slot = value;
    changed
}

impl Publisher {
    fn new(flow: &UpdateFlow, gate: RebootGate) -> Self {
        let staged = flow.staged_version().map(str::to_owned);
        let rebootable = gate.rebootable(staged.as_deref());
        Self {
            status: watch::channel(flow.status()).0,
            staged: watch::channel(staged).0,
            rebootable: watch::channel(rebootable).0,
            gate: watch::channel(gate).0,
        }
    }

    /// Publishes what is derived from `flow`: its status and its staged version.
    fn publish(&self, flow: &UpdateFlow) {
        self.status.send_replace(flow.status());
        let staged = flow.staged_version().map(str::to_owned);
        let rebootable = self.gate.borrow().rebootable(staged.as_deref());
        self.staged
            .send_if_modified(|s| replace_if_changed(s, staged));
        self.rebootable
            .send_if_modified(|s| replace_if_changed(s, rebootable));
    }

    /// Sets what the runtime extensions allow and publishes again.
    fn set_gate(&self, gate: RebootGate, flow: &UpdateFlow) {
        self.gate.send_replace(gate);
        self.publish(flow);
    }
}

/// A view of a running agent for other tasks.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// The current status.
    pub status: watch::Receiver<Status>,
    /// The staged version ([`UpdateFlow::staged_version`]; `None`: nothing staged, or a new
    /// download is overwriting it). It stays while a check runs over a staged update.
    pub staged: watch::Receiver<Option<String>>,
    /// The staged version the reboot driver may reboot into: [`Self::staged`], except while
    /// runtime extensions are not ready for it (then `None`; [`AgentInfo::extensions_wait`]
    /// says why).
    pub rebootable: watch::Receiver<Option<String>>,
    /// Everything else the agent knows.
    pub info: watch::Receiver<AgentInfo>,
    check_now: Arc<Notify>,
    commands: mpsc::Sender<Command>,
}

impl AgentHandle {
    /// Asks the daemon loop to check now (skipping the wait). Returns the serial of the check
    /// that answers the request: once [`AgentInfo::checks_completed`] reaches it, a check that
    /// started after the request has finished (a running check is followed by another one).
    pub fn check_now(&self) -> u64 {
        let serial = self.info.borrow().checks_started.saturating_add(1);
        self.check_now.notify_one();
        serial
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
    ) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| CommandError::Stopped)?;
        rx.await.map_err(|_| CommandError::Stopped)?
    }

    /// Forgets a staged or failed update, like update_engine's `ResetStatus`: a staged (or
    /// partly written) inactive slot is made unbootable (priority 0), the staged version, any
    /// resume checkpoint and the last error are dropped, and the status becomes `idle`. The
    /// deny list and the running slot are untouched. Refused with [`CommandError::Busy`] while a
    /// check or install runs.
    pub async fn reset(&self) -> Result<(), CommandError> {
        self.command(Command::Reset).await
    }

    /// Removes `version` from the deny list (`None`: every version); returns what was removed.
    pub async fn clear_deny_list(
        &self,
        version: Option<&str>,
    ) -> Result<Vec<String>, CommandError> {
        let v = version.map(str::to_owned);
        self.command(|r| Command::ClearDenyList(v, r)).await
    }
}

/// The host agent.
pub struct Agent {
    settings: Settings,
    identity: Identity,
    backend: Box<dyn BootBackend>,
    store: StateStore,
    /// What `state.json` holds besides the update record, which is written from `flow` on
    /// every save ([`save_state`]).
    state: AgentState,
    http: reqwest::Client,
    omaha: OmahaClient,
    /// The update flow: the one state machine of the update.
    flow: UpdateFlow,
    publisher: Publisher,
    info: watch::Sender<AgentInfo>,
    check_now: Arc<Notify>,
    commands_tx: mpsc::Sender<Command>,
    commands_rx: Option<mpsc::Receiver<Command>>,
    poll_interval: Option<Duration>,
    /// Runtime extensions (`None`: none configured).
    extensions: Option<Extensions>,
    /// Whether [`Extensions::reconcile`] ran since start.
    extensions_reconciled: bool,
    /// An operator asked for a repair ([`Agent::allow_repair`]): an offer of the running version
    /// is installed into the inactive slot instead of being declined.
    repair: bool,
}

/// Waits for the next command; never resolves once the receiver is gone.
async fn next_command(rx: &mut Option<mpsc::Receiver<Command>>) -> Command {
    match rx {
        Some(r) => match r.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

fn unix_now() -> u64 {
    payloads::unix_now()
}

/// Saves `state` with the update record of `flow`: the one way the agent writes `state.json`.
fn save_state(
    flow: &UpdateFlow,
    state: &mut AgentState,
    store: &StateStore,
) -> Result<(), StateError> {
    flow.record().write_to(state);
    store.save(state)
}

/// Applies `event` to `flow`, logging a refusal (the flow then stays where it was and nothing
/// is to be done).
fn apply(flow: &mut UpdateFlow, event: Event) -> Action {
    flow.on(event).unwrap_or_else(|refused| {
        tracing::error!(error = %refused, "update flow: event refused");
        Action::None
    })
}

/// Whether the failed install of `offer` was a delta's own failure, after which the agent asks
/// for the full payload: a delta that does not apply to the active slot, or a delta (as its
/// verified manifest says, `kind`; as the offer announced it when the payload was never
/// verified) that failed for a reason the full payload may not have
/// ([`InstallError::is_delta_failure`]).
fn failed_as_delta(
    e: &InstallError,
    kind: Option<&PayloadKind>,
    offer: &omaha_client::Offer,
) -> bool {
    let delta = kind.map_or(offer.delta, PayloadKind::is_delta);
    e.is_source_mismatch() || delta && e.is_delta_failure()
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
        let mut omaha = OmahaClient::new(http.clone(), server, settings.http.request_timeout);
        if settings.updates.machine_credential {
            let key = crate::machine_key::MachineKey::load_or_create(&settings.state_dir)?;
            omaha = omaha.with_machine_key(Arc::new(key));
        }
        let mut state = store.load()?.state;
        let record = SlotRecord::from_state(&state).unwrap_or_else(|e| {
            tracing::warn!(error = %e, file = %store.path().display(), "ignoring the update record of the state file");
            SlotRecord::Empty
        });
        let mut flow = UpdateFlow::at_rest(record);
        let booted = backend.booted_slot()?;
        let outcome = rollback::detect(
            flow.installed(),
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
        let mut changed = false;
        if state.record_outcome(&outcome) {
            apply(&mut flow, Event::Rebooted);
            changed = true;
        }
        if let Some(failed) = state.delta_failure.clone()
            && state.forget_stale_delta_failure(&identity.os_version)
        {
            tracing::info!(failed_on = %failed.running_version, running = %identity.os_version, "a delta failed on another version than the running one; deltas are asked for again");
            changed = true;
        }
        if changed {
            save_state(&flow, &mut state, &store)?;
        }
        let extensions = runtime_extensions::open(&settings, &identity, &http, &omaha);
        let publisher = Publisher::new(&flow, RebootGate::initial(extensions.as_ref()));
        let info = watch::channel(AgentInfo {
            current_version: identity.os_version.clone(),
            booted_slot: Some(booted),
            ..AgentInfo::default()
        })
        .0;
        let (commands_tx, commands_rx) = mpsc::channel(8);
        let agent = Self {
            settings,
            identity,
            backend,
            store,
            state,
            http,
            omaha,
            flow,
            publisher,
            info,
            check_now: Arc::new(Notify::new()),
            commands_tx,
            commands_rx: Some(commands_rx),
            poll_interval: None,
            extensions,
            extensions_reconciled: false,
            repair: false,
        };
        agent.sync_info();
        agent.sync_extensions();
        Ok(agent)
    }

    /// Sets the agent up on this host: identity from `paths`, the slots of `boot.backend`, and the
    /// state in `settings.state_dir` (see [`Agent::new`]).
    pub fn open(paths: &crate::HostPaths, settings: Settings) -> Result<Self, AgentError> {
        let identity = Identity::load(paths, &settings)?;
        let backend = crate::boot::from_settings(&settings.boot, paths)?;
        let store = StateStore::open(&settings.state_dir)?;
        tracing::info!(
            version = %identity.os_version,
            app = %identity.app_id,
            group = %identity.group,
            machine = %identity.machine_id,
            "update-agent starting"
        );
        Self::new(settings, identity, backend, store)
    }

    /// A handle for watching the status, requesting checks and sending commands.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            status: self.publisher.status.subscribe(),
            staged: self.publisher.staged.subscribe(),
            rebootable: self.publisher.rebootable.subscribe(),
            info: self.info.subscribe(),
            check_now: Arc::clone(&self.check_now),
            commands: self.commands_tx.clone(),
        }
    }

    /// The settings the agent runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// This host's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether the booted slot is marked good (its `successful` flag, set by `mark-good`).
    pub fn booted_marked_good(&self) -> Result<bool, BootError> {
        let booted = self.backend.booted_slot()?;
        Ok(self
            .backend
            .describe()?
            .iter()
            .any(|s| s.slot == booted && s.state.successful))
    }

    /// Copies what the D-Bus API shows from the persisted state.
    fn sync_info(&self) {
        let last_error = self.state.last_error.clone();
        let deny_list: Vec<String> = self.state.deny_list.iter().cloned().collect();
        self.info.send_if_modified(|i| {
            let changed = i.last_error != last_error || i.deny_list != deny_list;
            i.last_error = last_error;
            i.deny_list = deny_list;
            changed
        });
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Reset(reply) => {
                let r = self.reset();
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "reset failed");
                }
                let _ = reply.send(r);
            }
            Command::ClearDenyList(version, reply) => {
                let _ = reply.send(self.clear_deny_list(version));
            }
        }
        self.sync_info();
    }

    /// See [`AgentHandle::reset`].
    fn reset(&mut self) -> Result<(), CommandError> {
        let record = self.flow.record();
        let mut reset = self.flow.clone();
        if let Err(refused) = reset.on(Event::Reset) {
            tracing::warn!(error = %refused, "reset refused");
            return Err(CommandError::Busy);
        }
        if let Some(st) = record.update() {
            let target = self.backend.target_slot().map_err(CommandError::Boot)?;
            if target.slot() == st.slot {
                self.backend
                    .mark_unbootable(&target)
                    .map_err(CommandError::Boot)?;
                tracing::info!(version = %st.version, slot = %st.slot, phase = ?record.phase(), "reset: staged slot made unbootable");
            } else {
                tracing::warn!(version = %st.version, slot = %st.slot, "reset: the recorded slot is not the inactive one; left alone");
            }
        }
        self.flow = reset;
        self.state.last_error = None;
        let saved = self.save();
        self.publisher.publish(&self.flow);
        saved?;
        self.sync_extensions();
        self.info.send_modify(|i| i.offer = None);
        tracing::info!("reset: nothing staged, last error cleared");
        Ok(())
    }

    /// Removes `version` (or all) from the deny list; returns what was removed.
    fn clear_deny_list(&mut self, version: Option<String>) -> Result<Vec<String>, CommandError> {
        let removed: Vec<String> = match version {
            Some(v) => {
                if !self.state.deny_list.remove(&v) {
                    return Err(CommandError::NotDenyListed(v));
                }
                vec![v]
            }
            None => std::mem::take(&mut self.state.deny_list)
                .into_iter()
                .collect(),
        };
        if !removed.is_empty() {
            self.store.save(&self.state)?;
            tracing::info!(versions = ?removed, "removed from the deny list");
        }
        Ok(removed)
    }

    /// Lets this agent install an offer of the version it runs into the inactive slot (a
    /// repair of a damaged fallback slot, `update-agent run --once --repair`). Without it such an
    /// offer is always declined: no automatic path overwrites the fallback with the running
    /// version.
    pub fn allow_repair(&mut self) {
        self.repair = true;
    }

    /// The persisted state, as last saved (its update record is written from [`Agent::flow`]).
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// The update flow: where the agent is in the update, and what `state.json`, the D-Bus API
    /// and the reboot driver are shown of it.
    pub fn flow(&self) -> &UpdateFlow {
        &self.flow
    }

    /// The staged version the reboot may go ahead with, as [`AgentHandle::rebootable`] carries
    /// it: the staged version, unless runtime extensions hold it (or nothing is staged: `None`).
    pub fn rebootable(&self) -> Option<String> {
        self.publisher.rebootable.borrow().clone()
    }

    /// Brings the reboot-required sentinel (`reboot.reboot_required_path`) in line with
    /// [`Agent::rebootable`] by the daemon's rule: written naming the version while an update is
    /// staged and its reboot may go ahead, removed otherwise (nothing staged, or held for
    /// runtime extensions). The daemon's reboot driver does this before each decision;
    /// `update-agent run --once` calls it after its cycle.
    pub fn sync_reboot_required(&self) -> Result<(), SentinelError> {
        sentinel::sync(
            self.settings.reboot.reboot_required.as_deref(),
            self.rebootable().as_deref(),
        )
    }

    /// Applies `event` to the flow and publishes the result.
    fn on(&mut self, event: Event) -> Action {
        let action = apply(&mut self.flow, event);
        self.publisher.publish(&self.flow);
        action
    }

    /// Saves the state with the flow's update record.
    fn save(&mut self) -> Result<(), StateError> {
        save_state(&self.flow, &mut self.state, &self.store)
    }

    /// Whether this agent's requests say `delta_okay="true"`: deltas are enabled
    /// (`updates.deltas`) and none failed while the running version runs.
    pub fn delta_okay(&self) -> bool {
        self.settings.updates.deltas && !self.state.delta_failed_on(&self.identity.os_version)
    }

    fn record_error(&mut self, code: ErrorCode, message: String) -> Result<(), StateError> {
        self.state.last_error = Some(LastError {
            code: code.to_u32(),
            message,
            at_unix: unix_now(),
        });
        self.save()
    }

    /// Sends one event, logging (not failing) when the server cannot be reached.
    async fn send_event(&self, event: EventRequest) -> bool {
        let req = omaha_client::event_request(&self.identity, event, self.delta_okay());
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
        self.info.send_modify(|i| i.checks_started += 1);
        self.reconcile_extensions().await;
        let outcome = self.cycle(interactive).await;
        let result = CycleResult::from(&outcome);
        self.sync_info();
        self.sync_extensions();
        self.info.send_modify(|i| {
            i.checks_completed += 1;
            i.last_result = Some(result);
        });
        outcome
    }

    async fn cycle(&mut self, interactive: bool) -> CycleOutcome {
        // A rollback is reported as its own 3/0 event before the check.
        if let Some(PendingReport::RolledBack { version }) = self.state.pending_report.clone() {
            let mut ev = EventRequest::error(reported(ErrorCode::RollbackError));
            ev.previousversion = Some(version);
            if self.send_event(ev).await {
                self.state.pending_report = None;
                if let Err(e) = self.save() {
                    tracing::error!(error = %e, "cannot save state");
                }
            }
        }
        let previous = match &self.state.pending_report {
            Some(PendingReport::Rebooted { previous_version }) => Some(previous_version.clone()),
            _ => None,
        };
        // Runtime extensions are asked for in the same request, with the staged OS version as
        // their context while an OS update waits for its reboot.
        let target_os = self.flow.staged_version().map(str::to_owned);
        self.on(Event::CheckStarted);
        let delta_okay = self.delta_okay();
        tracing::info!(version = %self.identity.os_version, app = %self.identity.app_id, server = %self.omaha.url(), delta_okay, "checking for an update");
        let req = omaha_client::check_request_with(
            &self.identity,
            previous.as_deref(),
            interactive,
            delta_okay,
            self.extension_apps(target_os.as_deref()),
        );
        let answer = match self.omaha.send(&req).await {
            Ok(resp) => {
                // Each app is answered on its own: the extensions' answers are handled whatever
                // the OS app's says.
                self.handle_extensions(&resp, target_os.as_deref()).await;
                omaha_client::interpret(&resp, &self.identity.app_id)
            }
            Err(e) => Err(e),
        };
        let answer = match answer {
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
                if matches!(e, CheckError::BadOffer(_)) {
                    // The server answered, but with an offer this agent cannot use: tell it
                    // (3/0, OmahaResponseHandlerError), as update_engine does.
                    self.send_event(EventRequest::error(reported(code))).await;
                }
                return CycleOutcome::CheckFailed(e);
            }
        };
        self.info
            .send_modify(|i| i.last_check_unix = Some(unix_now()));
        if previous.is_some() {
            self.state.pending_report = None;
            if let Err(e) = self.save() {
                tracing::error!(error = %e, "cannot save state");
            }
        }
        self.poll_interval = answer.poll_interval;
        let Some(offer) = answer.offer else {
            tracing::info!(version = %self.identity.os_version, "no update");
            self.on(Event::NoUpdate);
            return CycleOutcome::NoUpdate;
        };
        if !self.repair
            && crate::install::compat::is_running_version(&offer, &self.identity.os_version)
        {
            // A version-blind server offers what already runs: installing it would overwrite
            // the other slot (the fallback) with a copy of the running version. Declined and
            // reported as deferred, like a policy refusal, but not an error.
            tracing::info!(version = %offer.version, running = %self.identity.os_version, "offered version is already running; declined (the fallback slot is kept)");
            self.on(Event::NoUpdate);
            self.send_event(EventRequest::deferred(reported(ErrorCode::Other(
                crate::install::platte_codes::ALREADY_RUNNING,
            ))))
            .await;
            return CycleOutcome::AlreadyRunning {
                version: offer.version,
            };
        }
        let offered = OfferInfo {
            version: offer.version.clone(),
            size: offer.size,
            delta: offer.delta,
        };
        self.info.send_if_modified(|i| {
            // The same offer again: what its verified payload showed stays.
            let same = i
                .offer
                .as_ref()
                .is_some_and(|o| (&o.version, o.size) == (&offered.version, offered.size));
            if !same {
                i.offer = Some(offered);
            }
            !same
        });
        if self.on(Event::Offered(offer.version.clone())) == Action::None {
            tracing::info!(version = %offer.version, "offered version is already staged; waiting for a reboot");
            return CycleOutcome::AlreadyStaged {
                version: offer.version,
            };
        }
        tracing::info!(version = %offer.version, size = offer.size, rollback = offer.rollback, delta = offer.delta, "update offered");
        let outcome = self.install(&offer).await;
        if let CycleOutcome::Installed(done) = &outcome {
            // Builds of the runtime extensions for the new OS, before the reboot may go ahead.
            self.stage_extensions(&done.version, interactive).await;
        }
        outcome
    }

    async fn install(&mut self, offer: &omaha_client::Offer) -> CycleOutcome {
        let resume = self
            .flow
            .record()
            .checkpoint()
            .and_then(|v| ResumeRecord::deserialize(v).ok());
        let deny_list = self.state.deny_list.clone();
        let delta_okay = self.delta_okay();
        let (result, kind) = {
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
                flow: &mut self.flow,
                publisher: &self.publisher,
                info: &self.info,
                version: &offer.version,
                delta_okay,
                last_progress_log: Instant::now(),
                claimed_over: None,
                kind: None,
            };
            let result = installer
                .install(offer, &deny_list, resume, &mut reporter)
                .await;
            (result, reporter.kind)
        };
        match result {
            Ok(done) => {
                let installed = InstalledUpdate {
                    version: done.version.clone(),
                    slot: done.slot,
                    from_version: self.identity.os_version.clone(),
                    boot_id: self.identity.boot_id.clone(),
                };
                // Saved before the status says `staged`, so whoever sees it finds it on disk.
                apply(&mut self.flow, Event::SlotActivated { installed });
                self.state.last_error = None;
                if let Err(e) = self.save() {
                    tracing::error!(error = %e, "cannot save state");
                }
                self.publisher.publish(&self.flow);
                self.send_event(EventRequest::update_installed()).await;
                tracing::info!(version = %done.version, slot = %done.slot, downloaded = done.downloaded, resumed = done.resumed, discarded = done.discarded, delta = done.kind.is_delta(), "update staged; reboot to activate it");
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
                // The flow keeps what survives: a staged update the download had not begun to
                // overwrite, or a checkpoint that resumes this version's download next time.
                self.on(Event::InstallFailed {
                    code: code.to_u32(),
                    message: e.to_string(),
                });
                if failed_as_delta(&e, kind.as_ref(), offer) {
                    // Saved with the error below: the next checks ask for the full payload.
                    tracing::warn!(version = %offer.version, running = %self.identity.os_version, code = code.to_u32(), "the delta payload failed; checks ask for the full payload while this version runs");
                    self.state.delta_failure = Some(DeltaFailure {
                        running_version: self.identity.os_version.clone(),
                        version: offer.version.clone(),
                        code: code.to_u32(),
                        at_unix: unix_now(),
                    });
                }
                if let Err(se) = self.record_error(code, e.to_string()) {
                    tracing::error!(error = %se, "cannot save state");
                }
                // A delta whose source is not the running slot says nothing about the release
                // (this host's slot differs): reported as deferred (3/9), like a policy refusal,
                // so the rollout does not count it as a failure; the next check asks for the
                // full payload. Any other failure, of a delta too, is a failure (3/0).
                let event = if e.is_source_mismatch() {
                    EventRequest::deferred(reported(code))
                } else {
                    EventRequest::error(reported(code))
                };
                self.send_event(event).await;
                CycleOutcome::InstallFailed(e)
            }
        }
    }

    /// The daemon loop: checks on the [`Scheduler`]'s timing (or at once when asked through an
    /// [`AgentHandle`]) until `shutdown` resolves. Commands sent through a handle are carried out
    /// between cycles; during a cycle they are refused with [`CommandError::Busy`].
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        self.reconcile_extensions().await;
        let mut rng = OsRng;
        let mut sched = Scheduler::new(self.settings.check.clone());
        let mut deadline = sched.first(Instant::now(), &mut rng);
        let check_now = Arc::clone(&self.check_now);
        let mut commands = self.commands_rx.take();
        tokio::pin!(shutdown);
        let mut logged = None;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            if logged != Some(deadline) {
                logged = Some(deadline);
                tracing::info!(
                    next_check_in_s = wait.as_secs(),
                    "waiting for the next check"
                );
            }
            let interactive = tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => false,
                _ = check_now.notified() => true,
                cmd = next_command(&mut commands) => {
                    self.handle_command(cmd);
                    continue;
                }
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
            let outcome = {
                let cycle = self.run_once(interactive);
                tokio::pin!(cycle);
                loop {
                    tokio::select! {
                        _ = &mut shutdown => break None,
                        o = &mut cycle => break Some(o),
                        cmd = next_command(&mut commands) => cmd.refuse(|| CommandError::Busy),
                    }
                }
            };
            let Some(outcome) = outcome else {
                break;
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
        self.commands_rx = commands;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(delta: bool) -> omaha_client::Offer {
        omaha_client::Offer {
            version: "2.0.0".into(),
            urls: Vec::new(),
            size: 1,
            sha256: [0; 32],
            rollback: false,
            delta,
        }
    }

    #[test]
    fn the_verified_payload_decides_whether_a_failure_was_a_deltas() {
        let bad = || {
            InstallError::Apply(payloads::ApplyError::Truncated {
                received: 1,
                expected: None,
            })
        };
        let delta = PayloadKind::Delta {
            source_version: "1.0.0".into(),
        };
        // A bad payload that verified as a delta, whatever the offer said.
        assert!(failed_as_delta(&bad(), Some(&delta), &offer(false)));
        // A bad full payload, although the offer announced a delta.
        assert!(!failed_as_delta(
            &bad(),
            Some(&PayloadKind::Full),
            &offer(true)
        ));
        // Never verified: the offer's announcement is all there is.
        let refused = InstallError::HttpStatus {
            url: "http://a/p".into(),
            status: 404,
        };
        assert!(failed_as_delta(&refused, None, &offer(true)));
        assert!(!failed_as_delta(&refused, None, &offer(false)));
        // A dropped connection is no delta failure: the delta resumes.
        let cut = InstallError::Transfer {
            url: "http://a/p".into(),
            detail: "reset".into(),
        };
        assert!(!failed_as_delta(&cut, Some(&delta), &offer(true)));
        // A source mismatch is one, however it was announced.
        let mismatch = InstallError::Apply(payloads::ApplyError::Source(
            payloads::SourceError::Required {
                version: "1.0.0".into(),
            },
        ));
        assert!(failed_as_delta(&mismatch, None, &offer(false)));
    }
}
