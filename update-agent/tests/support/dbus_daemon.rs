//! Test support: a real `dbus-daemon` on a private bus in a temporary directory, killed on drop.
//!
//! Include with `#[path = "support/dbus_daemon.rs"] mod dbus_daemon;`.

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

/// The bus configuration: anyone may own any name and send anything, then `extra`.
fn config(socket: &Path, extra: &str) -> String {
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
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, config(&dir.path().join("bus"), extra)).map_err(|e| e.to_string())?;
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
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
