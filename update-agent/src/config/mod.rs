//! Agent configuration in three stages: fragments (one TOML file) → inputs (merged) → settings
//! (validated with the shared validators in `validate`). `[extensions]` follows the same stages
//! in [`extensions`], with the same merge and validators.
//!
//! Precedence, highest first: drop-ins in `/run/platte/agent.d/`, `/etc/platte/agent.d/`,
//! `/usr/lib/platte/agent.d/` (by file name, lexical order, later name wins per key; a same-named
//! file in a later directory replaces the earlier file; a symlink to `/dev/null` masks it), then
//! legacy `/etc/flatcar/update.conf`, then `/usr/share/flatcar/update.conf`, then defaults.

pub mod dropins;
pub mod extensions;
pub mod fragments;
pub mod inputs;
pub mod legacy;
pub mod settings;
pub(crate) mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use inputs::{Inputs, Origin};
pub use settings::{
    BootBackendKind, BootSettings, CheckSettings, DbusSettings, HealthCheck, HealthSettings,
    HttpSettings, IdentitySettings, InstallSettings, PLATTE_APP_ID, RebootSettings, RebootStrategy,
    Settings, UpdateSettings,
};

/// Something in the configuration that was not applied, reported but not fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file concerned.
    pub file: PathBuf,
    /// What was wrong.
    pub kind: WarningKind,
}

/// Kinds of configuration warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarningKind {
    /// A key the agent does not know (dotted path, e.g. `updates.servr`).
    UnknownKey {
        /// The key's dotted path.
        key: String,
    },
    /// A file in a drop-in directory that is not read.
    IgnoredFile {
        /// Why it is not read.
        reason: String,
    },
}

impl ConfigWarning {
    /// A warning about `file`.
    pub fn new(file: &Path, kind: WarningKind) -> Self {
        Self {
            file: file.to_owned(),
            kind,
        }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            WarningKind::UnknownKey { key } => {
                write!(
                    f,
                    "unknown key `{key}` in {} (ignored)",
                    self.file.display()
                )
            }
            WarningKind::IgnoredFile { reason } => {
                write!(f, "ignored {}: {reason}", self.file.display())
            }
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A drop-in directory exists but cannot be listed.
    #[error("cannot list config directory {}: {source}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A config file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A config file is larger than the agent reads.
    #[error("config file {} is {len} bytes, more than the {max} allowed", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A drop-in is not valid TOML or has a value of the wrong type.
    #[error("invalid config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid value for `{key}` in {origin}: {message}")]
    Invalid {
        /// The key's dotted path.
        key: &'static str,
        /// The file that set it.
        origin: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Validated settings plus what was noticed on the way.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The settings.
    pub settings: Settings,
    /// Warnings (unknown keys, ignored files), also logged.
    pub warnings: Vec<ConfigWarning>,
    /// The drop-in files applied, in order.
    pub dropins: Vec<PathBuf>,
}

/// Loads configuration from `config_dirs` (lowest precedence first) over the legacy
/// `legacy_files` (highest precedence first).
pub fn load(
    config_dirs: &[PathBuf],
    legacy_files: &[PathBuf],
) -> Result<LoadedConfig, ConfigError> {
    let mut warnings = Vec::new();
    let legacy = legacy::load(legacy_files)?;
    let mut inputs = Inputs::from_legacy(&legacy);
    let files = dropins::discover(config_dirs, &mut warnings)?;
    for d in &files {
        let fragment = dropins::parse_file(&d.path, &mut warnings)?;
        inputs.merge(fragment, &d.path);
    }
    for w in &warnings {
        tracing::warn!(file = %w.file.display(), "{w}");
    }
    let settings = Settings::from_inputs(&inputs)?;
    Ok(LoadedConfig {
        settings,
        warnings,
        dropins: files.into_iter().map(|d| d.path).collect(),
    })
}
