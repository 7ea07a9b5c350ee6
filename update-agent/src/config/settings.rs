//! Config settings: validated inputs with defaults applied; what the rest of the agent reads.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::ConfigError;
use super::inputs::Inputs;
use super::validate::{absolute, count, invalid, is_token, parse_url, secs, token};
use crate::boot::{BackendConfig, Guid, SdbootConfig, SlotId, SlotSpec, SlotsConfig};

/// Platte's default Omaha application id for the OS image (not Flatcar's, so a Platte server can
/// tell the two apart; set `updates.app_id` to Flatcar's `e96281a6-d1af-4bde-9a0a-97b76e56dc57`
/// to update a Flatcar image).
pub const PLATTE_APP_ID: &str = "{7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53}";
/// Default group (Omaha track).
pub const DEFAULT_GROUP: &str = "stable";
/// Default trusted payload key directory.
pub const DEFAULT_TRUSTED_KEYS_DIR: &str = "/usr/share/platte/keys.d";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/platte";
/// Default `systemctl` binary.
pub const DEFAULT_SYSTEMCTL: &str = "/usr/bin/systemctl";
/// Default slot labels (CoreOS/Flatcar layout).
pub const DEFAULT_SLOT_LABELS: [&str; 2] = ["USR-A", "USR-B"];

/// Everything the agent is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Update source and policy.
    pub updates: UpdateSettings,
    /// Identity overrides.
    pub identity: IdentitySettings,
    /// Check-in timing.
    pub check: CheckSettings,
    /// A/B slots.
    pub boot: BootSettings,
    /// State directory.
    pub state_dir: PathBuf,
    /// Boot health gate.
    pub health: HealthSettings,
    /// HTTP client.
    pub http: HttpSettings,
    /// Reboot strategy.
    pub reboot: RebootSettings,
    /// Download and install tuning.
    pub install: InstallSettings,
    /// The D-Bus API.
    pub dbus: DbusSettings,
    /// Runtime extensions (`[extensions]`).
    pub extensions: super::extensions::ExtensionsSettings,
}

/// `[dbus]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbusSettings {
    /// Serve `org.platte.Update1` on the system bus (the bus is still used to reach logind).
    pub enabled: bool,
    /// Also serve update_engine's `com.coreos.update1` (for locksmith, FLUO and other watchers).
    pub update_engine_compat: bool,
}

/// `[install]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallSettings {
    /// Least time between two persisted checkpoints.
    pub checkpoint_interval: Duration,
    /// Download attempts per URL within one install before the next URL is tried.
    pub attempts_per_url: u32,
    /// Failed attempts on the same checkpoint after which the download starts over from byte 0.
    pub start_over_after: u32,
}

/// `[updates]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateSettings {
    /// Whether automatic checks run (`SERVER=disabled` in legacy config turns them off).
    pub enabled: bool,
    /// Omaha endpoint; no default: the check-in loop refuses to run without one.
    pub server: Option<Url>,
    /// Group (Omaha track).
    pub group: String,
    /// Omaha application id, as configured (braces kept if given).
    pub app_id: String,
    /// Whether server-marked rollbacks to older versions may be installed.
    pub allow_downgrade: bool,
    /// Directory of trusted payload signing keys.
    pub trusted_keys_dir: PathBuf,
    /// Whether Omaha requests are signed with the machine key (`state_dir/machine-key`, created
    /// at the first run) [default: true].
    pub machine_credential: bool,
    /// Whether update checks ask for delta payloads (`delta_okay="true"`), which read the
    /// active slot; the agent still stops asking after a delta failed on the running version
    /// [default: true].
    pub deltas: bool,
}

/// `[identity]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentitySettings {
    /// Machine alias.
    pub alias: Option<String>,
    /// OS version override.
    pub os_version: Option<String>,
    /// Board override.
    pub board: Option<String>,
}

/// `[check]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSettings {
    /// Delay before the first check.
    pub initial_delay: Duration,
    /// Interval between checks.
    pub interval: Duration,
    /// Random spread: each wait is drawn from ± half of this around its nominal value.
    pub jitter: Duration,
    /// Cap of the exponential backoff after errors.
    pub backoff_cap: Duration,
    /// First wait of the exponential backoff after an error (doubled on each further error).
    pub backoff_base: Duration,
}

/// Which boot backend manages the slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootBackendKind {
    /// GPT attribute bits read by GRUB's `gptprio.next` (CoreOS/Flatcar).
    Gptprio,
    /// systemd-boot: Boot Loader Specification entries with boot counting on the ESP.
    SystemdBoot,
}

/// `[boot]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// Backend.
    pub backend: BootBackendKind,
    /// Disk holding the slots; `None` means found from slot A's `/dev/disk/by-*` link.
    pub disk: Option<PathBuf>,
    /// How to find slot A.
    pub slot_a: SlotSpec,
    /// How to find slot B.
    pub slot_b: SlotSpec,
    /// Boot tries given to a newly installed slot (1–15).
    pub tries: u8,
    /// Booted slot override.
    pub booted_slot: Option<SlotId>,
    /// `[boot.systemd_boot]` (used by the `systemd-boot` backend).
    pub systemd_boot: SdbootConfig,
}

impl BootSettings {
    /// Where the slots are, as every boot backend takes it.
    pub fn slots(&self) -> SlotsConfig {
        SlotsConfig {
            disk: self.disk.clone(),
            slot_a: self.slot_a.clone(),
            slot_b: self.slot_b.clone(),
            booted_slot: self.booted_slot,
        }
    }

    /// The configuration of the backend `backend` selects.
    pub fn backend_config(&self) -> BackendConfig {
        match self.backend {
            BootBackendKind::Gptprio => BackendConfig::Gptprio(self.slots()),
            BootBackendKind::SystemdBoot => {
                BackendConfig::SystemdBoot(self.slots(), self.systemd_boot.clone())
            }
        }
    }
}

impl From<&BootSettings> for BackendConfig {
    fn from(boot: &BootSettings) -> Self {
        boot.backend_config()
    }
}

/// One configured health command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Name (the `[health.checks.NAME]` key).
    pub name: String,
    /// Program (absolute path) and arguments.
    pub command: Vec<String>,
    /// Time allowed before the command is killed and the check fails.
    pub timeout: Duration,
}

/// `[health]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Enabled health commands, in name order.
    pub checks: Vec<HealthCheck>,
    /// Units that must be active.
    pub units: Vec<String>,
    /// `systemctl` binary used for `is-active`.
    pub systemctl: PathBuf,
}

/// `[http]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Proxy for all requests; `None` means the environment (`HTTPS_PROXY`, `ALL_PROXY`, ...).
    pub proxy: Option<Url>,
    /// Extra CA certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one Omaha request.
    pub request_timeout: Duration,
    /// Download stall timeout.
    pub stall_timeout: Duration,
}

/// Reboot strategies (the coordinator's `reboot::RebootStrategy` carries their data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootStrategy {
    /// Stage only; an operator or external tool reboots.
    Off,
    /// Reboot as soon as an update is staged.
    Immediate,
    /// Reboot inside `reboot.windows` only.
    Windows,
    /// Take a FleetLock slot first (and, when `reboot.windows` is set, only inside them).
    FleetLock,
}

/// Default grace period for logged-in users (locksmith's 5 minutes).
pub const DEFAULT_GRACE_PERIOD_SECS: u64 = 300;
/// Default wait before asking the FleetLock server again after a refusal or failure.
pub const DEFAULT_LOCK_RETRY_SECS: u64 = 60;
/// Default reboot-required sentinel (kured's default).
pub const DEFAULT_REBOOT_REQUIRED_PATH: &str = "/run/reboot-required";
/// Default command telling logged-in users (the message is appended).
pub const DEFAULT_NOTIFY_COMMAND: &str = "/usr/bin/wall";
/// Default FleetLock group (Zincati's).
pub const DEFAULT_FLEET_LOCK_GROUP: &str = "default";

/// `[reboot.fleet_lock]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLockSettings {
    /// Server base URL (`v1/pre-reboot` and `v1/steady-state` are appended).
    pub base_url: Url,
    /// FleetLock group (`[a-zA-Z0-9.-]+`).
    pub group: String,
}

/// `[reboot]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebootSettings {
    /// Strategy.
    pub strategy: RebootStrategy,
    /// Maintenance windows (required by `windows`, optional with `fleet-lock`).
    pub windows: maintenance_window::WindowSet,
    /// FleetLock server (required by `fleet-lock`).
    pub fleet_lock: Option<FleetLockSettings>,
    /// Time logged-in users are given after the notice.
    pub grace_period: Duration,
    /// Wait before asking the FleetLock server again after a refusal or failure (the
    /// coordinator adds ±10 % jitter so a fleet does not ask in step).
    pub lock_retry: Duration,
    /// Program and arguments telling users (empty: nobody is told).
    pub notify_command: Vec<String>,
    /// Sentinel written while an update is staged; `None`: disabled.
    pub reboot_required: Option<PathBuf>,
}

/// Validates an Omaha app id: a GUID, optionally in braces.
fn valid_app_id(v: &str) -> bool {
    let inner = v
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(v);
    inner.parse::<Guid>().is_ok()
}

impl Settings {
    /// Validates `inputs` and applies defaults; errors name the key and the file that set it.
    pub fn from_inputs(i: &Inputs) -> Result<Self, ConfigError> {
        Ok(Self {
            updates: updates(i)?,
            identity: IdentitySettings {
                alias: match &i.identity_alias {
                    Some(s) if s.value.len() > 128 || s.value.chars().any(char::is_control) => {
                        return Err(invalid(
                            "identity.alias",
                            s,
                            "must be at most 128 characters without control characters",
                        ));
                    }
                    Some(s) if s.value.is_empty() => None,
                    other => other.as_ref().map(|s| s.value.clone()),
                },
                os_version: token("identity.os_version", &i.identity_os_version, 64)?,
                board: token("identity.board", &i.identity_board, 64)?,
            },
            check: check(i)?,
            install: install(i)?,
            boot: boot(i)?,
            state_dir: absolute("agent.state_dir", &i.agent_state_dir, DEFAULT_STATE_DIR)?,
            health: health(i)?,
            http: http(i)?,
            reboot: reboot(i)?,
            dbus: DbusSettings {
                enabled: i.dbus_enabled.as_ref().is_none_or(|s| s.value),
                update_engine_compat: i.dbus_update_engine_compat.as_ref().is_none_or(|s| s.value),
            },
            extensions: super::extensions::ExtensionsSettings::from_inputs(&i.extensions)?,
        })
    }
}

fn reboot(i: &Inputs) -> Result<RebootSettings, ConfigError> {
    let strategy = match &i.reboot_strategy {
        None => RebootStrategy::Off,
        Some(s) => match s.value.as_str() {
            "off" => RebootStrategy::Off,
            "immediate" => RebootStrategy::Immediate,
            "windows" => RebootStrategy::Windows,
            "fleet-lock" | "fleet_lock" => RebootStrategy::FleetLock,
            other => {
                return Err(invalid(
                    "reboot.strategy",
                    s,
                    format!(
                        "unknown strategy {other:?}: expected \"off\", \"immediate\", \"windows\" or \"fleet-lock\""
                    ),
                ));
            }
        },
    };
    let windows = maintenance_window::WindowSet::new(
        i.reboot_windows
            .as_ref()
            .map(|w| w.value.clone())
            .unwrap_or_default(),
    );
    match (strategy, &i.reboot_windows, &i.reboot_strategy) {
        (RebootStrategy::Windows, None, Some(s)) => {
            return Err(invalid(
                "reboot.windows",
                s,
                "strategy \"windows\" needs at least one window in reboot.windows",
            ));
        }
        (RebootStrategy::Windows, Some(w), _) if w.value.is_empty() => {
            return Err(invalid(
                "reboot.windows",
                w,
                "strategy \"windows\" needs at least one window",
            ));
        }
        (RebootStrategy::Off | RebootStrategy::Immediate, Some(w), _) if !w.value.is_empty() => {
            return Err(invalid(
                "reboot.windows",
                w,
                "windows only apply to strategies \"windows\" and \"fleet-lock\"; set reboot.strategy",
            ));
        }
        _ => {}
    }
    let fleet_lock = match (&i.reboot_fleet_lock_base_url, strategy) {
        (Some(u), _) => {
            let base_url = parse_url("reboot.fleet_lock.base_url", u, &["http", "https"])?;
            let group = match &i.reboot_fleet_lock_group {
                None => DEFAULT_FLEET_LOCK_GROUP.to_owned(),
                Some(g)
                    if g.value.is_empty()
                        || g.value.len() > 64
                        || !g
                            .value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
                {
                    return Err(invalid(
                        "reboot.fleet_lock.group",
                        g,
                        format!(
                            "{:?} must be 1..=64 characters of A-Z a-z 0-9 . - (FleetLock's rule)",
                            g.value
                        ),
                    ));
                }
                Some(g) => g.value.clone(),
            };
            Some(FleetLockSettings { base_url, group })
        }
        (None, RebootStrategy::FleetLock) => {
            let s = i
                .reboot_strategy
                .as_ref()
                .ok_or_else(|| ConfigError::Invalid {
                    key: "reboot.fleet_lock.base_url",
                    origin: String::new(),
                    message: "missing".into(),
                })?;
            return Err(invalid(
                "reboot.fleet_lock.base_url",
                s,
                "strategy \"fleet-lock\" needs reboot.fleet_lock.base_url",
            ));
        }
        (None, _) => None,
    };
    let notify_command = match &i.reboot_notify_command {
        None => vec![DEFAULT_NOTIFY_COMMAND.to_owned()],
        Some(c) => match c.value.first() {
            None => Vec::new(),
            Some(p) if PathBuf::from(p).is_absolute() => c.value.clone(),
            Some(_) => {
                return Err(invalid(
                    "reboot.notify_command",
                    c,
                    "must start with an absolute program path (or be [] to tell nobody)",
                ));
            }
        },
    };
    let reboot_required = match &i.reboot_reboot_required_path {
        Some(p) if p.value.as_os_str().is_empty() => None,
        Some(_) => Some(absolute(
            "reboot.reboot_required_path",
            &i.reboot_reboot_required_path,
            "",
        )?),
        None => Some(PathBuf::from(DEFAULT_REBOOT_REQUIRED_PATH)),
    };
    Ok(RebootSettings {
        strategy,
        windows,
        fleet_lock,
        grace_period: secs(
            "reboot.grace_period_secs",
            &i.reboot_grace_period_secs,
            DEFAULT_GRACE_PERIOD_SECS,
            0,
            3600,
        )?,
        lock_retry: secs(
            "reboot.lock_retry_secs",
            &i.reboot_lock_retry_secs,
            DEFAULT_LOCK_RETRY_SECS,
            1,
            3600,
        )?,
        notify_command,
        reboot_required,
    })
}

fn updates(i: &Inputs) -> Result<UpdateSettings, ConfigError> {
    let server = match &i.updates_server {
        None => None,
        Some(s) => Some(parse_url("updates.server", s, &["http", "https"])?),
    };
    let group = token("updates.group", &i.updates_group, 64)?.unwrap_or(DEFAULT_GROUP.into());
    let app_id = match &i.updates_app_id {
        None => PLATTE_APP_ID.to_owned(),
        Some(s) if !valid_app_id(&s.value) => {
            return Err(invalid(
                "updates.app_id",
                s,
                format!("{:?} is not a GUID (e.g. {PLATTE_APP_ID})", s.value),
            ));
        }
        Some(s) => s.value.clone(),
    };
    Ok(UpdateSettings {
        enabled: i.updates_enabled.as_ref().is_none_or(|s| s.value),
        server,
        group,
        app_id,
        allow_downgrade: i.updates_allow_downgrade.as_ref().is_some_and(|s| s.value),
        trusted_keys_dir: absolute(
            "updates.trusted_keys_dir",
            &i.updates_trusted_keys_dir,
            DEFAULT_TRUSTED_KEYS_DIR,
        )?,
        machine_credential: i
            .updates_machine_credential
            .as_ref()
            .is_none_or(|s| s.value),
        deltas: i.updates_deltas.as_ref().is_none_or(|s| s.value),
    })
}

fn install(i: &Inputs) -> Result<InstallSettings, ConfigError> {
    let ms = match &i.install_checkpoint_interval_ms {
        None => 1000,
        Some(s) if !(10..=60_000).contains(&s.value) => {
            return Err(invalid(
                "install.checkpoint_interval_ms",
                s,
                format!(
                    "{} is out of range: must be 10..=60000 milliseconds",
                    s.value
                ),
            ));
        }
        Some(s) => s.value,
    };
    Ok(InstallSettings {
        checkpoint_interval: Duration::from_millis(ms),
        attempts_per_url: count(
            "install.attempts_per_url",
            &i.install_attempts_per_url,
            3,
            1,
            20,
        )?,
        start_over_after: count(
            "install.start_over_after",
            &i.install_start_over_after,
            5,
            1,
            100,
        )?,
    })
}

fn check(i: &Inputs) -> Result<CheckSettings, ConfigError> {
    const DAY: u64 = 86_400;
    let c = CheckSettings {
        initial_delay: secs(
            "check.initial_delay_secs",
            &i.check_initial_delay_secs,
            420,
            0,
            DAY,
        )?,
        interval: secs(
            "check.interval_secs",
            &i.check_interval_secs,
            3600,
            60,
            7 * DAY,
        )?,
        jitter: secs("check.jitter_secs", &i.check_jitter_secs, 600, 0, DAY)?,
        backoff_cap: secs(
            "check.backoff_cap_secs",
            &i.check_backoff_cap_secs,
            14_400,
            60,
            7 * DAY,
        )?,
        backoff_base: secs(
            "check.backoff_base_secs",
            &i.check_backoff_base_secs,
            60,
            1,
            DAY,
        )?,
    };
    if let Some(s) = &i.check_jitter_secs
        && c.jitter > c.interval
    {
        return Err(invalid(
            "check.jitter_secs",
            s,
            format!(
                "{} is larger than check.interval_secs ({})",
                s.value,
                c.interval.as_secs()
            ),
        ));
    }
    if c.backoff_cap < c.interval {
        let s = i
            .check_backoff_cap_secs
            .as_ref()
            .or(i.check_interval_secs.as_ref());
        if let Some(s) = s {
            return Err(invalid(
                if i.check_backoff_cap_secs.is_some() {
                    "check.backoff_cap_secs"
                } else {
                    "check.interval_secs"
                },
                s,
                format!(
                    "check.backoff_cap_secs ({}) must not be below check.interval_secs ({})",
                    c.backoff_cap.as_secs(),
                    c.interval.as_secs()
                ),
            ));
        }
    }
    Ok(c)
}

fn boot(i: &Inputs) -> Result<BootSettings, ConfigError> {
    let backend = match &i.boot_backend {
        None => BootBackendKind::Gptprio,
        Some(s) if s.value == "gptprio" => BootBackendKind::Gptprio,
        Some(s) if s.value == "systemd-boot" => BootBackendKind::SystemdBoot,
        Some(s) => {
            return Err(invalid(
                "boot.backend",
                s,
                format!(
                    "unknown backend {:?}: expected \"gptprio\" or \"systemd-boot\"",
                    s.value
                ),
            ));
        }
    };
    let default_labels = match backend {
        BootBackendKind::Gptprio => DEFAULT_SLOT_LABELS,
        BootBackendKind::SystemdBoot => crate::boot::sdboot::DEFAULT_SLOT_LABELS,
    };
    let (slot_a, slot_b) = if let Some(s) = &i.boot_slot_partuuids {
        let [a, b] = s.value.as_slice() else {
            return Err(invalid(
                "boot.slot_partuuids",
                s,
                "must list exactly two partition UUIDs (A, B)",
            ));
        };
        let parse = |v: &String| {
            v.parse::<Guid>()
                .map_err(|e| invalid("boot.slot_partuuids", s, format!("{v:?}: {e}")))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a == b {
            return Err(invalid(
                "boot.slot_partuuids",
                s,
                "the two slots must differ",
            ));
        }
        (SlotSpec::PartUuid(a), SlotSpec::PartUuid(b))
    } else if let Some(s) = &i.boot_slot_labels {
        let [a, b] = s.value.as_slice() else {
            return Err(invalid(
                "boot.slot_labels",
                s,
                "must list exactly two labels (A, B)",
            ));
        };
        for l in [a, b] {
            if l.is_empty() || l.encode_utf16().count() > 36 {
                return Err(invalid(
                    "boot.slot_labels",
                    s,
                    format!("{l:?}: a GPT label is 1..=36 characters"),
                ));
            }
        }
        if a == b {
            return Err(invalid("boot.slot_labels", s, "the two slots must differ"));
        }
        (SlotSpec::Label(a.clone()), SlotSpec::Label(b.clone()))
    } else {
        (
            SlotSpec::Label(default_labels[0].into()),
            SlotSpec::Label(default_labels[1].into()),
        )
    };
    let tries = match &i.boot_tries {
        None => 1,
        Some(s) => match u8::try_from(s.value) {
            Ok(t @ 1..=15) => t,
            _ => {
                return Err(invalid(
                    "boot.tries",
                    s,
                    format!(
                        "{} is out of range: must be 1..=15 (4 attribute bits)",
                        s.value
                    ),
                ));
            }
        },
    };
    let booted_slot = match &i.boot_booted_slot {
        None => None,
        Some(s) => Some(s.value.parse::<SlotId>().map_err(|_| {
            invalid(
                "boot.booted_slot",
                s,
                format!("{:?}: expected \"A\" or \"B\"", s.value),
            )
        })?),
    };
    Ok(BootSettings {
        backend,
        disk: i.boot_disk.as_ref().map(|s| s.value.clone()),
        slot_a,
        slot_b,
        tries,
        booted_slot,
        systemd_boot: systemd_boot(i)?,
    })
}

/// `[boot.systemd_boot]`: validated, with defaults (`crate::boot::sdboot`'s constants).
fn systemd_boot(i: &Inputs) -> Result<SdbootConfig, ConfigError> {
    use crate::boot::sdboot;
    let entry_name = match &i.boot_sd_entry_name {
        None => sdboot::DEFAULT_ENTRY_NAME.to_owned(),
        Some(s) if !sdboot::valid_entry_name(&s.value) => {
            return Err(invalid(
                "boot.systemd_boot.entry_name",
                s,
                format!(
                    "{:?} must be 1..=64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)",
                    s.value
                ),
            ));
        }
        Some(s) => s.value.clone(),
    };
    let kernel_options = match &i.boot_sd_kernel_options {
        None => sdboot::DEFAULT_KERNEL_OPTIONS.to_owned(),
        Some(s) if s.value.chars().any(char::is_control) => {
            return Err(invalid(
                "boot.systemd_boot.kernel_options",
                s,
                "must be one line without control characters",
            ));
        }
        Some(s) => s.value.trim().to_owned(),
    };
    Ok(SdbootConfig {
        esp: absolute("boot.systemd_boot.esp", &i.boot_sd_esp, sdboot::DEFAULT_ESP)?,
        entry_name,
        kernel_path: absolute(
            "boot.systemd_boot.kernel_path",
            &i.boot_sd_kernel_path,
            sdboot::DEFAULT_KERNEL_PATH,
        )?,
        initrd_path: absolute(
            "boot.systemd_boot.initrd_path",
            &i.boot_sd_initrd_path,
            sdboot::DEFAULT_INITRD_PATH,
        )?,
        kernel_options,
        efivars_dir: absolute(
            "boot.systemd_boot.efivars_dir",
            &i.boot_sd_efivars_dir,
            sdboot::DEFAULT_EFIVARS_DIR,
        )?,
    })
}

fn health(i: &Inputs) -> Result<HealthSettings, ConfigError> {
    let default_timeout = secs("health.timeout_secs", &i.health_timeout_secs, 60, 1, 3600)?;
    let mut checks = Vec::new();
    for (name, c) in &i.health_checks {
        if c.enabled.as_ref().is_some_and(|e| !e.value) {
            continue;
        }
        let Some(cmd) = &c.command else {
            let origin = c
                .timeout_secs
                .as_ref()
                .map(|s| s.origin.to_string())
                .or_else(|| c.enabled.as_ref().map(|s| s.origin.to_string()))
                .unwrap_or_default();
            return Err(ConfigError::Invalid {
                key: "health.checks.*.command",
                origin,
                message: format!("check {name:?} has no command"),
            });
        };
        if !is_token(name, 64) {
            return Err(invalid(
                "health.checks.*",
                cmd,
                format!("check name {name:?} must be 1..=64 characters of A-Z a-z 0-9 . _ + -"),
            ));
        }
        match cmd.value.first() {
            Some(p) if PathBuf::from(p).is_absolute() => {}
            _ => {
                return Err(invalid(
                    "health.checks.*.command",
                    cmd,
                    format!("check {name:?}: the command must start with an absolute program path"),
                ));
            }
        }
        let key = "health.checks.*.timeout_secs";
        let timeout = match &c.timeout_secs {
            None => default_timeout,
            Some(_) => secs(key, &c.timeout_secs, 60, 1, 3600)?,
        };
        checks.push(HealthCheck {
            name: name.clone(),
            command: cmd.value.clone(),
            timeout,
        });
    }
    let mut units = Vec::new();
    for u in &i.health_units {
        let v = &u.value;
        if v.is_empty()
            || v.starts_with('-')
            || v.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "health.units",
                u,
                format!("{v:?} is not a unit name"),
            ));
        }
        units.push(v.clone());
    }
    Ok(HealthSettings {
        checks,
        units,
        systemctl: absolute("health.systemctl", &i.health_systemctl, DEFAULT_SYSTEMCTL)?,
    })
}

fn http(i: &Inputs) -> Result<HttpSettings, ConfigError> {
    Ok(HttpSettings {
        proxy: match &i.http_proxy {
            None => None,
            Some(s) => Some(parse_url(
                "http.proxy",
                s,
                &["http", "https", "socks5", "socks5h"],
            )?),
        },
        ca_file: match &i.http_ca_file {
            None => None,
            Some(_) => Some(absolute("http.ca_file", &i.http_ca_file, "")?),
        },
        connect_timeout: secs(
            "http.connect_timeout_secs",
            &i.http_connect_timeout_secs,
            30,
            1,
            3600,
        )?,
        request_timeout: secs(
            "http.request_timeout_secs",
            &i.http_request_timeout_secs,
            60,
            1,
            3600,
        )?,
        stall_timeout: secs(
            "http.stall_timeout_secs",
            &i.http_stall_timeout_secs,
            60,
            1,
            3600,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dropins::parse_str;
    use std::path::Path;

    fn settings(text: &str) -> Result<Settings, ConfigError> {
        let mut i = Inputs::default();
        let f = parse_str(
            text,
            Path::new("/etc/platte/agent.d/50-t.toml"),
            &mut Vec::new(),
        )?;
        i.merge(f, Path::new("/etc/platte/agent.d/50-t.toml"));
        Settings::from_inputs(&i)
    }

    #[test]
    fn dbus_on_by_default_and_compat_can_be_turned_off() {
        let s = settings("").unwrap();
        assert_eq!(
            s.dbus,
            DbusSettings {
                enabled: true,
                update_engine_compat: true
            }
        );
        let s = settings("[dbus]\nupdate_engine_compat = false\n").unwrap();
        assert!(s.dbus.enabled);
        assert!(!s.dbus.update_engine_compat);
        let e = settings("[dbus]\nenabled = \"no\"\n").unwrap_err();
        assert!(e.to_string().contains("50-t.toml"), "{e}");
    }

    #[test]
    fn defaults() {
        let s = settings("").unwrap();
        assert!(s.updates.enabled);
        assert_eq!(s.updates.server, None);
        assert_eq!(s.updates.group, "stable");
        assert_eq!(s.updates.app_id, PLATTE_APP_ID);
        assert!(!s.updates.allow_downgrade);
        assert_eq!(
            s.updates.trusted_keys_dir,
            PathBuf::from("/usr/share/platte/keys.d")
        );
        assert!(
            s.updates.machine_credential,
            "requests are signed by default"
        );
        assert!(s.updates.deltas, "deltas are asked for by default");
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/platte"));
        assert_eq!(s.boot.slot_a, SlotSpec::Label("USR-A".into()));
        assert_eq!(s.boot.slot_b, SlotSpec::Label("USR-B".into()));
        assert_eq!(s.boot.tries, 1);
        assert_eq!(s.boot.booted_slot, None);
        assert_eq!(s.check.interval, Duration::from_secs(3600));
        assert_eq!(s.check.initial_delay, Duration::from_secs(420));
        assert_eq!(s.reboot.strategy, RebootStrategy::Off);
        assert_eq!(s.health.systemctl, PathBuf::from("/usr/bin/systemctl"));
        assert!(s.health.checks.is_empty() && s.health.units.is_empty());
    }

    #[test]
    fn errors_name_key_and_file() {
        for (text, key) in [
            ("[check]\ninterval_secs = 5\n", "check.interval_secs"),
            ("[boot]\ntries = 16\n", "boot.tries"),
            ("[boot]\ntries = 0\n", "boot.tries"),
            ("[updates]\nserver = 'ftp://x/'\n", "updates.server"),
            ("[updates]\napp_id = 'nope'\n", "updates.app_id"),
            ("[updates]\ngroup = 'a b'\n", "updates.group"),
            ("[boot]\nslot_labels = ['USR-A']\n", "boot.slot_labels"),
            (
                "[boot]\nslot_partuuids = ['x', 'y']\n",
                "boot.slot_partuuids",
            ),
            ("[boot]\nbooted_slot = 'C'\n", "boot.booted_slot"),
            ("[reboot]\nstrategy = 'sometimes'\n", "reboot.strategy"),
            (
                "[health.checks.x]\ncommand = ['relative']\n",
                "health.checks.*.command",
            ),
            ("[agent]\nstate_dir = 'rel'\n", "agent.state_dir"),
            (
                "[check]\ninterval_secs = 600\njitter_secs = 601\n",
                "check.jitter_secs",
            ),
        ] {
            let err = settings(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(
                err.contains("/etc/platte/agent.d/50-t.toml"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn full_config_parses() {
        let s = settings(
            r#"
[updates]
enabled = false
server = "https://updates.example.com/v1/update/"
group = "beta"
app_id = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
allow_downgrade = true
machine_credential = false
deltas = false
[boot]
slot_partuuids = ["7130c94a-213a-4e5a-8e26-6cce9662f132", "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"]
tries = 3
booted_slot = "b"
disk = "/dev/vda"
[health]
units = ["containerd.service"]
[health.checks.net]
command = ["/usr/bin/ping", "-c1", "gw"]
timeout_secs = 5
[health.checks.off]
command = ["/bin/false"]
enabled = false
[http]
proxy = "http://proxy:3128"
[reboot]
strategy = "immediate"
"#,
        )
        .unwrap();
        assert!(!s.updates.enabled);
        assert!(!s.updates.machine_credential);
        assert!(!s.updates.deltas);
        assert_eq!(
            s.updates.server.unwrap().host_str(),
            Some("updates.example.com")
        );
        assert_eq!(s.boot.tries, 3);
        assert_eq!(s.boot.booted_slot, Some(SlotId::B));
        assert!(matches!(s.boot.slot_a, SlotSpec::PartUuid(_)));
        assert_eq!(s.health.checks.len(), 1);
        assert_eq!(s.health.checks[0].timeout, Duration::from_secs(5));
        assert_eq!(s.reboot.strategy, RebootStrategy::Immediate);
    }
}
