//! The harness's error type: what failed, on which process, file or request.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the harness can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or program concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A workspace binary is not where the harness looks for it.
    #[error(
        "binary `{name}` not found in {dir}; build it with `cargo build --bins` (or set PLATTE_BIN_DIR)"
    )]
    BinaryMissing {
        /// Binary name.
        name: String,
        /// Directory searched.
        dir: PathBuf,
    },
    /// Building the workspace binaries failed.
    #[error("`{command}` failed with {status}")]
    Build {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// A command-line tool exited unsuccessfully.
    #[error("`{command}` exited with {code:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit code (`None`: killed by a signal).
        code: Option<i32>,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
    /// An HTTP request could not be made or its answer not read.
    #[error("{method} {url}: {source}")]
    Http {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The admin API answered with an unexpected status or body.
    #[error("{method} {url} answered {status}: {body}")]
    Api {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The answer's body (truncated).
        body: String,
    },
    /// A condition did not come true in time.
    #[error("timed out after {waited:?} waiting for {what}; {detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
        /// What was seen instead (log tail, last state).
        detail: String,
    },
    /// The browser (Chromium through chromedriver) failed or did not show what was expected.
    #[error("browser, {what}: {detail}")]
    Browser {
        /// What was being done.
        what: String,
        /// The WebDriver error, or what the page showed instead.
        detail: String,
    },
    /// A disk image is not a valid GPT disk, or a request about it cannot be met.
    #[error("disk image {path}: {reason}")]
    Disk {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A private bus or a stand-in service on it failed.
    #[error("D-Bus {what}: {detail}")]
    Dbus {
        /// What was being done.
        what: &'static str,
        /// The bus error.
        detail: String,
    },
    /// A test kit helper (the private bus, the proxy) failed.
    #[error(transparent)]
    Testkit(#[from] testkit::Error),
    /// Output of a tool or file was not what the harness expected.
    #[error("unexpected {what}: {detail}")]
    Unexpected {
        /// What was read.
        what: &'static str,
        /// Why it was not understood.
        detail: String,
    },
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error::Io`] mapper for `what` on `path`.
pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
