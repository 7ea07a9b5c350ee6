//! `/api/v1/packages`: publishing payloads (uploaded or by reference), their extra files,
//! listing and deleting packages ([`crate::fleet::packages`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::ApiResult;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::fleet::packages::reference::{FileReference, PackageReference};
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
/// and SHA-256, and stores it content-addressed (or records its external URL). A delta payload
/// is linked to its full package (of the same app, version and arch, or `delta_of`) once its
/// target image is that package's; the answer is then the full package with its deltas.
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

/// Deletes a package's delta from `source` (and its file when nothing else shares it).
#[utoipa::path(delete, path = "/api/v1/packages/{id}/deltas/{source}", tag = "packages",
    params(("id" = String, Path), ("source" = String, Path, description = "the delta's source version")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_delta(
    State(st): State<AppState>,
    Path((id, source)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.fleet().delete_package_delta(&id, &source).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Publishes a package hosted elsewhere, by reference: URL, size, SHA-1 and SHA-256 (and its
/// extra files); with `verify` the files are downloaded once and checked, with `host` they are
/// also kept and served from here. A Platte payload must be verified.
#[utoipa::path(post, path = "/api/v1/packages/by-reference", tag = "packages",
    request_body = PackageReference,
    responses((status = 201, body = Package), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn publish_reference(
    State(st): State<AppState>,
    Json(input): Json<PackageReference>,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let pkg = st.fleet().publish_reference(input).await?;
    Ok((StatusCode::CREATED, Json(pkg)))
}

/// Query of `POST /packages/{id}/files`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileReferenceQuery {
    /// Download the file once and check its size and digests first [default: false].
    pub verify: Option<bool>,
}

/// Adds an extra file by reference to a package hosted elsewhere (the file lies at the
/// package's codebase).
#[utoipa::path(post, path = "/api/v1/packages/{id}/files", tag = "packages",
    params(("id" = String, Path), FileReferenceQuery), request_body = FileReference,
    responses((status = 201, body = Package), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn add_file_reference(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileReferenceQuery>,
    Json(input): Json<FileReference>,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let pkg = st
        .fleet()
        .add_package_file_reference(&id, input, q.verify.unwrap_or(false))
        .await?;
    Ok((StatusCode::CREATED, Json(pkg)))
}

/// Uploads an extra file of a hosted package (the body is the file).
#[utoipa::path(put, path = "/api/v1/packages/{id}/files/{name}", tag = "packages",
    params(("id" = String, Path), ("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Package), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn upload_file(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    body: Body,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let pkg = st
        .fleet()
        .add_package_file(&id, &name, body.into_data_stream())
        .await?;
    Ok((StatusCode::CREATED, Json(pkg)))
}

/// Removes an extra file of a package.
#[utoipa::path(delete, path = "/api/v1/packages/{id}/files/{name}", tag = "packages",
    params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Package), (status = 404, body = ErrorBody)))]
pub async fn remove_file(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Package> {
    Ok(Json(st.fleet().remove_package_file(&id, &name).await?))
}
