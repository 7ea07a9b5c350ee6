//! The rollout part of the admin API: a group's rollout status, a preview of which machines a
//! percentage (or the next ramp step) would add, and explicit pause / resume (resume also clears
//! an auto-halt).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::admin::{activity, find_app, find_group, now, reload};
use crate::error::{ApiError, ErrorBody};
use crate::model::{Group, normalize_arch};
use crate::rollout::RolloutSpec;
use crate::rollout::status::{Preview, RolloutStatus, preview as preview_of, summarize};
use crate::store::StoreError;

type ApiResult<T> = Result<Json<T>, ApiError>;

fn spec_of(g: &Group) -> Result<RolloutSpec, ApiError> {
    RolloutSpec::from_policy(&g.policy).map_err(|e| ApiError::Internal(e.to_string()))
}

fn target_version(st: &AppState, g: &Group) -> Option<String> {
    let cat = st.service.catalogue.get();
    let ch = cat.channel(g.channel_id.as_deref()?)?;
    let arch = ch
        .packages
        .keys()
        .next()
        .map_or_else(|| "amd64".to_owned(), |a| normalize_arch(a));
    cat.channel_package(ch, &arch).map(|p| p.version.clone())
}

/// A group's rollout status.
#[utoipa::path(get, path = "/api/v1/apps/{app}/groups/{group}/rollout", tag = "rollouts",
    params(("app" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = RolloutStatus), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
) -> ApiResult<RolloutStatus> {
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    let g = find_group(&cat, &a.id, &key)?;
    let spec = spec_of(&g)?;
    let target = target_version(&st, &g);
    let t = now(&st);
    let grants = match &target {
        Some(v) => st.service.rollouts.grants.grant_stats(&g.id, v, t).await?,
        None => Default::default(),
    };
    st.service.checkins.flush().await?;
    let rows = st.store.group_instances(&a.id, &g.id).await?;
    Ok(Json(summarize(
        &a.id,
        &g.id,
        &g.name,
        g.policy.paused,
        &spec,
        target,
        &rows,
        grants,
        t,
    )))
}

/// Query of the preview.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PreviewQuery {
    /// Percentage to preview [default: the next ramp step, else the current percentage].
    pub percent: Option<f64>,
    /// How many machines to list [default 100, at most 10000].
    pub limit: Option<usize>,
}

/// Which machines a percentage (or the next ramp step) would add.
#[utoipa::path(get, path = "/api/v1/apps/{app}/groups/{group}/rollout/preview", tag = "rollouts",
    params(("app" = String, Path), ("group" = String, Path), PreviewQuery),
    responses((status = 200, body = Preview), (status = 404, body = ErrorBody)))]
pub async fn preview(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
    Query(q): Query<PreviewQuery>,
) -> ApiResult<Preview> {
    if q.percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        return Err(ApiError::BadRequest(
            "percent must be within 0..=100".into(),
        ));
    }
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    let g = find_group(&cat, &a.id, &key)?;
    let spec = spec_of(&g)?;
    let target = target_version(&st, &g);
    st.service.checkins.flush().await?;
    let rows = st.store.group_instances(&a.id, &g.id).await?;
    Ok(Json(preview_of(
        &a.id,
        &spec,
        &cat.data().machine_aliases,
        target.as_deref(),
        q.percent,
        &rows,
        q.limit.unwrap_or(100).min(10_000),
        now(&st),
    )))
}

/// Times a pause or resume is tried again when the group changed under it (an auto-halt
/// committed between the read and the write).
const STATE_ATTEMPTS: usize = 3;

async fn set_state(st: &AppState, app: &str, key: &str, pause: bool) -> ApiResult<Group> {
    let _g = st.admin_lock.lock().await;
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, app)?;
    let mut attempt = 1;
    loop {
        // Re-read from the store: another replica may have halted the rollout meanwhile.
        reload(st).await?;
        let cat = st.service.catalogue.get();
        let mut g = find_group(&cat, &a.id, key)?;
        let seen = g.clone();
        let mut spec = spec_of(&g)?;
        let (kind, msg) = if pause {
            g.policy.paused = true;
            (
                "rollout_paused",
                format!("rollout of group {} paused", g.name),
            )
        } else {
            let was = spec.halted.take();
            if was.is_some() {
                spec.halt_counted_since = Some(now(st));
            }
            g.policy.paused = false;
            let note = was.map_or(String::new(), |h| format!(" (was halted: {})", h.reason));
            (
                "rollout_resumed",
                format!("rollout of group {} resumed{note}", g.name),
            )
        };
        spec.store_into(&mut g.policy)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        match st
            .store
            .update_group(&g, &seen, &activity(kind, Some(&a.id), msg))
            .await
        {
            Err(StoreError::Conflict(_)) if attempt < STATE_ATTEMPTS => attempt += 1,
            Err(e) => return Err(e.into()),
            Ok(()) => {
                reload(st).await?;
                st.service
                    .rollouts
                    .metrics
                    .set_halted(&a.id, &g.id, spec.halted.is_some());
                return Ok(Json(g));
            }
        }
    }
}

/// Pauses a group's rollout.
#[utoipa::path(post, path = "/api/v1/apps/{app}/groups/{group}/rollout/pause", tag = "rollouts",
    params(("app" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub async fn pause(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
) -> ApiResult<Group> {
    set_state(&st, &app, &key, true).await
}

/// Resumes a group's rollout (unpauses and clears an auto-halt).
#[utoipa::path(post, path = "/api/v1/apps/{app}/groups/{group}/rollout/resume", tag = "rollouts",
    params(("app" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub async fn resume(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
) -> ApiResult<Group> {
    set_state(&st, &app, &key, false).await
}
