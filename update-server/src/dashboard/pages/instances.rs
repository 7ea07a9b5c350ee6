//! The instance list: filters (group, version, status, search) and pages of machines, through
//! the instance listing operation.

use maud::{Markup, html};

use super::{PageOptions, Section, layout};
use crate::catalogue::Catalogue;
use crate::dashboard::Viewer;
use crate::dashboard::format::{path_segment, status_label, status_tag, time};
use crate::fleet::instances::InstancePage;
use crate::lifecycle::InstanceStatus;

/// The filters and page of a listing, as the request gave them (empty: not filtered).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Group id.
    pub group: String,
    /// Exact version.
    pub version: String,
    /// Status.
    pub status: String,
    /// Substring of machine id, alias or IP.
    pub search: String,
    /// Machines per page.
    pub limit: u32,
    /// Machines skipped.
    pub offset: u32,
}

impl Filters {
    /// The query string of these filters at `offset` (URL-encoded).
    pub fn query(&self, offset: u32) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("group", &self.group),
            ("version", &self.version),
            ("status", &self.status),
            ("search", &self.search),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.append_pair("limit", &self.limit.to_string());
        if offset > 0 {
            q.append_pair("offset", &offset.to_string());
        }
        q.finish()
    }
}

/// The URL of a machine's page.
pub fn href(machine: &str) -> String {
    format!("/ui/instances/{}", path_segment(machine))
}

/// The instance list page (`cat` names applications and groups).
pub fn render(viewer: &Viewer, filters: &Filters, cat: &Catalogue, page: &InstancePage) -> Markup {
    let mut groups: Vec<(String, String)> = cat
        .data()
        .groups
        .iter()
        .map(|g| {
            (
                g.id.clone(),
                format!("{} / {}", app_name(cat, &g.app_id), g.name),
            )
        })
        .collect();
    groups.sort_by(|a, b| a.1.cmp(&b.1));
    let first = if page.instances.is_empty() {
        0
    } else {
        u64::from(filters.offset) + 1
    };
    let last = u64::from(filters.offset) + page.instances.len() as u64;
    let has_prev = filters.offset > 0;
    let has_next = last < page.total;
    layout(
        Some(viewer),
        Section::Instances,
        "Instances",
        PageOptions::default(),
        html! {
            h1 { "Instances" }
            form.filters #filters method="get" action="/ui/instances" {
                label { "Group"
                    select #filter-group name="group" {
                        option value="" { "any" }
                        @for (id, label) in &groups {
                            option value=(id) selected[*id == filters.group] { (label) }
                        }
                    }
                }
                label { "Version" input #filter-version type="text" name="version" value=(filters.version); }
                label { "Status"
                    select #filter-status name="status" {
                        option value="" { "any" }
                        @for s in InstanceStatus::ALL {
                            option value=(s.as_str()) selected[s.as_str() == filters.status] { (status_label(s)) }
                        }
                    }
                }
                label { "Search" input #filter-search type="search" name="search" value=(filters.search) placeholder="machine id, alias or IP"; }
                input type="hidden" name="limit" value=(filters.limit);
                button #apply-filters type="submit" { "Filter" }
                a href="/ui/instances" { "Clear" }
            }
            p #page-summary data-total=(page.total) data-first=(first) data-last=(last) {
                @if page.total == 0 { "No machine matches." }
                @else { "Machines " (first) "–" (last) " of " (page.total) }
            }
            table #instances {
                thead {
                    tr {
                        th { "Machine" } th { "Alias" } th { "Application" } th { "Group" }
                        th { "Version" } th { "Status" } th { "Detail" } th { "Last check" }
                    }
                }
                tbody {
                    @for i in &page.instances {
                        tr.instance data-machine=(i.machine_id) {
                            td.mono { a href=(href(&i.machine_id)) { (i.machine_id) } }
                            td.alias { (i.alias) }
                            td { (app_name(cat, &i.app_id)) }
                            td { (group_name(cat, i.group_id.as_deref())) }
                            td.version { (i.version) }
                            td { (status_tag(i.status)) }
                            td { (i.status_detail) }
                            td { (time(i.last_check_at)) }
                        }
                    }
                }
            }
            nav.pager {
                @if has_prev {
                    a #page-prev href={ "/ui/instances?" (filters.query(filters.offset.saturating_sub(filters.limit))) } { "← Previous" }
                }
                @if has_next {
                    a #page-next href={ "/ui/instances?" (filters.query(filters.offset.saturating_add(filters.limit))) } { "Next →" }
                }
            }
        },
    )
}

/// An application's name, else its id.
pub fn app_name(cat: &Catalogue, id: &str) -> String {
    cat.app(id)
        .map_or_else(|| id.to_owned(), |a| a.name.clone())
}

/// A group's name, else its id, else a dash.
pub fn group_name(cat: &Catalogue, id: Option<&str>) -> String {
    match id {
        Some(id) => cat
            .group(id)
            .map_or_else(|| id.to_owned(), |g| g.name.clone()),
        None => "–".to_owned(),
    }
}
