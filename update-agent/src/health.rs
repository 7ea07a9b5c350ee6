//! The boot health gate behind `update-agent mark-good`: run the configured health commands and
//! check the required units are active, then (only if all passed) mark the booted slot good.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

use crate::boot::{BootBackend, BootError};
use crate::config::{HealthCheck, HealthSettings};

/// Time allowed for one `systemctl is-active` call.
const UNIT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers whether a systemd unit is active. D-Bus comes later; `systemctl` for now.
pub trait UnitChecker {
    /// `Ok(true)` when `unit` is active; `Err` when the question could not be asked.
    fn is_active(&self, unit: &str) -> Result<bool, String>;
}

/// [`UnitChecker`] running `systemctl is-active --quiet -- UNIT` (exit 0 means active).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemctlChecker {
    /// The `systemctl` binary.
    pub systemctl: PathBuf,
}

impl UnitChecker for SystemctlChecker {
    fn is_active(&self, unit: &str) -> Result<bool, String> {
        let argv = vec![
            self.systemctl.display().to_string(),
            "is-active".into(),
            "--quiet".into(),
            "--".into(),
            unit.into(),
        ];
        match run(&argv, UNIT_QUERY_TIMEOUT) {
            CommandResult::Passed => Ok(true),
            CommandResult::Failed { .. } => Ok(false),
            other => Err(other.to_string()),
        }
    }
}

/// How one command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// Exit status 0.
    Passed,
    /// Non-zero exit, or killed by a signal (`code` is `None` then).
    Failed {
        /// Exit code.
        code: Option<i32>,
    },
    /// Did not finish in time and was killed.
    TimedOut {
        /// The time allowed.
        after: Duration,
    },
    /// Could not be started.
    NotStarted {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for CommandResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandResult::Passed => write!(f, "passed"),
            CommandResult::Failed { code: Some(c) } => write!(f, "failed with exit code {c}"),
            CommandResult::Failed { code: None } => write!(f, "killed by a signal"),
            CommandResult::TimedOut { after } => {
                write!(f, "timed out after {}s and was killed", after.as_secs())
            }
            CommandResult::NotStarted { reason } => write!(f, "could not be started: {reason}"),
        }
    }
}

/// Runs `argv` with stdin closed and output inherited (the journal, under systemd).
pub fn run(argv: &[String], timeout: Duration) -> CommandResult {
    let Some((program, args)) = argv.split_first() else {
        return CommandResult::NotStarted {
            reason: "empty command".into(),
        };
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return CommandResult::NotStarted {
                reason: format!("{program}: {e}"),
            };
        }
    };
    match child.wait_timeout(timeout) {
        Ok(Some(status)) if status.success() => CommandResult::Passed,
        Ok(Some(status)) => CommandResult::Failed {
            code: status.code(),
        },
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            CommandResult::TimedOut { after: timeout }
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            CommandResult::NotStarted {
                reason: format!("waiting for {program}: {e}"),
            }
        }
    }
}

/// Result of one health command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Check name.
    pub name: String,
    /// How it ended.
    pub result: CommandResult,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Result of one unit query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitReport {
    /// Unit name.
    pub unit: String,
    /// Whether it is active, or why that could not be determined.
    pub active: Result<bool, String>,
}

/// Results of all health checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthReport {
    /// Health commands, in name order.
    pub checks: Vec<CheckReport>,
    /// Required units, in configured order.
    pub units: Vec<UnitReport>,
}

impl HealthReport {
    /// Whether every command passed and every unit is active.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// One line per failure.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.result != CommandResult::Passed)
            .map(|c| format!("health check {:?} {}", c.name, c.result))
            .collect();
        for u in &self.units {
            match &u.active {
                Ok(true) => {}
                Ok(false) => out.push(format!("unit {} is not active", u.unit)),
                Err(e) => out.push(format!("unit {}: cannot query: {e}", u.unit)),
            }
        }
        out
    }
}

/// Runs every configured check (all of them, even after a failure, for a full report).
pub fn run_checks(settings: &HealthSettings, units: &dyn UnitChecker) -> HealthReport {
    let checks = settings.checks.iter().map(run_check).collect();
    let units = settings
        .units
        .iter()
        .map(|u| {
            let active = units.is_active(u);
            match &active {
                Ok(true) => tracing::info!(unit = %u, "unit is active"),
                Ok(false) => tracing::warn!(unit = %u, "unit is not active"),
                Err(e) => tracing::warn!(unit = %u, error = %e, "cannot query unit"),
            }
            UnitReport {
                unit: u.clone(),
                active,
            }
        })
        .collect();
    HealthReport { checks, units }
}

fn run_check(c: &HealthCheck) -> CheckReport {
    let start = Instant::now();
    let result = run(&c.command, c.timeout);
    let elapsed = start.elapsed();
    if result == CommandResult::Passed {
        tracing::info!(check = %c.name, ms = elapsed.as_millis() as u64, "health check passed");
    } else {
        tracing::warn!(check = %c.name, result = %result, "health check failed");
    }
    CheckReport {
        name: c.name.clone(),
        result,
        elapsed,
    }
}

/// Why `mark-good` did not mark the slot.
#[derive(Debug, thiserror::Error)]
pub enum MarkGoodError {
    /// At least one health check failed; the slot was left unmarked.
    #[error("health checks failed, booted slot left unmarked: {}", .0.failures().join("; "))]
    ChecksFailed(HealthReport),
    /// The slot could not be marked.
    #[error("cannot mark the booted slot good: {0}")]
    Boot(#[from] BootError),
}

/// Runs the health checks, then marks the booted slot good only if all passed.
pub fn mark_good(
    settings: &HealthSettings,
    units: &dyn UnitChecker,
    backend: &dyn BootBackend,
) -> Result<HealthReport, MarkGoodError> {
    let report = run_checks(settings, units);
    if !report.passed() {
        return Err(MarkGoodError::ChecksFailed(report));
    }
    backend.mark_booted_good()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn command_results() {
        let t = Duration::from_secs(10);
        assert_eq!(run(&sh("exit 0"), t), CommandResult::Passed);
        assert_eq!(
            run(&sh("exit 3"), t),
            CommandResult::Failed { code: Some(3) }
        );
        assert!(matches!(
            run(&["/nonexistent/check".to_string()], t),
            CommandResult::NotStarted { .. }
        ));
        assert!(matches!(run(&[], t), CommandResult::NotStarted { .. }));
    }

    #[test]
    fn slow_command_is_killed_at_the_timeout() {
        let start = Instant::now();
        let r = run(&sh("exec sleep 30"), Duration::from_millis(200));
        assert_eq!(
            r,
            CommandResult::TimedOut {
                after: Duration::from_millis(200)
            }
        );
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    struct Units(&'static [&'static str]);
    impl UnitChecker for Units {
        fn is_active(&self, unit: &str) -> Result<bool, String> {
            if unit == "broken.service" {
                return Err("no bus".into());
            }
            Ok(self.0.contains(&unit))
        }
    }

    fn settings(checks: Vec<(&str, Vec<String>)>, units: &[&str]) -> HealthSettings {
        HealthSettings {
            checks: checks
                .into_iter()
                .map(|(n, c)| HealthCheck {
                    name: n.into(),
                    command: c,
                    timeout: Duration::from_secs(10),
                })
                .collect(),
            units: units.iter().map(|u| u.to_string()).collect(),
            systemctl: "/bin/false".into(),
        }
    }

    #[test]
    fn report_lists_every_failure() {
        let s = settings(
            vec![("ok", sh("true")), ("bad", sh("exit 2"))],
            &["a.service", "b.service", "broken.service"],
        );
        let r = run_checks(&s, &Units(&["a.service"]));
        assert!(!r.passed());
        let f = r.failures();
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].contains("\"bad\"") && f[0].contains("exit code 2"));
        assert!(f[1].contains("b.service"));
        assert!(f[2].contains("broken.service"));
        let ok = run_checks(
            &settings(vec![("ok", sh("true"))], &["a.service"]),
            &Units(&["a.service"]),
        );
        assert!(ok.passed());
    }

    #[test]
    fn systemctl_checker_maps_exit_codes() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("systemctl");
        std::fs::write(&fake, "#!/bin/sh\n[ \"$1 $2 $3\" = 'is-active --quiet --' ] || exit 9\n[ \"$4\" = good.service ]\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = SystemctlChecker { systemctl: fake };
        assert_eq!(c.is_active("good.service"), Ok(true));
        assert_eq!(c.is_active("bad.service"), Ok(false));
        let missing = SystemctlChecker {
            systemctl: d.path().join("nope"),
        };
        assert!(missing.is_active("good.service").is_err());
    }
}
