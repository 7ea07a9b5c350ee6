//! Machine-credential settings in the server's three configuration stages:
//! [`CredentialArgs`] (command line and environment), [`CredentialFile`] (the
//! `[machine_credentials]` table of the TOML file) and [`CredentialSettings`] (merged and
//! validated).

use serde::Deserialize;

use crate::config::ConfigError;

/// Default largest difference between a signature's timestamp and the server's clock.
pub const DEFAULT_MAX_SKEW_SECS: u64 = 300;
/// Largest `max_skew_secs` accepted (one day).
pub const MAX_MAX_SKEW_SECS: u64 = 86_400;

/// Machine-credential options of `update-server serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CredentialArgs {
    /// Bind the key of the first valid signed request of a machine id without one (trust on
    /// first use); false: only keys enrolled by an operator count [default: true].
    #[arg(long, env = "UPDATE_SERVER_MACHINE_CREDENTIAL_TRUST_ON_FIRST_USE")]
    pub machine_credential_trust_on_first_use: Option<bool>,
    /// Largest difference, in seconds, between a signature's timestamp and the server's clock
    /// (1..=86400) [default: 300].
    #[arg(long, env = "UPDATE_SERVER_MACHINE_CREDENTIAL_MAX_SKEW_SECS")]
    pub machine_credential_max_skew_secs: Option<u64>,
}

/// The `[machine_credentials]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    /// See [`CredentialArgs::machine_credential_trust_on_first_use`].
    pub trust_on_first_use: Option<bool>,
    /// See [`CredentialArgs::machine_credential_max_skew_secs`].
    pub max_skew_secs: Option<u64>,
}

/// Validated machine-credential settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSettings {
    /// Whether a machine id without a key takes the key of its first valid signed request.
    pub trust_on_first_use: bool,
    /// Largest accepted |signature timestamp − server clock|, in seconds.
    pub max_skew_secs: u64,
}

impl Default for CredentialSettings {
    fn default() -> Self {
        Self {
            trust_on_first_use: true,
            max_skew_secs: DEFAULT_MAX_SKEW_SECS,
        }
    }
}

impl CredentialSettings {
    /// Merges arguments over the file over defaults, and validates.
    pub fn resolve(
        args: &CredentialArgs,
        file: Option<&CredentialFile>,
    ) -> Result<Self, ConfigError> {
        let empty = CredentialFile::default();
        let file = file.unwrap_or(&empty);
        let max_skew_secs = args
            .machine_credential_max_skew_secs
            .or(file.max_skew_secs)
            .unwrap_or(DEFAULT_MAX_SKEW_SECS);
        if !(1..=MAX_MAX_SKEW_SECS).contains(&max_skew_secs) {
            return Err(ConfigError::Invalid {
                key: "machine_credentials.max_skew_secs",
                reason: format!("{max_skew_secs} is outside 1..={MAX_MAX_SKEW_SECS} seconds"),
            });
        }
        Ok(Self {
            trust_on_first_use: args
                .machine_credential_trust_on_first_use
                .or(file.trust_on_first_use)
                .unwrap_or(true),
            max_skew_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_trust_on_first_use_within_five_minutes() {
        let s = CredentialSettings::resolve(&CredentialArgs::default(), None).unwrap();
        assert_eq!(s, CredentialSettings::default());
        assert!(s.trust_on_first_use);
        assert_eq!(s.max_skew_secs, 300);
    }

    #[test]
    fn args_beat_file_and_bad_values_are_named() {
        let file: CredentialFile =
            toml::from_str("trust_on_first_use = false\nmax_skew_secs = 60").unwrap();
        let s = CredentialSettings::resolve(&CredentialArgs::default(), Some(&file)).unwrap();
        assert!(!s.trust_on_first_use);
        assert_eq!(s.max_skew_secs, 60);
        let args = CredentialArgs {
            machine_credential_max_skew_secs: Some(0),
            ..Default::default()
        };
        let e = CredentialSettings::resolve(&args, Some(&file)).unwrap_err();
        assert!(
            e.to_string().contains("machine_credentials.max_skew_secs"),
            "{e}"
        );
        assert!(toml::from_str::<CredentialFile>("tofu = true").is_err());
    }
}
