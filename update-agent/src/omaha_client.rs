//! The agent's side of Omaha: builds update_engine-dialect requests from the identity and state,
//! sends them through the one HTTP client, and turns the answer into an [`CheckAnswer`]
//! (no update, or an [`Offer`] with URLs, size and SHA-256) or a [`CheckError`] that carries the
//! update_engine error code to report.
//!
//! One request may carry several `<app>`s: the OS app and every enabled runtime extension
//! ([`extension_app`], [`check_request_with`], [`multi_app_request`]); each `<app>` of the answer
//! is read on its own with [`interpret`]. An extension's `<app>` carries the OS version its build
//! must support as `ap="os=VERSION"` ([`OS_CONTEXT_PREFIX`]): the booted version, or the staged
//! one while an OS update waits for its reboot.

use std::time::Duration;

use futures_util::StreamExt as _;
use omaha::{
    Action, AppRequest, DecodedErrorCode, ErrorCode, ErrorFlags, EventRequest, Os, Package,
    Request, Response, UpdateCheckStatus,
};
use url::Url;

use crate::identity::Identity;

/// Client name sent as `version`/`updaterversion`.
pub const CLIENT_VERSION: &str = concat!("platte-agent-", env!("CARGO_PKG_VERSION"));
/// Largest Omaha response body read.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// An update the server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Version after the update.
    pub version: String,
    /// Download URLs of the payload, in the order to try them (codebase + package name).
    pub urls: Vec<Url>,
    /// Payload size announced by the server.
    pub size: u64,
    /// Payload SHA-256 announced by the server.
    pub sha256: [u8; 32],
    /// The server marked this a downgrade (`_rollback="true"`).
    pub rollback: bool,
    /// The server announced a delta payload (`IsDeltaPayload="true"` on the postinstall
    /// action). Information only (logged, shown in the status until the payload is verified):
    /// what the payload is, and whether it needs the running slot as its source, is decided by
    /// its verified manifest.
    pub delta: bool,
}

/// What an update check answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckAnswer {
    /// The offered update, `None` for `noupdate`.
    pub offer: Option<Offer>,
    /// The server's `PollInterval`.
    pub poll_interval: Option<Duration>,
}

/// Why a check (or an event report) failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Connecting, sending or receiving failed.
    #[error("Omaha request to {url} failed: {source}")]
    Transport {
        /// The endpoint.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server answered with an HTTP error status.
    #[error("Omaha server {url} answered HTTP {status}")]
    HttpStatus {
        /// The endpoint.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The answer is larger than [`MAX_RESPONSE_BYTES`].
    #[error("Omaha response is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The answer is not a valid Omaha response.
    #[error("invalid Omaha response: {0}")]
    Parse(#[from] omaha::ParseError),
    /// The answer has no `<app>` for this app id.
    #[error("the Omaha response has no app {0}")]
    NoApp(String),
    /// The answer's `<app>` or `<updatecheck>` says error.
    #[error("the server answered status {0:?}")]
    ServerStatus(String),
    /// An `ok` update check is unusable (no manifest, package, URL, size or SHA-256).
    #[error("unusable update offer: {0}")]
    BadOffer(String),
}

impl CheckError {
    /// update_engine's code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            CheckError::Transport { .. } => ErrorCode::OmahaRequestError,
            CheckError::HttpStatus { status, .. } => ErrorCode::http(u32::from(*status)),
            CheckError::TooLarge | CheckError::Parse(_) => ErrorCode::OmahaRequestXmlParseError,
            CheckError::NoApp(_) | CheckError::ServerStatus(_) => ErrorCode::OmahaResponseInvalid,
            CheckError::BadOffer(_) => ErrorCode::OmahaResponseHandlerError,
        }
    }
}

/// Logs what the server made of this host's machine credential, when it did not accept it
/// (the request then counted as unsigned: groups that require a credential ignore it). Returns
/// whether the server accepted the signature.
fn log_signature_status(headers: &reqwest::header::HeaderMap) -> bool {
    let Some(status) = headers
        .get(omaha::credential::STATUS_HEADER_NAME)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let hint = match status {
        "valid" => return true,
        "stale" => "this host's clock is off from the server's by more than the allowed skew",
        "key_mismatch" => {
            "the server has another key for this machine id; an operator runs \
             `update-server instance forget-credential <machine-id>` or enrolls this key"
        }
        "unenrolled" => {
            "the server binds keys only by enrollment: `update-server instance enroll \
             <machine-id> \"$(update-agent machine-key)\"`"
        }
        _ => "the signature did not verify",
    };
    let status: String = status.chars().take(32).collect();
    tracing::warn!(%status, hint, "the server did not accept this host's machine credential; the check counted as unsigned");
    false
}

/// `code` with the flag update_engine sets against any non-Flatcar server.
pub fn reported(code: ErrorCode) -> DecodedErrorCode {
    DecodedErrorCode::new(code).with_flags(ErrorFlags::NON_PRODUCTION_SERVER)
}

/// The request skeleton with `<os>` and one `<app>` describing this host, saying
/// `delta_okay` (whether a delta payload from the running version may be offered).
fn base(id: &Identity, interactive: bool, delta_okay: bool) -> (Request, AppRequest) {
    let req = Request::new(CLIENT_VERSION)
        .with_installsource(if interactive {
            "ondemandupdate"
        } else {
            "scheduler"
        })
        .with_os(Os::new(
            "CoreOS",
            "Chateau",
            format!("{}_{}", id.os_version, id.arch),
        ));
    let mut app = host_app(id, &id.app_id, &id.os_version, &id.group);
    app.delta_okay = Some(delta_okay);
    (req, app)
}

/// An `<app>` of this host: `app_id` at `version` on `track`, with the host's boot and machine
/// ids, alias and board, `en-US`, and no deltas (`delta_okay="false"`; the OS app's is set by
/// the caller).
fn host_app(id: &Identity, app_id: &str, version: &str, track: &str) -> AppRequest {
    let mut app = AppRequest::new(app_id, version);
    app.track = Some(track.to_owned());
    app.bootid = Some(format!("{{{}}}", id.boot_id));
    app.machineid = Some(id.machine_id.clone());
    app.machinealias = id.alias.clone();
    app.board = Some(id.board.clone());
    app.lang = Some("en-US".into());
    app.delta_okay = Some(false);
    app
}

/// An update check: ping + updatecheck + the 3/2 event, whose `previousversion` is the version
/// before the update on the first check after an update reboot, and empty otherwise. The OS
/// app says `delta_okay` (see the agent's `updates.deltas` and its delta fallback).
pub fn check_request(
    id: &Identity,
    previous_version: Option<&str>,
    interactive: bool,
    delta_okay: bool,
) -> Request {
    check_request_with(id, previous_version, interactive, delta_okay, Vec::new())
}

/// [`check_request`] with further `<app>`s (runtime extensions, from [`extension_app`]) after
/// the OS app, all in one request.
pub fn check_request_with(
    id: &Identity,
    previous_version: Option<&str>,
    interactive: bool,
    delta_okay: bool,
    extra_apps: Vec<AppRequest>,
) -> Request {
    let (req, app) = base(id, interactive, delta_okay);
    let req = req.with_app(
        app.with_active_ping()
            .with_updatecheck()
            .with_event(EventRequest::rebooted(previous_version.unwrap_or(""))),
    );
    extra_apps.into_iter().fold(req, Request::with_app)
}

/// Prefix of the `ap` attribute value naming the OS version an extension build must support.
pub const OS_CONTEXT_PREFIX: &str = "os=";

/// The `<app>` of a runtime extension: its own app id, version (`0.0.0` before the first
/// install) and track, this host's machine and boot ids, and `ap="os=OS_VERSION"`. No ping,
/// update check or event yet.
pub fn extension_app(
    id: &Identity,
    app_id: &str,
    version: &str,
    track: &str,
    os_version: &str,
) -> AppRequest {
    let mut app = host_app(id, app_id, version, track);
    app.ap = Some(format!("{OS_CONTEXT_PREFIX}{os_version}"));
    app
}

/// The OS version an extension `<app>` names in its `ap` attribute (see [`OS_CONTEXT_PREFIX`]).
pub fn os_context(app: &AppRequest) -> Option<&str> {
    app.ap.as_deref()?.strip_prefix(OS_CONTEXT_PREFIX)
}

/// A request with the `<os>` of this host and exactly `apps` (e.g. extension apps only).
pub fn multi_app_request(id: &Identity, apps: Vec<AppRequest>, interactive: bool) -> Request {
    let (req, _) = base(id, interactive, false);
    apps.into_iter().fold(req, Request::with_app)
}

/// A request carrying one event (13/1, 14/1, 3/1, 3/0...); its `<app>` says `delta_okay` as the
/// check did (update_engine sends the attribute on every `<app>`).
pub fn event_request(id: &Identity, event: EventRequest, delta_okay: bool) -> Request {
    let (req, app) = base(id, false, delta_okay);
    req.with_app(app.with_event(event))
}

/// Interprets the answer to [`check_request`] for app `app_id`.
pub fn interpret(resp: &Response, app_id: &str) -> Result<CheckAnswer, CheckError> {
    let app = resp
        .app(app_id)
        .ok_or_else(|| CheckError::NoApp(app_id.to_owned()))?;
    if app.status.is_error() {
        return Err(CheckError::ServerStatus(app.status.as_str().to_owned()));
    }
    let uc = app
        .updatecheck
        .as_ref()
        .ok_or_else(|| CheckError::BadOffer("no <updatecheck> in the answer".into()))?;
    let poll_interval = uc.poll_interval.map(|s| Duration::from_secs(u64::from(s)));
    match &uc.status {
        UpdateCheckStatus::NoUpdate => {
            return Ok(CheckAnswer {
                offer: None,
                poll_interval,
            });
        }
        UpdateCheckStatus::Ok => {}
        other => return Err(CheckError::ServerStatus(other.as_str().to_owned())),
    }
    let bad = |m: &str| CheckError::BadOffer(m.to_owned());
    let manifest = uc.next_manifest().ok_or_else(|| bad("no <manifest>"))?;
    if manifest.version.is_empty() {
        return Err(bad("the manifest has no version"));
    }
    let pkg = match manifest.packages.as_slice() {
        [p] => p,
        [] => return Err(bad("the manifest has no <package>")),
        _ => return Err(bad("the manifest has several packages; one is expected")),
    };
    if pkg.name.is_empty() || pkg.name.contains('/') || pkg.size == 0 {
        return Err(bad("the package has no usable name or size"));
    }
    let postinstall = manifest.postinstall();
    let sha256 = offered_sha256(pkg, postinstall)?;
    let urls: Vec<Url> = uc
        .urls
        .iter()
        .filter_map(|base| {
            let base = if base.ends_with('/') {
                base.clone()
            } else {
                format!("{base}/")
            };
            Url::parse(&base)
                .and_then(|b| b.join(&pkg.name))
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
        })
        .collect();
    if urls.is_empty() {
        return Err(bad("no usable http(s) codebase URL"));
    }
    Ok(CheckAnswer {
        offer: Some(Offer {
            version: manifest.version.clone(),
            urls,
            size: pkg.size,
            sha256,
            rollback: uc.rollback,
            delta: postinstall.is_some_and(|a| a.is_delta_payload),
        }),
        poll_interval,
    })
}

/// The payload's SHA-256 from every place an answer may carry it: the package's `hash_sha256`
/// (hex, or base64 as go-omaha's server writes it) and the postinstall action's `sha256`
/// (base64, or hex). A value that does not decode to 32 bytes is skipped with a warning; the
/// usable ones must all agree, and at least one must be left.
fn offered_sha256(pkg: &Package, postinstall: Option<&Action>) -> Result<[u8; 32], CheckError> {
    let found = [
        pkg.sha256_hex_or_base64(),
        postinstall.map_or(Ok(None), Action::sha256_hex_or_base64),
    ];
    let mut usable: Option<[u8; 32]> = None;
    let mut skipped = Vec::new();
    for digest in found {
        match digest {
            Ok(Some(d)) => match usable {
                Some(u) if u != d => {
                    return Err(CheckError::BadOffer(format!(
                        "the answer's SHA-256 values disagree: {} and {}",
                        hex::encode(u),
                        hex::encode(d)
                    )));
                }
                _ => usable = Some(d),
            },
            Ok(None) => {}
            Err(e) => skipped.push(e.to_string()),
        }
    }
    match usable {
        Some(d) => {
            for reason in &skipped {
                tracing::warn!(package = %pkg.name, %reason, "ignoring an unusable SHA-256 in the answer; another one is usable");
            }
            Ok(d)
        }
        None if skipped.is_empty() => Err(CheckError::BadOffer(
            "no SHA-256 for the package (hash_sha256 or action sha256)".into(),
        )),
        None => Err(CheckError::BadOffer(format!(
            "no usable SHA-256 for the package: {}",
            skipped.join("; ")
        ))),
    }
}

/// The timestamp to sign at `now`: never earlier than the last one the server accepted
/// (`last_accepted`; only accepted ones count, so a clock that was far ahead and then corrected
/// does not keep every later signature in the future).
fn signing_time(last_accepted: &std::sync::atomic::AtomicI64, now: i64) -> i64 {
    last_accepted
        .load(std::sync::atomic::Ordering::Acquire)
        .max(now)
}

/// Sends Omaha requests to one server.
#[derive(Debug, Clone)]
pub struct OmahaClient {
    http: reqwest::Client,
    url: Url,
    timeout: Duration,
    /// Signs each request (`Platte-Machine-Signature`) when set.
    machine_key: Option<std::sync::Arc<crate::machine_key::MachineKey>>,
    /// The latest signed timestamp the server accepted, shared by clones: signatures never go
    /// behind it when the clock is stepped back (the server refuses a timestamp older than the
    /// last it accepted from the key).
    last_accepted: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl OmahaClient {
    /// A client for `url` using `http`, each request bounded by `timeout`.
    pub fn new(http: reqwest::Client, url: Url, timeout: Duration) -> Self {
        Self {
            http,
            url,
            timeout,
            machine_key: None,
            last_accepted: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0)),
        }
    }

    /// This client, signing every request with `key` (see [`crate::machine_key`]).
    pub fn with_machine_key(mut self, key: std::sync::Arc<crate::machine_key::MachineKey>) -> Self {
        self.machine_key = Some(key);
        self
    }

    /// The server URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Sends `req` and parses the answer.
    pub async fn send(&self, req: &Request) -> Result<Response, CheckError> {
        let transport = |source| CheckError::Transport {
            url: self.url.to_string(),
            source,
        };
        let body = req.to_xml();
        let mut signed_at = None;
        let mut post = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "text/xml")
            .timeout(self.timeout);
        if let Some(key) = &self.machine_key {
            let now = i64::try_from(payloads::unix_now()).unwrap_or(i64::MAX);
            let ts = signing_time(&self.last_accepted, now);
            signed_at = Some(ts);
            post = post.header(
                omaha::credential::HEADER_NAME,
                key.header_value(ts, body.as_bytes()),
            );
        }
        let resp = post.body(body).send().await.map_err(transport)?;
        let status = resp.status();
        if let Some(ts) = signed_at
            && log_signature_status(resp.headers())
        {
            self.last_accepted
                .fetch_max(ts, std::sync::atomic::Ordering::AcqRel);
        }
        if !status.is_success() {
            return Err(CheckError::HttpStatus {
                url: self.url.to_string(),
                status: status.as_u16(),
            });
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(transport)?;
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(CheckError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(omaha::parse_response(&body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omaha::{Action, AppResponse, DayStart, Manifest, Package, UpdateCheckResponse};

    const APP: &str = "{7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53}";

    #[test]
    fn signing_time_never_goes_behind_the_last_accepted() {
        let last = std::sync::atomic::AtomicI64::new(0);
        assert_eq!(signing_time(&last, 1_000), 1_000);
        last.store(1_000, std::sync::atomic::Ordering::Release);
        assert_eq!(signing_time(&last, 880), 1_000, "clock stepped back 120 s");
        assert_eq!(signing_time(&last, 1_001), 1_001);
    }

    fn id() -> Identity {
        Identity {
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            boot_id: "11111111-2222-3333-4444-555555555555".into(),
            app_id: APP.into(),
            group: "beta".into(),
            os_version: "3999.0.0".into(),
            board: "amd64-usr".into(),
            arch: "x86_64".into(),
            alias: Some("web-1".into()),
        }
    }

    fn answer(uc: UpdateCheckResponse) -> Response {
        Response::new("platte", DayStart::default())
            .with_app(AppResponse::new(APP.to_uppercase()).with_updatecheck(uc))
    }

    #[test]
    fn check_request_has_the_update_engine_shape() {
        let xml = check_request(&id(), Some("3998.0.0"), false, true).to_xml();
        let req = omaha::parse_request(xml.as_bytes()).unwrap();
        assert_eq!(req.installsource.as_deref(), Some("scheduler"));
        let app = &req.apps[0];
        assert_eq!(app.version.as_deref(), Some("3999.0.0"));
        assert_eq!(app.track.as_deref(), Some("beta"));
        assert_eq!(app.board.as_deref(), Some("amd64-usr"));
        assert_eq!(app.machinealias.as_deref(), Some("web-1"));
        assert!(app.ping.is_some() && app.updatecheck.is_some());
        assert_eq!(app.events.len(), 1);
        assert!(app.events[0].is_reboot_completion());
        assert_eq!(app.events[0].previousversion.as_deref(), Some("3998.0.0"));
        assert_eq!(app.delta_okay, Some(true));
        let later = check_request(&id(), None, true, false);
        assert_eq!(later.installsource.as_deref(), Some("ondemandupdate"));
        assert!(!later.apps[0].events[0].is_reboot_completion());
        assert_eq!(later.apps[0].delta_okay, Some(false));
        assert!(later.to_xml().contains(r#"delta_okay="false""#));
    }

    #[test]
    fn multi_app_request_carries_each_app_with_its_own_version_track_and_os_context() {
        let ext = extension_app(&id(), "containerd", "1.7.0", "edge", "4000.0.0")
            .with_active_ping()
            .with_updatecheck();
        let xml = check_request_with(&id(), None, false, true, vec![ext]).to_xml();
        let req = omaha::parse_request(xml.as_bytes()).unwrap();
        assert_eq!(req.apps.len(), 2);
        let (os, ext) = (&req.apps[0], &req.apps[1]);
        assert_eq!(os.appid, APP);
        assert_eq!(
            (os.version.as_deref(), os.track.as_deref()),
            (Some("3999.0.0"), Some("beta"))
        );
        assert_eq!(os.ap, None);
        assert_eq!(ext.appid, "containerd");
        assert_eq!(
            (ext.version.as_deref(), ext.track.as_deref()),
            (Some("1.7.0"), Some("edge"))
        );
        assert_eq!(os_context(ext), Some("4000.0.0"));
        // Deltas are for the OS image only.
        assert_eq!((os.delta_okay, ext.delta_okay), (Some(true), Some(false)));
        assert_eq!(
            ext.machineid.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(ext.updatecheck.is_some() && ext.events.is_empty());

        let only = multi_app_request(
            &id(),
            vec![extension_app(&id(), "d", "0.0.0", "s", "1")],
            true,
        );
        assert_eq!(only.apps.len(), 1);
        assert_eq!(only.installsource.as_deref(), Some("ondemandupdate"));
        assert!(only.os.is_some());
    }

    #[test]
    fn error_event_carries_flagged_code() {
        let req = event_request(
            &id(),
            EventRequest::error(reported(ErrorCode::RollbackError)),
            true,
        );
        let xml = req.to_xml();
        assert!(xml.contains(r#"errorcode="268435500""#), "{xml}");
        assert!(req.apps[0].updatecheck.is_none());
        assert_eq!(req.apps[0].delta_okay, Some(true));
    }

    #[test]
    fn interprets_offers() {
        let digest = [7u8; 32];
        let m = Manifest::new("4000.0.0").with_package(
            Package::new("p.payload", 1234)
                .with_sha256(&digest)
                .required(true),
        );
        let uc = UpdateCheckResponse::ok("http://a.example/pkg", m)
            .with_url("https://b.example/x/")
            .with_poll_interval(7200);
        let a = interpret(&answer(uc), APP).unwrap();
        let o = a.offer.unwrap();
        assert_eq!(o.version, "4000.0.0");
        assert_eq!(o.size, 1234);
        assert_eq!(o.sha256, digest);
        assert!(!o.rollback);
        assert!(!o.delta);
        assert_eq!(
            o.urls.iter().map(Url::as_str).collect::<Vec<_>>(),
            [
                "http://a.example/pkg/p.payload",
                "https://b.example/x/p.payload"
            ]
        );
        assert_eq!(a.poll_interval, Some(Duration::from_secs(7200)));

        // SHA-256 only in the postinstall action (update_engine's place), and the rollback mark.
        let m = Manifest::new("3000.0.0")
            .with_package(Package::new("p", 9))
            .with_action(Action::postinstall(&digest));
        let uc = UpdateCheckResponse::ok("http://a.example/", m).with_rollback(true);
        let o = interpret(&answer(uc), APP).unwrap().offer.unwrap();
        assert!(o.rollback);
        assert_eq!(o.sha256, digest);

        // A delta is announced on the postinstall action; the offer records it.
        let m = Manifest::new("4000.0.0")
            .with_package(Package::new("d.payload", 99).with_sha256(&digest))
            .with_action(Action::postinstall(&digest).with_is_delta_payload(true));
        let o = interpret(
            &answer(UpdateCheckResponse::ok("http://a.example/", m)),
            APP,
        )
        .unwrap()
        .offer
        .unwrap();
        assert!(o.delta);
        assert_eq!((o.version.as_str(), o.size), ("4000.0.0", 99));

        let none = interpret(&answer(UpdateCheckResponse::noupdate()), APP).unwrap();
        assert_eq!(none.offer, None);
    }

    /// A captured Omaha message from the shared test data (`../shared/testdata/omaha/`, see its
    /// INDEX.md), read at test time.
    fn captured(name: &str) -> String {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/omaha/");
        std::fs::read_to_string(format!("{dir}{name}"))
            .unwrap_or_else(|e| panic!("reading captured message {dir}{name}: {e}"))
    }

    /// App id of go-omaha's update_engine fixtures.
    const GO_OMAHA_APP: &str = "{87efface-864d-49a5-9bb3-4b050a7c227a}";
    /// The postinstall `sha256` of go-omaha's OK fixture (base64).
    const GO_OMAHA_SHA256: &str = "0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=";

    /// go-omaha's OK fixture with `hash_sha256="value"` added to its package, the attribute
    /// go-omaha's `Package.FromReader` fills with **base64** (flatcar/go-omaha omaha/package.go).
    fn go_omaha_with_hash_sha256(value: &str) -> Response {
        let xml = captured("go-omaha-response-ok-fixture.xml");
        let at = r#"<package hash="#;
        assert!(xml.contains(at), "{xml}");
        let xml = xml.replacen(at, &format!(r#"<package hash_sha256="{value}" hash="#), 1);
        omaha::parse_response(xml.as_bytes()).unwrap()
    }

    /// [`GO_OMAHA_SHA256`] decoded.
    fn digest_of_go_omaha_fixture() -> [u8; 32] {
        let mut d = [0u8; 32];
        hex::decode_to_slice(
            "d15025416dd113df521ad481e51e26d3c6a7b401cef170e804c283cb1413fcc8",
            &mut d,
        )
        .unwrap();
        assert_eq!(
            Action::postinstall(&d).sha256.as_deref(),
            Some(GO_OMAHA_SHA256)
        );
        d
    }

    #[test]
    fn go_omaha_answers_are_accepted() {
        let want = digest_of_go_omaha_fixture();
        // As captured: SHA-1 `hash` and the postinstall action's base64 `sha256`.
        let resp =
            omaha::parse_response(captured("go-omaha-response-ok-fixture.xml").as_bytes()).unwrap();
        let o = interpret(&resp, GO_OMAHA_APP).unwrap().offer.unwrap();
        assert_eq!(o.version, "9999.0.0");
        assert_eq!(o.size, 67_546_213);
        assert_eq!(o.sha256, want);
        assert_eq!(
            o.urls.iter().map(Url::as_str).collect::<Vec<_>>(),
            ["http://kam:8080/static/update.gz"]
        );
        // As go-omaha's stock server sends it: `hash_sha256` in base64, agreeing with the action.
        let o = interpret(&go_omaha_with_hash_sha256(GO_OMAHA_SHA256), GO_OMAHA_APP)
            .unwrap()
            .offer
            .unwrap();
        assert_eq!(o.sha256, want);
        // The same digest in hex (the protocol's encoding) agrees too.
        let o = interpret(&go_omaha_with_hash_sha256(&hex::encode(want)), GO_OMAHA_APP)
            .unwrap()
            .offer
            .unwrap();
        assert_eq!(o.sha256, want);
        // An unusable `hash_sha256` is skipped: the action's SHA-256 is still usable.
        let o = interpret(&go_omaha_with_hash_sha256("not-a-digest"), GO_OMAHA_APP)
            .unwrap()
            .offer
            .unwrap();
        assert_eq!(o.sha256, want);
    }

    #[test]
    fn disagreeing_or_unusable_hashes_are_refused() {
        // Both usable, different digests: refused, whichever encoding.
        let base64 = Action::postinstall(&[9u8; 32]).sha256.unwrap();
        for other in [hex::encode([9u8; 32]), base64] {
            let e = interpret(&go_omaha_with_hash_sha256(&other), GO_OMAHA_APP).unwrap_err();
            assert!(matches!(e, CheckError::BadOffer(_)), "{e}");
            assert!(e.to_string().contains("disagree"), "{e}");
            assert_eq!(e.code(), ErrorCode::OmahaResponseHandlerError);
        }
        // go-omaha's multi-manifest test answer carries placeholders, not digests: no usable
        // SHA-256 is left.
        let resp =
            omaha::parse_response(captured("go-omaha-response-multimanifest.xml").as_bytes())
                .unwrap();
        let e = interpret(&resp, "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}").unwrap_err();
        assert!(matches!(e, CheckError::BadOffer(_)), "{e}");
        assert!(e.to_string().contains("no usable SHA-256"), "{e}");
        // Garbage in both places.
        let m = Manifest::new("4000.0.0")
            .with_package(Package {
                hash_sha256: Some("zz".into()),
                ..Package::new("p", 9)
            })
            .with_action(Action {
                sha256: Some("!!".into()),
                ..Action::postinstall(&[0; 32])
            });
        let e = interpret(&answer(UpdateCheckResponse::ok("http://a/", m)), APP).unwrap_err();
        assert_eq!(e.code(), ErrorCode::OmahaResponseHandlerError);
    }

    #[test]
    fn rejects_unusable_answers() {
        let no_hash = Manifest::new("4000.0.0").with_package(Package::new("p", 9));
        let e = interpret(&answer(UpdateCheckResponse::ok("http://a/", no_hash)), APP).unwrap_err();
        assert!(matches!(e, CheckError::BadOffer(_)), "{e}");
        let m = Manifest::new("4000.0.0").with_package(Package::new("p", 9).with_sha256(&[0; 32]));
        let ftp = UpdateCheckResponse::ok("ftp://a/", m);
        assert!(interpret(&answer(ftp), APP).is_err());
        let other =
            Response::new("x", DayStart::default()).with_app(AppResponse::unknown_application(APP));
        let e = interpret(&other, APP).unwrap_err();
        assert_eq!(e.code(), ErrorCode::OmahaResponseInvalid);
        let e = interpret(
            &answer(UpdateCheckResponse::noupdate()),
            "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}",
        )
        .unwrap_err();
        assert!(matches!(e, CheckError::NoApp(_)));
        let status = CheckError::HttpStatus {
            url: "u".into(),
            status: 503,
        };
        assert_eq!(status.code().http_status(), Some(503));
    }
}
