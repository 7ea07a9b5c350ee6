//! The agent's D-Bus API on the system bus (zbus, tokio).
//!
//! - [`update1`]: `org.platte.Update1` at `/org/platte/Update1` — properties, change signals,
//!   and the root-only methods `CheckNow`, `ApplyNow`, `RebootNow`, `Reset`, `ClearDenyList`.
//! - [`compat`]: update_engine's `com.coreos.update1.Manager` at `/com/coreos/update1` (bus name
//!   `com.coreos.update1`), on unless `dbus.update_engine_compat = false`.
//! - [`auth`]: the root check every state-changing method makes; [`error`]: named errors.
//! - [`view`]: the pure mapping from the agent's state to what is served, and the throttle.
//! - [`proxy`]: the client side of the agent's own API (updatectl, tests); [`client`]: connecting
//!   to the bus and proxies of other services' objects (logind, systemd).
//!
//! The bus address is the system bus (`DBUS_SYSTEM_BUS_ADDRESS` overrides it, which is how the
//! tests use a private bus) unless an address is given.

pub mod auth;
pub mod client;
pub mod compat;
pub mod error;
pub mod proxy;
pub mod update1;
pub mod view;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use zbus::fdo::{RequestNameFlags, RequestNameReply};
use zbus::names::InterfaceName;
use zbus::object_server::InterfaceRef;

use crate::agent::{AgentHandle, CommandError};
use crate::reboot::time::Clock;
use crate::reboot::{RebootRequest, RebootStrategy};
pub use client::{ConnectError, connect};
use error::UpdateError;
use view::{Snapshot, Throttle};

/// Bus name of the agent's own interface.
pub const UPDATE1_NAME: &str = "org.platte.Update1";
/// Object path of the agent's own interface.
pub const UPDATE1_PATH: &str = "/org/platte/Update1";
/// The agent's own interface.
pub const UPDATE1_INTERFACE: &str = "org.platte.Update1";
/// update_engine's bus name.
pub const COMPAT_NAME: &str = "com.coreos.update1";
/// update_engine's object path.
pub const COMPAT_PATH: &str = "/com/coreos/update1";
/// update_engine's interface.
pub const COMPAT_INTERFACE: &str = "com.coreos.update1.Manager";

/// Longest a state-changing method waits for the agent loop to take its command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The D-Bus service could not start.
#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    /// The bus cannot be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// An object could not be served.
    #[error("cannot serve {path} on D-Bus: {source}")]
    Serve {
        /// The object path.
        path: &'static str,
        /// zbus' error.
        source: Box<zbus::Error>,
    },
    /// The name is owned by another connection (another agent?).
    #[error(
        "D-Bus name {name} is already owned by another process (is another update-agent running?)"
    )]
    NameTaken {
        /// The name.
        name: &'static str,
    },
    /// Requesting the name failed (e.g. the bus policy does not allow it).
    #[error(
        "cannot own D-Bus name {name} (is org.platte.Update1.conf installed in /usr/share/dbus-1/system.d/?): {source}"
    )]
    RequestName {
        /// The name.
        name: &'static str,
        /// zbus' error.
        source: Box<zbus::Error>,
    },
}

/// What the served objects need from the rest of the daemon.
pub struct Context {
    /// The agent.
    pub agent: AgentHandle,
    /// Operator reboot requests for the reboot driver.
    pub reboot: watch::Sender<RebootRequest>,
    /// The strategy (for `NextRebootWindow`).
    pub strategy: RebootStrategy,
    /// The clock (for `NextRebootWindow`).
    pub clock: Arc<dyn Clock>,
    snapshot: watch::Receiver<Snapshot>,
}

impl Context {
    /// Runs an agent command, waiting at most [`COMMAND_TIMEOUT`] for the agent loop.
    async fn command<T>(
        &self,
        fut: impl Future<Output = Result<T, CommandError>>,
    ) -> Result<T, UpdateError> {
        match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(r) => r.map_err(UpdateError::from),
            Err(_) => Err(UpdateError::Busy(
                "the agent did not take the command in time (starting, or releasing the fleet \
                 lock after boot); try again"
                    .into(),
            )),
        }
    }
}

/// The running D-Bus service: the served objects and the names owned.
#[derive(Clone)]
pub struct Service {
    conn: zbus::Connection,
    snapshot: Arc<watch::Sender<Snapshot>>,
    update1: InterfaceRef<update1::Update1>,
    compat: Option<InterfaceRef<compat::Manager>>,
}

impl Service {
    /// Serves `org.platte.Update1` (and update_engine's interface when `compat`) on `conn`,
    /// starting from `initial`, then owns the names (failing if another process owns them).
    pub async fn start(
        conn: &zbus::Connection,
        agent: AgentHandle,
        reboot: watch::Sender<RebootRequest>,
        strategy: RebootStrategy,
        clock: Arc<dyn Clock>,
        initial: Snapshot,
        compat: bool,
    ) -> Result<Self, DbusError> {
        let (tx, rx) = watch::channel(initial);
        let ctx = Arc::new(Context {
            agent,
            reboot,
            strategy,
            clock,
            snapshot: rx,
        });
        let server = conn.object_server();
        let serve = |path: &'static str| {
            move |source| DbusError::Serve {
                path,
                source: Box::new(source),
            }
        };
        server
            .at(
                UPDATE1_PATH,
                update1::Update1 {
                    ctx: Arc::clone(&ctx),
                },
            )
            .await
            .map_err(serve(UPDATE1_PATH))?;
        let update1 = server
            .interface::<_, update1::Update1>(UPDATE1_PATH)
            .await
            .map_err(serve(UPDATE1_PATH))?;
        let compat = if compat {
            server
                .at(COMPAT_PATH, compat::Manager { ctx })
                .await
                .map_err(serve(COMPAT_PATH))?;
            Some(
                server
                    .interface::<_, compat::Manager>(COMPAT_PATH)
                    .await
                    .map_err(serve(COMPAT_PATH))?,
            )
        } else {
            None
        };
        let mut names = vec![UPDATE1_NAME];
        if compat.is_some() {
            names.push(COMPAT_NAME);
        }
        for name in names {
            let reply = conn
                .request_name_with_flags(name, RequestNameFlags::DoNotQueue.into())
                .await
                .map_err(|source| DbusError::RequestName {
                    name,
                    source: Box::new(source),
                })?;
            match reply {
                RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner => {
                    tracing::info!(name, "owning D-Bus name");
                }
                RequestNameReply::InQueue | RequestNameReply::Exists => {
                    return Err(DbusError::NameTaken { name });
                }
            }
        }
        let svc = Self {
            conn: conn.clone(),
            snapshot: Arc::new(tx),
            update1,
            compat,
        };
        Ok(svc)
    }

    /// The connection the service runs on.
    pub fn connection(&self) -> &zbus::Connection {
        &self.conn
    }

    /// Serves `snap` from now on and signals what `throttle` lets through: `PropertiesChanged`
    /// on `org.platte.Update1`, `StatusUpdate` on the compatibility interface. Signal errors are
    /// logged, never fatal.
    pub async fn publish(&self, snap: Snapshot, throttle: &mut Throttle, now: std::time::Instant) {
        let changed = throttle.properties(&snap.props, now);
        let compat = self.compat.is_some() && throttle.compat(&snap.compat, now);
        self.snapshot.send_replace(snap.clone());
        if let Some(names) = changed {
            let values = snap.props.values(&names);
            let res = zbus::fdo::Properties::properties_changed(
                self.update1.signal_emitter(),
                InterfaceName::from_static_str_unchecked(UPDATE1_INTERFACE),
                values.iter().map(|(k, v)| (*k, v.clone())).collect(),
                Cow::Borrowed(&[]),
            )
            .await;
            if let Err(e) = res {
                tracing::debug!(error = %e, "cannot emit PropertiesChanged");
            }
        }
        if let (true, Some(c)) = (compat, &self.compat) {
            let (t, p, op, v, size) = &snap.compat;
            let res =
                compat::Manager::status_update(c.signal_emitter(), *t, *p, op, v, *size).await;
            if let Err(e) = res {
                tracing::debug!(error = %e, "cannot emit StatusUpdate");
            }
        }
    }
}
