//! Config inputs: all fragments merged in precedence order, each value remembering its source.
//!
//! Legacy `update.conf` values are applied first (lowest precedence), then drop-ins in lexical
//! order; a later file's key replaces an earlier one's. `health.units` accumulate across files;
//! `health.checks.NAME` and `extensions.NAME` merge per name and field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::fragments::Fragment;
use super::legacy::LegacyConfig;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A TOML drop-in file.
    DropIn(PathBuf),
    /// A legacy `update.conf` file, with its key name.
    Legacy(PathBuf, &'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::DropIn(p) => write!(f, "{}", p.display()),
            Origin::Legacy(p, key) => write!(f, "{} (legacy key {key})", p.display()),
        }
    }
}

/// A value with the file that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    /// The value as written.
    pub value: T,
    /// Where it was written.
    pub origin: Origin,
}

/// Merged, still unvalidated input for one health command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckInput {
    /// Program and arguments.
    pub command: Option<Sourced<Vec<String>>>,
    /// Timeout in seconds.
    pub timeout_secs: Option<Sourced<u64>>,
    /// Whether the check runs.
    pub enabled: Option<Sourced<bool>>,
}

/// All configuration keys after merging, before validation. Field names follow `section_key`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    pub updates_enabled: Option<Sourced<bool>>,
    pub updates_server: Option<Sourced<String>>,
    pub updates_group: Option<Sourced<String>>,
    pub updates_app_id: Option<Sourced<String>>,
    pub updates_allow_downgrade: Option<Sourced<bool>>,
    pub updates_trusted_keys_dir: Option<Sourced<PathBuf>>,
    pub updates_machine_credential: Option<Sourced<bool>>,
    pub updates_deltas: Option<Sourced<bool>>,
    pub identity_alias: Option<Sourced<String>>,
    pub identity_os_version: Option<Sourced<String>>,
    pub identity_board: Option<Sourced<String>>,
    pub check_initial_delay_secs: Option<Sourced<u64>>,
    pub check_interval_secs: Option<Sourced<u64>>,
    pub check_jitter_secs: Option<Sourced<u64>>,
    pub check_backoff_cap_secs: Option<Sourced<u64>>,
    pub boot_backend: Option<Sourced<String>>,
    pub boot_disk: Option<Sourced<PathBuf>>,
    pub boot_slot_labels: Option<Sourced<Vec<String>>>,
    pub boot_slot_partuuids: Option<Sourced<Vec<String>>>,
    pub boot_tries: Option<Sourced<u64>>,
    pub boot_booted_slot: Option<Sourced<String>>,
    pub boot_sd_esp: Option<Sourced<PathBuf>>,
    pub boot_sd_entry_name: Option<Sourced<String>>,
    pub boot_sd_kernel_path: Option<Sourced<PathBuf>>,
    pub boot_sd_initrd_path: Option<Sourced<PathBuf>>,
    pub boot_sd_kernel_options: Option<Sourced<String>>,
    pub boot_sd_efivars_dir: Option<Sourced<PathBuf>>,
    pub agent_state_dir: Option<Sourced<PathBuf>>,
    pub health_timeout_secs: Option<Sourced<u64>>,
    pub health_units: Vec<Sourced<String>>,
    pub health_systemctl: Option<Sourced<PathBuf>>,
    pub health_checks: BTreeMap<String, CheckInput>,
    pub http_proxy: Option<Sourced<String>>,
    pub http_ca_file: Option<Sourced<PathBuf>>,
    pub http_connect_timeout_secs: Option<Sourced<u64>>,
    pub http_request_timeout_secs: Option<Sourced<u64>>,
    pub http_stall_timeout_secs: Option<Sourced<u64>>,
    pub reboot_strategy: Option<Sourced<String>>,
    pub reboot_windows: Option<Sourced<Vec<maintenance_window::Window>>>,
    pub reboot_fleet_lock_base_url: Option<Sourced<String>>,
    pub reboot_fleet_lock_group: Option<Sourced<String>>,
    pub reboot_grace_period_secs: Option<Sourced<u64>>,
    pub reboot_lock_retry_secs: Option<Sourced<u64>>,
    pub reboot_notify_command: Option<Sourced<Vec<String>>>,
    pub reboot_reboot_required_path: Option<Sourced<PathBuf>>,
    pub install_checkpoint_interval_ms: Option<Sourced<u64>>,
    pub install_attempts_per_url: Option<Sourced<u64>>,
    pub install_start_over_after: Option<Sourced<u64>>,
    pub check_backoff_base_secs: Option<Sourced<u64>>,
    pub dbus_enabled: Option<Sourced<bool>>,
    pub dbus_update_engine_compat: Option<Sourced<bool>>,
    /// `[extensions]`, merged per extension name and field.
    pub extensions: super::extensions::ExtensionsInputs,
}

/// Overwrites `dst` when `src` is set (by the drop-in `file`): a later file's key replaces an
/// earlier one's.
pub(crate) fn set<T>(dst: &mut Option<Sourced<T>>, src: Option<T>, file: &Path) {
    if let Some(value) = src {
        *dst = Some(Sourced {
            value,
            origin: Origin::DropIn(file.to_owned()),
        });
    }
}

impl Inputs {
    /// Inputs holding only what legacy `update.conf` files set.
    ///
    /// `SERVER=disabled` turns automatic updates off (`updates.enabled = false`), as on Flatcar.
    pub fn from_legacy(legacy: &LegacyConfig) -> Self {
        let mut me = Self::default();
        if let Some(g) = &legacy.group {
            me.updates_group = Some(Sourced {
                value: g.value.clone(),
                origin: Origin::Legacy(g.file.clone(), "GROUP"),
            });
        }
        if let Some(s) = &legacy.server {
            let origin = Origin::Legacy(s.file.clone(), "SERVER");
            if s.value == "disabled" {
                me.updates_enabled = Some(Sourced {
                    value: false,
                    origin,
                });
            } else {
                me.updates_server = Some(Sourced {
                    value: s.value.clone(),
                    origin,
                });
            }
        }
        if let Some(a) = &legacy.machine_alias {
            me.identity_alias = Some(Sourced {
                value: a.value.clone(),
                origin: Origin::Legacy(a.file.clone(), "MACHINE_ALIAS"),
            });
        }
        me
    }

    /// Applies one drop-in's fragment on top of what is already merged.
    pub fn merge(&mut self, f: Fragment, file: &Path) {
        if let Some(u) = f.updates {
            set(&mut self.updates_enabled, u.enabled, file);
            set(&mut self.updates_server, u.server, file);
            set(&mut self.updates_group, u.group, file);
            set(&mut self.updates_app_id, u.app_id, file);
            set(&mut self.updates_allow_downgrade, u.allow_downgrade, file);
            set(&mut self.updates_trusted_keys_dir, u.trusted_keys_dir, file);
            set(
                &mut self.updates_machine_credential,
                u.machine_credential,
                file,
            );
            set(&mut self.updates_deltas, u.deltas, file);
        }
        if let Some(i) = f.identity {
            set(&mut self.identity_alias, i.alias, file);
            set(&mut self.identity_os_version, i.os_version, file);
            set(&mut self.identity_board, i.board, file);
        }
        if let Some(c) = f.check {
            set(
                &mut self.check_initial_delay_secs,
                c.initial_delay_secs,
                file,
            );
            set(&mut self.check_interval_secs, c.interval_secs, file);
            set(&mut self.check_jitter_secs, c.jitter_secs, file);
            set(&mut self.check_backoff_cap_secs, c.backoff_cap_secs, file);
            set(&mut self.check_backoff_base_secs, c.backoff_base_secs, file);
        }
        if let Some(b) = f.boot {
            set(&mut self.boot_backend, b.backend, file);
            set(&mut self.boot_disk, b.disk, file);
            set(&mut self.boot_slot_labels, b.slot_labels, file);
            set(&mut self.boot_slot_partuuids, b.slot_partuuids, file);
            set(&mut self.boot_tries, b.tries, file);
            set(&mut self.boot_booted_slot, b.booted_slot, file);
            if let Some(sd) = b.systemd_boot {
                set(&mut self.boot_sd_esp, sd.esp, file);
                set(&mut self.boot_sd_entry_name, sd.entry_name, file);
                set(&mut self.boot_sd_kernel_path, sd.kernel_path, file);
                set(&mut self.boot_sd_initrd_path, sd.initrd_path, file);
                set(&mut self.boot_sd_kernel_options, sd.kernel_options, file);
                set(&mut self.boot_sd_efivars_dir, sd.efivars_dir, file);
            }
        }
        if let Some(a) = f.agent {
            set(&mut self.agent_state_dir, a.state_dir, file);
        }
        if let Some(h) = f.health {
            set(&mut self.health_timeout_secs, h.timeout_secs, file);
            set(&mut self.health_systemctl, h.systemctl, file);
            for unit in h.units.unwrap_or_default() {
                if !self.health_units.iter().any(|u| u.value == unit) {
                    self.health_units.push(Sourced {
                        value: unit,
                        origin: Origin::DropIn(file.to_owned()),
                    });
                }
            }
            for (name, c) in h.checks.unwrap_or_default() {
                let slot = self.health_checks.entry(name).or_default();
                set(&mut slot.command, c.command, file);
                set(&mut slot.timeout_secs, c.timeout_secs, file);
                set(&mut slot.enabled, c.enabled, file);
            }
        }
        if let Some(h) = f.http {
            set(&mut self.http_proxy, h.proxy, file);
            set(&mut self.http_ca_file, h.ca_file, file);
            set(
                &mut self.http_connect_timeout_secs,
                h.connect_timeout_secs,
                file,
            );
            set(
                &mut self.http_request_timeout_secs,
                h.request_timeout_secs,
                file,
            );
            set(
                &mut self.http_stall_timeout_secs,
                h.stall_timeout_secs,
                file,
            );
        }
        if let Some(r) = f.reboot {
            set(&mut self.reboot_strategy, r.strategy, file);
            set(&mut self.reboot_windows, r.windows, file);
            set(
                &mut self.reboot_grace_period_secs,
                r.grace_period_secs,
                file,
            );
            set(&mut self.reboot_lock_retry_secs, r.lock_retry_secs, file);
            set(&mut self.reboot_notify_command, r.notify_command, file);
            set(
                &mut self.reboot_reboot_required_path,
                r.reboot_required_path,
                file,
            );
            if let Some(fl) = r.fleet_lock {
                set(&mut self.reboot_fleet_lock_base_url, fl.base_url, file);
                set(&mut self.reboot_fleet_lock_group, fl.group, file);
            }
        }
        if let Some(d) = f.dbus {
            set(&mut self.dbus_enabled, d.enabled, file);
            set(
                &mut self.dbus_update_engine_compat,
                d.update_engine_compat,
                file,
            );
        }
        if let Some(e) = f.extensions {
            self.extensions.merge(e, file);
        }
        if let Some(n) = f.install {
            set(
                &mut self.install_checkpoint_interval_ms,
                n.checkpoint_interval_ms,
                file,
            );
            set(&mut self.install_attempts_per_url, n.attempts_per_url, file);
            set(&mut self.install_start_over_after, n.start_over_after, file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dropins::parse_str;

    fn frag(text: &str) -> Fragment {
        parse_str(text, Path::new("t.toml"), &mut Vec::new()).unwrap()
    }

    #[test]
    fn later_fragment_replaces_key_and_keeps_others() {
        let mut i = Inputs::default();
        i.merge(
            frag("[updates]\ngroup='a'\nserver='http://x/'\n"),
            Path::new("/usr/lib/10.toml"),
        );
        i.merge(frag("[updates]\ngroup='b'\n"), Path::new("/etc/20.toml"));
        let g = i.updates_group.unwrap();
        assert_eq!(g.value, "b");
        assert_eq!(g.origin, Origin::DropIn("/etc/20.toml".into()));
        assert_eq!(
            i.updates_server.unwrap().origin,
            Origin::DropIn("/usr/lib/10.toml".into())
        );
    }

    #[test]
    fn health_units_accumulate_and_checks_merge_per_field() {
        let mut i = Inputs::default();
        i.merge(
            frag("[health]\nunits=['a.service']\n[health.checks.net]\ncommand=['/bin/true']\ntimeout_secs=5\n"),
            Path::new("1.toml"),
        );
        i.merge(
            frag(
                "[health]\nunits=['b.service','a.service']\n[health.checks.net]\ntimeout_secs=9\n",
            ),
            Path::new("2.toml"),
        );
        let units: Vec<_> = i.health_units.iter().map(|u| u.value.as_str()).collect();
        assert_eq!(units, ["a.service", "b.service"]);
        let net = &i.health_checks["net"];
        assert_eq!(net.command.as_ref().unwrap().value, ["/bin/true"]);
        assert_eq!(net.timeout_secs.as_ref().unwrap().value, 9);
    }

    #[test]
    fn extensions_merge_per_name_and_field_into_settings_with_unknown_keys_warned() {
        let mut warnings = Vec::new();
        let mut i = Inputs::default();
        for (file, text) in [
            (
                "/usr/lib/platte/agent.d/20-vendor.toml",
                "[extensions.containerd]\napp_id = '{5e8a1c7d-2f4b-4c6e-9a1d-3b7c9e2f4a60}'\nrestart_units = ['containerd.service']\n[extensions.docker]\napp_id = 'd'\n",
            ),
            (
                "/etc/platte/agent.d/50-site.toml",
                "[extensions]\nimage_dir = '/srv/images'\n[extensions.containerd]\ngroup = 'beta'\nrestart_unit = []\n[extensions.docker]\nenabled = false\n",
            ),
        ] {
            let f = parse_str(text, Path::new(file), &mut warnings).unwrap();
            i.merge(f, Path::new(file));
        }
        let keys: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            keys,
            [
                "unknown key `extensions.containerd.restart_unit` in /etc/platte/agent.d/50-site.toml (ignored)"
            ]
        );
        let s = crate::config::Settings::from_inputs(&i).unwrap().extensions;
        assert_eq!(s.image_dir, Path::new("/srv/images"));
        assert_eq!(
            s.sysext_refresh_command,
            ["systemctl", "restart", "systemd-sysext.service"]
        );
        let c = &s.extensions[0];
        assert_eq!(
            (c.name.as_str(), c.group.as_str(), c.restart_units.len()),
            ("containerd", "beta", 1)
        );
        assert_eq!(
            s.enabled().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["containerd"]
        );
        // Invalid values fail the whole configuration, naming key and file.
        let f = parse_str(
            "[extensions.x]\ngroup = 'a'\n",
            Path::new("/etc/platte/agent.d/60-x.toml"),
            &mut warnings,
        )
        .unwrap();
        i.merge(f, Path::new("/etc/platte/agent.d/60-x.toml"));
        let e = crate::config::Settings::from_inputs(&i)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("extensions.*.app_id") && e.contains("60-x.toml"),
            "{e}"
        );
    }

    #[test]
    fn shipped_extension_example_is_valid_when_uncommented() {
        let text = include_str!("../../../systemd/agent.d/00-defaults.toml");
        let example: String = text
            .lines()
            .skip_while(|l| *l != "[extensions]")
            .take_while(|l| *l != "[reboot]")
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(example.contains("[extensions.containerd]"), "{example}");
        let mut warnings = Vec::new();
        let f = parse_str(&example, Path::new("00-defaults.toml"), &mut warnings).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut i = Inputs::default();
        i.merge(f, Path::new("00-defaults.toml"));
        let s = crate::config::Settings::from_inputs(&i).unwrap().extensions;
        assert_eq!(
            s,
            crate::config::extensions::ExtensionsSettings {
                extensions: s.extensions.clone(),
                ..Default::default()
            }
        );
        let c = &s.extensions[0];
        assert_eq!(c.restart_units, ["containerd.service"]);
        assert_eq!(c.pin_version.as_deref(), Some("1.7.22"));
    }

    #[test]
    fn legacy_server_disabled_turns_updates_off() {
        let legacy = LegacyConfig {
            server: Some(crate::config::legacy::LegacyValue {
                value: "disabled".into(),
                file: "/etc/flatcar/update.conf".into(),
            }),
            ..Default::default()
        };
        let i = Inputs::from_legacy(&legacy);
        assert!(!i.updates_enabled.unwrap().value);
        assert!(i.updates_server.is_none());
    }
}
