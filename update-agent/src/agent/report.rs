//! The agent's [`Observer`] of an install: feeds the install's steps, progress and checkpoints
//! to the update flow, saves the state when the flow's record changes, reports the 13/1 and
//! 14/1 events to the server, and keeps what the verified payload is (full or delta) for the
//! status and the delta fallback.

use std::time::{Duration, Instant};

use omaha::EventRequest;

use tokio::sync::watch;

use super::flow::{Event, SlotRecord, UpdateFlow};
use super::{AgentInfo, Publisher, apply, save_state};
use crate::boot::SlotId;
use crate::identity::Identity;
use crate::install::{Observer, PayloadKind, ResumeRecord, Step};
use crate::omaha_client::{self, OmahaClient};
use crate::state::{AgentState, StagedUpdate, StateError, StateStore};

/// Reports an install's steps.
pub(super) struct Reporter<'a> {
    pub omaha: &'a OmahaClient,
    pub identity: &'a Identity,
    pub store: &'a StateStore,
    pub state: &'a mut AgentState,
    pub flow: &'a mut UpdateFlow,
    pub publisher: &'a Publisher,
    /// Where the status shows whether the payload is a delta.
    pub info: &'a watch::Sender<AgentInfo>,
    pub version: &'a str,
    /// What the events' `<app>` says (as the check did).
    pub delta_okay: bool,
    pub last_progress_log: Instant,
    /// The record from before [`Observer::claim_target`], until the slot is made unbootable.
    pub claimed_over: Option<SlotRecord>,
    /// What the payload is, once its signed prefix was verified.
    pub kind: Option<PayloadKind>,
}

impl Reporter<'_> {
    fn on(&mut self, event: Event) {
        apply(self.flow, event);
        self.publisher.publish(self.flow);
    }

    async fn send(&self, ev: EventRequest) {
        let req = omaha_client::event_request(self.identity, ev, self.delta_okay);
        if let Err(e) = self.omaha.send(&req).await {
            tracing::warn!(error = %e, "could not report event");
        }
    }
}

impl Observer for Reporter<'_> {
    async fn step(&mut self, step: Step) {
        match step {
            Step::DownloadStarted => {
                self.on(Event::DownloadStarted);
                self.send(EventRequest::download_started()).await;
            }
            Step::DownloadVerified => {
                self.on(Event::DownloadVerified);
                self.send(EventRequest::download_finished()).await;
            }
            // The caller records the staged update and sends 3/1.
            Step::SlotActivated => {}
        }
    }

    fn progress(&mut self, received: u64, total: u64) {
        self.on(Event::Progress { received, total });
        if self.last_progress_log.elapsed() >= Duration::from_secs(10) {
            self.last_progress_log = Instant::now();
            tracing::info!(version = %self.version, received, total, "downloading");
        }
    }

    fn payload_verified(&mut self, kind: &PayloadKind) {
        let delta = kind.is_delta();
        let version = self.version;
        self.info.send_if_modified(|i| match &mut i.offer {
            Some(o) if o.version == version && o.delta != delta => {
                o.delta = delta;
                true
            }
            _ => false,
        });
        self.kind = Some(kind.clone());
    }

    fn save_resume(&mut self, record: Option<&ResumeRecord>) -> Result<(), StateError> {
        match record {
            Some(r) => {
                apply(
                    self.flow,
                    Event::CheckpointSaved {
                        update: StagedUpdate {
                            version: r.version.clone(),
                            slot: r.slot,
                        },
                        checkpoint: serde_json::to_value(r).ok(),
                    },
                );
            }
            None => {
                // Nothing to write when there was no checkpoint to drop.
                let before = self.flow.record();
                apply(self.flow, Event::CheckpointDropped);
                if self.flow.record() == before {
                    return Ok(());
                }
            }
        }
        save_state(self.flow, self.state, self.store)
    }

    fn claim_target(&mut self, version: &str, slot: SlotId) -> Result<(), StateError> {
        let before = self.flow.record();
        let claim = Event::TargetClaimed {
            update: StagedUpdate {
                version: version.to_owned(),
                slot,
            },
        };
        // Saved before it is taken: a claim that did not reach the disk is no claim.
        let mut claimed = self.flow.clone();
        claimed
            .on(claim)
            .map_err(|refused| StateError::Refused(refused.to_string()))?;
        if claimed.record() != before {
            save_state(&claimed, self.state, self.store)?;
        }
        *self.flow = claimed;
        self.claimed_over = Some(before);
        self.publisher.publish(self.flow);
        Ok(())
    }

    fn release_target(&mut self) -> Result<(), StateError> {
        let Some(record) = self.claimed_over.take() else {
            return Ok(());
        };
        let changed = self.flow.record() != record;
        apply(self.flow, Event::TargetReleased { record });
        self.publisher.publish(self.flow);
        if changed {
            save_state(self.flow, self.state, self.store)?;
        }
        Ok(())
    }
}
