//! The fleet data model: applications, channels, groups (with rollout policy fields), packages,
//! instances, events and activity. Timestamps are Unix seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::lifecycle::InstanceStatus;

/// An application: a thing clients update (the OS, an extension...), keyed by its Omaha appid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct App {
    /// Normalised appid (lower case, no braces).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Creation time.
    pub created_at: i64,
    /// The event that completes an update of this application [default: `reboot`].
    #[serde(default)]
    pub completes_on: CompletesOn,
}

/// The client event that completes an update of an application (`docs/usage/flatcar.md`,
/// "Applications that do not reboot").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompletesOn {
    /// The first check after the update's reboot: 3/2 naming the previous version, as
    /// update_engine and Platte's agent send it.
    #[default]
    Reboot,
    /// The install: 3/1, for applications that do not reboot (Nebraska's Go `updater` library
    /// sends 3/1, then 3/2 with no previous version).
    Install,
}

impl CompletesOn {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CompletesOn::Reboot => "reboot",
            CompletesOn::Install => "install",
        }
    }

    /// The setting named `s` (as stored).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reboot" => Some(CompletesOn::Reboot),
            "install" => Some(CompletesOn::Install),
            _ => None,
        }
    }
}

/// A further file of a package (an OEM or extension sysext image, for instance), served as a
/// further `<package>` of the same manifest, under the package's codebase: hosted by this server
/// when the package is, else at the package's external URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PackageFile {
    /// File name clients append to the codebase URL (`oem-azure.gz`, `flatcar-podman.gz`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-1 of the file, base64 (Omaha `hash`).
    pub sha1_base64: String,
    /// SHA-256 of the file, hex.
    pub sha256_hex: String,
}

/// A published payload (hosted by this server or at an external URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Package {
    /// Server-assigned id.
    pub id: String,
    /// Owning application.
    pub app_id: String,
    /// Release version.
    pub version: String,
    /// Architecture (`amd64`, `arm64`, or `all`).
    pub arch: String,
    /// Payload kind from the manifest (e.g. `full`, `delta`, `sysext`).
    pub kind: String,
    /// File name clients append to the codebase URL.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-1 of the file, base64 (Omaha `hash`).
    pub sha1_base64: String,
    /// SHA-256 of the file, hex.
    pub sha256_hex: String,
    /// External codebase URL (ending in `/`) when not hosted by this server.
    pub external_url: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// The payload's format: which clients can apply it [default: `platte`].
    #[serde(default)]
    pub format: PackageFormat,
    /// For an `update_engine` payload: the size of its metadata (header and manifest), sent
    /// to update_engine as `MetadataSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_size: Option<u64>,
    /// For an `update_engine` payload: the vendor's signature of its metadata, base64
    /// (`MetadataSignatureRsa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_signature_rsa: Option<String>,
    /// For an `update_engine` payload: `deadline` of the answer (`now` installs at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// For an `update_engine` payload: it is a delta (`IsDeltaPayload`).
    #[serde(default)]
    pub is_delta: bool,
    /// `DisablePayloadBackoff` of the answer [default: true].
    #[serde(default = "yes")]
    pub disable_payload_backoff: bool,
    /// For an `update_engine` payload: `needsadmin` of the answer [default: false].
    #[serde(default)]
    pub needs_admin: bool,
    /// Further files served with the payload, in order (OEM and extension sysexts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PackageFile>,
    /// Delta payloads that turn an earlier version's image into this package's, one per
    /// source version (Platte payloads only): offered instead of the full payload to a machine
    /// that runs exactly that version and accepts deltas (`delta_okay`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<PackageDelta>,
}

/// A delta payload linked to its full package: a signed Platte payload (format version 2) that
/// builds the package's image from the image of `source_version`, hosted by this server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PackageDelta {
    /// The version whose image the delta reads (the machine's running version).
    pub source_version: String,
    /// File name clients append to the codebase URL.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-1 of the file, base64 (Omaha `hash`).
    pub sha1_base64: String,
    /// SHA-256 of the file, hex.
    pub sha256_hex: String,
    /// When it was published.
    pub created_at: i64,
}

/// Which payload of its release an update check last offered a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServedPayload {
    /// The full payload.
    Full,
    /// A delta from the version the machine ran.
    Delta,
}

impl ServedPayload {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServedPayload::Full => "full",
            ServedPayload::Delta => "delta",
        }
    }

    /// The kind named `s` (as stored).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(ServedPayload::Full),
            "delta" => Some(ServedPayload::Delta),
            _ => None,
        }
    }
}

fn yes() -> bool {
    true
}

/// The format of a package's file, which decides which clients can apply it.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PackageFormat {
    /// Platte's signed payload (`docs/development/payload-format.md`), verified on publish against the
    /// trusted publisher keys; applied by Platte's agent.
    #[default]
    Platte,
    /// update_engine's own payload ("CrAU"), as Flatcar and ChromeOS publish it, signed with the
    /// OS vendor's key, which the host checks; served byte for byte; applied by update_engine.
    UpdateEngine,
}

impl PackageFormat {
    /// Every format.
    pub const ALL: [PackageFormat; 2] = [PackageFormat::Platte, PackageFormat::UpdateEngine];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageFormat::Platte => "platte",
            PackageFormat::UpdateEngine => "update_engine",
        }
    }

    /// The format named `s` (as stored).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "platte" => Some(PackageFormat::Platte),
            "update_engine" => Some(PackageFormat::UpdateEngine),
            _ => None,
        }
    }
}

/// Which payload formats the client of an Omaha request can apply, told from the request's
/// `version` (docs/development/protocol.md, "Who is asking"): Platte's agent sends `platte-agent-<version>`,
/// update_engine (Flatcar, ChromeOS) `update_engine-<version>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientKind {
    /// Platte's agent: applies Platte payloads only.
    PlatteAgent,
    /// update_engine: applies its own (CrAU) payloads.
    UpdateEngine,
    /// Any other client: nothing is assumed of it.
    #[default]
    Other,
}

impl ClientKind {
    /// The client named by a request's `version` attribute.
    pub fn of(request_version: &str) -> Self {
        let v = request_version.trim();
        if v.starts_with("platte-agent") {
            ClientKind::PlatteAgent
        } else if v.starts_with("update_engine") {
            ClientKind::UpdateEngine
        } else {
            ClientKind::Other
        }
    }

    /// Whether the client can be offered a package of `format`: Platte's agent applies only
    /// Platte payloads, update_engine only its own (a Platte payload fails on its first bytes,
    /// error 21, and would count as a failed attempt); a client of another kind is offered
    /// either.
    pub fn can_apply(self, format: PackageFormat) -> bool {
        match self {
            ClientKind::PlatteAgent => format == PackageFormat::Platte,
            ClientKind::UpdateEngine => format == PackageFormat::UpdateEngine,
            ClientKind::Other => true,
        }
    }

    /// The formats the client can apply, in the order a channel's pointers are tried for it.
    pub fn formats(self) -> &'static [PackageFormat] {
        match self {
            ClientKind::PlatteAgent => &[PackageFormat::Platte],
            ClientKind::UpdateEngine => &[PackageFormat::UpdateEngine],
            ClientKind::Other => &PackageFormat::ALL,
        }
    }
}

/// A channel: names the package each architecture should run, one of each payload format, so
/// that Platte's agents and update_engine hosts following the channel are each offered their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Channel {
    /// Server-assigned id.
    pub id: String,
    /// Owning application.
    pub app_id: String,
    /// Channel name (`stable`, `beta`...), unique per app.
    pub name: String,
    /// Package id per architecture: Platte payloads.
    pub packages: BTreeMap<String, String>,
    /// Package id per architecture: update_engine payloads.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub update_engine_packages: BTreeMap<String, String>,
    /// Creation time.
    pub created_at: i64,
}

impl Channel {
    /// The channel's pointers to packages of `format`: package id per architecture.
    pub fn pointers(&self, format: PackageFormat) -> &BTreeMap<String, String> {
        match format {
            PackageFormat::Platte => &self.packages,
            PackageFormat::UpdateEngine => &self.update_engine_packages,
        }
    }

    /// The channel's pointers to packages of `format`, to change.
    pub fn pointers_mut(&mut self, format: PackageFormat) -> &mut BTreeMap<String, String> {
        match format {
            PackageFormat::Platte => &mut self.packages,
            PackageFormat::UpdateEngine => &mut self.update_engine_packages,
        }
    }

    /// Every pointer: (format, architecture, package id), Platte's first.
    pub fn all_pointers(&self) -> impl Iterator<Item = (PackageFormat, &str, &str)> {
        PackageFormat::ALL.into_iter().flat_map(move |f| {
            self.pointers(f)
                .iter()
                .map(move |(a, p)| (f, a.as_str(), p.as_str()))
        })
    }

    /// Whether the channel points at package `id` (in any format).
    pub fn points_at(&self, id: &str) -> bool {
        self.all_pointers().any(|(_, _, p)| p == id)
    }
}

/// Rollout policy of a group. Stored as one JSON document so the policy engine (issue 5) can add
/// fields without a schema migration; unknown fields are kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupPolicy {
    /// Rollout paused: checks are answered `noupdate` (reason `paused`).
    #[serde(default)]
    pub paused: bool,
    /// Whether check-ins must carry a machine credential (`optional` or `required`; see
    /// [`crate::credential`]) [default: optional].
    #[serde(
        default,
        skip_serializing_if = "crate::credential::Requirement::is_optional"
    )]
    pub machine_credential: crate::credential::Requirement,
    /// Further policy fields (percentages, ramps, limits, windows...), kept as given.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A group of machines: clients name it in the Omaha `track`; it follows one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    /// Server-assigned id.
    pub id: String,
    /// Owning application.
    pub app_id: String,
    /// Human name.
    pub name: String,
    /// The Omaha `track` clients send (unique per app).
    pub track: String,
    /// Channel followed, if any.
    pub channel_id: Option<String>,
    /// Free text.
    pub description: String,
    /// Rollout policy.
    pub policy: GroupPolicy,
    /// Creation time.
    pub created_at: i64,
}

/// What the server knows about one machine running one application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    /// Machine id (`/etc/machine-id`).
    pub machine_id: String,
    /// Application.
    pub app_id: String,
    /// Operator-facing alias the machine reports.
    pub alias: String,
    /// Client IP as seen (or from the trusted proxy header).
    pub ip: String,
    /// Version the machine runs.
    pub version: String,
    /// Group resolved from the track (if known).
    pub group_id: Option<String>,
    /// Track as sent.
    pub track: String,
    /// OEM id.
    pub oem: String,
    /// OEM version.
    pub oem_version: String,
    /// Board (`amd64-usr`...).
    pub board: String,
    /// Boot id of the last check.
    pub boot_id: String,
    /// Last contact.
    pub last_check_at: i64,
    /// Version last granted.
    pub granted_version: Option<String>,
    /// When it was granted.
    pub granted_at: Option<i64>,
    /// Lifecycle status.
    pub status: InstanceStatus,
    /// Why (hold reason, decoded error...).
    pub status_detail: String,
    /// update_engine error code of the last failure (flags included).
    pub error_code: Option<i64>,
    /// When the status last changed.
    pub status_at: i64,
    /// First contact.
    pub created_at: i64,
    /// Which payload of its release the last offer served (full or delta); none before the
    /// first offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_payload: Option<ServedPayload>,
}

/// One entry of an instance's status history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusChange {
    /// New status.
    pub status: InstanceStatus,
    /// Version the machine ran.
    pub version: String,
    /// Detail (reason, decoded error).
    pub detail: String,
    /// Error code, if any.
    pub error_code: Option<i64>,
    /// When.
    pub at: i64,
}

/// An Omaha event a client reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventRecord {
    /// Sequence number.
    pub id: i64,
    /// Machine.
    pub machine_id: String,
    /// Application.
    pub app_id: String,
    /// Omaha event type.
    pub event_type: i64,
    /// Omaha event result.
    pub event_result: i64,
    /// Error code as sent.
    pub error_code: Option<i64>,
    /// previousversion as sent.
    pub previous_version: String,
    /// Version the client reported with the event.
    pub version: String,
    /// When received.
    pub at: i64,
}

/// Severity of an activity entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Informational.
    Info,
    /// Something went well.
    Success,
    /// Needs a look.
    Warning,
    /// Something failed.
    Error,
}

impl Severity {
    /// Stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Success => "success",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
    /// Parses the text form (unknown → info).
    pub fn parse(s: &str) -> Self {
        match s {
            "success" => Self::Success,
            "warning" => Self::Warning,
            "error" => Self::Error,
            _ => Self::Info,
        }
    }
}

/// One entry of the activity feed (admin changes and notable fleet happenings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Activity {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: i64,
    /// Machine-readable kind (`app_created`, `instance_update_failed`...).
    pub kind: String,
    /// Severity.
    pub severity: Severity,
    /// Application concerned.
    pub app_id: Option<String>,
    /// Group concerned.
    pub group_id: Option<String>,
    /// Machine concerned.
    pub machine_id: Option<String>,
    /// Version concerned.
    pub version: Option<String>,
    /// Human text.
    pub message: String,
}

/// A new activity entry (before it has an id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewActivity {
    /// Kind.
    pub kind: String,
    /// Severity text.
    pub severity: &'static str,
    /// Application.
    pub app_id: Option<String>,
    /// Group.
    pub group_id: Option<String>,
    /// Machine.
    pub machine_id: Option<String>,
    /// Version.
    pub version: Option<String>,
    /// Text.
    pub message: String,
}

/// Normalises an Omaha appid: trims, strips braces, lower-cases.
pub fn normalize_appid(appid: &str) -> String {
    appid
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_ascii_lowercase()
}

/// Maps a board / arch string from a client or manifest to the catalogue's arch names.
pub fn normalize_arch(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    let base = s.strip_suffix("-usr").unwrap_or(&s);
    match base {
        "" => "amd64".to_owned(),
        "x86_64" | "x64" | "amd64" => "amd64".to_owned(),
        "aarch64" | "arm64" => "arm64".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appid_normalised() {
        assert_eq!(
            normalize_appid(" {E96281A6-D1AF-4BDE-9A0A-97B76E56DC57} "),
            "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
        );
    }

    #[test]
    fn arch_normalised() {
        assert_eq!(normalize_arch("amd64-usr"), "amd64");
        assert_eq!(normalize_arch("arm64-usr"), "arm64");
        assert_eq!(normalize_arch("x86_64"), "amd64");
        assert_eq!(normalize_arch(""), "amd64");
        assert_eq!(normalize_arch("riscv64"), "riscv64");
    }

    #[test]
    fn policy_keeps_unknown_fields() {
        let p: GroupPolicy =
            serde_json::from_str(r#"{"paused":true,"percentage":25,"windows":[]}"#).unwrap();
        assert!(p.paused);
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back["percentage"], 25);
        assert_eq!(back["windows"], serde_json::json!([]));
    }
}
