//! The Omaha endpoint `POST /v1/update/`: bounded body (64 KiB), parsed by the `omaha` crate,
//! each app answered independently by the [`UpdateService`](crate::service::UpdateService).
//! Malformed, oversized or hostile bodies get a 400 with a short reason, and so do over-long
//! attributes (bounded by the parser) and machine or boot ids outside their character set
//! ([`crate::bounds`]); a `Content-Type` other than `text/xml` or `application/xml` (or none)
//! gets a 415. At most the configured number of events per request is applied; later ones are
//! acknowledged and ignored. Every `<updatecheck>` answer carries the configured
//! `PollInterval`, if any.

use std::net::SocketAddr;

use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use omaha::{Action, AppResponse, DayStart, Manifest, Package, UpdateCheckResponse};

use super::AppState;
use crate::catalogue::PackageDigests;
use crate::model::{ClientKind, PackageFormat};
use crate::service::{AppAnswer, AppCheckIn, CheckAnswer, EventIn};

/// Largest accepted Omaha body.
pub const MAX_BODY: usize = 64 * 1024;

fn bad_request(metrics: &crate::metrics::Metrics, reason: String) -> Response {
    metrics.omaha_rejected.inc();
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        reason + "\n",
    )
        .into_response()
}

/// Checks the `Content-Type` of an Omaha post: none, `text/xml` or `application/xml`, with any
/// parameters (`charset=utf-8`), in any case. The error is the reason for the 415.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), String> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = v
        .to_str()
        .ok()
        .and_then(|t| t.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if essence.eq_ignore_ascii_case("text/xml") || essence.eq_ignore_ascii_case("application/xml") {
        return Ok(());
    }
    let shown: String = essence.chars().take(64).collect();
    Err(format!(
        "unsupported Content-Type {shown:?}: Omaha requests are text/xml or application/xml"
    ))
}

fn client_ip(headers: &HeaderMap, proxy_header: Option<&str>, peer: Option<SocketAddr>) -> String {
    if let Some(h) = proxy_header
        && let Some(v) = headers.get(h).and_then(|v| v.to_str().ok())
        && let Some(last) = v
            .rsplit(',')
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    {
        // The entry the trusted proxy appended (the rightmost): what precedes it came from the
        // client and can say anything (nginx's `$proxy_add_x_forwarded_for` appends).
        return last.chars().take(64).collect();
    }
    peer.map(|p| p.ip().to_string()).unwrap_or_default()
}

/// Converts one parsed `<app>` into the service's input.
pub fn check_in_of(
    app: &omaha::AppRequest,
    os_arch: Option<&str>,
    ip: String,
    client: ClientKind,
) -> AppCheckIn {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    AppCheckIn {
        client,
        appid: app.appid.clone(),
        version: s(&app.version),
        track: s(&app.track),
        machine_id: s(&app.machineid),
        alias: s(&app.machinealias),
        boot_id: s(&app.bootid),
        oem: s(&app.oem),
        oem_version: s(&app.oemversion),
        board: app
            .board
            .clone()
            .filter(|b| !b.is_empty())
            .or_else(|| os_arch.map(str::to_owned))
            .unwrap_or_default(),
        ip,
        events: app
            .events
            .iter()
            .map(|e| EventIn {
                event_type: e.event_type.to_u32(),
                event_result: e.result.to_u32(),
                error_code: e.errorcode.map(|c| i64::from(c.to_raw())),
                previous_version: e.previousversion.clone().unwrap_or_default(),
                error_detail: e.errorcode.map(|c| c.to_string()).unwrap_or_default(),
            })
            .collect(),
        ignored_events: 0,
        ping: app.ping.is_some(),
        updatecheck: app.updatecheck.is_some(),
        delta_okay: app.delta_okay == Some(true),
    }
}

/// Builds the `<updatecheck>` of an answer, with `PollInterval` when `poll_interval_secs` is set.
pub fn updatecheck_of(
    answer: &CheckAnswer,
    poll_interval_secs: Option<u32>,
) -> UpdateCheckResponse {
    let uc = match answer {
        CheckAnswer::NoUpdate(_) => UpdateCheckResponse::noupdate(),
        CheckAnswer::Update {
            package,
            digests,
            codebases,
            rollback,
            delta_from,
        } => {
            let mut pkg = Package::new(&package.filename, package.size).required(true);
            if let Some(d) = &digests.sha1 {
                pkg = pkg.with_sha1(d);
            }
            if let Some(d) = &digests.sha256 {
                pkg = pkg.with_sha256(d);
            }
            let sha256 = digests.sha256.unwrap_or([0; 32]);
            let mut action = Action::postinstall(&sha256)
                .with_disable_payload_backoff(package.disable_payload_backoff);
            if package.format == PackageFormat::UpdateEngine {
                // What update_engine reads beside `sha256` (omaha_request_action.cc).
                action.chromeos_version = Some(package.version.clone());
                action.metadata_size = package.metadata_size;
                action.metadata_signature_rsa = package.metadata_signature_rsa.clone();
                action.is_delta_payload = package.is_delta;
                action.deadline = package.deadline.clone();
                action.needs_admin = Some(package.needs_admin);
            }
            if delta_from.is_some() {
                // A delta linked to its full package, offered on its source version.
                action.is_delta_payload = true;
            }
            let mut manifest = Manifest::new(&package.version).with_package(pkg);
            // Extra files follow the payload, under the same codebase (Flatcar's post-install
            // step looks them up by name in the stored answer).
            for f in &package.files {
                let d = PackageDigests::of_file(f);
                let mut extra = Package::new(&f.name, f.size).required(false);
                if let Some(h) = &d.sha1 {
                    extra = extra.with_sha1(h);
                }
                if let Some(h) = &d.sha256 {
                    extra = extra.with_sha256(h);
                }
                manifest = manifest.with_package(extra);
            }
            let manifest = manifest.with_action(action);
            let mut urls = codebases.iter();
            let first = urls.next().map(String::as_str).unwrap_or_default();
            urls.fold(UpdateCheckResponse::ok(first, manifest), |uc, u| {
                uc.with_url(u)
            })
            .with_rollback(*rollback)
        }
    };
    match poll_interval_secs {
        Some(s) => uc.with_poll_interval(s),
        None => uc,
    }
}

/// `POST /v1/update/`.
pub async fn update(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(reason) = check_content_type(&headers) {
        st.metrics.omaha_rejected.inc();
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            reason + "\n",
        )
            .into_response();
    }
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return bad_request(
                &st.metrics,
                format!("request body exceeds {MAX_BODY} bytes"),
            );
        }
    };
    let req = match omaha::parse_request(&bytes) {
        Ok(r) => r,
        Err(e) => return bad_request(&st.metrics, format!("malformed Omaha request: {e}")),
    };
    // Refused before any app is handled, so nothing of the request is kept.
    let catalogue = st.service.catalogue.get();
    for app in &req.apps {
        let machine = app.machineid.as_deref().unwrap_or_default();
        let boot = app.bootid.as_deref().unwrap_or_default();
        if let Err(e) = crate::bounds::check_identity(machine, boot) {
            return bad_request(&st.metrics, format!("malformed Omaha request: {e}"));
        }
        // Canaries may name a machine by its operator alias: that name is not a machine id
        // anyone may claim.
        if catalogue.is_alias_of_another(machine.trim()) {
            return bad_request(
                &st.metrics,
                format!(
                    "machineid {machine:?} is an alias the operator assigned to another machine"
                ),
            );
        }
    }
    // The machine credential: which machine ids (if any) the request is authenticated for.
    let machine_ids: Vec<&str> = req
        .apps
        .iter()
        .filter_map(|a| a.machineid.as_deref())
        .collect();
    let verdict = match st.credentials.check(&headers, &bytes, &machine_ids).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "machine credential check failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later\n",
            )
                .into_response();
        }
    };
    // A credential that fails is never trusted, nor is the request refused: it counts as
    // unsigned (groups that require a credential ignore it) and the answer says why, so a
    // host with a wrong clock or a replaced key still gets updates where credentials are
    // optional and learns what to fix.
    if verdict.outcome.refused() {
        tracing::warn!(outcome = verdict.outcome.as_str(), reason = %verdict.reason, "machine credential not accepted; request treated as unsigned");
    }
    let signature_status =
        (verdict.outcome != crate::credential::Outcome::None).then(|| verdict.outcome.as_str());
    let mut events_left = st.service.omaha.events_per_request;
    let ip = client_ip(&headers, st.proxy_header.as_deref(), Some(peer));
    let os_arch = req.os.as_ref().and_then(|o| o.arch.as_deref());
    let client = ClientKind::of(req.version.as_deref().unwrap_or_default());
    let mut resp = omaha::Response::new("platte", DayStart::default());
    for app in &req.apps {
        let mut input = check_in_of(app, os_arch, ip.clone(), client);
        let applied = input.events.len().min(events_left);
        events_left -= applied;
        input.ignored_events = input.events.len() - applied;
        input.events.truncate(applied);
        st.metrics
            .events_dropped("request_cap", input.ignored_events as u64);
        // The group the machine is stored in also decides whether a credential is required
        // (a machine cannot leave a group that requires one by naming another track); it is
        // read only when some group requires credentials and this request is not authenticated.
        let stored_group =
            if catalogue.credentials_required() && !verdict.authenticates(&input.machine_id) {
                let app_id = crate::model::normalize_appid(&input.appid);
                match st
                    .service
                    .store
                    .instance(input.machine_id.trim(), &app_id)
                    .await
                {
                    Ok(row) => row.and_then(|r| r.group_id),
                    Err(e) => {
                        tracing::error!(error = %e, "reading the machine's stored group failed");
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "storage unavailable, retry later\n",
                        )
                            .into_response();
                    }
                }
            } else {
                None
            };
        let gated = crate::credential::gate(&catalogue, &input, || stored_group, &verdict);
        if gated.is_some() {
            st.credentials.metrics().ignored.inc();
            st.metrics
                .events_dropped("unauthenticated", input.events.len() as u64);
            st.metrics.check(
                &crate::model::normalize_appid(&input.appid),
                "noupdate_unauthenticated",
            );
        }
        let answer = match gated {
            Some(a) => Ok(a),
            None => st.service.handle(&input).await,
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "update check failed");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage unavailable, retry later\n",
                )
                    .into_response();
            }
        };
        let out = match answer {
            AppAnswer::UnknownApp => AppResponse::unknown_application(&app.appid),
            AppAnswer::Known {
                events,
                ping,
                check,
            } => {
                let mut a = AppResponse::new(&app.appid);
                if ping {
                    a = a.with_ping_ack();
                }
                if let Some(c) = &check {
                    a = a.with_updatecheck(updatecheck_of(c, st.service.omaha.poll_interval_secs));
                }
                a.with_event_acks(events)
            }
        };
        resp = resp.with_app(out);
    }
    let mut answer = (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        resp.to_xml(),
    )
        .into_response();
    if let Some(status) = signature_status {
        answer.headers_mut().insert(
            omaha::credential::STATUS_HEADER_NAME,
            header::HeaderValue::from_static(status),
        );
    }
    answer
}
