//! Child processes that are always cleaned up: started with their output in a log file, waited
//! for by polling a condition (a log line, a file, an HTTP answer) with a deadline, and killed
//! when dropped, also when a test panics.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

use crate::error::{Error, Result, io};

/// How often [`poll_until`] looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Calls `probe` until it returns `Some`, or fails with [`Error::Timeout`] after `limit`;
/// `detail` says what was seen instead, for the error message.
pub fn poll_until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
    detail: impl FnOnce() -> String,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(Error::Timeout {
                what: what.to_owned(),
                waited: limit,
                detail: detail(),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// A running child process whose stdout and stderr go to a log file; killed on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` (stdin closed) with its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let file = open_log(log)?;
        let err = file.try_clone().map_err(io("cloning a log handle", log))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd
            .spawn()
            .map_err(io("starting a process", PathBuf::from(cmd.get_program())))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    /// Process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> Result<String> {
        let what = format!("`{needle}` in the log of {}", self.name);
        let log = self.log.clone();
        let mut exited = None;
        let found = poll_until(
            &what,
            limit,
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                    return Some(Some(l.to_owned()));
                }
                match self.child.try_wait() {
                    Ok(Some(st)) => {
                        exited = Some(st);
                        Some(None)
                    }
                    _ => None,
                }
            },
            || tail(&std::fs::read_to_string(&log).unwrap_or_default(), 30),
        )?;
        match found {
            Some(line) => Ok(line),
            None => {
                self.status = exited;
                Err(Error::Unexpected {
                    what: "process exit",
                    detail: format!(
                        "{} exited ({exited:?}) before logging `{needle}`:\n{}",
                        self.name,
                        self.log_tail(30)
                    ),
                })
            }
        }
    }

    /// Whether the process has exited (its status, if so).
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(io("polling a process", self.name.clone()))?;
        }
        Ok(self.status)
    }

    /// Waits for the process to exit by itself, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        match self
            .child
            .wait_timeout(limit)
            .map_err(io("waiting for a process", self.name.clone()))?
        {
            Some(st) => {
                self.status = Some(st);
                Ok(st)
            }
            None => Err(Error::Timeout {
                what: format!("{} to exit", self.name),
                waited: limit,
                detail: self.log_tail(30),
            }),
        }
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if self.try_status()?.is_some() {
            return Ok(());
        }
        self.child
            .kill()
            .map_err(io("killing a process", self.name.clone()))?;
        let st = self
            .child
            .wait()
            .map_err(io("reaping a process", self.name.clone()))?;
        self.status = Some(st);
        Ok(())
    }

    /// SIGTERM (a graceful stop, through `kill -TERM`), waits up to `limit`, then SIGKILL.
    pub fn terminate(&mut self, limit: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_status()? {
            return Ok(st);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if sent && let Ok(st) = self.wait(limit) {
            return Ok(st);
        }
        self.kill()?;
        self.status.ok_or_else(|| Error::Unexpected {
            what: "process status",
            detail: format!("{} has no exit status after kill", self.name),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Opens (creating) a log file for appending.
pub fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io("opening a log file", path))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
