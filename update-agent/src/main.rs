//! `update-agent`: the Platte host agent's command line. Logs go to standard error
//! ([`platte_logging`]).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use update_agent::agent::Agent;
use update_agent::agent::daemon::{self, DaemonOptions};
use update_agent::boot::{self, BootBackend};
use update_agent::config::{self, LoadedConfig};
use update_agent::health::{self, MarkGoodError, SystemctlChecker};
use update_agent::identity::Identity;
use update_agent::output::Output;
use update_agent::reboot::time::{SystemClock, TokioSleeper};
use update_agent::{HostPaths, state};

/// Platte host agent.
#[derive(Debug, Parser)]
#[command(
    name = "update-agent",
    version,
    about = "The Platte host agent: checks in with the update server, installs updates into the \
             inactive A/B slot, and coordinates the reboot"
)]
struct Cli {
    /// Read drop-ins from these directories (lowest precedence first) instead of the defaults.
    #[arg(long = "config-dir", global = true, value_name = "DIR")]
    config_dirs: Vec<PathBuf>,
    /// Resolve every host path (config, /etc/machine-id, /proc/cmdline, /dev...) under DIR.
    #[arg(long, global = true, value_name = "DIR", hide = true)]
    host_root: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate the configuration and print the warnings and effective settings.
    CheckConfig,
    /// Print the A/B slots and their boot attributes.
    StatusSlots {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the health checks, then mark the booted slot successful (exit 1 if a check fails).
    MarkGood,
    /// Print this host's identity as JSON.
    Identity,
    /// Print the persisted agent state as JSON.
    State,
    /// Print this host's machine public key (base64, for `update-server instance enroll`),
    /// creating the key in the state directory if there is none yet.
    MachineKey,
    /// Run the agent: check for updates, install them into the inactive slot, reboot per the
    /// strategy, serve the D-Bus API (org.platte.Update1, com.coreos.update1).
    Run {
        /// Run one full cycle (check, install), update /run/reboot-required like the daemon,
        /// and exit: 0 no update (or already staged), 2 installed and staged, 3 refused by
        /// policy, 1 error.
        #[arg(long)]
        once: bool,
        /// With --once: install an offer of the version already running into the inactive
        /// slot (repairs a damaged fallback slot). Without it such an offer is declined.
        #[arg(long, requires = "once")]
        repair: bool,
    },
}

fn load(cli: &Cli) -> Result<(HostPaths, LoadedConfig)> {
    let mut paths = match &cli.host_root {
        Some(root) => HostPaths::under(root),
        None => HostPaths::default(),
    };
    if !cli.config_dirs.is_empty() {
        paths.config_dirs = cli.config_dirs.clone();
    }
    let loaded = config::load(&paths.config_dirs, &paths.legacy_update_conf)
        .context("loading configuration")?;
    Ok((paths, loaded))
}

fn backend(paths: &HostPaths, cfg: &LoadedConfig) -> Result<Box<dyn BootBackend + Send + Sync>> {
    boot::from_settings(&cfg.settings.boot, paths).context("locating the A/B slots")
}

fn run(cli: &Cli) -> Result<ExitCode> {
    let (paths, cfg) = load(cli)?;
    // A reader that goes away (`| head -1`) discards the rest; it is no error.
    let mut out = Output::stdout();
    match &cli.command {
        Cmd::Run { once, repair } => {
            let mut cfg = cfg;
            if let Some(root) = &cli.host_root {
                cfg.settings.state_dir = update_agent::paths::reroot(root, &cfg.settings.state_dir);
                cfg.settings.reboot.reboot_required = cfg
                    .settings
                    .reboot
                    .reboot_required
                    .map(|p| update_agent::paths::reroot(root, &p));
            }
            return run_agent(&paths, cfg, *once, *repair);
        }
        Cmd::MachineKey => {
            let dir = match &cli.host_root {
                Some(root) => update_agent::paths::reroot(root, &cfg.settings.state_dir),
                None => cfg.settings.state_dir.clone(),
            };
            let key = update_agent::machine_key::MachineKey::load_or_create(&dir)
                .context("reading the machine key")?;
            println!("{}", key.public_key_base64());
        }
        Cmd::CheckConfig => {
            for w in &cfg.warnings {
                writeln!(out, "warning: {w}")?;
            }
            for d in &cfg.dropins {
                writeln!(out, "applied: {}", d.display())?;
            }
            writeln!(out, "{:#?}", cfg.settings)?;
        }
        Cmd::StatusSlots { json } => {
            let b = backend(&paths, &cfg)?;
            let slots = b.describe().context("reading slot attributes")?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&slots)?)?;
            } else {
                writeln!(out, "disk: {}", b.disk().display())?;
                writeln!(
                    out,
                    "SLOT PART LABEL            PRIORITY TRIES SUCCESSFUL BOOTED PARTUUID"
                )?;
                for s in &slots {
                    let booted = match s.booted {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "?",
                    };
                    writeln!(
                        out,
                        "{:<4} {:<4} {:<16} {:<8} {:<5} {:<10} {:<6} {}",
                        s.slot,
                        s.partition,
                        s.label,
                        s.state.priority,
                        s.state.tries,
                        if s.state.successful { "yes" } else { "no" },
                        booted,
                        s.partuuid
                    )?;
                }
            }
        }
        Cmd::MarkGood => {
            let b = backend(&paths, &cfg)?;
            let units = SystemctlChecker {
                systemctl: cfg.settings.health.systemctl.clone(),
            };
            match health::mark_good(&cfg.settings.health, &units, b.as_ref()) {
                Ok(report) => {
                    let slot = b.booted_slot().context("reading the booted slot")?;
                    writeln!(
                        out,
                        "{} health check(s) and {} unit(s) passed; slot {slot} marked successful",
                        report.checks.len(),
                        report.units.len()
                    )?;
                }
                Err(MarkGoodError::ChecksFailed(report)) => {
                    // Like stdout, a closed stderr is no reason to panic.
                    let mut err = std::io::stderr();
                    for f in report.failures() {
                        let _ = writeln!(err, "update-agent: {f}");
                    }
                    let _ = writeln!(err, "update-agent: booted slot left unmarked");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Cmd::Identity => {
            let id = Identity::load(&paths, &cfg.settings).context("reading identity")?;
            writeln!(out, "{}", serde_json::to_string_pretty(&id)?)?;
        }
        Cmd::State => {
            let dir = &cfg.settings.state_dir;
            let dir = match &cli.host_root {
                Some(root) => update_agent::paths::reroot(root, dir),
                None => dir.clone(),
            };
            match state::read_state(&dir)? {
                None => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&state::AgentState::default())?
                )?,
                Some(Ok(s)) => writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?,
                Some(Err(e)) => anyhow::bail!("state file in {} is corrupt: {e}", dir.display()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_agent(paths: &HostPaths, cfg: LoadedConfig, once: bool, repair: bool) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut agent = Agent::open(paths, cfg.settings).context("starting the agent")?;
        if once {
            if repair {
                agent.allow_repair();
            }
            let outcome = agent.run_once(true).await;
            // As the daemon would: the sentinel names the staged update once its reboot may go
            // ahead. A failure is logged; the exit status still says what the cycle did.
            if let Err(e) = agent.sync_reboot_required() {
                tracing::error!(error = %e, "the reboot-required sentinel is out of date");
            }
            return Ok(ExitCode::from(outcome.exit_code()));
        }
        let opts = DaemonOptions {
            notify_socket: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
            ..DaemonOptions::default()
        };
        daemon::run(agent, opts, SystemClock, TokioSleeper, shutdown_signal())
            .await
            .context("running the daemon")?;
        tracing::info!("update-agent stopping");
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    platte_logging::init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "update-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
