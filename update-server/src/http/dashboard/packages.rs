//! The dashboard's package list (GET), publishing by upload (a `multipart/form-data` form),
//! deleting a package, and pointing a channel at one. Each form is checked by
//! [`Dashboard::authorize_post`] (same site, session, CSRF token, admin role) and then calls
//! the same [`crate::fleet`] operation as the admin API: [`Fleet::publish_package`] (with the
//! same verification and size limit as `POST /api/v1/packages`), [`Fleet::delete_package`]
//! (`DELETE /api/v1/packages/{id}`) and [`Fleet::update_channel`]
//! (`PATCH /api/v1/apps/{app}/channels/{channel}` with `{"packages": {arch: id}}`).
//!
//! The upload is streamed to the package store as it arrives, never held in memory. Its CSRF
//! token must be the form's first field and is checked before anything else is read; the
//! publish options come next and the file last.
//!
//! [`Dashboard::authorize_post`]: super::Dashboard
//! [`Fleet::publish_package`]: crate::fleet::Fleet::publish_package
//! [`Fleet::delete_package`]: crate::fleet::Fleet::delete_package
//! [`Fleet::update_channel`]: crate::fleet::Fleet::update_channel

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::multipart::Field;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde::Deserialize;

use super::{Dash, FORM_LIMIT, failed, form_fields, html, page, see_other};
use crate::dashboard::Viewer;
use crate::dashboard::pages::error_page;
use crate::dashboard::pages::packages::{self as view, Filters, PackagesNotice, PackagesPage};
use crate::fleet::FleetError;
use crate::fleet::channels::UpdateChannel;
use crate::fleet::packages::{PackageQuery, PublishQuery};
use crate::model::{PackageFormat, normalize_appid, normalize_arch};

/// Bytes an upload form may carry besides the file (the CSRF token, the publish options and
/// the multipart framing): the whole body may be the API's package limit plus this.
const FIELDS_ALLOWANCE: u64 = 64 * 1024;
/// Longest text field of the upload form, bytes (the longest option is a 2000-byte URL).
const FIELD_MAX: usize = 4096;

/// This part's routes. The small forms keep the dashboard's 16 KiB body limit; the upload
/// route's limit is the API's package limit (plus [`FIELDS_ALLOWANCE`]), applied in
/// [`upload`] since it is a setting of the running server.
pub fn routes() -> Router<Dash> {
    Router::new()
        .route("/ui/packages/{id}/delete", post(delete))
        .route("/ui/packages/{id}/point", post(point))
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .route(
            view::HREF,
            get(list).post(upload).layer(DefaultBodyLimit::disable()),
        )
}

/// Query of the package list: filters, and what was just done.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only this application's packages (empty: all).
    pub app: Option<String>,
    /// Only packages built for this architecture (empty: all).
    pub arch: Option<String>,
    /// The package just published (its id).
    pub published: Option<String>,
    /// The package a channel was just pointed at (its id).
    pub pointed: Option<String>,
    /// The channel just pointed (its id).
    pub channel: Option<String>,
    /// `deleted` after a deletion.
    pub done: Option<String>,
}

/// `GET /ui/packages`: the packages by application, architecture and version.
pub async fn list(
    State(d): State<Dash>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some(v) = d.viewer(&headers) else {
        return see_other("/ui/login");
    };
    let text = |o: &Option<String>| o.as_deref().map(str::trim).unwrap_or_default().to_owned();
    let filters = Filters {
        app: Some(text(&q.app))
            .filter(|a| !a.is_empty())
            .map(|a| normalize_appid(&a))
            .unwrap_or_default(),
        arch: Some(text(&q.arch))
            .filter(|a| !a.is_empty())
            .map(|a| normalize_arch(&a))
            .unwrap_or_default(),
    };
    let fleet = d.app.fleet();
    let apps = fleet.list_apps();
    let mut channels = Vec::new();
    for a in &apps {
        match fleet.list_channels(&a.id) {
            Ok(c) => channels.extend(c),
            Err(e) => return failed(Some(&v), e),
        }
    }
    let all = fleet.list_packages(PackageQuery::default());
    let shown: Vec<_> = fleet
        .list_packages(PackageQuery {
            app: Some(filters.app.clone()).filter(|a| !a.is_empty()),
        })
        .into_iter()
        .filter(|p| filters.arch.is_empty() || p.arch == filters.arch)
        .collect();
    let signatures = fleet.package_signatures(&shown).await;
    let find = |id: &Option<String>| {
        id.as_deref()
            .and_then(|id| all.iter().find(|p| p.id == id))
            .cloned()
    };
    let notice = if let Some(p) = find(&q.published) {
        Some(PackagesNotice::Published(p))
    } else if let Some(p) = find(&q.pointed) {
        // Named only when the channel does point at it now.
        channels
            .iter()
            .find(|c| {
                Some(&c.id) == q.channel.as_ref()
                    && c.pointers(p.format).get(&p.arch) == Some(&p.id)
            })
            .map(|c| PackagesNotice::Pointed {
                channel: c.name.clone(),
                package: p,
            })
    } else if q.done.as_deref() == Some("deleted") {
        Some(PackagesNotice::Deleted)
    } else {
        None
    };
    page(view::render(
        &v,
        &PackagesPage {
            apps,
            channels,
            all,
            shown,
            signatures,
            filters,
            notice,
            max_upload: d.app.max_package_size,
        },
    ))
}

/// A 400 page naming what was wrong with the form; nothing was changed.
fn not_accepted(v: &Viewer, message: &str) -> Response {
    html(StatusCode::BAD_REQUEST, error_page(Some(v), 400, message))
}

/// `body` cut off with an error once more than `limit` bytes have arrived (the limit is read
/// at each chunk: the upload raises it once the form's token is checked).
fn limited(body: Body, limit: Arc<AtomicU64>) -> Body {
    let mut seen: u64 = 0;
    Body::from_stream(body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen = seen.saturating_add(chunk.len() as u64);
        let limit = limit.load(Ordering::Relaxed);
        if seen > limit {
            return Err(std::io::Error::other(format!(
                "the form is larger than the {limit}-byte limit"
            )));
        }
        Ok::<Bytes, std::io::Error>(chunk)
    }))
}

/// A text field's value, at most `max` bytes of UTF-8 (`name` names it in the error).
async fn text_field(mut field: Field<'_>, name: &str, max: usize) -> Result<String, String> {
    let mut value = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| format!("reading field {name}: {e}"))?
    {
        if value.len() + chunk.len() > max {
            return Err(format!("field {name} is longer than {max} bytes"));
        }
        value.extend_from_slice(&chunk);
    }
    String::from_utf8(value).map_err(|_| format!("field {name} is not UTF-8 text"))
}

/// The CSRF token, when it is the form's first field.
async fn first_field_csrf(form: &mut Multipart) -> Option<String> {
    let field = form.next_field().await.ok()??;
    if field.name() != Some("csrf") {
        return None;
    }
    text_field(field, "csrf", 256).await.ok()
}

/// `POST /ui/packages` (`multipart/form-data`): publishes the uploaded file as
/// `POST /api/v1/packages` does. Fields, in this order: `csrf`, then any of `format`, `app`,
/// `version`, `arch`, `filename`, `external_url` (as the API's query), then `file`.
pub async fn upload(State(d): State<Dash>, headers: HeaderMap, request: Request) -> Response {
    // Who may upload is known from the headers alone: a post from another site, without a
    // session or by the read-only role is refused before a byte of the body is read.
    if let Err(refused) = d.authorize_upload(&headers) {
        return refused.into_response();
    }
    // Until the token is checked, the body may carry the form's small fields only
    // ([`FIELDS_ALLOWANCE`]); the file's limit (the API's) applies once it is.
    let limit = Arc::new(AtomicU64::new(FIELDS_ALLOWANCE));
    let request = request.map(|body| limited(body, Arc::clone(&limit)));
    let mut form = Multipart::from_request(request, &()).await.ok();
    // The token is checked before anything else is read; a body that is not a multipart
    // form, or whose first field is not the token, carries none and is refused.
    let csrf = match form.as_mut() {
        Some(f) => first_field_csrf(f).await.unwrap_or_default(),
        None => String::new(),
    };
    let v = match d.authorize_post(&headers, &csrf, true) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    limit.store(
        d.app.max_package_size.saturating_add(FIELDS_ALLOWANCE),
        Ordering::Relaxed,
    );
    let Some(mut form) = form else {
        return not_accepted(&v, "The upload is not a multipart form.");
    };
    let mut query = PublishQuery::default();
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => {
                return not_accepted(
                    &v,
                    "Choose the payload file to publish; nothing was published.",
                );
            }
            Err(e) => return not_accepted(&v, &format!("The upload is not a valid form: {e}.")),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let slot = match name.as_str() {
            "file" => {
                if field.file_name() == Some("") {
                    return not_accepted(&v, "No file was chosen; nothing was published.");
                }
                return publish(&d, &v, query, field).await;
            }
            "format" => None,
            "app" => Some(&mut query.app),
            "version" => Some(&mut query.version),
            "arch" => Some(&mut query.arch),
            "filename" => Some(&mut query.filename),
            "external_url" => Some(&mut query.external_url),
            other => {
                return not_accepted(
                    &v,
                    &format!("Unexpected form field {other:?}; nothing was published."),
                );
            }
        };
        let value = match text_field(field, &name, FIELD_MAX).await {
            Ok(value) => value.trim().to_owned(),
            Err(e) => return not_accepted(&v, &format!("{e}; nothing was published.")),
        };
        let value = Some(value).filter(|s| !s.is_empty());
        match slot {
            Some(slot) => *slot = value,
            None => {
                query.format = match value.as_deref().map(PackageFormat::parse) {
                    None => None,
                    Some(Some(format)) => Some(format),
                    Some(None) => {
                        return not_accepted(
                            &v,
                            "Field format must be platte or update_engine; nothing was published.",
                        );
                    }
                }
            }
        }
    }
}

/// Publishes the file arriving in `file` with `query`, as the admin API does.
async fn publish(d: &Dash, v: &Viewer, query: PublishQuery, file: Field<'_>) -> Response {
    match d.app.fleet().publish_package(query, file).await {
        Ok(p) => {
            tracing::info!(package = %p.id, app = %p.app_id, version = %p.version, arch = %p.arch, "package published from the dashboard");
            see_other(&format!(
                "{}?published={}#package-{}",
                view::HREF,
                p.id,
                p.id
            ))
        }
        Err(e) => failed(Some(v), e),
    }
}

/// Fields of the delete and point forms.
#[derive(Debug, Default, Deserialize)]
pub struct PackageForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// `yes` when the confirmation box is ticked.
    pub confirm: Option<String>,
    /// The point form: the channel (its id).
    pub channel: Option<String>,
}

/// `POST /ui/packages/{id}/delete`: deletes a package no channel points at, as
/// `DELETE /api/v1/packages/{id}` does.
pub async fn delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<PackageForm>, FormRejection>,
) -> Response {
    let f = form_fields(form);
    let v = match d.authorize_confirmed(
        &headers,
        &f.csrf,
        f.confirm.as_deref(),
        "delete the package",
    ) {
        Ok(v) => v,
        Err(not) => return not.into_response(),
    };
    match d.app.fleet().delete_package(&id).await {
        Ok(()) => {
            tracing::info!(package = %id, "package deleted from the dashboard");
            see_other(&format!("{}?done=deleted", view::HREF))
        }
        Err(e) => failed(Some(&v), e),
    }
}

/// `POST /ui/packages/{id}/point`: points the chosen channel at the package for the package's
/// architecture, as `PATCH /api/v1/apps/{app}/channels/{channel}` with
/// `{"packages": {"<arch>": "<id>"}}` does.
pub async fn point(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<PackageForm>, FormRejection>,
) -> Response {
    let f = form_fields(form);
    let v = match d.authorize_confirmed(
        &headers,
        &f.csrf,
        f.confirm.as_deref(),
        "point the channel at the package",
    ) {
        Ok(v) => v,
        Err(not) => return not.into_response(),
    };
    let Some(channel) = f
        .channel
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    else {
        return not_accepted(&v, "Choose a channel; nothing was changed.");
    };
    let fleet = d.app.fleet();
    let pointed = async {
        let p = fleet.package(&id)?;
        let input = UpdateChannel {
            name: None,
            packages: BTreeMap::from([(p.arch.clone(), Some(p.id.clone()))]),
            update_engine_packages: BTreeMap::new(),
        };
        let c = fleet.update_channel(&p.app_id, channel, input).await?;
        Ok::<_, FleetError>((p, c))
    };
    match pointed.await {
        Ok((p, c)) => {
            tracing::info!(package = %p.id, channel = %c.id, arch = %p.arch, "channel pointed from the dashboard");
            see_other(&format!(
                "{}?pointed={}&channel={}#package-{}",
                view::HREF,
                p.id,
                c.id,
                p.id
            ))
        }
        Err(e) => failed(Some(&v), e),
    }
}
