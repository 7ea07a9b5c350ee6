//! Platte update server: an Omaha v3 endpoint for update_engine-compatible agents, the fleet
//! model (apps, channels, groups, packages, instances), content-addressed package hosting, the
//! admin REST API and its CLI, and metrics.
//!
//! Map: [`server`] starts everything; [`http`] holds the routes and handlers (the only module
//! that knows axum); [`service`] answers update checks from the cached [`catalogue`] and the
//! store; [`fleet`] holds the operator's operations on the fleet model (what the admin API
//! calls); [`dashboard`] renders the web dashboard's pages (served by [`http`] at `/`);
//! [`lifecycle`] is the instance state machine; [`rollout`] the staged-rollout rules;
//! [`credential`] machine credentials; [`fleetlock`] the reboot semaphore; [`store`] is the
//! database behind traits; [`bounds`] limits what one client can make the server keep;
//! [`retention`] prunes old rows; [`blobs`] stores payload files; [`sync`] follows an upstream
//! Omaha server; [`nebraska`] imports a Nebraska installation; [`cli`] is the operator client;
//! [`simulate`] is the fleet simulator; [`stdout`] prints for the command line without
//! panicking on a closed pipe.

pub mod blobs;
pub mod bounds;
pub mod catalogue;
pub mod checkins;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credential;
pub mod dashboard;
pub mod fleet;
pub mod fleetlock;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod nebraska;
pub mod openapi;
pub mod retention;
pub mod rollout;
pub mod server;
pub mod service;
pub mod simulate;
pub mod stdout;
pub mod store;
pub mod sync;
pub mod version_history;
/// Version ordering (`omaha::version`), the same the agent uses.
pub use omaha::version;
