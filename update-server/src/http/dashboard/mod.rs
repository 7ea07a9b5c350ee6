//! The dashboard's HTTP side: its routes, the session cookie, the CSRF check of every form,
//! and the security headers of every answer. Pages are rendered by [`crate::dashboard`] from
//! what [`crate::fleet`] operations return; writes go through the same operations as the admin
//! API, so they are validated and recorded in the activity feed alike.
//!
//! Map: [`login`] log in and out; [`pages`] the pages (GET); [`actions`] the forms (POST);
//! [`assets`] the embedded stylesheet and script; [`policy`] the policy editor and new groups;
//! [`packages`] the package list and publishing; [`fleetlock`] the FleetLock page;
//! [`activity`] the audit feed; [`chart`] the version-over-time chart.

pub mod actions;
pub mod activity;
pub mod assets;
pub mod chart;
pub mod fleetlock;
pub mod login;
pub mod packages;
pub mod pages;
pub mod policy;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::Markup;

use super::AppState;
use super::auth::{Access, Tokens};
use super::error::ApiError;
use crate::dashboard::pages::error_page;
use crate::dashboard::session::{COOKIE_NAME, cookie_value};
use crate::dashboard::{Role, Session, SessionKey, Viewer};
use crate::fleet::FleetError;

/// The Content-Security-Policy of every dashboard answer: only this server's own stylesheet,
/// script and images; no inline script or style, no framing, forms post only here.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest form body accepted.
const FORM_LIMIT: usize = 16 * 1024;

/// What the dashboard's handlers share: the server's state, the access tokens and the session
/// key.
#[derive(Debug)]
pub struct Dashboard {
    /// The server's shared state (its fleet operations).
    pub app: AppState,
    /// The admin and read-only tokens one logs in with.
    pub tokens: Arc<Tokens>,
    /// The key sessions are signed with.
    pub key: SessionKey,
}

/// Shared handle of the handlers.
pub type Dash = Arc<Dashboard>;

/// The dashboard's routes: `/` and everything under `/ui/`.
pub fn routes(dashboard: Dash) -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/ui/login", get(login::form).post(login::login))
        .route("/ui/logout", post(login::logout))
        .route("/ui/apps/{app}/groups/{group}", get(pages::group))
        .route("/ui/apps/{app}/groups/{group}/pause", post(actions::pause))
        .route(
            "/ui/apps/{app}/groups/{group}/resume",
            post(actions::resume),
        )
        .route("/ui/instances", get(pages::instances))
        .route("/ui/instances/{machine}", get(pages::instance))
        .route("/ui/instances/{machine}/retry", post(actions::retry))
        .route("/ui/static/{name}", get(assets::serve))
        .merge(policy::routes())
        .merge(fleetlock::routes())
        .merge(activity::routes())
        .merge(chart::routes())
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .merge(packages::routes())
        .layer(middleware::from_fn(security_headers))
        .with_state(dashboard)
}

/// Why a form with a confirmation box is not acted on ([`Dashboard::authorize_confirmed`]).
#[derive(Debug)]
pub enum NotActed {
    /// Refused by [`Dashboard::authorize_post`] (403).
    Refused(Refused),
    /// The confirmation box was not ticked (400): who sent it, and what the form does.
    Unconfirmed(Viewer, String),
}

impl IntoResponse for NotActed {
    fn into_response(self) -> Response {
        match self {
            Self::Refused(r) => r.into_response(),
            Self::Unconfirmed(v, what) => html(
                StatusCode::BAD_REQUEST,
                error_page(
                    Some(&v),
                    400,
                    &format!("Tick the confirmation box to {what}; nothing was changed."),
                ),
            ),
        }
    }
}

/// The fields of a form, or the defaults (no CSRF token, so refused) when the body is not one.
fn form_fields<T: Default>(form: Result<Form<T>, FormRejection>) -> T {
    form.map(|Form(f)| f).unwrap_or_default()
}

/// Middleware: the security headers of every dashboard answer; pages are not cached (they
/// carry the session's CSRF token).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

impl Dashboard {
    /// Now, Unix seconds, from the server's clock.
    fn now(&self) -> i64 {
        self.app.service.clock.now()
    }

    /// The session cookie's value and the session it stands for, if valid.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| cookie_value(h, COOKIE_NAME))?;
        let s = self.key.verify(value, self.now())?;
        Some((value.to_owned(), s))
    }

    /// Who is logged in, if anyone.
    fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        self.session(headers).map(|(_, s)| Viewer {
            role: s.role,
            csrf: s.csrf,
        })
    }

    /// Whether the dashboard is reached over HTTPS: the server's public URL (`--public-url`)
    /// is an `https://` one, or the trusted proxy says so (`X-Forwarded-Proto`, believed only
    /// when the server is configured to trust a proxy header).
    fn is_https(&self, headers: &HeaderMap) -> bool {
        self.app.service.public_url.starts_with("https://")
            || self.app.proxy_header.is_some()
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
    }

    /// Checks a post of a form with a confirmation box: [`Self::authorize_post`] for the admin
    /// role (a 403 page), then the box ticked (`confirm` is `yes`; else a 400 page saying that
    /// nothing was changed, `what` naming what the form does).
    fn authorize_confirmed(
        &self,
        headers: &HeaderMap,
        csrf: &str,
        confirm: Option<&str>,
        what: &str,
    ) -> Result<Viewer, NotActed> {
        let v = self
            .authorize_post(headers, csrf, true)
            .map_err(NotActed::Refused)?;
        if confirm != Some("yes") {
            return Err(NotActed::Unconfirmed(v, what.to_owned()));
        }
        Ok(v)
    }

    /// What [`Self::authorize_post`] checks without the CSRF token, from the headers alone
    /// (for an upload, before its body is read): from this site, by a logged-in admin session.
    fn authorize_upload(&self, headers: &HeaderMap) -> Result<Viewer, Refused> {
        if cross_site(headers) {
            return Err(Refused(
                None,
                "Forms are only accepted from this dashboard's own pages.",
            ));
        }
        let Some(viewer) = self.viewer(headers) else {
            return Err(Refused(
                None,
                "Log in first: the session is missing or has expired.",
            ));
        };
        if !viewer.may_write() {
            return Err(Refused(
                Some(viewer),
                "You are logged in with the read-only token: it may not change anything.",
            ));
        }
        Ok(viewer)
    }

    /// Checks a form post: from this site, by a logged-in session, carrying that session's
    /// CSRF token, and (`write`) by the admin role. Every refusal is a 403 page.
    fn authorize_post(
        &self,
        headers: &HeaderMap,
        csrf: &str,
        write: bool,
    ) -> Result<Viewer, Refused> {
        if cross_site(headers) {
            return Err(Refused(
                None,
                "Forms are only accepted from this dashboard's own pages.",
            ));
        }
        let Some((value, s)) = self.session(headers) else {
            return Err(Refused(
                None,
                "Log in first: the session is missing or has expired.",
            ));
        };
        let viewer = Viewer {
            role: s.role,
            csrf: s.csrf,
        };
        if !self.key.csrf_matches(&value, csrf) {
            tracing::warn!("dashboard form refused: missing or wrong CSRF token");
            return Err(Refused(
                Some(viewer),
                "The form's security token is missing or does not match this session: reload the page and try again.",
            ));
        }
        if write && !viewer.may_write() {
            return Err(Refused(
                Some(viewer),
                "You are logged in with the read-only token: it may not change anything.",
            ));
        }
        Ok(viewer)
    }
}

/// A refused form post: who sent it (if logged in) and why; answered 403.
#[derive(Debug)]
pub struct Refused(Option<Viewer>, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refuse(self.0.as_ref(), self.1)
    }
}

/// Whether the browser says the request comes from another site (`Sec-Fetch-Site`); a client
/// that does not send the header is not refused for it (the CSRF token still is checked).
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("cross-site") || v.eq_ignore_ascii_case("same-site")
        })
}

/// The dashboard role an access level logs in as.
fn role_of(access: Access) -> Role {
    match access {
        Access::Admin => Role::Admin,
        Access::ReadOnly => Role::ReadOnly,
    }
}

/// An HTML answer.
fn html(status: StatusCode, page: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.into_string(),
    )
        .into_response()
}

/// A page answered 200.
fn page(markup: Markup) -> Response {
    html(StatusCode::OK, markup)
}

/// A 403 page.
fn refuse(viewer: Option<&Viewer>, message: &str) -> Response {
    html(StatusCode::FORBIDDEN, error_page(viewer, 403, message))
}

/// `303 See Other` to `to` (after a form, or to the login page).
fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// The page of a failed operation, with the status the admin API would answer.
fn failed(viewer: Option<&Viewer>, e: FleetError) -> Response {
    let api = ApiError::from(e);
    let (status, _) = api.parts();
    let message = if status.is_server_error() {
        tracing::error!(error = %api, "dashboard request failed");
        "The server could not do this; its log says why.".to_owned()
    } else {
        api.to_string()
    };
    html(status, error_page(viewer, status.as_u16(), &message))
}
