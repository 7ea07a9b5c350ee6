//! `update-server`: runs the Platte update server (`serve`) or drives its admin API.
//!
//! Standard output goes through [`update_server::outln!`]: a reader that closes it early
//! (`update-server app list | head -1`) changes nothing, the rest is discarded; another write
//! error makes the exit status 1. Logs go to standard error ([`platte_logging`]).

use anyhow::Context as _;
use clap::Parser as _;
use update_server::cli::{Cli, Command, run_admin};
use update_server::config::Settings;

/// mimalloc instead of glibc's malloc: the server allocates per request (HTTP, XML, rows), and
/// the release-day bench answered 12–23 % more checks with it (docs/usage/operations.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let result = run();
    if result.is_ok() && update_server::stdout::failed() {
        anyhow::bail!("writing to standard output failed");
    }
    result
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting runtime")?;
    match cli.command {
        Command::Openapi => {
            update_server::out!("{}", update_server::openapi::document_pretty());
            Ok(())
        }
        Command::MigrateStore { from, to } => rt.block_on(migrate_store(&from, &to)),
        Command::Serve(args) => {
            platte_logging::init();
            let settings = Settings::from_args(&args).context("reading configuration")?;
            rt.block_on(serve(settings))
        }
        other => rt.block_on(run_admin(other)),
    }
}

/// `update-server migrate-store`: copies the SQLite database of data directory `from` into the
/// PostgreSQL database `to` and prints the rows copied per table.
async fn migrate_store(from: &std::path::Path, to: &str) -> anyhow::Result<()> {
    let file = from.join(update_server::store::open::SQLITE_FILE);
    let shown = update_server::store::Database::Postgres(to.to_owned());
    let report = update_server::store::migrate::sqlite_to_postgres(&file, to)
        .await
        .with_context(|| format!("copying {} into {shown}", file.display()))?;
    for (table, rows) in &report.tables {
        update_server::outln!("{table:<24} {rows:>10} rows");
    }
    update_server::outln!("copied into {shown}; start the servers with --database pointing there");
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let server = update_server::server::start(settings).await?;
    update_server::outln!("update-server listening on http://{}", server.addr);
    match &server.admin_token_file {
        Some(f) => {
            update_server::outln!("admin token: {} (read-only token beside it)", f.display())
        }
        None => update_server::outln!("admin token: as configured"),
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
