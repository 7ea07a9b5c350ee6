//! sd_notify: `READY=1`, `STATUS=…` and `STOPPING=1` datagrams to systemd's notification socket
//! (`$NOTIFY_SOCKET`: a path, or `@name` for an abstract socket). A few lines over
//! `std::os::unix::net::UnixDatagram` rather than a crate, so the socket can be given
//! explicitly (tests read the messages). Sending never fails the agent: errors are logged.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;

use jiff::Timestamp;

use crate::dbus::view::Properties;

/// Sends notifications to one socket (or nowhere).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    last_status: Mutex<String>,
}

/// Parses `$NOTIFY_SOCKET`'s syntax.
fn address(socket: &str) -> std::io::Result<SocketAddr> {
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(socket),
    }
}

impl Notifier {
    /// A notifier for `socket` (`None`, or an unusable address: notifications go nowhere).
    pub fn new(socket: Option<&str>) -> Self {
        let target = socket.and_then(|s| match (UnixDatagram::unbound(), address(s)) {
            (Ok(sock), Ok(addr)) => Some((sock, addr)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(socket = s, error = %e, "cannot use the notification socket");
                None
            }
        });
        Self {
            target,
            last_status: Mutex::new(String::new()),
        }
    }

    /// A notifier for `$NOTIFY_SOCKET`, as systemd sets it for `Type=notify` services.
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        Self::new(socket.as_deref().filter(|s| !s.is_empty()))
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// `READY=1`: startup finished (the D-Bus names are owned, or D-Bus is disabled).
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `STATUS=text` (one line), when it differs from the last one sent.
    pub fn status(&self, text: &str) {
        let line: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let Ok(mut last) = self.last_status.lock() else {
            return;
        };
        if *last != line {
            self.send(&format!("STATUS={line}"));
            *last = line;
        }
    }

    /// `STOPPING=1`: shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// Bytes as MiB with one decimal.
fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// The one-line `STATUS=` text (what `systemctl status update-agent` shows), e.g.
/// `Idle; last check 2025-06-02 12:03 UTC` or `Downloading 2.1.0: 43% (2.6 of 6.0 MiB)`.
pub fn status_text(p: &Properties) -> String {
    let v = &p.new_version;
    let mut text = match p.status.as_str() {
        "idle" if p.last_check_time > 0 => {
            let at = Timestamp::from_second(p.last_check_time)
                .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default();
            format!("Idle; last check {at}")
        }
        "idle" => "Idle; no check yet".to_owned(),
        "checking" => "Checking for updates".to_owned(),
        "update_available" => format!("Update {v} available"),
        "downloading" => {
            let total = p.new_size as f64;
            format!(
                "Downloading {v}: {:.0}% ({} of {})",
                p.progress * 100.0,
                mib(p.progress * total).trim_end_matches(" MiB"),
                mib(total)
            )
        }
        "verifying" => format!("Verifying {v}"),
        "finalizing" => format!("Finalizing {v}"),
        "staged" => format!("Update {v} staged"),
        "rebooting" => format!("Rebooting into {v}"),
        "error" => format!("Error: {}", p.last_error),
        other => other.to_owned(),
    };
    if p.status == "staged" && !p.reboot_wait.is_empty() {
        text.push_str("; reboot waits: ");
        text.push_str(&p.reboot_wait);
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn messages_reach_the_socket_and_status_is_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let n = Notifier::new(path.to_str());
        n.ready();
        n.status("Idle\nsecond line");
        n.status("Idle\nsecond line");
        n.status("Checking for updates");
        n.stopping();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(len) = server.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1",
                "STATUS=Idle second line",
                "STATUS=Checking for updates",
                "STOPPING=1"
            ]
        );
        // No socket: nothing happens, nothing fails.
        Notifier::new(None).ready();
    }

    #[test]
    fn status_texts() {
        let mut p = Properties {
            status: "downloading".into(),
            new_version: "2.1.0".into(),
            new_size: 6 << 20,
            progress: 0.43,
            ..Properties::default()
        };
        assert_eq!(status_text(&p), "Downloading 2.1.0: 43% (2.6 of 6.0 MiB)");
        p.status = "idle".into();
        p.last_check_time = 1_748_865_780; // 2025-06-02 12:03 UTC
        assert_eq!(status_text(&p), "Idle; last check 2025-06-02 12:03 UTC");
        p.status = "staged".into();
        p.reboot_wait = "outside the maintenance windows".into();
        assert_eq!(
            status_text(&p),
            "Update 2.1.0 staged; reboot waits: outside the maintenance windows"
        );
    }
}
