//! Rollback detection after a reboot: a pure function of the persisted install record and what
//! is running now, plus what its outcome records besides the update flow (which leaves
//! `staged` on it: `Rebooted` in [`crate::agent::flow`]).

use crate::boot::SlotId;
use crate::state::{AgentState, InstalledUpdate, PendingReport};

/// What is observed about the running system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootObservation<'a> {
    /// Current boot id.
    pub boot_id: &'a str,
    /// Slot booted from.
    pub booted_slot: SlotId,
    /// Running OS version.
    pub running_version: &'a str,
}

/// What happened to the update installed before the reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was installed, or the machine has not rebooted since.
    NoChange,
    /// The installed version is running from the slot it was written to.
    UpdatedOk {
        /// The version now running.
        version: String,
        /// The version that ran before.
        previous_version: String,
    },
    /// The machine is not running the installed version: the boot loader fell back, or the
    /// new slot booted something else. The version must not be installed again automatically.
    RolledBack {
        /// The version that failed.
        version: String,
    },
}

/// Decides the outcome of `installed` (the record written when the update was staged) given
/// what is running now.
///
/// Same boot id as at install time → [`Outcome::NoChange`] (the agent restarted, no reboot yet).
/// After a reboot: running the installed version from its slot → [`Outcome::UpdatedOk`];
/// anything else → [`Outcome::RolledBack`]. A different version from the new slot also counts
/// as failed, so the agent does not reinstall the same payload in a loop.
pub fn detect(installed: Option<&InstalledUpdate>, now: &BootObservation<'_>) -> Outcome {
    let Some(inst) = installed else {
        return Outcome::NoChange;
    };
    if inst.boot_id == now.boot_id {
        return Outcome::NoChange;
    }
    if now.booted_slot == inst.slot && now.running_version == inst.version {
        Outcome::UpdatedOk {
            version: inst.version.clone(),
            previous_version: inst.from_version.clone(),
        }
    } else {
        Outcome::RolledBack {
            version: inst.version.clone(),
        }
    }
}

impl AgentState {
    /// Records what `outcome` means besides the update flow: on success the previous version,
    /// on a rollback the version on the deny list; either way the report for the next check.
    /// Returns whether the machine rebooted since the update was staged (anything but
    /// [`Outcome::NoChange`]): the flow then takes `Rebooted`, which forgets the staged update
    /// and its install record.
    pub fn record_outcome(&mut self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::NoChange => false,
            Outcome::UpdatedOk {
                previous_version, ..
            } => {
                self.previous_version = Some(previous_version.clone());
                self.pending_report = Some(PendingReport::Rebooted {
                    previous_version: previous_version.clone(),
                });
                true
            }
            Outcome::RolledBack { version } => {
                self.deny_list.insert(version.clone());
                self.pending_report = Some(PendingReport::RolledBack {
                    version: version.clone(),
                });
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::flow::{Event, SlotRecord, UpdateFlow};
    use crate::state::{Phase, StagedUpdate};

    fn installed() -> InstalledUpdate {
        InstalledUpdate {
            version: "4000.0.0".into(),
            slot: SlotId::B,
            from_version: "3999.0.0".into(),
            boot_id: "boot-1".into(),
        }
    }

    fn obs<'a>(boot_id: &'a str, slot: SlotId, v: &'a str) -> BootObservation<'a> {
        BootObservation {
            boot_id,
            booted_slot: slot,
            running_version: v,
        }
    }

    #[test]
    fn outcomes() {
        let i = installed();
        assert_eq!(
            detect(None, &obs("boot-2", SlotId::A, "3999.0.0")),
            Outcome::NoChange
        );
        assert_eq!(
            detect(Some(&i), &obs("boot-1", SlotId::A, "3999.0.0")),
            Outcome::NoChange
        );
        assert_eq!(
            detect(Some(&i), &obs("boot-2", SlotId::B, "4000.0.0")),
            Outcome::UpdatedOk {
                version: "4000.0.0".into(),
                previous_version: "3999.0.0".into()
            }
        );
        let rb = Outcome::RolledBack {
            version: "4000.0.0".into(),
        };
        assert_eq!(detect(Some(&i), &obs("boot-2", SlotId::A, "3999.0.0")), rb);
        assert_eq!(detect(Some(&i), &obs("boot-2", SlotId::B, "4001.0.0")), rb);
    }

    /// What the agent does at start with an outcome: records it, and moves the flow.
    fn apply_outcome(s: &mut AgentState, outcome: &Outcome) -> bool {
        let mut flow = UpdateFlow::at_rest(SlotRecord::from_state(s).unwrap());
        let rebooted = s.record_outcome(outcome);
        if rebooted {
            flow.on(Event::Rebooted).unwrap();
            flow.record().write_to(s);
        }
        rebooted
    }

    #[test]
    fn applying_outcomes_updates_state() {
        let mut s = AgentState {
            phase: Phase::Staged,
            staged: Some(StagedUpdate {
                version: "4000.0.0".into(),
                slot: SlotId::B,
            }),
            installed_before_reboot: Some(installed()),
            ..AgentState::default()
        };
        let before = s.clone();
        assert!(!apply_outcome(&mut s, &Outcome::NoChange));
        assert_eq!(s, before);

        let mut ok = s.clone();
        assert!(apply_outcome(
            &mut ok,
            &detect(
                s.installed_before_reboot.as_ref(),
                &obs("boot-2", SlotId::B, "4000.0.0")
            )
        ));
        assert_eq!(ok.previous_version.as_deref(), Some("3999.0.0"));
        assert!(ok.deny_list.is_empty() && ok.installed_before_reboot.is_none());
        assert_eq!(ok.phase, Phase::Idle);

        assert!(apply_outcome(
            &mut s,
            &Outcome::RolledBack {
                version: "4000.0.0".into()
            }
        ));
        assert!(s.deny_list.contains("4000.0.0"));
        assert!(s.installed_before_reboot.is_none() && s.staged.is_none());
        assert_eq!(s.phase, Phase::Idle);
    }
}
