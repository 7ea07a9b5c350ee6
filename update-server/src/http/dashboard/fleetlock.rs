//! The dashboard's FleetLock page (`GET /ui/fleetlock`): groups, slots and holders; and the
//! release of a stuck holder (`POST /ui/fleetlock/groups/{group}/holders/{id}/release`, from
//! that page or from the machine's), which is the admin API's
//! `DELETE /api/v1/fleetlock/groups/{group}/holders/{id}`: the same
//! [`crate::fleetlock::FleetLock::force_release`], the same `fleetlock_force_released`
//! activity entry.

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::pages::DoneQuery;
use super::{Dash, failed, form_fields, page, see_other};
use crate::dashboard::pages::fleetlock::{self, LockNotice, LockPage};
use crate::dashboard::pages::instances;

/// This part's routes.
pub fn routes() -> Router<Dash> {
    Router::new().route(fleetlock::PATH, get(groups)).route(
        "/ui/fleetlock/groups/{group}/holders/{id}/release",
        post(release),
    )
}

/// Fields of the release form.
#[derive(Debug, Default, Deserialize)]
pub struct ReleaseForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// `yes` when the confirmation box is ticked.
    pub confirm: Option<String>,
    /// The machine whose page the form was on (come back there), if any.
    pub machine: Option<String>,
}

/// `GET /ui/fleetlock`: every group with its slots and holders.
pub async fn groups(
    State(d): State<Dash>,
    headers: HeaderMap,
    Query(q): Query<DoneQuery>,
) -> Response {
    let Some(v) = d.viewer(&headers) else {
        return see_other("/ui/login");
    };
    let lock = &d.app.fleetlock;
    match d.app.fleet().lock_groups(lock).await {
        Ok(groups) => page(fleetlock::render(
            &v,
            &LockPage {
                enabled: lock.settings().enabled,
                default_slots: lock.settings().default_slots,
                groups,
                notice: q.done.as_deref().and_then(LockNotice::parse),
            },
        )),
        Err(e) => failed(Some(&v), e),
    }
}

/// `POST /ui/fleetlock/groups/{group}/holders/{id}/release`: releases a holder's slot by force
/// (admin role, confirmation box ticked); back to the machine's page when sent from there.
pub async fn release(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((group, id)): Path<(String, String)>,
    form: Result<Form<ReleaseForm>, FormRejection>,
) -> Response {
    let f = form_fields(form);
    let v = match d.authorize_confirmed(&headers, &f.csrf, f.confirm.as_deref(), "release the slot")
    {
        Ok(v) => v,
        Err(not) => return not.into_response(),
    };
    match d.app.fleetlock.force_release(&group, &id).await {
        Ok(()) => {
            tracing::info!(%group, %id, "fleetlock slot released from the dashboard");
            match f.machine.as_deref().filter(|m| !m.is_empty()) {
                Some(m) => see_other(&format!("{}?done=released", instances::href(m))),
                None => see_other(&format!("{}?done=released", fleetlock::PATH)),
            }
        }
        Err(e) => failed(Some(&v), e),
    }
}
