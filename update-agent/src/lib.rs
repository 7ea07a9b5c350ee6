//! Platte host agent library.
//!
//! - [`config`] (TOML drop-ins and legacy `update.conf`), [`identity`], [`paths`].
//! - [`boot`]: the boot-backend trait, the GRUB gptprio and systemd-boot backends; [`state`]
//!   (persistent state), [`atomic_file`] (crash-safe file replacement), [`health`] (the
//!   `mark-good` gate), [`rollback`] detection.
//! - [`http`] (the one HTTP client), [`omaha_client`] (requests, answers, error codes),
//!   [`scheduler`] (check timing), [`install`] (the verified, resumable install sequence),
//!   [`agent`] (the state machine, the check-in loop and the daemon), [`version`] ordering.
//! - [`reboot`] (when and how a staged update reboots: strategies, coordinator, logind,
//!   FleetLock), [`dbus`] (the `org.platte.Update1` API and update_engine's compatibility
//!   interface), [`updatectl`] (the command-line client of that API), [`extensions`] (runtime
//!   extensions: systemd-sysext images kept current as Omaha apps of their own), [`output`]
//!   (standard output of the command-line tools that tolerates a closed pipe).

pub mod agent;
pub mod atomic_file;
pub mod boot;
pub mod config;
pub mod dbus;
pub mod extensions;
pub mod health;
pub mod http;
pub mod identity;
pub mod install;
pub mod machine_key;
pub mod omaha_client;
pub mod output;
pub mod paths;
pub mod reboot;
pub mod rollback;
pub mod scheduler;
pub mod state;
pub mod updatectl;
/// Version ordering (`omaha::version`), the same the update server uses.
pub use omaha::version;

pub use paths::HostPaths;
