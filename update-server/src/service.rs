//! The update-check service, independent of the wire format: per app in a request, events
//! first, then the ping (registers or refreshes the instance), then the update check. The Omaha
//! endpoint translates XML to [`AppCheckIn`] and [`AppAnswer`] back.
//!
//! A machine that installed its granted version and awaits the reboot (`installed`) is not sent
//! the same version again; a newer release than the staged one is offered (through the rollout
//! policy like any update) and replaces it in the inactive slot.
//!
//! A machine that reports a rollback (event 3/0 with error code 44, `previousversion` naming the
//! version it fell back from) or a version on its deny list (3/0 with code 35, or an extension
//! build failure the agent deny-lists: 3112, 3113, 3114) has its grant of that version failed,
//! whatever state it reached, and the version recorded as refused for it: the grant store holds every
//! later grant of that version (`rolled_back`, `deny_listed`) until an operator clears it; a
//! newer version is offered as usual. A deferral (event 3/9 while an update is in flight) settles
//! the grant as `deferred`: its concurrency slot is free, it is no failure, and the machine's
//! next check goes through the policy again.

use std::sync::Arc;

use crate::bounds::EventBudget;
use crate::catalogue::{Catalogue, CatalogueCache, PackageDigests};
use crate::checkins::{Checkins, InstanceKey};
use crate::clock::Clock;
use crate::config::OmahaSettings;
use crate::lifecycle::{ClientEvent, InstanceStatus, transition};
use crate::metrics::{ErrorLabels, Metrics, OutcomeLabels, error_code_label};
use crate::model::{
    ClientKind, Instance, NewActivity, Package, PackageFormat, ServedPayload, StatusChange,
    normalize_appid, normalize_arch,
};
use crate::rollout::Rollouts;
use crate::rollout::engine::{HoldReason, Verdict, evaluate, is_canary};
use crate::rollout::grants;
use crate::rollout::newcomers::network_of;
use crate::rollout::policy::{PolicyContext, PolicyDecision, RolloutPolicy};
use crate::rollout::prefetch::{GrantContext, GrantPrefetch};
use crate::rollout::target::{TargetChoice, choose};
use crate::store::instances::{CheckIn, StatusColumns};
use crate::store::rollout::{
    GrantOutcome, GrantRequest, GrantState, HaltedRollout, ProgressReport, RefusalReason,
    RefusedVersion,
};
use crate::store::tx::{SHARED_LANES, StoreTx, Transactor, Urgency, WriteLane, transact_in};
use crate::store::{InstanceChange, NewEvent, Store, StoreError};
use crate::version;

/// One client event, decoded by the protocol layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventIn {
    /// Event type.
    pub event_type: u32,
    /// Event result.
    pub event_result: u32,
    /// Error code as sent (flags included).
    pub error_code: Option<i64>,
    /// `previousversion`.
    pub previous_version: String,
    /// Human description of the error code (decoded by the protocol layer).
    pub error_detail: String,
}

/// One `<app>` of a request, protocol-neutral.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppCheckIn {
    /// appid as sent.
    pub appid: String,
    /// Version the client runs.
    pub version: String,
    /// Track (group name or id).
    pub track: String,
    /// Machine id.
    pub machine_id: String,
    /// Machine alias.
    pub alias: String,
    /// Boot id.
    pub boot_id: String,
    /// OEM.
    pub oem: String,
    /// OEM version.
    pub oem_version: String,
    /// Board (or OS arch as fallback).
    pub board: String,
    /// Client IP.
    pub ip: String,
    /// Events, in order.
    pub events: Vec<EventIn>,
    /// Events beyond the per-request cap: acknowledged, neither applied nor stored.
    pub ignored_events: usize,
    /// A `<ping>` was present.
    pub ping: bool,
    /// An `<updatecheck>` was present.
    pub updatecheck: bool,
    /// Who sent the request (the payload formats it can apply).
    pub client: ClientKind,
    /// The client takes a delta payload from the version it runs (`delta_okay="true"`).
    pub delta_okay: bool,
}

/// Why there is no update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoUpdateReason {
    /// Already at (or above) the target.
    UpToDate,
    /// The track names no group.
    UnknownGroup,
    /// The group follows no channel, or the channel has no package for the arch.
    NoPackage,
    /// Installed, waiting for its reboot.
    AwaitingReboot,
    /// The client's version string is unusable.
    InvalidVersion,
    /// A rollout policy held it back.
    Hold(String),
}

impl NoUpdateReason {
    /// Metric / API label.
    pub fn label(&self) -> String {
        match self {
            Self::UpToDate => "up_to_date".into(),
            Self::UnknownGroup => "unknown_group".into(),
            Self::NoPackage => "no_package".into(),
            Self::AwaitingReboot => "awaiting_reboot".into(),
            Self::InvalidVersion => "invalid_version".into(),
            Self::Hold(r) => format!("hold_{r}"),
        }
    }
}

/// The answer to an update check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckAnswer {
    /// Serve this package from these codebase URLs (each ending in `/`, in the order to try).
    Update {
        /// Package (boxed: it is much larger than the other variant).
        package: Box<Package>,
        /// Its digests, decoded when the catalogue snapshot was built.
        digests: PackageDigests,
        /// Codebase URLs: the configured mirrors, then this server (or the external URL).
        codebases: Vec<String>,
        /// A deliberate downgrade (`_rollback="true"`).
        rollback: bool,
        /// The payload is the package's delta from this version (the one the machine runs),
        /// not its full payload: `package` then names the delta's file.
        delta_from: Option<String>,
    },
    /// No update.
    NoUpdate(NoUpdateReason),
}

impl CheckAnswer {
    /// Which payload an update serves (`None` for no update).
    pub fn served_payload(&self) -> Option<ServedPayload> {
        match self {
            CheckAnswer::Update { delta_from, .. } => Some(match delta_from {
                Some(_) => ServedPayload::Delta,
                None => ServedPayload::Full,
            }),
            CheckAnswer::NoUpdate(_) => None,
        }
    }
}

/// The answer for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppAnswer {
    /// The appid is not known.
    UnknownApp,
    /// Known app.
    Known {
        /// Events acknowledged.
        events: usize,
        /// Ping acknowledged.
        ping: bool,
        /// Update check answer, if one was asked.
        check: Option<CheckAnswer>,
    },
}

/// Error of the check path (storage failed while persisting an event or grant).
#[derive(Debug, thiserror::Error)]
#[error("could not record instance {machine_id} of {app_id}: {source}")]
pub struct CheckError {
    /// Machine.
    pub machine_id: String,
    /// App.
    pub app_id: String,
    /// Cause.
    #[source]
    pub source: StoreError,
}

impl CheckError {
    /// Wraps a storage error of `key`'s instance (for `map_err`).
    fn of(key: &InstanceKey) -> impl FnOnce(StoreError) -> Self + '_ {
        |source| CheckError {
            machine_id: key.0.clone(),
            app_id: key.1.clone(),
            source,
        }
    }
}

/// The update-check service.
#[derive(Debug)]
pub struct UpdateService {
    /// Catalogue snapshot.
    pub catalogue: Arc<CatalogueCache>,
    /// Committed rows (the instance read of each check; the catalogue).
    pub store: Arc<dyn Store>,
    /// Write transactions (group commit on SQLite).
    pub writer: Arc<dyn Transactor>,
    /// Coalesced check-ins waiting for their batch.
    pub checkins: Arc<Checkins>,
    /// Policy engine.
    pub policy: Arc<dyn RolloutPolicy>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Base URL for hosted packages (no trailing slash).
    pub public_url: String,
    /// `PollInterval` and download mirrors of the answers.
    pub omaha: OmahaSettings,
    /// Staged-rollout grant store and metrics.
    pub rollouts: Rollouts,
    /// Per-machine budget of stored event rows (see [`crate::bounds`]).
    pub event_budget: EventBudget,
}

/// A grant the store must still decide atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GrantPlan {
    group_id: String,
    version: String,
    canary: bool,
}

/// A status change that settles a rollout grant.
#[derive(Debug, Clone)]
struct Progress {
    state: Option<GrantState>,
    outcome: &'static str,
    group_id: Option<String>,
    version: Option<String>,
    /// The machine rolled back from this version or deny-listed it: refuse it from now on.
    refuse: Option<RefusedVersion>,
}

/// What one check does to its instance, decided in memory from the row as read
/// ([`UpdateService::plan`]), then written by [`UpdateService::commit`].
#[derive(Debug, Clone)]
struct Plan {
    /// The check-in columns this check reports.
    check_in: CheckIn,
    /// The row after the check-in, the events and the decision.
    row: Instance,
    /// The status columns as read (or as a new row has them).
    base_status: StatusColumns,
    /// History, events and activity to append.
    change: InstanceChange,
    /// Grants the events settle.
    progress: Vec<Progress>,
    /// Lifecycle transitions, with the index of the event that caused each (for metrics).
    outcomes: Vec<(InstanceStatus, usize)>,
    /// Some event was not routine.
    eventful: bool,
    /// The answer to the update check, if one was asked.
    check: Option<CheckAnswer>,
    /// A grant the rules must still decide.
    grant: Option<GrantPlan>,
    /// The rules granted it.
    granted: bool,
    /// The machine had installed its update and awaits the reboot (a hold leaves it so).
    held_from_install: bool,
    /// Rollouts the writes halted.
    halts: Vec<HaltedRollout>,
}

impl Plan {
    /// Whether the check must be written before it is answered (rather than coalesced).
    fn needs_write(&self) -> bool {
        self.eventful || self.grant.is_some() || StatusColumns::of(&self.row) != self.base_status
    }

    /// Moves the status to what the answer means: `granted` for a grant, `on_hold` (with the
    /// reason) for a hold unless the machine awaits its reboot; records the change if any.
    fn settle_status(&mut self, now: i64) {
        if let Some(served) = self.check.as_ref().and_then(CheckAnswer::served_payload) {
            self.row.served_payload = Some(served);
        }
        let update = match (&self.check, self.granted) {
            (Some(CheckAnswer::Update { package, .. }), true) => Some((
                InstanceStatus::Granted,
                String::new(),
                Some(package.version.clone()),
            )),
            (Some(CheckAnswer::NoUpdate(NoUpdateReason::Hold(r))), _)
                if !self.held_from_install =>
            {
                Some((InstanceStatus::OnHold, r.clone(), None))
            }
            _ => None,
        };
        let Some((status, detail, granted)) = update else {
            return;
        };
        let row = &mut self.row;
        if row.status == status && row.status_detail == detail && granted.is_none() {
            return;
        }
        if let Some(v) = granted {
            row.granted_version = Some(v);
            row.granted_at = Some(now);
        }
        set_status(row, &mut self.change, status, detail, None, now);
    }
}

/// The shared lane of `machine_id`'s plain first checks ([`WriteLane::shared`]).
fn shared_lane_of(machine_id: &str) -> u16 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    machine_id.hash(&mut h);
    u16::try_from(h.finish() % u64::from(SHARED_LANES)).unwrap_or(0)
}

/// The check-in columns a check writes: what the request says, the group its track resolves
/// to, and when (`first_seen`: the machine's first contact, for a row not written yet).
fn check_in_of(
    cat: &Catalogue,
    req: &AppCheckIn,
    app_id: &str,
    first_seen: i64,
    now: i64,
) -> CheckIn {
    CheckIn {
        machine_id: req.machine_id.trim().to_owned(),
        app_id: app_id.to_owned(),
        version: req.version.clone(),
        group_id: cat.resolve_group(app_id, &req.track).map(|g| g.id.clone()),
        track: req.track.clone(),
        alias: req.alias.clone(),
        ip: req.ip.clone(),
        oem: req.oem.clone(),
        oem_version: req.oem_version.clone(),
        board: req.board.clone(),
        boot_id: req.boot_id.clone(),
        at: now,
        first_seen,
    }
}

fn is_routine(e: &EventIn) -> bool {
    let pv = e.previous_version.trim();
    e.event_type == 3 && e.event_result == 2 && (pv.is_empty() || pv == "0.0.0.0")
}

/// The version an error event says the machine refuses for good, and why (see
/// [`RefusalReason::of_error_code`]); `None` for any other event.
///
/// A rollback names the version the machine fell back from: its `previousversion` (the agent
/// names the failed version there), else the version granted to it; never the version it runs
/// now. A deny list refuses the version offered, i.e. granted, to it (which a machine whose staged
/// build failed after the boot merged it may report as the one it runs), else `previousversion`.
fn refusal_of(
    e: &EventIn,
    running: &str,
    granted: Option<&str>,
) -> Option<(String, RefusalReason)> {
    if e.event_result != 0 {
        return None;
    }
    let reason = RefusalReason::of_error_code(e.error_code)?;
    let pv = e.previous_version.trim();
    let named = (pv != "0.0.0.0" && version::is_valid(pv) && pv != running).then_some(pv);
    let granted = granted.filter(|g| version::is_valid(g));
    let refused = match reason {
        RefusalReason::RolledBack => named.or(granted.filter(|g| *g != running)),
        RefusalReason::DenyListed => granted.or(named),
    };
    refused.map(|v| (v.to_owned(), reason))
}

/// The activity entry for a refusal.
fn refusal_activity(
    row: &Instance,
    app_id: &str,
    version: &str,
    reason: RefusalReason,
    detail: &str,
) -> NewActivity {
    let (kind, what) = match reason {
        RefusalReason::RolledBack => (
            "instance_rolled_back",
            format!("rolled back from {version} to {}", row.version),
        ),
        RefusalReason::DenyListed if detail.is_empty() => (
            "instance_deny_listed",
            format!("put {version} on its deny list"),
        ),
        RefusalReason::DenyListed => (
            "instance_deny_listed",
            format!("put {version} on its deny list ({detail})"),
        ),
    };
    NewActivity {
        kind: kind.into(),
        severity: "error",
        app_id: Some(app_id.to_owned()),
        group_id: row.group_id.clone(),
        machine_id: Some(row.machine_id.clone()),
        version: Some(version.to_owned()),
        message: format!(
            "{} {what}: {version} will not be offered to it again until an operator clears it \
             (instance retry)",
            row.machine_id
        ),
    }
}

fn set_status(
    row: &mut Instance,
    change: &mut InstanceChange,
    status: InstanceStatus,
    detail: String,
    error_code: Option<i64>,
    now: i64,
) {
    row.status = status;
    row.status_detail = detail.clone();
    row.error_code = error_code.or(if status == InstanceStatus::Error {
        row.error_code
    } else {
        None
    });
    row.status_at = now;
    change.status_change = Some(StatusChange {
        status,
        version: row.version.clone(),
        detail,
        error_code,
        at: now,
    });
}

impl UpdateService {
    /// Codebase URLs for a package, in the order clients should try them: an external package
    /// has its one URL; a hosted one the configured mirrors, then this server.
    pub fn codebases(&self, p: &Package) -> Vec<String> {
        match &p.external_url {
            Some(u) if u.ends_with('/') => vec![u.clone()],
            Some(u) => vec![format!("{u}/")],
            None => self
                .omaha
                .download_mirrors
                .iter()
                .map(String::as_str)
                .chain(std::iter::once(self.public_url.as_str()))
                .map(|base| format!("{base}/packages/{}/", p.sha256_hex))
                .collect(),
        }
    }

    /// The answer serving `pkg` to `req`: its delta from the version the machine runs when it
    /// has one, the machine takes deltas and `full_only` is not set, else its full payload.
    fn serve(
        &self,
        cat: &Catalogue,
        pkg: &Package,
        rollback: bool,
        req: &AppCheckIn,
        full_only: bool,
    ) -> CheckAnswer {
        if req.delta_okay
            && !full_only
            && let Some(d) = pkg.deltas.iter().find(|d| d.source_version == req.version)
        {
            // The delta's file in the package's place; deltas are hosted here, without extras.
            let served = Package {
                filename: d.filename.clone(),
                size: d.size,
                sha1_base64: d.sha1_base64.clone(),
                sha256_hex: d.sha256_hex.clone(),
                external_url: None,
                files: Vec::new(),
                deltas: Vec::new(),
                ..pkg.clone()
            };
            return CheckAnswer::Update {
                digests: PackageDigests::of(&served),
                codebases: self.codebases(&served),
                package: Box::new(served),
                rollback,
                delta_from: Some(d.source_version.clone()),
            };
        }
        CheckAnswer::Update {
            package: Box::new(pkg.clone()),
            digests: cat.digests(&pkg.id),
            codebases: self.codebases(pkg),
            rollback,
            delta_from: None,
        }
    }

    /// Handles one app of a request: a short pipeline. The instance's committed row is read;
    /// events are applied to it and the check decided in memory ([`UpdateService::plan`]). A
    /// check that changes nothing but the check-in columns is answered at once and its check-in
    /// coalesced ([`Checkins`]). Anything else (events, a grant, a status change) runs again, on
    /// the row as the write transaction reads it, with the grant rules, and is answered once that
    /// transaction is durable: one transaction per check.
    pub async fn handle(self: &Arc<Self>, req: &AppCheckIn) -> Result<AppAnswer, CheckError> {
        let cat = self.catalogue.get();
        let app_id = normalize_appid(&req.appid);
        if cat.app(&app_id).is_none() {
            self.metrics.check("unknown", "unknown_app");
            return Ok(AppAnswer::UnknownApp);
        };
        let now = self.clock.now();
        if req.machine_id.trim().is_empty() {
            // Untrackable client: answer, but keep no state.
            let check = req.updatecheck.then(|| {
                let (answer, plan) = self.decide(&cat, req, &app_id, None, now);
                match plan {
                    // Nothing to count an untracked client against: it gets no limited grant.
                    Some(_) => CheckAnswer::NoUpdate(NoUpdateReason::Hold(
                        HoldReason::Percentage.as_str().to_owned(),
                    )),
                    None => answer,
                }
            });
            return Ok(AppAnswer::Known {
                events: req.events.len() + req.ignored_events,
                ping: req.ping,
                check,
            });
        }
        let key: InstanceKey = (req.machine_id.trim().to_owned(), app_id.clone());
        let keep = self.event_rows_kept(&key.0, req, now);
        // A machine seen before whose check-in is still pending keeps its first contact.
        let first_seen = self.checkins.first_seen(&key.0, &key.1).unwrap_or(now);
        let stored = self
            .store
            .instance(&key.0, &key.1)
            .await
            .map_err(CheckError::of(&key))?;
        let check_in = check_in_of(&cat, req, &app_id, first_seen, now);
        let mut plan = self.plan(&cat, req, &app_id, check_in, stored, &keep, now);
        if plan.needs_write() {
            // A plain first check (no events) reads the grant attempt's context with its
            // check-in, planned from the row read here; the transaction uses it when it plans the
            // same attempt.
            let attempt = match &plan.grant {
                Some(g) if plan.progress.is_empty() => {
                    Some(self.grant_request(&plan, g, &cat, now))
                }
                _ => None,
            };
            plan = self
                .write(cat, req, &key, keep, first_seen, now, attempt)
                .await?;
            self.checkins.written(&key.0, &key.1, now);
        } else {
            self.checkins
                .record(plan.check_in.clone())
                .await
                .map_err(CheckError::of(&key))?;
        }
        self.report(&app_id, req, &plan).await;
        Ok(AppAnswer::Known {
            events: req.events.len() + req.ignored_events,
            ping: req.ping,
            check: plan.check,
        })
    }

    /// Which of the request's events may leave a row (the machine's budget,
    /// [`crate::bounds::EventBudget`]); routine events leave none anyway.
    fn event_rows_kept(&self, machine_id: &str, req: &AppCheckIn, now: i64) -> Vec<bool> {
        req.events
            .iter()
            .map(|e| {
                if is_routine(e) {
                    return false;
                }
                let keep = self.event_budget.take(machine_id, now);
                if !keep {
                    self.metrics.events_dropped("machine_budget", 1);
                }
                keep
            })
            .collect()
    }

    /// Plans the check again inside a write transaction, on the row as committed, applies the
    /// grant rules and writes the outcome; returns the plan once it is durable. `attempt`: the
    /// grant attempt planned before, whose context is read with the check-in.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        self: &Arc<Self>,
        cat: Arc<Catalogue>,
        req: &AppCheckIn,
        key: &InstanceKey,
        keep: Vec<bool>,
        first_seen: i64,
        now: i64,
        attempt: Option<GrantRequest>,
    ) -> Result<Plan, CheckError> {
        // Shared, not copied: a store may run the job again after a deadlock.
        let svc = Arc::clone(self);
        let req = Arc::new(req.clone());
        let shared_key = Arc::new(key.clone());
        let keep = Arc::new(keep);
        let attempt = Arc::new(attempt);
        // The group the check's grant would lock: checks of different groups may commit apart,
        // and a plain first check whose attempt counts nothing in one of the group's shared
        // lanes, by machine.
        let shared = attempt
            .as_ref()
            .as_ref()
            .filter(|a| GrantPrefetch::plan(a, a.expected_policy.as_ref()).counts_nothing())
            .map(|_| shared_lane_of(&key.0));
        let lane = cat.resolve_group(&key.1, &req.track).map(|g| WriteLane {
            group: g.id.clone(),
            shared,
        });
        transact_in(self.writer.as_ref(), Urgency::Answer, lane, move |tx| {
            let (svc, cat, req, key, keep, attempt) = (
                Arc::clone(&svc),
                Arc::clone(&cat),
                Arc::clone(&req),
                Arc::clone(&shared_key),
                Arc::clone(&keep),
                Arc::clone(&attempt),
            );
            Box::pin(async move {
                let check_in = check_in_of(&cat, &req, &key.1, first_seen, now);
                let prefetch = attempt
                    .as_ref()
                    .as_ref()
                    .map(|a| GrantPrefetch::plan(a, a.expected_policy.as_ref()));
                // The check-in first: it does not depend on the stored row, whose state before
                // it the plan starts from.
                let (stored, context) = tx
                    .check_in_and_prefetch(&check_in, prefetch.as_ref())
                    .await?;
                let mut plan = svc.plan(&cat, &req, &key.1, check_in, stored, &keep, now);
                svc.commit(tx, &mut plan, &cat, now, prefetch.zip(context))
                    .await?;
                Ok(plan)
            })
        })
        .await
        .map_err(CheckError::of(key))
    }

    /// Writes the rest of a plan in `tx`, after its check-in: the settled grants (which may halt
    /// a rollout), the grant attempt (which may turn the answer into a hold), the status columns
    /// if they changed, and the events, history and activity that explain it. `read`: a grant
    /// context read with the check-in, for the attempt it was planned for.
    async fn commit(
        &self,
        tx: &mut dyn StoreTx,
        plan: &mut Plan,
        cat: &Catalogue,
        now: i64,
        read: Option<(GrantPrefetch<'_>, GrantContext)>,
    ) -> Result<(), StoreError> {
        let (machine_id, app_id) = (plan.row.machine_id.clone(), plan.row.app_id.clone());
        for p in &plan.progress {
            let halts = grants::record_progress(
                tx,
                &ProgressReport {
                    machine_id: machine_id.clone(),
                    app_id: app_id.clone(),
                    state: p.state,
                    running_version: plan.row.version.clone(),
                    refuse: p.refuse.clone(),
                    now,
                },
            )
            .await?;
            plan.halts.extend(halts);
        }
        if let Some(g) = plan.grant.clone() {
            // The context read with the check-in is as current as a read here only if nothing
            // was written since (settled grants).
            let read = read.filter(|_| plan.progress.is_empty());
            let req = self.grant_request(plan, &g, cat, now);
            let outcome = grants::try_grant_with(tx, &req, read).await?;
            match outcome {
                GrantOutcome::Granted => plan.granted = true,
                GrantOutcome::Held { reason, halted_now } => {
                    if let Some(why) = halted_now {
                        plan.halts.push(HaltedRollout {
                            group_id: g.group_id.clone(),
                            version: g.version.clone(),
                            reason: why,
                        });
                    }
                    plan.check = Some(CheckAnswer::NoUpdate(NoUpdateReason::Hold(
                        reason.as_str().to_owned(),
                    )));
                }
            }
            plan.settle_status(now);
        }
        let status = StatusColumns::of(&plan.row);
        if status != plan.base_status {
            tx.set_status(&machine_id, &app_id, &status).await?;
        }
        tx.record_change(&machine_id, &app_id, &plan.row.version, now, &plan.change)
            .await
    }

    /// The grant attempt of `plan`'s planned grant `g`.
    fn grant_request(&self, plan: &Plan, g: &GrantPlan, cat: &Catalogue, now: i64) -> GrantRequest {
        GrantRequest {
            group_id: g.group_id.clone(),
            app_id: plan.row.app_id.clone(),
            machine_id: plan.row.machine_id.clone(),
            version: g.version.clone(),
            canary: g.canary,
            first_seen: plan.row.created_at,
            network: network_of(&plan.row.ip),
            new_machine_limit: self.rollouts.new_machines.per_network,
            now,
            expected_policy: cat.group(&g.group_id).map(|grp| grp.policy.clone()),
        }
    }

    /// Applies a check to the instance row in memory: the check-in, the events (lifecycle
    /// transitions, refusals, which grants they settle), then the update decision. Pure: the
    /// caller writes what it decided.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        cat: &Catalogue,
        req: &AppCheckIn,
        app_id: &str,
        check_in: CheckIn,
        stored: Option<Instance>,
        keep: &[bool],
        now: i64,
    ) -> Plan {
        let mut row = stored.unwrap_or_else(|| check_in.new_row());
        check_in.apply_to(&mut row);
        let mut plan = Plan {
            base_status: StatusColumns::of(&row),
            check_in,
            row,
            change: InstanceChange::default(),
            progress: Vec::new(),
            outcomes: Vec::new(),
            eventful: false,
            check: None,
            grant: None,
            granted: false,
            held_from_install: false,
            halts: Vec::new(),
        };
        for (i, e) in req.events.iter().enumerate() {
            if is_routine(e) {
                continue;
            }
            plan.eventful = true;
            self.apply_event(
                cat,
                app_id,
                &mut plan,
                e,
                i,
                keep.get(i).copied().unwrap_or(false),
                now,
            );
        }
        if req.updatecheck {
            let (answer, grant) = self.decide(cat, req, app_id, Some(&plan.row), now);
            plan.check = Some(answer);
            plan.grant = grant;
            plan.held_from_install = plan.row.status == InstanceStatus::Installed;
            if plan.grant.is_none() {
                plan.settle_status(now);
            }
        }
        plan
    }

    /// Applies one (non-routine) event to the plan's row: its lifecycle transition, the refusal
    /// it announces, and the grant it settles. `keep_row`: the event may leave an event row and
    /// activity entries (within the machine's budget).
    #[allow(clippy::too_many_arguments)]
    fn apply_event(
        &self,
        cat: &Catalogue,
        app_id: &str,
        plan: &mut Plan,
        e: &EventIn,
        index: usize,
        keep_row: bool,
        now: i64,
    ) {
        let row = &mut plan.row;
        let change = &mut plan.change;
        // Beyond the machine's budget an event still moves the lifecycle and settles its grant
        // below (auto-halt counts grants, not rows); only its event row and activity entries are
        // not written.
        if keep_row {
            change.events.push(NewEvent {
                event_type: i64::from(e.event_type),
                event_result: i64::from(e.event_result),
                error_code: e.error_code,
                previous_version: e.previous_version.clone(),
            });
        }
        let ce = ClientEvent {
            event_type: e.event_type,
            event_result: e.event_result,
            previous_version: e.previous_version.clone(),
        };
        // Only a version this server knows can be refused: one refusal row per (machine,
        // catalogue version), however many versions a client names.
        let refused =
            refusal_of(e, &row.version, row.granted_version.as_deref()).filter(|(v, _)| {
                row.granted_version.as_deref() == Some(v.as_str())
                    || cat
                        .data()
                        .packages
                        .iter()
                        .any(|p| p.app_id == app_id && p.version == *v)
            });
        let mut settle = None;
        let completes_on = cat.app(app_id).map(|a| a.completes_on).unwrap_or_default();
        if let Some(next) = transition(row.status, &ce, completes_on) {
            let detail = match (next, &refused) {
                (InstanceStatus::Error, Some((v, _))) => {
                    format!("{} (version {v} refused)", e.error_detail)
                }
                (InstanceStatus::Error, None) => e.error_detail.clone(),
                (InstanceStatus::Complete, _) if ce.previous_version.trim().is_empty() => {
                    format!(
                        "installed {}",
                        row.granted_version.as_deref().unwrap_or("the update")
                    )
                }
                (InstanceStatus::Complete, _) => format!("updated from {}", ce.previous_version),
                _ => String::new(),
            };
            set_status(row, change, next, detail, e.error_code, now);
            plan.outcomes.push((next, index));
            settle = match next {
                InstanceStatus::Downloading | InstanceStatus::Downloaded => Some((None, "")),
                InstanceStatus::Installed => Some((Some(GrantState::Installed), "installed")),
                InstanceStatus::Complete => Some((Some(GrantState::Complete), "complete")),
                InstanceStatus::Error => Some((Some(GrantState::Failed), "failed")),
                InstanceStatus::Deferred => Some((Some(GrantState::Deferred), "deferred")),
                _ => None,
            };
            if next == InstanceStatus::Error && refused.is_none() && keep_row {
                change.activity.push(NewActivity {
                    kind: "instance_update_failed".into(),
                    severity: "error",
                    app_id: Some(app_id.to_owned()),
                    group_id: row.group_id.clone(),
                    machine_id: Some(row.machine_id.clone()),
                    version: row.granted_version.clone(),
                    message: format!("{} failed to update: {}", row.machine_id, e.error_detail),
                });
            }
        }
        if let Some((v, reason)) = &refused {
            // Recorded even when the status did not change (already `error`).
            if keep_row {
                change
                    .activity
                    .push(refusal_activity(row, app_id, v, *reason, &e.error_detail));
            }
            settle.get_or_insert((Some(GrantState::Failed), "failed"));
        }
        if let Some((state, outcome)) = settle {
            plan.progress.push(Progress {
                state,
                outcome,
                group_id: row.group_id.clone(),
                version: refused
                    .as_ref()
                    .map(|(v, _)| v.clone())
                    .or_else(|| row.granted_version.clone()),
                refuse: refused.map(|(version, reason)| RefusedVersion {
                    machine_id: row.machine_id.clone(),
                    app_id: app_id.to_owned(),
                    version,
                    reason,
                    error_code: e.error_code,
                    at: now,
                }),
            });
        }
    }

    /// Counts what a handled check did (after it is durable) and reacts to the rollouts it
    /// halted.
    async fn report(&self, app_id: &str, req: &AppCheckIn, plan: &Plan) {
        for e in &req.events {
            self.metrics.event(app_id, e.event_type, e.event_result);
        }
        for (status, i) in &plan.outcomes {
            if let Some(e) = req.events.get(*i) {
                self.count_outcome(app_id, *status, e);
            }
        }
        let m = &self.rollouts.metrics;
        for p in &plan.progress {
            if let (Some(g), Some(v)) = (&p.group_id, &p.version) {
                if !p.outcome.is_empty() {
                    m.outcome(app_id, g, v, p.outcome);
                }
                if let Some(r) = &p.refuse {
                    m.outcome(app_id, g, v, r.reason.as_str());
                }
            }
        }
        if let (true, Some(g)) = (plan.granted, &plan.grant) {
            m.outcome(app_id, &g.group_id, &g.version, "granted");
        }
        if let Some(answer) = &plan.check {
            if let (CheckAnswer::NoUpdate(NoUpdateReason::Hold(r)), Some(g)) =
                (answer, plan.row.group_id.as_deref())
            {
                let cat = self.catalogue.get();
                let version = cat
                    .resolve_group(app_id, &req.track)
                    .and_then(|g| g.channel_id.as_deref())
                    .and_then(|c| cat.channel(c))
                    .and_then(|c| {
                        cat.channel_package(c, &normalize_arch(&req.board), req.client.formats())
                    })
                    .map(|p| p.version.clone())
                    .unwrap_or_default();
                m.hold(app_id, g, &version, r);
            }
            if let Some(served) = answer.served_payload() {
                self.metrics.payload_offered(app_id, served.as_str());
            }
            let label = match answer {
                CheckAnswer::Update { .. } => "update".to_owned(),
                CheckAnswer::NoUpdate(r) => format!("noupdate_{}", r.label()),
            };
            self.metrics.check(app_id, &label);
        }
        for h in &plan.halts {
            self.halted(app_id, &h.group_id, &h.version, &h.reason)
                .await;
        }
    }

    /// A rollout halted itself: reload the catalogue so this process stops granting at once.
    async fn halted(&self, app_id: &str, group_id: &str, version: &str, why: &str) {
        tracing::warn!(
            app = app_id,
            group = group_id,
            version,
            reason = why,
            "rollout halted"
        );
        let m = &self.rollouts.metrics;
        m.halts
            .get_or_create(&crate::rollout::metrics::GroupLabels {
                app: app_id.to_owned(),
                group: group_id.to_owned(),
            })
            .inc();
        m.set_halted(app_id, group_id, true);
        if let Err(e) = self.catalogue.reload(self.store.as_ref()).await {
            tracing::warn!(error = %e, "reloading the catalogue after a halt failed");
        }
    }

    fn count_outcome(&self, app_id: &str, status: InstanceStatus, e: &EventIn) {
        let outcome = match status {
            InstanceStatus::Installed => "installed",
            InstanceStatus::Complete => "complete",
            InstanceStatus::Error => "error",
            InstanceStatus::Deferred => "deferred",
            _ => return,
        };
        self.metrics
            .update_outcomes
            .get_or_create(&OutcomeLabels {
                app: app_id.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if status == InstanceStatus::Error {
            let raw = e.error_code.unwrap_or(0);
            let code = error_code_label(u32::try_from(raw & 0x0FFF_FFFF).unwrap_or(0));
            let name = if code == "other" {
                "other".to_owned()
            } else {
                e.error_detail
                    .split([' ', '('])
                    .next()
                    .unwrap_or("")
                    .to_owned()
            };
            self.metrics
                .update_errors
                .get_or_create(&ErrorLabels {
                    app: app_id.to_owned(),
                    code,
                    name,
                })
                .inc();
        }
    }

    /// Decides the update check in memory; a returned plan must still pass the store's atomic
    /// limits before it is a grant.
    fn decide(
        &self,
        cat: &Catalogue,
        req: &AppCheckIn,
        app_id: &str,
        instance: Option<&Instance>,
        now: i64,
    ) -> (CheckAnswer, Option<GrantPlan>) {
        let no = |r| (CheckAnswer::NoUpdate(r), None);
        if !version::is_valid(&req.version) {
            return no(NoUpdateReason::InvalidVersion);
        }
        let Some(app) = cat.app(app_id) else {
            return no(NoUpdateReason::UnknownGroup);
        };
        let Some(group) = cat.resolve_group(app_id, &req.track) else {
            return no(NoUpdateReason::UnknownGroup);
        };
        let Some(channel) = group.channel_id.as_deref().and_then(|c| cat.channel(c)) else {
            return no(NoUpdateReason::NoPackage);
        };
        let arch = normalize_arch(&req.board);
        let Some(target) = cat.channel_package(channel, &arch, req.client.formats()) else {
            // A package the client cannot apply is held like any other reason, so a mixed
            // group shows what its machines wait for.
            if cat
                .channel_package(channel, &arch, &PackageFormat::ALL)
                .is_some()
            {
                return no(NoUpdateReason::Hold(HoldReason::Format.as_str().to_owned()));
            }
            return no(NoUpdateReason::NoPackage);
        };
        // The package of version `v` for this machine: of its arch before `all`, and only in a
        // format the client can apply.
        let find = |v: &str| {
            let of = |a: &str| {
                cat.data().packages.iter().find(|p| {
                    p.app_id == app_id
                        && p.version == v
                        && p.arch == a
                        && req.client.can_apply(p.format)
                })
            };
            of(&arch).or_else(|| of("all"))
        };
        let spec = cat.spec(&group.id);
        let mut staged = None;
        if let Some(inst) = instance
            && let Some(granted) = &inst.granted_version
            && req.version != *granted
        {
            if inst.status.in_flight() {
                // Re-serve the granted version without re-running the policy, as long as its
                // package is there (and one the client can apply); else decide afresh.
                if let Some(pkg) = find(granted) {
                    let rollback = version::compare(&req.version, granted).is_gt();
                    // A machine downloading the full payload keeps it: a delta published
                    // meanwhile would discard its checkpoint. (One downloading a delta falls
                    // back to the full payload once it stops sending delta_okay.)
                    let full_only = inst.served_payload == Some(ServedPayload::Full);
                    return (self.serve(cat, pkg, rollback, req, full_only), None);
                }
            }
            if inst.status == InstanceStatus::Installed {
                staged = Some(granted.as_str());
            }
        }
        let choice = choose(spec, &req.version, &target.version, |v| find(v).is_some());
        let choice = match staged {
            Some(s) => after_staged(s, choice),
            None => choice,
        };
        let (pkg, rollback) = match choice {
            TargetChoice::UpToDate if staged.is_some() => {
                return no(NoUpdateReason::AwaitingReboot);
            }
            TargetChoice::UpToDate => return no(NoUpdateReason::UpToDate),
            TargetChoice::Blocked => {
                return no(NoUpdateReason::Hold(
                    HoldReason::Blocked.as_str().to_owned(),
                ));
            }
            TargetChoice::Serve { version, rollback } => {
                (find(&version).unwrap_or(target), rollback)
            }
        };
        // Never offer what the client cannot apply: held before any rollout rule counts it.
        if !req.client.can_apply(pkg.format) {
            return no(NoUpdateReason::Hold(HoldReason::Format.as_str().to_owned()));
        }
        let machine_id = instance.map_or("", |i| i.machine_id.as_str());
        // Canaries match the machine id or the alias an operator assigned, never the alias the
        // client reports.
        let operator_alias = cat.operator_alias(machine_id);
        let decision = match instance {
            Some(inst) => self.policy.decide(&PolicyContext {
                app,
                group,
                spec,
                channel,
                target: pkg,
                instance: inst,
                operator_alias,
                now,
            }),
            None => match evaluate(
                group.policy.paused,
                spec,
                app_id,
                machine_id,
                operator_alias,
                now,
            ) {
                Verdict::Hold(r) => PolicyDecision::Hold(r),
                Verdict::Candidate { .. } => PolicyDecision::Grant,
            },
        };
        if let PolicyDecision::Hold(reason) = decision {
            return no(NoUpdateReason::Hold(reason.as_str().to_owned()));
        }
        (
            self.serve(cat, pkg, rollback, req, false),
            Some(GrantPlan {
                group_id: group.id.clone(),
                version: pkg.version.clone(),
                canary: is_canary(spec, machine_id, operator_alias),
            }),
        )
    }
}

/// For a machine whose `staged` release awaits its reboot: only a release newer than the staged
/// one is still served (it replaces the staged one); anything else, a blocked channel version
/// included, leaves the machine waiting for its reboot ([`TargetChoice::UpToDate`]).
fn after_staged(staged: &str, choice: TargetChoice) -> TargetChoice {
    match choice {
        TargetChoice::Serve { ref version, .. } if version::compare(version, staged).is_gt() => {
            choice
        }
        _ => TargetChoice::UpToDate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(v: &str) -> TargetChoice {
        TargetChoice::Serve {
            version: v.into(),
            rollback: false,
        }
    }

    fn err(code: Option<i64>, result: u32, pv: &str) -> EventIn {
        EventIn {
            event_type: 3,
            event_result: result,
            error_code: code,
            previous_version: pv.into(),
            error_detail: String::new(),
        }
    }

    #[test]
    fn a_rollback_names_the_version_fallen_back_from() {
        let rolled_back_from = |e: &EventIn, running: &str, granted: Option<&str>| {
            refusal_of(e, running, granted).map(|(v, reason)| {
                assert_eq!(reason, RefusalReason::RolledBack, "{e:?}");
                v
            })
        };
        let flagged = Some(44 | (1 << 28));
        // The agent names the failed version in `previousversion`.
        assert_eq!(
            rolled_back_from(&err(flagged, 0, "2.0.0"), "1.0.0", Some("1.5.0")),
            Some("2.0.0".into())
        );
        assert_eq!(
            rolled_back_from(&err(Some(44), 0, "2.0.0"), "1.0.0", None),
            Some("2.0.0".into())
        );
        // Without it (or with a useless one) the granted version is refused.
        for pv in ["", "0.0.0.0", "1.0.0", "junk version"] {
            assert_eq!(
                rolled_back_from(&err(flagged, 0, pv), "1.0.0", Some("2.0.0")),
                Some("2.0.0".into()),
                "previousversion {pv:?}"
            );
        }
        // Never the running version, never without a version to name.
        assert_eq!(
            rolled_back_from(&err(flagged, 0, ""), "2.0.0", Some("2.0.0")),
            None
        );
        assert_eq!(rolled_back_from(&err(flagged, 0, ""), "1.0.0", None), None);
        // Other errors, deferrals and success are no rollbacks.
        for e in [
            err(Some(5 | (1 << 28)), 0, "2.0.0"),
            err(None, 0, "2.0.0"),
            err(Some(-1), 0, "2.0.0"),
            err(flagged, 9, "2.0.0"),
            err(flagged, 1, "2.0.0"),
        ] {
            assert_eq!(rolled_back_from(&e, "1.0.0", Some("2.0.0")), None, "{e:?}");
        }
    }

    #[test]
    fn a_deny_list_refuses_the_offered_version() {
        let deny = Some(RefusalReason::DenyListed);
        let of = |code: i64, result: u32, pv: &str, running: &str, granted: Option<&str>| {
            refusal_of(&err(Some(code), result, pv), running, granted)
        };
        // 3/0 with 35 (the agent's deny list) or with the build failures it deny-lists.
        for code in [35, 35 | (1 << 28), 3112, 3113 | (1 << 28), 3114] {
            assert_eq!(
                of(code, 0, "", "1.0.0", Some("2.0.0")),
                Some(("2.0.0".into(), RefusalReason::DenyListed)),
                "code {code}"
            );
        }
        // A staged build that failed once the boot merged it is reported as the running one.
        assert_eq!(of(3113, 0, "", "2.0.0", Some("2.0.0")).map(|r| r.1), deny);
        // Without a grant, `previousversion` names it.
        assert_eq!(
            of(35, 0, "2.0.0", "1.0.0", None),
            Some(("2.0.0".into(), RefusalReason::DenyListed))
        );
        // 35 in a 3/9 is a deferral (update_engine's policy, the agent's pin or downgrade
        // refusal); 3111 (link and file errors), 3110 (another OS) and download errors are
        // failures the agent may retry.
        for (code, result) in [(35, 9), (3111, 0), (3110, 0), (10, 0), (36, 0)] {
            assert_eq!(
                of(code, result, "", "1.0.0", Some("2.0.0")),
                None,
                "{code}/{result}"
            );
        }
        assert_eq!(of(35, 0, "", "1.0.0", None), None, "nothing to refuse");
    }

    #[test]
    fn only_a_newer_release_supersedes_a_staged_one() {
        assert_eq!(after_staged("2.0.0", serve("2.1.0")), serve("2.1.0"));
        // The same version is not downloaded again.
        assert_eq!(
            after_staged("2.0.0", serve("2.0.0")),
            TargetChoice::UpToDate
        );
        // An older one (the channel moved back below the staged release) waits for the reboot.
        assert_eq!(
            after_staged("2.0.0", serve("1.5.0")),
            TargetChoice::UpToDate
        );
        assert_eq!(
            after_staged("2.0.0", TargetChoice::Blocked),
            TargetChoice::UpToDate
        );
        assert_eq!(
            after_staged("2.0.0", TargetChoice::UpToDate),
            TargetChoice::UpToDate
        );
        // A deliberate downgrade newer than a staged downgrade keeps its marker.
        let down = TargetChoice::Serve {
            version: "2.1.0".into(),
            rollback: true,
        };
        assert_eq!(after_staged("2.0.0", down.clone()), down);
    }
}
