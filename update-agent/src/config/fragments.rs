//! Config fragments: what one TOML drop-in file may say. Every key is optional.
//!
//! Unknown keys are not rejected here (no `deny_unknown_fields`): the loader collects them with
//! `serde_ignored` and reports each as a warning naming the key and the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The top level of one drop-in file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Fragment {
    /// `[updates]`: server, group, app id, policy.
    pub updates: Option<UpdatesFragment>,
    /// `[identity]`: overrides of what the host reports about itself.
    pub identity: Option<IdentityFragment>,
    /// `[check]`: check-in timing.
    pub check: Option<CheckFragment>,
    /// `[boot]`: A/B slots and boot backend.
    pub boot: Option<BootFragment>,
    /// `[agent]`: where the agent keeps its state.
    pub agent: Option<AgentFragment>,
    /// `[health]`: the boot health gate run by `mark-good`.
    pub health: Option<HealthFragment>,
    /// `[http]`: the one HTTP client's settings.
    pub http: Option<HttpFragment>,
    /// `[reboot]`: reboot strategy.
    pub reboot: Option<RebootFragment>,
    /// `[install]`: download and install tuning.
    pub install: Option<InstallFragment>,
    /// `[dbus]`: the D-Bus API.
    pub dbus: Option<DbusFragment>,
    /// `[extensions]`: runtime extensions (global keys and `[extensions.NAME]` tables).
    pub extensions: Option<super::extensions::ExtensionsFragment>,
}

/// `[dbus]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct DbusFragment {
    /// Serve `org.platte.Update1` (and the compatibility name) on the system bus.
    pub enabled: Option<bool>,
    /// Also serve update_engine's `com.coreos.update1` compatibility interface.
    pub update_engine_compat: Option<bool>,
}

/// `[install]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct InstallFragment {
    /// Least time between two persisted checkpoints, in milliseconds.
    pub checkpoint_interval_ms: Option<u64>,
    /// Download attempts per URL within one install before trying the next URL.
    pub attempts_per_url: Option<u64>,
    /// Failed attempts on the same checkpoint after which the download starts over.
    pub start_over_after: Option<u64>,
}

/// `[updates]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct UpdatesFragment {
    /// Whether automatic updates run at all.
    pub enabled: Option<bool>,
    /// Omaha endpoint URL.
    pub server: Option<String>,
    /// Group (Omaha track).
    pub group: Option<String>,
    /// Omaha application id.
    pub app_id: Option<String>,
    /// Whether a server-marked rollback to an older version may be installed.
    pub allow_downgrade: Option<bool>,
    /// Directory of trusted payload signing keys.
    pub trusted_keys_dir: Option<PathBuf>,
    /// Sign every Omaha request with this host's machine key.
    pub machine_credential: Option<bool>,
    /// Ask for delta payloads (`delta_okay="true"`).
    pub deltas: Option<bool>,
}

/// `[identity]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct IdentityFragment {
    /// Free-form machine alias sent to the server.
    pub alias: Option<String>,
    /// OS version, overriding os-release `VERSION_ID`.
    pub os_version: Option<String>,
    /// Board name (e.g. `amd64-usr`).
    pub board: Option<String>,
}

/// `[check]` section; durations in seconds.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CheckFragment {
    /// Delay before the first check after start.
    pub initial_delay_secs: Option<u64>,
    /// Interval between checks.
    pub interval_secs: Option<u64>,
    /// Random spread around each wait (± half of it).
    pub jitter_secs: Option<u64>,
    /// Cap of the exponential backoff on errors.
    pub backoff_cap_secs: Option<u64>,
    /// First wait of the exponential backoff on errors.
    pub backoff_base_secs: Option<u64>,
}

/// `[boot]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct BootFragment {
    /// Boot backend name (`gptprio` or `systemd-boot`).
    pub backend: Option<String>,
    /// Disk holding the slots: a block device or an image file.
    pub disk: Option<PathBuf>,
    /// Partition labels of slots A and B.
    pub slot_labels: Option<Vec<String>>,
    /// Partition UUIDs of slots A and B (used instead of labels when set).
    pub slot_partuuids: Option<Vec<String>>,
    /// Boot tries given to a newly installed slot.
    pub tries: Option<u64>,
    /// Booted slot override (`A` or `B`), instead of the kernel command line.
    pub booted_slot: Option<String>,
    /// `[boot.systemd_boot]`: settings of the `systemd-boot` backend.
    pub systemd_boot: Option<SystemdBootFragment>,
}

/// `[boot.systemd_boot]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SystemdBootFragment {
    /// ESP mount point.
    pub esp: Option<PathBuf>,
    /// Entry name (entries `NAME-a.conf`/`NAME-b.conf`, kernels under `/NAME/` on the ESP).
    pub entry_name: Option<String>,
    /// Kernel path inside a slot's filesystem.
    pub kernel_path: Option<PathBuf>,
    /// Initrd path inside a slot's filesystem.
    pub initrd_path: Option<PathBuf>,
    /// Kernel options after `root=…`.
    pub kernel_options: Option<String>,
    /// efivarfs directory.
    pub efivars_dir: Option<PathBuf>,
}

/// `[agent]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct AgentFragment {
    /// State directory.
    pub state_dir: Option<PathBuf>,
}

/// `[health]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HealthFragment {
    /// Default timeout of one health command.
    pub timeout_secs: Option<u64>,
    /// Units that must be active (accumulated across files).
    pub units: Option<Vec<String>>,
    /// The `systemctl` binary used to ask whether a unit is active.
    pub systemctl: Option<PathBuf>,
    /// Named health commands (`[health.checks.NAME]`), merged per name across files.
    pub checks: Option<BTreeMap<String, CheckCommandFragment>>,
}

/// `[health.checks.NAME]`: one health command.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CheckCommandFragment {
    /// Program and arguments (no shell).
    pub command: Option<Vec<String>>,
    /// Timeout of this command, overriding `health.timeout_secs`.
    pub timeout_secs: Option<u64>,
    /// Set to false to disable a check defined by an earlier file.
    pub enabled: Option<bool>,
}

/// `[http]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HttpFragment {
    /// Proxy URL for all requests (default: the usual environment variables).
    pub proxy: Option<String>,
    /// Extra CA certificate file (PEM) trusted for all requests.
    pub ca_file: Option<PathBuf>,
    /// TCP/TLS connect timeout.
    pub connect_timeout_secs: Option<u64>,
    /// Timeout of one Omaha request.
    pub request_timeout_secs: Option<u64>,
    /// A download with no byte received for this long is abandoned (and resumed later).
    pub stall_timeout_secs: Option<u64>,
}

/// `[reboot]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RebootFragment {
    /// Strategy name (`off`, `immediate`, `windows`, `fleet-lock`).
    pub strategy: Option<String>,
    /// Weekly maintenance windows (string or table form); a later file's list replaces it.
    pub windows: Option<Vec<maintenance_window::Window>>,
    /// `[reboot.fleet_lock]`: FleetLock server and group.
    pub fleet_lock: Option<FleetLockFragment>,
    /// Time logged-in users are given after the notice, in seconds.
    pub grace_period_secs: Option<u64>,
    /// Wait before asking the FleetLock server again after a refusal, in seconds (±10 % jitter).
    pub lock_retry_secs: Option<u64>,
    /// Program and arguments telling users about the reboot (the message is appended).
    pub notify_command: Option<Vec<String>>,
    /// Sentinel written while an update is staged (`""` disables it).
    pub reboot_required_path: Option<PathBuf>,
}

/// `[reboot.fleet_lock]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct FleetLockFragment {
    /// Base URL of the FleetLock server.
    pub base_url: Option<String>,
    /// FleetLock group.
    pub group: Option<String>,
}
