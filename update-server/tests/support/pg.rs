//! Throwaway PostgreSQL databases for tests, shared by the crate's unit tests (through
//! `src/store/testkit.rs`) and its integration tests. Each test gets a database of its own,
//! created on the server named by `PLATTE_TEST_POSTGRES` (default: the project machines'
//! `postgres://postgres@127.0.0.1:5432/test`) and dropped when the test ends.
//!
//! Where no PostgreSQL answers, the PostgreSQL variant of a test returns at once and a banner
//! on the terminal says that the PostgreSQL tests were SKIPPED; with `PLATTE_REQUIRE_POSTGRES=1`
//! (as CI runs them) it fails instead, so a missing database can never pass silently.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Connection as _;

/// The variable naming the PostgreSQL server the tests use (a URL of an existing database).
pub const URL_ENV: &str = "PLATTE_TEST_POSTGRES";
/// The server used when [`URL_ENV`] is unset.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Set to `1` to fail, instead of skipping, when no PostgreSQL answers.
pub const REQUIRE_ENV: &str = "PLATTE_REQUIRE_POSTGRES";

static NEXT: AtomicUsize = AtomicUsize::new(0);
static BANNER: std::sync::Once = std::sync::Once::new();

/// A database created for one test, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// Connection URL of the new database.
    pub url: String,
    name: String,
    admin_url: String,
}

/// `url` without its password, for messages.
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

fn admin_url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The URL of a database named `name` on the server of `admin`.
fn with_database(admin: &str, name: &str) -> String {
    let mut u = url::Url::parse(admin).expect("PLATTE_TEST_POSTGRES is a URL");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

impl TestDatabase {
    /// Creates an empty database. `None` when no PostgreSQL server answers (after printing the
    /// SKIPPED banner once), unless [`REQUIRE_ENV`] is set: then it panics.
    pub async fn create() -> Option<Self> {
        let admin = admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                let admin = shown(&admin);
                if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                    panic!("{REQUIRE_ENV}=1 but PostgreSQL at {admin} cannot be reached: {e}");
                }
                BANNER.call_once(|| {
                    // Straight to the terminal: the test harness captures only print macros.
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n=== PostgreSQL tests SKIPPED: cannot connect to {admin} ({e}); \
                         set {URL_ENV} to a reachable server, or {REQUIRE_ENV}=1 to fail ===\n"
                    );
                });
                return None;
            }
        };
        let name = format!(
            "platte_t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .expect("dropping a leftover test database");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("creating a test database");
        let _ = conn.close().await;
        Some(Self {
            url: with_database(&admin, &name),
            name,
            admin_url: admin,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a test's runtime, which cannot be blocked on: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            rt.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            let _ = writeln!(
                std::io::stderr(),
                "dropping test database {}: {e}",
                self.name
            );
        }
    }
}
