//! A private D-Bus "system bus" per simulated host (a real `dbus-daemon`, run as a [`Proc`]), a
//! logind stand-in on it that records `Reboot` calls instead of rebooting, and a systemd
//! stand-in ([`Systemd`]) that records unit restarts and fails one on demand.
//!
//! The agent daemon (`update-agent run`) serves its API on the bus that `DBUS_SYSTEM_BUS_ADDRESS`
//! names and reboots through `org.freedesktop.login1` on the same bus. One bus per host keeps the
//! hosts apart: two agents on one bus would both want `org.platte.Update1`. The stand-ins of all
//! hosts append to one [`RebootLog`], so a scenario sees the fleet's reboots in the order they
//! happened.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::OwnedObjectPath;

use crate::error::{Error, Result, io};
use crate::process::Proc;

mod systemd;

pub use systemd::{RestartFault, SYSTEMD_NAME, SYSTEMD_PATH, Systemd, UnitRestart, unit_path};

/// How long a bus may take to print its address.
pub const START_LIMIT: Duration = Duration::from_secs(20);

/// The agent's bus name.
pub const AGENT_NAME: &str = "org.platte.Update1";
/// The agent's object.
pub const AGENT_PATH: &str = "/org/platte/Update1";

/// logind's bus name.
pub const LOGIND_NAME: &str = "org.freedesktop.login1";
/// logind's manager object.
pub const LOGIND_PATH: &str = "/org/freedesktop/login1";

/// Whether `dbus-daemon` can be run; prints a loud note when it cannot (scenarios that need it
/// then return early, as the agent's D-Bus tests do).
pub fn available() -> bool {
    let ok = Command::new("dbus-daemon")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("!!!!! SKIPPED: dbus-daemon is not installed; D-Bus scenario NOT run !!!!!");
    }
    ok
}

/// Whether this process runs as root (uid 0, from `/proc/self/status`). The agent lets only
/// root call its state-changing D-Bus methods (`updatectl check`, `reboot`…); scenarios that
/// call them return early otherwise, with a loud note.
pub fn running_as_root() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!(
            "!!!!! SKIPPED: not running as root; the agent lets only root call `updatectl check`, \
             so this D-Bus scenario is NOT run !!!!!"
        );
    }
    root
}

/// A private bus: anyone may own any name and call anything (the access policy is the agent's
/// own tests' business; here only the traffic between agent, logind and `updatectl` matters).
fn config(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

/// A running `dbus-daemon`; killed when dropped.
#[derive(Debug)]
pub struct Bus {
    proc: Proc,
    address: String,
    dir: PathBuf,
}

impl Bus {
    /// Starts a bus with its socket, configuration and log in `dir` (created); ready once it has
    /// printed its address.
    pub fn start(dir: &Path) -> Result<Bus> {
        std::fs::create_dir_all(dir).map_err(io("creating a bus directory", dir))?;
        let conf = dir.join("bus.conf");
        std::fs::write(&conf, config(&dir.join("socket")))
            .map_err(io("writing a bus configuration", &conf))?;
        let mut cmd = Command::new("dbus-daemon");
        cmd.arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"]);
        let mut proc = Proc::spawn("dbus-daemon", cmd, &dir.join("dbus-daemon.log"))?;
        // The address is printed once the bus listens: that is the readiness signal.
        let line = proc.wait_for_line("unix:", START_LIMIT)?;
        Ok(Bus {
            proc,
            address: line.trim().to_owned(),
            dir: dir.to_path_buf(),
        })
    }

    /// The bus address (`unix:path=…,guid=…`), for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bus's directory (socket, configuration, `dbus-daemon.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the `dbus-daemon` is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.proc.try_status(), Ok(None))
    }

    /// The agent's `Extensions` property (`a(sss)`: name, version, state), read with
    /// `org.freedesktop.DBus.Properties.Get` as `busctl get-property` does.
    pub fn agent_extensions(&self) -> Result<Vec<(String, String, String)>> {
        let failed = |e: zbus::Error| Error::Dbus {
            what: "reading the agent's Extensions property",
            detail: format!("{e} (bus {})", self.address),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting an async runtime", "tokio"))?;
        rt.block_on(async {
            let conn = zbus::connection::Builder::address(self.address.as_str())?
                .build()
                .await?;
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

/// One inhibitor row of `ListInhibitors`: (what, who, why, mode, uid, pid).
type InhibitorRow = (String, String, String, String, u32, u32);
/// One session row of `ListSessions`: (id, uid, user, seat, object).
type SessionRow = (String, u32, String, String, OwnedObjectPath);

/// `org.freedesktop.login1.Manager` with no inhibitors and no sessions, recording reboots.
struct Manager {
    host: String,
    log: RebootLog,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    fn list_inhibitors(&self) -> Vec<InhibitorRow> {
        Vec::new()
    }

    fn list_sessions(&self) -> Vec<SessionRow> {
        Vec::new()
    }

    fn reboot(&self, interactive: bool) {
        self.log.push(RebootCall {
            host: self.host.clone(),
            interactive,
            at: Instant::now(),
        });
    }
}

/// A logind stand-in serving on one host's bus, in this process (on its own runtime thread).
#[derive(Debug)]
pub struct Logind {
    // Declared before the runtime: the connection is closed before its executor goes.
    _conn: zbus::Connection,
    _rt: tokio::runtime::Runtime,
}

impl Logind {
    /// Owns `org.freedesktop.login1` on `bus` for `host`; `Reboot` calls go to `log`.
    pub fn start(bus: &Bus, host: &str, log: &RebootLog) -> Result<Logind> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io("starting an async runtime", "tokio"))?;
        let manager = Manager {
            host: host.to_owned(),
            log: log.clone(),
        };
        let conn = rt
            .block_on(async {
                zbus::connection::Builder::address(bus.address())?
                    .serve_at(LOGIND_PATH, manager)?
                    .name(LOGIND_NAME)?
                    .build()
                    .await
            })
            .map_err(|e| Error::Dbus {
                what: "starting the logind stand-in",
                detail: format!("{e} (bus {})", bus.address()),
            })?;
        Ok(Logind {
            _conn: conn,
            _rt: rt,
        })
    }
}
