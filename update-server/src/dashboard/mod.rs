//! The web dashboard served by the update server at `/`: server-rendered HTML pages over the
//! fleet's domain operations ([`crate::fleet`]), one stylesheet and one small script, all part
//! of the binary. This module renders (templates with [`maud`], which escapes every value it
//! splices in) and signs sessions; the routes, cookies, CSRF checks and security headers are
//! in `http/dashboard/`, the only part that knows HTTP.
//!
//! Map: [`session`] the signed session cookie and its CSRF token; [`assets`] the embedded
//! stylesheet and script; [`chart`] the version-over-time chart (SVG); [`format`] shared
//! formatting (times, percentages, statuses);
//! [`pages`] one module per page. docs/usage/dashboard.md describes what it shows and its security.

pub mod assets;
pub mod chart;
pub mod format;
pub mod pages;
pub mod session;

pub use session::{Role, Session, SessionKey};

/// Who is looking at a page: their role (a read-only viewer gets no write controls) and the
/// CSRF token every form of theirs carries.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The logged-in role.
    pub role: Role,
    /// The session's CSRF token.
    pub csrf: String,
}

impl Viewer {
    /// Whether write controls are shown.
    pub fn may_write(&self) -> bool {
        self.role.may_write()
    }
}
