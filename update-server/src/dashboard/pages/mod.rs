//! The dashboard's pages, one module each, and the layout they share. A page is a function
//! from domain values (what a [`crate::fleet::Fleet`] operation returned) to [`Markup`]; it
//! never reads anything itself. Every value goes through maud's escaping; there is no inline
//! script or style (the Content-Security-Policy forbids both). Key elements carry ids, so
//! that browser tests can find them.

pub mod activity;
pub mod fleetlock;
pub mod group;
pub mod instance;
pub mod instances;
pub mod login;
pub mod overview;
pub mod packages;
pub mod policy;

use maud::{DOCTYPE, Markup, html};

use super::Viewer;
use super::assets::{SCRIPT, STYLESHEET, path};

/// Which part of the dashboard a page belongs to (highlighted in the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The login page (no navigation).
    Login,
    /// Fleet overview and group pages.
    Fleet,
    /// Instance list and instance pages.
    Instances,
    /// Package list and publishing.
    Packages,
    /// FleetLock groups and holders.
    FleetLock,
    /// The activity feed.
    Activity,
}

/// Options of a page's `<body>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageOptions {
    /// Reload the page every so many seconds (done by the script, paused while a form is in
    /// use).
    pub refresh_secs: Option<u32>,
}

/// The page around `body`: head, stylesheet, script, top bar (navigation, role, logout).
pub fn layout(
    viewer: Option<&Viewer>,
    section: Section,
    title: &str,
    options: PageOptions,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · Platte" }
                link rel="stylesheet" href=(path(&STYLESHEET));
                script src=(path(&SCRIPT)) defer {}
            }
            body data-refresh=[options.refresh_secs] data-section=(section_name(section)) {
                header #topbar {
                    a #home href="/" { "Platte" }
                    @if let Some(v) = viewer {
                        nav {
                            a #nav-fleet href="/" aria-current=[(section == Section::Fleet).then_some("page")] { "Fleet" }
                            a #nav-instances href="/ui/instances" aria-current=[(section == Section::Instances).then_some("page")] { "Instances" }
                            a #nav-packages href="/ui/packages" aria-current=[(section == Section::Packages).then_some("page")] { "Packages" }
                            a #nav-fleetlock href="/ui/fleetlock" aria-current=[(section == Section::FleetLock).then_some("page")] { "FleetLock" }
                            a #nav-activity href="/ui/activity" aria-current=[(section == Section::Activity).then_some("page")] { "Activity" }
                        }
                        span #role { @if v.may_write() { "admin" } @else { "read-only" } }
                        form #logout-form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            button.quiet #logout type="submit" { "Log out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

fn section_name(s: Section) -> &'static str {
    match s {
        Section::Login => "login",
        Section::Fleet => "fleet",
        Section::Instances => "instances",
        Section::Packages => "packages",
        Section::FleetLock => "fleetlock",
        Section::Activity => "activity",
    }
}

/// A page that says what went wrong (`status`: the HTTP status, shown as the heading).
pub fn error_page(viewer: Option<&Viewer>, status: u16, message: &str) -> Markup {
    let title = match status {
        400 => "Not accepted",
        403 => "Not allowed",
        404 => "Not found",
        409 => "Conflict",
        503 => "Unavailable",
        _ => "Something went wrong",
    };
    layout(
        viewer,
        Section::Fleet,
        title,
        PageOptions::default(),
        html! {
            h1 { (title) }
            div.banner.error #error-message { (message) }
            p { a href="/" { "Back to the fleet overview" } }
        },
    )
}

/// The hidden CSRF field every form of a session carries.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}
