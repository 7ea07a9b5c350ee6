//! Helpers shared by the integration tests (each test file includes this module with
//! `mod common;`): admin API requests, Omaha posts, trusted keys and signed payloads, all from
//! the workspace's test kit (`testkit`), under the names the tests use.
#![allow(dead_code, unused_imports)]

pub use testkit::http::{api, metrics, omaha_post, publish};
pub use testkit::release::{signed_payload, trusted_key};

/// `len` bytes of incompressible, deterministic data (an OS image stand-in).
pub fn image(len: usize) -> Vec<u8> {
    testkit::release::noise(len, 0x9E37_79B9_7F4A_7C15)
}
