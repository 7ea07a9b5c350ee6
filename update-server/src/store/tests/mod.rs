//! Store tests written once against the store traits, each run on SQLite and on PostgreSQL
//! ([`super::testkit`]). Tests of one database's internals (query plans, the SQLite writer
//! thread) stay beside that database's code.

mod catalogue;
mod credential;
mod fleetlock;
mod instances;
mod retention;
mod rollout;
