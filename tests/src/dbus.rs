//! A private D-Bus "system bus" per simulated host (the test kit's `dbus-daemon` runner), a
//! logind stand-in on it that records `Reboot` calls instead of rebooting, and a systemd
//! stand-in ([`Systemd`]) that records unit restarts and fails one on demand: the test kit's
//! stand-ins, each served from its own runtime thread so that synchronous scenarios can use them.
//!
//! The agent daemon (`update-agent run`) serves its API on the bus that `DBUS_SYSTEM_BUS_ADDRESS`
//! names and reboots through `org.freedesktop.login1` on the same bus. One bus per host keeps the
//! hosts apart: two agents on one bus would both want `org.platte.Update1`. The stand-ins of all
//! hosts append to one [`RebootLog`], so a scenario sees the fleet's reboots in the order they
//! happened.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use testkit::dbus::DbusDaemon;
use testkit::logind::LogindStandin;

use crate::error::{Error, Result, io};

mod systemd;

pub use systemd::{RestartFault, SYSTEMD_NAME, SYSTEMD_PATH, Systemd, UnitRestart, unit_path};
pub use testkit::dbus::{available, running_as_root};
pub use testkit::logind::{LOGIND_NAME, LOGIND_PATH};

/// The agent's bus name.
pub const AGENT_NAME: &str = "org.platte.Update1";
/// The agent's object.
pub const AGENT_PATH: &str = "/org/platte/Update1";

/// A host's private bus (a [`DbusDaemon`] in the host's directory); killed when dropped.
#[derive(Debug)]
pub struct Bus {
    daemon: DbusDaemon,
}

impl Bus {
    /// Starts a bus with its socket, configuration and log in `dir` (created); ready once it has
    /// printed its address.
    pub fn start(dir: &Path) -> Result<Bus> {
        Ok(Bus {
            daemon: DbusDaemon::start_in(dir)?,
        })
    }

    /// The bus address (`unix:path=…,guid=…`), for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        self.daemon.address()
    }

    /// The bus's directory (socket, configuration, `dbus-daemon.log`).
    pub fn dir(&self) -> &Path {
        self.daemon.dir()
    }

    /// Whether the `dbus-daemon` is still running.
    pub fn running(&mut self) -> bool {
        self.daemon.running()
    }

    /// The agent's `Extensions` property (`a(sss)`: name, version, state), read with
    /// `org.freedesktop.DBus.Properties.Get` as `busctl get-property` does.
    pub fn agent_extensions(&self) -> Result<Vec<(String, String, String)>> {
        let address = self.address();
        let failed = |e: zbus::Error| Error::Dbus {
            what: "reading the agent's Extensions property",
            detail: format!("{e} (bus {address})"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting an async runtime", "tokio"))?;
        rt.block_on(async {
            let conn = zbus::connection::Builder::address(address)?.build().await?;
            let props = zbus::fdo::PropertiesProxy::builder(&conn)
                .destination(AGENT_NAME)?
                .path(AGENT_PATH)?
                .build()
                .await?;
            let iface = zbus::names::InterfaceName::try_from(AGENT_NAME)?;
            let value = props.get(iface, "Extensions").await?;
            Vec::<(String, String, String)>::try_from(value).map_err(zbus::Error::Variant)
        })
        .map_err(failed)
    }
}

/// One `org.freedesktop.login1.Manager.Reboot` call a stand-in received.
#[derive(Debug, Clone)]
pub struct RebootCall {
    /// The host whose stand-in got it.
    pub host: String,
    /// Its `interactive` argument (the agent passes `false`).
    pub interactive: bool,
    /// When it arrived.
    pub at: Instant,
}

/// The reboot calls of every stand-in sharing it, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct RebootLog(Arc<Mutex<Vec<RebootCall>>>);

impl RebootLog {
    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<RebootCall> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The calls `host`'s stand-in got.
    pub fn of(&self, host: &str) -> Vec<RebootCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.host == host)
            .collect()
    }

    /// The hosts in the order their stand-ins got calls (a host once per call).
    pub fn hosts(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.host).collect()
    }

    fn push(&self, call: RebootCall) {
        if let Ok(mut v) = self.0.lock() {
            v.push(call);
        }
    }
}

/// A logind stand-in ([`LogindStandin`]) serving on one host's bus, in this process (on its own
/// runtime thread), adding the host's reboots to a shared [`RebootLog`].
#[derive(Debug)]
pub struct Logind {
    // Declared before the runtime: the connection is closed before its executor goes.
    _standin: LogindStandin,
    _rt: tokio::runtime::Runtime,
}

impl Logind {
    /// Owns `org.freedesktop.login1` on `bus` for `host`; `Reboot` calls go to `log`.
    pub fn start(bus: &Bus, host: &str, log: &RebootLog) -> Result<Logind> {
        let rt = testkit::dbus::service_runtime()?;
        let (host, log) = (host.to_owned(), log.clone());
        let hook = Arc::new(move |interactive| {
            log.push(RebootCall {
                host: host.clone(),
                interactive,
                at: Instant::now(),
            });
        });
        let standin = rt
            .block_on(LogindStandin::start_with_hook(bus.address(), hook))
            .map_err(|e| Error::Dbus {
                what: "starting the logind stand-in",
                detail: format!("{e} (bus {})", bus.address()),
            })?;
        Ok(Logind {
            _standin: standin,
            _rt: rt,
        })
    }
}
