//! A real `dbus-daemon` on a private bus, killed on drop: either permissive (anyone may own any
//! name and call anything: [`DbusDaemon::start`], [`DbusDaemon::start_in`]) or configured like
//! the system bus ([`DbusDaemon::start_system_like`]: system.conf's default policy, a socket
//! every user can reach, plus e.g. an `<include>` of the shipped policy).
//!
//! The bus lives in a directory of its own (a temporary one, or the caller's): its socket, its
//! configuration and `dbus-daemon.log` (the daemon's standard error). It is ready once it has
//! printed its address.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::{Error, Result, io};

/// A running private bus.
#[derive(Debug)]
pub struct DbusDaemon {
    child: Child,
    /// The bus address (`unix:path=…,guid=…`), for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Anyone may own any name and send anything.
const PERMISSIVE: &str = r#"<policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>"#;

/// The default policy of the system bus (`/usr/share/dbus-1/system.conf`): everyone may
/// connect; owning names and method calls need holes punched by service policy files.
const SYSTEM_LIKE: &str = r#"<policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
  </policy>"#;

/// The bus configuration: `policy`, then `extra`.
fn config(socket: &Path, policy: &str, extra: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  {policy}
  {extra}
</busconfig>
"#,
        socket.display()
    )
}

impl DbusDaemon {
    /// Starts a bus allowing everything, in a temporary directory; panics when it cannot.
    pub fn start() -> Self {
        match Self::start_with("") {
            Ok(d) => d,
            Err(e) => panic!("dbus-daemon did not start: {e}"),
        }
    }

    /// Starts a bus allowing everything, with its files in `dir` (created).
    pub fn start_in(dir: &Path) -> Result<Self> {
        Self::start_config(dir.to_path_buf(), None, PERMISSIVE, "")
    }

    /// Starts a bus whose configuration also holds `extra` (e.g. an `<include>`); the error is
    /// dbus-daemon's stderr when it refuses the configuration.
    pub fn start_with(extra: &str) -> Result<Self, String> {
        Self::start_temp(PERMISSIVE, extra).map_err(|e| e.to_string())
    }

    /// Starts a bus with the system bus' default policy plus `extra`, whose socket every user
    /// can reach (for callers run as `nobody`).
    pub fn start_system_like(extra: &str) -> Result<Self, String> {
        Self::start_temp(SYSTEM_LIKE, extra).map_err(|e| e.to_string())
    }

    /// [`DbusDaemon::start_system_like`] with the shipped `org.platte.Update1.conf` policy
    /// included, as on a host; panics when the bus refuses it.
    pub fn start_with_shipped_policy() -> Self {
        let policy = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../systemd/org.platte.Update1.conf"
        ));
        let policy = match policy.canonicalize() {
            Ok(p) => p,
            Err(e) => panic!("{}: {e}", policy.display()),
        };
        match Self::start_system_like(&format!("<include>{}</include>", policy.display())) {
            Ok(d) => d,
            Err(e) => panic!("dbus-daemon refused the shipped policy: {e}"),
        }
    }

    fn start_temp(policy: &str, extra: &str) -> Result<Self> {
        let tmp = tempfile::tempdir().map_err(io("creating a bus directory", "$TMPDIR"))?;
        Self::start_config(tmp.path().to_path_buf(), Some(tmp), policy, extra)
    }

    fn start_config(
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
        policy: &str,
        extra: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(io("creating a bus directory", &dir))?;
        // Reachable by every user: callers run as `nobody` connect too.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io("opening a bus directory to all users", &dir))?;
        let conf = dir.join("bus.conf");
        std::fs::write(&conf, config(&dir.join("socket"), policy, extra))
            .map_err(io("writing a bus configuration", &conf))?;
        let log_path = dir.join("dbus-daemon.log");
        let log = std::fs::File::create(&log_path).map_err(io("creating a bus log", &log_path))?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(io("running", "dbus-daemon"))?;
        let mut line = String::new();
        // The address is printed once the bus listens: that is the readiness signal. A daemon
        // that refuses its configuration exits instead, closing its output.
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(io("reading the bus address", "dbus-daemon"))?;
        }
        let address = line.trim().to_owned();
        if address.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            let complaint = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(Error::Dbus {
                what: "starting dbus-daemon",
                detail: format!("it printed no address ({}): {complaint}", conf.display()),
            });
        }
        Ok(Self {
            child,
            address,
            dir,
            _tmp: tmp,
        })
    }

    /// The bus address (`unix:path=…,guid=…`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bus's directory (socket, configuration, `dbus-daemon.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the `dbus-daemon` is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether `dbus-daemon` can be run at all; prints a loud note when it cannot (tests and
    /// scenarios that need it then return early).
    pub fn available() -> bool {
        available()
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `dbus-daemon` can be run; prints a loud note when it cannot (tests and scenarios that
/// need it then return early).
pub fn available() -> bool {
    let ok = crate::tool_runs("dbus-daemon", &["--version"]);
    if !ok {
        eprintln!("!!!!! SKIPPED: dbus-daemon is not installed; D-Bus behaviour NOT tested !!!!!");
    }
    ok
}

/// Whether this process runs as root (uid 0, from `/proc/self/status`); prints a loud note when
/// it does not. The agent lets only root call its state-changing D-Bus methods (`updatectl
/// check`, `reboot`…): tests that call them return early otherwise.
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

/// A runtime for a stand-in served from a synchronous caller: one worker thread of its own, so
/// the stand-in answers while the caller blocks.
pub fn service_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(io("starting an async runtime", "tokio"))
}
