//! The typed Omaha v3 response: what a server sends and an agent reads.
//!
//! Unknown attributes and elements are dropped when parsing. Digest helpers encode and decode the
//! three hash encodings that must not be confused: package `hash` (SHA-1, base64), package
//! `hash_sha256` (SHA-256, hex) and postinstall `sha256` (SHA-256, base64).

use crate::appid::normalize_appid;
use crate::digest::{self, DigestError};

/// A `<response protocol="3.0">`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// `server`: diagnostic server name.
    pub server: Option<String>,
    /// `<daystart>`, if sent.
    pub daystart: Option<DayStart>,
    /// The `<app>` elements in order.
    pub apps: Vec<AppResponse>,
}

impl Response {
    /// An empty response with `server` set and a `<daystart>`.
    pub fn new(server: impl Into<String>, daystart: DayStart) -> Self {
        Response {
            server: Some(server.into()),
            daystart: Some(daystart),
            apps: Vec::new(),
        }
    }

    /// Appends an `<app>`.
    pub fn with_app(mut self, app: AppResponse) -> Self {
        self.apps.push(app);
        self
    }

    /// The first app whose normalised appid equals the normalised `appid`.
    pub fn app(&self, appid: &str) -> Option<&AppResponse> {
        let want = normalize_appid(appid);
        self.apps.iter().find(|a| normalize_appid(&a.appid) == want)
    }
}

/// `<daystart elapsed_seconds elapsed_days>`: the server's notion of "today".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DayStart {
    /// `elapsed_seconds`: seconds since the server's local midnight.
    pub elapsed_seconds: i64,
    /// `elapsed_days`: days since 2007-01-01.
    pub elapsed_days: Option<i64>,
}

/// `status` of a response `<app>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AppStatus {
    /// `ok`.
    Ok,
    /// `restricted`.
    Restricted,
    /// `error-unknownApplication`: the server does not serve this appid.
    ErrorUnknownApplication,
    /// `error-invalidAppId`.
    ErrorInvalidAppId,
    /// `error-internal`.
    ErrorInternal,
    /// Any other value, kept as sent (Nebraska sends e.g. `error-noPackageFound`).
    Other(String),
}

impl AppStatus {
    /// Maps a wire value to its variant.
    pub fn from_wire(s: &str) -> Self {
        match s {
            "ok" => AppStatus::Ok,
            "restricted" => AppStatus::Restricted,
            "error-unknownApplication" => AppStatus::ErrorUnknownApplication,
            "error-invalidAppId" => AppStatus::ErrorInvalidAppId,
            "error-internal" => AppStatus::ErrorInternal,
            other => AppStatus::Other(other.to_owned()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            AppStatus::Ok => "ok",
            AppStatus::Restricted => "restricted",
            AppStatus::ErrorUnknownApplication => "error-unknownApplication",
            AppStatus::ErrorInvalidAppId => "error-invalidAppId",
            AppStatus::ErrorInternal => "error-internal",
            AppStatus::Other(s) => s,
        }
    }

    /// Whether the value starts with `error-`.
    pub fn is_error(&self) -> bool {
        self.as_str().starts_with("error-")
    }
}

/// `status` of a response `<updatecheck>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpdateCheckStatus {
    /// `ok`: an update is offered.
    Ok,
    /// `noupdate`: nothing to do (also Platte's answer to a policy hold).
    NoUpdate,
    /// `error-internal`.
    ErrorInternal,
    /// Any other value, kept as sent (update_engine treats all of them as error 34).
    Other(String),
}

impl UpdateCheckStatus {
    /// Maps a wire value to its variant.
    pub fn from_wire(s: &str) -> Self {
        match s {
            "ok" => UpdateCheckStatus::Ok,
            "noupdate" => UpdateCheckStatus::NoUpdate,
            "error-internal" => UpdateCheckStatus::ErrorInternal,
            other => UpdateCheckStatus::Other(other.to_owned()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            UpdateCheckStatus::Ok => "ok",
            UpdateCheckStatus::NoUpdate => "noupdate",
            UpdateCheckStatus::ErrorInternal => "error-internal",
            UpdateCheckStatus::Other(s) => s,
        }
    }

    /// Whether the value starts with `error-`.
    pub fn is_error(&self) -> bool {
        self.as_str().starts_with("error-")
    }
}

/// A `<ping status>` or `<event status>` acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// `status` (`ok`).
    pub status: String,
}

impl Ack {
    /// `status="ok"`.
    pub fn ok() -> Self {
        Ack {
            status: "ok".to_owned(),
        }
    }
}

/// One response `<app>`: children are serialised as ping, updatecheck, events (Nebraska's order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppResponse {
    /// `appid`, normally echoed exactly as the client sent it.
    pub appid: String,
    /// `status` (a missing attribute reads as `ok`).
    pub status: AppStatus,
    /// `<ping status>` acknowledgement, if any.
    pub ping: Option<Ack>,
    /// `<updatecheck>`, if any.
    pub updatecheck: Option<UpdateCheckResponse>,
    /// One `<event status>` per request event.
    pub events: Vec<Ack>,
}

impl AppResponse {
    /// An `ok` app with no children yet.
    pub fn new(appid: impl Into<String>) -> Self {
        AppResponse {
            appid: appid.into(),
            status: AppStatus::Ok,
            ping: None,
            updatecheck: None,
            events: Vec::new(),
        }
    }

    /// An app-level `error-unknownApplication` (no children): the server does not serve it.
    pub fn unknown_application(appid: impl Into<String>) -> Self {
        AppResponse {
            status: AppStatus::ErrorUnknownApplication,
            ..AppResponse::new(appid)
        }
    }

    /// Adds `<ping status="ok">`.
    pub fn with_ping_ack(mut self) -> Self {
        self.ping = Some(Ack::ok());
        self
    }

    /// Adds `count` `<event status="ok">` acknowledgements.
    pub fn with_event_acks(mut self, count: usize) -> Self {
        self.events.extend(std::iter::repeat_n(Ack::ok(), count));
        self
    }

    /// Sets the `<updatecheck>`.
    pub fn with_updatecheck(mut self, updatecheck: UpdateCheckResponse) -> Self {
        self.updatecheck = Some(updatecheck);
        self
    }
}

/// Response `<updatecheck>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateCheckResponse {
    /// `status`.
    pub status: UpdateCheckStatus,
    /// `PollInterval` (ChromeOS extension): seconds until the client's next check.
    pub poll_interval: Option<u32>,
    /// `_rollback="true"` (ChromeOS extension): the offered version is a deliberate downgrade.
    pub rollback: bool,
    /// `<urls><url codebase>`: download URL prefixes, to be tried in order.
    pub urls: Vec<String>,
    /// `<manifest>`s: one normally; several with the Flatcar floor extension.
    pub manifests: Vec<Manifest>,
}

impl UpdateCheckResponse {
    /// `status="noupdate"`.
    pub fn noupdate() -> Self {
        Self::with_status(UpdateCheckStatus::NoUpdate)
    }

    /// An updatecheck with `status` and nothing else (e.g. an `error-*` status).
    pub fn with_status(status: UpdateCheckStatus) -> Self {
        UpdateCheckResponse {
            status,
            poll_interval: None,
            rollback: false,
            urls: Vec::new(),
            manifests: Vec::new(),
        }
    }

    /// `status="ok"` offering `manifest`, downloadable under `codebase`.
    pub fn ok(codebase: impl Into<String>, manifest: Manifest) -> Self {
        UpdateCheckResponse {
            urls: vec![codebase.into()],
            manifests: vec![manifest],
            ..Self::with_status(UpdateCheckStatus::Ok)
        }
    }

    /// Appends another codebase URL (a mirror).
    pub fn with_url(mut self, codebase: impl Into<String>) -> Self {
        self.urls.push(codebase.into());
        self
    }

    /// Appends another manifest (floors).
    pub fn with_manifest(mut self, manifest: Manifest) -> Self {
        self.manifests.push(manifest);
        self
    }

    /// Sets `PollInterval` in seconds.
    pub fn with_poll_interval(mut self, seconds: u32) -> Self {
        self.poll_interval = Some(seconds);
        self
    }

    /// Sets the `_rollback` downgrade marker.
    pub fn with_rollback(mut self, rollback: bool) -> Self {
        self.rollback = rollback;
        self
    }

    /// The manifest to install: with floors, the first one (the next mandatory step); a client
    /// that reads only the first `<manifest>` (update_engine) gets the same.
    pub fn next_manifest(&self) -> Option<&Manifest> {
        self.manifests.first()
    }

    /// The manifest marked `is_target`, else the last one.
    pub fn target_manifest(&self) -> Option<&Manifest> {
        self.manifests
            .iter()
            .find(|m| m.is_target)
            .or_else(|| self.manifests.last())
    }
}

/// `<manifest version>` with its packages and actions, and the floor attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// `version`: the version after the update.
    pub version: String,
    /// `is_floor`: a mandatory intermediate version (Flatcar multi-step updates).
    pub is_floor: bool,
    /// `floor_reason`: why this floor is mandatory.
    pub floor_reason: Option<String>,
    /// `is_target`: the final version of a multi-manifest answer.
    pub is_target: bool,
    /// `<packages><package>`: the first is the payload; others are extras (sysexts).
    pub packages: Vec<Package>,
    /// `<actions><action>`.
    pub actions: Vec<Action>,
}

impl Manifest {
    /// A manifest for `version` with no packages or actions yet.
    pub fn new(version: impl Into<String>) -> Self {
        Manifest {
            version: version.into(),
            ..Manifest::default()
        }
    }

    /// Appends a package.
    pub fn with_package(mut self, package: Package) -> Self {
        self.packages.push(package);
        self
    }

    /// Appends an action.
    pub fn with_action(mut self, action: Action) -> Self {
        self.actions.push(action);
        self
    }

    /// Marks this manifest as a floor with an optional reason.
    pub fn as_floor(mut self, reason: Option<String>) -> Self {
        self.is_floor = true;
        self.floor_reason = reason;
        self
    }

    /// Marks this manifest as the target.
    pub fn as_target(mut self) -> Self {
        self.is_target = true;
        self
    }

    /// The first `event="postinstall"` action (the one update_engine reads).
    pub fn postinstall(&self) -> Option<&Action> {
        self.actions
            .iter()
            .find(|a| a.event == ActionEvent::Postinstall)
    }
}

/// `<package name size hash hash_sha256 required>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Package {
    /// `name`: file name, appended to each codebase.
    pub name: String,
    /// `size` in bytes.
    pub size: u64,
    /// `hash`: SHA-1 of the file, base64.
    pub hash: Option<String>,
    /// `hash_sha256`: SHA-256 of the file, lowercase hex.
    pub hash_sha256: Option<String>,
    /// `required` (a missing attribute reads as false).
    pub required: bool,
}

impl Package {
    /// A package named `name` of `size` bytes, not required, without hashes.
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        Package {
            name: name.into(),
            size,
            ..Package::default()
        }
    }

    /// Sets `required`.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// Sets `hash` from a SHA-1 digest (encoded base64).
    pub fn with_sha1(mut self, digest: &[u8; 20]) -> Self {
        self.hash = Some(digest::encode_base64(digest));
        self
    }

    /// Sets `hash_sha256` from a SHA-256 digest (encoded lowercase hex).
    pub fn with_sha256(mut self, digest: &[u8; 32]) -> Self {
        self.hash_sha256 = Some(hex::encode(digest));
        self
    }

    /// The decoded `hash` (SHA-1, base64), `None` when absent.
    pub fn sha1(&self) -> Result<Option<[u8; 20]>, DigestError> {
        self.hash
            .as_deref()
            .map(|h| digest::decode_base64("package hash", h))
            .transpose()
    }

    /// The decoded `hash_sha256` (SHA-256, hex), `None` when absent.
    pub fn sha256(&self) -> Result<Option<[u8; 32]>, DigestError> {
        self.hash_sha256
            .as_deref()
            .map(|h| digest::decode_hex("package hash_sha256", h))
            .transpose()
    }

    /// The decoded `hash_sha256` accepting hex (the protocol's encoding) **or** standard base64
    /// (what go-omaha's `Package.FromReader` writes); `None` when absent.
    pub fn sha256_hex_or_base64(&self) -> Result<Option<[u8; 32]>, DigestError> {
        self.hash_sha256
            .as_deref()
            .map(|h| digest::decode_hex_or_base64("package hash_sha256", h))
            .transpose()
    }
}

/// `event` of an `<action>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ActionEvent {
    /// `preinstall`.
    Preinstall,
    /// `install`.
    Install,
    /// `postinstall`: carries the payload `sha256` update_engine verifies.
    Postinstall,
    /// `update`.
    Update,
    /// Any other value, kept as sent.
    Other(String),
}

impl ActionEvent {
    /// Maps a wire value to its variant.
    pub fn from_wire(s: &str) -> Self {
        match s {
            "preinstall" => ActionEvent::Preinstall,
            "install" => ActionEvent::Install,
            "postinstall" => ActionEvent::Postinstall,
            "update" => ActionEvent::Update,
            other => ActionEvent::Other(other.to_owned()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            ActionEvent::Preinstall => "preinstall",
            ActionEvent::Install => "install",
            ActionEvent::Postinstall => "postinstall",
            ActionEvent::Update => "update",
            ActionEvent::Other(s) => s,
        }
    }
}

/// `<action event ...>` with the attributes update_engine reads from the postinstall action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// `event`.
    pub event: ActionEvent,
    /// `run`: a program to run (Google clients).
    pub run: Option<String>,
    /// `arguments` for `run`.
    pub arguments: Option<String>,
    /// `sha256`: SHA-256 of the payload, base64 (required by update_engine on postinstall).
    pub sha256: Option<String>,
    /// `DisablePayloadBackoff="true"`.
    pub disable_payload_backoff: bool,
    /// `MaxFailureCountPerUrl` (update_engine's default is 10).
    pub max_failure_count_per_url: Option<u32>,
    /// `IsDeltaPayload="true"`.
    pub is_delta_payload: bool,
    /// `ChromeOSVersion`: the version of the image the payload installs.
    pub chromeos_version: Option<String>,
    /// `MetadataSize`: the size of an update_engine payload's metadata (header and manifest).
    pub metadata_size: Option<u64>,
    /// `MetadataSignatureRsa`: the vendor's signature of that metadata, base64.
    pub metadata_signature_rsa: Option<String>,
    /// `needsadmin` (`"false"` in every known answer).
    pub needs_admin: Option<bool>,
    /// `deadline` (update_engine: `now` installs at once).
    pub deadline: Option<String>,
}

impl Action {
    /// An action for `event` with no attributes.
    pub fn new(event: ActionEvent) -> Self {
        Action {
            event,
            run: None,
            arguments: None,
            sha256: None,
            disable_payload_backoff: false,
            max_failure_count_per_url: None,
            is_delta_payload: false,
            chromeos_version: None,
            metadata_size: None,
            metadata_signature_rsa: None,
            needs_admin: None,
            deadline: None,
        }
    }

    /// `event="postinstall"` with `sha256` set from the payload's SHA-256 digest (base64).
    pub fn postinstall(payload_sha256: &[u8; 32]) -> Self {
        Action {
            sha256: Some(digest::encode_base64(payload_sha256)),
            ..Action::new(ActionEvent::Postinstall)
        }
    }

    /// Sets `DisablePayloadBackoff`.
    pub fn with_disable_payload_backoff(mut self, disable: bool) -> Self {
        self.disable_payload_backoff = disable;
        self
    }

    /// Sets `MaxFailureCountPerUrl`.
    pub fn with_max_failure_count_per_url(mut self, count: u32) -> Self {
        self.max_failure_count_per_url = Some(count);
        self
    }

    /// Sets `IsDeltaPayload`.
    pub fn with_is_delta_payload(mut self, delta: bool) -> Self {
        self.is_delta_payload = delta;
        self
    }

    /// The decoded `sha256` (SHA-256, base64), `None` when absent.
    pub fn sha256_digest(&self) -> Result<Option<[u8; 32]>, DigestError> {
        self.sha256
            .as_deref()
            .map(|h| digest::decode_base64("action sha256", h))
            .transpose()
    }

    /// The decoded `sha256` accepting base64 (update_engine's encoding) **or** hex (CoreUpdate's
    /// protocol document); `None` when absent.
    pub fn sha256_hex_or_base64(&self) -> Result<Option<[u8; 32]>, DigestError> {
        self.sha256
            .as_deref()
            .map(|h| digest::decode_hex_or_base64("action sha256", h))
            .transpose()
    }
}
