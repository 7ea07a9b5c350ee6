//! `/api/v1/maintenance/prune`: runs the retention pruner now (or, with `dry_run=true`, counts
//! what it would delete); the operation is [`crate::retention::Pruner::run`]. Admin token only
//! (a POST).

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::retention::PruneReport;

/// Query of `POST /maintenance/prune`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PruneQuery {
    /// Count what would be deleted, delete nothing [default: false].
    pub dry_run: Option<bool>,
}

/// Prunes old rows now with the server's retention settings (waiting for a background run in
/// progress to finish first) and reports the rows deleted per table. With `dry_run=true`
/// nothing is deleted and the counts are what a run would delete now. While another server
/// process on the same database holds the retention lease (it is pruning), a real run answers
/// 409 naming the holder and when its lease ends.
#[utoipa::path(post, path = "/api/v1/maintenance/prune", tag = "maintenance", params(PruneQuery),
    responses((status = 200, body = PruneReport), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
pub async fn prune(
    State(st): State<AppState>,
    Query(q): Query<PruneQuery>,
) -> Result<Json<PruneReport>, ApiError> {
    Ok(Json(st.pruner.run(q.dry_run.unwrap_or(false)).await?))
}
