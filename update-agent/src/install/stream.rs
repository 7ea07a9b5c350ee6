//! Step 3 of the install: download attempts over the offer's URLs, each streaming the payload
//! (from byte 0, or resuming from a checkpoint with HTTP `Range`) through the applier.
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
use reqwest::header::{CONTENT_RANGE, RANGE};
use url::Url;

use super::hasher::ResumableSha256;
use super::{InstallError, Installer, Observer, ResumeRecord, Streamed, compat};
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

fn transfer(url: &Url, detail: impl std::fmt::Display) -> InstallError {
    InstallError::Transfer {
        url: url.to_string(),
        detail: detail.to_string(),
    }
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
    let opts = ApplyOptions {
        now: inst.now_unix,
        expect: compat::expectations(offer),
        sync: true,
    };
    let mut downloaded = 0u64;
    let (applier, mut hasher, start, resumed) = match rec.as_ref() {
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
            let applier = Applier::resume(trust, tgt, &r.applier, &prefix, opts)?;
            if let Some(info) = applier.info() {
                compat::check_manifest(inst.identity, info)?;
            }
            tracing::info!(
                version = %offer.version,
                offset = r.applier.payload_offset,
                "resuming download from checkpoint"
            );
            (applier, hasher, r.applier.payload_offset, true)
        }
        None => (
            Applier::new(trust, tgt, opts),
            ResumableSha256::new(),
            0,
            false,
        ),
    };

    let mut req = inst.http.get(url.clone());
    if start > 0 {
        req = req.header(RANGE, format!("bytes={start}-"));
    }
    let resp = req.send().await.map_err(|e| transfer(url, e))?;
    let status = resp.status();
    let mut skip = 0u64;
    match status {
        StatusCode::PARTIAL_CONTENT if start > 0 => {
            let (from, total) = parse_content_range(resp.headers().get(CONTENT_RANGE))
                .ok_or_else(|| transfer(url, "206 answer without a usable Content-Range"))?;
            if from != start {
                return Err(transfer(
                    url,
                    format!("asked for bytes from {start}, got {from}"),
                ));
            }
            if let Some(t) = total.filter(|&t| t != offer.size) {
                return Err(InstallError::SizeMismatch {
                    announced: offer.size,
                    found: format!("the server's Content-Range says {t}"),
                });
            }
        }
        StatusCode::OK => {
            if let Some(len) = resp.content_length().filter(|&l| l != offer.size) {
                return Err(InstallError::SizeMismatch {
                    announced: offer.size,
                    found: format!("the server sends {len} bytes"),
                });
            }
            // The server ignored `Range` and sends the whole payload: the bytes before the
            // checkpoint are already written (and hashed), so they are read and dropped, never
            // fed to the applier again.
            skip = start;
            if start > 0 {
                tracing::warn!(url = %url, version = %offer.version, discarded_bytes = start, "the server ignored Range; discarding the payload bytes already written");
            }
        }
        s => {
            return Err(InstallError::HttpStatus {
                url: url.to_string(),
                status: s.as_u16(),
            });
        }
    }

    let interval = inst.settings.install.checkpoint_interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_saved = Instant::now();
    let mut saved_offset = rec.as_ref().map(|r| r.applier.payload_offset);
    let mut pos = start;
    // The applier (operation hashes, slot writes) runs on its own thread, fed through a small
    // bounded queue, so receiving and hashing the stream overlap with writing the slot.
    let worker = Worker::start(
        applier,
        offer.size,
        inst.identity.clone(),
        offer.version.clone(),
    );
    let mut body = resp.bytes_stream();
    let result: Result<(), InstallError> = loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = tick.tick() => {
                if last_saved.elapsed() >= interval {
                    if worker.failed() {
                        break Ok(());
                    }
                    persist(&worker, &hasher, offer, target, rec, &mut saved_offset, obs)?;
                    last_saved = Instant::now();
                }
                continue;
            }
        };
        let Some(chunk) = chunk else { break Ok(()) };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => break Err(transfer(url, e)),
        };
        downloaded += chunk.len() as u64;
        let mut chunk = chunk;
        if skip > 0 {
            let n = skip.min(chunk.len() as u64) as usize;
            let _ = chunk.split_to(n);
            skip -= n as u64;
            *discarded += n as u64;
        }
        if chunk.is_empty() {
            continue;
        }
        let n = chunk.len() as u64;
        if pos + n > offer.size {
            break Err(InstallError::SizeMismatch {
                announced: offer.size,
                found: "the server sends more".into(),
            });
        }
        let skip_hash = hasher.len().saturating_sub(pos).min(n) as usize;
        hasher.update(&chunk[skip_hash..]);
        if !worker.feed(chunk) {
            // The worker stopped on an error: collect it below.
            break Ok(());
        }
        pos += n;
        obs.progress(pos, offer.size);
        if last_saved.elapsed() >= interval {
            persist(&worker, &hasher, offer, target, rec, &mut saved_offset, obs)?;
            last_saved = Instant::now();
        }
    };
    let transient = result.as_ref().is_err_and(InstallError::is_transient);
    if result.is_ok() && pos < offer.size && !worker.failed() || transient {
        // Keep what was written: the next attempt resumes from here.
        persist(&worker, &hasher, offer, target, rec, &mut saved_offset, obs)?;
    }
    let (applier, worker_result) = worker.finish();
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
        hash: hasher.finish(),
        received: pos,
        downloaded,
        resumed,
        discarded: *discarded,
    })
}

/// Work for the applier thread.
enum Work<B> {
    /// Payload bytes, in order.
    Data(B),
    /// Sync the slot and answer with the applier's checkpoint.
    Checkpoint(std::sync::mpsc::SyncSender<Result<Option<payloads::Checkpoint>, ApplyError>>),
}

/// The applier on its own thread.
struct Worker<B> {
    tx: Option<std::sync::mpsc::SyncSender<Work<B>>>,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Applier, Result<(), InstallError>)>,
}

/// Chunks queued for the applier thread (bounded memory).
const QUEUE: usize = 16;

impl<B: AsRef<[u8]> + Send + 'static> Worker<B> {
    fn start(
        mut applier: Applier,
        size: u64,
        identity: crate::identity::Identity,
        version: String,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Work<B>>(QUEUE);
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&failed);
        let thread = std::thread::spawn(move || {
            let mut verified = applier.progress().is_verified();
            let mut error: Option<InstallError> = None;
            for work in rx {
                match work {
                    Work::Data(_) if error.is_some() => {}
                    Work::Data(b) => match applier.feed(b.as_ref()) {
                        Ok(p) if !verified && p.is_verified() => {
                            verified = true;
                            if p.payload_len != Some(size) {
                                error = Some(InstallError::SizeMismatch {
                                    announced: size,
                                    found: format!(
                                        "the signed payload is {} bytes",
                                        p.payload_len.unwrap_or(0)
                                    ),
                                });
                            } else if let Some(info) = applier.info()
                                && let Err(e) = compat::check_manifest(&identity, info)
                            {
                                error = Some(e);
                            } else {
                                tracing::info!(version = %version, "payload signature and manifest verified");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => error = Some(e.into()),
                    },
                    Work::Checkpoint(reply) => {
                        let cp = if error.is_some() {
                            Ok(None)
                        } else {
                            applier.sync().map(|()| applier.checkpoint())
                        };
                        let _ = reply.send(cp);
                    }
                }
                if error.is_some() {
                    flag.store(true, Ordering::Release);
                }
            }
            (applier, error.map_or(Ok(()), Err))
        });
        Self {
            tx: Some(tx),
            failed,
            thread,
        }
    }

    /// Whether the applier stopped on an error.
    fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Queues bytes (blocking while the queue is full); false once the applier has failed.
    fn feed(&self, b: B) -> bool {
        !self.failed()
            && self
                .tx
                .as_ref()
                .is_some_and(|tx| tx.send(Work::Data(b)).is_ok())
    }

    /// The applier's checkpoint after everything queued so far was written and synced.
    fn checkpoint(&self) -> Result<Option<payloads::Checkpoint>, InstallError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let Some(tx) = &self.tx else { return Ok(None) };
        if tx.send(Work::Checkpoint(reply)).is_err() {
            return Ok(None);
        }
        Ok(answer.recv().unwrap_or(Ok(None))?)
    }

    /// Waits for the thread; returns the applier and its first error.
    fn finish(mut self) -> (Applier, Result<(), InstallError>) {
        drop(self.tx.take());
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => std::panic::resume_unwind(Box::new("payload applier thread panicked")),
        }
    }
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

/// `bytes START-END/TOTAL` → (START, TOTAL if known).
fn parse_content_range(v: Option<&reqwest::header::HeaderValue>) -> Option<(u64, Option<u64>)> {
    let s = v?.to_str().ok()?.strip_prefix("bytes ")?;
    let (range, total) = s.split_once('/')?;
    let (from, _) = range.split_once('-')?;
    Some((from.trim().parse().ok()?, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        let h = |s: &str| reqwest::header::HeaderValue::from_str(s).unwrap();
        assert_eq!(
            parse_content_range(Some(&h("bytes 100-199/200"))),
            Some((100, Some(200)))
        );
        assert_eq!(
            parse_content_range(Some(&h("bytes 5-9/*"))),
            Some((5, None))
        );
        assert_eq!(parse_content_range(Some(&h("items 5-9/10"))), None);
        assert_eq!(parse_content_range(None), None);
    }
}
