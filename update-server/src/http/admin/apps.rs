//! `/api/v1/apps`: applications ([`crate::fleet::apps`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::ApiResult;
use crate::fleet::apps::{CreateApp, UpdateApp};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::model::App;

/// Lists applications.
#[utoipa::path(get, path = "/api/v1/apps", tag = "apps", responses((status = 200, body = [App])))]
pub async fn list_apps(State(st): State<AppState>) -> ApiResult<Vec<App>> {
    Ok(Json(st.fleet().list_apps()))
}

/// Creates an application.
#[utoipa::path(post, path = "/api/v1/apps", tag = "apps", request_body = CreateApp,
    responses((status = 201, body = App), (status = 409, body = ErrorBody)))]
pub async fn create_app(
    State(st): State<AppState>,
    Json(b): Json<CreateApp>,
) -> Result<(StatusCode, Json<App>), ApiError> {
    Ok((StatusCode::CREATED, Json(st.fleet().create_app(b).await?)))
}

/// Shows an application.
#[utoipa::path(get, path = "/api/v1/apps/{app}", tag = "apps", params(("app" = String, Path)),
    responses((status = 200, body = App), (status = 404, body = ErrorBody)))]
pub async fn get_app(State(st): State<AppState>, Path(app): Path<String>) -> ApiResult<App> {
    Ok(Json(st.fleet().app(&app)?))
}

/// Updates an application.
#[utoipa::path(patch, path = "/api/v1/apps/{app}", tag = "apps", params(("app" = String, Path)),
    request_body = UpdateApp, responses((status = 200, body = App), (status = 404, body = ErrorBody)))]
pub async fn update_app(
    State(st): State<AppState>,
    Path(app): Path<String>,
    Json(b): Json<UpdateApp>,
) -> ApiResult<App> {
    Ok(Json(st.fleet().update_app(&app, b).await?))
}

/// Deletes an application (refused while it has packages).
#[utoipa::path(delete, path = "/api/v1/apps/{app}", tag = "apps", params(("app" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_app(
    State(st): State<AppState>,
    Path(app): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.fleet().delete_app(&app).await?;
    Ok(StatusCode::NO_CONTENT)
}
