//! Who this host is, as reported to the update server: machine id, boot id, app, group, version.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Settings;
use crate::paths::HostPaths;

/// Largest identity file read (they are one line).
const MAX_ID_FILE_BYTES: u64 = 64 * 1024;

/// The host's identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// `/etc/machine-id`: 32 lowercase hex digits.
    pub machine_id: String,
    /// The kernel's boot id for this boot (a lowercase UUID); changes on every boot.
    pub boot_id: String,
    /// Omaha application id.
    pub app_id: String,
    /// Group (Omaha track).
    pub group: String,
    /// Running OS version: `identity.os_version` from config, else os-release `VERSION_ID`.
    pub os_version: String,
    /// Board (`identity.board`, else derived from the architecture, e.g. `amd64-usr`).
    pub board: String,
    /// CPU architecture as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// Optional machine alias.
    pub alias: Option<String>,
}

/// Why the identity could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file's content is not what it should be.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No OS version in config or in any os-release file.
    #[error("no OS version: none of {files} has VERSION_ID and identity.os_version is not set")]
    NoVersion {
        /// The files searched.
        files: String,
    },
}

fn read_small(path: &Path) -> Result<String, IdentityError> {
    let err = |source| IdentityError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(err)?;
    if meta.len() > MAX_ID_FILE_BYTES {
        return Err(IdentityError::Invalid {
            path: path.to_owned(),
            message: format!("{} bytes is too large", meta.len()),
        });
    }
    fs::read_to_string(path).map_err(err)
}

/// Reads and validates `/etc/machine-id` (32 hex digits, lowercased).
pub fn read_machine_id(path: &Path) -> Result<String, IdentityError> {
    let v = read_small(path)?.trim().to_ascii_lowercase();
    if v.len() != 32 || !v.bytes().all(|b| b.is_ascii_hexdigit()) || v.bytes().all(|b| b == b'0') {
        return Err(IdentityError::Invalid {
            path: path.to_owned(),
            message: "not a machine id (32 hexadecimal digits, not all zero)".into(),
        });
    }
    Ok(v)
}

/// Reads and validates the boot id (a UUID with dashes, lowercased).
pub fn read_boot_id(path: &Path) -> Result<String, IdentityError> {
    let v = read_small(path)?.trim().to_ascii_lowercase();
    let shape_ok = v.len() == 36
        && v.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if !shape_ok {
        return Err(IdentityError::Invalid {
            path: path.to_owned(),
            message: "not a boot id (a UUID such as 0b6d5e8a-...)".into(),
        });
    }
    Ok(v)
}

/// The value of `key` in os-release text (quotes removed), if present.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        (!v.is_empty()).then(|| v.to_owned())
    })
}

/// Flatcar-style board name for a Rust architecture name.
pub fn board_for_arch(arch: &str) -> String {
    match arch {
        "x86_64" => "amd64-usr".into(),
        "aarch64" => "arm64-usr".into(),
        other => format!("{other}-usr"),
    }
}

impl Identity {
    /// Builds the identity from the host files in `paths` and the settings.
    pub fn load(paths: &HostPaths, settings: &Settings) -> Result<Self, IdentityError> {
        let os_version = match &settings.identity.os_version {
            Some(v) => v.clone(),
            None => {
                let mut found = None;
                for p in &paths.os_release {
                    match read_small(p) {
                        Ok(text) => {
                            found = os_release_value(&text, "VERSION_ID");
                            break;
                        }
                        Err(IdentityError::Read { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                found.ok_or_else(|| IdentityError::NoVersion {
                    files: paths
                        .os_release
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?
            }
        };
        let arch = std::env::consts::ARCH.to_owned();
        Ok(Self {
            machine_id: read_machine_id(&paths.machine_id)?,
            boot_id: read_boot_id(&paths.boot_id)?,
            app_id: settings.updates.app_id.clone(),
            group: settings.updates.group.clone(),
            os_version,
            board: settings
                .identity
                .board
                .clone()
                .unwrap_or_else(|| board_for_arch(&arch)),
            arch,
            alias: settings.identity.alias.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Inputs, Settings};

    fn write(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }

    fn host() -> (tempfile::TempDir, HostPaths) {
        let d = tempfile::tempdir().unwrap();
        let paths = HostPaths::under(d.path());
        write(&paths.machine_id, "0123456789ABCDEF0123456789abcdef\n");
        write(&paths.boot_id, "0b6d5e8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b\n");
        write(
            &paths.os_release[1],
            "NAME=\"Flatcar Container Linux by Kinvolk\"\nID=flatcar\nVERSION_ID=\"4081.2.0\"\n",
        );
        (d, paths)
    }

    #[test]
    fn loads_from_host_files() {
        let (_d, paths) = host();
        let settings = Settings::from_inputs(&Inputs::default()).unwrap();
        let id = Identity::load(&paths, &settings).unwrap();
        assert_eq!(id.machine_id, "0123456789abcdef0123456789abcdef");
        assert_eq!(id.boot_id, "0b6d5e8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(id.os_version, "4081.2.0");
        assert_eq!(id.group, "stable");
        assert_eq!(id.app_id, crate::config::PLATTE_APP_ID);
        assert_eq!(id.board, board_for_arch(std::env::consts::ARCH));
    }

    #[test]
    fn etc_os_release_wins_and_config_overrides() {
        let (_d, paths) = host();
        write(&paths.os_release[0], "VERSION_ID=9.9.9\n");
        let mut settings = Settings::from_inputs(&Inputs::default()).unwrap();
        assert_eq!(
            Identity::load(&paths, &settings).unwrap().os_version,
            "9.9.9"
        );
        settings.identity.os_version = Some("1.2.3".into());
        assert_eq!(
            Identity::load(&paths, &settings).unwrap().os_version,
            "1.2.3"
        );
    }

    #[test]
    fn rejects_bad_ids_and_missing_version() {
        let (_d, paths) = host();
        let settings = Settings::from_inputs(&Inputs::default()).unwrap();
        write(&paths.machine_id, "not-an-id\n");
        let e = Identity::load(&paths, &settings).unwrap_err().to_string();
        assert!(e.contains("machine-id"), "{e}");
        write(&paths.machine_id, "0123456789abcdef0123456789abcdef\n");
        write(&paths.boot_id, "garbage\n");
        assert!(Identity::load(&paths, &settings).is_err());
        write(&paths.boot_id, "0b6d5e8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b\n");
        write(&paths.os_release[1], "ID=flatcar\n");
        let e = Identity::load(&paths, &settings).unwrap_err();
        assert!(matches!(e, IdentityError::NoVersion { .. }), "{e}");
    }
}
