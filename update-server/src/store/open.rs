//! Opening the stores of the database the server is configured with: SQLite (a file in the
//! data directory, the default) or PostgreSQL (a `postgres://` URL, for several replicas).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::tx::Transactor;
use super::{
    CredentialStore, FleetLockStore, PgStore, RetentionStore, RolloutStore, SqliteStore,
    SqliteWriter, Store, StoreError, WriterTask,
};

/// The database file name SQLite uses in the data directory.
pub const SQLITE_FILE: &str = "platte.sqlite";

/// Which database holds the server's state.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (one server process, or several on one machine).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by connection URL (any number of replicas).
    Postgres(String),
}

impl Database {
    /// Parses the `database` setting: a `postgres://` or `postgresql://` URL, or `sqlite:` followed
    /// by a file path; `None` is SQLite in `data_dir`.
    pub fn parse(setting: Option<&str>, data_dir: &std::path::Path) -> Result<Self, String> {
        let Some(s) = setting.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Self::Sqlite(data_dir.join(SQLITE_FILE)));
        };
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres(s.to_owned()))
        } else if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("database: `sqlite:` needs a file path".into());
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else {
            Err(format!(
                "database: {s:?} is neither a postgres:// URL nor sqlite:<path>"
            ))
        }
    }

    /// The database's kind: `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Shown without a PostgreSQL URL's password.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Self::Postgres(url) => match url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    // A password may also come as a query parameter.
                    if u.query_pairs().any(|(k, _)| k == "password") {
                        let pairs: Vec<(String, String)> = u
                            .query_pairs()
                            .map(|(k, v)| {
                                let v = if k == "password" { "***".into() } else { v };
                                (k.into_owned(), v.into_owned())
                            })
                            .collect();
                        u.query_pairs_mut().clear().extend_pairs(pairs);
                    }
                    write!(f, "{u}")
                }
                Err(_) => f.write_str("postgres://(unparsable URL)"),
            },
        }
    }
}

enum Backend {
    Sqlite {
        store: SqliteStore,
        writer: Option<WriterTask>,
    },
    Postgres(PgStore),
}

/// Every store of one database, as the server uses them, and what closes them.
pub struct Stores {
    /// Catalogue, instances, events and activity.
    pub store: Arc<dyn Store>,
    /// Rollout grants and refusals.
    pub rollouts: Arc<dyn RolloutStore>,
    /// Retention (pruning, forgetting, leases).
    pub retention: Arc<dyn RetentionStore>,
    /// Machine credentials.
    pub credentials: Arc<dyn CredentialStore>,
    /// The FleetLock semaphore.
    pub fleetlock: Arc<dyn FleetLockStore>,
    /// Runs the check path's write transactions (group commit).
    pub writer: Arc<dyn Transactor>,
    backend: Backend,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stores")
            .field("kind", &self.kind())
            .finish()
    }
}

impl Stores {
    /// Opens `db` (creating an SQLite file, applying migrations) and starts its writer.
    pub async fn open(db: &Database) -> Result<Self, StoreError> {
        Self::open_sized(db, super::postgres::DEFAULT_POOL_SIZE).await
    }

    /// As [`Stores::open`], with at most `pool_size` connections to PostgreSQL.
    pub async fn open_sized(db: &Database, pool_size: u32) -> Result<Self, StoreError> {
        match db {
            Database::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Internal(format!("creating {}: {e}", dir.display()))
                    })?;
                }
                let store = SqliteStore::open(path).await?;
                let (writer, task) = SqliteWriter::start(&store).await?;
                Ok(Self {
                    store: Arc::new(store.clone()),
                    rollouts: Arc::new(store.clone()),
                    retention: Arc::new(store.clone()),
                    credentials: Arc::new(store.clone()),
                    fleetlock: Arc::new(store.clone()),
                    writer: Arc::new(writer),
                    backend: Backend::Sqlite {
                        store,
                        writer: Some(task),
                    },
                })
            }
            Database::Postgres(url) => {
                let store = PgStore::open_sized(url, pool_size).await?;
                Ok(Self {
                    store: Arc::new(store.clone()),
                    rollouts: Arc::new(store.clone()),
                    retention: Arc::new(store.clone()),
                    credentials: Arc::new(store.clone()),
                    fleetlock: Arc::new(store.clone()),
                    writer: Arc::new(super::postgres::batch::PgBatcher::start(store.clone())),
                    backend: Backend::Postgres(store),
                })
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The SQLite store, when that is the database.
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Some(store),
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL store, when that is the database.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::Postgres(store) => Some(store),
            Backend::Sqlite { .. } => None,
        }
    }

    /// Stops the writer (after the jobs queued) and closes the connections.
    pub async fn close(&mut self) {
        match &mut self.backend {
            Backend::Sqlite { store, writer } => {
                if let Some(w) = writer.take() {
                    w.stop().await;
                }
                store.close().await;
            }
            Backend::Postgres(store) => store.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_database_setting_names_sqlite_or_postgres() {
        let dir = Path::new("/var/lib/platte");
        assert_eq!(
            Database::parse(None, dir),
            Ok(Database::Sqlite(dir.join(SQLITE_FILE)))
        );
        assert_eq!(
            Database::parse(Some("sqlite:/tmp/x.db"), dir),
            Ok(Database::Sqlite("/tmp/x.db".into()))
        );
        assert_eq!(
            Database::parse(Some("postgres://u@db/platte"), dir),
            Ok(Database::Postgres("postgres://u@db/platte".into()))
        );
        let e = Database::parse(Some("mysql://x"), dir).unwrap_err();
        assert!(e.contains("mysql://x"), "{e}");
        let shown = Database::Postgres("postgres://u:secret@db/platte".into()).to_string();
        assert!(
            !shown.contains("secret") && shown.contains("***"),
            "{shown}"
        );
        let url = "postgres://u@db/platte?sslmode=require&password=secret";
        let shown = Database::Postgres(url.into()).to_string();
        assert!(
            !shown.contains("secret") && shown.contains("sslmode=require"),
            "{shown}"
        );
    }
}
