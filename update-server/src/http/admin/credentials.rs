//! `/api/v1/instances/{machine}/credential`: show, enroll and forget the ed25519 public key bound
//! to a machine id ([`crate::fleet::credentials`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::fleet::credentials::EnrollBody;
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::store::credential::MachineCredential;

/// Shows the key bound to a machine id.
#[utoipa::path(get, path = "/api/v1/instances/{machine}/credential", tag = "instances",
    params(("machine" = String, Path)),
    responses((status = 200, body = MachineCredential), (status = 404, body = ErrorBody)))]
pub async fn get_credential(
    State(st): State<AppState>,
    Path(machine): Path<String>,
) -> Result<Json<MachineCredential>, ApiError> {
    Ok(Json(st.fleet().machine_credential(&machine).await?))
}

/// Enrolls a machine's public key, replacing any key bound to it (by enrollment or first use).
#[utoipa::path(put, path = "/api/v1/instances/{machine}/credential", tag = "instances",
    params(("machine" = String, Path)), request_body = EnrollBody,
    responses((status = 200, body = MachineCredential), (status = 400, body = ErrorBody)))]
pub async fn enroll_credential(
    State(st): State<AppState>,
    Path(machine): Path<String>,
    Json(body): Json<EnrollBody>,
) -> Result<Json<MachineCredential>, ApiError> {
    Ok(Json(st.fleet().enroll_credential(&machine, body).await?))
}

/// Forgets the key bound to a machine id: its next signed request binds a new one (if trust on
/// first use is on) or it stays unauthenticated until enrolled.
#[utoipa::path(delete, path = "/api/v1/instances/{machine}/credential", tag = "instances",
    params(("machine" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn forget_credential(
    State(st): State<AppState>,
    Path(machine): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.fleet().forget_credential(&machine).await?;
    Ok(StatusCode::NO_CONTENT)
}
