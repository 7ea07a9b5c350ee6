//! When to check for updates: pure timing logic. The caller passes the current instant (an
//! injected clock) and a source of randomness, and sleeps until the returned deadline.
//!
//! - The first check comes `initial_delay` ± `jitter`/2 after start (update_engine: ~7 min).
//! - Then every `interval` ± `jitter`/2 (~hourly), or the server's `PollInterval` when its last
//!   answer carried one, clamped to 60 s ..= 24 h, ± the same configured `jitter`/2.
//!   update_engine fuzzes a server interval by ± half of the interval itself (and caps it at
//!   4 h); Platte keeps the configured jitter instead, so a server that sets the pace gets it
//!   within minutes while checks of a fleet still spread out. Like update_engine's, the
//!   server's interval is not persisted: after a restart the first check uses `initial_delay`.
//! - After `n` consecutive failures (transport errors, 5xx, unusable answers) the wait is
//!   `backoff_base · 2^(n-1)`, capped at `backoff_cap`, ± `jitter`/2 but never above the cap.
//! - An interactive "check now" (D-Bus, issue 7) resets nothing: it runs a check at once and the
//!   next deadline is computed from its outcome like any other.

use std::time::{Duration, Instant};

use crate::config::CheckSettings;

/// A source of uniform random numbers (injected so tests are deterministic).
pub trait Rng {
    /// A uniform number in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64;
}

/// The operating system's random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRng;

impl Rng for OsRng {
    fn up_to(&mut self, max: u64) -> u64 {
        use rand_core::RngCore;
        if max == u64::MAX {
            return rand_core::OsRng.next_u64();
        }
        // Modulo bias is irrelevant at these magnitudes (seconds of jitter).
        rand_core::OsRng.next_u64() % (max + 1)
    }
}

/// How a check went, as far as timing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// The server answered (update or not).
    Answered {
        /// The server's `PollInterval`, if it sent one.
        poll_interval: Option<Duration>,
    },
    /// The check or the install failed (transport error, HTTP 5xx, bad answer, failed download).
    Failed,
}

/// Smallest server-requested poll interval honoured.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Largest server-requested poll interval honoured (a longer one is shortened to this).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The check-in schedule.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: CheckSettings,
    failures: u32,
}

impl Scheduler {
    /// A schedule with the `[check]` settings.
    pub fn new(cfg: CheckSettings) -> Self {
        Self { cfg, failures: 0 }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Deadline of the first check after start at `now`.
    pub fn first(&self, now: Instant, rng: &mut dyn Rng) -> Instant {
        now + self.jittered(self.cfg.initial_delay, None, rng)
    }

    /// Records `result` of a check that ended at `now` and returns the next deadline.
    pub fn next(&mut self, now: Instant, result: CheckResult, rng: &mut dyn Rng) -> Instant {
        let wait = match result {
            CheckResult::Answered { poll_interval } => {
                self.failures = 0;
                let nominal = poll_interval
                    .map(|p| p.clamp(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL))
                    .unwrap_or(self.cfg.interval);
                self.jittered(nominal, None, rng)
            }
            CheckResult::Failed => {
                self.failures = self.failures.saturating_add(1);
                let exp = self.failures.saturating_sub(1).min(32);
                let base = self
                    .cfg
                    .backoff_base
                    .checked_mul(1u32 << exp.min(31))
                    .unwrap_or(self.cfg.backoff_cap)
                    .min(self.cfg.backoff_cap);
                self.jittered(base, Some(self.cfg.backoff_cap), rng)
            }
        };
        now + wait
    }

    /// `nominal` ± `jitter`/2 (not below zero, not above `cap`).
    fn jittered(&self, nominal: Duration, cap: Option<Duration>, rng: &mut dyn Rng) -> Duration {
        let j = u64::try_from(self.cfg.jitter.as_millis()).unwrap_or(u64::MAX);
        let offset = rng.up_to(j);
        let d =
            (nominal + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(j / 2));
        match cap {
            Some(c) => d.min(c),
            None => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always returns `max * num / den`.
    struct Fixed(u64, u64);
    impl Rng for Fixed {
        fn up_to(&mut self, max: u64) -> u64 {
            max / self.1 * self.0
        }
    }

    fn cfg() -> CheckSettings {
        CheckSettings {
            initial_delay: Duration::from_secs(420),
            interval: Duration::from_secs(3600),
            jitter: Duration::from_secs(600),
            backoff_cap: Duration::from_secs(14_400),
            backoff_base: Duration::from_secs(60),
        }
    }

    #[test]
    fn first_check_is_the_initial_delay_with_jitter() {
        let s = Scheduler::new(cfg());
        let t0 = Instant::now();
        assert_eq!(s.first(t0, &mut Fixed(0, 1)) - t0, Duration::from_secs(120));
        assert_eq!(s.first(t0, &mut Fixed(1, 2)) - t0, Duration::from_secs(420));
        assert_eq!(s.first(t0, &mut Fixed(1, 1)) - t0, Duration::from_secs(720));
    }

    #[test]
    fn interval_and_poll_interval() {
        let mut s = Scheduler::new(cfg());
        let t0 = Instant::now();
        let mid = &mut Fixed(1, 2);
        let ok = CheckResult::Answered {
            poll_interval: None,
        };
        assert_eq!(s.next(t0, ok, mid) - t0, Duration::from_secs(3600));
        let poll = CheckResult::Answered {
            poll_interval: Some(Duration::from_secs(7200)),
        };
        assert_eq!(s.next(t0, poll, mid) - t0, Duration::from_secs(7200));
        // A tiny PollInterval is raised to the minimum.
        let tiny = CheckResult::Answered {
            poll_interval: Some(Duration::from_secs(1)),
        };
        assert_eq!(s.next(t0, tiny, mid) - t0, MIN_POLL_INTERVAL);
        // A huge one (u32::MAX seconds is 136 years) is shortened to a day.
        let huge = CheckResult::Answered {
            poll_interval: Some(Duration::from_secs(u64::from(u32::MAX))),
        };
        assert_eq!(s.next(t0, huge, mid) - t0, MAX_POLL_INTERVAL);
    }

    #[test]
    fn the_configured_jitter_applies_to_a_server_interval() {
        let mut s = Scheduler::new(cfg());
        let t0 = Instant::now();
        let poll = CheckResult::Answered {
            poll_interval: Some(Duration::from_secs(2700)),
        };
        // jitter 600 s: 2700 − 300 ..= 2700 + 300, not ± half of the interval.
        assert_eq!(
            s.next(t0, poll, &mut Fixed(0, 1)) - t0,
            Duration::from_secs(2400)
        );
        assert_eq!(
            s.next(t0, poll, &mut Fixed(1, 1)) - t0,
            Duration::from_secs(3000)
        );
        // The next answer without one returns to the configured interval.
        let plain = CheckResult::Answered {
            poll_interval: None,
        };
        assert_eq!(
            s.next(t0, plain, &mut Fixed(1, 2)) - t0,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_reset() {
        let mut s = Scheduler::new(cfg());
        let t0 = Instant::now();
        let mid = &mut Fixed(1, 2);
        let waits: Vec<u64> = (0..10)
            .map(|_| (s.next(t0, CheckResult::Failed, mid) - t0).as_secs())
            .collect();
        assert_eq!(
            waits,
            [60, 120, 240, 480, 960, 1920, 3840, 7680, 14_400, 14_400]
        );
        assert_eq!(s.failures(), 10);
        // Jitter never pushes a backoff above the cap.
        assert_eq!(
            (s.next(t0, CheckResult::Failed, &mut Fixed(1, 1)) - t0).as_secs(),
            14_400
        );
        let ok = CheckResult::Answered {
            poll_interval: None,
        };
        assert_eq!(s.next(t0, ok, mid) - t0, Duration::from_secs(3600));
        assert_eq!(s.failures(), 0);
        assert_eq!(
            s.next(t0, CheckResult::Failed, mid) - t0,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut s = Scheduler::new(cfg());
        s.failures = u32::MAX - 1;
        let t0 = Instant::now();
        assert_eq!(
            (s.next(t0, CheckResult::Failed, &mut Fixed(0, 1)) - t0).as_secs(),
            14_100
        );
    }
}
