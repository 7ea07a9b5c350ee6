//! `/ui/login` and `/ui/logout`: log in with the admin or the read-only token (compared in
//! constant time by [`Tokens::check`](crate::http::auth::Tokens::check)), which sets the signed
//! session cookie; log out, which clears it.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Dash, cross_site, html, page, refuse, role_of, see_other};
use crate::dashboard::pages::login::{LoginNotice, render};
use crate::dashboard::session::{clear_cookie, set_cookie};

/// Query of the login page.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    /// Set after a logout.
    pub out: Option<String>,
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// The admin or the read-only token.
    #[serde(default)]
    pub token: String,
}

/// The logout form's fields.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

/// `GET /ui/login`: the form (or the overview, when already logged in).
pub async fn form(
    State(d): State<Dash>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if d.viewer(&headers).is_some() {
        return see_other("/");
    }
    let notice = if q.out.is_some() {
        LoginNotice::LoggedOut
    } else {
        LoginNotice::None
    };
    page(render(notice))
}

/// `POST /ui/login`: a right token sets the session cookie and leads to the overview; a wrong
/// one shows the form again (401).
pub async fn login(
    State(d): State<Dash>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if cross_site(&headers) {
        return refuse(
            None,
            "Logging in is only accepted from this dashboard's own page.",
        );
    }
    let token = form.map(|Form(f)| f.token).unwrap_or_default();
    let Some(access) = d.tokens.check(&token).filter(|_| !token.trim().is_empty()) else {
        tracing::warn!("dashboard login refused: wrong token");
        return html(StatusCode::UNAUTHORIZED, render(LoginNotice::WrongToken));
    };
    let role = role_of(access);
    tracing::info!(role = role.as_str(), "dashboard login");
    let value = d.key.issue(role, d.now());
    with_cookie(see_other("/"), &set_cookie(&value, d.is_https(&headers)))
}

/// `POST /ui/logout`: clears the session cookie. A logged-in session must send its CSRF token
/// (so that another site cannot log its users out); without a session the cookie is cleared
/// anyway.
pub async fn logout(
    State(d): State<Dash>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if d.session(&headers).is_some()
        && let Err(refused) = d.authorize_post(&headers, &csrf, false)
    {
        return refused.into_response();
    }
    with_cookie(
        see_other("/ui/login?out=1"),
        &clear_cookie(d.is_https(&headers)),
    )
}

/// `resp` with a `Set-Cookie` header.
fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    match HeaderValue::from_str(cookie) {
        Ok(v) => {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        Err(e) => tracing::error!(error = %e, "session cookie is not a header value"),
    }
    resp
}
