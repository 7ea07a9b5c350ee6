//! Platte's test kit: the test support that the agent's, the server's and the end-to-end tests
//! share, one copy each. A dev-dependency of `update-agent` and `update-server`, a dependency of
//! `platte-e2e` (whose harness library and quickstart use it).
//!
//! - [`dbus`]: a private `dbus-daemon` (permissive, or with the system bus' policy), killed on
//!   drop; [`logind`]: a logind stand-in recording reboots, with inhibitors and sessions;
//!   [`systemd`]: a systemd stand-in restarting units as systemd answers, failing on demand.
//! - [`tcp_proxy`]: a throttling, recording TCP proxy (and round-robin forwarder);
//!   [`fault_proxy`]: an HTTP proxy injecting faults into Omaha answers and downloads.
//! - [`release`]: deterministic image bytes, trusted signing keys, signed payloads;
//!   [`sgdisk`]: GPT disk images made and checked with `sgdisk`; [`http`]: admin API, Omaha and
//!   metrics requests against an update server; [`agent`]: the agent configuration test hosts
//!   share.
//!
//! Helpers whose callers are tests panic on failure (as an assertion would); the ones the
//! end-to-end harness also runs outside tests return [`Result`].

pub mod agent;
pub mod dbus;
pub mod error;
pub mod fault_proxy;
pub mod http;
pub mod logind;
pub mod release;
pub mod sgdisk;
pub mod systemd;
pub mod tcp_proxy;

pub use error::{Error, Result};

/// Whether `program` with `args` runs and succeeds (output discarded): whether a tool a test
/// needs is installed and usable here.
pub fn tool_runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
