//! What the extensions look like from outside: per-extension status (for the D-Bus
//! `Extensions` property and `updatectl status`), the outcome of handling one answer, and
//! whether a staged OS update may reboot ([`Readiness`]).

use std::fmt;

use super::{Extensions, supports};

/// The state of one extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionState {
    /// `enabled = false`.
    Disabled,
    /// Nothing installed yet.
    NotInstalled,
    /// An image is active.
    Active,
    /// A build for the pending OS update is staged (linked for the next boot).
    Staged,
    /// A pending OS update waits for a build of this extension supporting it.
    Waiting,
    /// The last update failed (the previous image is active again).
    Failed,
}

impl ExtensionState {
    /// Stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtensionState::Disabled => "disabled",
            ExtensionState::NotInstalled => "not-installed",
            ExtensionState::Active => "active",
            ExtensionState::Staged => "staged",
            ExtensionState::Waiting => "waiting",
            ExtensionState::Failed => "failed",
        }
    }
}

impl fmt::Display for ExtensionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One extension's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionStatus {
    /// Name.
    pub name: String,
    /// Active version (empty when none).
    pub version: String,
    /// State.
    pub state: ExtensionState,
    /// Details (staged version, why waiting, last error); empty when none.
    pub detail: String,
}

impl ExtensionStatus {
    /// `(name, version, state)` for the D-Bus `Extensions` property `a(sss)`; the state is
    /// `STATE` or `STATE: DETAIL`.
    pub fn to_dbus(&self) -> (String, String, String) {
        let state = if self.detail.is_empty() {
            self.state.as_str().to_owned()
        } else {
            format!("{}: {}", self.state, self.detail)
        };
        (self.name.clone(), self.version.clone(), state)
    }
}

/// Whether a staged OS update may reboot, as far as the extensions are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Every enabled extension has a build for the new OS (staged, or the active one supports
    /// it), or has nothing installed that could break.
    Ready,
    /// The reboot must wait; one line per extension saying why.
    Waiting(Vec<String>),
}

impl Readiness {
    /// Whether the reboot may go ahead.
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }

    /// Why the reboot waits (empty when ready), for status and logs.
    pub fn reason(&self) -> String {
        match self {
            Readiness::Ready => String::new(),
            Readiness::Waiting(r) => r.join("; "),
        }
    }
}

/// What handling one extension's answer (or reconciling after a boot) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No update (or the offered version is already active or staged).
    NoUpdate,
    /// The update is active: link switched, refreshed, units restarted, healthy.
    Activated {
        /// New version.
        version: String,
        /// Version before it.
        previous: Option<String>,
    },
    /// A build for the pending OS update is staged and linked for the next boot.
    Staged {
        /// Staged version.
        version: String,
        /// The OS version it is for.
        os_version: String,
    },
    /// The offer was refused (other OS, deny-listed: reported as 3/0; pinned, downgrade: 3/9).
    Refused {
        /// Offered version.
        version: String,
        /// Why.
        reason: String,
    },
    /// The update failed; the previous image (if any) is active again; reported as 3/0.
    Failed {
        /// The version that failed.
        version: String,
        /// Error code reported.
        code: u32,
        /// What failed (and what failed during the rollback).
        message: String,
        /// The version active again.
        rolled_back_to: Option<String>,
    },
    /// The server's answer for this app was unusable.
    CheckFailed {
        /// Error code.
        code: u32,
        /// Why.
        message: String,
    },
    /// After a reboot into another OS than the one a build was staged for, the previous image
    /// was linked again.
    Restored {
        /// The version active again.
        version: Option<String>,
    },
}

/// The outcome for one extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOutcome {
    /// Extension name.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
}

impl Extensions {
    /// Whether a staged OS update to `target_os` may reboot: every enabled extension with an
    /// active image has a build supporting `target_os` staged, or its active image supports it.
    pub fn readiness(&self, target_os: &str) -> Readiness {
        let mut waiting = Vec::new();
        for ext in self.settings.enabled() {
            let Some(rec) = self.state.extensions.get(&ext.name) else {
                continue;
            };
            if rec
                .next_boot
                .as_ref()
                .is_some_and(|n| n.os_version == target_os)
            {
                continue;
            }
            let Some(active) = &rec.active else { continue };
            if supports(active, target_os) {
                continue;
            }
            let mut why = format!(
                "{} {} supports OS {}, not {target_os}; waiting for a build supporting {target_os}",
                ext.name, active.version, active.os_versions
            );
            if let Some(r) = rec.refused.as_ref().filter(|r| r.os_version == target_os) {
                why.push_str(&format!(" (offered {} refused: {})", r.version, r.reason));
            }
            waiting.push(why);
        }
        if waiting.is_empty() {
            Readiness::Ready
        } else {
            Readiness::Waiting(waiting)
        }
    }

    /// Each configured extension's version and state; `target_os` is the staged OS version, if
    /// any (an extension the reboot waits for is `waiting`).
    pub fn status(&self, target_os: Option<&str>) -> Vec<ExtensionStatus> {
        self.settings
            .extensions
            .iter()
            .map(|ext| {
                let rec = self
                    .state
                    .extensions
                    .get(&ext.name)
                    .cloned()
                    .unwrap_or_default();
                let version = rec
                    .active
                    .as_ref()
                    .map(|i| i.version.clone())
                    .unwrap_or_default();
                let (state, detail) = if !ext.enabled {
                    (ExtensionState::Disabled, String::new())
                } else if let Some(n) = rec
                    .next_boot
                    .as_ref()
                    .filter(|n| Some(n.os_version.as_str()) == target_os)
                {
                    (
                        ExtensionState::Staged,
                        format!("{} for OS {}", n.image.version, n.os_version),
                    )
                } else if let Some(Readiness::Waiting(w)) = target_os.map(|t| self.readiness(t))
                    && let Some(line) = w.iter().find(|l| l.starts_with(&format!("{} ", ext.name)))
                {
                    (ExtensionState::Waiting, line.clone())
                } else if let Some(err) = rec.last_error.as_ref().filter(|_| rec.refused.is_none())
                {
                    (ExtensionState::Failed, err.message.clone())
                } else if rec.active.is_some() {
                    (ExtensionState::Active, String::new())
                } else {
                    (ExtensionState::NotInstalled, String::new())
                };
                ExtensionStatus {
                    name: ext.name.clone(),
                    version,
                    state,
                    detail,
                }
            })
            .collect()
    }
}
