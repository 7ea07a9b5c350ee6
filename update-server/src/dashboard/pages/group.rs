//! A group's page: its rollout (target, percentage and ramp, grant states of the target,
//! machines by status, version and hold reason), pause / resume with a confirmation, and its
//! activity timeline.

use maud::{Markup, html};

use super::overview::{banners, failure_rate};
use super::{PageOptions, Section, csrf_field, layout};
use crate::dashboard::Viewer;
use crate::dashboard::format::{maybe_time, path_segment, percent, share, status_bar, time};
use crate::lifecycle::InstanceStatus;
use crate::model::{Activity, App, Group};
use crate::rollout::status::RolloutStatus;
use crate::version_history::Range;

/// Seconds between reloads of a group page.
const REFRESH_SECS: u32 = 15;

/// What was just done, shown once after a redirect (a closed set: nothing from the request is
/// echoed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupNotice {
    /// The rollout was paused.
    Paused,
    /// The rollout was resumed (a halt cleared with it).
    Resumed,
    /// The policy was saved in the policy editor.
    PolicySaved,
}

impl GroupNotice {
    /// The notice a `done=` query value names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "paused" => Some(Self::Paused),
            "resumed" => Some(Self::Resumed),
            "policy" => Some(Self::PolicySaved),
            _ => None,
        }
    }
}

/// Everything the group page shows.
#[derive(Debug, Clone)]
pub struct GroupPage {
    /// The application.
    pub app: App,
    /// The group.
    pub group: Group,
    /// The name of the channel it follows.
    pub channel_name: Option<String>,
    /// Its rollout status.
    pub status: RolloutStatus,
    /// Its activity, newest first.
    pub activity: Vec<Activity>,
    /// What was just done.
    pub notice: Option<GroupNotice>,
    /// The range of the version-over-time chart.
    pub chart_range: Range,
}

/// The version-over-time chart (an SVG image drawn by the server, see
/// [`crate::dashboard::chart`]) with its range links.
fn version_chart(base: &str, range: Range) -> Markup {
    let label = |r: Range| match r {
        Range::Day => "24 hours",
        Range::Week => "7 days",
        Range::Month => "30 days",
        Range::Quarter => "90 days",
    };
    html! {
        section.card #versions-over-time {
            h2 { "Versions over time" }
            p.ranges {
                @for r in Range::ALL {
                    a id={ "range-" (r.name()) } href={ (base) "?range=" (r.name()) }
                        aria-current=[(r == range).then_some("page")] { (label(r)) }
                    " "
                }
            }
            img #version-chart src={ (base) "/versions.svg?range=" (range.name()) }
                width="760" height="260"
                alt={ "Stacked chart of the group's machines by version over the last "
                      (label(range)) "; today's counts are in the table Machines by version." };
            p.sub { "Sampled every 10 minutes; the last point is now." }
        }
    }
}

/// The URL of a group's page.
pub fn href(app_id: &str, group_id: &str) -> String {
    format!(
        "/ui/apps/{}/groups/{}",
        path_segment(app_id),
        path_segment(group_id)
    )
}

/// The group page.
pub fn render(viewer: &Viewer, p: &GroupPage) -> Markup {
    let s = &p.status;
    let base = href(&p.app.id, &p.group.id);
    let by_status: Vec<(InstanceStatus, u64)> = InstanceStatus::ALL
        .iter()
        .map(|st| (*st, s.by_status.get(st.as_str()).copied().unwrap_or(0)))
        .collect();
    layout(
        Some(viewer),
        Section::Fleet,
        &format!("Group {}", p.group.name),
        PageOptions {
            refresh_secs: Some(REFRESH_SECS),
        },
        html! {
            p.sub { a href="/" { "Fleet" } " / " (p.app.name) }
            h1 #group-name { "Group " (p.group.name) " " span.sub { "track " (p.group.track) } }
            @match p.notice {
                Some(GroupNotice::Paused) => div.banner.notice #notice { "The rollout was paused." },
                Some(GroupNotice::Resumed) => div.banner.notice #notice { "The rollout was resumed." },
                Some(GroupNotice::PolicySaved) => div.banner.notice #notice { "The policy was saved." },
                None => {},
            }
            div #banners { (banners(s.paused, s.halted.as_ref())) }
            div.grid {
                section.card #rollout {
                    h2 { "Rollout" }
                    dl.facts {
                        dt { "Channel" } dd #channel { (p.channel_name.as_deref().unwrap_or("none")) }
                        dt { "Target version" } dd #target { (s.target_version.as_deref().unwrap_or("–")) }
                        dt { "Rollout now" } dd #percent { (percent(s.effective_percent)) }
                        dt { "Next ramp step" } dd #next-step {
                            @match (s.next_step_at, s.next_step_percent) {
                                (Some(at), Some(pc)) => { (percent(pc)) " from " (time(at)) }
                                _ => "none",
                            }
                        }
                        dt { "Machines" } dd #machines { (s.machines) }
                        dt { "On target" } dd #share { (share(s.share_complete)) }
                        dt { "Failure rate" } dd #failure-rate {
                            (failure_rate(s.failure_rate, &s.grants, s.policy.auto_halt.as_ref()))
                        }
                    }
                    (policy_summary(s))
                    p.policy-link {
                        @if viewer.may_write() {
                            a #edit-policy href=(super::policy::href(&p.app.id, &p.group.id)) { "Edit policy" }
                        } @else {
                            a #view-policy href=(super::policy::href(&p.app.id, &p.group.id)) { "View policy" }
                        }
                    }
                }
                section.card #grants {
                    h2 { "Grants of " (s.target_version.as_deref().unwrap_or("the target")) }
                    table {
                        tbody {
                            (grant_row("in_flight", "in flight", s.grants.in_flight))
                            (grant_row("installed", "installed, awaiting reboot", s.grants.installed))
                            (grant_row("complete", "complete", s.grants.complete))
                            (grant_row("failed", "failed", s.grants.failed))
                            (grant_row("timed_out", "timed out", s.grants.timed_out))
                            (grant_row("deferred", "deferred (not an attempt)", s.grants.deferred))
                            (grant_row("superseded", "superseded", s.grants.superseded))
                            (grant_row("attempts", "attempts", s.grants.attempts))
                        }
                    }
                    @if s.grants.new_attempts > 0 {
                        p.sub {
                            (s.grants.new_attempts) " of the attempts and " (s.grants.new_failed)
                            " of the failures were machines new to the rollout."
                        }
                    }
                }
                section.card #statuses {
                    h2 { "Machines by status" }
                    (status_bar(&by_status))
                    table {
                        tbody {
                            @for (st, n) in &by_status {
                                tr data-status=(st.as_str()) {
                                    td { a href={ "/ui/instances?group=" (path_segment(&p.group.id)) "&status=" (st.as_str()) } { (crate::dashboard::format::status_label(*st)) } }
                                    td.num { (n) }
                                }
                            }
                        }
                    }
                }
                section.card #versions {
                    h2 { "Machines by version" }
                    @if s.by_version.is_empty() { p.empty { "No machines yet." } }
                    table {
                        tbody {
                            @for (v, n) in &s.by_version {
                                tr { td { (v) } td.num { (n) } }
                            }
                        }
                    }
                    @if !s.on_hold.is_empty() {
                        h3 { "On hold, by reason" }
                        table #on-hold {
                            tbody {
                                @for (r, n) in &s.on_hold {
                                    tr { td { (r) } td.num { (n) } }
                                }
                            }
                        }
                    }
                }
            }
            (version_chart(&base, p.chart_range))
            @if viewer.may_write() {
                section.card #actions {
                    h2 { "Steer" }
                    @if s.paused || s.halted.is_some() {
                        form #resume-form.action method="post" action={ (base) "/resume" } {
                            (csrf_field(viewer))
                            input type="hidden" name="shown" value=(shown_halt_of(s.halted.as_ref()));
                            label {
                                input #resume-confirm type="checkbox" name="confirm" value="yes" required;
                                @if s.halted.is_some() {
                                    " I have looked at the failures: clear the halt and resume the rollout"
                                } @else {
                                    " Resume the rollout"
                                }
                            }
                            button #resume type="submit" {
                                @if s.halted.is_some() { "Resume after halt" } @else { "Resume" }
                            }
                        }
                    }
                    @if !s.paused {
                        form #pause-form.action method="post" action={ (base) "/pause" } {
                            (csrf_field(viewer))
                            label {
                                input #pause-confirm type="checkbox" name="confirm" value="yes" required;
                                " Pause the rollout: machines not yet granted are held"
                            }
                            button.danger #pause type="submit" { "Pause" }
                        }
                    }
                }
            }
            section #activity {
                h2 { "Activity" }
                (timeline(&p.activity))
            }
        },
    )
}

fn grant_row(id: &str, label: &str, n: u64) -> Markup {
    html! { tr data-grant=(id) { td { (label) } td.num { (n) } } }
}

fn policy_summary(s: &RolloutStatus) -> Markup {
    let p = &s.policy;
    html! {
        h3 { "Policy" }
        dl.facts #policy {
            @if let Some(r) = &p.ramp {
                dt { "Ramp" }
                dd {
                    "from " (percent(r.start_percent)) " at " (time(r.start_at))
                    @if r.steps.is_empty() {
                        ", linearly to 100 % over " (r.duration_secs / 3600) " h"
                    } @else {
                        ", " (r.steps.len()) " step(s)"
                    }
                }
            } @else if let Some(pc) = p.percentage {
                dt { "Percentage" } dd { (percent(pc)) }
            }
            @if let Some(r) = &p.rate_limit {
                dt { "Rate limit" } dd { (r.count) " per " (r.period_secs) " s" }
            }
            @if let Some(c) = p.concurrency_limit {
                dt { "Concurrency limit" } dd { (c) }
            }
            @if let Some(t) = p.update_timeout_secs {
                dt { "Update timeout" } dd { (t) " s" }
            }
            @if !p.windows.is_empty() {
                dt { "Windows" } dd { (p.windows.len()) " weekly window(s)" }
            }
            @if !p.canaries.is_empty() {
                dt { "Canaries" } dd { (p.canaries.join(", ")) }
            }
            @if let Some(g) = &p.gate {
                dt { "Gate" } dd { (g.min_complete) " complete in group " (g.group) }
            }
            @if !p.floors.is_empty() {
                dt { "Floors" } dd { (p.floors.join(", ")) }
            }
            @if !p.blocked_versions.is_empty() {
                dt { "Blocked" } dd { (p.blocked_versions.join(", ")) }
            }
            @if p.allow_downgrade {
                dt { "Downgrades" } dd { "allowed" }
            }
            @if p.halt_counted_since.is_some() {
                dt { "Auto-halt counts grants since" } dd { (maybe_time(p.halt_counted_since)) }
            }
        }
    }
}

/// An activity timeline, newest first.
pub fn timeline(entries: &[Activity]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.empty { "Nothing yet." }
        } @else {
            ol.timeline {
                @for e in entries {
                    li class={ "sev-" (e.severity.as_str()) } data-kind=(e.kind) {
                        (time(e.at)) " " span.tag { (e.kind) } " " span.message { (e.message) }
                    }
                }
            }
        }
    }
}

/// The halt a page shows, as its resume form carries it: `halted@<time>` or `none`.
pub fn shown_halt(policy: &crate::model::GroupPolicy) -> String {
    let spec = crate::rollout::RolloutSpec::from_policy(policy).unwrap_or_default();
    shown_halt_of(spec.halted.as_ref())
}

fn shown_halt_of(halted: Option<&crate::rollout::Halt>) -> String {
    halted.map_or_else(|| "none".to_owned(), |h| format!("halted@{}", h.at))
}
