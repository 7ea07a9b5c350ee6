//! The dashboard's version-over-time chart of a group:
//! `GET /ui/apps/{app}/groups/{group}/versions.svg?range=24h|7d|30d|90d`, an SVG image the
//! group page shows (see [`crate::dashboard::chart`] and [`crate::version_history`]).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::Dash;
use crate::dashboard::chart;
use crate::http::error::ApiError;
use crate::version_history::Range;

/// This part's routes.
pub fn routes() -> Router<Dash> {
    Router::new().route(
        "/ui/apps/{app}/groups/{group}/versions.svg",
        get(version_chart),
    )
}

/// Query of the chart.
#[derive(Debug, Default, Deserialize)]
pub struct ChartQuery {
    /// `24h` (default), `7d`, `30d` or `90d`.
    pub range: Option<String>,
}

/// `GET /ui/apps/{app}/groups/{group}/versions.svg`: needs a session (an image gets no login
/// page: 403 without one).
pub async fn version_chart(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((app, group)): Path<(String, String)>,
    Query(q): Query<ChartQuery>,
) -> Response {
    if d.viewer(&headers).is_none() {
        return (StatusCode::FORBIDDEN, "log in to see the chart\n").into_response();
    }
    let range = match q.range.as_deref().filter(|r| !r.is_empty()) {
        None => Range::default(),
        Some(r) => match Range::parse(r) {
            Some(r) => r,
            None => {
                let msg = format!("unknown range {r:?}: use 24h, 7d, 30d or 90d\n");
                return (StatusCode::BAD_REQUEST, msg).into_response();
            }
        },
    };
    match d.app.fleet().version_history(&app, &group, range).await {
        Ok(h) => (
            [(header::CONTENT_TYPE, "image/svg+xml")],
            chart::render(&h).into_string(),
        )
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
