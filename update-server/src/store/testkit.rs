//! The store test kit: a test written once against the store traits runs on SQLite and on
//! PostgreSQL. Write it as `async fn name(kit: &mut TestStores)` and add `both_stores!(name);`
//! beside it: that makes the tests `name::sqlite` and `name::postgres`. The PostgreSQL one uses
//! a throwaway database ([`pg::TestDatabase`]); where no PostgreSQL answers it is skipped with a
//! banner (or fails, with `PLATTE_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/support/pg.rs"]
pub mod pg;

use std::ops::{Deref, DerefMut};

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::{Database, Stores};

/// Opened stores of one database for a test, and what keeps that database alive.
#[derive(Debug)]
pub struct TestStores {
    /// The stores.
    pub stores: Stores,
    database: Database,
    _sqlite_dir: Option<tempfile::TempDir>,
    _pg: Option<pg::TestDatabase>,
}

impl Deref for TestStores {
    type Target = Stores;
    fn deref(&self) -> &Stores {
        &self.stores
    }
}

impl DerefMut for TestStores {
    fn deref_mut(&mut self) -> &mut Stores {
        &mut self.stores
    }
}

impl TestStores {
    /// Stores on a new SQLite file.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::Sqlite(dir.path().join("platte.sqlite"));
        let stores = Stores::open(&database).await.unwrap();
        Self {
            stores,
            database,
            _sqlite_dir: Some(dir),
            _pg: None,
        }
    }

    /// Stores on a new PostgreSQL database; `None` when PostgreSQL is unavailable (skipped).
    pub async fn postgres() -> Option<Self> {
        let db = pg::TestDatabase::create().await?;
        let database = Database::Postgres(db.url.clone());
        let stores = Stores::open(&database).await.unwrap();
        Some(Self {
            stores,
            database,
            _sqlite_dir: None,
            _pg: Some(db),
        })
    }

    /// The database the stores are on.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Closes the stores and opens them again on the same database (a server restart).
    pub async fn reopen(&mut self) {
        self.stores.close().await;
        self.stores = Stores::open(&self.database).await.unwrap();
    }

    /// Another [`Stores`] on the same database, as a second server process (a replica) has.
    pub async fn replica(&self) -> Stores {
        Stores::open(&self.database).await.unwrap()
    }

    /// The rows a query returns, on either database.
    pub async fn rows<T>(&self, sql: &str) -> Vec<T>
    where
        T: Send + Unpin + for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow>,
    {
        if let Some(s) = self.stores.sqlite() {
            sqlx::query_as(sql).fetch_all(s.pool()).await.unwrap()
        } else {
            let p = self.stores.postgres().expect("one of the stores");
            sqlx::query_as(sql).fetch_all(p.pool()).await.unwrap()
        }
    }

    /// The one text column of every row a query returns.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        let rows: Vec<(String,)> = self.rows(sql).await;
        rows.into_iter().map(|(s,)| s).collect()
    }

    /// Runs SQL statements (no parameters) on the database, as a test sets up state the store
    /// API does not write (old timestamps, rows of earlier versions).
    pub async fn exec(&self, sql: &str) {
        if let Some(s) = self.stores.sqlite() {
            sqlx::raw_sql(sql).execute(s.pool()).await.unwrap();
        } else if let Some(p) = self.stores.postgres() {
            sqlx::raw_sql(sql).execute(p.pool()).await.unwrap();
        }
    }

    /// The one integer a query returns.
    pub async fn query_i64(&self, sql: &str) -> i64 {
        if let Some(s) = self.stores.sqlite() {
            sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap()
        } else {
            let p = self.stores.postgres().expect("one of the stores");
            sqlx::query_scalar(sql).fetch_one(p.pool()).await.unwrap()
        }
    }
}

/// Makes the tests `$name::sqlite` and `$name::postgres` of
/// `async fn $name(kit: &mut TestStores)`.
macro_rules! both_stores {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let mut kit = $crate::store::testkit::TestStores::sqlite().await;
                    super::$name(&mut kit).await;
                    kit.close().await;
                }

                #[tokio::test]
                async fn postgres() {
                    let Some(mut kit) = $crate::store::testkit::TestStores::postgres().await else {
                        return;
                    };
                    super::$name(&mut kit).await;
                    kit.close().await;
                }
            }
        )+
    };
}
pub(crate) use both_stores;
