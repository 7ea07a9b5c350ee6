//! Unit tests of the update flow: every transition, every refusal, the persisted record and the
//! tables of `docs/development/agent-states.md`, all without I/O (but the one test that loads an old state
//! file through the state store).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::*;
use crate::boot::SlotId;
use crate::state::{self, StateStore};

fn update(version: &str) -> StagedUpdate {
    StagedUpdate {
        version: version.into(),
        slot: SlotId::B,
    }
}

fn installed(version: &str) -> InstalledUpdate {
    InstalledUpdate {
        version: version.into(),
        slot: SlotId::B,
        from_version: "1.0.0".into(),
        boot_id: "boot-1".into(),
    }
}

fn checkpoint(offset: u64) -> serde_json::Value {
    json!({ "version": "2.1.0", "applier": { "payload_offset": offset } })
}

fn staged(version: &str) -> SlotRecord {
    SlotRecord::Staged {
        update: update(version),
        installed: installed(version),
    }
}

fn installing(version: &str, offset: Option<u64>) -> SlotRecord {
    SlotRecord::Installing {
        update: update(version),
        checkpoint: offset.map(checkpoint),
    }
}

fn failed(code: u32) -> Event {
    Event::InstallFailed {
        code,
        message: format!("failure {code}"),
    }
}

fn check_failed(code: u32) -> Event {
    Event::CheckFailed {
        code,
        message: format!("failure {code}"),
    }
}

/// Applies `events` in order, each of which must be taken; returns the last action.
fn run(flow: &mut UpdateFlow, events: impl IntoIterator<Item = Event>) -> Action {
    let mut last = Action::None;
    for e in events {
        let name = e.name();
        last = flow
            .on(e)
            .unwrap_or_else(|r| panic!("{name} refused in {}: {r}", flow.name()));
    }
    last
}

// The scenarios of the earlier `Machine` (same events, same expectations).

#[test]
fn full_update_flow() {
    let mut m = UpdateFlow::at_rest(SlotRecord::Empty);
    assert_eq!(m.on(Event::CheckStarted), Ok(Action::None));
    assert_eq!(m.status(), Status::Checking);
    assert_eq!(
        m.on(Event::Offered("2.0.0".into())),
        Ok(Action::Install("2.0.0".into()))
    );
    run(
        &mut m,
        [
            Event::DownloadStarted,
            Event::Progress {
                received: 5,
                total: 10,
            },
        ],
    );
    assert_eq!(
        m.status(),
        Status::Downloading {
            version: "2.0.0".into(),
            received: 5,
            total: 10
        }
    );
    run(&mut m, [Event::DownloadVerified]);
    assert_eq!(m.status().update_engine_name(), "UPDATE_STATUS_FINALIZING");
    run(
        &mut m,
        [Event::SlotActivated {
            installed: installed("2.0.0"),
        }],
    );
    assert_eq!(
        m.status(),
        Status::Staged {
            version: "2.0.0".into()
        }
    );
    assert_eq!(m.staged_version(), Some("2.0.0"));
}

#[test]
fn staged_same_version_is_not_reinstalled_but_a_newer_one_is() {
    let mut m = UpdateFlow::at_rest(staged("2.0.0"));
    run(&mut m, [Event::CheckStarted]);
    assert_eq!(m.on(Event::Offered("2.0.0".into())), Ok(Action::None));
    assert_eq!(
        m.status().update_engine_name(),
        "UPDATE_STATUS_UPDATED_NEED_REBOOT"
    );
    run(&mut m, [Event::CheckStarted, Event::NoUpdate]);
    assert_eq!(m.staged_version(), Some("2.0.0"));
    run(&mut m, [Event::CheckStarted]);
    assert_eq!(
        m.on(Event::Offered("2.1.0".into())),
        Ok(Action::Install("2.1.0".into()))
    );
    run(&mut m, [Event::DownloadStarted]);
    assert_eq!(
        m.staged_version(),
        None,
        "the old staged slot is being overwritten"
    );
    run(
        &mut m,
        [
            Event::DownloadVerified,
            Event::SlotActivated {
                installed: installed("2.1.0"),
            },
        ],
    );
    assert_eq!(m.staged_version(), Some("2.1.0"));
}

#[test]
fn failures() {
    let mut m = UpdateFlow::at_rest(staged("2.0.0"));
    run(&mut m, [Event::CheckStarted, check_failed(2)]);
    assert!(matches!(m.status(), Status::Error { code: 2, .. }));
    assert_eq!(
        m.staged_version(),
        Some("2.0.0"),
        "a failed check keeps the staged update"
    );
    run(
        &mut m,
        [
            Event::CheckStarted,
            Event::Offered("3.0.0".into()),
            Event::DownloadStarted,
            failed(10),
        ],
    );
    assert_eq!(m.staged_version(), None);
    run(&mut m, [Event::CheckStarted, Event::Refused]);
    assert_eq!(m.status(), Status::Idle);
    // A refusal before any download keeps a staged update.
    let mut m = UpdateFlow::at_rest(staged("2.0.0"));
    run(
        &mut m,
        [
            Event::CheckStarted,
            Event::Offered("1.0.0".into()),
            Event::Refused,
        ],
    );
    assert_eq!(m.staged_version(), Some("2.0.0"));
}

#[test]
fn reset_forgets_staged_and_errors() {
    let mut m = UpdateFlow::at_rest(staged("2.0.0"));
    run(&mut m, [Event::Reset]);
    assert_eq!(m.status(), Status::Idle);
    assert_eq!(m.staged_version(), None);
    run(&mut m, [Event::CheckStarted, check_failed(2), Event::Reset]);
    assert_eq!(m.status(), Status::Idle);
    // The same version is installed again after a reset (update_engine's "reset, then check").
    run(&mut m, [Event::CheckStarted]);
    assert_eq!(
        m.on(Event::Offered("2.0.0".into())),
        Ok(Action::Install("2.0.0".into()))
    );
}

// Each transition, with what it does to the record.

fn records() -> Vec<SlotRecord> {
    vec![
        SlotRecord::Empty,
        installing("2.0.0", Some(4096)),
        installing("2.0.0", None),
        staged("2.0.0"),
    ]
}

#[test]
fn a_check_starts_between_checks_and_keeps_the_record() {
    for record in records() {
        let failed = UpdateFlow::Failed {
            code: 9,
            message: "cut".into(),
            record: record.clone(),
        };
        for mut flow in [UpdateFlow::at_rest(record.clone()), failed] {
            run(&mut flow, [Event::CheckStarted]);
            assert_eq!(
                flow,
                UpdateFlow::Checking {
                    record: record.clone()
                }
            );
        }
    }
}

#[test]
fn no_update_and_refusals_return_to_rest_on_the_record() {
    for record in records() {
        let rest = UpdateFlow::at_rest(record.clone());
        let checking = UpdateFlow::Checking {
            record: record.clone(),
        };
        let available = UpdateFlow::UpdateAvailable {
            version: "2.1.0".into(),
            record: record.clone(),
        };
        for (mut flow, event) in [
            (checking.clone(), Event::NoUpdate),
            (checking, Event::Refused),
            (available, Event::Refused),
        ] {
            run(&mut flow, [event]);
            assert_eq!(flow, rest);
        }
    }
    assert_eq!(
        UpdateFlow::at_rest(installing("2.0.0", None)).status(),
        Status::Idle,
        "an interrupted install shows as idle"
    );
}

#[test]
fn an_offer_of_the_staged_version_stays_staged_and_another_is_installed() {
    let mut flow = UpdateFlow::Checking {
        record: staged("2.0.0"),
    };
    assert_eq!(flow.on(Event::Offered("2.0.0".into())), Ok(Action::None));
    assert_eq!(flow, UpdateFlow::at_rest(staged("2.0.0")));
    // An interrupted install of the offered version is resumed, not skipped.
    for record in records() {
        let mut flow = UpdateFlow::Checking {
            record: record.clone(),
        };
        let offered = if record.staged_version().is_some() {
            "2.1.0"
        } else {
            "2.0.0"
        };
        assert_eq!(
            flow.on(Event::Offered(offered.into())),
            Ok(Action::Install(offered.into()))
        );
        assert_eq!(
            flow,
            UpdateFlow::UpdateAvailable {
                version: offered.into(),
                record
            }
        );
    }
}

#[test]
fn a_failed_check_keeps_the_record() {
    for record in records() {
        let mut flow = UpdateFlow::Checking {
            record: record.clone(),
        };
        run(&mut flow, [check_failed(2)]);
        assert_eq!(
            flow,
            UpdateFlow::Failed {
                code: 2,
                message: "failure 2".into(),
                record: record.clone()
            }
        );
        assert_eq!(flow.staged_version(), record.staged_version());
        assert_eq!(
            flow.status(),
            Status::Error {
                code: 2,
                message: "failure 2".into()
            }
        );
    }
}

#[test]
fn claiming_the_target_records_an_unfinished_install_of_the_offered_version() {
    // Over a staged update, an unfinished install, or nothing: the slot now holds an
    // unfinished install of the offer, with nothing to resume.
    for before in [
        staged("2.0.0"),
        installing("2.0.5", Some(256)),
        SlotRecord::Empty,
    ] {
        let mut flow = UpdateFlow::UpdateAvailable {
            version: "2.1.0".into(),
            record: before.clone(),
        };
        run(
            &mut flow,
            [Event::TargetClaimed {
                update: update("2.1.0"),
            }],
        );
        assert_eq!(
            flow,
            UpdateFlow::UpdateAvailable {
                version: "2.1.0".into(),
                record: installing("2.1.0", None),
            },
            "claimed over {before:?}"
        );
        assert_eq!(flow.staged_version(), None);
    }
    // Resuming the same install keeps its checkpoint.
    let mut flow = UpdateFlow::UpdateAvailable {
        version: "2.1.0".into(),
        record: installing("2.1.0", Some(256)),
    };
    run(
        &mut flow,
        [Event::TargetClaimed {
            update: update("2.1.0"),
        }],
    );
    assert_eq!(flow.record(), installing("2.1.0", Some(256)));
}

#[test]
fn a_slot_that_could_not_be_made_unbootable_keeps_its_staged_update() {
    let mut flow = UpdateFlow::UpdateAvailable {
        version: "2.1.0".into(),
        record: staged("2.0.0"),
    };
    run(
        &mut flow,
        [
            Event::TargetClaimed {
                update: update("2.1.0"),
            },
            Event::TargetReleased {
                record: staged("2.0.0"),
            },
            failed(7),
        ],
    );
    // The install failed before the download: the staged update stands, still to boot next.
    assert_eq!(flow.record(), staged("2.0.0"));
    assert_eq!(flow.staged_version(), Some("2.0.0"));
}

#[test]
fn the_download_keeps_the_record_until_the_first_checkpoint() {
    let mut flow = UpdateFlow::UpdateAvailable {
        version: "2.1.0".into(),
        record: staged("2.0.0"),
    };
    run(&mut flow, [Event::DownloadStarted]);
    assert_eq!(
        flow,
        UpdateFlow::Downloading {
            version: "2.1.0".into(),
            received: 0,
            total: 0,
            record: staged("2.0.0"),
        }
    );
    assert_eq!(flow.staged_version(), None, "being overwritten");
    assert_eq!(flow.installed(), None);
    run(
        &mut flow,
        [Event::Progress {
            received: 300,
            total: 1000,
        }],
    );
    assert_eq!(
        flow.status(),
        Status::Downloading {
            version: "2.1.0".into(),
            received: 300,
            total: 1000
        }
    );
    assert_eq!(flow.record(), staged("2.0.0"));
    run(
        &mut flow,
        [Event::CheckpointSaved {
            update: update("2.1.0"),
            checkpoint: Some(checkpoint(256)),
        }],
    );
    assert_eq!(flow.record(), installing("2.1.0", Some(256)));
    assert_eq!(flow.record().checkpoint(), Some(&checkpoint(256)));
    assert_eq!(
        flow.status(),
        Status::Downloading {
            version: "2.1.0".into(),
            received: 300,
            total: 1000
        },
        "a checkpoint does not change what is shown"
    );
}

#[test]
fn a_dropped_checkpoint_leaves_an_install_with_nothing_to_resume() {
    let cases = [
        (installing("2.1.0", Some(256)), installing("2.1.0", None)),
        (installing("2.1.0", None), installing("2.1.0", None)),
        // A staged update being overwritten: its version stays recorded until a checkpoint.
        (staged("2.0.0"), installing("2.0.0", None)),
        (SlotRecord::Empty, SlotRecord::Empty),
    ];
    for (before, after) in cases {
        let mut flow = UpdateFlow::Downloading {
            version: "2.1.0".into(),
            received: 10,
            total: 20,
            record: before,
        };
        run(&mut flow, [Event::CheckpointDropped]);
        assert_eq!(
            flow,
            UpdateFlow::Downloading {
                version: "2.1.0".into(),
                received: 10,
                total: 20,
                record: after,
            }
        );
    }
}

#[test]
fn a_verified_payload_is_finalized_then_staged() {
    let mut flow = UpdateFlow::Downloading {
        version: "2.1.0".into(),
        received: 20,
        total: 20,
        record: installing("2.1.0", None),
    };
    run(&mut flow, [Event::DownloadVerified]);
    assert_eq!(
        flow,
        UpdateFlow::Finalizing {
            version: "2.1.0".into(),
            record: installing("2.1.0", None),
        }
    );
    run(
        &mut flow,
        [Event::SlotActivated {
            installed: installed("2.1.0"),
        }],
    );
    assert_eq!(flow, UpdateFlow::at_rest(staged("2.1.0")));
    assert_eq!(flow.installed(), Some(&installed("2.1.0")));
    assert_eq!(flow.record().phase(), Phase::Staged);
}

#[test]
fn a_failed_install_keeps_only_what_survives_it() {
    let available = |record| UpdateFlow::UpdateAvailable {
        version: "2.1.0".into(),
        record,
    };
    let downloading = |record| UpdateFlow::Downloading {
        version: "2.1.0".into(),
        received: 1,
        total: 2,
        record,
    };
    let finalizing = |record| UpdateFlow::Finalizing {
        version: "2.1.0".into(),
        record,
    };
    let cases = [
        // Before the download: the slot is as it was, but an install with nothing to resume.
        (available(staged("2.0.0")), staged("2.0.0")),
        (
            available(installing("2.0.0", Some(4096))),
            installing("2.0.0", Some(4096)),
        ),
        (available(installing("2.0.0", None)), SlotRecord::Empty),
        (available(SlotRecord::Empty), SlotRecord::Empty),
        // Once the download started the staged update is gone; a checkpoint survives.
        (downloading(staged("2.0.0")), SlotRecord::Empty),
        (
            downloading(installing("2.1.0", Some(256))),
            installing("2.1.0", Some(256)),
        ),
        (downloading(installing("2.1.0", None)), SlotRecord::Empty),
        (downloading(SlotRecord::Empty), SlotRecord::Empty),
        (finalizing(installing("2.1.0", None)), SlotRecord::Empty),
    ];
    for (mut flow, record) in cases {
        let before = flow.clone();
        run(&mut flow, [failed(14)]);
        assert_eq!(
            flow,
            UpdateFlow::Failed {
                code: 14,
                message: "failure 14".into(),
                record,
            },
            "from {before:?}"
        );
    }
}

#[test]
fn a_reboot_since_staging_leaves_nothing_staged() {
    let mut flow = UpdateFlow::at_rest(staged("2.0.0"));
    run(&mut flow, [Event::Rebooted]);
    assert_eq!(flow, UpdateFlow::Idle);
    assert_eq!(flow.record(), SlotRecord::Empty);
}

#[test]
fn a_reset_between_checks_forgets_everything() {
    for record in records() {
        let failed = UpdateFlow::Failed {
            code: 9,
            message: "cut".into(),
            record: record.clone(),
        };
        for mut flow in [UpdateFlow::at_rest(record.clone()), failed] {
            run(&mut flow, [Event::Reset]);
            assert_eq!(flow, UpdateFlow::Idle);
        }
    }
}

#[test]
fn a_refused_event_names_the_state_and_the_event_and_changes_nothing() {
    let mut flow = UpdateFlow::Checking {
        record: staged("2.0.0"),
    };
    let before = flow.clone();
    let refused = flow.on(Event::Reset).unwrap_err();
    assert_eq!(
        refused,
        RefusedEvent {
            state: "checking",
            event: "reset"
        }
    );
    assert_eq!(
        refused.to_string(),
        "the update flow cannot take event `reset` in state `checking`; the event is ignored"
    );
    assert_eq!(flow, before);
    // Every pair the flow refuses, over every sample.
    for state in sample_states() {
        for event in sample_events() {
            let mut flow = state.clone();
            if let Err(r) = flow.on(event.clone()) {
                assert_eq!(
                    (r.state, r.event),
                    (state.name(), event.name()),
                    "{state:?} {event:?}"
                );
                assert_eq!(flow, state, "{event:?} refused but the flow moved");
            }
        }
    }
}

#[test]
fn status_names_progress_and_update_engine_names() {
    let d = |received, total| Status::Downloading {
        version: "2.0.0".into(),
        received,
        total,
    };
    let cases = [
        (Status::Idle, "idle", 0.0, "UPDATE_STATUS_IDLE", 0.0),
        (
            Status::Checking,
            "checking",
            0.0,
            "UPDATE_STATUS_CHECKING_FOR_UPDATE",
            0.0,
        ),
        (
            Status::UpdateAvailable {
                version: "2.0.0".into(),
            },
            "update_available",
            0.0,
            "UPDATE_STATUS_UPDATE_AVAILABLE",
            0.0,
        ),
        (
            d(0, 0),
            "downloading",
            0.0,
            "UPDATE_STATUS_DOWNLOADING",
            0.0,
        ),
        (
            d(250, 1000),
            "downloading",
            0.25,
            "UPDATE_STATUS_DOWNLOADING",
            0.25,
        ),
        (
            d(1000, 1000),
            "verifying",
            1.0,
            "UPDATE_STATUS_DOWNLOADING",
            1.0,
        ),
        (
            Status::Finalizing {
                version: "2.0.0".into(),
            },
            "finalizing",
            1.0,
            "UPDATE_STATUS_FINALIZING",
            0.0,
        ),
        (
            Status::Staged {
                version: "2.0.0".into(),
            },
            "staged",
            1.0,
            "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            0.0,
        ),
        (
            Status::Error {
                code: 2,
                message: "down".into(),
            },
            "error",
            0.0,
            "UPDATE_STATUS_REPORTING_ERROR_EVENT",
            0.0,
        ),
    ];
    for (status, name, progress, ue_name, ue_progress) in cases {
        assert_eq!(status.property_name(false), name, "{status:?}");
        assert!((status.progress() - progress).abs() < 1e-9, "{status:?}");
        assert_eq!(status.update_engine_name(), ue_name, "{status:?}");
        assert!(
            (status.update_engine_progress() - ue_progress).abs() < 1e-9,
            "{status:?}"
        );
        // `rebooting` is shown only over a staged update.
        let rebooting = status.property_name(true);
        match status {
            Status::Staged { .. } => assert_eq!(rebooting, "rebooting"),
            _ => assert_eq!(rebooting, name),
        }
    }
    assert_eq!(d(1, 2).version(), Some("2.0.0"));
    assert_eq!(Status::Checking.version(), None);
}

// The persisted record: the layout of `state.json`, and files written by earlier agents.

/// The flow fields of `state` as JSON.
fn flow_fields(state: &AgentState) -> serde_json::Value {
    let v = serde_json::to_value(state).unwrap();
    json!({
        "phase": v["phase"],
        "staged": v["staged"],
        "checkpoint": v["checkpoint"],
        "installed_before_reboot": v["installed_before_reboot"],
    })
}

#[test]
fn each_record_is_written_in_the_state_file_layout() {
    let staged_update = json!({ "version": "2.0.0", "slot": "B" });
    let cases = [
        (
            SlotRecord::Empty,
            json!({ "phase": "idle", "staged": null, "checkpoint": null,
                    "installed_before_reboot": null }),
        ),
        (
            installing("2.0.0", Some(4096)),
            json!({ "phase": "installing", "staged": staged_update, "checkpoint": checkpoint(4096),
                    "installed_before_reboot": null }),
        ),
        (
            installing("2.0.0", None),
            json!({ "phase": "installing", "staged": staged_update, "checkpoint": null,
                    "installed_before_reboot": null }),
        ),
        (
            staged("2.0.0"),
            json!({ "phase": "staged", "staged": staged_update, "checkpoint": null,
                    "installed_before_reboot": { "version": "2.0.0", "slot": "B",
                        "from_version": "1.0.0", "boot_id": "boot-1" } }),
        ),
    ];
    for (record, fields) in cases {
        // Written over a state holding something else: every flow field is replaced.
        let mut state = AgentState::default();
        staged("9.0.0").write_to(&mut state);
        state.checkpoint = Some(checkpoint(1));
        state.deny_list.insert("1.5.0".into());
        record.clone().write_to(&mut state);
        assert_eq!(flow_fields(&state), fields, "{record:?}");
        assert_eq!(state.phase, record.phase());
        assert!(state.deny_list.contains("1.5.0"), "other fields are kept");
        assert_eq!(SlotRecord::from_state(&state), Ok(record));
    }
}

/// `state.json` files as the agent before the update flow wrote them (pretty JSON in the
/// struct's field order, the checkpoint's keys sorted as `serde_json::Value` keeps them), one
/// per record it could write.
const OLD_STATE_FILES: [&str; 4] = [
    r#"{
  "schema": 1,
  "phase": "idle",
  "staged": null,
  "checkpoint": null,
  "deny_list": [
    "1.5.0"
  ],
  "last_error": null,
  "installed_before_reboot": null,
  "previous_version": "0.9.0",
  "pending_report": {
    "kind": "rebooted",
    "previous_version": "0.9.0"
  }
}
"#,
    r#"{
  "schema": 1,
  "phase": "installing",
  "staged": {
    "version": "2.0.0",
    "slot": "B"
  },
  "checkpoint": {
    "applier": {
      "next_op": 12,
      "payload_offset": 6291456
    },
    "failures": 1,
    "hash": {
      "len": 6291456,
      "pending": "",
      "state": "AAAA"
    },
    "payload_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "payload_size": 49818476,
    "slot": "B",
    "version": "2.0.0"
  },
  "deny_list": [],
  "last_error": {
    "code": 9,
    "message": "download failed",
    "at_unix": 1750000000
  },
  "installed_before_reboot": null,
  "previous_version": null,
  "pending_report": null
}
"#,
    r#"{
  "schema": 1,
  "phase": "installing",
  "staged": {
    "version": "2.0.0",
    "slot": "B"
  },
  "checkpoint": null,
  "deny_list": [],
  "last_error": null,
  "installed_before_reboot": null,
  "previous_version": null,
  "pending_report": null
}
"#,
    r#"{
  "schema": 1,
  "phase": "staged",
  "staged": {
    "version": "2.0.0",
    "slot": "B"
  },
  "checkpoint": null,
  "deny_list": [],
  "last_error": null,
  "installed_before_reboot": {
    "version": "2.0.0",
    "slot": "B",
    "from_version": "1.0.0",
    "boot_id": "6a1f1c4e0d8b4f53a8c1f0a8b0b2c3d4"
  },
  "previous_version": "0.9.0",
  "pending_report": null
}
"#,
];

#[test]
fn an_old_state_file_loads_into_the_flow_and_is_written_back_unchanged() {
    let staged_versions = [None, None, None, Some("2.0.0")];
    for (text, staged_version) in OLD_STATE_FILES.iter().zip(staged_versions) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(state::STATE_FILE), text).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.corrupt.is_none(), "{text}");
        let mut state = loaded.state;
        let record = SlotRecord::from_state(&state).unwrap();
        assert_eq!(record.phase(), state.phase);
        let flow = UpdateFlow::at_rest(record);
        assert_eq!(flow.staged_version(), staged_version);
        assert_eq!(flow.installed(), state.installed_before_reboot.as_ref());
        assert_eq!(flow.record().checkpoint(), state.checkpoint.as_ref());
        // What the agent saves next (before anything changes) is the same file.
        flow.record().write_to(&mut state);
        store.save(&state).unwrap();
        let written = std::fs::read_to_string(store.path()).unwrap();
        assert_eq!(written, *text);
    }
    // And each phase rests in its state.
    let names: Vec<&str> = OLD_STATE_FILES
        .iter()
        .map(|t| {
            let s: AgentState = serde_json::from_str(t).unwrap();
            UpdateFlow::at_rest(SlotRecord::from_state(&s).unwrap()).name()
        })
        .collect();
    assert_eq!(names, ["idle", "interrupted", "interrupted", "staged"]);
}

#[test]
fn records_no_agent_writes_are_refused_by_name() {
    let with =
        |phase, staged: Option<StagedUpdate>, installed: Option<InstalledUpdate>| AgentState {
            phase,
            staged,
            installed_before_reboot: installed,
            ..AgentState::default()
        };
    let cases = [
        (with(Phase::Installing, None, None), "`staged` is missing"),
        (
            with(Phase::Staged, None, Some(installed("2.0.0"))),
            "`staged` is missing",
        ),
        (
            with(Phase::Staged, Some(update("2.0.0")), None),
            "`installed_before_reboot` is missing",
        ),
        // The layout version of a newer agent does not matter; the fields do.
        (
            serde_json::from_str(r#"{"schema": 7, "phase": "staged", "future": [1,2]}"#).unwrap(),
            "`staged` is missing",
        ),
    ];
    for (state, reason) in cases {
        let e = SlotRecord::from_state(&state).unwrap_err();
        assert_eq!(e.phase, state.phase);
        assert!(e.reason.contains(reason), "{e}");
        assert!(
            e.to_string().contains("starting with nothing staged"),
            "{e}"
        );
    }
    // Fields no agent writes beside a phase are ignored.
    let idle = AgentState {
        staged: Some(update("2.0.0")),
        checkpoint: Some(checkpoint(1)),
        installed_before_reboot: Some(installed("2.0.0")),
        ..AgentState::default()
    };
    assert_eq!(SlotRecord::from_state(&idle), Ok(SlotRecord::Empty));
    let installing_with_install_record = AgentState {
        installed_before_reboot: Some(installed("2.0.0")),
        ..with(Phase::Installing, Some(update("2.0.0")), None)
    };
    assert_eq!(
        SlotRecord::from_state(&installing_with_install_record),
        Ok(installing("2.0.0", None))
    );
    let staged_with_checkpoint = AgentState {
        checkpoint: Some(checkpoint(1)),
        ..with(
            Phase::Staged,
            Some(update("2.0.0")),
            Some(installed("2.0.0")),
        )
    };
    assert_eq!(
        SlotRecord::from_state(&staged_with_checkpoint),
        Ok(staged("2.0.0"))
    );
}

// The tables of docs/development/agent-states.md, rendered from the flow.

const STATE_NAMES: [&str; 8] = [
    "idle",
    "interrupted",
    "staged",
    "checking",
    "update_available",
    "downloading",
    "finalizing",
    "failed",
];

/// Every state over every record, with progress at the start and at the end of a download.
fn sample_states() -> Vec<UpdateFlow> {
    let mut v = Vec::new();
    for record in records() {
        v.push(UpdateFlow::at_rest(record.clone()));
        v.push(UpdateFlow::Checking {
            record: record.clone(),
        });
        v.push(UpdateFlow::UpdateAvailable {
            version: "2.1.0".into(),
            record: record.clone(),
        });
        for (received, total) in [(0, 0), (500, 1000), (1000, 1000)] {
            v.push(UpdateFlow::Downloading {
                version: "2.1.0".into(),
                received,
                total,
                record: record.clone(),
            });
        }
        v.push(UpdateFlow::Finalizing {
            version: "2.1.0".into(),
            record: record.clone(),
        });
        v.push(UpdateFlow::Failed {
            code: 9,
            message: "cut".into(),
            record,
        });
    }
    v
}

/// Every event; offers of the staged version (2.0.0) and of another.
fn sample_events() -> Vec<Event> {
    vec![
        Event::CheckStarted,
        Event::NoUpdate,
        Event::Offered("2.0.0".into()),
        Event::Offered("2.1.0".into()),
        Event::Refused,
        check_failed(2),
        Event::TargetClaimed {
            update: update("2.1.0"),
        },
        Event::TargetReleased {
            record: staged("2.0.0"),
        },
        Event::DownloadStarted,
        Event::Progress {
            received: 700,
            total: 1000,
        },
        Event::CheckpointSaved {
            update: update("2.1.0"),
            checkpoint: Some(checkpoint(512)),
        },
        Event::CheckpointDropped,
        Event::DownloadVerified,
        Event::SlotActivated {
            installed: installed("2.1.0"),
        },
        failed(14),
        Event::Rebooted,
        Event::Reset,
    ]
}

fn event_order(name: &str) -> usize {
    sample_events()
        .iter()
        .position(|e| e.name() == name)
        .unwrap()
}

fn state_order(name: &str) -> usize {
    STATE_NAMES.iter().position(|n| *n == name).unwrap()
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Idle => "idle",
        Phase::Installing => "installing",
        Phase::Staged => "staged",
    }
}

fn cell(names: &BTreeSet<&str>) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The transition table: each state, each event it takes, the states it may go to.
fn transition_table() -> String {
    let mut rows: BTreeMap<(usize, usize), (&str, &str, BTreeSet<&str>)> = BTreeMap::new();
    for state in sample_states() {
        for event in sample_events() {
            let mut flow = state.clone();
            if flow.on(event.clone()).is_ok() {
                rows.entry((state_order(state.name()), event_order(event.name())))
                    .or_insert_with(|| (state.name(), event.name(), BTreeSet::new()))
                    .2
                    .insert(flow.name());
            }
        }
    }
    let mut t = String::from("| state | event | next state |\n|---|---|---|\n");
    for (state, event, next) in rows.values() {
        t.push_str(&format!("| `{state}` | `{event}` | {} |\n", cell(next)));
    }
    t
}

/// The state table: what each state shows and what `state.json` records in it.
fn state_table() -> String {
    let mut rows: BTreeMap<usize, [BTreeSet<&str>; 3]> = BTreeMap::new();
    for state in sample_states() {
        let row = rows.entry(state_order(state.name())).or_default();
        let status = state.status();
        row[0].insert(status.property_name(false));
        row[1].insert(status.update_engine_name());
        row[2].insert(phase_name(state.record().phase()));
    }
    let mut t = String::from(
        "| state | `Status` (D-Bus, `updatectl status`) | update_engine | `state.json` `phase` |\n\
         |---|---|---|---|\n",
    );
    for (i, [names, ue, phases]) in &rows {
        t.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            STATE_NAMES[*i],
            cell(names),
            cell(ue),
            cell(phases)
        ));
    }
    t
}

#[test]
fn docs_agent_states_md_shows_the_tables_of_this_code() {
    let doc = include_str!("../../../docs/development/agent-states.md");
    for (what, table) in [
        ("state table", state_table()),
        ("transition table", transition_table()),
    ] {
        assert!(
            doc.contains(&table),
            "docs/development/agent-states.md does not show this {what}; paste it there:\n\n{table}"
        );
    }
    assert_eq!(
        state_table().lines().count() - 2,
        STATE_NAMES.len(),
        "every state is sampled"
    );
}
