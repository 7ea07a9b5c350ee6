//! Platte host agent library: configuration, identity, A/B boot slots, health gate and state.
//!
//! Built so far (issue 6, first part): [`config`] (TOML drop-ins and legacy `update.conf`),
//! [`identity`], [`boot`] (the boot-backend trait and the GRUB gptprio backend), [`state`]
//! (atomic persistent state), [`health`] (the `mark-good` gate) and [`rollback`] detection.

pub mod boot;
pub mod config;
pub mod health;
pub mod identity;
pub mod paths;
pub mod rollback;
pub mod state;

pub use paths::HostPaths;
