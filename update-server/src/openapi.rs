//! The OpenAPI document of the admin API (generated with utoipa, committed as
//! `docs/openapi.json` and checked by a test).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::fleetlock::http as fleetlock;
use crate::http::{admin, credential, maintenance, rollout};

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
        admin::list_apps, admin::create_app, admin::get_app, admin::update_app, admin::delete_app,
        admin::list_channels, admin::create_channel, admin::get_channel, admin::update_channel,
        admin::delete_channel,
        admin::list_groups, admin::create_group, admin::get_group, admin::update_group,
        admin::delete_group,
        rollout::status, rollout::preview, rollout::pause, rollout::resume,
        admin::list_packages, admin::get_package, admin::publish_package, admin::delete_package,
        admin::list_instances, admin::get_instance, admin::update_instance,
        admin::delete_instance,
        admin::retry_instance,
        credential::get_credential, credential::enroll_credential,
        credential::forget_credential,
        admin::list_events, admin::list_activity,
        maintenance::prune,
        fleetlock::list_groups, fleetlock::get_group, fleetlock::set_slots,
        fleetlock::release_holder,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail))
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
