//! `[extensions]` configuration in the agent's three stages: [`ExtensionsFragment`] (what one
//! drop-in says), [`ExtensionsInputs`] (merged per extension name and field, each value with
//! the file that set it) and [`ExtensionsSettings`] (validated, defaults applied).
//!
//! ```toml
//! [extensions]
//! sysext_refresh_command = ["systemctl", "restart", "systemd-sysext.service"]
//!
//! [extensions.containerd]
//! app_id = "{5e8a1c7d-…}"
//! group = "stable"
//! restart_units = ["containerd.service"]
//! health_command = ["/usr/bin/ctr", "version"]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

use crate::config::ConfigError;
use crate::config::inputs::{Sourced, set};
use crate::config::validate::{absolute, invalid, secs};

/// Default directory holding the `NAME.raw` links systemd-sysext merges.
pub const DEFAULT_INSTALL_DIR: &str = "/var/lib/extensions";
/// Default directory holding the downloaded `NAME-VERSION.raw` images (outside every
/// systemd-sysext search path, so only the linked image is merged).
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/platte/extensions";
/// Default refresh command: systemd re-merges the images (`systemd-sysext.service` runs
/// `systemd-sysext refresh` in the host's mount namespace). `systemd-sysext refresh` run by the
/// agent itself would only change the agent's own view of `/usr` under the shipped unit
/// (`ProtectSystem=strict` gives it a private mount namespace).
pub const DEFAULT_REFRESH_COMMAND: [&str; 3] = ["systemctl", "restart", "systemd-sysext.service"];
/// Default group (Omaha track) of an extension.
pub const DEFAULT_GROUP: &str = "stable";
/// Most extensions configured.
pub const MAX_EXTENSIONS: usize = 32;

/// The key naming the global refresh command inside `[extensions]`.
const REFRESH_KEY: &str = "sysext_refresh_command";
/// The key naming the image directory inside `[extensions]`.
const IMAGE_DIR_KEY: &str = "image_dir";
/// The key naming the refresh timeout inside `[extensions]`.
const REFRESH_TIMEOUT_KEY: &str = "refresh_timeout_secs";

/// `[extensions]` in one drop-in: global keys plus one `[extensions.NAME]` table per extension.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtensionsFragment {
    /// `sysext_refresh_command`: program and arguments run after a link switch.
    pub sysext_refresh_command: Option<Vec<String>>,
    /// `image_dir`: where `NAME-VERSION.raw` images are kept.
    pub image_dir: Option<PathBuf>,
    /// `refresh_timeout_secs`: time allowed to the refresh command.
    pub refresh_timeout_secs: Option<u64>,
    /// `[extensions.NAME]` tables by name.
    pub extensions: BTreeMap<String, ExtensionFragment>,
}

/// One `[extensions.NAME]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ExtensionFragment {
    /// Omaha application id of the extension.
    pub app_id: Option<String>,
    /// Group (Omaha track).
    pub group: Option<String>,
    /// Directory holding the `NAME.raw` link.
    pub install_dir: Option<PathBuf>,
    /// Units restarted after the switch.
    pub restart_units: Option<Vec<String>>,
    /// Health command run after the restart (program and arguments, no shell).
    pub health_command: Option<Vec<String>>,
    /// Time allowed to the health command.
    pub health_timeout_secs: Option<u64>,
    /// Time allowed to each unit restart (job and active state).
    pub restart_timeout_secs: Option<u64>,
    /// Only this version is installed.
    pub pin_version: Option<String>,
    /// `false` opts the extension out.
    pub enabled: Option<bool>,
}

impl<'de> Deserialize<'de> for ExtensionsFragment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ExtensionsFragment;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a table of global keys ({REFRESH_KEY}, {IMAGE_DIR_KEY}, {REFRESH_TIMEOUT_KEY}) and [extensions.NAME] tables"
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = ExtensionsFragment::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        REFRESH_KEY => out.sysext_refresh_command = Some(map.next_value()?),
                        IMAGE_DIR_KEY => out.image_dir = Some(map.next_value()?),
                        REFRESH_TIMEOUT_KEY => out.refresh_timeout_secs = Some(map.next_value()?),
                        _ => {
                            // Passing the wrapped deserializer on keeps `serde_ignored` reporting
                            // unknown keys inside the table as `extensions.NAME.key`.
                            let table: ExtensionFragment = map.next_value()?;
                            out.extensions.insert(key, table);
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Merged, unvalidated input of one extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionInput {
    /// `app_id`.
    pub app_id: Option<Sourced<String>>,
    /// `group`.
    pub group: Option<Sourced<String>>,
    /// `install_dir`.
    pub install_dir: Option<Sourced<PathBuf>>,
    /// `restart_units`.
    pub restart_units: Option<Sourced<Vec<String>>>,
    /// `health_command`.
    pub health_command: Option<Sourced<Vec<String>>>,
    /// `health_timeout_secs`.
    pub health_timeout_secs: Option<Sourced<u64>>,
    /// `restart_timeout_secs`.
    pub restart_timeout_secs: Option<Sourced<u64>>,
    /// `pin_version`.
    pub pin_version: Option<Sourced<String>>,
    /// `enabled`.
    pub enabled: Option<Sourced<bool>>,
}

/// All `[extensions]` fragments merged in precedence order: a later file replaces a key set by
/// an earlier one; `[extensions.NAME]` tables merge per name and field (so a later file can
/// change one field of, or disable, a vendor-defined extension).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionsInputs {
    /// `sysext_refresh_command`.
    pub sysext_refresh_command: Option<Sourced<Vec<String>>>,
    /// `image_dir`.
    pub image_dir: Option<Sourced<PathBuf>>,
    /// `refresh_timeout_secs`.
    pub refresh_timeout_secs: Option<Sourced<u64>>,
    /// Per extension name.
    pub extensions: BTreeMap<String, ExtensionInput>,
}

impl ExtensionsInputs {
    /// Applies one drop-in's `[extensions]` over what earlier files said.
    pub fn merge(&mut self, f: ExtensionsFragment, file: &Path) {
        set(
            &mut self.sysext_refresh_command,
            f.sysext_refresh_command,
            file,
        );
        set(&mut self.image_dir, f.image_dir, file);
        set(&mut self.refresh_timeout_secs, f.refresh_timeout_secs, file);
        for (name, e) in f.extensions {
            let slot = self.extensions.entry(name).or_default();
            set(&mut slot.app_id, e.app_id, file);
            set(&mut slot.group, e.group, file);
            set(&mut slot.install_dir, e.install_dir, file);
            set(&mut slot.restart_units, e.restart_units, file);
            set(&mut slot.health_command, e.health_command, file);
            set(&mut slot.health_timeout_secs, e.health_timeout_secs, file);
            set(&mut slot.restart_timeout_secs, e.restart_timeout_secs, file);
            set(&mut slot.pin_version, e.pin_version, file);
            set(&mut slot.enabled, e.enabled, file);
        }
    }
}

/// One validated extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionSettings {
    /// Name: the sysext image name (`NAME.raw`).
    pub name: String,
    /// Omaha application id.
    pub app_id: String,
    /// Group (Omaha track).
    pub group: String,
    /// Directory holding the `NAME.raw` link.
    pub install_dir: PathBuf,
    /// Units restarted (in order) after the switch.
    pub restart_units: Vec<String>,
    /// Health command, if any.
    pub health_command: Option<Vec<String>>,
    /// Time allowed to the health command.
    pub health_timeout: Duration,
    /// Time allowed to each unit restart.
    pub restart_timeout: Duration,
    /// Only this version is installed.
    pub pin_version: Option<String>,
    /// Whether the extension is managed at all.
    pub enabled: bool,
}

/// Validated `[extensions]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionsSettings {
    /// Program and arguments run after every link switch.
    pub sysext_refresh_command: Vec<String>,
    /// Where `NAME-VERSION.raw` images are kept.
    pub image_dir: PathBuf,
    /// Time allowed to the refresh command.
    pub refresh_timeout: Duration,
    /// Configured extensions, by name order (disabled ones included, with `enabled = false`).
    pub extensions: Vec<ExtensionSettings>,
}

impl Default for ExtensionsSettings {
    fn default() -> Self {
        Self {
            sysext_refresh_command: DEFAULT_REFRESH_COMMAND.map(String::from).to_vec(),
            image_dir: PathBuf::from(DEFAULT_IMAGE_DIR),
            refresh_timeout: Duration::from_secs(120),
            extensions: Vec::new(),
        }
    }
}

/// Whether `s` is a usable sysext name: 1..=64 of `A-Z a-z 0-9 _ . -`, not starting with `.`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Whether `s` is usable as a version in a file name: 1..=64 of `A-Z a-z 0-9 . _ + ~ -`, not
/// starting with `.` (versions come from the server and the signed manifest, and end up in
/// `NAME-VERSION.raw`).
pub fn valid_version(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

fn valid_app_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"{}._-".contains(&b))
}

fn valid_group(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

fn valid_unit(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.contains('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

fn command(
    key: &'static str,
    v: &Sourced<Vec<String>>,
    what: &str,
) -> Result<Vec<String>, ConfigError> {
    match v.value.first() {
        None => Err(invalid(key, v, format!("{what}: the command is empty"))),
        Some(p) if p.is_empty() || p.contains('\0') => Err(invalid(
            key,
            v,
            format!("{what}: the program name is empty"),
        )),
        Some(_) => Ok(v.value.clone()),
    }
}

impl ExtensionsSettings {
    /// Validates merged inputs. Errors name the key, the extension and the file.
    pub fn from_inputs(i: &ExtensionsInputs) -> Result<Self, ConfigError> {
        let sysext_refresh_command = match &i.sysext_refresh_command {
            None => DEFAULT_REFRESH_COMMAND.map(String::from).to_vec(),
            Some(s) => command("extensions.sysext_refresh_command", s, "refresh")?,
        };
        let image_dir = absolute("extensions.image_dir", &i.image_dir, DEFAULT_IMAGE_DIR)?;
        let refresh_timeout = secs(
            "extensions.refresh_timeout_secs",
            &i.refresh_timeout_secs,
            120,
            1,
            3600,
        )?;
        let mut extensions = Vec::new();
        let mut app_ids: BTreeMap<String, String> = BTreeMap::new();
        for (name, e) in &i.extensions {
            let s = extension(name, e)?;
            if s.enabled {
                let norm = omaha::normalize_appid(&s.app_id);
                if let Some(other) = app_ids.insert(norm, name.clone()) {
                    let origin = e
                        .app_id
                        .as_ref()
                        .map(|a| a.origin.to_string())
                        .unwrap_or_default();
                    return Err(ConfigError::Invalid {
                        key: "extensions.*.app_id",
                        origin,
                        message: format!(
                            "extensions {other:?} and {name:?} have the same app id {:?}",
                            s.app_id
                        ),
                    });
                }
            }
            extensions.push(s);
        }
        if extensions.len() > MAX_EXTENSIONS {
            return Err(ConfigError::Invalid {
                key: "extensions",
                origin: String::new(),
                message: format!(
                    "{} extensions configured; at most {MAX_EXTENSIONS} are supported",
                    extensions.len()
                ),
            });
        }
        Ok(Self {
            sysext_refresh_command,
            image_dir,
            refresh_timeout,
            extensions,
        })
    }

    /// The enabled extensions.
    pub fn enabled(&self) -> impl Iterator<Item = &ExtensionSettings> {
        self.extensions.iter().filter(|e| e.enabled)
    }
}

/// The origin of any key of `e` (for errors about the table as a whole).
fn any_origin(e: &ExtensionInput) -> String {
    [
        e.group.as_ref().map(|s| s.origin.to_string()),
        e.install_dir.as_ref().map(|s| s.origin.to_string()),
        e.restart_units.as_ref().map(|s| s.origin.to_string()),
        e.enabled.as_ref().map(|s| s.origin.to_string()),
        e.pin_version.as_ref().map(|s| s.origin.to_string()),
        e.health_command.as_ref().map(|s| s.origin.to_string()),
    ]
    .into_iter()
    .flatten()
    .next()
    .unwrap_or_default()
}

fn extension(name: &str, e: &ExtensionInput) -> Result<ExtensionSettings, ConfigError> {
    if !valid_name(name) {
        return Err(ConfigError::Invalid {
            key: "extensions.*",
            origin: any_origin(e),
            message: format!(
                "extension name {name:?} must be 1..=64 characters of A-Z a-z 0-9 _ . - (it names NAME.raw), not starting with ."
            ),
        });
    }
    let enabled = e.enabled.as_ref().is_none_or(|s| s.value);
    let app_id = match &e.app_id {
        Some(s) if !valid_app_id(&s.value) => {
            return Err(invalid(
                "extensions.*.app_id",
                s,
                format!(
                    "extension {name:?}: app id {:?} must be 1..=128 characters of A-Z a-z 0-9 {{ }} . _ -",
                    s.value
                ),
            ));
        }
        Some(s) => s.value.clone(),
        None if !enabled => String::new(),
        None => {
            return Err(ConfigError::Invalid {
                key: "extensions.*.app_id",
                origin: any_origin(e),
                message: format!("extension {name:?} has no app_id"),
            });
        }
    };
    let group = match &e.group {
        Some(s) if !valid_group(&s.value) => {
            return Err(invalid(
                "extensions.*.group",
                s,
                format!(
                    "extension {name:?}: group {:?} must be 1..=64 characters of A-Z a-z 0-9 . _ + -",
                    s.value
                ),
            ));
        }
        Some(s) => s.value.clone(),
        None => DEFAULT_GROUP.to_owned(),
    };
    let install_dir = absolute(
        "extensions.*.install_dir",
        &e.install_dir,
        DEFAULT_INSTALL_DIR,
    )?;
    let restart_units = match &e.restart_units {
        None => Vec::new(),
        Some(s) => {
            if let Some(bad) = s.value.iter().find(|u| !valid_unit(u)) {
                return Err(invalid(
                    "extensions.*.restart_units",
                    s,
                    format!(
                        "extension {name:?}: {bad:?} is not a unit name (e.g. containerd.service)"
                    ),
                ));
            }
            s.value.clone()
        }
    };
    let health_command = match &e.health_command {
        None => None,
        Some(s) => Some(command(
            "extensions.*.health_command",
            s,
            &format!("extension {name:?}"),
        )?),
    };
    let pin_version = match &e.pin_version {
        Some(s) if !valid_version(&s.value) => {
            return Err(invalid(
                "extensions.*.pin_version",
                s,
                format!(
                    "extension {name:?}: {:?} must be 1..=64 characters of A-Z a-z 0-9 . _ + ~ -",
                    s.value
                ),
            ));
        }
        other => other.as_ref().map(|s| s.value.clone()),
    };
    Ok(ExtensionSettings {
        name: name.to_owned(),
        app_id,
        group,
        install_dir,
        restart_units,
        health_command,
        health_timeout: secs(
            "extensions.*.health_timeout_secs",
            &e.health_timeout_secs,
            60,
            1,
            3600,
        )?,
        restart_timeout: secs(
            "extensions.*.restart_timeout_secs",
            &e.restart_timeout_secs,
            120,
            1,
            3600,
        )?,
        pin_version,
        enabled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (ExtensionsFragment, Vec<String>) {
        #[derive(Deserialize)]
        struct Top {
            extensions: Option<ExtensionsFragment>,
        }
        let de = toml::de::Deserializer::parse(text).unwrap();
        let mut unknown = Vec::new();
        // `?` is serde_ignored's mark for the `Option` around the table.
        let top: Top =
            serde_ignored::deserialize(de, |p| unknown.push(p.to_string().replace("?.", "")))
                .unwrap();
        (top.extensions.unwrap_or_default(), unknown)
    }

    fn settings(files: &[&str]) -> Result<ExtensionsSettings, ConfigError> {
        let mut i = ExtensionsInputs::default();
        for (n, text) in files.iter().enumerate() {
            let (f, _) = parse(text);
            i.merge(f, Path::new(&format!("/etc/platte/agent.d/{n}.toml")));
        }
        ExtensionsSettings::from_inputs(&i)
    }

    #[test]
    fn defaults_and_merge_per_field() {
        let s = settings(&[
            r#"
[extensions.containerd]
app_id = "{5e8a1c7d-0000-4000-8000-000000000001}"
restart_units = ["containerd.service"]
health_command = ["/usr/bin/ctr", "version"]
"#,
            r#"
[extensions]
sysext_refresh_command = ["/usr/bin/systemd-sysext", "refresh", "--no-reload"]
[extensions.containerd]
group = "beta"
[extensions.docker]
enabled = false
"#,
        ])
        .unwrap();
        assert_eq!(
            s.sysext_refresh_command,
            ["/usr/bin/systemd-sysext", "refresh", "--no-reload"]
        );
        assert_eq!(s.image_dir, Path::new(DEFAULT_IMAGE_DIR));
        let c = &s.extensions[0];
        assert_eq!(c.name, "containerd");
        assert_eq!(c.group, "beta");
        assert_eq!(c.install_dir, Path::new(DEFAULT_INSTALL_DIR));
        assert_eq!(c.restart_units, ["containerd.service"]);
        assert_eq!(c.restart_timeout, Duration::from_secs(120));
        assert!(c.enabled);
        // A disabled extension needs no app id and is not enabled.
        assert_eq!(
            s.enabled().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["containerd"]
        );
        assert_eq!(
            ExtensionsSettings::default().sysext_refresh_command,
            DEFAULT_REFRESH_COMMAND
        );
    }

    #[test]
    fn unknown_keys_inside_tables_are_reported() {
        let (_, unknown) = parse("[extensions.containerd]\napp_id = \"x\"\nrestart_unit = []\n");
        assert_eq!(unknown, ["extensions.containerd.restart_unit"]);
    }

    #[test]
    fn errors_name_key_extension_and_file() {
        let e = settings(&["[extensions.containerd]\ngroup = \"x\"\n"]).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("extensions.*.app_id") && m.contains("containerd") && m.contains("0.toml"),
            "{m}"
        );

        let e = settings(&[
            "[extensions.containerd]\napp_id = \"a\"\nrestart_units = [\"bad unit\"]\n",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("restart_units") && e.contains("bad unit"), "{e}");

        let e = settings(&["[extensions.\"../x\"]\napp_id = \"a\"\n"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("extension name"), "{e}");

        let e =
            settings(&["[extensions.a]\napp_id = \"same\"\n[extensions.b]\napp_id = \"{SAME}\"\n"])
                .unwrap_err()
                .to_string();
        assert!(e.contains("same app id"), "{e}");

        let e = settings(&["[extensions]\nsysext_refresh_command = []\n"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sysext_refresh_command") && e.contains("empty"),
            "{e}"
        );

        let e = settings(&["[extensions.a]\napp_id = \"a\"\npin_version = \"../1\"\n"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pin_version"), "{e}");

        let e = settings(&["[extensions.a]\napp_id = \"a\"\ninstall_dir = \"rel\"\n"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn versions_usable_in_file_names() {
        assert!(valid_version("1.7.22-r1+b2"));
        for bad in ["", ".hidden", "a/b", "a b", &"9".repeat(65)] {
            assert!(!valid_version(bad), "{bad:?}");
        }
    }
}
