//! `updatectl`: the command-line client of the agent's D-Bus API (`org.platte.Update1`).
//!
//! [`Cli`] is the command line; [`run`] carries a command out and returns the exit status
//! ([`exit`]); [`progress`] formats what `update --wait` and `watch` print. Errors say what
//! went wrong in the operator's terms: the bus cannot be reached, the agent is not running, the
//! caller is not root ([`CtlError`]).

pub mod progress;

use std::io::{IsTerminal as _, Write as _};
use std::time::Instant;

use clap::{CommandFactory as _, Parser, Subcommand};
use futures_util::StreamExt as _;
use serde::Serialize;
use zbus::fdo::DBusProxy;
use zbus::names::BusName;
use zbus::proxy::CacheProperties;

use crate::agent::notify::status_text;
use crate::dbus::proxy::{FetchError, Fetched, Update1Proxy, fetch_properties};
use crate::dbus::view::Properties;
use crate::dbus::{self, UPDATE1_NAME, UPDATE1_PATH};
use crate::output::Output;
use progress::Progress;

/// Exit statuses.
pub mod exit {
    /// Success; for `check` and `update --wait`: already up to date.
    pub const OK: u8 = 0;
    /// Error (bus, permission, agent, or the check/install failed).
    pub const ERROR: u8 = 1;
    /// `check` / `update --wait`: an update is staged (just now, or already before).
    pub const STAGED: u8 = 2;
    /// `check` / `update --wait`: the offered update was refused by policy (deny list,
    /// downgrade).
    pub const REFUSED: u8 = 3;
}

/// Control the Platte update agent.
#[derive(Debug, Parser)]
#[command(
    name = "updatectl",
    version,
    about = "Ask the local Platte agent to check for an update, show its status, reboot into a \
             staged update or reset it (over D-Bus)",
    long_about = None
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// `updatectl` commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show the agent's status.
    Status {
        /// Print JSON (the D-Bus properties, snake_case).
        #[arg(long)]
        json: bool,
    },
    /// Check for an update now and wait for the answer; an offered update is downloaded and
    /// staged. Exit status: 0 up to date, 2 an update is staged, 3 refused by policy, 1 error.
    Check,
    /// Check, download and stage an update now.
    Update {
        /// Wait until done, showing phase, bytes and rate; exit status as for `check`.
        #[arg(long)]
        wait: bool,
    },
    /// Follow status changes until interrupted.
    Watch,
    /// Reboot into the staged update through the reboot coordinator (skips the strategy's
    /// `off` gate and windows; FleetLock, inhibitors and the users' grace period still apply).
    Reboot {
        /// Reboot at once, skipping every gate.
        #[arg(long)]
        now: bool,
    },
    /// Forget a staged or failed update (the staged slot is made unbootable).
    Reset,
    /// Show the deny list, or clear versions from it.
    DenyList {
        /// `clear`: remove versions from the list.
        #[command(subcommand)]
        action: Option<DenyListCmd>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `updatectl deny-list` actions.
#[derive(Debug, Subcommand)]
pub enum DenyListCmd {
    /// Remove VERSION (or, with --all, every version) from the deny list.
    Clear {
        /// The version to remove.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        version: Option<String>,
        /// Remove every version.
        #[arg(long)]
        all: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The bus cannot be reached.
    #[error(
        "cannot connect to the system bus: {0} (is D-Bus running? DBUS_SYSTEM_BUS_ADDRESS overrides the address)"
    )]
    Bus(String),
    /// Nobody owns `org.platte.Update1`.
    #[error(
        "the update agent is not running: nobody owns {UPDATE1_NAME} on the system bus \
         (start it with `systemctl start update-agent`)"
    )]
    NotRunning,
    /// The caller may not change state.
    #[error(
        "permission denied: {0}\nchanging the update state needs root: try `sudo updatectl ...`"
    )]
    PermissionDenied(String),
    /// The agent refused (a named `org.platte.Update1.Error.*`).
    #[error("{0}")]
    Agent(String),
    /// The agent went away while we were waiting for it.
    #[error("the update agent stopped while updatectl was waiting for it")]
    AgentGone,
    /// Any other D-Bus failure.
    #[error("D-Bus: {0}")]
    Dbus(String),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<zbus::Error> for CtlError {
    fn from(e: zbus::Error) -> Self {
        match &e {
            zbus::Error::MethodError(name, msg, _) => {
                let msg = msg.clone().unwrap_or_else(|| name.to_string());
                match name.as_str() {
                    "org.freedesktop.DBus.Error.AccessDenied" => CtlError::PermissionDenied(msg),
                    "org.freedesktop.DBus.Error.ServiceUnknown"
                    | "org.freedesktop.DBus.Error.NameHasNoOwner" => CtlError::NotRunning,
                    n if n.starts_with(dbus::error::ERROR_PREFIX) => CtlError::Agent(msg),
                    _ => CtlError::Dbus(format!("{name}: {msg}")),
                }
            }
            zbus::Error::FDO(f) => CtlError::from((**f).clone()),
            _ => CtlError::Dbus(e.to_string()),
        }
    }
}

impl From<zbus::fdo::Error> for CtlError {
    fn from(e: zbus::fdo::Error) -> Self {
        match e {
            zbus::fdo::Error::AccessDenied(m) => CtlError::PermissionDenied(m),
            zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_) => {
                CtlError::NotRunning
            }
            zbus::fdo::Error::ZBus(z) => CtlError::from(z),
            other => CtlError::Dbus(other.to_string()),
        }
    }
}

impl From<FetchError> for CtlError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Dbus(z) => CtlError::from(z),
            FetchError::Fdo(f) => CtlError::from(f),
            FetchError::Property(p) => CtlError::Dbus(p.to_string()),
        }
    }
}

/// `status --json` output: every property, snake_case, plus `next_reboot_window`.
#[derive(Debug, Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    props: &'a Properties,
    next_reboot_window: i64,
}

/// Connects and makes sure the agent is there.
async fn connect() -> Result<zbus::Connection, CtlError> {
    let conn = dbus::connect(None)
        .await
        .map_err(|e| CtlError::Bus(e.to_string()))?;
    let owned = DBusProxy::new(&conn)
        .await?
        .name_has_owner(BusName::try_from(UPDATE1_NAME).map_err(zbus::Error::from)?)
        .await?;
    if owned {
        Ok(conn)
    } else {
        Err(CtlError::NotRunning)
    }
}

async fn proxy(conn: &zbus::Connection) -> Result<Update1Proxy<'static>, CtlError> {
    Ok(Update1Proxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

/// Carries out `cli`; returns the exit status. Output to a reader that has gone away (`| head`)
/// is discarded without an error ([`Output`]); `watch` then stops.
pub async fn run(cli: Cli) -> Result<u8, CtlError> {
    let mut out = Output::stdout();
    match cli.command {
        Cmd::Completions { shell } => {
            // clap_complete panics on a write error: generate in memory, then write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "updatectl", &mut script);
            out.write_all(&script)?;
            out.flush()?;
            Ok(exit::OK)
        }
        Cmd::Status { json } => {
            let conn = connect().await?;
            let f = fetch_properties(&conn).await?;
            if json {
                let j = StatusJson {
                    props: &f.props,
                    next_reboot_window: f.next_reboot_window,
                };
                serde_json::to_writer_pretty(&mut out, &j).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                write!(
                    out,
                    "{}",
                    progress::status_table(&f, jiff::Timestamp::now())
                )?;
            }
            Ok(exit::OK)
        }
        Cmd::Check => {
            let conn = connect().await?;
            let mut waiter = Waiter::new(&conn).await?;
            let serial = proxy(&conn).await?.check_now().await?;
            let f = waiter.until_check(serial, None).await?;
            report_check(&mut out, &f)
        }
        Cmd::Update { wait } => {
            let conn = connect().await?;
            let mut waiter = Waiter::new(&conn).await?;
            let serial = proxy(&conn).await?.apply_now().await?;
            if !wait {
                writeln!(
                    out,
                    "update started (check {serial}); follow it with `updatectl watch`"
                )?;
                return Ok(exit::OK);
            }
            let tty = std::io::stdout().is_terminal();
            let mut prog = Progress::new(tty);
            let f = waiter.until_check(serial, Some(&mut prog)).await?;
            prog.finish(&mut out)?;
            report_check(&mut out, &f)
        }
        Cmd::Watch => {
            let conn = connect().await?;
            let mut waiter = Waiter::new(&conn).await?;
            let mut last = String::new();
            loop {
                let f = fetch_properties(&conn).await?;
                let line = status_text(&f.props);
                if line != last {
                    let now = jiff::Timestamp::now().strftime("%H:%M:%S");
                    writeln!(out, "{now} {line}")?;
                    out.flush()?;
                    if out.is_closed() {
                        // Nobody reads any more (`updatectl watch | head -3`).
                        return Ok(exit::OK);
                    }
                    last = line;
                }
                tokio::select! {
                    r = waiter.next() => r?,
                    _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
                }
            }
        }
        Cmd::Reboot { now } => {
            let conn = connect().await?;
            proxy(&conn).await?.reboot_now(now).await?;
            if now {
                writeln!(out, "rebooting now into the staged update")?;
            } else {
                writeln!(
                    out,
                    "reboot requested through the coordinator; `updatectl status` shows what it waits for"
                )?;
            }
            Ok(exit::OK)
        }
        Cmd::Reset => {
            let conn = connect().await?;
            proxy(&conn).await?.reset().await?;
            writeln!(out, "reset: nothing staged, last error cleared")?;
            Ok(exit::OK)
        }
        Cmd::DenyList { action } => {
            let conn = connect().await?;
            match action {
                None => {
                    let f = fetch_properties(&conn).await?;
                    if f.props.deny_list.is_empty() {
                        writeln!(out, "the deny list is empty")?;
                    }
                    for v in &f.props.deny_list {
                        writeln!(out, "{v}")?;
                    }
                }
                Some(DenyListCmd::Clear { version, all: _ }) => {
                    let v = version.unwrap_or_default();
                    let removed = proxy(&conn).await?.clear_deny_list(&v).await?;
                    if removed.is_empty() {
                        writeln!(out, "the deny list was already empty")?;
                    } else {
                        writeln!(out, "removed from the deny list: {}", removed.join(", "))?;
                    }
                }
            }
            Ok(exit::OK)
        }
    }
}

/// Prints how a check ended; returns the exit status.
fn report_check(out: &mut impl std::io::Write, f: &Fetched) -> Result<u8, CtlError> {
    let p = &f.props;
    let staged = matches!(p.status.as_str(), "staged" | "rebooting") && !p.new_version.is_empty();
    let code = match p.last_check_result.as_str() {
        "installed" | "already_staged" => exit::STAGED,
        "no_update" if staged => exit::STAGED,
        "no_update" => exit::OK,
        "refused" => exit::REFUSED,
        _ => exit::ERROR,
    };
    match code {
        exit::OK => writeln!(out, "up to date: version {}", p.current_version)?,
        exit::STAGED => writeln!(
            out,
            "update {} is staged; it is applied at the next reboot (`updatectl reboot`)",
            p.new_version
        )?,
        exit::REFUSED => writeln!(out, "update refused by policy: {}", p.last_error)?,
        _ => writeln!(out, "update check failed: {}", p.last_error)?,
    }
    Ok(code)
}

/// Waits for property changes of the agent, noticing when it goes away.
struct Waiter<'c> {
    conn: &'c zbus::Connection,
    changes: zbus::fdo::PropertiesChangedStream,
    owner: zbus::fdo::NameOwnerChangedStream,
}

impl<'c> Waiter<'c> {
    /// Subscribes (before the caller acts, so no change is missed).
    async fn new(conn: &'c zbus::Connection) -> Result<Self, CtlError> {
        let props = zbus::fdo::PropertiesProxy::builder(conn)
            .destination(UPDATE1_NAME)?
            .path(UPDATE1_PATH)?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let changes = props.receive_properties_changed().await?;
        let owner = DBusProxy::new(conn)
            .await?
            .receive_name_owner_changed_with_args(&[(0, UPDATE1_NAME)])
            .await?;
        Ok(Self {
            conn,
            changes,
            owner,
        })
    }

    /// The next change (or an error once the agent is gone).
    async fn next(&mut self) -> Result<(), CtlError> {
        tokio::select! {
            s = self.changes.next() => s.map(|_| ()).ok_or(CtlError::AgentGone),
            _ = self.owner.next() => Err(CtlError::AgentGone),
        }
    }

    /// Waits until check `serial` has finished, feeding `progress`.
    async fn until_check(
        &mut self,
        serial: u64,
        mut progress: Option<&mut Progress>,
    ) -> Result<Fetched, CtlError> {
        loop {
            let f = fetch_properties(self.conn).await?;
            if let Some(p) = progress.as_deref_mut() {
                let mut out = Output::stdout();
                p.show(&mut out, &f.props, Instant::now())?;
            }
            if f.props.checks_completed >= serial {
                return Ok(f);
            }
            self.next().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fetched(status: &str, result: &str, new_version: &str) -> Fetched {
        Fetched {
            props: Properties {
                status: status.into(),
                last_check_result: result.into(),
                new_version: new_version.into(),
                current_version: "1.0.0".into(),
                last_error: "boom (code 2)".into(),
                ..Properties::default()
            },
            next_reboot_window: 0,
        }
    }

    #[test]
    fn check_exit_codes_never_call_up_to_date_a_failure() {
        let code = |f: Fetched| {
            let mut out = Vec::new();
            let c = report_check(&mut out, &f).unwrap();
            (c, String::from_utf8(out).unwrap())
        };
        let (c, text) = code(fetched("idle", "no_update", ""));
        assert_eq!(c, exit::OK);
        assert!(
            text.contains("up to date") && !text.contains("fail"),
            "{text}"
        );
        assert_eq!(
            code(fetched("staged", "installed", "2.0.0")).0,
            exit::STAGED
        );
        assert_eq!(
            code(fetched("staged", "already_staged", "2.0.0")).0,
            exit::STAGED
        );
        assert_eq!(
            code(fetched("staged", "no_update", "2.0.0")).0,
            exit::STAGED
        );
        assert_eq!(code(fetched("idle", "refused", "")).0, exit::REFUSED);
        let (c, text) = code(fetched("error", "check_failed", ""));
        assert_eq!(c, exit::ERROR);
        assert!(text.contains("boom"), "{text}");
    }

    #[test]
    fn dbus_errors_become_operator_messages() {
        let denied = zbus::fdo::Error::AccessDenied("no".into());
        assert!(matches!(
            CtlError::from(denied),
            CtlError::PermissionDenied(_)
        ));
        let gone = zbus::fdo::Error::ServiceUnknown("x".into());
        assert!(matches!(CtlError::from(gone), CtlError::NotRunning));
    }

    #[test]
    fn command_line_parses() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["updatectl", "deny-list", "clear", "--all"]).unwrap();
        assert!(matches!(
            c.command,
            Cmd::DenyList {
                action: Some(DenyListCmd::Clear { all: true, .. })
            }
        ));
        assert!(Cli::try_parse_from(["updatectl", "deny-list", "clear"]).is_err());
        assert!(Cli::try_parse_from(["updatectl", "deny-list", "clear", "1.0", "--all"]).is_err());
    }
}
