//! Legacy Flatcar `update.conf` (`KEY=VALUE` lines): the `GROUP`, `SERVER` and `MACHINE_ALIAS` keys.
//!
//! Like update_engine, files are searched in order (`/etc/flatcar/update.conf`, then
//! `/usr/share/flatcar/update.conf`) and the first file that sets a key wins for that key.
//! Other keys (e.g. `REBOOT_STRATEGY`, read by locksmith) are ignored without a warning.

use std::fs;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// Largest legacy file read.
const MAX_LEGACY_BYTES: u64 = 64 * 1024;

/// A value and the legacy file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyValue {
    /// The value, with surrounding quotes removed.
    pub value: String,
    /// The file that set it.
    pub file: PathBuf,
}

/// The legacy keys Platte honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacyConfig {
    /// `GROUP`: the group (Omaha track).
    pub group: Option<LegacyValue>,
    /// `SERVER`: the Omaha URL, or `disabled`.
    pub server: Option<LegacyValue>,
    /// `MACHINE_ALIAS`: the machine alias.
    pub machine_alias: Option<LegacyValue>,
}

/// Reads `files` (highest precedence first); missing files are skipped.
pub fn load(files: &[PathBuf]) -> Result<LegacyConfig, ConfigError> {
    let mut out = LegacyConfig::default();
    for file in files {
        let meta = match fs::metadata(file) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ConfigError::ReadFile {
                    path: file.clone(),
                    source,
                });
            }
        };
        if meta.len() > MAX_LEGACY_BYTES {
            return Err(ConfigError::TooLarge {
                path: file.clone(),
                len: meta.len(),
                max: MAX_LEGACY_BYTES,
            });
        }
        let text = fs::read_to_string(file).map_err(|source| ConfigError::ReadFile {
            path: file.clone(),
            source,
        })?;
        apply_text(&mut out, &text, file);
    }
    Ok(out)
}

/// Parses one file's text as [`load`] reads it; `file` only names where each value came from.
/// The entry point for callers that already hold the bytes (the fuzz targets in `fuzz/`).
pub fn parse_text(text: &str, file: &Path) -> LegacyConfig {
    let mut out = LegacyConfig::default();
    apply_text(&mut out, text, file);
    out
}

/// Applies one file's text: keys not yet set take this file's value.
fn apply_text(out: &mut LegacyConfig, text: &str, file: &Path) {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let slot = match key.trim() {
            "GROUP" => &mut out.group,
            "SERVER" => &mut out.server,
            "MACHINE_ALIAS" => &mut out.machine_alias,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(LegacyValue {
                value: unquote(value.trim()).to_owned(),
                file: file.to_owned(),
            });
        }
    }
}

/// Strips one pair of matching single or double quotes.
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_comments_and_quotes() {
        let mut c = LegacyConfig::default();
        apply_text(
            &mut c,
            "# comment\nGROUP=beta\nSERVER=\"https://u.example/v1/update/\"\nREBOOT_STRATEGY=off\nMACHINE_ALIAS='web 1'\ngarbage\n",
            Path::new("/etc/flatcar/update.conf"),
        );
        assert_eq!(c.group.unwrap().value, "beta");
        assert_eq!(c.server.unwrap().value, "https://u.example/v1/update/");
        assert_eq!(c.machine_alias.unwrap().value, "web 1");
    }

    #[test]
    fn first_file_wins_per_key() {
        let mut c = LegacyConfig::default();
        apply_text(&mut c, "GROUP=alpha\n", Path::new("/etc/a"));
        apply_text(
            &mut c,
            "GROUP=stable\nSERVER=disabled\n",
            Path::new("/usr/b"),
        );
        let g = c.group.unwrap();
        assert_eq!(
            (g.value.as_str(), g.file.as_path()),
            ("alpha", Path::new("/etc/a"))
        );
        assert_eq!(c.server.unwrap().file, Path::new("/usr/b"));
    }
}
