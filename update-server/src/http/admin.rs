//! The admin REST API under `/api/v1/`: applications, channels, groups, packages (publish with
//! signature verification), instances, events and activity. Every write is durable before it
//! answers and then refreshes the in-memory catalogue.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine as _;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::catalogue::Catalogue;
use crate::error::{ApiError, ErrorBody};
use crate::lifecycle::InstanceStatus;
use crate::model::{
    Activity, App, Channel, EventRecord, Group, GroupPolicy, Instance, NewActivity, Package,
    StatusChange, normalize_appid, normalize_arch,
};
use crate::store::InstanceFilter;
use crate::store::rollout::RefusedVersion;
use crate::version;

type ApiResult<T> = Result<Json<T>, ApiError>;

fn new_id() -> String {
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub(crate) fn now(st: &AppState) -> i64 {
    st.service.clock.now()
}

pub(crate) fn activity(kind: &str, app: Option<&str>, message: String) -> NewActivity {
    NewActivity {
        kind: kind.to_owned(),
        severity: "info",
        app_id: app.map(str::to_owned),
        message,
        ..Default::default()
    }
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "{field} must be 1..={max} printable characters"
        )));
    }
    Ok(())
}

pub(crate) async fn reload(st: &AppState) -> Result<(), ApiError> {
    st.service.catalogue.reload(st.store.as_ref()).await?;
    Ok(())
}

pub(crate) fn find_app(cat: &Catalogue, app: &str) -> Result<App, ApiError> {
    let id = normalize_appid(app);
    cat.app(&id)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("application {id}")))
}

fn find_channel(cat: &Catalogue, app_id: &str, key: &str) -> Result<Channel, ApiError> {
    cat.data()
        .channels
        .iter()
        .find(|c| c.app_id == app_id && (c.id == key || c.name == key))
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("channel {key} of {app_id}")))
}

pub(crate) fn find_group(cat: &Catalogue, app_id: &str, key: &str) -> Result<Group, ApiError> {
    cat.data()
        .groups
        .iter()
        .find(|g| g.app_id == app_id && (g.id == key || g.track == key || g.name == key))
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("group {key} of {app_id}")))
}

// ---------------------------------------------------------------- applications

/// Body of `POST /apps`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CreateApp {
    /// Omaha appid (braces and case are normalised).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// Body of `PATCH /apps/{app}`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct UpdateApp {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
}

/// Lists applications.
#[utoipa::path(get, path = "/api/v1/apps", tag = "apps", responses((status = 200, body = [App])))]
pub async fn list_apps(State(st): State<AppState>) -> ApiResult<Vec<App>> {
    Ok(Json(st.service.catalogue.get().data().apps.clone()))
}

/// Creates an application.
#[utoipa::path(post, path = "/api/v1/apps", tag = "apps", request_body = CreateApp,
    responses((status = 201, body = App), (status = 409, body = ErrorBody)))]
pub async fn create_app(
    State(st): State<AppState>,
    Json(b): Json<CreateApp>,
) -> Result<(StatusCode, Json<App>), ApiError> {
    let id = normalize_appid(&b.id);
    check_text("id", &id, 128)?;
    check_text("name", &b.name, 200)?;
    let app = App {
        id: id.clone(),
        name: b.name,
        description: b.description,
        created_at: now(&st),
    };
    let _g = st.admin_lock.lock().await;
    st.store
        .insert_app(
            &app,
            &activity(
                "app_created",
                Some(&id),
                format!("application {id} created"),
            ),
        )
        .await?;
    reload(&st).await?;
    Ok((StatusCode::CREATED, Json(app)))
}

/// Shows an application.
#[utoipa::path(get, path = "/api/v1/apps/{app}", tag = "apps", params(("app" = String, Path)),
    responses((status = 200, body = App), (status = 404, body = ErrorBody)))]
pub async fn get_app(State(st): State<AppState>, Path(app): Path<String>) -> ApiResult<App> {
    Ok(Json(find_app(&st.service.catalogue.get(), &app)?))
}

/// Updates an application.
#[utoipa::path(patch, path = "/api/v1/apps/{app}", tag = "apps", params(("app" = String, Path)),
    request_body = UpdateApp, responses((status = 200, body = App), (status = 404, body = ErrorBody)))]
pub async fn update_app(
    State(st): State<AppState>,
    Path(app): Path<String>,
    Json(b): Json<UpdateApp>,
) -> ApiResult<App> {
    let _g = st.admin_lock.lock().await;
    let mut a = find_app(&st.service.catalogue.get(), &app)?;
    if let Some(n) = b.name {
        check_text("name", &n, 200)?;
        a.name = n;
    }
    if let Some(d) = b.description {
        a.description = d;
    }
    st.store
        .update_app(
            &a,
            &activity(
                "app_updated",
                Some(&a.id),
                format!("application {} updated", a.id),
            ),
        )
        .await?;
    reload(&st).await?;
    Ok(Json(a))
}

/// Deletes an application (refused while it has packages).
#[utoipa::path(delete, path = "/api/v1/apps/{app}", tag = "apps", params(("app" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_app(
    State(st): State<AppState>,
    Path(app): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _g = st.admin_lock.lock().await;
    let id = normalize_appid(&app);
    st.store
        .delete_app(
            &id,
            &activity("app_deleted", None, format!("application {id} deleted")),
        )
        .await?;
    reload(&st).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- channels

/// Body of `POST /apps/{app}/channels`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CreateChannel {
    /// Channel name.
    pub name: String,
    /// Package id per architecture.
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
}

/// Body of `PATCH /apps/{app}/channels/{channel}`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct UpdateChannel {
    /// New name.
    pub name: Option<String>,
    /// Pointers to merge: arch → package id, or `null` to remove the arch.
    #[serde(default)]
    pub packages: BTreeMap<String, Option<String>>,
}

/// Lists an application's channels.
#[utoipa::path(get, path = "/api/v1/apps/{app}/channels", tag = "channels", params(("app" = String, Path)),
    responses((status = 200, body = [Channel])))]
pub async fn list_channels(
    State(st): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Vec<Channel>> {
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    Ok(Json(
        cat.data()
            .channels
            .iter()
            .filter(|c| c.app_id == a.id)
            .cloned()
            .collect(),
    ))
}

fn check_pointers(
    cat: &Catalogue,
    app_id: &str,
    p: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    for (arch, id) in p {
        let pkg = cat
            .package(id)
            .ok_or_else(|| ApiError::NotFound(format!("package {id}")))?;
        if pkg.app_id != app_id {
            return Err(ApiError::Conflict(format!(
                "package {id} belongs to {}",
                pkg.app_id
            )));
        }
        if pkg.arch != *arch && pkg.arch != "all" {
            return Err(ApiError::Conflict(format!(
                "package {id} is for arch {}, not {arch}",
                pkg.arch
            )));
        }
    }
    Ok(())
}

/// Creates a channel.
#[utoipa::path(post, path = "/api/v1/apps/{app}/channels", tag = "channels", params(("app" = String, Path)),
    request_body = CreateChannel, responses((status = 201, body = Channel), (status = 409, body = ErrorBody)))]
pub async fn create_channel(
    State(st): State<AppState>,
    Path(app): Path<String>,
    Json(b): Json<CreateChannel>,
) -> Result<(StatusCode, Json<Channel>), ApiError> {
    check_text("name", &b.name, 100)?;
    let _g = st.admin_lock.lock().await;
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    let packages: BTreeMap<String, String> = b
        .packages
        .into_iter()
        .map(|(k, v)| (normalize_arch(&k), v))
        .collect();
    check_pointers(&cat, &a.id, &packages)?;
    let c = Channel {
        id: new_id(),
        app_id: a.id.clone(),
        name: b.name,
        packages,
        created_at: now(&st),
    };
    st.store
        .insert_channel(
            &c,
            &activity(
                "channel_created",
                Some(&a.id),
                format!("channel {} created", c.name),
            ),
        )
        .await?;
    reload(&st).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

/// Shows a channel (by id or name).
#[utoipa::path(get, path = "/api/v1/apps/{app}/channels/{channel}", tag = "channels",
    params(("app" = String, Path), ("channel" = String, Path)), responses((status = 200, body = Channel), (status = 404, body = ErrorBody)))]
pub async fn get_channel(
    State(st): State<AppState>,
    Path((app, ch)): Path<(String, String)>,
) -> ApiResult<Channel> {
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    Ok(Json(find_channel(&cat, &a.id, &ch)?))
}

/// Renames a channel or re-points it at packages.
#[utoipa::path(patch, path = "/api/v1/apps/{app}/channels/{channel}", tag = "channels",
    params(("app" = String, Path), ("channel" = String, Path)), request_body = UpdateChannel,
    responses((status = 200, body = Channel), (status = 404, body = ErrorBody)))]
pub async fn update_channel(
    State(st): State<AppState>,
    Path((app, ch)): Path<(String, String)>,
    Json(b): Json<UpdateChannel>,
) -> ApiResult<Channel> {
    let _g = st.admin_lock.lock().await;
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    let mut c = find_channel(&cat, &a.id, &ch)?;
    if let Some(n) = b.name {
        check_text("name", &n, 100)?;
        c.name = n;
    }
    let mut changes = Vec::new();
    for (arch, p) in b.packages {
        let arch = normalize_arch(&arch);
        match p {
            Some(id) => {
                changes.push(format!(
                    "{arch}={}",
                    cat.package(&id).map(|p| p.version.as_str()).unwrap_or("?")
                ));
                c.packages.insert(arch, id);
            }
            None => {
                changes.push(format!("{arch}=none"));
                c.packages.remove(&arch);
            }
        }
    }
    check_pointers(&cat, &a.id, &c.packages)?;
    let mut act = activity(
        "channel_updated",
        Some(&a.id),
        format!("channel {} updated {}", c.name, changes.join(" ")),
    );
    if !changes.is_empty() {
        act.kind = "channel_package_updated".into();
    }
    st.store.update_channel(&c, &act).await?;
    reload(&st).await?;
    Ok(Json(c))
}

/// Deletes a channel (groups following it are detached).
#[utoipa::path(delete, path = "/api/v1/apps/{app}/channels/{channel}", tag = "channels",
    params(("app" = String, Path), ("channel" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_channel(
    State(st): State<AppState>,
    Path((app, ch)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let _g = st.admin_lock.lock().await;
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    let c = find_channel(&cat, &a.id, &ch)?;
    st.store
        .delete_channel(
            &c.id,
            &activity(
                "channel_deleted",
                Some(&a.id),
                format!("channel {} deleted", c.name),
            ),
        )
        .await?;
    reload(&st).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- groups

/// Body of `POST /apps/{app}/groups`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CreateGroup {
    /// Human name.
    pub name: String,
    /// Omaha track clients send [default: the name].
    pub track: Option<String>,
    /// Channel (id or name) to follow.
    pub channel: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Rollout policy.
    #[serde(default)]
    pub policy: GroupPolicy,
}

/// Body of `PATCH /apps/{app}/groups/{group}`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct UpdateGroup {
    /// New name.
    pub name: Option<String>,
    /// New track.
    pub track: Option<String>,
    /// Channel (id or name); empty string detaches.
    pub channel: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Replacement policy.
    pub policy: Option<GroupPolicy>,
}

/// Lists an application's groups.
#[utoipa::path(get, path = "/api/v1/apps/{app}/groups", tag = "groups", params(("app" = String, Path)),
    responses((status = 200, body = [Group])))]
pub async fn list_groups(
    State(st): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Vec<Group>> {
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    Ok(Json(
        cat.data()
            .groups
            .iter()
            .filter(|g| g.app_id == a.id)
            .cloned()
            .collect(),
    ))
}

/// Creates a group.
#[utoipa::path(post, path = "/api/v1/apps/{app}/groups", tag = "groups", params(("app" = String, Path)),
    request_body = CreateGroup, responses((status = 201, body = Group), (status = 409, body = ErrorBody)))]
pub async fn create_group(
    State(st): State<AppState>,
    Path(app): Path<String>,
    Json(b): Json<CreateGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    check_text("name", &b.name, 100)?;
    crate::rollout::RolloutSpec::parse_valid(&b.policy)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let track = b.track.unwrap_or_else(|| b.name.clone());
    check_text("track", &track, 100)?;
    let _g = st.admin_lock.lock().await;
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    let channel_id = match b.channel.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(find_channel(&cat, &a.id, c)?.id),
        None => None,
    };
    let g = Group {
        id: new_id(),
        app_id: a.id.clone(),
        name: b.name,
        track,
        channel_id,
        description: b.description,
        policy: b.policy,
        created_at: now(&st),
    };
    st.store
        .insert_group(
            &g,
            &activity(
                "group_created",
                Some(&a.id),
                format!("group {} created", g.name),
            ),
        )
        .await?;
    reload(&st).await?;
    Ok((StatusCode::CREATED, Json(g)))
}

/// Shows a group (by id, track or name).
#[utoipa::path(get, path = "/api/v1/apps/{app}/groups/{group}", tag = "groups",
    params(("app" = String, Path), ("group" = String, Path)), responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub async fn get_group(
    State(st): State<AppState>,
    Path((app, g)): Path<(String, String)>,
) -> ApiResult<Group> {
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    Ok(Json(find_group(&cat, &a.id, &g)?))
}

/// Updates a group (name, track, channel, policy). A policy changed by someone else between
/// this server's read and its write (an auto-halt, another replica) is answered 409: read the
/// group again and retry.
#[utoipa::path(patch, path = "/api/v1/apps/{app}/groups/{group}", tag = "groups",
    params(("app" = String, Path), ("group" = String, Path)), request_body = UpdateGroup,
    responses((status = 200, body = Group), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn update_group(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
    Json(b): Json<UpdateGroup>,
) -> ApiResult<Group> {
    let _g = st.admin_lock.lock().await;
    // The group as committed: another process (or an auto-halt) may have changed it since this
    // process's snapshot; a change racing this one is refused by the store.
    reload(&st).await?;
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    let mut g = find_group(&cat, &a.id, &key)?;
    let seen = g.clone();
    if let Some(n) = b.name {
        check_text("name", &n, 100)?;
        g.name = n;
    }
    if let Some(t) = b.track {
        check_text("track", &t, 100)?;
        g.track = t;
    }
    if let Some(c) = b.channel {
        g.channel_id = if c.is_empty() {
            None
        } else {
            Some(find_channel(&cat, &a.id, &c)?.id)
        };
    }
    if let Some(d) = b.description {
        g.description = d;
    }
    if let Some(mut p) = b.policy {
        // `halted` is set by auto-halt and cleared only by a resume, `halt_counted_since` is set
        // by a resume (docs/rollouts.md): a new policy keeps both as they are stored.
        for key in ["halted", "halt_counted_since"] {
            match g.policy.extra.get(key) {
                Some(v) => {
                    p.extra.insert(key.to_owned(), v.clone());
                }
                None => {
                    p.extra.remove(key);
                }
            }
        }
        crate::rollout::RolloutSpec::parse_valid(&p)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        g.policy = p;
    }
    st.store
        .update_group(
            &g,
            &seen,
            &activity(
                "group_updated",
                Some(&a.id),
                format!("group {} updated", g.name),
            ),
        )
        .await?;
    reload(&st).await?;
    Ok(Json(g))
}

/// Deletes a group.
#[utoipa::path(delete, path = "/api/v1/apps/{app}/groups/{group}", tag = "groups",
    params(("app" = String, Path), ("group" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_group(
    State(st): State<AppState>,
    Path((app, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let _g = st.admin_lock.lock().await;
    let cat = st.service.catalogue.get();
    let a = find_app(&cat, &app)?;
    let g = find_group(&cat, &a.id, &key)?;
    st.store
        .delete_group(
            &g.id,
            &activity(
                "group_deleted",
                Some(&a.id),
                format!("group {} deleted", g.name),
            ),
        )
        .await?;
    reload(&st).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- packages

/// Query of `GET /packages`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PackageQuery {
    /// Only this application's packages.
    pub app: Option<String>,
}

/// Query of `POST /packages` (the body is the signed payload).
#[derive(Debug, Deserialize, IntoParams)]
pub struct PublishQuery {
    /// File name clients download (default: `<app>-<version>-<arch>.payload`).
    pub filename: Option<String>,
    /// Host externally at this codebase URL (the file is verified, then not kept).
    pub external_url: Option<String>,
    /// Refuse unless the manifest names this application.
    pub app: Option<String>,
    /// Refuse unless the manifest names this version.
    pub version: Option<String>,
    /// Refuse unless the manifest names this arch.
    pub arch: Option<String>,
}

/// Lists packages.
#[utoipa::path(get, path = "/api/v1/packages", tag = "packages", params(PackageQuery),
    responses((status = 200, body = [Package])))]
pub async fn list_packages(
    State(st): State<AppState>,
    Query(q): Query<PackageQuery>,
) -> ApiResult<Vec<Package>> {
    let cat = st.service.catalogue.get();
    let app = q.app.map(|a| normalize_appid(&a));
    Ok(Json(
        cat.data()
            .packages
            .iter()
            .filter(|p| app.as_ref().is_none_or(|a| &p.app_id == a))
            .cloned()
            .collect(),
    ))
}

/// Shows a package.
#[utoipa::path(get, path = "/api/v1/packages/{id}", tag = "packages", params(("id" = String, Path)),
    responses((status = 200, body = Package), (status = 404, body = ErrorBody)))]
pub async fn get_package(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Package> {
    st.service
        .catalogue
        .get()
        .package(&id)
        .cloned()
        .map(Json)
        .ok_or(ApiError::NotFound(format!("package {id}")))
}

fn valid_filename(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 200
        && f != "."
        && f != ".."
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

fn kind_name(k: payloads::Kind) -> &'static str {
    match k {
        payloads::Kind::Partition => "partition",
        payloads::Kind::File => "file",
    }
}

/// Publishes a signed payload: verifies its signatures against the trusted publisher keys and
/// its data against the manifest, reads app/version/arch/kind from the manifest, computes SHA-1
/// and SHA-256, and stores it content-addressed (or records its external URL).
#[utoipa::path(post, path = "/api/v1/packages", tag = "packages", params(PublishQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Package), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn publish_package(
    State(st): State<AppState>,
    Query(q): Query<PublishQuery>,
    body: Body,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let trust = st.trust.clone().ok_or_else(|| {
        ApiError::Unavailable("no trusted publisher keys configured (--trusted-keys)".into())
    })?;
    if let Some(f) = &q.filename
        && !valid_filename(f)
    {
        return Err(ApiError::BadRequest(format!("invalid filename {f:?}")));
    }
    if let Some(u) = &q.external_url
        && (!(u.starts_with("https://") || u.starts_with("http://")) || u.len() > 2000)
    {
        return Err(ApiError::BadRequest(
            "external_url must be an http(s) URL".into(),
        ));
    }
    let received = st
        .blobs
        .receive(body.into_data_stream(), st.max_package_size)
        .await
        .map_err(|e| match e {
            crate::blobs::BlobError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            crate::blobs::BlobError::Upload(_) => ApiError::BadRequest(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        })?;
    let path = received.path.to_path_buf();
    let now_s = u64::try_from(now(&st)).unwrap_or(0);
    let info = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)?;
        let mut opts = payloads::ApplyOptions::new(now_s);
        opts.sync = false;
        Ok::<_, std::io::Error>(payloads::verify_payload(
            std::io::BufReader::new(f),
            &trust,
            opts,
        ))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("verification task: {e}")))?
    .map_err(|e| ApiError::Internal(format!("reading upload: {e}")))?
    .map_err(|e| ApiError::Unverifiable(format!("payload rejected: {e}")))?;

    let app_id = normalize_appid(info.app_id());
    let arch = normalize_arch(info.arch());
    let version = info.version().to_owned();
    for (what, want, got) in [
        ("app", q.app.as_deref().map(normalize_appid), &app_id),
        ("version", q.version.clone(), &version),
        ("arch", q.arch.as_deref().map(normalize_arch), &arch),
    ] {
        if let Some(w) = want
            && &w != got
        {
            return Err(ApiError::Conflict(format!(
                "manifest {what} is {got}, expected {w}"
            )));
        }
    }
    if !version::is_valid(&version) {
        return Err(ApiError::Unverifiable(format!(
            "manifest version {version:?} is not a release version"
        )));
    }
    let _g = st.admin_lock.lock().await;
    let cat = st.service.catalogue.get();
    if cat.app(&app_id).is_none() {
        return Err(ApiError::NotFound(format!(
            "application {app_id} (named by the payload manifest)"
        )));
    }
    let pkg = Package {
        id: new_id(),
        app_id: app_id.clone(),
        version: version.clone(),
        arch: arch.clone(),
        kind: kind_name(info.kind()).to_owned(),
        filename: q
            .filename
            .unwrap_or_else(|| format!("{app_id}-{version}-{arch}.payload")),
        size: received.size,
        sha1_base64: base64::engine::general_purpose::STANDARD.encode(received.sha1),
        sha256_hex: hex::encode(received.sha256),
        external_url: q.external_url,
        created_at: now(&st),
    };
    if pkg.external_url.is_none() {
        st.blobs
            .commit(received)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    let mut act = activity(
        "package_published",
        Some(&app_id),
        format!(
            "package {version} ({arch}) published, signed by {}",
            hex::encode(info.signer.0)
        ),
    );
    act.version = Some(version);
    act.severity = "success";
    st.store.insert_package(&pkg, &act).await?;
    reload(&st).await?;
    Ok((StatusCode::CREATED, Json(pkg)))
}

/// Deletes a package no channel points at (and its file when no other package shares it).
#[utoipa::path(delete, path = "/api/v1/packages/{id}", tag = "packages", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_package(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _g = st.admin_lock.lock().await;
    let cat = st.service.catalogue.get();
    let pkg = cat
        .package(&id)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("package {id}")))?;
    let users = cat.channels_using(&id);
    if !users.is_empty() {
        let names: Vec<&str> = users.iter().map(|c| c.name.as_str()).collect();
        return Err(ApiError::Conflict(format!(
            "package {id} is used by channel(s) {}",
            names.join(", ")
        )));
    }
    let mut act = activity(
        "package_deleted",
        Some(&pkg.app_id),
        format!("package {} ({}) deleted", pkg.version, pkg.arch),
    );
    act.version = Some(pkg.version.clone());
    st.store.delete_package(&id, &act).await?;
    reload(&st).await?;
    let shared = st
        .service
        .catalogue
        .get()
        .data()
        .packages
        .iter()
        .any(|p| p.sha256_hex == pkg.sha256_hex && p.external_url.is_none());
    if pkg.external_url.is_none() && !shared {
        st.blobs
            .remove(&pkg.sha256_hex)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- instances

/// Query of `GET /instances`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct InstanceQuery {
    /// Application.
    pub app: Option<String>,
    /// Group (id).
    pub group: Option<String>,
    /// Exact version.
    pub version: Option<String>,
    /// Status (`granted`, `installed`, `error`...).
    pub status: Option<String>,
    /// Substring of machine id, alias or IP.
    pub search: Option<String>,
    /// Page size (default 100, max 1000).
    pub limit: Option<u32>,
    /// Offset.
    pub offset: Option<u32>,
}

/// A page of instances.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstancePage {
    /// Total matching.
    pub total: u64,
    /// This page.
    pub instances: Vec<Instance>,
}

/// One app of a machine with its history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceWithHistory {
    /// Current row.
    pub instance: Instance,
    /// Status history, newest first.
    pub history: Vec<StatusChange>,
    /// Versions this machine is never offered again (it rolled back from them or deny-listed
    /// them), oldest first; cleared by `POST /instances/{machine}/retry`.
    #[serde(default)]
    pub refused_versions: Vec<RefusedVersion>,
}

/// A machine with every app it runs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceDetail {
    /// Machine id.
    pub machine_id: String,
    /// The alias an operator assigned (`PATCH /instances/{machine}`), if any; each app's
    /// `instance.alias` is the one the machine reports.
    #[serde(default)]
    pub operator_alias: Option<String>,
    /// Per application.
    pub apps: Vec<InstanceWithHistory>,
}

/// Writes pending check-ins, so a listing shows every machine that checked in.
async fn flush(st: &AppState) -> Result<(), ApiError> {
    st.service
        .checkins
        .flush()
        .await
        .map(|_| ())
        .map_err(ApiError::from)
}

/// Lists instances with filters.
#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", params(InstanceQuery),
    responses((status = 200, body = InstancePage), (status = 400, body = ErrorBody)))]
pub async fn list_instances(
    State(st): State<AppState>,
    Query(q): Query<InstanceQuery>,
) -> ApiResult<InstancePage> {
    let status = match q.status.as_deref() {
        Some(s) => Some(
            InstanceStatus::parse(s)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown status {s:?}")))?,
        ),
        None => None,
    };
    flush(&st).await?;
    let f = InstanceFilter {
        machine_id: None,
        app_id: q.app.map(|a| normalize_appid(&a)),
        group_id: q.group,
        version: q.version,
        status,
        search: q.search,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
        offset: q.offset.unwrap_or(0),
    };
    let (instances, total) = st.store.list_instances(&f).await?;
    Ok(Json(InstancePage { total, instances }))
}

/// Shows a machine: every app with its status history.
#[utoipa::path(get, path = "/api/v1/instances/{machine}", tag = "instances", params(("machine" = String, Path)),
    responses((status = 200, body = InstanceDetail), (status = 404, body = ErrorBody)))]
pub async fn get_instance(
    State(st): State<AppState>,
    Path(machine): Path<String>,
) -> ApiResult<InstanceDetail> {
    flush(&st).await?;
    let f = InstanceFilter {
        machine_id: Some(machine.clone()),
        limit: 1000,
        ..Default::default()
    };
    let (rows, _) = st.store.list_instances(&f).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(format!("instance {machine}")));
    }
    let refused = st
        .service
        .rollouts
        .grants
        .refused_versions(&machine, None)
        .await?;
    let mut apps = Vec::new();
    for instance in rows {
        let history = st
            .store
            .instance_history(&machine, &instance.app_id, 200)
            .await?;
        let refused_versions = refused
            .iter()
            .filter(|r| r.app_id == instance.app_id)
            .cloned()
            .collect();
        apps.push(InstanceWithHistory {
            instance,
            history,
            refused_versions,
        });
    }
    let operator_alias = st
        .service
        .catalogue
        .get()
        .operator_alias(&machine)
        .map(str::to_owned);
    Ok(Json(InstanceDetail {
        machine_id: machine,
        operator_alias,
        apps,
    }))
}

/// Query of `DELETE /instances/{machine}`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteInstanceQuery {
    /// Only this application's row.
    pub app: Option<String>,
}

/// Deletes a machine (retired hosts); it re-registers if it checks in again.
#[utoipa::path(delete, path = "/api/v1/instances/{machine}", tag = "instances",
    params(("machine" = String, Path), DeleteInstanceQuery), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_instance(
    State(st): State<AppState>,
    Path(machine): Path<String>,
    Query(q): Query<DeleteInstanceQuery>,
) -> Result<StatusCode, ApiError> {
    let app = q.app.map(|a| normalize_appid(&a));
    // Pending check-ins first: a machine only seen so far is deleted too. No batch is written
    // while the row is deleted, so none re-creates it.
    let known = instance_known(&st, &machine, app.as_deref()).await?;
    let _no_batches = st.service.checkins.hold().await;
    st.service.checkins.forget(&machine, app.as_deref());
    let mut act = activity(
        "instance_deleted",
        app.as_deref(),
        format!("instance {machine} deleted"),
    );
    act.machine_id = Some(machine.clone());
    let res = st
        .store
        .delete_instance(&machine, app.as_deref(), &act)
        .await;
    match res {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(crate::store::StoreError::NotFound(_)) if known => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e.into()),
    }
}

/// Query of `POST /instances/{machine}/retry`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct RetryQuery {
    /// Only this application [default: every application of the machine].
    pub app: Option<String>,
    /// Only this version [default: every refused version].
    pub version: Option<String>,
}

/// Answer of `POST /instances/{machine}/retry`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetryAnswer {
    /// Machine id.
    pub machine_id: String,
    /// The refusals cleared (empty when there were none).
    pub cleared: Vec<RefusedVersion>,
}

/// Lets a machine be offered versions it refused again (it rolled back from them or
/// deny-listed them): clears its refusals (for one app or all, one version or all). The next
/// check goes through the rollout policy as usual.
#[utoipa::path(post, path = "/api/v1/instances/{machine}/retry", tag = "instances",
    params(("machine" = String, Path), RetryQuery),
    responses((status = 200, body = RetryAnswer), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn retry_instance(
    State(st): State<AppState>,
    Path(machine): Path<String>,
    Query(q): Query<RetryQuery>,
) -> ApiResult<RetryAnswer> {
    let app = q.app.map(|a| normalize_appid(&a));
    if let Some(v) = &q.version
        && !version::is_valid(v)
    {
        return Err(ApiError::BadRequest(format!(
            "version {v:?} is not a version (expected e.g. 3510.2.0)"
        )));
    }
    let grants = &st.service.rollouts.grants;
    let known = instance_known(&st, &machine, app.as_deref()).await?
        || !grants
            .refused_versions(&machine, app.as_deref())
            .await?
            .is_empty();
    if !known {
        let what = app.map_or_else(
            || format!("instance {machine}"),
            |a| format!("instance {machine} of {a}"),
        );
        return Err(ApiError::NotFound(what));
    }
    let which = q.version.as_deref().unwrap_or("every refused version");
    let mut act = activity(
        "instance_retry",
        app.as_deref(),
        format!("{machine} may be offered {which} again (refusal cleared by an operator)"),
    );
    act.machine_id = Some(machine.clone());
    act.version.clone_from(&q.version);
    let cleared = grants
        .clear_refusals(
            &machine,
            app.as_deref(),
            q.version.as_deref(),
            &act,
            now(&st),
        )
        .await?;
    Ok(Json(RetryAnswer {
        machine_id: machine,
        cleared,
    }))
}

/// Most bytes of an operator-assigned alias.
const MAX_ALIAS: usize = 64;

/// Body of `PATCH /instances/{machine}`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct UpdateInstance {
    /// The alias an operator assigns to the machine (1..=64 printable characters, no spaces,
    /// unique among machines); rollout canaries may name the machine by it. `null` or `""`
    /// removes it. The alias the machine reports itself is kept apart and never matched.
    pub alias: Option<String>,
}

/// Answer of `PATCH /instances/{machine}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct InstanceAlias {
    /// Machine id.
    pub machine_id: String,
    /// The alias an operator assigned, if any.
    pub operator_alias: Option<String>,
}

/// Assigns (or removes) a machine's operator alias: the only alias rollout canaries match.
#[utoipa::path(patch, path = "/api/v1/instances/{machine}", tag = "instances",
    params(("machine" = String, Path)), request_body = UpdateInstance,
    responses((status = 200, body = InstanceAlias), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_instance(
    State(st): State<AppState>,
    Path(machine): Path<String>,
    Json(body): Json<UpdateInstance>,
) -> ApiResult<InstanceAlias> {
    let alias = body.alias.filter(|a| !a.is_empty());
    if let Some(a) = &alias {
        check_text("alias", a, MAX_ALIAS)?;
        if a.chars().any(char::is_whitespace) {
            return Err(ApiError::BadRequest("alias must not contain spaces".into()));
        }
    }
    let _g = st.admin_lock.lock().await;
    if !instance_known(&st, &machine, None).await? {
        return Err(ApiError::NotFound(format!("instance {machine}")));
    }
    let message = match &alias {
        Some(a) => format!("{machine} is now called {a:?} by the operators"),
        None => format!("{machine}'s operator alias was removed"),
    };
    let mut act = activity("instance_alias_set", None, message);
    act.machine_id = Some(machine.clone());
    st.service
        .rollouts
        .grants
        .set_machine_alias(&machine, alias.as_deref(), &act, now(&st))
        .await?;
    reload(&st).await?;
    Ok(Json(InstanceAlias {
        machine_id: machine,
        operator_alias: alias,
    }))
}

/// Whether the machine has an instance (of `app`, or of any application), pending check-ins
/// included.
async fn instance_known(st: &AppState, machine: &str, app: Option<&str>) -> Result<bool, ApiError> {
    flush(st).await?;
    let f = InstanceFilter {
        machine_id: Some(machine.to_owned()),
        app_id: app.map(str::to_owned),
        limit: 1,
        ..Default::default()
    };
    Ok(st.store.list_instances(&f).await?.1 > 0)
}

// ---------------------------------------------------------------- events and activity

/// Query of `GET /events`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EventQuery {
    /// Machine.
    pub machine: Option<String>,
    /// Application.
    pub app: Option<String>,
    /// Only entries with a smaller id (paging).
    pub before: Option<i64>,
    /// Page size (default 100, max 1000).
    pub limit: Option<u32>,
}

/// Lists client events, newest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, body = [EventRecord])))]
pub async fn list_events(
    State(st): State<AppState>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Vec<EventRecord>> {
    let app = q.app.map(|a| normalize_appid(&a));
    Ok(Json(
        st.store
            .list_events(
                q.machine.as_deref(),
                app.as_deref(),
                q.before,
                q.limit.unwrap_or(100).clamp(1, 1000),
            )
            .await?,
    ))
}

/// Query of `GET /activity`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ActivityQuery {
    /// Application.
    pub app: Option<String>,
    /// Only entries with a smaller id (paging).
    pub before: Option<i64>,
    /// Page size (default 100, max 1000).
    pub limit: Option<u32>,
}

/// The activity feed, newest first.
#[utoipa::path(get, path = "/api/v1/activity", tag = "activity", params(ActivityQuery),
    responses((status = 200, body = [Activity])))]
pub async fn list_activity(
    State(st): State<AppState>,
    Query(q): Query<ActivityQuery>,
) -> ApiResult<Vec<Activity>> {
    let app = q.app.map(|a| normalize_appid(&a));
    Ok(Json(
        st.store
            .list_activity(
                app.as_deref(),
                q.before,
                q.limit.unwrap_or(100).clamp(1, 1000),
            )
            .await?,
    ))
}
