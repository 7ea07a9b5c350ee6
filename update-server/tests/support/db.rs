//! The database an integration test's servers use: every server test runs once on SQLite and
//! once on PostgreSQL. Write the test as `async fn name(db: TestDb)`, build the servers'
//! settings with [`TestDb::settings`], and add `both_databases!(name);` beside it: that makes
//! the tests `name::sqlite` and `name::postgres`. Servers started with the settings of one
//! `TestDb` share its database, as replicas do.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use update_server::config::Settings;
use update_server::store::Database;

#[path = "pg.rs"]
pub mod pg;

/// A test's database: a file in each server's data directory, or one throwaway PostgreSQL
/// database (dropped when this is).
#[derive(Debug)]
pub enum TestDb {
    /// SQLite in the data directory given to [`TestDb::settings`].
    Sqlite,
    /// A PostgreSQL database of its own.
    Postgres(pg::TestDatabase),
}

impl TestDb {
    /// The PostgreSQL variant; `None` (the test is skipped, with a banner) without PostgreSQL.
    pub async fn postgres() -> Option<Self> {
        pg::TestDatabase::create().await.map(Self::Postgres)
    }

    /// Another empty database of the same kind, for a server that must not share this one's:
    /// SQLite is again the file in the data directory it is given (so give it a new one),
    /// PostgreSQL a new throwaway database.
    pub async fn another(&self) -> Self {
        match self {
            Self::Sqlite => Self::Sqlite,
            Self::Postgres(_) => Self::Postgres(
                pg::TestDatabase::create()
                    .await
                    .expect("PostgreSQL answered for this test's first database"),
            ),
        }
    }

    /// Test settings ([`Settings::for_tests`]) with data directory `data` and this database.
    pub fn settings(&self, data: &Path) -> Settings {
        let mut s = Settings::for_tests(data);
        if let Self::Postgres(db) = self {
            s.database = Database::Postgres(db.url.clone());
        }
        s
    }

    /// `sqlite` or `postgres`, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Makes the tests `$name::sqlite` and `$name::postgres` of `async fn $name(db: TestDb)`.
#[macro_export]
macro_rules! both_databases {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::support::db::TestDb::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    let Some(db) = $crate::support::db::TestDb::postgres().await else {
                        return;
                    };
                    super::$name(db).await;
                }
            }
        )+
    };
}
