//! `/api/v1/apps/{app}/channels`: channels ([`crate::fleet::channels`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::ApiResult;
use crate::fleet::channels::{CreateChannel, UpdateChannel};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::model::Channel;

/// Lists an application's channels.
#[utoipa::path(get, path = "/api/v1/apps/{app}/channels", tag = "channels", params(("app" = String, Path)),
    responses((status = 200, body = [Channel])))]
pub async fn list_channels(
    State(st): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Vec<Channel>> {
    Ok(Json(st.fleet().list_channels(&app)?))
}

/// Creates a channel.
#[utoipa::path(post, path = "/api/v1/apps/{app}/channels", tag = "channels", params(("app" = String, Path)),
    request_body = CreateChannel, responses((status = 201, body = Channel), (status = 409, body = ErrorBody)))]
pub async fn create_channel(
    State(st): State<AppState>,
    Path(app): Path<String>,
    Json(b): Json<CreateChannel>,
) -> Result<(StatusCode, Json<Channel>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(st.fleet().create_channel(&app, b).await?),
    ))
}

/// Shows a channel (by id or name).
#[utoipa::path(get, path = "/api/v1/apps/{app}/channels/{channel}", tag = "channels",
    params(("app" = String, Path), ("channel" = String, Path)), responses((status = 200, body = Channel), (status = 404, body = ErrorBody)))]
pub async fn get_channel(
    State(st): State<AppState>,
    Path((app, ch)): Path<(String, String)>,
) -> ApiResult<Channel> {
    Ok(Json(st.fleet().channel(&app, &ch)?))
}

/// Renames a channel or re-points it at packages.
#[utoipa::path(patch, path = "/api/v1/apps/{app}/channels/{channel}", tag = "channels",
    params(("app" = String, Path), ("channel" = String, Path)), request_body = UpdateChannel,
    responses((status = 200, body = Channel), (status = 404, body = ErrorBody)))]
pub async fn update_channel(
    State(st): State<AppState>,
    Path((app, ch)): Path<(String, String)>,
    Json(b): Json<UpdateChannel>,
) -> ApiResult<Channel> {
    Ok(Json(st.fleet().update_channel(&app, &ch, b).await?))
}

/// Deletes a channel (groups following it are detached).
#[utoipa::path(delete, path = "/api/v1/apps/{app}/channels/{channel}", tag = "channels",
    params(("app" = String, Path), ("channel" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_channel(
    State(st): State<AppState>,
    Path((app, ch)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.fleet().delete_channel(&app, &ch).await?;
    Ok(StatusCode::NO_CONTENT)
}
