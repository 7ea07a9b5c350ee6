//! HTTP handlers: the two FleetLock protocol endpoints (no admin token; optional shared secret)
//! and the admin routes under `/api/v1/fleetlock/` (bearer token, documented in OpenAPI).

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::FleetLockError;
use super::config::MAX_SLOTS;
use super::protocol::{self, ClientParams, MAX_BODY};
use crate::error::{ApiError, ErrorBody};
use crate::http::AppState;
use crate::store::fleetlock::LockGroup;

/// Checks everything before the semaphore: enabled, header, secret, body.
async fn admit(
    st: &AppState,
    op: &'static str,
    req: Request,
) -> Result<ClientParams, FleetLockError> {
    let fl = &st.fleetlock;
    let checked = async {
        if !fl.settings().enabled {
            return Err(FleetLockError::Disabled);
        }
        protocol::check_header(req.headers())?;
        fl.check_token(req.headers())?;
        let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| {
                FleetLockError::InvalidBody(format!(
                    "unreadable or above the {MAX_BODY}-byte limit: {e}"
                ))
            })?;
        protocol::parse_request(&body)
    }
    .await;
    if let Err(e) = &checked {
        fl.refused(op, e);
    }
    checked
}

/// `POST /fleetlock/v1/pre-reboot`: lock a reboot slot (re-entrant). 200 on success.
pub async fn pre_reboot(
    State(st): State<AppState>,
    req: Request,
) -> Result<StatusCode, FleetLockError> {
    let p = admit(&st, "pre_reboot", req).await?;
    st.fleetlock.pre_reboot(&p).await?;
    Ok(StatusCode::OK)
}

/// `POST /fleetlock/v1/steady-state`: release the slot if held (idempotent). 200 on success.
pub async fn steady_state(
    State(st): State<AppState>,
    req: Request,
) -> Result<StatusCode, FleetLockError> {
    let p = admit(&st, "steady_state", req).await?;
    st.fleetlock.steady_state(&p).await?;
    Ok(StatusCode::OK)
}

/// Body of `PATCH /fleetlock/groups/{group}`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct SetSlots {
    /// Reboot slots of the group (0 stops every reboot of the group).
    pub slots: u32,
}

fn check_group(group: &str) -> Result<(), ApiError> {
    if protocol::valid_group(group) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid FleetLock group {:?}: it must match ^[a-zA-Z0-9.-]+$",
            group.chars().take(64).collect::<String>()
        )))
    }
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
    check_group(&group)?;
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
    check_group(&group)?;
    if b.slots > MAX_SLOTS {
        return Err(ApiError::BadRequest(format!(
            "slots {} is above {MAX_SLOTS}",
            b.slots
        )));
    }
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
    check_group(&group)?;
    if st.fleetlock.force_release(&group, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "FleetLock holder {id} in group {group}"
        )))
    }
}
