//! The admin REST API under `/api/v1/`, one file per resource. A handler only parses the
//! request, calls one operation of [`crate::fleet::Fleet`] (or of
//! [`crate::fleetlock::FleetLock`], [`crate::retention::Pruner`]) and serialises its answer;
//! validation, the admin write lock and activity entries belong to the operation. Every write
//! is durable before it answers.

pub mod apps;
pub mod channels;
pub mod credentials;
pub mod feed;
pub mod fleetlock;
pub mod groups;
pub mod instances;
pub mod maintenance;
pub mod packages;
pub mod rollouts;
pub mod sync;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};

use super::AppState;
use super::error::ApiError;

/// What a handler that answers JSON returns.
type ApiResult<T> = Result<Json<T>, ApiError>;

/// The routes under `/api/v1/` that need a bearer token (the caller adds the token check).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/apps", get(apps::list_apps).post(apps::create_app))
        .route(
            "/apps/{app}",
            get(apps::get_app)
                .patch(apps::update_app)
                .delete(apps::delete_app),
        )
        .route(
            "/apps/{app}/channels",
            get(channels::list_channels).post(channels::create_channel),
        )
        .route(
            "/apps/{app}/channels/{channel}",
            get(channels::get_channel)
                .patch(channels::update_channel)
                .delete(channels::delete_channel),
        )
        .route(
            "/apps/{app}/groups",
            get(groups::list_groups).post(groups::create_group),
        )
        .route("/apps/{app}/groups/{group}/rollout", get(rollouts::status))
        .route(
            "/apps/{app}/groups/{group}/rollout/preview",
            get(rollouts::preview),
        )
        .route(
            "/apps/{app}/groups/{group}/rollout/pause",
            post(rollouts::pause),
        )
        .route(
            "/apps/{app}/groups/{group}/rollout/resume",
            post(rollouts::resume),
        )
        .route(
            "/apps/{app}/groups/{group}",
            get(groups::get_group)
                .patch(groups::update_group)
                .delete(groups::delete_group),
        )
        .route(
            "/packages",
            get(packages::list_packages)
                .post(packages::publish_package)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/packages/by-reference", post(packages::publish_reference))
        .route(
            "/packages/{id}",
            get(packages::get_package).delete(packages::delete_package),
        )
        .route("/packages/{id}/files", post(packages::add_file_reference))
        .route(
            "/packages/{id}/deltas/{source}",
            delete(packages::delete_delta),
        )
        .route(
            "/packages/{id}/files/{name}",
            put(packages::upload_file)
                .delete(packages::remove_file)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/instances", get(instances::list_instances))
        .route(
            "/instances/{machine}",
            get(instances::get_instance)
                .patch(instances::update_instance)
                .delete(instances::delete_instance),
        )
        .route(
            "/instances/{machine}/retry",
            post(instances::retry_instance),
        )
        .route(
            "/instances/{machine}/credential",
            get(credentials::get_credential)
                .put(credentials::enroll_credential)
                .delete(credentials::forget_credential),
        )
        .route("/events", get(feed::list_events))
        .route("/activity", get(feed::list_activity))
        .route("/maintenance/prune", post(maintenance::prune))
        .route("/sync", get(sync::status).post(sync::run))
        .route("/fleetlock/groups", get(fleetlock::list_groups))
        .route(
            "/fleetlock/groups/{group}",
            get(fleetlock::get_group).patch(fleetlock::set_slots),
        )
        .route(
            "/fleetlock/groups/{group}/holders/{id}",
            delete(fleetlock::release_holder),
        )
}
