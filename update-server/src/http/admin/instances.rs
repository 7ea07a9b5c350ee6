//! `/api/v1/instances`: machines, their history, deletion, retries and operator aliases
//! ([`crate::fleet::instances`]).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::ApiResult;
use crate::fleet::instances::{
    DeleteInstanceQuery, InstanceAlias, InstanceDetail, InstancePage, InstanceQuery, RetryAnswer,
    RetryQuery, UpdateInstance,
};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};

/// Lists instances with filters.
#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", params(InstanceQuery),
    responses((status = 200, body = InstancePage), (status = 400, body = ErrorBody)))]
pub async fn list_instances(
    State(st): State<AppState>,
    Query(q): Query<InstanceQuery>,
) -> ApiResult<InstancePage> {
    Ok(Json(st.fleet().list_instances(q).await?))
}

/// Shows a machine: every app with its status history.
#[utoipa::path(get, path = "/api/v1/instances/{machine}", tag = "instances", params(("machine" = String, Path)),
    responses((status = 200, body = InstanceDetail), (status = 404, body = ErrorBody)))]
pub async fn get_instance(
    State(st): State<AppState>,
    Path(machine): Path<String>,
) -> ApiResult<InstanceDetail> {
    Ok(Json(st.fleet().instance(&machine).await?))
}

/// Deletes a machine (retired hosts); it re-registers if it checks in again.
#[utoipa::path(delete, path = "/api/v1/instances/{machine}", tag = "instances",
    params(("machine" = String, Path), DeleteInstanceQuery), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_instance(
    State(st): State<AppState>,
    Path(machine): Path<String>,
    Query(q): Query<DeleteInstanceQuery>,
) -> Result<StatusCode, ApiError> {
    st.fleet().delete_instance(&machine, q).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lets a machine be offered versions it refused again (it rolled back from them or
/// deny-listed them): clears its refusals (for one app or all, one version or all). The next
/// check goes through the rollout policy as usual.
#[utoipa::path(post, path = "/api/v1/instances/{machine}/retry", tag = "instances",
    params(("machine" = String, Path), RetryQuery),
    responses((status = 200, body = RetryAnswer), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn retry_instance(
    State(st): State<AppState>,
    Path(machine): Path<String>,
    Query(q): Query<RetryQuery>,
) -> ApiResult<RetryAnswer> {
    Ok(Json(st.fleet().retry_instance(&machine, q).await?))
}

/// Assigns (or removes) a machine's operator alias: the only alias rollout canaries match.
#[utoipa::path(patch, path = "/api/v1/instances/{machine}", tag = "instances",
    params(("machine" = String, Path)), request_body = UpdateInstance,
    responses((status = 200, body = InstanceAlias), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_instance(
    State(st): State<AppState>,
    Path(machine): Path<String>,
    Json(body): Json<UpdateInstance>,
) -> ApiResult<InstanceAlias> {
    Ok(Json(st.fleet().set_instance_alias(&machine, body).await?))
}
