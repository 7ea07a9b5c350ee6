//! Machines new to a rollout. Omaha clients are not authenticated (unless the group requires
//! machine credentials), so any client may invent machine ids. A machine the server first saw
//! at or after the first grant of a rollout (a version in a group) is *new* to that rollout: the
//! store weighs its attempts less for auto-halt ([`crate::rollout::AutoHalt::new_machine_weight`])
//! and grants new machines at a bounded rate per source network ([`NewMachineSettings`]), so a
//! handful of invented ids can neither halt a rollout nor fill its shared limits. Machines the
//! server knew before the rollout began (*established*) are never held by this.
//!
//! Settings in the server's three configuration stages: [`NewMachineArgs`] (command line and
//! environment), [`NewMachineFile`] (the `[new_machines]` table of the TOML file) and
//! [`NewMachineSettings`] (merged and validated).

use std::net::IpAddr;

use serde::Deserialize;

use super::spec::RateLimit;
use crate::config::ConfigError;

/// Default grants to new machines per source network and window.
pub const DEFAULT_GRANTS_PER_NETWORK: u32 = 2;
/// Default window of that limit (one hour).
pub const DEFAULT_WINDOW_SECS: u64 = 3600;
/// Longest window accepted (one week).
pub const MAX_WINDOW_SECS: u64 = 7 * 86_400;

/// The source network of a client address, as the new-machine limit counts it: the IPv4 /24
/// (`192.0.2.0/24`) or the IPv6 /64 (`2001:db8:1:2::/64`); an IPv4-mapped IPv6 address counts as
/// its IPv4 address. An unreadable or empty address is its own network, `unknown`.
pub fn network_of(ip: &str) -> String {
    let Ok(addr) = ip.trim().parse::<IpAddr>() else {
        return "unknown".to_owned();
    };
    let v4 = match addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    match (v4, addr) {
        (Some(a), _) => {
            let [o1, o2, o3, _] = a.octets();
            format!("{o1}.{o2}.{o3}.0/24")
        }
        (None, IpAddr::V6(a)) => {
            let s = a.segments();
            let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{prefix}/64")
        }
        (None, IpAddr::V4(_)) => "unknown".to_owned(),
    }
}

/// New-machine options of `update-server serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NewMachineArgs {
    /// Grants to machines new to a rollout per source network (IPv4 /24, IPv6 /64): in flight
    /// or made within the window, in groups with a `concurrency_limit` or `rate_limit`; 0 turns
    /// the limit off [default: 2].
    #[arg(long, env = "UPDATE_SERVER_NEW_MACHINE_GRANTS_PER_NETWORK")]
    pub new_machine_grants_per_network: Option<u32>,
    /// The window of that limit, in seconds [default: 3600].
    #[arg(long, env = "UPDATE_SERVER_NEW_MACHINE_WINDOW_SECS")]
    pub new_machine_window_secs: Option<u64>,
}

/// The `[new_machines]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewMachineFile {
    /// See [`NewMachineArgs::new_machine_grants_per_network`].
    pub grants_per_network: Option<u32>,
    /// See [`NewMachineArgs::new_machine_window_secs`].
    pub window_secs: Option<u64>,
}

/// Validated new-machine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMachineSettings {
    /// At most `count` grants to new machines per source network that are in flight or were made
    /// in the last `period_secs` (`None`: unbounded).
    pub per_network: Option<RateLimit>,
}

impl Default for NewMachineSettings {
    fn default() -> Self {
        Self {
            per_network: Some(RateLimit {
                count: DEFAULT_GRANTS_PER_NETWORK,
                period_secs: DEFAULT_WINDOW_SECS,
            }),
        }
    }
}

impl NewMachineSettings {
    /// Merges arguments over the file over defaults, and validates.
    pub fn resolve(
        args: &NewMachineArgs,
        file: Option<&NewMachineFile>,
    ) -> Result<Self, ConfigError> {
        let empty = NewMachineFile::default();
        let f = file.unwrap_or(&empty);
        let count = args
            .new_machine_grants_per_network
            .or(f.grants_per_network)
            .unwrap_or(DEFAULT_GRANTS_PER_NETWORK);
        let period_secs = args
            .new_machine_window_secs
            .or(f.window_secs)
            .unwrap_or(DEFAULT_WINDOW_SECS);
        if !(1..=MAX_WINDOW_SECS).contains(&period_secs) {
            return Err(ConfigError::Invalid {
                key: "new_machines.window_secs",
                reason: format!("{period_secs} is outside 1..={MAX_WINDOW_SECS} seconds"),
            });
        }
        Ok(Self {
            per_network: (count > 0).then_some(RateLimit { count, period_secs }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_v4_24_and_v6_64() {
        assert_eq!(network_of("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(network_of(" 192.0.2.1 "), "192.0.2.0/24");
        assert_eq!(network_of("::ffff:192.0.2.9"), "192.0.2.0/24");
        assert_eq!(network_of("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(network_of("2001:db8:1:2::ffff"), "2001:db8:1:2::/64");
        assert_ne!(network_of("2001:db8:1:3::1"), network_of("2001:db8:1:2::1"));
        assert_eq!(network_of(""), "unknown");
        assert_eq!(network_of("not an address"), "unknown");
    }

    #[test]
    fn settings_default_zero_and_range() {
        let d = NewMachineSettings::resolve(&NewMachineArgs::default(), None).unwrap();
        assert_eq!(d, NewMachineSettings::default());
        let off = NewMachineSettings::resolve(
            &NewMachineArgs {
                new_machine_grants_per_network: Some(0),
                new_machine_window_secs: None,
            },
            None,
        )
        .unwrap();
        assert_eq!(off.per_network, None);
        let file = NewMachineFile {
            grants_per_network: Some(5),
            window_secs: Some(600),
        };
        let s = NewMachineSettings::resolve(&NewMachineArgs::default(), Some(&file)).unwrap();
        assert_eq!(
            s.per_network,
            Some(RateLimit {
                count: 5,
                period_secs: 600
            })
        );
        let bad = NewMachineFile {
            grants_per_network: Some(1),
            window_secs: Some(0),
        };
        assert!(NewMachineSettings::resolve(&NewMachineArgs::default(), Some(&bad)).is_err());
    }

    #[test]
    fn the_config_file_table_is_read() {
        let f: crate::config::FileConfig =
            toml::from_str("[new_machines]\ngrants_per_network = 3\nwindow_secs = 900").unwrap();
        let s = crate::config::Settings::resolve(&Default::default(), &f).unwrap();
        assert_eq!(
            s.new_machines.per_network,
            Some(RateLimit {
                count: 3,
                period_secs: 900
            })
        );
        assert!(toml::from_str::<crate::config::FileConfig>("[new_machines]\ncount = 3").is_err());
    }
}
