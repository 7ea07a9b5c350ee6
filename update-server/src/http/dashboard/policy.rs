//! The policy editor and new groups: `GET`/`POST /ui/apps/{app}/groups/{group}/policy` (the
//! form; its **Preview** shows what the submitted policy would make eligible without saving it,
//! its **Save** replaces the policy as `PATCH /api/v1/apps/{app}/groups/{group}` does) and
//! `GET`/`POST /ui/apps/{app}/groups/new` (creates a group as `POST /api/v1/apps/{app}/groups`
//! does). Every post is checked by [`Dashboard::authorize_post`]: a preview changes nothing and
//! any logged-in role may ask for one; saving and creating need the admin role.
//!
//! [`Dashboard::authorize_post`]: super::Dashboard

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::pages::DoneQuery;
use super::{Dash, failed, form_fields, html, refuse, see_other};
use crate::dashboard::Viewer;
use crate::dashboard::pages::group;
use crate::dashboard::pages::policy::{
    EditorNotice, EditorPage, FORM, FieldErrors, NewGroupFields, NewGroupPage,
    PREVIEW_HORIZON_SECS, PolicyFields, href, render_editor, render_new_group,
};
use crate::fleet::groups::{CreateGroup, UpdateGroup};
use crate::fleet::{Fleet, FleetError, FleetResult, find_app, find_group};
use crate::model::{App, Group, GroupPolicy};
use crate::rollout::RolloutSpec;

/// Machines each list of a preview shows.
const PREVIEW_LISTED: usize = 20;

/// This part's routes.
pub fn routes() -> Router<Dash> {
    Router::new()
        .route(
            "/ui/apps/{app}/groups/new",
            get(new_group_form).post(create_group),
        )
        .route(
            "/ui/apps/{app}/groups/{group}/policy",
            get(editor).post(submit),
        )
}

/// Fields of the policy editor's form.
#[derive(Debug, Default, Deserialize)]
pub struct PolicyForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// `preview` or `save` (the button pressed).
    #[serde(default)]
    pub action: String,
    /// The digest of the stored policy the editor was opened on ([`policy_digest`]).
    #[serde(default)]
    pub shown: String,
    /// The policy's fields.
    #[serde(flatten)]
    pub fields: PolicyFields,
}

/// Fields of the new-group form.
#[derive(Debug, Default, Deserialize)]
pub struct NewGroupForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// The group's fields.
    #[serde(flatten)]
    pub fields: NewGroupFields,
}

/// A digest of a stored policy (`paused` and the auto-halt state included): a save is refused
/// when the policy is no longer the one the editor was opened on.
pub fn policy_digest(policy: &GroupPolicy) -> String {
    let json = serde_json::to_vec(policy).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..16])
}

/// The application, the group and the application's groups.
fn load(fleet: &Fleet, app: &str, key: &str) -> FleetResult<(App, Group, Vec<Group>)> {
    let cat = fleet.catalogue();
    let a = find_app(&cat, app)?;
    let g = find_group(&cat, &a.id, key)?;
    let groups = fleet.list_groups(&a.id)?;
    Ok((a, g, groups))
}

/// `GET /ui/apps/{app}/groups/{group}/policy`: the editor, showing the stored policy.
pub async fn editor(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((app, key)): Path<(String, String)>,
    Query(q): Query<DoneQuery>,
) -> Response {
    let Some(v) = d.viewer(&headers) else {
        return see_other("/ui/login");
    };
    let fleet = d.app.fleet();
    let (a, g, groups) = match load(&fleet, &app, &key) {
        Ok(loaded) => loaded,
        Err(e) => return failed(Some(&v), e),
    };
    let spec = match RolloutSpec::from_policy(&g.policy) {
        Ok(s) => s,
        Err(e) => return failed(Some(&v), FleetError::Internal(e.to_string())),
    };
    let page = EditorPage {
        fields: PolicyFields::from_spec(&spec, g.policy.machine_credential),
        shown: policy_digest(&g.policy),
        app: a,
        group: g,
        groups,
        errors: FieldErrors::default(),
        preview: None,
        notice: q.done.as_deref().and_then(EditorNotice::parse),
    };
    super::page(render_editor(&v, &page))
}

/// `POST /ui/apps/{app}/groups/{group}/policy`: a preview (any role) or a save (admin).
pub async fn submit(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((app, key)): Path<(String, String)>,
    form: Result<Form<PolicyForm>, FormRejection>,
) -> Response {
    let f = form_fields(form);
    let save = f.action != "preview";
    let v = match d.authorize_post(&headers, &f.csrf, save) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    if save && f.action != "save" {
        return html(
            StatusCode::BAD_REQUEST,
            crate::dashboard::pages::error_page(
                Some(&v),
                400,
                "Use the editor's Preview or Save button; nothing was changed.",
            ),
        );
    }
    let fleet = d.app.fleet();
    if save {
        // Compare with the policy as committed (another replica, or an auto-halt, may have
        // changed it since this process's snapshot).
        if let Err(e) = fleet.reload().await {
            return failed(Some(&v), e);
        }
    }
    let (a, g, groups) = match load(&fleet, &app, &key) {
        Ok(loaded) => loaded,
        Err(e) => return failed(Some(&v), e),
    };
    let candidate = f.fields.to_policy(&g.policy, &groups);
    let stored_digest = policy_digest(&g.policy);
    let mut page = EditorPage {
        app: a,
        group: g,
        groups,
        fields: f.fields,
        errors: FieldErrors::default(),
        preview: None,
        shown: f.shown,
        notice: None,
    };
    let candidate = match candidate {
        Ok(p) => p,
        Err(errors) => {
            page.errors = errors;
            return editor_answer(&v, StatusCode::BAD_REQUEST, &page);
        }
    };
    if !save {
        let previewed = fleet
            .preview_policy(
                &page.app.id,
                &page.group.id,
                &candidate,
                fleet.now(),
                PREVIEW_HORIZON_SECS,
                PREVIEW_LISTED,
            )
            .await;
        return match previewed {
            Ok(p) => {
                page.preview = Some(p);
                editor_answer(&v, StatusCode::OK, &page)
            }
            Err(FleetError::Invalid(m)) => {
                page.errors.add(FORM, m);
                editor_answer(&v, StatusCode::BAD_REQUEST, &page)
            }
            Err(e) => failed(Some(&v), e),
        };
    }
    if page.shown != stored_digest {
        page.errors.add(
            FORM,
            "The group's policy changed since this editor was opened (another operator, a pause, \
             a resume or an auto-halt); nothing was saved. The banners show its state now: \
             check the values below and save again to replace it with them.",
        );
        page.shown = stored_digest;
        return editor_answer(&v, StatusCode::CONFLICT, &page);
    }
    let update = UpdateGroup {
        policy: Some(candidate),
        ..UpdateGroup::default()
    };
    // The check again, under the write lock, against the group as committed then: a pause
    // (or another save) that lands after the check above is not overwritten either.
    let shown = page.shown.clone();
    match fleet
        .update_group_if(&page.app.id, &page.group.id, update, |now| {
            policy_digest(&now.policy) == shown
        })
        .await
    {
        Ok(g) => {
            tracing::info!(app = %g.app_id, group = %g.id, "group policy saved from the dashboard");
            see_other(&format!("{}?done=policy", group::href(&g.app_id, &g.id)))
        }
        Err(FleetError::Invalid(m)) => {
            page.errors.add(FORM, m);
            editor_answer(&v, StatusCode::BAD_REQUEST, &page)
        }
        Err(FleetError::Conflict(m)) => {
            page.errors.add(
                FORM,
                format!(
                    "{m}: the group changed while saving; nothing was saved. Open the editor again."
                ),
            );
            editor_answer(&v, StatusCode::CONFLICT, &page)
        }
        Err(e) => failed(Some(&v), e),
    }
}

/// The editor page with `status`.
fn editor_answer(v: &Viewer, status: StatusCode, page: &EditorPage) -> Response {
    html(status, render_editor(v, page))
}

/// `GET /ui/apps/{app}/groups/new`: the form that creates a group (admin only).
pub async fn new_group_form(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> Response {
    let Some(v) = d.viewer(&headers) else {
        return see_other("/ui/login");
    };
    if !v.may_write() {
        return refuse(
            Some(&v),
            "You are logged in with the read-only token: it may not create groups.",
        );
    }
    new_group_page(
        &d,
        &v,
        &app,
        NewGroupFields::default(),
        FieldErrors::default(),
        StatusCode::OK,
    )
}

/// The new-group form with `fields`, `errors` and `status`.
fn new_group_page(
    d: &Dash,
    v: &Viewer,
    app: &str,
    fields: NewGroupFields,
    errors: FieldErrors,
    status: StatusCode,
) -> Response {
    let fleet = d.app.fleet();
    let read = || -> FleetResult<NewGroupPage> {
        let a = find_app(&fleet.catalogue(), app)?;
        let channels = fleet.list_channels(&a.id)?;
        Ok(NewGroupPage {
            app: a,
            channels,
            fields,
            errors,
        })
    };
    match read() {
        Ok(p) => html(status, render_new_group(v, &p)),
        Err(e) => failed(Some(v), e),
    }
}

/// `POST /ui/apps/{app}/groups/new`: creates the group, then opens its policy editor.
pub async fn create_group(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(app): Path<String>,
    form: Result<Form<NewGroupForm>, FormRejection>,
) -> Response {
    let f = form_fields(form);
    let v = match d.authorize_post(&headers, &f.csrf, true) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let fields = f.fields;
    let fleet = d.app.fleet();
    let channels = match find_app(&fleet.catalogue(), &app).and_then(|a| fleet.list_channels(&a.id))
    {
        Ok(c) => c,
        Err(e) => return failed(Some(&v), e),
    };
    let mut errors = FieldErrors::default();
    let channel = fields.channel.trim();
    if !channel.is_empty() && !channels.iter().any(|c| c.id == channel) {
        errors.add(
            "channel",
            format!("no channel {channel:?} in this application"),
        );
    }
    let name = fields.name.trim();
    let track = fields.track.trim();
    if !errors.is_empty() {
        return new_group_page(&d, &v, &app, fields, errors, StatusCode::BAD_REQUEST);
    }
    let input = CreateGroup {
        id: None,
        name: name.to_owned(),
        track: (!track.is_empty()).then(|| track.to_owned()),
        channel: (!channel.is_empty()).then(|| channel.to_owned()),
        description: fields.description.trim().to_owned(),
        policy: GroupPolicy {
            paused: fields.paused.as_deref() == Some("yes"),
            ..GroupPolicy::default()
        },
    };
    match fleet.create_group(&app, input).await {
        Ok(g) => {
            tracing::info!(app = %g.app_id, group = %g.id, "group created from the dashboard");
            see_other(&format!("{}?done=created", href(&g.app_id, &g.id)))
        }
        Err(FleetError::Invalid(m)) => {
            let field = ["name", "track"]
                .into_iter()
                .find(|f| m.starts_with(&format!("{f} ")))
                .unwrap_or(FORM);
            errors.add(field, m);
            new_group_page(&d, &v, &app, fields, errors, StatusCode::BAD_REQUEST)
        }
        Err(FleetError::Conflict(m)) => {
            // The store's only uniqueness rule on groups: one track per application (the
            // track is the name unless given).
            if m.contains("already exists") {
                let (field, used) = if track.is_empty() {
                    ("name", name)
                } else {
                    ("track", track)
                };
                errors.add(
                    field,
                    format!(
                        "a group with the track {used:?} already exists in this application: \
                         choose another {field}"
                    ),
                );
            } else {
                errors.add(FORM, m);
            }
            new_group_page(&d, &v, &app, fields, errors, StatusCode::CONFLICT)
        }
        Err(e) => failed(Some(&v), e),
    }
}
