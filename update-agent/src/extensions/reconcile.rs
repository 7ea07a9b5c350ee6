//! At agent start: what a reboot or a crash left behind is finished: a build staged for the OS
//! that booted is promoted, the active image is restored after an OS rollback, an interrupted
//! activation is undone.

use omaha::EventRequest;

use super::state::{ExtensionRecord, NextBoot};
use super::{
    ExtensionOutcome, ExtensionSettings, Extensions, NOTHING_INSTALLED, Outcome, now_error,
    supports,
};
use crate::omaha_client::reported;

impl Extensions {
    /// At agent start: finishes what a reboot or a crash left behind (see the module
    /// documentation). Events go out with the next check ([`Self::app_requests`]) or at once.
    pub async fn reconcile(&mut self) -> Vec<ExtensionOutcome> {
        let pending = self.state.extensions.values().any(|r| {
            r.activating.is_some()
                || r.next_boot
                    .as_ref()
                    .is_some_and(|n| n.boot_id != self.env.identity.boot_id)
        });
        if pending {
            self.ensure_systemd().await;
        }
        let exts: Vec<ExtensionSettings> = self.settings.enabled().cloned().collect();
        let mut out = Vec::new();
        for ext in exts {
            let rec = self.record(&ext.name);
            if rec.activating.is_some() {
                out.push(ExtensionOutcome {
                    name: ext.name.clone(),
                    outcome: self.undo_interrupted(&ext, rec).await,
                });
                continue;
            }
            let Some(nb) = rec.next_boot.clone() else {
                continue;
            };
            if nb.boot_id == self.env.identity.boot_id {
                continue;
            }
            let outcome = if nb.os_version == self.env.identity.os_version {
                self.promote(&ext, rec, nb).await
            } else {
                self.restore(&ext, rec, &nb).await
            };
            out.push(ExtensionOutcome {
                name: ext.name.clone(),
                outcome,
            });
        }
        out
    }

    /// An activation was interrupted (crash, kill): the previous image is linked again and the
    /// units restarted; the version may be offered again (it is not deny-listed).
    async fn undo_interrupted(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
    ) -> Outcome {
        let version = rec
            .activating
            .take()
            .map(|a| a.image.version)
            .unwrap_or_default();
        tracing::warn!(extension = %ext.name, version = %version, "extension activation was interrupted; restoring the active image");
        let active = rec.active.as_ref().map(|i| self.image_path(i));
        let failures = self.activator().rollback(ext, active.as_deref()).await;
        if !failures.is_empty() {
            tracing::error!(extension = %ext.name, failures = ?failures, "restoring the active extension image was incomplete");
        }
        self.cleanup(&mut rec);
        let restored = rec.active.as_ref().map(|i| i.version.clone());
        self.save_logged(&ext.name, rec);
        Outcome::Restored { version: restored }
    }

    /// Booted into the OS a build was staged for: the boot merged it; it becomes active after a
    /// refresh and the health command (a failure rolls back to the previous image when that one
    /// supports the booted OS, and deny-lists the version).
    async fn promote(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        nb: NextBoot,
    ) -> Outcome {
        let os = self.env.identity.os_version.clone();
        let prev_version = rec.active.as_ref().map(|i| i.version.clone());
        rec.previous = rec.active.take();
        rec.active = Some(nb.image.clone());
        rec.next_boot = None;
        rec.pending_completion = Some(prev_version.clone().unwrap_or(NOTHING_INSTALLED.into()));
        self.save_logged(&ext.name, rec.clone());
        let act = self.activator();
        let checked = match act.refresh().await {
            Ok(()) => act.health(ext).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(()) => {
                self.cleanup(&mut rec);
                self.save_logged(&ext.name, rec);
                tracing::info!(extension = %ext.name, version = %nb.image.version, "extension build staged for this OS is active");
                Outcome::Activated {
                    version: nb.image.version,
                    previous: prev_version,
                }
            }
            Err(e) => {
                let failed = rec.active.take().unwrap_or(nb.image);
                rec.pending_completion = None;
                match rec.previous.take() {
                    Some(p) if supports(&p, &os) => rec.active = Some(p),
                    other => {
                        // Nothing better to go back to: keep the build the boot merged.
                        rec.previous = other;
                        rec.active = Some(failed.clone());
                        rec.deny_list.insert(failed.version.clone());
                        let code = e.code();
                        rec.last_error = Some(now_error(code.to_u32(), e.to_string()));
                        self.save_logged(&ext.name, rec);
                        self.send_event(
                            ext,
                            &failed.version,
                            &os,
                            EventRequest::error(reported(code)),
                        )
                        .await;
                        return Outcome::Failed {
                            version: failed.version.clone(),
                            code: code.to_u32(),
                            message: format!("{e}; no previous build supports OS {os}"),
                            rolled_back_to: None,
                        };
                    }
                }
                let current = failed.version.clone();
                self.roll_back(ext, rec, failed, &current, &os, e).await
            }
        }
    }

    /// Booted into another OS than the one a build was staged for (the OS update rolled back
    /// or was replaced): the active image is linked again, refreshed and its units restarted.
    async fn restore(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        nb: &NextBoot,
    ) -> Outcome {
        tracing::warn!(extension = %ext.name, staged = %nb.image.version, staged_for = %nb.os_version,
            booted = %self.env.identity.os_version, "booted another OS than the extension build was staged for; restoring");
        let active = rec.active.as_ref().map(|i| self.image_path(i));
        let failures = self.activator().rollback(ext, active.as_deref()).await;
        if !failures.is_empty() {
            tracing::error!(extension = %ext.name, failures = ?failures, "restoring the extension image was incomplete");
        }
        rec.next_boot = None;
        self.cleanup(&mut rec);
        let version = rec.active.as_ref().map(|i| i.version.clone());
        self.save_logged(&ext.name, rec);
        Outcome::Restored { version }
    }
}
