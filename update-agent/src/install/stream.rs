//! Step 3 of the install: download attempts over the offer's URLs, each streaming the payload
//! (from byte 0, or resuming from a checkpoint with HTTP `Range`) through the applier.
//!
//! Every attempt hands the applier the active slot, read-only, as a delta's source (a full
//! payload leaves it unread); a delta that does not apply to it ends the install at once, its
//! checkpoint dropped, whatever URLs are left.
//!
//! URLs are tried in the order of the Omaha answer. A URL is left for the next one after
//! `attempts_per_url` transient failures (transport errors, 5xx, 408, 429: retried after 1 s,
//! 2 s, 4 s … at most 30 s), at once on any other HTTP status (404, 403 …: that URL will not
//! serve it), and at once when it served a bad payload (its checkpoint is dropped). A checkpoint
//! on which `start_over_after` attempts failed is dropped and the download starts from byte 0.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use payloads::{Applier, ApplyError, ApplyOptions, TrustStore};
use reqwest::StatusCode;
use reqwest::header::RANGE;
use url::Url;

use super::download::{self, Worker, transfer};
use super::hasher::ResumableSha256;
use super::{InstallError, Installer, Observer, PayloadKind, ResumeRecord, Streamed, compat};
use crate::boot::TargetSlot;
use crate::omaha_client::Offer;

/// Largest prefix re-fetched when resuming (the applier bounds it far lower).
const MAX_PREFIX: u64 = 64 << 20;
/// Wait before the first retry within an install; doubled per retry, at most [`MAX_RETRY_DELAY`].
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between retries within an install.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Tries the URLs in order (see the module documentation), resuming from the last checkpoint
/// on each attempt.
pub(super) async fn stream_payload<O: Observer>(
    inst: &Installer<'_>,
    offer: &Offer,
    trust: &TrustStore,
    target: &TargetSlot,
    resume: Option<ResumeRecord>,
    obs: &mut O,
) -> Result<Streamed, InstallError> {
    let cfg = &inst.settings.install;
    let mut rec = resume.filter(|r| r.matches(offer, target.slot()));
    if rec.is_none() {
        obs.save_resume(None)?;
    }
    let mut last: Option<InstallError> = None;
    let mut retries = 0u32;
    // Bytes servers ignoring `Range` sent again, over all attempts.
    let mut discarded = 0u64;
    for url in &offer.urls {
        let mut attempt = 0;
        while attempt < cfg.attempts_per_url {
            if rec
                .as_ref()
                .is_some_and(|r| r.failures >= cfg.start_over_after)
            {
                tracing::warn!(version = %offer.version, "too many failures on the same checkpoint; starting the download over");
                rec = None;
                obs.save_resume(None)?;
            }
            match attempt_once(
                inst,
                url,
                offer,
                trust,
                target,
                &mut rec,
                obs,
                &mut discarded,
            )
            .await
            {
                Ok(s) => return Ok(s),
                Err(InstallError::Apply(ApplyError::InvalidCheckpoint { reason })) => {
                    tracing::warn!(%reason, "checkpoint unusable; starting the download over");
                    rec = None;
                    obs.save_resume(None)?;
                    // Not counted: the next attempt starts from byte 0.
                    continue;
                }
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    if let Some(r) = rec.as_mut() {
                        r.failures += 1;
                        obs.save_resume(Some(r))?;
                    }
                    let delay = RETRY_DELAY
                        .checked_mul(1 << retries.min(5))
                        .unwrap_or(MAX_RETRY_DELAY)
                        .min(MAX_RETRY_DELAY);
                    retries += 1;
                    let retry = attempt < cfg.attempts_per_url;
                    if retry {
                        tracing::warn!(url = %url, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "download attempt failed; retrying");
                    } else {
                        tracing::warn!(url = %url, attempt, error = %e, "download attempt failed; giving up on this URL");
                    }
                    last = Some(e);
                    if retry {
                        tokio::time::sleep(delay).await;
                    }
                }
                Err(e @ InstallError::HttpStatus { .. }) => {
                    // Not found, forbidden …: this URL will not serve the payload; try the next.
                    tracing::warn!(url = %url, error = %e, "download URL refused; trying the next one");
                    last = Some(e);
                    break;
                }
                Err(e) if e.is_source_mismatch() => {
                    // Another URL serves the same delta, and the active slot stays what it is:
                    // only the full payload helps (the next check asks for it).
                    tracing::error!(url = %url, error = %e, "delta payload does not apply to the active slot");
                    obs.save_resume(None)?;
                    return Err(e);
                }
                Err(e) if e.is_bad_payload() => {
                    tracing::error!(url = %url, error = %e, "payload rejected");
                    rec = None;
                    obs.save_resume(None)?;
                    last = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Err(match last {
        Some(e) if offer.urls.len() > 1 => InstallError::AllUrlsFailed(Box::new(e)),
        Some(e) => e,
        None => InstallError::Transfer {
            url: String::new(),
            detail: "no download URL".into(),
        },
    })
}

/// Fetches payload bytes `start..end` exactly (for the prefix of a resumed download).
async fn fetch_exact(
    http: &reqwest::Client,
    url: &Url,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, InstallError> {
    let want = end.saturating_sub(start);
    if want > MAX_PREFIX {
        return Err(InstallError::Apply(ApplyError::InvalidCheckpoint {
            reason: format!("prefix of {want} bytes is implausibly large"),
        }));
    }
    let resp = http
        .get(url.clone())
        .header(RANGE, format!("bytes={start}-{}", end.saturating_sub(1)))
        .send()
        .await
        .map_err(|e| transfer(url, e))?;
    let status = resp.status();
    if status != StatusCode::PARTIAL_CONTENT && status != StatusCode::OK {
        return Err(InstallError::HttpStatus {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    // A server ignoring Range sends everything from 0: keep only what is needed.
    let skip = if status == StatusCode::OK { start } else { 0 };
    let mut out = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    let mut seen = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transfer(url, e))?;
        let lo = skip.saturating_sub(seen).min(chunk.len() as u64) as usize;
        seen += chunk.len() as u64;
        let room = usize::try_from(want).unwrap_or(usize::MAX) - out.len();
        let part = &chunk[lo..];
        out.extend_from_slice(&part[..part.len().min(room)]);
        if out.len() as u64 == want {
            return Ok(out);
        }
    }
    Err(transfer(
        url,
        format!(
            "connection closed after {} of {want} prefix bytes",
            out.len()
        ),
    ))
}

/// One download attempt from `url`, continuing from `rec` when it is set. Bytes a server that
/// ignored `Range` sent again are added to `discarded`.
#[allow(clippy::too_many_arguments)]
async fn attempt_once<O: Observer>(
    inst: &Installer<'_>,
    url: &Url,
    offer: &Offer,
    trust: &TrustStore,
    target: &TargetSlot,
    rec: &mut Option<ResumeRecord>,
    obs: &mut O,
    discarded: &mut u64,
) -> Result<Streamed, InstallError> {
    let writer = inst.backend.open_target(target)?;
    let tgt = writer.into_target().map_err(InstallError::TargetOpen)?;
    // The active slot, read-only: what a delta copies from (a full payload leaves it unread).
    // Without it a full payload still applies, and a delta fails as a source mismatch.
    let source = inst
        .backend
        .open_source(target)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot open the active slot as a delta source; only a full payload can be applied"))
        .ok();
    let opts = ApplyOptions {
        now: inst.now_unix,
        expect: compat::expectations(offer, &inst.identity.os_version),
        sync: true,
    };
    let mut downloaded = 0u64;
    let (applier, hasher, start, resumed) = match rec.as_ref() {
        Some(r) => {
            let hasher = ResumableSha256::restore(&r.hash).ok_or_else(|| {
                InstallError::Apply(ApplyError::InvalidCheckpoint {
                    reason: "saved payload hash state is inconsistent".into(),
                })
            })?;
            if hasher.len() < r.applier.payload_offset || hasher.len() > offer.size {
                return Err(InstallError::Apply(ApplyError::InvalidCheckpoint {
                    reason: "saved payload hash does not cover the checkpoint".into(),
                }));
            }
            let prefix = fetch_exact(inst.http, url, 0, r.applier.prefix_len).await?;
            downloaded += prefix.len() as u64;
            let applier = match source {
                Some(src) => {
                    Applier::resume_with_source(trust, tgt, src, &r.applier, &prefix, opts)?
                }
                None => Applier::resume(trust, tgt, &r.applier, &prefix, opts)?,
            };
            if let Some(info) = applier.info() {
                let kind = PayloadKind::of(info);
                obs.payload_verified(&kind);
                compat::check_manifest(inst.identity, info)?;
                tracing::info!(
                    version = %offer.version,
                    offset = r.applier.payload_offset,
                    delta = kind.is_delta(),
                    "resuming download from checkpoint"
                );
            }
            (applier, hasher, r.applier.payload_offset, true)
        }
        None => (
            match source {
                Some(src) => Applier::with_source(trust, tgt, src, opts),
                None => Applier::new(trust, tgt, opts),
            },
            ResumableSha256::new(),
            0,
            false,
        ),
    };

    let (resp, skip) = download::open(inst.http, url, start, offer.size, &offer.version).await?;
    let mut body = download::incoming(resp, url, offer.size, start, skip, hasher);

    let interval = inst.settings.install.checkpoint_interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_saved = Instant::now();
    let mut saved = rec.as_ref().map(|r| r.applier.payload_offset);
    // The applier (operation hashes, slot writes) runs on its own thread, fed through a small
    // bounded queue, so receiving and hashing the stream overlap with writing the slot.
    let (size, identity, version) = (offer.size, inst.identity.clone(), offer.version.clone());
    // What the payload is, from the applier thread once its prefix is verified.
    let (kind_tx, kinds) = std::sync::mpsc::channel::<PayloadKind>();
    let worker = Worker::start(
        applier,
        Box::new(move |applier, payload_len| {
            let kind = applier.info().map(PayloadKind::of);
            if let Some(kind) = &kind {
                // The receiver lives as long as the download: a send cannot fail before it ends.
                let _ = kind_tx.send(kind.clone());
            }
            if payload_len != Some(size) {
                return Err(InstallError::SizeMismatch {
                    announced: size,
                    found: format!("the signed payload is {} bytes", payload_len.unwrap_or(0)),
                });
            }
            if let Some(info) = applier.info() {
                compat::check_manifest(&identity, info)?;
            }
            match kind {
                Some(PayloadKind::Delta { source_version }) => {
                    tracing::info!(version = %version, source_version = %source_version, "payload signature and manifest verified: a delta from the running version, reading the active slot")
                }
                _ => tracing::info!(version = %version, "payload signature and manifest verified"),
            }
            Ok(())
        }),
    );
    let result: Result<(), InstallError> = loop {
        let piece = tokio::select! {
            p = body.next() => p,
            _ = tick.tick() => {
                if last_saved.elapsed() >= interval {
                    if worker.failed() {
                        break Ok(());
                    }
                    persist(&worker, body.hasher(), offer, target, rec, &mut saved, obs)?;
                    last_saved = Instant::now();
                }
                continue;
            }
        };
        let piece = match piece {
            None => break Ok(()),
            Some(Err(e)) => break Err(e),
            Some(Ok(p)) => p,
        };
        if !worker.feed(piece) {
            // The worker stopped on an error: collect it below.
            break Ok(());
        }
        if let Ok(kind) = kinds.try_recv() {
            obs.payload_verified(&kind);
        }
        obs.progress(body.pos(), offer.size);
        if last_saved.elapsed() >= interval {
            persist(&worker, body.hasher(), offer, target, rec, &mut saved, obs)?;
            last_saved = Instant::now();
        }
    };
    *discarded += body.discarded();
    downloaded += body.downloaded();
    let pos = body.pos();
    let transient = result.as_ref().is_err_and(InstallError::is_transient);
    if result.is_ok() && pos < offer.size && !worker.failed() || transient {
        // Keep what was written: the next attempt resumes from here.
        persist(&worker, body.hasher(), offer, target, rec, &mut saved, obs)?;
    }
    let (applier, worker_result) = worker.finish();
    if let Ok(kind) = kinds.try_recv() {
        obs.payload_verified(&kind);
    }
    worker_result?;
    result?;
    if pos < offer.size {
        return Err(transfer(
            url,
            format!("connection closed after {pos} of {} bytes", offer.size),
        ));
    }
    Ok(Streamed {
        applier,
        hash: body.into_hasher().finish(),
        received: pos,
        downloaded,
        resumed,
        discarded: *discarded,
    })
}

/// Syncs the target and persists a checkpoint when the applier has advanced.
fn persist<O: Observer, B: AsRef<[u8]> + Send + 'static>(
    worker: &Worker<B>,
    hasher: &ResumableSha256,
    offer: &Offer,
    target: &TargetSlot,
    rec: &mut Option<ResumeRecord>,
    saved_offset: &mut Option<u64>,
    obs: &mut O,
) -> Result<(), InstallError> {
    let Some(cp) = worker.checkpoint()? else {
        return Ok(());
    };
    if *saved_offset == Some(cp.payload_offset) && rec.is_some() {
        return Ok(());
    }
    let r = ResumeRecord {
        version: offer.version.clone(),
        payload_sha256: hex::encode(offer.sha256),
        payload_size: offer.size,
        slot: target.slot(),
        hash: hasher.save(),
        failures: 0,
        applier: cp,
    };
    *saved_offset = Some(r.applier.payload_offset);
    obs.save_resume(Some(&r))?;
    tracing::debug!(offset = r.applier.payload_offset, "checkpoint saved");
    *rec = Some(r);
    Ok(())
}
