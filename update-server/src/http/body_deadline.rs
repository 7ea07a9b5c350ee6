//! A deadline for a whole request body, for the unauthenticated endpoints whose bodies are small
//! and bounded (Omaha, FleetLock): the listener's body-read timeout only cuts a body that stops,
//! so a client trickling a byte just often enough would otherwise keep its connection busy (and
//! never shed) for as long as it likes. Package uploads (large, admin token) are not covered.
//!
//! [`limit`] is a middleware for those routes: the handler reads a body that ends with an error
//! once the deadline passes, and whatever it answers is replaced by a 408 with
//! `Connection: close`, so that the connection is closed after it. A body the listener cut for
//! stalling ([`BodyReadTimeout`]) is answered the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::connections::TimeoutKind;
use super::listener::BodyReadTimeout;
use crate::metrics::Metrics;

/// State of the [`limit`] middleware.
#[derive(Debug, Clone)]
pub struct BodyDeadline {
    /// Time the client has to send the whole body, from the end of its headers.
    pub limit: Duration,
    /// Counts bodies cut by the deadline (`platte_http_connection_timeouts_total{kind="body"}`).
    pub metrics: Arc<Metrics>,
}

/// The error a handler sees when a request body is not complete by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("request body not complete within {0:?}")]
pub struct BodyDeadlineExceeded(pub Duration);

/// Middleware: the request body must be complete within [`BodyDeadline::limit`] of the request
/// reaching the router; if not (or if it stalled), the answer is a 408 and the connection is
/// closed after it.
pub async fn limit(State(deadline): State<BodyDeadline>, req: Request, next: Next) -> Response {
    let cut = Arc::new(AtomicBool::new(false));
    let at = Instant::now() + deadline.limit;
    let req = req.map(|inner| {
        Body::new(DeadlineBody {
            inner: Some(inner),
            at,
            sleep: None,
            limit: deadline.limit,
            cut: Arc::clone(&cut),
            metrics: Arc::clone(&deadline.metrics),
        })
    });
    let resp = next.run(req).await;
    if !cut.load(Ordering::Acquire) {
        return resp;
    }
    let mut resp = (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "request body not received in time\n",
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Whether a body error is (or was caused by) the listener's [`BodyReadTimeout`].
fn stalled(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| e.is::<BodyReadTimeout>())
}

/// A request body that ends with [`BodyDeadlineExceeded`] at its deadline, and notes in `cut`
/// that it did (or that the listener cut it for stalling).
struct DeadlineBody {
    inner: Option<Body>,
    at: Instant,
    /// Armed on the first poll that finds nothing.
    sleep: Option<Pin<Box<Sleep>>>,
    limit: Duration,
    cut: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl HttpBody for DeadlineBody {
    type Data = <Body as HttpBody>::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                this.sleep = None;
                if stalled(&e) {
                    this.cut.store(true, Ordering::Release);
                }
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                this.sleep = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let at = this.at;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.inner = None;
                this.sleep = None;
                this.cut.store(true, Ordering::Release);
                this.metrics.connection_timeout(TimeoutKind::Body);
                Poll::Ready(Some(Err(Box::new(BodyDeadlineExceeded(this.limit)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::post;
    use futures_util::StreamExt as _;

    /// A router with one route that reads the whole body (as the Omaha handler does) and
    /// answers 200 or, if the body fails, 400.
    fn app(deadline: Duration, metrics: &Arc<Metrics>) -> Router {
        Router::new()
            .route(
                "/",
                post(|body: Body| async move {
                    match axum::body::to_bytes(body, 1024).await {
                        Ok(b) => (StatusCode::OK, b).into_response(),
                        Err(_) => StatusCode::BAD_REQUEST.into_response(),
                    }
                }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                BodyDeadline {
                    limit: deadline,
                    metrics: Arc::clone(metrics),
                },
                limit,
            ))
    }

    async fn call(app: Router, body: Body) -> Response {
        let req = Request::post("/").body(body).expect("request");
        let mut app = app;
        match tower_service::Service::call(&mut app, req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    fn body_timeouts(metrics: &Metrics) -> String {
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("platte_http_connection_timeouts_total"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn a_body_complete_in_time_reaches_the_handler() {
        let metrics = Arc::new(Metrics::new());
        let resp = call(app(Duration::from_secs(30), &metrics), Body::from("hello")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get(header::CONNECTION).is_none());
        let body = axum::body::to_bytes(resp.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], b"hello");
        assert_eq!(body_timeouts(&metrics), "");
    }

    #[tokio::test]
    async fn a_body_not_complete_by_the_deadline_is_answered_408_and_closes() {
        let metrics = Arc::new(Metrics::new());
        // One chunk, then nothing more: the handler waits until the deadline cuts the body.
        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("<request")])
            .chain(futures_util::stream::pending());
        let started = Instant::now();
        let resp = call(
            app(Duration::from_millis(200), &metrics),
            Body::from_stream(chunks),
        )
        .await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        assert!(body_timeouts(&metrics).contains("kind=\"body\"} 1"));
    }

    #[tokio::test]
    async fn a_body_the_listener_cut_for_stalling_is_answered_408() {
        let metrics = Arc::new(Metrics::new());
        let chunks =
            futures_util::stream::iter([Err::<&str, _>(BodyReadTimeout(Duration::from_secs(1)))]);
        let resp = call(
            app(Duration::from_secs(30), &metrics),
            Body::from_stream(chunks),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        // Counted by the listener, not here.
        assert_eq!(body_timeouts(&metrics), "");
    }
}
