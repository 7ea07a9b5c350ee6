//! Activation of an extension image, as a sequence of named steps in one place:
//!
//! 1. [`Activator::switch`]: `NAME.raw` is pointed at the image (atomic symlink switch);
//! 2. [`Activator::refresh`]: the refresh command (`systemd-sysext refresh`) re-merges `/usr`;
//! 3. [`Activator::restart_units`]: systemd reloads its unit files, then each configured unit is
//!    restarted through systemd's D-Bus API and must come back `active`;
//! 4. [`Activator::health`]: the health command must exit 0.
//!
//! [`Activator::rollback`] runs 1–3 for the previous image (or removes the link when there is
//! none) and collects what failed, so a rollback always runs to its end.

use std::path::Path;
use std::time::Duration;

use super::error::ExtensionError;
use super::images::switch_link;
use super::systemd::{Systemd, SystemdError};
use crate::config::extensions::{ExtensionSettings, ExtensionsSettings};
use crate::health::{self, CommandResult};

/// What activation needs.
pub struct Activator<'a> {
    /// Global settings (refresh command, image directory).
    pub settings: &'a ExtensionsSettings,
    /// systemd, when the agent has a bus connection.
    pub systemd: Option<&'a Systemd>,
}

async fn run(argv: Vec<String>, timeout: Duration) -> CommandResult {
    match tokio::task::spawn_blocking(move || health::run(&argv, timeout)).await {
        Ok(r) => r,
        Err(e) => CommandResult::NotStarted {
            reason: format!("the command thread failed: {e}"),
        },
    }
}

impl Activator<'_> {
    /// Step 1: `NAME.raw` → `image` (`None`: no link).
    pub fn switch(
        &self,
        ext: &ExtensionSettings,
        image: Option<&Path>,
    ) -> Result<(), ExtensionError> {
        switch_link(&ext.install_dir, &ext.name, image)?;
        tracing::info!(extension = %ext.name, image = ?image, "extension link switched");
        Ok(())
    }

    /// Step 2: the refresh command.
    pub async fn refresh(&self) -> Result<(), ExtensionError> {
        let command = self.settings.sysext_refresh_command.clone();
        match run(command.clone(), self.settings.refresh_timeout).await {
            CommandResult::Passed => Ok(()),
            result => Err(ExtensionError::Refresh { command, result }),
        }
    }

    /// Step 3: reloads systemd's unit files (a unit the extension ships or changes), then
    /// restarts every unit, in order; the first failure stops. Nothing without units.
    pub async fn restart_units(&self, ext: &ExtensionSettings) -> Result<(), ExtensionError> {
        let Some(first) = ext.restart_units.first() else {
            return Ok(());
        };
        let Some(systemd) = self.systemd else {
            return Err(SystemdError::NoBus {
                unit: first.clone(),
            }
            .into());
        };
        systemd.reload(first).await?;
        for unit in &ext.restart_units {
            systemd.restart_unit(unit, ext.restart_timeout).await?;
        }
        Ok(())
    }

    /// Step 4: the health command, if configured.
    pub async fn health(&self, ext: &ExtensionSettings) -> Result<(), ExtensionError> {
        let Some(command) = ext.health_command.clone() else {
            return Ok(());
        };
        match run(command.clone(), ext.health_timeout).await {
            CommandResult::Passed => Ok(()),
            result => Err(ExtensionError::Health { command, result }),
        }
    }

    /// Steps 1–4 for `image`.
    pub async fn activate(
        &self,
        ext: &ExtensionSettings,
        image: &Path,
    ) -> Result<(), ExtensionError> {
        self.switch(ext, Some(image))?;
        self.refresh().await?;
        self.restart_units(ext).await?;
        self.health(ext).await
    }

    /// Steps 1–3 for `previous` (or no image); every step runs, failures are returned as text.
    pub async fn rollback(&self, ext: &ExtensionSettings, previous: Option<&Path>) -> Vec<String> {
        let mut failures = Vec::new();
        if let Err(e) = self.switch(ext, previous) {
            failures.push(e.to_string());
        }
        if let Err(e) = self.refresh().await {
            failures.push(e.to_string());
        }
        let Some(first) = ext.restart_units.first() else {
            return failures;
        };
        let Some(systemd) = self.systemd else {
            failures.push(
                SystemdError::NoBus {
                    unit: first.clone(),
                }
                .to_string(),
            );
            return failures;
        };
        if let Err(e) = systemd.reload(first).await {
            failures.push(e.to_string());
        }
        for unit in &ext.restart_units {
            if let Err(e) = systemd.restart_unit(unit, ext.restart_timeout).await {
                failures.push(e.to_string());
            }
        }
        failures
    }
}
