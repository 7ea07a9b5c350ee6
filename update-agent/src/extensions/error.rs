//! `ExtensionError`: every way updating a runtime extension can fail or be refused, with the
//! error code reported for it in the extension app's `3/0` (failure) or `3/9` (refusal) event.

use std::path::PathBuf;

use omaha::ErrorCode;

use super::systemd::SystemdError;
use crate::health::CommandResult;
use crate::install::InstallError;
use crate::omaha_client::CheckError;
use crate::state::StateError;

/// Platte's error codes for extensions (3110..3119, next to the install codes 3101..3103;
/// defined with their names in [`omaha::PlatteCode`]).
pub mod codes {
    use omaha::PlatteCode;

    /// The build does not support the OS version it must run on (or declares none).
    pub const UNSUPPORTED_OS: u32 = PlatteCode::ExtensionUnsupportedOs.to_u32();
    /// Switching the `NAME.raw` link failed (a host problem: the build is not deny-listed).
    pub const ACTIVATION_FAILED: u32 = PlatteCode::ExtensionActivationFailed.to_u32();
    /// Restarting a unit failed (job result not `done`, or the unit not active afterwards).
    pub const RESTART_FAILED: u32 = PlatteCode::ExtensionRestartFailed.to_u32();
    /// The health command failed.
    pub const HEALTH_FAILED: u32 = PlatteCode::ExtensionHealthFailed.to_u32();
    /// The sysext refresh command failed with the build linked (the build is deny-listed).
    pub const REFRESH_FAILED: u32 = PlatteCode::ExtensionRefreshFailed.to_u32();
}

/// Why an extension update failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    /// The server's answer for the extension app is unusable.
    #[error("update check: {0}")]
    Check(#[from] CheckError),
    /// The offered version is on this extension's deny list.
    #[error("version {0} is on the extension's deny list (it failed before)")]
    DenyListed(String),
    /// The extension is pinned to another version.
    #[error("the extension is pinned to version {pinned}; {offered} is not installed")]
    Pinned {
        /// `pin_version`.
        pinned: String,
        /// The offered version.
        offered: String,
    },
    /// The offer is older than the active version and the server did not mark it a rollback.
    #[error("refusing downgrade from {active} to {offered}: the server did not mark it a rollback")]
    Downgrade {
        /// Active version.
        active: String,
        /// Offered version.
        offered: String,
    },
    /// The offered version cannot name a file.
    #[error(
        "offered version {0:?} is not usable in a file name (A-Z a-z 0-9 . _ + ~ -, at most 64)"
    )]
    BadVersion(String),
    /// The build does not support the OS version it must run on.
    #[error("build {version} does not support OS {os_version}: {reason}")]
    UnsupportedOs {
        /// The offered version.
        version: String,
        /// The OS version it must run on.
        os_version: String,
        /// What the manifest says.
        reason: String,
    },
    /// Downloading or verifying the payload failed (same errors and codes as OS payloads).
    #[error(transparent)]
    Download(#[from] InstallError),
    /// An image or link operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `NAME.raw` exists and is not a link the agent manages.
    #[error(
        "{} is not a symlink the agent manages ({reason}); remove it or set enabled = false for this extension",
        path.display()
    )]
    NotManaged {
        /// The link path.
        path: PathBuf,
        /// What it is.
        reason: String,
    },
    /// The refresh command failed.
    #[error("refresh command {command:?} {result}")]
    Refresh {
        /// The command.
        command: Vec<String>,
        /// How it ended.
        result: CommandResult,
    },
    /// A unit restart failed.
    #[error(transparent)]
    Restart(#[from] SystemdError),
    /// The health command failed.
    #[error("health command {command:?} {result}")]
    Health {
        /// The command.
        command: Vec<String>,
        /// How it ended.
        result: CommandResult,
    },
    /// The extension state could not be saved.
    #[error(transparent)]
    State(#[from] StateError),
}

impl ExtensionError {
    /// The code reported for this error: update_engine's where one fits, else [`codes`].
    pub fn code(&self) -> ErrorCode {
        match self {
            ExtensionError::Check(e) => e.code(),
            ExtensionError::DenyListed(_)
            | ExtensionError::Pinned { .. }
            | ExtensionError::Downgrade { .. } => ErrorCode::OmahaUpdateIgnoredPerPolicy,
            ExtensionError::BadVersion(_) => ErrorCode::OmahaResponseHandlerError,
            ExtensionError::UnsupportedOs { .. } => ErrorCode::Other(codes::UNSUPPORTED_OS),
            ExtensionError::Download(e) => e.code(),
            ExtensionError::Io { .. } | ExtensionError::NotManaged { .. } => {
                ErrorCode::Other(codes::ACTIVATION_FAILED)
            }
            ExtensionError::Refresh { .. } => ErrorCode::Other(codes::REFRESH_FAILED),
            ExtensionError::Restart(_) => ErrorCode::Other(codes::RESTART_FAILED),
            ExtensionError::Health { .. } => ErrorCode::Other(codes::HEALTH_FAILED),
            ExtensionError::State(_) => ErrorCode::DownloadStateInitializationError,
        }
    }

    /// A refusal (policy, or a build for another OS): never deny-listed; the build may fit
    /// later (after the OS update, or once unpinned). See [`Self::reported_as_failure`].
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ExtensionError::DenyListed(_)
                | ExtensionError::Pinned { .. }
                | ExtensionError::Downgrade { .. }
                | ExtensionError::UnsupportedOs { .. }
        )
    }

    /// Whether the server hears it as a failure (`3/0`) rather than a deferral (`3/9`): every
    /// error except the local policies `pin_version` and downgrade. A build for another OS and
    /// a deny-listed build are failures of that build for this host: the server records the
    /// error, counts it against the rollout and releases the grant, so the next published build
    /// is offered (a `3/9` would leave the grant in flight and the same build re-served).
    pub fn reported_as_failure(&self) -> bool {
        !matches!(
            self,
            ExtensionError::Pinned { .. } | ExtensionError::Downgrade { .. }
        )
    }

    /// A failure of the build once activated (refresh, restart, health): its version is
    /// deny-listed after the rollback.
    pub fn is_activation_failure(&self) -> bool {
        matches!(
            self,
            ExtensionError::Refresh { .. }
                | ExtensionError::Restart(_)
                | ExtensionError::Health { .. }
        )
    }
}

/// Shorthand for an [`ExtensionError::Io`] mapper.
pub(super) fn io(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> ExtensionError {
    let path = path.to_owned();
    move |source| ExtensionError::Io { what, path, source }
}
