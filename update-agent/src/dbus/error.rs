//! Errors of `org.platte.Update1` methods, as named D-Bus errors: `org.platte.Update1.Error.*`,
//! and the standard `org.freedesktop.DBus.Error.AccessDenied` for callers that are not root.

use zbus::message::{Header, Message};
use zbus::names::ErrorName;

use crate::agent::CommandError;

/// Prefix of Platte's own error names.
pub const ERROR_PREFIX: &str = "org.platte.Update1.Error";

/// A method of `org.platte.Update1` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The caller is not root (`org.freedesktop.DBus.Error.AccessDenied`).
    #[error("{0}")]
    AccessDenied(String),
    /// `RebootNow` without a staged update (`org.platte.Update1.Error.NothingStaged`).
    #[error("{0}")]
    NothingStaged(String),
    /// A check or install is running (`org.platte.Update1.Error.Busy`).
    #[error("{0}")]
    Busy(String),
    /// `RebootNow` while runtime extensions are not ready for the staged OS version
    /// (`org.platte.Update1.Error.WaitingForExtensions`).
    #[error("{0}")]
    WaitingForExtensions(String),
    /// `ClearDenyList` of a version not on the list (`org.platte.Update1.Error.NotDenyListed`).
    #[error("{0}")]
    NotDenyListed(String),
    /// Anything else (`org.platte.Update1.Error.Failed`).
    #[error("{0}")]
    Failed(String),
}

impl UpdateError {
    /// The D-Bus error name.
    pub fn error_name(&self) -> &'static str {
        match self {
            UpdateError::AccessDenied(_) => "org.freedesktop.DBus.Error.AccessDenied",
            UpdateError::NothingStaged(_) => "org.platte.Update1.Error.NothingStaged",
            UpdateError::Busy(_) => "org.platte.Update1.Error.Busy",
            UpdateError::WaitingForExtensions(_) => "org.platte.Update1.Error.WaitingForExtensions",
            UpdateError::NotDenyListed(_) => "org.platte.Update1.Error.NotDenyListed",
            UpdateError::Failed(_) => "org.platte.Update1.Error.Failed",
        }
    }

    fn message(&self) -> &str {
        match self {
            UpdateError::AccessDenied(m)
            | UpdateError::NothingStaged(m)
            | UpdateError::Busy(m)
            | UpdateError::WaitingForExtensions(m)
            | UpdateError::NotDenyListed(m)
            | UpdateError::Failed(m) => m,
        }
    }
}

impl From<CommandError> for UpdateError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Busy => UpdateError::Busy(e.to_string()),
            CommandError::NotDenyListed(_) => UpdateError::NotDenyListed(e.to_string()),
            CommandError::Boot(_) | CommandError::State(_) | CommandError::Stopped => {
                UpdateError::Failed(e.to_string())
            }
        }
    }
}

impl From<zbus::Error> for UpdateError {
    fn from(e: zbus::Error) -> Self {
        UpdateError::Failed(format!("D-Bus: {e}"))
    }
}

impl zbus::DBusError for UpdateError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        Message::error(call, self.error_name())?.build(&(self.message(),))
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(self.error_name())
    }

    fn description(&self) -> Option<&str> {
        Some(self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_prefixed() {
        for e in [
            UpdateError::NothingStaged(String::new()),
            UpdateError::Busy(String::new()),
            UpdateError::WaitingForExtensions(String::new()),
            UpdateError::NotDenyListed(String::new()),
            UpdateError::Failed(String::new()),
        ] {
            assert!(e.error_name().starts_with(ERROR_PREFIX));
            assert!(ErrorName::try_from(e.error_name()).is_ok());
        }
        assert!(ErrorName::try_from(UpdateError::AccessDenied(String::new()).error_name()).is_ok());
        assert_eq!(
            UpdateError::from(CommandError::Busy).error_name(),
            "org.platte.Update1.Error.Busy"
        );
    }
}
