//! Test support: a real `dbus-daemon` on a private bus in a temporary directory, killed on drop:
//! either permissive ([`DbusDaemon::start`]) or configured like the system bus
//! ([`DbusDaemon::start_system_like`]: system.conf's default policy, a socket every user can
//! reach, plus e.g. an `<include>` of the shipped policy).
//!
//! Part of `support`; stands alone, so a test may also include just this file with
//! `#[path = "support/dbus_daemon.rs"] mod dbus_daemon;`.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running private bus.
pub struct DbusDaemon {
    child: Child,
    /// The bus address (`unix:path=...`).
    pub address: String,
    _dir: tempfile::TempDir,
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
    /// Starts a bus allowing everything.
    pub fn start() -> Self {
        match Self::start_with("") {
            Ok(d) => d,
            Err(e) => panic!("dbus-daemon did not start: {e}"),
        }
    }

    /// Starts a bus whose configuration also holds `extra` (e.g. an `<include>`); the error is
    /// dbus-daemon's stderr when it refuses the configuration.
    pub fn start_with(extra: &str) -> Result<Self, String> {
        Self::start_config(PERMISSIVE, extra)
    }

    /// Starts a bus with the system bus' default policy plus `extra`, whose socket every user
    /// can reach (for callers run as `nobody`).
    pub fn start_system_like(extra: &str) -> Result<Self, String> {
        Self::start_config(SYSTEM_LIKE, extra)
    }

    /// [`DbusDaemon::start_system_like`] with the shipped `org.platte.Update1.conf` policy
    /// included, as on a host.
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

    fn start_config(policy: &str, extra: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, config(&dir.path().join("bus"), policy, extra))
            .map_err(|e| e.to_string())?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run dbus-daemon: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        // The address is printed once the bus listens: that is the readiness signal.
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let address = line.trim().to_owned();
        if address.is_empty() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            return Err(err);
        }
        Ok(Self {
            child,
            address,
            _dir: dir,
        })
    }

    /// Whether `dbus-daemon` can be run at all (tests skip loudly when it cannot).
    pub fn available() -> bool {
        let ok = Command::new("dbus-daemon")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "!!!!! SKIPPED: dbus-daemon is not installed; D-Bus behaviour NOT tested !!!!!"
            );
        }
        ok
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
