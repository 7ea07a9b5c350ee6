//! The agent's update flow as one state machine: [`UpdateFlow`], an enum whose states carry their
//! own data, and [`UpdateFlow::on`], the one place where it moves. Every move is guarded: an
//! [`Event`] the current state cannot take is refused with a [`RefusedEvent`] that names both,
//! and the flow stays where it was (the caller logs it). No I/O: the check-in loop
//! ([`super::Agent`]) performs the [`Action`]s and feeds events back.
//!
//! Everything else is derived from the flow:
//!
//! - what `state.json` records: [`SlotRecord`] (what the inactive slot holds) is the persisted
//!   part of every state, written to the file's `phase`, `staged`, `checkpoint` and
//!   `installed_before_reboot` by [`SlotRecord::write_to`] and read back by
//!   [`SlotRecord::from_state`];
//! - what the D-Bus API, `updatectl status` and sd_notify show: [`UpdateFlow::status`], named by
//!   [`Status::property_name`] and [`Status::update_engine_name`];
//! - the staged version the reboot driver follows: [`UpdateFlow::staged_version`].
//!
//! The diagram and the full transition table are in `docs/development/agent-states.md`; a unit test renders
//! the tables from this code and checks that the document shows them.
//!
//! ```text
//!  Idle / Interrupted / Staged / Failed ──CheckStarted──▶ Checking
//!  Checking ──NoUpdate, Refused, Offered(the staged version)──▶ Idle / Interrupted / Staged
//!  Checking ──CheckFailed──▶ Failed
//!  Checking ──Offered(another version): Install──▶ UpdateAvailable ──Refused──▶ (back to rest)
//!  UpdateAvailable ⟲ TargetClaimed (saved before the slot is touched), TargetReleased (the
//!                    slot could not be made unbootable: the record from before the claim)
//!  UpdateAvailable ──DownloadStarted──▶ Downloading ⟲ Progress, CheckpointSaved, CheckpointDropped
//!  Downloading ──DownloadVerified──▶ Finalizing ──SlotActivated──▶ Staged
//!  UpdateAvailable / Downloading / Finalizing ──InstallFailed──▶ Failed
//!  Staged ──Rebooted (at start, after a reboot)──▶ Idle
//!  Idle / Interrupted / Staged / Failed ──Reset──▶ Idle
//! ```

use serde::Serialize;

use crate::state::{AgentState, InstalledUpdate, Phase, StagedUpdate};

/// What the inactive slot holds, as `state.json` records it: the persisted part of the update
/// flow. Each variant is one of the file's `phase` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotRecord {
    /// Nothing staged and nothing to resume (`phase: idle`).
    Empty,
    /// An install has started overwriting the slot and has not finished (`phase: installing`).
    Installing {
        /// The version and slot recorded for the install. Until the install's first checkpoint
        /// names the version being written, this is what the slot held before: the staged
        /// update being replaced, or an earlier interrupted install.
        update: StagedUpdate,
        /// The payload applier's resume record, opaque here (`None`: nothing to resume; the
        /// next install starts from byte 0).
        checkpoint: Option<serde_json::Value>,
    },
    /// An update is written, verified and marked to boot next (`phase: staged`).
    Staged {
        /// The staged version and its slot.
        update: StagedUpdate,
        /// The install record that rollback detection compares with the running system after
        /// the reboot.
        installed: InstalledUpdate,
    },
}

/// A `state.json` whose update record fields do not fit together. No agent writes such a file
/// (a hand edit can); the agent then starts with nothing staged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "state.json's update record does not fit together (phase {phase:?}: {reason}); \
     starting with nothing staged"
)]
pub struct InconsistentRecord {
    /// The file's `phase`.
    pub phase: Phase,
    /// What is missing or out of place.
    pub reason: &'static str,
}

impl SlotRecord {
    /// The record `state.json` holds in `phase`, `staged`, `checkpoint` and
    /// `installed_before_reboot`. A file written by any agent version loads. The phase decides:
    /// the fields it is written with must be there (`staged` for `installing`; `staged` and
    /// `installed_before_reboot` for `staged`), and fields no agent writes beside it are
    /// ignored.
    pub fn from_state(state: &AgentState) -> Result<SlotRecord, InconsistentRecord> {
        let inconsistent = |reason| InconsistentRecord {
            phase: state.phase,
            reason,
        };
        match state.phase {
            Phase::Idle => Ok(SlotRecord::Empty),
            Phase::Installing => match &state.staged {
                Some(update) => Ok(SlotRecord::Installing {
                    update: update.clone(),
                    checkpoint: state.checkpoint.clone(),
                }),
                None => Err(inconsistent("`staged` is missing")),
            },
            Phase::Staged => match (&state.staged, &state.installed_before_reboot) {
                (Some(update), Some(installed)) => Ok(SlotRecord::Staged {
                    update: update.clone(),
                    installed: installed.clone(),
                }),
                (None, _) => Err(inconsistent("`staged` is missing")),
                (Some(_), None) => Err(inconsistent("`installed_before_reboot` is missing")),
            },
        }
    }

    /// Writes this record into `state`'s `phase`, `staged`, `checkpoint` and
    /// `installed_before_reboot` (the file layout every agent version reads).
    pub fn write_to(self, state: &mut AgentState) {
        let (phase, staged, checkpoint, installed) = match self {
            SlotRecord::Empty => (Phase::Idle, None, None, None),
            SlotRecord::Installing { update, checkpoint } => {
                (Phase::Installing, Some(update), checkpoint, None)
            }
            SlotRecord::Staged { update, installed } => {
                (Phase::Staged, Some(update), None, Some(installed))
            }
        };
        state.phase = phase;
        state.staged = staged;
        state.checkpoint = checkpoint;
        state.installed_before_reboot = installed;
    }

    /// The file's `phase` for this record.
    pub fn phase(&self) -> Phase {
        match self {
            SlotRecord::Empty => Phase::Idle,
            SlotRecord::Installing { .. } => Phase::Installing,
            SlotRecord::Staged { .. } => Phase::Staged,
        }
    }

    /// The version and slot recorded (`None`: nothing recorded).
    pub fn update(&self) -> Option<&StagedUpdate> {
        match self {
            SlotRecord::Empty => None,
            SlotRecord::Installing { update, .. } | SlotRecord::Staged { update, .. } => {
                Some(update)
            }
        }
    }

    /// The resume record of an unfinished install.
    pub fn checkpoint(&self) -> Option<&serde_json::Value> {
        match self {
            SlotRecord::Installing { checkpoint, .. } => checkpoint.as_ref(),
            SlotRecord::Empty | SlotRecord::Staged { .. } => None,
        }
    }

    /// The staged version (`None`: nothing staged).
    pub fn staged_version(&self) -> Option<&str> {
        match self {
            SlotRecord::Staged { update, .. } => Some(&update.version),
            SlotRecord::Empty | SlotRecord::Installing { .. } => None,
        }
    }

    /// After the installer dropped its checkpoint: an unfinished install with nothing to resume.
    /// A staged update the download overwrites becomes one too (its version stays recorded
    /// until the next checkpoint names the new one); an empty record stays empty.
    fn without_checkpoint(self) -> SlotRecord {
        match self {
            SlotRecord::Empty => SlotRecord::Empty,
            SlotRecord::Installing { update, .. } | SlotRecord::Staged { update, .. } => {
                SlotRecord::Installing {
                    update,
                    checkpoint: None,
                }
            }
        }
    }

    /// After a failed install: a resumable install is kept (the next offer of its version
    /// resumes it), and so is a staged update the install had not begun to overwrite
    /// (`overwritten` false: it failed before the download started); anything else is gone.
    fn after_failed_install(self, overwritten: bool) -> SlotRecord {
        match self {
            kept @ SlotRecord::Staged { .. } if !overwritten => kept,
            kept @ SlotRecord::Installing {
                checkpoint: Some(_),
                ..
            } => kept,
            _ => SlotRecord::Empty,
        }
    }
}

/// The agent's update flow. The first three states are where it rests between checks; they
/// are exactly what `state.json` can record ([`SlotRecord`]). The others exist while a check or
/// an install runs, and each carries the record of the slot as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UpdateFlow {
    /// Waiting for the next check; nothing staged, nothing to resume.
    #[default]
    Idle,
    /// Waiting for the next check after an install that did not finish (a crash, a restart, a
    /// failed download): the slot is partly written. Shown as `idle`; the next offer of the same
    /// version resumes from `checkpoint`.
    Interrupted {
        /// The version and slot recorded for the install (see [`SlotRecord::Installing`]).
        update: StagedUpdate,
        /// The resume record (`None`: nothing to resume).
        checkpoint: Option<serde_json::Value>,
    },
    /// An update is staged: a reboot activates it. Checks go on, and a newer offer replaces it.
    Staged {
        /// The staged version and its slot.
        update: StagedUpdate,
        /// The install record checked after the reboot.
        installed: InstalledUpdate,
    },
    /// An update check is running.
    Checking {
        /// What the inactive slot holds meanwhile.
        record: SlotRecord,
    },
    /// A version was offered and will be installed; the slot is not touched yet.
    UpdateAvailable {
        /// The offered version.
        version: String,
        /// What the inactive slot holds meanwhile.
        record: SlotRecord,
    },
    /// The payload is streamed into the inactive slot (a staged update there is gone).
    Downloading {
        /// The version being installed.
        version: String,
        /// Payload bytes received.
        received: u64,
        /// Payload size (0 until known).
        total: u64,
        /// What `state.json` records: the install's last checkpoint, or until the first one
        /// what the slot held before.
        record: SlotRecord,
    },
    /// The payload is written and verified; the slot is being marked to boot next.
    Finalizing {
        /// The version being installed.
        version: String,
        /// What `state.json` records until the update is staged.
        record: SlotRecord,
    },
    /// The last check or install failed; waiting for the next check.
    Failed {
        /// Error code (update_engine's, or Platte's own).
        code: u32,
        /// What went wrong.
        message: String,
        /// What the inactive slot holds after the failure.
        record: SlotRecord,
    },
}

/// Inputs of the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A check begins.
    CheckStarted,
    /// The server has no update (or offered the running version, which is declined).
    NoUpdate,
    /// The server offers this version.
    Offered(String),
    /// The offer was refused by policy (downgrade, deny list).
    Refused,
    /// The check itself failed.
    CheckFailed {
        /// Error code.
        code: u32,
        /// Message.
        message: String,
    },
    /// The installer is about to make the target slot unbootable and overwrite it with
    /// `update`: from now on the slot holds an unfinished install of it, whatever it held
    /// before (a staged update included). Persisted before the slot is touched, so an agent
    /// killed next never believes the slot still holds what it held.
    TargetClaimed {
        /// The version about to be written, and its slot.
        update: StagedUpdate,
    },
    /// The claimed slot could not be made unbootable: it was not touched, and holds what
    /// `record` says (the record from before the claim).
    TargetReleased {
        /// The record before the claim.
        record: SlotRecord,
    },
    /// The target slot is marked unbootable and the download starts.
    DownloadStarted,
    /// Download progress.
    Progress {
        /// Bytes received.
        received: u64,
        /// Payload size.
        total: u64,
    },
    /// The installer persisted a resume checkpoint.
    CheckpointSaved {
        /// The version and slot being written.
        update: StagedUpdate,
        /// The resume record (`None` only when it could not be encoded).
        checkpoint: Option<serde_json::Value>,
    },
    /// The installer dropped its checkpoint (starting over, a bad payload, or the payload is
    /// verified).
    CheckpointDropped,
    /// The payload is written and verified.
    DownloadVerified,
    /// The slot is marked to boot next: the update is staged.
    SlotActivated {
        /// The install record kept for rollback detection after the reboot.
        installed: InstalledUpdate,
    },
    /// The install failed.
    InstallFailed {
        /// Error code.
        code: u32,
        /// Message.
        message: String,
    },
    /// At start: the machine rebooted since the update was staged, and rollback detection has
    /// decided how it went (booted or rolled back). Either way nothing is staged any more.
    Rebooted,
    /// An operator reset the agent (`updatectl reset`): a staged or unfinished update and the
    /// last error are forgotten.
    Reset,
}

/// What the driver must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Install the offered version.
    Install(String),
}

/// An event the current state cannot take. The flow has not moved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the update flow cannot take event `{event}` in state `{state}`; the event is ignored")]
pub struct RefusedEvent {
    /// The state ([`UpdateFlow::name`]).
    pub state: &'static str,
    /// The event ([`Event::name`]).
    pub event: &'static str,
}

impl Event {
    /// The event's name in logs and in `docs/development/agent-states.md`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::CheckStarted => "check_started",
            Event::NoUpdate => "no_update",
            Event::Offered(_) => "offered",
            Event::Refused => "refused",
            Event::CheckFailed { .. } => "check_failed",
            Event::TargetClaimed { .. } => "target_claimed",
            Event::TargetReleased { .. } => "target_released",
            Event::DownloadStarted => "download_started",
            Event::Progress { .. } => "progress",
            Event::CheckpointSaved { .. } => "checkpoint_saved",
            Event::CheckpointDropped => "checkpoint_dropped",
            Event::DownloadVerified => "download_verified",
            Event::SlotActivated { .. } => "slot_activated",
            Event::InstallFailed { .. } => "install_failed",
            Event::Rebooted => "rebooted",
            Event::Reset => "reset",
        }
    }
}

impl UpdateFlow {
    /// The state resting on `record`: how an agent starts from `state.json`, and where a check
    /// returns when it leaves the slot as it was.
    pub fn at_rest(record: SlotRecord) -> UpdateFlow {
        match record {
            SlotRecord::Empty => UpdateFlow::Idle,
            SlotRecord::Installing { update, checkpoint } => {
                UpdateFlow::Interrupted { update, checkpoint }
            }
            SlotRecord::Staged { update, installed } => UpdateFlow::Staged { update, installed },
        }
    }

    /// The state's name in logs and in `docs/development/agent-states.md`.
    pub fn name(&self) -> &'static str {
        match self {
            UpdateFlow::Idle => "idle",
            UpdateFlow::Interrupted { .. } => "interrupted",
            UpdateFlow::Staged { .. } => "staged",
            UpdateFlow::Checking { .. } => "checking",
            UpdateFlow::UpdateAvailable { .. } => "update_available",
            UpdateFlow::Downloading { .. } => "downloading",
            UpdateFlow::Finalizing { .. } => "finalizing",
            UpdateFlow::Failed { .. } => "failed",
        }
    }

    /// Applies `event`: the next state and the action to perform, or the refusal of an event
    /// this state cannot take (then nothing changed). The transitions, all of them here:
    ///
    /// - between checks (`idle`, `interrupted`, `staged`, `failed`): a check starts, or an
    ///   operator resets (to `idle`);
    /// - `checking`: no update, a refusal, or an offer of the staged version returns to rest on
    ///   the slot as it was; another offer → `update_available` with [`Action::Install`]; a
    ///   failed check → `failed`, the slot as it was;
    /// - `update_available`: a refusal returns to rest; the download starts → `downloading`;
    /// - `downloading`: progress and checkpoints (saved, dropped) stay there and update the
    ///   record; verified → `finalizing`;
    /// - `finalizing`: slot activated → `staged`;
    /// - a failed install (`update_available`, `downloading`, `finalizing`) → `failed`, keeping
    ///   only what survives it ([`SlotRecord`]: a resumable install, or a staged update the
    ///   download had not begun to overwrite);
    /// - `staged`: at start, rebooted since → `idle`.
    pub fn on(&mut self, event: Event) -> Result<Action, RefusedEvent> {
        use UpdateFlow as F;
        let (next, action) = match (std::mem::take(self), event) {
            (
                resting @ (F::Idle | F::Interrupted { .. } | F::Staged { .. } | F::Failed { .. }),
                Event::CheckStarted,
            ) => (
                F::Checking {
                    record: resting.into_record(),
                },
                Action::None,
            ),
            (
                F::Idle | F::Interrupted { .. } | F::Staged { .. } | F::Failed { .. },
                Event::Reset,
            ) => (F::Idle, Action::None),
            (F::Checking { record }, Event::NoUpdate) => (F::at_rest(record), Action::None),
            (F::Checking { record } | F::UpdateAvailable { record, .. }, Event::Refused) => {
                (F::at_rest(record), Action::None)
            }
            (F::Checking { record }, Event::Offered(version)) => {
                if record.staged_version() == Some(version.as_str()) {
                    (F::at_rest(record), Action::None)
                } else {
                    let action = Action::Install(version.clone());
                    (F::UpdateAvailable { version, record }, action)
                }
            }
            (F::Checking { record }, Event::CheckFailed { code, message }) => (
                F::Failed {
                    code,
                    message,
                    record,
                },
                Action::None,
            ),
            (F::UpdateAvailable { version, record }, Event::TargetClaimed { update }) => {
                let record = match record {
                    // Resuming the same install: its checkpoint stays.
                    SlotRecord::Installing {
                        update: held,
                        checkpoint,
                    } if held == update => SlotRecord::Installing {
                        update: held,
                        checkpoint,
                    },
                    _ => SlotRecord::Installing {
                        update,
                        checkpoint: None,
                    },
                };
                (F::UpdateAvailable { version, record }, Action::None)
            }
            (F::UpdateAvailable { version, .. }, Event::TargetReleased { record }) => {
                (F::UpdateAvailable { version, record }, Action::None)
            }
            (F::UpdateAvailable { version, record }, Event::DownloadStarted) => (
                F::Downloading {
                    version,
                    received: 0,
                    total: 0,
                    record,
                },
                Action::None,
            ),
            (
                F::Downloading {
                    version, record, ..
                },
                Event::Progress { received, total },
            ) => (
                F::Downloading {
                    version,
                    received,
                    total,
                    record,
                },
                Action::None,
            ),
            (
                F::Downloading {
                    version,
                    received,
                    total,
                    ..
                },
                Event::CheckpointSaved { update, checkpoint },
            ) => (
                F::Downloading {
                    version,
                    received,
                    total,
                    record: SlotRecord::Installing { update, checkpoint },
                },
                Action::None,
            ),
            (
                F::Downloading {
                    version,
                    received,
                    total,
                    record,
                },
                Event::CheckpointDropped,
            ) => (
                F::Downloading {
                    version,
                    received,
                    total,
                    record: record.without_checkpoint(),
                },
                Action::None,
            ),
            (
                F::Downloading {
                    version, record, ..
                },
                Event::DownloadVerified,
            ) => (F::Finalizing { version, record }, Action::None),
            (F::Finalizing { .. }, Event::SlotActivated { installed }) => (
                F::Staged {
                    update: StagedUpdate {
                        version: installed.version.clone(),
                        slot: installed.slot,
                    },
                    installed,
                },
                Action::None,
            ),
            (F::UpdateAvailable { record, .. }, Event::InstallFailed { code, message }) => (
                F::Failed {
                    code,
                    message,
                    record: record.after_failed_install(false),
                },
                Action::None,
            ),
            (
                F::Downloading { record, .. } | F::Finalizing { record, .. },
                Event::InstallFailed { code, message },
            ) => (
                F::Failed {
                    code,
                    message,
                    record: record.after_failed_install(true),
                },
                Action::None,
            ),
            (F::Staged { .. }, Event::Rebooted) => (F::Idle, Action::None),
            (current, event) => {
                let refused = RefusedEvent {
                    state: current.name(),
                    event: event.name(),
                };
                *self = current;
                return Err(refused);
            }
        };
        *self = next;
        Ok(action)
    }

    /// What the inactive slot holds, as `state.json` records it in this state.
    pub fn record(&self) -> SlotRecord {
        self.clone().into_record()
    }

    fn into_record(self) -> SlotRecord {
        match self {
            UpdateFlow::Idle => SlotRecord::Empty,
            UpdateFlow::Interrupted { update, checkpoint } => {
                SlotRecord::Installing { update, checkpoint }
            }
            UpdateFlow::Staged { update, installed } => SlotRecord::Staged { update, installed },
            UpdateFlow::Checking { record }
            | UpdateFlow::UpdateAvailable { record, .. }
            | UpdateFlow::Downloading { record, .. }
            | UpdateFlow::Finalizing { record, .. }
            | UpdateFlow::Failed { record, .. } => record,
        }
    }

    /// The staged version, ready to boot (`None`: nothing staged, or it is being overwritten).
    /// It stays while a check runs and after a failed check.
    pub fn staged_version(&self) -> Option<&str> {
        match self {
            UpdateFlow::Staged { update, .. } => Some(&update.version),
            UpdateFlow::Checking { record }
            | UpdateFlow::UpdateAvailable { record, .. }
            | UpdateFlow::Failed { record, .. } => record.staged_version(),
            UpdateFlow::Idle
            | UpdateFlow::Interrupted { .. }
            | UpdateFlow::Downloading { .. }
            | UpdateFlow::Finalizing { .. } => None,
        }
    }

    /// The install record of the staged update, which rollback detection compares with the
    /// running system after a reboot (`None`: nothing staged).
    pub fn installed(&self) -> Option<&InstalledUpdate> {
        match self {
            UpdateFlow::Staged { installed, .. } => Some(installed),
            _ => None,
        }
    }

    /// What the agent shows: the status of this state.
    pub fn status(&self) -> Status {
        match self {
            UpdateFlow::Idle | UpdateFlow::Interrupted { .. } => Status::Idle,
            UpdateFlow::Staged { update, .. } => Status::Staged {
                version: update.version.clone(),
            },
            UpdateFlow::Checking { .. } => Status::Checking,
            UpdateFlow::UpdateAvailable { version, .. } => Status::UpdateAvailable {
                version: version.clone(),
            },
            UpdateFlow::Downloading {
                version,
                received,
                total,
                ..
            } => Status::Downloading {
                version: version.clone(),
                received: *received,
                total: *total,
            },
            UpdateFlow::Finalizing { version, .. } => Status::Finalizing {
                version: version.clone(),
            },
            UpdateFlow::Failed { code, message, .. } => Status::Error {
                code: *code,
                message: message.clone(),
            },
        }
    }
}

/// What the agent shows of its [`UpdateFlow`] (published to the D-Bus API, `updatectl status`
/// and sd_notify): the state without the slot record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    /// Nothing to do; waiting for the next check.
    Idle,
    /// An update check is running.
    Checking,
    /// An update was offered and will be installed.
    UpdateAvailable {
        /// Offered version.
        version: String,
    },
    /// The payload is being downloaded and written.
    Downloading {
        /// Version being installed.
        version: String,
        /// Payload bytes received.
        received: u64,
        /// Payload size.
        total: u64,
    },
    /// The payload is written and verified; the slot is being activated.
    Finalizing {
        /// Version being installed.
        version: String,
    },
    /// An update is staged; a reboot activates it.
    Staged {
        /// Staged version.
        version: String,
    },
    /// The last check or install failed.
    Error {
        /// Error code (update_engine's, or Platte's own).
        code: u32,
        /// What went wrong.
        message: String,
    },
}

/// Download fraction of `received` out of `total` (0 when the size is unknown).
fn fraction(received: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (received as f64 / total as f64).clamp(0.0, 1.0)
    }
}

impl Status {
    /// update_engine's `UPDATE_STATUS_*` name for this status (for the compatibility D-Bus API;
    /// `verifying` is still `UPDATE_STATUS_DOWNLOADING` there).
    pub fn update_engine_name(&self) -> &'static str {
        match self {
            Status::Idle => "UPDATE_STATUS_IDLE",
            Status::Checking => "UPDATE_STATUS_CHECKING_FOR_UPDATE",
            Status::UpdateAvailable { .. } => "UPDATE_STATUS_UPDATE_AVAILABLE",
            Status::Downloading { .. } => "UPDATE_STATUS_DOWNLOADING",
            Status::Finalizing { .. } => "UPDATE_STATUS_FINALIZING",
            Status::Staged { .. } => "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            Status::Error { .. } => "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        }
    }

    /// Whether every payload byte is received (while downloading): the installer is verifying
    /// the payload and re-reading the slot.
    pub fn is_verifying(&self) -> bool {
        matches!(self, Status::Downloading { received, total, .. } if *total > 0 && received >= total)
    }

    /// The `Status` property of `org.platte.Update1`: `idle`, `checking`, `update_available`,
    /// `downloading`, `verifying` (downloading, every byte received), `finalizing`, `staged`,
    /// `rebooting` or `error`. `rebooting` is the reboot driver's state over a staged update:
    /// `reboot_accepted` says logind accepted the reboot it asked for.
    pub fn property_name(&self, reboot_accepted: bool) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Checking => "checking",
            Status::UpdateAvailable { .. } => "update_available",
            Status::Downloading { .. } if self.is_verifying() => "verifying",
            Status::Downloading { .. } => "downloading",
            Status::Finalizing { .. } => "finalizing",
            Status::Staged { .. } if reboot_accepted => "rebooting",
            Status::Staged { .. } => "staged",
            Status::Error { .. } => "error",
        }
    }

    /// The `Progress` property: the download fraction while downloading, 1 once every byte is
    /// received (verifying, finalizing, staged), else 0.
    pub fn progress(&self) -> f64 {
        match self {
            Status::Downloading { .. } if self.is_verifying() => 1.0,
            Status::Downloading {
                received, total, ..
            } => fraction(*received, *total),
            Status::Finalizing { .. } | Status::Staged { .. } => 1.0,
            Status::Idle
            | Status::Checking
            | Status::UpdateAvailable { .. }
            | Status::Error { .. } => 0.0,
        }
    }

    /// update_engine's progress: the download fraction while downloading (verifying included),
    /// else 0 (it is reset once the download completes).
    pub fn update_engine_progress(&self) -> f64 {
        match self {
            Status::Downloading {
                received, total, ..
            } => fraction(*received, *total),
            _ => 0.0,
        }
    }

    /// The version being installed or staged.
    pub fn version(&self) -> Option<&str> {
        match self {
            Status::UpdateAvailable { version }
            | Status::Downloading { version, .. }
            | Status::Finalizing { version }
            | Status::Staged { version } => Some(version),
            Status::Idle | Status::Checking | Status::Error { .. } => None,
        }
    }
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
