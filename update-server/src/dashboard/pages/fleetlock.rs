//! The FleetLock page: every reboot group with its slots and current holders (each tied to its
//! machine when one is known), and for the admin role a release button per holder behind a
//! confirmation box, for a machine that died holding its slot. Also the release form the
//! instance page shows for a slot the machine holds.

use maud::{Markup, html};

use super::{PageOptions, Section, csrf_field, instances, layout};
use crate::dashboard::Viewer;
use crate::dashboard::format::{path_segment, time};
use crate::fleet::fleetlock::HolderGroup;

/// What was just done, shown once after a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockNotice {
    /// A holder's slot was released.
    Released,
}

impl LockNotice {
    /// The notice a `done=` query value names.
    pub fn parse(s: &str) -> Option<Self> {
        (s == "released").then_some(Self::Released)
    }
}

/// What the FleetLock page shows.
#[derive(Debug, Clone)]
pub struct LockPage {
    /// Whether the server answers FleetLock clients (`fleetlock.enabled`).
    pub enabled: bool,
    /// Slots of a group no operator configured.
    pub default_slots: u32,
    /// Every group with a configured slot count or a holder, by name.
    pub groups: Vec<HolderGroup>,
    /// What was just done.
    pub notice: Option<LockNotice>,
}

/// The page's path.
pub const PATH: &str = "/ui/fleetlock";

/// Where the release form of holder `id` in `group` posts.
pub fn release_href(group: &str, id: &str) -> String {
    format!(
        "{PATH}/groups/{}/holders/{}/release",
        path_segment(group),
        path_segment(id)
    )
}

/// The release form of holder `id` in `group`: a confirmation box and a button; `key` makes
/// its element ids unique on the page (`release-form-{key}`, `release-confirm-{key}`,
/// `release-{key}`); `machine`, when given, is the machine page to come back to.
pub fn release_form(
    viewer: &Viewer,
    group: &str,
    id: &str,
    key: &str,
    machine: Option<&str>,
) -> Markup {
    html! {
        form.action.release id={ "release-form-" (key) } method="post" action=(release_href(group, id)) {
            (csrf_field(viewer))
            @if let Some(m) = machine {
                input type="hidden" name="machine" value=(m);
            }
            label {
                input id={ "release-confirm-" (key) } type="checkbox" name="confirm" value="yes" required;
                " The holder is stuck (not rebooting): release its slot"
            }
            button.danger id={ "release-" (key) } type="submit" { "Release" }
        }
    }
}

/// The FleetLock page.
pub fn render(viewer: &Viewer, p: &LockPage) -> Markup {
    layout(
        Some(viewer),
        Section::FleetLock,
        "FleetLock",
        PageOptions::default(),
        html! {
            h1 { "FleetLock" }
            @if p.notice == Some(LockNotice::Released) {
                div.banner.notice #notice {
                    "The slot was released: another machine of the group may take it."
                }
            }
            @if !p.enabled {
                div.banner.paused #fleetlock-disabled {
                    "FleetLock is disabled on this server (fleetlock.enabled = false): clients \
                     asking for a slot are refused. The groups below are as stored."
                }
            }
            p.sub #default-slots {
                "Reboot groups and the machines holding their slots (rebooting now, or stuck). \
                 A group no operator configured has " (p.default_slots) " slot(s)."
            }
            @if p.groups.is_empty() {
                p.empty #no-groups { "No group has a configured slot count or a holder." }
            }
            @for g in &p.groups { (group_card(viewer, g)) }
        },
    )
}

fn group_card(viewer: &Viewer, g: &HolderGroup) -> Markup {
    html! {
        article.card.lock-group id={ "lock-group-" (g.group) } data-group=(g.group) {
            h2 { "Group " span.mono { (g.group) } }
            dl.facts {
                dt { "Slots" } dd.slots {
                    (g.slots) @if !g.configured { " (server default)" }
                }
                dt { "Held" } dd.held { (g.holders.len()) " of " (g.slots) }
            }
            @if g.holders.is_empty() {
                p.empty { "No holder: every slot is free." }
            } @else {
                table.holders {
                    thead {
                        tr {
                            th { "Machine" } th { "FleetLock id" } th { "Since" }
                            @if viewer.may_write() { th {} }
                        }
                    }
                    tbody {
                        @for (i, h) in g.holders.iter().enumerate() {
                            tr.holder data-holder=(h.id) data-machine=[h.machine.as_deref()] {
                                td.mono {
                                    @match &h.machine {
                                        Some(m) => a href=(instances::href(m)) { (m) },
                                        None => span.sub { "no known machine" },
                                    }
                                }
                                td.mono { (h.id) }
                                td { (time(h.since)) }
                                @if viewer.may_write() {
                                    td {
                                        (release_form(viewer, &g.group, &h.id, &format!("{}-{i}", g.group), None))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
