//! The dashboard's forms (POST): pause and resume a rollout (each with a confirmation box),
//! clear a machine's refusal. Each is checked by [`Dashboard::authorize_post`] (same site,
//! session, CSRF token, admin role) and then calls the same [`crate::fleet`] operation as the
//! admin API; success leads back to the page with a notice (`303 See Other`).
//!
//! [`Dashboard::authorize_post`]: super::Dashboard

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Dash, failed, form_fields, html, see_other};
use crate::dashboard::pages::{error_page, group, instances};
use crate::fleet::instances::RetryQuery;

/// Fields of the pause and resume forms.
#[derive(Debug, Default, Deserialize)]
pub struct ConfirmForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// `yes` when the confirmation box is ticked.
    pub confirm: Option<String>,
    /// The halt the page showed ([`group::shown_halt`]); a resume is refused when the group's
    /// halt is no longer that one.
    pub shown: Option<String>,
}

/// Fields of the retry form.
#[derive(Debug, Default, Deserialize)]
pub struct RetryForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// Only this application.
    pub app: Option<String>,
    /// Only this version.
    pub version: Option<String>,
}

/// `POST /ui/apps/{app}/groups/{group}/pause`.
pub async fn pause(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((app, key)): Path<(String, String)>,
    form: Result<Form<ConfirmForm>, FormRejection>,
) -> Response {
    set_paused(d, headers, app, key, form_fields(form), true).await
}

/// `POST /ui/apps/{app}/groups/{group}/resume` (also clears an auto-halt).
pub async fn resume(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((app, key)): Path<(String, String)>,
    form: Result<Form<ConfirmForm>, FormRejection>,
) -> Response {
    set_paused(d, headers, app, key, form_fields(form), false).await
}

async fn set_paused(
    d: Dash,
    headers: HeaderMap,
    app: String,
    key: String,
    f: ConfirmForm,
    pause: bool,
) -> Response {
    let v = match d.authorize_confirmed(
        &headers,
        &f.csrf,
        f.confirm.as_deref(),
        "change the rollout",
    ) {
        Ok(v) => v,
        Err(not) => return not.into_response(),
    };
    let fleet = d.app.fleet();
    if !pause {
        // Resuming clears a halt: only the one the operator saw.
        let now = match fleet.group(&app, &key) {
            Ok(g) => group::shown_halt(&g.policy),
            Err(e) => return failed(Some(&v), e),
        };
        if f.shown.as_deref() != Some(now.as_str()) {
            return html(
                StatusCode::CONFLICT,
                error_page(
                    Some(&v),
                    409,
                    "The rollout changed since the page was shown (it halted, or a halt was \
                     cleared); nothing was changed. Look at the group again before resuming.",
                ),
            );
        }
    }
    let done = if pause {
        fleet.pause_rollout(&app, &key).await
    } else {
        fleet.resume_rollout(&app, &key).await
    };
    match done {
        Ok(g) => {
            tracing::info!(app = %g.app_id, group = %g.id, paused = pause, "rollout changed from the dashboard");
            let what = if pause { "paused" } else { "resumed" };
            see_other(&format!("{}?done={what}", group::href(&g.app_id, &g.id)))
        }
        Err(e) => failed(Some(&v), e),
    }
}

/// `POST /ui/instances/{machine}/retry`: clears the machine's refusal of a version.
pub async fn retry(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(machine): Path<String>,
    form: Result<Form<RetryForm>, FormRejection>,
) -> Response {
    let f = form_fields(form);
    let v = match d.authorize_post(&headers, &f.csrf, true) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let non_empty = |o: Option<String>| o.filter(|s| !s.is_empty());
    let query = RetryQuery {
        app: non_empty(f.app),
        version: non_empty(f.version),
    };
    match d.app.fleet().retry_instance(&machine, query).await {
        Ok(_) => see_other(&format!("{}?done=retried", instances::href(&machine))),
        Err(e) => failed(Some(&v), e),
    }
}
