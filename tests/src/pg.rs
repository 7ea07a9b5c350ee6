//! Throwaway PostgreSQL databases for the replica variant of the scenarios (the same rules as
//! `update-server/tests/support/pg.rs`): each [`World`](crate::World) in replica mode gets a
//! database `platte_e2e_<pid>_<n>` of its own, created on the server named by
//! `PLATTE_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`) and dropped
//! (`WITH (FORCE)`) when the world is dropped.
//!
//! Where no PostgreSQL answers, [`available`] says so: the replica variant of a scenario returns
//! at once and a banner written straight to the terminal says that it was SKIPPED; with
//! `PLATTE_REQUIRE_POSTGRES=1` (as CI runs them) it panics instead, so a missing database can
//! never pass silently.

use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Connection as _;

use crate::error::{Error, Result};

/// The variable naming the PostgreSQL server the scenarios use (a URL of an existing database).
pub const URL_ENV: &str = "PLATTE_TEST_POSTGRES";
/// The server used when [`URL_ENV`] is unset.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Set to `1` to fail, instead of skipping, when no PostgreSQL answers.
pub const REQUIRE_ENV: &str = "PLATTE_REQUIRE_POSTGRES";

/// How long connecting to PostgreSQL (and one statement) may take.
const LIMIT: Duration = Duration::from_secs(15);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The URL of the PostgreSQL server (an existing database on it) the scenarios use.
pub fn admin_url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Whether a PostgreSQL server answers at [`admin_url`] (asked once per test process). When it
/// does not: with [`REQUIRE_ENV`]`=1` this panics; otherwise it prints the SKIPPED banner once
/// and returns `false`.
pub fn available() -> bool {
    static SEEN: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let admin = admin_url();
    let seen = SEEN.get_or_init(|| {
        let outcome = run(&admin, |admin| async move {
            let conn = sqlx::PgConnection::connect(&admin).await?;
            conn.close().await
        });
        if let Err(e) = &outcome {
            let admin = shown(&admin);
            // Straight to the terminal: the test harness captures only the print macros.
            if !required() {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n=== PostgreSQL e2e SKIPPED: cannot connect to {admin} ({e}); the \
                     scenarios' replica variants did not run; set {URL_ENV} to a reachable \
                     server, or {REQUIRE_ENV}=1 to fail ===\n"
                );
            }
        }
        outcome
    });
    match seen {
        Ok(()) => true,
        Err(e) if required() => {
            let admin = shown(&admin);
            panic!("{REQUIRE_ENV}=1 but PostgreSQL at {admin} cannot be reached: {e}")
        }
        Err(_) => false,
    }
}

/// `url` with its password (if any) masked, for messages.
fn shown(url: &str) -> String {
    match url.split_once('@') {
        Some((credentials, host)) if credentials.matches(':').count() > 1 => {
            let user = credentials.rsplit_once(':').map_or(credentials, |(u, _)| u);
            format!("{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Runs `f(admin)` to completion on a runtime of its own, on a thread of its own (the caller may
/// be inside another runtime, or dropping something during a panic), within [`LIMIT`].
fn run<F, Fut, T>(admin: &str, f: F) -> std::result::Result<T, String>
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
    T: Send + 'static,
{
    let admin = admin.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting an async runtime: {e}"))?;
        rt.block_on(async move {
            match tokio::time::timeout(LIMIT, f(admin)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {LIMIT:?}")),
            }
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the PostgreSQL thread panicked".to_owned()))
}

/// The URL of database `name` on the server of `admin` (its path replaced, its query kept).
pub fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let authority_at = base.find("://").map_or(0, |i| i + 3);
    let path_at = base[authority_at..]
        .find('/')
        .map_or(base.len(), |i| authority_at + i);
    let mut url = format!("{}/{name}", &base[..path_at]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// A database created for one world, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates an empty database `platte_e2e_<pid>_<n>` on the server of [`admin_url`].
    pub fn create() -> Result<TestDatabase> {
        let admin = admin_url();
        let name = format!(
            "platte_e2e_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let n = name.clone();
        run(&admin, |admin| async move {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
            sqlx::query(&format!("CREATE DATABASE {n}"))
                .execute(&mut conn)
                .await?;
            conn.close().await
        })
        .map_err(|detail| Error::Unexpected {
            what: "PostgreSQL test database",
            detail: format!("creating {name} on {}: {detail}", shown(&admin)),
        })?;
        Ok(TestDatabase {
            url: with_database(&admin, &name),
            name,
            admin_url: admin,
        })
    }

    /// Connection URL of the database (for `update-server serve --database`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = run(&self.admin_url, |admin| async move {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
            conn.close().await
        });
        if let Err(e) = dropped {
            let _ = writeln!(
                std::io::stderr(),
                "platte-e2e: dropping test database {}: {e}",
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "db_1"),
            "postgres://postgres@127.0.0.1:5432/db_1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "d"),
            "postgres://u:p@h/d?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "d"),
            "postgres://h:5432/d"
        );
    }
}
