//! Platte host agent library.
//!
//! - [`config`] (TOML drop-ins and legacy `update.conf`), [`identity`], [`paths`].
//! - [`boot`]: the boot-backend trait and the GRUB gptprio backend; [`state`] (atomic persistent
//!   state), [`health`] (the `mark-good` gate), [`rollback`] detection.
//! - [`http`] (the one HTTP client), [`omaha_client`] (requests, answers, error codes),
//!   [`scheduler`] (check timing), [`install`] (the verified, resumable install sequence),
//!   [`agent`] (the state machine and the check-in loop), [`version`] ordering.

pub mod agent;
pub mod boot;
pub mod config;
pub mod health;
pub mod http;
pub mod identity;
pub mod install;
pub mod omaha_client;
pub mod paths;
pub mod reboot;
pub mod rollback;
pub mod scheduler;
pub mod state;
pub mod version;

pub use paths::HostPaths;
