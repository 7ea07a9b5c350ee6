//! Platte update server: an Omaha v3 endpoint for update_engine-compatible agents, the fleet
//! model (apps, channels, groups, packages, instances), content-addressed package hosting, the
//! admin REST API and its CLI, and metrics.
//!
//! Map: [`server`] starts everything; [`http`] holds the routes; [`service`] answers update
//! checks from the in-memory [`catalogue`] and [`fleet`]; [`lifecycle`] is the instance state
//! machine; [`policy`] is the rollout hook; [`store`] is the database behind a trait;
//! [`bounds`] limits what one client can make the server keep; [`retention`] prunes old rows; [`blobs`] stores payload files; [`cli`] is the operator client; [`simulate`] is the fleet
//! simulator; [`stdout`] prints for the command line without panicking on a closed pipe.

pub mod blobs;
pub mod bounds;
pub mod catalogue;
pub mod checkins;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credential;
pub mod error;
pub mod fleetlock;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod policy;
pub mod retention;
pub mod rollout;
pub mod server;
pub mod service;
pub mod simulate;
pub mod stdout;
pub mod store;
/// Version ordering (`omaha::version`), the same the agent uses.
pub use omaha::version;
