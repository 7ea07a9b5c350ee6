//! The HTTP surface, the only part of the server that knows axum: router, shared state, the
//! request-metrics layer, and one handler module per endpoint family. Handlers parse a request,
//! call a domain operation and serialise its answer.
//!
//! Map: [`admin`] is the admin REST API (one file per resource, over [`crate::fleet`]);
//! [`omaha`] the update-check endpoint; [`fleetlock`] the FleetLock protocol endpoints;
//! [`download`] package hosting; [`ops`] health, readiness, metrics and the OpenAPI document;
//! [`dashboard`] the web dashboard at `/` and under `/ui/` (sessions, CSRF, security headers);
//! [`error`] maps domain errors to statuses; [`auth`] the admin tokens; [`listener`],
//! [`connections`] and [`body_deadline`] the hardened accept loop and its limits.

pub mod admin;
pub mod auth;
pub mod body_deadline;
pub mod connections;
pub mod dashboard;
pub mod download;
pub mod error;
pub mod fleetlock;
pub mod listener;
pub mod omaha;
pub mod ops;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use crate::blobs::BlobStore;
use crate::fleet::Fleet;
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
    /// Following an upstream Omaha server.
    pub sync: Arc<crate::sync::Syncer>,
}

impl AppState {
    /// The fleet model's operations over this state's stores (what every admin handler calls).
    pub fn fleet(&self) -> Fleet {
        Fleet {
            store: Arc::clone(&self.store),
            service: Arc::clone(&self.service),
            blobs: Arc::clone(&self.blobs),
            trust: self.trust.clone(),
            max_package_size: self.max_package_size,
            credentials: Arc::clone(&self.credentials),
            write_lock: Arc::clone(&self.admin_lock),
        }
    }
}

/// Builds the router. `session_key`: what the dashboard signs its sessions with;
/// `body_time`: time a client has to send the whole body of an Omaha or FleetLock request
/// (see [`body_deadline`]).
pub fn router(
    state: AppState,
    tokens: Arc<auth::Tokens>,
    session_key: crate::dashboard::SessionKey,
    body_time: std::time::Duration,
) -> Router {
    let dashboard = dashboard::routes(Arc::new(dashboard::Dashboard {
        app: state.clone(),
        tokens: Arc::clone(&tokens),
        key: session_key,
    }));
    let api = admin::routes()
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
        .merge(dashboard)
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
