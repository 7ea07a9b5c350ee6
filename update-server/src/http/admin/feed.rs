//! `/api/v1/events` and `/api/v1/activity`: the client events and the activity feed
//! ([`crate::fleet::feed`]).

use axum::Json;
use axum::extract::{Query, State};

use super::ApiResult;
use crate::fleet::feed::{ActivityQuery, EventQuery};
use crate::http::AppState;
use crate::model::{Activity, EventRecord};

/// Lists client events, newest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, body = [EventRecord])))]
pub async fn list_events(
    State(st): State<AppState>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Vec<EventRecord>> {
    Ok(Json(st.fleet().list_events(q).await?))
}

/// The activity feed, newest first.
#[utoipa::path(get, path = "/api/v1/activity", tag = "activity", params(ActivityQuery),
    responses((status = 200, body = [Activity])))]
pub async fn list_activity(
    State(st): State<AppState>,
    Query(q): Query<ActivityQuery>,
) -> ApiResult<Vec<Activity>> {
    Ok(Json(st.fleet().list_activity(q).await?))
}
