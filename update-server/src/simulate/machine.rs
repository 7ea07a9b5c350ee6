//! One simulated machine as update_engine behaves: what it sends next ([`Machine::step`]) and how
//! the server's answer moves it on ([`Machine::on_answer`]). Pure: no I/O and no clock; the
//! driver sends the requests and keeps time.
//!
//! ```text
//! waiting ──check: ok──▶ granted ──13/1──▶ downloading ──14/1──▶ downloaded ──3/1──▶ installed
//!    ▲  │                                     │                     │                 │ reboot delay
//!    └──┘ check: noupdate                     └──3/0 (download)─────┴──3/0 (install)  ▼
//!                                                         ▼               post-reboot check 3/2
//!                                      failed ──check: ok──▶ granted        previousversion
//!                                                                                 ▼
//!                                                                             complete
//! ```
//!
//! Whether an attempt fails, and how, is drawn when it is granted (so a failed machine that is
//! granted again retries with a fresh draw, as a real agent retries at its next check).

use omaha::ErrorCode;

use super::random::{Purpose, spread, unit};

/// Where a machine is in its update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// On the old version, checking in; not granted (yet).
    Waiting,
    /// Granted; about to report 13/1.
    Granted,
    /// Download started (13/1 sent).
    Downloading,
    /// Download finished (14/1 sent); installing.
    Downloaded,
    /// Installed (3/1 sent); waiting for its reboot. Not a failure.
    Installed,
    /// Rebooted into the new version and reported 3/2 with `previousversion`.
    Complete,
    /// Reported 3/0 with an error code; checks in again on its interval.
    Failed,
}

/// The states counted in the time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Checking in on the old version, not granted.
    Waiting,
    /// Between grant and installed.
    InFlight,
    /// Installed, awaiting reboot.
    Installed,
    /// On the new version.
    Complete,
    /// Last attempt failed.
    Failed,
}

impl Phase {
    /// The state it is counted in.
    pub fn tally(self) -> Tally {
        match self {
            Self::Waiting => Tally::Waiting,
            Self::Granted | Self::Downloading | Self::Downloaded => Tally::InFlight,
            Self::Installed => Tally::Installed,
            Self::Complete => Tally::Complete,
            Self::Failed => Tally::Failed,
        }
    }
}

/// How the current attempt ends (drawn at grant time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Installs and reboots into the new version.
    Succeed,
    /// Reports 3/0 with this code instead of 14/1.
    FailDownload(ErrorCode),
    /// Reports 3/0 with this code instead of 3/1.
    FailInstall(ErrorCode),
}

/// The next request a machine sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Routine check on the old version: ping and updatecheck.
    Check,
    /// Routine check on the new version (after the update): ping and updatecheck.
    CheckNew,
    /// Event 13/1.
    DownloadStarted,
    /// Event 14/1 (after fetching the payload when downloads are on).
    DownloadFinished,
    /// Event 3/1.
    InstallDone,
    /// Event 3/0 with this error code.
    Error(ErrorCode),
    /// The first check after the reboot: new version, 3/2 with `previousversion`, updatecheck.
    PostReboot,
}

/// The server's answer as a machine reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `updatecheck status="ok"` offering this version.
    Update {
        /// Manifest version.
        version: String,
    },
    /// `noupdate`.
    NoUpdate,
    /// An event request answered.
    Ack,
    /// The payload download failed; the wire layer reported 3/0 (download error) instead of 14/1.
    DownloadFailed,
    /// No usable answer (connection error, HTTP error, unparsable body): the machine retries.
    Failed(String),
}

/// What an answer did, for the fleet's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing worth counting.
    None,
    /// A new attempt was granted.
    Granted,
    /// The attempt ended in 3/0.
    Failed,
    /// The machine rebooted into the new version.
    Completed,
    /// The request failed; it is retried.
    TransportError,
    /// An answer a correct server does not give (another version offered, an answer to a step
    /// the machine no longer expects).
    Unexpected,
}

/// Durations (seconds) and the failure model, shared by every machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Seed of the draws.
    pub seed: u64,
    /// Share of attempts that fail.
    pub failure_rate: f64,
    /// Version rolled out (an offer of another version is unexpected).
    pub to_version: String,
    /// Mean check interval.
    pub check_interval: u64,
    /// Jitter of the check interval (fraction).
    pub jitter: f64,
    /// Mean download time.
    pub download: u64,
    /// Mean install time.
    pub install: u64,
    /// Mean reboot delay.
    pub reboot: u64,
    /// Delay before retrying a failed request.
    pub retry: u64,
}

/// One machine's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    phase: Phase,
    seen: bool,
    attempts: u32,
    checks: u32,
    fate: Fate,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    /// A machine on the old version that has not checked in yet.
    pub fn new() -> Self {
        Self {
            phase: Phase::Waiting,
            seen: false,
            attempts: 0,
            checks: 0,
            fate: Fate::Succeed,
        }
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the server has answered it at least once (it is registered there).
    pub fn seen(&self) -> bool {
        self.seen
    }

    /// Attempts granted so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Seconds after the start of its first check (spread over one check interval).
    pub fn first_check(id: u32, m: &Model) -> i64 {
        let u = unit(m.seed, id, 0, Purpose::FirstCheck);
        (u * m.check_interval as f64) as i64
    }

    /// The request it sends next.
    pub fn step(&self) -> Step {
        match (self.phase, self.fate) {
            (Phase::Waiting | Phase::Failed, _) => Step::Check,
            (Phase::Complete, _) => Step::CheckNew,
            (Phase::Granted, _) => Step::DownloadStarted,
            (Phase::Downloading, Fate::FailDownload(c)) => Step::Error(c),
            (Phase::Downloading, _) => Step::DownloadFinished,
            (Phase::Downloaded, Fate::FailInstall(c)) => Step::Error(c),
            (Phase::Downloaded, _) => Step::InstallDone,
            (Phase::Installed, _) => Step::PostReboot,
        }
    }

    fn next_check(&mut self, id: u32, now: i64, m: &Model) -> i64 {
        self.checks = self.checks.wrapping_add(1);
        let u = unit(m.seed, id, self.checks, Purpose::CheckJitter);
        now + spread(m.check_interval, m.jitter, u)
    }

    fn draw_fate(&self, id: u32, m: &Model) -> Fate {
        if unit(m.seed, id, self.attempts, Purpose::Failure) >= m.failure_rate {
            return Fate::Succeed;
        }
        let k = unit(m.seed, id, self.attempts, Purpose::FailureKind);
        match (k * 4.0) as u32 {
            0 => Fate::FailDownload(ErrorCode::DownloadTransferError),
            1 => Fate::FailDownload(ErrorCode::PayloadHashMismatchError),
            2 => Fate::FailInstall(ErrorCode::PostinstallRunnerError),
            _ => Fate::FailInstall(ErrorCode::NewRootfsVerificationError),
        }
    }

    /// Applies the answer to `step` (sent at `now`); returns when the machine acts next and
    /// what happened.
    pub fn on_answer(
        &mut self,
        id: u32,
        step: Step,
        answer: &Answer,
        now: i64,
        m: &Model,
    ) -> (i64, Effect) {
        if let Answer::Failed(_) = answer {
            return (now + m.retry.max(1) as i64, Effect::TransportError);
        }
        self.seen = true;
        let draw = |p| unit(m.seed, id, self.attempts, p);
        match (self.phase, step) {
            (Phase::Complete, Step::CheckNew) => match answer {
                Answer::Update { .. } => (self.next_check(id, now, m), Effect::Unexpected),
                _ => (self.next_check(id, now, m), Effect::None),
            },
            (Phase::Waiting | Phase::Failed, Step::Check) => match answer {
                Answer::Update { version } if *version == m.to_version => {
                    self.attempts += 1;
                    self.fate = self.draw_fate(id, m);
                    self.phase = Phase::Granted;
                    // update_engine starts the download right after the answer (within 30 s, or
                    // the download time if that is shorter).
                    let u = unit(m.seed, id, self.attempts, Purpose::StartDelay);
                    (now + spread(m.download.min(30), 1.0, u), Effect::Granted)
                }
                Answer::Update { .. } => (self.next_check(id, now, m), Effect::Unexpected),
                _ => (self.next_check(id, now, m), Effect::None),
            },
            (Phase::Granted, Step::DownloadStarted) => {
                self.phase = Phase::Downloading;
                let mut t = spread(m.download, 0.5, draw(Purpose::Download));
                if matches!(self.fate, Fate::FailDownload(_)) {
                    t = (t / 2).max(1);
                }
                (now + t, Effect::None)
            }
            (Phase::Downloading, Step::DownloadFinished) if *answer == Answer::DownloadFailed => {
                self.phase = Phase::Failed;
                (self.next_check(id, now, m), Effect::Failed)
            }
            (Phase::Downloading, Step::DownloadFinished) => {
                self.phase = Phase::Downloaded;
                let t = spread(m.install, 0.5, draw(Purpose::Install));
                (now + t, Effect::None)
            }
            (Phase::Downloaded, Step::InstallDone) => {
                self.phase = Phase::Installed;
                let t = spread(m.reboot, 0.5, draw(Purpose::Reboot));
                (now + t, Effect::None)
            }
            (Phase::Downloading | Phase::Downloaded, Step::Error(_)) => {
                self.phase = Phase::Failed;
                (self.next_check(id, now, m), Effect::Failed)
            }
            (Phase::Installed, Step::PostReboot) => {
                self.phase = Phase::Complete;
                (self.next_check(id, now, m), Effect::Completed)
            }
            // An answer to a step the machine no longer expects: ignore it, act again soon.
            _ => (now + 1, Effect::Unexpected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(failure_rate: f64) -> Model {
        Model {
            seed: 9,
            failure_rate,
            to_version: "2.0.0".into(),
            check_interval: 3600,
            jitter: 0.25,
            download: 300,
            install: 120,
            reboot: 1800,
            retry: 60,
        }
    }

    fn update() -> Answer {
        Answer::Update {
            version: "2.0.0".into(),
        }
    }

    /// Runs machine `id` from its first check to the end of one attempt (every check offered
    /// the update); returns the machine, its steps and their effects.
    fn attempt(m: &Model, id: u32) -> (Machine, Vec<Step>, Vec<Effect>) {
        let mut mc = Machine::new();
        let (mut steps, mut effects) = (vec![], vec![]);
        let mut now = Machine::first_check(id, m);
        for _ in 0..6 {
            let step = mc.step();
            let answer = match step {
                Step::Check => update(),
                Step::PostReboot => Answer::NoUpdate,
                _ => Answer::Ack,
            };
            let (next, eff) = mc.on_answer(id, step, &answer, now, m);
            assert!(next > now, "time moves on");
            now = next;
            steps.push(step);
            effects.push(eff);
            if matches!(mc.phase, Phase::Complete | Phase::Failed) {
                break;
            }
        }
        (mc, steps, effects)
    }

    #[test]
    fn successful_attempt_follows_update_engine_sequence() {
        let (mc, steps, effects) = attempt(&model(0.0), 1);
        assert_eq!(
            steps,
            [
                Step::Check,
                Step::DownloadStarted,
                Step::DownloadFinished,
                Step::InstallDone,
                Step::PostReboot
            ]
        );
        assert_eq!(effects[0], Effect::Granted);
        assert_eq!(effects[4], Effect::Completed);
        assert_eq!(mc.phase(), Phase::Complete);
        assert_eq!(mc.phase().tally(), Tally::Complete);
        assert_eq!(mc.attempts(), 1);
        // An up-to-date machine keeps checking in, on the new version.
        assert_eq!(mc.step(), Step::CheckNew);
    }

    #[test]
    fn failing_attempts_report_3_0_and_retry_when_granted_again() {
        let m = model(1.0);
        let (mut mc, steps, effects) = attempt(&m, 3);
        assert_eq!(mc.phase(), Phase::Failed);
        assert_eq!(*effects.last().unwrap(), Effect::Failed);
        assert!(matches!(steps.last(), Some(Step::Error(_))), "{steps:?}");
        assert!(!steps.contains(&Step::InstallDone));
        // Granted again: a new attempt.
        let (_, eff) = mc.on_answer(3, Step::Check, &update(), 10_000, &m);
        assert_eq!(eff, Effect::Granted);
        assert_eq!(mc.attempts(), 2);
        assert_eq!(mc.phase().tally(), Tally::InFlight);
    }

    #[test]
    fn failure_share_follows_the_rate_and_is_reproducible() {
        let m = model(0.02);
        let failed = (0..10_000)
            .filter(|id| attempt(&m, *id).0.phase() == Phase::Failed)
            .count();
        assert!((150..260).contains(&failed), "{failed} of 10000 at 2 %");
        assert_eq!(attempt(&m, 77), attempt(&m, 77));
    }

    #[test]
    fn noupdate_and_transport_errors_reschedule_without_moving() {
        let m = model(0.0);
        let mut mc = Machine::new();
        let (next, eff) = mc.on_answer(1, Step::Check, &Answer::NoUpdate, 0, &m);
        assert_eq!(eff, Effect::None);
        assert!((2700..=4500).contains(&next), "{next}");
        let (next, eff) = mc.on_answer(1, Step::Check, &Answer::Failed("x".into()), 0, &m);
        assert_eq!((next, eff), (60, Effect::TransportError));
        assert_eq!(mc.phase(), Phase::Waiting);
        assert!(mc.seen(), "registered by the first answer");
        assert!(!Machine::new().seen());
        // An offer of another version is not taken.
        let other = Answer::Update {
            version: "9.9.9".into(),
        };
        assert_eq!(
            mc.on_answer(1, Step::Check, &other, 0, &m).1,
            Effect::Unexpected
        );
        assert_eq!(mc.phase(), Phase::Waiting);
    }

    #[test]
    fn failed_download_turns_into_a_failure() {
        let m = model(0.0);
        let mut mc = Machine::new();
        mc.on_answer(1, Step::Check, &update(), 0, &m);
        mc.on_answer(1, Step::DownloadStarted, &Answer::Ack, 10, &m);
        let (_, eff) = mc.on_answer(1, Step::DownloadFinished, &Answer::DownloadFailed, 20, &m);
        assert_eq!(eff, Effect::Failed);
        assert_eq!(mc.phase(), Phase::Failed);
    }
}
