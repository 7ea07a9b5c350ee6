//! The payload download pipeline that the OS install (`install/stream.rs`: a slot, resumable)
//! and runtime extensions (`extensions/download.rs`: a file, from byte 0) share:
//!
//! - [`open`]: one GET of a download URL (with `Range` when resuming), its answer checked
//!   against the offer: `206` with a matching `Content-Range`, or `200` with the announced
//!   length (a server ignoring `Range`: the bytes before the resume point are dropped), any
//!   other status an [`InstallError::HttpStatus`];
//! - [`Incoming`]: the answer's body as it arrives: never more than announced, hashed (a
//!   restored hash skips what it already covers), the dropped bytes counted;
//! - [`Worker`]: the payload applier on its own thread, fed through a small bounded queue, so
//!   receiving and hashing overlap with writing; it runs a check of the caller's once the
//!   signed prefix is verified, and hands back a checkpoint on demand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use futures_util::{Stream, StreamExt as _};
use payloads::{Applier, ApplyError};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use url::Url;

use super::InstallError;
use super::hasher::ResumableSha256;

/// A transfer error on `url`.
pub(crate) fn transfer(url: &Url, detail: impl std::fmt::Display) -> InstallError {
    InstallError::Transfer {
        url: url.to_string(),
        detail: detail.to_string(),
    }
}

/// GETs `url` from payload byte `start` (a `Range` request when `start > 0`) and checks the
/// answer against the offer's `size` (`version`: for the log); returns the answer and how many leading bytes of its
/// body to drop (a server that ignored `Range` sends from byte 0).
pub(crate) async fn open(
    http: &reqwest::Client,
    url: &Url,
    start: u64,
    size: u64,
    version: &str,
) -> Result<(reqwest::Response, u64), InstallError> {
    let mut req = http.get(url.clone());
    if start > 0 {
        req = req.header(RANGE, format!("bytes={start}-"));
    }
    let resp = req.send().await.map_err(|e| transfer(url, e))?;
    match resp.status() {
        StatusCode::PARTIAL_CONTENT if start > 0 => {
            let (from, total) = parse_content_range(resp.headers().get(CONTENT_RANGE))
                .ok_or_else(|| transfer(url, "206 answer without a usable Content-Range"))?;
            if from != start {
                return Err(transfer(
                    url,
                    format!("asked for bytes from {start}, got {from}"),
                ));
            }
            if let Some(t) = total.filter(|&t| t != size) {
                return Err(InstallError::SizeMismatch {
                    announced: size,
                    found: format!("the server's Content-Range says {t}"),
                });
            }
            Ok((resp, 0))
        }
        StatusCode::OK => {
            if let Some(len) = resp.content_length().filter(|&l| l != size) {
                return Err(InstallError::SizeMismatch {
                    announced: size,
                    found: format!("the server sends {len} bytes"),
                });
            }
            // The server ignored `Range` and sends the whole payload: the bytes before `start`
            // are already written (and hashed), so they are read and dropped.
            if start > 0 {
                tracing::warn!(url = %url, version, discarded_bytes = start, "the server ignored Range; discarding the payload bytes already written");
            }
            Ok((resp, start))
        }
        s => Err(InstallError::HttpStatus {
            url: url.to_string(),
            status: s.as_u16(),
        }),
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL if known).
fn parse_content_range(v: Option<&reqwest::header::HeaderValue>) -> Option<(u64, Option<u64>)> {
    let s = v?.to_str().ok()?.strip_prefix("bytes ")?;
    let (range, total) = s.split_once('/')?;
    let (from, _) = range.split_once('-')?;
    Some((from.trim().parse().ok()?, total.trim().parse().ok()))
}

/// Payload bytes received: a chunk of the body from its `from`th byte on.
#[derive(Debug)]
pub(crate) struct Piece<B> {
    bytes: B,
    from: usize,
}

impl<B: AsRef<[u8]>> AsRef<[u8]> for Piece<B> {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_ref().get(self.from..).unwrap_or_default()
    }
}

/// The body of an answer from [`open`], checked as it arrives.
pub(crate) struct Incoming<S> {
    body: S,
    url: Url,
    size: u64,
    /// Payload offset of the next byte.
    pos: u64,
    /// Leading body bytes still to drop.
    skip: u64,
    /// Body bytes dropped (sent again by a server that ignored `Range`).
    discarded: u64,
    /// Body bytes received, dropped ones included.
    downloaded: u64,
    hasher: ResumableSha256,
}

/// The body of `resp`, whose first payload byte is `start`, with `skip` leading bytes to drop
/// (see [`open`]); `hasher` covers the payload up to at least `start`.
pub(crate) fn incoming(
    resp: reqwest::Response,
    url: &Url,
    size: u64,
    start: u64,
    skip: u64,
    hasher: ResumableSha256,
) -> Incoming<impl Stream<Item = reqwest::Result<impl AsRef<[u8]> + Send + 'static>> + Unpin> {
    Incoming {
        body: Box::pin(resp.bytes_stream()),
        url: url.clone(),
        size,
        pos: start,
        skip,
        discarded: 0,
        downloaded: 0,
        hasher,
    }
}

impl<S, B> Incoming<S>
where
    S: Stream<Item = reqwest::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    /// The next payload bytes (`None`: the body ended). Cancel-safe: a chunk is only taken off
    /// the stream by a call that returns it.
    pub(crate) async fn next(&mut self) -> Option<Result<Piece<B>, InstallError>> {
        loop {
            let chunk = match self.body.next().await? {
                Ok(c) => c,
                Err(e) => return Some(Err(transfer(&self.url, e))),
            };
            let len = chunk.as_ref().len() as u64;
            self.downloaded += len;
            let dropped = self.skip.min(len);
            self.skip -= dropped;
            self.discarded += dropped;
            let n = len - dropped;
            if n == 0 {
                continue;
            }
            if self.pos + n > self.size {
                return Some(Err(InstallError::SizeMismatch {
                    announced: self.size,
                    found: "the server sends more".into(),
                }));
            }
            let piece = Piece {
                bytes: chunk,
                from: dropped as usize,
            };
            let hashed = self.hasher.len().saturating_sub(self.pos).min(n) as usize;
            self.hasher.update(&piece.as_ref()[hashed..]);
            self.pos += n;
            return Some(Ok(piece));
        }
    }

    /// Payload offset of the next byte (the end of what was received).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Body bytes received so far, dropped ones included.
    pub(crate) fn downloaded(&self) -> u64 {
        self.downloaded
    }

    /// Body bytes dropped so far.
    pub(crate) fn discarded(&self) -> u64 {
        self.discarded
    }

    /// The payload hash so far.
    pub(crate) fn hasher(&self) -> &ResumableSha256 {
        &self.hasher
    }

    /// The payload hash, once the body has ended.
    pub(crate) fn into_hasher(self) -> ResumableSha256 {
        self.hasher
    }
}

/// A check run on the applier thread once the payload's signed prefix is verified: the applier
/// and the signed payload length.
pub(crate) type OnVerified =
    Box<dyn FnOnce(&Applier, Option<u64>) -> Result<(), InstallError> + Send>;

/// Work for the applier thread.
enum Work<B> {
    /// Payload bytes, in order.
    Data(B),
    /// Sync the target and answer with the applier's checkpoint.
    Checkpoint(mpsc::SyncSender<Result<Option<payloads::Checkpoint>, ApplyError>>),
}

/// The applier on its own thread.
pub(crate) struct Worker<B> {
    tx: Option<mpsc::SyncSender<Work<B>>>,
    failed: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Applier, Result<(), InstallError>)>,
}

/// Chunks queued for the applier thread (bounded memory).
const QUEUE: usize = 16;

impl<B: AsRef<[u8]> + Send + 'static> Worker<B> {
    /// Starts the thread; `on_verified` runs once the signed prefix is verified (unless the
    /// applier was verified already, as when resuming), and its error stops the applier.
    pub(crate) fn start(mut applier: Applier, on_verified: OnVerified) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Work<B>>(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let thread = std::thread::spawn(move || {
            let mut on_verified = (!applier.progress().is_verified()).then_some(on_verified);
            let mut error: Option<InstallError> = None;
            for work in rx {
                match work {
                    Work::Data(_) if error.is_some() => {}
                    Work::Data(b) => match applier.feed(b.as_ref()) {
                        Ok(p) if p.is_verified() => {
                            if let Some(check) = on_verified.take()
                                && let Err(e) = check(&applier, p.payload_len)
                            {
                                error = Some(e);
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
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Queues bytes (blocking while the queue is full); false once the applier has failed.
    pub(crate) fn feed(&self, b: B) -> bool {
        !self.failed()
            && self
                .tx
                .as_ref()
                .is_some_and(|tx| tx.send(Work::Data(b)).is_ok())
    }

    /// The applier's checkpoint after everything queued so far was written and synced.
    pub(crate) fn checkpoint(&self) -> Result<Option<payloads::Checkpoint>, InstallError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let Some(tx) = &self.tx else { return Ok(None) };
        if tx.send(Work::Checkpoint(reply)).is_err() {
            return Ok(None);
        }
        Ok(answer.recv().unwrap_or(Ok(None))?)
    }

    /// Waits for the thread; returns the applier and its first error.
    pub(crate) fn finish(mut self) -> (Applier, Result<(), InstallError>) {
        drop(self.tx.take());
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => std::panic::resume_unwind(Box::new("payload applier thread panicked")),
        }
    }
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
