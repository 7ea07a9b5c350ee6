//! FleetLock settings in the server's three configuration stages: [`FleetLockArgs`] (command
//! line and environment), [`FleetLockFile`] (the `[fleetlock]` table of the TOML file) and
//! [`FleetLockSettings`] (merged and validated).

use serde::Deserialize;

use crate::config::ConfigError;

/// Default number of reboot slots of a group without a configured count.
pub const DEFAULT_SLOTS: u32 = 1;
/// Largest slot count accepted (from configuration or the admin API).
pub const MAX_SLOTS: u32 = 10_000;
/// Default most groups that clients may bring (held groups not configured through the API).
pub const DEFAULT_MAX_GROUPS: u32 = 1_024;
/// Largest accepted `max_groups`.
pub const MAX_MAX_GROUPS: u32 = 1_000_000;

/// FleetLock options of `update-server serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FleetLockArgs {
    /// Serve the FleetLock endpoints under /fleetlock/ [default: true].
    #[arg(long, env = "UPDATE_SERVER_FLEETLOCK_ENABLED")]
    pub fleetlock_enabled: Option<bool>,
    /// Shared secret FleetLock clients must send as `Authorization: Bearer` [default: none].
    #[arg(long, env = "UPDATE_SERVER_FLEETLOCK_TOKEN", hide_env_values = true)]
    pub fleetlock_token: Option<String>,
    /// Slots of a group whose count was not set through the admin API [default: 1].
    #[arg(long, env = "UPDATE_SERVER_FLEETLOCK_DEFAULT_SLOTS")]
    pub fleetlock_default_slots: Option<u32>,
    /// Most groups with holders that were not configured through the admin API; a lock in a
    /// further new group is refused [default: 1024].
    #[arg(long, env = "UPDATE_SERVER_FLEETLOCK_MAX_GROUPS")]
    pub fleetlock_max_groups: Option<u32>,
}

/// The `[fleetlock]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetLockFile {
    /// See [`FleetLockArgs::fleetlock_enabled`].
    pub enabled: Option<bool>,
    /// See [`FleetLockArgs::fleetlock_token`].
    pub token: Option<String>,
    /// See [`FleetLockArgs::fleetlock_default_slots`].
    pub default_slots: Option<u32>,
    /// See [`FleetLockArgs::fleetlock_max_groups`].
    pub max_groups: Option<u32>,
}

/// Validated FleetLock settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLockSettings {
    /// Whether the protocol endpoints answer (the admin API always does).
    pub enabled: bool,
    /// Shared secret required from clients, if any.
    pub token: Option<String>,
    /// Slots of groups without a configured count.
    pub default_slots: u32,
    /// Most held groups without a configured count.
    pub max_groups: u32,
}

impl Default for FleetLockSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            token: None,
            default_slots: DEFAULT_SLOTS,
            max_groups: DEFAULT_MAX_GROUPS,
        }
    }
}

impl FleetLockSettings {
    /// Merges arguments over the file over defaults, and validates.
    pub fn resolve(
        args: &FleetLockArgs,
        file: Option<&FleetLockFile>,
    ) -> Result<Self, ConfigError> {
        let empty = FleetLockFile::default();
        let file = file.unwrap_or(&empty);
        let token = args.fleetlock_token.clone().or_else(|| file.token.clone());
        if let Some(t) = &token
            && t.trim().len() < 16
        {
            return Err(ConfigError::Invalid {
                key: "fleetlock.token",
                reason: "a token must have at least 16 characters".into(),
            });
        }
        let default_slots = args
            .fleetlock_default_slots
            .or(file.default_slots)
            .unwrap_or(DEFAULT_SLOTS);
        if default_slots > MAX_SLOTS {
            return Err(ConfigError::Invalid {
                key: "fleetlock.default_slots",
                reason: format!("{default_slots} is above {MAX_SLOTS}"),
            });
        }
        let max_groups = args
            .fleetlock_max_groups
            .or(file.max_groups)
            .unwrap_or(DEFAULT_MAX_GROUPS);
        if !(1..=MAX_MAX_GROUPS).contains(&max_groups) {
            return Err(ConfigError::Invalid {
                key: "fleetlock.max_groups",
                reason: format!("{max_groups} is not within 1..={MAX_MAX_GROUPS}"),
            });
        }
        Ok(Self {
            enabled: args.fleetlock_enabled.or(file.enabled).unwrap_or(true),
            token: token.map(|t| t.trim().to_owned()),
            default_slots,
            max_groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_open_with_one_slot() {
        let s = FleetLockSettings::resolve(&FleetLockArgs::default(), None).unwrap();
        assert_eq!(s, FleetLockSettings::default());
        assert!(s.enabled);
        assert_eq!(s.default_slots, 1);
    }

    #[test]
    fn args_beat_file_and_bad_values_are_named() {
        let file: FleetLockFile =
            toml::from_str("enabled = false\ndefault_slots = 3\ntoken = \"file-token-0123456789\"")
                .unwrap();
        let args = FleetLockArgs {
            fleetlock_default_slots: Some(2),
            ..Default::default()
        };
        let s = FleetLockSettings::resolve(&args, Some(&file)).unwrap();
        assert!(!s.enabled);
        assert_eq!(s.default_slots, 2);
        assert_eq!(s.token.as_deref(), Some("file-token-0123456789"));
        let args = FleetLockArgs {
            fleetlock_token: Some("short".into()),
            ..Default::default()
        };
        let e = FleetLockSettings::resolve(&args, None).unwrap_err();
        assert!(e.to_string().contains("fleetlock.token"), "{e}");
        assert!(toml::from_str::<FleetLockFile>("slots = 1").is_err());
        let file: FleetLockFile = toml::from_str("max_groups = 10").unwrap();
        let s = FleetLockSettings::resolve(&FleetLockArgs::default(), Some(&file)).unwrap();
        assert_eq!(s.max_groups, 10);
        let args = FleetLockArgs {
            fleetlock_max_groups: Some(0),
            ..Default::default()
        };
        let e = FleetLockSettings::resolve(&args, None).unwrap_err();
        assert!(e.to_string().contains("fleetlock.max_groups"), "{e}");
    }
}
