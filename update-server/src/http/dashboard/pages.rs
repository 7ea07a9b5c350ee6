//! The dashboard's pages (GET): each needs a session (else it leads to the login page), calls
//! [`crate::fleet`] operations and renders their answer.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::{Dash, failed, page, see_other};
use crate::dashboard::pages::{group, instance, instances, overview};
use crate::fleet::feed::EventQuery;
use crate::fleet::instances::InstanceQuery;
use crate::fleet::{FleetError, find_app, find_group};
use crate::version_history::Range;

/// Activity entries a group page shows.
const TIMELINE_ENTRIES: usize = 50;
/// Events an instance page shows.
const EVENTS_SHOWN: u32 = 100;
/// Machines per page of the instance list by default.
const PAGE_DEFAULT: u32 = 50;
/// Most machines per page of the instance list.
const PAGE_MAX: u32 = 500;

/// The login page, for a request without a session.
fn to_login() -> Response {
    see_other("/ui/login")
}

/// Query of a page that may show a notice after a form.
#[derive(Debug, Default, Deserialize)]
pub struct DoneQuery {
    /// What was just done (`retried`, `released`).
    pub done: Option<String>,
}

/// `GET /`: the fleet overview.
pub async fn overview(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let Some(v) = d.viewer(&headers) else {
        return to_login();
    };
    match d.app.fleet().overview().await {
        Ok(o) => page(overview::render(&v, &o)),
        Err(e) => failed(Some(&v), e),
    }
}

/// Query of the group page.
#[derive(Debug, Default, Deserialize)]
pub struct GroupQuery {
    /// What was just done (`paused`, `resumed`, `policy`).
    pub done: Option<String>,
    /// The chart's range (`24h`, `7d`, `30d`, `90d`; default `24h`).
    pub range: Option<String>,
}

/// `GET /ui/apps/{app}/groups/{group}`: a group's rollout, controls, chart and timeline.
pub async fn group(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((app, key)): Path<(String, String)>,
    Query(q): Query<GroupQuery>,
) -> Response {
    let Some(v) = d.viewer(&headers) else {
        return to_login();
    };
    let chart_range = match q.range.as_deref().filter(|r| !r.is_empty()) {
        None => Range::default(),
        Some(r) => match Range::parse(r) {
            Some(r) => r,
            None => {
                let e = FleetError::Invalid(format!(
                    "unknown chart range {r:?}: use 24h, 7d, 30d or 90d"
                ));
                return failed(Some(&v), e);
            }
        },
    };
    let fleet = d.app.fleet();
    let read = async {
        let cat = fleet.catalogue();
        let a = find_app(&cat, &app)?;
        let g = find_group(&cat, &a.id, &key)?;
        let status = fleet.rollout_status(&a.id, &g.id).await?;
        let activity = fleet.group_activity(&a.id, &g.id, TIMELINE_ENTRIES).await?;
        let channel_name = g
            .channel_id
            .as_deref()
            .and_then(|c| cat.channel(c))
            .map(|c| c.name.clone());
        Ok::<_, FleetError>(group::GroupPage {
            app: a,
            group: g,
            channel_name,
            status,
            activity,
            notice: q.done.as_deref().and_then(group::GroupNotice::parse),
            chart_range,
        })
    };
    match read.await {
        Ok(p) => page(group::render(&v, &p)),
        Err(e) => failed(Some(&v), e),
    }
}

/// Query of the instance list: every field as text, empty meaning "not filtered" (a form
/// sends empty fields), numbers read leniently.
#[derive(Debug, Default, Deserialize)]
pub struct InstancesQuery {
    /// Group id.
    pub group: Option<String>,
    /// Exact version.
    pub version: Option<String>,
    /// Status.
    pub status: Option<String>,
    /// Substring of machine id, alias or IP.
    pub search: Option<String>,
    /// Machines per page.
    pub limit: Option<String>,
    /// Machines skipped.
    pub offset: Option<String>,
}

/// `GET /ui/instances`: machines, filtered and paged.
pub async fn instances(
    State(d): State<Dash>,
    headers: HeaderMap,
    Query(q): Query<InstancesQuery>,
) -> Response {
    let Some(v) = d.viewer(&headers) else {
        return to_login();
    };
    let text = |o: Option<String>| o.map(|s| s.trim().to_owned()).unwrap_or_default();
    let number = |o: &Option<String>| o.as_deref().and_then(|s| s.trim().parse::<u32>().ok());
    let filters = instances::Filters {
        limit: number(&q.limit).unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX),
        offset: number(&q.offset).unwrap_or(0),
        group: text(q.group),
        version: text(q.version),
        status: text(q.status),
        search: text(q.search),
    };
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let query = InstanceQuery {
        app: None,
        group: some(&filters.group),
        version: some(&filters.version),
        status: some(&filters.status),
        search: some(&filters.search),
        limit: Some(filters.limit),
        offset: Some(filters.offset),
    };
    let fleet = d.app.fleet();
    match fleet.list_instances(query).await {
        Ok(p) => page(instances::render(&v, &filters, &fleet.catalogue(), &p)),
        Err(e) => failed(Some(&v), e),
    }
}

/// `GET /ui/instances/{machine}`: a machine's applications, history, refusals, FleetLock slot
/// and events.
pub async fn instance(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(machine): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Response {
    let Some(v) = d.viewer(&headers) else {
        return to_login();
    };
    let fleet = d.app.fleet();
    let read = async {
        let detail = fleet.instance(&machine).await?;
        let slots = fleet.lock_slots_of(&d.app.fleetlock, &machine).await?;
        let events = fleet
            .list_events(EventQuery {
                machine: Some(machine.clone()),
                limit: Some(EVENTS_SHOWN),
                ..Default::default()
            })
            .await?;
        Ok::<_, FleetError>((detail, slots, events))
    };
    match read.await {
        Ok((detail, slots, events)) => page(instance::render(
            &v,
            &fleet.catalogue(),
            &detail,
            &slots,
            &events,
            q.done.as_deref().and_then(instance::InstanceNotice::parse),
        )),
        Err(e) => failed(Some(&v), e),
    }
}
