//! The test kit's error type: what failed, on which file, program or bus.

use std::path::PathBuf;

/// What the test kit's fallible helpers fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, socket or process operation failed.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file, address or program concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A private bus or a stand-in service on it failed.
    #[error("D-Bus {what}: {detail}")]
    Dbus {
        /// What was being done.
        what: &'static str,
        /// The bus error, or `dbus-daemon`'s complaint.
        detail: String,
    },
}

/// The test kit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error::Io`] mapper for `what` on `path`.
pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
