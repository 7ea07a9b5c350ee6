//! The agent's observable state machine: a [`Status`] enum and a pure transition function
//! ([`Machine::on`]) from events to the next status and the action to take. No I/O: the daemon
//! loop ([`super::Agent`]) performs the actions and feeds back events; a D-Bus service (issue 7)
//! observes the status through [`super::AgentHandle`].
//!
//! ```text
//!            CheckStarted                 Offered(v ≠ staged) → Install
//!  Idle ──────────────────▶ Checking ─────────────────────────────▶ UpdateAvailable
//!   ▲  ▲                     │  │ NoUpdate / Offered(v = staged) / Refused      │ DownloadStarted
//!   │  └─────────────────────┘  └──────────▶ Idle or Staged(v)                  ▼
//!   │  CheckFailed: Error (staged kept)                                      Downloading ──Progress──┐
//!   │                                                                          │   ▲─────────────────┘
//!   │  InstallFailed: Error (staged dropped: its slot was overwritten)         │ DownloadVerified
//!   └──────────────────────────────────────────────────────────────────── Finalizing
//!                                                                              │ SlotActivated
//!                                                                              ▼
//!                                                                          Staged(v) ── CheckStarted ─▶ Checking
//!
//!  Reset (between cycles only): any status → Idle, nothing staged.
//! ```

use serde::Serialize;

/// What the agent is doing (what `updatectl status` and the D-Bus API show).
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

impl Status {
    /// update_engine's `UPDATE_STATUS_*` name for this status (for the compatibility D-Bus API).
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
}

/// Inputs of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A check begins.
    CheckStarted,
    /// The server has no update.
    NoUpdate,
    /// The server offers `version`.
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
    /// The download started.
    DownloadStarted,
    /// Download progress.
    Progress {
        /// Bytes received.
        received: u64,
        /// Payload size.
        total: u64,
    },
    /// Payload verified.
    DownloadVerified,
    /// Slot activated: the update is staged.
    SlotActivated,
    /// The install failed (the inactive slot no longer holds a staged update).
    InstallFailed {
        /// Error code.
        code: u32,
        /// Message.
        message: String,
    },
    /// An operator reset the agent (`updatectl reset`): a staged update and the last error are
    /// forgotten.
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

/// The status plus what survives across checks (the staged version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    status: Status,
    staged: Option<String>,
    installing: Option<String>,
}

impl Machine {
    /// A machine starting idle, or staged when an update is already staged.
    pub fn new(staged: Option<String>) -> Self {
        let status = match &staged {
            Some(v) => Status::Staged { version: v.clone() },
            None => Status::Idle,
        };
        Self {
            status,
            staged,
            installing: None,
        }
    }

    /// The current status.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The staged version, if any.
    pub fn staged(&self) -> Option<&str> {
        self.staged.as_deref()
    }

    fn rest(&self) -> Status {
        match &self.staged {
            Some(v) => Status::Staged { version: v.clone() },
            None => Status::Idle,
        }
    }

    /// Applies `event`; returns the action to perform.
    pub fn on(&mut self, event: Event) -> Action {
        let mut action = Action::None;
        self.status = match event {
            Event::CheckStarted => Status::Checking,
            Event::NoUpdate | Event::Refused => self.rest(),
            Event::Offered(v) if self.staged.as_deref() == Some(v.as_str()) => self.rest(),
            Event::Offered(v) => {
                action = Action::Install(v.clone());
                self.installing = Some(v.clone());
                Status::UpdateAvailable { version: v }
            }
            Event::CheckFailed { code, message } => Status::Error { code, message },
            Event::DownloadStarted => {
                // The inactive slot is being overwritten: whatever was staged there is gone.
                self.staged = None;
                Status::Downloading {
                    version: self.installing.clone().unwrap_or_default(),
                    received: 0,
                    total: 0,
                }
            }
            Event::Progress { received, total } => Status::Downloading {
                version: self.installing.clone().unwrap_or_default(),
                received,
                total,
            },
            Event::DownloadVerified => Status::Finalizing {
                version: self.installing.clone().unwrap_or_default(),
            },
            Event::SlotActivated => {
                self.staged = self.installing.take();
                self.rest()
            }
            Event::InstallFailed { code, message } => {
                self.installing = None;
                Status::Error { code, message }
            }
            Event::Reset => {
                self.installing = None;
                self.staged = None;
                Status::Idle
            }
        };
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_update_flow() {
        let mut m = Machine::new(None);
        assert_eq!(m.on(Event::CheckStarted), Action::None);
        assert_eq!(m.status(), &Status::Checking);
        assert_eq!(
            m.on(Event::Offered("2.0.0".into())),
            Action::Install("2.0.0".into())
        );
        m.on(Event::DownloadStarted);
        m.on(Event::Progress {
            received: 5,
            total: 10,
        });
        assert_eq!(
            m.status(),
            &Status::Downloading {
                version: "2.0.0".into(),
                received: 5,
                total: 10
            }
        );
        m.on(Event::DownloadVerified);
        assert_eq!(m.status().update_engine_name(), "UPDATE_STATUS_FINALIZING");
        m.on(Event::SlotActivated);
        assert_eq!(
            m.status(),
            &Status::Staged {
                version: "2.0.0".into()
            }
        );
        assert_eq!(m.staged(), Some("2.0.0"));
    }

    #[test]
    fn staged_same_version_is_not_reinstalled_but_a_newer_one_is() {
        let mut m = Machine::new(Some("2.0.0".into()));
        m.on(Event::CheckStarted);
        assert_eq!(m.on(Event::Offered("2.0.0".into())), Action::None);
        assert_eq!(
            m.status().update_engine_name(),
            "UPDATE_STATUS_UPDATED_NEED_REBOOT"
        );
        m.on(Event::CheckStarted);
        m.on(Event::NoUpdate);
        assert_eq!(m.staged(), Some("2.0.0"));
        m.on(Event::CheckStarted);
        assert_eq!(
            m.on(Event::Offered("2.1.0".into())),
            Action::Install("2.1.0".into())
        );
        m.on(Event::DownloadStarted);
        assert_eq!(m.staged(), None, "the old staged slot is being overwritten");
        m.on(Event::DownloadVerified);
        m.on(Event::SlotActivated);
        assert_eq!(m.staged(), Some("2.1.0"));
    }

    #[test]
    fn failures() {
        let mut m = Machine::new(Some("2.0.0".into()));
        m.on(Event::CheckStarted);
        m.on(Event::CheckFailed {
            code: 2,
            message: "down".into(),
        });
        assert!(matches!(m.status(), Status::Error { code: 2, .. }));
        assert_eq!(
            m.staged(),
            Some("2.0.0"),
            "a failed check keeps the staged update"
        );
        m.on(Event::CheckStarted);
        m.on(Event::Offered("3.0.0".into()));
        m.on(Event::DownloadStarted);
        m.on(Event::InstallFailed {
            code: 10,
            message: "hash".into(),
        });
        assert_eq!(m.staged(), None);
        m.on(Event::CheckStarted);
        m.on(Event::Refused);
        assert_eq!(m.status(), &Status::Idle);
        // A refusal before any download keeps a staged update.
        let mut m = Machine::new(Some("2.0.0".into()));
        m.on(Event::CheckStarted);
        m.on(Event::Offered("1.0.0".into()));
        m.on(Event::Refused);
        assert_eq!(m.staged(), Some("2.0.0"));
    }

    #[test]
    fn reset_forgets_staged_and_errors() {
        let mut m = Machine::new(Some("2.0.0".into()));
        m.on(Event::Reset);
        assert_eq!(m.status(), &Status::Idle);
        assert_eq!(m.staged(), None);
        m.on(Event::CheckStarted);
        m.on(Event::CheckFailed {
            code: 2,
            message: "down".into(),
        });
        m.on(Event::Reset);
        assert_eq!(m.status(), &Status::Idle);
        // The same version is installed again after a reset (update_engine's "reset, then check").
        m.on(Event::CheckStarted);
        assert_eq!(
            m.on(Event::Offered("2.0.0".into())),
            Action::Install("2.0.0".into())
        );
    }
}
