//! `/api/v1/apps/{app}/groups`: groups and their rollout policy ([`crate::fleet::groups`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::ApiResult;
use crate::fleet::groups::{CreateGroup, UpdateGroup};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::model::Group;

/// Lists an application's groups.
#[utoipa::path(get, path = "/api/v1/apps/{app}/groups", tag = "groups", params(("app" = String, Path)),
    responses((status = 200, body = [Group])))]
pub async fn list_groups(
    State(st): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Vec<Group>> {
    Ok(Json(st.fleet().list_groups(&app)?))
}

/// Creates a group.
#[utoipa::path(post, path = "/api/v1/apps/{app}/groups", tag = "groups", params(("app" = String, Path)),
    request_body = CreateGroup, responses((status = 201, body = Group), (status = 409, body = ErrorBody)))]
pub async fn create_group(
    State(st): State<AppState>,
    Path(app): Path<String>,
    Json(b): Json<CreateGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(st.fleet().create_group(&app, b).await?),
    ))
}

/// Shows a group (by id, track or name).
#[utoipa::path(get, path = "/api/v1/apps/{app}/groups/{group}", tag = "groups",
    params(("app" = String, Path), ("group" = String, Path)), responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub async fn get_group(
    State(st): State<AppState>,
    Path((app, g)): Path<(String, String)>,
) -> ApiResult<Group> {
    Ok(Json(st.fleet().group(&app, &g)?))
}

/// Updates a group (name, track, channel, policy). A policy changed by someone else between
/// this server's read and its write (an auto-halt, another replica) is answered 409: read the
/// group again and retry.
#[utoipa::path(patch, path = "/api/v1/apps/{app}/groups/{group}", tag = "groups",
    params(("app" = String, Path), ("group" = String, Path)), request_body = UpdateGroup,
    responses((status = 200, body = Group), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn update_group(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
    Json(b): Json<UpdateGroup>,
) -> ApiResult<Group> {
    Ok(Json(st.fleet().update_group(&app, &key, b).await?))
}

/// Deletes a group.
#[utoipa::path(delete, path = "/api/v1/apps/{app}/groups/{group}", tag = "groups",
    params(("app" = String, Path), ("group" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_group(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.fleet().delete_group(&app, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
