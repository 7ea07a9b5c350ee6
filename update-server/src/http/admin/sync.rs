//! `/api/v1/sync`: following an upstream Omaha server ([`crate::sync`]): each followed
//! channel's last check, and a pass run on demand.

use axum::Json;
use axum::extract::State;

use super::ApiResult;
use crate::http::AppState;
use crate::http::error::ErrorBody;
use crate::sync::{ChannelReport, SyncStatus};

/// The sync configuration and each followed channel's last check (recorded by whichever
/// replica ran it).
#[utoipa::path(get, path = "/api/v1/sync", tag = "sync",
    responses((status = 200, body = SyncStatus)))]
pub async fn status(State(st): State<AppState>) -> ApiResult<SyncStatus> {
    Ok(Json(st.sync.status(&st.fleet()).await?))
}

/// Runs a sync pass now, in this server process, and reports each channel's outcome (a
/// channel's failure is reported, not an error of the request); 409 while another process runs
/// one.
#[utoipa::path(post, path = "/api/v1/sync", tag = "sync",
    responses((status = 200, body = [ChannelReport]), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn run(State(st): State<AppState>) -> ApiResult<Vec<ChannelReport>> {
    Ok(Json(st.sync.run_leased(&st.fleet()).await?))
}
