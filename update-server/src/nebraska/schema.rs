//! Nebraska's data as the importer reads it: one struct per table it maps (columns as Nebraska
//! stores them, text where Nebraska keeps numbers in text), and Nebraska's numeric codes for
//! architectures and package types.

/// Flatcar's Omaha application id (Nebraska's `coreos_app_id`).
pub const FLATCAR_APP_ID: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

/// Nebraska's `package.type` of a Flatcar update payload (`PkgTypeFlatcar`).
pub const PKG_TYPE_FLATCAR: i32 = 1;

/// Nebraska's `policy_max_updates_per_period` at and above which it enforces no limit
/// (`maxParallelUpdates`, unless safe mode is on).
pub const UNLIMITED_UPDATES: i32 = 900_000;

/// Everything the importer reads from one Nebraska database.
#[derive(Debug, Clone, Default)]
pub struct NebraskaDb {
    /// Table `application`.
    pub apps: Vec<App>,
    /// Table `package`, with each package's Flatcar action and extra files.
    pub packages: Vec<Package>,
    /// Table `channel` (one row per name and architecture).
    pub channels: Vec<Channel>,
    /// Table `groups`, with the overrides of `group_local` applied.
    pub groups: Vec<Group>,
    /// Table `channel_package_floors`: (channel id, package id).
    pub floors: Vec<(String, String)>,
    /// Table `package_channel_blacklist`: (package id, channel id).
    pub blacklist: Vec<(String, String)>,
}

/// A row of `application`.
#[derive(Debug, Clone, Default)]
pub struct App {
    /// UUID (the Omaha appid).
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Product id (`io.example.app`), which clients may send as their appid.
    pub product_id: Option<String>,
}

/// A row of `package`.
#[derive(Debug, Clone, Default)]
pub struct Package {
    /// UUID.
    pub id: String,
    /// Application UUID.
    pub app_id: String,
    /// `type`: 1 Flatcar, 2 Docker, 3 Rocket, 4 other.
    pub kind: i32,
    /// Version.
    pub version: String,
    /// The codebase URL the file name is appended to.
    pub url: Option<String>,
    /// File name.
    pub filename: Option<String>,
    /// Size in bytes, as text.
    pub size: Option<String>,
    /// SHA-1 of the file, base64 (`hash`).
    pub sha1: Option<String>,
    /// Architecture code (see [`arch_name`]).
    pub arch: i32,
    /// The Flatcar action (`flatcar_action`, formerly `coreos_action`), if any.
    pub action: Option<Action>,
    /// Extra files (`package_file`), in their order.
    pub files: Vec<File>,
}

/// A row of `flatcar_action`: the attributes of update_engine's postinstall action.
#[derive(Debug, Clone, Default)]
pub struct Action {
    /// SHA-256 of the payload, base64.
    pub sha256: Option<String>,
    /// `needsadmin`.
    pub needs_admin: Option<bool>,
    /// `IsDeltaPayload`.
    pub is_delta: Option<bool>,
    /// `DisablePayloadBackoff`.
    pub disable_payload_backoff: Option<bool>,
    /// `MetadataSignatureRsa`.
    pub metadata_signature_rsa: Option<String>,
    /// `MetadataSize`, as text.
    pub metadata_size: Option<String>,
    /// `deadline`.
    pub deadline: Option<String>,
}

/// A row of `package_file`: an extra file served with a package.
#[derive(Debug, Clone, Default)]
pub struct File {
    /// File name.
    pub name: String,
    /// Size in bytes, as text.
    pub size: Option<String>,
    /// SHA-1, base64 (`hash`).
    pub sha1: Option<String>,
    /// SHA-256 (`hash256`).
    pub sha256: Option<String>,
}

/// A row of `channel`.
#[derive(Debug, Clone, Default)]
pub struct Channel {
    /// UUID.
    pub id: String,
    /// Application UUID.
    pub app_id: String,
    /// Name (several rows share it, one per architecture).
    pub name: String,
    /// Architecture code.
    pub arch: i32,
    /// The package it points at.
    pub package_id: Option<String>,
}

/// A row of `groups`, policy overrides of `group_local` applied.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// UUID.
    pub id: String,
    /// Application UUID.
    pub app_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The Omaha track hosts send (may be empty on old rows).
    pub track: String,
    /// The channel it follows.
    pub channel_id: Option<String>,
    /// `policy_updates_enabled`.
    pub updates_enabled: bool,
    /// `policy_safe_mode`.
    pub safe_mode: bool,
    /// `policy_office_hours`.
    pub office_hours: bool,
    /// `policy_timezone`.
    pub timezone: Option<String>,
    /// `policy_period_interval` (a PostgreSQL interval, `15 minutes`).
    pub period_interval: String,
    /// `policy_max_updates_per_period`.
    pub max_updates_per_period: i32,
    /// `policy_update_timeout` (a PostgreSQL interval).
    pub update_timeout: String,
}

/// Platte's name of a Nebraska architecture code (`backend/pkg/api/arch.go`: 0 all, 1 amd64,
/// 2 aarch64, 3 x86).
pub fn arch_name(code: i32) -> Option<&'static str> {
    match code {
        0 => Some("all"),
        1 => Some("amd64"),
        2 => Some("arm64"),
        3 => Some("x86"),
        _ => None,
    }
}

/// Nebraska's name of a package type code.
pub fn package_type_name(code: i32) -> &'static str {
    match code {
        1 => "flatcar",
        2 => "docker",
        3 => "rocket",
        4 => "other",
        _ => "unknown",
    }
}
