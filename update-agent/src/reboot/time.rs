//! Injectable time for the reboot coordinator: a clock and a sleeper, real or fake.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;

/// Tells the current time.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// Waits.
pub trait Sleeper: Send + Sync {
    /// Returns after `d` (a fake may return at once and record `d`).
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// `tokio::time::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

/// Time from `now` until `t` (zero if `t` is past).
pub fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
}
