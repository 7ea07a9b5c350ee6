//! The feeds an operator reads: client events (what agents reported) and the activity feed
//! (what operators and the server did), newest first, paged by id.

use serde::Deserialize;
use utoipa::IntoParams;

use super::{Fleet, FleetResult};
use crate::model::{Activity, EventRecord, normalize_appid};

/// Entries a page lists by default.
const DEFAULT_PAGE: u32 = 100;
/// Most entries a page lists.
const MAX_PAGE: u32 = 1000;

/// Query of `GET /events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Machine.
    pub machine: Option<String>,
    /// Application.
    pub app: Option<String>,
    /// Only entries with a smaller id (paging).
    pub before: Option<i64>,
    /// Page size (default 100, max 1000).
    pub limit: Option<u32>,
}

/// Query of `GET /activity`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// Application.
    pub app: Option<String>,
    /// Only entries with a smaller id (paging).
    pub before: Option<i64>,
    /// Page size (default 100, max 1000).
    pub limit: Option<u32>,
}

impl Fleet {
    /// Client events, newest first.
    pub async fn list_events(&self, query: EventQuery) -> FleetResult<Vec<EventRecord>> {
        let app = query.app.map(|a| normalize_appid(&a));
        Ok(self
            .store
            .list_events(
                query.machine.as_deref(),
                app.as_deref(),
                query.before,
                query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
            )
            .await?)
    }

    /// The activity feed, newest first.
    pub async fn list_activity(&self, query: ActivityQuery) -> FleetResult<Vec<Activity>> {
        let app = query.app.map(|a| normalize_appid(&a));
        Ok(self
            .store
            .list_activity(
                app.as_deref(),
                query.before,
                query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
            )
            .await?)
    }
}
