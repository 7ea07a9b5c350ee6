//! After boot: give back the FleetLock slot this machine may hold from before its reboot, as soon
//! as the boot is known good and before anything else (Flatcar#408: a machine that rebooted
//! holding the lock and came up outside its window kept the whole fleet blocked).
//!
//! "Known good" is the boot backend's word: the booted slot's `successful` flag, which only
//! `update-agent mark-good` sets (after every health check passed). The daemon's unit is ordered
//! after `boot-complete.target`, so normally the flag is already set when the daemon starts; if
//! it is not (daemon started by hand, mark-good still running or failed), [`wait_marked_good`]
//! looks again every `poll` ([`MARK_GOOD_POLL`], 1 s) until it is. The release then ignores the
//! strategy's windows and retries with backoff until the server accepts
//! ([`super::fleet_lock::release_after_boot`]).
//!
//! Why a poll and not an event: `mark-good` is another process (a oneshot systemd runs before
//! `boot-complete.target`, often before the bus is up, with a read-only `/run`) whose only effect
//! is the attribute word it writes to the GPT, so there is nothing to subscribe to. Watching the
//! disk with inotify would need a new dependency (no safe binding in the tree; `unsafe` is
//! forbidden) and a poll anyway for writes through another device node. Looking costs one read
//! of the GPT (about 33 KiB, from the page cache) and happens only in the unusual case above, so
//! it is done every second: a held slot is released at most about a second after mark-good.

use std::time::Duration;

use super::fleet_lock::{Backoff, FleetLockClient, release_after_boot};
use super::time::Sleeper;

/// How often the booted slot's `successful` flag is looked at while it is not set.
pub const MARK_GOOD_POLL: Duration = Duration::from_secs(1);

/// Log a reminder every this many looks while waiting for mark-good (5 minutes at
/// [`MARK_GOOD_POLL`]).
const REMIND_EVERY: u32 = 300;

/// Waits until `is_good` says the booted slot is marked good, calling it every `poll`. An error
/// reading the slots counts as "not yet" (it is logged). Returns the number of looks.
pub async fn wait_marked_good<E: std::fmt::Display>(
    mut is_good: impl FnMut() -> Result<bool, E>,
    sleeper: &impl Sleeper,
    poll: Duration,
) -> u32 {
    let mut looks = 0u32;
    loop {
        looks = looks.saturating_add(1);
        match is_good() {
            Ok(true) => return looks,
            Ok(false) if looks % REMIND_EVERY == 1 => {
                tracing::info!(
                    "the booted slot is not marked good yet (update-agent mark-good has not passed); \
                     the fleet lock is released once it is"
                );
            }
            Ok(false) => {}
            Err(e) if looks % REMIND_EVERY == 1 => {
                tracing::warn!(error = %e, "cannot read whether the booted slot is marked good");
            }
            Err(_) => {}
        }
        sleeper.sleep(poll).await;
    }
}

/// Waits for mark-good ([`wait_marked_good`]), then releases the slot ([`release_after_boot`]),
/// retrying until the server accepts. Returns the number of release attempts.
pub async fn release_when_good<E: std::fmt::Display>(
    is_good: impl FnMut() -> Result<bool, E>,
    client: &FleetLockClient,
    sleeper: &impl Sleeper,
    poll: Duration,
    backoff: Backoff,
) -> u32 {
    wait_marked_good(is_good, sleeper, poll).await;
    tracing::info!("booted slot marked good: releasing any fleet lock held from before the reboot");
    release_after_boot(client, sleeper, backoff).await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records sleeps and returns at once.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Duration>>);

    impl Sleeper for Recorder {
        fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
            if let Ok(mut v) = self.0.lock() {
                v.push(d);
            }
            std::future::ready(())
        }
    }

    #[tokio::test]
    async fn waits_until_the_slot_is_good_and_treats_errors_as_not_yet() {
        let answers = Mutex::new(vec![Ok(true), Ok(false), Err("gpt unreadable"), Ok(false)]);
        let sleeper = Recorder::default();
        let looks = wait_marked_good(
            || {
                answers
                    .lock()
                    .map_or(Ok(true), |mut a| a.pop().unwrap_or(Ok(true)))
            },
            &sleeper,
            Duration::from_millis(7),
        )
        .await;
        assert_eq!(looks, 4);
        let slept = sleeper.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(slept, vec![Duration::from_millis(7); 3]);
    }
}
