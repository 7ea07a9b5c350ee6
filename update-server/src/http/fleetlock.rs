//! The FleetLock protocol endpoints (`/fleetlock/v1/pre-reboot`, `/fleetlock/v1/steady-state`):
//! no admin token, an optional shared secret; errors as the protocol's `{"kind","value"}` JSON.
//! The semaphore is [`crate::fleetlock::FleetLock`]; the wire format is
//! [`crate::fleetlock::protocol`].

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::fleetlock::FleetLockError;
use crate::fleetlock::protocol::{self, ClientParams, ErrorBody, MAX_BODY};

impl IntoResponse for FleetLockError {
    fn into_response(self) -> Response {
        let (status, kind) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %self, "fleetlock request failed");
        }
        let body = ErrorBody {
            kind: kind.to_owned(),
            value: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

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
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(super::auth::bearer_token);
        fl.check_token(presented)?;
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
