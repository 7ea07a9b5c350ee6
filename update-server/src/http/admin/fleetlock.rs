//! `/api/v1/fleetlock/groups`: FleetLock groups as an operator sees and steers them (slots,
//! holders, forced release); the operations are [`crate::fleetlock::FleetLock`]'s.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::store::fleetlock::LockGroup;

/// Body of `PATCH /fleetlock/groups/{group}`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct SetSlots {
    /// Reboot slots of the group (0 stops every reboot of the group).
    pub slots: u32,
}

/// Lists FleetLock groups with their slots and holders.
#[utoipa::path(get, path = "/api/v1/fleetlock/groups", tag = "fleetlock",
    responses((status = 200, body = [LockGroup])))]
pub async fn list_groups(State(st): State<AppState>) -> Result<Json<Vec<LockGroup>>, ApiError> {
    Ok(Json(st.fleetlock.groups().await?))
}

/// One FleetLock group (an unknown group shows the default slots and no holders).
#[utoipa::path(get, path = "/api/v1/fleetlock/groups/{group}", tag = "fleetlock",
    params(("group" = String, Path)),
    responses((status = 200, body = LockGroup), (status = 400, body = ErrorBody)))]
pub async fn get_group(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> Result<Json<LockGroup>, ApiError> {
    Ok(Json(st.fleetlock.group(&group).await?))
}

/// Sets the number of reboot slots of a group.
#[utoipa::path(patch, path = "/api/v1/fleetlock/groups/{group}", tag = "fleetlock",
    params(("group" = String, Path)), request_body = SetSlots,
    responses((status = 200, body = LockGroup), (status = 400, body = ErrorBody)))]
pub async fn set_slots(
    State(st): State<AppState>,
    Path(group): Path<String>,
    Json(b): Json<SetSlots>,
) -> Result<Json<LockGroup>, ApiError> {
    Ok(Json(st.fleetlock.set_slots(&group, b.slots).await?))
}

/// Releases a holder's slot by force (e.g. a machine that died holding it).
#[utoipa::path(delete, path = "/api/v1/fleetlock/groups/{group}/holders/{id}", tag = "fleetlock",
    params(("group" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn release_holder(
    State(st): State<AppState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.fleetlock.force_release(&group, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
