//! Server configuration in three stages: [`ServeArgs`] (command line and environment, via clap),
//! [`FileConfig`] (what the `--config` TOML file may say, all optional) and [`Settings`] (merged
//! and validated; what the server reads). Precedence: command line > environment > file >
//! defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8370";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./platte-data";
/// Default interval between batched check-in writes.
pub const DEFAULT_FLUSH_MS: u64 = 1000;
/// Default maximum size of an uploaded package (8 GiB).
pub const DEFAULT_MAX_PACKAGE: u64 = 8 << 30;
/// Smallest `PollInterval` the server may be configured to send (the agent honours no less).
pub const MIN_POLL_INTERVAL_SECS: u32 = 60;
/// Largest `PollInterval` the server may be configured to send (one day).
pub const MAX_POLL_INTERVAL_SECS: u32 = 86_400;
/// Most download mirrors that may be configured.
pub const MAX_DOWNLOAD_MIRRORS: usize = 8;

/// `update-server serve` options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as the long options, with `_` for `-`).
    #[arg(long, env = "UPDATE_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8370].
    #[arg(long, env = "UPDATE_SERVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory (database, packages, tokens) [default: ./platte-data].
    #[arg(long, env = "UPDATE_SERVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Base URL clients reach this server at, for download URLs [default: http://LISTEN].
    #[arg(long, env = "UPDATE_SERVER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Admin bearer token [default: generated into DATA_DIR/admin-token].
    #[arg(long, env = "UPDATE_SERVER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Read-only bearer token [default: generated into DATA_DIR/read-only-token].
    #[arg(long, env = "UPDATE_SERVER_READ_ONLY_TOKEN", hide_env_values = true)]
    pub read_only_token: Option<String>,
    /// Directory of trusted publisher public keys (`*.pub`); publishing is refused without it.
    #[arg(long, env = "UPDATE_SERVER_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,
    /// Interval between batched check-in writes, in milliseconds [default: 1000].
    #[arg(long, env = "UPDATE_SERVER_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Header carrying the client IP from a trusted reverse proxy (e.g. X-Forwarded-For).
    #[arg(long, env = "UPDATE_SERVER_PROXY_HEADER")]
    pub proxy_header: Option<String>,
    /// Largest accepted package upload, in bytes [default: 8 GiB].
    #[arg(long, env = "UPDATE_SERVER_MAX_PACKAGE_SIZE")]
    pub max_package_size: Option<u64>,
    /// Omaha answer options.
    #[command(flatten)]
    pub omaha: OmahaArgs,
    /// FleetLock options.
    #[command(flatten)]
    pub fleetlock: crate::fleetlock::config::FleetLockArgs,
    /// Retention options.
    #[command(flatten)]
    pub retention: crate::retention::RetentionArgs,
}

/// Omaha answer options of `update-server serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OmahaArgs {
    /// `PollInterval` (seconds, 60..=86400) sent on every update-check answer [default: none].
    #[arg(long, env = "UPDATE_SERVER_OMAHA_POLL_INTERVAL_SECS")]
    pub omaha_poll_interval_secs: Option<u32>,
    /// Base URL of a download mirror serving `/packages/<sha256>/<name>` like this server;
    /// listed before the server's own URL for hosted packages (repeatable; env: comma-separated).
    #[arg(
        long = "omaha-download-mirror",
        env = "UPDATE_SERVER_OMAHA_DOWNLOAD_MIRRORS",
        value_delimiter = ','
    )]
    pub omaha_download_mirrors: Option<Vec<String>>,
}

/// The `[omaha]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OmahaFile {
    /// See [`OmahaArgs::omaha_poll_interval_secs`].
    pub poll_interval_secs: Option<u32>,
    /// See [`OmahaArgs::omaha_download_mirrors`].
    pub download_mirrors: Option<Vec<String>>,
}

/// Validated settings of the Omaha answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OmahaSettings {
    /// `PollInterval` in seconds on every update-check answer (`None`: not sent; clients keep
    /// their own schedule).
    pub poll_interval_secs: Option<u32>,
    /// Mirror base URLs (no trailing slash), in order, offered before the server's own URL for
    /// hosted packages.
    pub download_mirrors: Vec<String>,
}

impl OmahaSettings {
    /// Merges arguments over the file, and validates.
    pub fn resolve(args: &OmahaArgs, file: Option<&OmahaFile>) -> Result<Self, ConfigError> {
        let poll = args
            .omaha_poll_interval_secs
            .or_else(|| file.and_then(|f| f.poll_interval_secs));
        if let Some(p) = poll
            && !(MIN_POLL_INTERVAL_SECS..=MAX_POLL_INTERVAL_SECS).contains(&p)
        {
            return Err(ConfigError::Invalid {
                key: "omaha.poll_interval_secs",
                reason: format!(
                    "{p} is outside {MIN_POLL_INTERVAL_SECS}..={MAX_POLL_INTERVAL_SECS} seconds"
                ),
            });
        }
        let mirrors = args
            .omaha_download_mirrors
            .clone()
            .or_else(|| file.and_then(|f| f.download_mirrors.clone()))
            .unwrap_or_default();
        if mirrors.len() > MAX_DOWNLOAD_MIRRORS {
            return Err(ConfigError::Invalid {
                key: "omaha.download_mirrors",
                reason: format!(
                    "{} mirrors given, at most {MAX_DOWNLOAD_MIRRORS} are allowed",
                    mirrors.len()
                ),
            });
        }
        let mut download_mirrors = Vec::with_capacity(mirrors.len());
        for m in mirrors {
            let m = m.trim();
            let ok = (m.starts_with("http://") || m.starts_with("https://"))
                && m.len() <= 2000
                && !m.contains(['?', '#'])
                && m.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "omaha.download_mirrors",
                    reason: format!(
                        "{m:?} must be an http(s) base URL without spaces, query or fragment"
                    ),
                });
            }
            download_mirrors.push(m.trim_end_matches('/').to_owned());
        }
        Ok(Self {
            poll_interval_secs: poll,
            download_mirrors,
        })
    }
}

/// What a `--config` TOML file may contain.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`ServeArgs::listen`].
    pub listen: Option<SocketAddr>,
    /// See [`ServeArgs::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`ServeArgs::public_url`].
    pub public_url: Option<String>,
    /// See [`ServeArgs::admin_token`].
    pub admin_token: Option<String>,
    /// See [`ServeArgs::read_only_token`].
    pub read_only_token: Option<String>,
    /// See [`ServeArgs::trusted_keys`].
    pub trusted_keys: Option<PathBuf>,
    /// See [`ServeArgs::flush_interval_ms`].
    pub flush_interval_ms: Option<u64>,
    /// See [`ServeArgs::proxy_header`].
    pub proxy_header: Option<String>,
    /// See [`ServeArgs::max_package_size`].
    pub max_package_size: Option<u64>,
    /// The `[omaha]` table.
    pub omaha: Option<OmahaFile>,
    /// The `[fleetlock]` table.
    pub fleetlock: Option<crate::fleetlock::config::FleetLockFile>,
    /// The `[retention]` table.
    pub retention: Option<crate::retention::RetentionFile>,
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is not acceptable.
    #[error("invalid value for {key}: {reason}")]
    Invalid {
        /// Option name.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Public base URL without trailing slash (`None`: derived from the bound address).
    pub public_url: Option<String>,
    /// Explicit admin token.
    pub admin_token: Option<String>,
    /// Explicit read-only token.
    pub read_only_token: Option<String>,
    /// Trusted publisher keys directory.
    pub trusted_keys: Option<PathBuf>,
    /// Batched write interval.
    pub flush_interval: Duration,
    /// Trusted proxy header (lower case).
    pub proxy_header: Option<String>,
    /// Largest upload.
    pub max_package_size: u64,
    /// Omaha answer settings (`PollInterval`, download mirrors).
    pub omaha: OmahaSettings,
    /// FleetLock server settings.
    pub fleetlock: crate::fleetlock::FleetLockSettings,
    /// Retention (pruning of old rows) settings.
    pub retention: crate::retention::RetentionSettings,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

impl Settings {
    /// Merges arguments (already holding CLI > env) over the file over defaults, and validates.
    pub fn resolve(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let listen = match args.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN.parse().map_err(|_| ConfigError::Invalid {
                key: "listen",
                reason: "bad default".into(),
            })?,
        };
        let public_url = args.public_url.clone().or_else(|| file.public_url.clone());
        if let Some(u) = &public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "public_url",
                reason: format!("{u:?} must start with http:// or https://"),
            });
        }
        let non_empty = |key: &'static str, v: Option<String>| match v {
            Some(t) if t.trim().len() < 16 => Err(ConfigError::Invalid {
                key,
                reason: "a token must have at least 16 characters".into(),
            }),
            other => Ok(other),
        };
        let flush_ms = args
            .flush_interval_ms
            .or(file.flush_interval_ms)
            .unwrap_or(DEFAULT_FLUSH_MS);
        if flush_ms == 0 || flush_ms > 60_000 {
            return Err(ConfigError::Invalid {
                key: "flush_interval_ms",
                reason: format!("{flush_ms} is outside 1..=60000"),
            });
        }
        Ok(Self {
            listen,
            data_dir: args
                .data_dir
                .clone()
                .or_else(|| file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            admin_token: non_empty(
                "admin_token",
                args.admin_token
                    .clone()
                    .or_else(|| file.admin_token.clone()),
            )?,
            read_only_token: non_empty(
                "read_only_token",
                args.read_only_token
                    .clone()
                    .or_else(|| file.read_only_token.clone()),
            )?,
            trusted_keys: args
                .trusted_keys
                .clone()
                .or_else(|| file.trusted_keys.clone()),
            flush_interval: Duration::from_millis(flush_ms),
            proxy_header: args
                .proxy_header
                .clone()
                .or_else(|| file.proxy_header.clone())
                .map(|h| h.to_ascii_lowercase()),
            max_package_size: args
                .max_package_size
                .or(file.max_package_size)
                .unwrap_or(DEFAULT_MAX_PACKAGE),
            omaha: OmahaSettings::resolve(&args.omaha, file.omaha.as_ref())?,
            fleetlock: crate::fleetlock::FleetLockSettings::resolve(
                &args.fleetlock,
                file.fleetlock.as_ref(),
            )?,
            retention: crate::retention::RetentionSettings::resolve(
                &args.retention,
                file.retention.as_ref(),
            )?,
        })
    }

    /// Reads `--config` if given, then resolves.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        Self::resolve(args, &file)
    }

    /// Defaults with a given data directory and an ephemeral port (for tests and benches); the
    /// background pruner is off (tests prune explicitly, with their own clock).
    pub fn for_tests(data_dir: &Path) -> Self {
        let mut s = Self::resolve(&ServeArgs::default(), &FileConfig::default())
            .unwrap_or_else(|_| unreachable_defaults());
        s.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        s.data_dir = data_dir.to_owned();
        s.retention.interval = None;
        s
    }
}

fn unreachable_defaults() -> Settings {
    Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 8370)),
        data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        public_url: None,
        admin_token: None,
        read_only_token: None,
        trusted_keys: None,
        flush_interval: Duration::from_millis(DEFAULT_FLUSH_MS),
        proxy_header: None,
        max_package_size: DEFAULT_MAX_PACKAGE,
        omaha: OmahaSettings::default(),
        fleetlock: crate::fleetlock::FleetLockSettings::default(),
        retention: crate::retention::RetentionSettings::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let s = Settings::resolve(&ServeArgs::default(), &FileConfig::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(s.flush_interval, Duration::from_secs(1));
    }

    #[test]
    fn args_beat_file_beats_defaults() {
        let file: FileConfig = toml::from_str(
            "listen = \"0.0.0.0:9000\"\ndata_dir = \"/var/lib/platte\"\npublic_url = \"https://u.example/\"",
        )
        .unwrap();
        let args = ServeArgs {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, &file).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:1");
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/platte"));
        assert_eq!(s.public_url.as_deref(), Some("https://u.example"));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
        let args = ServeArgs {
            admin_token: Some("short".into()),
            ..Default::default()
        };
        let err = Settings::resolve(&args, &FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("admin_token"), "{err}");
        let args = ServeArgs {
            public_url: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&args, &FileConfig::default()).is_err());
    }

    #[test]
    fn omaha_table_poll_interval_and_mirrors() {
        let s = Settings::resolve(&ServeArgs::default(), &FileConfig::default()).unwrap();
        assert_eq!(s.omaha, OmahaSettings::default(), "nothing sent by default");
        let file: FileConfig = toml::from_str(
            "[omaha]\npoll_interval_secs = 2700\ndownload_mirrors = [\"https://cdn.example/platte/\", \"http://m2.example\"]",
        )
        .unwrap();
        let s = Settings::resolve(&ServeArgs::default(), &file).unwrap();
        assert_eq!(s.omaha.poll_interval_secs, Some(2700));
        assert_eq!(
            s.omaha.download_mirrors,
            ["https://cdn.example/platte", "http://m2.example"]
        );
        // The command line wins over the file.
        let args = ServeArgs {
            omaha: OmahaArgs {
                omaha_poll_interval_secs: Some(600),
                omaha_download_mirrors: Some(vec![]),
            },
            ..Default::default()
        };
        let s = Settings::resolve(&args, &file).unwrap();
        assert_eq!(s.omaha.poll_interval_secs, Some(600));
        assert!(s.omaha.download_mirrors.is_empty());
    }

    #[test]
    fn retention_table_is_read_and_checked() {
        let file: FileConfig =
            toml::from_str("[retention]\nevents_days = 30\nforget_instances_after_days = 7")
                .unwrap();
        let s = Settings::resolve(&ServeArgs::default(), &file).unwrap();
        assert_eq!(s.retention.events_days, Some(30));
        assert_eq!(s.retention.forget_instances_after_days, Some(7));
        assert_eq!(
            s.retention.activity_days,
            Some(365),
            "defaults fill the rest"
        );
        let file: FileConfig = toml::from_str("[retention]\nbatch_size = 1").unwrap();
        let err = Settings::resolve(&ServeArgs::default(), &file).unwrap_err();
        assert!(err.to_string().contains("retention.batch_size"), "{err}");
        assert!(toml::from_str::<FileConfig>("[retention]\nkeep = 1").is_err());
        assert_eq!(Settings::for_tests(Path::new("d")).retention.interval, None);
    }

    #[test]
    fn omaha_values_out_of_range_are_named() {
        for (text, key) in [
            (
                "[omaha]\npoll_interval_secs = 59",
                "omaha.poll_interval_secs",
            ),
            (
                "[omaha]\npoll_interval_secs = 86401",
                "omaha.poll_interval_secs",
            ),
            (
                "[omaha]\ndownload_mirrors = [\"ftp://x\"]",
                "omaha.download_mirrors",
            ),
            (
                "[omaha]\ndownload_mirrors = [\"https://x/?a=1\"]",
                "omaha.download_mirrors",
            ),
        ] {
            let file: FileConfig = toml::from_str(text).unwrap();
            let err = Settings::resolve(&ServeArgs::default(), &file).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        assert!(toml::from_str::<FileConfig>("[omaha]\npoll = 60").is_err());
    }
}
