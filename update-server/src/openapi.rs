//! The OpenAPI document of the admin API (generated with utoipa, committed as
//! `docs/usage/openapi.json` and checked by a test).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::admin::{
    apps, channels, credentials, feed, fleetlock, groups, instances, maintenance, packages,
    rollouts, sync,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The admin API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Platte update server admin API", version = "1"),
    security(("bearer" = [])),
    modifiers(&BearerAuth),
    paths(
        apps::list_apps, apps::create_app, apps::get_app, apps::update_app, apps::delete_app,
        channels::list_channels, channels::create_channel, channels::get_channel,
        channels::update_channel, channels::delete_channel,
        groups::list_groups, groups::create_group, groups::get_group, groups::update_group,
        groups::delete_group,
        rollouts::status, rollouts::preview, rollouts::pause, rollouts::resume,
        packages::list_packages, packages::get_package, packages::publish_package,
        packages::delete_package, packages::publish_reference, packages::add_file_reference,
        packages::upload_file, packages::remove_file, packages::delete_delta,
        instances::list_instances, instances::get_instance, instances::update_instance,
        instances::delete_instance,
        instances::retry_instance,
        credentials::get_credential, credentials::enroll_credential,
        credentials::forget_credential,
        feed::list_events, feed::list_activity,
        maintenance::prune,
        sync::status, sync::run,
        fleetlock::list_groups, fleetlock::get_group, fleetlock::set_slots,
        fleetlock::release_holder,
    ),
    components(schemas(crate::http::error::ErrorBody, crate::http::error::ErrorDetail))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

/// The document as pretty JSON with a final newline (the committed form).
pub fn document_pretty() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}
