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
/// Default number of event rows one machine may store per hour.
pub const DEFAULT_EVENT_ROWS_PER_MACHINE_HOUR: u32 = 120;
/// Default number of events applied per Omaha request (all apps together): two for each of the
/// 32 apps a request may carry (the Platte agent sends the OS and its runtime extensions in one
/// request, each with at most one event).
pub const DEFAULT_EVENTS_PER_REQUEST: usize = 64;

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
    /// Database: `postgres://USER@HOST/DB` for PostgreSQL (several replicas may share it), or
    /// `sqlite:PATH` [default: SQLite in DATA_DIR/platte.sqlite]. A password in the URL is
    /// visible to local users on the command line: prefer the environment or the config file.
    #[arg(long, env = "UPDATE_SERVER_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Most connections this process opens to PostgreSQL (2..=1000) [default: 16]. Every replica
    /// opens up to this many, plus one for catalogue notifications and one while it prunes:
    /// keep replicas × (this + 2) under the server's `max_connections`.
    #[arg(long, env = "UPDATE_SERVER_DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<u32>,
    /// Base URL clients reach this server at, for download URLs [default: http://LISTEN].
    #[arg(long, env = "UPDATE_SERVER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Admin bearer token; on the command line it is visible to other local users (in
    /// /proc/PID/cmdline): prefer --admin-token-file [default: generated into
    /// DATA_DIR/admin-token].
    #[arg(long, env = "UPDATE_SERVER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin bearer token (mode 0600; surrounding whitespace ignored).
    #[arg(
        long,
        env = "UPDATE_SERVER_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// Read-only bearer token; visible to other local users on the command line: prefer
    /// --read-only-token-file [default: generated into DATA_DIR/read-only-token].
    #[arg(long, env = "UPDATE_SERVER_READ_ONLY_TOKEN", hide_env_values = true)]
    pub read_only_token: Option<String>,
    /// File holding the read-only bearer token (mode 0600; surrounding whitespace ignored).
    #[arg(
        long,
        env = "UPDATE_SERVER_READ_ONLY_TOKEN_FILE",
        conflicts_with = "read_only_token"
    )]
    pub read_only_token_file: Option<PathBuf>,
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
    /// Machine-credential options.
    #[command(flatten)]
    pub machine_credentials: crate::credential::CredentialArgs,
    /// HTTP connection options (timeouts, connection cap).
    #[command(flatten)]
    pub http: crate::http::connections::HttpArgs,
    /// Options bounding grants to machines new to a rollout.
    #[command(flatten)]
    pub new_machines: crate::rollout::newcomers::NewMachineArgs,
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
    /// Event rows one machine may store per hour; later events still update its status and
    /// rollout accounting but are not stored [default: 120].
    #[arg(long, env = "UPDATE_SERVER_OMAHA_EVENT_ROWS_PER_MACHINE_HOUR")]
    pub omaha_event_rows_per_machine_hour: Option<u32>,
    /// Events applied per Omaha request, all apps together (1..=2048); later ones are
    /// acknowledged and ignored [default: 64].
    #[arg(long, env = "UPDATE_SERVER_OMAHA_EVENTS_PER_REQUEST")]
    pub omaha_events_per_request: Option<usize>,
}

/// The `[omaha]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OmahaFile {
    /// See [`OmahaArgs::omaha_poll_interval_secs`].
    pub poll_interval_secs: Option<u32>,
    /// See [`OmahaArgs::omaha_download_mirrors`].
    pub download_mirrors: Option<Vec<String>>,
    /// See [`OmahaArgs::omaha_event_rows_per_machine_hour`].
    pub event_rows_per_machine_hour: Option<u32>,
    /// See [`OmahaArgs::omaha_events_per_request`].
    pub events_per_request: Option<usize>,
}

/// Validated settings of the Omaha endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmahaSettings {
    /// `PollInterval` in seconds on every update-check answer (`None`: not sent; clients keep
    /// their own schedule).
    pub poll_interval_secs: Option<u32>,
    /// Mirror base URLs (no trailing slash), in order, offered before the server's own URL for
    /// hosted packages.
    pub download_mirrors: Vec<String>,
    /// Event rows one machine may store per hour.
    pub event_rows_per_machine_hour: u32,
    /// Events applied per request (all apps together); later ones are acknowledged, ignored.
    pub events_per_request: usize,
}

impl Default for OmahaSettings {
    fn default() -> Self {
        Self {
            poll_interval_secs: None,
            download_mirrors: Vec::new(),
            event_rows_per_machine_hour: DEFAULT_EVENT_ROWS_PER_MACHINE_HOUR,
            events_per_request: DEFAULT_EVENTS_PER_REQUEST,
        }
    }
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
        let events_per_request = args
            .omaha_events_per_request
            .or_else(|| file.and_then(|f| f.events_per_request))
            .unwrap_or(DEFAULT_EVENTS_PER_REQUEST);
        let max = omaha::Limits::REQUEST.max_events_per_app * omaha::Limits::REQUEST.max_apps;
        if !(1..=max).contains(&events_per_request) {
            return Err(ConfigError::Invalid {
                key: "omaha.events_per_request",
                reason: format!("{events_per_request} is outside 1..={max}"),
            });
        }
        Ok(Self {
            poll_interval_secs: poll,
            download_mirrors,
            event_rows_per_machine_hour: args
                .omaha_event_rows_per_machine_hour
                .or_else(|| file.and_then(|f| f.event_rows_per_machine_hour))
                .unwrap_or(DEFAULT_EVENT_ROWS_PER_MACHINE_HOUR),
            events_per_request,
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
    /// See [`ServeArgs::database`].
    pub database: Option<String>,
    /// See [`ServeArgs::database_max_connections`].
    pub database_max_connections: Option<u32>,
    /// See [`ServeArgs::public_url`].
    pub public_url: Option<String>,
    /// See [`ServeArgs::admin_token`].
    pub admin_token: Option<String>,
    /// See [`ServeArgs::read_only_token`].
    pub read_only_token: Option<String>,
    /// See [`ServeArgs::admin_token_file`].
    pub admin_token_file: Option<PathBuf>,
    /// See [`ServeArgs::read_only_token_file`].
    pub read_only_token_file: Option<PathBuf>,
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
    /// The `[machine_credentials]` table.
    pub machine_credentials: Option<crate::credential::CredentialFile>,
    /// The `[http]` table.
    pub http: Option<crate::http::connections::HttpFile>,
    /// The `[new_machines]` table.
    pub new_machines: Option<crate::rollout::newcomers::NewMachineFile>,
    /// The `[sync]` table: following an upstream Omaha server.
    pub sync: Option<crate::sync::SyncFile>,
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
    /// The database holding the server's state.
    pub database: crate::store::Database,
    /// Most connections to PostgreSQL.
    pub database_max_connections: u32,
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
    /// Machine-credential settings (trust on first use, allowed clock skew).
    pub machine_credentials: crate::credential::CredentialSettings,
    /// HTTP connection timeouts and cap.
    pub http: crate::http::connections::HttpSettings,
    /// Grants to machines new to a rollout, per source network.
    pub new_machines: crate::rollout::newcomers::NewMachineSettings,
    /// Following an upstream Omaha server (`None`: not configured).
    pub sync: Option<crate::sync::SyncSettings>,
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
        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database = crate::store::Database::parse(
            args.database.as_deref().or(file.database.as_deref()),
            &data_dir,
        )
        .map_err(|reason| ConfigError::Invalid {
            key: "database",
            reason,
        })?;
        let database_max_connections = args
            .database_max_connections
            .or(file.database_max_connections)
            .unwrap_or(crate::store::postgres::DEFAULT_POOL_SIZE);
        if !(2..=1000).contains(&database_max_connections) {
            return Err(ConfigError::Invalid {
                key: "database_max_connections",
                reason: format!("{database_max_connections} is outside 2..=1000"),
            });
        }
        Ok(Self {
            listen,
            data_dir,
            database,
            database_max_connections,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            admin_token: non_empty(
                "admin_token",
                token_of(
                    ("admin_token", "admin_token_file"),
                    (
                        args.admin_token.as_deref(),
                        args.admin_token_file.as_deref(),
                    ),
                    (
                        file.admin_token.as_deref(),
                        file.admin_token_file.as_deref(),
                    ),
                )?,
            )?,
            read_only_token: non_empty(
                "read_only_token",
                token_of(
                    ("read_only_token", "read_only_token_file"),
                    (
                        args.read_only_token.as_deref(),
                        args.read_only_token_file.as_deref(),
                    ),
                    (
                        file.read_only_token.as_deref(),
                        file.read_only_token_file.as_deref(),
                    ),
                )?,
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
            machine_credentials: crate::credential::CredentialSettings::resolve(
                &args.machine_credentials,
                file.machine_credentials.as_ref(),
            )?,
            http: crate::http::connections::HttpSettings::resolve(&args.http, file.http.as_ref())?,
            new_machines: crate::rollout::newcomers::NewMachineSettings::resolve(
                &args.new_machines,
                file.new_machines.as_ref(),
            )?,
            sync: file
                .sync
                .as_ref()
                .map(crate::sync::SyncFile::resolve)
                .transpose()?
                .flatten(),
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
        s.database = crate::store::Database::Sqlite(data_dir.join(crate::store::open::SQLITE_FILE));
        s.retention.interval = None;
        s
    }
}

/// A token given as a value or as a file, command line and environment (`args`) before the
/// configuration file (`file`); giving both forms in one place is an error naming them.
fn token_of(
    (key, file_key): (&'static str, &'static str),
    args: (Option<&str>, Option<&Path>),
    file: (Option<&str>, Option<&Path>),
) -> Result<Option<String>, ConfigError> {
    for (value, path) in [args, file] {
        match (value, path) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: file_key,
                    reason: format!("give either {key} or {file_key}, not both"),
                });
            }
            (Some(v), None) => return Ok(Some(v.to_owned())),
            (None, Some(p)) => {
                return crate::http::auth::read_token_file(p)
                    .map(Some)
                    .map_err(|e| ConfigError::Invalid {
                        key: file_key,
                        reason: format!("cannot read {}: {e}", p.display()),
                    });
            }
            (None, None) => {}
        }
    }
    Ok(None)
}

fn unreachable_defaults() -> Settings {
    Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 8370)),
        data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        database: crate::store::Database::Sqlite(
            Path::new(DEFAULT_DATA_DIR).join(crate::store::open::SQLITE_FILE),
        ),
        database_max_connections: crate::store::postgres::DEFAULT_POOL_SIZE,
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
        machine_credentials: crate::credential::CredentialSettings::default(),
        http: crate::http::connections::HttpSettings::default(),
        new_machines: crate::rollout::newcomers::NewMachineSettings::default(),
        sync: None,
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
    fn the_database_is_sqlite_in_the_data_dir_unless_named() {
        use crate::store::Database;
        let file: FileConfig = toml::from_str("data_dir = \"/srv/platte\"").unwrap();
        let s = Settings::resolve(&ServeArgs::default(), &file).unwrap();
        assert_eq!(
            s.database,
            Database::Sqlite(PathBuf::from("/srv/platte/platte.sqlite"))
        );
        let file: FileConfig =
            toml::from_str("database = \"postgres://platte@db.example/platte\"").unwrap();
        let s = Settings::resolve(&ServeArgs::default(), &file).unwrap();
        assert_eq!(
            s.database,
            Database::Postgres("postgres://platte@db.example/platte".into())
        );
        // The command line (or its environment variable) wins over the file.
        let args = ServeArgs {
            database: Some("sqlite:/tmp/other.sqlite".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, &file).unwrap();
        assert_eq!(s.database, Database::Sqlite("/tmp/other.sqlite".into()));
        let args = ServeArgs {
            database: Some("mysql://db".into()),
            ..Default::default()
        };
        let err = Settings::resolve(&args, &file).unwrap_err();
        assert!(err.to_string().contains("database"), "{err}");
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
                ..Default::default()
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
    fn tokens_may_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin");
        let ro = dir.path().join("ro");
        std::fs::write(&admin, "admin-token-from-a-file\n").unwrap();
        std::fs::write(&ro, "  reader-token-from-a-file ").unwrap();
        let args = ServeArgs {
            admin_token_file: Some(admin.clone()),
            ..Default::default()
        };
        let file: FileConfig = toml::from_str(&format!(
            "admin_token = \"ignored-file-config-token\"\nread_only_token_file = {:?}",
            ro.display().to_string()
        ))
        .unwrap();
        let s = Settings::resolve(&args, &file).unwrap();
        assert_eq!(s.admin_token.as_deref(), Some("admin-token-from-a-file"));
        assert_eq!(
            s.read_only_token.as_deref(),
            Some("reader-token-from-a-file")
        );
        // Both forms in one place, a missing file, a short token: errors naming the key.
        let both: FileConfig = toml::from_str(&format!(
            "admin_token = \"x-token-0123456789\"\nadmin_token_file = {:?}",
            admin.display().to_string()
        ))
        .unwrap();
        let err = Settings::resolve(&ServeArgs::default(), &both).unwrap_err();
        assert!(err.to_string().contains("admin_token_file"), "{err}");
        let missing = ServeArgs {
            read_only_token_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let err = Settings::resolve(&missing, &FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("read_only_token_file"), "{err}");
        std::fs::write(&admin, "short").unwrap();
        let err = Settings::resolve(&args, &FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("admin_token_file"), "{err}");
    }

    #[test]
    fn omaha_event_limits_have_defaults_and_bounds() {
        let s = Settings::resolve(&ServeArgs::default(), &FileConfig::default()).unwrap();
        assert_eq!(s.omaha.event_rows_per_machine_hour, 120);
        assert_eq!(s.omaha.events_per_request, 64);
        let file: FileConfig =
            toml::from_str("[omaha]\nevent_rows_per_machine_hour = 10\nevents_per_request = 4")
                .unwrap();
        let s = Settings::resolve(&ServeArgs::default(), &file).unwrap();
        assert_eq!(s.omaha.event_rows_per_machine_hour, 10);
        assert_eq!(s.omaha.events_per_request, 4);
        for n in [0, 2049] {
            let file: FileConfig =
                toml::from_str(&format!("[omaha]\nevents_per_request = {n}")).unwrap();
            let err = Settings::resolve(&ServeArgs::default(), &file).unwrap_err();
            assert!(
                err.to_string().contains("omaha.events_per_request"),
                "{err}"
            );
        }
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
