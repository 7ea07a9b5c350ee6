//! `/api/v1/apps/{app}/groups/{group}/rollout`: a group's rollout status, a preview of which
//! machines a percentage (or the next ramp step) would add, and explicit pause / resume (resume
//! also clears an auto-halt) ([`crate::fleet::rollouts`]).

use axum::Json;
use axum::extract::{Path, Query, State};

use super::ApiResult;
use crate::fleet::rollouts::PreviewQuery;
use crate::http::AppState;
use crate::http::error::ErrorBody;
use crate::model::Group;
use crate::rollout::status::{Preview, RolloutStatus};

/// A group's rollout status.
#[utoipa::path(get, path = "/api/v1/apps/{app}/groups/{group}/rollout", tag = "rollouts",
    params(("app" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = RolloutStatus), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
) -> ApiResult<RolloutStatus> {
    Ok(Json(st.fleet().rollout_status(&app, &key).await?))
}

/// Which machines a percentage (or the next ramp step) would add.
#[utoipa::path(get, path = "/api/v1/apps/{app}/groups/{group}/rollout/preview", tag = "rollouts",
    params(("app" = String, Path), ("group" = String, Path), PreviewQuery),
    responses((status = 200, body = Preview), (status = 404, body = ErrorBody)))]
pub async fn preview(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
    Query(q): Query<PreviewQuery>,
) -> ApiResult<Preview> {
    Ok(Json(st.fleet().rollout_preview(&app, &key, q).await?))
}

/// Pauses a group's rollout.
#[utoipa::path(post, path = "/api/v1/apps/{app}/groups/{group}/rollout/pause", tag = "rollouts",
    params(("app" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub async fn pause(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
) -> ApiResult<Group> {
    Ok(Json(st.fleet().pause_rollout(&app, &key).await?))
}

/// Resumes a group's rollout (unpauses and clears an auto-halt).
#[utoipa::path(post, path = "/api/v1/apps/{app}/groups/{group}/rollout/resume", tag = "rollouts",
    params(("app" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub async fn resume(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
) -> ApiResult<Group> {
    Ok(Json(st.fleet().resume_rollout(&app, &key).await?))
}
