//! The dashboard's activity (audit) feed page: `GET /ui/activity`, newest first, paged by entry
//! id. The application filter is the feed operation's own ([`Fleet::list_activity`]); kind,
//! severity and text are applied here to the entries it returns, read in batches until the
//! page is full (at most [`SCAN_MAX`] entries per page, the next page continuing where the
//! reading stopped, so nothing is skipped).

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use super::{Dash, failed, html, page, see_other};
use crate::dashboard::pages::activity::{self, FeedPage, Filters};
use crate::dashboard::pages::error_page;
use crate::fleet::feed::ActivityQuery;
use crate::fleet::{Fleet, FleetResult};
use crate::model::{Activity, normalize_appid};

/// Entries per page by default.
const PAGE_DEFAULT: u32 = 50;
/// Most entries per page.
const PAGE_MAX: u32 = 500;
/// Entries read at a time when filtering here.
const SCAN_BATCH: u32 = 500;
/// Most entries read for one page when filtering here.
pub const SCAN_MAX: usize = 5000;

/// This part's routes.
pub fn routes() -> Router<Dash> {
    Router::new().route(activity::PATH, get(feed))
}

/// Query of the activity page: every field as text, empty meaning "not filtered" (a form sends
/// empty fields), numbers read leniently.
#[derive(Debug, Default, Deserialize)]
pub struct FeedQuery {
    /// Application id.
    pub app: Option<String>,
    /// Exact kind.
    pub kind: Option<String>,
    /// Severity.
    pub severity: Option<String>,
    /// Text to look for.
    pub search: Option<String>,
    /// Only entries older than this id.
    pub before: Option<String>,
    /// Entries per page.
    pub limit: Option<String>,
}

/// `GET /ui/activity`: the feed, filtered and paged.
pub async fn feed(
    State(d): State<Dash>,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
) -> Response {
    let Some(v) = d.viewer(&headers) else {
        return see_other("/ui/login");
    };
    let text = |o: Option<String>| o.map(|s| s.trim().to_owned()).unwrap_or_default();
    let number = |o: &Option<String>| o.as_deref().and_then(|s| s.trim().parse::<i64>().ok());
    let app = text(q.app);
    let filters = Filters {
        app: if app.is_empty() {
            app
        } else {
            normalize_appid(&app)
        },
        kind: text(q.kind),
        severity: text(q.severity).to_lowercase(),
        search: text(q.search),
        before: number(&q.before).filter(|b| *b > 0),
        limit: number(&q.limit)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(PAGE_DEFAULT)
            .clamp(1, PAGE_MAX),
    };
    if !filters.severity.is_empty()
        && !["info", "success", "warning", "error"].contains(&filters.severity.as_str())
    {
        return html(
            StatusCode::BAD_REQUEST,
            error_page(
                Some(&v),
                400,
                &format!(
                    "unknown severity {:?}: it is one of info, success, warning, error",
                    filters.severity
                ),
            ),
        );
    }
    let fleet = d.app.fleet();
    match read_page(&fleet, &filters).await {
        Ok(p) => page(activity::render(&v, &filters, &fleet.catalogue(), &p)),
        Err(e) => failed(Some(&v), e),
    }
}

/// The page of entries `f` asks for, and where the next (older) one starts.
async fn read_page(fleet: &Fleet, f: &Filters) -> FleetResult<FeedPage> {
    let app = (!f.app.is_empty()).then(|| f.app.clone());
    let limit = f.limit as usize;
    if !f.scans() {
        // One more than shown: whether there is an older page.
        let mut entries = fleet
            .list_activity(ActivityQuery {
                app,
                before: f.before,
                limit: Some(f.limit + 1),
            })
            .await?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        return Ok(FeedPage {
            older: more.then(|| entries.last().map(|e| e.id)).flatten(),
            scanned: entries.len(),
            entries,
            cut_short: false,
        });
    }
    let mut entries = Vec::new();
    let mut cursor = f.before;
    let mut scanned = 0;
    loop {
        let batch = fleet
            .list_activity(ActivityQuery {
                app: app.clone(),
                before: cursor,
                limit: Some(SCAN_BATCH),
            })
            .await?;
        let end = batch.len() < SCAN_BATCH as usize;
        for e in batch {
            scanned += 1;
            cursor = Some(e.id);
            if !f.matches(&e) {
                continue;
            }
            if entries.len() == limit {
                // One match beyond the page: there is an older page, from the last one shown.
                let older = entries.last().map(|shown: &Activity| shown.id);
                return Ok(FeedPage {
                    entries,
                    older,
                    scanned,
                    cut_short: false,
                });
            }
            entries.push(e);
        }
        if end {
            return Ok(FeedPage {
                entries,
                older: None,
                scanned,
                cut_short: false,
            });
        }
        if scanned >= SCAN_MAX {
            let full = entries.len() == limit;
            return Ok(FeedPage {
                entries,
                older: cursor,
                scanned,
                cut_short: !full,
            });
        }
    }
}
