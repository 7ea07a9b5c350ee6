//! A machine's page: every application it runs (current row, refused versions with a retry
//! button, status history), the FleetLock slot it holds (with a release button), and the
//! events it reported, with error codes decoded.

use maud::{Markup, html};

use super::instances::{app_name, group_name, href};
use super::{PageOptions, Section, csrf_field, fleetlock, layout};
use crate::catalogue::Catalogue;
use crate::dashboard::Viewer;
use crate::dashboard::format::{error_code, maybe_time, status_tag, time};
use crate::fleet::fleetlock::MachineSlot;
use crate::fleet::instances::{InstanceDetail, InstanceWithHistory};
use crate::model::EventRecord;

/// What was just done, shown once after a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceNotice {
    /// Refusals were cleared.
    Retried,
    /// Its FleetLock slot was released.
    Released,
}

impl InstanceNotice {
    /// The notice a `done=` query value names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "retried" => Some(Self::Retried),
            "released" => Some(Self::Released),
            _ => None,
        }
    }
}

/// The machine's page (`slots`: the FleetLock slots it holds).
pub fn render(
    viewer: &Viewer,
    cat: &Catalogue,
    d: &InstanceDetail,
    slots: &[MachineSlot],
    events: &[EventRecord],
    notice: Option<InstanceNotice>,
) -> Markup {
    layout(
        Some(viewer),
        Section::Instances,
        &format!("Machine {}", d.machine_id),
        PageOptions::default(),
        html! {
            p.sub { a href="/ui/instances" { "Instances" } }
            h1 { "Machine " span.mono #machine-id { (d.machine_id) } }
            @match notice {
                Some(InstanceNotice::Retried) => div.banner.notice #notice {
                    "The refusal was cleared: the machine may be offered the version again at its next check."
                },
                Some(InstanceNotice::Released) => div.banner.notice #notice {
                    "The FleetLock slot was released: another machine of the group may take it."
                },
                None => {},
            }
            dl.facts {
                dt { "Operator alias" } dd #operator-alias { (d.operator_alias.as_deref().unwrap_or("none")) }
            }
            (lock_slots(viewer, &d.machine_id, slots))
            @for a in &d.apps { (app_section(viewer, cat, &d.machine_id, a)) }
            section #events {
                h2 { "Events" }
                @if events.is_empty() { p.empty { "No events stored." } }
                @else {
                    table {
                        thead { tr { th { "When" } th { "Application" } th { "Event" } th { "Error" } th { "Version" } th { "Previous" } } }
                        tbody {
                            @for e in events {
                                tr.event data-type=(e.event_type) data-result=(e.event_result) {
                                    td { (time(e.at)) }
                                    td { (app_name(cat, &e.app_id)) }
                                    td { (event_name(e)) }
                                    td { (error_code(e.error_code)) }
                                    td { (e.version) }
                                    td { (e.previous_version) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The FleetLock slots the machine holds, each with a release button for the admin role.
fn lock_slots(viewer: &Viewer, machine: &str, slots: &[MachineSlot]) -> Markup {
    html! {
        @if !slots.is_empty() {
            section.card #fleetlock {
                h2 { "FleetLock" }
                ul.lock-slots {
                    @for s in slots {
                        li.fleetlock-slot id={ "fleetlock-slot-" (s.group) } data-group=(s.group) data-holder=(s.holder_id) {
                            p {
                                "FleetLock: holds a slot in group "
                                a href={ (fleetlock::PATH) "#lock-group-" (s.group) } { (s.group) }
                                " since " (time(s.since))
                                @if s.holder_id != machine {
                                    " " span.sub { "(as FleetLock id " span.mono { (s.holder_id) } ")" }
                                }
                            }
                            @if viewer.may_write() {
                                (fleetlock::release_form(viewer, &s.group, &s.holder_id, &s.group, Some(machine)))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn app_section(viewer: &Viewer, cat: &Catalogue, machine: &str, a: &InstanceWithHistory) -> Markup {
    let i = &a.instance;
    html! {
        section.card.app-instance id={ "app-" (i.app_id) } {
            h2 { (app_name(cat, &i.app_id)) " " span.sub.mono { (i.app_id) } }
            dl.facts {
                dt { "Reported alias" } dd.alias { (i.alias) }
                dt { "Version" } dd.version { (i.version) }
                dt { "Group" } dd {
                    @match i.group_id.as_deref() {
                        Some(g) => a href=(super::group::href(&i.app_id, g)) { (group_name(cat, Some(g))) },
                        None => { "none (track " (i.track) ")" },
                    }
                }
                dt { "Status" } dd.status { (status_tag(i.status)) " " (i.status_detail) }
                @if i.error_code.is_some() {
                    dt { "Last error" } dd { (error_code(i.error_code)) }
                }
                dt { "Granted" } dd {
                    (i.granted_version.as_deref().unwrap_or("–")) " " (maybe_time(i.granted_at))
                }
                @if let Some(p) = i.served_payload {
                    dt { "Payload" } dd.payload { (p.as_str()) }
                }
                dt { "IP" } dd { (i.ip) }
                dt { "Board / OEM" } dd { (i.board) " / " (i.oem) " " (i.oem_version) }
                dt { "Last check" } dd { (time(i.last_check_at)) }
                dt { "First contact" } dd { (time(i.created_at)) }
            }
            h3 { "Refused versions" }
            @if a.refused_versions.is_empty() {
                p.empty { "None." }
            } @else {
                table.refused {
                    thead { tr { th { "Version" } th { "Reason" } th { "Error" } th { "Since" } th {} } }
                    tbody {
                        @for r in &a.refused_versions {
                            tr data-version=(r.version) {
                                td { (r.version) }
                                td { (r.reason.as_str()) }
                                td { (error_code(r.error_code)) }
                                td { (time(r.at)) }
                                td {
                                    @if viewer.may_write() {
                                        form.inline.retry method="post" action={ (href(machine)) "/retry" } {
                                            (csrf_field(viewer))
                                            input type="hidden" name="app" value=(r.app_id);
                                            input type="hidden" name="version" value=(r.version);
                                            button type="submit" { "Retry" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h3 { "Status history" }
            @if a.history.is_empty() { p.empty { "No changes stored." } }
            @else {
                table.history {
                    thead { tr { th { "When" } th { "Status" } th { "Version" } th { "Detail" } th { "Error" } } }
                    tbody {
                        @for h in &a.history {
                            tr {
                                td { (time(h.at)) }
                                td { (status_tag(h.status)) }
                                td { (h.version) }
                                td { (h.detail) }
                                td { (error_code(h.error_code)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An event's type and result in words (`update complete / success, reboot (3/2)`).
fn event_name(e: &EventRecord) -> String {
    let name = |n: i64, f: fn(u32) -> Option<&'static str>| {
        u32::try_from(n).ok().and_then(f).unwrap_or("unknown")
    };
    format!(
        "{} / {} ({}/{})",
        name(e.event_type, |n| omaha::EventType::from_u32(n)
            .description()),
        name(e.event_result, |n| omaha::EventResult::from_u32(n)
            .description()),
        e.event_type,
        e.event_result
    )
}
