//! Operational routes: `/healthz` (process alive), `/readyz` (database answers), `/metrics`
//! (Prometheus text) and `/api/v1/openapi.json`.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use crate::metrics::{InstanceLabels, MAX_VERSION_LABELS};
use crate::store::InstanceCount;

/// Always 200: the process serves HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the database answers, else 503.
pub async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    match st.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {e}\n"),
        ),
    }
}

/// The versions of each app the instance gauge labels by name: the [`MAX_VERSION_LABELS`] most
/// common ones (ties broken by version text), so that versions clients invent cannot add series.
fn labelled_versions(counts: &[InstanceCount]) -> HashMap<String, HashSet<String>> {
    let mut per_app: HashMap<(String, String), i64> = HashMap::new();
    for c in counts {
        *per_app
            .entry((c.app_id.clone(), c.version.clone()))
            .or_default() += c.count;
    }
    let mut by_app: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for ((app, version), n) in per_app {
        by_app.entry(app).or_default().push((n, version));
    }
    by_app
        .into_iter()
        .map(|(app, mut versions)| {
            versions.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let keep = versions.into_iter().take(MAX_VERSION_LABELS);
            (app, keep.map(|(_, v)| v).collect())
        })
        .collect()
}

/// Prometheus text exposition; the instance gauge is recomputed from the database (one
/// aggregate query per scrape, after pending check-ins are written).
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let cat = st.service.catalogue.get();
    let counted = match st.service.checkins.flush().await {
        Ok(_) => st.store.instance_counts().await,
        Err(e) => Err(e),
    };
    match counted {
        Ok(rows) => {
            let named = labelled_versions(&rows);
            let mut counts: HashMap<InstanceLabels, i64> = HashMap::new();
            for c in rows {
                let group = c.group_id.as_deref().and_then(|g| cat.group(g));
                let channel = group
                    .and_then(|g| g.channel_id.as_deref())
                    .and_then(|ch| cat.channel(ch));
                let version = if named.get(&c.app_id).is_some_and(|v| v.contains(&c.version)) {
                    c.version
                } else {
                    "other".to_owned()
                };
                let labels = InstanceLabels {
                    app: c.app_id,
                    group: group.map(|g| g.name.clone()).unwrap_or_default(),
                    channel: channel.map(|ch| ch.name.clone()).unwrap_or_default(),
                    version,
                    status: c.status.as_str().to_owned(),
                };
                *counts.entry(labels).or_default() += c.count;
            }
            st.metrics.instances.clear();
            for (labels, n) in counts {
                st.metrics.instances.get_or_create(&labels).set(n);
            }
        }
        // The other series are still worth serving; the gauge keeps its last values.
        Err(e) => tracing::warn!(error = %e, "counting instances for /metrics failed"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
}

/// The OpenAPI document of the admin API.
pub async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}
