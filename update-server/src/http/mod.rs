//! The HTTP surface: router, shared state and the request-metrics layer.

pub mod admin;
pub mod auth;
pub mod body_deadline;
pub mod connections;
pub mod credential;
pub mod download;
pub mod listener;
pub mod maintenance;
pub mod omaha;
pub mod ops;
pub mod rollout;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use crate::blobs::BlobStore;
use crate::fleetlock::http as fleetlock;
use crate::metrics::{EndpointLabels, HttpLabels, Metrics};
use crate::service::UpdateService;
use crate::store::Store;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Update-check service (catalogue, fleet, policy).
    pub service: Arc<UpdateService>,
    /// Package files.
    pub blobs: Arc<BlobStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Trusted publisher keys (publishing is refused without them).
    pub trust: Option<Arc<payloads::TrustStore>>,
    /// Serialises admin writes with the catalogue reload that follows them.
    pub admin_lock: Arc<tokio::sync::Mutex<()>>,
    /// Trusted proxy header carrying the client IP (lower case).
    pub proxy_header: Option<String>,
    /// Largest package upload.
    pub max_package_size: u64,
    /// FleetLock reboot semaphore.
    pub fleetlock: Arc<crate::fleetlock::FleetLock>,
    /// Retention pruner (background runs and `POST /maintenance/prune`).
    pub pruner: Arc<crate::retention::Pruner>,
    /// Machine-credential checks and the keys bound to machine ids.
    pub credentials: Arc<crate::credential::Credentials>,
}

/// Builds the router. `body_time`: time a client has to send the whole body of an Omaha or
/// FleetLock request (see [`body_deadline`]).
pub fn router(
    state: AppState,
    tokens: Arc<auth::Tokens>,
    body_time: std::time::Duration,
) -> Router {
    let api = Router::new()
        .route("/apps", get(admin::list_apps).post(admin::create_app))
        .route(
            "/apps/{app}",
            get(admin::get_app)
                .patch(admin::update_app)
                .delete(admin::delete_app),
        )
        .route(
            "/apps/{app}/channels",
            get(admin::list_channels).post(admin::create_channel),
        )
        .route(
            "/apps/{app}/channels/{channel}",
            get(admin::get_channel)
                .patch(admin::update_channel)
                .delete(admin::delete_channel),
        )
        .route(
            "/apps/{app}/groups",
            get(admin::list_groups).post(admin::create_group),
        )
        .route("/apps/{app}/groups/{group}/rollout", get(rollout::status))
        .route(
            "/apps/{app}/groups/{group}/rollout/preview",
            get(rollout::preview),
        )
        .route(
            "/apps/{app}/groups/{group}/rollout/pause",
            post(rollout::pause),
        )
        .route(
            "/apps/{app}/groups/{group}/rollout/resume",
            post(rollout::resume),
        )
        .route(
            "/apps/{app}/groups/{group}",
            get(admin::get_group)
                .patch(admin::update_group)
                .delete(admin::delete_group),
        )
        .route(
            "/packages",
            get(admin::list_packages)
                .post(admin::publish_package)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/packages/{id}",
            get(admin::get_package).delete(admin::delete_package),
        )
        .route("/instances", get(admin::list_instances))
        .route(
            "/instances/{machine}",
            get(admin::get_instance)
                .patch(admin::update_instance)
                .delete(admin::delete_instance),
        )
        .route("/instances/{machine}/retry", post(admin::retry_instance))
        .route(
            "/instances/{machine}/credential",
            get(credential::get_credential)
                .put(credential::enroll_credential)
                .delete(credential::forget_credential),
        )
        .route("/events", get(admin::list_events))
        .route("/activity", get(admin::list_activity))
        .route("/maintenance/prune", post(maintenance::prune))
        .route("/fleetlock/groups", get(fleetlock::list_groups))
        .route(
            "/fleetlock/groups/{group}",
            get(fleetlock::get_group).patch(fleetlock::set_slots),
        )
        .route(
            "/fleetlock/groups/{group}/holders/{id}",
            axum::routing::delete(fleetlock::release_holder),
        )
        .route_layer(middleware::from_fn_with_state(tokens, auth::require_token))
        .route("/openapi.json", get(ops::openapi));
    // Unauthenticated, small bounded bodies: the whole body within a deadline.
    let bounded = Router::new()
        .route("/v1/update", post(omaha::update))
        .route("/v1/update/", post(omaha::update))
        .route("/fleetlock/v1/pre-reboot", post(fleetlock::pre_reboot))
        .route("/fleetlock/v1/steady-state", post(fleetlock::steady_state))
        .route_layer(middleware::from_fn_with_state(
            body_deadline::BodyDeadline {
                limit: body_time,
                metrics: Arc::clone(&state.metrics),
            },
            body_deadline::limit,
        ));
    let metrics = Arc::clone(&state.metrics);
    Router::new()
        .nest("/api/v1", api)
        .merge(bounded)
        .route("/packages/{sha256}/{name}", get(download::download))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .layer(middleware::from_fn_with_state(metrics, track_requests))
        .with_state(state)
}

async fn track_requests(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // Closed label sets: route templates, `unmatched`, standard methods or `other`.
    let method = crate::metrics::method_label(req.method()).to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            endpoint: endpoint.clone(),
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    metrics
        .http_latency
        .get_or_create(&EndpointLabels { endpoint })
        .observe(start.elapsed().as_secs_f64());
    resp
}
