//! Drop-in discovery and parsing: which `*.toml` files apply, in which order, and what each says.
//!
//! Semantics follow systemd and Zincati: files from all directories are ordered by file name;
//! a file in a later directory replaces one of the same name in an earlier directory; a symlink
//! to `/dev/null` masks the name. Only `*.toml` files are read; anything else is reported.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::fragments::Fragment;
use super::{ConfigError, ConfigWarning, WarningKind};

/// Largest drop-in file read; anything bigger is an error (config files are small).
pub const MAX_DROPIN_BYTES: u64 = 256 * 1024;

/// One drop-in file that applies, in application order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropIn {
    /// File name (the ordering key).
    pub name: String,
    /// Full path of the winning file.
    pub path: PathBuf,
}

/// Lists the drop-ins that apply across `dirs` (lowest precedence first), in lexical name order.
///
/// Missing directories are skipped. Ignored entries are reported in `warnings`.
pub fn discover(
    dirs: &[PathBuf],
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Vec<DropIn>, ConfigError> {
    // name -> Some(path) when it applies, None when masked.
    let mut by_name: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    for dir in dirs {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ConfigError::ReadDir {
                    dir: dir.clone(),
                    source,
                });
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ConfigError::ReadDir {
                dir: dir.clone(),
                source,
            })?;
            names.push(entry.file_name());
        }
        names.sort();
        for os_name in names {
            let path = dir.join(&os_name);
            let Some(name) = os_name.to_str().map(str::to_owned) else {
                warnings.push(ConfigWarning::new(
                    &path,
                    WarningKind::IgnoredFile {
                        reason: "file name is not valid UTF-8".into(),
                    },
                ));
                continue;
            };
            if name.starts_with('.') {
                continue; // hidden files (editor swap files and the like)
            }
            if is_masked(&path) {
                by_name.insert(name, None);
                continue;
            }
            if !name.ends_with(".toml") {
                warnings.push(ConfigWarning::new(
                    &path,
                    WarningKind::IgnoredFile {
                        reason: "only *.toml files are read".into(),
                    },
                ));
                continue;
            }
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    by_name.insert(name, Some(path));
                }
                Ok(_) => warnings.push(ConfigWarning::new(
                    &path,
                    WarningKind::IgnoredFile {
                        reason: "not a regular file".into(),
                    },
                )),
                Err(e) => warnings.push(ConfigWarning::new(
                    &path,
                    WarningKind::IgnoredFile {
                        reason: format!("cannot be read: {e}"),
                    },
                )),
            }
        }
    }
    Ok(by_name
        .into_iter()
        .filter_map(|(name, path)| path.map(|path| DropIn { name, path }))
        .collect())
}

/// True when `path` is a symlink to `/dev/null` (a mask).
fn is_masked(path: &Path) -> bool {
    let is_link = fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    is_link && fs::read_link(path).is_ok_and(|t| t == Path::new("/dev/null"))
}

/// Reads and parses one drop-in; unknown keys are appended to `warnings`.
pub fn parse_file(path: &Path, warnings: &mut Vec<ConfigWarning>) -> Result<Fragment, ConfigError> {
    let meta = fs::metadata(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    if meta.len() > MAX_DROPIN_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            len: meta.len(),
            max: MAX_DROPIN_BYTES,
        });
    }
    let text = fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse_str(&text, path, warnings)
}

/// Parses drop-in text; `path` only names the source in warnings and errors.
pub fn parse_str(
    text: &str,
    path: &Path,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Fragment, ConfigError> {
    let parse_err = |source: toml::de::Error| ConfigError::Parse {
        path: path.to_owned(),
        message: source.to_string(),
    };
    let de = toml::de::Deserializer::parse(text).map_err(parse_err)?;
    let mut unknown = Vec::new();
    let fragment: Fragment =
        serde_ignored::deserialize(de, |p| unknown.push(dotted(&p))).map_err(parse_err)?;
    for key in unknown {
        warnings.push(ConfigWarning::new(path, WarningKind::UnknownKey { key }));
    }
    Ok(fragment)
}

/// Renders an ignored-key path as a dotted TOML key (`updates.servr`, `health.units[2]`).
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", dotted(parent)),
        Path::Map { parent, key } => {
            let p = dotted(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_warned_with_their_path() {
        let mut w = Vec::new();
        let f = parse_str(
            "[updates]\ngroup = \"beta\"\nservr = \"x\"\n[nope]\na = 1\n",
            Path::new("/x/10-a.toml"),
            &mut w,
        )
        .unwrap();
        assert_eq!(f.updates.unwrap().group.as_deref(), Some("beta"));
        let mut keys: Vec<String> = w
            .iter()
            .map(|w| match &w.kind {
                WarningKind::UnknownKey { key } => key.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        keys.sort();
        assert_eq!(keys, vec!["nope".to_string(), "updates.servr".to_string()]);
        assert!(w.iter().all(|w| w.file == Path::new("/x/10-a.toml")));
    }

    #[test]
    fn type_errors_name_the_file_and_line() {
        let mut w = Vec::new();
        let err = parse_str(
            "[check]\ninterval_secs = \"soon\"\n",
            Path::new("/etc/platte/agent.d/50-x.toml"),
            &mut w,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/platte/agent.d/50-x.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn syntax_errors_are_errors() {
        let mut w = Vec::new();
        assert!(parse_str("[updates\n", Path::new("a.toml"), &mut w).is_err());
    }
}
