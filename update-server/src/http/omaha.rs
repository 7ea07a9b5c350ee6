//! The Omaha endpoint `POST /v1/update/`: bounded body (64 KiB), parsed by the `omaha` crate,
//! each app answered independently by the [`UpdateService`](crate::service::UpdateService).
//! Malformed, oversized or hostile bodies get a 400 with a short reason.

use std::net::SocketAddr;

use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use omaha::{Action, AppResponse, DayStart, Manifest, Package, UpdateCheckResponse};

use super::AppState;
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

fn client_ip(headers: &HeaderMap, proxy_header: Option<&str>, peer: Option<SocketAddr>) -> String {
    if let Some(h) = proxy_header
        && let Some(v) = headers.get(h).and_then(|v| v.to_str().ok())
        && let Some(first) = v.split(',').next().map(str::trim).filter(|s| !s.is_empty())
    {
        return first.chars().take(64).collect();
    }
    peer.map(|p| p.ip().to_string()).unwrap_or_default()
}

/// Converts one parsed `<app>` into the service's input.
pub fn check_in_of(app: &omaha::AppRequest, os_arch: Option<&str>, ip: String) -> AppCheckIn {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    AppCheckIn {
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
        ping: app.ping.is_some(),
        updatecheck: app.updatecheck.is_some(),
    }
}

/// Builds the `<updatecheck>` of an answer.
pub fn updatecheck_of(answer: &CheckAnswer) -> UpdateCheckResponse {
    match answer {
        CheckAnswer::NoUpdate(_) => UpdateCheckResponse::noupdate(),
        CheckAnswer::Update {
            package,
            codebase,
            rollback,
        } => {
            let mut sha1 = [0u8; 20];
            let mut sha256 = [0u8; 32];
            use base64::Engine as _;
            let sha1_ok = base64::engine::general_purpose::STANDARD
                .decode(&package.sha1_base64)
                .ok()
                .filter(|v| v.len() == 20)
                .map(|v| sha1.copy_from_slice(&v))
                .is_some();
            let sha256_ok = hex::decode(&package.sha256_hex)
                .ok()
                .filter(|v| v.len() == 32)
                .map(|v| sha256.copy_from_slice(&v))
                .is_some();
            let mut pkg = Package::new(&package.filename, package.size).required(true);
            if sha1_ok {
                pkg = pkg.with_sha1(&sha1);
            }
            if sha256_ok {
                pkg = pkg.with_sha256(&sha256);
            }
            let manifest = Manifest::new(&package.version)
                .with_package(pkg)
                .with_action(Action::postinstall(&sha256).with_disable_payload_backoff(true));
            UpdateCheckResponse::ok(codebase, manifest).with_rollback(*rollback)
        }
    }
}

/// `POST /v1/update/`.
pub async fn update(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
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
    let ip = client_ip(&headers, st.proxy_header.as_deref(), Some(peer));
    let os_arch = req.os.as_ref().and_then(|o| o.arch.as_deref());
    let mut resp = omaha::Response::new("platte", DayStart::default());
    for app in &req.apps {
        let input = check_in_of(app, os_arch, ip.clone());
        let answer = match st.service.handle(&input).await {
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
                    a = a.with_updatecheck(updatecheck_of(c));
                }
                a.with_event_acks(events)
            }
        };
        resp = resp.with_app(out);
    }
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        resp.to_xml(),
    )
        .into_response()
}
