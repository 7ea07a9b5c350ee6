//! Answers to an update check: each extension's `<app>` is read; an offer passes the policy
//! checks (version, deny list, pin, downgrade), is downloaded and verified, then staged or
//! activated (`install.rs`); refusals are remembered and reported.

use std::cmp::Ordering;

use omaha::{EventRequest, Response};

use super::download::{DownloadRequest, download};
use super::state::{ExtensionRecord, Refused};
use super::{
    ExtensionError, ExtensionOutcome, ExtensionSettings, Extensions, NOTHING_INSTALLED, Outcome,
    now_error, supports,
};
use crate::omaha_client::{self, Offer, reported};
use crate::version;

impl Extensions {
    /// A request with only the extension apps, sent and handled (see [`Self::handle_response`]).
    pub async fn check(
        &mut self,
        target_os: Option<&str>,
        interactive: bool,
    ) -> Result<Vec<ExtensionOutcome>, omaha_client::CheckError> {
        let apps = self.app_requests(target_os);
        if apps.is_empty() {
            return Ok(Vec::new());
        }
        let req = omaha_client::multi_app_request(&self.env.identity, apps, interactive);
        let resp = self.env.omaha.send(&req).await?;
        Ok(self.handle_response(&resp, target_os).await)
    }

    /// Handles every enabled extension's `<app>` of `resp` (the answer to a request that carried
    /// [`Self::app_requests`] with the same `target_os`).
    pub async fn handle_response(
        &mut self,
        resp: &Response,
        target_os: Option<&str>,
    ) -> Vec<ExtensionOutcome> {
        if target_os.is_none() {
            self.cancel_next_boot().await;
        }
        let exts: Vec<ExtensionSettings> = self.settings.enabled().cloned().collect();
        let mut out = Vec::new();
        for ext in exts {
            let outcome = match omaha_client::interpret(resp, &ext.app_id) {
                Err(e) => {
                    tracing::warn!(extension = %ext.name, error = %e, "extension update check failed");
                    Outcome::CheckFailed {
                        code: e.code().to_u32(),
                        message: e.to_string(),
                    }
                }
                Ok(answer) => {
                    let mut rec = self.record(&ext.name);
                    if rec.pending_completion.take().is_some() {
                        self.save_logged(&ext.name, rec);
                    }
                    match answer.offer {
                        None => Outcome::NoUpdate,
                        Some(offer) => self.handle_offer(&ext, &offer, target_os).await,
                    }
                }
            };
            out.push(ExtensionOutcome {
                name: ext.name.clone(),
                outcome,
            });
        }
        out
    }

    /// Policy checks before anything is downloaded.
    fn check_policy(
        &self,
        ext: &ExtensionSettings,
        rec: &ExtensionRecord,
        offer: &Offer,
    ) -> Result<(), ExtensionError> {
        if !crate::config::extensions::valid_version(&offer.version) {
            return Err(ExtensionError::BadVersion(offer.version.clone()));
        }
        if rec.deny_list.contains(&offer.version) {
            return Err(ExtensionError::DenyListed(offer.version.clone()));
        }
        if let Some(pin) = ext.pin_version.as_ref().filter(|p| **p != offer.version) {
            return Err(ExtensionError::Pinned {
                pinned: pin.clone(),
                offered: offer.version.clone(),
            });
        }
        if let Some(active) = &rec.active
            && version::compare(&offer.version, &active.version) == Ordering::Less
            && !offer.rollback
        {
            return Err(ExtensionError::Downgrade {
                active: active.version.clone(),
                offered: offer.version.clone(),
            });
        }
        Ok(())
    }

    async fn handle_offer(
        &mut self,
        ext: &ExtensionSettings,
        offer: &Offer,
        target_os: Option<&str>,
    ) -> Outcome {
        let os = self.os_for(target_os).to_owned();
        let mut rec = self.record(&ext.name);
        let current = rec
            .active
            .as_ref()
            .map_or(NOTHING_INSTALLED.to_owned(), |i| i.version.clone());
        let staged_same = rec.next_boot.as_ref().is_some_and(|n| {
            n.image.version == offer.version && Some(n.os_version.as_str()) == target_os
        });
        let active_same = rec.active.as_ref().is_some_and(|a| {
            a.version == offer.version && (target_os.is_none() || supports(a, &os))
        });
        if staged_same || active_same {
            return Outcome::NoUpdate;
        }
        if let Some(r) = rec
            .refused
            .clone()
            .filter(|r| r.version == offer.version && r.os_version == os)
        {
            // Known: not downloaded again, but reported again so the server's grant settles.
            let code = omaha::ErrorCode::from_u32(r.code);
            let ev = if r.failure {
                EventRequest::error(reported(code))
            } else {
                EventRequest::deferred(reported(code))
            };
            self.send_event(ext, &current, &os, ev).await;
            return Outcome::Refused {
                version: offer.version.clone(),
                reason: r.reason,
            };
        }
        if let Err(e) = self.check_policy(ext, &rec, offer) {
            return self.refuse(ext, rec, offer, &os, &current, e).await;
        }
        let trust = match crate::install::compat::load_trust(&self.env.trusted_keys_dir) {
            Ok(t) => t,
            Err(e) => {
                return self
                    .fail_download(ext, &offer.version, &current, &os, e.into())
                    .await;
            }
        };
        tracing::info!(extension = %ext.name, version = %offer.version, os_version = %os, "extension update offered");
        self.send_event(ext, &current, &os, EventRequest::download_started())
            .await;
        let image = {
            let req = DownloadRequest {
                http: &self.env.http,
                trust: &trust,
                offer,
                name: &ext.name,
                app_id: &ext.app_id,
                identity: &self.env.identity,
                os_version: &os,
                image_dir: &self.settings.image_dir,
                now_unix: payloads::unix_now(),
            };
            download(&req).await
        };
        let image = match image {
            Ok(i) => i,
            Err(e) if e.is_refusal() => {
                return self.refuse(ext, rec, offer, &os, &current, e).await;
            }
            Err(e) => {
                return self
                    .fail_download(ext, &offer.version, &current, &os, e)
                    .await;
            }
        };
        rec.files.insert(image.file.clone());
        rec.refused = None;
        self.save_logged(&ext.name, rec.clone());
        self.send_event(ext, &current, &os, EventRequest::download_finished())
            .await;
        self.ensure_systemd().await;
        match target_os {
            Some(t) => self.stage(ext, rec, image, t, &current).await,
            None => self.activate(ext, rec, image, &current).await,
        }
    }

    /// A refusal: remembered (not downloaded again for the same OS), reported as 3/0 or 3/9
    /// (see [`ExtensionError::reported_as_failure`]).
    async fn refuse(
        &mut self,
        ext: &ExtensionSettings,
        mut rec: ExtensionRecord,
        offer: &Offer,
        os: &str,
        current: &str,
        e: ExtensionError,
    ) -> Outcome {
        tracing::warn!(extension = %ext.name, version = %offer.version, reason = %e, "extension update refused");
        let code = e.code();
        let failure = e.reported_as_failure();
        rec.refused = Some(Refused {
            version: offer.version.clone(),
            os_version: os.to_owned(),
            reason: e.to_string(),
            code: code.to_u32(),
            failure,
        });
        rec.last_error = Some(now_error(code.to_u32(), e.to_string()));
        self.save_logged(&ext.name, rec);
        let ev = if failure {
            EventRequest::error(reported(code))
        } else {
            EventRequest::deferred(reported(code))
        };
        self.send_event(ext, current, os, ev).await;
        Outcome::Refused {
            version: offer.version.clone(),
            reason: e.to_string(),
        }
    }

    /// A failed download: nothing was activated; reported as 3/0, not deny-listed.
    pub(super) async fn fail_download(
        &mut self,
        ext: &ExtensionSettings,
        version: &str,
        current: &str,
        os: &str,
        e: ExtensionError,
    ) -> Outcome {
        tracing::error!(extension = %ext.name, version, error = %e, "extension download failed");
        let code = e.code();
        let mut rec = self.record(&ext.name);
        rec.last_error = Some(now_error(code.to_u32(), e.to_string()));
        let active = rec.active.as_ref().map(|i| i.version.clone());
        self.save_logged(&ext.name, rec);
        self.send_event(ext, current, os, EventRequest::error(reported(code)))
            .await;
        Outcome::Failed {
            version: version.to_owned(),
            code: code.to_u32(),
            message: e.to_string(),
            rolled_back_to: active,
        }
    }
}
