//! `update-agent run`: the agent's check-in loop, the reboot driver, the D-Bus service and
//! sd_notify, run concurrently in one task until shutdown.
//!
//! Order of things:
//! 1. Strategy `fleet-lock`: wait until the booted slot is marked good (its `successful` flag,
//!    set by `update-agent mark-good`; looked at every [`DaemonOptions::mark_good_poll`]), then
//!    give back any slot held from before the reboot (`steady-state`), whatever the windows say,
//!    retrying with backoff until the server accepts. Nothing else waits on the bus for this:
//!    D-Bus comes up at the same time and answers status queries.
//! 2. The check-in loop ([`Agent::run`]) and the reboot [`Driver`] (which reboots through logind
//!    per strategy once an update is staged, or when asked through `RebootNow`). The driver
//!    sees a staged update only once the runtime extensions are ready for it
//!    ([`AgentHandle::rebootable`]); until then the D-Bus `RebootWait` says what they wait for.
//! 3. Meanwhile: connect to the bus (retrying while it is unreachable), serve the D-Bus API and
//!    own its names, then `READY=1` (at once when `dbus.enabled = false`). Every status change
//!    becomes the D-Bus properties and signals and a `STATUS=` line; `STOPPING=1` on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::notify::{Notifier, status_text};
use super::{Agent, AgentHandle};
use crate::dbus::view::{Snapshot, Throttle};
use crate::dbus::{self, DbusError, Service};
use crate::reboot::after_boot::{MARK_GOOD_POLL, wait_marked_good};
use crate::reboot::coordinator::Timing;
use crate::reboot::fleet_lock::{Backoff, release_after_boot};
use crate::reboot::logind::Logind;
use crate::reboot::time::{Clock, Sleeper};
use crate::reboot::{
    Coordinator, Driver, DriverConfig, FleetLockError, RebootRequest, RebootStrategy, RebootView,
};

/// Least time between two publications of download progress (D-Bus, sd_notify); other changes
/// are published at once.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// Knobs of the daemon that are not configuration (tests shorten the waits).
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Bus address (`None`: the system bus; `DBUS_SYSTEM_BUS_ADDRESS` overrides it).
    pub bus_address: Option<String>,
    /// sd_notify socket (`None`: no notifications); `update-agent run` passes `$NOTIFY_SOCKET`.
    pub notify_socket: Option<String>,
    /// How often a block inhibitor is looked at again.
    pub inhibitor_poll: Duration,
    /// Wait after the FleetLock server refused a slot; `None`: `reboot.lock_retry_secs` (tests
    /// set sub-second waits here). Either way ±10 % jitter is added.
    pub lock_retry: Option<Duration>,
    /// How often the booted slot's `successful` flag is looked at before the lock release.
    pub mark_good_poll: Duration,
    /// Backoff of the lock release after boot.
    pub release_backoff: Backoff,
    /// Longest wait between two attempts to reach an unreachable bus.
    pub bus_retry_max: Duration,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        let t = Timing::default();
        Self {
            bus_address: None,
            notify_socket: None,
            inhibitor_poll: t.inhibitor_poll,
            lock_retry: None,
            mark_good_poll: MARK_GOOD_POLL,
            release_backoff: Backoff::default(),
            bus_retry_max: Duration::from_secs(60),
        }
    }
}

/// The daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The reboot strategy cannot be set up.
    #[error("reboot strategy: {0}")]
    Strategy(#[from] FleetLockError),
    /// The HTTP client (FleetLock) cannot be built.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// The D-Bus service cannot run.
    #[error(transparent)]
    Dbus(#[from] DbusError),
}

/// Where the daemon is before its check-in loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    /// Waiting for mark-good before releasing the fleet lock.
    WaitingMarkGood,
    /// Releasing the fleet lock held from before the reboot.
    ReleasingLock,
    /// The check-in loop and the reboot driver run.
    Running,
}

/// Resolves when `rx` changes; never when its sender is gone.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Connects to the bus, retrying (doubling up to `max`) while it cannot be reached.
async fn connect_retry(address: Option<&str>, max: Duration) -> zbus::Connection {
    let mut delay = Duration::from_secs(1);
    loop {
        match dbus::connect(address).await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "D-Bus unreachable: no D-Bus API and no reboot through logind until it is");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(max);
            }
        }
    }
}

/// The snapshot of everything the agent and the driver publish.
fn snapshot(
    h: &mut AgentHandle,
    view: &mut watch::Receiver<RebootView>,
    strategy: &str,
) -> Snapshot {
    let status = h.status.borrow_and_update().clone();
    let info = h.info.borrow_and_update().clone();
    let staged = h.staged.borrow_and_update().clone();
    let view = view.borrow_and_update().clone();
    Snapshot::new(&status, &info, staged.as_deref(), &view, strategy)
}

/// Runs `agent` as the daemon until `shutdown` resolves (see the module documentation).
/// Returns an error only when the D-Bus names cannot be owned or the strategy cannot be set up.
pub async fn run<C, S>(
    mut agent: Agent,
    opts: DaemonOptions,
    clock: C,
    sleeper: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError>
where
    C: Clock + Clone + 'static,
    S: Sleeper + Clone + 'static,
{
    let settings = agent.settings().clone();
    let handle = agent.handle();
    let strategy = RebootStrategy::from_settings(&settings.reboot, &agent.identity().machine_id)?;
    let fleet = match &strategy {
        RebootStrategy::FleetLock(f) => Some(f.client(crate::http::client(&settings.http)?)),
        _ => None,
    };
    let notifier = Notifier::new(opts.notify_socket.as_deref());
    let (request_tx, request_rx) = watch::channel(RebootRequest::None);
    let (view_tx, view_rx) = watch::channel(RebootView::default());
    let (startup_tx, startup_rx) = watch::channel(if fleet.is_some() {
        Startup::WaitingMarkGood
    } else {
        Startup::Running
    });
    let (conn_tx, conn_rx) = watch::channel(None::<zbus::Connection>);
    let (service_tx, service_rx) = watch::channel(None::<Service>);
    tracing::info!(
        strategy = strategy.name(),
        dbus = settings.dbus.enabled,
        compat = settings.dbus.update_engine_compat,
        "daemon starting"
    );
    if !settings.dbus.enabled {
        notifier.ready();
    }

    // 1 and 2: the lock release after boot, then the check-in loop.
    let main = async {
        if let Some(client) = &fleet {
            startup_tx.send_replace(Startup::WaitingMarkGood);
            wait_marked_good(|| agent.booted_marked_good(), &sleeper, opts.mark_good_poll).await;
            startup_tx.send_replace(Startup::ReleasingLock);
            tracing::info!(
                "booted slot marked good: releasing any fleet lock held from before the reboot"
            );
            release_after_boot(client, &sleeper, opts.release_backoff).await;
        }
        startup_tx.send_replace(Startup::Running);
        agent.run(std::future::pending()).await;
    };

    // 2: the reboot driver, once the lock is released and logind can be reached.
    let reboot = {
        let mut startup = startup_rx.clone();
        let mut conn = conn_rx.clone();
        // Withheld while runtime extensions are not ready for the staged OS version.
        let staged = handle.rebootable.clone();
        let request_rx = request_rx.clone();
        let timing = Timing {
            grace_period: settings.reboot.grace_period,
            inhibitor_poll: opts.inhibitor_poll,
            lock_retry: opts.lock_retry.unwrap_or(settings.reboot.lock_retry),
        };
        let config = DriverConfig {
            fleet_lock: fleet.clone(),
            notify_command: settings.reboot.notify_command.clone(),
            reboot_required: settings.reboot.reboot_required.clone(),
        };
        let coordinator = Coordinator::new(strategy.clone(), timing);
        let (clock, sleeper) = (clock.clone(), sleeper.clone());
        async move {
            let _ = startup.wait_for(|s| *s == Startup::Running).await;
            let conn = match conn.wait_for(Option::is_some).await {
                Ok(c) => c.clone(),
                Err(_) => None,
            };
            if let Some(conn) = conn {
                let mut driver = Driver::new(
                    coordinator,
                    Logind::from_connection(conn),
                    config,
                    clock,
                    sleeper,
                )
                .with_view(view_tx);
                match driver.run(staged, request_rx).await {
                    Ok(()) => tracing::info!("logind accepted the reboot"),
                    Err(e) => tracing::error!(error = %e, "the reboot driver stopped"),
                }
            }
            std::future::pending::<()>().await;
        }
    };

    // 3: the bus, the D-Bus service and readiness.
    let bus = async {
        let conn = connect_retry(opts.bus_address.as_deref(), opts.bus_retry_max).await;
        conn_tx.send_replace(Some(conn.clone()));
        if settings.dbus.enabled {
            let mut h = handle.clone();
            let mut v = view_rx.clone();
            let initial = snapshot(&mut h, &mut v, strategy.name());
            let svc = Service::start(
                &conn,
                handle.clone(),
                request_tx.clone(),
                strategy.clone(),
                Arc::new(clock.clone()),
                initial,
                settings.dbus.update_engine_compat,
            )
            .await?;
            service_tx.send_replace(Some(svc));
            notifier.ready();
        }
        std::future::pending::<Result<(), DaemonError>>().await
    };

    // 3: status publication.
    let publish = {
        let mut h = handle.clone();
        let mut view = view_rx.clone();
        let mut startup = startup_rx.clone();
        let mut service = service_rx.clone();
        let notifier = &notifier;
        let name = strategy.name();
        async move {
            let mut throttle = Throttle::default();
            loop {
                let last = Instant::now();
                let snap = snapshot(&mut h, &mut view, name);
                let text = match *startup.borrow_and_update() {
                    Startup::WaitingMarkGood => {
                        "Waiting for mark-good before releasing the fleet lock".to_owned()
                    }
                    Startup::ReleasingLock => {
                        "Releasing the fleet lock held from before the reboot".to_owned()
                    }
                    Startup::Running => status_text(&snap.props),
                };
                notifier.status(&text);
                let svc = service.borrow_and_update().clone();
                if let Some(svc) = svc {
                    svc.publish(snap, &mut throttle, Instant::now()).await;
                }
                tokio::select! {
                    () = changed(&mut h.status) => {}
                    () = changed(&mut h.info) => {}
                    () = changed(&mut h.staged) => {}
                    () = changed(&mut view) => {}
                    () = changed(&mut startup) => {}
                    () = changed(&mut service) => {}
                }
                if matches!(*h.status.borrow(), super::Status::Downloading { .. }) {
                    tokio::time::sleep_until((last + PUBLISH_EVERY).into()).await;
                }
            }
        }
    };

    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        r = bus => r,
        () = main => Ok(()),
        () = reboot => Ok(()),
        () = publish => Ok(()),
    };
    notifier.stopping();
    if let Err(e) = &result {
        tracing::error!(error = %e, "daemon stopping");
    }
    result
}
