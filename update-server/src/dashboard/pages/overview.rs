//! The fleet overview: applications → channels (the version each points at) → groups, and per
//! group its target version, machines, machines by status, a paused or halted banner with its
//! reason, and the failure rate against the auto-halt threshold.

use maud::{Markup, html};

use super::{PageOptions, Section, layout};
use crate::dashboard::Viewer;
use crate::dashboard::format::{percent, share, status_bar, status_label, time};
use crate::fleet::overview::{AppOverview, FleetOverview, GroupOverview};
use crate::rollout::spec::{AutoHalt, Halt};
use crate::store::rollout::GrantStats;

/// Seconds between reloads of the overview.
const REFRESH_SECS: u32 = 30;

/// The overview page.
pub fn render(viewer: &Viewer, o: &FleetOverview) -> Markup {
    layout(
        Some(viewer),
        Section::Fleet,
        "Fleet",
        PageOptions {
            refresh_secs: Some(REFRESH_SECS),
        },
        html! {
            h1 { "Fleet " span.sub { "as of " (time(o.at)) } }
            @if o.apps.is_empty() {
                p.empty #no-apps {
                    "No applications yet. Create one with "
                    code { "update-server app create APPID NAME" } " or the admin API."
                }
            }
            @for a in &o.apps { (app(a, viewer.may_write())) }
        },
    )
}

fn app(a: &AppOverview, may_write: bool) -> Markup {
    html! {
        section.app id={ "app-" (a.app.id) } {
            h2 { (a.app.name) " " span.sub.mono { (a.app.id) } }
            @if may_write {
                p.app-actions {
                    a.new-group id={ "new-group-" (a.app.id) } href=(super::policy::new_group_href(&a.app.id)) { "New group" }
                }
            }
            @if a.channels.is_empty() && a.unassigned.is_empty() {
                p.empty { "No channels or groups yet." }
            }
            @for c in &a.channels {
                div.channel id={ "channel-" (c.channel.id) } {
                    h3 {
                        "Channel " (c.channel.name) " → "
                        @if c.versions.is_empty() { span.empty { "no package" } }
                        @for (i, (arch, v)) in c.versions.iter().enumerate() {
                            @if i > 0 { ", " }
                            span.version { (v.as_deref().unwrap_or("(package gone)")) }
                            " " span.sub { "(" (arch) ")" }
                        }
                    }
                    @if c.groups.is_empty() { p.empty { "No group follows this channel." } }
                    div.grid { @for g in &c.groups { (group_card(&a.app.id, g)) } }
                }
            }
            @if !a.unassigned.is_empty() {
                div.channel {
                    h3 { "Groups following no channel" }
                    div.grid { @for g in &a.unassigned { (group_card(&a.app.id, g)) } }
                }
            }
            @if a.ungrouped_machines > 0 {
                p.sub { (a.ungrouped_machines) " machine(s) report a track that names no group." }
            }
        }
    }
}

/// One group's card.
pub fn group_card(app_id: &str, g: &GroupOverview) -> Markup {
    let href = super::group::href(app_id, &g.group.id);
    html! {
        article.card.group id={ "group-" (g.group.id) } data-group=(g.group.id) {
            h3 { a.group-link href=(href) { (g.group.name) } " " span.sub { "track " (g.group.track) } }
            (banners(g.paused, g.halted.as_ref()))
            dl.facts {
                dt { "Target" } dd.target { (g.target_version.as_deref().unwrap_or("–")) }
                dt { "Machines" } dd.machines { (g.machines) }
                dt { "On target" } dd.on-target {
                    (g.on_target)
                    @if g.machines > 0 {
                        " (" ({
                            #[allow(clippy::cast_precision_loss)]
                            let s = g.on_target as f64 / g.machines as f64;
                            share(s)
                        }) ")"
                    }
                }
                dt { "Rollout" } dd.percent { (percent(g.effective_percent)) }
                dt { "Failure rate" } dd.failure-rate { (failure_rate(g.failure_rate, &g.grants, g.auto_halt.as_ref())) }
                dt { "Check-ins" } dd.checkins title="machines that checked in during the last 5 minutes, per minute" {
                    (format!("{:.1}", g.checkins_per_minute)) " / min"
                }
            }
            (status_bar(&g.by_status))
            ul.counts {
                @for (s, n) in &g.by_status {
                    li class=[(*n == 0).then_some("zero")] data-status=(s.as_str()) {
                        span.n { (n) } " " (status_label(*s))
                    }
                }
            }
        }
    }
}

/// The failure rate of the target, against the auto-halt threshold when one is set.
pub fn failure_rate(rate: f64, grants: &GrantStats, auto_halt: Option<&AutoHalt>) -> Markup {
    html! {
        (share(rate))
        " " span.sub { "(" (grants.failed + grants.timed_out) " of " (grants.attempts) " attempts)" }
        @if let Some(h) = auto_halt {
            " "
            meter min="0" max="1" value=(rate) high=(h.max_failure_rate) optimum="0" {}
            " " span.threshold {
                "auto-halt above " (share(h.max_failure_rate))
                " after " (h.min_attempts) " attempts"
            }
        } @else {
            " " span.sub.threshold { "no auto-halt" }
        }
    }
}

/// The paused and halted banners.
pub fn banners(paused: bool, halted: Option<&Halt>) -> Markup {
    html! {
        @if let Some(h) = halted {
            div.banner.halted role="status" {
                strong { "Halted" } " at " (time(h.at)) " while rolling out " (h.version) ": "
                span.reason { (h.reason) }
            }
        }
        @if paused {
            div.banner.paused role="status" {
                strong { "Paused" } " by an operator: machines are held until the rollout is resumed."
            }
        }
    }
}
