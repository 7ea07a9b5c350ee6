//! The activity page: the audit feed (what operators and the server did), newest first,
//! filtered by application, kind, severity and text, paged by entry id (`before=`).

use maud::{Markup, html};

use super::instances::{app_name, group_name, href};
use super::{PageOptions, Section, layout};
use crate::catalogue::Catalogue;
use crate::dashboard::Viewer;
use crate::dashboard::format::time;
use crate::model::Activity;

/// The page's path.
pub const PATH: &str = "/ui/activity";

/// Severities an entry may have, as filter values.
const SEVERITIES: [&str; 4] = ["info", "success", "warning", "error"];

/// The filters and page of the feed, as the request gave them (empty: not filtered).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Application id (normalised).
    pub app: String,
    /// Exact kind (`rollout_paused`...).
    pub kind: String,
    /// Severity (`info`, `success`, `warning`, `error`).
    pub severity: String,
    /// Substring (any case) of the message, machine id, version or kind.
    pub search: String,
    /// Only entries older than this id.
    pub before: Option<i64>,
    /// Entries per page.
    pub limit: u32,
}

impl Filters {
    /// Whether a filter the store cannot apply is set (kind, severity, text): the entries are
    /// then read in batches and filtered here.
    pub fn scans(&self) -> bool {
        !(self.kind.is_empty() && self.severity.is_empty() && self.search.is_empty())
    }

    /// Whether `e` passes the kind, severity and text filters (the application is filtered by
    /// the store).
    pub fn matches(&self, e: &Activity) -> bool {
        let needle = self.search.to_lowercase();
        let has = |s: &str| s.to_lowercase().contains(&needle);
        (self.kind.is_empty() || e.kind == self.kind)
            && (self.severity.is_empty() || e.severity.as_str() == self.severity)
            && (needle.is_empty()
                || has(&e.message)
                || has(&e.kind)
                || e.machine_id.as_deref().is_some_and(has)
                || e.version.as_deref().is_some_and(has))
    }

    /// The query string of these filters for the page of entries older than `before`
    /// (URL-encoded; none: the newest page).
    pub fn query(&self, before: Option<i64>) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("app", &self.app),
            ("kind", &self.kind),
            ("severity", &self.severity),
            ("search", &self.search),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.append_pair("limit", &self.limit.to_string());
        if let Some(b) = before {
            q.append_pair("before", &b.to_string());
        }
        q.finish()
    }
}

/// A page of the feed.
#[derive(Debug, Clone, Default)]
pub struct FeedPage {
    /// The entries shown, newest first.
    pub entries: Vec<Activity>,
    /// The `before` of the next (older) page, if there may be more.
    pub older: Option<i64>,
    /// The entries read to fill this page (more than shown when filtering here).
    pub scanned: usize,
    /// The reading stopped at its bound before the page was full: older entries are not
    /// searched yet.
    pub cut_short: bool,
}

/// The activity page (`cat` names applications and groups).
pub fn render(viewer: &Viewer, f: &Filters, cat: &Catalogue, p: &FeedPage) -> Markup {
    let mut apps: Vec<(String, String)> = cat
        .data()
        .apps
        .iter()
        .map(|a| (a.id.clone(), a.name.clone()))
        .collect();
    apps.sort_by(|a, b| a.1.cmp(&b.1));
    layout(
        Some(viewer),
        Section::Activity,
        "Activity",
        PageOptions::default(),
        html! {
            h1 { "Activity" }
            p.sub { "What operators and the server did, newest first." }
            form.filters #filters method="get" action=(PATH) {
                label { "Application"
                    select #filter-app name="app" {
                        option value="" { "any" }
                        @for (id, name) in &apps {
                            option value=(id) selected[*id == f.app] { (name) }
                        }
                    }
                }
                label { "Kind" input #filter-kind type="text" name="kind" value=(f.kind) placeholder="e.g. rollout_paused"; }
                label { "Severity"
                    select #filter-severity name="severity" {
                        option value="" { "any" }
                        @for s in SEVERITIES {
                            option value=(s) selected[s == f.severity] { (s) }
                        }
                    }
                }
                label { "Search" input #filter-search type="search" name="search" value=(f.search) placeholder="message, machine, version"; }
                input type="hidden" name="limit" value=(f.limit);
                button #apply-filters type="submit" { "Filter" }
                a href=(PATH) { "Clear" }
            }
            p #page-summary data-shown=(p.entries.len()) data-scanned=(p.scanned) {
                @if p.entries.is_empty() { "No entry matches" } @else { (p.entries.len()) " entries" }
                @if let Some(b) = f.before { " older than #" (b) }
                @if f.scans() { " (" (p.scanned) " read)" }
                "."
            }
            @if p.cut_short {
                p.banner.notice #page-cut {
                    "Stopped after reading " (p.scanned) " entries; older entries may match too: "
                    "see the next page."
                }
            }
            @if !p.entries.is_empty() {
                table #activity {
                    thead {
                        tr {
                            th { "#" } th { "When" } th { "Severity" } th { "Kind" }
                            th { "Application" } th { "Subject" } th { "Message" }
                        }
                    }
                    tbody {
                        @for e in &p.entries { (row(f, cat, e)) }
                    }
                }
            }
            nav.pager {
                @if f.before.is_some() {
                    a #page-newest href={ (PATH) "?" (f.query(None)) } { "↑ Newest" }
                }
                @if let Some(b) = p.older {
                    a #page-next href={ (PATH) "?" (f.query(Some(b))) } { "Older →" }
                }
            }
        },
    )
}

fn row(f: &Filters, cat: &Catalogue, e: &Activity) -> Markup {
    let by_kind = Filters {
        kind: e.kind.clone(),
        before: None,
        ..f.clone()
    };
    html! {
        tr class={ "activity sev-" (e.severity.as_str()) } data-activity-id=(e.id) data-kind=(e.kind) data-severity=(e.severity.as_str()) {
            td.num { (e.id) }
            td { (time(e.at)) }
            td { span class={ "tag sev-" (e.severity.as_str()) } { (e.severity.as_str()) } }
            td { a.kind href={ (PATH) "?" (by_kind.query(None)) } { (e.kind) } }
            td { @if let Some(a) = &e.app_id { (app_name(cat, a)) } @else { "–" } }
            td { (subject(cat, e)) }
            td.message { (e.message) }
        }
    }
}

/// What an entry is about: its group, machine (a FleetLock id for FleetLock entries) and
/// version, each linked where the dashboard has a page for it.
fn subject(cat: &Catalogue, e: &Activity) -> Markup {
    html! {
        @if let (Some(a), Some(g)) = (&e.app_id, &e.group_id) {
            span.group { "group " a href=(super::group::href(a, g)) { (group_name(cat, Some(g))) } " " }
        }
        @if let Some(m) = &e.machine_id {
            @if e.kind.starts_with("fleetlock_") {
                span.machine.mono { "FleetLock id " (m) " " }
            } @else {
                span.machine.mono { a href=(href(m)) { (m) } " " }
            }
        }
        @if let Some(v) = &e.version {
            span.version { "version " (v) }
        }
    }
}
