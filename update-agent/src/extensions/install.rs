//! Putting a downloaded build in place: staged for the next boot while an OS update waits for
//! its reboot, else activated at once and rolled back when activation fails; a staged build is
//! dropped again when its OS update is no longer staged.

use omaha::EventRequest;

use super::state::{Activating, ExtensionRecord, Image, NextBoot};
use super::{
    ExtensionError, ExtensionSettings, Extensions, NOTHING_INSTALLED, Outcome, images, now_error,
};
use crate::omaha_client::reported;

impl Extensions {
    /// Coupled with a staged OS update: `NAME.raw` points at the new build for the next boot
    /// (no refresh: the running system keeps its merged image). Reported as 3/1.
    pub(super) async fn stage(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        image: Image,
        target_os: &str,
        current: &str,
    ) -> Outcome {
        let path = self.image_path(&image);
        if let Err(e) = self.activator().switch(ext, Some(&path)) {
            let _ = images::remove_image(&self.settings.image_dir, &image.file);
            rec.files.remove(&image.file);
            self.save_logged(&ext.name, rec);
            return self
                .fail_download(ext, &image.version, current, target_os, e)
                .await;
        }
        let version = image.version.clone();
        rec.next_boot = Some(NextBoot {
            image,
            os_version: target_os.to_owned(),
            boot_id: self.env.identity.boot_id.clone(),
        });
        rec.last_error = None;
        self.cleanup(&mut rec);
        self.save_logged(&ext.name, rec);
        tracing::info!(extension = %ext.name, version = %version, os_version = target_os,
            "extension build staged for the next boot");
        self.send_event(ext, current, target_os, EventRequest::update_installed())
            .await;
        Outcome::Staged {
            version,
            os_version: target_os.to_owned(),
        }
    }

    /// Activates `image` now; any failure rolls back (see [`activate`]).
    pub(super) async fn activate(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        image: Image,
        current: &str,
    ) -> Outcome {
        let os = self.env.identity.os_version.clone();
        rec.activating = Some(Activating {
            image: image.clone(),
        });
        self.save_logged(&ext.name, rec.clone());
        let path = self.image_path(&image);
        let result = self.activator().activate(ext, &path).await;
        rec.activating = None;
        match result {
            Ok(()) => {
                let previous = rec.active.take();
                let prev_version = previous.as_ref().map(|p| p.version.clone());
                rec.previous = previous;
                rec.active = Some(image.clone());
                rec.last_error = None;
                self.cleanup(&mut rec);
                rec.pending_completion =
                    Some(prev_version.clone().unwrap_or(NOTHING_INSTALLED.into()));
                self.save_logged(&ext.name, rec.clone());
                tracing::info!(extension = %ext.name, version = %image.version, previous = ?prev_version,
                    "extension update active");
                let ev =
                    EventRequest::rebooted(prev_version.as_deref().unwrap_or(NOTHING_INSTALLED));
                if self.send_event(ext, &image.version, &os, ev).await {
                    rec.pending_completion = None;
                    self.save_logged(&ext.name, rec);
                }
                Outcome::Activated {
                    version: image.version,
                    previous: prev_version,
                }
            }
            Err(e) => self.roll_back(ext, rec, image, current, &os, e).await,
        }
    }

    /// After a failed activation: previous image back (link, refresh, restart), 3/0, and the
    /// version deny-listed when the build itself failed (refresh, restart, health).
    pub(super) async fn roll_back(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        image: Image,
        current: &str,
        os: &str,
        e: ExtensionError,
    ) -> Outcome {
        tracing::error!(extension = %ext.name, version = %image.version, error = %e,
            "extension activation failed; rolling back");
        let previous = rec.active.as_ref().map(|i| self.image_path(i));
        let failures = self.activator().rollback(ext, previous.as_deref()).await;
        let mut message = e.to_string();
        if !failures.is_empty() {
            message = format!("{message}; rollback: {}", failures.join("; "));
            tracing::error!(extension = %ext.name, failures = ?failures, "extension rollback incomplete");
        }
        if e.is_activation_failure() {
            rec.deny_list.insert(image.version.clone());
        }
        let code = e.code();
        rec.last_error = Some(now_error(code.to_u32(), message.clone()));
        self.cleanup(&mut rec);
        let rolled_back_to = rec.active.as_ref().map(|i| i.version.clone());
        self.save_logged(&ext.name, rec);
        self.send_event(ext, current, os, EventRequest::error(reported(code)))
            .await;
        Outcome::Failed {
            version: image.version,
            code: code.to_u32(),
            message,
            rolled_back_to,
        }
    }

    /// The OS update is no longer staged in this boot: builds linked for it are unlinked again
    /// (the running system never merged them, so no refresh is needed).
    pub(super) async fn cancel_next_boot(&mut self) {
        let boot = self.env.identity.boot_id.clone();
        let exts: Vec<ExtensionSettings> = self.settings.enabled().cloned().collect();
        for ext in exts {
            let mut rec = self.record(&ext.name);
            if rec.next_boot.as_ref().is_none_or(|n| n.boot_id != boot) {
                continue;
            }
            let active = rec.active.as_ref().map(|i| self.image_path(i));
            if let Err(e) = self.activator().switch(&ext, active.as_deref()) {
                tracing::error!(extension = %ext.name, error = %e, "cannot unlink the build staged for a cancelled OS update");
                continue;
            }
            tracing::info!(extension = %ext.name, "OS update no longer staged; staged extension build dropped");
            rec.next_boot = None;
            self.cleanup(&mut rec);
            self.save_logged(&ext.name, rec);
        }
    }
}
