//! `/api/v1/packages`: publishing signed payloads, listing and deleting packages
//! ([`crate::fleet::packages`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::ApiResult;
use crate::fleet::packages::{PackageQuery, PublishQuery};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::model::Package;

/// Lists packages.
#[utoipa::path(get, path = "/api/v1/packages", tag = "packages", params(PackageQuery),
    responses((status = 200, body = [Package])))]
pub async fn list_packages(
    State(st): State<AppState>,
    Query(q): Query<PackageQuery>,
) -> ApiResult<Vec<Package>> {
    Ok(Json(st.fleet().list_packages(q)))
}

/// Shows a package.
#[utoipa::path(get, path = "/api/v1/packages/{id}", tag = "packages", params(("id" = String, Path)),
    responses((status = 200, body = Package), (status = 404, body = ErrorBody)))]
pub async fn get_package(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Package> {
    Ok(Json(st.fleet().package(&id)?))
}

/// Publishes a signed payload: verifies its signatures against the trusted publisher keys and
/// its data against the manifest, reads app/version/arch/kind from the manifest, computes SHA-1
/// and SHA-256, and stores it content-addressed (or records its external URL).
#[utoipa::path(post, path = "/api/v1/packages", tag = "packages", params(PublishQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Package), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn publish_package(
    State(st): State<AppState>,
    Query(q): Query<PublishQuery>,
    body: Body,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let pkg = st
        .fleet()
        .publish_package(q, body.into_data_stream())
        .await?;
    Ok((StatusCode::CREATED, Json(pkg)))
}

/// Deletes a package no channel points at (and its file when no other package shares it).
#[utoipa::path(delete, path = "/api/v1/packages/{id}", tag = "packages", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_package(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.fleet().delete_package(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
