//! Platte end-to-end harness: real `update-server`, `update-agent` and `payload` processes,
//! GPT disk image files as the machines' disks, a gptprio boot loader stand-in, and helpers for
//! the operator's CLI and the admin API. Used by the scenarios in `tests/tests/` and by the
//! `quickstart` binary.
//!
//! - [`bins`]: find (and build) the workspace binaries; [`process`]: child processes killed on
//!   drop, polling with deadlines; [`http`]: a blocking JSON client.
//! - [`server`]: `update-server serve` and its admin CLI/API; [`release`]: keys, demo OS
//!   images, `payload build`; [`world`]: a scenario's server, keys and directory.
//! - [`gpt`]: GPT disk images without `sgdisk`; [`bootloader`]: gptprio's selection rule;
//!   [`machine`]: a simulated host and its agent commands; [`omaha_wire`]: the `<app>`s of an
//!   Omaha request that the test kit's TCP proxy (`testkit::tcp_proxy`, also the round-robin
//!   forwarder in front of server replicas) recorded.
//! - [`pg`]: throwaway PostgreSQL databases for a [`World`] in [`Mode::Replicas`] (two server
//!   replicas sharing one database and data directory); [`in_both_modes!`] runs a scenario
//!   against one server and against the replicas.
//! - [`browser`]: headless Chromium through chromedriver, for the dashboard scenario.
//! - [`dbus`]: a private `dbus-daemon` per host, a logind stand-in recording reboots and a
//!   systemd stand-in recording unit restarts (the agent daemon and `updatectl`), all three the
//!   test kit's (`testkit`, shared with the agent's and the server's tests);
//!   [`extension`]: a runtime extension configured on a host; [`inject`]: `SIGKILL` at an
//!   exact write, through strace.

pub mod bins;
pub mod bootloader;
pub mod browser;
pub mod dbus;
pub mod error;
pub mod extension;
pub mod gpt;
pub mod http;
pub mod inject;
pub mod machine;
pub mod omaha_wire;
pub mod pg;
pub mod process;
pub mod release;
pub mod server;
pub mod world;

pub use error::{Error, Result};
pub use machine::{APP, DiskLayout, Machine, USR_A, USR_B};
pub use world::{Mode, Release, World};
