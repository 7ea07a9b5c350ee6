//! The agent's [`Observer`] of an install: persists checkpoints into the state, moves the state
//! machine, and reports the 13/1 and 14/1 events to the server.

use std::time::{Duration, Instant};

use omaha::EventRequest;

use super::Publisher;
use super::machine::{Event, Machine};
use crate::identity::Identity;
use crate::install::{Observer, ResumeRecord, Step};
use crate::omaha_client::{self, OmahaClient};
use crate::state::{AgentState, Phase, StagedUpdate, StateError, StateStore};

/// Reports an install's steps.
pub(super) struct Reporter<'a> {
    pub omaha: &'a OmahaClient,
    pub identity: &'a Identity,
    pub store: &'a StateStore,
    pub state: &'a mut AgentState,
    pub machine: &'a mut Machine,
    pub publisher: &'a Publisher,
    pub version: &'a str,
    pub last_progress_log: Instant,
}

impl Reporter<'_> {
    fn on(&mut self, ev: Event) {
        self.machine.on(ev);
        self.publisher.publish(self.machine);
    }

    async fn send(&self, ev: EventRequest) {
        let req = omaha_client::event_request(self.identity, ev);
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

    fn save_resume(&mut self, record: Option<&ResumeRecord>) -> Result<(), StateError> {
        match record {
            Some(r) => {
                self.state.phase = Phase::Installing;
                self.state.staged = Some(StagedUpdate {
                    version: r.version.clone(),
                    slot: r.slot,
                });
                self.state.installed_before_reboot = None;
                self.state.checkpoint = serde_json::to_value(r).ok();
            }
            None => {
                if self.state.checkpoint.is_none() && self.state.phase != Phase::Staged {
                    return Ok(());
                }
                self.state.checkpoint = None;
                self.state.installed_before_reboot = None;
                self.state.phase = Phase::Installing;
            }
        }
        self.store.save(self.state)
    }
}
